//! The CUDA kernels' launches (`kernels.cu`), in place.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaDType;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
use candle_core::{CudaStorage, Layout, Result};

use super::AdamWStep;
use crate::cuda::{Module, contiguous, count, kernel, launch, per_element};

const KERNELS: Module = Module { name: "adamw", source: include_str!("kernels.cu"), arch: None };

/// The f32 moments `[m..., v...]` from a gradient of type T.
pub(super) fn moments<T: CudaDType + DeviceRepr>(
    (mv, mvl): (&mut CudaStorage, &Layout),
    (grad, gl): (&CudaStorage, &Layout),
    step: &AdamWStep,
) -> Result<()> {
    let device = mv.device.clone();
    let gs = contiguous::<T>(grad, gl)?;
    let n = gs.len();
    let Some((start, end)) = mvl.contiguous_offsets().filter(|(s, e)| e - s == 2 * n) else {
        candle_core::bail!("adamw: moments {:?} do not fit a gradient of {n}", mvl.shape())
    };
    let mut mvs = mv.as_cuda_slice_mut::<f32>()?.slice_mut(start..end);
    let (n32, b1, b2, scale) = (count(n)?, step.beta1 as f32, step.beta2 as f32, step.grad_scale as f32);
    let f = kernel(&device, &KERNELS, "adamw_moments", grad.dtype())?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&f);
    args.arg(&mut mvs).arg(&gs).arg(&n32).arg(&b1).arg(&b2).arg(&scale);
    launch(args, per_element(n)?)
}

/// A parameter of type T from the moments.
pub(super) fn apply<T: CudaDType + DeviceRepr>(
    (p, pl): (&mut CudaStorage, &Layout),
    (mv, mvl): (&CudaStorage, &Layout),
    step: &AdamWStep,
) -> Result<()> {
    let device = p.device.clone();
    let mvs = contiguous::<f32>(mv, mvl)?;
    let Some((start, end)) = pl.contiguous_offsets() else { candle_core::bail!("adamw needs contiguous tensors") };
    let n = end - start;
    if mvs.len() != 2 * n {
        candle_core::bail!("adamw: moments {:?} do not fit a parameter of {n}", mvl.shape());
    }
    let dtype = p.dtype();
    let mut ps = p.as_cuda_slice_mut::<T>()?.slice_mut(start..end);
    let (lr_bc1, inv_sqrt_bc2, decay) = step.factors();
    let (n32, eps) = (count(n)?, step.eps as f32);
    let f = kernel(&device, &KERNELS, "adamw_apply", dtype)?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&f);
    args.arg(&mut ps).arg(&mvs).arg(&n32).arg(&lr_bc1).arg(&inv_sqrt_bc2).arg(&decay).arg(&eps);
    launch(args, per_element(n)?)
}
