//! The training loop of one stage, top to bottom: build or resume the model, optimizer and
//! loader; then per step draw the micro-batches, accumulate gradients, clip, update, log,
//! checkpoint and evaluate; finally publish the result.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use recipe_checkpoint::{load_checkpoint, training};
use recipe_data::{Bandit, Batch, Loader, LoaderConfig, LoaderState, Mix, Split, TokenStore};
use recipe_dist::Communicator;
use recipe_model::{Dtypes, KeySpans, Llama, masked_cross_entropy_rows, remap_layers};
use recipe_spec::{
    AverageUse, CheckpointFormat, Distill, OnNonfinite, Peft, Precision, Preference, PreferenceLoss, Recipe, Stage,
};
use serde::{Deserialize, Serialize};

use crate::average::{Averager, set_weights, with_weights};
use crate::distill::{kd_loss, teacher_log_probs};
use crate::error::{Error, Result, io};
use crate::optimizer::{Optimizer, clip_factor};
use crate::preference::{PairScores, kl_terms, kto_loss, pair_loss};
use crate::scaler::LossScaler;

/// What a training checkpoint holds besides tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    pub loader: LoaderState,
    /// Optimizer updates applied, when not `step` (an f16 stage skips overflowing steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer_steps: Option<u64>,
    /// The loss scaler of an f16-mixed stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaler: Option<LossScaler>,
    /// Steps skipped so far for a non-finite loss or gradient (`on_nonfinite = "skip"`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nonfinite_skipped: u64,
    /// Online mixing's bandit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandit: Option<Bandit>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepMetrics {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Row positions processed per second (padding included).
    pub tokens_per_s: f64,
    /// Row positions trained so far in this stage, this step's included.
    pub tokens: u64,
    /// The length of this step's rows, when it changes over the stage (`seq_len` in phases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<u32>,
    /// Targets that counted towards the loss in this step.
    pub loss_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_ppl: Option<f64>,
    /// Each held-out source's loss alone (`eval.by_source`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss_by_source: Option<BTreeMap<String, f64>>,
    /// The held-out loss of the averaged weights (a stage with `average`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss_avg: Option<f64>,
    /// Distillation only: the cross-entropy on the data and the KD term (T² included) that
    /// `loss` mixes as alpha·KD + (1 − alpha)·CE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ce_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kd_loss: Option<f64>,
    /// Preference pairs only: the mean implicit reward `β·(log π − log π_ref)` of the chosen and
    /// of the rejected responses, their mean margin, and the share of pairs whose chosen
    /// response is rewarded more (TRL's `rewards/*`); held out, that share as well.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen_reward: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_reward: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_margin: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_reward_accuracy: Option<f64>,
    /// KTO only: the step's KL estimate, `max(0, mean log-ratio)` of the prompts with other
    /// records' responses (TRL's `kl`). Its `chosen_reward` and `rejected_reward` are the mean
    /// rewards of the desirable and of the undesirable responses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    /// The loss scale after this step (f16-mixed only), and how many steps of the stage so far
    /// left the weights as they were because their gradients overflowed (f16-mixed) or their
    /// loss or gradient was not finite (`on_nonfinite = "skip"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<u64>,
    /// The process's peak resident memory so far, in MiB (Linux): what `plan`'s memory estimate
    /// predicts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_memory_mib: Option<f64>,
    /// Tokens of each source in the rows trained so far in this stage (what the mix became).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source_tokens: BTreeMap<String, u64>,
    /// Online mixing: the shares this step's documents were drawn with, and each source's mean
    /// training loss in the step (what the bandit is rewarded with).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub mix_weights: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub loss_by_source: BTreeMap<String, f64>,
}

/// Receives progress; the binary draws a bar, tests collect the losses.
pub trait Observer {
    fn start(&self, stage: &str, start_step: u64, steps: u64);
    fn step(&self, m: &StepMetrics);
    fn message(&self, text: &str);
    fn finish(&self);
}

pub enum Outcome {
    /// Every step ran; the trained model, for the caller to publish.
    Finished(Box<Llama>),
    /// Stopped by an interrupt after writing a checkpoint at this step.
    Interrupted(u64),
}

/// Everything a stage run needs from outside.
pub struct StageRun<'a> {
    pub recipe: &'a Recipe,
    pub stage: &'a Stage,
    /// The stage's working folder: `metrics.jsonl` and `checkpoints/` go here, and a
    /// checkpoint found here is resumed.
    pub work_dir: &'a Path,
    /// The result folder of the stage named in `after`, if any.
    pub start_from: Option<std::path::PathBuf>,
    /// A distillation stage's teachers, loaded frozen.
    pub teachers: Vec<Llama>,
    pub stores: Mix,
    /// The sources evaluated alone (`eval.by_source`), in `Stage::sources_evaluated`'s order.
    pub evaluated: Vec<Arc<TokenStore>>,
    pub device: &'a Device,
    /// The ranks training this stage together; each takes its share of every step's rows,
    /// and only the leader writes the working folder.
    pub comm: &'a dyn Communicator,
    pub interrupt: &'a AtomicBool,
    pub observer: &'a dyn Observer,
}

/// Where a stage keeps its training checkpoints, under its working folder.
pub fn checkpoints_dir(work_dir: &Path) -> std::path::PathBuf {
    work_dir.join("checkpoints")
}

