//! Checkpoints: model, optimizer moments, step and the data loader's state, written to a
//! temporary folder, fsynced, checksummed and renamed into place, so a crash leaves either the
//! previous checkpoint or the new one. Only the newest `keep` are kept. On resume a damaged
//! checkpoint (a missing file, a checksum that does not match) is reported and the previous
//! one is used.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use recipe_data::LoaderState;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io};
use crate::scaler::LossScaler;

/// What a checkpoint holds besides tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    pub loader: LoaderState,
    /// Optimizer updates applied, when not `step` (an f16 stage skips overflowing steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer_steps: Option<u64>,
    /// The loss scaler of an f16-mixed stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaler: Option<LossScaler>,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    /// File name → blake3 of its bytes.
    files: BTreeMap<String, String>,
}

pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: TrainState,
    pub model: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
}

pub fn step_dir(checkpoints: &Path, step: u64) -> PathBuf {
    checkpoints.join(format!("step-{step:06}"))
}

/// Write a checkpoint atomically and prune all but the newest `keep`.
pub fn save(
    checkpoints: &Path,
    state: &TrainState,
    model: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
    keep: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(checkpoints).map_err(io(checkpoints))?;
    let tmp = checkpoints.join(format!(".tmp-step-{:06}-{}", state.step, std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let save_tensors = |name: &str, tensors: &[(String, Tensor)]| -> Result<()> {
        let map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
        candle_core::safetensors::save(&map, tmp.join(name))?;
        Ok(())
    };
    save_tensors("model.safetensors", model)?;
    save_tensors("optimizer.safetensors", optimizer)?;
    let state_json = serde_json::to_vec_pretty(state).expect("plain data");
    std::fs::write(tmp.join("state.json"), state_json).map_err(io(&tmp))?;
    let mut files = BTreeMap::new();
    for name in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        let path = tmp.join(name);
        std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(io(&path))?;
        files.insert(name.to_string(), recipe_graph::hash_file(&path).map_err(io(&path))?);
    }
    let manifest = serde_json::to_vec_pretty(&Manifest { files }).expect("plain data");
    recipe_graph::write_atomic(&tmp.join("manifest.json"), &manifest).map_err(io(&tmp))?;
    let dest = step_dir(checkpoints, state.step);
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
    }
    std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
    recipe_graph::sync_dir(checkpoints).map_err(io(checkpoints))?;
    for old in steps(checkpoints).into_iter().rev().skip(keep) {
        let dir = step_dir(checkpoints, old);
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    Ok(dest)
}

/// Steps of the checkpoints present, ascending.
fn steps(checkpoints: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(checkpoints) else { return Vec::new() };
    let mut steps: Vec<u64> =
        entries.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("step-")?.parse().ok()).collect();
    steps.sort_unstable();
    steps
}

/// The newest checkpoint whose files are all present and match their checksums. Each
/// damaged one is reported through `warn` and skipped.
pub fn latest_valid(checkpoints: &Path, device: &Device, warn: &dyn Fn(String)) -> Result<Option<Checkpoint>> {
    for step in steps(checkpoints).into_iter().rev() {
        let dir = step_dir(checkpoints, step);
        match load(&dir, device) {
            Ok(c) => return Ok(Some(c)),
            Err(why) => warn(format!("checkpoint {} is damaged ({why}); trying the one before", dir.display())),
        }
    }
    Ok(None)
}

fn load(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let manifest_path = dir.join("manifest.json");
    let manifest: Manifest = serde_json::from_slice(&std::fs::read(&manifest_path).map_err(io(&manifest_path))?)
        .map_err(|e| Error::Run(format!("manifest unreadable: {e}")))?;
    for (name, expected) in &manifest.files {
        let path = dir.join(name);
        let found = recipe_graph::hash_file(&path).map_err(io(&path))?;
        if &found != expected {
            return Err(Error::Run(format!("{name} does not match its checksum")));
        }
    }
    let state_path = dir.join("state.json");
    let state: TrainState = serde_json::from_slice(&std::fs::read(&state_path).map_err(io(&state_path))?)
        .map_err(|e| Error::Run(format!("state.json unreadable: {e}")))?;
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        state,
        model: candle_core::safetensors::load(dir.join("model.safetensors"), device)?,
        optimizer: candle_core::safetensors::load(dir.join("optimizer.safetensors"), device)?,
    })
}
