//! `recipe-spec` turns a recipe file into a typed, checked [`Recipe`]: it parses the TOML with
//! the position of every key and value, merges `--set dotted.path=value` overrides, applies the
//! documented default of every field and the `[model]` inheritance of each stage, and checks
//! the whole recipe, collecting every problem as a [`Diagnostic`] that renders like a
//! compiler's error (file, line, column, snippet, what was expected, "did you mean").
//! [`Recipe::canonical`] gives the effective recipe in a canonical form for hashing and diffing,
//! and [`Schedule::factor`] the learning-rate curve that both `plan` and the trainer use.
//! Nothing below this crate parses TOML.

mod canonical;
pub mod checkpoint;
mod decode;
mod diag;
mod estimate;
mod model;
mod recipe;
mod schedule;
mod tree;

pub use canonical::flatten;
pub use diag::{Diagnostic, Origin, SourceText, did_you_mean};
pub use estimate::{Estimate, Memory};
pub use model::{MODEL_KEYS, Model, ModelSpec, SHAPE_FIELDS, swiglu_hidden};
pub use recipe::{
    CHATML_TOKENS, ChatTemplate, Data, Distill, DistillLoss, Eval, Import, Invalid, LossOn, NON_SEMANTIC_STAGE_FIELDS,
    OnError, Optim, PEFT_MODULES, Packing, Peft, PeftMethod, Precision, Recipe, Source, SourceFormat, Stage, StageKind,
    TokenDtype, Tokenizer, TokenizerTrain,
};
pub use schedule::{Schedule, ScheduleKind};
