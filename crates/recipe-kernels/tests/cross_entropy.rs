//! The fused cross-entropy against its plain Candle composition: per-row losses and the
//! gradient of the logits, with masked rows.

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

mod common;
use common::assert_close;
use recipe_kernels::{cross_entropy_rows, cross_entropy_rows_composed};

#[test]
fn matches_the_composition_forward_and_backward() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (n, v, dtype) in [(37, 50, DType::F32), (6, 9, DType::F64)] {
        let logits: Vec<f64> = (0..n * v).map(|_| (rng.next_u32() as f64 / u32::MAX as f64) * 16.0 - 8.0).collect();
        let targets: Vec<u32> = (0..n).map(|_| rng.next_u32() % v as u32).collect();
        let mask: Vec<f64> = (0..n).map(|i| if i % 4 == 3 { 0.0 } else { 1.0 }).collect();
        let dloss: Vec<f64> = (0..n).map(|i| 0.5 + i as f64 / n as f64).collect();
        let logits = Tensor::from_vec(logits, (n, v), &dev).unwrap().to_dtype(dtype).unwrap();
        let targets = Tensor::from_vec(targets, n, &dev).unwrap();
        let mask = Tensor::from_vec(mask, n, &dev).unwrap().to_dtype(dtype).unwrap();
        let dloss = Tensor::from_vec(dloss, n, &dev).unwrap().to_dtype(dtype).unwrap();
        let (a, b) = (Var::from_tensor(&logits).unwrap(), Var::from_tensor(&logits).unwrap());
        let fused = cross_entropy_rows(&a, &targets, &mask).unwrap();
        let plain = cross_entropy_rows_composed(&b, &targets, &mask).unwrap();
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        assert_close(&fused, &plain, tol);
        let ga = (fused * &dloss).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (plain * &dloss).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(ga.get(&a).unwrap(), gb.get(&b).unwrap(), tol);
    }
}
