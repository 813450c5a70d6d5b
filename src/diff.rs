//! `recipe diff A.toml B.toml` and `recipe diff X.toml`: what changed in the effective recipe
//! and which nodes each change invalidates.

use std::fmt::Write as _;
use std::path::Path;

use recipe_graph::{Diff, RunDir, describe, diff};
use serde_json::{Value, json};

use crate::{Failure, load};

pub fn run(old: &Path, new: Option<&Path>, sets: &[String], runs: &Path, as_json: bool) -> Result<(), Failure> {
    let (report, against) = match new {
        Some(new_path) => {
            let a = load::load(old, &[])?;
            let b = load::load(new_path, sets)?;
            let (ga, gb) = (load::graph(&a)?, load::graph(&b)?);
            (diff(&a.canonical(), &ga, &b.canonical(), &gb), old.display().to_string())
        }
        None => {
            let recipe = load::load(old, sets)?;
            let run = RunDir::new(runs, &recipe.name);
            let Some(lock) = load::lock(&run)? else {
                return Err(Failure::Run(format!(
                    "{} has no recorded run at {}; give two recipes to compare, or train first",
                    old.display(),
                    run.lock_path().display()
                )));
            };
            let graph = load::graph(&recipe)?;
            let recorded = RunDir::recorded_graph(&lock);
            (
                diff(&lock.recipe, &recorded, &recipe.canonical(), &graph),
                format!("the last run ({})", run.lock_path().display()),
            )
        }
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&json!(report)).expect("plain data"));
    } else {
        print!("{}", text(&report, &against));
    }
    Ok(())
}

fn text(d: &Diff, against: &str) -> String {
    let mut out = String::new();
    if d.changes.is_empty() {
        let _ = writeln!(out, "no semantic change against {against}");
    } else {
        let _ = writeln!(out, "{} field(s) changed against {against}", d.changes.len());
        let width = d.changes.iter().map(|c| c.path.len()).max().unwrap_or(0);
        for c in &d.changes {
            let _ = writeln!(out, "  {:width$}  {} → {}", c.path, show(&c.old), show(&c.new));
        }
    }
    let _ = writeln!(out, "\nnodes");
    let width = d.stages.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &d.stages {
        let verdict = if s.new {
            "new: runs from scratch".to_string()
        } else if !s.invalidated {
            "unchanged: its result stays valid".to_string()
        } else if s.upstream.is_empty() {
            format!("invalidated by {}", describe(&s.because, &d.changes))
        } else {
            format!("invalidated via {}: {}", s.upstream.join(", "), describe(&s.because, &d.changes))
        };
        let _ = writeln!(out, "  {:width$}  {verdict}", s.name);
    }
    out
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "(unset)".into(),
        other => other.to_string(),
    }
}
