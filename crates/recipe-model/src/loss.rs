//! Cross-entropy over the vocabulary, averaged over the targets the loss mask keeps.

use candle_core::{D, Result, Tensor};

/// Mean negative log-likelihood of `targets` `[N]` (u32) under `logits` `[N, V]`, over the
/// positions where `mask` `[N]` (same dtype as logits) is 1. Returns the loss and the number
/// of positions counted.
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<(Tensor, f64)> {
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&targets.unsqueeze(1)?.contiguous()?, 1)?;
    let nll = (log_z - picked)?.squeeze(1)?;
    let count = mask.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    let loss = ((nll * mask)?.sum_all()? / count.max(1.0))?;
    Ok((loss, count))
}
