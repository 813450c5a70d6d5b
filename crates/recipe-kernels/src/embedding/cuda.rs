//! The CUDA kernel's launch (`kernels.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaDType;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
use candle_core::{CudaStorage, Layout, Result};

use super::Groups;
use crate::cuda::{BLOCK, Module, blocks, contiguous, count, kernel, launch, unfilled};

const KERNELS: Module = Module { name: "embedding", source: include_str!("kernels.cu"), arch: None };

/// `[rows, d]`: each table row's sum of `dy`'s rows at its positions.
pub(super) fn row_sums<T: CudaDType + DeviceRepr>(
    (dy, l): (&CudaStorage, &Layout),
    groups: &Groups,
    d: usize,
) -> Result<CudaStorage> {
    let device = &dy.device;
    let dys = contiguous::<T>(dy, l)?;
    let (offsets, order) = (device.clone_htod(groups.offsets.as_slice())?, device.clone_htod(groups.order.as_slice())?);
    let rows = groups.rows();
    let mut dw = unfilled::<T>(device, rows * d)?;
    let cols = count(d)?;
    let f = kernel(device, &KERNELS, "embedding_backward", dy.dtype())?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&f);
    args.arg(&dys).arg(&offsets).arg(&order).arg(&mut dw).arg(&cols);
    launch(args, blocks(rows, d.div_ceil(BLOCK as usize))?)?;
    Ok(CudaStorage::wrap_cuda_slice(dw, device.clone()))
}
