//! The CUDA kernels' launches (`kernels.cu`): the update in place, and the squared norm.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaViewMut, DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::{CudaStorage, Layout, Result, Storage, Tensor};

use super::AdamWStep;
use crate::cuda::{Module, blocks, contiguous, count, for_dtype, kernel, launch, per_element, unfilled};

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

/// Elements a block of `squared_norm_partials` sums at least (fewer blocks for small tensors),
/// and the most blocks one tensor takes.
const PER_BLOCK: usize = 8192;
const MOST_BLOCKS: usize = 1024;

/// How many blocks sum a tensor of `n` elements, and how many elements each takes: a function
/// of `n` alone, so the sums repeat bit for bit.
fn chunks(n: usize) -> (usize, usize) {
    let parts = n.div_ceil(PER_BLOCK).clamp(1, MOST_BLOCKS);
    (parts, n.div_ceil(parts).max(1))
}

/// `Σ x²` over every element of every tensor (all on `device`): each tensor's partial sums in
/// one buffer, read back in one copy and added in f64 in order. Candle's own `sum_all` gives a
/// whole tensor to one block (one SM).
pub(super) fn squared_norm(device: &CudaDevice, tensors: &[Tensor]) -> Result<f64> {
    let total = tensors.iter().map(|t| chunks(t.elem_count()).0).sum();
    let mut partials = unfilled::<f32>(device, total)?;
    let mut at = 0;
    for t in tensors {
        let t = t.contiguous()?;
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(s) = &*storage else { candle_core::bail!("squared_norm: tensors on more than one device") };
        let parts = chunks(t.elem_count()).0;
        let out = partials.slice_mut(at..at + parts);
        for_dtype!(s.dtype(), partial_sums((s, layout), out))?;
        at += parts;
    }
    Ok(device.clone_dtoh(&partials)?.iter().take(total).map(|&p| p as f64).sum())
}

fn partial_sums<T: CudaDType + DeviceRepr>(
    (x, l): (&CudaStorage, &Layout),
    mut out: CudaViewMut<'_, f32>,
) -> Result<()> {
    let device = &x.device;
    let xs = contiguous::<T>(x, l)?;
    let (parts, per_block) = chunks(xs.len());
    let (n, per_block) = (count(xs.len())?, count(per_block)?);
    let f = kernel(device, &KERNELS, "squared_norm_partials", x.dtype())?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&f);
    args.arg(&xs).arg(&n).arg(&per_block).arg(&mut out);
    launch(args, blocks(parts, 1)?)
}
