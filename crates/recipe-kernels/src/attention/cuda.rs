//! The CUDA kernels' launches (`kernels.cu`): forward keeps each query's log-sum-exp and the
//! spans on the device for backward, which runs `delta = Σ dout·out`, then `dq` per block of
//! queries and `dk`, `dv` per block of keys.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::{CudaStorage, Layout, Result};

use super::cpu::Dims;
use crate::cuda::{BLOCK, Module, contiguous, count, kernel, launch, per_element, unfilled};

const KERNELS: Module = Module { name: "attention", source: include_str!("kernels.cu") };

/// Queries (or keys) per block: four threads each (`ROWS_PER_BLOCK` in `kernels.cu`).
const ROWS_PER_BLOCK: usize = BLOCK as usize / 4;

/// Whether the kernels are built for heads of `hd` (others run the composed fallback).
pub(super) fn has_kernel_for(hd: usize) -> bool {
    matches!(hd, 32 | 64 | 128)
}

/// What forward leaves on the device for backward.
pub(super) struct Saved {
    /// `[lo, hi)` of each query's keys, `[B · Tq · 2]`.
    spans: CudaSlice<u32>,
    /// Each query's log-sum-exp of its scaled scores, `[B, H, Tq]`.
    lse: CudaSlice<f32>,
}

fn grid(blocks_x: usize, blocks_y: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (count(blocks_x)?, count(blocks_y)?, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// `[B, Tq, H, hd]` and what backward needs.
pub(super) fn forward<T: CudaDType + DeviceRepr>(
    (q, ql): (&CudaStorage, &Layout),
    (k, kl): (&CudaStorage, &Layout),
    (v, vl): (&CudaStorage, &Layout),
    d: Dims,
    spans: &[(u32, u32)],
    scale: f64,
) -> Result<(CudaStorage, Saved)> {
    let device = &q.device;
    let (qs, ks, vs) = (contiguous::<T>(q, ql)?, contiguous::<T>(k, kl)?, contiguous::<T>(v, vl)?);
    let flat: Vec<u32> = spans.iter().flat_map(|&(lo, hi)| [lo, hi]).collect();
    let spans = device.clone_htod(flat.as_slice())?;
    let mut out = unfilled::<T>(device, qs.len())?;
    let mut lse = unfilled::<f32>(device, d.b * d.h * d.tq)?;
    let (h, kvh, tq, tk, scale) = (count(d.h)?, count(d.kvh)?, count(d.tq)?, count(d.tk)?, scale as f32);
    let f = kernel(device, &KERNELS, &format!("attention_forward_{}", d.hd), q.dtype())?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&f);
    args.arg(&qs).arg(&ks).arg(&vs).arg(&spans).arg(&mut out).arg(&mut lse);
    args.arg(&h).arg(&kvh).arg(&tq).arg(&tk).arg(&scale);
    launch(args, grid(d.tq.div_ceil(ROWS_PER_BLOCK), d.b * d.h)?)?;
    Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), Saved { spans, lse }))
}

/// `[dq..., dk..., dv...]` in one buffer, as the CPU kernel returns them.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward<T: CudaDType + DeviceRepr>(
    device: &CudaDevice,
    (q, ql): (&CudaStorage, &Layout),
    (k, kl): (&CudaStorage, &Layout),
    (v, vl): (&CudaStorage, &Layout),
    (o, ol): (&CudaStorage, &Layout),
    (dout, dl): (&CudaStorage, &Layout),
    saved: &Saved,
    d: Dims,
    scale: f64,
) -> Result<CudaStorage> {
    let (qs, ks, vs) = (contiguous::<T>(q, ql)?, contiguous::<T>(k, kl)?, contiguous::<T>(v, vl)?);
    let (os, dos) = (contiguous::<T>(o, ol)?, contiguous::<T>(dout, dl)?);
    let (nq, nk) = (qs.len(), ks.len());
    let queries = d.b * d.tq * d.h;
    let mut grads = unfilled::<T>(device, nq + 2 * nk)?;
    let mut delta = unfilled::<f32>(device, queries)?;
    let (h, kvh, tq, tk, scale) = (count(d.h)?, count(d.kvh)?, count(d.tq)?, count(d.tk)?, scale as f32);
    let queries32 = count(queries)?;
    let dtype = q.dtype();
    let stream = device.cuda_stream();
    let (mut dq, mut dkv) = grads.split_at_mut(nq);
    let (mut dk, mut dv) = dkv.split_at_mut(nk);

    let f = kernel(device, &KERNELS, &format!("attention_delta_{}", d.hd), dtype)?;
    let mut args = stream.launch_builder(&f);
    args.arg(&os).arg(&dos).arg(&mut delta).arg(&h).arg(&tq).arg(&queries32);
    launch(args, per_element(queries)?)?;

    let f = kernel(device, &KERNELS, &format!("attention_dq_{}", d.hd), dtype)?;
    let mut args = stream.launch_builder(&f);
    args.arg(&qs).arg(&ks).arg(&vs).arg(&saved.spans).arg(&dos).arg(&saved.lse).arg(&delta).arg(&mut dq);
    args.arg(&h).arg(&kvh).arg(&tq).arg(&tk).arg(&scale);
    launch(args, grid(d.tq.div_ceil(ROWS_PER_BLOCK), d.b * d.h)?)?;

    let f = kernel(device, &KERNELS, &format!("attention_dkv_{}", d.hd), dtype)?;
    let mut args = stream.launch_builder(&f);
    args.arg(&qs).arg(&ks).arg(&vs).arg(&saved.spans).arg(&dos).arg(&saved.lse).arg(&delta).arg(&mut dk).arg(&mut dv);
    args.arg(&h).arg(&kvh).arg(&tq).arg(&tk).arg(&scale);
    launch(args, grid(d.tk.div_ceil(ROWS_PER_BLOCK), d.b * d.kvh)?)?;
    Ok(CudaStorage::wrap_cuda_slice(grads, device.clone()))
}
