//! The `recipe` binary end to end: exit codes, JSON documents, and every shipped example.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;

use common::{root, small_recipe};

fn recipe(args: &[&str], runs: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recipe")).args(args).arg("--runs").arg(runs).current_dir(root()).output().unwrap()
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_example_recipe_validates_and_plans() {
    let runs = tempfile::tempdir().unwrap();
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("recipes")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let p = path.to_str().unwrap();
        let out = recipe(&["validate", p], runs.path());
        assert!(
            out.status.success(),
            "{p} is invalid (run scripts/fetch-assets.sh first if assets are missing):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plan = json(&recipe(&["plan", p, "--json"], runs.path()));
        assert!(!plan["stages"].as_array().unwrap().is_empty());
        n += 1;
    }
    assert!(n >= 4, "expected the shipped examples, found {n}");
}

#[test]
fn plan_text_names_a_distillation_stage_s_teacher_once() {
    let runs = tempfile::tempdir().unwrap();
    let out = recipe(&["plan", "recipes/pipeline.toml"], runs.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with("teacher ")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].contains("stage `sft`") && lines[0].contains("alpha"), "{text}");
}

#[test]
fn completions_and_the_manual_page_come_from_the_command_line_definition() {
    let runs = tempfile::tempdir().unwrap();
    for (shell, marker) in [("bash", "_recipe()"), ("zsh", "#compdef recipe"), ("fish", "complete -c recipe")] {
        let out = recipe(&["completions", shell], runs.path());
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && script.contains(marker), "{shell}: {script}");
        assert!(script.contains("train") && script.contains("device"), "{shell} completes verbs and flags");
    }
    assert_eq!(recipe(&["completions", "tcsh"], runs.path()).status.code(), Some(2));
    let man = recipe(&["man"], runs.path());
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(man.status.success() && page.contains(".TH recipe"), "{page}");
    assert!(page.contains("Declarative, resumable training recipes") && page.contains("smoke"), "{page}");
}

