//! The graph executor behind `recipe train`: every node that is missing or stale runs, in
//! graph order; finished ones are skipped; a stage with a checkpoint resumes.

use std::sync::atomic::AtomicBool;

use candle_core::Device;
use recipe_data::{Outcome as DataOutcome, run_data_node, stage_stores, tokenizer};
use recipe_graph::{Graph, NodeKind, RunDir};
use recipe_model::{Dtypes, Llama, load_checkpoint};
use recipe_spec::checkpoint::CheckpointFormat;
use recipe_spec::{Recipe, Stage};

use crate::error::{Error, Result};
use crate::trainer::{Observer, Outcome, StageRun, train_stage};

/// What happened to each node.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeReport {
    Skipped,
    Ran(String),
    Interrupted(u64),
}

/// How a run reports progress and learns it should stop.
pub struct Hooks<'a> {
    /// Set (by a Ctrl-C handler) to checkpoint after the current step and stop.
    pub interrupt: &'a AtomicBool,
    pub observer: &'a dyn Observer,
    pub data_progress: &'a dyn recipe_data::Progress,
}

/// Run the recipe's graph, or only what stage `only` needs.
pub fn execute(
    recipe: &Recipe,
    graph: &Graph,
    run: &RunDir,
    only: Option<&str>,
    device: &Device,
    hooks: &Hooks,
) -> Result<Vec<(String, NodeReport)>> {
    let nodes = match only {
        Some(name) => graph.closure(name),
        None => graph.nodes.iter().collect(),
    };
    let mut reports = Vec::new();
    for node in nodes {
        let report = match &node.kind {
            NodeKind::TrainTokenizer | NodeKind::Tokenize { .. } => {
                match run_data_node(recipe, graph, run, node, hooks.data_progress)? {
                    DataOutcome::Cached => NodeReport::Skipped,
                    DataOutcome::Ran(summary) => NodeReport::Ran(summary),
                }
            }
            NodeKind::Stage { stage } => {
                if run.final_dir(node).is_dir() {
                    NodeReport::Skipped
                } else {
                    let stage = recipe.stage(stage).expect("graph nodes come from the recipe");
                    let start_from = stage.after.as_ref().map(|a| run.final_dir(graph.node(a).expect("validated")));
                    let stores =
                        stage_stores(stage, graph, run)?.ok_or_else(|| Error::Run("data not prepared".into()))?;
                    let tok = tokenizer(recipe, graph, run)?;
                    let stage_run = StageRun {
                        recipe,
                        stage,
                        node,
                        run,
                        start_from,
                        teachers: load_teachers(recipe, graph, run, stage, device)?,
                        stores,
                        tokenizer: &tok,
                        device,
                        interrupt: hooks.interrupt,
                        observer: hooks.observer,
                    };
                    match train_stage(&stage_run)? {
                        Outcome::Finished => NodeReport::Ran(format!("{} steps", stage.steps)),
                        Outcome::Interrupted(step) => {
                            reports.push((node.name.clone(), NodeReport::Interrupted(step)));
                            return Ok(reports);
                        }
                    }
                }
            }
        };
        reports.push((node.name.clone(), report));
    }
    Ok(reports)
}

/// A distillation stage's teachers, frozen: the finished stages it names, then the
/// checkpoints.
fn load_teachers(recipe: &Recipe, graph: &Graph, run: &RunDir, stage: &Stage, device: &Device) -> Result<Vec<Llama>> {
    let stages = stage.teacher.iter().map(|name| {
        let dir = run.final_dir(graph.node(name).expect("validated teacher"));
        (dir, CheckpointFormat::HfDir, &recipe.stage(name).expect("validated teacher").model)
    });
    let imports = stage.teacher_checkpoints.iter().map(|t| (t.path.clone(), t.format, &t.model));
    stages
        .chain(imports)
        .map(|(path, format, config)| {
            let tensors = load_checkpoint(&path, format, config)
                .map_err(|e| Error::Run(format!("cannot load teacher {}: {e}", path.display())))?;
            // Teachers compute in the student's dtype.
            Llama::frozen(config, tensors, device)
                .and_then(|t| t.in_precision(Dtypes::of(stage.precision)))
                .map_err(|e| Error::Run(format!("teacher {} does not fit its config: {e}", path.display())))
        })
        .collect()
}
