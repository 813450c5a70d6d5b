//! LoRA and DoRA: only the adapters are parameters, backward computes no gradient the size of
//! any base weight, the adapters start as a no-op, and merging them into the weights gives the
//! same outputs as running them beside the frozen weights.

use candle_core::{DType, Device, Tensor};
use recipe_checkpoint::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use recipe_model::{Llama, document_mask, masked_cross_entropy};
use recipe_spec::{Model, Peft, PeftMethod};

fn config() -> Model {
    Model {
        arch: "llama".into(),
        vocab_size: 11,
        d_model: 8,
        n_layers: 2,
        n_heads: 2,
        n_kv_heads: 1,
        d_ff: 20,
        max_seq_len: 16,
        tie_embeddings: false,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        init_std: 0.3,
        from: None,
        layers: None,
        import: None,
    }
}

fn peft(targets: &[&str]) -> Peft {
    peft_with(PeftMethod::Lora, targets)
}

fn peft_with(method: PeftMethod, targets: &[&str]) -> Peft {
    Peft { method, rank: 2, alpha: 4.0, dropout: 0.0, targets: targets.iter().map(|t| t.to_string()).collect() }
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
    let attn = document_mask(&docs, b, t, &dev).unwrap();
    let targets = Tensor::from_vec(vec![4u32, 2, 0, 3, 9, 5, 6, 0, 8, 10], b * t, &dev).unwrap();
    let z = m.forward(&ids, &positions, &attn).unwrap();
    let loss = masked_cross_entropy(&z, &targets, &Tensor::ones(b * t, DType::F32, &dev).unwrap()).unwrap().0;
    (z, loss)
}

/// Give every B matrix random values and move every magnitude, as after some training.
fn train_a_little(m: &Llama) {
    for (i, p) in m.params.iter().enumerate() {
        let noise = (Tensor::randn(0f32, 0.5, p.var.shape(), &Device::Cpu).unwrap() * (1.0 + i as f64 / 10.0)).unwrap();
        if p.name.contains("lora_B") {
            p.var.set(&noise).unwrap();
        } else if p.name.contains("magnitude") {
            p.var.set(&(p.var.as_tensor() + (noise * 0.1).unwrap()).unwrap()).unwrap();
        }
    }
}

#[test]
fn only_adapters_train_and_no_base_weight_gets_a_gradient() {
    for (method, per_projection) in [(PeftMethod::Lora, 2), (PeftMethod::Dora, 3)] {
        only_adapters_train(method, per_projection);
    }
}

fn only_adapters_train(method: PeftMethod, per_projection: usize) {
    let c = config();
    let m = Llama::with_lora(&c, base(&c), &peft_with(method, ALL), 1, &Device::Cpu).unwrap();
    assert_eq!(m.params.len(), per_projection * 7 * 2, "adapters for 7 projections in 2 layers");
    assert!(m.params.iter().all(|p| p.name.contains(".lora_")));
    train_a_little(&m);
    let grads = logits(&m).1.backward().unwrap();
    for p in &m.params {
        let g = grads.get(p.var.as_tensor()).unwrap_or_else(|| panic!("{} has no gradient", p.name));
        assert!(g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "{}", p.name);
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
    for method in [PeftMethod::Lora, PeftMethod::Dora] {
        start_and_merge(method);
    }
}

fn start_and_merge(method: PeftMethod) {
    let c = config();
    let plain = Llama::from_tensors(&c, base(&c), &Device::Cpu).unwrap();
    let targets = peft_with(method, &["q_proj", "v_proj", "down_proj"]);
    let lora = Llama::with_lora(&c, base(&c), &targets, 1, &Device::Cpu).unwrap();
    let diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
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
    lora.save_pretrained(dir.path(), &[0], "base-model").unwrap();
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
    let diff = (logits(&lora).0 - logits(&merged).0).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
}
