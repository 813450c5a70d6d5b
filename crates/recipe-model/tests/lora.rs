//! LoRA, DoRA, VeRA and Tied-LoRA: only the adapters are parameters, backward computes no
//! gradient the size of any base weight, the adapters start as a no-op, merging them into the
//! weights gives the same outputs as running them beside the frozen weights, and the adapter
//! written for the `peft` library computes, by `peft`'s own formula, the same merged weights.
//! ReLoRA's restart leaves the model's function as it was.

use candle_core::{DType, Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use recipe_checkpoint::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use recipe_model::{KeySpans, Llama, masked_cross_entropy};
use recipe_spec::{Model, ModelSpec, Peft, PeftMethod};

fn config() -> Model {
    ModelSpec {
        vocab_size: Some(11),
        d_model: Some(8),
        n_layers: Some(2),
        n_heads: Some(2),
        n_kv_heads: Some(1),
        d_ff: Some(20),
        max_seq_len: Some(16),
        tie_embeddings: Some(false),
        init_std: Some(0.3),
        ..ModelSpec::default()
    }
    .resolve(None)
}

fn peft(targets: &[&str]) -> Peft {
    peft_with(PeftMethod::Lora, targets)
}

fn peft_with(method: PeftMethod, targets: &[&str]) -> Peft {
    Peft {
        method,
        rank: 2,
        alpha: 4.0,
        rslora: false,
        loraplus_lr_ratio: None,
        init: None,
        dropout: 0.0,
        targets: targets.iter().map(|t| t.to_string()).collect(),
        relora: None,
        from: None,
        adapter: None,
    }
}

const ALL: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// The base model's weights as variables, so that any path that gave them a gradient would show.
fn base(c: &Model) -> Vec<(String, Tensor)> {
    Llama::init(c, 3, &Device::Cpu).unwrap().trainable_tensors()
}

fn logits(m: &Llama) -> (Tensor, Tensor) {
    let dev = Device::Cpu;
    let (b, t) = (2, 5);
    let ids = Tensor::from_vec(vec![1u32, 4, 2, 7, 3, 9, 5, 5, 6, 0], (b, t), &dev).unwrap();
    let positions = Tensor::from_vec(vec![0u32, 1, 2, 0, 1, 0, 1, 2, 3, 4], b * t, &dev).unwrap();
    let docs = [0u32, 0, 0, 1, 1, 0, 0, 0, 0, 0];
    let attn = KeySpans::documents(&docs, b, t);
    let targets = Tensor::from_vec(vec![4u32, 2, 0, 3, 9, 5, 6, 0, 8, 10], b * t, &dev).unwrap();
    let z = m.forward(&ids, &positions, &attn).unwrap();
    let loss = masked_cross_entropy(&z, &targets, &Tensor::ones(b * t, DType::F32, &dev).unwrap()).unwrap().0;
    (z, loss)
}

/// Give every B matrix (VeRA: every λ_b) random values and move every other vector, as after
/// some training.
/// Moves the adapters (and any vectors) as training would, by seeded noise: Candle's own
/// random tensors come from one generator that tests running at the same time share.
fn train_a_little(m: &Llama) {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for (i, p) in m.params.iter().enumerate() {
        let n = p.var.elem_count();
        // Uniform with standard deviation 0.5.
        let values: Vec<f32> = (0..n).map(|_| (rng.next_u32() as f32 / u32::MAX as f32 - 0.5) * 1.732).collect();
        let noise = (Tensor::from_vec(values, p.var.shape(), &Device::Cpu).unwrap() * (1.0 + i as f64 / 10.0)).unwrap();
        if p.name.contains("lora_B") || p.name.contains("lambda_b") {
            p.var.set(&noise).unwrap();
        } else if p.var.rank() == 1 {
            p.var.set(&(p.var.as_tensor() + (noise * 0.1).unwrap()).unwrap()).unwrap();
        }
    }
}

fn diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn only_adapters_train_and_no_base_weight_gets_a_gradient() {
    // Per method: parameters for 7 projections in 2 layers, and what every name holds.
    let shared = 7 * 2; // Tied-LoRA's A and B per module
    for (method, count, marker) in [
        (PeftMethod::Lora, 2 * 7 * 2, ".lora_"),
        (PeftMethod::Dora, 3 * 7 * 2, ".lora_"),
        (PeftMethod::Vera, 2 * 7 * 2, ".vera_lambda_"),
        (PeftMethod::TiedLora, shared + 2 * 7 * 2, "tied_lora"),
    ] {
        only_adapters_train(method, count, marker);
    }
}

fn only_adapters_train(method: PeftMethod, count: usize, marker: &str) {
    let c = config();
    let m = Llama::with_lora(&c, base(&c), &peft_with(method, ALL), 1, &Device::Cpu).unwrap();
    assert_eq!(m.params.len(), count, "{method}");
    assert!(m.params.iter().all(|p| p.name.contains(marker)), "{method}");
    train_a_little(&m);
    let grads = logits(&m).1.backward().unwrap();
    for p in &m.params {
        let g = grads.get(p.var.as_tensor()).unwrap_or_else(|| panic!("{} has no gradient", p.name));
        assert!(g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "{method}: {}", p.name);
    }
    // No buffer in the gradient store has the shape of a base weight matrix: none was computed.
    // Under plain LoRA not even a norm's; DoRA's per-row scales share that shape by design.
    let base_shapes: Vec<Vec<usize>> =
        c.layout().into_iter().map(|(_, s, _)| s).filter(|s| s.len() == 2 || method == PeftMethod::Lora).collect();
    for id in grads.get_ids() {
        let dims = grads.get_id(*id).unwrap().dims().to_vec();
        assert!(!base_shapes.contains(&dims), "a gradient of shape {dims:?}, the shape of a base weight");
    }
}

#[test]
fn adapters_start_as_the_base_model_and_merge_exactly() {
    for method in [PeftMethod::Lora, PeftMethod::Dora, PeftMethod::Vera, PeftMethod::TiedLora] {
        start_and_merge(method);
    }
}

fn start_and_merge(method: PeftMethod) {
    let c = config();
    let plain = Llama::from_tensors(&c, base(&c), &Device::Cpu).unwrap();
    let targets = peft_with(method, &["q_proj", "v_proj", "down_proj"]);
    let lora = Llama::with_lora(&c, base(&c), &targets, 1, &Device::Cpu).unwrap();
    assert!(diff(&logits(&plain).0, &logits(&lora).0) < 1e-5, "{method}: at the start the adapters add nothing");

    train_a_little(&lora);
    let adapted = logits(&lora).0;
    assert!(diff(&adapted, &logits(&plain).0) > 1e-3, "the trained adapters change the outputs");
    let merged = Llama::from_tensors(&c, lora.weights().unwrap(), &Device::Cpu).unwrap();
    assert!(diff(&adapted, &logits(&merged).0) < 1e-5, "merged weights compute what the adapters do");
}

#[test]
fn the_adapter_is_written_peft_style_beside_the_merged_model() {
    let c = config();
    let lora = Llama::with_lora(&c, base(&c), &peft(&["q_proj", "v_proj"]), 1, &Device::Cpu).unwrap();
    train_a_little(&lora);
    let dir = tempfile::tempdir().unwrap();
    lora.save_pretrained(dir.path(), None, &[0], "base-model").unwrap();
    let adapter = candle_core::safetensors::load(dir.path().join(ADAPTER_WEIGHTS), &Device::Cpu).unwrap();
    assert_eq!(adapter.len(), 2 * 2 * 2);
    let a = &adapter["base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"];
    let b = &adapter["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"];
    assert_eq!((a.dims(), b.dims()), (&[2, 8][..], &[4, 2][..]));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(ADAPTER_CONFIG)).unwrap()).unwrap();
    assert_eq!((config["r"].as_u64(), config["lora_alpha"].as_f64()), (Some(2), Some(4.0)));
    assert_eq!(config["target_modules"], serde_json::json!(["q_proj", "v_proj"]));
    let merged = Llama::load_pretrained(&c, dir.path(), &Device::Cpu).unwrap();
    assert!(diff(&logits(&lora).0, &logits(&merged).0) < 1e-5);
}

