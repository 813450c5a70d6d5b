//! Exact resume: N steps straight, and k steps + interrupt + resume to N, give bit-identical
//! per-step losses and final weights — for pretraining, a continued stage, DoRA (LoRA plus
//! magnitudes) with adapter dropout, and distillation from an ensemble of two teachers; a damaged newest checkpoint
//! falls back to the previous.

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::execute_until;
use recipe_checkpoint::Headers;
use recipe_graph::{Graph, RunDir};
use recipe_run::NodeReport;
use recipe_spec::Recipe;

mod common;

fn recipe(dir: &Path) -> Recipe {
    recipe_with(dir, &[])
}

/// The test recipe with `--set` overrides.
fn recipe_with(dir: &Path, sets: &[String]) -> Recipe {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/moby-dick");
    let text = format!(
        r#"
[recipe]
name = "resume"
seed = 9
[model]
d_model = 32
n_layers = 2
n_heads = 4
n_kv_heads = 2
d_ff = 64
max_seq_len = 32
[tokenizer]
train = {{ vocab_size = 400 }}
[sources.moby]
path = "{}/chapter_1*.txt"
holdout = 0.2
[stages.pretrain]
kind = "pretrain"
steps = 12
seq_len = 32
batch_size = 4
micro_batch_size = 2
data = {{ mix = {{ moby = 1 }} }}
optim = {{ lr = 1e-2 }}
schedule = {{ kind = "cosine", warmup = 2 }}
checkpoint_every = 3
keep_checkpoints = 2
eval = {{ every = 4, batches = 1 }}
[stages.more]
kind = "pretrain"
after = "pretrain"
steps = 6
seq_len = 32
batch_size = 4
data = {{ mix = {{ moby = 1 }} }}
[stages.tune]
kind = "sft"
after = "pretrain"
steps = 6
seq_len = 32
batch_size = 4
micro_batch_size = 2
data = {{ mix = {{ moby = 1 }}, loss_on = "all" }}
peft = {{ method = "dora", rank = 2, alpha = 4, dropout = 0.1, targets = ["q_proj", "v_proj", "down_proj"] }}
optim = {{ lr = 1e-2 }}
checkpoint_every = 2
[stages.student]
kind = "distill"
teacher = ["pretrain", "tune"]
model = {{ d_model = 16, n_layers = 1, n_heads = 2, n_kv_heads = 1, d_ff = 32 }}
distill = {{ loss = "jsd", temperature = 2.0, alpha = 0.7 }}
steps = 6
seq_len = 32
batch_size = 4
data = {{ mix = {{ moby = 1 }} }}
checkpoint_every = 2
"#,
        data.display()
    );
    Recipe::parse(&dir.join("r.toml"), &text, sets, &Headers).unwrap_or_else(|e| panic!("{e}"))
}

fn train(runs: &Path, stop_at: Option<(&str, u64)>) -> Vec<(String, NodeReport)> {
    train_with(runs, stop_at, &[], None)
}

/// Train what `only` needs (or everything) of the recipe with `sets`.
fn train_with(
    runs: &Path,
    stop_at: Option<(&str, u64)>,
    sets: &[String],
    only: Option<&str>,
) -> Vec<(String, NodeReport)> {
    execute_until(&recipe_with(runs, sets), runs, stop_at, only)
}

/// (step, loss, lr, grad_norm, eval_loss) per line of a stage's metrics, and its final weights.
fn results(runs: &Path, stage: &str) -> (Vec<String>, Vec<u8>) {
    results_with(runs, stage, &[])
}

fn results_with(runs: &Path, stage: &str, sets: &[String]) -> (Vec<String>, Vec<u8>) {
    let r = recipe_with(runs, sets);
    let graph = Graph::build(&r).unwrap();
    let run = RunDir::new(runs, &r.name);
    let node = graph.node(stage).unwrap();
    let metrics = std::fs::read_to_string(run.node_dir(node).join("metrics.jsonl")).unwrap();
    let lines = metrics
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let (step, loss, lr, norm, eval) = (&v["step"], &v["loss"], &v["lr"], &v["grad_norm"], &v["eval_loss"]);
            format!("{step} {loss} {lr} {norm} {eval} {} {}", v["loss_scale"], v["skipped_steps"])
        })
        .collect();
    (lines, std::fs::read(run.final_dir(node).join("model.safetensors")).unwrap())
}

fn checkpoints(runs: &Path, stage: &str) -> PathBuf {
    let r = recipe(runs);
    let graph = Graph::build(&r).unwrap();
    RunDir::new(runs, &r.name).checkpoints_dir(graph.node(stage).unwrap())
}

