//! `recipe plan`: the graph, and per stage what it costs and whether it would run now.

use std::fmt::Write as _;
use std::path::Path;

use recipe_data::{DataFacts, data_facts};
use recipe_graph::{Graph, NodeKind, NodeStatus, RunDir, State};
use recipe_run::stage_stores;
use recipe_spec::{
    Keep, Merge, MergeMethod, Precision, PreferenceLoss, Recipe, RopeScaling, Stage, StageKind, Tokenizer,
};
use serde_json::{Value, json};

use crate::render::{bytes, count, sparkline};
use crate::{Failure, load};

const CURVE_POINTS: usize = 48;

/// `plan` warns when a stage would pass over a source more often than this.
const MAX_QUIET_EPOCHS: f64 = 4.0;

pub fn run(path: &Path, sets: &[String], runs: &Path, world: u32, as_json: bool) -> Result<(), Failure> {
    let recipe = load::load(path, sets)?;
    let graph = load::graph(&recipe)?;
    let states = load::node_states(&recipe, &graph, runs)?;
    let doc = document(path, &recipe, &graph, &states, runs, world)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc).expect("plain data"));
    } else {
        print!("{}", text(&recipe, &doc));
    }
    Ok(())
}

/// The plan as data: the graph's nodes and, per stage, its costs (memory per rank of `world`
/// data-parallel ranks), data facts and LR curve; `plan --json` prints it and `report` shows
/// it beside the curves.
pub fn document(
    path: &Path,
    recipe: &Recipe,
    graph: &Graph,
    states: &[NodeStatus],
    runs: &Path,
    world: u32,
) -> Result<Value, Failure> {
    let state_of = |name: &str| states.iter().find(|s| s.name == name).expect("status covers every node");
    let nodes: Vec<Value> = graph
        .nodes
        .iter()
        .map(|n| {
            let st = state_of(&n.name);
            json!({
                "name": n.name, "kind": node_kind(&n.kind), "key": n.key, "deps": n.deps,
                "will_run": st.state != State::Done, "reason": will_run_reason(st),
            })
        })
        .collect();
    let stages: Vec<Value> = graph
        .nodes
        .iter()
        .filter_map(|n| Some((n, recipe.stage(n.stage_name()?)?)))
        .map(|(n, stage)| {
            let facts = stage_facts(recipe, stage, graph, runs)?;
            Ok(stage_json(recipe, stage, &n.key, state_of(&n.name), facts.as_ref(), world))
        })
        .collect::<Result<_, Failure>>()?;
    Ok(json!({
        "recipe": recipe.name,
        "file": path.display().to_string(),
        "run_dir": runs.join(&recipe.name).display().to_string(),
        "nodes": nodes,
        "stages": stages,
    }))
}

pub fn node_kind(kind: &NodeKind) -> &'static str {
    match kind {
        NodeKind::TrainTokenizer => "train-tokenizer",
        NodeKind::Tokenize { .. } => "tokenize",
        NodeKind::Stage { .. } => "stage",
    }
}

fn will_run_reason(st: &NodeStatus) -> String {
    match st.state {
        State::Done => format!("up to date ({}); skipped", st.reason),
        State::Partial => format!("resumes: {}", st.reason),
        State::Stale => format!("re-runs: {}", st.reason),
        State::Pending => format!("runs: {}", st.reason),
    }
}

/// Data facts from the tokenized sources, or `None` until `recipe prepare` has made them.
fn stage_facts(recipe: &Recipe, stage: &Stage, graph: &Graph, runs: &Path) -> Result<Option<DataFacts>, Failure> {
    let run = RunDir::new(runs, &recipe.name);
    let fail = |e: recipe_data::DataError| Failure::Run(e.to_string());
    match stage_stores(stage, graph, &run).map_err(fail)? {
        Some(stores) => data_facts(recipe, stage, stores).map(Some).map_err(fail),
        None => Ok(None),
    }
}

