//! Cross-entropy over the vocabulary, averaged over the targets the loss mask keeps.

use candle_core::{Result, Tensor};

/// Mean negative log-likelihood of `targets` `[N]` (u32) under `logits` `[N, V]`, over the
/// positions where `mask` `[N]` (same dtype as logits) is 1. Returns the loss and the number
/// of positions counted.
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<(Tensor, f64)> {
    let count = mask.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    let (loss, _) = masked_cross_entropy_rows(logits, targets, mask, count)?;
    Ok((loss, count))
}

/// [`masked_cross_entropy`] where the caller knows the count (the ones in `mask`, from the
/// batch on the host: reading them back from a GPU would wait for everything queued before),
/// with each position's negative log-likelihood `[N]` (0 where the mask is 0) beside the loss,
/// for a loss broken down by where the tokens came from.
pub fn masked_cross_entropy_rows(
    logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    count: f64,
) -> Result<(Tensor, Tensor)> {
    let nll = recipe_kernels::cross_entropy_rows(logits, targets, mask)?;
    let loss = (nll.sum_all()? / count.max(1.0))?;
    Ok((loss, nll))
}
