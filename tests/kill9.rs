//! `kill -9` at any instant loses nothing: a campaign of trials, each killing `recipe train` at
//! a moment spread evenly over an uninterrupted run (tokenizer training, tokenization, training
//! steps, checkpoint writes, publishing a result, updating the lock), then running it again to
//! the end. Every trial must finish with final weights bit-identical to the uninterrupted run,
//! every node recorded done, and no temporary file or folder left behind.
//!
//! `RECIPE_KILL_TRIALS` sets the number of trials (default 12, what CI runs); the full
//! campaign is `RECIPE_KILL_TRIALS=60 cargo test --release --test kill9 -- --nocapture`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

mod common;

use common::{leftovers, small_recipe};

/// Two chained stages over a slice of the committed corpus, checkpointing often.
fn campaign_recipe(dir: &Path) -> PathBuf {
    let stages = r#"
[stages.first]
kind = "pretrain"
steps = 24
seq_len = 32
batch_size = 4
data = { mix = { moby = 1 } }
optim = { lr = 1e-2 }
checkpoint_every = 3
[stages.second]
kind = "pretrain"
after = "first"
steps = 12
seq_len = 32
batch_size = 4
data = { mix = { moby = 1 } }
optim = { lr = 5e-3 }
checkpoint_every = 2
keep_checkpoints = 1
"#;
    small_recipe(dir, "kill9", "chapter_1?.txt", stages)
}

fn train(recipe: &Path, runs: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recipe"));
    cmd.args(["train", recipe.to_str().unwrap(), "--runs"]).arg(runs).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// Each stage's final weights.
fn results(runs: &Path) -> Vec<Vec<u8>> {
    ["first", "second"]
        .iter()
        .map(|stage| {
            let keys = std::fs::read_dir(runs.join("kill9").join(stage)).unwrap();
            let done: Vec<PathBuf> =
                keys.map(|e| e.unwrap().path().join("final/model.safetensors")).filter(|p| p.is_file()).collect();
            assert_eq!(done.len(), 1, "one result per stage");
            std::fs::read(&done[0]).unwrap()
        })
        .collect()
}

#[test]
fn kill_9_at_any_moment_then_train_gives_the_same_weights() {
    let trials: u32 = std::env::var("RECIPE_KILL_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let dir = tempfile::tempdir().unwrap();
    let recipe = campaign_recipe(dir.path());

    let straight = dir.path().join("straight");
    let started = Instant::now();
    let out = train(&recipe, &straight).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = started.elapsed();
    let want = results(&straight);
    // The first run pays for cold caches; the faster of two says how long a run takes.
    let started = Instant::now();
    assert!(train(&recipe, &dir.path().join("timed")).output().unwrap().status.success());
    let span = started.elapsed().min(first);

    let mut killed_running = 0;
    for trial in 0..trials {
        // Golden-ratio steps spread the kill moments evenly over the run, whatever the count.
        let at = span.mul_f64(0.8 * ((0.5 + trial as f64 * 0.618_033_988_75) % 1.0));
        let runs = dir.path().join(format!("trial-{trial}"));
        let mut child = train(&recipe, &runs).spawn().unwrap();
        std::thread::sleep(at);
        if child.try_wait().unwrap().is_none() {
            killed_running += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let out = train(&recipe, &runs).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "trial {trial} (killed at {at:?}) did not finish:\n{stderr}");
        assert!(results(&runs) == want, "trial {trial} (killed at {at:?}): the final weights differ");
        let left = leftovers(&runs);
        assert!(left.is_empty(), "trial {trial}: left behind {left:?}");
        let status = Command::new(env!("CARGO_BIN_EXE_recipe"))
            .args(["status", recipe.to_str().unwrap(), "--json", "--runs"])
            .arg(&runs)
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        for node in status["stages"].as_array().unwrap() {
            assert_eq!(node["state"], "done", "trial {trial}: {node}");
        }
        std::fs::remove_dir_all(&runs).unwrap();
    }
    eprintln!(
        "kill -9 campaign: {trials} trials over a {:.1} s run, {killed_running} killed while running; every one \
         finished bit-identical with nothing left behind",
        span.as_secs_f64()
    );
    // Timing on a loaded machine varies; most kills still land while the run works.
    assert!(killed_running * 2 >= trials, "most kills must land while the run is working");
}