/// The base weights with an adapter file's update added as the `peft` library computes it
/// (`get_delta_weight` of its LoRA and VeRA layers).
fn merged_by_peft_formula(c: &Model, dir: &std::path::Path) -> Vec<(String, Tensor)> {
    let adapter = candle_core::safetensors::load(dir.join(ADAPTER_WEIGHTS), &Device::Cpu).unwrap();
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(ADAPTER_CONFIG)).unwrap()).unwrap();
    let rows = |m: &Tensor, by: &Tensor| m.broadcast_mul(&by.unsqueeze(1).unwrap()).unwrap();
    base(c)
        .into_iter()
        .map(|(name, w)| {
            let stem = format!("base_model.model.{}", name.trim_end_matches(".weight"));
            let delta = match config["peft_type"].as_str().unwrap() {
                "LORA" => adapter.get(&format!("{stem}.lora_A.weight")).map(|a| {
                    let b = &adapter[&format!("{stem}.lora_B.weight")];
                    let r = config["r"].as_f64().unwrap();
                    let rslora = config["use_rslora"].as_bool().unwrap();
                    let scale = config["lora_alpha"].as_f64().unwrap() / if rslora { r.sqrt() } else { r };
                    (b.matmul(a).unwrap() * scale).unwrap()
                }),
                "VERA" => adapter.get(&format!("{stem}.vera_lambda_d")).map(|d| {
                    let (out, input) = w.dims2().unwrap();
                    let lambda_b = &adapter[&format!("{stem}.vera_lambda_b")];
                    let a = adapter["base_model.vera_A"].narrow(1, 0, input).unwrap();
                    let b = adapter["base_model.vera_B"].narrow(0, 0, out).unwrap();
                    rows(&b, lambda_b).matmul(&rows(&a, d)).unwrap()
                }),
                other => panic!("{other}"),
            };
            let w = match delta {
                Some(d) => (w + d).unwrap(),
                None => w,
            };
            (name, w)
        })
        .collect()
}

