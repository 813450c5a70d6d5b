//! The CPU kernel: blocks of queries against the keys they can see, through the `gemm` crate
//! (the multiplier Candle's own matmul uses) with strides in place of transposes; one task
//! per (row, head) forward and per (row, key/value head) backward on Candle's worker pool.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use gemm::Parallelism;
use num_traits::Float;

use super::{KeySpans, Scores};
use crate::exp::ExpInPlace;
use crate::{Disjoint, contiguous, lanes, parallel_for};

pub(super) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, spans: &KeySpans, scores: Scores) -> Result<Tensor> {
    let op = Attention {
        spans: spans.clone(),
        scores,
        lse: OnceLock::new(),
        #[cfg(feature = "cuda")]
        on_cuda: OnceLock::new(),
    };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// Queries per block: the scores of a block against its keys stay in cache.
const BLOCK: usize = 64;

struct Attention {
    spans: KeySpans,
    scores: Scores,
    /// Each query's log-sum-exp of its scaled scores `[B, H, Tq]`, kept by forward for
    /// backward.
    lse: OnceLock<Vec<f64>>,
    /// The same and the spans, on the GPU, when forward ran there.
    #[cfg(feature = "cuda")]
    on_cuda: OnceLock<std::sync::Arc<super::cuda::Saved>>,
}

#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub(super) b: usize,
    pub(super) h: usize,
    pub(super) kvh: usize,
    pub(super) tq: usize,
    pub(super) tk: usize,
    pub(super) hd: usize,
}

impl Dims {
    pub(super) fn of(q: &Layout, k: &Layout, v: &Layout) -> Result<Dims> {
        let (b, h, tq, hd) = q.shape().dims4()?;
        let (kb, kvh, tk, khd) = k.shape().dims4()?;
        if (kb, khd) != (b, hd) || k.shape() != v.shape() || kvh == 0 || h % kvh != 0 {
            candle_core::bail!("attention: q {:?}, k {:?}, v {:?} do not fit", q.shape(), k.shape(), v.shape());
        }
        Ok(Dims { b, h, kvh, tq, tk, hd })
    }
}

/// A float the kernel computes in, which `gemm` multiplies.
trait Real: Float + ExpInPlace + Send + Sync + 'static {}
impl Real for f32 {}
impl Real for f64 {}

/// `dst (m×n) = beta · lhs (m×k) · rhs (k×n)`, plus `dst` when `accumulate`; strides are
/// (row, column) in elements.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const T,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const T,
    (rhs_rs, rhs_cs): (usize, usize),
    beta: T,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            T::one(),
            beta,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// `out` (rows × n) = the scores of queries `i0..i0 + rows` against keys `lo..lo + n`.
fn block_scores<T: Real>(
    q: &[T],
    k: &[T],
    (i0, rows): (usize, usize),
    (lo, n): (usize, usize),
    hd: usize,
    out: &mut [T],
) {
    assert!(q.len() >= (i0 + rows) * hd && k.len() >= (lo + n) * hd && out.len() >= rows * n);
    // Safety: the assertion keeps every read and write inside the slices.
    unsafe {
        let (qb, kb) = (q[i0 * hd..].as_ptr(), k[lo * hd..].as_ptr());
        matmul((rows, n, hd), out.as_mut_ptr(), n, false, qb, (hd, 1), kb, (1, hd), T::one());
    }
}

/// The queries `i0..i1` of a row: the union `lo..hi` of their spans.
fn union(spans: &[(u32, u32)]) -> (usize, usize) {
    let lo = spans.iter().map(|s| s.0).min().unwrap_or(0) as usize;
    let hi = spans.iter().map(|s| s.1).max().unwrap_or(0) as usize;
    (lo, hi.max(lo))
}

/// `scale`, and the cap if any, in the kernel's float.
fn scoring<T: Real>(scores: Scores) -> (T, Option<T>) {
    let real = |x: f64| T::from(x).unwrap_or(T::one());
    (real(scores.scale), scores.cap.map(real))
}

/// Dot products to capped scores in place: `cap · tanh(scale · x / cap)`, with
/// `tanh(y) = 1 − 2 / (e^{2y} + 1)` so that the vectorised `exp` does the work (`tanh` is a
/// libm call per element, and made capped attention ten times slower than plain).
fn cap_in_place<T: Real>(xs: &mut [T], scale: T, cap: T) {
    let two = T::one() + T::one();
    let doubled = two * scale / cap;
    xs.iter_mut().for_each(|x| *x = *x * doubled);
    T::exp_in_place(xs);
    xs.iter_mut().for_each(|x| *x = cap - two * cap / (*x + T::one()));
}