/// Train one stage to its last step, resuming from the newest valid checkpoint in its
/// working folder, or until `interrupt` is set.
pub fn train_stage(r: &StageRun) -> Result<Outcome> {
    // From here on the same tensors are freed and allocated every step; what tokenizing freed
    // before has gone back to the system.
    recipe_kernels::retain_freed_memory();
    let (recipe, stage) = (r.recipe, r.stage);
    std::fs::create_dir_all(r.work_dir).map_err(io(r.work_dir))?;
    let checkpoints = checkpoints_dir(r.work_dir);
    let metrics_path = r.work_dir.join("metrics.jsonl");

    let mut model = build_model(stage, r.start_from.as_deref(), recipe.seed, r.device)?;
    let relora = stage.peft.as_ref().and_then(|p| p.relora.as_ref());
    let mut scaler = (stage.precision == Precision::F16Mixed).then(LossScaler::default);
    let online = stage.data.online.as_ref();
    // Under PEFT the reference is the policy with its adapters left out, unless its base
    // weights do not stay the starting weights.
    let needs_reference = stage.preference.as_ref().is_some_and(Preference::needs_reference);
    let own_base = stage.peft.as_ref().is_some_and(Peft::keeps_starting_base);
    let frozen_reference = (needs_reference && !own_base)
        .then(|| build_reference(stage, r.start_from.as_deref(), r.device))
        .transpose()?;
    let reference = match &frozen_reference {
        Some(model) => Some(Reference::Frozen(model)),
        None => (needs_reference && own_base).then_some(Reference::Base),
    };
    let objective = Objective {
        distill: stage.distill.as_ref().map(|d| (d, r.teachers.as_slice())),
        sources: if online.is_some() { stage.data.mix.len() } else { 0 },
        preference: stage.preference.as_ref().map(|p| (p, reference)),
        kl: 0.0,
    };
    let mut bandit = online.map(|_| Bandit::new(stage.data.mix.len()));
    let mut optimizer = Optimizer::new(&stage.optim);
    let loader_config = |split| LoaderConfig::of_stage(recipe, stage, split);
    let mut loader = Loader::new(r.stores.clone(), &loader_config(Split::Train))?;

    let mut averager = stage.average.as_ref().map(|a| Averager::new(a, &model)).transpose()?;
    let mut start_step = 0;
    let mut nonfinite_skipped = 0;
    let warn = |text: String| {
        tracing::warn!("{text}");
        r.observer.message(&text);
    };
    if let Some(ckpt) = training::latest_valid::<TrainState>(&checkpoints, r.device, &warn)? {
        for p in &model.params {
            let t = ckpt.model.get(&p.name).ok_or_else(|| Error::Run(format!("checkpoint lacks {}", p.name)))?;
            p.var.set(t)?;
        }
        model.restore_bases(&ckpt.model)?;
        optimizer.restore(ckpt.state.optimizer_steps.unwrap_or(ckpt.state.step), &ckpt.optimizer)?;
        loader.restore(ckpt.state.loader.clone());
        if let Some(averager) = averager.as_mut() {
            averager.restore(&ckpt.optimizer)?;
        }
        if scaler.is_some() {
            scaler = ckpt.state.scaler.clone();
        }
        nonfinite_skipped = ckpt.state.nonfinite_skipped;
        if let (Some(bandit), Some(saved)) = (bandit.as_mut(), &ckpt.state.bandit) {
            *bandit = saved.clone();
        }
        start_step = ckpt.state.step;
        r.observer.message(&format!("resuming `{}` from {}", stage.name, ckpt.dir.display()));
    }
    agree_on_start(r.comm, start_step, &checkpoints)?;
    let leads = r.comm.leads();
    let mut metrics_file = None;
    if leads {
        truncate_metrics(&metrics_path, start_step)?;
        record_session(r.work_dir, start_step, stage, r.device, r.comm)?;
        let file =
            std::fs::OpenOptions::new().create(true).append(true).open(&metrics_path).map_err(io(&metrics_path))?;
        metrics_file = Some(file);
    }

    // Evaluation is the leader's alone: the others wait for it at the next step's sums.
    if let Some(metrics_file) = metrics_file.as_mut().filter(|_| start_step == 0 && stage.eval.every > 0) {
        // The starting point, so that what the stage changed can be read off the metrics.
        let held = evaluate(&model, &r.stores, &loader_config(Split::Holdout), stage, r.device, &objective)?;
        let eval_loss = held.loss;
        let mut line = serde_json::json!({ "step": 0, "eval_loss": eval_loss });
        match (held.reward_accuracy, objective.preference) {
            (Some(accuracy), _) => line["eval_reward_accuracy"] = accuracy.into(),
            (None, None) => line["eval_ppl"] = eval_loss.exp().into(),
            (None, Some(_)) => {}
        }
        if stage.eval.by_source {
            line["eval_loss_by_source"] = serde_json::json!(evaluate_by_source(&model, r, stage, &objective)?);
        }
        append_line(metrics_file, &line.to_string()).map_err(io(&metrics_path))?;
        r.observer.message(&format!("`{}` before training: eval loss {eval_loss:.4}", stage.name));
    }
    let accumulation = (stage.batch_size / stage.micro_batch_size) as usize;
    r.observer.start(&stage.name, start_step, stage.steps);
    for step in start_step..stage.steps {
        let started = Instant::now();
        let lr = stage.optim.lr * stage.lr_factor(step);
        if let Some(relora) = relora.filter(|r| r.restarts_before(step)) {
            let reset = model.restart_adapters(recipe.seed, step / relora.every)?;
            optimizer.prune(&reset, relora.prune)?;
        }

        if !stage.data.phases.is_empty() {
            loader.set_phase(stage.data.phase_at(step), stage.data.weights_at(step));
        }
        let policy = bandit.as_ref().map(Bandit::policy);
        if let Some(shares) = &policy {
            loader.set_phase(0, shares.clone());
        }
        let shape = stage.shape_at(step);
        loader.set_seq_len(shape.seq_len);
        // Draw the whole step's data first: each micro-batch's loss is weighted by its share of
        // the step's loss tokens, so accumulation gives the exact mean over the batch.
        // Every rank draws the whole step, so the loader's state stays global; each trains
        // its share of the rows, and the sums over ranks are the whole step's.
        let batches: Vec<Batch> =
            (0..accumulation).map(|_| loader.next_batch(shape.micro_batch_size as usize)).collect();
        let loss_tokens = loss_tokens(&batches);
        let (share, first_row) = Batch::share(&batches, r.comm.rank(), r.comm.world());
        let noise_seed = step_seed(recipe.seed, step).wrapping_add(first_row as u64);
        let loss_scale = scaler.as_ref().map_or(1.0, |s| s.scale);
        let units = objective.units(&batches);
        // KTO's KL estimate is the whole step's: each rank's rows, summed over the ranks.
        let step_objective = match objective.kto() {
            true => {
                let (sum, rows) = kl_estimate(&model, &share, r.device, &objective)?;
                let mut totals = [sum, rows];
                if r.comm.world() > 1 {
                    r.comm.sum(&mut totals)?;
                }
                Objective { kl: (totals[0] / totals[1].max(1.0)).max(0.0), ..objective }
            }
            false => objective,
        };
        let mut step_gradients =
            gradients(&model, &share, units, r.device, &step_objective, Some(noise_seed), loss_scale)?;
        sum_over_ranks(r.comm, &mut step_gradients)?;
        let StepGradients { loss, terms, grads, pairs, .. } = &step_gradients;
        let (loss, terms) = (*loss, *terms);
        // KTO's rewards are means over the desirable and over the undesirable responses.
        let pair_mean = |i: usize| {
            pairs.map(|sums| match (step_objective.kto(), i) {
                (true, 0) => sums[0] / sums[2].max(1.0),
                (true, _) => sums[1] / (units as f64 - sums[2]).max(1.0),
                (false, _) => sums[i] / units.max(1) as f64,
            })
        };
        let by_source = step_gradients.by_source();
        if let (Some(bandit), Some(shares), Some(online)) = (bandit.as_mut(), &policy, online) {
            bandit.update(&by_source, shares, online.smoothing);
        }
        let named = |values: Vec<Option<f64>>| -> BTreeMap<String, f64> {
            stage.data.mix.iter().zip(values).filter_map(|((n, _), v)| Some((n.clone(), v?))).collect()
        };
        let grad_norm = match loss.is_finite() {
            true => update(&model, &mut optimizer, grads, lr, loss_scale, scaler.as_mut())?,
            false => f64::NAN,
        };
        let done = step + 1;
        if let Some(averager) = averager.as_mut() {
            averager.after_step(&model, done)?;
        }
        // A loss scaler handles overflowing f16 gradients itself.
        if !loss.is_finite() || (scaler.is_none() && !grad_norm.is_finite()) {
            match stage.on_nonfinite {
                OnNonfinite::Skip => nonfinite_skipped += 1,
                OnNonfinite::Stop => {
                    let what = if loss.is_finite() { "gradient norm" } else { "loss" };
                    let value = if loss.is_finite() { grad_norm } else { loss };
                    let resume = match recipe_graph::checkpoint_steps(&checkpoints).last() {
                        Some(last) => format!("`recipe train` resumes from the checkpoint of step {last}"),
                        None => "it has no checkpoint yet".into(),
                    };
                    return Err(Error::Run(format!(
                        "stage `{}`: the {what} is {value} at step {done}; nothing of that step was applied, and \
                         {resume}. Lower `optim.lr` or raise the precision, or set `on_nonfinite = \"skip\"` to \
                         step over such steps",
                        stage.name
                    )));
                }
            }
        }

        let positions = (shape.batch_size * shape.seq_len) as f64;
        let mut m = StepMetrics {
            step: done,
            loss,
            lr,
            grad_norm,
            tokens_per_s: positions / started.elapsed().as_secs_f64(),
            tokens: stage.tokens_until(done),
            seq_len: stage.lengths.grows().then_some(shape.seq_len),
            loss_tokens,
            eval_loss: None,
            eval_ppl: None,
            eval_loss_by_source: None,
            eval_loss_avg: None,
            ce_loss: terms.map(|t| t.0),
            kd_loss: terms.map(|t| t.1),
            chosen_reward: pair_mean(0),
            rejected_reward: pair_mean(1),
            reward_margin: pair_mean(0).zip(pair_mean(1)).map(|(c, r)| c - r),
            reward_accuracy: pair_mean(2).filter(|_| !step_objective.kto()),
            eval_reward_accuracy: None,
            kl: step_objective.kto().then_some(step_objective.kl),
            loss_scale: scaler.as_ref().map(|s| s.scale),
            skipped_steps: (scaler.is_some() || stage.on_nonfinite == OnNonfinite::Skip)
                .then(|| scaler.as_ref().map_or(0, |s| s.skipped) + nonfinite_skipped),
            peak_memory_mib: peak_resident_bytes().map(|b| b as f64 / (1u64 << 20) as f64),
            source_tokens: loader.stats().sources.into_iter().map(|s| (s.name, s.tokens)).collect(),
            mix_weights: named(policy.iter().flatten().map(|w| Some(*w)).collect()),
            loss_by_source: named(by_source),
        };
        if leads && stage.eval.every > 0 && (done % stage.eval.every == 0 || done == stage.steps) {
            let held = evaluate(&model, &r.stores, &loader_config(Split::Holdout), stage, r.device, &objective)?;
            m.eval_loss = Some(held.loss);
            // A perplexity is of a cross-entropy; pairs have their accuracy instead.
            m.eval_ppl = objective.preference.is_none().then(|| held.loss.exp());
            m.eval_reward_accuracy = held.reward_accuracy;
            if stage.eval.by_source {
                m.eval_loss_by_source = Some(evaluate_by_source(&model, r, stage, &objective)?);
            }
            if let Some(weights) = averager.as_ref().map(Averager::averaged).transpose()?.flatten() {
                let eval_avg = with_weights(&model, &weights, || {
                    evaluate(&model, &r.stores, &loader_config(Split::Holdout), stage, r.device, &objective)
                })??;
                m.eval_loss_avg = Some(eval_avg.loss);
            }
        }
        if let Some(metrics_file) = metrics_file.as_mut() {
            append_line(metrics_file, &serde_json::to_string(&m).expect("plain data")).map_err(io(&metrics_path))?;
        }
        if done % stage.log_every == 0 || done == stage.steps {
            tracing::debug!(stage = %stage.name, step = done, loss, lr, grad_norm, "step");
        }
        r.observer.step(&m);

        let interrupted = any_rank(r.comm, r.interrupt.load(Ordering::SeqCst))?;
        let checkpoint_due = stage.checkpoint_every > 0 && done % stage.checkpoint_every == 0;
        if done < stage.steps && leads && (interrupted || checkpoint_due) {
            if let Some(metrics_file) = &metrics_file {
                metrics_file.sync_all().map_err(io(&metrics_path))?;
            }
            let state = TrainState {
                step: done,
                loader: loader.state(),
                optimizer_steps: Some(optimizer.t),
                scaler: scaler.clone(),
                nonfinite_skipped,
                bandit: bandit.clone(),
            };
            let dir = training::save(
                &checkpoints,
                done,
                &state,
                &[model.trainable_tensors(), model.merged_bases()].concat(),
                &[optimizer.state_tensors()?, averager.as_ref().map(Averager::state_tensors).unwrap_or_default()]
                    .concat(),
                stage.keep_checkpoints as usize,
            )?;
            tracing::debug!("checkpoint {}", dir.display());
        }
        if done < stage.steps && interrupted {
            // No rank leaves before the leader's checkpoint is written: a launcher stops
            // every rank once one has exited.
            r.comm.barrier()?;
            r.observer.finish();
            return Ok(Outcome::Interrupted(done));
        }
    }
    if let Some(averager) = &averager
        && stage.average.as_ref().is_some_and(|a| a.result == AverageUse::Average)
        && let Some(weights) = averager.averaged()?
    {
        set_weights(&model, &weights)?;
    }
    r.observer.finish();
    Ok(Outcome::Finished(Box::new(model)))
}

