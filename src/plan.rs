//! `recipe plan`: the graph, and per stage what it costs and whether it would run now.

use std::fmt::Write as _;
use std::path::Path;

use recipe_graph::{NodeKind, NodeStatus, State};
use recipe_spec::{Recipe, Stage, Tokenizer};
use serde_json::{Value, json};

use crate::render::{bytes, count, sparkline};
use crate::{Failure, load};

const CURVE_POINTS: usize = 48;

pub fn run(path: &Path, sets: &[String], runs: &Path, as_json: bool) -> Result<(), Failure> {
    let recipe = load::load(path, sets)?;
    let graph = load::graph(&recipe)?;
    let states = load::node_states(&recipe, &graph, runs)?;
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
        .map(|(n, stage)| stage_json(&recipe, stage, &n.key, state_of(&n.name)))
        .collect();
    let doc = json!({
        "recipe": recipe.name,
        "file": path.display().to_string(),
        "run_dir": runs.join(&recipe.name).display().to_string(),
        "nodes": nodes,
        "stages": stages,
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc).expect("plain data"));
    } else {
        print!("{}", text(&recipe, &doc));
    }
    Ok(())
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

fn stage_json(recipe: &Recipe, stage: &Stage, key: &str, st: &NodeStatus) -> Value {
    let est = stage.estimate(recipe);
    let curve: Vec<f64> = (0..stage.steps).map(|t| stage.optim.lr * stage.schedule.factor(t, stage.steps)).collect();
    let samples: Vec<f64> =
        (0..CURVE_POINTS.min(curve.len())).map(|i| curve[i * curve.len() / CURVE_POINTS.min(curve.len())]).collect();
    let sources: serde_json::Map<String, Value> = stage
        .data
        .mix
        .iter()
        .map(|(name, w)| (name.clone(), json!({ "weight": w, "tokens": (est.tokens as f64 * w).round() as u64 })))
        .collect();
    json!({
        "name": stage.name,
        "kind": stage.kind,
        "key": key,
        "will_run": st.state != State::Done,
        "state": st.state,
        "reason": will_run_reason(st),
        "after": stage.after,
        "teacher": stage.teacher,
        "params": { "trainable": est.params_trainable, "total": est.params_total },
        "tokens": est.tokens,
        "flops": est.flops,
        "memory_bytes": est.memory.total,
        "memory": est.memory,
        "sources": sources,
        "packing": { "mode": stage.data.packing },
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
        let _ = writeln!(
            out,
            "  model     d_model {} · {} layers · {} heads ({} kv) · d_ff {} · vocab {}{}",
            m.d_model,
            m.n_layers,
            m.n_heads,
            m.n_kv_heads,
            m.d_ff,
            m.vocab_size,
            if m.tie_embeddings { " · tied" } else { "" }
        );
        let trainable = s["params"]["trainable"].as_u64().unwrap_or(0);
        let total = s["params"]["total"].as_u64().unwrap_or(0);
        let peft = stage
            .peft
            .as_ref()
            .map_or(String::new(), |p| format!("  ({} rank {} on {})", p.method, p.rank, p.targets.join(", ")));
        let _ =
            writeln!(out, "  params    {} trainable / {} total{peft}", count(trainable as f64), count(total as f64));
        let _ = writeln!(
            out,
            "  tokens    {}  ({} steps × {} sequences × {}; micro-batch {})",
            count(stage.tokens() as f64),
            stage.steps,
            stage.batch_size,
            stage.seq_len,
            stage.micro_batch_size
        );
        let mix: Vec<String> = stage
            .data
            .mix
            .iter()
            .map(|(n, w)| format!("{n} {:.1}% {}", w * 100.0, count(stage.tokens() as f64 * w)))
            .collect();
        let _ = writeln!(
            out,
            "  data      {}  · packing {} · loss on {}",
            mix.join(" · "),
            stage.data.packing,
            stage.data.loss_on
        );
        if !stage.teacher.is_empty() {
            let d = stage.distill.as_ref().expect("distill stages have settings");
            let _ = writeln!(
                out,
                "  teacher   {}  · {} at T={} · alpha {}",
                stage.teacher.join(" + "),
                d.loss,
                d.temperature,
                d.alpha
            );
        }
        let _ = writeln!(out, "  compute   {:.2e} FLOPs", s["flops"].as_f64().unwrap_or(0.0));
        let _ = writeln!(
            out,
            "  memory    {} peak at {} (weights {}, grads {}, optimizer {}, activations {}{})",
            bytes(mem["total"].as_u64().unwrap_or(0)),
            stage.precision,
            bytes(mem["weights"].as_u64().unwrap_or(0)),
            bytes(mem["grads"].as_u64().unwrap_or(0)),
            bytes(mem["optimizer"].as_u64().unwrap_or(0)),
            bytes(mem["activations"].as_u64().unwrap_or(0)),
            match mem["teachers"].as_u64().unwrap_or(0) {
                0 => String::new(),
                t => format!(", teachers {}", bytes(t)),
            }
        );
        let samples: Vec<f64> = s["lr"]["samples"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
        let _ = writeln!(
            out,
            "  lr        {} {:.1e} peak, warmup {}: {}",
            stage.schedule.kind,
            stage.optim.lr,
            stage.schedule.warmup,
            sparkline(&samples, CURVE_POINTS)
        );
        let _ = writeln!(out, "  run       {}", s["reason"].as_str().unwrap_or(""));
    }
    out
}
