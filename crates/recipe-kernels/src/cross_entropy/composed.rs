//! The composed fallback: plain Candle ops, whose gradients Candle derives; it runs on every
//! device, and is the reference the native kernels are tested against.

use candle_core::{D, Result, Tensor};

pub fn cross_entropy_rows_composed(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let shifted = logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&targets.unsqueeze(1)?.contiguous()?, 1)?;
    (log_z - picked)?.squeeze(1)? * mask
}
