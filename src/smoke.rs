//! `recipe smoke`: shrink the recipe — widths, depth, steps, sequence length, a slice of each
//! source and, when it trains one, the tokenizer — keeping its graph and every feature it uses
//! (gradient accumulation, evaluation, checkpoints, GQA, stage chaining, every PEFT method and
//! ReLoRA's restarts, distillation, freezing, weight averaging, stacking, merges, lengths and
//! mixes that change),
//! train every stage in a separate run directory, and fail if a loss is not finite or does not
//! fall (held-out where the stage evaluates, except for preference pairs, which a shrunk run
//! fits past generalising: their training loss). An imported checkpoint keeps its real size (its architecture is fixed), so a stage
//! that imports one, or distills from one, takes fewer and smaller steps.

use std::path::Path;

use recipe_graph::RunDir;
use recipe_spec::{MergeMethod, Recipe, StageKind, Tokenizer};

use crate::{Failure, load};

const STEPS: u64 = 40;
/// Steps of a stage that runs a full-size imported model.
const STEPS_WITH_CHECKPOINT: u64 = 12;
const SEQ_LEN: u32 = 64;
const DOCS_PER_SOURCE: u64 = 64;

/// `--set` overrides that shrink `recipe`.
fn shrink(recipe: &Recipe) -> Vec<String> {
    let mut sets = vec![format!("recipe.name=\"{}-smoke\"", recipe.name)];
    let gqa = |kv: u32, heads: u32| if kv < heads { 2 } else { 4 };
    let base = recipe.model.resolve(None);
    // Deep enough for every layer a `freeze` pattern or a list of layers names.
    let depth = |at_least: u32| {
        let listed = recipe.stages.iter().filter_map(|s| s.model.deepest_listed_layer());
        recipe
            .stages
            .iter()
            .filter_map(|s| s.freeze.deepest_layer())
            .chain(listed)
            .map(|l| l + 1)
            .fold(at_least, u32::max)
    };
    if recipe.model.from.is_none() {
        sets.extend([
            "model.d_model=64".to_string(),
            format!("model.n_layers={}", depth(2)),
            "model.n_heads=4".into(),
            format!("model.n_kv_heads={}", gqa(base.n_kv_heads, base.n_heads)),
            "model.d_ff=128".into(),
            format!("model.max_seq_len={SEQ_LEN}"),
        ]);
    }
    if recipe.model.vocab_size.is_some() {
        sets.push(format!("model.vocab_size={}", recipe.tokenizer.vocab_size()));
    }
    if let Tokenizer::Train(t) = &recipe.tokenizer {
        sets.push(format!("tokenizer.train.vocab_size={}", 256 + t.special_tokens.len() + 256));
    }
    for s in &recipe.sources {
        sets.push(format!("sources.{}.limit={DOCS_PER_SOURCE}", s.name));
    }
    for st in &recipe.stages {
        let p = format!("stages.{}", st.name);
        // An imported model may support less.
        let seq_len = SEQ_LEN.min(st.model.max_seq_len);
        if let Some(merge) = &st.merge {
            // A merge trains nothing; a greedy one evaluates on a few short batches.
            if merge.method == MergeMethod::Greedy {
                sets.extend([
                    format!("{p}.seq_len={seq_len}"),
                    format!("{p}.batch_size=8"),
                    format!("{p}.eval.batches=2"),
                ]);
            }
            continue;
        }
        let accumulate = st.micro_batch_size < st.batch_size;
        let real_size = st.model.import.is_some() || !st.teacher_checkpoints.is_empty();
        let (steps, batch) = if real_size { (STEPS_WITH_CHECKPOINT, 4) } else { (STEPS, 8) };
        sets.extend([
            format!("{p}.steps={steps}"),
            format!("{p}.seq_len={seq_len}"),
            format!("{p}.batch_size={batch}"),
            format!("{p}.micro_batch_size={}", if accumulate { batch / 2 } else { batch }),
            format!("{p}.schedule.warmup={}", st.schedule.warmup.min(4)),
            format!("{p}.checkpoint_every=15"),
            format!("{p}.log_every=10"),
        ]);
        if !st.data.phases.is_empty() {
            let phases = shrink_phases(&st.data.phases, st.steps, steps, |weights| {
                let mix: Vec<String> =
                    weights.iter().filter(|(_, w)| *w > 0.0).map(|(n, w)| format!("{n} = {w}")).collect();
                format!("{{ {} }}", mix.join(", "))
            });
            sets.push(format!("{p}.data.mix={phases}"));
        }
        if st.lengths.grows() {
            // The same ratios to the longest length, as near as whole rows allow.
            let phases = shrink_phases(&st.lengths.phases, st.steps, steps, |len| {
                let wanted = (seq_len as u64 * *len as u64 / st.seq_len as u64).max(1) as u32;
                (1..=wanted).rev().find(|d| seq_len.is_multiple_of(*d)).unwrap_or(1).to_string()
            });
            sets.push(format!("{p}.seq_len={phases}"));
        }
        if let Some(relora) = st.peft.as_ref().and_then(|p| p.relora.as_ref()) {
            // Restarts within the shrunk stage.
            let every = relora.every.min(steps / 4).max(2);
            sets.push(format!("{p}.peft.relora.every={every}"));
            sets.push(format!("{p}.peft.relora.warmup={}", relora.warmup.min(every - 1)));
        }
        if let Some(every) = st.average.as_ref().and_then(|a| a.every) {
            sets.push(format!("{p}.average.every={}", every.min(steps / 5)));
        }
        if st.eval.every > 0 {
            sets.extend([format!("{p}.eval.every={}", steps / 2), format!("{p}.eval.batches=2")]);
        }
        if st.model.import.is_none() && !st.model_overrides.set_fields().is_empty() {
            let m = &st.model;
            sets.extend([
                format!("{p}.model.d_model=32"),
                format!("{p}.model.n_layers={}", depth(1)),
                format!("{p}.model.n_heads=2"),
                format!("{p}.model.n_kv_heads={}", if m.n_kv_heads < m.n_heads { 1 } else { 2 }),
                format!("{p}.model.d_ff=64"),
            ]);
        }
    }
    sets
}

