//! The ops, and their CPU kernel (the CUDA kernels' launches are in `cuda.rs`): two in-place
//! passes over contiguous chunks, spread over Candle's workers.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor, Var};
use half::{bf16, f16};

use super::AdamWStep;
use crate::{Disjoint, parallel_for};

/// Elements per task: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 1 << 15;

pub(super) fn adamw_step(param: &Var, grad: &Tensor, moments: &Var, step: &AdamWStep) -> Result<()> {
    let grad = grad.flatten_all()?.contiguous()?;
    moments.inplace_op2(&grad, &Moments { step: *step })?;
    param.inplace_op2(moments.as_tensor(), &Apply { step: *step })
}

/// `m, v` from the gradient.
struct Moments {
    step: AdamWStep,
}

/// The parameter from `m, v`.
struct Apply {
    step: AdamWStep,
}

fn contiguous_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else { candle_core::bail!("adamw needs contiguous tensors") };
    match s {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        other => candle_core::bail!("adamw moments must be f32, not {:?}", other.dtype()),
    }
}

impl InplaceOp2 for Moments {
    fn name(&self) -> &'static str {
        "adamw-moments"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let g = crate::contiguous::<f32>(s2, l2)?;
        let mv = contiguous_mut(s1, l1)?;
        let n = g.len();
        let (m, v) = mv.split_at_mut(n);
        let (b1, b2, scale) = (self.step.beta1 as f32, self.step.beta2 as f32, self.step.grad_scale as f32);
        let (m, v) = (Disjoint::of(m), Disjoint::of(v));
        parallel_for(n.div_ceil(CHUNK), |c| {
            let range = c * CHUNK..((c + 1) * CHUNK).min(n);
            // Safety: chunks are disjoint and inside both halves of `mv`, which outlives the call.
            let (m, v) = unsafe { (m.part(range.start, range.len()), v.part(range.start, range.len())) };
            for ((m, v), g) in m.iter_mut().zip(v.iter_mut()).zip(&g[range]) {
                let g = g * scale;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
            }
        });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<()> {
        crate::cuda::for_dtype!(s2.dtype(), super::cuda::moments((s1, l1), (s2, l2), &self.step))
    }
}

/// The parameter's element type, read and written through f32.
trait Weight: Copy + Send + Sync {
    fn get(self) -> f32;
    fn put(v: f32) -> Self;
}

impl Weight for f32 {
    fn get(self) -> f32 {
        self
    }
    fn put(v: f32) -> Self {
        v
    }
}

impl Weight for bf16 {
    fn get(self) -> f32 {
        self.to_f32()
    }
    fn put(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl Weight for f16 {
    fn get(self) -> f32 {
        self.to_f32()
    }
    fn put(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Apply {
    fn run<W: Weight>(&self, p: &mut [W], mv: &[f32]) {
        let n = p.len();
        let (m, v) = mv.split_at(n);
        let (lr_bc1, inv_sqrt_bc2, decay) = self.step.factors();
        let eps = self.step.eps as f32;
        let p = Disjoint::of(p);
        parallel_for(n.div_ceil(CHUNK), |c| {
            let range = c * CHUNK..((c + 1) * CHUNK).min(n);
            // Safety: chunks are disjoint and inside `p`, which outlives the call.
            let p = unsafe { p.part(range.start, range.len()) };
            for ((p, m), v) in p.iter_mut().zip(&m[range.clone()]).zip(&v[range.clone()]) {
                let w = p.get();
                *p = W::put(w - (decay * w + lr_bc1 * m / (v.sqrt() * inv_sqrt_bc2 + eps)));
            }
        });
    }
}

impl InplaceOp2 for Apply {
    fn name(&self) -> &'static str {
        "adamw-apply"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let mv = crate::contiguous::<f32>(s2, l2)?;
        let Some((start, end)) = l1.contiguous_offsets() else { candle_core::bail!("adamw needs contiguous tensors") };
        match s1 {
            CpuStorage::F32(p) => self.run(&mut p[start..end], mv),
            CpuStorage::BF16(p) => self.run(&mut p[start..end], mv),
            CpuStorage::F16(p) => self.run(&mut p[start..end], mv),
            other => candle_core::bail!("adamw updates f32, bf16 or f16 parameters, not {:?}", other.dtype()),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<()> {
        crate::cuda::for_dtype!(s1.dtype(), super::cuda::apply((s1, l1), (s2, l2), &self.step))
    }
}

/// `Σ x²` in f64, read in place.
pub(super) fn squared_norm(t: &Tensor) -> Result<f64> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*storage else { candle_core::bail!("squared_norm: not a CPU tensor") };
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("contiguous above") };
    let sum = |it: &mut dyn Iterator<Item = f64>| it.map(|x| x * x).sum::<f64>();
    Ok(match s {
        CpuStorage::F32(v) => sum(&mut v[start..end].iter().map(|&x| x as f64)),
        CpuStorage::F64(v) => sum(&mut v[start..end].iter().copied()),
        CpuStorage::BF16(v) => sum(&mut v[start..end].iter().map(|x| x.to_f64())),
        CpuStorage::F16(v) => sum(&mut v[start..end].iter().map(|x| x.to_f64())),
        other => candle_core::bail!("squared_norm of {:?}", other.dtype()),
    })
}
