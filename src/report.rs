//! `recipe report X.toml [Y.toml …]`: one self-contained HTML page with every stage's curves
//! (training and held-out loss against steps and tokens, LR, gradient norm, tokens/s), the
//! data each run trained per source against the asked mix, the effective config and `plan`'s
//! facts, and the field changes between what it overlays: several recipes, and the current
//! and earlier keys of each stage. The page needs no network: its script, style and data are
//! inlined, and it draws its charts as SVG.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use recipe_graph::{Graph, Lock, Node, NodeKind, NodeStatus, RunDir, State, diff, field_changes};
use recipe_spec::{Recipe, Stage, flatten};
use serde_json::{Map, Value, json};

use crate::{Failure, load, plan, status};

/// The page: `report.css` and `report.js` go inline, and the data where the script reads it.
const PAGE: &str = include_str!("report/page.html");
const STYLE: &str = include_str!("report/report.css");
const SCRIPT: &str = include_str!("report/report.js");

/// A longer curve is averaged over consecutive steps down to about this many points, so that a
/// long run's page stays small; held-out losses are kept whole.
const MAX_POINTS: usize = 4000;

pub struct ReportArgs<'a> {
    pub recipes: &'a [PathBuf],
    pub sets: &'a [String],
    pub runs: &'a Path,
    pub out: &'a Path,
    /// Earlier keys shown per stage beside the current one, newest first.
    pub earlier: usize,
}

pub fn run(args: &ReportArgs) -> Result<(), Failure> {
    let loaded = args.recipes.iter().map(|p| load::load(p, args.sets)).collect::<Result<Vec<_>, _>>()?;
    let graphs = loaded.iter().map(load::graph).collect::<Result<Vec<_>, _>>()?;
    let mut recipes = Vec::new();
    for (i, ((recipe, graph), path)) in loaded.iter().zip(&graphs).zip(args.recipes).enumerate() {
        let against = (i > 0).then(|| (&loaded[0], &graphs[0]));
        recipes.push(recipe_report(path, recipe, graph, against, args)?);
    }
    let doc = json!({
        "generated_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "version": env!("CARGO_PKG_VERSION"),
        "recipes": recipes,
    });
    let html = page(&doc);
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Failure::Run(format!("cannot create {}: {e}", parent.display())))?;
    }
    recipe_graph::write_atomic(args.out, html.as_bytes())
        .map_err(|e| Failure::Run(format!("cannot write {}: {e}", args.out.display())))?;
    let runs: usize = recipes.iter().flat_map(|r| r["stages"].as_array().into_iter().flatten()).count();
    println!("wrote {} ({} recipe(s), {runs} stage(s), {} bytes)", args.out.display(), recipes.len(), html.len());
    Ok(())
}

/// The page with its style, script and data inlined. Every `<` of the data is escaped, so
/// no string in it can close the script element that holds it.
fn page(doc: &Value) -> String {
    let data = serde_json::to_string(doc).expect("plain data").replace('<', "\\u003c");
    PAGE.replace("/*STYLE*/", STYLE).replace("/*SCRIPT*/", SCRIPT).replace("/*DATA*/", &data)
}

fn recipe_report(
    path: &Path,
    recipe: &Recipe,
    graph: &Graph,
    against: Option<(&Recipe, &Graph)>,
    args: &ReportArgs,
) -> Result<Value, Failure> {
    let run = RunDir::new(args.runs, &recipe.name);
    let lock = load::lock(&run)?;
    let states = load::node_states(recipe, graph, args.runs)?;
    let plan = plan::document(path, recipe, graph, &states, args.runs, 1)?;
    let at = Place { recipe, run: &run, lock: lock.as_ref(), earlier: args.earlier };
    let mut stages = Vec::new();
    for (node, st) in graph.nodes.iter().zip(&states) {
        let NodeKind::Stage { stage } = &node.kind else { continue };
        let stage = recipe.stage(stage).expect("a stage node names a stage");
        let facts = plan["stages"].as_array().into_iter().flatten().find(|s| s["name"] == stage.name.as_str());
        stages.push(stage_report(&at, stage, node, st, facts)?);
    }
    let compared = against.map(|(first, first_graph)| {
        let d = diff(&first.canonical(), first_graph, &recipe.canonical(), graph);
        json!({ "against": first.name, "against_file": args.recipes[0].display().to_string(), "diff": d })
    });
    Ok(json!({
        "name": recipe.name,
        "file": path.display().to_string(),
        "run_dir": run.root.display().to_string(),
        "config": flatten(&recipe.canonical()).into_iter().filter(|(_, v)| !v.is_null()).collect::<Map<_, _>>(),
        "compared": compared,
        "nodes": plan["nodes"],
        "stages": stages,
    }))
}