#[test]
fn plan_json_has_the_documented_fields() {
    let runs = tempfile::tempdir().unwrap();
    let plan = json(&recipe(&["plan", "recipes/pipeline.toml", "--json"], runs.path()));
    assert_eq!(plan["recipe"], "pipeline");
    let stages = plan["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["pretrain", "sft", "dpo", "kto", "distill"]);
    for s in stages {
        for field in
            ["name", "kind", "key", "will_run", "reason", "params", "tokens", "flops", "memory_bytes", "sources"]
        {
            assert!(!s[field].is_null(), "stage {} lacks {field}", s["name"]);
        }
        assert_eq!(s["will_run"], true);
    }
    let sft = &stages[1];
    assert!(sft["params"]["trainable"].as_u64().unwrap() < sft["params"]["total"].as_u64().unwrap() / 50, "LoRA");
    assert_eq!(stages[0]["tokens"], 600 * 32 * 256);
    let nodes: Vec<&str> = plan["nodes"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(nodes[0], "tokenizer:train");
}

#[test]
fn plan_with_a_world_size_gives_each_rank_s_rows_tokens_memory_and_traffic() {
    let runs = tempfile::tempdir().unwrap();
    let stage = |world: &str| {
        let plan = json(&recipe(&["plan", "recipes/quickstart.toml", "--json", "--world-size", world], runs.path()));
        plan["stages"][0].clone()
    };
    let (one, four, three) = (stage("1"), stage("4"), stage("3"));
    assert_eq!(one["ranks"]["world"], 1);
    assert_eq!(one["ranks"]["all_reduce_bytes"], 0);
    // 16 rows a step: 4 each on 4 ranks, and micro-batches no larger than a share.
    assert_eq!((four["ranks"]["rows"].as_u64(), four["ranks"]["micro_batch_size"].as_u64()), (Some(4), Some(4)));
    assert_eq!(four["ranks"]["tokens"].as_u64().unwrap() * 4, one["tokens"].as_u64().unwrap());
    let trainable = one["params"]["trainable"].as_u64().unwrap();
    assert_eq!(four["ranks"]["all_reduce_bytes"].as_u64(), Some(2 * 3 * trainable * 4 / 4), "a ring all-reduce in f32");
    let memory = |s: &Value, part: &str| s["memory"][part].as_u64().unwrap();
    assert_eq!(memory(&four, "activations") * 4, memory(&one, "activations"));
    assert_eq!(memory(&four, "optimizer"), memory(&one, "optimizer"), "every rank holds the optimizer");
    // 16 rows do not divide among 3.
    assert_eq!(three["ranks"]["rows"], 6);
    assert!(three["warnings"].to_string().contains("do not divide among 3 ranks"), "{}", three["warnings"]);
    let text = recipe(&["plan", "recipes/quickstart.toml", "--world-size", "4"], runs.path());
    assert!(String::from_utf8_lossy(&text.stdout).contains("ranks     4 × up to 4 sequences a step"));
    let zero = recipe(&["plan", "recipes/quickstart.toml", "--world-size", "0"], runs.path());
    assert_eq!(zero.status.code(), Some(2), "a world of no ranks is refused");
}

#[test]
fn an_invalid_recipe_exits_2_with_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[model]\nd_modle = 3\n[stages.a]\nkind = \"pretrain\"\n").unwrap();
    let out = recipe(&["validate", bad.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:2:1"), "{err}");
    assert!(err.contains("did you mean `d_model`?"), "{err}");
    assert!(err.contains("missing `[tokenizer]`"), "{err}");
    assert!(err.contains("missing key `data`"), "{err}");

    let out = recipe(&["plan", "recipes/quickstart.toml", "--set", "stages.pretrain.steps=-3"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let out = recipe(&["frobnicate"], dir.path());
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn diff_of_two_files_names_fields_and_invalidated_stages() {
    let dir = tempfile::tempdir().unwrap();
    let sets = ["--set", "stages.pretrain.log_every=50", "--set", "stages.sft.peft.rank=16"];
    let out = recipe(
        &[&["diff", "recipes/pipeline.toml", "recipes/pipeline.toml", "--json"][..], &sets].concat(),
        dir.path(),
    );
    let d = json(&out);
    let paths: Vec<&str> = d["changes"].as_array().unwrap().iter().map(|c| c["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["stages.pretrain.log_every", "stages.sft.peft.rank"]);
    let invalidated: Vec<&str> = d["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["invalidated"] == true)
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(invalidated, ["sft", "dpo", "kto", "distill"]);

    let text =
        recipe(&["diff", "recipes/pipeline.toml", "recipes/pipeline.toml", "--set", "stages.sft.steps=60"], dir.path());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("stages.sft.steps  80 → 60"), "{text}");
    assert!(text.contains("pretrain           unchanged"), "{text}");
    assert!(text.contains("distill            invalidated via sft: stages.sft.steps (80 → 60)"), "{text}");
}

#[test]
fn status_and_diff_against_the_last_run() {
    let runs = tempfile::tempdir().unwrap();
    let st = json(&recipe(&["status", "recipes/quickstart.toml", "--json"], runs.path()));
    let states: Vec<&str> = st["stages"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "pending", "pending"]);
    let out = recipe(&["diff", "recipes/quickstart.toml"], runs.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no recorded run"));
}

#[test]
fn prepare_tokenizes_once_and_plan_then_reports_measured_data_facts() {
    let runs = tempfile::tempdir().unwrap();
    let before = json(&recipe(&["plan", "recipes/quickstart.toml", "--json"], runs.path()));
    assert!(before["stages"][0]["packing"]["efficiency"].is_null());

    let out = recipe(&["prepare", "recipes/quickstart.toml"], runs.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("tokenizer:train: 2048 tokens"), "{log}");
    let again = recipe(&["prepare", "recipes/quickstart.toml"], runs.path());
    assert!(String::from_utf8_lossy(&again.stderr).contains("tokenize:moby: cached"));

    let st = json(&recipe(&["status", "recipes/quickstart.toml", "--json"], runs.path()));
    let states: Vec<&str> = st["stages"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["done", "done", "pending"]);

    let plan = json(&recipe(&["plan", "recipes/quickstart.toml", "--json"], runs.path()));
    let stage = &plan["stages"][0];
    let efficiency = stage["packing"]["efficiency"].as_f64().unwrap();
    assert!(efficiency > 0.95, "{efficiency}");
    let moby = &stage["sources"]["moby"];
    let capacity = 600.0 * 16.0 * 129.0;
    assert_eq!(
        moby["tokens"].as_f64().unwrap(),
        (efficiency * capacity).round(),
        "the tokens in the rows, all from moby"
    );
    assert!(moby["epochs"].as_f64().unwrap() > 1.0);
}

/// A small one-stage recipe over the committed corpus, in `dir`, checkpointing every 4 steps.
#[test]
fn plan_s_memory_estimate_is_within_a_fifth_of_the_peak_train_measures() {
    let dir = tempfile::tempdir().unwrap();
    // Big enough that the activations, not the process, make the peak.
    let text = format!(
        r#"
[recipe]
name = "peak"
[model]
d_model = 128
n_layers = 4
n_heads = 4
d_ff = 512
max_seq_len = 256
[tokenizer]
train = {{ vocab_size = 512 }}
[sources.moby]
path = "{}/data/moby-dick/chapter_1*.txt"
[stages.pretrain]
kind = "pretrain"
steps = 3
seq_len = 256
batch_size = 8
data = {{ mix = {{ moby = 1 }} }}
"#,
        root().display()
    );
    let path = dir.path().join("peak.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap();
    let plan = json(&recipe(&["plan", p, "--json"], dir.path()));
    let estimate = plan["stages"][0]["memory_bytes"].as_u64().unwrap() as f64 / (1u64 << 20) as f64;
    // The tokenizer trains in a process of its own: what its training leaves in the allocator
    // is not the stage's (README, Performance).
    assert!(recipe(&["prepare", p], dir.path()).status.success());
    let out = recipe(&["train", p], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = std::fs::read_dir(dir.path().join("peak/pretrain")).unwrap().next().unwrap().unwrap().path();
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    let Some(measured) = last["peak_memory_mib"].as_f64() else {
        eprintln!("skipped: this system does not report peak resident memory (/proc/self/status)");
        return;
    };
    assert!(
        (estimate - measured).abs() <= 0.2 * measured,
        "plan estimated {estimate:.1} MiB, the run peaked at {measured:.1} MiB"
    );
}

fn resumable_recipe(dir: &Path) -> PathBuf {
    let stage = r#"
[stages.pretrain]
kind = "pretrain"
steps = 60
seq_len = 32
batch_size = 4
data = { mix = { moby = 1 } }
optim = { lr = 1e-2 }
checkpoint_every = 4
"#;
    small_recipe(dir, "crash", "chapter_2*.txt", stage)
}

fn losses(runs: &Path) -> (Vec<String>, Vec<u8>) {
    let dir = std::fs::read_dir(runs.join("crash/pretrain")).unwrap().next().unwrap().unwrap().path();
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let lines = metrics
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            format!("{} {} {}", v["step"], v["loss"], v["grad_norm"])
        })
        .collect();
    (lines, std::fs::read(dir.join("final/model.safetensors")).unwrap())
}

fn wait_for_checkpoint(runs: &Path) {
    let start = std::time::Instant::now();
    loop {
        let found = std::fs::read_dir(runs.join("crash/pretrain"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| std::fs::read_dir(e.ok()?.path().join("checkpoints")).ok())
            .is_some_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("step-"))));
        if found {
            return;
        }
        assert!(start.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn kill_9_after_a_checkpoint_then_resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let path = resumable_recipe(dir.path());
    let p = path.to_str().unwrap();
    let straight = dir.path().join("straight");
    assert!(recipe(&["train", p], &straight).status.success());

    let crashed = dir.path().join("crashed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_recipe"))
        .args(["train", p, "--runs"])
        .arg(&crashed)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&crashed);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let st = json(&recipe(&["status", p, "--json"], &crashed));
    assert_eq!(st["stages"][2]["state"], "partial", "{st}");
    let out = recipe(&["train", p], &crashed);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming"));
    let (a, b) = (losses(&straight), losses(&crashed));
    assert_eq!(a.0.len(), 60);
    assert_eq!(a.0, b.0, "per-step losses differ");
    assert!(a.1 == b.1, "final weights differ");
    let again = recipe(&["train", p], &crashed);
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to do"));
}

/// Start `recipe train` on the resumable recipe and wait for its first checkpoint.
fn training_child(path: &Path, runs: &Path) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_recipe"))
        .args(["train", path.to_str().unwrap(), "--runs"])
        .arg(runs)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_checkpoint(runs);
    child
}

fn signal(child: &std::process::Child, name: &str) {
    let kill = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let path = resumable_recipe(dir.path());
    let runs = dir.path().join("runs");
    let child = training_child(&path, &runs);
    signal(&child, "INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted; checkpoint at step"));
}

#[test]
fn sigterm_writes_a_checkpoint_and_exits_143_then_train_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let path = resumable_recipe(dir.path());
    let runs = dir.path().join("runs");
    let child = training_child(&path, &runs);
    signal(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("terminated: writing a checkpoint"), "{stderr}");
    let st = recipe(&["status", path.to_str().unwrap()], &runs);
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(text.contains("partial") && text.contains("to go at the recent pace"), "{text}");
    assert!(text.chars().any(|c| ('▁'..='█').contains(&c)), "a loss sparkline: {text}");
    let sample = ["sample", path.to_str().unwrap(), "--stage", "pretrain", "--prompt", "The", "--max-tokens", "4"];
    let partial = recipe(&sample, &runs);
    assert!(partial.status.success(), "{}", String::from_utf8_lossy(&partial.stderr));
    assert!(String::from_utf8_lossy(&partial.stderr).contains("still training: sampling its checkpoint"));
    let st = json(&recipe(&["status", path.to_str().unwrap(), "--json"], &runs));
    let stage = &st["stages"][2];
    assert!(!stage["recent_losses"].as_array().unwrap().is_empty() && stage["eta_s"].as_f64().unwrap() > 0.0, "{st}");
    let again = recipe(&["train", path.to_str().unwrap()], &runs);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("resuming"));
}

#[test]
fn a_second_train_on_the_same_run_directory_is_refused_while_status_still_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = resumable_recipe(dir.path());
    let p = path.to_str().unwrap();
    let runs = dir.path().join("runs");
    let child = training_child(&path, &runs);
    let second = recipe(&["train", p], &runs);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("is in use: process {} is running `recipe train`", child.id())), "{stderr}");
    let prepare = recipe(&["prepare", p], &runs);
    assert_eq!(prepare.status.code(), Some(1), "prepare writes too");
    let st = json(&recipe(&["status", p, "--json"], &runs));
    assert_eq!(st["stages"][2]["state"], "partial", "{st}");
    signal(&child, "INT");
    child.wait_with_output().unwrap();
    // The lock died with its holder.
    let after = recipe(&["train", p], &runs);
    assert!(after.status.success(), "{}", String::from_utf8_lossy(&after.stderr));
}

