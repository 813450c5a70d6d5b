//! Every checkpoint and tokenizer reader takes any bytes without a panic or a huge allocation:
//! random files and damaged copies of valid ones (a safetensors file, a GGUF file, a
//! `config.json`, a `tokenizer.json`) give their contents or a clear error.

use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;
use recipe_checkpoint::{Headers, load_checkpoint, read_tokenizer};
use recipe_spec::{CheckpointFormat, CheckpointReader, Model, ModelSpec, TokenizerFile};

fn tiny() -> Model {
    let spec = ModelSpec {
        vocab_size: Some(10),
        d_model: Some(8),
        n_layers: Some(1),
        n_heads: Some(2),
        d_ff: Some(16),
        max_seq_len: Some(16),
        ..ModelSpec::default()
    };
    spec.resolve(None)
}

fn tensors(model: &Model) -> Vec<(String, Tensor)> {
    model
        .layout()
        .into_iter()
        .map(|(name, shape, _)| (name, Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap()))
        .collect()
}

fn safetensors_seed() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let map: std::collections::HashMap<_, _> = tensors(&tiny()).into_iter().collect();
    candle_core::safetensors::save(&map, &path).unwrap();
    std::fs::read(path).unwrap()
}

/// A llama.cpp file of the tiny model: its metadata, a byte-level vocabulary, f32 tensors.
fn gguf_seed() -> Vec<u8> {
    let m = tiny();
    let tokens: Vec<gguf_file::Value> = ["<|endoftext|>", "a", "b", "c", "d", "e", "f", "g", "h", "ab"]
        .iter()
        .map(|t| gguf_file::Value::String(t.to_string()))
        .collect();
    let u32v = gguf_file::Value::U32;
    let metadata = [
        ("general.architecture", gguf_file::Value::String("llama".into())),
        ("llama.embedding_length", u32v(m.d_model)),
        ("llama.block_count", u32v(m.n_layers)),
        ("llama.attention.head_count", u32v(m.n_heads)),
        ("llama.feed_forward_length", u32v(m.d_ff)),
        ("llama.context_length", u32v(m.max_seq_len)),
        ("tokenizer.ggml.model", gguf_file::Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", gguf_file::Value::Array(tokens)),
        ("tokenizer.ggml.merges", gguf_file::Value::Array(vec![gguf_file::Value::String("a b".into())])),
    ];
    let gguf_name = |hf: &str| -> String {
        hf.replace("model.embed_tokens.weight", "token_embd.weight")
            .replace("model.norm.weight", "output_norm.weight")
            .replace("model.layers.", "blk.")
            .replace("input_layernorm", "attn_norm")
            .replace("self_attn.q_proj", "attn_q")
            .replace("self_attn.k_proj", "attn_k")
            .replace("self_attn.v_proj", "attn_v")
            .replace("self_attn.o_proj", "attn_output")
            .replace("post_attention_layernorm", "ffn_norm")
            .replace("mlp.gate_proj", "ffn_gate")
            .replace("mlp.up_proj", "ffn_up")
            .replace("mlp.down_proj", "ffn_down")
    };
    let qtensors: Vec<(String, QTensor)> =
        tensors(&m).into_iter().map(|(n, t)| (gguf_name(&n), QTensor::quantize(&t, GgmlDType::F32).unwrap())).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    let meta: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let qt: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut out, &meta, &qt).unwrap();
    out.into_inner()
}

const CONFIG: &str = r#"{"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
"num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16}"#;
const TOKENIZER: &str = r#"{"version": "1.0", "added_tokens": [{"id": 0, "content": "<|endoftext|>", "special": true,
"single_word": false, "lstrip": false, "rstrip": false, "normalized": false}], "model": {"type": "BPE",
"vocab": {"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3}, "merges": ["a b"]}}"#;

/// `seed` with some bytes overwritten and maybe cut short, or random bytes.
fn damaged(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let flips = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6);
    let mutated = (flips, any::<prop::sample::Index>(), any::<bool>()).prop_map(move |(flips, cut, do_cut)| {
        let mut bytes = seed.clone();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if do_cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        bytes
    });
    prop_oneof![4 => mutated, 1 => prop::collection::vec(any::<u8>(), 0..256)]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn safetensors_readers_never_panic(bytes in damaged(safetensors_seed())) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "m.safetensors", &bytes);
        let _ = Headers.inspect(&path);
        let _ = load_checkpoint(&path, CheckpointFormat::Safetensors, &tiny());
    }

    #[test]
    fn gguf_readers_never_panic(bytes in damaged(gguf_seed())) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "m.gguf", &bytes);
        let _ = Headers.inspect(&path);
        let _ = Headers.tokenizer_facts(&TokenizerFile::Gguf(path.clone()));
        let _ = read_tokenizer(&TokenizerFile::Gguf(path.clone()));
        let _ = load_checkpoint(&path, CheckpointFormat::Gguf, &tiny());
    }

    #[test]
    fn config_and_tokenizer_json_readers_never_panic(
        config in damaged(CONFIG.as_bytes().to_vec()),
        tokenizer in damaged(TOKENIZER.as_bytes().to_vec()),
    ) {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "config.json", &config);
        write(dir.path(), "model.safetensors", &safetensors_seed());
        let tokenizer = TokenizerFile::Json(write(dir.path(), "tokenizer.json", &tokenizer));
        let _ = Headers.inspect(dir.path());
        let _ = Headers.tokenizer_facts(&tokenizer);
        let _ = read_tokenizer(&tokenizer);
    }
}

#[test]
fn the_seeds_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = write(dir.path(), "m.gguf", &gguf_seed());
    let info = Headers.inspect(&gguf).unwrap();
    assert_eq!(info.arch.resolve(None).layout(), tiny().layout());
    assert_eq!(load_checkpoint(&gguf, CheckpointFormat::Gguf, &tiny()).unwrap().len(), tiny().layout().len());
    read_tokenizer(&TokenizerFile::Gguf(gguf)).unwrap();
    let st = write(dir.path(), "m.safetensors", &safetensors_seed());
    assert_eq!(load_checkpoint(&st, CheckpointFormat::Safetensors, &tiny()).unwrap().len(), tiny().layout().len());
    write(dir.path(), "config.json", CONFIG.as_bytes());
    Headers.inspect(dir.path()).unwrap();
    Headers.tokenizer_facts(&TokenizerFile::Json(write(dir.path(), "tokenizer.json", TOKENIZER.as_bytes()))).unwrap();
}

#[test]
fn a_gguf_that_lies_about_a_shape_is_refused_before_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = write(dir.path(), "m.gguf", &gguf_seed());
    let mut bigger = tiny();
    bigger.d_ff = 1 << 30;
    let err = load_checkpoint(&gguf, CheckpointFormat::Gguf, &bigger).unwrap_err().to_string();
    assert!(err.contains("the architecture wants"), "{err}");
}
