//! Loading a recipe for a verb: parse and check it, print its warnings, build its graph, find
//! a stage and its result.

use std::path::{Path, PathBuf};

use recipe_checkpoint::Headers;
use recipe_graph::{Graph, Lock, RunDir};
use recipe_spec::{Recipe, SourceText, Stage};

use crate::Failure;

/// A checked recipe, printing its warnings; an invalid one becomes `Failure::Invalid` with
/// every error rendered.
pub fn load(path: &Path, sets: &[String]) -> Result<Recipe, Failure> {
    let recipe = Recipe::load(path, sets, &Headers).map_err(|invalid| Failure::Invalid(invalid.to_string()))?;
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

/// The stage `--stage` names, or an error that lists a near miss.
pub fn stage<'r>(recipe: &'r Recipe, name: &str) -> Result<&'r Stage, Failure> {
    recipe.stage(name).ok_or_else(|| {
        let names = recipe.stages.iter().map(|s| s.name.as_str());
        let hint = recipe_spec::did_you_mean(name, names).map_or(String::new(), |s| format!("; did you mean `{s}`?"));
        Failure::Invalid(format!("error: no stage named `{name}` in {}{hint}\n", recipe.path.display()))
    })
}

/// The result folder of a finished stage, or an error that says how to make it.
pub fn stage_result(recipe: &Recipe, stage: &Stage, runs: &Path) -> Result<PathBuf, Failure> {
    let graph = graph(recipe)?;
    let run = RunDir::new(runs, &recipe.name);
    let dir = run.final_dir(graph.node(&stage.name).expect("every stage has a node"));
    if !dir.is_dir() {
        return Err(no_result(recipe, stage));
    }
    Ok(dir)
}

/// That a stage has nothing to read yet, and how to make it.
pub fn no_result(recipe: &Recipe, stage: &Stage) -> Failure {
    Failure::Run(format!(
        "stage `{0}` has no result for its current key; run `recipe train {1} --stage {0}` first",
        stage.name,
        recipe.path.display()
    ))
}

/// The run directory, node states and stage step counts of a recipe, as status and plan use them.
pub fn node_states(recipe: &Recipe, graph: &Graph, runs: &Path) -> Result<Vec<recipe_graph::NodeStatus>, Failure> {
    let run = RunDir::new(runs, &recipe.name);
    let lock = lock(&run)?;
    let steps_of = |name: &str| recipe.stage(name).map(|s| s.steps);
    Ok(recipe_graph::status(graph, &recipe.canonical(), &run, lock.as_ref(), &steps_of))
}

/// The chat template a stage's chat sources were formatted with (a chat source always has
/// one), when it reads any.
pub fn trained_template(recipe: &Recipe, stage: &Stage) -> Option<recipe_spec::ChatTemplate> {
    stage.sources_read().into_iter().filter_map(|name| recipe.source(name)).find_map(|source| source.template)
}