#[test]
fn a_non_finite_step_stops_the_stage_naming_it_or_is_skipped_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = resumable_recipe(dir.path());
    let p = path.to_str().unwrap();
    let runs = dir.path().join("runs");
    // A learning rate this large makes the first update overflow the next forward pass.
    let blown = recipe(&["train", p, "--set", "stages.pretrain.optim.lr=1e30"], &runs);
    let stderr = String::from_utf8_lossy(&blown.stderr);
    assert_eq!(blown.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("at step 2; nothing of that step was applied"), "{stderr}");
    assert!(stderr.contains("on_nonfinite = \"skip\""), "{stderr}");

    let sets = ["--set", "stages.pretrain.optim.lr=1e30", "--set", "stages.pretrain.on_nonfinite=\"skip\""];
    let skipped = recipe(&[&["train", p][..], &sets[..]].concat(), &runs);
    assert!(skipped.status.success(), "{}", String::from_utf8_lossy(&skipped.stderr));
    let node = std::fs::read_dir(runs.join("crash/pretrain"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("final").is_dir())
        .unwrap();
    let metrics = std::fs::read_to_string(node.join("metrics.jsonl")).unwrap();
    let last: Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 60);
    assert_eq!(last["skipped_steps"], 59, "every step after the first overflows: {last}");
}