/// The model a stage trains: its starting weights (the result of the stage it starts from,
/// else the imported checkpoint, else a seeded initialisation; layers stacked or sliced as the
/// stage says), with LoRA adapters under PEFT, less what it freezes, in the stage's precision,
/// with the stage's NEFTune noise.
pub fn build_model(stage: &Stage, start_from: Option<&Path>, seed: u64, device: &Device) -> Result<Llama> {
    let model = match starting_weights(stage, start_from)? {
        None => Llama::init(&stage.model, seed, device)?.freeze(&stage.freeze)?,
        Some((path, tensors)) => Llama::for_stage(stage, tensors, seed, device).map_err(|e| misfit(&path, stage, e))?,
    };
    let mut model = model.in_precision(Dtypes::on(stage.precision, device))?;
    model.neftune_alpha = stage.neftune_alpha;
    model.activation_checkpointing = stage.activation_checkpointing;
    Ok(model)
}

/// A `dpo` stage's reference: the model it starts from, frozen, computing in the stage's
/// precision.
pub fn build_reference(stage: &Stage, start_from: Option<&Path>, device: &Device) -> Result<Llama> {
    let (path, tensors) = starting_weights(stage, start_from)?
        .ok_or_else(|| Error::Run(format!("dpo stage `{}` has no starting weights to be its reference", stage.name)))?;
    let reference = Llama::frozen(&stage.model, tensors, device).map_err(|e| misfit(&path, stage, e))?;
    Ok(reference.in_precision(Dtypes::on(stage.precision, device))?)
}