fn stage_json(
    recipe: &Recipe,
    stage: &Stage,
    key: &str,
    st: &NodeStatus,
    facts: Option<&DataFacts>,
    world: u32,
) -> Value {
    let est = stage.estimate_on(recipe, world);
    let curve: Vec<f64> = (0..stage.steps).map(|t| stage.optim.lr * stage.lr_factor(t)).collect();
    let samples: Vec<f64> =
        (0..CURVE_POINTS.min(curve.len())).map(|i| curve[i * curve.len() / CURVE_POINTS.min(curve.len())]).collect();
    // Over the whole stage: each phase of a mix that changes weighs by its steps.
    let sources: serde_json::Map<String, Value> = stage
        .data
        .average_weights(stage.steps)
        .iter()
        .enumerate()
        .map(|(i, (name, w))| {
            let info = match facts {
                Some(f) => {
                    let s = &f.stats.sources[i];
                    json!({ "weight": w, "tokens": s.tokens, "docs": s.docs, "epochs": s.epochs })
                }
                None => json!({ "weight": w, "tokens": (est.tokens as f64 * w).round() as u64, "docs": null, "epochs": null }),
            };
            (name.clone(), info)
        })
        .collect();
    let mut warnings: Vec<String> = facts
        .into_iter()
        .flat_map(|f| &f.stats.sources)
        .filter(|s| s.epochs > MAX_QUIET_EPOCHS)
        .map(|s| format!("source `{}` would be repeated {:.1} times", s.name, s.epochs))
        .collect();
    if stage.merge.is_none() && !stage.batch_size.is_multiple_of(world) {
        let idle = if stage.batch_size < world { "; some ranks get no rows and only wait" } else { "" };
        warnings.push(format!(
            "{} rows per step do not divide among {world} ranks: some train one row more than others{idle}",
            stage.batch_size
        ));
    }
    let packing = match facts {
        Some(f) => json!({
            "mode": stage.data.packing,
            "efficiency": f.stats.efficiency(),
            "truncation_rate": f.stats.truncation_rate(),
            "rows_simulated": f.rows_simulated,
            "rows_total": f.rows_total,
        }),
        None => json!({ "mode": stage.data.packing, "efficiency": null, "truncation_rate": null }),
    };
    json!({
        "name": stage.name,
        "kind": stage.kind,
        "key": key,
        "will_run": st.state != State::Done,
        "state": st.state,
        "reason": will_run_reason(st),
        "after": stage.after,
        "init": stage.init,
        "merge": stage.merge,
        "teacher": stage.teacher,
        "freeze": stage.freeze,
        "average": stage.average,
        "params": { "trainable": est.params_trainable, "total": est.params_total },
        "tokens": est.tokens,
        "flops": est.flops,
        "phases": est.phases,
        "memory_bytes": est.memory.total,
        "memory": est.memory,
        "ranks": est.ranks,
        "sources": sources,
        "packing": packing,
        "data_facts": if facts.is_some() { "measured on the tokenized sources" } else { "run `recipe prepare` to tokenize the sources and measure" },
        "warnings": warnings,
        "precision": stage.precision,
        "model": stage.model,
        "lr": { "peak": stage.optim.lr, "schedule": stage.schedule, "samples": samples },
    })
}

