//! What the kernel tests share: seeded random inputs and an element-wise comparison.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use candle_core::{DType, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;

/// `n` uniform values in `[-half_width, half_width)`.
pub fn random(rng: &mut ChaCha8Rng, n: usize, half_width: f64) -> Vec<f64> {
    (0..n).map(|_| (rng.next_u32() as f64 / u32::MAX as f64) * 2.0 * half_width - half_width).collect()
}

/// Same shape, and every element within `tol` relative to the reference `b`.
pub fn assert_close(a: &Tensor, b: &Tensor, tol: f64) {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "element {i}: {x} vs {y}");
    }
}

/// The first CUDA device, when this build has CUDA and a GPU answers.
pub fn cuda() -> Option<candle_core::Device> {
    candle_core::utils::cuda_is_available().then(|| candle_core::Device::new_cuda(0).ok()).flatten()
}