/// Where a stage's starting weights come from (the stage it starts after, else its import)
/// and the weights, their layers stacked or sliced as the stage says; none for a stage that
/// starts from its seed.
fn starting_weights(stage: &Stage, start_from: Option<&Path>) -> Result<Option<(PathBuf, NamedTensors)>> {
    let (path, format) = match (start_from, &stage.model.import) {
        (Some(dir), _) => (dir, CheckpointFormat::HfDir),
        (None, Some((path, format))) => (path.as_path(), *format),
        (None, None) => return Ok(None),
    };
    let mut tensors = load_checkpoint(path, format, &stage.model)
        .map_err(|e| Error::Run(format!("cannot load {}: {e}", path.display())))?;
    if let Some(map) = stage.layer_map() {
        tensors = remap_layers(tensors, &map);
    }
    Ok(Some((path.to_path_buf(), tensors)))
}

type NamedTensors = Vec<(String, Tensor)>;

fn misfit(path: &Path, stage: &Stage, e: candle_core::Error) -> Error {
    Error::Run(format!("{} does not fit stage `{}`: {e}", path.display(), stage.name))
}

/// What a micro-batch's loss is made of: cross-entropy on the data, mixed with the KD term
/// when distilling.
#[derive(Clone, Copy, Default)]
pub struct Objective<'a> {
    pub distill: Option<(&'a Distill, &'a [Llama])>,
    /// When > 0, also the cross-entropy of each of this many sources (online mixing's reward).
    pub sources: usize,
    /// Instead of the cross-entropy: a preference loss over pairs, with the reference DPO, IPO
    /// and the hinge compare against.
    pub preference: Option<(&'a Preference, Option<Reference<'a>>)>,
    /// KTO's KL estimate for the step (from [`kl_estimate`]).
    pub kl: f64,
}

