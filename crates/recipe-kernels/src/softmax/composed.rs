//! The composed fallback: plain Candle ops, whose gradients Candle derives; it runs on every
//! device, and is the reference the native kernels are tested against.

use candle_core::{D, Result, Tensor};

pub fn masked_softmax_composed(x: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let z = (x * scale)?.broadcast_add(bias)?;
    let e = z.broadcast_sub(&z.max_keepdim(D::Minus1)?)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}
