//! AdamW's update of one parameter, in place on the device where the parameter lives:
//! `g = grad · grad_scale`, `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
//! `p ← p − lr·wd·p − (lr/bc₁)·m / (√v/√bc₂ + ε)`. The moments are f32 whatever the
//! parameter's dtype, kept as one `[2, n]` tensor (m, then v), so the update is two in-place
//! passes (moments from the gradient, then the parameter from the moments) and allocates
//! nothing. `grad_scale` folds global-norm clipping and a loss scaler's unscaling into the
//! same pass. The global gradient norm that clipping needs is here too.

mod composed;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{DType, Result, Tensor, Var};
pub use composed::{adamw_step_composed, squared_norm_composed};

use crate::Backend;

/// One step's hyper-parameters for one parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay; 0 for parameters that are not decayed.
    pub weight_decay: f64,
    /// The step number, from 1, for bias correction.
    pub t: u64,
    /// Multiplies the gradient before it enters the moments.
    pub grad_scale: f64,
}

impl AdamWStep {
    /// `(lr / bc₁, 1 / √bc₂, lr · wd)`, in f64 before rounding to f32 as every kernel does.
    fn factors(&self) -> (f32, f32, f32) {
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        ((self.lr / bc1) as f32, (1.0 / bc2.sqrt()) as f32, (self.lr * self.weight_decay) as f32)
    }
}

/// A parameter's fresh moments: f32 zeros `[2, n]`.
pub fn adamw_moments(param: &Tensor) -> Result<Var> {
    Var::zeros((2, param.elem_count()), DType::F32, param.device())
}

/// Update `param` and its `moments` in place from `grad` (`param`'s shape, any float dtype).
pub fn adamw_step(param: &Var, grad: &Tensor, moments: &Var, step: &AdamWStep) -> Result<()> {
    if grad.shape() != param.shape() || moments.dims() != [2, param.elem_count()] {
        candle_core::bail!(
            "adamw: param {:?}, grad {:?}, moments {:?} do not fit",
            param.shape(),
            grad.shape(),
            moments.shape()
        );
    }
    match Backend::of(param) {
        Backend::Cpu => cpu::adamw_step(param, &grad.to_dtype(DType::F32)?, moments, step),
        // The kernel reads the gradient in its own dtype.
        #[cfg(feature = "cuda")]
        Backend::Cuda => cpu::adamw_step(param, grad, moments, step),
        Backend::Composed => adamw_step_composed(param, grad, moments, step),
    }
}

/// `Σ g²` over every element of every tensor, in f64 on the CPU; elsewhere partial sums in
/// f32 on the device, in a fixed order, with one transfer to the host for all of them.
pub fn squared_norm(tensors: &[Tensor]) -> Result<f64> {
    match tensors.first().map(|t| (Backend::of(t), t.device())) {
        None => Ok(0.0),
        Some((Backend::Cpu, _)) => tensors.iter().map(cpu::squared_norm).sum(),
        #[cfg(feature = "cuda")]
        Some((Backend::Cuda, candle_core::Device::Cuda(device))) => cuda::squared_norm(device, tensors),
        Some(_) => squared_norm_composed(tensors),
    }
}
