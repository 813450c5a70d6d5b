//! `recipe-kernels` holds fused Candle custom ops for the training hot loop, each with a
//! backward pass and each tested against the plain Candle composition it replaces. A chain of
//! Candle ops passes over memory once per op and allocates each intermediate; a fused op passes
//! once.
//!
//! Each op is a folder: `mod.rs` holds the public function, which picks the implementation for
//! the tensor's device; `cpu.rs` the op and its native CPU kernel; `kernels.cu` and `cuda.rs`
//! its CUDA kernels and their launches; `composed.rs` the composed fallback — plain Candle ops
//! with gradients Candle derives — which runs where there is no native kernel (Metal, and on
//! CUDA attention at uncommon head dimensions) and is the reference the native kernels are
//! tested against. Kernels compute in f32 (or f64) and widen half-precision inputs at their edges: mixed
//! precision keeps norm statistics, softmax and the loss in f32. It also holds the allocator
//! setup that programs which train declare (the binary and the benches). It knows nothing of
//! models, recipes or files.

mod adamw;
mod alloc;
mod attention;
mod cross_entropy;
#[cfg(feature = "cuda")]
mod cuda;
mod embedding;
mod exp;
mod glu;
mod lanes;
mod linear;
mod lora;
mod noise;
mod rms_norm;
mod rope;
mod softmax;

pub use adamw::{AdamWStep, adamw_moments, adamw_step, adamw_step_composed, squared_norm, squared_norm_composed};
pub use alloc::{Allocator, retain_freed_memory};
pub use attention::{KeySpans, Scores, attention, attention_composed};
pub use cross_entropy::{cross_entropy_rows, cross_entropy_rows_composed};
pub use embedding::{embedding, embedding_composed};
pub use glu::{Activation, glu, glu_composed};
pub use linear::{Products, cpu_has_bf16_dot_products, frozen_linear, linear, round_to_bf16};
pub use lora::{Dropout, lora_linear, lora_linear_composed};
pub use noise::uniform_noise;
pub use rms_norm::{rms_norm, rms_norm_composed};
pub use rope::{rope, rope_composed};
pub use softmax::{masked_softmax, masked_softmax_composed};

use candle_core::{DType, Tensor};

/// A custom op's `cuda_fwd`, in CUDA builds only, over its two or three inputs' storages and
/// layouts: `cuda_fwd!(self, |s1, l1, s2, l2| body)`, `body` giving the output's storage and
/// shape (`BackendStorage` is in scope for it).
macro_rules! cuda_fwd {
    ($self:ident, |$s1:ident, $l1:ident, $s2:ident, $l2:ident| $body:expr) => {
        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &$self,
            $s1: &candle_core::CudaStorage,
            $l1: &candle_core::Layout,
            $s2: &candle_core::CudaStorage,
            $l2: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
            use candle_core::backend::BackendStorage;
            $body
        }
    };
    ($self:ident, |$s1:ident, $l1:ident, $s2:ident, $l2:ident, $s3:ident, $l3:ident| $body:expr) => {
        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &$self,
            $s1: &candle_core::CudaStorage,
            $l1: &candle_core::Layout,
            $s2: &candle_core::CudaStorage,
            $l2: &candle_core::Layout,
            $s3: &candle_core::CudaStorage,
            $l3: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
            use candle_core::backend::BackendStorage;
            $body
        }
    };
}
pub(crate) use cuda_fwd;

/// Where an op runs for a given input.
pub(crate) enum Backend {
    /// The native CPU kernel.
    Cpu,
    /// The native CUDA kernel, in the input's own dtype.
    #[cfg(feature = "cuda")]
    Cuda,
    /// The composed fallback.
    Composed,
}

impl Backend {
    pub(crate) fn of(t: &Tensor) -> Backend {
        match t.device() {
            candle_core::Device::Cpu => Backend::Cpu,
            #[cfg(feature = "cuda")]
            candle_core::Device::Cuda(_) => Backend::Cuda,
            _ => Backend::Composed,
        }
    }
}

/// The dtype a kernel computes in for inputs of `dtype`: half precision is widened to f32.
pub(crate) fn widened(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// The elements of a contiguous CPU tensor; custom ops call `.contiguous()` before applying.
pub(crate) fn contiguous<'a, T: candle_core::WithDType>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<T>()?[start..end]),
        None => candle_core::bail!("fused kernels need contiguous inputs"),
    }
}

