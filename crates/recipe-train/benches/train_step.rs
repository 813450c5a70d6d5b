//! Training throughput on the two reference configurations of the trainer issue, random tokens,
//! one document per row: forward, forward + backward, and the whole optimizer step (gradients,
//! clipping, AdamW) in f32; and the whole step in bf16-mixed, f16-mixed and bf16. `cargo bench -p recipe-train --bench train_step`
//! (RAYON_NUM_THREADS=2 on the reference machine).

use candle_core::Device;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use recipe_data::Batch;
use recipe_model::{Dtypes, Llama};
use recipe_spec::{ModelSpec, Optim, Precision};
use recipe_train::{LossScaler, Objective, Optimizer, batch_loss, gradients, loss_tokens, update};

#[global_allocator]
static ALLOCATOR: recipe_kernels::Allocator = recipe_kernels::Allocator;

struct Config {
    name: &'static str,
    vocab: u32,
    d_model: u32,
    n_layers: u32,
    n_heads: u32,
    d_ff: u32,
    seq: usize,
    batch: usize,
}

const CONFIGS: [Config; 2] = [
    Config { name: "tiny", vocab: 512, d_model: 128, n_layers: 4, n_heads: 4, d_ff: 512, seq: 256, batch: 8 },
    Config { name: "small", vocab: 8192, d_model: 384, n_layers: 6, n_heads: 6, d_ff: 1536, seq: 512, batch: 4 },
];

fn random_batch(c: &Config) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let n = c.batch * c.seq;
    let mut ids = || (0..n).map(|_| rng.next_u32() % c.vocab).collect::<Vec<_>>();
    Batch {
        rows: c.batch,
        seq_len: c.seq,
        input_ids: ids(),
        target_ids: ids(),
        loss_mask: vec![1; n],
        doc_ids: vec![0; n],
        position_ids: (0..n).map(|i| (i % c.seq) as u32).collect(),
        source_ids: vec![0; n],
        desirable: Vec::new(),
    }
}

fn bench(cr: &mut Criterion) {
    recipe_kernels::retain_freed_memory();
    let dev = Device::Cpu;
    for c in &CONFIGS {
        let model_config = ModelSpec {
            vocab_size: Some(c.vocab),
            d_model: Some(c.d_model),
            n_layers: Some(c.n_layers),
            n_heads: Some(c.n_heads),
            d_ff: Some(c.d_ff),
            max_seq_len: Some(c.seq as u32),
            ..ModelSpec::default()
        }
        .resolve(None);
        let model = Llama::init(&model_config, 0, &dev).expect("init");
        let batch = random_batch(c);
        let optim = Optim::adamw(1e-3);
        let mut optimizer = Optimizer::new(&optim);
        let mut group = cr.benchmark_group(format!("{} ({} params)", c.name, model.trainable_param_count()));
        group.throughput(Throughput::Elements((c.batch * c.seq) as u64));
        group.sample_size(10);
        group.bench_function("forward", |b| {
            b.iter(|| batch_loss(&model, &batch, &dev, &Objective::default()).expect("forward"))
        });
        group.bench_function("forward+backward", |b| {
            b.iter(|| {
                batch_loss(&model, &batch, &dev, &Objective::default())
                    .expect("forward")
                    .mean
                    .backward()
                    .expect("backward")
            })
        });
        group.bench_function("step", |b| {
            b.iter(|| {
                let step = gradients(
                    &model,
                    std::slice::from_ref(&batch),
                    loss_tokens(std::slice::from_ref(&batch)),
                    &dev,
                    &Objective::default(),
                    None,
                    1.0,
                )
                .expect("gradients");
                update(&model, &mut optimizer, &step.grads, 1e-3, 1.0, None).expect("update")
            })
        });
        // The whole step in each other precision (f16-mixed scales its loss).
        for precision in [Precision::Bf16Mixed, Precision::F16Mixed, Precision::Bf16] {
            let model = Llama::init(&model_config, 0, &dev).and_then(|m| m.in_precision(Dtypes::on(precision, &dev)));
            let model = model.expect("init");
            let mut optimizer = Optimizer::new(&optim);
            let mut scaler = (precision == Precision::F16Mixed).then(LossScaler::default);
            group.bench_function(format!("step {precision}"), |b| {
                b.iter(|| {
                    let scale = scaler.as_ref().map_or(1.0, |s| s.scale);
                    let objective = Objective::default();
                    let step = gradients(
                        &model,
                        std::slice::from_ref(&batch),
                        loss_tokens(std::slice::from_ref(&batch)),
                        &dev,
                        &objective,
                        None,
                        scale,
                    )
                    .expect("gradients");
                    update(&model, &mut optimizer, &step.grads, 1e-3, scale, scaler.as_mut()).expect("update")
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
