//! A merge stage's work: read its inputs' weights, combine them tensor by tensor in f32, and
//! (greedy) judge candidate soups by their held-out loss. What the greedy soup took, and
//! every loss it saw, goes to `merge.json` in the stage's folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use recipe_checkpoint::load_checkpoint;
use recipe_data::{LoaderConfig, Mix, Split};
use recipe_model::Llama;
use recipe_spec::{CheckpointFormat, Merge, MergeMethod, Recipe, Stage};
use serde_json::json;

use crate::error::{Error, Result, io};
use crate::trainer::{Observer, evaluate};

/// Everything a merge needs from outside.
pub struct MergeRun<'a> {
    pub recipe: &'a Recipe,
    pub stage: &'a Stage,
    /// Where each input of the stage's merge is, in its order.
    pub inputs: Vec<(PathBuf, CheckpointFormat)>,
    /// Where a task-arithmetic merge's base is.
    pub base: Option<(PathBuf, CheckpointFormat)>,
    /// A greedy merge's data, whose held-out split judges the soups.
    pub stores: Option<Mix>,
    /// `merge.json` goes here.
    pub work_dir: &'a Path,
    pub device: &'a Device,
    pub observer: &'a dyn Observer,
}

/// A model's weights in layout order.
type Weights = Vec<Tensor>;

/// The merged model.
pub fn merge_stage(r: &MergeRun) -> Result<Llama> {
    let merge = r.stage.merge.as_ref().expect("a merge stage has a merge");
    let load = |(path, format): &(PathBuf, CheckpointFormat)| load_weights(r.stage, path, *format);
    let inputs = r.inputs.iter().map(load).collect::<Result<Vec<Weights>>>()?;
    let merged = match merge.method {
        MergeMethod::Uniform => uniform(&inputs.iter().collect::<Vec<_>>())?,
        MergeMethod::Weighted => weighted_sum(&inputs.iter().collect::<Vec<_>>(), &merge.weights)?,
        MergeMethod::TaskArithmetic => {
            let base = load(r.base.as_ref().expect("a task-arithmetic merge has a base"))?;
            task_arithmetic(&base, &inputs, merge.scale.unwrap_or(1.0))?
        }
        MergeMethod::Greedy => greedy(r, merge, &inputs)?,
    };
    model(r.stage, merged, r.device)
}

fn load_weights(stage: &Stage, path: &Path, format: CheckpointFormat) -> Result<Weights> {
    let fail = |e: String| Error::Run(format!("merge `{}`: cannot read {}: {e}", stage.name, path.display()));
    let mut by_name: HashMap<String, Tensor> =
        load_checkpoint(path, format, &stage.model).map_err(|e| fail(e.to_string()))?.into_iter().collect();
    stage
        .model
        .layout()
        .into_iter()
        .map(|(name, shape, _)| match by_name.remove(&name) {
            Some(t) if t.dims() == shape.as_slice() => Ok(t),
            Some(t) => Err(fail(format!("{name} has shape {:?}, expected {shape:?}", t.dims()))),
            None => Err(fail(format!("it has no tensor {name}"))),
        })
        .collect()
}

fn model(stage: &Stage, weights: Weights, device: &Device) -> Result<Llama> {
    let named = stage.model.layout().into_iter().map(|(n, _, _)| n).zip(weights).collect();
    Ok(Llama::for_stage(stage, named, 0, device)?)
}

/// `t` times `w` (a product alone, so that −0 stays −0: `affine` would add +0).
fn scaled(t: &Tensor, w: f64) -> Result<Tensor> {
    Ok(t.broadcast_mul(&Tensor::new(w as f32, t.device())?.to_dtype(t.dtype())?)?)
}

/// Σ wᵢ · θᵢ, tensor by tensor.
pub fn weighted_sum(models: &[&Weights], weights: &[f64]) -> Result<Weights> {
    let n = models[0].len();
    (0..n)
        .map(|t| {
            let mut acc = scaled(&models[0][t], weights[0])?;
            for (m, w) in models.iter().zip(weights).skip(1) {
                acc = (acc + scaled(&m[t], *w)?)?;
            }
            Ok(acc)
        })
        .collect()
}

/// The mean of the models.
pub fn uniform(models: &[&Weights]) -> Result<Weights> {
    weighted_sum(models, &vec![1.0 / models.len() as f64; models.len()])
}

