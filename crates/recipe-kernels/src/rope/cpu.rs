//! The op, and its CPU kernel (the CUDA kernel's launch is in `cuda.rs`): one task per
//! (row, head) plane, reading `x` through its strides, so the transposed view of a projection
//! that attention's heads are (`[B, T, H, hd]` seen as `[B, H, T, hd]`) is rotated where it
//! lies, without a copy first.

use std::ops::{Add, Mul, Sub};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use crate::{contiguous, for_each_chunk_mut, unfilled, vectorised};

pub(super) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let rows_of_x = if x.stride().last() == Some(&1) { x.clone() } else { x.contiguous()? };
    rows_of_x.apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope { inverse: false })
}

/// The rotation, or for backward (`inverse`) the rotation by the opposite angles, which is the
/// forward rotation's transpose.
struct Rope {
    inverse: bool,
}

/// Where a tensor's rows of `hd` elements start: `start + b·sb + h·sh + t·st`.
#[derive(Clone, Copy)]
struct Rows {
    start: usize,
    sb: usize,
    sh: usize,
    st: usize,
}

impl Rows {
    fn of(l: &Layout) -> Result<Rows> {
        match l.stride() {
            &[sb, sh, st, 1] => Ok(Rows { start: l.start_offset(), sb, sh, st }),
            _ => candle_core::bail!("rope: x needs rows of unit stride, has strides {:?}", l.stride()),
        }
    }
}

/// `y = [x₁·c − x₂·s, x₂·c + x₁·s]` for `x` of `[B, H, T, hd]` read through `rows`, and
/// `c`, `s` of `[B, 1, T, hd/2]`; `y` is contiguous. `sign` −1 rotates the other way.
fn rotate<T>(
    x: &[T],
    rows: Rows,
    cos: &[T],
    sin: &[T],
    (b, heads, t, hd): (usize, usize, usize, usize),
    sign: T,
) -> Vec<T>
where
    T: Copy + Send + Sync + Add<Output = T> + Sub<Output = T> + Mul<Output = T>,
{
    let half = hd / 2;
    // Safety: the planes cover `out`, and each plane writes both halves of each of its rows.
    let mut out = unsafe { unfilled(b * heads * t * hd) };
    for_each_chunk_mut(&mut out, t * hd, |plane, y| {
        let (b, h) = (plane / heads, plane % heads);
        let angles = b * t * half;
        vectorised(
            #[inline(always)]
            || {
                for (p, y) in y.chunks_exact_mut(hd).enumerate() {
                    let xr = &x[rows.start + b * rows.sb + h * rows.sh + p * rows.st..][..hd];
                    let (x1, x2) = xr.split_at(half);
                    let (c, s) = (&cos[angles + p * half..][..half], &sin[angles + p * half..][..half]);
                    let (y1, y2) = y.split_at_mut(half);
                    rotate_row([y1, y2], [x1, x2], [c, s], sign);
                }
            },
        )
    });
    out
}

/// One row's two halves. The slices are arguments so that the compiler knows they do not
/// overlap: inlined into the loop above, it vectorises without checking at each row.
#[inline(always)]
fn rotate_row<T>([y1, y2]: [&mut [T]; 2], [x1, x2]: [&[T]; 2], [c, s]: [&[T]; 2], sign: T)
where
    T: Copy + Add<Output = T> + Sub<Output = T> + Mul<Output = T>,
{
    let inputs = x1.iter().zip(x2).zip(c.iter().zip(s));
    for ((y1, y2), ((&a, &b), (&c, &s))) in y1.iter_mut().zip(y2).zip(inputs) {
        let s = sign * s;
        *y1 = a * c - b * s;
        *y2 = b * c + a * s;
    }
}

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
        let rows = Rows::of(l1)?;
        let dims = (b, h, t, hd);
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let sign = if self.inverse { -1.0 } else { 1.0 };
                CpuStorage::F32(rotate(x, rows, contiguous(s2, l2)?, contiguous(s3, l3)?, dims, sign))
            }
            (CpuStorage::F64(x), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let sign = if self.inverse { -1.0 } else { 1.0 };
                CpuStorage::F64(rotate(x, rows, contiguous(s2, l2)?, contiguous(s3, l3)?, dims, sign))
            }
            _ => candle_core::bail!("rope supports f32 and f64 of one dtype"),
        };
        Ok((out, l1.shape().clone()))
    }

    crate::cuda_fwd!(self, |s1, l1, s2, l2, s3, l3| {
        let (b, _, t, hd) = l1.shape().dims4()?;
        if hd % 2 != 0 || l2.shape().dims() != [b, 1, t, hd / 2] || l3.shape() != l2.shape() {
            candle_core::bail!("rope: cos/sin {:?} do not fit x {:?}", l2.shape(), l1.shape());
        }
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let y = crate::cuda::for_dtype!(s1.dtype(), super::cuda::rotate((s1, l1), (s2, l2), (s3, l3), sign))?;
        Ok((y, l1.shape().clone()))
    });

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let rows_of_dy = if dy.stride().last() == Some(&1) { dy.clone() } else { dy.contiguous()? };
        let dx = rows_of_dy.apply_op3_no_bwd(cos, sin, &Rope { inverse: !self.inverse })?;
        Ok((Some(dx), None, None))
    }
}
