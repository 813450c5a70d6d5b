//! The CUDA kernels' launches: forward keeps each query's log-sum-exp and the spans on the
//! device for backward, which runs `delta = Σ dout·out`, then `dq` per block of queries and
//! `dk`, `dv` per block of keys. bf16 and f16 run on tensor cores (`mma.cu`, sm_80 and newer);
//! f32 on the CUDA cores (`kernels.cu`).

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId};
use candle_core::{CudaStorage, DType, Layout, Result};

use super::cpu::Dims;
use super::{KeySpans, Scores};
use crate::cuda::{BLOCK, Module, blocks, contiguous, count, kernel, launch, per_element, unfilled};

const KERNELS: Module = Module { name: "attention", source: include_str!("kernels.cu"), arch: None };

const TENSOR_CORE_KERNELS: Module =
    Module { name: "attention_mma", source: include_str!("mma.cu"), arch: Some("compute_80") };

/// Which kernels run.
#[derive(Clone, Copy)]
pub(super) struct Kernels {
    module: &'static Module,
    prefix: &'static str,
}

const CUDA_CORES: Kernels = Kernels { module: &KERNELS, prefix: "attention" };
const TENSOR_CORES: Kernels = Kernels { module: &TENSOR_CORE_KERNELS, prefix: "attention_mma" };

impl Kernels {
    /// Tensor cores for 16-bit inputs on sm_80 and newer, whose operands start on a whole pair
    /// of elements (their kernels read two at a time), at head dimensions up to 128 (at 256 the
    /// accumulators would not fit in registers). `RECIPE_CUDA_ATTENTION=cuda-cores` keeps them
    /// on the CUDA cores (to compare the two).
    fn for_inputs(device: &CudaDevice, dtype: DType, hd: usize, layouts: [&Layout; 3]) -> Result<Kernels> {
        let allowed = match std::env::var("RECIPE_CUDA_ATTENTION").as_deref() {
            Err(_) | Ok("tensor-cores") => true,
            Ok("cuda-cores") => false,
            Ok(other) => candle_core::bail!("RECIPE_CUDA_ATTENTION={other}: expected tensor-cores or cuda-cores"),
        };
        let sixteen_bits = matches!(dtype, DType::BF16 | DType::F16);
        let paired = layouts.iter().all(|l| l.start_offset() % 2 == 0);
        if allowed && sixteen_bits && paired && hd <= 128 && crate::cuda::compute_capability(device)?.0 >= 8 {
            Ok(TENSOR_CORES)
        } else {
            Ok(CUDA_CORES)
        }
    }

    /// How many queries (or keys) a block takes (`ROWS_PER_BLOCK` in the `.cu` files): 16 a
    /// warp on tensor cores; on the CUDA cores one for every four threads, or eight at head
    /// dimension 256.
    fn rows_per_block(&self, hd: usize) -> usize {
        match (self.prefix == TENSOR_CORES.prefix, hd) {
            (true, _) => BLOCK as usize / 32 * 16,
            (false, 256) => BLOCK as usize / 8,
            (false, _) => BLOCK as usize / 4,
        }
    }

    fn name(&self, step: &str, hd: usize) -> String {
        format!("{}_{step}_{hd}", self.prefix)
    }

    /// The passes over blocks of keys: `dk` and `dv` in one, but on tensor cores at head
    /// dimension 128, where each has a pass of its own (both would not fit in registers).
    fn key_passes(&self, hd: usize) -> &'static [&'static str] {
        if self.prefix == TENSOR_CORES.prefix && hd == 128 { &["dk", "dv"] } else { &["dkv"] }
    }
}

/// Whether the kernels are built for heads of `hd` (others run the composed fallback).
pub(super) fn has_kernel_for(hd: usize) -> bool {
    matches!(hd, 32 | 64 | 128 | 256)
}

/// `[lo, hi)` of each query's keys, `[B · Tq · 2]`, on the device that holds them.
type OnDevice = (DeviceId, Arc<CudaSlice<u32>>);

/// Where a [`KeySpans`] keeps its spans once uploaded (shared by its clones).
pub(super) type Uploaded = Arc<Mutex<Option<OnDevice>>>;

impl KeySpans {
    /// The spans on `device`: uploaded by the first call, the same copy after (one
    /// host-to-device copy per micro-batch, not one per layer).
    fn on(&self, device: &CudaDevice) -> Result<Arc<CudaSlice<u32>>> {
        let mut uploaded = self.on_cuda.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((id, spans)) = uploaded.as_ref()
            && *id == device.id()
        {
            return Ok(spans.clone());
        }
        let flat: Vec<u32> = self.spans.iter().flat_map(|&(lo, hi)| [lo, hi]).collect();
        let spans = Arc::new(device.clone_htod(flat.as_slice())?);
        *uploaded = Some((device.id(), spans.clone()));
        Ok(spans)
    }
}

