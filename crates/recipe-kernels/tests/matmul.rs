//! Candle's CPU matrix product as vendored (`vendor/candle-core/PATCHES.md`): large products are
//! split into blocks of the destination over Candle's barrier pool, each block one
//! single-threaded `gemm` call. Every element must be the product a plain triple loop gives,
//! whichever side is split, with ragged last blocks, strided (transposed) operands, batches and
//! broadcast batches; and the same product twice must be the same bits.

use candle_core::{DType, Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

mod common;
use common::{assert_close, random};

/// `a · b` over the last two dimensions in f64, batch by batch (`a` and `b` contiguous).
fn reference(a: &Tensor, b: &Tensor) -> Tensor {
    let (batch, m, k) = a.dims3().unwrap();
    let (_, _, n) = b.dims3().unwrap();
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let mut c = vec![0.0; batch * m * n];
    for s in 0..batch {
        for i in 0..m {
            for j in 0..n {
                c[(s * m + i) * n + j] = (0..k).map(|p| a[(s * m + i) * k + p] * b[(s * k + p) * n + j]).sum();
            }
        }
    }
    Tensor::from_vec(c, (batch, m, n), &Device::Cpu).unwrap()
}

fn tensor(rng: &mut ChaCha8Rng, shape: (usize, usize, usize)) -> Tensor {
    Tensor::from_vec(random(rng, shape.0 * shape.1 * shape.2, 1.0), shape, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

#[test]
fn split_products_equal_the_triple_loop() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // (batch, m, n, k): tall (rows split), wide (columns split), ragged edges, a batch as
    // large as the pool (batches split), and one under the threshold (not split at all).
    for (batch, m, n, k) in [(1, 301, 40, 97), (1, 24, 517, 130), (1, 129, 129, 64), (3, 70, 33, 300), (1, 9, 7, 5)] {
        let a = tensor(&mut rng, (batch, m, k));
        let b = tensor(&mut rng, (batch, k, n));
        let want = reference(&a, &b);
        assert_close(&a.matmul(&b).unwrap(), &want, 1e-5);
        // The same operands read through transposed strides.
        let at = a.transpose(1, 2).unwrap().contiguous().unwrap().transpose(1, 2).unwrap();
        let bt = b.transpose(1, 2).unwrap().contiguous().unwrap().transpose(1, 2).unwrap();
        assert!(!at.is_contiguous() && !bt.is_contiguous());
        assert_close(&at.matmul(&bt).unwrap(), &want, 1e-5);
        // Twice the same product is the same bits: resume depends on it.
        let once = a.matmul(&bt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let again = a.matmul(&bt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(once, again);
    }
}

#[test]
fn a_broadcast_right_operand_folds_the_batch_into_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (batch, m, n, k) = (4, 50, 90, 120);
    let a = tensor(&mut rng, (batch, m, k));
    let w = tensor(&mut rng, (1, k, n));
    let got = a.broadcast_matmul(&w).unwrap();
    let want = reference(&a, &w.broadcast_as((batch, k, n)).unwrap().contiguous().unwrap());
    assert_close(&got, &want, 1e-5);
}
