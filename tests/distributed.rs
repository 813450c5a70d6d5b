//! Data parallelism on the CPU through MPI: `mpirun -np N recipe train` trains what one
//! process trains with the same global batch — the same rows in the same order (equal token
//! counts every step), losses and weights equal up to f32 summation order — and a rank killed
//! with `kill -9` at any moment is resumed by a relaunch, with the same or another world size.
//!
//! Needs a build with `--features mpi` and Open MPI's `mpirun`: `cargo test --features mpi
//! --test distributed`. Skipped, saying so, without them; `RECIPE_REQUIRE_MPI=1` (CI) makes
//! that a failure instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{leftovers, small_recipe};

/// Two chained stages; the first's steps of 6 rows in micro-batches of 2, so that 2 ranks take
/// 3 rows each (a micro-batch of 2 and one of 1) and 4 ranks take 1 or 2.
fn recipe(dir: &Path) -> PathBuf {
    let stages = r#"
[stages.first]
kind = "pretrain"
steps = 40
seq_len = 32
batch_size = 6
micro_batch_size = 2
data = { mix = { moby = 1 } }
optim = { lr = 1e-2 }
checkpoint_every = 4
[stages.second]
kind = "pretrain"
after = "first"
steps = 24
seq_len = 32
batch_size = 4
data = { mix = { moby = 1 } }
optim = { lr = 5e-3 }
checkpoint_every = 3
"#;
    small_recipe(dir, "dp", "chapter_1?.txt", stages)
}

/// Whether this test can run here: a build with MPI and an `mpirun`.
fn mpi_available() -> bool {
    let required = std::env::var_os("RECIPE_REQUIRE_MPI").is_some();
    let mpirun = Command::new("mpirun").arg("--version").output().is_ok_and(|o| o.status.success());
    let reason = match (cfg!(feature = "mpi"), mpirun) {
        (true, true) => return true,
        (false, _) => "this build has no MPI (`cargo test --features mpi --test distributed`)",
        (true, false) => "there is no `mpirun` (Debian: openmpi-bin)",
    };
    assert!(!required, "RECIPE_REQUIRE_MPI is set, but {reason}");
    eprintln!("SKIPPED: {reason}");
    false
}

/// `recipe train` of `recipe` into `runs` on `ranks` processes: under mpirun, or alone when 1.
fn train(recipe: &Path, runs: &Path, ranks: usize) -> Command {
    let bin = env!("CARGO_BIN_EXE_recipe");
    let mut cmd = match ranks {
        1 => Command::new(bin),
        n => {
            let mut cmd = Command::new("mpirun");
            cmd.args(["--oversubscribe", "-np", &n.to_string(), bin]);
            cmd
        }
    };
    cmd.args(["train", recipe.to_str().unwrap(), "--runs"])
        .arg(runs)
        // Open MPI refuses root unless told; CI runs as root.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn run_to_end(recipe: &Path, runs: &Path, ranks: usize) {
    let out = train(recipe, runs, ranks).output().unwrap();
    assert!(out.status.success(), "{ranks} ranks: {}", String::from_utf8_lossy(&out.stderr));
}

/// The folder of `stage`'s one key under `runs`.
fn stage_dir(runs: &Path, stage: &str) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(runs.join("dp").join(stage))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "one key for {stage}");
    dirs.into_iter().next().unwrap()
}

/// Per step of `stage`: (step, loss, loss tokens, tokens of the moby source so far).
fn steps(runs: &Path, stage: &str) -> Vec<(u64, f64, u64, u64)> {
    let text = std::fs::read_to_string(stage_dir(runs, stage).join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| {
            let n = |k: &str| v[k].as_u64().unwrap();
            (n("step"), v["loss"].as_f64().unwrap(), n("loss_tokens"), v["source_tokens"]["moby"].as_u64().unwrap())
        })
        .collect()
}

