//! Where each node stands: done, partial (with its step), stale (and why) or pending.

use serde::Serialize;
use serde_json::Value;

use crate::diff::{Change, diff};
use crate::graph::Graph;
use crate::rundir::{Lock, RunDir};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Done,
    Partial,
    Stale,
    Pending,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub state: State,
    /// The newest complete checkpoint's step, for a partial stage.
    pub step: Option<u64>,
    /// The stage's steps; none for data nodes.
    pub steps: Option<u64>,
    /// In words.
    pub reason: String,
    /// For a stale node: the recipe paths (or `file:PATH`) that changed since the last run.
    pub because: Vec<String>,
}

/// The state of every node of `graph`, from the run directory and the last run's lock.
/// `steps_of` gives a stage's step count by node name.
pub fn status(
    graph: &Graph,
    recipe: &Value,
    run: &RunDir,
    lock: Option<&Lock>,
    steps_of: &dyn Fn(&str) -> Option<u64>,
) -> Vec<NodeStatus> {
    let recorded = lock.map(|l| (l, RunDir::recorded_graph(l)));
    let changes = recorded.as_ref().map(|(l, g)| diff(&l.recipe, g, recipe, graph));
    let mut out: Vec<NodeStatus> = Vec::new();
    for node in &graph.nodes {
        let steps = steps_of(&node.name);
        let entry = lock.and_then(|l| l.nodes.get(&node.name));
        let checkpoints = run.checkpoint_steps(node);
        let (state, step, reason, because) = if run.final_dir(node).is_dir() {
            let when = entry.filter(|e| e.key == node.key).and_then(|e| e.finished_at.clone());
            (State::Done, steps, when.map_or("result present".into(), |w| format!("finished {w}")), vec![])
        } else if let Some(&last) = checkpoints.last() {
            let of = steps.map_or(String::new(), |n| format!(" of {n}"));
            (State::Partial, Some(last), format!("step {last}{of}, resumes from checkpoint step-{last:06}"), vec![])
        } else if entry.is_some_and(|e| e.key != node.key) {
            let change = changes
                .as_ref()
                .and_then(|d| d.stages.iter().find(|c| c.name == node.name))
                .expect("diff covers every node");
            let words = describe(&change.because, changes.as_ref().map(|d| d.changes.as_slice()).unwrap_or(&[]));
            (State::Stale, None, format!("changed since the last run: {words}"), change.because.clone())
        } else {
            let waiting: Vec<&str> = node
                .deps
                .iter()
                .filter(|d| out.iter().any(|s| &s.name == *d && s.state != State::Done))
                .map(String::as_str)
                .collect();
            let reason = match (entry, waiting.is_empty()) {
                (Some(_), _) => format!("recorded as run, but {} is missing", run.final_dir(node).display()),
                (None, false) => format!("never run; needs {}", waiting.join(", ")),
                (None, true) => "never run".into(),
            };
            (State::Pending, None, reason, vec![])
        };
        out.push(NodeStatus { name: node.name.clone(), state, step, steps, reason, because });
    }
    out
}

/// `a.b (1 → 2), file:x changed`: paths with their old and new values where known.
pub fn describe(because: &[String], changes: &[Change]) -> String {
    because
        .iter()
        .map(|p| match changes.iter().find(|c| &c.path == p) {
            Some(c) => format!("{p} ({} → {})", short(&c.old), short(&c.new)),
            None if p.starts_with("file:") => format!("{p} (content)"),
            None => p.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn short(v: &Value) -> String {
    match v {
        Value::Null => "unset".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
