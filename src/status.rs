//! `recipe status`: each node done, partial, stale (and why) or pending.

use std::fmt::Write as _;
use std::path::Path;

use recipe_graph::State;
use serde_json::json;

use crate::{Failure, load};

pub fn run(path: &Path, sets: &[String], runs: &Path, as_json: bool) -> Result<(), Failure> {
    let recipe = load::load(path, sets)?;
    let graph = load::graph(&recipe)?;
    let states = load::node_states(&recipe, &graph, runs)?;
    if as_json {
        let stages: Vec<_> = states
            .iter()
            .zip(&graph.nodes)
            .map(|(s, n)| {
                json!({
                    "name": s.name, "kind": crate::plan::node_kind(&n.kind), "state": s.state,
                    "step": s.step, "steps": s.steps, "reason": s.reason, "because": s.because, "key": n.key,
                })
            })
            .collect();
        let doc = json!({ "recipe": recipe.name, "run_dir": runs.join(&recipe.name).display().to_string(), "stages": stages });
        println!("{}", serde_json::to_string_pretty(&doc).expect("plain data"));
        return Ok(());
    }
    let mut out = format!("recipe {}, run directory {}\n", recipe.name, runs.join(&recipe.name).display());
    let width = states.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &states {
        let state = match s.state {
            State::Done => "done",
            State::Partial => "partial",
            State::Stale => "stale",
            State::Pending => "pending",
        };
        let _ = writeln!(out, "  {:width$}  {state:<8} {}", s.name, s.reason);
    }
    print!("{out}");
    Ok(())
}