fn forward<T: Real>(q: &[T], k: &[T], v: &[T], d: Dims, spans: &[(u32, u32)], scores: Scores) -> (Vec<T>, Vec<f64>) {
    let (scale, cap) = scoring::<T>(scores);
    let Dims { b, h, kvh, tq, tk, hd } = d;
    let mut out = vec![T::zero(); b * tq * h * hd];
    let mut lse = vec![0.0; b * h * tq];
    let (out_at, lse_at) = (Disjoint::of(&mut out), Disjoint::of(&mut lse));
    parallel_for(b * h, |task| {
        let (r, head) = (task / h, task % h);
        let kv = (r * kvh + head / (h / kvh)) * tk * hd;
        let (k, v) = (&k[kv..kv + tk * hd], &v[kv..kv + tk * hd]);
        let q = &q[task * tq * hd..(task + 1) * tq * hd];
        let mut scores = vec![T::zero(); BLOCK * tk];
        for i0 in (0..tq).step_by(BLOCK) {
            let i1 = (i0 + BLOCK).min(tq);
            let block = &spans[r * tq + i0..r * tq + i1];
            let (lo, hi) = union(block);
            let n = hi - lo;
            let s = &mut scores[..(i1 - i0) * n];
            block_scores(q, k, (i0, i1 - i0), (lo, n), hd, s);
            for (i, (row, &(a, e))) in s.chunks_exact_mut(n.max(1)).zip(block).enumerate() {
                let (a, e) = (a as usize - lo, e as usize - lo);
                let seen = &mut row[a..e];
                // A capped score is final; a plain one is scaled after its maximum is taken.
                let scale = match cap {
                    Some(cap) => {
                        cap_in_place(seen, scale, cap);
                        T::one()
                    }
                    None => scale,
                };
                let max = lanes::max(seen);
                seen.iter_mut().for_each(|x| *x = (*x - max) * scale);
                T::exp_in_place(seen);
                let sum = lanes::sum(seen);
                let inv = sum.recip();
                seen.iter_mut().for_each(|x| *x = *x * inv);
                row[..a].fill(T::zero());
                row[e..].fill(T::zero());
                let value = (max * scale).to_f64().unwrap_or(0.0) + sum.to_f64().unwrap_or(0.0).ln();
                // Safety: one slot per (task, query).
                unsafe { lse_at.part(task * tq + i0 + i, 1)[0] = value };
            }
            unsafe {
                let dst = out_at.at(((r * tq + i0) * h + head) * hd, (i1 - i0 - 1) * h * hd + hd);
                matmul(
                    (i1 - i0, hd, n),
                    dst,
                    h * hd,
                    false,
                    s.as_ptr(),
                    (n, 1),
                    v[lo * hd..].as_ptr(),
                    (hd, 1),
                    T::one(),
                );
            }
        }
    });
    (out, lse)
}

