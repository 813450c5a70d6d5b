//! A merge stage's work: read its inputs' weights, combine them tensor by tensor in f32, and
//! (greedy) judge candidate soups by their held-out loss. What the greedy soup took, and
//! every loss it saw, goes to `merge.json` in the stage's folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use recipe_checkpoint::load_checkpoint;
use recipe_data::{LoaderConfig, Mix, Split};
use recipe_kernels::uniform_noise;
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
        MergeMethod::Ties | MergeMethod::DareTies | MergeMethod::DareLinear => {
            let base = load(r.base.as_ref().expect("a trimming merge has a base"))?;
            let trim = match merge.method {
                MergeMethod::Ties => Trim::Magnitude,
                _ => Trim::Random { seed: r.recipe.seed },
            };
            let combine = TaskVectors {
                weights: &merge.weights,
                density: merge.density.expect("a trimming merge has a density"),
                trim,
                elect_sign: merge.method != MergeMethod::DareLinear,
                normalize: merge.normalize.unwrap_or(false),
                scale: merge.scale.unwrap_or(1.0),
            };
            combine.merge(&base, &inputs)?
        }
        MergeMethod::Slerp => slerp(&inputs[0], &inputs[1], merge.t.expect("a slerp merge has t"))?,
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

/// How a task vector is trimmed to its density.
#[derive(Clone, Copy)]
pub enum Trim {
    /// TIES: the largest entries in magnitude (ties broken by position).
    Magnitude,
    /// DARE: each entry kept with probability `density`, drawn from a hash of the seed, the
    /// input's and the tensor's place and the entry's index; the survivors × 1/density.
    Random { seed: u64 },
}

/// The merges over task vectors (each input − base) that mergekit calls generalized task
/// arithmetic: trim each, weigh it, optionally elect each entry's sign (the sign of the
/// weighted sum; a tie counts as +) and keep only the entries that agree, sum, optionally
/// divide by the summed weights of what was kept, and add λ × that to the base.
pub struct TaskVectors<'a> {
    pub weights: &'a [f64],
    pub density: f64,
    pub trim: Trim,
    pub elect_sign: bool,
    pub normalize: bool,
    pub scale: f64,
}

impl TaskVectors<'_> {
    pub fn merge(&self, base: &Weights, models: &[Weights]) -> Result<Weights> {
        (0..base.len())
            .map(|t| {
                let base_values = base[t].flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                let deltas = models
                    .iter()
                    .enumerate()
                    .map(|(m, model)| {
                        let theta = model[t].flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                        let delta: Vec<f32> = theta.iter().zip(&base_values).map(|(x, b)| x - b).collect();
                        Ok(self.trimmed(delta, m, t))
                    })
                    .collect::<Result<Vec<Vec<f32>>>>()?;
                let merged = self.combine(&base_values, &deltas);
                Ok(Tensor::from_vec(merged, base[t].shape(), base[t].device())?.to_dtype(base[t].dtype())?)
            })
            .collect()
    }

    fn trimmed(&self, mut delta: Vec<f32>, model: usize, tensor: usize) -> Vec<f32> {
        if self.density >= 1.0 {
            return delta;
        }
        match self.trim {
            Trim::Magnitude => {
                let keep = (self.density * delta.len() as f64) as usize;
                let mut order: Vec<usize> = (0..delta.len()).collect();
                // A total order, so the partition is the same whatever the selection's path.
                let larger_first = |&a: &usize, &b: &usize| delta[b].abs().total_cmp(&delta[a].abs()).then(a.cmp(&b));
                if keep < order.len() {
                    order.select_nth_unstable_by(keep, larger_first);
                }
                for &i in &order[keep..] {
                    delta[i] = 0.0;
                }
            }
            Trim::Random { seed } => {
                let seed = seed ^ ((model as u64) << 32 | tensor as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let draws = uniform_noise(delta.len(), seed, 0.5, candle_core::DType::F32, &Device::Cpu)
                    .and_then(|t| t.to_vec1::<f32>())
                    .expect("host noise");
                let rescale = (1.0 / self.density) as f32;
                for (d, u) in delta.iter_mut().zip(draws) {
                    *d = if f64::from(u) + 0.5 < self.density { *d * rescale } else { 0.0 };
                }
            }
        }
        delta
    }

    /// base + λ · (Σ wᵢ δᵢ over the entries kept) / (Σ wᵢ over them, when normalizing).
    fn combine(&self, base: &[f32], deltas: &[Vec<f32>]) -> Vec<f32> {
        let weights: Vec<f32> = self.weights.iter().map(|&w| w as f32).collect();
        let scale = self.scale as f32;
        (0..base.len())
            .map(|i| {
                let weighted = deltas.iter().zip(&weights).map(|(d, w)| d[i] * w);
                let elected = if weighted.clone().sum::<f32>() >= 0.0 { 1.0 } else { -1.0 };
                let (mut mixed, mut divisor) = (0f32, 0f32);
                for (wd, w) in weighted.zip(&weights) {
                    if !self.elect_sign || wd.signum() == elected && wd != 0.0 {
                        mixed += wd;
                        divisor += w;
                    }
                }
                if self.normalize && divisor.abs() >= 1e-8 {
                    mixed /= divisor;
                }
                base[i] + scale * mixed
            })
            .collect()
    }
}

