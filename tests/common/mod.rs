//! What the binary's tests share: the repository root, and small recipes over the committed
//! corpus that train in a second or two.

use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `NAME.toml` in `dir`: a 2-layer, d_model 32 Llama and a 400-token BPE over the Moby-Dick
/// chapters that `chapters` globs (under `data/moby-dick/`), then `stages`, the recipe's
/// `[stages.*]` tables.
pub fn small_recipe(dir: &Path, name: &str, chapters: &str, stages: &str) -> PathBuf {
    let text = format!(
        r#"
[recipe]
name = "{name}"
[model]
d_model = 32
n_layers = 2
n_heads = 4
d_ff = 64
max_seq_len = 32
[tokenizer]
train = {{ vocab_size = 400 }}
[sources.moby]
path = "{}/data/moby-dick/{chapters}"
{stages}"#,
        root().display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Files and folders that only a writer in the middle of writing should have.
#[allow(dead_code)] // the tests that kill writers use it, not every test binary
pub fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(".staging-") || name.contains(".tmp-") || name.starts_with(".tmp") {
            found.push(path.clone());
        }
        if path.is_dir() {
            found.extend(leftovers(&path));
        }
    }
    found
}
