//! The fused masked softmax against its plain Candle composition, forward and backward, on
//! random inputs with causal and document masks.

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

mod common;
use common::{assert_close, random};
use recipe_kernels::{masked_softmax, masked_softmax_composed};

/// A causal mask with a document boundary in each row of the batch.
fn bias(b: usize, tq: usize, tk: usize, split: usize) -> Vec<f64> {
    let mut m = vec![0.0; b * tq * tk];
    for r in 0..b {
        for i in 0..tq {
            for j in 0..tk {
                let past = tk - tq;
                let same_doc = (i + past < split + r) == (j < split + r);
                if j > i + past || !same_doc {
                    m[(r * tq + i) * tk + j] = f32::MIN as f64 / 2.0;
                }
            }
        }
    }
    m
}

#[test]
fn matches_the_composition_forward_and_backward() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (b, h, tq, tk, dtype) in [(2, 3, 7, 7, DType::F32), (1, 2, 3, 9, DType::F32), (2, 2, 5, 5, DType::F64)] {
        let x = Tensor::from_vec(random(&mut rng, b * h * tq * tk, 3.0), (b, h, tq, tk), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let m = Tensor::from_vec(bias(b, tq, tk, 3), (b, 1, tq, tk), &dev).unwrap().to_dtype(dtype).unwrap();
        let dy = Tensor::from_vec(random(&mut rng, b * h * tq * tk, 3.0), (b, h, tq, tk), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let scale = 0.37;
        let (xa, xb) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&x).unwrap());
        let fused = masked_softmax(&xa, &m, scale).unwrap();
        let plain = masked_softmax_composed(&xb, &m, scale).unwrap();
        let tol = if dtype == DType::F32 { 1e-6 } else { 1e-12 };
        assert_close(&fused, &plain, tol);
        let ga = (fused * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (plain * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(ga.get(&xa).unwrap(), gb.get(&xb).unwrap(), tol * 10.0);
    }
}