#[test]
fn vera_and_tied_lora_are_written_as_peft_adapters_that_merge_to_the_same_model() {
    let c = config();
    for (method, peft_type) in [(PeftMethod::Vera, "VERA"), (PeftMethod::TiedLora, "LORA")] {
        let adapted = Llama::with_lora(&c, base(&c), &peft_with(method, ALL), 1, &Device::Cpu).unwrap();
        train_a_little(&adapted);
        let dir = tempfile::tempdir().unwrap();
        adapted.save_pretrained(dir.path(), None, &[0], "base-model").unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(ADAPTER_CONFIG)).unwrap()).unwrap();
        assert_eq!(config["peft_type"], peft_type);
        let adapter = candle_core::safetensors::load(dir.path().join(ADAPTER_WEIGHTS), &Device::Cpu).unwrap();
        if method == PeftMethod::Vera {
            assert_eq!((config["save_projection"].as_bool(), config["d_initial"].as_f64()), (Some(true), Some(0.1)));
            // One shared pair, as large as the largest projection in each direction.
            assert_eq!(adapter["base_model.vera_A"].dims(), [2, 20]);
            assert_eq!(adapter["base_model.vera_B"].dims(), [20, 2]);
            assert_eq!(adapter["base_model.model.model.layers.1.mlp.down_proj.vera_lambda_b"].dims(), [8]);
            assert_eq!(adapter.len(), 2 + 2 * 7 * 2);
        } else {
            assert_eq!(adapter.len(), 2 * 7 * 2, "a LoRA pair per projection");
        }
        let by_peft = Llama::from_tensors(&c, merged_by_peft_formula(&c, dir.path()), &Device::Cpu).unwrap();
        assert!(diff(&logits(&adapted).0, &logits(&by_peft).0) < 1e-5, "{method}: peft's merge of the file");
        let exported = Llama::load_pretrained(&c, dir.path(), &Device::Cpu).unwrap();
        assert!(diff(&logits(&adapted).0, &logits(&exported).0) < 1e-5, "{method}: the merged export");
    }
}

