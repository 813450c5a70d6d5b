//! The fused LoRA projection against its Candle composition: output and the gradients of the
//! input and both adapter matrices, with and without dropout, in f32 and f64; the frozen
//! weight gets no gradient.

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

mod common;
use common::{assert_close, random};
use recipe_kernels::{Dropout, lora_linear, lora_linear_composed};

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
            let fused = lora_linear(&xf, &wf, &af, &bf, 1.7, dropout).unwrap();
            let plain = lora_linear_composed(&xr, &wr, &ar, &br, 1.7, dropout).unwrap();
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
fn dropout_drops_about_p_and_rescales_the_rest() {
    let mask = Dropout { p: 0.25, seed: 5 }.mask(100_000);
    let dropped = mask.iter().filter(|m| **m == 0.0).count() as f64 / mask.len() as f64;
    assert!((dropped - 0.25).abs() < 0.01, "dropped {dropped}");
    assert!(mask.iter().all(|m| *m == 0.0 || (*m - 1.0 / 0.75).abs() < 1e-12));
    assert_ne!(mask, Dropout { p: 0.25, seed: 6 }.mask(100_000), "another seed, another mask");
}