/// Spherical interpolation from `a` (t = 0) to `b` (t = 1), tensor by tensor: along the great
/// circle between their directions, each scaled as it is; linear where the directions are
/// nearly parallel (|cos| > 0.9995), as mergekit's `slerp`.
pub fn slerp(a: &Weights, b: &Weights, t: f64) -> Result<Weights> {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let (xs, ys) = (
                x.flatten_all()?.to_dtype(candle_core::DType::F64)?,
                y.flatten_all()?.to_dtype(candle_core::DType::F64)?,
            );
            let norm = |v: &Tensor| -> Result<f64> { Ok(v.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt()) };
            let (nx, ny) = (norm(&xs)?, norm(&ys)?);
            let unit = |n: f64| if n > 1e-8 { 1.0 / n } else { 1.0 };
            let cos = (&xs * &ys)?.sum_all()?.to_scalar::<f64>()? * unit(nx) * unit(ny);
            let (wa, wb) = if cos.abs() > 0.9995 {
                (1.0 - t, t)
            } else {
                let omega = cos.acos();
                ((omega * (1.0 - t)).sin() / omega.sin(), (omega * t).sin() / omega.sin())
            };
            let merged = ((&xs * wa)? + (&ys * wb)?)?;
            Ok(merged.to_dtype(x.dtype())?.reshape(x.shape())?)
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

    fn ties(weights: &[f64], density: f64, normalize: bool) -> TaskVectors<'_> {
        TaskVectors { weights, density, trim: Trim::Magnitude, elect_sign: true, normalize, scale: 1.0 }
    }

    /// TIES worked by hand. Differences from the base (0): a = [3, −2, 1, 0.5], b = [−1, −4, 2, 0];
    /// trimmed to their largest half: a = [3, −2, 0, 0], b = [0, −4, 2, 0]. Elected signs (of
    /// the weighted sums): [+, −, +, +]. Kept: [3], [−2, −4], [2], []; normalised by the weights
    /// of what was kept.
    #[test]
    fn ties_trims_elects_signs_and_averages_what_agrees() {
        let base = weights(&[0.0, 0.0, 0.0, 0.0]);
        let (a, b) = (weights(&[3.0, -2.0, 1.0, 0.5]), weights(&[-1.0, -4.0, 2.0, 0.0]));
        let inputs = [a, b];
        assert_eq!(values(&ties(&[1.0, 1.0], 0.5, true).merge(&base, &inputs).unwrap()), [3.0, -3.0, 2.0, 0.0]);
        // Weights 1 and 0.5, not normalised: [3, −2 − 2, 1, 0].
        assert_eq!(values(&ties(&[1.0, 0.5], 0.5, false).merge(&base, &inputs).unwrap()), [3.0, -4.0, 1.0, 0.0]);
        // Density 1 keeps everything: signs [+, −, +, +]; kept [3], [−2, −4], [1, 2], [0.5].
        assert_eq!(values(&ties(&[1.0, 1.0], 1.0, true).merge(&base, &inputs).unwrap()), [3.0, -3.0, 1.5, 0.5]);
        // A scale multiplies the merged difference, added to a base that is not zero.
        let base = weights(&[1.0, 1.0, 1.0, 1.0]);
        let shifted = inputs.map(|w| vec![(&w[0] + 1.0).unwrap()]);
        let halved = TaskVectors { scale: 0.5, ..ties(&[1.0, 1.0], 0.5, true) };
        assert_eq!(values(&halved.merge(&base, &shifted).unwrap()), [2.5, -0.5, 2.0, 1.0]);
    }

    /// DARE keeps about `density` of the entries, each × 1/density, so that the difference is
    /// kept in expectation; the draw is the seed's, and differs between inputs.
    #[test]
    fn dare_drops_at_random_and_rescales_the_survivors() {
        let n = 100_000;
        let base = vec![Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu).unwrap()];
        let ones = vec![Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap()];
        let dare = |seed, weights: &[f64], inputs: &[Weights]| {
            let linear = TaskVectors {
                weights,
                density: 0.25,
                trim: Trim::Random { seed },
                elect_sign: false,
                normalize: false,
                scale: 1.0,
            };
            values(&linear.merge(&base, inputs).unwrap())
        };
        let merged = dare(3, &[1.0], std::slice::from_ref(&ones));
        let kept = merged.iter().filter(|&&v| v != 0.0).count();
        assert!(merged.iter().all(|&v| v == 0.0 || v == 4.0));
        assert!((kept as f64 / n as f64 - 0.25).abs() < 0.01, "{kept} of {n} kept");
        assert_eq!(merged, dare(3, &[1.0], std::slice::from_ref(&ones)));
        assert_ne!(merged, dare(4, &[1.0], std::slice::from_ref(&ones)));
        // Two inputs draw apart: where both survive 8, where one 4.
        let two = dare(3, &[1.0, 1.0], &[ones.clone(), ones.clone()]);
        assert!(two.contains(&8.0) && two.contains(&4.0));
    }

    /// SLERP: the ends give the inputs back; between orthogonal unit vectors, the point at
    /// angle t·90°; parallel inputs fall back to the straight line.
    #[test]
    fn slerp_follows_the_great_circle() {
        let (x, y) = (weights(&[1.0, 0.0]), weights(&[0.0, 1.0]));
        let close = |got: Vec<f32>, want: [f64; 2]| {
            assert!(got.iter().zip(want).all(|(g, w)| (f64::from(*g) - w).abs() < 1e-6), "{got:?} against {want:?}");
        };
        close(values(&slerp(&x, &y, 0.0).unwrap()), [1.0, 0.0]);
        close(values(&slerp(&x, &y, 1.0).unwrap()), [0.0, 1.0]);
        let angle = 0.3 * std::f64::consts::FRAC_PI_2;
        close(values(&slerp(&x, &y, 0.3).unwrap()), [angle.cos(), angle.sin()]);
        close(values(&slerp(&x, &weights(&[2.0, 0.0]), 0.25).unwrap()), [1.25, 0.0]);
    }
}