/// rsLoRA scales by alpha / √r: the update is √r times LoRA's (with `B` the same), and the
/// adapter says so with `use_rslora`, which `peft`'s merge honours.
#[test]
fn an_rslora_adapter_scales_by_the_root_of_its_rank() {
    let c = config();
    let plain = Llama::from_tensors(&c, base(&c), &Device::Cpu).unwrap();
    let lora = Llama::with_lora(&c, base(&c), &peft(ALL), 1, &Device::Cpu).unwrap();
    let rslora = Llama::with_lora(&c, base(&c), &Peft { rslora: true, ..peft(ALL) }, 1, &Device::Cpu).unwrap();
    train_a_little(&lora);
    train_a_little(&rslora);
    let q = "model.layers.1.self_attn.q_proj.weight";
    let weight = |tensors: Vec<(String, Tensor)>| tensors.into_iter().find(|(n, _)| n == q).unwrap().1;
    let update = |m: &Llama| (weight(m.weights().unwrap()) - weight(base(&c))).unwrap();
    let ratio = (update(&rslora) - (update(&lora) * 2f64.sqrt()).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
    assert!(ratio.to_scalar::<f32>().unwrap() < 1e-5, "at rank 2 the update is √2 times LoRA's");
    let dir = tempfile::tempdir().unwrap();
    rslora.save_pretrained(dir.path(), None, &[0], "base-model").unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(ADAPTER_CONFIG)).unwrap()).unwrap();
    assert_eq!(config["use_rslora"], true);
    let by_peft = Llama::from_tensors(&c, merged_by_peft_formula(&c, dir.path()), &Device::Cpu).unwrap();
    let adapted = logits(&rslora).0;
    assert!(diff(&adapted, &logits(&plain).0) > 1e-3);
    assert!(diff(&adapted, &logits(&by_peft).0) < 1e-5, "peft's merge of the file");
}

/// PiSSA and OLoRA start as the base model (the base gives up what `B₀·A₀` takes), merge
/// exactly, and are written as the rank-2r LoRA `peft`'s conversion gives, which `peft`'s merge
/// applies over the original weights.
#[test]
fn adapters_started_from_the_weights_are_written_as_a_lora_of_twice_the_rank() {
    let c = config();
    let plain = Llama::from_tensors(&c, base(&c), &Device::Cpu).unwrap();
    for init in [recipe_spec::LoraInit::Pissa, recipe_spec::LoraInit::Olora] {
        for rslora in [false, true] {
            let peft = Peft { init: Some(init), rslora, ..peft(ALL) };
            let lora = Llama::with_lora(&c, base(&c), &peft, 1, &Device::Cpu).unwrap();
            assert!(diff(&logits(&plain).0, &logits(&lora).0) < 1e-5, "{init}: the base model at the start");
            train_a_little(&lora);
            let adapted = logits(&lora).0;
            assert!(diff(&adapted, &logits(&plain).0) > 1e-3);
            // f32 rounding of larger products than a zero-started B's: relative to the logits.
            let tolerance = 1e-4 * adapted.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
            let merged = Llama::from_tensors(&c, lora.weights().unwrap(), &Device::Cpu).unwrap();
            let off = diff(&adapted, &logits(&merged).0);
            assert!(off < tolerance, "{init}: the merge, {off} off, tolerance {tolerance}");
            let dir = tempfile::tempdir().unwrap();
            lora.save_pretrained(dir.path(), None, &[0], "base-model").unwrap();
            let config: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.path().join(ADAPTER_CONFIG)).unwrap()).unwrap();
            let alpha = if rslora { 4.0 * 2f64.sqrt() } else { 8.0 };
            assert_eq!((config["r"].as_u64(), config["lora_alpha"].as_f64()), (Some(4), Some(alpha)));
            let by_peft = Llama::from_tensors(&c, merged_by_peft_formula(&c, dir.path()), &Device::Cpu).unwrap();
            let off = diff(&adapted, &logits(&by_peft).0);
            assert!(off < tolerance, "{init}, rslora {rslora}: peft's merge over the original weights, {off} off");
        }
    }
}

