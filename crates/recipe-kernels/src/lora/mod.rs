//! A LoRA-adapted projection as one op: `y = x·Wᵀ + s·(drop(x)·Aᵀ)·Bᵀ` with `W` frozen.
//! Composed from Candle ops, every intermediate — the dropped input and its mask, `x·Aᵀ`, the
//! `[N, out]` update, its scaled copy — stays alive in the graph until backward, one to three
//! activation-sized tensors per adapted projection, which made LoRA need more memory than
//! full fine-tuning. Fused, only the output is new; the backward recomputes the two small
//! products it needs and regenerates the dropout mask from its seed:
//!
//! `g = s·dy·B`, `dx = dy·W + mask ⊙ (g·A)`, `dA = gᵀ·drop(x)`, `dB = s·dyᵀ·(drop(x)·Aᵀ)`.

mod composed;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{DType, Result, Tensor, WithDType};
pub use composed::lora_linear_composed;

use crate::noise::splitmix64;
use crate::{Backend, Products, for_each_chunk_mut, unfilled};

/// `x` `[N, in]` through the frozen `w` `[out, in]` plus the adapter `a` `[r, in]`, `b`
/// `[out, r]` scaled by `scale`, all in one dtype. The base product `x · wᵀ` (forward, and
/// `dy · w` in backward) computes as `products` says, like a frozen projection's; the
/// adapter's products, a rank's width, in the tensors' dtype.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<Dropout>,
    products: Products,
) -> Result<Tensor> {
    match Backend::of(x) {
        Backend::Composed => lora_linear_composed(x, &w.detach(), a, b, scale, dropout, products),
        _ => cpu::lora_linear(x, w, a, b, scale, dropout, products),
    }
}

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
        self.mask_of(n)
    }

    /// The mask in `T`, drawn in parallel (each element's value depends only on its index):
    /// element `i` is dropped when `u < p`, `u` the top 53 bits of a hash of `seed` and `i` read
    /// as a fraction of 2⁵³.
    pub(crate) fn mask_of<T: WithDType>(&self, n: usize) -> Vec<T> {
        const CHUNK: usize = 1 << 14;
        let (keep, zero) = (T::from_f64(1.0 / (1.0 - self.p)), T::from_f64(0.0));
        let threshold = self.threshold();
        // Safety: the chunks cover the buffer and each is written in full.
        let mut mask = unsafe { unfilled::<T>(n) };
        for_each_chunk_mut(&mut mask, CHUNK, |c, chunk| {
            for (i, m) in (c * CHUNK..).zip(chunk.iter_mut()) {
                *m = if splitmix64(self.seed ^ splitmix64(i as u64)) >> 11 < threshold { zero } else { keep };
            }
        });
        mask
    }

    /// `u < p` in integers, as the GPU tests it too: for the 53-bit `z` (`u = z / 2⁵³`),
    /// `z < p·2⁵³` exactly when `z < ⌈p·2⁵³⌉`.
    fn threshold(&self) -> u64 {
        (self.p * (1u64 << 53) as f64).ceil() as u64
    }

    /// The kept elements' value `1 / (1 − p)` in `dtype` (half precision rounded from f64, as
    /// a cast of the f64 mask rounds it), held in an f32.
    #[cfg(feature = "cuda")]
    fn keep_in(&self, dtype: DType) -> f32 {
        let keep = 1.0 / (1.0 - self.p);
        match dtype {
            DType::BF16 => half::bf16::from_f64(keep).to_f32(),
            DType::F16 => half::f16::from_f64(keep).to_f32(),
            _ => keep as f32,
        }
    }

    /// The mask shaped and typed like `x` (half precision rounded from f64, as a cast of the
    /// f64 mask would be), drawn where `x` lives when that is a GPU.
    pub(crate) fn mask_like(&self, x: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            return x.apply_op1_no_bwd(&cuda::MaskLike(*self));
        }
        let n = x.elem_count();
        match x.dtype() {
            DType::F32 => Tensor::from_vec(self.mask_of::<f32>(n), x.shape(), x.device()),
            dtype => Tensor::from_vec(self.mask_of::<f64>(n), x.shape(), x.device())?.to_dtype(dtype),
        }
    }
}
