//! Loading a recipe for a verb: parse and check it, print its warnings, build its graph.

use std::path::Path;

use recipe_graph::{Graph, Lock, RunDir};
use recipe_spec::{Recipe, SourceText};

use crate::Failure;

/// A checked recipe, printing its warnings; an invalid one becomes `Failure::Invalid` with
/// every error rendered.
pub fn load(path: &Path, sets: &[String]) -> Result<Recipe, Failure> {
    let recipe = Recipe::load(path, sets).map_err(|invalid| Failure::Invalid(invalid.to_string()))?;
    if !recipe.warnings.is_empty() {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let source = SourceText { path: path.to_path_buf(), text, sets: sets.to_vec() };
        for w in &recipe.warnings {
            eprint!("{}", source.render(w));
        }
    }
    Ok(recipe)
}

pub fn graph(recipe: &Recipe) -> Result<Graph, Failure> {
    Graph::build(recipe).map_err(|e| Failure::Run(format!("cannot read the recipe's inputs: {e}")))
}

pub fn lock(run: &RunDir) -> Result<Option<Lock>, Failure> {
    run.read_lock().map_err(Failure::Run)
}

/// The run directory, node states and stage step counts of a recipe, as status and plan use them.
pub fn node_states(recipe: &Recipe, graph: &Graph, runs: &Path) -> Result<Vec<recipe_graph::NodeStatus>, Failure> {
    let run = RunDir::new(runs, &recipe.name);
    let lock = lock(&run)?;
    let steps_of = |name: &str| recipe.stage(name).map(|s| s.steps);
    Ok(recipe_graph::status(graph, &recipe.canonical(), &run, lock.as_ref(), &steps_of))
}
