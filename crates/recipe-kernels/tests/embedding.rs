//! The embedding op against Candle's `index_select`: the same rows forward, and in f32 the
//! table's gradient bit for bit (each row sums its positions in the same order), with every
//! token at most once, some many times, and some never.

use candle_core::{Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use recipe_kernels::{embedding, embedding_composed};

mod common;
use common::random;

#[test]
fn forward_and_gradient_equal_index_select_bit_for_bit() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (vocabulary, d, n) = (300, 40, 2000);
    let table = Tensor::from_vec(random(&mut rng, vocabulary * d, 1.0), (vocabulary, d), &Device::Cpu)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    // Token 7 at every fourth position; the rest from the first 200 (100 tokens never occur).
    let ids: Vec<u32> = (0..n).map(|i| if i % 4 == 0 { 7 } else { rng.next_u32() % 200 }).collect();
    let ids = Tensor::from_vec(ids, n, &Device::Cpu).unwrap();
    let dy = Tensor::from_vec(random(&mut rng, n * d, 1.0), (n, d), &Device::Cpu)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    let run = |f: &dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>| {
        let var = Var::from_tensor(&table).unwrap();
        let out = f(var.as_tensor(), &ids).unwrap();
        let grads = (&out * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        (
            out.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            grads.get(&var).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        )
    };
    let (out, grad) = run(&embedding);
    let (want_out, want_grad) = run(&embedding_composed);
    assert_eq!(out, want_out);
    assert_eq!(grad, want_grad);
    assert!(grad[200 * d..].iter().all(|&g| g == 0.0), "tokens that never occur get no gradient");
}

#[test]
fn ids_outside_the_table_are_an_error() {
    let table = Var::zeros((5, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[1u32, 5], &Device::Cpu).unwrap();
    assert!(embedding(table.as_tensor(), &ids).is_err());
    let ids = Tensor::new(&[1i64, 2], &Device::Cpu).unwrap();
    let error = embedding(table.as_tensor(), &ids).err().unwrap().to_string();
    assert!(error.contains("ids must be u32"), "{error}");
}
