//! Loading a checkpoint's weights by Hugging Face Llama name: a model folder (one
//! `model.safetensors` or the shards of `model.safetensors.index.json`), a single
//! `.safetensors` file, or a llama.cpp `.gguf` file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result, Tensor};
use recipe_spec::{CheckpointFormat, Model};

use crate::gguf;
use crate::hf::MODEL_WEIGHTS;

/// Every tensor of the checkpoint at `path`, in f32 on the CPU, by Hugging Face name. `config`
/// is the architecture the checkpoint holds (GGUF's query and key rows are reordered by head).
pub fn load_checkpoint(path: &Path, format: CheckpointFormat, config: &Model) -> Result<Vec<(String, Tensor)>> {
    let tensors = match format {
        CheckpointFormat::HfDir => {
            let mut out = Vec::new();
            for file in safetensors_files(path)? {
                out.extend(candle_core::safetensors::load(&file, &Device::Cpu)?);
            }
            out
        }
        CheckpointFormat::Safetensors => candle_core::safetensors::load(path, &Device::Cpu)?.into_iter().collect(),
        CheckpointFormat::Gguf => gguf::tensors(path, config)?,
    };
    let tensors = unfused(tensors, config)?;
    tensors
        .into_iter()
        .filter_map(|(name, t)| Some((text_model_name(name)?, t)))
        .map(|(name, t)| Ok((name, t.to_dtype(DType::F32)?)))
        .collect()
}

/// A multimodal checkpoint's language model (Gemma 3 4B to 27B) by its names as a text model's,
/// `language_model.model.*` (or `model.language_model.*`) as `model.*`; none for the vision
/// tower and its projector, which are not imported. Every other name is kept.
pub(crate) fn text_model_name(name: String) -> Option<String> {
    const VISION: [&str; 4] =
        ["vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector."];
    if VISION.iter().any(|prefix| name.starts_with(prefix)) {
        return None;
    }
    let renamed = [
        ("language_model.model.", "model."),
        ("model.language_model.", "model."),
        ("language_model.lm_head.", "lm_head."),
    ]
    .iter()
    .find_map(|(theirs, ours)| name.strip_prefix(theirs).map(|rest| format!("{ours}{rest}")));
    Some(renamed.unwrap_or(name))
}

/// Phi-3's fused projections split into Llama's: `qkv_proj` into the query, key and value
/// projections (rows by head counts), `gate_up_proj` into the gate's rows, then the up
/// projection's. Every other tensor is kept.
fn unfused(tensors: Vec<(String, Tensor)>, config: &Model) -> Result<Vec<(String, Tensor)>> {
    let hd = config.head_dim() as usize;
    let (q, kv) = (config.n_heads as usize * hd, config.n_kv_heads as usize * hd);
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if let Some(stem) = name.strip_suffix(".qkv_proj.weight") {
            if t.dim(0)? != q + 2 * kv {
                candle_core::bail!("{name} has {} rows, the heads need {}", t.dim(0)?, q + 2 * kv);
            }
            for (part, start, rows) in [("q_proj", 0, q), ("k_proj", q, kv), ("v_proj", q + kv, kv)] {
                out.push((format!("{stem}.{part}.weight"), t.narrow(0, start, rows)?));
            }
        } else if let Some(stem) = name.strip_suffix(".gate_up_proj.weight") {
            let ff = t.dim(0)? / 2;
            out.push((format!("{stem}.gate_proj.weight"), t.narrow(0, 0, ff)?));
            out.push((format!("{stem}.up_proj.weight"), t.narrow(0, ff, ff)?));
        } else {
            out.push((name, t));
        }
    }
    Ok(out)
}

/// Llama's projections fused as Phi-3 stores them, the inverse of [`unfused`]: each block's
/// query, key and value projections stacked into `qkv_proj`, its gate and up projections into
/// `gate_up_proj`, in that order. Every other tensor is kept, in order.
pub(crate) fn fused(tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    let parts = |stem: &str, names: &[&str], all: &[(String, Tensor)]| -> Result<Tensor> {
        let found: Option<Vec<&Tensor>> = names
            .iter()
            .map(|n| all.iter().find(|(name, _)| *name == format!("{stem}.{n}.weight")).map(|(_, t)| t))
            .collect();
        let found = found.ok_or_else(|| candle_core::Error::Msg(format!("{stem} lacks one of {names:?}")))?;
        Tensor::cat(&found, 0)
    };
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in &tensors {
        if let Some(stem) = name.strip_suffix(".q_proj.weight") {
            out.push((format!("{stem}.qkv_proj.weight"), parts(stem, &["q_proj", "k_proj", "v_proj"], &tensors)?));
        } else if let Some(stem) = name.strip_suffix(".gate_proj.weight") {
            out.push((format!("{stem}.gate_up_proj.weight"), parts(stem, &["gate_proj", "up_proj"], &tensors)?));
        } else if !name.ends_with(".k_proj.weight")
            && !name.ends_with(".v_proj.weight")
            && !name.ends_with(".up_proj.weight")
        {
            out.push((name.clone(), t.clone()));
        }
    }
    Ok(out)
}

/// The weight files of a model folder: the shards its index names, or `model.safetensors`.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Ok(vec![dir.join(MODEL_WEIGHTS)]);
    }
    let text = std::fs::read_to_string(&index).map_err(candle_core::Error::wrap)?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(candle_core::Error::wrap)?;
    let map = json["weight_map"]
        .as_object()
        .ok_or_else(|| candle_core::Error::Msg(format!("{} has no weight_map", index.display())))?;
    let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}