/// A recipe's run directory as the report reads it.
struct Place<'a> {
    recipe: &'a Recipe,
    run: &'a RunDir,
    lock: Option<&'a Lock>,
    /// Earlier keys to show per stage.
    earlier: usize,
}

fn stage_report(
    at: &Place,
    stage: &Stage,
    node: &Node,
    st: &NodeStatus,
    facts: Option<&Value>,
) -> Result<Value, Failure> {
    let (run, lock) = (at.run, at.lock);
    let current = run.node_dir(node);
    let dirs = run
        .key_dirs(node)
        .map_err(|e| Failure::Run(format!("cannot list the results of stage `{}`: {e}", stage.name)))?;
    // The current key first, then earlier ones that trained, newest first.
    let mut older: Vec<(std::time::SystemTime, PathBuf)> = dirs
        .into_iter()
        .filter(|d| *d != current)
        .filter_map(|d| Some((std::fs::metadata(d.join("metrics.jsonl")).ok()?.modified().ok()?, d)))
        .collect();
    older.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    let current_fields = key_fields(&current);
    let mut keys = vec![key_report(&current, stage, None)];
    keys[0]["current"] = json!(true);
    keys[0]["state"] = json!(st.state);
    keys[0]["steps"] = json!(stage.steps);
    keys[0]["finished_at"] = json!(lock.and_then(|l| l.nodes.get(&node.name)).and_then(|e| e.finished_at.clone()));
    if st.state == State::Partial {
        keys[0]["eta_s"] = json!(status::Progress::of(at.recipe, run, node, st).and_then(|p| p.eta_s));
    }
    for (_, dir) in older.into_iter().take(at.earlier) {
        let mut k = key_report(&dir, stage, current_fields.as_ref());
        k["current"] = json!(false);
        k["state"] = json!(if dir.join("final").is_dir() { "done" } else { "partial" });
        let steps = k["config"][&format!("stages.{}.steps", stage.name)].clone();
        k["steps"] = steps;
        keys.push(k);
    }
    Ok(json!({
        "name": stage.name,
        "kind": stage.kind,
        "mix": stage.data.average_weights(stage.steps).iter().map(|(n, w)| json!([n, w])).collect::<Vec<_>>(),
        "plan": facts,
        "keys": keys,
    }))
}

/// One key's folder: its curves, the sessions that trained it, its config from `stage.toml`,
/// and the config's changes against the current key's.
fn key_report(dir: &Path, stage: &Stage, current_fields: Option<&Map<String, Value>>) -> Value {
    let key = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let fields = key_fields(dir);
    // An earlier key may have trained other shapes.
    let field = |name: &str, now: u32| {
        let path = format!("stages.{}.{name}", stage.name);
        fields.as_ref().and_then(|f| f.get(&path)).and_then(Value::as_u64).unwrap_or(now as u64)
    };
    let positions = field("batch_size", stage.batch_size) * field("seq_len", stage.seq_len);
    let changes = match (current_fields, &fields) {
        (Some(now), Some(then)) => json!(field_changes(&Value::Object(then.clone()), &Value::Object(now.clone()))),
        _ => Value::Null,
    };
    json!({
        "key": key,
        "dir": dir.display().to_string(),
        "curves": curves(&read_jsonl(&dir.join("metrics.jsonl")), positions),
        "sessions": read_jsonl(&dir.join("sessions.jsonl")),
        "merge": std::fs::read_to_string(dir.join("merge.json")).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()),
        "config": fields,
        "changes_to_current": changes,
    })
}

/// The fields, inputs and input files a key was computed from, flattened, from `stage.toml`.
fn key_fields(dir: &Path) -> Option<Map<String, Value>> {
    let text = std::fs::read_to_string(dir.join("stage.toml")).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let mut out = Map::new();
    for part in ["fields", "inputs", "files"] {
        let Some(toml::Value::Table(t)) = table.get(part) else { continue };
        for (path, value) in t {
            let name = if part == "fields" { path.clone() } else { format!("{part}.{path}") };
            out.insert(name, serde_json::to_value(value).ok()?);
        }
    }
    Some(out)
}

/// The lines of a JSONL file that parse (a line being appended is not whole yet).
fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}

