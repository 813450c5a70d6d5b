//! Recipes that act on weights: frozen weights leave a stage bit for bit as they came, in
//! every precision, and hold no gradient and no optimizer state; weight averaging (EMA, LAWA)
//! never changes training, resumes exactly, and gives the stage's result when asked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::{execute_until, trained};
use recipe_checkpoint::Headers;
use recipe_graph::{Graph, RunDir};
use recipe_spec::Recipe;

mod common;

fn recipe(dir: &Path, tail: &str, sets: &[String]) -> Recipe {
    parse(dir, tail, sets).unwrap_or_else(|e| panic!("{e}"))
}

/// A pretraining stage, then `tail` (stage tables) after it; an invalid one as its errors.
fn parse(dir: &Path, tail: &str, sets: &[String]) -> Result<Recipe, String> {
    parse_with(dir, "train = { vocab_size = 400 }", tail, sets)
}

/// Like [`parse`], with `tokenizer` as the `[tokenizer]` table's body.
fn parse_with(dir: &Path, tokenizer: &str, tail: &str, sets: &[String]) -> Result<Recipe, String> {
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
{tokenizer}
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

fn train(r: &Recipe, runs: &Path) -> RunDir {
    train_until(r, runs, None)
}

fn train_until(r: &Recipe, runs: &Path, stop_at: Option<(&str, u64)>) -> RunDir {
    execute_until(r, runs, stop_at, None);
    RunDir::new(runs, &r.name)
}

/// A stage's metrics lines and its final weights' bytes.
fn results(r: &Recipe, run: &RunDir, stage: &str) -> (Vec<serde_json::Value>, Vec<u8>) {
    let dir = node_dir(r, run, stage);
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let lines = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (lines, std::fs::read(dir.join("final/model.safetensors")).unwrap())
}

const TRAINED: &[&str] = &["step", "loss", "grad_norm", "eval_loss", "eval_loss_avg"];

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
        let source = node_dir(&r, &run, "pretrain").join("final");
        let model = recipe_train::build_model(stage, Some(&source), r.seed, &Device::Cpu).unwrap();
        assert!(
            model.params.iter().all(|p| !stage.freeze.freezes(&p.name)),
            "{precision}: a frozen weight is a variable"
        );
        assert_eq!(model.params.len(), trained, "{precision}: one variable, and so one gradient, per trained weight");
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

#[test]
fn weight_averaging_never_changes_training_resumes_exactly_and_gives_the_result() {
    for average in [r#"{ kind = "ema", decay = 0.9 }"#, r#"{ kind = "lawa", every = 2, window = 3 }"#] {
        let tail = format!(
            r#"
[stages.averaged]
kind = "pretrain"
after = "pretrain"
steps = 10
seq_len = 32
batch_size = 4
data = {{ mix = {{ moby = 1 }} }}
optim = {{ lr = 1e-2 }}
average = {average}
eval = {{ every = 5, batches = 2 }}
checkpoint_every = 3
"#
        );
        let raw = ["stages.averaged.average.use=\"raw\"".to_string()];
        let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let r = recipe(a.path(), &tail, &[]);
        let straight = results(&r, &train(&r, a.path()), "averaged");
        // Interrupted after step 7 (its checkpoint: 6 is the last before it), then resumed.
        let r = recipe(b.path(), &tail, &[]);
        train_until(&r, b.path(), Some(("averaged", 7)));
        let resumed = results(&r, &train(&r, b.path()), "averaged");
        assert_eq!(trained(&straight.0, TRAINED), trained(&resumed.0, TRAINED), "{average}: resumed metrics");
        assert!(straight.1 == resumed.1, "{average}: resumed result");
        // The same stage keeping its raw weights trains identically, and its result differs.
        let r = recipe(c.path(), &tail, &raw);
        let kept_raw = results(&r, &train(&r, c.path()), "averaged");
        let losses = |lines: &[serde_json::Value]| lines.iter().map(|l| l["loss"].to_string()).collect::<Vec<_>>();
        assert_eq!(losses(&straight.0), losses(&kept_raw.0), "{average}: averaging changed training");
        assert!(straight.1 != kept_raw.1, "{average}: the result is the average, not the raw weights");
        let evals: Vec<_> =
            straight.0.iter().filter(|l| l["eval_loss_avg"].is_number()).map(|l| l["step"].as_u64()).collect();
        assert_eq!(evals, [Some(5), Some(10)], "{average}");
    }
}

/// Each weight of `model` by name, as f32 bits.
fn weight_bits(model: &recipe_model::Llama) -> HashMap<String, Vec<u32>> {
    model.weights().unwrap().iter().map(|(n, t)| (n.clone(), bits(t))).collect()
}

/// `name` with its layer number replaced: `model.layers.4.x` → `model.layers.{to}.x`.
fn in_layer(name: &str, to: u32) -> String {
    let rest = name.strip_prefix("model.layers.").unwrap();
    format!("model.layers.{to}.{}", rest.split_once('.').unwrap().1)
}

#[test]
fn a_stacked_stage_starts_from_its_source_layers_repeated_and_trains() {
    let dir = tempfile::tempdir().unwrap();
    let tail = r#"
[stages.big]
kind = "pretrain"
init = { kind = "stack", from = "pretrain", factor = 2 }
steps = 4
seq_len = 32
batch_size = 4
data = { mix = { moby = 1 } }
"#;
    let r = recipe(dir.path(), tail, &[]);
    let big = r.stage("big").unwrap();
    assert_eq!(big.model.n_layers, 6, "3 layers stacked twice");
    assert_eq!(big.layer_map(), Some(vec![0, 1, 2, 0, 1, 2]));
    let run = train(&r, dir.path());
    let source = node_dir(&r, &run, "pretrain").join("final");
    let small = tensors(&source.join("model.safetensors"));
    let grown = recipe_train::build_model(big, Some(&source), r.seed, &Device::Cpu).unwrap();
    let grown = weight_bits(&grown);
    assert_eq!(grown.len(), 1 + 6 * 9 + 1);
    for (name, value) in &grown {
        let from = match name.strip_prefix("model.layers.") {
            Some(rest) => in_layer(name, rest.split('.').next().unwrap().parse::<u32>().unwrap() % 3),
            None => name.clone(),
        };
        assert_eq!(value, &bits(&small[&from]), "{name} starts as {from}");
    }
    let trained = tensors(&node_dir(&r, &run, "big").join("final/model.safetensors"));
    assert_eq!(trained.len(), grown.len());

    let bad = parse(dir.path(), &tail.replace("steps = 4", "steps = 4\nmodel = { n_layers = 5 }"), &[]).unwrap_err();
    assert!(bad.contains("grows `pretrain`'s weights but its n_layers is 5 where 6 is expected"), "{bad}");
    let both = parse(dir.path(), &tail.replace("steps = 4", "steps = 4\nafter = \"pretrain\""), &[]).unwrap_err();
    assert!(both.contains("has both `after` and `init`"), "{both}");
}

#[test]
fn a_stage_can_inherit_a_slice_of_a_larger_checkpoints_layers() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "", &[]);
    let run = train(&r, dir.path());
    let large = node_dir(&r, &run, "pretrain").join("final");
    let tail = format!(
        r#"
[stages.inherited]
kind = "pretrain"
model = {{ from = "{}", layers = "1-2" }}
steps = 4
seq_len = 32
batch_size = 4
data = {{ mix = {{ moby = 1 }} }}
"#,
        large.display()
    );
    let tokenizer = format!("path = \"{}\"", large.display());
    let r = parse_with(dir.path(), &tokenizer, &tail, &[]).unwrap();
    let stage = r.stage("inherited").unwrap();
    assert_eq!((stage.model.n_layers, stage.layer_map()), (2, Some(vec![1, 2])));
    let source = tensors(&large.join("model.safetensors"));
    let model = recipe_train::build_model(stage, None, r.seed, &Device::Cpu).unwrap();
    for (name, value) in weight_bits(&model) {
        let from = match name.strip_prefix("model.layers.") {
            Some(rest) => in_layer(&name, rest.split('.').next().unwrap().parse::<u32>().unwrap() + 1),
            None => name.clone(),
        };
        assert_eq!(value, bits(&source[&from]), "{name} starts as {from}");
    }
    train(&r, dir.path());
    let first_six = tail.replace("layers = \"1-2\"", "layers = 6");
    let bad = parse_with(dir.path(), &tokenizer, &first_six, &[]).unwrap_err();
    assert!(bad.contains("has 3 layers, so it has no layer 5"), "{bad}");
    let no_from = tail.replace(&format!("from = \"{}\", ", large.display()), "");
    let nothing = parse_with(dir.path(), &tokenizer, &no_from, &[]).unwrap_err();
    assert!(nothing.contains("but nothing is imported"), "{nothing}");
}

