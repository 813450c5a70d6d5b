//! The projection ops against `x · wᵀ`: same output, same gradients — of the input, and of the
//! weight for `linear`; `frozen_linear` gives the weight no gradient even when it is a variable.

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

mod common;
use common::{assert_close, random};
use recipe_kernels::{frozen_linear, linear};

#[test]
fn matches_the_matmul_and_gives_the_weight_no_gradient() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for (n, k, out, dtype) in [(7, 5, 3, DType::F32), (4, 6, 9, DType::F64)] {
        let tensor = |rng: &mut ChaCha8Rng, shape: (usize, usize)| {
            Tensor::from_vec(random(rng, shape.0 * shape.1, 2.0), shape, &dev).unwrap().to_dtype(dtype).unwrap()
        };
        let (x, w, dy) = (tensor(&mut rng, (n, k)), tensor(&mut rng, (out, k)), tensor(&mut rng, (n, out)));
        let (xa, xb) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&x).unwrap());
        let (wa, wb) = (Var::from_tensor(&w).unwrap(), Var::from_tensor(&w).unwrap());
        let frozen = frozen_linear(&xa, &wa).unwrap();
        let plain = xb.matmul(&wb.t().unwrap()).unwrap();
        let tol = if dtype == DType::F32 { 1e-6 } else { 1e-12 };
        assert_close(&frozen, &plain, tol);
        let ga = (frozen * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&plain * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(ga.get(&xa).unwrap(), gb.get(&xb).unwrap(), tol);
        assert!(gb.get(&wb).is_some(), "Candle's matmul computes the weight's gradient");
        assert!(ga.get(&wa).is_none(), "the frozen projection must not");

        let (xc, wc) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
        let trained = linear(&xc, &wc).unwrap();
        assert_close(&trained, &plain, tol);
        let gc = (trained * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(gc.get(&xc).unwrap(), gb.get(&xb).unwrap(), tol);
        assert_close(gc.get(&wc).unwrap(), gb.get(&wb).unwrap(), tol);
    }
}

#[test]
fn a_transposed_input_is_read_through_its_strides() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let xt = Tensor::from_vec(random(&mut rng, 20, 1.0), (4, 5), &dev).unwrap().to_dtype(DType::F32).unwrap();
    let w = Tensor::from_vec(random(&mut rng, 12, 1.0), (3, 4), &dev).unwrap().to_dtype(DType::F32).unwrap();
    let x = xt.t().unwrap();
    assert_close(&frozen_linear(&x, &w).unwrap(), &x.matmul(&w.t().unwrap()).unwrap(), 1e-6);
    assert_close(&linear(&x, &w).unwrap(), &x.matmul(&w.t().unwrap()).unwrap(), 1e-6);
}
