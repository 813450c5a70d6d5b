//! The run directory and its lock file:
//!
//! ```text
//! runs/<recipe.name>/
//!   recipe.lock                 node -> key, state, finished-at, key material; the effective recipe
//!   <stage>/<key[..12]>/        stage.toml, metrics.jsonl, checkpoints/step-NNNNNN/, final/
//!   _tokenizer/<key[..12]>/     the trained tokenizer
//!   _tokens/<source>/<key[..12]>/   token shards of one source
//!   _tensorboard/<stage>/       TensorBoard event files, when `train --tensorboard` asks
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

/// The folder of TensorBoard event files in a run directory, one subfolder per stage.
pub const TENSORBOARD_DIR: &str = "_tensorboard";

/// The run directory of one recipe.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub root: PathBuf,
}

/// The sole right to write a run directory, held from [`RunDir::hold`] until dropped. It is an
/// advisory lock on `.writer`, which the operating system releases when the process ends,
/// however it ends, so a killed run never leaves the directory locked.
#[derive(Debug)]
pub struct Writer {
    _file: std::fs::File,
}

/// What marks a file or folder as the leftover of a writer that died mid-write: the temporary
/// names of [`write_atomic`], of checkpoints being written and of results being staged.
fn is_leftover(name: &str) -> bool {
    name.starts_with(".staging-") || name.starts_with(".tmp-") || (name.starts_with('.') && name.contains(".tmp-"))
}

impl RunDir {
    /// `runs_root/<recipe name>`.
    pub fn new(runs_root: &Path, recipe_name: &str) -> RunDir {
        RunDir { root: runs_root.join(recipe_name) }
    }

    /// Take the sole right to write this run directory, or say which process holds it.
    pub fn hold(&self) -> Result<Writer, String> {
        let path = self.root.join(".writer");
        let fail = |e: std::io::Error| format!("cannot lock {}: {e}", path.display());
        std::fs::create_dir_all(&self.root).map_err(fail)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(fail)?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0).map_err(fail)?;
                writeln!(file, "{}", std::process::id()).map_err(fail)?;
                Ok(Writer { _file: file })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = match holder.trim() {
                    "" => "another process".to_string(),
                    pid => format!("process {pid}"),
                };
                Err(format!(
                    "{} is in use: {holder} is running `recipe train` or `recipe prepare` on it; wait for it to \
                     finish, or stop it (Ctrl-C checkpoints) and run again",
                    self.root.display()
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(fail(e)),
        }
    }

    /// Remove what writers that died mid-write left behind (temporary files, checkpoints and
    /// results being written). Only the holder of the [`Writer`] may call it: nothing else is
    /// writing then.
    pub fn sweep(&self, _writer: &Writer) -> std::io::Result<()> {
        fn walk(dir: &Path) -> std::io::Result<()> {
            let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
            for entry in entries {
                let entry = entry?;
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                let is_dir = entry.file_type()?.is_dir();
                match (is_leftover(&name), is_dir) {
                    (true, true) => std::fs::remove_dir_all(&path)?,
                    (true, false) => std::fs::remove_file(&path)?,
                    // A finished result holds no leftovers, and may be large.
                    (false, true) if name != "final" => walk(&path)?,
                    _ => {}
                }
            }
            Ok(())
        }
        walk(&self.root)
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
    /// `final/`. (Leftovers of attempts that died are removed by [`RunDir::sweep`].)
    pub fn staging_dir(&self, node: &Node) -> std::io::Result<PathBuf> {
        let staging = self.node_dir(node).join(format!(".staging-{}", std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        std::fs::create_dir_all(&staging)?;
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

    /// The result folders (`<stage>/<key>`, `_tokenizer/<key>`, `_tokens/<source>/<key>`) that
    /// no node of `graphs` refers to: earlier keys, and stages or sources since removed.
    pub fn unreferenced(&self, graphs: &[&Graph]) -> std::io::Result<Vec<PathBuf>> {
        let current: Vec<PathBuf> = graphs.iter().flat_map(|g| g.nodes.iter().map(|n| self.node_dir(n))).collect();
        let mut found = Vec::new();
        if !self.root.is_dir() {
            return Ok(found);
        }
        for top in subfolders(&self.root)? {
            let holders = match top.file_name().and_then(|n| n.to_str()) {
                Some("_tokens") => subfolders(&top)?,
                Some(TENSORBOARD_DIR) => continue,
                _ => vec![top],
            };
            for holder in holders {
                found.extend(subfolders(&holder)?.into_iter().filter(|key| !current.contains(key)));
            }
        }
        Ok(found)
    }

    /// The folders of every key this node has had here (its current one among them, once it
    /// ran), sorted by name; none when it never ran.
    pub fn key_dirs(&self, node: &Node) -> std::io::Result<Vec<PathBuf>> {
        let holder = self.node_dir(node).parent().expect("a key folder has a parent").to_path_buf();
        match subfolders(&holder) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            other => other,
        }
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

/// The folders in `path` (not those whose names start with a dot: staging and locks), sorted.
fn subfolders(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() && !entry.file_name().to_string_lossy().starts_with('.') {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
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

    #[test]
    fn one_writer_at_a_time_and_the_hold_ends_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path(), "r");
        let writer = run.hold().unwrap();
        let refused = run.hold().unwrap_err();
        assert!(refused.contains(&format!("process {}", std::process::id())), "{refused}");
        drop(writer);
        run.hold().unwrap();
    }

    #[test]
    fn sweep_removes_what_dead_writers_left_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path(), "r");
        let node = run.root.join("pretrain/abc");
        for d in ["checkpoints/step-000004", "checkpoints/.tmp-step-000008-77", ".staging-77", "final"] {
            std::fs::create_dir_all(node.join(d)).unwrap();
        }
        for f in ["metrics.jsonl", ".metrics.jsonl.tmp-77", "final/.model.tmp-1", "../../.recipe.lock.tmp-9"] {
            std::fs::write(node.join(f), "x").unwrap();
        }
        let writer = run.hold().unwrap();
        run.sweep(&writer).unwrap();
        let mut left: Vec<String> = Vec::new();
        fn list(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(base).unwrap().display().to_string());
                if p.is_dir() {
                    list(&p, base, out);
                }
            }
        }
        list(&run.root, &run.root, &mut left);
        left.sort();
        let want = [
            ".writer",
            "pretrain",
            "pretrain/abc",
            "pretrain/abc/checkpoints",
            "pretrain/abc/checkpoints/step-000004",
            "pretrain/abc/final",
            "pretrain/abc/final/.model.tmp-1",
            "pretrain/abc/metrics.jsonl",
        ];
        assert_eq!(left, want);
    }
}
