//! The projection ops against `x · wᵀ`: same output, same gradients — of the input, and of the
//! weight for `linear`; `frozen_linear` gives the weight no gradient even when it is a variable.

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

mod common;
use common::{assert_close, random};
use recipe_kernels::{Products, cpu_has_bf16_dot_products, frozen_linear, linear, round_to_bf16};

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
        let frozen = frozen_linear(&xa, &wa, Products::Exact).unwrap();
        let plain = xb.matmul(&wb.t().unwrap()).unwrap();
        let tol = if dtype == DType::F32 { 1e-6 } else { 1e-12 };
        assert_close(&frozen, &plain, tol);
        let ga = (frozen * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&plain * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(ga.get(&xa).unwrap(), gb.get(&xb).unwrap(), tol);
        assert!(gb.get(&wb).is_some(), "Candle's matmul computes the weight's gradient");
        assert!(ga.get(&wa).is_none(), "the frozen projection must not");

        let (xc, wc) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
        let trained = linear(&xc, &wc, Products::Exact).unwrap();
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
    assert_close(&frozen_linear(&x, &w, Products::Exact).unwrap(), &x.matmul(&w.t().unwrap()).unwrap(), 1e-6);
    assert_close(&linear(&x, &w, Products::Exact).unwrap(), &x.matmul(&w.t().unwrap()).unwrap(), 1e-6);
}

/// `t` rounded to bf16 by Candle's own conversion.
fn bf16(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap()
}

#[test]
fn bf16_products_round_operands_and_results_as_bf16_autocast_does() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let t = |rng: &mut ChaCha8Rng, shape: (usize, usize)| {
        Tensor::from_vec(random(rng, shape.0 * shape.1, 3.0), shape, &dev).unwrap().to_dtype(DType::F32).unwrap()
    };
    let (x, w, dy) = (t(&mut rng, (33, 17)), t(&mut rng, (9, 17)), t(&mut rng, (33, 9)));
    assert_eq!(round_to_bf16(&x).unwrap().to_vec2::<f32>().unwrap(), bf16(&x).to_vec2::<f32>().unwrap());
    let changed = bf16(&x).ne(&x).unwrap().to_dtype(DType::F32).unwrap().sum_all().unwrap();
    assert!(changed.to_scalar::<f32>().unwrap() > 0.0, "rounding changes values");

    let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
    let y = linear(&xv, &wv, Products::Bf16).unwrap();
    let want = bf16(&bf16(&x).matmul(&bf16(&w).t().unwrap()).unwrap());
    // Dot products in hardware add in another order than f32 matmul: a sum that lands next to
    // a rounding boundary may round to the neighbouring bf16 value (2⁻⁷ relative at most).
    let tol = if cpu_has_bf16_dot_products() { 1.0 / 128.0 } else { 1e-6 };
    assert_close(&y, &want, tol);
    let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = bf16(&bf16(&dy).matmul(&bf16(&w)).unwrap());
    let dw = bf16(&bf16(&dy).t().unwrap().matmul(&bf16(&x)).unwrap());
    assert_close(grads.get(&xv).unwrap(), &dx, tol);
    assert_close(grads.get(&wv).unwrap(), &dw, tol);
    // Against exact f32 products, bf16's 8 bits of mantissa show.
    let exact = x.matmul(&w.t().unwrap()).unwrap();
    let off = (&y - &exact).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(off > 1e-3 && off < 0.5, "{off}");
    let frozen = frozen_linear(&xv, &wv, Products::Bf16).unwrap();
    assert_close(&frozen, &want, tol);
}
