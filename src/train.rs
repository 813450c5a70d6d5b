//! `recipe train`: run every stale node of the graph (or what `--stage` needs), resuming
//! partial stages; Ctrl-C writes a checkpoint and exits 130.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use candle_core::Device;
use recipe_dist::Launch;
use recipe_graph::{Graph, RunDir, State};
use recipe_run::{Hooks, NodeReport, execute};
use recipe_train::Observer;

use crate::tensorboard::{Both, TensorBoard};
use recipe_spec::Recipe;

use crate::{Failure, load};

/// The device `--device` names: `cpu`, `cuda` (GPU 0, or under a launcher of several
/// processes the GPU of this process's local rank), `cuda:N`, `metal`, or `auto` (CUDA if this
/// build has it and a GPU answers, else Metal likewise, else the CPU). The choice is logged.
pub fn device(name: &str, launch: &Launch) -> Result<Device, Failure> {
    let local_gpu = if launch.world > 1 { launch.local_rank } else { 0 };
    let device = match name {
        "cpu" => Device::Cpu,
        "auto" => auto_device(local_gpu),
        "metal" => metal()?,
        "cuda" => cuda(local_gpu)?,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => cuda(ordinal)?,
            _ => {
                return Err(Failure::Invalid(format!(
                    "error: unknown device `{other}`; expected cpu, cuda, cuda:N (N a GPU's number), metal or auto\n"
                )));
            }
        },
    };
    tracing::info!("device: {}", describe(&device));
    Ok(device)
}

fn auto_device(gpu: usize) -> Device {
    let found = if candle_core::utils::cuda_is_available() {
        Device::new_cuda(gpu).ok()
    } else if candle_core::utils::metal_is_available() {
        Device::new_metal(0).ok()
    } else {
        None
    };
    found.unwrap_or(Device::Cpu)
}

fn cuda(ordinal: usize) -> Result<Device, Failure> {
    if !cfg!(feature = "cuda") {
        return Err(Failure::Invalid(
            "error: --device cuda: this build of recipe has no CUDA support; build it with `--features cuda` (README: \"GPUs\")\n"
                .into(),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| Failure::Run(format!("cannot open CUDA device {ordinal}: {e}")))
}

fn metal() -> Result<Device, Failure> {
    if !cfg!(feature = "metal") {
        return Err(Failure::Invalid(
            "error: --device metal: this build of recipe has no Metal support; build it with `--features metal` on macOS\n"
                .into(),
        ));
    }
    Device::new_metal(0).map_err(|e| Failure::Run(format!("cannot open the Metal device: {e}")))
}

fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", candle_core::utils::get_num_threads()),
        Device::Cuda(_) => format!(
            "cuda:{}",
            match device.location() {
                candle_core::DeviceLocation::Cuda { gpu_id } => gpu_id,
                _ => 0,
            }
        ),
        Device::Metal(_) => "metal".into(),
    }
}

/// Ctrl-C (SIGINT) and SIGTERM (what Slurm and Kubernetes send before they kill) set
/// `interrupt`, so the current step finishes and a checkpoint is written; `signal` says which
/// came. A second Ctrl-C exits at once.
fn stop_on_signals(interrupt: Arc<AtomicBool>, signal: Arc<AtomicI32>) -> Result<(), Failure> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Failure::Run(format!("cannot handle signals: {e}")))?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if interrupt.swap(true, Ordering::SeqCst) && sig == SIGINT {
                std::process::exit(130);
            }
            signal.store(sig, Ordering::SeqCst);
            let name = if sig == SIGTERM { "terminated" } else { "interrupted" };
            eprintln!("\n{name}: writing a checkpoint after this step (Ctrl-C again to stop at once)");
        }
    });
    Ok(())
}

/// The stages this run will train, in order, with the steps each has left.
fn stages_to_train(
    recipe: &Recipe,
    graph: &Graph,
    runs: &Path,
    only: Option<&str>,
) -> Result<Vec<(String, u64)>, Failure> {
    let wanted: Vec<&str> = match only {
        Some(name) => graph.closure(name).iter().map(|n| n.name.as_str()).collect(),
        None => graph.nodes.iter().map(|n| n.name.as_str()).collect(),
    };
    let states = load::node_states(recipe, graph, runs)?;
    Ok(states
        .into_iter()
        .filter(|s| wanted.contains(&s.name.as_str()) && s.state != State::Done)
        .filter_map(|s| Some((s.name.clone(), s.steps?.saturating_sub(s.step.unwrap_or(0)))))
        .collect())
}

pub fn run(
    path: &Path,
    sets: &[String],
    runs: &Path,
    stage: Option<&str>,
    device_name: &str,
    tensorboard: bool,
) -> Result<(), Failure> {
    let launch = Launch::from_env().map_err(|e| Failure::Invalid(format!("error: {e}\n")))?;
    let device = device(device_name, &launch)?;
    let recipe = load::load(path, sets)?;
    if let Some(name) = stage {
        load::stage(&recipe, name)?;
    }
    let graph = load::graph(&recipe)?;
    let run = RunDir::new(runs, &recipe.name);
    let interrupt = Arc::new(AtomicBool::new(false));
    let signal = Arc::new(AtomicI32::new(0));
    stop_on_signals(interrupt.clone(), signal.clone())?;
    let comm = recipe_dist::join(&launch, &device).map_err(|e| Failure::Run(e.to_string()))?;
    if comm.world() > 1 {
        // A panicking rank must end the job like a failing one, not unwind into MPI's shutdown.
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            report(info);
            std::process::abort();
        }));
    }
    if launch.launcher != recipe_dist::Launcher::Alone {
        tracing::info!(
            "rank {} of {} ({}), summing over {}",
            launch.rank,
            launch.world,
            launch.launcher,
            comm.engine()
        );
    }
    // The leader shows progress and writes events; the other ranks are quiet.
    let leads = comm.leads();
    let train_bar =
        crate::progress::TrainBar::new(if leads { stages_to_train(&recipe, &graph, runs, stage)? } else { Vec::new() });
    let events = (tensorboard && leads).then(|| TensorBoard::new(&run.root.join(recipe_graph::TENSORBOARD_DIR)));
    let both = events.as_ref().map(|events| Both(&train_bar, events));
    let observer: &dyn Observer = match (&both, leads) {
        (_, false) => &crate::progress::Quiet,
        (Some(both), true) => both,
        (None, true) => &train_bar,
    };
    let bar = crate::progress::Bar::new();
    let data_progress: &dyn recipe_data::Progress = if leads { &bar } else { &recipe_data::Silent };
    let hooks = Hooks { interrupt: &interrupt, observer, data_progress };
    let reports = match execute(&recipe, &graph, &run, stage, &device, comm.as_ref(), &hooks) {
        Ok(reports) => reports,
        Err(e) if comm.world() > 1 => {
            eprintln!("error: rank {}: {e}", comm.rank());
            comm.abort(1)
        }
        Err(e) => return Err(Failure::Run(e.to_string())),
    };
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
                // A shell's convention: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).
                // A rank stopped because another was signalled answers as if terminated.
                let sig = match signal.load(Ordering::SeqCst) {
                    0 => signal_hook::consts::SIGTERM,
                    sig => sig,
                };
                return Err(Failure::Stopped(128 + sig as u8));
            }
        }
    }
    if ran == 0 {
        tracing::info!("nothing to do: every node is up to date in {}", run.root.display());
    }
    Ok(())
}
