//! `recipe export`: copy a finished stage's result, a Hugging Face model directory
//! (`config.json`, `model.safetensors`, `tokenizer.json`), to a folder of the user's choice,
//! and check that it loads back to the same tensors.

use std::path::Path;

use recipe_graph::RunDir;
use recipe_model::Llama;

use crate::{Failure, load};

pub fn run(path: &Path, sets: &[String], runs: &Path, stage_name: &str, out: &Path) -> Result<(), Failure> {
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
    let fail = |e: &dyn std::fmt::Display| Failure::Run(format!("export to {}: {e}", out.display()));
    std::fs::create_dir_all(out).map_err(|e| fail(&e))?;
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(result.join(file), out.join(file)).map_err(|e| fail(&e))?;
    }
    let device = candle_core::Device::Cpu;
    let original = Llama::load_pretrained(&stage.model, &result, &device).map_err(|e| fail(&e))?;
    let exported = Llama::load_pretrained(&stage.model, out, &device).map_err(|e| fail(&e))?;
    for (a, b) in original.tensors().iter().zip(exported.tensors()) {
        let same = (a.1.flatten_all().and_then(|t| t.to_vec1::<f32>()).ok())
            == (b.1.flatten_all().and_then(|t| t.to_vec1::<f32>()).ok());
        if !same {
            return Err(fail(&format!("{} does not load back identically", a.0)));
        }
    }
    tracing::info!("exported `{stage_name}` ({} parameters) to {}", original.param_count(), out.display());
    Ok(())
}
