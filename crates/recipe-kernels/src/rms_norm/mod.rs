//! RMSNorm over the last dimension, fused: `y = x / sqrt(mean(x²) + eps) · w`. Forward is one
//! pass per row. Backward, with `r = 1/sqrt(mean(x²) + eps)`, `x̂ = x·r` and `gw = dy·w`:
//! `dx = r·(gw − x̂·mean(gw·x̂))` per row, and `dw = Σ_rows dy·x̂`, summed per block of rows
//! in parallel and then across blocks.

mod composed;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{Result, Tensor};
pub use composed::rms_norm_composed;

use crate::{Backend, widened};

/// RMSNorm of `x` `[..., d]` with weight `w` `[d]`. The statistics are computed in f32 for
/// half-precision inputs; the result has `x`'s dtype.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = widened(x.dtype());
    match Backend::of(x) {
        Backend::Cpu => cpu::rms_norm(&x.to_dtype(dtype)?, &w.to_dtype(dtype)?, eps)?.to_dtype(x.dtype()),
        #[cfg(feature = "cuda")]
        Backend::Cuda => cpu::rms_norm(x, &w.to_dtype(x.dtype())?, eps),
        Backend::Composed => rms_norm_composed(&x.to_dtype(dtype)?, &w.to_dtype(dtype)?, eps)?.to_dtype(x.dtype()),
    }
}
