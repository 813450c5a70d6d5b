//! The CUDA kernels' launches (`kernels.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaDType;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
use candle_core::{CudaStorage, Layout, Result};

use crate::cuda::{Module, contiguous, count, kernel, launch, per_element, unfilled};

const KERNELS: Module = Module { name: "swiglu", source: include_str!("kernels.cu"), arch: None };

pub(super) fn forward<T: CudaDType + DeviceRepr>(
    (g, gl): (&CudaStorage, &Layout),
    (u, ul): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let device = &g.device;
    let (gs, us) = (contiguous::<T>(g, gl)?, contiguous::<T>(u, ul)?);
    let n = gs.len();
    let mut y = unfilled::<T>(device, n)?;
    let n32 = count(n)?;
    let f = kernel(device, &KERNELS, "swiglu_forward", g.dtype())?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&f);
    args.arg(&gs).arg(&us).arg(&mut y).arg(&n32);
    launch(args, per_element(n)?)?;
    Ok(CudaStorage::wrap_cuda_slice(y, device.clone()))
}

/// `[dg..., du...]` in one buffer, as the CPU kernel returns them.
pub(super) fn backward<T: CudaDType + DeviceRepr>(
    (g, gl): (&CudaStorage, &Layout),
    (u, ul): (&CudaStorage, &Layout),
    (dy, dyl): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let device = &g.device;
    let (gs, us, dys) = (contiguous::<T>(g, gl)?, contiguous::<T>(u, ul)?, contiguous::<T>(dy, dyl)?);
    let n = gs.len();
    let mut out = unfilled::<T>(device, 2 * n)?;
    let n32 = count(n)?;
    let f = kernel(device, &KERNELS, "swiglu_backward", g.dtype())?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&f);
    args.arg(&gs).arg(&us).arg(&dys).arg(&mut out).arg(&n32);
    launch(args, per_element(n)?)?;
    Ok(CudaStorage::wrap_cuda_slice(out, device.clone()))
}