#[test]
fn a_damaged_token_cache_is_rebuilt_not_trained_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = resumable_recipe(dir.path());
    let p = path.to_str().unwrap();
    let runs = dir.path().join("runs");
    assert!(recipe(&["prepare", p], &runs).status.success());
    let key = std::fs::read_dir(runs.join("crash/_tokens/moby")).unwrap().next().unwrap().unwrap().path();
    let tokens = key.join("final/tokens.bin");
    let good = std::fs::read(&tokens).unwrap();
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 1;
    std::fs::write(&tokens, flipped).unwrap();
    let again = recipe(&["prepare", p], &runs);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(
        stderr.contains("rebuilt, the cache was damaged") && stderr.contains("does not match its checksum"),
        "{stderr}"
    );
    assert!(std::fs::read(&tokens).unwrap() == good, "the rebuilt cache is the original");
}

#[test]
fn sample_reads_a_checkpoint_as_well_as_a_stage() {
    let dir = tempfile::tempdir().unwrap();
    let path = resumable_recipe(dir.path());
    let p = path.to_str().unwrap();
    let runs = dir.path().join("runs");
    assert!(recipe(&["train", p], &runs).status.success());
    let greedy = ["--prompt", "The whale", "--max-tokens", "8", "--temperature", "0"];
    let from_stage = recipe(&[&["sample", p, "--stage", "pretrain"][..], &greedy[..]].concat(), &runs);
    let final_dir =
        std::fs::read_dir(runs.join("crash/pretrain")).unwrap().next().unwrap().unwrap().path().join("final");
    let model = final_dir.to_str().unwrap();
    let from_folder = recipe(&[&["sample", "--model", model][..], &greedy[..]].concat(), &runs);
    assert!(from_folder.status.success(), "{}", String::from_utf8_lossy(&from_folder.stderr));
    assert_eq!(from_folder.stdout, from_stage.stdout, "the same weights say the same");
    // The same folder as a model in the Hugging Face cache, named by its hub id.
    let hub = dir.path().join("hub");
    let repo = hub.join("models--test-org--whale");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    std::fs::create_dir_all(repo.join("snapshots")).unwrap();
    std::fs::rename(&final_dir, repo.join("snapshots/0123abcd")).unwrap();
    let with_cache = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_recipe"));
        command.args(args).arg("--runs").arg(&runs).env("HF_HUB_CACHE", &hub).current_dir(dir.path()).output().unwrap()
    };
    let from_hub = with_cache(&[&["sample", "--model", "test-org/whale"][..], &greedy[..]].concat());
    assert!(from_hub.status.success(), "{}", String::from_utf8_lossy(&from_hub.stderr));
    assert_eq!(from_hub.stdout, from_stage.stdout, "a hub id names the cached snapshot");
    let importing = "[tokenizer]\npath = \"test-org/whale\"\n[sources.moby]\npath = \"x.txt\"\n\
                     [stages.more]\nkind = \"pretrain\"\nsteps = 2\nseq_len = 16\ndata = { mix = { moby = 1 } }\n\
                     model = { from = \"test-org/whale\" }\n";
    std::fs::write(dir.path().join("x.txt"), "Call me Ishmael.").unwrap();
    std::fs::write(dir.path().join("more.toml"), importing).unwrap();
    let plan = with_cache(&["plan", "more.toml"]);
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    assert!(String::from_utf8_lossy(&plan.stdout).contains("test-org/whale"));
    let neither = recipe(&["sample", "--prompt", "x"], &runs);
    assert_eq!(neither.status.code(), Some(2));
    let nothing = recipe(&["sample", "--model", dir.path().to_str().unwrap(), "--prompt", "x"], &runs);
    assert_eq!(nothing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&nothing.stderr).contains("has no config.json"),
        "{}",
        String::from_utf8_lossy(&nothing.stderr)
    );
}

