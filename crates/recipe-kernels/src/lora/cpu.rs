//! The fused op: its forward on the CPU and on CUDA (the base and adapter products are the
//! backend's own matrix products, the dropout mask drawn where `x` lives), one backward for both.

use candle_core::backend::BackendStorage;
use candle_core::op::{Add, Mul};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::Dropout;
use crate::Products;
use crate::linear::{product, project_on_cpu};

pub(super) fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<Dropout>,
    products: Products,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let w = w.contiguous()?.detach();
    x.apply_op3(&a.contiguous()?, &b.contiguous()?, LoraLinear { w, scale, dropout, products })
}

/// The base product follows `products`; the adapter's small products stay in the dtype.
struct LoraLinear {
    w: Tensor,
    scale: f64,
    dropout: Option<Dropout>,
    products: Products,
}

impl LoraLinear {
    /// `y + s·(drop(x)·Aᵀ)·Bᵀ` on any backend's storage, `y` the base product and `mask` the
    /// dropout mask (contiguous, `x`'s shape) when there is dropout.
    fn add_update<S: BackendStorage>(
        &self,
        y: S,
        (x, xl): (&S, &Layout),
        mask: Option<S>,
        (a, al): (&S, &Layout),
        (b, bl): (&S, &Layout),
    ) -> Result<(S, Shape)> {
        let (n, k) = xl.shape().dims2()?;
        let (r, out) = (al.shape().dims2()?.0, bl.shape().dims2()?.0);
        let rows = |cols: usize| Layout::contiguous((n, cols));
        let dropped = mask.map(|m| x.binary_impl::<Mul>(&m, xl, &rows(k))).transpose()?;
        let (input, input_layout) = match &dropped {
            Some(d) => (d, rows(k)),
            None => (x, xl.clone()),
        };
        let h = input.matmul(a, (1, n, r, k), &input_layout, &al.transpose(0, 1)?)?;
        let h = h.affine(&rows(r), self.scale, 0.0)?;
        let update = h.matmul(b, (1, n, out, r), &rows(r), &bl.transpose(0, 1)?)?;
        let y = y.binary_impl::<Add>(&update, &rows(out), &rows(out))?;
        Ok((y, Shape::from((n, out))))
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (w_storage, wl) = self.w.storage_and_layout();
        let candle_core::Storage::Cpu(w) = &*w_storage else { candle_core::bail!("lora-linear: w is not on the CPU") };
        let (y, _) = project_on_cpu(x, xl, w, wl, self.products)?;
        let mask = |d: Dropout| -> Result<CpuStorage> {
            let n = xl.shape().elem_count();
            match x {
                CpuStorage::F32(_) => Ok(CpuStorage::F32(d.mask_of(n))),
                _ => CpuStorage::F64(d.mask_of(n)).to_dtype(&Layout::contiguous(xl.shape()), x.dtype()),
            }
        };
        let mask = self.dropout.map(mask).transpose()?;
        self.add_update(y, (x, xl), mask, (a, al), (b, bl))
    }

    crate::cuda_fwd!(self, |x, xl, a, al, b, bl| {
        let (w_storage, wl) = self.w.storage_and_layout();
        let candle_core::Storage::Cuda(w) = &*w_storage else { candle_core::bail!("lora-linear: w is not on the GPU") };
        let (y, _) = crate::linear::project_on_gpu(x, xl, w, wl, self.products)?;
        let n = xl.shape().elem_count();
        let mask = self.dropout.map(|d| super::cuda::dropout_mask(&x.device, d, n, x.dtype())).transpose()?;
        self.add_update(y, (x, xl), mask, (a, al), (b, bl))
    });

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b) = (x.detach(), a.detach(), b.detach());
        let mask = self.dropout.map(|d| d.mask_like(&x)).transpose()?;
        let dropped = match &mask {
            Some(m) => (&x * m)?,
            None => x,
        };
        let g = (dy.matmul(&b)? * self.scale)?;
        let through_adapter = g.matmul(&a)?;
        let through_adapter = match &mask {
            Some(m) => (through_adapter * m)?,
            None => through_adapter,
        };
        let dx = (product(self.products, dy, &self.w)? + through_adapter)?;
        let da = g.t()?.matmul(&dropped)?;
        let db = (dy.t()?.matmul(&dropped.matmul(&a.t()?)?)? * self.scale)?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}
