//! Each fused kernel against the Candle composition it replaces, forward and forward+backward,
//! at the shapes of the "tiny" reference configuration (B 8, H 4, T 256, head dim 32,
//! d_model 128, d_ff 512; attention causal over one document per row), the "small" one's
//! vocabulary (8192) for cross-entropy, and SmolLM2-135M's MLP width for the projections
//! (trained, frozen, bf16, LoRA).
//! `cargo bench -p recipe-kernels --bench kernels`

use candle_core::{Device, Result, Tensor, Var};
use criterion::{Criterion, criterion_group, criterion_main};
use recipe_kernels as k;

#[global_allocator]
static ALLOCATOR: recipe_kernels::Allocator = recipe_kernels::Allocator;

/// Bench `fused` and `plain` (each mapping the variable to an output), forward and backward.
fn pair(
    c: &mut Criterion,
    name: &str,
    x: &Var,
    fused: &dyn Fn(&Tensor) -> Result<Tensor>,
    plain: &dyn Fn(&Tensor) -> Result<Tensor>,
) {
    let mut g = c.benchmark_group(name);
    g.sample_size(20);
    for (label, f) in [("fused", fused), ("candle ops", plain)] {
        g.bench_function(format!("{label} forward"), |b| b.iter(|| f(x).unwrap()));
        g.bench_function(format!("{label} forward+backward"), |b| {
            b.iter(|| f(x).unwrap().sum_all().unwrap().backward().unwrap())
        });
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    recipe_kernels::retain_freed_memory();
    let dev = Device::Cpu;
    let var = |shape: &[usize]| Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &dev).unwrap()).unwrap();
    let (b, h, t, hd, d) = (8, 4, 256, 32, 128);

    let scores = var(&[b, h, t, t]);
    let mask: Vec<f32> = (0..b * t * t).map(|i| if i % t > (i / t) % t { f32::MIN / 2.0 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, (b, 1, t, t), &dev).unwrap();
    let dy = Tensor::randn(0f32, 1.0, (b, h, t, t), &dev).unwrap();
    pair(c, "masked softmax 8x4x256x256", &scores, &|x| k::masked_softmax(x, &mask, 0.17)? * &dy, &|x| {
        k::masked_softmax_composed(x, &mask, 0.17)? * &dy
    });

    let (q, k_, v_) = (var(&[b, h, t, hd]), var(&[b, h, t, hd]), var(&[b, h, t, hd]));
    let spans = k::KeySpans::documents(&vec![0; b * t], b, t);
    let causal = spans.additive_mask(&dev).unwrap();
    let dy = Tensor::randn(0f32, 1.0, (b, t, h, hd), &dev).unwrap();
    pair(
        c,
        "causal attention 8x4x256x32",
        &q,
        &|x| k::attention(x, &k_, &v_, &spans, k::Scores::scaled(0.17))? * &dy,
        &|x| {
            let scores = x.matmul(&k_.t()?)?;
            let probs = k::masked_softmax_composed(&scores, &causal, 0.17)?;
            probs.matmul(&v_)?.transpose(1, 2)? * &dy
        },
    );

    // Gemma 2's capped scores: fused, against the composition that keeps the T × T scores.
    let capped = k::Scores { scale: 0.17, cap: Some(1.0) };
    pair(c, "capped attention 8x4x256x32", &q, &|x| k::attention(x, &k_, &v_, &spans, capped)? * &dy, &|x| {
        k::attention_composed(x, &k_, &v_, &spans, capped)? * &dy
    });

    // Each output is multiplied by a random gradient, so that backward starts from a tensor as
    // it does in training (`sum_all`'s gradient is a broadcast, which a kernel lays out first).
    let cos = Tensor::randn(0f32, 1.0, (b, 1, t, hd / 2), &dev).unwrap();
    let sin = Tensor::randn(0f32, 1.0, (b, 1, t, hd / 2), &dev).unwrap();
    let dy = Tensor::randn(0f32, 1.0, (b, h, t, hd), &dev).unwrap();
    pair(c, "rope 8x4x256x32", &q, &|x| k::rope(x, &cos, &sin)? * &dy, &|x| k::rope_composed(x, &cos, &sin)? * &dy);

    let (gate, up) = (var(&[b * t, 4 * d]), var(&[b * t, 4 * d]));
    let dy = Tensor::randn(0f32, 1.0, (b * t, 4 * d), &dev).unwrap();
    for (name, act) in [("swiglu 2048x512", k::Activation::Silu), ("geglu 2048x512", k::Activation::GeluTanh)] {
        pair(c, name, &gate, &|g| k::glu(g, &up, act)? * &dy, &|g| k::glu_composed(g, &up, act)? * &dy);
    }

    let x = var(&[b * t, d]);
    let w = Tensor::randn(0f32, 1.0, d, &dev).unwrap();
    let dy = Tensor::randn(0f32, 1.0, (b * t, d), &dev).unwrap();
    pair(c, "rms norm 2048x128", &x, &|x| k::rms_norm(x, &w, 1e-5)? * &dy, &|x| {
        k::rms_norm_composed(x, &w, 1e-5)? * &dy
    });

    let n = 2048;
    let logits = var(&[n, 8192]);
    let targets = Tensor::from_vec((0..n as u32).map(|i| (i * 7919) % 8192).collect::<Vec<_>>(), n, &dev).unwrap();
    let ones = Tensor::ones(n, candle_core::DType::F32, &dev).unwrap();
    pair(c, "cross-entropy 2048x8192", &logits, &|x| k::cross_entropy_rows(x, &targets, &ones), &|x| {
        k::cross_entropy_rows_composed(x, &targets, &ones)
    });

    // SmolLM2-135M's MLP up projection on 4 × 128 tokens; the Candle side is a plain matmul
    // on a trainable weight, which is what its backward computes whether the weight trains
    // or not.
    let x = var(&[512, 576]);
    let w = var(&[1536, 576]);
    pair(c, "frozen projection 512x576 -> 1536", &x, &|x| k::frozen_linear(x, &w, k::Products::Exact), &|x| {
        x.matmul(&w.t()?)
    });

    let w_trained = var(&[1536, 576]);
    pair(c, "projection 512x576 -> 1536", &x, &|x| k::linear(x, &w_trained, k::Products::Exact), &|x| {
        x.matmul(&w_trained.t()?)
    });

    // bf16-mixed's projection (bf16 dot products where the CPU has them) against the same
    // numbers from Candle ops: operands and result rounded through bf16, multiplied in f32.
    let bf16 = |t: &Tensor| t.to_dtype(candle_core::DType::BF16)?.to_dtype(candle_core::DType::F32);
    pair(c, "bf16 projection 512x576 -> 1536", &x, &|x| k::linear(x, &w_trained, k::Products::Bf16), &|x| {
        bf16(&bf16(x)?.matmul(&bf16(&w_trained)?.t()?)?)
    });

    let (a, up) = (var(&[8, 576]), var(&[1536, 8]));
    let frozen = w.as_tensor().detach();
    let dropout = Some(k::Dropout { p: 0.05, seed: 1 });
    pair(
        c,
        "lora projection 512x576 -> 1536, rank 8",
        &x,
        &|x| k::lora_linear(x, &frozen, &a, &up, 2.0, dropout, k::Products::Exact),
        &|x| k::lora_linear_composed(x, &frozen, &a, &up, 2.0, dropout, k::Products::Exact),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
