//! The gated MLP's activation, fused: `y = act(g) ⊙ u`, with `act` SiLU (SwiGLU: Llama, Qwen)
//! or the tanh-approximated GELU (GeGLU: Gemma). Both are `act(g) = g·σ(z(g))`: SiLU with
//! `z = g`, GELU with `z = 2·√(2/π)·(g + 0.044715·g³)` (as `½(1 + tanh(z/2)) = σ(z)`). Forward
//! is one pass; backward one pass giving both gradients, with `s = σ(z)`:
//! `dg = dy·u·(s + g·s·(1 − s)·z′)`, `du = dy·g·s`.

mod composed;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{Result, Tensor};
pub use composed::glu_composed;

use crate::{Backend, widened};

/// The activation of a gated MLP's gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `g·σ(g)`.
    Silu,
    /// `½·g·(1 + tanh(√(2/π)·(g + 0.044715·g³)))`: PyTorch's `gelu(approximate="tanh")`,
    /// `transformers`' `gelu_pytorch_tanh`.
    GeluTanh,
}

/// `act(gate) ⊙ up`, elementwise over tensors of one shape; computed in f32 for half-precision
/// inputs, the result in `gate`'s dtype.
pub fn glu(gate: &Tensor, up: &Tensor, act: Activation) -> Result<Tensor> {
    match Backend::of(gate) {
        Backend::Cpu => {
            let dtype = widened(gate.dtype());
            cpu::glu(&gate.to_dtype(dtype)?, &up.to_dtype(dtype)?, act)?.to_dtype(gate.dtype())
        }
        #[cfg(feature = "cuda")]
        Backend::Cuda => cpu::glu(gate, &up.to_dtype(gate.dtype())?, act),
        Backend::Composed => glu_composed(gate, up, act),
    }
}
