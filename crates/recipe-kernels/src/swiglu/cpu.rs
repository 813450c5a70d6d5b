//! The op, and its CPU kernel; the CUDA kernels' launches are in `cuda.rs`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::exp::ExpInPlace;
use crate::{Disjoint, contiguous, for_each_chunk_mut, unfilled, vectorised};

pub(super) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

struct SwiGlu;

/// Computes `dg` and `du` together, returned as one flat buffer `[dg..., du...]`.
struct SwiGluGrad;

/// Elements per parallel chunk.
const CHUNK: usize = 4096;

/// `out = exp(−g)` over `out`'s length: the sigmoid's exponential, vectorised.
fn exp_of_negated<T: ExpInPlace + Copy + std::ops::Neg<Output = T>>(out: &mut [T], g: &[T]) {
    out.iter_mut().zip(g).for_each(|(o, &a)| *o = -a);
    T::exp_in_place(out);
}

macro_rules! kernels {
    ($t:ty, $forward:ident, $backward:ident) => {
        fn $forward(g: &[$t], u: &[$t]) -> Vec<$t> {
            // Safety: the chunks cover `y`, and each is written in full.
            let mut y = unsafe { unfilled(g.len()) };
            for_each_chunk_mut(&mut y, CHUNK, |c, yc| {
                vectorised(
                    #[inline(always)]
                    || {
                        let at = c * CHUNK;
                        exp_of_negated(yc, &g[at..]);
                        for ((o, &a), &b) in yc.iter_mut().zip(&g[at..]).zip(&u[at..]) {
                            *o = a / (1.0 + *o) * b;
                        }
                    },
                )
            });
            y
        }

        fn $backward(g: &[$t], u: &[$t], dy: &[$t]) -> Vec<$t> {
            let n = g.len();
            // Safety: the chunks of `dg` cover it, and each writes its own and `du`'s in full.
            let mut out = unsafe { unfilled(2 * n) };
            let (dg, du) = out.split_at_mut(n);
            let du = Disjoint::of(du);
            for_each_chunk_mut(dg, CHUNK, |c, dgc| {
                let at = c * CHUNK;
                // Safety: `du` is as long as `dg`, and only this call touches its chunk `c`.
                let duc = unsafe { du.part(at, dgc.len()) };
                vectorised(
                    #[inline(always)]
                    || {
                        // One exponential per element serves both gradients.
                        exp_of_negated(duc, &g[at..]);
                        let inputs = g[at..].iter().zip(&u[at..]).zip(&dy[at..]);
                        for ((o, p), ((&a, &b), &d)) in dgc.iter_mut().zip(duc.iter_mut()).zip(inputs) {
                            let s = 1.0 / (1.0 + *p);
                            *o = d * b * s * (1.0 + a * (1.0 - s));
                            *p = d * a * s;
                        }
                    },
                )
            });
            out
        }
    };
}

kernels!(f32, forward_f32, backward_f32);
kernels!(f64, forward_f64, backward_f64);

fn check(l1: &Layout, l2: &Layout) -> Result<()> {
    if l1.shape() != l2.shape() {
        candle_core::bail!("swiglu: gate {:?} and up {:?} differ", l1.shape(), l2.shape());
    }
    Ok(())
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        check(l1, l2)?;
        let y = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(forward_f32(contiguous(s1, l1)?, contiguous(s2, l2)?))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(forward_f64(contiguous(s1, l1)?, contiguous(s2, l2)?))
            }
            _ => candle_core::bail!("swiglu supports f32 and f64 of one dtype"),
        };
        Ok((y, l1.shape().clone()))
    }

    crate::cuda_fwd!(self, |s1, l1, s2, l2| {
        check(l1, l2)?;
        let y = crate::cuda::for_dtype!(s1.dtype(), super::cuda::forward((s1, l1), (s2, l2)))?;
        Ok((y, l1.shape().clone()))
    });

    fn bwd(&self, g: &Tensor, u: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = g.apply_op3_no_bwd(u, &dy.contiguous()?, &SwiGluGrad)?;
        let n = g.elem_count();
        let dg = both.narrow(0, 0, n)?.reshape(g.shape())?;
        let du = both.narrow(0, n, n)?.reshape(u.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "swiglu-grad"
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
        check(l1, l2)?;
        check(l1, l3)?;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(backward_f32(contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(backward_f64(contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?))
            }
            _ => candle_core::bail!("swiglu supports f32 and f64 of one dtype"),
        };
        Ok((out, Shape::from(2 * l1.shape().elem_count())))
    }

    crate::cuda_fwd!(self, |s1, l1, s2, l2, s3, l3| {
        check(l1, l2)?;
        check(l1, l3)?;
        let out = crate::cuda::for_dtype!(s1.dtype(), super::cuda::backward((s1, l1), (s2, l2), (s3, l3)))?;
        Ok((out, Shape::from(2 * l1.shape().elem_count())))
    });
}
