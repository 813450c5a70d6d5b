//! The CUDA kernels' launches (`kernels.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaDType;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::{CudaStorage, Layout, Result};

use crate::cuda::{BLOCK, Module, contiguous, count, kernel, launch, per_row, unfilled};

const KERNELS: Module = Module { name: "rms_norm", source: include_str!("kernels.cu"), arch: None };

/// Rows per partial sum of `dw`, unless there are more spans than a grid's second dimension
/// holds (65,535).
const SPAN: usize = 64;

pub(super) fn forward<T: CudaDType + DeviceRepr>(
    x: &CudaStorage,
    xl: &Layout,
    w: &CudaStorage,
    wl: &Layout,
    eps: f64,
) -> Result<CudaStorage> {
    let device = &x.device;
    let (xs, ws) = (contiguous::<T>(x, xl)?, contiguous::<T>(w, wl)?);
    let d = wl.shape().elem_count();
    let mut y = unfilled::<T>(device, xs.len())?;
    let (d32, eps) = (count(d)?, eps as f32);
    let f = kernel(device, &KERNELS, "rms_norm_forward", x.dtype())?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&f);
    args.arg(&xs).arg(&ws).arg(&mut y).arg(&d32).arg(&eps);
    launch(args, per_row(xs.len() / d.max(1))?)?;
    Ok(CudaStorage::wrap_cuda_slice(y, device.clone()))
}

/// `[dx..., dw...]` in one buffer, as the CPU kernel returns them.
pub(super) fn backward<T: CudaDType + DeviceRepr>(
    (x, xl): (&CudaStorage, &Layout),
    (w, wl): (&CudaStorage, &Layout),
    (dy, dyl): (&CudaStorage, &Layout),
    eps: f64,
) -> Result<CudaStorage> {
    let device = &x.device;
    let (xs, ws, dys) = (contiguous::<T>(x, xl)?, contiguous::<T>(w, wl)?, contiguous::<T>(dy, dyl)?);
    let (n, d) = (xs.len(), wl.shape().elem_count());
    let rows = n / d.max(1);
    let span = SPAN.max(rows.div_ceil(65_535));
    let spans = rows.div_ceil(span);
    let mut out = unfilled::<T>(device, n + d)?;
    let mut inv_rms = unfilled::<f32>(device, rows)?;
    let mut partial = unfilled::<f32>(device, spans * d)?;
    let (d32, rows32, spans32, span32, eps) = (count(d)?, count(rows)?, count(spans)?, count(span)?, eps as f32);
    let columns = count(d.div_ceil(BLOCK as usize))?;
    let block = (BLOCK, 1, 1);
    let stream = device.cuda_stream();
    let (mut dx, mut dw) = out.split_at_mut(n);

    let f = kernel(device, &KERNELS, "rms_norm_dx", x.dtype())?;
    let mut args = stream.launch_builder(&f);
    args.arg(&xs).arg(&ws).arg(&dys).arg(&mut dx).arg(&mut inv_rms).arg(&d32).arg(&eps);
    launch(args, per_row(rows)?)?;

    let f = kernel(device, &KERNELS, "rms_norm_dw_partial", x.dtype())?;
    let mut args = stream.launch_builder(&f);
    args.arg(&xs).arg(&dys).arg(&inv_rms).arg(&mut partial).arg(&rows32).arg(&d32).arg(&span32);
    launch(args, LaunchConfig { grid_dim: (columns, spans32, 1), block_dim: block, shared_mem_bytes: 0 })?;

    let f = kernel(device, &KERNELS, "rms_norm_dw", x.dtype())?;
    let mut args = stream.launch_builder(&f);
    args.arg(&partial).arg(&mut dw).arg(&spans32).arg(&d32);
    launch(args, LaunchConfig { grid_dim: (columns, 1, 1), block_dim: block, shared_mem_bytes: 0 })?;
    Ok(CudaStorage::wrap_cuda_slice(out, device.clone()))
}
