//! The run directory and its lock file:
//!
//! ```text
//! runs/<recipe.name>/
//!   recipe.lock                 node -> key, state, finished-at, key material; the effective recipe
//!   <stage>/<key[..12]>/        stage.toml, metrics.jsonl, checkpoints/step-NNNNNN/, final/
//!   _tokenizer/<key[..12]>/     the trained tokenizer
//!   _tokens/<source>/<key[..12]>/   token shards of one source
//! ```
//!
//! Every file is written atomically: to a temporary name in the same folder, fsynced, renamed
//! over the old one, and the folder fsynced, so a crash leaves the old or the new file, never
//! a torn one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::graph::{Graph, Material, Node, NodeKind};

/// What the last run recorded, for `status` and for `diff X.toml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Lock {
    pub version: u32,
    /// The canonical effective recipe of the last run.
    pub recipe: Value,
    pub nodes: BTreeMap<String, LockEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockEntry {
    #[serde(flatten)]
    pub kind: NodeKind,
    pub key: String,
    pub state: RecordedState,
    /// RFC 3339, UTC, when the node finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub material: Material,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordedState {
    /// Started, not finished.
    Partial,
    Done,
}

pub const LOCK_VERSION: u32 = 1;

/// The run directory of one recipe.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    /// `runs_root/<recipe name>`.
    pub fn new(runs_root: &Path, recipe_name: &str) -> RunDir {
        RunDir { root: runs_root.join(recipe_name) }
    }

    pub fn lock_path(&self) -> PathBuf {
        self.root.join("recipe.lock")
    }

    /// The folder of a node's result for its current key.
    pub fn node_dir(&self, node: &Node) -> PathBuf {
        let base = match &node.kind {
            NodeKind::TrainTokenizer => self.root.join("_tokenizer"),
            NodeKind::Tokenize { source } => self.root.join("_tokens").join(source),
            NodeKind::Stage { stage } => self.root.join(stage),
        };
        base.join(node.short_key())
    }

    /// A node is done when its `final/` folder exists: it is only ever put in place by an
    /// atomic rename, so its presence means it is complete. A result from an earlier run with
    /// the same key counts, whatever the lock says.
    pub fn final_dir(&self, node: &Node) -> PathBuf {
        self.node_dir(node).join("final")
    }

    /// Write `stage.toml`: the key material this node's key was computed from, for people.
    pub fn write_stage_config(&self, node: &Node) -> std::io::Result<()> {
        let mut doc = toml::Table::new();
        doc.insert("key".into(), node.key.clone().into());
        let mut fields = toml::Table::new();
        for f in node.material.fields.values() {
            if let Ok(v) = toml::Value::try_from(&f.value) {
                fields.insert(f.path.clone(), v);
            }
        }
        doc.insert("fields".into(), fields.into());
        let inputs: toml::Table = node.material.inputs.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
        doc.insert("inputs".into(), inputs.into());
        let files: toml::Table = node.material.files.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
        doc.insert("files".into(), files.into());
        write_atomic(&self.node_dir(node).join("stage.toml"), doc.to_string().as_bytes())
    }

    /// A fresh, empty folder to build a node's result in; [`RunDir::publish`] moves it to
    /// `final/`. Leftovers of interrupted attempts are removed first.
    pub fn staging_dir(&self, node: &Node) -> std::io::Result<PathBuf> {
        let dir = self.node_dir(node);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".staging-")) {
                std::fs::remove_dir_all(&path)?;
            }
        }
        let staging = dir.join(format!(".staging-{}", std::process::id()));
        std::fs::create_dir(&staging)?;
        Ok(staging)
    }

    /// Atomically make a staged result the node's `final/`.
    pub fn publish(&self, node: &Node, staging: &Path) -> std::io::Result<()> {
        sync_dir(staging)?;
        std::fs::rename(staging, self.final_dir(node))?;
        sync_dir(&self.node_dir(node))
    }

    pub fn checkpoints_dir(&self, node: &Node) -> PathBuf {
        self.node_dir(node).join("checkpoints")
    }

    /// The steps of a node's checkpoints, ascending.
    pub fn checkpoint_steps(&self, node: &Node) -> Vec<u64> {
        checkpoint_steps(&self.checkpoints_dir(node))
    }

    /// The lock file, or `None` when the recipe has never run here.
    pub fn read_lock(&self) -> Result<Option<Lock>, String> {
        let path = self.lock_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| format!("{} is damaged ({e}); delete it to start the record afresh", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Record a node's state under its current key, with the current effective recipe.
    pub fn record(
        &self,
        recipe: &Value,
        node: &Node,
        state: RecordedState,
        finished_at: Option<String>,
    ) -> Result<(), String> {
        let mut lock = self.read_lock()?.unwrap_or_default();
        lock.version = LOCK_VERSION;
        lock.recipe = recipe.clone();
        lock.nodes.insert(
            node.name.clone(),
            LockEntry {
                kind: node.kind.clone(),
                key: node.key.clone(),
                state,
                finished_at,
                material: node.material.clone(),
            },
        );
        let text = serde_json::to_string_pretty(&lock).expect("plain data") + "\n";
        write_atomic(&self.lock_path(), text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", self.lock_path().display()))
    }

    /// The snapshot the lock recorded: the effective recipe and each node's key and material.
    pub fn recorded_graph(lock: &Lock) -> Graph {
        let nodes = lock
            .nodes
            .iter()
            .map(|(name, e)| Node {
                name: name.clone(),
                kind: e.kind.clone(),
                key: e.key.clone(),
                material: e.material.clone(),
                deps: e.material.inputs.keys().cloned().collect(),
            })
            .collect();
        Graph { nodes }
    }
}

/// The folder of the checkpoint of `step` in a node's `checkpoints/`.
pub fn checkpoint_dir(checkpoints: &Path, step: u64) -> PathBuf {
    checkpoints.join(format!("step-{step:06}"))
}

/// The steps of the checkpoints in `checkpoints/`, ascending: its `step-NNNNNN` folders (a
/// checkpoint is renamed into place whole, so every such folder is complete).
pub fn checkpoint_steps(checkpoints: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(checkpoints) else { return Vec::new() };
    let mut steps: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .collect();
    steps.sort_unstable();
    steps
}

/// Write a file so that a crash at any instant leaves either the old content or the new.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Make a rename inside `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("b.json")]);
    }
}
