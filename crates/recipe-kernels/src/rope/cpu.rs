//! The CPU kernel.

use crate::{contiguous, for_each_row_mut, unfilled};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

pub(super) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope)
}

struct Rope;

macro_rules! rotate {
    ($t:ty, $name:ident) => {
        fn $name(x: &[$t], cos: &[$t], sin: &[$t], heads: usize, t: usize, hd: usize) -> Vec<$t> {
            let half = hd / 2;
            // Safety: the rows cover `out`, and each writes both of its halves (`hd` is even).
            let mut out = unsafe { unfilled(x.len()) };
            for_each_row_mut(&mut out, hd, |r, y| {
                let angle_row = (r / (heads * t)) * t + r % t;
                let (c, s) = (&cos[angle_row * half..][..half], &sin[angle_row * half..][..half]);
                let xr = &x[r * hd..(r + 1) * hd];
                for j in 0..half {
                    let (a, b) = (xr[j], xr[j + half]);
                    y[j] = a * c[j] - b * s[j];
                    y[j + half] = b * c[j] + a * s[j];
                }
            });
            out
        }
    };
}

rotate!(f32, rotate_f32);
rotate!(f64, rotate_f64);

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
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
        let (b, h, t, hd) = l1.shape().dims4()?;
        if hd % 2 != 0 || l2.shape().dims() != [b, 1, t, hd / 2] || l3.shape() != l2.shape() {
            candle_core::bail!("rope: cos/sin {:?} do not fit x {:?}", l2.shape(), l1.shape());
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(rotate_f32(contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?, h, t, hd))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(rotate_f64(contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?, h, t, hd))
            }
            _ => candle_core::bail!("rope supports f32 and f64 of one dtype"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = dy.contiguous()?.apply_op3_no_bwd(cos, &sin.neg()?, &Rope)?;
        Ok((Some(dx), None, None))
    }
}
