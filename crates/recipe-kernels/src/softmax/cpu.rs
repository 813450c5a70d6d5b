//! The op, and its CPU kernel; the CUDA kernels' launches are in `cuda.rs`.

use crate::exp::ExpInPlace;
use crate::{contiguous, for_each_row_mut, lanes, unfilled};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

pub(super) fn masked_softmax(x: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&bias.contiguous()?, MaskedSoftmax { scale })
}

struct MaskedSoftmax {
    scale: f64,
}

/// The gradient of [`MaskedSoftmax`] from its output `y` and the output's gradient `dy`.
struct MaskedSoftmaxGrad {
    scale: f64,
}

/// The rows of `x` and, for each, the row of the bias it uses.
struct Rows {
    /// Length of the last dimension.
    tk: usize,
    /// Rows per head (Tq).
    tq: usize,
    heads: usize,
}

impl Rows {
    fn of(l1: &Layout, l2: &Layout) -> Result<Rows> {
        let (b, h, tq, tk) = l1.shape().dims4()?;
        if l2.shape().dims() != [b, 1, tq, tk] {
            candle_core::bail!("masked_softmax: bias {:?} does not fit scores {:?}", l2.shape(), l1.shape());
        }
        Ok(Rows { tk, tq, heads: h })
    }

    /// Index of the bias row for row `r` of `x`.
    fn bias_row(&self, r: usize) -> usize {
        let b = r / (self.heads * self.tq);
        b * self.tq + r % self.tq
    }
}

/// The forward and backward row loops, for one float type, in that type.
macro_rules! kernels {
    ($t:ty, $forward:ident, $backward:ident) => {
        fn $forward(x: &[$t], bias: &[$t], rows: &Rows, scale: f64) -> Vec<$t> {
            let (tk, scale) = (rows.tk, scale as $t);
            // Safety: the rows cover `out`, and each is written in full.
            let mut out = unsafe { unfilled(x.len()) };
            for_each_row_mut(&mut out, tk, |r, y| {
                let xr = &x[r * tk..(r + 1) * tk];
                let br = &bias[rows.bias_row(r) * tk..(rows.bias_row(r) + 1) * tk];
                for ((yj, xj), bj) in y.iter_mut().zip(xr).zip(br) {
                    *yj = scale * xj + bj;
                }
                let max = lanes::max(y);
                y.iter_mut().for_each(|v| *v -= max);
                <$t>::exp_in_place(y);
                let inv = 1.0 / lanes::sum(y);
                y.iter_mut().for_each(|v| *v *= inv);
            });
            out
        }

        fn $backward(y: &[$t], dy: &[$t], tk: usize, scale: f64) -> Vec<$t> {
            let scale = scale as $t;
            // Safety: the rows cover `dx`, and each is written in full.
            let mut dx = unsafe { unfilled(y.len()) };
            for_each_row_mut(&mut dx, tk, |r, out| {
                let (yr, gr) = (&y[r * tk..(r + 1) * tk], &dy[r * tk..(r + 1) * tk]);
                let dot = lanes::dot(yr, gr);
                for ((o, a), g) in out.iter_mut().zip(yr).zip(gr) {
                    *o = scale * a * (g - dot);
                }
            });
            dx
        }
    };
}

kernels!(f32, forward_f32, backward_f32);
kernels!(f64, forward_f64, backward_f64);

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let rows = Rows::of(l1, l2)?;
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(forward_f32(contiguous(s1, l1)?, contiguous(s2, l2)?, &rows, self.scale))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(forward_f64(contiguous(s1, l1)?, contiguous(s2, l2)?, &rows, self.scale))
            }
            _ => candle_core::bail!("masked_softmax supports f32 and f64 of one dtype"),
        };
        Ok((out, l1.shape().clone()))
    }

    crate::cuda_fwd!(self, |s1, l1, s2, l2| {
        Rows::of(l1, l2)?;
        let y = crate::cuda::for_dtype!(s1.dtype(), super::cuda::forward((s1, l1), (s2, l2), self.scale))?;
        Ok((y, l1.shape().clone()))
    });

    fn bwd(&self, _x: &Tensor, _bias: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = y.apply_op2_no_bwd(&dy.contiguous()?, &MaskedSoftmaxGrad { scale: self.scale })?;
        Ok((Some(dx), None))
    }
}

impl CustomOp2 for MaskedSoftmaxGrad {
    fn name(&self) -> &'static str {
        "masked-softmax-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let tk = l1.shape().dims().last().copied().unwrap_or(1);
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(backward_f32(contiguous(s1, l1)?, contiguous(s2, l2)?, tk, self.scale))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(backward_f64(contiguous(s1, l1)?, contiguous(s2, l2)?, tk, self.scale))
            }
            _ => candle_core::bail!("masked_softmax supports f32 and f64 of one dtype"),
        };
        Ok((out, l1.shape().clone()))
    }

    crate::cuda_fwd!(self, |s1, l1, s2, l2| {
        if l1.shape() != l2.shape() {
            candle_core::bail!("masked_softmax: gradient {:?} does not fit {:?}", l2.shape(), l1.shape());
        }
        let dx = crate::cuda::for_dtype!(s1.dtype(), super::cuda::backward((s1, l1), (s2, l2), self.scale))?;
        Ok((dx, l1.shape().clone()))
    });
}
