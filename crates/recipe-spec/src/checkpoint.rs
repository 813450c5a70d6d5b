//! What a checkpoint on disk says about itself, read without loading its weights: the format,
//! the architecture, and the tokenizer it was trained with. Validation uses this to take a
//! stage's architecture from the checkpoint it imports and to refuse a recipe that contradicts
//! it or pairs it with another tokenizer; the model and data crates load the weights and build
//! the tokenizer from the same places.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use serde::Serialize;
use serde_json::Value;

use crate::model::ModelSpec;
use crate::recipe::CHATML_TOKENS;

/// How a checkpoint is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointFormat {
    /// A Hugging Face model folder: `config.json`, `model.safetensors` (or shards listed in
    /// `model.safetensors.index.json`), usually `tokenizer.json`.
    HfDir,
    /// One `.safetensors` file with Hugging Face Llama tensor names; a `config.json` beside it
    /// is read when present.
    Safetensors,
    /// A llama.cpp `.gguf` file: dequantized on import, tokenizer in its metadata.
    Gguf,
}

/// A checkpoint's self-description.
#[derive(Clone, Debug)]
pub struct CheckpointInfo {
    pub path: PathBuf,
    pub format: CheckpointFormat,
    /// The architecture fields the checkpoint fixes.
    pub arch: ModelSpec,
    /// Set when `arch` came from tensor shapes alone, so the head count is unknown: the
    /// key/value projection's width, which gives `n_kv_heads` once the recipe gives `n_heads`.
    pub kv_width_of_unknown_heads: Option<u32>,
    /// The tokenizer stored with the weights, when there is one.
    pub tokenizer: Option<TokenizerFacts>,
}

/// What validation needs to know about a tokenizer.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerFacts {
    /// One more than the largest id.
    pub vocab_size: u32,
    pub has_chatml: bool,
    /// blake3 over every (id, token) pair: equal exactly when two tokenizers map the same
    /// strings to the same ids, whatever file they were read from.
    pub fingerprint: String,
}

/// Where a tokenizer is read from: a `tokenizer.json`, or a `.gguf`'s metadata. A model folder
/// means its `tokenizer.json`.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenizerFile {
    Json(PathBuf),
    Gguf(PathBuf),
}

impl TokenizerFile {
    pub fn path(&self) -> &Path {
        match self {
            TokenizerFile::Json(p) | TokenizerFile::Gguf(p) => p,
        }
    }

    pub fn locate(path: &Path) -> TokenizerFile {
        if is_gguf(path) {
            TokenizerFile::Gguf(path.to_path_buf())
        } else if path.is_dir() {
            TokenizerFile::Json(path.join("tokenizer.json"))
        } else {
            TokenizerFile::Json(path.to_path_buf())
        }
    }
}

fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gguf")
}

/// Read a checkpoint's format, architecture and tokenizer.
pub fn inspect(path: &Path) -> Result<CheckpointInfo, String> {
    if !path.exists() {
        return Err("no such file or folder".into());
    }
    if is_gguf(path) {
        return inspect_gguf(path);
    }
    let (format, config) = if path.is_dir() {
        let config = path.join("config.json");
        if !config.is_file() {
            return Err("the folder has no config.json".into());
        }
        (CheckpointFormat::HfDir, Some(config))
    } else if path.extension().is_some_and(|e| e == "safetensors") {
        let beside = path.with_file_name("config.json");
        (CheckpointFormat::Safetensors, beside.is_file().then_some(beside))
    } else {
        return Err("expected a Hugging Face model folder, a .safetensors or a .gguf file".into());
    };
    let (arch, kv_width_of_unknown_heads) = match config {
        Some(config) => (read_hf_config(&config)?, None),
        None => {
            let (arch, kv_width) = arch_from_shapes(&safetensors_shapes(path)?)?;
            (arch, Some(kv_width))
        }
    };
    let tokenizer_json = match format {
        CheckpointFormat::HfDir => path.join("tokenizer.json"),
        _ => path.with_file_name("tokenizer.json"),
    };
    let tokenizer = match tokenizer_json.is_file() {
        true => Some(tokenizer_facts(&TokenizerFile::Json(tokenizer_json))?),
        false => None,
    };
    Ok(CheckpointInfo { path: path.to_path_buf(), format, arch, kv_width_of_unknown_heads, tokenizer })
}

