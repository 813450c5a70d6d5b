//! The composed fallback: plain Candle ops, whose gradients Candle derives; it runs on every
//! device, and is the reference the native kernels are tested against.

use candle_core::{Result, Tensor};

pub fn swiglu_composed(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}
