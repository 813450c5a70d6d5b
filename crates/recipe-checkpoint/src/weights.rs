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
    tensors.into_iter().map(|(name, t)| Ok((name, t.to_dtype(DType::F32)?))).collect()
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
