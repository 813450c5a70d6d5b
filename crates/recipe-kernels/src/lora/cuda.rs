//! The dropout mask drawn on the GPU (`kernels.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Layout, Result, Shape};

use super::Dropout;
use crate::cuda::{Module, count, for_dtype, kernel, launch, per_element, unfilled};

const KERNELS: Module = Module { name: "lora", source: include_str!("kernels.cu"), arch: None };

/// The mask of `n` elements in `dtype`, drawn on `device`.
pub(super) fn dropout_mask(device: &CudaDevice, dropout: Dropout, n: usize, dtype: DType) -> Result<CudaStorage> {
    for_dtype!(dtype, mask_in(device, dropout, n, dtype))
}

fn mask_in<T: CudaDType + DeviceRepr>(
    device: &CudaDevice,
    dropout: Dropout,
    n: usize,
    dtype: DType,
) -> Result<CudaStorage> {
    let mut mask = unfilled::<T>(device, n)?;
    let (n32, threshold, keep) = (count(n)?, dropout.threshold(), dropout.keep_in(dtype));
    let f = kernel(device, &KERNELS, "dropout_mask", dtype)?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&f);
    args.arg(&mut mask).arg(&n32).arg(&dropout.seed).arg(&threshold).arg(&keep);
    launch(args, per_element(n)?)?;
    Ok(CudaStorage::wrap_cuda_slice(mask, device.clone()))
}

/// The mask shaped like its input, drawn on the input's GPU (the input's values are not read).
pub(super) struct MaskLike(pub(super) Dropout);

impl CustomOp1 for MaskLike {
    fn name(&self) -> &'static str {
        "dropout-mask"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("dropout-mask is the GPU's; the CPU draws its masks in Dropout::mask_of")
    }

    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((dropout_mask(&x.device, self.0, l.shape().elem_count(), x.dtype())?, l.shape().clone()))
    }
}
