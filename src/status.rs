//! `recipe status`: each node done, partial, stale (and why) or pending; a partial stage with
//! its recent losses as a sparkline and the time its remaining steps will take.

use std::fmt::Write as _;
use std::path::Path;

use recipe_graph::{Node, NodeStatus, RunDir, State};
use recipe_spec::Recipe;
use serde_json::{Value, json};

use crate::{Failure, load};

/// How many of a partial stage's latest steps the sparkline and the step time are read from.
const RECENT_STEPS: usize = 40;

pub fn run(path: &Path, sets: &[String], runs: &Path, as_json: bool) -> Result<(), Failure> {
    let recipe = load::load(path, sets)?;
    let graph = load::graph(&recipe)?;
    let states = load::node_states(&recipe, &graph, runs)?;
    let run = RunDir::new(runs, &recipe.name);
    let progress: Vec<Option<Progress>> =
        states.iter().zip(&graph.nodes).map(|(s, n)| Progress::of(&recipe, &run, n, s)).collect();
    if as_json {
        let stages: Vec<_> = states
            .iter()
            .zip(&graph.nodes)
            .zip(&progress)
            .map(|((s, n), p)| {
                let mut node = json!({
                    "name": s.name, "kind": crate::plan::node_kind(&n.kind), "state": s.state,
                    "step": s.step, "steps": s.steps, "reason": s.reason, "because": s.because, "key": n.key,
                });
                if let Some(p) = p {
                    node["recent_losses"] = json!(p.losses);
                    node["eta_s"] = json!(p.eta_s);
                }
                node
            })
            .collect();
        let doc = json!({ "recipe": recipe.name, "run_dir": runs.join(&recipe.name).display().to_string(), "stages": stages });
        println!("{}", serde_json::to_string_pretty(&doc).expect("plain data"));
        return Ok(());
    }
    let mut out = format!("recipe {}, run directory {}\n", recipe.name, runs.join(&recipe.name).display());
    let width = states.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for (s, p) in states.iter().zip(&progress) {
        let state = match s.state {
            State::Done => "done",
            State::Partial => "partial",
            State::Stale => "stale",
            State::Pending => "pending",
        };
        let _ = write!(out, "  {:width$}  {state:<8} {}", s.name, s.reason);
        if let Some(p) = p {
            let _ = write!(
                out,
                "\n  {:width$}           loss {} {:.3}",
                "",
                sparkline(&p.losses),
                p.losses[p.losses.len() - 1]
            );
            if let Some(eta) = p.eta_s {
                let _ = write!(out, " · {} to go at the recent pace", duration(eta));
            }
        }
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

/// What a partial stage's `metrics.jsonl` says about how it is going.
pub(crate) struct Progress {
    /// The latest training losses, oldest first (never empty).
    losses: Vec<f64>,
    /// Seconds its remaining steps take at the recent step time.
    pub eta_s: Option<f64>,
}

impl Progress {
    pub(crate) fn of(recipe: &Recipe, run: &RunDir, node: &Node, status: &NodeStatus) -> Option<Progress> {
        if status.state != State::Partial {
            return None;
        }
        let stage = recipe.stage(&node.name)?;
        let text = std::fs::read_to_string(run.node_dir(node).join("metrics.jsonl")).ok()?;
        // A line being appended is not yet whole; skip what does not parse.
        let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let recent = &lines[lines.len().saturating_sub(RECENT_STEPS)..];
        let losses: Vec<f64> = recent.iter().filter_map(|l| l["loss"].as_f64()).collect();
        if losses.is_empty() {
            return None;
        }
        let positions = (stage.batch_size * stage.seq_len) as f64;
        let step_times: Vec<f64> =
            recent.iter().filter_map(|l| l["tokens_per_s"].as_f64()).map(|rate| positions / rate).collect();
        let done = recent.iter().filter_map(|l| l["step"].as_u64()).max().unwrap_or(0);
        let eta_s = (!step_times.is_empty()).then(|| {
            let per_step = step_times.iter().sum::<f64>() / step_times.len() as f64;
            stage.steps.saturating_sub(done) as f64 * per_step
        });
        Some(Progress { losses, eta_s })
    }
}

/// Values as block characters from the lowest (▁) to the highest (█).
fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    values.iter().map(|v| BARS[(((v - lo) / span) * 7.0).round().clamp(0.0, 7.0) as usize]).collect()
}

/// Seconds as `1h02m`, `3m05s` or `12s`.
fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, _) => format!("{h}h{min:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparkline_spans_the_lowest_to_the_highest_value() {
        assert_eq!(sparkline(&[3.0, 2.0, 1.0, 1.5]), "█▅▁▃");
        assert_eq!(sparkline(&[2.0, 2.0]), "▁▁");
    }

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!((duration(12.4), duration(185.0), duration(3725.0)), ("12s".into(), "3m05s".into(), "1h02m".into()));
    }
}