#[test]
fn runs_lists_run_directories_and_gc_removes_only_what_no_current_key_uses() {
    let dir = tempfile::tempdir().unwrap();
    let path = resumable_recipe(dir.path());
    let p = path.to_str().unwrap();
    let runs = dir.path().join("runs");
    assert!(recipe(&["train", p, "--set", "stages.pretrain.steps=6"], &runs).status.success());
    assert!(recipe(&["train", p, "--set", "stages.pretrain.steps=8"], &runs).status.success());
    let listed = json(&recipe(&["runs", "--json"], &runs));
    assert_eq!(listed["runs"][0]["name"], "crash");
    assert!(listed["runs"][0]["bytes"].as_u64().unwrap() > 0);
    let nodes: Vec<&str> =
        listed["runs"][0]["nodes"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(nodes, ["pretrain", "tokenize:moby", "tokenizer:train"]);
    let keys = || std::fs::read_dir(runs.join("crash/pretrain")).unwrap().count();
    assert_eq!(keys(), 2, "one result per key");

    let dry = recipe(&["gc", p, "--set", "stages.pretrain.steps=8"], &runs);
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success() && text.contains("would remove") && text.contains("1 unreferenced results"), "{text}");
    assert_eq!(keys(), 2, "a dry run deletes nothing");
    let done = recipe(&["gc", p, "--set", "stages.pretrain.steps=8", "--yes"], &runs);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(keys(), 1);
    let st = json(&recipe(&["status", p, "--json", "--set", "stages.pretrain.steps=8"], &runs));
    assert!(st["stages"].as_array().unwrap().iter().all(|s| s["state"] == "done"), "{st}");
}

#[test]
fn recipe_new_writes_starters_that_validate_and_train() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    for kind in ["pretrain", "sft", "lora", "dpo", "distill"] {
        let name = format!("my-{kind}");
        let out = recipe(&["new", kind, &name, "--dir", dir.path().to_str().unwrap()], &runs);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let path = dir.path().join(format!("{name}.toml"));
        let smoke = recipe(&["smoke", path.to_str().unwrap()], &runs);
        assert!(smoke.status.success(), "{kind}: {}", String::from_utf8_lossy(&smoke.stderr));
    }
    let again = recipe(&["new", "sft", "my-sft", "--dir", dir.path().to_str().unwrap()], &runs);
    assert_eq!(again.status.code(), Some(2), "an existing recipe is not overwritten");
    let bad = recipe(&["new", "sft", "../up", "--dir", dir.path().to_str().unwrap()], &runs);
    assert_eq!(bad.status.code(), Some(2));
}

/// `recipe new KIND --from CHECKPOINT`: each kind over a trained model's folder validates,
/// takes the checkpoint's tokenizer and chat template, and trains.
#[test]
fn recipe_new_from_a_checkpoint_writes_starters_that_train() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let chat_stage = r#"
[sources.chat]
path = "chat.jsonl"
format = "chat-jsonl"
[stages.pretrain]
kind = "pretrain"
steps = 4
seq_len = 32
batch_size = 4
data = { mix = { moby = 1 } }
"#;
    let chat = r#"{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello."}]}"#;
    std::fs::write(dir.path().join("chat.jsonl"), chat).unwrap();
    let base = common::small_recipe(dir.path(), "base", "chapter_1.txt", chat_stage);
    assert!(recipe(&["train", base.to_str().unwrap()], &runs).status.success());
    let trained = std::fs::read_dir(runs.join("base/pretrain")).unwrap().next().unwrap().unwrap().path().join("final");
    let out_dir = dir.path().join("starters");
    for kind in ["pretrain", "sft", "lora", "dpo", "distill"] {
        let name = format!("from-{kind}");
        let args = ["new", kind, &name, "--dir", out_dir.to_str().unwrap(), "--from", trained.to_str().unwrap()];
        let out = recipe(&args, &runs);
        assert!(out.status.success(), "{kind}: {}", String::from_utf8_lossy(&out.stderr));
        let path = out_dir.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("path = \"{}\"", trained.display())), "{kind}: the checkpoint's tokenizer");
        if kind == "lora" {
            assert!(text.contains("template = \"chatml\""), "the trained tokenizer has ChatML's tokens");
        }
        let smoke = recipe(&["smoke", path.to_str().unwrap()], &runs);
        assert!(smoke.status.success(), "{kind}: {}", String::from_utf8_lossy(&smoke.stderr));
    }
    let nowhere = recipe(&["new", "lora", "x", "--dir", out_dir.to_str().unwrap(), "--from", "no-org/no-model"], &runs);
    assert_eq!(nowhere.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("nor a model by that id in the Hugging Face cache"));
}