fn text(recipe: &Recipe, doc: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "recipe {} ({}), run directory {}",
        recipe.name,
        doc["file"].as_str().unwrap_or(""),
        doc["run_dir"].as_str().unwrap_or("")
    );
    let _ = writeln!(out, "\ngraph (in run order)");
    let nodes = doc["nodes"].as_array().expect("built above");
    let width = nodes.iter().map(|n| n["name"].as_str().unwrap_or("").len()).max().unwrap_or(0);
    for n in nodes {
        let deps: Vec<&str> = n["deps"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let from = if deps.is_empty() { String::new() } else { format!(" ← {}", deps.join(", ")) };
        let _ = writeln!(
            out,
            "  {:width$}  {}{from}",
            n["name"].as_str().unwrap_or(""),
            &n["key"].as_str().unwrap_or("")[..12]
        );
        let _ = writeln!(out, "  {:width$}  {}", "", n["reason"].as_str().unwrap_or(""));
    }
    if let Tokenizer::Train(t) = &recipe.tokenizer {
        let _ =
            writeln!(out, "\ntokenizer: byte-level BPE, {} tokens, trained on {}", t.vocab_size, t.sources.join(", "));
    } else if let Tokenizer::File { written, vocab_size, .. } = &recipe.tokenizer {
        let _ = writeln!(out, "\ntokenizer: {written} ({vocab_size} tokens)");
    }
    for s in doc["stages"].as_array().expect("built above") {
        let stage = recipe.stage(s["name"].as_str().unwrap_or("")).expect("from the recipe");
        let mem = &s["memory"];
        let m = &stage.model;
        let _ =
            writeln!(out, "\nstage {} ({})  key {}", stage.name, stage.kind, &s["key"].as_str().unwrap_or("")[..12]);
        let window = match (m.sliding_window, &m.full_attention_layers) {
            (None, _) => String::new(),
            (Some(w), None) => format!(" · sliding window {w}"),
            (Some(w), Some(full)) => format!(" · sliding window {w} but layers {full:?}"),
        };
        let local_rope = m.local_rope_theta.map_or(String::new(), |t| format!(" · sliding layers' rope base {t}"));
        let nope = m.nope_layers.as_ref().map_or(String::new(), |layers| format!(" · NoPE layers {layers:?}"));
        let rope_scaling = match &m.rope_scaling {
            None => String::new(),
            Some(RopeScaling::Linear { factor }) => format!(" · rope linear ×{factor}"),
            Some(RopeScaling::Llama3 { factor, original_max_seq_len, .. }) => {
                format!(" · rope llama3 ×{factor} from {original_max_seq_len}")
            }
            Some(RopeScaling::Yarn { factor, original_max_seq_len, .. }) => {
                format!(" · rope yarn ×{factor} from {original_max_seq_len}")
            }
            Some(RopeScaling::LongRope { original_max_seq_len, .. }) => {
                format!(" · rope longrope past {original_max_seq_len}")
            }
        };
        let _ = writeln!(
            out,
            "  model     {} · d_model {} · {} layers · {} heads of {} ({} kv) · d_ff {} · vocab {}{}{rope_scaling}{window}{local_rope}{nope}",
            m.arch,
            m.d_model,
            m.n_layers,
            m.n_heads,
            m.head_dim(),
            m.n_kv_heads,
            m.d_ff,
            m.vocab_size,
            if m.tie_embeddings { " · tied" } else { "" }
        );
        let start = match (&stage.after, &stage.init, &m.from) {
            (Some(after), _, _) => Some(format!("the final weights of `{after}`")),
            (None, Some(init), _) => Some(format!(
                "the final weights of `{}`, its {} layers stacked {}× ({})",
                init.from,
                m.n_layers / init.factor,
                init.factor,
                init.kind
            )),
            (None, None, Some(from)) => Some(match m.layers {
                Some([first, end]) => format!("{from}, its layers {first}-{} (architecture read from it)", end - 1),
                None => format!("{from} (architecture read from it)"),
            }),
            (None, None, None) => None,
        };
        if let Some(start) = start {
            let _ = writeln!(out, "  from      {start}");
        }
        let teachers: Vec<String> = stage
            .teacher
            .iter()
            .map(|t| format!("stage `{t}`"))
            .chain(stage.teacher_checkpoints.iter().map(|t| t.written.clone()))
            .collect();
        if let Some(d) = &stage.distill {
            let ensemble = if teachers.len() > 1 { " (ensemble: probabilities averaged)" } else { "" };
            let _ = writeln!(
                out,
                "  teacher   {}{ensemble} · {} at T {} · alpha {}",
                teachers.join(", "),
                d.loss,
                d.temperature,
                d.alpha
            );
        }
        if let Some(p) = &stage.preference {
            let loss = match p.loss {
                PreferenceLoss::Sigmoid => match p.label_smoothing {
                    Some(e) => format!("DPO's −log σ(β·h), labels smoothed by {e}"),
                    None => "DPO's −log σ(β·h)".to_string(),
                },
                PreferenceLoss::Hinge => "the hinge max(0, 1 − β·h)".to_string(),
                PreferenceLoss::Ipo => "IPO's (h − 1/(2β))², over mean log-probabilities".to_string(),
                PreferenceLoss::Simpo => format!("SimPO's −log σ(β·(ā_c − ā_r) − γ), γ {}", p.gamma.unwrap_or(0.5)),
                PreferenceLoss::Orpo => {
                    "ORPO's cross-entropy of the chosen answers − β·log σ(log odds ratio)".to_string()
                }
                PreferenceLoss::Kto => format!(
                    "KTO's 1 − σ(β·(r − z)) for desirable responses (× {}), 1 − σ(β·(z − r)) for others (× {}), z the step's KL estimate",
                    p.desirable_weight.unwrap_or(1.0),
                    p.undesirable_weight.unwrap_or(1.0)
                ),
            };
            let against = match p.needs_reference() {
                true => "against a frozen copy of the starting weights",
                false => "the policy's own scores, no reference",
            };
            let what = if p.loss == PreferenceLoss::Kto { "unpaired " } else { "pairs     " };
            let _ = writeln!(out, "  {what}{loss} · β {} · {against}", p.beta);
        }
        let trainable = s["params"]["trainable"].as_u64().unwrap_or(0);
        let total = s["params"]["total"].as_u64().unwrap_or(0);
        let peft = match (&stage.peft, stage.freeze.is_empty()) {
            (Some(p), _) => {
                let restarts = match &p.relora {
                    Some(r) => format!("; ReLoRA restarts every {} steps, re-warming over {}", r.every, r.warmup),
                    None => String::new(),
                };
                let start = p.from.as_ref().map_or(String::new(), |from| format!(", starting from adapter `{from}`"));
                let scale = if p.rslora { ", scaled by alpha/√rank" } else { "" };
                let init = match p.init {
                    Some(recipe_spec::LoraInit::Pissa) => ", started as the weights' top singular components (PiSSA)",
                    Some(recipe_spec::LoraInit::Olora) => ", started as the weights' first QR components (OLoRA)",
                    None => "",
                };
                let loraplus = p.loraplus_lr_ratio.map_or(String::new(), |r| format!("; B and vectors at {r}× the lr"));
                format!(
                    "  ({} rank {} on {}{scale}{init}{start}{restarts}{loraplus})",
                    p.method,
                    p.rank,
                    p.targets.join(", ")
                )
            }
            (None, false) => format!("  (frozen: {})", stage.freeze.patterns.join(", ")),
            (None, true) => String::new(),
        };
        let _ =
            writeln!(out, "  params    {} trainable / {} total{peft}", count(trainable as f64), count(total as f64));
        match &stage.merge {
            Some(merge) => merge_lines(&mut out, stage, merge),
            None => training_lines(&mut out, stage, s),
        }
        let _ = writeln!(out, "  compute   {:.2e} FLOPs", s["flops"].as_f64().unwrap_or(0.0));
        let ranks = &s["ranks"];
        let world = ranks["world"].as_u64().unwrap_or(1);
        if world > 1 && stage.merge.is_none() {
            let _ = writeln!(
                out,
                "  ranks     {world} × up to {} sequences a step (micro-batch {}), {} tokens each; every step each \
                 sends and receives {} of gradients; memory below is per rank",
                ranks["rows"],
                ranks["micro_batch_size"],
                count(ranks["tokens"].as_f64().unwrap_or(0.0)),
                bytes(ranks["all_reduce_bytes"].as_u64().unwrap_or(0)),
            );
        }
        let _ = writeln!(
            out,
            "  memory    {} peak at {} (weights {}, grads {}, optimizer {}, activations {}{}{}, runtime {})",
            bytes(mem["total"].as_u64().unwrap_or(0)),
            stage.precision,
            bytes(mem["weights"].as_u64().unwrap_or(0)),
            bytes(mem["grads"].as_u64().unwrap_or(0)),
            bytes(mem["optimizer"].as_u64().unwrap_or(0)),
            bytes(mem["activations"].as_u64().unwrap_or(0)),
            if stage.activation_checkpointing { " with checkpointing" } else { "" },
            match (mem["teachers"].as_u64().unwrap_or(0), stage.kind) {
                (0, _) => String::new(),
                (t, StageKind::Dpo) => format!(", reference {}", bytes(t)),
                (t, _) => format!(", teachers {}", bytes(t)),
            },
            bytes(mem["runtime"].as_u64().unwrap_or(0)),
        );
        if stage.precision == Precision::Bf16Mixed {
            // The estimate counts bf16 activations, as a GPU keeps them.
            let on_cpu = mem["total"].as_u64().unwrap_or(0) + mem["activations"].as_u64().unwrap_or(0);
            let _ =
                writeln!(out, "            {} on the CPU, where bf16-mixed keeps activations in f32", bytes(on_cpu));
        }
        let _ = writeln!(out, "  run       {}", s["reason"].as_str().unwrap_or(""));
    }
    out
}