/// base + λ · Σ (θᵢ − base).
pub fn task_arithmetic(base: &Weights, models: &[Weights], scale: f64) -> Result<Weights> {
    (0..base.len())
        .map(|t| {
            let mut delta = (&models[0][t] - &base[t])?;
            for m in &models[1..] {
                delta = (delta + (&m[t] - &base[t])?)?;
            }
            Ok((&base[t] + scaled(&delta, scale)?)?)
        })
        .collect()
}

/// Wortsman et al.'s greedy soup: ingredients in order of their own held-out loss, each kept
/// only when the soup with it has a lower held-out loss than without.
fn greedy(r: &MergeRun, merge: &Merge, inputs: &[Weights]) -> Result<Weights> {
    let stores = r.stores.as_ref().expect("a greedy merge has data");
    let config = LoaderConfig::of_stage(r.recipe, r.stage, Split::Holdout);
    let held_out = |weights: &Weights| -> Result<f64> {
        evaluate(&model(r.stage, weights.clone(), r.device)?, stores, &config, r.stage, r.device, &Default::default())
            .map(|e| e.loss)
    };
    let losses = inputs.iter().map(held_out).collect::<Result<Vec<f64>>>()?;
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by(|a, b| losses[*a].total_cmp(&losses[*b]));
    let mut soup = vec![order[0]];
    let mut best = losses[order[0]];
    let mut tried = Vec::new();
    for &candidate in &order[1..] {
        let members: Vec<&Weights> = soup.iter().chain([&candidate]).map(|i| &inputs[*i]).collect();
        let loss = held_out(&uniform(&members)?)?;
        let kept = loss < best;
        r.observer.message(&format!(
            "greedy soup: adding `{}` gives held-out loss {loss:.4} against {best:.4}: {}",
            merge.inputs[candidate].written(),
            if kept { "kept" } else { "left out" }
        ));
        tried.push(json!({ "input": merge.inputs[candidate].written(), "soup_loss": loss, "kept": kept }));
        if kept {
            soup.push(candidate);
            best = loss;
        }
    }
    let report = json!({
        "method": merge.method,
        "ingredients": merge.inputs.iter().zip(&losses).enumerate().map(|(i, (input, loss))| json!({
            "input": input.written(), "held_out_loss": loss, "in_soup": soup.contains(&i),
        })).collect::<Vec<_>>(),
        "tried": tried,
        "soup": soup.iter().map(|i| merge.inputs[*i].written()).collect::<Vec<_>>(),
        "held_out_loss": best,
    });
    let path = r.work_dir.join("merge.json");
    let text = serde_json::to_string_pretty(&report).expect("plain data");
    recipe_graph::write_atomic(&path, text.as_bytes()).map_err(io(&path))?;
    uniform(&soup.iter().map(|i| &inputs[*i]).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(values: &[f32]) -> Weights {
        vec![Tensor::new(values, &Device::Cpu).unwrap()]
    }

    fn values(w: &Weights) -> Vec<f32> {
        w[0].to_vec1().unwrap()
    }

    #[test]
    fn merging_a_model_with_itself_gives_it_back_bit_for_bit() {
        let bits = |w: &Weights| values(w).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let a = weights(&[0.1, -3.7e-5, 1.0e7, f32::MIN_POSITIVE, 0.3333333, -0.0]);
        assert_eq!(bits(&uniform(&[&a, &a]).unwrap()), bits(&a));
        assert_eq!(bits(&uniform(&[&a]).unwrap()), bits(&a));
        assert_eq!(bits(&weighted_sum(&[&a, &a], &[0.5, 0.5]).unwrap()), bits(&a));
        // base + λ·(a − a) adds +0, which turns a −0 into +0; every other value comes back.
        let positive = weights(&[0.1, -3.7e-5, 1.0e7, f32::MIN_POSITIVE, 0.3333333]);
        let back = task_arithmetic(&positive, std::slice::from_ref(&positive), 0.7).unwrap();
        assert_eq!(bits(&back), bits(&positive));
    }

    #[test]
    fn the_methods_compute_what_they_say() {
        let (a, b, base) = (weights(&[1.0, 2.0]), weights(&[3.0, 6.0]), weights(&[1.0, 1.0]));
        assert_eq!(values(&uniform(&[&a, &b]).unwrap()), [2.0, 4.0]);
        assert_eq!(values(&weighted_sum(&[&a, &b], &[0.75, 0.25]).unwrap()), [1.5, 3.0]);
        // 1 + 0.5 · ((1 − 1) + (3 − 1)) = 2; 1 + 0.5 · ((2 − 1) + (6 − 1)) = 4
        assert_eq!(values(&task_arithmetic(&base, &[a, b], 0.5).unwrap()), [2.0, 4.0]);
    }
}