/// Phases `[[FROM, VALUE], ...]` of a stage of `steps` steps written for one of `shrunk` steps:
/// each at the same fraction of the stage (and later than the one before), its value as
/// `value` writes it.
fn shrink_phases<T>(phases: &[(u64, T)], steps: u64, shrunk: u64, value: impl Fn(&T) -> String) -> String {
    let mut last = 0;
    let written: Vec<String> = phases
        .iter()
        .enumerate()
        .map(|(i, (from, v))| {
            last = if i == 0 { 0 } else { (from * shrunk / steps).max(last + 1) };
            format!("[{last}, {}]", value(v))
        })
        .collect();
    format!("[{}]", written.join(", "))
}

pub fn run(path: &Path, sets: &[String], runs: &Path, device: &str) -> Result<(), Failure> {
    let recipe = load::load(path, sets)?;
    let mut all = sets.to_vec();
    all.extend(shrink(&recipe));
    let small = load::load(path, &all)?;
    tracing::info!(
        "smoke: {} stages at seq_len {SEQ_LEN} (less where an imported model is shorter), {DOCS_PER_SOURCE} \
         documents per source; models trained from scratch at d_model 64 for {STEPS} steps, stages with a \
         full-size checkpoint for {STEPS_WITH_CHECKPOINT}",
        small.stages.len()
    );
    crate::train::run(path, &all, runs, None, device, false)?;
    let graph = load::graph(&small)?;
    let run = RunDir::new(runs, &small.name);
    let mut failures = Vec::new();
    for stage in &small.stages {
        let node = graph.node(&stage.name).expect("every stage has a node");
        if let Some(merge) = &stage.merge {
            let ok = run.final_dir(node).join("model.safetensors").is_file();
            tracing::info!(
                "smoke {}: {} of {} inputs: {}",
                stage.name,
                merge.method,
                merge.inputs.len(),
                if ok { "ok" } else { "FAILED" }
            );
            if !ok {
                failures.push(stage.name.clone());
            }
            continue;
        }
        let metrics = std::fs::read_to_string(run.node_dir(node).join("metrics.jsonl")).unwrap_or_default();
        let lines: Vec<serde_json::Value> = metrics.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let series = |key: &str| -> Vec<f64> { lines.iter().filter_map(|l| l[key].as_f64()).collect() };
        let (losses, evals) = (series("loss"), series("eval_loss"));
        // Held-out loss before training against after it, when the stage evaluates: the same
        // batches each time, so noise in what each step draws cannot hide a fall or fake one.
        // Not for preference pairs: a small model shown a few dozen pairs for several epochs
        // fits them and its held-out pair loss rises, however well the stage trains.
        let (what, first, last) = match evals.as_slice() {
            [first, .., last] if stage.kind != StageKind::Dpo => ("eval loss", *first, *last),
            _ => {
                let window = 5.min(losses.len() / 2).max(1);
                let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
                let head = mean(&losses[..window.min(losses.len())]);
                ("loss", head, mean(&losses[losses.len().saturating_sub(window)..]))
            }
        };
        let ok = losses.len() as u64 == stage.steps && losses.iter().all(|l| l.is_finite()) && last < first;
        tracing::info!(
            "smoke {}: {what} {first:.3} → {last:.3} over {} steps: {}",
            stage.name,
            losses.len(),
            if ok { "ok" } else { "FAILED" }
        );
        if !ok {
            failures.push(stage.name.clone());
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::Run(format!(
            "smoke failed: the loss did not fall (or no merge was written) in {}",
            failures.join(", ")
        )))
    }
}
