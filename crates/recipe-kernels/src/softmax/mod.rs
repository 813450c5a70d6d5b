//! Attention's masked, scaled softmax: `softmax(scale · x + bias)` over the last dimension,
//! where `x` is `[B, H, Tq, Tk]` and the additive `bias` `[B, 1, Tq, Tk]` is shared by the
//! heads. Forward is one pass per row; backward is one pass per row,
//! `dx = scale · y ⊙ (dy − Σ y·dy)`; the bias gets no gradient.

mod composed;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{Result, Tensor};
pub use composed::masked_softmax_composed;

use crate::{Backend, widened};

/// `softmax(scale · x + bias)` over the last dimension, computed in f32 for half-precision
/// scores; the probabilities have `x`'s dtype.
pub fn masked_softmax(x: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let dtype = widened(x.dtype());
    match Backend::of(x) {
        Backend::Cpu => cpu::masked_softmax(&x.to_dtype(dtype)?, &bias.to_dtype(dtype)?, scale)?.to_dtype(x.dtype()),
        #[cfg(feature = "cuda")]
        Backend::Cuda => cpu::masked_softmax(x, &bias.to_dtype(candle_core::DType::F32)?, scale),
        Backend::Composed => {
            masked_softmax_composed(&x.to_dtype(dtype)?, &bias.to_dtype(dtype)?, scale)?.to_dtype(x.dtype())
        }
    }
}
