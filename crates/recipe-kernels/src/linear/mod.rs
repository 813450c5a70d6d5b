//! A projection `y = x · wᵀ` as one op. Written as Candle's `x.matmul(&w.t())` it is two
//! nodes, and backward pays for the second: the weight's gradient is produced transposed,
//! summed into a zeroed buffer, then transposed back and summed again through strides. Here
//! backward gives `dx = dy · w` and `dw = dyᵀ · x` directly, each one matrix product reading
//! its operands through their strides. For a weight that is not trained (a LoRA base weight,
//! a teacher's) `frozen_linear` skips `dw` — a weight-sized buffer and 2·N·in·out FLOPs that
//! Candle's matmul would compute and throw away. The forward pass is the backend's own matrix
//! product, so one implementation serves the CPU, CUDA and Metal.
//!
//! [`Products::Bf16`] is bf16-mixed precision on f32 tensors: every product takes operands
//! rounded to bf16 (to nearest, ties to even) and gives a result rounded to bf16, accumulating
//! in f32 between — the numbers a bf16 matrix unit with f32 accumulation gives, and what
//! PyTorch's bf16 autocast does to a projection — while the tensors around it stay f32. On a
//! CPU with bf16 dot products (AVX512-BF16) the products run on them (`bf16_dot`), at twice
//! the f32 rate; elsewhere the rounded values are multiplied in f32, at f32 speed. The two
//! differ only in the order of the additions (and in subnormals, which the hardware flushes).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use crate::{contiguous, for_each_chunk_mut};

#[cfg(target_arch = "x86_64")]
mod bf16_dot;

/// Whether [`Products::Bf16`] runs on this CPU's bf16 dot products (AVX512-BF16) rather than
/// on bf16-rounded values multiplied in f32. Checked at run time.
pub fn cpu_has_bf16_dot_products() -> bool {
    #[cfg(target_arch = "x86_64")]
    return bf16_dot::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// What a projection's products compute in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Products {
    /// The operands' own dtype.
    #[default]
    Exact,
    /// f32 operands rounded to bf16, the result rounded to bf16 (what bf16-mixed uses on the
    /// CPU; it works on every device).
    Bf16,
}

/// `x` `[N, in]` times the transpose of `w` `[out, in]`, with the gradients of both.
pub fn linear(x: &Tensor, w: &Tensor, products: Products) -> Result<Tensor> {
    apply(x, w, Linear { weight_grad: true, products })
}

/// [`linear`] for a weight that never gets a gradient, even when it is a variable.
pub fn frozen_linear(x: &Tensor, w: &Tensor, products: Products) -> Result<Tensor> {
    apply(x, w, Linear { weight_grad: false, products })
}

fn apply(x: &Tensor, w: &Tensor, op: Linear) -> Result<Tensor> {
    match op.products {
        Products::Exact => x.apply_op2(w, op),
        // Rounding reads the operands' elements in order.
        Products::Bf16 => x.contiguous()?.apply_op2(&w.contiguous()?, op),
    }
}

struct Linear {
    weight_grad: bool,
    products: Products,
}

/// `x · wᵀ` on a GPU's storage as `products` computes it: rounding goes through the backend's
/// own dtype conversions (the CPU has a one-pass kernel for it in `project_on_cpu`).
#[cfg(any(feature = "cuda", feature = "metal"))]
pub(crate) fn project_on_gpu<S: BackendStorage>(
    x: &S,
    xl: &Layout,
    w: &S,
    wl: &Layout,
    products: Products,
) -> Result<(S, Shape)> {
    if products == Products::Exact {
        return project(x, xl, w, wl);
    }
    let rounded = |s: &S, l: &Layout| -> Result<(S, Layout)> {
        let contiguous = Layout::contiguous(l.shape());
        Ok((s.to_dtype(l, DType::BF16)?.to_dtype(&contiguous, DType::F32)?, contiguous))
    };
    let ((x, xl), (w, wl)) = (rounded(x, xl)?, rounded(w, wl)?);
    let (y, shape) = project(&x, &xl, &w, &wl)?;
    Ok((rounded(&y, &Layout::contiguous(&shape))?.0, shape))
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        if self.weight_grad { "linear" } else { "frozen-linear" }
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout, w: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        project_on_cpu(x, xl, w, wl, self.products)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        project_on_gpu(x, xl, w, wl, self.products)
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        x: &candle_core::MetalStorage,
        xl: &Layout,
        w: &candle_core::MetalStorage,
        wl: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        project_on_gpu(x, xl, w, wl, self.products)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Gradients are products too: their operands and results are rounded alike.
        let dx = x.track_op().then(|| product(self.products, dy, w)).transpose()?;
        let dw = (self.weight_grad && w.track_op()).then(|| product(self.products, &dy.t()?, x)).transpose()?;
        Ok((dx, dw))
    }
}

