//! The composed fallback: plain Candle ops, whose gradients Candle derives; it runs on every
//! device, and is the reference the native kernels are tested against.

use candle_core::{Result, Tensor};

use super::Dropout;
use crate::{Products, frozen_linear};

pub fn lora_linear_composed(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<Dropout>,
    products: Products,
) -> Result<Tensor> {
    let dropped = match dropout {
        Some(d) => (x * d.mask_like(x)?)?,
        None => x.clone(),
    };
    let base = match products {
        Products::Exact => x.matmul(&w.t()?)?,
        Products::Bf16 => frozen_linear(x, w, products)?,
    };
    base + (dropped.matmul(&a.t()?)?.matmul(&b.t()?)? * scale)?
}
