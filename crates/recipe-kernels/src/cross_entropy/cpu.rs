//! The op, and its CPU kernel; the CUDA kernels' launches are in `cuda.rs`.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use crate::exp::ExpInPlace;
use crate::lanes;
use crate::{contiguous, for_each_row_mut, unfilled};

pub(super) fn cross_entropy_rows(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    logits.contiguous()?.apply_op3(&targets.contiguous()?, &mask.contiguous()?, CrossEntropy)
}

struct CrossEntropy;

/// `dlogits` from the logits, the targets and each row's weight (mask · dloss).
struct CrossEntropyGrad;

macro_rules! kernels {
    ($t:ty, $forward:ident, $backward:ident) => {
        fn $forward(logits: &[$t], targets: &[u32], mask: &[$t]) -> Vec<$t> {
            let v = logits.len() / targets.len().max(1);
            let mut nll = vec![0.0; targets.len()];
            for_each_row_mut(&mut nll, 1, |r, out| {
                let row = &logits[r * v..(r + 1) * v];
                let max = lanes::max(row);
                // Exponentiated a piece at a time, in place in a buffer on the stack.
                let mut sum = 0.0;
                let mut piece = [0.0; 256];
                for xs in row.chunks(piece.len()) {
                    let e = &mut piece[..xs.len()];
                    e.iter_mut().zip(xs).for_each(|(o, x)| *o = x - max);
                    <$t>::exp_in_place(e);
                    sum += lanes::sum(e);
                }
                let log_z = sum.ln() + max;
                out[0] = mask[r] * (log_z - row[targets[r] as usize]);
            });
            nll
        }

        fn $backward(logits: &[$t], targets: &[u32], weight: &[$t]) -> Vec<$t> {
            let v = logits.len() / targets.len().max(1);
            // Safety: the rows cover `d`, and each is written in full (a row without weight as zeros).
            let mut d = unsafe { unfilled(logits.len()) };
            for_each_row_mut(&mut d, v, |r, out| {
                let row = &logits[r * v..(r + 1) * v];
                if weight[r] == 0.0 {
                    out.fill(0.0);
                    return;
                }
                let max = lanes::max(row);
                out.iter_mut().zip(row).for_each(|(o, x)| *o = x - max);
                <$t>::exp_in_place(out);
                let sum = lanes::sum(out);
                let scale = weight[r] / sum;
                out.iter_mut().for_each(|o| *o *= scale);
                out[targets[r] as usize] -= weight[r];
            });
            d
        }
    };
}

kernels!(f32, forward_f32, backward_f32);
kernels!(f64, forward_f64, backward_f64);

fn check(logits: &Layout, targets: &Layout, rows: &Layout, ids: &[u32]) -> Result<()> {
    let (n, v) = logits.shape().dims2()?;
    if targets.shape().dims() != [n] || rows.shape().dims() != [n] {
        candle_core::bail!("cross_entropy: targets {:?} and mask {:?} must be [{n}]", targets.shape(), rows.shape());
    }
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("cross_entropy: target {bad} is outside the vocabulary of {v}");
    }
    Ok(())
}

/// A row kernel: (logits, targets, per-row weights) → output.
type Kernel<T> = fn(&[T], &[u32], &[T]) -> Vec<T>;

/// Check the inputs (logits, targets, per-row weights) and run the kernel of their dtype.
fn dispatch(
    [s1, s2, s3]: [&CpuStorage; 3],
    [l1, l2, l3]: [&Layout; 3],
    k32: Kernel<f32>,
    k64: Kernel<f64>,
) -> Result<CpuStorage> {
    let targets = contiguous::<u32>(s2, l2)?;
    check(l1, l2, l3, targets)?;
    Ok(match (s1, s3) {
        (CpuStorage::F32(_), CpuStorage::F32(_)) => {
            CpuStorage::F32(k32(contiguous(s1, l1)?, targets, contiguous(s3, l3)?))
        }
        (CpuStorage::F64(_), CpuStorage::F64(_)) => {
            CpuStorage::F64(k64(contiguous(s1, l1)?, targets, contiguous(s3, l3)?))
        }
        _ => candle_core::bail!("cross_entropy supports f32 and f64 logits, with a mask of the same dtype"),
    })
}

impl CustomOp3 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
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
        let out = dispatch([s1, s2, s3], [l1, l2, l3], forward_f32, forward_f64)?;
        Ok((out, Shape::from(l2.shape().elem_count())))
    }

    crate::cuda_fwd!(self, |s1, l1, s2, l2, s3, l3| {
        let nll = crate::cuda::for_dtype!(s1.dtype(), super::cuda::forward((s1, l1), (s2, l2), (s3, l3)))?;
        Ok((nll, Shape::from(l2.shape().elem_count())))
    });

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        mask: &Tensor,
        _nll: &Tensor,
        dnll: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let weight = (mask * dnll)?.contiguous()?;
        let d = logits.apply_op3_no_bwd(targets, &weight, &CrossEntropyGrad)?;
        Ok((Some(d), None, None))
    }
}

impl CustomOp3 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "cross-entropy-grad"
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
        let out = dispatch([s1, s2, s3], [l1, l2, l3], backward_f32, backward_f64)?;
        Ok((out, l1.shape().clone()))
    }

    crate::cuda_fwd!(self, |s1, l1, s2, l2, s3, l3| {
        let d = crate::cuda::for_dtype!(s1.dtype(), super::cuda::backward((s1, l1), (s2, l2), (s3, l3)))?;
        Ok((d, l1.shape().clone()))
    });
}