/// `x · wᵀ` on the CPU as `products` computes it: the forward pass of a projection (LoRA's
/// frozen base too). Bf16 products need contiguous f32 operands where the CPU has no bf16 dot
/// products.
pub(crate) fn project_on_cpu(
    x: &CpuStorage,
    xl: &Layout,
    w: &CpuStorage,
    wl: &Layout,
    products: Products,
) -> Result<(CpuStorage, Shape)> {
    if products == Products::Exact {
        return project(x, xl, w, wl);
    }
    #[cfg(target_arch = "x86_64")]
    if bf16_dot::available() {
        let y = bf16_dot::product(strided(x, xl)?, strided(w, &wl.transpose(0, 1)?)?);
        return Ok((CpuStorage::F32(y), Shape::from((xl.dims()[0], wl.dims()[0]))));
    }
    let rounded = |s: &CpuStorage, l: &Layout| -> Result<(CpuStorage, Layout)> {
        let values = contiguous::<f32>(s, l)?;
        Ok((CpuStorage::F32(rounded_to_bf16(values)), Layout::contiguous(l.shape())))
    };
    let ((x, xl), (w, wl)) = (rounded(x, xl)?, rounded(w, wl)?);
    let (y, shape) = project(&x, &xl, &w, &wl)?;
    let CpuStorage::F32(mut y) = y else { candle_core::bail!("linear: bf16 products need f32 tensors") };
    round_in_place(&mut y);
    Ok((CpuStorage::F32(y), shape))
}

/// `a · b` as `products` computes it, with no gradient: a projection's backward products.
pub(crate) fn product(products: Products, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match products {
        Products::Exact => a.detach().matmul(&b.detach()),
        Products::Bf16 if a.device().is_cpu() && cpu_has_bf16_dot_products() => a.apply_op2_no_bwd(b, &Bf16Product),
        Products::Bf16 => round_to_bf16(&round_to_bf16(a)?.matmul(&round_to_bf16(b)?)?),
    }
}

/// `x · wᵀ` on any backend's storage.
fn project<S: BackendStorage>(x: &S, xl: &Layout, w: &S, wl: &Layout) -> Result<(S, Shape)> {
    let (n, k) = xl.shape().dims2()?;
    let (out, k2) = wl.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("linear: x is [{n}, {k}] but w is [{out}, {k2}]");
    }
    let y = x.matmul(w, (1, n, out, k), xl, &wl.transpose(0, 1)?)?;
    Ok((y, Shape::from((n, out))))
}

/// `a · b` on bf16 dot products ([`Products::Bf16`] where the CPU has them), for backward.
struct Bf16Product;

impl CustomOp2 for Bf16Product {
    fn name(&self) -> &'static str {
        "bf16-product"
    }

    // Only x86-64 has the kernel; elsewhere the op is never built (`product` checks).
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn cpu_fwd(&self, a: &CpuStorage, al: &Layout, b: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        #[cfg(target_arch = "x86_64")]
        if bf16_dot::available() {
            let (a, b) = (strided(a, al)?, strided(b, bl)?);
            if a.cols != b.rows {
                candle_core::bail!("bf16 product: [{}, {}] times [{}, {}]", a.rows, a.cols, b.rows, b.cols);
            }
            let shape = Shape::from((a.rows, b.cols));
            return Ok((CpuStorage::F32(bf16_dot::product(a, b)), shape));
        }
        candle_core::bail!("bf16 product: this CPU has no bf16 dot products")
    }
}

/// A 2-d f32 CPU tensor as the dot-product kernel reads it.
#[cfg(target_arch = "x86_64")]
fn strided<'a>(s: &'a CpuStorage, l: &Layout) -> Result<bf16_dot::Strided<'a>> {
    let (rows, cols) = l.shape().dims2()?;
    let (row_stride, col_stride) = (l.stride()[0], l.stride()[1]);
    Ok(bf16_dot::Strided { data: &s.as_slice::<f32>()?[l.start_offset()..], rows, cols, row_stride, col_stride })
}

/// Elements per parallel chunk when rounding.
const CHUNK: usize = 1 << 14;

/// `v` rounded to the nearest bf16 (ties to even), kept as f32. NaN stays NaN.
fn to_bf16(v: f32) -> f32 {
    let bits = v.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) & 0xFFFF_0000;
    if v.is_nan() { v } else { f32::from_bits(rounded) }
}

fn round_in_place(values: &mut [f32]) {
    for_each_chunk_mut(values, CHUNK, |_, chunk| chunk.iter_mut().for_each(|v| *v = to_bf16(*v)));
}

fn rounded_to_bf16(values: &[f32]) -> Vec<f32> {
    let mut out = values.to_vec();
    round_in_place(&mut out);
    out
}

/// `t` (f32) rounded to bf16 values, kept in f32, with no gradient.
pub fn round_to_bf16(t: &Tensor) -> Result<Tensor> {
    match t.device().is_cpu() {
        true => t.contiguous()?.apply_op1_no_bwd(&RoundToBf16),
        false => t.detach().to_dtype(DType::BF16)?.to_dtype(DType::F32),
    }
}

struct RoundToBf16;

impl CustomOp1 for RoundToBf16 {
    fn name(&self) -> &'static str {
        "round-to-bf16"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(rounded_to_bf16(contiguous::<f32>(s, l)?)), l.shape().clone()))
    }
}
