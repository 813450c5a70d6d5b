//! One training step where the tensors live against the same step on the CPU: the loss, the
//! gradient norm and every updated weight agree within the precision's tolerance. Two packed
//! documents per row, GQA, gradient accumulation over two micro-batches; Llama, and the
//! Qwen2 (projection biases, here with a sliding window of 6), Qwen3 (per-head norms, heads
//! wider together than the model) and Gemma 3 (norms after the sublayers, GeGLU, a sliding
//! layer with its own rotary base beside a global one), Gemma 2 (capped scores and logits),
//! OLMo 2 (norms after the sublayers, over whole projections) and Granite (its four
//! multipliers) variants, and Llama under DPO's loss against a reference model (each row a
//! pair: its two documents the chosen and the rejected answer). On the CPU the test
//! checks the precisions against f32; on CUDA (a build with `--features cuda` and a GPU) each
//! precision against the CPU's; without a GPU it says it was skipped.

use candle_core::{DType, Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use recipe_data::Batch;
use recipe_model::{Dtypes, Llama};
use recipe_spec::{Model, ModelSpec, Optim, Peft, PeftMethod, Precision, Preference};
use recipe_train::{LossScaler, Objective, Optimizer, Reference, gradients, update};

/// Llama, Qwen2, Qwen3, Gemma 2, Gemma 3, OLMo 2 or Granite, heads of 32 (a dimension the CUDA
/// attention kernels are built for).
fn config(arch: &str) -> Model {
    let (qwen3, gemma3, granite) = (arch == "qwen3", arch == "gemma3", arch == "granite");
    ModelSpec {
        arch: Some(arch.into()),
        vocab_size: Some(97),
        d_model: Some(if qwen3 { 96 } else { 128 }),
        n_layers: Some(2),
        n_heads: Some(4),
        n_kv_heads: Some(2),
        head_dim: qwen3.then_some(32),
        d_ff: Some(256),
        max_seq_len: Some(16),
        tie_embeddings: Some(false),
        sliding_window: match arch {
            "qwen2" => Some(6),
            "gemma3" => Some(5),
            _ => None,
        },
        full_attention_layers: gemma3.then(|| vec![1]),
        local_rope_theta: gemma3.then_some(100.0),
        query_pre_attn_scalar: gemma3.then_some(24),
        attn_logit_softcapping: (arch == "gemma2").then_some(5.0),
        final_logit_softcapping: (arch == "gemma2").then_some(3.0),
        embedding_multiplier: granite.then_some(4.0),
        residual_multiplier: granite.then_some(0.5),
        attention_multiplier: granite.then_some(0.1),
        logits_scaling: granite.then_some(2.0),
        ..ModelSpec::default()
    }
    .resolve(None)
}

fn batch(seed: u64) -> Batch {
    let (rows, t) = (3, 16);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = rows * t;
    let mut ids = || (0..n).map(|_| rng.next_u32() % 97).collect::<Vec<_>>();
    Batch {
        rows,
        seq_len: t,
        input_ids: ids(),
        target_ids: ids(),
        loss_mask: (0..n).map(|i| u8::from(i % t != 9)).collect(),
        doc_ids: (0..n).map(|i| u32::from(i % t >= 10)).collect(),
        position_ids: (0..n).map(|i| (if i % t >= 10 { i % t - 10 } else { i % t }) as u32).collect(),
        source_ids: vec![0; n],
        desirable: Vec::new(),
    }
}

/// What one step gave: loss, gradient norm, each gradient (unscaled, f32, on the CPU), and the
/// mean size of the update AdamW made.
struct Step {
    loss: f64,
    norm: f64,
    grads: Vec<Tensor>,
    mean_update: f64,
}

/// DPO's loss at β 0.5.
fn dpo_preference() -> Preference {
    Preference { beta: 0.5, ..Preference::DEFAULT }
}

/// An architecture, and whether the step takes DPO's loss instead of the cross-entropy.
const CASES: [(&str, bool); 8] = [
    ("llama", false),
    ("qwen2", false),
    ("qwen3", false),
    ("gemma2", false),
    ("gemma3", false),
    ("olmo2", false),
    ("granite", false),
    ("llama", true),
];

fn one_step((arch, dpo): (&str, bool), precision: Precision, device: &Device) -> Step {
    let dtypes = Dtypes::on(precision, device);
    let model = Llama::init(&config(arch), 3, device).unwrap().in_precision(dtypes).unwrap();
    // The reference: another model, so that the policy's log-ratios differ from its own.
    let reference = Llama::init(&config(arch), 4, device).unwrap().trainable_tensors();
    let reference = Llama::frozen(&config(arch), reference, device).unwrap().in_precision(dtypes).unwrap();
    let preference = dpo_preference();
    let objective = Objective {
        preference: dpo.then_some((&preference, Some(Reference::Frozen(&reference)))),
        ..Objective::default()
    };
    let optim = Optim::adamw(1e-2);
    let mut optimizer = Optimizer::new(&optim);
    let mut scaler = (precision == Precision::F16Mixed).then(LossScaler::default);
    // A copy: the update writes the parameters in place.
    let on_cpu = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap().copy().unwrap();
    let before: Vec<Tensor> = model.params.iter().map(|p| on_cpu(p.var.as_tensor())).collect();
    let batches = [batch(1), batch(2)];
    // In f16, the steps the scaler skips while it backs off to a scale whose gradients are
    // finite (OLMo 2's norms after each sublayer multiply the gradient by 1/rms of outputs
    // that start small, so its first scales overflow), as training does.
    let (step, scale) = loop {
        let scale = scaler.as_ref().map_or(1.0, |s| s.scale);
        let step = gradients(&model, &batches, objective.units(&batches), device, &objective, None, scale).unwrap();
        let finite = step
            .grads
            .iter()
            .all(|g| g.sum_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap().is_finite());
        match scaler.as_mut() {
            Some(scaler) if !finite => {
                scaler.update(false);
            }
            _ => break (step, scale),
        }
    };
    let grads = step.grads.iter().map(|g| (on_cpu(g) / scale).unwrap()).collect();
    let norm = update(&model, &mut optimizer, &step.grads, 1e-2, scale, scaler.as_mut()).unwrap();
    let (mut moved, mut count) = (0.0, 0);
    for (p, b) in model.params.iter().zip(&before) {
        let diff = (on_cpu(p.var.as_tensor()) - b).unwrap().abs().unwrap();
        moved += diff.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        count += b.elem_count();
    }
    Step { loss: step.loss, norm, grads, mean_update: moved / count as f64 }
}

/// The same loss, norm and gradients within `tol` (gradients relative to each tensor's largest
/// element), and updates of the same size. (Weights are not compared element by element: an
/// AdamW first step moves each weight by about ±lr, the sign of its gradient, and a gradient
/// near zero may take either sign in another precision.)
fn assert_same_step(what: &str, got: Step, want: &Step, tol: f64) {
    assert!((got.loss - want.loss).abs() <= tol * want.loss, "{what}: loss {} vs {}", got.loss, want.loss);
    assert!((got.norm - want.norm).abs() <= 4.0 * tol * want.norm, "{what}: grad norm {} vs {}", got.norm, want.norm);
    for (i, (g, w)) in got.grads.iter().zip(&want.grads).enumerate() {
        let max = |t: &Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        let diff = max(&(g - w).unwrap());
        assert!(diff <= 4.0 * tol * max(w) + 1e-7, "{what}: gradient {i} differs by {diff} (largest {})", max(w));
    }
    let ratio = got.mean_update / want.mean_update;
    assert!((ratio - 1.0).abs() < 0.1, "{what}: mean update {} vs {}", got.mean_update, want.mean_update);
}

const PRECISIONS: [(Precision, f64); 4] =
    [(Precision::F32, 1e-4), (Precision::Bf16Mixed, 2e-2), (Precision::F16Mixed, 5e-3), (Precision::Bf16, 3e-2)];

#[test]
fn every_precision_steps_like_f32_on_the_cpu() {
    for case in CASES {
        let reference = one_step(case, Precision::F32, &Device::Cpu);
        for (precision, tol) in PRECISIONS {
            let got = one_step(case, precision, &Device::Cpu);
            assert_same_step(&format!("{case:?} in {precision} on the CPU"), got, &reference, tol);
        }
    }
}

#[test]
fn a_cuda_step_equals_the_cpu_step() {
    let Some(cuda) = candle_core::utils::cuda_is_available().then(|| Device::new_cuda(0).ok()).flatten() else {
        eprintln!("skipped: no CUDA device (build with --features cuda on a machine with a GPU)");
        return;
    };
    for case in CASES {
        for (precision, tol) in PRECISIONS {
            let want = one_step(case, precision, &Device::Cpu);
            assert_same_step(&format!("{case:?} in {precision} on CUDA"), one_step(case, precision, &cuda), &want, tol);
            eprintln!("{case:?} in {precision}: a CUDA step equals the CPU step");
        }
    }
}

/// Activation checkpointing runs the same arithmetic again: every architecture's gradients
/// (DPO's included) are bit for bit those of the plain backward pass in f32 and bf16-mixed,
/// and so are those of LoRA and DoRA with dropout and NEFTune's noise (drawn again alike) and
/// with a frozen embedding; VeRA's projections, shared by every layer, sum their layers'
/// gradients in another order, so within rounding. On CUDA too, when there is a GPU.
#[test]
fn activation_checkpointing_gives_the_plain_backward_passs_gradients() {
    let cuda = candle_core::utils::cuda_is_available().then(|| Device::new_cuda(0).ok()).flatten();
    let grads = |model: &Llama, objective: &Objective, seed: Option<u64>| -> Vec<Vec<f32>> {
        let batches = [batch(1), batch(2)];
        let device = model.params[0].var.device().clone();
        let step = gradients(model, &batches, objective.units(&batches), &device, objective, seed, 1.0).unwrap();
        let flat = |g: &Tensor| g.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        step.grads.iter().map(flat).collect()
    };
    let both = |model: &mut Llama, objective: &Objective, seed: Option<u64>| {
        model.activation_checkpointing = false;
        let plain = grads(model, objective, seed);
        model.activation_checkpointing = true;
        (plain, grads(model, objective, seed))
    };
    let preference = dpo_preference();
    for device in [Some(Device::Cpu), cuda].into_iter().flatten() {
        for (arch, dpo) in CASES {
            for precision in [Precision::F32, Precision::Bf16Mixed] {
                let dtypes = Dtypes::on(precision, &device);
                let mut model = Llama::init(&config(arch), 3, &device).unwrap().in_precision(dtypes).unwrap();
                let reference = Llama::init(&config(arch), 4, &device).unwrap().trainable_tensors();
                let reference = Llama::frozen(&config(arch), reference, &device).unwrap().in_precision(dtypes).unwrap();
                let objective = Objective {
                    preference: dpo.then_some((&preference, Some(Reference::Frozen(&reference)))),
                    ..Objective::default()
                };
                let (plain, checkpointed) = both(&mut model, &objective, None);
                assert!(plain == checkpointed, "{arch} (dpo {dpo}) in {precision} on {device:?}");
            }
        }
    }
    let c = config("llama");
    let base = Llama::init(&c, 3, &Device::Cpu).unwrap().trainable_tensors();
    for method in [PeftMethod::Lora, PeftMethod::Dora, PeftMethod::Vera] {
        let peft = Peft {
            method,
            rank: 4,
            alpha: 8.0,
            rslora: false,
            loraplus_lr_ratio: None,
            init: None,
            dropout: 0.1,
            targets: ["q_proj", "v_proj", "down_proj"].map(String::from).to_vec(),
            relora: None,
            from: None,
            adapter: None,
        };
        let mut model = Llama::with_lora(&c, base.clone(), &peft, 5, &Device::Cpu).unwrap();
        model.neftune_alpha = Some(5.0);
        // B starts at zero, so that A would get no gradient: start it elsewhere.
        for p in &model.params {
            p.var.set(&p.var.rand_like(-0.1, 0.1).unwrap()).unwrap();
        }
        let (plain, checkpointed) = both(&mut model, &Objective::default(), Some(7));
        match method {
            PeftMethod::Vera => {
                for (p, c) in plain.iter().zip(&checkpointed) {
                    let largest = p.iter().fold(0f32, |m, x| m.max(x.abs()));
                    assert!(p.iter().zip(c).all(|(a, b)| (a - b).abs() <= 1e-5 * largest), "{method}");
                }
            }
            _ => assert!(plain == checkpointed, "{method}"),
        }
        let dropped = grads(&model, &Objective::default(), Some(8));
        assert!(dropped != checkpointed, "{method}: another seed draws other dropout and noise");
    }
}
