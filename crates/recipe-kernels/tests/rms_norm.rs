//! The fused RMSNorm against its plain Candle composition: output, and gradients of both the
//! input and the weight.

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

mod common;
use common::{assert_close, random};
use recipe_kernels::{rms_norm, rms_norm_composed};

#[test]
fn matches_the_composition_forward_and_backward() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // 150 rows spans several blocks of the weight-gradient sum, the last one partial.
    for (rows, d, dtype) in [(150, 12, DType::F32), (3, 5, DType::F64), (70, 8, DType::F64)] {
        let t = |rng: &mut ChaCha8Rng, shape: &[usize]| {
            let n = shape.iter().product();
            Tensor::from_vec(random(rng, n, 2.0), shape, &dev).unwrap().to_dtype(dtype).unwrap()
        };
        let (x, w, dy) = (t(&mut rng, &[rows, d]), t(&mut rng, &[d]), t(&mut rng, &[rows, d]));
        let (xa, wa) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
        let (xb, wb) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
        let fused = rms_norm(&xa, &wa, 1e-5).unwrap();
        let plain = rms_norm_composed(&xb, &wb, 1e-5).unwrap();
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        assert_close(&fused, &plain, tol);
        let ga = (fused * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (plain * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(ga.get(&xa).unwrap(), gb.get(&xb).unwrap(), tol);
        assert_close(ga.get(&wa).unwrap(), gb.get(&wb).unwrap(), tol * 10.0);
    }
}
