//! Recipes that act on weights: frozen weights leave a stage bit for bit as they came, in
//! every precision, and hold no gradient and no optimizer state.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use recipe_checkpoint::Headers;
use recipe_graph::{Graph, RunDir};
use recipe_run::{Hooks, execute};
use recipe_spec::Recipe;
use recipe_train::{Observer, StepMetrics};

fn recipe(dir: &Path, tail: &str, sets: &[String]) -> Recipe {
    parse(dir, tail, sets).unwrap_or_else(|e| panic!("{e}"))
}

/// A pretraining stage, then `tail` (stage tables) after it; an invalid one as its errors.
fn parse(dir: &Path, tail: &str, sets: &[String]) -> Result<Recipe, String> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/moby-dick");
    let text = format!(
        r#"
[recipe]
name = "weights"
seed = 5
[model]
d_model = 32
n_layers = 3
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
steps = 8
seq_len = 32
batch_size = 4
data = {{ mix = {{ moby = 1 }} }}
optim = {{ lr = 1e-2 }}
{tail}"#,
        data.display()
    );
    Recipe::parse(&dir.join("r.toml"), &text, sets, &Headers).map_err(|e| e.to_string())
}

struct Quiet;

impl Observer for Quiet {
    fn start(&self, _: &str, _: u64, _: u64) {}
    fn step(&self, _: &StepMetrics) {}
    fn message(&self, _: &str) {}
    fn finish(&self) {}
}

fn train(r: &Recipe, runs: &Path) -> RunDir {
    let graph = Graph::build(r).unwrap();
    let run = RunDir::new(runs, &r.name);
    let flag = AtomicBool::new(false);
    let hooks = Hooks { interrupt: &flag, observer: &Quiet, data_progress: &recipe_data::Silent };
    execute(r, &graph, &run, None, &Device::Cpu, &hooks).unwrap();
    run
}

fn node_dir(r: &Recipe, run: &RunDir, stage: &str) -> PathBuf {
    run.node_dir(Graph::build(r).unwrap().node(stage).unwrap())
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn frozen_weights_leave_training_unchanged_and_hold_no_optimizer_state() {
    for precision in ["f32", "bf16-mixed"] {
        let dir = tempfile::tempdir().unwrap();
        let tail = r#"
[stages.partial]
kind = "pretrain"
after = "pretrain"
steps = 6
seq_len = 32
batch_size = 4
data = { mix = { moby = 1 } }
optim = { lr = 1e-2 }
freeze = ["embed_tokens", "layers.0-1.self_attn", "layers.2", "norm"]
checkpoint_every = 4
"#;
        let r = recipe(dir.path(), tail, &[format!("stages.partial.precision=\"{precision}\"")]);
        let stage = r.stage("partial").unwrap();
        let run = train(&r, dir.path());
        let before = tensors(&node_dir(&r, &run, "pretrain").join("final/model.safetensors"));
        let after = tensors(&node_dir(&r, &run, "partial").join("final/model.safetensors"));
        let (mut frozen, mut trained) = (0, 0);
        for (name, _, _) in stage.model.layout() {
            let same = bits(&before[&name]) == bits(&after[&name]);
            if stage.freeze.freezes(&name) {
                assert!(same, "{precision}: {name} is frozen, yet changed");
                frozen += 1;
            } else {
                assert!(!same, "{precision}: {name} trains, yet did not change");
                trained += 1;
            }
        }
        // Frozen: embed_tokens (the tied head too), 2 × 4 attention projections, layer 2's 9
        // weights, the final norm; trained: layers 0 and 1's norms and MLPs.
        assert_eq!((frozen, trained), (19, 10), "{precision}");

        let checkpoint = node_dir(&r, &run, "partial").join("checkpoints/step-000004");
        let state = tensors(&checkpoint.join("optimizer.safetensors"));
        let saved = tensors(&checkpoint.join("model.safetensors"));
        for (name, _, _) in stage.model.layout() {
            let frozen = stage.freeze.freezes(&name);
            assert_eq!(state.contains_key(&format!("m.{name}")), !frozen, "{precision}: moments of {name}");
            assert_eq!(saved.contains_key(&name), !frozen, "{precision}: {name} in the checkpoint");
        }
        let estimate = stage.estimate(&r);
        let trainable: usize = saved.values().map(|t| t.elem_count()).sum();
        assert_eq!(estimate.params_trainable, trainable as u64, "{precision}: plan counts what trains");
    }
}

#[test]
fn freeze_patterns_are_checked_against_the_stage_model() {
    let dir = tempfile::tempdir().unwrap();
    let check = |freeze: &str| {
        let tail = format!(
            "[stages.partial]\nkind = \"pretrain\"\nafter = \"pretrain\"\nsteps = 2\ndata = {{ mix = {{ moby = 1 }} }}\nfreeze = {freeze}\n"
        );
        parse(dir.path(), &tail, &[]).err().unwrap_or_default()
    };
    let typo = check(r#"["embed_token"]"#);
    assert!(typo.contains("`embed_token` freezes no weight") && typo.contains("did you mean `embed_tokens`"), "{typo}");
    let range = check(r#"["layers.3-4"]"#);
    assert!(range.contains("the model has layers 0 to 2"), "{range}");
    let reversed = check(r#"["layers.2-0"]"#);
    assert!(reversed.contains("is not a weight pattern"), "{reversed}");
    let everything = check(r#"["embed_tokens", "layers", "norm", "lm_head"]"#);
    assert!(everything.contains("nothing is left to train"), "{everything}");
}