#[test]
fn tensorboard_reads_the_event_files_train_writes() {
    let reader = root().join("assets/tensorboard-py");
    assert!(reader.is_dir(), "{} is missing: run scripts/fetch-assets.sh", reader.display());
    let dir = tempfile::tempdir().unwrap();
    let path = resumable_recipe(dir.path());
    let runs = dir.path().join("runs");
    let out = recipe(&["train", path.to_str().unwrap(), "--tensorboard", "--set", "stages.pretrain.steps=12"], &runs);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let script = r#"
import glob, json, sys
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util import tensor_util
out = {}
for path in glob.glob(sys.argv[1] + "/pretrain/events.out.tfevents.*"):
    for event in EventFileLoader(path).Load():
        for v in event.summary.value:
            out.setdefault(v.tag, []).append([event.step, float(tensor_util.make_ndarray(v.tensor))])
print(json.dumps(out))
"#;
    let read = Command::new("python3")
        .args(["-c", script])
        .arg(runs.join("crash/_tensorboard"))
        .env("PYTHONPATH", &reader)
        .output()
        .unwrap();
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    let events: Value = serde_json::from_slice(&read.stdout).unwrap();
    let metrics = std::fs::read_to_string(
        std::fs::read_dir(runs.join("crash/pretrain")).unwrap().next().unwrap().unwrap().path().join("metrics.jsonl"),
    )
    .unwrap();
    let losses: Vec<(u64, f64)> = metrics
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect();
    let logged = events["train/loss"].as_array().unwrap();
    assert_eq!(logged.len(), 12, "{events}");
    for ((step, loss), event) in losses.iter().zip(logged) {
        assert_eq!(event[0].as_u64(), Some(*step));
        assert_eq!(event[1].as_f64(), Some(*loss as f32 as f64), "step {step}");
    }
    assert_eq!(events["train/lr"].as_array().unwrap().len(), 12);
}

