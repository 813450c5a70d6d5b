//! What a checkpoint or tokenizer file says about itself, read without loading any weights:
//! the answers validation asks for through [`recipe_spec::CheckpointReader`].

use std::collections::HashMap;
use std::path::Path;

use recipe_spec::{
    AdapterInfo, CheckpointFormat, CheckpointInfo, CheckpointReader, ModelSpec, TokenizerFacts, TokenizerFile, is_gguf,
};
use serde_json::Value;

use crate::gguf;
use crate::hf::{ADAPTER_WEIGHTS, read_adapter_config, read_config, unprefixed};
use crate::tokenizer::{gguf_facts, tokenizer_facts};

/// Reads checkpoint headers and tokenizer files from disk.
pub struct Headers;

impl CheckpointReader for Headers {
    fn inspect(&self, path: &Path) -> Result<CheckpointInfo, String> {
        inspect(path)
    }

    fn tokenizer_facts(&self, file: &TokenizerFile) -> Result<TokenizerFacts, String> {
        tokenizer_facts(file)
    }

    fn adapter(&self, path: &Path) -> Result<AdapterInfo, String> {
        if !path.is_dir() {
            return Err("no such folder".into());
        }
        let mut info = read_adapter_config(path)?;
        let weights = path.join(ADAPTER_WEIGHTS);
        if !weights.is_file() {
            return Err(format!("the folder has no {ADAPTER_WEIGHTS}"));
        }
        info.shapes = safetensors_shapes(&weights)?
            .into_iter()
            .filter_map(|(name, shape)| Some((unprefixed(&name)?, shape)))
            .collect();
        Ok(info)
    }
}

/// Read a checkpoint's format, architecture and tokenizer.
fn inspect(path: &Path) -> Result<CheckpointInfo, String> {
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
        Some(config) => (read_config(&config)?, None),
        None => arch_from_shapes(&safetensors_shapes(path)?)?,
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

fn inspect_gguf(path: &Path) -> Result<CheckpointInfo, String> {
    let g = gguf::read(path)?;
    let tokenizer = gguf_facts(&g)?;
    Ok(CheckpointInfo {
        path: path.to_path_buf(),
        format: CheckpointFormat::Gguf,
        arch: gguf::architecture(&g, gguf::rope_divisors(&g, path)?, tokenizer.vocab_size)?,
        kv_width_of_unknown_heads: None,
        tokenizer: Some(tokenizer),
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

/// What tensor shapes alone fix, and the key/value width when the head count stays with the
/// recipe (Qwen3's per-head norms give the head size, and with it the counts). OLMo 2 is told by
/// its blocks' having no input norm; Gemma's four norms per block are refused, since only its
/// config.json says how they scale.
fn arch_from_shapes(shapes: &HashMap<String, Vec<u64>>) -> Result<(ModelSpec, Option<u32>), String> {
    // A matrix: its shape has two dimensions (a damaged header may say anything).
    let dims = |name: &str| match shapes.get(name) {
        Some(shape) if shape.len() == 2 => Ok(shape),
        Some(shape) => Err(format!("its tensor `{name}` has shape {shape:?}, not a matrix's")),
        None => Err(format!("it has no tensor `{name}`")),
    };
    let embed = dims("model.embed_tokens.weight")?;
    let gate = dims("model.layers.0.mlp.gate_proj.weight")?;
    let q = dims("model.layers.0.self_attn.q_proj.weight")?;
    let kv = dims("model.layers.0.self_attn.k_proj.weight")?;
    let has = |layer: usize, norm: &str| shapes.contains_key(&format!("model.layers.{layer}.{norm}.weight"));
    let n_layers = (0..).take_while(|i| has(*i, "input_layernorm") || has(*i, "post_attention_layernorm")).count();
    if has(0, "pre_feedforward_layernorm") {
        return Err(
            "its blocks have four norms, as Gemma's: put its config.json beside it to say which model it is".into()
        );
    }
    let narrow = |v: u64| u32::try_from(v).map_err(|_| "a dimension is too large".to_string());
    let qkv_bias = shapes.contains_key("model.layers.0.self_attn.q_proj.bias");
    let olmo2 = !has(0, "input_layernorm") && has(0, "post_feedforward_layernorm");
    // OLMo 2's query norm spans the whole projection, so it says nothing of the head size.
    let head_dim =
        shapes.get("model.layers.0.self_attn.q_norm.weight").and_then(|s| s.first().copied()).filter(|_| !olmo2);
    let arch = match (head_dim, qkv_bias) {
        _ if olmo2 => "olmo2",
        (Some(_), _) => "qwen3",
        (None, true) => "qwen2",
        (None, false) => "llama",
    };
    if head_dim.is_none() && q[0] != embed[1] {
        return Err(format!(
            "its query projection is {} wide, not d_model ({}): put its config.json beside it to give the head size",
            q[0], embed[1]
        ));
    }
    let heads = |width: u64| head_dim.filter(|hd| *hd > 0).map(|hd| narrow(width / hd)).transpose();
    let spec = ModelSpec {
        arch: Some(arch.into()),
        n_heads: heads(q[0])?,
        n_kv_heads: heads(kv[0])?,
        head_dim: head_dim.map(narrow).transpose()?,
        vocab_size: Some(narrow(embed[0])?),
        d_model: Some(narrow(embed[1])?),
        n_layers: Some(n_layers as u32),
        d_ff: Some(narrow(gate[0])?),
        tie_embeddings: Some(!shapes.contains_key("lm_head.weight")),
        ..ModelSpec::default()
    };
    let kv_width_of_unknown_heads = if head_dim.is_some() { None } else { Some(narrow(kv[0])?) };
    Ok((spec, kv_width_of_unknown_heads))
}
