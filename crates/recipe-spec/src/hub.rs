//! Hugging Face hub ids as checkpoint paths. A model downloaded with `huggingface-cli download`
//! or `from_pretrained` lives in the hub's cache as `models--ORG--NAME/snapshots/COMMIT/`; a
//! recipe may name it by its id (`from = "Qwen/Qwen3-0.6B"`). Nothing is downloaded: only what
//! the cache holds is found.

use std::path::{Path, PathBuf};

use crate::diag::Diagnostic;

/// Where a checkpoint path written in a recipe points: relative to `base_dir` when that
/// exists; else, when `written` is a hub id (`ORG/NAME`) that the Hugging Face cache holds,
/// the snapshot its `main` ref names; else the relative path, whose absence the caller reports.
pub fn locate(base_dir: &Path, written: &str) -> PathBuf {
    locate_in(base_dir, written, hub_cache().as_deref())
}

/// [`locate`] with the cache folder given.
pub fn locate_in(base_dir: &Path, written: &str, cache: Option<&Path>) -> PathBuf {
    let relative = base_dir.join(written);
    if relative.exists() {
        return relative;
    }
    cache.and_then(|cache| snapshot(cache, written)).unwrap_or(relative)
}

/// The hub's cache folder, as `huggingface_hub` finds it: `HF_HUB_CACHE`, else `HF_HOME/hub`,
/// else `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
fn hub_cache() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|home| home.join("hub")))
        .or_else(|| var("XDG_CACHE_HOME").map(|cache| cache.join("huggingface/hub")))
        .or_else(|| var("HOME").map(|home| home.join(".cache/huggingface/hub")))
}

/// Whether `written` has the shape of a hub id, `ORG/NAME`.
pub fn is_id(written: &str) -> bool {
    let part = |s: &str| {
        !s.is_empty() && !s.starts_with('.') && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    written.split_once('/').is_some_and(|(org, name)| part(org) && part(name))
}

/// `d` about `written`, resolved to `path`, with a hint where a hub id names nothing: where it
/// was looked for, and how to put it there.
pub(crate) fn explain_missing(d: Diagnostic, written: &str, path: &Path) -> Diagnostic {
    if !is_id(written) || path.exists() {
        return d;
    }
    let cache = hub_cache().map_or("the Hugging Face cache".into(), |c| c.display().to_string());
    d.help(format!(
        "`{written}` is not beside the recipe, nor in {cache}: `huggingface-cli download {written}` puts it there"
    ))
}

/// The snapshot folder of hub id `id` in `cache`: the commit `refs/main` names, or the only
/// snapshot there is.
fn snapshot(cache: &Path, id: &str) -> Option<PathBuf> {
    if !is_id(id) {
        return None;
    }
    let (org, name) = id.split_once('/')?;
    let repo = cache.join(format!("models--{org}--{name}"));
    let snapshots = repo.join("snapshots");
    if let Ok(commit) = std::fs::read_to_string(repo.join("refs/main")) {
        let path = snapshots.join(commit.trim());
        return path.is_dir().then_some(path);
    }
    let mut all = std::fs::read_dir(&snapshots).ok()?.filter_map(|e| e.ok().map(|e| e.path()));
    match (all.next(), all.next()) {
        (Some(only), None) if only.is_dir() => Some(only),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_resolve_to_the_cached_snapshot_and_paths_win() {
        let dir = tempfile::tempdir().unwrap();
        let (base, cache) = (dir.path().join("recipes"), dir.path().join("hub"));
        let repo = cache.join("models--Qwen--Qwen3-0.6B");
        std::fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/old999")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        let locate = |written: &str| locate_in(&base, written, Some(&cache));
        assert_eq!(locate("Qwen/Qwen3-0.6B"), repo.join("snapshots/abc123"));
        assert_eq!(locate("Qwen/Missing"), base.join("Qwen/Missing"), "not cached: the relative path");
        assert_eq!(locate("../x/y/z"), base.join("../x/y/z"), "not a hub id");
        // A folder by that name beside the recipe comes first.
        std::fs::create_dir_all(base.join("Qwen/Qwen3-0.6B")).unwrap();
        assert_eq!(locate("Qwen/Qwen3-0.6B"), base.join("Qwen/Qwen3-0.6B"));
        // Without refs/main, the only snapshot.
        let other = cache.join("models--org--m/snapshots/only");
        std::fs::create_dir_all(&other).unwrap();
        assert_eq!(locate("org/m"), other);
    }
}
