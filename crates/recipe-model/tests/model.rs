//! The model's numerics: every parameter gets a gradient, the gradients match finite
//! differences in f64 (Llama's, Qwen2's with its projection biases and a sliding window, Qwen3's
//! with its per-head norms and heads that are not d_model / n_heads wide, Gemma 3's with its
//! norms after each sublayer, GeGLU, scaled embeddings and a sliding and a global layer that
//! rotate differently, Gemma 2's with its capped scores and logits, OLMo 2's with its norms after
//! the sublayers and over whole projections, one turning half of each head),
//! the KV cache gives the same logits as a full forward pass, and a packed row with a document
//! mask computes each document as if it were alone.

use candle_core::{DType, Device, IndexOp, Tensor};
use recipe_model::{KeySpans, Llama, masked_cross_entropy};
use recipe_spec::{Model, ModelSpec};

fn tiny(tie: bool) -> Model {
    ModelSpec {
        vocab_size: Some(11),
        d_model: Some(8),
        n_layers: Some(2),
        n_heads: Some(2),
        n_kv_heads: Some(1),
        d_ff: Some(12),
        max_seq_len: Some(16),
        tie_embeddings: Some(tie),
        init_std: Some(0.3),
        ..ModelSpec::default()
    }
    .resolve(None)
}

fn model(config: &Model, dtype: DType) -> Llama {
    let dev = Device::Cpu;
    let init = Llama::init(config, 5, &dev).unwrap();
    let tensors = init.params.iter().map(|p| (p.name.clone(), p.var.as_tensor().clone())).collect();
    Llama::from_tensors_in(config, tensors, &dev, dtype).unwrap()
}

/// Loss on a packed batch of two rows, the first holding two documents.
fn loss(m: &Llama, dtype: DType) -> Tensor {
    let dev = Device::Cpu;
    let (b, t) = (2, 6);
    let ids = Tensor::from_vec(vec![1u32, 4, 2, 7, 3, 9, 5, 5, 6, 0, 8, 10], (b, t), &dev).unwrap();
    let docs = [0u32, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0];
    let positions = Tensor::from_vec(vec![0u32, 1, 2, 0, 1, 2, 0, 1, 2, 3, 4, 5], b * t, &dev).unwrap();
    let targets = Tensor::from_vec(vec![4u32, 2, 0, 3, 9, 1, 5, 6, 0, 8, 10, 2], b * t, &dev).unwrap();
    let mask = Tensor::from_vec(vec![1f64, 1., 0., 1., 1., 0., 1., 1., 1., 1., 1., 0.], b * t, &dev).unwrap();
    let attn = KeySpans::documents(&docs, b, t);
    let logits = m.forward(&ids, &positions, &attn).unwrap();
    masked_cross_entropy(&logits, &targets, &mask.to_dtype(dtype).unwrap()).unwrap().0
}

/// `tiny` with Qwen2's biases on the query, key and value projections, and a sliding window
/// of 2 (shorter than the loss's longest document).
fn tiny_qwen2(tie: bool) -> Model {
    Model { arch: "qwen2".into(), sliding_window: Some(2), ..tiny(tie) }
}

/// `tiny` with Qwen3's per-head norms, and heads of 6 where d_model / n_heads is 4.
fn tiny_qwen3(tie: bool) -> Model {
    Model { arch: "qwen3".into(), explicit_head_dim: Some(6), ..tiny(tie) }
}

/// `tiny` as Gemma 3: the first layer slides (window 2) and rotates with base 100, the second
/// attends globally; heads of 6; attention scaled by 1/√5.
fn tiny_gemma3(tie: bool) -> Model {
    Model {
        arch: "gemma3".into(),
        explicit_head_dim: Some(6),
        sliding_window: Some(2),
        full_attention_layers: Some(vec![1]),
        local_rope_theta: Some(100.0),
        query_pre_attn_scalar: Some(5),
        ..tiny(tie)
    }
}

/// `tiny` as Gemma 2: the first layer slides (window 2); scores capped at ±0.5 and logits at
/// ±1, low enough that both caps bend them.
fn tiny_gemma2(tie: bool) -> Model {
    Model {
        arch: "gemma2".into(),
        sliding_window: Some(2),
        full_attention_layers: Some(vec![1]),
        attn_logit_softcapping: Some(0.5),
        final_logit_softcapping: Some(1.0),
        ..tiny(tie)
    }
}

/// `tiny` turning half of each head (Phi-4-mini turns three quarters).
fn tiny_partial(tie: bool) -> Model {
    Model { rotary_dim: Some(2), ..tiny(tie) }
}

/// `tiny` as OLMo 2, its first layer sliding (window 2) as OLMo 3's do.
fn tiny_olmo2(tie: bool) -> Model {
    Model { arch: "olmo2".into(), sliding_window: Some(2), full_attention_layers: Some(vec![1]), ..tiny(tie) }
}

