//! Rotary embedding in the Hugging Face (rotate-half) layout, fused: for `x` `[B, H, T, hd]`
//! and per-token `cos`, `sin` `[B, 1, T, hd/2]` shared by the heads,
//! `y = [x₁·cos − x₂·sin, x₂·cos + x₁·sin]`. The backward pass is the inverse rotation, i.e.
//! the same kernel with `sin` negated; `cos` and `sin` get no gradient.

mod composed;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{Result, Tensor};
pub use composed::rope_composed;

use crate::{Backend, widened};

/// Rotate `x` by the per-token angles whose cosines and sines are given. The CPU and CUDA
/// kernels rotate half-precision input in f32; the composed fallback in `x`'s dtype, as
/// Hugging Face does. The result has `x`'s dtype.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    match Backend::of(x) {
        Backend::Cpu => {
            let dtype = widened(x.dtype());
            cpu::rope(&x.to_dtype(dtype)?, &cos.to_dtype(dtype)?, &sin.to_dtype(dtype)?)?.to_dtype(x.dtype())
        }
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            let f32 = candle_core::DType::F32;
            cpu::rope(x, &cos.to_dtype(f32)?, &sin.to_dtype(f32)?)
        }
        Backend::Composed => rope_composed(x, &cos.to_dtype(x.dtype())?, &sin.to_dtype(x.dtype())?),
    }
}