/// The last step `stage` has logged so far, read while it trains.
fn last_logged_step(runs: &Path, stage: &str) -> Option<u64> {
    let keys = std::fs::read_dir(runs.join("dp").join(stage)).ok()?;
    let metrics = keys.flatten().map(|e| e.path().join("metrics.jsonl")).find(|p| p.is_file())?;
    let text = std::fs::read_to_string(metrics).ok()?;
    text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64()).max()
}

/// `stage`'s final weights, flattened, by name.
fn weights(runs: &Path, stage: &str) -> Vec<(String, Vec<f32>)> {
    let path = stage_dir(runs, stage).join("final/model.safetensors");
    let mut tensors: Vec<(String, Vec<f32>)> = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

/// The same rows every step, losses within `tol` relative, and every weight within 1e-2, the
/// size of one AdamW update at the first stage's lr: AdamW divides by the root of tiny second
/// moments, so that summation-order differences in near-zero gradients move single weights by
/// up to a few thousandths (measured: 4e-3 at most, with losses equal to 1e-6).
fn assert_same_training(expected: &Path, got: &Path, tol: f64, what: &str) {
    for stage in ["first", "second"] {
        let (e, g) = (steps(expected, stage), steps(got, stage));
        assert_eq!(e.len(), g.len(), "{what}, {stage}: steps");
        for (a, b) in e.iter().zip(&g) {
            assert_eq!((a.0, a.2, a.3), (b.0, b.2, b.3), "{what}, {stage}: the rows of step {} differ", a.0);
            assert!((a.1 - b.1).abs() <= tol * a.1.abs(), "{what}, {stage}, step {}: loss {} vs {}", a.0, a.1, b.1);
        }
        for ((name, a), (other, b)) in weights(expected, stage).iter().zip(&weights(got, stage)) {
            assert_eq!(name, other);
            let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max);
            assert!(worst <= 1e-2, "{what}, {stage}: {name} differs by {worst}");
        }
    }
}

#[test]
fn mpirun_with_2_and_4_ranks_trains_what_one_process_trains() {
    if !mpi_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let one = dir.path().join("one");
    run_to_end(&recipe, &one, 1);
    for ranks in [2, 4] {
        let many = dir.path().join(format!("ranks-{ranks}"));
        run_to_end(&recipe, &many, ranks);
        assert_same_training(&one, &many, 1e-4, &format!("{ranks} ranks"));
        let sessions = std::fs::read_to_string(stage_dir(&many, "first").join("sessions.jsonl")).unwrap();
        assert!(sessions.contains(&format!("\"world_size\":{ranks}")), "{sessions}");
        // Only the leader wrote: no second session line, no stray staging folders.
        assert_eq!(sessions.lines().count(), 1, "{sessions}");
    }
}