/// What a training stage trains on, and how.
fn training_lines(out: &mut String, stage: &Stage, s: &Value) {
    if let Some(a) = &stage.average {
        let how = match (a.decay, a.every, a.window) {
            (Some(decay), _, _) => format!("EMA, decay {decay}"),
            (_, Some(every), Some(window)) => {
                format!("LAWA, the latest {window} snapshots taken every {every} steps")
            }
            _ => a.kind.to_string(),
        };
        let _ = writeln!(out, "  average   {how}; the result is the {} weights", a.result);
    }
    let rows = if stage.kind == StageKind::Dpo { "pairs" } else { "sequences" };
    let how = match stage.lengths.grows() {
        false => format!("{} steps × {} {rows} × {}", stage.steps, stage.batch_size, stage.seq_len),
        true => format!(
            "{} steps; lengths grow to {}, keeping {} (counted at {}: {} sequences)",
            stage.steps,
            stage.seq_len,
            if stage.lengths.keep == Keep::Tokens { "tokens per step" } else { "sequences per step" },
            stage.seq_len,
            stage.batch_size
        ),
    };
    let _ =
        writeln!(out, "  tokens    {}  ({how}; micro-batch {})", count(stage.tokens() as f64), stage.micro_batch_size);
    let mix: Vec<String> = stage
        .data
        .average_weights(stage.steps)
        .iter()
        .map(|(n, w)| {
            let src = &s["sources"][n];
            let epochs = src["epochs"].as_f64().map_or(String::new(), |e| format!(", {e:.2} epochs"));
            format!("{n} {:.1}% {}{epochs}", w * 100.0, count(src["tokens"].as_f64().unwrap_or(0.0)))
        })
        .collect();
    let online = match &stage.data.online {
        Some(o) => format!(
            "online: an EXP3 bandit on each source's training loss picks the shares (smoothing {}); planned at \
             equal shares: ",
            o.smoothing
        ),
        None => String::new(),
    };
    let loss_on = match stage.kind {
        StageKind::Dpo => "each conversation's last assistant turn".to_string(),
        _ => stage.data.loss_on.to_string(),
    };
    let _ = writeln!(out, "  data      {online}{}  · loss on {loss_on}", mix.join(" · "));
    for phase in s["phases"].as_array().into_iter().flatten() {
        let from = phase["from"].as_u64().unwrap_or(0);
        let mix = match stage.data.phases.is_empty() {
            true => String::new(),
            false => {
                let parts: Vec<String> = stage
                    .data
                    .weights_at(from)
                    .iter()
                    .zip(&stage.data.mix)
                    .filter(|(w, _)| **w > 0.0)
                    .map(|(w, (n, _))| format!("{n} {:.1}%", w * 100.0))
                    .collect();
                format!("  · {}", parts.join(", "))
            }
        };
        let _ = writeln!(
            out,
            "  phase     steps {from}–{}: {} rows of {}{mix}  · {} tokens, {:.2e} FLOPs",
            phase["until"].as_u64().unwrap_or(0),
            phase["batch_size"],
            phase["seq_len"],
            count(phase["tokens"].as_f64().unwrap_or(0.0)),
            phase["flops"].as_f64().unwrap_or(0.0)
        );
    }
    let p = &s["packing"];
    let (how, split) = match stage.kind {
        StageKind::Dpo => ("one pair a row".to_string(), "pairs cut to fit"),
        _ => (stage.data.packing.to_string(), "documents split"),
    };
    match (p["efficiency"].as_f64(), p["truncation_rate"].as_f64()) {
        (Some(eff), Some(trunc)) => {
            let sample = match (p["rows_simulated"].as_u64(), p["rows_total"].as_u64()) {
                (Some(a), Some(b)) if a < b => format!(" (from a sample of {a} of {b} rows)"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  packing   {how}: {:.1}% of positions hold tokens, {:.1}% of {split}{sample}",
                eff * 100.0,
                trunc * 100.0
            );
        }
        _ => {
            let _ = writeln!(out, "  packing   {how}: efficiency unknown until `recipe prepare` tokenizes the sources");
        }
    }
    for w in s["warnings"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  warning   {}", w.as_str().unwrap_or(""));
    }
    let samples: Vec<f64> = s["lr"]["samples"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
    let _ = writeln!(
        out,
        "  lr        {} {:.1e} peak, warmup {}: {}",
        stage.schedule.kind,
        stage.optim.lr,
        stage.schedule.warmup,
        sparkline(&samples, CURVE_POINTS)
    );
}

/// What a merge combines, and how.
fn merge_lines(out: &mut String, stage: &Stage, merge: &Merge) {
    let inputs: Vec<&str> = merge.inputs.iter().map(|i| i.written()).collect();
    let how = match merge.method {
        MergeMethod::Uniform => format!("the mean of {}", inputs.join(", ")),
        MergeMethod::Weighted => {
            let parts: Vec<String> = inputs.iter().zip(&merge.weights).map(|(i, w)| format!("{w:.3} × {i}")).collect();
            parts.join(" + ")
        }
        MergeMethod::TaskArithmetic => format!(
            "{base} + {} × Σ (θ − {base}) over {}",
            merge.scale.unwrap_or(1.0),
            inputs.join(", "),
            base = merge.base.as_ref().map_or("", |b| b.written())
        ),
        MergeMethod::Ties | MergeMethod::DareTies | MergeMethod::DareLinear => {
            let base = merge.base.as_ref().map_or("", |b| b.written());
            let parts: Vec<String> =
                inputs.iter().zip(&merge.weights).map(|(i, w)| format!("{w} × ({i} − {base})")).collect();
            let trim = match merge.method {
                MergeMethod::Ties => "its largest",
                _ => "a random",
            };
            let density = merge.density.unwrap_or(1.0);
            format!(
                "{base} + {} × [{}], each difference trimmed to {trim} {:.0}%{}{}",
                merge.scale.unwrap_or(1.0),
                parts.join(" + "),
                100.0 * density,
                if merge.method == MergeMethod::Ties { "" } else { " (survivors × 1/density)" },
                match (merge.method != MergeMethod::DareLinear, merge.normalize == Some(true)) {
                    (true, true) => ", summed where they agree with the elected sign, over the weights that agree",
                    (true, false) => ", summed where they agree with the elected sign",
                    (false, true) => ", over the summed weights",
                    (false, false) => "",
                }
            )
        }
        MergeMethod::Slerp => format!(
            "the spherical interpolation {} of the way from {} to {}, tensor by tensor",
            merge.t.unwrap_or(0.0),
            inputs[0],
            inputs.get(1).copied().unwrap_or_default()
        ),
        MergeMethod::Greedy => {
            let mix: Vec<&str> = stage.data.mix.iter().map(|(n, _)| n.as_str()).collect();
            format!(
                "a greedy soup of {}, judged on the held-out split of {} ({} batches of {} × {})",
                inputs.join(", "),
                mix.join(", "),
                stage.eval.batches,
                stage.micro_batch_size,
                stage.seq_len
            )
        }
    };
    let _ = writeln!(out, "  merge     {how}; no training");
}
