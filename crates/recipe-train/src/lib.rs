//! `recipe-train` is the training loop of one stage, readable top to bottom in `trainer.rs`:
//! build or resume the model in the stage's precision (f32; bf16/f16 mixed with f32 master
//! weights and, for f16, a loss scaler; or pure bf16) on the device the caller picks; per step
//! draw the micro-batches, accumulate gradients, clip, update with AdamW (decoupled weight
//! decay, f32 moments updated in place), follow the recipe's LR schedule, log `metrics.jsonl`,
//! evaluate on held-out data, average weights (EMA, LAWA; `average`) and write checkpoints that
//! resume bit-exactly. Its objectives are
//! cross-entropy over masked targets, for distillation a KD term against frozen teachers
//! (`distill`), and for preference pairs DPO's or IPO's loss against a frozen reference
//! (`preference`); a `merge` stage combines finished models instead of training (`merge`). It returns the trained model: where a stage's folder is, publishing its result
//! and recording it in the lock belong to the executor (`recipe-run`). Progress goes to an
//! [`Observer`]; nothing here prints.

mod average;
pub mod distill;
mod error;
mod merge;
mod optimizer;
pub mod preference;
mod scaler;
mod trainer;

pub use error::{Error, Result};
pub use merge::{MergeRun, merge_stage};
pub use optimizer::{Optimizer, clip_factor};
pub use scaler::LossScaler;
pub use trainer::{
    MicroLoss, Objective, Observer, Outcome, Reference, StageRun, StepGradients, StepMetrics, TrainState, batch_loss,
    build_model, checkpoints_dir, gradients, loss_tokens, train_stage, update,
};