/// `metrics.jsonl` as columns: per training step its step, the tokens trained so far, and every
/// scalar; held-out losses apart; the tokens each source gave, as of the last
/// step; and the summed step time.
fn curves(lines: &[Value], positions: u64) -> Value {
    const SCALARS: [&str; 12] = [
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "ce_loss",
        "kd_loss",
        "reward_accuracy",
        "reward_margin",
        "kl",
        "loss_scale",
        "seq_len",
        "peak_memory_mib",
    ];
    // Tokens as `plan` and tokens/s count them: row positions, padding included. Metrics
    // written before `tokens` was recorded had `positions` every step.
    let tokens_at = |l: &Value| l["tokens"].as_u64().unwrap_or_else(|| l["step"].as_u64().unwrap_or(0) * positions);
    let steps: Vec<&Value> = lines.iter().filter(|l| l["loss"].is_number()).collect();
    let evals: Vec<&Value> = lines.iter().filter(|l| l["eval_loss"].is_number()).collect();
    let sources: std::collections::BTreeSet<&String> =
        evals.iter().filter_map(|l| l["eval_loss_by_source"].as_object()).flat_map(|m| m.keys()).collect();
    let by_source: Map<String, Value> = sources
        .into_iter()
        .map(|s| (s.clone(), json!(evals.iter().map(|l| l["eval_loss_by_source"][s].as_f64()).collect::<Vec<_>>())))
        .collect();
    let mut columns: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    columns.insert("step", steps.iter().map(|l| l["step"].as_f64().unwrap_or(0.0)).collect());
    columns.insert("tokens", steps.iter().map(|l| tokens_at(l) as f64).collect());
    for name in SCALARS {
        if steps.iter().any(|l| l[name].is_number()) {
            columns.insert(name, steps.iter().map(|l| l[name].as_f64().unwrap_or(f64::NAN)).collect());
        }
    }
    let step_time_s: f64 = steps
        .iter()
        .scan(0, |before, l| {
            let trained = tokens_at(l).saturating_sub(std::mem::replace(before, tokens_at(l)));
            Some((trained, l["tokens_per_s"].as_f64().unwrap_or(0.0)))
        })
        .filter(|(_, rate)| *rate > 0.0)
        .map(|(trained, rate)| trained as f64 / rate)
        .sum();
    let columns: Map<String, Value> = columns
        .into_iter()
        .map(|(name, values)| (name.to_string(), json!(average_down(&values, MAX_POINTS))))
        .collect();
    // Online mixing's shares per step, averaged down as the step columns are.
    let shared: std::collections::BTreeSet<&String> =
        steps.iter().filter_map(|l| l["mix_weights"].as_object()).flat_map(|m| m.keys()).collect();
    let mix_weights: Map<String, Value> = shared
        .into_iter()
        .map(|s| {
            let values: Vec<f64> = steps.iter().map(|l| l["mix_weights"][s].as_f64().unwrap_or(f64::NAN)).collect();
            (s.clone(), json!(average_down(&values, MAX_POINTS)))
        })
        .collect();
    json!({
        "steps": columns,
        "eval": {
            "step": evals.iter().map(|l| l["step"].as_u64().unwrap_or(0)).collect::<Vec<_>>(),
            "tokens": evals.iter().map(|l| tokens_at(l)).collect::<Vec<_>>(),
            "loss": evals.iter().map(|l| l["eval_loss"].as_f64()).collect::<Vec<_>>(),
            "loss_avg": evals.iter().map(|l| l["eval_loss_avg"].as_f64()).collect::<Vec<_>>(),
            "reward_accuracy": evals.iter().map(|l| l["eval_reward_accuracy"].as_f64()).collect::<Vec<_>>(),
            "by_source": by_source,
        },
        "mix_weights": mix_weights,
        "source_tokens": steps.last().map_or(Value::Null, |l| l["source_tokens"].clone()),
        "last_step": steps.last().and_then(|l| l["step"].as_u64()),
        "step_time_s": step_time_s,
    })
}

/// Means over consecutive runs of `values`, so that at most about `max` remain; a NaN (a
/// scalar missing on some steps) stays out of its mean. The step and token columns become
/// their runs' means too, which keeps every column aligned.
fn average_down(values: &[f64], max: usize) -> Vec<Option<f64>> {
    let run = values.len().div_ceil(max.max(1)).max(1);
    values
        .chunks(run)
        .map(|chunk| {
            let finite: Vec<f64> = chunk.iter().copied().filter(|v| v.is_finite()).collect();
            (!finite.is_empty()).then(|| finite.iter().sum::<f64>() / finite.len() as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_curves_are_averaged_down_and_short_ones_kept() {
        let values: Vec<f64> = (0..10).map(f64::from).collect();
        assert_eq!(average_down(&values, 20), values.iter().map(|v| Some(*v)).collect::<Vec<_>>());
        assert_eq!(average_down(&values, 5), vec![Some(0.5), Some(2.5), Some(4.5), Some(6.5), Some(8.5)]);
        assert_eq!(average_down(&[f64::NAN, 1.0, f64::NAN, f64::NAN], 2), vec![Some(1.0), None]);
    }

    #[test]
    fn no_string_in_the_data_can_close_the_script_element() {
        let html = page(&json!({ "recipes": [{ "name": "</script><script>alert(1)</script>" }] }));
        assert_eq!(html.matches("</script>").count(), PAGE.matches("</script>").count());
        assert!(html.contains("\\u003c/script>\\u003cscript>alert(1)"));
    }
}