/// The model a preference loss compares the policy with.
#[derive(Clone, Copy)]
pub enum Reference<'a> {
    /// A frozen copy of the starting weights.
    Frozen(&'a Llama),
    /// The policy's own base, its adapters left out (`Llama::base_forward`).
    Base,
}

impl Objective<'_> {
    /// Whether the loss is KTO's, which needs a KL estimate over each step's rows first.
    pub fn kto(&self) -> bool {
        self.preference.is_some_and(|(p, _)| p.loss == PreferenceLoss::Kto)
    }

    /// What the loss of `batches` is a mean over: their loss tokens, or their pairs.
    pub fn units(&self, batches: &[Batch]) -> u64 {
        match self.preference {
            Some(_) => batches.iter().map(|b| b.rows as u64).sum(),
            None => loss_tokens(batches),
        }
    }
}

/// The seed of one step's random draws (adapter dropout, NEFTune's noise).
fn step_seed(seed: u64, step: u64) -> u64 {
    let mut key = blake3::Hasher::new();
    key.update(b"recipe dropout");
    key.update(&seed.to_le_bytes());
    key.update(&step.to_le_bytes());
    u64::from_le_bytes(key.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// What one optimizer step's micro-batches gave (on one rank: what its share gave).
pub struct StepGradients {
    /// The mean loss over all the step's loss tokens (one rank's share of that sum).
    pub loss: f64,
    /// Distillation's two terms, cross-entropy and KD (T² included), averaged the same way.
    pub terms: Option<(f64, f64)>,
    /// Per parameter, accumulated over the micro-batches on the parameters' device, in their
    /// dtype, multiplied by the loss scale.
    pub grads: Vec<Tensor>,
    /// When the objective asks: per source, its loss tokens' summed cross-entropy and count.
    pub source_sums: Vec<(f64, u64)>,
    /// Preference pairs: the sums over them of the chosen and rejected rewards and of the pairs
    /// that reward the chosen response more.
    pub pairs: Option<[f64; 3]>,
}

impl StepGradients {
    /// Per source, the mean cross-entropy of its loss tokens in the step (`None` for a source
    /// without any).
    pub fn by_source(&self) -> Vec<Option<f64>> {
        self.source_sums.iter().map(|&(sum, n)| (n > 0).then(|| sum / n as f64)).collect()
    }
}

/// Targets that count towards the loss in these batches.
pub fn loss_tokens(batches: &[Batch]) -> u64 {
    batches.iter().map(|b| b.loss_mask.iter().map(|&m| m as u64).sum::<u64>()).sum()
}

/// The loss of `batches` as a part of a step with `step_units` loss tokens (or, for a
/// preference objective, pairs) in all, and
/// the gradient of every parameter, accumulated over the micro-batches (zero when there are
/// none). `noise_seed` turns adapter dropout and NEFTune on, each micro-batch's draws seeded by it plus
/// the micro-batch's first row; the gradients are of the loss times `loss_scale`.
pub fn gradients(
    model: &Llama,
    batches: &[Batch],
    step_units: u64,
    device: &Device,
    objective: &Objective,
    noise_seed: Option<u64>,
    loss_scale: f64,
) -> Result<StepGradients> {
    let mut grads: Vec<Tensor> = Vec::new();
    let mut terms = None;
    // Each micro-batch's share of the loss, read once every backward pass is queued: reading a
    // value back from a GPU waits for all the work queued before it.
    let mut losses = Vec::with_capacity(batches.len());
    let mut source_sums = vec![(0.0, 0u64); objective.sources];
    let mut first_row = 0;
    for batch in batches {
        model.set_noise_seed(noise_seed.map(|s| s.wrapping_add(first_row as u64)));
        first_row += batch.rows;
        model.set_recording(true);
        let micro = batch_loss(model, batch, device, objective)?;
        let share = micro.count / (step_units.max(1) as f64);
        let weighted = (micro.mean * share)?;
        let mut store = (&weighted * loss_scale)?.backward()?;
        // Under activation checkpointing the blocks' part of the backward pass, run again.
        model.backward_blocks(&mut store)?;
        model.set_recording(false);
        model.set_noise_seed(None);
        // Detached: the micro-batch's graph is freed now, not with the step.
        losses.push((weighted.detach(), micro.terms, micro.rows, micro.pairs, share));
        let first = grads.is_empty();
        for (i, p) in model.params.iter().enumerate() {
            let g = match store.remove(p.var.as_tensor()) {
                Some(g) => g,
                None => p.var.zeros_like()?,
            };
            if first {
                grads.push(g);
            } else {
                grads[i] = (&grads[i] + g)?;
            }
        }
    }
    if batches.is_empty() {
        grads = model.params.iter().map(|p| p.var.zeros_like()).collect::<candle_core::Result<_>>()?;
        terms = objective.distill.filter(|(d, _)| d.alpha > 0.0).map(|_| (0.0, 0.0));
    }
    let mut loss = 0.0;
    let mut pairs = objective.preference.map(|_| [0.0; 3]);
    let value = |t: Tensor| t.to_scalar::<f32>().map(f64::from);
    for ((weighted, micro_terms, rows, micro_pairs, share), batch) in losses.into_iter().zip(batches) {
        loss += value(weighted)?;
        if let (Some(sums), Some(micro)) = (pairs.as_mut(), micro_pairs) {
            for (sum, v) in sums.iter_mut().zip(micro.to_vec1::<f64>()?) {
                *sum += v;
            }
        }
        if let Some(rows) = rows {
            for (sum, (s, n)) in source_sums.iter_mut().zip(sum_by_source(&rows, batch, objective.sources)?) {
                (sum.0, sum.1) = (sum.0 + s, sum.1 + n);
            }
        }
        if let Some((ce, kd)) = micro_terms {
            let (sum_ce, sum_kd) = terms.unwrap_or((0.0, 0.0));
            terms = Some((sum_ce + value(ce)? * share, sum_kd + value(kd)? * share));
        }
    }
    Ok(StepGradients { loss, terms, grads, source_sums, pairs })
}

/// Sum the ranks' parts of a step — loss, KD terms, per-source sums, gradients — so that every
/// rank holds the whole step's.
fn sum_over_ranks(comm: &dyn Communicator, step: &mut StepGradients) -> Result<()> {
    if comm.world() == 1 {
        return Ok(());
    }
    let (ce, kd) = step.terms.unwrap_or_default();
    let mut values = vec![step.loss, ce, kd];
    values.extend(step.pairs.unwrap_or_default());
    values.extend(step.source_sums.iter().flat_map(|&(sum, n)| [sum, n as f64]));
    comm.sum(&mut values)?;
    step.loss = values[0];
    step.terms = step.terms.map(|_| (values[1], values[2]));
    step.pairs = step.pairs.map(|_| [values[3], values[4], values[5]]);
    for (slot, pair) in step.source_sums.iter_mut().zip(values[6..].chunks(2)) {
        *slot = (pair[0], pair[1] as u64);
    }
    comm.sum_tensors(&mut step.grads)?;
    Ok(())
}

/// Whether any rank's `flag` is set, so that all stop after the same step.
fn any_rank(comm: &dyn Communicator, flag: bool) -> Result<bool> {
    if comm.world() == 1 {
        return Ok(flag);
    }
    let mut votes = [flag as u8 as f64];
    comm.sum(&mut votes)?;
    Ok(votes[0] > 0.0)
}

/// Every rank resumes from the same checkpoint, or none trains: ranks that see different
/// checkpoints do not share one run directory.
fn agree_on_start(comm: &dyn Communicator, start_step: u64, checkpoints: &Path) -> Result<()> {
    if comm.world() == 1 {
        return Ok(());
    }
    let mut steps = vec![0.0; comm.world()];
    steps[comm.rank()] = start_step as f64;
    comm.sum(&mut steps)?;
    if steps.iter().any(|&s| s != start_step as f64) {
        let seen: Vec<String> = steps.iter().enumerate().map(|(rank, s)| format!("rank {rank}: step {s}")).collect();
        return Err(Error::Run(format!(
            "the ranks found different checkpoints in {} ({}); every rank must see the same run directory (a \
             shared filesystem across nodes)",
            checkpoints.display(),
            seen.join(", ")
        )));
    }
    Ok(())
}

/// Take one AdamW step at `lr` from gradients of the loss times `loss_scale`, clipped to the
/// configured global norm. Under a loss scaler, a step whose gradients overflowed is skipped
/// (and the scaler backs off); without one, a non-finite gradient leaves the weights as they
/// are. Returns the unscaled norm before clipping.
pub fn update(
    model: &Llama,
    optimizer: &mut Optimizer,
    grads: &[Tensor],
    lr: f64,
    loss_scale: f64,
    scaler: Option<&mut LossScaler>,
) -> Result<f64> {
    let grad_norm = recipe_kernels::squared_norm(grads)?.sqrt() / loss_scale;
    if let Some(scaler) = scaler
        && !scaler.update(grad_norm.is_finite())
    {
        return Ok(grad_norm);
    }
    // Never let a non-finite gradient into the weights; the caller decides what it means.
    if !grad_norm.is_finite() {
        return Ok(grad_norm);
    }
    let clip = clip_factor(grad_norm, optimizer.config.grad_clip);
    optimizer.step(&model.params, grads, lr, clip / loss_scale)?;
    Ok(grad_norm)
}

/// One micro-batch's loss.
pub struct MicroLoss {
    /// The mean over its loss tokens, to backpropagate.
    pub mean: Tensor,
    /// How many loss tokens there were.
    pub count: f64,
    /// When distilling: the cross-entropy and KD terms (scalars on the device, detached).
    pub terms: Option<(Tensor, Tensor)>,
    /// When the objective asks for losses by source: each position's cross-entropy `[N]`
    /// (detached), for [`sum_by_source`].
    pub rows: Option<Tensor>,
    /// Preference pairs: the sums of [`crate::preference::PairLoss`] (f64, detached).
    pub pairs: Option<Tensor>,
}

/// A micro-batch on the device, as the forward pass and the loss take it.
struct Inputs {
    ids: Tensor,
    positions: Tensor,
    targets: Tensor,
    mask: Tensor,
    spans: KeySpans,
    /// How many targets count towards the loss.
    count: f64,
}

impl Inputs {
    fn of(batch: &Batch, device: &Device) -> Result<Inputs> {
        let (b, t) = (batch.rows, batch.seq_len);
        Ok(Inputs {
            ids: Tensor::from_slice(&batch.input_ids, (b, t), device)?,
            positions: Tensor::from_slice(&batch.position_ids, b * t, device)?,
            targets: Tensor::from_slice(&batch.target_ids, b * t, device)?,
            mask: Tensor::from_slice(&batch.loss_mask, b * t, device)?.to_dtype(DType::F32)?,
            spans: KeySpans::documents(&batch.doc_ids, b, t),
            count: batch.loss_mask.iter().map(|&m| f64::from(m)).sum(),
        })
    }

    /// Each position's negative log-likelihood under `logits`, 0 off the loss mask.
    fn nll(&self, logits: &Tensor) -> Result<Tensor> {
        Ok(masked_cross_entropy_rows(logits, &self.targets, &self.mask, self.count)?.1)
    }
}

impl Reference<'_> {
    /// The reference's logits for `x` (it records no graph); `model` is the policy.
    fn logits(self, model: &Llama, x: &Inputs) -> Result<Tensor> {
        Ok(match self {
            Reference::Frozen(frozen) => frozen.forward(&x.ids, &x.positions, &x.spans)?,
            Reference::Base => model.base_forward(&x.ids, &x.positions, &x.spans)?,
        })
    }
}

/// The mean loss of one micro-batch over its loss tokens (or its pairs).
pub fn batch_loss(model: &Llama, batch: &Batch, device: &Device, objective: &Objective) -> Result<MicroLoss> {
    let x = Inputs::of(batch, device)?;
    let logits = model.forward(&x.ids, &x.positions, &x.spans)?;
    let count = x.count;
    let (ce, rows) = masked_cross_entropy_rows(&logits, &x.targets, &x.mask, count)?;
    if let Some((preference, reference)) = objective.preference {
        // Each answer's log-probability under the policy, and (without a graph) under the
        // reference.
        let reference = match reference {
            Some(reference) => Some(PairScores::of(&x.nll(&reference.logits(model, &x)?)?, batch)?),
            None => None,
        };
        let policy = PairScores::of(&rows, batch)?;
        let pairs = match (preference.loss, reference.as_ref()) {
            (PreferenceLoss::Kto, Some(reference)) => {
                kto_loss(preference, &policy, reference, &batch.desirable, objective.kl)?
            }
            _ => pair_loss(preference, &policy, reference.as_ref())?,
        };
        return Ok(MicroLoss {
            mean: pairs.mean,
            count: batch.rows as f64,
            terms: None,
            rows: None,
            pairs: Some(pairs.sums),
        });
    }
    let rows = (objective.sources > 0).then(|| rows.detach());
    let Some((distill, teachers)) = objective.distill.filter(|(d, _)| d.alpha > 0.0) else {
        return Ok(MicroLoss { mean: ce, count, terms: None, rows, pairs: None });
    };
    // Teachers hold no variables, so their forward passes record no graph.
    // The divergence in f32, whatever the models compute in.
    let teacher_logits = teachers
        .iter()
        .map(|t| t.forward(&x.ids, &x.positions, &x.spans)?.to_dtype(DType::F32))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let teacher = teacher_log_probs(&teacher_logits, distill.temperature)?;
    let kd = kd_loss(distill.loss, &logits.to_dtype(DType::F32)?, &teacher, distill.temperature, &x.mask)?;
    let mean = ((&kd * distill.alpha)? + (&ce * (1.0 - distill.alpha))?)?;
    let terms = Some((ce.detach(), kd.detach()));
    Ok(MicroLoss { mean, count, terms, rows, pairs: None })
}

/// KTO's KL estimate over `batches` (a step's rows on this rank, or held-out ones): the sum of
/// [`kl_terms`] over them with the policy's noise off, and their rows. The caller sums both over
/// the ranks and takes `max(0, sum / rows)`.
pub fn kl_estimate(model: &Llama, batches: &[Batch], device: &Device, objective: &Objective) -> Result<(f64, f64)> {
    let Some((_, Some(reference))) = objective.preference else { return Ok((0.0, 0.0)) };
    let (mut sum, mut rows) = (0.0, 0.0);
    for batch in batches {
        let x = Inputs::of(batch, device)?;
        let policy = model.forward(&x.ids, &x.positions, &x.spans)?.detach();
        let policy = PairScores::of(&x.nll(&policy)?, batch)?;
        let reference = PairScores::of(&x.nll(&reference.logits(model, &x)?)?, batch)?;
        let (s, n) = kl_terms(&policy, &reference)?;
        (sum, rows) = (sum + s, rows + n);
    }
    Ok((sum, rows))
}

/// Per source of `sources`, the summed cross-entropy `rows` of its loss tokens and their count.
fn sum_by_source(rows: &Tensor, batch: &Batch, sources: usize) -> Result<Vec<(f64, u64)>> {
    let mut out = vec![(0.0, 0); sources];
    let nll = rows.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    for ((value, mask), source) in nll.iter().zip(&batch.loss_mask).zip(&batch.source_ids) {
        if *mask == 1 {
            let slot = &mut out[*source as usize];
            (slot.0, slot.1) = (slot.0 + *value as f64, slot.1 + 1);
        }
    }
    Ok(out)
}

/// What held-out data says of a model.
pub(crate) struct Evaluation {
    /// The objective's loss: cross-entropy, or over preference pairs the pairs' loss.
    pub loss: f64,
    /// Preference pairs: the share whose chosen response the model rewards more.
    pub reward_accuracy: Option<f64>,
}

/// The objective's mean loss (without distillation's KD term) over `eval.batches`
/// micro-batches of held-out data, weighted by loss tokens (or pairs). Runs on a fresh loader,
/// so every evaluation sees the same batches.
pub(crate) fn evaluate(
    model: &Llama,
    stores: &Mix,
    config: &LoaderConfig,
    stage: &Stage,
    device: &Device,
    objective: &Objective,
) -> Result<Evaluation> {
    let mut objective = Objective { preference: objective.preference, ..Objective::default() };
    let mut loader = Loader::new(stores.clone(), config)?;
    let batches: Vec<Batch> =
        (0..stage.eval.batches).map(|_| loader.next_batch(stage.micro_batch_size as usize)).collect();
    if objective.kto() {
        let (sum, rows) = kl_estimate(model, &batches, device, &objective)?;
        objective.kl = (sum / rows.max(1.0)).max(0.0);
    }
    let (mut sum, mut count, mut correct) = (0.0, 0.0, 0.0);
    for batch in &batches {
        let micro = batch_loss(model, batch, device, &objective)?;
        sum += micro.mean.to_dtype(DType::F64)?.to_scalar::<f64>()? * micro.count;
        count += micro.count;
        if let Some(pairs) = micro.pairs {
            correct += pairs.to_vec1::<f64>()?[2];
        }
    }
    // Unpaired responses have no pair to rank.
    let reward_accuracy = objective.preference.filter(|_| !objective.kto()).map(|_| correct / count.max(1.0));
    Ok(Evaluation { loss: sum / count.max(1.0), reward_accuracy })
}

/// The held-out loss of each evaluated source alone: the same batches [`evaluate`] would draw
/// if the stage mixed that source only.
fn evaluate_by_source(
    model: &Llama,
    r: &StageRun,
    stage: &Stage,
    objective: &Objective,
) -> Result<BTreeMap<String, f64>> {
    let config = LoaderConfig::of_stage(r.recipe, stage, Split::Holdout);
    let mut out = BTreeMap::new();
    for store in &r.evaluated {
        let loss = evaluate(model, &vec![(store.clone(), 1.0)], &config, stage, r.device, objective)?.loss;
        out.insert(store.meta.source.clone(), loss);
    }
    Ok(out)
}

/// Append one line in one write, so that a reader never sees half of it (and a line cut by a
/// crash is dropped on resume).
fn append_line(file: &mut std::fs::File, line: &str) -> std::io::Result<()> {
    file.write_all(format!("{line}\n").as_bytes())
}

/// Append to `sessions.jsonl` where and how this run of the stage trains, so that a report can
/// say which device and precision produced which steps.
fn record_session(
    work_dir: &Path,
    start_step: u64,
    stage: &Stage,
    device: &Device,
    comm: &dyn Communicator,
) -> Result<()> {
    let location = match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    };
    let mut line = serde_json::json!({
        "started_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "start_step": start_step,
        "device": location,
        "threads": candle_core::utils::get_num_threads(),
        "precision": stage.precision,
        "world_size": comm.world(),
        "collectives": comm.engine(),
    });
    // The CPU picks how bf16-mixed multiplies at run time; the same recipe may meet either.
    if device.is_cpu() && stage.precision == Precision::Bf16Mixed {
        let products = match recipe_kernels::cpu_has_bf16_dot_products() {
            true => "bf16 dot products (AVX512-BF16)",
            false => "bf16-rounded operands multiplied in f32",
        };
        tracing::info!("bf16-mixed on this CPU: {products}");
        line["bf16_products"] = products.into();
    }
    let path = work_dir.join("sessions.jsonl");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
    append_line(&mut file, &line.to_string()).map_err(io(&path))
}

/// Drop the lines of steps after `step` (they will be redone after a resume).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    recipe_graph::write_atomic(path, kept.as_bytes()).map_err(io(path))
}

/// The process's peak resident set (`VmHWM`), where the system reports it.
fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().strip_suffix("kB")?.trim();
    kib.parse::<u64>().ok().map(|k| k << 10)
}
