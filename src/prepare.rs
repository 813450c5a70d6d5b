//! `recipe prepare`: run the data nodes (tokenizer training, tokenization of each source) that
//! the recipe, or one stage of it, needs; skip what is cached.

use std::path::Path;

use recipe_graph::RunDir;
use recipe_run::NodeReport;

use crate::{Failure, load};

pub fn run(path: &Path, sets: &[String], runs: &Path, stage: Option<&str>) -> Result<(), Failure> {
    let recipe = load::load(path, sets)?;
    if let Some(name) = stage {
        load::stage(&recipe, name)?;
    }
    let graph = load::graph(&recipe)?;
    let run = RunDir::new(runs, &recipe.name);
    let started = std::time::Instant::now();
    let bar = crate::progress::Bar::new();
    let reports = recipe_run::prepare(&recipe, &graph, &run, stage, &bar).map_err(|e| Failure::Run(e.to_string()))?;
    for (name, report) in reports {
        let key = graph.node(&name).expect("reports name nodes").short_key();
        match report {
            NodeReport::Ran(summary) => tracing::info!("{name}: {summary}"),
            _ => tracing::info!("{name}: cached ({key})"),
        }
    }
    tracing::info!("prepared in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
