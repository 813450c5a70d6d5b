//! Full disks and places `recipe` may not write: the run directory on a small tmpfs (in a
//! private mount namespace from `unshare`, so no root is needed and nothing outlives the
//! test), a read-only run directory, an unreadable source. Each gives a clear error naming the
//! path, loses nothing, and a later run with space finishes exactly as an uninterrupted one.
//! Skipped, saying so, where `unshare` cannot make the namespace.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{root, small_recipe};

/// A one-stage recipe over the committed corpus that checkpoints every 4 steps, keeping all.
fn recipe_in(dir: &Path) -> PathBuf {
    let stage = r#"
[stages.pretrain]
kind = "pretrain"
steps = 24
seq_len = 32
batch_size = 4
data = { mix = { moby = 1 } }
checkpoint_every = 4
keep_checkpoints = 10
"#;
    small_recipe(dir, "full", "chapter_2*.txt", stage)
}

/// Run `script` as root of a private user and mount namespace, or `None` where the system
/// does not allow one.
fn in_namespace(script: &str, args: &[&str]) -> Option<std::process::Output> {
    let probe = Command::new("unshare").args(["-rm", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: `unshare -rm` cannot make a private mount namespace here");
        return None;
    }
    Some(Command::new("unshare").args(["-rm", "sh", "-c", script, "sh"]).args(args).output().unwrap())
}

/// Kilobytes that `du` counts under `path`.
fn du_k(path: &Path) -> u64 {
    let out = Command::new("du").arg("-sk").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().parse().unwrap()
}

fn node_dir(runs: &Path) -> PathBuf {
    std::fs::read_dir(runs.join("full/pretrain")).unwrap().next().unwrap().unwrap().path()
}

#[test]
fn a_full_disk_during_a_checkpoint_keeps_the_last_one_and_train_resumes_with_space() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe_in(dir.path());
    let bin = env!("CARGO_BIN_EXE_recipe");

    let straight = dir.path().join("straight");
    let out = Command::new(bin).arg("train").arg(&recipe).arg("--runs").arg(&straight).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let node = node_dir(&straight);
    let checkpoint = du_k(&node.join("checkpoints/step-000004"));
    let everything_else = du_k(&straight) - du_k(&node.join("checkpoints")) - du_k(&node.join("final"));
    // Room for everything up to the first checkpoint and half of the second.
    let size = everything_else + checkpoint * 3 / 2;

    let full = dir.path().join("full");
    let script = r#"
        bin=$1 recipe=$2 runs=$3 size=$4 out=$5
        mkdir -p "$runs" && mount -t tmpfs -o size="$size"k tmpfs "$runs" || exit 99
        "$bin" train "$recipe" --runs "$runs" 2>"$out/full.err"; echo $? >"$out/full.code"
        ls "$runs"/full/pretrain/*/checkpoints >"$out/kept"
        mount -o remount,size=65536k "$runs"
        "$bin" train "$recipe" --runs "$runs" 2>"$out/again.err"; echo $? >"$out/again.code"
        cp "$runs"/full/pretrain/*/final/model.safetensors "$out/"
    "#;
    let args = [bin, recipe.to_str().unwrap(), full.to_str().unwrap(), &size.to_string(), dir.path().to_str().unwrap()];
    let Some(ran) = in_namespace(script, &args) else { return };
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let err = read("full.err");
    assert_eq!(read("full.code").trim(), "1", "{err}");
    assert!(err.contains("No space left on device") && err.contains("/checkpoints/"), "{err}");
    assert_eq!(read("kept").split_whitespace().collect::<Vec<_>>(), ["step-000004"], "the earlier checkpoint stays");
    let again = read("again.err");
    assert_eq!(read("again.code").trim(), "0", "{again}");
    assert!(again.contains("resuming `pretrain` from"), "{again}");
    let want = std::fs::read(node.join("final/model.safetensors")).unwrap();
    assert!(std::fs::read(dir.path().join("model.safetensors")).unwrap() == want, "the final weights differ");
}

#[test]
fn a_read_only_run_directory_and_an_unreadable_source_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe_in(dir.path());
    let bin = env!("CARGO_BIN_EXE_recipe");
    let runs = dir.path().join("ro");
    let script = r#"
        bin=$1 recipe=$2 runs=$3 out=$4
        mkdir -p "$runs" && mount -t tmpfs -o ro tmpfs "$runs" || exit 99
        "$bin" train "$recipe" --runs "$runs" 2>"$out/ro.err"; echo $? >"$out/ro.code"
    "#;
    let args = [bin, recipe.to_str().unwrap(), runs.to_str().unwrap(), dir.path().to_str().unwrap()];
    if let Some(ran) = in_namespace(script, &args) {
        assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
        let err = std::fs::read_to_string(dir.path().join("ro.err")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("ro.code")).unwrap().trim(), "1", "{err}");
        assert!(err.contains(&format!("{}/full", runs.display())) && err.contains("Read-only file system"), "{err}");
    }

    // A source that cannot be read (permissions mean nothing to root, so there it is skipped).
    let source = dir.path().join("secret.txt");
    std::fs::write(&source, "words").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&source).is_ok() {
        eprintln!("SKIPPED: running as root, which reads any file");
        return;
    }
    let text = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace(&format!("{}/data/moby-dick/chapter_2*.txt", root().display()), source.to_str().unwrap());
    std::fs::write(&recipe, text).unwrap();
    let out = Command::new(bin).arg("train").arg(&recipe).arg("--runs").arg(dir.path().join("runs")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("{}: Permission denied", source.display())), "{err}");
}
