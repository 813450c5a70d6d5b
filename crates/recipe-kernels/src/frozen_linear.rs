//! `y = x · wᵀ` for a weight that is not trained (a LoRA base weight, a teacher's weight).
//! Candle's matmul backward always computes the right operand's gradient — a weight-sized
//! buffer and 2·N·in·out FLOPs per projection that a frozen weight throws away. This op's
//! backward returns the input's gradient only, `dx = dy · w`. The forward pass is the
//! backend's own matrix product, so one implementation serves the CPU, CUDA and Metal.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// `x` `[N, in]` times the transpose of `w` `[out, in]`; `w` never gets a gradient.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2(w, FrozenLinear)
}

struct FrozenLinear;

impl CustomOp2 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout, w: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        project(x, xl, w, wl)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        project(x, xl, w, wl)
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        x: &candle_core::MetalStorage,
        xl: &Layout,
        w: &candle_core::MetalStorage,
        wl: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        project(x, xl, w, wl)
    }

    fn bwd(&self, _x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(dy.matmul(&w.detach())?), None))
    }
}

/// `x · wᵀ` on any backend's storage.
fn project<S: BackendStorage>(x: &S, xl: &Layout, w: &S, wl: &Layout) -> Result<(S, Shape)> {
    let (n, k) = xl.shape().dims2()?;
    let (out, k2) = wl.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("frozen-linear: x is [{n}, {k}] but w is [{out}, {k2}]");
    }
    let y = x.matmul(w, (1, n, out, k), xl, &wl.transpose(0, 1)?)?;
    Ok((y, Shape::from((n, out))))
}
