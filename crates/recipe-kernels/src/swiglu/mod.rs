//! The gated MLP's activation, fused: `y = silu(g) ⊙ u` with `silu(g) = g·σ(g)`. Forward is one
//! pass; backward one pass giving both gradients, with `s = σ(g)`:
//! `dg = dy·u·s·(1 + g·(1 − s))`, `du = dy·g·s`.

mod composed;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{Result, Tensor};
pub use composed::swiglu_composed;

use crate::{Backend, widened};

/// `silu(gate) ⊙ up`, elementwise over tensors of one shape; computed in f32 for half-precision
/// inputs, the result in `gate`'s dtype.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    match Backend::of(gate) {
        Backend::Cpu => {
            let dtype = widened(gate.dtype());
            cpu::swiglu(&gate.to_dtype(dtype)?, &up.to_dtype(dtype)?)?.to_dtype(gate.dtype())
        }
        #[cfg(feature = "cuda")]
        Backend::Cuda => cpu::swiglu(gate, &up.to_dtype(gate.dtype())?),
        Backend::Composed => swiglu_composed(gate, up),
    }
}
