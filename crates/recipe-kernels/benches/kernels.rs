//! Each fused kernel against the Candle composition it replaces, forward and backward, at the
//! attention shape of the "tiny" reference configuration (B 8, H 4, T 256).
//! `cargo bench -p recipe-kernels --bench kernels`

use candle_core::{Device, Tensor, Var};
use criterion::{Criterion, criterion_group, criterion_main};
use recipe_kernels::{masked_softmax, masked_softmax_reference};

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let (b, h, t) = (8, 4, 256);
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, t, t), &dev).unwrap()).unwrap();
    let mask: Vec<f32> = (0..b * t * t).map(|k| if k % t > (k / t) % t { f32::MIN / 2.0 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, (b, 1, t, t), &dev).unwrap();
    let dy = Tensor::randn(0f32, 1.0, (b, h, t, t), &dev).unwrap();
    let mut g = c.benchmark_group("masked softmax 8x4x256x256");
    g.sample_size(20);
    for (name, f) in [
        ("fused", masked_softmax as fn(&Tensor, &Tensor, f64) -> candle_core::Result<Tensor>),
        ("candle ops", masked_softmax_reference),
    ] {
        g.bench_function(format!("{name} forward"), |bch| bch.iter(|| f(&x, &mask, 0.17).unwrap()));
        g.bench_function(format!("{name} forward+backward"), |bch| {
            bch.iter(|| (f(&x, &mask, 0.17).unwrap() * &dy).unwrap().sum_all().unwrap().backward().unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
