//! `recipe export`: copy a finished stage's result, a Hugging Face model directory
//! (`config.json`, `model.safetensors` with any LoRA merged in, `tokenizer.json`) or a LoRA
//! stage's PEFT adapter, to a folder of the user's choice, and check that it loads back to the
//! same tensors.

use std::path::Path;

use recipe_graph::RunDir;
use recipe_model::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, Llama};

use crate::{Failure, load};

pub fn run(
    path: &Path,
    sets: &[String],
    runs: &Path,
    stage_name: &str,
    out: &Path,
    adapter: bool,
) -> Result<(), Failure> {
    let recipe = load::load(path, sets)?;
    let Some(stage) = recipe.stage(stage_name) else {
        let hint = recipe_spec::did_you_mean(stage_name, recipe.stages.iter().map(|s| s.name.as_str()))
            .map_or(String::new(), |s| format!("; did you mean `{s}`?"));
        return Err(Failure::Invalid(format!("error: no stage named `{stage_name}`{hint}\n")));
    };
    let graph = load::graph(&recipe)?;
    let run = RunDir::new(runs, &recipe.name);
    let result = run.final_dir(graph.node(stage_name).expect("every stage has a node"));
    if !result.is_dir() {
        return Err(Failure::Run(format!(
            "stage `{stage_name}` has no result for its current key; run `recipe train {} --stage {stage_name}` first",
            path.display()
        )));
    }
    if adapter && stage.peft.is_none() {
        return Err(Failure::Invalid(format!(
            "error: stage `{stage_name}` trains every weight, so it has no adapter to export; drop `--adapter`\n"
        )));
    }
    let fail = |e: &dyn std::fmt::Display| Failure::Run(format!("export to {}: {e}", out.display()));
    std::fs::create_dir_all(out).map_err(|e| fail(&e))?;
    let weights = if adapter { ADAPTER_WEIGHTS } else { "model.safetensors" };
    let mut files = vec!["config.json", "tokenizer.json", weights];
    if adapter {
        files.push(ADAPTER_CONFIG);
    }
    for file in files {
        std::fs::copy(result.join(file), out.join(file)).map_err(|e| fail(&e))?;
    }
    let device = candle_core::Device::Cpu;
    let read = |dir: &Path| candle_core::safetensors::load(dir.join(weights), &device).map_err(|e| fail(&e));
    let (original, exported) = (read(&result)?, read(out)?);
    let mut elements = 0;
    for (name, a) in &original {
        let values = |t: &candle_core::Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>()).ok();
        if exported.get(name).and_then(values) != values(a) {
            return Err(fail(&format!("{name} does not load back identically")));
        }
        elements += a.elem_count();
    }
    if !adapter {
        Llama::load_pretrained(&stage.model, out, &device).map_err(|e| fail(&e))?;
    }
    tracing::info!("exported `{stage_name}` ({elements} parameters, {weights}) to {}", out.display());
    Ok(())
}
