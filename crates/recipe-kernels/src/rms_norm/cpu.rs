//! The op, and its CPU kernel; the CUDA kernels' launches are in `cuda.rs`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::{contiguous, for_each_row_mut, lanes, unfilled};

pub(super) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

struct RmsNorm {
    eps: f64,
}

/// Computes `dx` and `dw` together, returned as one flat buffer `[dx..., dw...]`.
struct RmsNormGrad {
    eps: f64,
}

/// Rows per block when summing `dw`.
const BLOCK_ROWS: usize = 64;

macro_rules! kernels {
    ($t:ty, $forward:ident, $backward:ident) => {
        fn $forward(x: &[$t], w: &[$t], eps: f64) -> Vec<$t> {
            let d = w.len();
            // Safety: the rows cover `y`, and each is written in full.
            let mut y = unsafe { unfilled(x.len()) };
            for_each_row_mut(&mut y, d, |r, yr| {
                let xr = &x[r * d..(r + 1) * d];
                let ms: $t = lanes::dot(xr, xr) / d as $t;
                let inv = 1.0 / (ms + eps as $t).sqrt();
                for ((o, a), b) in yr.iter_mut().zip(xr).zip(w) {
                    *o = a * inv * b;
                }
            });
            y
        }

        fn $backward(x: &[$t], w: &[$t], dy: &[$t], eps: f64) -> Vec<$t> {
            let d = w.len();
            let rows = x.len() / d;
            let blocks = rows.div_ceil(BLOCK_ROWS);
            // Safety: the rows cover `dx`, each written in full; the partial sums are zeroed.
            let mut out = unsafe { unfilled(x.len() + blocks * d) };
            let (dx, partial) = out.split_at_mut(x.len());
            partial.fill(0.0);
            for_each_row_mut(dx, d, |r, dxr| {
                let (xr, gr) = (&x[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
                let ms: $t = lanes::dot(xr, xr) / d as $t;
                let inv = 1.0 / (ms + eps as $t).sqrt();
                let mean: $t = inv * lanes::sum_of(d, |i| gr[i] * w[i] * xr[i]) / d as $t;
                for (((o, a), g), b) in dxr.iter_mut().zip(xr).zip(gr).zip(w) {
                    *o = inv * (g * b - a * inv * mean);
                }
            });
            for_each_row_mut(partial, d, |block, acc| {
                for r in block * BLOCK_ROWS..((block + 1) * BLOCK_ROWS).min(rows) {
                    let (xr, gr) = (&x[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
                    let ms: $t = lanes::dot(xr, xr) / d as $t;
                    let inv = 1.0 / (ms + eps as $t).sqrt();
                    for ((s, a), g) in acc.iter_mut().zip(xr).zip(gr) {
                        *s += g * a * inv;
                    }
                }
            });
            let mut dw = vec![0.0; d];
            for block in out[x.len()..].chunks_exact(d) {
                dw.iter_mut().zip(block).for_each(|(s, v)| *s += v);
            }
            out.truncate(x.len());
            out.extend(dw);
            out
        }
    };
}

kernels!(f32, forward_f32, backward_f32);
kernels!(f64, forward_f64, backward_f64);

fn check(l1: &Layout, l2: &Layout) -> Result<()> {
    let d = l1.shape().dims().last().copied().unwrap_or(0);
    if l2.shape().dims() != [d] {
        candle_core::bail!("rms_norm: weight {:?} does not fit x {:?}", l2.shape(), l1.shape());
    }
    Ok(())
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        check(l1, l2)?;
        let y = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(forward_f32(contiguous(s1, l1)?, contiguous(s2, l2)?, self.eps))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(forward_f64(contiguous(s1, l1)?, contiguous(s2, l2)?, self.eps))
            }
            _ => candle_core::bail!("rms_norm supports f32 and f64 of one dtype"),
        };
        Ok((y, l1.shape().clone()))
    }

    crate::cuda_fwd!(self, |s1, l1, s2, l2| {
        check(l1, l2)?;
        let y = crate::cuda::for_dtype!(s1.dtype(), super::cuda::forward(s1, l1, s2, l2, self.eps))?;
        Ok((y, l1.shape().clone()))
    });

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = x.apply_op3_no_bwd(w, &dy.contiguous()?, &RmsNormGrad { eps: self.eps })?;
        let n = x.elem_count();
        let dx = both.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = both.narrow(0, n, w.elem_count())?;
        // A frozen weight (LoRA, a teacher) takes no gradient buffer.
        Ok((Some(dx), w.track_op().then_some(dw)))
    }
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
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
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(backward_f32(contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?, self.eps))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(backward_f64(contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?, self.eps))
            }
            _ => candle_core::bail!("rms_norm supports f32 and f64 of one dtype"),
        };
        let len = l1.shape().elem_count() + l2.shape().elem_count();
        Ok((out, Shape::from(len)))
    }

    crate::cuda_fwd!(self, |s1, l1, s2, l2, s3, l3| {
        check(l1, l2)?;
        let out = crate::cuda::for_dtype!(s1.dtype(), super::cuda::backward((s1, l1), (s2, l2), (s3, l3), self.eps))?;
        let len = l1.shape().elem_count() + l2.shape().elem_count();
        Ok((out, Shape::from(len)))
    });
}
