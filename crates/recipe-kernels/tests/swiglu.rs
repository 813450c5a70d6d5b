//! The fused SwiGLU activation against its plain Candle composition (`silu(g) * u`): output and
//! both gradients, over sizes that split into several parallel chunks, the last one partial,
//! and large gates of either sign (where the sigmoid saturates).

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

mod common;
use common::{assert_close, random};
use recipe_kernels::{swiglu, swiglu_composed};

#[test]
fn matches_the_composition_forward_and_backward() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
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
            let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            (y, grads.get(&gv).unwrap().clone(), grads.get(&uv).unwrap().clone())
        };
        let (y, dg, du) = run(&|g, u| swiglu(g, u));
        let (y0, dg0, du0) = run(&|g, u| swiglu_composed(g, u));
        assert_close(&y, &y0, tol);
        assert_close(&dg, &dg0, tol);
        assert_close(&du, &du0, tol);
    }
}
