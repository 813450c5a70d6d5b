//! The CUDA kernels' launches (`kernels.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaDType;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
use candle_core::{CudaStorage, Layout, Result};

use crate::cuda::{Module, contiguous, count, kernel, launch, per_row, unfilled};

const KERNELS: Module = Module { name: "cross_entropy", source: include_str!("kernels.cu"), arch: None };

/// Kernel `name` over `logits` `[N, V]` of T, `targets` `[N]` of u32 and a per-row f32
/// (the mask forward, the weight backward), into `len` elements of `O`.
fn rows<T: CudaDType + DeviceRepr, O: DeviceRepr>(
    name: &str,
    (logits, ll): (&CudaStorage, &Layout),
    (targets, tl): (&CudaStorage, &Layout),
    (per_row_f32, pl): (&CudaStorage, &Layout),
    len: usize,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<O>> {
    let device = &logits.device;
    let (ls, ts, ps) =
        (contiguous::<T>(logits, ll)?, contiguous::<u32>(targets, tl)?, contiguous::<f32>(per_row_f32, pl)?);
    let n = ts.len();
    if ps.len() != n || ls.len() != n * (ls.len() / n.max(1)) {
        candle_core::bail!(
            "cross_entropy: logits {:?}, targets {:?}, mask {:?} do not fit",
            ll.shape(),
            tl.shape(),
            pl.shape()
        );
    }
    let v = count(ls.len() / n.max(1))?;
    let mut out = unfilled::<O>(device, len)?;
    let f = kernel(device, &KERNELS, name, logits.dtype())?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&f);
    args.arg(&ls).arg(&ts).arg(&ps).arg(&mut out).arg(&v);
    launch(args, per_row(n)?)?;
    Ok(out)
}

/// The f32 loss of each row.
pub(super) fn forward<T: CudaDType + DeviceRepr>(
    logits: (&CudaStorage, &Layout),
    targets: (&CudaStorage, &Layout),
    mask: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let n = targets.1.shape().elem_count();
    let nll = rows::<T, f32>("cross_entropy_forward", logits, targets, mask, n)?;
    Ok(CudaStorage::wrap_cuda_slice(nll, logits.0.device.clone()))
}

/// `dlogits` in the logits' dtype, from each row's weight (mask · dloss).
pub(super) fn backward<T: CudaDType + DeviceRepr>(
    logits: (&CudaStorage, &Layout),
    targets: (&CudaStorage, &Layout),
    weight: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let d = rows::<T, T>("cross_entropy_backward", logits, targets, weight, logits.1.shape().elem_count())?;
    Ok(CudaStorage::wrap_cuda_slice(d, logits.0.device.clone()))
}
