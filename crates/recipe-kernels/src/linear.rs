//! A projection `y = x · wᵀ` as one op. Written as Candle's `x.matmul(&w.t())` it is two
//! nodes, and backward pays for the second: the weight's gradient is produced transposed,
//! summed into a zeroed buffer, then transposed back and summed again through strides. Here
//! backward gives `dx = dy · w` and `dw = dyᵀ · x` directly, each one matrix product reading
//! its operands through their strides. For a weight that is not trained (a LoRA base weight,
//! a teacher's) `frozen_linear` skips `dw` — a weight-sized buffer and 2·N·in·out FLOPs that
//! Candle's matmul would compute and throw away. The forward pass is the backend's own matrix
//! product, so one implementation serves the CPU, CUDA and Metal.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// `x` `[N, in]` times the transpose of `w` `[out, in]`, with the gradients of both.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2(w, Linear { weight_grad: true })
}

/// [`linear`] for a weight that never gets a gradient, even when it is a variable.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2(w, Linear { weight_grad: false })
}

struct Linear {
    weight_grad: bool,
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        if self.weight_grad { "linear" } else { "frozen-linear" }
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

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.track_op().then(|| dy.matmul(&w.detach())).transpose()?;
        let dw = (self.weight_grad && w.track_op()).then(|| dy.t()?.matmul(&x.detach())).transpose()?;
        Ok((dx, dw))
    }
}

/// `x · wᵀ` on any backend's storage.
fn project<S: BackendStorage>(x: &S, xl: &Layout, w: &S, wl: &Layout) -> Result<(S, Shape)> {
    let (n, k) = xl.shape().dims2()?;
    let (out, k2) = wl.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("linear: x is [{n}, {k}] but w is [{out}, {k2}]");
    }
    let y = x.matmul(w, (1, n, out, k), xl, &wl.transpose(0, 1)?)?;
    Ok((y, Shape::from((n, out))))
}
