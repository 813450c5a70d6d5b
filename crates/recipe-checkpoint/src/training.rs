//! Training checkpoints, `checkpoints/step-NNNNNN/`: the trainable tensors, the optimizer's,
//! and the trainer's state as JSON (step, data loader, loss scaler: whatever the caller's state
//! type holds), written to a temporary folder, fsynced, checksummed and renamed into place, so
//! a crash leaves either the previous checkpoint or the new one. Only the newest `keep` are
//! kept. On resume a damaged checkpoint (a missing file, a checksum that does not match) is
//! reported and the previous one is used.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use recipe_graph::{checkpoint_dir, checkpoint_steps, hash_file, sync_dir, write_atomic};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why a checkpoint could not be written or read: the file, and what went wrong with it.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error(e.to_string())
    }
}

type Result<T> = std::result::Result<T, Error>;

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error(format!("{}: {e}", path.display()))
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    /// File name → blake3 of its bytes.
    files: BTreeMap<String, String>,
}

/// A checkpoint read back, with the trainer's state of type `S`.
pub struct Checkpoint<S> {
    pub dir: PathBuf,
    pub state: S,
    pub model: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
}

/// Write the checkpoint of `step` atomically and prune all but the newest `keep`.
pub fn save<S: Serialize>(
    checkpoints: &Path,
    step: u64,
    state: &S,
    model: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
    keep: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(checkpoints).map_err(io(checkpoints))?;
    let tmp = checkpoints.join(format!(".tmp-step-{:06}-{}", step, std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    if let Err(e) = write_files(&tmp, state, model, optimizer) {
        // A failed write (a full disk, say) leaves the earlier checkpoints as they were and
        // gives back the space the new one took.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dest = checkpoint_dir(checkpoints, step);
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
    }
    std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
    sync_dir(checkpoints).map_err(io(checkpoints))?;
    for old in checkpoint_steps(checkpoints).into_iter().rev().skip(keep) {
        let dir = checkpoint_dir(checkpoints, old);
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    Ok(dest)
}

/// Write a checkpoint's files and their manifest into `dir`.
fn write_files<S: Serialize>(
    dir: &Path,
    state: &S,
    model: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
) -> Result<()> {
    for (name, tensors) in [("model.safetensors", model), ("optimizer.safetensors", optimizer)] {
        let map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
        let path = dir.join(name);
        candle_core::safetensors::save(&map, &path).map_err(|e| Error(format!("{}: {e}", path.display())))?;
    }
    let state_json = serde_json::to_vec_pretty(state).expect("plain data");
    std::fs::write(dir.join("state.json"), state_json).map_err(io(&dir.join("state.json")))?;
    let mut files = BTreeMap::new();
    for name in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        let path = dir.join(name);
        std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(io(&path))?;
        files.insert(name.to_string(), hash_file(&path).map_err(|e| Error(e.to_string()))?);
    }
    let manifest = serde_json::to_vec_pretty(&Manifest { files }).expect("plain data");
    write_atomic(&dir.join("manifest.json"), &manifest).map_err(io(&dir.join("manifest.json")))
}

/// The newest checkpoint whose files are all present and match their checksums. Each
/// damaged one is reported through `warn` and skipped.
pub fn latest_valid<S: DeserializeOwned>(
    checkpoints: &Path,
    device: &Device,
    warn: &dyn Fn(String),
) -> Result<Option<Checkpoint<S>>> {
    for step in checkpoint_steps(checkpoints).into_iter().rev() {
        let dir = checkpoint_dir(checkpoints, step);
        match load(&dir, device) {
            Ok(c) => return Ok(Some(c)),
            Err(why) => warn(format!("checkpoint {} is damaged ({why}); trying the one before", dir.display())),
        }
    }
    Ok(None)
}

fn load<S: DeserializeOwned>(dir: &Path, device: &Device) -> Result<Checkpoint<S>> {
    let manifest_path = dir.join("manifest.json");
    let manifest: Manifest = serde_json::from_slice(&std::fs::read(&manifest_path).map_err(io(&manifest_path))?)
        .map_err(|e| Error(format!("manifest unreadable: {e}")))?;
    for (name, expected) in &manifest.files {
        let path = dir.join(name);
        let found = hash_file(&path).map_err(|e| Error(e.to_string()))?;
        if &found != expected {
            return Err(Error(format!("{name} does not match its checksum")));
        }
    }
    let state_path = dir.join("state.json");
    let state: S = serde_json::from_slice(&std::fs::read(&state_path).map_err(io(&state_path))?)
        .map_err(|e| Error(format!("state.json unreadable: {e}")))?;
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        state,
        model: candle_core::safetensors::load(dir.join("model.safetensors"), device)?,
        optimizer: candle_core::safetensors::load(dir.join("optimizer.safetensors"), device)?,
    })
}
