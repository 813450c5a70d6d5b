//! `recipe prepare`: run the data nodes (tokenizer training, tokenization of each source) that
//! the recipe, or one stage of it, needs; skip what is cached.

use std::path::Path;

use recipe_data::{Outcome, run_data_node};
use recipe_graph::{NodeKind, RunDir};

use crate::{Failure, load};

pub fn run(path: &Path, sets: &[String], runs: &Path, stage: Option<&str>) -> Result<(), Failure> {
    let recipe = load::load(path, sets)?;
    let graph = load::graph(&recipe)?;
    let run = RunDir::new(runs, &recipe.name);
    let nodes = match stage {
        Some(name) if graph.node(name).is_some() => graph.closure(name),
        Some(name) => {
            let names: Vec<&str> = recipe.stages.iter().map(|s| s.name.as_str()).collect();
            let hint = recipe_spec::did_you_mean(name, names.iter().copied())
                .map_or(String::new(), |s| format!("; did you mean `{s}`?"));
            return Err(Failure::Invalid(format!("error: no stage named `{name}` in {}{hint}\n", path.display())));
        }
        None => graph.nodes.iter().collect(),
    };
    let bar = crate::progress::Bar::new();
    for node in nodes.into_iter().filter(|n| !matches!(n.kind, NodeKind::Stage { .. })) {
        let started = std::time::Instant::now();
        match run_data_node(&recipe, &graph, &run, node, &bar).map_err(|e| Failure::Run(e.to_string()))? {
            Outcome::Cached => tracing::info!("{}: cached ({})", node.name, node.short_key()),
            Outcome::Ran(summary) => {
                tracing::info!("{}: {summary} in {:.1}s", node.name, started.elapsed().as_secs_f64())
            }
        }
    }
    Ok(())
}