/// Run `f(i)` for every `i` in `0..n` on Candle's own CPU worker pool, so that kernels and
/// Candle's ops never compete for the cores with a second pool of spinning threads.
pub fn parallel_for(n: usize, f: impl Fn(usize) + Sync) {
    candle_core::utils::barrier_pool().execute_chunked(n, |range| range.for_each(&f));
}

/// `f()`, built for AVX2 and FMA where the CPU has them: `f` is inlined into a function compiled
/// for them, so its loops vectorise at that width (the crate itself is built for the baseline
/// CPU, whose vectors are a quarter as wide).
#[inline(always)]
pub(crate) fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        fn avx2_fma<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // Safety: the CPU has both features.
        return unsafe { avx2_fma(f) };
    }
    f()
}

/// A buffer that parallel tasks write at disjoint places, shared between the threads as its
/// address: each task takes its own part with [`Disjoint::part`] or [`Disjoint::at`].
pub(crate) struct Disjoint<T> {
    address: usize,
    len: usize,
    element: std::marker::PhantomData<*mut T>,
}

// Safety: what crosses threads is parts of the buffer, each to one task: as `&mut [T]` would.
unsafe impl<T: Send> Send for Disjoint<T> {}
unsafe impl<T: Send> Sync for Disjoint<T> {}

impl<T> Clone for Disjoint<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Disjoint<T> {}

impl<T> Disjoint<T> {
    pub(crate) fn of(buf: &mut [T]) -> Disjoint<T> {
        Disjoint { address: buf.as_mut_ptr() as usize, len: buf.len(), element: std::marker::PhantomData }
    }

    /// Elements `start..start + len`.
    ///
    /// # Safety
    /// No other live reference or task touches them, and the buffer outlives the slice.
    pub(crate) unsafe fn part<'a>(self, start: usize, len: usize) -> &'a mut [T] {
        assert!(start + len <= self.len, "a part inside the buffer");
        // Safety: inside the buffer (asserted); exclusive by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut((self.address as *mut T).add(start), len) }
    }

    /// Where element `offset` is, for writes of `extent` elements from there (a matrix product's
    /// rows with their stride included).
    ///
    /// # Safety
    /// As for [`Disjoint::part`], for every element the caller writes through the pointer.
    pub(crate) unsafe fn at(self, offset: usize, extent: usize) -> *mut T {
        assert!(offset + extent <= self.len, "writes inside the buffer");
        // Safety: inside the buffer (asserted).
        unsafe { (self.address as *mut T).add(offset) }
    }
}

/// Call `f(r, row)` for each row of `row_len` elements of `out`, in parallel.
pub fn for_each_row_mut<T: Send>(out: &mut [T], row_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let rows = out.len() / row_len.max(1);
    let buf = Disjoint::of(out);
    // Safety: parallel_for hands each index to exactly one call, so no two rows overlap, and
    // `out` outlives the call.
    parallel_for(rows, |r| f(r, unsafe { buf.part(r * row_len, row_len) }));
}

/// Call `f(c, chunk)` for each chunk of at most `len` elements of `out` (the last may be
/// shorter), in parallel: chunk `c` starts at `c · len`.
pub fn for_each_chunk_mut<T: Send>(out: &mut [T], len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let (n, len) = (out.len(), len.max(1));
    let buf = Disjoint::of(out);
    // Safety: as in `for_each_row_mut`.
    parallel_for(n.div_ceil(len), |c| f(c, unsafe { buf.part(c * len, len.min(n - c * len)) }));
}

/// A buffer of `n` elements for a kernel that writes every one of them before anything reads
/// one: allocated without the zero fill of `vec![0.0; n]`, a pass over memory the kernel is
/// about to overwrite (the zero fills of our kernels' outputs were 1.5% of the tiny step).
/// Candle's own `alloc_uninit` makes its outputs the same way.
///
/// # Safety
/// The caller writes every element before reading it or handing the buffer on.
// The elements are plain floats, written before anything reads them: the lint's concern, a read
// of uninitialised memory, is what the caller promises does not happen.
#[allow(clippy::uninit_vec)]
pub(crate) unsafe fn unfilled<T: Copy>(n: usize) -> Vec<T> {
    let mut buf = Vec::with_capacity(n);
    // Safety: the capacity is `n`; the caller's promise covers the contents.
    unsafe { buf.set_len(n) };
    buf
}
