//! The `recipe` binary end to end: exit codes, JSON documents, and every shipped example.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

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
fn plan_json_has_the_documented_fields() {
    let runs = tempfile::tempdir().unwrap();
    let plan = json(&recipe(&["plan", "recipes/pipeline.toml", "--json"], runs.path()));
    assert_eq!(plan["recipe"], "pipeline");
    let stages = plan["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["pretrain", "sft", "distill"]);
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
    assert_eq!(invalidated, ["sft", "distill"]);

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
    let capacity = 300.0 * 16.0 * 129.0;
    assert_eq!(
        moby["tokens"].as_f64().unwrap(),
        (efficiency * capacity).round(),
        "the tokens in the rows, all from moby"
    );
    assert!(moby["epochs"].as_f64().unwrap() > 1.0);
}