/// The gradients of `q`, `k` and `v`, one after another in one buffer.
#[allow(clippy::too_many_arguments)]
fn backward<T: Real>(
    (q, k, v): (&[T], &[T], &[T]),
    o: &[T],
    dout: &[T],
    lse: &[f64],
    d: Dims,
    spans: &[(u32, u32)],
    scores: Scores,
) -> Vec<T> {
    let (scale, cap) = scoring::<T>(scores);
    let Dims { b, h, kvh, tq, tk, hd } = d;
    let group = h / kvh;
    let mut grads = vec![T::zero(); q.len() + 2 * k.len()];
    let at = Disjoint::of(&mut grads);
    let (dk_base, dv_base) = (q.len(), q.len() + k.len());
    parallel_for(b * kvh, |task| {
        let r = task / kvh;
        let kv = task * tk * hd;
        let (k, v) = (&k[kv..kv + tk * hd], &v[kv..kv + tk * hd]);
        let mut probs = vec![T::zero(); BLOCK * tk];
        let mut dprobs = vec![T::zero(); BLOCK * tk];
        for head in (task % kvh) * group..(task % kvh + 1) * group {
            let qh = (r * h + head) * tq * hd;
            let q = &q[qh..qh + tq * hd];
            for i0 in (0..tq).step_by(BLOCK) {
                let i1 = (i0 + BLOCK).min(tq);
                let rows = i1 - i0;
                let block = &spans[r * tq + i0..r * tq + i1];
                let (lo, hi) = union(block);
                let n = hi - lo;
                let (p, dp) = (&mut probs[..rows * n], &mut dprobs[..rows * n]);
                let row_of = |i: usize| ((r * tq + i0 + i) * h + head) * hd;
                block_scores(q, k, (i0, rows), (lo, n), hd, p);
                // Safety: pointers and extents inside their buffers; this task alone writes the
                // gradients of key/value head `kv` of row `r` and of its query heads.
                unsafe {
                    let dob = dout[row_of(0)..].as_ptr();
                    let vb = v[lo * hd..].as_ptr();
                    matmul((rows, n, hd), dp.as_mut_ptr(), n, false, dob, (h * hd, 1), vb, (1, hd), T::one());
                }
                for (i, ((pr, dpr), &(a, e))) in
                    p.chunks_exact_mut(n.max(1)).zip(dp.chunks_exact_mut(n.max(1))).zip(block).enumerate()
                {
                    let (a, e) = (a as usize - lo, e as usize - lo);
                    let lse = T::from(lse[(r * h + head) * tq + i0 + i]).unwrap_or(T::zero());
                    let at_row = row_of(i);
                    let dsum = (0..hd).fold(T::zero(), |s, c| s + dout[at_row + c] * o[at_row + c]);
                    // The score less the log-sum-exp, and the gradient at the probability
                    // times the cap's slope `1 − tanh²` (the chain rule's factor from the score to
                    // the dot product, less the `scale` that the products below apply).
                    match cap {
                        Some(cap) => {
                            cap_in_place(&mut pr[a..e], scale, cap);
                            for (x, g) in pr[a..e].iter_mut().zip(&mut dpr[a..e]) {
                                let t = *x / cap;
                                *x = *x - lse;
                                *g = (*g - dsum) * (T::one() - t * t);
                            }
                        }
                        None => {
                            for (x, g) in pr[a..e].iter_mut().zip(&mut dpr[a..e]) {
                                *x = *x * scale - lse;
                                *g = *g - dsum;
                            }
                        }
                    }
                    T::exp_in_place(&mut pr[a..e]);
                    for (x, g) in pr[a..e].iter().zip(&mut dpr[a..e]) {
                        *g = *x * *g;
                    }
                    for range in [0..a, e..n] {
                        pr[range.clone()].fill(T::zero());
                        dpr[range].fill(T::zero());
                    }
                }
                unsafe {
                    let dq = at.at(qh + i0 * hd, rows * hd);
                    matmul((rows, hd, n), dq, hd, false, dp.as_ptr(), (n, 1), k[lo * hd..].as_ptr(), (hd, 1), scale);
                    let dk = at.at(dk_base + kv + lo * hd, n * hd);
                    matmul((n, hd, rows), dk, hd, true, dp.as_ptr(), (1, n), q[i0 * hd..].as_ptr(), (hd, 1), scale);
                    let dv = at.at(dv_base + kv + lo * hd, n * hd);
                    let dob = dout[row_of(0)..].as_ptr();
                    matmul((n, hd, rows), dv, hd, true, p.as_ptr(), (1, n), dob, (h * hd, 1), T::one());
                }
            }
        }
    });
    grads
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::of(l1, l2, l3)?;
        let spans = &self.spans.spans;
        let (out, lse) = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (q, k, v) = (contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?);
                let (out, lse) = forward::<f32>(q, k, v, d, spans, self.scores);
                (CpuStorage::F32(out), lse)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (q, k, v) = (contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?);
                let (out, lse) = forward::<f64>(q, k, v, d, spans, self.scores);
                (CpuStorage::F64(out), lse)
            }
            _ => candle_core::bail!("attention supports f32 and f64 of one dtype"),
        };
        // Candle runs a custom op's forward once per node; this node's backward reads it.
        let _ = self.lse.set(lse);
        Ok((out, Shape::from((d.b, d.tq, d.h, d.hd))))
    }

    crate::cuda_fwd!(self, |s1, l1, s2, l2, s3, l3| {
        let d = Dims::of(l1, l2, l3)?;
        let (out, saved) = crate::cuda::for_dtype!(
            s1.dtype(),
            super::cuda::forward((s1, l1), (s2, l2), (s3, l3), d, &self.spans, self.scores)
        )?;
        let _ = self.on_cuda.set(std::sync::Arc::new(saved));
        Ok((out, Shape::from((d.b, d.tq, d.h, d.hd))))
    });

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dout = dout.contiguous()?;
        #[cfg(feature = "cuda")]
        if let Some(saved) = self.on_cuda.get() {
            let op =
                CudaGrad { k: k.clone(), v: v.clone(), o: o.clone(), dout, saved: saved.clone(), scores: self.scores };
            let grads = q.apply_op1_no_bwd(&op)?;
            return split_grads(&grads, q, k, v);
        }
        let Some(lse) = self.lse.get() else { candle_core::bail!("attention: backward before forward") };
        let guards = [q, k, v, o, &dout].map(|t| t.storage_and_layout());
        let d = Dims::of(guards[0].1, guards[1].1, guards[2].1)?;
        let cpu = |i: usize| -> Result<&CpuStorage> {
            match &*guards[i].0 {
                Storage::Cpu(s) => Ok(s),
                _ => candle_core::bail!("attention: the CPU kernel's backward needs CPU tensors"),
            }
        };
        let spans = &self.spans.spans;
        let grads = match cpu(0)? {
            CpuStorage::F32(_) => {
                let s = |i: usize| -> Result<&[f32]> { contiguous(cpu(i)?, guards[i].1) };
                Tensor::new(
                    backward::<f32>((s(0)?, s(1)?, s(2)?), s(3)?, s(4)?, lse, d, spans, self.scores),
                    q.device(),
                )?
            }
            CpuStorage::F64(_) => {
                let s = |i: usize| -> Result<&[f64]> { contiguous(cpu(i)?, guards[i].1) };
                Tensor::new(
                    backward::<f64>((s(0)?, s(1)?, s(2)?), s(3)?, s(4)?, lse, d, spans, self.scores),
                    q.device(),
                )?
            }
            _ => candle_core::bail!("attention supports f32 and f64"),
        };
        drop(guards);
        split_grads(&grads, q, k, v)
    }
}