/// The kernels' `scale` and `cap` (0 for none).
fn launched(scores: Scores) -> (f32, f32) {
    (scores.scale as f32, scores.cap.unwrap_or(0.0) as f32)
}

/// What forward leaves on the device for backward.
pub(super) struct Saved {
    /// `[lo, hi)` of each query's keys, `[B · Tq · 2]`.
    spans: Arc<CudaSlice<u32>>,
    /// Each query's log-sum-exp of its scaled scores, `[B, H, Tq]`.
    lse: CudaSlice<f32>,
    /// The kernels forward ran, which backward runs too.
    kernels: Kernels,
}

/// `[B, Tq, H, hd]` and what backward needs.
pub(super) fn forward<T: CudaDType + DeviceRepr>(
    (q, ql): (&CudaStorage, &Layout),
    (k, kl): (&CudaStorage, &Layout),
    (v, vl): (&CudaStorage, &Layout),
    d: Dims,
    spans: &KeySpans,
    scores: Scores,
) -> Result<(CudaStorage, Saved)> {
    let device = &q.device;
    let kernels = Kernels::for_inputs(device, q.dtype(), d.hd, [ql, kl, vl])?;
    let (qs, ks, vs) = (contiguous::<T>(q, ql)?, contiguous::<T>(k, kl)?, contiguous::<T>(v, vl)?);
    let spans = spans.on(device)?;
    let mut out = unfilled::<T>(device, qs.len())?;
    let mut lse = unfilled::<f32>(device, d.b * d.h * d.tq)?;
    let (h, kvh, tq, tk) = (count(d.h)?, count(d.kvh)?, count(d.tq)?, count(d.tk)?);
    let (scale, cap) = launched(scores);
    let f = kernel(device, kernels.module, &kernels.name("forward", d.hd), q.dtype())?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&f);
    args.arg(&qs).arg(&ks).arg(&vs).arg(&*spans).arg(&mut out).arg(&mut lse);
    args.arg(&h).arg(&kvh).arg(&tq).arg(&tk).arg(&scale).arg(&cap);
    launch(args, blocks(d.tq.div_ceil(kernels.rows_per_block(d.hd)), d.b * d.h)?)?;
    Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), Saved { spans, lse, kernels }))
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
    scores: Scores,
) -> Result<CudaStorage> {
    let (qs, ks, vs) = (contiguous::<T>(q, ql)?, contiguous::<T>(k, kl)?, contiguous::<T>(v, vl)?);
    let (os, dos) = (contiguous::<T>(o, ol)?, contiguous::<T>(dout, dl)?);
    let (nq, nk) = (qs.len(), ks.len());
    let queries = d.b * d.tq * d.h;
    let mut grads = unfilled::<T>(device, nq + 2 * nk)?;
    let mut delta = unfilled::<f32>(device, queries)?;
    let (h, kvh, tq, tk) = (count(d.h)?, count(d.kvh)?, count(d.tq)?, count(d.tk)?);
    let (scale, cap) = launched(scores);
    let queries32 = count(queries)?;
    let dtype = q.dtype();
    let stream = device.cuda_stream();
    let (mut dq, mut dkv) = grads.split_at_mut(nq);
    let (mut dk, mut dv) = dkv.split_at_mut(nk);

    let f = kernel(device, &KERNELS, &format!("attention_delta_{}", d.hd), dtype)?;
    let mut args = stream.launch_builder(&f);
    args.arg(&os).arg(&dos).arg(&mut delta).arg(&h).arg(&tq).arg(&queries32);
    launch(args, per_element(queries)?)?;

    let kernels = saved.kernels;
    let f = kernel(device, kernels.module, &kernels.name("dq", d.hd), dtype)?;
    let mut args = stream.launch_builder(&f);
    args.arg(&qs).arg(&ks).arg(&vs).arg(&*saved.spans).arg(&dos).arg(&saved.lse).arg(&delta).arg(&mut dq);
    args.arg(&h).arg(&kvh).arg(&tq).arg(&tk).arg(&scale).arg(&cap);
    launch(args, blocks(d.tq.div_ceil(kernels.rows_per_block(d.hd)), d.b * d.h)?)?;

    for pass in kernels.key_passes(d.hd) {
        let f = kernel(device, kernels.module, &kernels.name(pass, d.hd), dtype)?;
        let mut args = stream.launch_builder(&f);
        args.arg(&qs).arg(&ks).arg(&vs).arg(&*saved.spans).arg(&dos).arg(&saved.lse).arg(&delta);
        args.arg(&mut dk).arg(&mut dv).arg(&h).arg(&kvh).arg(&tq).arg(&tk).arg(&scale).arg(&cap);
        launch(args, blocks(d.tk.div_ceil(kernels.rows_per_block(d.hd)), d.b * d.kvh)?)?;
    }
    Ok(CudaStorage::wrap_cuda_slice(grads, device.clone()))
}