#[test]
fn interrupted_and_resumed_training_is_bit_identical() {
    let straight = tempfile::tempdir().unwrap();
    train(straight.path(), None);

    let resumed = tempfile::tempdir().unwrap();
    let first = train(resumed.path(), Some(("pretrain", 5)));
    assert_eq!(first.last().unwrap(), &("pretrain".to_string(), NodeReport::Interrupted(5)));
    let second = train(resumed.path(), Some(("more", 2)));
    assert_eq!(second.last().unwrap(), &("more".to_string(), NodeReport::Interrupted(2)));
    let third = train(resumed.path(), Some(("tune", 3)));
    assert_eq!(third[2], ("pretrain".to_string(), NodeReport::Skipped));
    assert_eq!(third.last().unwrap(), &("tune".to_string(), NodeReport::Interrupted(3)));
    // A DoRA checkpoint holds the adapters only (A, B and the magnitudes of 3 projections in 2
    // layers): the base weights come from `pretrain` again.
    let newest = checkpoints(resumed.path(), "tune").join("step-000003/model.safetensors");
    let saved = candle_core::safetensors::load(newest, &Device::Cpu).unwrap();
    assert_eq!(saved.len(), 3 * 2 * 3);
    assert!(saved.keys().all(|name| name.contains(".lora_")), "{:?}", saved.keys());
    let fourth = train(resumed.path(), Some(("student", 4)));
    assert_eq!(fourth.last().unwrap(), &("student".to_string(), NodeReport::Interrupted(4)));
    train(resumed.path(), None);

    for stage in ["pretrain", "more", "tune", "student"] {
        let (a, wa) = results(straight.path(), stage);
        let (b, wb) = results(resumed.path(), stage);
        let trained = a.iter().filter(|l| l.split(' ').nth(1) != Some("null")).count();
        assert_eq!(trained, recipe(straight.path()).stage(stage).unwrap().steps as usize);
        assert_eq!(a, b, "{stage}: per-step metrics differ after resume");
        assert!(wa == wb, "{stage}: final weights differ after resume");
    }
    // Only the newest `keep_checkpoints` remain: after the resume from step 5, steps 6 and 9.
    let mut kept: Vec<String> = std::fs::read_dir(checkpoints(resumed.path(), "pretrain"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    kept.sort();
    assert_eq!(kept, ["step-000006", "step-000009"]);

    // A second run does no work.
    let again = train(resumed.path(), None);
    assert!(again.iter().all(|(_, r)| *r == NodeReport::Skipped), "{again:?}");
}

#[test]
fn a_damaged_checkpoint_falls_back_to_the_previous_one() {
    let straight = tempfile::tempdir().unwrap();
    train(straight.path(), None);

    let runs = tempfile::tempdir().unwrap();
    train(runs.path(), Some(("pretrain", 7)));
    let ckpts = checkpoints(runs.path(), "pretrain");
    // Checkpoints at 6 (periodic) and 7 (interrupt); tear the newest.
    let newest = ckpts.join("step-000007");
    assert!(newest.is_dir() && ckpts.join("step-000006").is_dir());
    let model = newest.join("model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    std::fs::write(&model, bytes).unwrap();
    train(runs.path(), None);
    for stage in ["pretrain", "more"] {
        assert_eq!(results(straight.path(), stage), results(runs.path(), stage), "{stage}");
    }
}

#[test]
fn every_precision_trains_and_resumes_bit_identically() {
    for precision in ["bf16-mixed", "f16-mixed", "bf16"] {
        let sets: Vec<String> =
            ["pretrain", "tune"].iter().map(|s| format!("stages.{s}.precision=\"{precision}\"")).collect();
        let straight = tempfile::tempdir().unwrap();
        train_with(straight.path(), None, &sets, Some("tune"));
        let resumed = tempfile::tempdir().unwrap();
        let first = train_with(resumed.path(), Some(("pretrain", 4)), &sets, Some("tune"));
        assert_eq!(first.last().unwrap(), &("pretrain".to_string(), NodeReport::Interrupted(4)), "{precision}");
        let second = train_with(resumed.path(), Some(("tune", 3)), &sets, Some("tune"));
        assert_eq!(second.last().unwrap(), &("tune".to_string(), NodeReport::Interrupted(3)), "{precision}");
        train_with(resumed.path(), None, &sets, Some("tune"));
        for stage in ["pretrain", "tune"] {
            let (a, wa) = results_with(straight.path(), stage, &sets);
            let (b, wb) = results_with(resumed.path(), stage, &sets);
            assert_eq!(a, b, "{precision} {stage}: per-step metrics differ after resume");
            assert!(wa == wb, "{precision} {stage}: final weights differ after resume");
            // The loss scaler is reported on f16 stages only.
            assert_eq!(a[1].contains(" null null"), precision != "f16-mixed", "{precision}: {}", a[1]);
        }
        // The held-out loss falls in every precision.
        let (lines, _) = results_with(straight.path(), "pretrain", &sets);
        let evals: Vec<f64> = lines.iter().filter_map(|l| l.split(' ').nth(4)?.parse().ok()).collect();
        assert!(evals.last() < evals.first(), "{precision}: eval loss {evals:?}");
    }
}