#[test]
fn merges_combine_finished_stages_and_a_greedy_soup_is_no_worse_than_its_best_ingredient() {
    let dir = tempfile::tempdir().unwrap();
    let tail = r#"
[stages.hot]
kind = "pretrain"
after = "pretrain"
steps = 6
seq_len = 32
batch_size = 4
data = { mix = { moby = 1 } }
optim = { lr = 3e-2 }
[stages.cool]
kind = "pretrain"
after = "pretrain"
steps = 6
seq_len = 32
batch_size = 4
data = { mix = { moby = 1 } }
optim = { lr = 3e-3 }
[stages.same]
kind = "merge"
method = "uniform"
inputs = ["hot", "hot"]
[stages.delta]
kind = "merge"
method = "task-arithmetic"
base = "pretrain"
inputs = ["hot", "cool"]
scale = 0.5
[stages.ties]
kind = "merge"
method = "ties"
base = "pretrain"
inputs = ["hot", "cool"]
density = 1.0
weights = [1.0, 0.5]
[stages.arc]
kind = "merge"
method = "slerp"
inputs = ["hot", "cool"]
t = 0.0
[stages.soup]
kind = "merge"
method = "greedy"
inputs = ["hot", "cool", "pretrain"]
data = { mix = { moby = 1 } }
seq_len = 32
batch_size = 4
eval = { batches = 2 }
"#;
    let r = recipe(dir.path(), tail, &[]);
    assert_eq!(r.stage("soup").unwrap().upstream(), ["hot", "cool", "pretrain"]);
    let run = train(&r, dir.path());
    let weights_of = |stage: &str| tensors(&node_dir(&r, &run, stage).join("final/model.safetensors"));
    let (hot, cool, base) = (weights_of("hot"), weights_of("cool"), weights_of("pretrain"));
    let same = weights_of("same");
    for (name, t) in &hot {
        assert_eq!(bits(t), bits(&same[name]), "{name}: a stage merged with itself comes back bit for bit");
    }
    let delta = weights_of("delta");
    let name = "model.layers.0.mlp.up_proj.weight";
    let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (h, c, b, d) = (values(&hot[name]), values(&cool[name]), values(&base[name]), values(&delta[name]));
    let gap = (0..b.len()).map(|i| (d[i] - (b[i] + 0.5 * ((h[i] - b[i]) + (c[i] - b[i])))).abs()).fold(0.0, f32::max);
    assert!(gap < 1e-6, "task arithmetic: base + 0.5·Σ(θ − base), off by {gap}");
    // TIES keeping every entry: the differences that agree with the sign of their weighted
    // sum, averaged over their weights.
    let t = values(&weights_of("ties")[name]);
    let gap = (0..b.len())
        .map(|i| {
            let (dh, dc) = (h[i] - b[i], 0.5 * (c[i] - b[i]));
            let sign = if dh + dc >= 0.0 { 1.0 } else { -1.0 };
            let agree = |d: f32| d != 0.0 && d.signum() == sign;
            let (sum, weight) = [(dh, 1.0), (dc, 0.5)]
                .into_iter()
                .filter(|(d, _)| agree(*d))
                .fold((0.0, 0.0), |(s, w), (d, wd)| (s + d, w + wd));
            let expected = if weight > 0.0 { b[i] + sum / weight } else { b[i] };
            (t[i] - expected).abs()
        })
        .fold(0.0, f32::max);
    assert!(gap < 1e-6, "ties: off by {gap}");
    let arc = weights_of("arc");
    let gap = hot.iter().map(|(n, t)| max_gap(&values(t), &values(&arc[n]))).fold(0.0, f32::max);
    assert!(gap < 1e-6, "slerp at t = 0 is its first input; off by {gap}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(node_dir(&r, &run, "soup").join("merge.json")).unwrap()).unwrap();
    let ingredients = report["ingredients"].as_array().unwrap();
    assert_eq!(ingredients.len(), 3);
    let best = ingredients.iter().map(|i| i["held_out_loss"].as_f64().unwrap()).fold(f64::INFINITY, f64::min);
    let soup = report["held_out_loss"].as_f64().unwrap();
    assert!(soup <= best, "the soup ({soup}) is never worse than its best ingredient ({best}): {report}");
    assert_eq!(report["tried"].as_array().unwrap().len(), 2, "each other ingredient is tried once");

    // One architecture: a merge of models of different widths names both.
    let wide = "\n[stages.wide]\nkind = \"pretrain\"\nsteps = 2\nmodel = { d_model = 64 }\ndata = { mix = { moby = 1 } }\n\
                [stages.mixed]\nkind = \"merge\"\nmethod = \"uniform\"\ninputs = [\"pretrain\", \"wide\"]\n";
    let bad = parse(dir.path(), wide, &[]).unwrap_err();
    assert!(bad.contains("merge `mixed`: `wide` has d_model = 64 but `pretrain` has d_model = 32"), "{bad}");
    let training =
        parse(dir.path(), &tail.replace("method = \"uniform\"", "method = \"uniform\"\nsteps = 5"), &[]).unwrap_err();
    assert!(training.contains("`stages.same.steps` does not apply to a merge stage"), "{training}");
    let wrong = |from: &str, to: &str| parse(dir.path(), &tail.replace(from, to), &[]).unwrap_err();
    let no_density = wrong("density = 1.0\n", "");
    assert!(no_density.contains("a ties merge needs a `density`"), "{no_density}");
    let over = wrong("density = 1.0", "density = 1.5");
    assert!(over.contains("a fraction in (0, 1]"), "{over}");
    let three = wrong("inputs = [\"hot\", \"cool\"]\nt = 0.0", "inputs = [\"hot\", \"cool\", \"pretrain\"]\nt = 0.0");
    assert!(three.contains("a slerp merge interpolates between exactly two inputs"), "{three}");
    let misplaced = wrong("method = \"uniform\"", "method = \"uniform\"\ndensity = 0.5");
    assert!(misplaced.contains("`stages.same.density` only applies with method = \"ties\""), "{misplaced}");
}

fn max_gap(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