#[test]
fn train_asks_for_a_device_this_build_has() {
    let runs = tempfile::tempdir().unwrap();
    if !cfg!(feature = "cuda") {
        let out = recipe(&["train", "recipes/quickstart.toml", "--device", "cuda:0"], runs.path());
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no CUDA support"));
    }
    let out = recipe(&["train", "recipes/quickstart.toml", "--device", "tpu"], runs.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected cpu, cuda, cuda:N"));
    assert!(!runs.path().join("quickstart").exists(), "nothing ran");
}

#[test]
fn export_writes_a_hugging_face_directory_that_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = resumable_recipe(dir.path());
    let p = path.to_str().unwrap();
    let runs = dir.path().join("runs");
    let out = dir.path().join("exported");
    let early = recipe(&["export", p, "--stage", "pretrain", "--out", out.to_str().unwrap()], &runs);
    assert_eq!(early.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&early.stderr).contains("has no result for its current key"));
    assert!(recipe(&["train", p], &runs).status.success());
    let done = recipe(&["export", p, "--stage", "pretrain", "--out", out.to_str().unwrap()], &runs);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let config: Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["hidden_size"], 32);
    assert_eq!(config["num_key_value_heads"], 4);
    assert_eq!(config["torch_dtype"], "float32");
    let (_, weights) = losses(&runs);
    assert!(std::fs::read(out.join("model.safetensors")).unwrap() == weights);
    assert!(out.join("tokenizer.json").is_file());
    let again = recipe(&["export", p, "--stage", "pretrain", "--out", out.to_str().unwrap()], &runs);
    assert_eq!(again.status.code(), Some(2), "a folder that holds anything is not written over");
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"));
    let forced = recipe(&["export", p, "--stage", "pretrain", "--out", out.to_str().unwrap(), "--force"], &runs);
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));

    // Any dtype on request: every tensor is the f32 weight rounded, and config.json says so.
    for (dtype, torch) in [("bf16", "bfloat16"), ("f16", "float16")] {
        let half = dir.path().join(dtype);
        let done =
            recipe(&["export", p, "--stage", "pretrain", "--out", half.to_str().unwrap(), "--dtype", dtype], &runs);
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
        let config: Value = serde_json::from_slice(&std::fs::read(half.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["torch_dtype"], torch);
        let cpu = candle_core::Device::Cpu;
        let full = candle_core::safetensors::load(out.join("model.safetensors"), &cpu).unwrap();
        let rounded = candle_core::safetensors::load(half.join("model.safetensors"), &cpu).unwrap();
        assert_eq!(full.len(), rounded.len());
        for (name, t) in &rounded {
            let want = full[name].to_dtype(t.dtype()).unwrap().to_dtype(candle_core::DType::F32).unwrap();
            let got = t.to_dtype(candle_core::DType::F32).unwrap();
            let diff = (want - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "{name} in {dtype}");
        }
    }
    let bad = recipe(&["export", p, "--stage", "pretrain", "--out", out.to_str().unwrap(), "--dtype", "f8"], &runs);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn a_lora_stage_exports_merged_or_as_a_peft_adapter_and_samples_in_chatml() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(resumable_recipe(dir.path())).unwrap().replace("steps = 60", "steps = 8");
    let text = format!(
        "{base}[stages.tune]\nkind = \"sft\"\nafter = \"pretrain\"\nsteps = 4\nseq_len = 32\nbatch_size = 4\n\
         data = {{ mix = {{ moby = 1 }}, loss_on = \"all\" }}\npeft = {{ rank = 4, alpha = 8, targets = [\"q_proj\", \"up_proj\"] }}\n"
    );
    let path = dir.path().join("lora.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap();
    let runs = dir.path().join("runs");
    assert!(recipe(&["train", p], &runs).status.success());

    let merged = dir.path().join("merged");
    let out = recipe(&["export", p, "--stage", "tune", "--out", merged.to_str().unwrap()], &runs);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(merged.join("model.safetensors").is_file() && !merged.join("adapter_config.json").exists());
    // Generation stops at the end of a document or of a ChatML answer.
    let config: Value = serde_json::from_slice(&std::fs::read(merged.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["eos_token_id"], serde_json::json!([0, 2]));

    let adapter = dir.path().join("adapter");
    let out = recipe(&["export", p, "--stage", "tune", "--out", adapter.to_str().unwrap(), "--adapter"], &runs);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: Value = serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["peft_type"].as_str(), config["r"].as_u64()), (Some("LORA"), Some(4)));
    assert_eq!(config["target_modules"], serde_json::json!(["q_proj", "up_proj"]));
    assert!(adapter.join("adapter_model.safetensors").is_file() && !adapter.join("model.safetensors").exists());

    let refused = recipe(&["export", p, "--stage", "pretrain", "--out", adapter.to_str().unwrap(), "--adapter"], &runs);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("has no adapter to export"));

    // The trained tokenizer has the ChatML tokens, so the chat template applies.
    let sample = ["sample", p, "--stage", "tune", "--chat", "--prompt", "Hello", "--temperature", "0"];
    let out = recipe(&sample, &runs);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let with_system = recipe(&[&sample[..], &["--system", "Answer in one word."][..]].concat(), &runs);
    assert!(with_system.status.success(), "{}", String::from_utf8_lossy(&with_system.stderr));
    let without_chat = recipe(&["sample", p, "--stage", "tune", "--system", "x", "--prompt", "y"], &runs);
    assert_eq!(without_chat.status.code(), Some(2), "--system needs --chat");

    // The base model with the adapter on it says what the stage says (the same arithmetic).
    let base_dir = dir.path().join("base");
    let out = recipe(&["export", p, "--stage", "pretrain", "--out", base_dir.to_str().unwrap()], &runs);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let greedy = ["--prompt", "The whale", "--max-tokens", "12", "--temperature", "0"];
    let with_adapter = ["sample", "--model", base_dir.to_str().unwrap(), "--adapter", adapter.to_str().unwrap()];
    let out = recipe(&[&with_adapter[..], &greedy[..]].concat(), &runs);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let from_stage = recipe(&[&["sample", p, "--stage", "tune"][..], &greedy[..]].concat(), &runs);
    assert_eq!(out.stdout, from_stage.stdout);
    let misfit = recipe(
        &[&["sample", "--model", merged.to_str().unwrap(), "--adapter", base_dir.to_str().unwrap()][..], &greedy[..]]
            .concat(),
        &runs,
    );
    assert_eq!(misfit.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&misfit.stderr).contains("cannot apply adapter"));
}

/// `template = "tokenizer"` over Qwen3's tokenizer and the template beside it: the stage trains
/// on conversations in that template, keeps it with its result, exports it (with the tokens it
/// names) for `apply_chat_template`, samples with it, and a change to it makes the data stale.
#[test]
fn a_chat_source_in_the_tokenizers_own_template_trains_exports_and_samples() {
    let qwen3 = root().join("assets/qwen3");
    assert!(qwen3.join("tokenizer_config.json").is_file(), "run scripts/fetch-assets.sh");
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = dir.path().join("qwen3");
    std::fs::create_dir(&tokenizer).unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(qwen3.join(file), tokenizer.join(file)).unwrap();
    }
    let chat = (0..24)
        .map(|i| {
            let turn = |role: &str, content: String| serde_json::json!({"role": role, "content": content});
            let messages = [turn("user", format!("What is {i} plus one?")), turn("assistant", format!("{}.", i + 1))];
            serde_json::json!({ "messages": messages }).to_string() + "\n"
        })
        .collect::<String>();
    std::fs::write(dir.path().join("chat.jsonl"), chat).unwrap();
    let text = r#"
