//! The composed fallback: plain Candle ops, whose gradients Candle derives; it runs on every
//! device, and is the reference the native kernels are tested against.

use candle_core::{Result, Tensor};

use super::Activation;

pub fn glu_composed(gate: &Tensor, up: &Tensor, act: Activation) -> Result<Tensor> {
    let activated = match act {
        Activation::Silu => gate.silu()?,
        // Spelled out rather than Candle's `gelu`, whose backward rounds its constants to six
        // digits.
        Activation::GeluTanh => {
            let inner =
                (gate.sqr()?.affine(0.044715, 1.0)? * gate)?.affine((2.0 / std::f64::consts::PI).sqrt(), 0.0)?;
            (inner.tanh()?.affine(0.5, 0.5)? * gate)?
        }
    };
    activated * up
}
