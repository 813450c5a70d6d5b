//! The CUDA kernels' launches (`kernels.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaDType;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
use candle_core::{CudaStorage, Layout, Result};

use super::Activation;
use crate::cuda::{Module, contiguous, count, kernel, launch, per_element, unfilled};

const KERNELS: Module = Module { name: "glu", source: include_str!("kernels.cu"), arch: None };

pub(super) fn forward<T: CudaDType + DeviceRepr>(
    act: Activation,
    (g, gl): (&CudaStorage, &Layout),
    (u, ul): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let device = &g.device;
    let (gs, us) = (contiguous::<T>(g, gl)?, contiguous::<T>(u, ul)?);
    let n = gs.len();
    let mut y = unfilled::<T>(device, n)?;
    let (n32, act) = (count(n)?, code(act));
    let f = kernel(device, &KERNELS, "glu_forward", g.dtype())?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&f);
    args.arg(&gs).arg(&us).arg(&mut y).arg(&n32).arg(&act);
    launch(args, per_element(n)?)?;
    Ok(CudaStorage::wrap_cuda_slice(y, device.clone()))
}

/// `[dg..., du...]` in one buffer, as the CPU kernel returns them.
pub(super) fn backward<T: CudaDType + DeviceRepr>(
    act: Activation,
    (g, gl): (&CudaStorage, &Layout),
    (u, ul): (&CudaStorage, &Layout),
    (dy, dyl): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let device = &g.device;
    let (gs, us, dys) = (contiguous::<T>(g, gl)?, contiguous::<T>(u, ul)?, contiguous::<T>(dy, dyl)?);
    let n = gs.len();
    let mut out = unfilled::<T>(device, 2 * n)?;
    let (n32, act) = (count(n)?, code(act));
    let f = kernel(device, &KERNELS, "glu_backward", g.dtype())?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&f);
    args.arg(&gs).arg(&us).arg(&dys).arg(&mut out).arg(&n32).arg(&act);
    launch(args, per_element(n)?)?;
    Ok(CudaStorage::wrap_cuda_slice(out, device.clone()))
}

/// The activation as `kernels.cu` numbers it.
fn code(act: Activation) -> u32 {
    match act {
        Activation::Silu => 0,
        Activation::GeluTanh => 1,
    }
}
