//! `recipe-spec` is the recipe language. It turns a recipe file into a typed, checked
//! [`Recipe`]: it parses the TOML with the position of every key and value, merges `--set
//! dotted.path=value` overrides, applies the documented default of every field and the
//! `[model]` inheritance of each stage, and checks the whole recipe, collecting every problem as
//! a [`Diagnostic`] that renders like a compiler's error (file, line, column, snippet, what was
//! expected, "did you mean"). [`Recipe::canonical`] gives the effective recipe in a canonical
//! form for hashing and diffing, [`Schedule::factor`] the learning-rate curve that both `plan`
//! and the trainer use, and [`Estimate`] what a stage will cost. It owns the meaning of every
//! field and nothing else: it reads no tensors (checkpoint headers come through a
//! [`CheckpointReader`] the caller passes in), runs nothing and prints nothing. Nothing outside
//! it parses TOML.
//!
//! One module per table (`recipe`, `model`, `tokenizer`, `source`, `stage`, `schedule`, `peft`,
//! `distill`, `preference`, and `import` for checkpoints a stage names), each with its type, defaults and
//! decoding; `vocab` is the leaf of shared words; `tree`, `decode` and `diag` are the machinery.

mod average;
mod canonical;
mod checkpoint;
mod checks;
mod decode;
mod diag;
mod distill;
mod estimate;
mod freeze;
pub mod hub;
mod import;
mod init;
mod length;
mod merge;
mod model;
mod online;
mod peft;
mod preference;
mod recipe;
mod schedule;
mod source;
mod stage;
mod tokenizer;
mod tree;
mod vocab;

pub use average::Average;
pub use canonical::flatten;
pub use checkpoint::{
    AdapterInfo, CheckpointInfo, CheckpointReader, OwnChatTemplate, TokenizerFacts, TokenizerFile, is_gguf,
    leading_special_token,
};
pub use diag::{Diagnostic, Origin, SourceText, did_you_mean};
pub use distill::Distill;
pub use estimate::{Estimate, Memory, PhaseEstimate};
pub use freeze::Freeze;
pub use import::Import;
pub use init::Init;
pub use length::{Lengths, StepShape};
pub use merge::{Merge, MergeInput};
pub use model::{
    ARCHS, BlockNorms, MODEL_KEYS, Model, ModelSpec, RopeScaling, SHAPE_FIELDS, longrope_attention_factor,
    swiglu_hidden, yarn_attention_factor,
};
pub use online::Online;
pub use peft::{PEFT_MODULES, Peft, ReLora};
pub use preference::Preference;
pub use recipe::{Invalid, MAX_NAME_LEN, Recipe, is_plain_name};
pub use schedule::{Schedule, ScheduleKind};
pub use source::Source;
pub use stage::{Data, Eval, Muon, NON_SEMANTIC_STAGE_FIELDS, Optim, Stage};
pub use tokenizer::{Tokenizer, TokenizerTrain};
pub use vocab::{
    AverageKind, AverageUse, ChatTemplate, CheckpointFormat, DistillLoss, InitKind, Keep, LoraInit, LossOn,
    MergeMethod, MuonScale, OnError, OnNonfinite, Packing, PeftMethod, Precision, PreferenceLoss, SourceFormat,
    StageKind, TokenDtype,
};
