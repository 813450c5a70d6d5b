//! `recipe-train` runs a recipe's graph: data nodes through `recipe-data`, then each stage's
//! training loop — on the device the caller picks, in the stage's precision (f32, bf16/f16
//! mixed with f32 master weights, a loss scaler for f16, or pure bf16) — AdamW with decoupled
//! weight decay and f32 moments updated in place, global-norm clipping, gradient accumulation, the recipe's LR schedule, held-out evaluation, `metrics.jsonl`,
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
mod scaler;
mod trainer;

pub use adamw::{AdamW, clip_factor};
pub use checkpoint::{Checkpoint, TrainState, latest_valid};
pub use error::{Error, Result};
pub use executor::{Hooks, NodeReport, execute};
pub use sample::{Sampling, generate};
pub use scaler::LossScaler;
pub use trainer::{
    MicroLoss, Objective, Observer, Outcome, StageRun, StepGradients, StepMetrics, batch_loss, build_model, gradients,
    train_stage, update,
};

/// Now, as RFC 3339 UTC.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
