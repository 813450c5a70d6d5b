//! What `plan` estimates is what trains: for every stage of every example recipe, the
//! parameter counts of `Stage::estimate` equal those of the model built from the stage, and
//! the model's weights have the shapes of `Model::layout`. Needs `scripts/fetch-assets.sh`
//! (the SmolLM2 recipes read their checkpoint's header).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use recipe_checkpoint::Headers;
use recipe_model::Llama;
use recipe_spec::Recipe;

#[test]
fn plan_counts_the_parameters_of_the_model_that_trains() {
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
    let mut files: Vec<_> = std::fs::read_dir(&recipes).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    files.sort();
    assert!(files.len() >= 5, "the example recipes are in {}", recipes.display());
    for file in files {
        let recipe = Recipe::load(&file, &[], &Headers).unwrap_or_else(|e| panic!("{e}"));
        for stage in &recipe.stages {
            let what = format!("{} stage `{}`", file.display(), stage.name);
            // Zeros are enough for shapes, and cheap at SmolLM2's 135M parameters.
            let base: Vec<(String, Tensor)> = stage
                .model
                .layout()
                .into_iter()
                .map(|(name, shape, _)| (name, Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()))
                .collect();
            let model = Llama::for_stage(stage, base, 0, &Device::Cpu).unwrap_or_else(|e| panic!("{what}: {e}"));
            let estimate = stage.estimate(&recipe);
            let weights = model.weights().unwrap();
            let total: usize = weights.iter().map(|(_, t)| t.elem_count()).sum();
            assert_eq!(estimate.params_total, total as u64, "{what}: all parameters");
            assert_eq!(estimate.params_trainable, model.trainable_param_count() as u64, "{what}: trainable");
            let shapes: Vec<(String, Vec<usize>)> = weights.into_iter().map(|(n, t)| (n, t.dims().to_vec())).collect();
            let layout: Vec<(String, Vec<usize>)> = stage.model.layout().into_iter().map(|(n, s, _)| (n, s)).collect();
            assert_eq!(shapes, layout, "{what}: weight shapes");
        }
    }
}
