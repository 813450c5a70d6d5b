//! The fused rotary embedding against its plain Candle composition, forward and backward.

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

mod common;
use common::{assert_close, random};
use recipe_kernels::{rope, rope_composed};

#[test]
fn matches_the_composition_forward_and_backward() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (b, h, t, hd, dtype) in [(2, 3, 5, 8, DType::F32), (1, 2, 4, 6, DType::F64)] {
        let x = Tensor::from_vec(random(&mut rng, b * h * t * hd, 2.0), (b, h, t, hd), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let angles = random(&mut rng, b * t * hd / 2, 2.0);
        let cos =
            Tensor::from_vec(angles.iter().map(|a| a.cos()).collect::<Vec<_>>(), (b, 1, t, hd / 2), &dev).unwrap();
        let sin =
            Tensor::from_vec(angles.iter().map(|a| a.sin()).collect::<Vec<_>>(), (b, 1, t, hd / 2), &dev).unwrap();
        let (cos, sin) = (cos.to_dtype(dtype).unwrap(), sin.to_dtype(dtype).unwrap());
        let dy = Tensor::from_vec(random(&mut rng, b * h * t * hd, 2.0), (b, h, t, hd), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let (xa, xb) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&x).unwrap());
        let fused = rope(&xa, &cos, &sin).unwrap();
        let plain = rope_composed(&xb, &cos, &sin).unwrap();
        let tol = if dtype == DType::F32 { 1e-6 } else { 1e-12 };
        assert_close(&fused, &plain, tol);
        let ga = (fused * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (plain * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(ga.get(&xa).unwrap(), gb.get(&xb).unwrap(), tol);
    }
}

/// Attention's heads are a transposed view of a projection, `[B, T, H, hd]` seen as
/// `[B, H, T, hd]`: the kernel reads them through their strides, and a transposed gradient too.
#[test]
fn rotates_a_transposed_view_as_its_copy() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (b, h, t, hd) = (2, 3, 5, 8);
    let projection = Tensor::from_vec(random(&mut rng, b * t * h * hd, 2.0), (b, t, h * hd), &dev).unwrap();
    let angles = random(&mut rng, b * t * hd / 2, 2.0);
    let cos = Tensor::from_vec(angles.iter().map(|a| a.cos()).collect::<Vec<_>>(), (b, 1, t, hd / 2), &dev).unwrap();
    let sin = Tensor::from_vec(angles.iter().map(|a| a.sin()).collect::<Vec<_>>(), (b, 1, t, hd / 2), &dev).unwrap();
    let dy =
        Tensor::from_vec(random(&mut rng, b * t * h * hd, 2.0), (b, t, h, hd), &dev).unwrap().transpose(1, 2).unwrap();
    let (xa, xb) = (Var::from_tensor(&projection).unwrap(), Var::from_tensor(&projection).unwrap());
    let heads = |x: &Tensor| x.reshape((b, t, h, hd)).unwrap().transpose(1, 2).unwrap();
    let strided = rope(&heads(&xa), &cos, &sin).unwrap();
    let copied = rope(&heads(&xb).contiguous().unwrap(), &cos, &sin).unwrap();
    assert!(!heads(&xa).is_contiguous(), "the heads are a strided view");
    assert_close(&strided, &copied, 0.0);
    let ga = (strided * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (copied * &dy.contiguous().unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
    assert_close(ga.get(&xa).unwrap(), gb.get(&xb).unwrap(), 0.0);
}