/// The architecture in a Hugging Face `config.json`; anything this trainer cannot reproduce
/// exactly is an error rather than a silently different model.
fn read_hf_config(path: &Path) -> Result<ModelSpec, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let c: Value = serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let model_type = c["model_type"].as_str().unwrap_or("");
    if model_type != "llama" {
        return Err(format!("its config.json has model_type \"{model_type}\"; only \"llama\" can be imported"));
    }
    for (key, fine) in [
        ("rope_scaling", c["rope_scaling"].is_null()),
        ("attention_bias", !c["attention_bias"].as_bool().unwrap_or(false)),
        ("mlp_bias", !c["mlp_bias"].as_bool().unwrap_or(false)),
        ("hidden_act", c["hidden_act"].as_str().is_none_or(|a| a == "silu")),
    ] {
        if !fine {
            return Err(format!("its config.json sets `{key}` = {}, which this trainer does not implement", c[key]));
        }
    }
    let int = |key: &str| -> Result<u32, String> {
        c[key].as_u64().and_then(|v| u32::try_from(v).ok()).ok_or_else(|| format!("config.json lacks `{key}`"))
    };
    let (d_model, n_heads) = (int("hidden_size")?, int("num_attention_heads")?);
    if let Some(head_dim) = c["head_dim"].as_u64()
        && n_heads > 0
        && head_dim != (d_model / n_heads) as u64
    {
        return Err(format!("its head_dim ({head_dim}) is not hidden_size / num_attention_heads"));
    }
    Ok(ModelSpec {
        arch: Some("llama".into()),
        vocab_size: Some(int("vocab_size")?),
        d_model: Some(d_model),
        n_layers: Some(int("num_hidden_layers")?),
        n_heads: Some(n_heads),
        n_kv_heads: Some(int("num_key_value_heads").unwrap_or(n_heads)),
        d_ff: Some(int("intermediate_size")?),
        max_seq_len: Some(int("max_position_embeddings")?),
        tie_embeddings: Some(c["tie_word_embeddings"].as_bool().unwrap_or(false)),
        rope_theta: Some(c["rope_theta"].as_f64().unwrap_or(10000.0)),
        norm_eps: Some(c["rms_norm_eps"].as_f64().unwrap_or(1e-6)),
        init_std: None,
        from: None,
    })
}

/// Tensor names and shapes from a safetensors header, without reading the data.
fn safetensors_shapes(path: &Path) -> Result<HashMap<String, Vec<u64>>, String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| "not a safetensors file (too short)".to_string())?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err("not a safetensors file (header too large)".into());
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|_| "not a safetensors file (header cut short)".to_string())?;
    let header: HashMap<String, Value> =
        serde_json::from_slice(&header).map_err(|e| format!("not a safetensors file: {e}"))?;
    Ok(header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, v)| {
            let shape = v["shape"].as_array().map(|s| s.iter().filter_map(Value::as_u64).collect()).unwrap_or_default();
            (name, shape)
        })
        .collect())
}

/// What tensor shapes alone fix, and the key/value width; the head count stays with the recipe.
fn arch_from_shapes(shapes: &HashMap<String, Vec<u64>>) -> Result<(ModelSpec, u32), String> {
    let dims = |name: &str| shapes.get(name).ok_or_else(|| format!("it has no tensor `{name}`"));
    let embed = dims("model.embed_tokens.weight")?;
    let gate = dims("model.layers.0.mlp.gate_proj.weight")?;
    let kv = dims("model.layers.0.self_attn.k_proj.weight")?;
    let n_layers =
        (0..).take_while(|i| shapes.contains_key(&format!("model.layers.{i}.input_layernorm.weight"))).count();
    let narrow = |v: u64| u32::try_from(v).map_err(|_| "a dimension is too large".to_string());
    let spec = ModelSpec {
        arch: Some("llama".into()),
        vocab_size: Some(narrow(embed[0])?),
        d_model: Some(narrow(embed[1])?),
        n_layers: Some(n_layers as u32),
        d_ff: Some(narrow(gate[0])?),
        tie_embeddings: Some(!shapes.contains_key("lm_head.weight")),
        ..ModelSpec::default()
    };
    Ok((spec, narrow(kv[0])?))
}

pub fn read_gguf(path: &Path) -> Result<gguf_file::Content, String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    gguf_file::Content::read(&mut file).map_err(|e| format!("not a GGUF file: {e}"))
}

fn inspect_gguf(path: &Path) -> Result<CheckpointInfo, String> {
    let g = read_gguf(path)?;
    let arch = g.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if arch != "llama" {
        return Err(format!("its general.architecture is \"{arch}\"; only \"llama\" can be imported"));
    }
    let int = |key: &str| -> Result<u32, String> {
        g.metadata.get(key).and_then(|v| v.to_u32().ok()).ok_or_else(|| format!("its metadata lacks `{key}`"))
    };
    let float = |key: &str, default: f64| g.metadata.get(key).and_then(|v| v.to_f32().ok()).map_or(default, f64::from);
    let tokenizer = gguf_tokenizer_facts(&g)?;
    let n_heads = int("llama.attention.head_count")?;
    let spec = ModelSpec {
        arch: Some("llama".into()),
        vocab_size: Some(int("llama.vocab_size").unwrap_or(tokenizer.vocab_size)),
        d_model: Some(int("llama.embedding_length")?),
        n_layers: Some(int("llama.block_count")?),
        n_heads: Some(n_heads),
        n_kv_heads: Some(int("llama.attention.head_count_kv").unwrap_or(n_heads)),
        d_ff: Some(int("llama.feed_forward_length")?),
        max_seq_len: Some(int("llama.context_length")?),
        tie_embeddings: Some(!g.tensor_infos.contains_key("output.weight")),
        rope_theta: Some(float("llama.rope.freq_base", 10000.0)),
        // Stored as f32; the nearest f64 with few digits is what the model was trained with.
        norm_eps: Some(round_to_f32_precision(float("llama.attention.layer_norm_rms_epsilon", 1e-5))),
        init_std: None,
        from: None,
    };
    Ok(CheckpointInfo {
        path: path.to_path_buf(),
        format: CheckpointFormat::Gguf,
        arch: spec,
        kv_width_of_unknown_heads: None,
        tokenizer: Some(tokenizer),
    })
}

