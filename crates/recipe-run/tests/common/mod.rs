//! What the executor's tests share: running a recipe with an interrupt raised after a chosen
//! step, as Ctrl-C would, and reading back the steps it trained.

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
    execute(recipe, &graph, &run, only, &Device::Cpu, &recipe_dist::Solo, &hooks).unwrap()
}

/// The lines of `stage`'s `metrics.jsonl` that record a training step.
#[allow(dead_code)] // not every test binary reads its metrics
pub fn step_lines(runs: &Path, recipe: &Recipe, stage: &str) -> Vec<serde_json::Value> {
    let graph = Graph::build(recipe).unwrap();
    let dir = RunDir::new(runs, &recipe.name).node_dir(graph.node(stage).unwrap());
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["loss"].is_number())
        .collect()
}

/// What training did at each step, as `fields` of its line: without the time a step took,
/// which differs between runs.
#[allow(dead_code)]
pub fn trained(lines: &[serde_json::Value], fields: &[&str]) -> Vec<String> {
    lines.iter().map(|l| fields.iter().map(|f| l[*f].to_string()).collect::<Vec<_>>().join(" ")).collect()
}

/// `[recipe]` named `name`, a tiny model of `n_layers` (32 wide, 32 tokens of context) and a
/// 400-token BPE trained on the recipe's sources: the head of the executor tests' recipes.
#[allow(dead_code)]
pub fn tiny_recipe(name: &str, n_layers: u32) -> String {
    format!(
        "[recipe]\nname = \"{name}\"\n[model]\nd_model = 32\nn_layers = {n_layers}\nn_heads = 4\nd_ff = 64\n\
         max_seq_len = 32\n[tokenizer]\ntrain = {{ vocab_size = 400 }}\n"
    )
}
