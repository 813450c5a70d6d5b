//! The fused LoRA projection against its Candle composition: output and the gradients of the
//! input and both adapter matrices, with and without dropout, in f32 and f64; the frozen
//! weight gets no gradient.

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

mod common;
use common::{assert_close, random};
use recipe_kernels::{Dropout, Products, cpu_has_bf16_dot_products, frozen_linear, lora_linear, lora_linear_composed};

#[test]
fn matches_the_composition_forward_and_backward() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    for (n, k, out, r, dtype) in [(9, 6, 5, 2, DType::F32), (7, 4, 8, 3, DType::F64)] {
        for dropout in [None, Some(Dropout { p: 0.3, seed: 77 })] {
            let mut tensor = |shape: (usize, usize)| {
                Tensor::from_vec(random(&mut rng, shape.0 * shape.1, 1.5), shape, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let (x, w, a, b, dy) =
                (tensor((n, k)), tensor((out, k)), tensor((r, k)), tensor((out, r)), tensor((n, out)));
            let vars = || [&x, &w, &a, &b].map(|t| Var::from_tensor(t).unwrap());
            let ([xf, wf, af, bf], [xr, wr, ar, br]) = (vars(), vars());
            let fused = lora_linear(&xf, &wf, &af, &bf, 1.7, dropout, Products::Exact).unwrap();
            let plain = lora_linear_composed(&xr, &wr, &ar, &br, 1.7, dropout, Products::Exact).unwrap();
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
            assert_close(&fused, &plain, tol);
            let gf = (fused * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (plain * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            for (f, r) in [(&xf, &xr), (&af, &ar), (&bf, &br)] {
                assert_close(gf.get(f).unwrap(), gr.get(r).unwrap(), tol);
            }
            assert!(gf.get(&wf).is_none(), "the frozen weight gets no gradient");
        }
    }
}

#[test]
fn bf16_products_round_the_base_product_as_a_frozen_projection_does() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    let (n, k, out, r) = (40, 70, 36, 4);
    let mut tensor = |shape: (usize, usize)| {
        Tensor::from_vec(random(&mut rng, shape.0 * shape.1, 1.5), shape, &dev).unwrap().to_dtype(DType::F32).unwrap()
    };
    let (x, w, a, b, dy) = (tensor((n, k)), tensor((out, k)), tensor((r, k)), tensor((out, r)), tensor((n, out)));
    let dropout = Some(Dropout { p: 0.2, seed: 3 });
    let vars = || [&x, &a, &b].map(|t| Var::from_tensor(t).unwrap());
    let ([xf, af, bf], [xr, ar, br]) = (vars(), vars());
    let fused = lora_linear(&xf, &w, &af, &bf, 1.7, dropout, Products::Bf16).unwrap();
    let plain = lora_linear_composed(&xr, &w, &ar, &br, 1.7, dropout, Products::Bf16).unwrap();
    // Dot products in hardware may round a sum to the neighbouring bf16 value.
    let tol = if cpu_has_bf16_dot_products() { 1.0 / 128.0 } else { 1e-5 };
    assert_close(&fused, &plain, tol);
    let gf = (fused.clone() * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    let gr = (plain * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    for (f, r) in [(&xf, &xr), (&af, &ar), (&bf, &br)] {
        assert_close(gf.get(f).unwrap(), gr.get(r).unwrap(), tol);
    }
    // The base product is the frozen projection's, in bf16: it differs from f32's.
    let base = frozen_linear(&x, &w, Products::Bf16).unwrap();
    let exact = lora_linear(&x, &w, &a, &b, 1.7, dropout, Products::Exact).unwrap();
    let adapter = (&exact - x.matmul(&w.t().unwrap()).unwrap()).unwrap();
    assert_close(&fused, &(base + adapter).unwrap(), 1e-5);
    let off = (&fused - &exact).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(off > 1e-3, "bf16 products change the output ({off})");
}

#[test]
fn dropout_drops_about_p_and_rescales_the_rest() {
    let mask = Dropout { p: 0.25, seed: 5 }.mask(100_000);
    let dropped = mask.iter().filter(|m| **m == 0.0).count() as f64 / mask.len() as f64;
    assert!((dropped - 0.25).abs() < 0.01, "dropped {dropped}");
    assert!(mask.iter().all(|m| *m == 0.0 || (*m - 1.0 / 0.75).abs() < 1e-12));
    assert_ne!(mask, Dropout { p: 0.25, seed: 6 }.mask(100_000), "another seed, another mask");
}
