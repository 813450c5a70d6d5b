//! `recipe train`: run every stale node of the graph (or what `--stage` needs), resuming
//! partial stages; Ctrl-C writes a checkpoint and exits 130.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;
use recipe_graph::RunDir;
use recipe_train::{Hooks, NodeReport, execute};

use crate::{Failure, load};

/// What `train` did, for the caller to report and choose the exit code.
pub enum Trained {
    Complete,
    Interrupted,
}

pub fn device(name: &str) -> Result<Device, Failure> {
    match name {
        "cpu" => Ok(Device::Cpu),
        other if other == "metal" || other == "cuda" || other.starts_with("cuda:") => {
            Err(Failure::Invalid(format!("error: --device {other}: this build of recipe has CPU support only\n")))
        }
        other => Err(Failure::Invalid(format!("error: unknown device `{other}`; expected cpu, cuda[:N] or metal\n"))),
    }
}

pub fn run(
    path: &Path,
    sets: &[String],
    runs: &Path,
    stage: Option<&str>,
    device_name: &str,
) -> Result<Trained, Failure> {
    let device = device(device_name)?;
    let recipe = load::load(path, sets)?;
    if let Some(name) = stage.filter(|n| recipe.stage(n).is_none()) {
        let names = recipe.stages.iter().map(|s| s.name.as_str());
        let hint = recipe_spec::did_you_mean(name, names).map_or(String::new(), |s| format!("; did you mean `{s}`?"));
        return Err(Failure::Invalid(format!("error: no stage named `{name}` in {}{hint}\n", path.display())));
    }
    let graph = load::graph(&recipe)?;
    let run = RunDir::new(runs, &recipe.name);
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    // A second Ctrl-C stops at once; the first lets the current step finish and checkpoint.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: writing a checkpoint after this step (Ctrl-C again to stop at once)");
    });
    let observer = crate::progress::TrainBar::new();
    let bar = crate::progress::Bar::new();
    let hooks = Hooks { interrupt: &interrupt, observer: &observer, data_progress: &bar };
    let reports = execute(&recipe, &graph, &run, stage, &device, &hooks).map_err(|e| Failure::Run(e.to_string()))?;
    let mut ran = 0;
    for (name, report) in &reports {
        match report {
            NodeReport::Skipped => tracing::info!("{name}: up to date, skipped"),
            NodeReport::Ran(summary) => {
                ran += 1;
                tracing::info!("{name}: {summary}");
            }
            NodeReport::Interrupted(step) => {
                tracing::info!("{name}: interrupted; checkpoint at step {step}, `recipe train` resumes it");
                return Ok(Trained::Interrupted);
            }
        }
    }
    if ran == 0 {
        tracing::info!("nothing to do: every node is up to date in {}", run.root.display());
    }
    Ok(Trained::Complete)
}