fn round_to_f32_precision(x: f64) -> f64 {
    format!("{:.7e}", x as f32).parse().unwrap_or(x)
}

/// The vocabulary of a GGUF tokenizer: tokens by id, their llama.cpp types (3 = control), and
/// the BPE merges.
pub struct GgufVocab {
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
    /// `tokenizer.ggml.model`: only `gpt2` (byte-level BPE) is rebuilt.
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer's name.
    pub pre: String,
}

pub fn gguf_vocab(g: &gguf_file::Content) -> Result<GgufVocab, String> {
    let list = |key: &str| -> Result<&Vec<gguf_file::Value>, String> {
        g.metadata.get(key).and_then(|v| v.to_vec().ok()).ok_or_else(|| format!("its metadata lacks `{key}`"))
    };
    let strings = |key: &str| -> Result<Vec<String>, String> {
        list(key)?.iter().map(|v| v.to_string().cloned().map_err(|_| format!("`{key}` holds a non-string"))).collect()
    };
    let text = |key: &str| g.metadata.get(key).and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    Ok(GgufVocab {
        tokens: strings("tokenizer.ggml.tokens")?,
        types: match g.metadata.get("tokenizer.ggml.token_type") {
            Some(_) => list("tokenizer.ggml.token_type")?.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            None => Vec::new(),
        },
        merges: strings("tokenizer.ggml.merges").unwrap_or_default(),
        model: text("tokenizer.ggml.model"),
        pre: text("tokenizer.ggml.pre"),
    })
}

fn gguf_tokenizer_facts(g: &gguf_file::Content) -> Result<TokenizerFacts, String> {
    let vocab = gguf_vocab(g)?;
    let by_id: Vec<(u64, &str)> = vocab.tokens.iter().enumerate().map(|(i, t)| (i as u64, t.as_str())).collect();
    Ok(facts_of(by_id))
}

/// Read what validation needs from a tokenizer file.
pub fn tokenizer_facts(file: &TokenizerFile) -> Result<TokenizerFacts, String> {
    let path = match file {
        TokenizerFile::Gguf(path) => return gguf_tokenizer_facts(&read_gguf(path)?),
        TokenizerFile::Json(path) => path,
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    let vocab = json.pointer("/model/vocab").ok_or("no `model.vocab` in it")?;
    let mut by_id: Vec<(u64, &str)> = match vocab {
        Value::Object(map) => map.iter().filter_map(|(t, id)| Some((id.as_u64()?, t.as_str()))).collect(),
        // Unigram: a list of [token, score] pairs.
        Value::Array(items) => {
            items.iter().enumerate().filter_map(|(i, item)| Some((i as u64, item.get(0)?.as_str()?))).collect()
        }
        _ => return Err("`model.vocab` is neither a map nor a list".into()),
    };
    for t in json["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(content)) = (t["id"].as_u64(), t["content"].as_str()) {
            by_id.push((id, content));
        }
    }
    if by_id.is_empty() {
        return Err("its vocabulary is empty".into());
    }
    if by_id.iter().any(|(id, _)| *id >= u32::MAX as u64) {
        return Err("its vocabulary is too large".into());
    }
    Ok(facts_of(by_id))
}

fn facts_of(mut by_id: Vec<(u64, &str)>) -> TokenizerFacts {
    by_id.sort();
    by_id.dedup();
    let has_chatml = CHATML_TOKENS.iter().all(|c| by_id.iter().any(|(_, t)| t == c));
    let mut hasher = blake3::Hasher::new();
    for (id, token) in &by_id {
        hasher.update(&id.to_le_bytes());
        hasher.update(&(token.len() as u64).to_le_bytes());
        hasher.update(token.as_bytes());
    }
    TokenizerFacts {
        vocab_size: by_id.last().map_or(0, |(id, _)| *id as u32 + 1),
        has_chatml,
        fingerprint: hasher.finalize().to_hex().to_string(),
    }
}
