//! The fused gated activations (SwiGLU, GeGLU) against their plain Candle compositions,
//! computed in f64: output and both gradients, over sizes that split into several parallel
//! chunks, the last one partial, and large gates of either sign (where the sigmoid saturates);
//! and GeGLU's GELU against PyTorch's `gelu(approximate="tanh")` at fixed points.

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

mod common;
use common::{assert_close, random};
use recipe_kernels::{Activation, glu, glu_composed};

#[test]
fn matches_the_composition_forward_and_backward() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for act in [Activation::Silu, Activation::GeluTanh] {
        for (shape, dtype, tol) in
            [((97, 100), DType::F32, 1e-6), ((5, 7), DType::F64, 1e-14), ((3, 4096), DType::F64, 1e-14)]
        {
            let n = shape.0 * shape.1;
            let t = |rng: &mut ChaCha8Rng, width: f64| {
                Tensor::from_vec(random(rng, n, width), shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
            };
            let (g, u, dy) = (t(&mut rng, 30.0), t(&mut rng, 2.0), t(&mut rng, 1.0));
            let run = |f: &dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>| {
                let (gv, uv) = (Var::from_tensor(&g).unwrap(), Var::from_tensor(&u).unwrap());
                let y = f(gv.as_tensor(), uv.as_tensor()).unwrap();
                let grads = (y.to_dtype(dtype).unwrap() * &dy).unwrap().sum_all().unwrap().backward().unwrap();
                (y, grads.get(&gv).unwrap().clone(), grads.get(&uv).unwrap().clone())
            };
            let (y, dg, du) = run(&|g, u| glu(g, u, act));
            // The reference in f64: in f32, the composition's own rounding is as large as the
            // kernel's where the GELU's cubic is large.
            let wide = |t: &Tensor| t.to_dtype(DType::F64);
            let (y0, dg0, du0) = run(&|g, u| glu_composed(&wide(g)?, &wide(u)?, act));
            assert_close(&y, &y0, tol);
            assert_close(&dg, &dg0, tol);
            assert_close(&du, &du0, tol);
        }
    }
}

#[test]
fn gelu_is_pytorchs_tanh_approximation() {
    // torch.nn.functional.gelu(x, approximate="tanh") in float64.
    let x = [-6.0, -2.5, -1.0, -0.1, 0.0, 0.3, 1.0, 2.0, 7.0];
    let gelu = [
        -8.43964897967453e-11,
        -0.015084266089998577,
        -0.15880800939172324,
        -0.04601724895456484,
        0.0,
        0.18537092354275922,
        0.8411919906082768,
        1.954597694087775,
        6.999999999999997,
    ];
    let xs = Tensor::new(&x, &Device::Cpu).unwrap();
    let ones = Tensor::ones(x.len(), DType::F64, &Device::Cpu).unwrap();
    let got: Vec<f64> = glu(&xs, &ones, Activation::GeluTanh).unwrap().to_vec1().unwrap();
    for ((x, got), want) in x.iter().zip(got).zip(gelu) {
        assert!((got - want).abs() < 1e-12, "gelu({x}) = {got}, PyTorch {want}");
    }
}
