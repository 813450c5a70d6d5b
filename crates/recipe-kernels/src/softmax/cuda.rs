//! The CUDA kernels' launches (`kernels.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaDType;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
use candle_core::{CudaStorage, Layout, Result};

use crate::cuda::{Module, contiguous, count, kernel, launch, per_row, unfilled};

const KERNELS: Module = Module { name: "softmax", source: include_str!("kernels.cu"), arch: None };

/// `x` `[B, H, Tq, Tk]` of T, `bias` `[B, 1, Tq, Tk]` of f32.
pub(super) fn forward<T: CudaDType + DeviceRepr>(
    (x, xl): (&CudaStorage, &Layout),
    (bias, bl): (&CudaStorage, &Layout),
    scale: f64,
) -> Result<CudaStorage> {
    let device = &x.device;
    let (_, heads, tq, tk) = xl.shape().dims4()?;
    let (xs, bs) = (contiguous::<T>(x, xl)?, contiguous::<f32>(bias, bl)?);
    let mut y = unfilled::<T>(device, xs.len())?;
    let (heads32, tq32, tk32, scale) = (count(heads)?, count(tq)?, count(tk)?, scale as f32);
    let f = kernel(device, &KERNELS, "masked_softmax_forward", x.dtype())?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&f);
    args.arg(&xs).arg(&bs).arg(&mut y).arg(&heads32).arg(&tq32).arg(&tk32).arg(&scale);
    launch(args, per_row(xs.len() / tk.max(1))?)?;
    Ok(CudaStorage::wrap_cuda_slice(y, device.clone()))
}

/// `dx` from the probabilities `y` and their gradient `dy`.
pub(super) fn backward<T: CudaDType + DeviceRepr>(
    (y, yl): (&CudaStorage, &Layout),
    (dy, dyl): (&CudaStorage, &Layout),
    scale: f64,
) -> Result<CudaStorage> {
    let device = &y.device;
    let tk = yl.shape().dims().last().copied().unwrap_or(1);
    let (ys, dys) = (contiguous::<T>(y, yl)?, contiguous::<T>(dy, dyl)?);
    let mut dx = unfilled::<T>(device, ys.len())?;
    let (tk32, scale) = (count(tk)?, scale as f32);
    let f = kernel(device, &KERNELS, "masked_softmax_backward", y.dtype())?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&f);
    args.arg(&ys).arg(&dys).arg(&mut dx).arg(&tk32).arg(&scale);
    launch(args, per_row(ys.len() / tk.max(1))?)?;
    Ok(CudaStorage::wrap_cuda_slice(dx, device.clone()))
}
