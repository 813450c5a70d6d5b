//! The op, and its CPU kernel; the CUDA kernel's launch is in `cuda.rs`. Forward is the
//! backend's own gather (`index_select` on the storage), on every backend.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use half::{bf16, f16};

use super::Groups;
use crate::{contiguous, for_each_row_mut, unfilled};

pub(super) fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    table.apply_op2(ids, Embedding)
}

struct Embedding;

impl Embedding {
    fn shape(table: &Layout, ids: &Layout) -> Result<Shape> {
        Ok(Shape::from((ids.shape().dims1()?, table.shape().dims2()?.1)))
    }
}

impl CustomOp2 for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn cpu_fwd(&self, table: &CpuStorage, tl: &Layout, ids: &CpuStorage, il: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((table.index_select(ids, tl, il, 0)?, Embedding::shape(tl, il)?))
    }

    crate::cuda_fwd!(self, |table, tl, ids, il| {
        Ok((table.index_select(ids, tl, il, 0)?, Embedding::shape(tl, il)?))
    });

    fn bwd(
        &self,
        table: &Tensor,
        ids: &Tensor,
        _out: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The ids come to the host (from a GPU, one small copy) to be grouped by token.
        let groups = Groups::of(&ids.to_vec1::<u32>()?, table.dim(0)?)?;
        let sums = RowSums { groups };
        Ok((Some(dy.contiguous()?.apply_op1_no_bwd(&sums)?), None))
    }
}

/// The table's gradient from the output's: row `v` the sum of the gradient rows at token `v`'s
/// positions, in order.
struct RowSums {
    groups: Groups,
}

impl RowSums {
    fn shape(&self, dy: &Layout) -> Result<Shape> {
        Ok(Shape::from((self.groups.rows(), dy.shape().dims2()?.1)))
    }

    /// Sums in `A` (f32, or f64 for f64), each table row a task.
    fn sums<T: WithDType, A: num_traits::Float + Send + Sync>(
        &self,
        dy: &[T],
        d: usize,
        widen: impl Fn(T) -> A + Sync,
        narrow: impl Fn(A) -> T + Sync,
    ) -> Vec<T> {
        let Groups { offsets, order } = &self.groups;
        // Safety: every row is written in full below.
        let mut out = unsafe { unfilled(self.groups.rows() * d) };
        for_each_row_mut(&mut out, d, |v, row| {
            let positions = &order[offsets[v] as usize..offsets[v + 1] as usize];
            if positions.is_empty() {
                return row.fill(T::zero());
            }
            let mut acc = vec![A::zero(); d];
            for &position in positions {
                let g = &dy[position as usize * d..][..d];
                acc.iter_mut().zip(g).for_each(|(a, &x)| *a = *a + widen(x));
            }
            row.iter_mut().zip(&acc).for_each(|(o, &a)| *o = narrow(a));
        });
        out
    }
}

impl CustomOp1 for RowSums {
    fn name(&self) -> &'static str {
        "embedding-grad"
    }

    fn cpu_fwd(&self, dy: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = l.shape().dims2()?.1;
        let out = match dy {
            CpuStorage::F32(_) => CpuStorage::F32(self.sums(contiguous::<f32>(dy, l)?, d, |x| x, |a| a)),
            CpuStorage::F64(_) => CpuStorage::F64(self.sums(contiguous::<f64>(dy, l)?, d, |x| x, |a| a)),
            CpuStorage::BF16(_) => {
                CpuStorage::BF16(self.sums(contiguous::<bf16>(dy, l)?, d, |x| x.to_f32(), bf16::from_f32))
            }
            CpuStorage::F16(_) => {
                CpuStorage::F16(self.sums(contiguous::<f16>(dy, l)?, d, |x| x.to_f32(), f16::from_f32))
            }
            _ => candle_core::bail!("embedding: the gradient of a table of {:?}", dy.dtype()),
        };
        Ok((out, self.shape(l)?))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, dy: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = l.shape().dims2()?.1;
        let sums = crate::cuda::for_dtype!(dy.dtype(), super::cuda::row_sums((dy, l), &self.groups, d))?;
        Ok((sums, self.shape(l)?))
    }
}
