//! `recipe runs`: the run directories under `--runs`, with their nodes' states and keys and the
//! disk they use; `recipe gc`: remove the results no current key of the given recipes refers
//! to (a dry run unless `--yes`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use recipe_graph::RunDir;
use serde_json::json;

use crate::{Failure, load};

pub fn list(runs: &Path, as_json: bool) -> Result<(), Failure> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(runs) {
        for entry in entries.flatten() {
            let run = RunDir { root: entry.path() };
            if let Some(lock) = load::lock(&run)? {
                found.push((entry.file_name().to_string_lossy().into_owned(), lock, disk_use(&run.root)));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    if as_json {
        let doc: Vec<_> = found
            .iter()
            .map(|(name, lock, bytes)| {
                let nodes: Vec<_> = lock
                    .nodes
                    .iter()
                    .map(|(n, e)| json!({ "name": n, "state": e.state, "key": e.key, "finished_at": e.finished_at }))
                    .collect();
                json!({ "name": name, "dir": runs.join(name).display().to_string(), "bytes": bytes, "nodes": nodes })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "runs": doc })).expect("plain data"));
        return Ok(());
    }
    if found.is_empty() {
        println!("no runs under {}", runs.display());
        return Ok(());
    }
    let mut out = String::new();
    for (name, lock, bytes) in &found {
        let _ = writeln!(out, "{name}  {}  {}", human_bytes(*bytes), runs.join(name).display());
        for (node, entry) in &lock.nodes {
            let state = serde_json::to_value(entry.state).expect("plain data");
            let _ = writeln!(out, "  {node:<24} {:<8} {}", state.as_str().unwrap_or(""), &entry.key[..12]);
        }
    }
    print!("{out}");
    Ok(())
}

/// Remove (with `yes`; else list) the results in the recipes' run directories that none of
/// their current keys refers to.
pub fn gc(recipes: &[PathBuf], sets: &[String], runs: &Path, yes: bool) -> Result<(), Failure> {
    let loaded = recipes.iter().map(|p| load::load(p, sets)).collect::<Result<Vec<_>, _>>()?;
    let graphs = loaded.iter().map(load::graph).collect::<Result<Vec<_>, _>>()?;
    let mut names: Vec<&str> = loaded.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    names.dedup();
    let (mut count, mut freed) = (0, 0);
    for name in names {
        let run = RunDir::new(runs, name);
        // Recipes that share a run directory keep each other's results.
        let keep: Vec<_> = loaded.iter().zip(&graphs).filter(|(r, _)| r.name == name).map(|(_, g)| g).collect();
        let writer = match yes {
            true => Some(run.hold().map_err(Failure::Run)?),
            false => None,
        };
        let unreferenced = run.unreferenced(&keep).map_err(|e| Failure::Run(format!("{}: {e}", run.root.display())))?;
        for dir in unreferenced {
            let bytes = disk_use(&dir);
            println!("{} {}  {}", if yes { "removed" } else { "would remove" }, dir.display(), human_bytes(bytes));
            if writer.is_some() {
                std::fs::remove_dir_all(&dir).map_err(|e| Failure::Run(format!("{}: {e}", dir.display())))?;
            }
            (count, freed) = (count + 1, freed + bytes);
        }
    }
    let verb = if yes { "removed" } else { "would free" };
    println!("{count} unreferenced results, {verb} {}", human_bytes(freed));
    if !yes && count > 0 {
        println!("run again with --yes to delete them");
    }
    Ok(())
}

/// Bytes of every file under `path`.
fn disk_use(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).map_or(0, |entries| entries.flatten().map(|e| disk_use(&e.path())).sum())
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / (1u64 << 10) as f64),
        n => format!("{n} B"),
    }
}