/// A DPO stage split over ranks: each rank scores its own rows, one pair each, against the
/// reference, and the step's loss and reward statistics summed over ranks are one process's;
/// and a KTO stage, whose KL estimate sums every rank's rows before the loss.
#[test]
fn mpirun_with_2_ranks_trains_a_dpo_stage_as_one_process_does() {
    if !mpi_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Short pairs from the book: two words asked, the next two chosen, shouted rejected.
    let text = std::fs::read_to_string(common::root().join("data/moby-dick/chapter_1.txt")).unwrap();
    let words: Vec<&str> = text.split_whitespace().collect();
    let pairs: String = words
        .chunks(4)
        .take(200)
        .map(|w| {
            let chosen = w[2..].join(" ");
            let pair =
                serde_json::json!({ "prompt": w[..2].join(" "), "chosen": chosen, "rejected": chosen.to_uppercase() });
            format!("{pair}\n")
        })
        .collect();
    std::fs::write(dir.path().join("pairs.jsonl"), &pairs).unwrap();
    // The same answers unpaired, for KTO, whose KL estimate is the whole step's.
    let unpaired: String = pairs
        .lines()
        .flat_map(|line| {
            let pair: serde_json::Value = serde_json::from_str(line).unwrap();
            [("chosen", true), ("rejected", false)].map(|(key, label)| {
                let record = serde_json::json!({ "prompt": pair["prompt"], "completion": pair[key], "label": label });
                format!("{record}\n")
            })
        })
        .collect();
    std::fs::write(dir.path().join("unpaired.jsonl"), unpaired).unwrap();
    // The same preference stage over either source: the pairs under DPO, the unpaired under KTO.
    let preference_stage = |name: &str, source: &str, extra: &str| {
        format!(
            "[stages.{name}]\nkind = \"dpo\"\nafter = \"first\"\nsteps = 12\nseq_len = 32\nbatch_size = 6\n\
             micro_batch_size = 2\ndata = {{ mix = {{ {source} = 1 }} }}\n{extra}optim = {{ lr = 1e-2 }}\n"
        )
    };
    let stages = format!(
        r#"
[sources.pairs]
path = "{}"
format = "preference-jsonl"
[sources.unpaired]
path = "{}"
format = "unpaired-preference-jsonl"
[stages.first]
kind = "pretrain"
steps = 20
seq_len = 32
batch_size = 4
data = {{ mix = {{ moby = 1 }} }}
optim = {{ lr = 1e-2 }}
{}{}"#,
        dir.path().join("pairs.jsonl").display(),
        dir.path().join("unpaired.jsonl").display(),
        preference_stage("second", "pairs", ""),
        preference_stage("third", "unpaired", "preference = { loss = \"kto\" }\n"),
    );
    let recipe = small_recipe(dir.path(), "dp", "chapter_1?.txt", &stages);
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    run_to_end(&recipe, &one, 1);
    run_to_end(&recipe, &two, 2);
    let lines = |runs: &Path, stage: &str| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(stage_dir(runs, stage).join("metrics.jsonl")).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    for (stage, keys) in [("second", &["loss", "chosen_reward", "rejected_reward"][..]), ("third", &["loss", "kl"][..])]
    {
        let (a, b) = (lines(&one, stage), lines(&two, stage));
        assert_eq!(a.len(), 12);
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x["loss_tokens"], y["loss_tokens"], "{stage}: the same rows");
            for key in keys {
                let (p, q) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
                assert!((p - q).abs() <= 1e-4 * p.abs().max(1e-2), "{stage} step {}: {key} {p} vs {q}", x["step"]);
            }
        }
        if stage == "second" {
            assert!((a[0]["loss"].as_f64().unwrap() - 2f64.ln()).abs() < 1e-5, "DPO starts at ln 2");
        }
    }
}

