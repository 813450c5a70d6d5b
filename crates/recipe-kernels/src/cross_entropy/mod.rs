//! Cross-entropy over the vocabulary, fused: per row of `logits` `[N, V]`, the masked
//! negative log-likelihood `mask · (logsumexp(row) − row[target])`, in one pass. The backward
//! pass writes `dlogits = (softmax(row) − onehot(target)) · mask · dloss` in one more pass,
//! without keeping the softmax between the two.

mod composed;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{Result, Tensor};
pub use composed::cross_entropy_rows_composed;

use crate::{Backend, widened};

/// Per-row masked negative log-likelihood `[N]` of `targets` `[N]` (u32) under `logits`
/// `[N, V]`. The loss is computed in f32 for half-precision logits (and returned in f32);
/// `mask` `[N]` is cast to that dtype.
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let dtype = widened(logits.dtype());
    match Backend::of(logits) {
        Backend::Cpu => cpu::cross_entropy_rows(&logits.to_dtype(dtype)?, targets, &mask.to_dtype(dtype)?),
        // The logits stay in their dtype; the loss and the mask are f32.
        #[cfg(feature = "cuda")]
        Backend::Cuda => cpu::cross_entropy_rows(logits, targets, &mask.to_dtype(candle_core::DType::F32)?),
        Backend::Composed => cross_entropy_rows_composed(&logits.to_dtype(dtype)?, targets, &mask.to_dtype(dtype)?),
    }
}