/// `base_forward` leaves the adapters (and training's noise) out: the model they started
/// from, which a preference loss under PEFT takes as its reference; the next pass has them
/// again.
#[test]
fn the_base_forward_pass_is_the_model_without_its_adapters() {
    let c = config();
    let plain = Llama::from_tensors(&c, base(&c), &Device::Cpu).unwrap();
    for method in [PeftMethod::Lora, PeftMethod::Dora, PeftMethod::Vera, PeftMethod::TiedLora] {
        let mut adapted =
            Llama::with_lora(&c, base(&c), &Peft { dropout: 0.2, ..peft_with(method, ALL) }, 1, &Device::Cpu).unwrap();
        adapted.neftune_alpha = Some(5.0);
        train_a_little(&adapted);
        let dev = Device::Cpu;
        let ids = Tensor::from_vec(vec![1u32, 4, 2, 7, 3, 9, 5, 5, 6, 0], (2, 5), &dev).unwrap();
        let positions = Tensor::from_vec(vec![0u32, 1, 2, 0, 1, 0, 1, 2, 3, 4], 10, &dev).unwrap();
        let spans = KeySpans::documents(&[0u32, 0, 0, 1, 1, 0, 0, 0, 0, 0], 2, 5);
        let before = adapted.forward(&ids, &positions, &spans).unwrap();
        adapted.set_noise_seed(Some(3));
        let base = adapted.base_forward(&ids, &positions, &spans).unwrap();
        adapted.set_noise_seed(None);
        assert!(diff(&base, &plain.forward(&ids, &positions, &spans).unwrap()) < 1e-6, "{method}: the base model");
        assert!(diff(&before, &base) > 1e-3, "{method}: the adapters matter");
        assert_eq!(diff(&before, &adapted.forward(&ids, &positions, &spans).unwrap()), 0.0, "{method}: back again");
    }
}

/// LoRA+ puts `B` and the vectors (DoRA's magnitudes) at the ratio's multiple of the learning
/// rate, `A` at the stage's, as `peft`'s `create_loraplus_optimizer` groups them.
#[test]
fn loraplus_raises_the_learning_rate_of_b_and_the_vectors() {
    let c = config();
    let dora = Peft { loraplus_lr_ratio: Some(16.0), ..peft_with(PeftMethod::Dora, &["q_proj", "down_proj"]) };
    let m = Llama::with_lora(&c, base(&c), &dora, 1, &Device::Cpu).unwrap();
    assert_eq!(m.params.len(), 2 * 2 * 3);
    for p in &m.params {
        let expected = if p.name.contains("lora_A") { 1.0 } else { 16.0 };
        assert_eq!(p.lr_factor, expected, "{}", p.name);
    }
    let plain = Llama::with_lora(&c, base(&c), &peft(&["q_proj"]), 1, &Device::Cpu).unwrap();
    assert!(plain.params.iter().all(|p| p.lr_factor == 1.0));
}

#[test]
fn a_relora_restart_merges_the_update_and_keeps_the_function() {
    let c = config();
    let mut relora = peft_with(PeftMethod::Lora, ALL);
    relora.relora = Some(recipe_spec::ReLora { every: 10, warmup: 2, prune: 0.99 });
    let mut m = Llama::with_lora(&c, base(&c), &relora, 1, &Device::Cpu).unwrap();
    train_a_little(&m);
    let before = logits(&m).0;
    // A copy: a restart sets the variables in place.
    let a_before = m.trainable_tensors()[0].1.copy().unwrap();
    let reset = m.restart_adapters(1, 1).unwrap();
    assert_eq!(reset.len(), 2 * 7 * 2, "every A and B restarts");
    let d = diff(&before, &logits(&m).0);
    assert!(d < 1e-5, "the update moved into the base weights: {d}");
    for (name, t) in m.trainable_tensors() {
        if name.contains("lora_B") {
            assert_eq!(t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0, "{name}");
        }
    }
    assert!(diff(&a_before, &m.trainable_tensors()[0].1) > 0.0, "A is drawn afresh");
    // The merged base weights are what a checkpoint keeps, and give the model back.
    let bases: std::collections::HashMap<String, Tensor> = m.merged_bases().into_iter().collect();
    assert_eq!(bases.len(), 7 * 2);
    let mut fresh = Llama::with_lora(&c, base(&c), &relora, 1, &Device::Cpu).unwrap();
    for ((_, t), p) in m.trainable_tensors().iter().zip(&fresh.params) {
        p.var.set(t).unwrap();
    }
    assert!(diff(&before, &logits(&fresh).0) > 1e-3, "without the bases the update is lost");
    fresh.restore_bases(&bases).unwrap();
    assert!(diff(&before, &logits(&fresh).0) < 1e-5);
}
