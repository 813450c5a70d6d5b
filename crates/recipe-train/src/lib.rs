//! `recipe-train` runs a recipe's graph: data nodes through `recipe-data`, then each stage's
//! training loop — AdamW with decoupled weight decay and f32 moments, global-norm clipping,
//! gradient accumulation, the recipe's LR schedule, held-out evaluation, `metrics.jsonl`,
//! atomic checksummed checkpoints that resume bit-exactly, and the published result in Hugging
//! Face layout; LoRA stages train adapters only; distillation stages mix a KD term against
//! frozen teachers into the loss. It also samples text from a finished stage. Progress goes to an [`Observer`];
//! nothing here prints.

mod adamw;
mod checkpoint;
pub mod distill;
mod error;
mod executor;
mod sample;
mod trainer;

pub use adamw::{AdamW, Slot, clip_global_norm};
pub use checkpoint::{Checkpoint, TrainState, latest_valid};
pub use error::{Error, Result};
pub use executor::{Hooks, NodeReport, execute};
pub use sample::{Sampling, generate};
pub use trainer::{
    MicroLoss, Objective, Observer, Outcome, StageRun, StepGradients, StepMetrics, batch_loss, build_model,
    check_supported, gradients, train_stage, update,
};

/// Now, as RFC 3339 UTC.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