[recipe]
name = "own-template"
[model]
d_model = 32
n_layers = 2
n_heads = 4
d_ff = 64
max_seq_len = 64
[tokenizer]
path = "qwen3/tokenizer.json"
[sources.chat]
path = "chat.jsonl"
format = "chat-jsonl"
template = "tokenizer"
[stages.sft]
kind = "sft"
steps = 3
seq_len = 64
batch_size = 4
data = { mix = { chat = 1.0 }, loss_on = "assistant" }
"#;
    let path = dir.path().join("own.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap();
    let runs = dir.path().join("runs");
    let out = recipe(&["train", p], &runs);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let exported = dir.path().join("exported");
    let out = recipe(&["export", p, "--stage", "sft", "--out", exported.to_str().unwrap()], &runs);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Value = serde_json::from_slice(&std::fs::read(qwen3.join("tokenizer_config.json")).unwrap()).unwrap();
    let ours: Value = serde_json::from_slice(&std::fs::read(exported.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(ours["chat_template"], theirs["chat_template"]);
    assert_eq!((ours["eos_token"].as_str(), ours["pad_token"].as_str()), (Some("<|im_end|>"), Some("<|endoftext|>")));
    let config: Value = serde_json::from_slice(&std::fs::read(exported.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["eos_token_id"], serde_json::json!([151643, 151645]), "<|endoftext|>, then <|im_end|>");

    let sample =
        ["sample", p, "--stage", "sft", "--chat", "--template", "tokenizer", "--prompt", "Hi", "--max-tokens", "4"];
    let out = recipe(&sample, &runs);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The template is part of what the conversations' ids depend on.
    std::fs::write(
        tokenizer.join("chat_template.jinja"),
        "{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}",
    )
    .unwrap();
    let status = json(&recipe(&["status", p, "--json"], &runs));
    assert_eq!(status["stages"][0]["state"], "stale", "{status}");
}

/// `--out X.gguf` writes the merged model as one llama.cpp file (checked by hand against
/// llama.cpp 0.3.36 through llama-cpp-python: SmolLM2's logits within 5.3e-5 of `transformers`
/// on the Hugging Face export): f32, f16, q8_0 or q4_k matrices, vectors in f32, the tokenizer and
/// the chat template in its metadata; sampled from, it says what the stage says.
#[test]
fn a_stage_exports_as_one_gguf_file_that_samples_as_the_stage_does() {
    use candle_core::quantized::{GgmlDType, gguf_file};
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(resumable_recipe(dir.path())).unwrap().replace("steps = 60", "steps = 8");
    let path = dir.path().join("gguf.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap();
    let runs = dir.path().join("runs");
    assert!(recipe(&["train", p], &runs).status.success());
    // q4_k's blocks are 256 values, more than a row here holds: q8_0, as llama.cpp falls back.
    let dtypes =
        [("f32", GgmlDType::F32), ("f16", GgmlDType::F16), ("q8_0", GgmlDType::Q8_0), ("q4_k", GgmlDType::Q8_0)];
    for (dtype, stored) in dtypes {
        let out = dir.path().join(format!("model-{dtype}.gguf"));
        let done =
            recipe(&["export", p, "--stage", "pretrain", "--out", out.to_str().unwrap(), "--dtype", dtype], &runs);
        assert!(done.status.success(), "{dtype}: {}", String::from_utf8_lossy(&done.stderr));
        let content = gguf_file::Content::read(&mut std::fs::File::open(&out).unwrap()).unwrap();
        let text = |key: &str| content.metadata[key].to_string().unwrap().clone();
        assert_eq!((text("general.architecture"), text("tokenizer.ggml.pre")), ("llama".into(), "gpt-2".into()));
        assert!(text("tokenizer.chat_template").contains("<|im_start|>"), "the trained tokenizer has ChatML's tokens");
        assert_eq!(content.tensor_infos["blk.1.ffn_down.weight"].ggml_dtype, stored, "{dtype}");
        assert_eq!(content.tensor_infos["blk.1.ffn_norm.weight"].ggml_dtype, GgmlDType::F32, "{dtype}");
    }
    let greedy = ["--prompt", "The whale", "--max-tokens", "12", "--temperature", "0"];
    let gguf = dir.path().join("model-f32.gguf");
    let from_file = recipe(&[&["sample", "--model", gguf.to_str().unwrap()][..], &greedy[..]].concat(), &runs);
    assert!(from_file.status.success(), "{}", String::from_utf8_lossy(&from_file.stderr));
    let from_stage = recipe(&[&["sample", p, "--stage", "pretrain"][..], &greedy[..]].concat(), &runs);
    assert_eq!(from_file.stdout, from_stage.stdout);

    let again = recipe(&["export", p, "--stage", "pretrain", "--out", gguf.to_str().unwrap()], &runs);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists; pass --force"));
    let adapter = recipe(&["export", p, "--stage", "pretrain", "--out", "x.gguf", "--adapter"], &runs);
    assert_eq!(adapter.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&adapter.stderr).contains("a .gguf holds the merged model"));
}