/// `dq`, `dk`, `dv` out of one buffer `[dq..., dk..., dv...]`.
fn split_grads(
    grads: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (nq, nk) = (q.elem_count(), k.elem_count());
    let dq = grads.narrow(0, 0, nq)?.reshape(q.shape())?;
    let dk = grads.narrow(0, nq, nk)?.reshape(k.shape())?;
    let dv = grads.narrow(0, nq + nk, nk)?.reshape(v.shape())?;
    Ok((Some(dq), Some(dk), Some(dv)))
}

/// Attention's backward on the GPU, applied to `q`: the other operands ride along (a custom op
/// takes at most three inputs), read in place while it runs.
#[cfg(feature = "cuda")]
struct CudaGrad {
    k: Tensor,
    v: Tensor,
    o: Tensor,
    dout: Tensor,
    saved: std::sync::Arc<super::cuda::Saved>,
    scores: Scores,
}

#[cfg(feature = "cuda")]
impl candle_core::CustomOp1 for CudaGrad {
    fn name(&self) -> &'static str {
        "attention-grad"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("attention: the GPU's backward ran on a CPU tensor")
    }

    fn cuda_fwd(&self, q: &candle_core::CudaStorage, ql: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let guards = [&self.k, &self.v, &self.o, &self.dout].map(|t| t.storage_and_layout());
        let cuda = |i: usize| -> Result<(&candle_core::CudaStorage, &Layout)> {
            match &*guards[i].0 {
                Storage::Cuda(s) => Ok((s, guards[i].1)),
                _ => candle_core::bail!("attention: the GPU's backward needs every operand on the GPU"),
            }
        };
        let d = Dims::of(ql, guards[0].1, guards[1].1)?;
        let grads = crate::cuda::for_dtype!(
            q.dtype(),
            super::cuda::backward(
                &q.device,
                (q, ql),
                cuda(0)?,
                cuda(1)?,
                cuda(2)?,
                cuda(3)?,
                &self.saved,
                d,
                self.scores
            )
        )?;
        Ok((grads, Shape::from(ql.shape().elem_count() + 2 * guards[0].1.shape().elem_count())))
    }
}