/// The process ids of `mpirun`'s ranks, by rank, once all have started.
fn ranks_of(mpirun: &Child, ranks: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut found = vec![None; ranks];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // The parent is the 2nd field after the command, which is in parentheses.
            let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            if after.split_whitespace().nth(1) != Some(&mpirun.id().to_string()) {
                continue;
            }
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
            let rank = environ
                .split(|&b| b == 0)
                .filter_map(|v| std::str::from_utf8(v).ok()?.strip_prefix("OMPI_COMM_WORLD_RANK="))
                .find_map(|r| r.parse::<usize>().ok());
            if let Some(rank) = rank.filter(|&r| r < ranks) {
                found[rank] = Some(pid);
            }
        }
        if found.iter().all(Option::is_some) {
            return found.into_iter().flatten().collect();
        }
        assert!(Instant::now() < deadline, "mpirun's ranks did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start training on `ranks` processes, wait until `stage` has logged step `step`, and
/// `kill -9` the given rank; the launch must not have finished the stage.
fn kill_rank_at(recipe: &Path, runs: &Path, ranks: usize, victim: usize, stage: &str, step: u64) {
    let mut child = train(recipe, runs, ranks).stderr(Stdio::null()).spawn().unwrap();
    let pid = match ranks {
        1 => child.id(),
        n => ranks_of(&child, n)[victim],
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if last_logged_step(runs, stage).is_some_and(|s| s >= step) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the launch ended before step {step} of {stage}");
        assert!(Instant::now() < deadline, "step {step} of {stage} never came");
        std::thread::sleep(Duration::from_millis(5));
    }
    Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killing rank {victim} of {ranks} must fail the launch");
    assert!(!stage_dir(runs, stage).join("final").exists(), "the kill came too late to test anything");
}

#[test]
fn a_rank_killed_with_kill_9_resumes_on_2_then_1_then_2_ranks() {
    if !mpi_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let whole = dir.path().join("whole");
    run_to_end(&recipe, &whole, 1);

    let runs = dir.path().join("killed");
    kill_rank_at(&recipe, &runs, 2, 1, "first", 10);
    kill_rank_at(&recipe, &runs, 1, 0, "first", 30);
    kill_rank_at(&recipe, &runs, 2, 0, "second", 8);
    run_to_end(&recipe, &runs, 2);
    assert_same_training(&whole, &runs, 1e-4, "killed and resumed");

    // The sessions say who trained which steps: 2 ranks from 0, 1 from a checkpoint after
    // step 10, 2 again from one after step 30.
    let sessions: Vec<serde_json::Value> = std::fs::read_to_string(stage_dir(&runs, "first").join("sessions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(u64, u64)> =
        sessions.iter().map(|s| (s["world_size"].as_u64().unwrap(), s["start_step"].as_u64().unwrap())).collect();
    assert_eq!(seen[0], (2, 0), "{seen:?}");
    assert!(seen[1].0 == 1 && seen[1].1 >= 8 && seen[1].1 <= 30, "{seen:?}");
    assert!(seen[2].0 == 2 && seen[2].1 >= 28, "{seen:?}");
    let left = leftovers(&runs);
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_rank_that_sees_another_run_directory_fails_the_launch_at_once_saying_why() {
    if !mpi_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let bin = env!("CARGO_BIN_EXE_recipe");
    let rank = |runs: &str| {
        ["-np", "1", "-x", &format!("RECIPE_RUNS={}", dir.path().join(runs).display()), bin, "train"]
            .map(String::from)
            .into_iter()
            .chain([recipe.display().to_string()])
    };
    // Two ranks, each with its own `--runs`: as two nodes without a shared filesystem.
    let out = Command::new("mpirun")
        .arg("--oversubscribe")
        .args(rank("a"))
        .arg(":")
        .args(rank("b"))
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("error: rank 1: the data rank 0 prepared is not in"), "{stderr}");
    assert!(stderr.contains("shared filesystem"), "{stderr}");
}

#[test]
fn sigterm_to_one_rank_stops_every_rank_after_the_same_step_with_a_checkpoint() {
    if !mpi_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let runs = dir.path().join("runs");
    let mut mpirun = train(&recipe, &runs, 2).stderr(Stdio::null()).spawn().unwrap();
    let ranks = ranks_of(&mpirun, 2);
    let deadline = Instant::now() + Duration::from_secs(300);
    while last_logged_step(&runs, "first").is_none_or(|s| s < 6) {
        assert!(Instant::now() < deadline && mpirun.try_wait().unwrap().is_none(), "step 6 never came");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Rank 1 alone: the ranks agree after each step whether any was signalled.
    Command::new("kill").args(["-TERM", &ranks[1].to_string()]).status().unwrap();
    assert!(!mpirun.wait().unwrap().success());
    let stopped = last_logged_step(&runs, "first").unwrap();
    assert!(stopped < 40, "the signal came after the stage ended");
    let checkpoints = stage_dir(&runs, "first").join("checkpoints");
    assert!(
        checkpoints.join(format!("step-{stopped:06}")).is_dir(),
        "no checkpoint at step {stopped}, where the ranks stopped: {:?}",
        std::fs::read_dir(&checkpoints).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>()
    );
}
