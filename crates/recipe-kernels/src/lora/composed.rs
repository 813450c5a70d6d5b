//! The composed fallback: plain Candle ops, whose gradients Candle derives; it runs on every
//! device, and is the reference the native kernels are tested against.

use candle_core::{Result, Tensor};

use super::Dropout;

pub fn lora_linear_composed(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<Dropout>,
) -> Result<Tensor> {
    let dropped = match dropout {
        Some(d) => (x * d.mask_like(x)?)?,
        None => x.clone(),
    };
    x.matmul(&w.t()?)? + (dropped.matmul(&a.t()?)?.matmul(&b.t()?)? * scale)?
}
