//! What the executor's tests share: running a recipe with an interrupt raised after a chosen
//! step, as Ctrl-C would.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;
use recipe_graph::{Graph, RunDir};
use recipe_run::{Hooks, NodeReport, execute};
use recipe_spec::Recipe;
use recipe_train::{Observer, StepMetrics};

/// Raises the interrupt flag once `stop_at` steps of a stage are done.
struct Stopper<'a> {
    stage: Mutex<String>,
    stop_at: Option<(&'a str, u64)>,
    flag: &'a AtomicBool,
}

impl Observer for Stopper<'_> {
    fn start(&self, stage: &str, _: u64, _: u64) {
        *self.stage.lock().unwrap() = stage.to_string();
    }
    fn step(&self, m: &StepMetrics) {
        if self.stop_at == Some((self.stage.lock().unwrap().as_str(), m.step)) {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
    fn message(&self, _: &str) {}
    fn finish(&self) {}
}

/// Run what `only` needs (or all) of `recipe` on the CPU in `runs`, interrupted once
/// `stop_at` steps of a stage are done.
pub fn execute_until(
    recipe: &Recipe,
    runs: &Path,
    stop_at: Option<(&str, u64)>,
    only: Option<&str>,
) -> Vec<(String, NodeReport)> {
    let graph = Graph::build(recipe).unwrap();
    let run = RunDir::new(runs, &recipe.name);
    let flag = AtomicBool::new(false);
    let observer = Stopper { stage: Mutex::new(String::new()), stop_at, flag: &flag };
    let hooks = Hooks { interrupt: &flag, observer: &observer, data_progress: &recipe_data::Silent };
    execute(recipe, &graph, &run, only, &Device::Cpu, &hooks).unwrap()
}
