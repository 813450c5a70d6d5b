//! Reading a published checkpoint's weights into Hugging Face Llama names: a model folder
//! (one `model.safetensors` or the shards of `model.safetensors.index.json`), a single
//! `.safetensors` file, or a llama.cpp `.gguf` file, dequantized to f32 with the row
//! permutation llama.cpp applies to the query and key projections undone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Result, Tensor};
use recipe_spec::Model as Config;
use recipe_spec::checkpoint::CheckpointFormat;

/// Every tensor of the checkpoint at `path`, in f32 on the CPU, by Hugging Face name.
pub fn load_checkpoint(path: &Path, format: CheckpointFormat, config: &Config) -> Result<Vec<(String, Tensor)>> {
    let tensors = match format {
        CheckpointFormat::HfDir => {
            let mut out = Vec::new();
            for file in safetensors_files(path)? {
                out.extend(candle_core::safetensors::load(&file, &Device::Cpu)?);
            }
            out
        }
        CheckpointFormat::Safetensors => candle_core::safetensors::load(path, &Device::Cpu)?.into_iter().collect(),
        CheckpointFormat::Gguf => load_gguf(path, config)?,
    };
    tensors.into_iter().map(|(name, t)| Ok((name, t.to_dtype(DType::F32)?))).collect()
}

/// The weight files of a model folder: the shards its index names, or `model.safetensors`.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Ok(vec![dir.join("model.safetensors")]);
    }
    let text = std::fs::read_to_string(&index).map_err(candle_core::Error::wrap)?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(candle_core::Error::wrap)?;
    let map = json["weight_map"]
        .as_object()
        .ok_or_else(|| candle_core::Error::Msg(format!("{} has no weight_map", index.display())))?;
    let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

fn load_gguf(path: &Path, config: &Config) -> Result<Vec<(String, Tensor)>> {
    let mut file = std::fs::File::open(path).map_err(candle_core::Error::wrap)?;
    let content = gguf_file::Content::read(&mut file)?;
    let head_dim = config.head_dim() as usize;
    let mut out = Vec::new();
    for name in content.tensor_infos.keys() {
        let Some(hf_name) = hf_name(name) else { continue };
        let mut t = content.tensor(&mut file, name, &Device::Cpu)?.dequantize(&Device::Cpu)?;
        if hf_name.ends_with("q_proj.weight") {
            t = unpermute(&t, config.n_heads as usize, head_dim)?;
        } else if hf_name.ends_with("k_proj.weight") {
            t = unpermute(&t, config.n_kv_heads as usize, head_dim)?;
        }
        out.push((hf_name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The Hugging Face name of a llama.cpp tensor, or none for tensors the model does not use.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let part = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{part}"))
}

/// llama.cpp interleaves the two rotary halves of each head's rows; Hugging Face keeps them
/// as halves. `w` `[heads·head_dim, in]` → rows of each head reordered `(hd/2, 2) → (2, hd/2)`.
fn unpermute(w: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let (rows, input) = w.dims2()?;
    w.reshape((heads, head_dim / 2, 2, input))?.transpose(1, 2)?.contiguous()?.reshape((rows, input))
}
