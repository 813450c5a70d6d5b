//! A LoRA-adapted projection as one op: `y = x·Wᵀ + s·(drop(x)·Aᵀ)·Bᵀ` with `W` frozen.
//! Composed from Candle ops, every intermediate — the dropped input and its mask, `x·Aᵀ`, the
//! `[N, out]` update, its scaled copy — stays alive in the graph until backward, one to three
//! activation-sized tensors per adapted projection, which made LoRA need more memory than
//! full fine-tuning. Fused, only the output is new; the backward recomputes the two small
//! products it needs and regenerates the dropout mask from its seed:
//!
//! `g = s·dy·B`, `dx = dy·W + mask ⊙ (g·A)`, `dA = gᵀ·drop(x)`, `dB = s·dyᵀ·(drop(x)·Aᵀ)`.

use candle_core::backend::BackendStorage;
use candle_core::op::{Add, Mul};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// Inverted dropout on the adapter's input: probability `p`, the mask a pure function of `seed`
/// and the element's index, so the backward pass can draw it again instead of keeping it.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub p: f64,
    pub seed: u64,
}

impl Dropout {
    /// The mask, `0` or `1 / (1 - p)` per element.
    pub fn mask(&self, n: usize) -> Vec<f64> {
        let keep = 1.0 / (1.0 - self.p);
        (0..n as u64)
            .map(|i| {
                let u = (splitmix64(self.seed ^ splitmix64(i)) >> 11) as f64 / (1u64 << 53) as f64;
                if u < self.p { 0.0 } else { keep }
            })
            .collect()
    }

    fn mask_like(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::from_vec(self.mask(x.elem_count()), x.shape(), x.device())?.to_dtype(x.dtype())
    }
}

/// A counter-based generator step (Steele et al.'s SplitMix64): independent values for
/// consecutive inputs.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `x` `[N, in]` through the frozen `w` `[out, in]` plus the adapter `a` `[r, in]`, `b`
/// `[out, r]` scaled by `scale`.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<Dropout>,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    x.apply_op3(&a.contiguous()?, &b.contiguous()?, LoraLinear { w: w.detach(), scale, dropout })
}

/// The same, composed from plain Candle ops: the reference the fused op is tested against.
pub fn lora_linear_reference(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<Dropout>,
) -> Result<Tensor> {
    let dropped = match dropout {
        Some(d) => (x * d.mask_like(x)?)?,
        None => x.clone(),
    };
    x.matmul(&w.t()?)? + (dropped.matmul(&a.t()?)?.matmul(&b.t()?)? * scale)?
}

struct LoraLinear {
    w: Tensor,
    scale: f64,
    dropout: Option<Dropout>,
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
        let (n, k) = xl.shape().dims2()?;
        let (r, out) = (al.shape().dims2()?.0, bl.shape().dims2()?.0);
        let (w_storage, wl) = self.w.storage_and_layout();
        let candle_core::Storage::Cpu(w) = &*w_storage else { candle_core::bail!("lora-linear: w is not on the CPU") };
        let y = x.matmul(w, (1, n, out, k), xl, &wl.transpose(0, 1)?)?;
        let rows = |cols: usize| Layout::contiguous((n, cols));
        let dropped = match self.dropout {
            Some(d) => {
                let mask = match x.dtype() {
                    DType::F32 => CpuStorage::F32(d.mask(n * k).into_iter().map(|v| v as f32).collect()),
                    DType::F64 => CpuStorage::F64(d.mask(n * k)),
                    other => candle_core::bail!("lora-linear: dropout on {other:?}"),
                };
                Some(x.binary_impl::<Mul>(&mask, xl, &rows(k))?)
            }
            None => None,
        };
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
        let dx = (dy.matmul(&self.w)? + through_adapter)?;
        let da = g.t()?.matmul(&dropped)?;
        let db = (dy.t()?.matmul(&dropped.matmul(&a.t()?)?)? * self.scale)?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}