#[test]
fn every_parameter_receives_a_nonzero_gradient() {
    let configs = [
        (tiny(true), 9),
        (tiny(false), 9),
        (tiny_qwen2(true), 12),
        (tiny_qwen2(false), 12),
        (tiny_qwen3(false), 11),
        (tiny_gemma3(true), 13),
        (tiny_olmo2(false), 11),
        (tiny_gemma2(true), 11),
    ];
    for (config, per_layer) in configs {
        let tie = config.tie_embeddings;
        let m = model(&config, DType::F32);
        let grads = loss(&m, DType::F32).backward().unwrap();
        for p in &m.params {
            let g = grads.get(p.var.as_tensor()).unwrap_or_else(|| panic!("{} has no gradient", p.name));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0, "{} has a zero gradient", p.name);
        }
        assert_eq!(m.params.len(), 1 + 2 * per_layer + 1 + usize::from(!tie));
    }
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    for config in [
        tiny(false),
        tiny_qwen2(false),
        tiny_qwen3(false),
        tiny_gemma3(false),
        tiny_olmo2(false),
        tiny_gemma2(false),
        tiny_partial(false),
    ] {
        let checked = check_gradients(&model(&config, DType::F64));
        assert!(checked >= 60, "{}: {checked} coordinates", config.arch);
    }
}

/// Compare the gradient of a few coordinates of every parameter with central differences;
/// how many were compared.
fn check_gradients(m: &Llama) -> usize {
    let grads = loss(m, DType::F64).backward().unwrap();
    let eps = 1e-6;
    let mut checked = 0;
    for p in &m.params {
        let g = grads.get(p.var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let base = p.var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        // A few coordinates of every tensor, spread over it.
        for k in [0, base.len() / 3, base.len() - 1] {
            let probe = |delta: f64| {
                let mut w = base.clone();
                w[k] += delta;
                p.var.set(&Tensor::from_vec(w, p.var.shape(), &Device::Cpu).unwrap()).unwrap();
                let l = loss(m, DType::F64).to_scalar::<f64>().unwrap();
                p.var.set(&Tensor::from_vec(base.clone(), p.var.shape(), &Device::Cpu).unwrap()).unwrap();
                l
            };
            let numeric = (probe(eps) - probe(-eps)) / (2.0 * eps);
            let err = (numeric - g[k]).abs() / numeric.abs().max(g[k].abs()).max(1e-4);
            assert!(err < 1e-5, "{}[{k}]: analytic {} vs numeric {numeric}", p.name, g[k]);
            checked += 1;
        }
    }
    checked
}

#[test]
fn the_kv_cache_reproduces_the_full_forward_pass() {
    for config in [
        tiny(true),
        Model { sliding_window: Some(3), ..tiny(true) },
        tiny_gemma3(true),
        tiny_olmo2(true),
        tiny_gemma2(true),
        tiny_partial(true),
    ] {
        the_kv_cache_reproduces_the_full_forward_pass_of(&model(&config, DType::F32));
    }
}

fn the_kv_cache_reproduces_the_full_forward_pass_of(m: &Llama) {
    let dev = Device::Cpu;
    let ids = [3u32, 1, 4, 1, 5, 9, 2];
    let t = ids.len();
    let full = m
        .forward(
            &Tensor::from_slice(&ids, (1, t), &dev).unwrap(),
            &Tensor::from_vec((0..t as u32).collect::<Vec<_>>(), t, &dev).unwrap(),
            &KeySpans::documents(&vec![0; t], 1, t),
        )
        .unwrap();
    let mut cache = m.new_cache();
    let mut last = m.forward_cached(&ids[..4], &mut cache).unwrap();
    assert_close(&last.i(0).unwrap(), &full.i(3).unwrap());
    for (i, &id) in ids.iter().enumerate().skip(4) {
        last = m.forward_cached(&[id], &mut cache).unwrap();
        assert_close(&last.i(0).unwrap(), &full.i(i).unwrap());
    }
}

#[test]
fn a_packed_document_computes_as_if_it_were_alone() {
    let m = model(&tiny(true), DType::F32);
    let dev = Device::Cpu;
    // Row: document A (3 tokens) then document B (4 tokens), positions restarting.
    let packed = m
        .forward(
            &Tensor::from_slice(&[2u32, 7, 1, 5, 3, 3, 8], (1, 7), &dev).unwrap(),
            &Tensor::from_slice(&[0u32, 1, 2, 0, 1, 2, 3], 7, &dev).unwrap(),
            &KeySpans::documents(&[0, 0, 0, 1, 1, 1, 1], 1, 7),
        )
        .unwrap();
    let alone = m
        .forward(
            &Tensor::from_slice(&[5u32, 3, 3, 8], (1, 4), &dev).unwrap(),
            &Tensor::from_slice(&[0u32, 1, 2, 3], 4, &dev).unwrap(),
            &KeySpans::documents(&[0, 0, 0, 0], 1, 4),
        )
        .unwrap();
    for i in 0..4 {
        assert_close(&packed.i(3 + i).unwrap(), &alone.i(i).unwrap());
    }
}

fn assert_close(a: &Tensor, b: &Tensor) {
    let (a, b) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-4, "{a:?} vs {b:?}");
    }
}
