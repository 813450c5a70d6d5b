//! The `[stages.NAME]` tables: what a stage trains, on which data, for how long and how —
//! with its `data`, `optim` and `eval` tables; `schedule`, `peft`, `distill` and imported
//! checkpoints have modules of their own.

use std::path::Path;

use serde::Serialize;

use crate::average::Average;
use crate::checkpoint::CheckpointReader;
use crate::decode::{self, Cx, Fields, check_range, only_for};
use crate::diag::{Diagnostic, Origin, list_or_none, suggestion};
use crate::distill::Distill;
use crate::freeze::{Freeze, decode_freeze};
use crate::import::{Import, import_architecture, import_teacher, is_path};
use crate::init::Init;
use crate::length::{LengthBounds, Lengths, StepShape, decode_lengths};
use crate::merge::{Merge, MergeContext, MergeInput, decode_merge};
use crate::model::{Model, ModelSpec, check_model, check_vocab, model_field_path};
use crate::online::{Online, decode_online, is_online};
use crate::peft::Peft;
use crate::preference::Preference;
use crate::schedule::Schedule;
use crate::source::{Source, check_source_ref};
use crate::tokenizer::Tokenizer;
use crate::tree::{Node, Val};
use crate::vocab::{
    LossOn, MergeMethod, MuonScale, OnNonfinite, Packing, Precision, PreferenceLoss, SourceFormat, StageKind,
};

#[derive(Clone, Debug, Serialize)]
pub struct Stage {
    #[serde(skip)]
    pub name: String,
    /// Required.
    pub kind: StageKind,
    /// Default none: the stage whose final weights this stage starts from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Default none: starting weights grown from another stage's (depthwise stacking).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<Init>,
    /// `distill` only, required there: one stage, or several whose probabilities are averaged.
    /// The stages among `teacher`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub teacher: Vec<String>,
    /// The imported checkpoints among `teacher` (entries holding `/` or `.`).
    #[serde(rename = "teacher_checkpoints", skip_serializing_if = "Vec::is_empty")]
    pub teacher_checkpoints: Vec<Import>,
    /// The stage's overrides of `[model]` as written.
    #[serde(rename = "model")]
    pub model_overrides: ModelSpec,
    /// The resolved architecture this stage trains.
    #[serde(skip)]
    pub model: Model,
    /// Default 1000 optimizer steps.
    pub steps: u64,
    /// Default: `model.max_seq_len`. The longest of `lengths`: what `batch_size` counts rows
    /// of, what evaluation reads and what memory is planned for.
    #[serde(skip)]
    pub seq_len: u32,
    /// `seq_len` as written: one length, or lengths that grow in phases, with `keep`.
    #[serde(flatten)]
    pub lengths: Lengths,
    /// Default 8 sequences per optimizer step.
    pub batch_size: u32,
    /// Default: `batch_size` (no accumulation).
    pub micro_batch_size: u32,
    pub data: Data,
    pub optim: Optim,
    pub schedule: Schedule,
    /// Default `f32`.
    pub precision: Precision,
    /// Default `stop`: a step whose loss or gradient is not finite stops the stage, naming the
    /// step (its checkpoints stay, so it resumes from the last good one); `skip` leaves the
    /// weights as they were and counts the step in `metrics.jsonl`'s `skipped_steps`.
    #[serde(skip_serializing_if = "OnNonfinite::is_stop")]
    pub on_nonfinite: OnNonfinite,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peft: Option<Peft>,
    /// Default none. NEFTune (Jain et al. 2023): while training, each input embedding gets
    /// uniform noise in ±alpha/√(T·d_model), as `transformers`' `neftune_noise_alpha` adds it
    /// (the paper uses 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neftune_alpha: Option<f64>,
    /// Default false. Activation checkpointing: keep each block's input alone through the
    /// forward pass and run the block again in the backward pass (left out of the key when
    /// off, so recipes written before it keep theirs).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub activation_checkpointing: bool,
    /// A `merge` stage's inputs and method.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub merge: Option<Merge>,
    /// Default none: weights averaged while training (EMA or LAWA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub average: Option<Average>,
    /// Default none: weights that keep their starting values.
    #[serde(skip_serializing_if = "Freeze::is_empty")]
    pub freeze: Freeze,
    /// `distill` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distill: Option<Distill>,
    /// `dpo` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preference: Option<Preference>,
    /// Default 100. Not part of the stage's key.
    pub checkpoint_every: u64,
    /// Default 3 most recent checkpoints kept. Not part of the stage's key.
    pub keep_checkpoints: u32,
    /// Default 10. Not part of the stage's key.
    pub log_every: u64,
    /// Not part of the stage's key: evaluation reads only held-out data and never draws from
    /// the training streams.
    pub eval: Eval,
}

/// Stage fields that cannot change a stage; they are outside its content key.
pub const NON_SEMANTIC_STAGE_FIELDS: &[&str] = &["checkpoint_every", "keep_checkpoints", "log_every", "eval"];

#[derive(Clone, Debug)]
pub struct Data {
    /// Required. Token proportions per source, normalised to sum to 1, sorted by source name:
    /// every source the stage reads, with the weights it ends on (0 for a source only an
    /// earlier phase reads); equal shares to start from under online mixing.
    pub mix: Vec<(String, f64)>,
    /// A mix that changes (`mix = [[0, {...}], [500, {...}]]`): from which step each phase's
    /// weights hold, normalised, over `mix`'s sources in its order (0 where a phase leaves a
    /// source out). Empty for one mix throughout.
    pub phases: Vec<(u64, Vec<(String, f64)>)>,
    /// Shares chosen while training (`mix = { kind = "online", sources = [...] }`).
    pub online: Option<Online>,
    /// Default `best-fit`.
    pub packing: Packing,
    /// Default `assistant` for `sft` stages, `all` otherwise.
    pub loss_on: LossOn,
}

/// Written back as it was written: `mix` as weights (with `phases` when it changes), or as
/// online mixing.
impl Serialize for Data {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let as_map = |pairs: &[(String, f64)], keep: fn(f64) -> bool| -> serde_json::Map<String, serde_json::Value> {
            pairs.iter().filter(|(_, w)| keep(*w)).map(|(n, w)| (n.clone(), serde_json::json!(w))).collect()
        };
        let mut map = s.serialize_map(None)?;
        match &self.online {
            Some(online) => map.serialize_entry(
                "mix",
                &serde_json::json!({ "kind": "online", "sources": online.sources, "smoothing": online.smoothing }),
            )?,
            None => map.serialize_entry("mix", &as_map(&self.mix, |_| true))?,
        }
        if !self.phases.is_empty() {
            let written: Vec<(u64, serde_json::Map<String, serde_json::Value>)> =
                self.phases.iter().map(|(from, w)| (*from, as_map(w, |w| w > 0.0))).collect();
            map.serialize_entry("phases", &written)?;
        }
        map.serialize_entry("packing", &self.packing)?;
        map.serialize_entry("loss_on", &self.loss_on)?;
        map.end()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Optim {
    /// `adamw`, or `muon` (Muon on the blocks' projection matrices, AdamW on the rest).
    pub kind: String,
    /// Default 3e-4: the peak learning rate.
    pub lr: f64,
    /// Default [0.9, 0.95].
    pub betas: [f64; 2],
    /// Default 1e-8.
    pub eps: f64,
    /// Default 0.1, decoupled; norms and embeddings are not decayed.
    pub weight_decay: f64,
    /// Default 1.0: clip the global gradient norm; 0 turns clipping off.
    pub grad_clip: f64,
    /// Set for `kind = "muon"` only (so AdamW stages keep their keys); its fields are written
    /// beside the others, as the recipe spells them (`optim.momentum`).
    #[serde(flatten)]
    pub muon: Option<Muon>,
}

impl Optim {
    /// AdamW at peak learning rate `lr`, every other field at its default.
    pub fn adamw(lr: f64) -> Optim {
        Optim { kind: "adamw".into(), lr, betas: [0.9, 0.95], eps: 1e-8, weight_decay: 0.1, grad_clip: 1.0, muon: None }
    }
}

/// Muon ("MomentUm Orthogonalized by Newton-schulz", Jordan et al. 2024; as Moonlight scales
/// it, Liu et al. 2025): each block projection's update is its Nesterov momentum made nearly
/// orthogonal by a quintic Newton–Schulz iteration, scaled to the RMS of an AdamW update, so
/// the stage's one `lr` (and schedule) serves the embeddings, head, norms and biases that
/// AdamW still trains. As `torch.optim.Muon` computes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Muon {
    /// Default 0.95.
    pub momentum: f64,
    /// Default true: step along `(1 − momentum) · g + momentum · buffer`.
    pub nesterov: bool,
    /// Default 5 iterations.
    pub ns_steps: u32,
    /// Default `match-rms-adamw`: the orthogonal update of an `A × B` matrix times
    /// `0.2 · √max(A, B)`; `original`: times `√max(1, A / B)` (Keller Jordan's, for a Muon
    /// learning rate of its own, about 0.02).
    pub adjust_lr: MuonScale,
    /// Default: `lr`. The peak learning rate of the parameters AdamW trains, when they want
    /// their own (with `adjust_lr = "original"`); the schedule scales both alike.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adamw_lr: Option<f64>,
}

impl Muon {
    /// Whether Muon updates the weight `name`: the projection matrices of the blocks. The
    /// embedding and the head (which Muon's authors leave to AdamW), norms, biases and PEFT
    /// adapters are AdamW's.
    pub fn updates(name: &str) -> bool {
        name.starts_with("model.layers.") && name.ends_with("_proj.weight")
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Eval {
    /// Default 0 (never): evaluate on the held-out split every this many steps, and at the end.
    pub every: u64,
    /// Default 8 batches of `micro_batch_size` sequences.
    pub batches: u32,
    /// Default false: also evaluate each held-out source alone (`eval_loss_by_source`), to
    /// read forgetting and the effect of replay off the metrics. Left out of the canonical form
    /// when false, so that a greedy merge's key (which holds `eval`) stays as it was.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub by_source: bool,
    /// Default: the sources of the mix that hold data out. With `by_source`, the sources
    /// evaluated alone, mixed or not: continual pre-training reads its old data's loss here
    /// after the mix has moved on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
}

const STAGE_KEYS: &[&str] = &[
    "kind",
    "after",
    "init",
    "teacher",
    "model",
    "steps",
    "seq_len",
    "keep",
    "batch_size",
    "micro_batch_size",
    "data",
    "optim",
    "schedule",
    "precision",
    "on_nonfinite",
    "peft",
    "neftune_alpha",
    "activation_checkpointing",
    "freeze",
    "average",
    "inputs",
    "method",
    "weights",
    "base",
    "scale",
    "density",
    "normalize",
    "t",
    "distill",
    "preference",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "eval",
];

impl Data {
    /// The weights over `mix`'s sources, in its order, that hold at `step`.
    pub fn weights_at(&self, step: u64) -> Vec<f64> {
        match self.phases.iter().rev().find(|(from, _)| *from <= step) {
            Some((_, weights)) => weights.iter().map(|(_, w)| *w).collect(),
            None => self.mix.iter().map(|(_, w)| *w).collect(),
        }
    }

    /// The weights over the whole stage of `steps` steps: each phase's, weighted by its steps.
    pub fn average_weights(&self, steps: u64) -> Vec<(String, f64)> {
        if self.phases.is_empty() || steps == 0 {
            return self.mix.clone();
        }
        let mut out: Vec<(String, f64)> = self.mix.iter().map(|(n, _)| (n.clone(), 0.0)).collect();
        for (i, (from, weights)) in self.phases.iter().enumerate() {
            let until = self.phases.get(i + 1).map_or(steps, |(next, _)| *next).min(steps);
            let share = until.saturating_sub(*from) as f64 / steps as f64;
            for ((_, avg), (_, w)) in out.iter_mut().zip(weights) {
                *avg += share * w;
            }
        }
        out
    }

    /// Which phase holds at `step` (0 for one mix throughout).
    pub fn phase_at(&self, step: u64) -> usize {
        self.phases.iter().rposition(|(from, _)| *from <= step).unwrap_or(0)
    }
}

impl Stage {
    /// The stage whose result this one starts from: as it is (`after`) or grown (`init`).
    pub fn start_stage(&self) -> Option<&str> {
        self.after.as_deref().or(self.init.as_ref().map(|i| i.from.as_str()))
    }

    /// The stages whose results this one needs: the one it starts from, its teachers, and a
    /// merge's stage inputs.
    pub fn upstream(&self) -> Vec<&str> {
        let merged = self.merge.iter().flat_map(|m| m.all_inputs()).filter_map(|i| match i {
            MergeInput::Stage(name) => Some(name.as_str()),
            MergeInput::Checkpoint(_) => None,
        });
        let mut out: Vec<&str> =
            self.start_stage().into_iter().chain(self.teacher.iter().map(String::as_str)).chain(merged).collect();
        out.dedup();
        out
    }

    /// The learning rate's factor at `step`: the schedule's, times ReLoRA's re-warming after
    /// each restart.
    pub fn lr_factor(&self, step: u64) -> f64 {
        let rewarm = self.peft.as_ref().and_then(|p| p.relora.as_ref()).map_or(1.0, |r| r.warm_factor(step));
        self.schedule.factor(step, self.steps) * rewarm
    }

    /// The shape of step `step`'s data: its length, and under `keep = "tokens"` the rows
    /// that keep its tokens those of a step at the longest length.
    pub fn shape_at(&self, step: u64) -> StepShape {
        self.lengths.shape(self.lengths.at(step), self.batch_size, self.micro_batch_size)
    }

    /// The stretches of steps `from..until` over which the stage's data stays the same: split
    /// wherever its mix or its length changes.
    pub fn phase_spans(&self) -> Vec<(u64, u64)> {
        let mut starts: Vec<u64> = std::iter::once(0)
            .chain(self.data.phases.iter().map(|(from, _)| *from))
            .chain(self.lengths.phases.iter().map(|(from, _)| *from))
            .filter(|from| *from < self.steps.max(1))
            .collect();
        starts.sort_unstable();
        starts.dedup();
        let ends = starts.iter().skip(1).copied().chain(std::iter::once(self.steps));
        starts.iter().copied().zip(ends).collect()
    }

    /// Every source the stage reads: its mix's, and those it evaluates alone.
    pub fn sources_read(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.data.mix.iter().map(|(n, _)| n.as_str()).collect();
        out.extend(self.eval.sources.iter().map(String::as_str).filter(|s| !out.contains(s)).collect::<Vec<_>>());
        out
    }

    /// The sources evaluated alone (`eval.by_source`): those named in `eval.sources`, else the
    /// mix's that hold data out.
    pub fn sources_evaluated<'a>(&'a self, recipe_sources: &'a [Source]) -> Vec<&'a str> {
        if !self.eval.by_source {
            return Vec::new();
        }
        if !self.eval.sources.is_empty() {
            return self.eval.sources.iter().map(String::as_str).collect();
        }
        let holds_out = |name: &str| recipe_sources.iter().any(|s| s.name == name && s.holdout > 0.0);
        self.data.mix.iter().map(|(n, _)| n.as_str()).filter(|n| holds_out(n)).collect()
    }

    /// The fields outside this stage's key. A greedy merge's result depends on its held-out
    /// evaluation, so there `eval` is in the key.
    pub fn non_semantic_fields(&self) -> Vec<&'static str> {
        let greedy = self.merge.as_ref().is_some_and(|m| m.method == MergeMethod::Greedy);
        NON_SEMANTIC_STAGE_FIELDS.iter().copied().filter(|f| !(greedy && *f == "eval")).collect()
    }

    /// Which layer of its starting weights each layer of this stage's model starts as, when
    /// not layer for layer: grown by `init`, or the slice `model.layers` of a checkpoint.
    pub fn layer_map(&self) -> Option<Vec<u32>> {
        match (&self.init, self.model.layers) {
            (Some(init), _) => Some(init.layer_map(self.model.n_layers)),
            (None, Some([start, end])) => Some((start..end).collect()),
            (None, None) => None,
        }
    }
}

const DATA_KEYS: &[&str] = &["mix", "packing", "loss_on"];

const OPTIM_KEYS: &[&str] = &[
    "kind",
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "grad_clip",
    "momentum",
    "nesterov",
    "ns_steps",
    "adjust_lr",
    "adamw_lr",
];

const EVAL_KEYS: &[&str] = &["every", "batches", "by_source", "sources"];

/// What decoding a stage needs from the rest of the recipe.
pub(crate) struct StageContext<'a> {
    pub(crate) model_defaults: &'a ModelSpec,
    pub(crate) tokenizer: Option<&'a Tokenizer>,
    pub(crate) sources: &'a [Source],
    pub(crate) stage_names: &'a [String],
    pub(crate) base_dir: &'a Path,
    pub(crate) checkpoints: &'a dyn CheckpointReader,
}

pub(crate) fn decode_stage(cx: &mut Cx, name: &str, node: &Node, context: &StageContext) -> Stage {
    let StageContext { model_defaults, tokenizer, sources, stage_names, base_dir, checkpoints } = *context;
    let tokenizer_vocab = tokenizer.map(Tokenizer::vocab_size);
    let path = format!("stages.{name}");
    let f = Fields::of(cx, node, &path, STAGE_KEYS);
    f.check_unknown(cx);
    let stage_refs: Vec<&str> = stage_names.iter().map(String::as_str).filter(|s| *s != name).collect();
    let check_stage_ref = |cx: &mut Cx, target: &str, origin: &Origin| {
        if target == name {
            cx.diags.push(
                Diagnostic::new(origin, format!("stage `{name}` refers to itself"))
                    .label(format!("this forms the cycle {name} → {name}")),
            );
        } else if !stage_refs.contains(&target) {
            let mut d = Diagnostic::new(origin, format!("no stage named `{target}`"))
                .label(format!("defined stages: {}", list_or_none(&stage_refs)));
            if let Some(h) = suggestion(target, stage_refs.iter().copied()) {
                d = d.help(h);
            }
            cx.diags.push(d);
        }
    };

    let kind = f
        .required(cx, "kind", "\"pretrain\"", decode::choice(StageKind::WORDS))
        .and_then(StageKind::from_word)
        .unwrap_or(StageKind::Pretrain);

    let merge_context =
        MergeContext { stage: name, stage_names, base_dir, checkpoints, tokenizer, check_stage_ref: &check_stage_ref };
    let merge = decode_merge(cx, &f, kind == StageKind::Merge, &merge_context);
    let after = f.opt(cx, "after", decode::string);
    if let Some(a) = &after {
        let origin = cx.origins.get(&f.child_path("after")).cloned().unwrap_or_default();
        check_stage_ref(cx, a, &origin);
    }
    let init = f.get("init").and_then(|node| Init::decode(cx, node, &f.child_path("init")));
    if let Some(i) = &init {
        let origin = cx.origins.get(&f.child_path("init.from")).cloned().unwrap_or_default();
        check_stage_ref(cx, &i.from, &origin);
        if after.is_some() {
            cx.diags.push(
                Diagnostic::new(&origin, format!("stage `{name}` has both `after` and `init`"))
                    .label("a stage starts from one stage's weights: as they are (`after`) or grown (`init`)"),
            );
        }
    }
    let teacher = f.opt(cx, "teacher", decode::strings).unwrap_or_default();
    let (teacher_paths, teacher): (Vec<_>, Vec<_>) =
        teacher.into_iter().partition(|(t, _)| !stage_names.contains(t) && is_path(t, base_dir));
    for (t, origin) in &teacher {
        check_stage_ref(cx, t, origin);
    }
    let teacher_checkpoints: Vec<Import> = teacher_paths
        .iter()
        .filter_map(|(written, origin)| import_teacher(cx, checkpoints, name, written, origin, base_dir, tokenizer))
        .collect();
    let has_teacher = !teacher.is_empty() || !teacher_paths.is_empty();
    only_for(cx, &f, "teacher", has_teacher, kind == StageKind::Distill, "kind = \"distill\"");
    if kind == StageKind::Distill && !has_teacher {
        cx.diags.push(
            Diagnostic::new(&f.origin, format!("distill stage `{name}` has no teacher"))
                .label("expected `teacher = \"STAGE\"` or a list of stages")
                .help(match stage_refs.first() {
                    Some(s) => format!("for example `teacher = \"{s}\"`"),
                    None => "define the teacher's stage first".into(),
                }),
        );
    }

    let model_overrides = match f.get("model") {
        Some(m) => ModelSpec::decode(cx, m, &f.child_path("model")),
        None => ModelSpec::default(),
    };
    let spec = model_defaults.overlay(&model_overrides);
    if spec.layers.is_some() && spec.from.is_none() {
        let origin = cx.origins.get(&model_field_path(name, &model_overrides, "layers")).cloned().unwrap_or_default();
        cx.diags.push(
            Diagnostic::new(&origin, "`layers` picks layers of an imported checkpoint, but nothing is imported")
                .label("expected `from = \"path\"` beside it"),
        );
    }
    let (spec, imported) = match &spec.from {
        Some(from) => import_architecture(
            cx,
            checkpoints,
            name,
            &model_overrides,
            &spec,
            &crate::hub::locate(base_dir, from),
            tokenizer,
        ),
        None => (spec, None),
    };
    let mut model = spec.resolve(tokenizer_vocab);
    model.import = imported;
    // A merge has the architecture of its inputs (checked to agree across stages).
    if let Some(MergeInput::Checkpoint(first)) = merge.as_ref().and_then(|m| m.inputs.first()) {
        model = first.model.clone();
    }
    let field_path = |field: &str| model_field_path(name, &model_overrides, field);
    check_model(cx, &model, &field_path);
    if let (Some(v), Some(tv)) = (model_overrides.vocab_size, tokenizer_vocab) {
        check_vocab(cx, &field_path("vocab_size"), v, tv);
    }

    let steps = if kind == StageKind::Merge { 0 } else { f.opt(cx, "steps", decode::count).unwrap_or(1000) };
    if steps == 0 && kind != StageKind::Merge {
        check_range(cx, &f.child_path("steps"), 0.0, false, "at least 1 step");
    }
    let bounds = LengthBounds {
        default: model.max_seq_len,
        max_seq_len: model.max_seq_len,
        max_seq_len_path: field_path("max_seq_len"),
        steps,
    };
    let lengths = decode_lengths(cx, &f, &bounds);
    if kind == StageKind::Merge && lengths.grows() {
        let origin = cx.origins.get(&f.child_path("seq_len")).cloned().unwrap_or_default();
        cx.diags.push(
            Diagnostic::new(&origin, "a merge trains nothing, so its length cannot grow")
                .label("expected one length, for a greedy merge's evaluation"),
        );
    }
    let batch_size = f.opt(cx, "batch_size", decode::size(1, 1 << 20)).unwrap_or(8);
    let micro_batch_size = f.opt(cx, "micro_batch_size", decode::size(1, 1 << 20)).unwrap_or(batch_size);
    if !batch_size.is_multiple_of(micro_batch_size) {
        let origin = cx.origins.get(&f.child_path("micro_batch_size")).cloned().unwrap_or_default();
        cx.diags.push(
            Diagnostic::new(
                &origin,
                format!("micro_batch_size ({micro_batch_size}) does not divide batch_size ({batch_size})"),
            )
            .label("gradient accumulation runs batch_size / micro_batch_size micro-batches per step"),
        );
    }

    let preference = f.get("preference").map(|node| Preference::decode(cx, node, &f.child_path("preference")));
    only_for(cx, &f, "preference", preference.is_some(), kind == StageKind::Dpo, "kind = \"dpo\"");
    let preference = (kind == StageKind::Dpo).then(|| preference.unwrap_or(Preference::DEFAULT));
    let kto = preference.as_ref().is_some_and(|p| p.loss == PreferenceLoss::Kto);
    let greedy = merge.as_ref().is_some_and(|m| m.method == MergeMethod::Greedy);
    let data = if kind == StageKind::Merge && !greedy {
        only_for(cx, &f, "data", f.get("data").is_some(), false, "a training stage or a greedy merge");
        Data { mix: Vec::new(), phases: Vec::new(), online: None, packing: Packing::BestFit, loss_on: LossOn::All }
    } else {
        decode_data(cx, &f, kind, kto, sources, steps)
    };
    let optim = decode_optim(cx, &f);
    let schedule = Schedule::decode(cx, f.get("schedule"), &f.child_path("schedule"), steps);
    let precision = f.word::<Precision>(cx, "precision").unwrap_or(Precision::F32);
    let peft = f.get("peft").map(|node| Peft::decode(cx, node, &f.child_path("peft"), base_dir, checkpoints));
    if let Some(peft) = &peft {
        peft.check_adapter_fits(cx, &f.child_path("peft"), &model);
    }
    if let Some(every) = peft.as_ref().and_then(|p| p.relora.as_ref()).map(|r| r.every).filter(|e| *e >= steps) {
        let origin = cx.origins.get(&f.child_path("peft.relora.every")).cloned().unwrap_or_default();
        cx.diags.push(
            Diagnostic::new(
                &origin,
                format!("ReLoRA's first restart would come after step {every}, but the stage has {steps}"),
            )
            .label(format!("expected fewer than {steps} steps")),
        );
    }
    let relora = peft.as_ref().is_some_and(|p| p.relora.is_some());
    only_for(
        cx,
        &f,
        "average",
        f.get("average").is_some() && relora,
        false,
        "adapters that do not restart (not with ReLoRA)",
    );
    let freeze = decode_freeze(cx, &f, &model, peft.is_some());
    let average = f.get("average").map(|node| Average::decode(cx, node, &f.child_path("average")));
    if let Some(every) = average.as_ref().and_then(|a| a.every).filter(|every| *every > steps) {
        let origin = cx.origins.get(&f.child_path("average.every")).cloned().unwrap_or_default();
        cx.diags.push(
            Diagnostic::new(
                &origin,
                format!("LAWA's first snapshot would come at step {every}, after the stage's {steps} steps"),
            )
            .label(format!("expected at most {steps}")),
        );
    }
    let distill = f.get("distill").map(|node| Distill::decode(cx, node, &f.child_path("distill")));
    only_for(cx, &f, "distill", distill.is_some(), kind == StageKind::Distill, "kind = \"distill\"");
    let distill = match kind {
        StageKind::Distill => Some(distill.unwrap_or(Distill::DEFAULT)),
        _ => None,
    };

    let eval = match f.get("eval") {
        Some(node) => {
            let e = Fields::of(cx, node, &f.child_path("eval"), EVAL_KEYS);
            e.check_unknown(cx);
            let by_source = e.opt(cx, "by_source", decode::boolean).unwrap_or(false);
            let named = e.opt(cx, "sources", decode::strings).unwrap_or_default();
            only_for(cx, &e, "sources", !named.is_empty(), by_source, "`by_source = true`");
            for (source, origin) in &named {
                check_held_out(cx, source, origin, sources);
            }
            Eval {
                every: e.opt(cx, "every", decode::count).unwrap_or(0),
                batches: e.opt(cx, "batches", decode::size(1, 1 << 20)).unwrap_or(8),
                by_source,
                sources: named.into_iter().map(|(s, _)| s).collect(),
            }
        }
        None => Eval { every: 0, batches: 8, by_source: false, sources: Vec::new() },
    };
    only_for(cx, &f, "eval.every", eval.every > 0 && kind == StageKind::Merge, false, "a training stage");
    let neftune_alpha = f.opt(cx, "neftune_alpha", decode::float);
    if let Some(alpha) = neftune_alpha {
        check_range(cx, &f.child_path("neftune_alpha"), alpha, alpha > 0.0, "a number > 0");
    }
    only_for(cx, &f, "neftune_alpha", neftune_alpha.is_some(), kind != StageKind::Merge, "a training stage");
    let activation_checkpointing = f.opt(cx, "activation_checkpointing", decode::boolean).unwrap_or(false);
    only_for(
        cx,
        &f,
        "activation_checkpointing",
        activation_checkpointing,
        kind != StageKind::Merge,
        "a training stage",
    );
    only_for(cx, &f, "eval.by_source", eval.by_source, eval.every > 0, "`eval.every` > 0");
    if eval.every > 0 || greedy {
        // Evaluation reads the mix the stage ends on.
        let has_holdout =
            data.mix.iter().any(|(s, w)| *w > 0.0 && sources.iter().any(|src| &src.name == s && src.holdout > 0.0));
        if !has_holdout {
            let origin = cx.origins.get(&f.child_path("eval.every")).cloned().unwrap_or_default();
            cx.diags.push(
                Diagnostic::new(&origin, format!("stage `{name}` evaluates, but none of its sources holds data out"))
                    .label("evaluation reads the held-out split")
                    .help("set `holdout = 0.05` on a source in this stage's mix"),
            );
        }
    }

    Stage {
        name: name.to_string(),
        kind,
        after,
        init,
        merge,
        teacher: teacher.into_iter().map(|(t, _)| t).collect(),
        teacher_checkpoints,
        model_overrides,
        model,
        steps,
        seq_len: lengths.longest(),
        lengths,
        batch_size,
        micro_batch_size,
        data,
        optim,
        schedule,
        precision,
        on_nonfinite: f.word::<OnNonfinite>(cx, "on_nonfinite").unwrap_or(OnNonfinite::Stop),
        peft,
        neftune_alpha,
        activation_checkpointing,
        freeze,
        average,
        distill,
        preference,
        checkpoint_every: f.opt(cx, "checkpoint_every", decode::count).unwrap_or(100),
        keep_checkpoints: f.opt(cx, "keep_checkpoints", decode::size(1, 1 << 20)).unwrap_or(3),
        log_every: f.opt(cx, "log_every", decode::count).unwrap_or(10).max(1),
        eval,
    }
}

/// `name` must be a source that holds data out, to be evaluated on its own.
fn check_held_out(cx: &mut Cx, name: &str, origin: &Origin, sources: &[Source]) {
    let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
    check_source_ref(cx, name, origin, &names);
    if sources.iter().any(|s| s.name == name && s.holdout == 0.0) {
        cx.diags.push(
            Diagnostic::new(origin, format!("source `{name}` holds no data out, so it cannot be evaluated"))
                .label("evaluation reads the held-out split")
                .help(format!("set `holdout = 0.05` in `[sources.{name}]`")),
        );
    }
}

fn decode_data(cx: &mut Cx, stage: &Fields, kind: StageKind, kto: bool, sources: &[Source], steps: u64) -> Data {
    let source_names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
    let dpo = kind == StageKind::Dpo;
    let default_loss_on = if kind == StageKind::Sft || dpo { LossOn::Assistant } else { LossOn::All };
    let Some(node) = stage.get("data") else {
        cx.diags.push(
            Diagnostic::new(&stage.origin, format!("missing key `data` in `{}`", stage.path))
                .label("expected `data = { mix = { SOURCE = 1.0 } }`"),
        );
        return Data {
            mix: Vec::new(),
            phases: Vec::new(),
            online: None,
            packing: Packing::BestFit,
            loss_on: default_loss_on,
        };
    };
    let f = Fields::of(cx, node, &stage.child_path("data"), DATA_KEYS);
    f.check_unknown(cx);
    let mut phases: Vec<(u64, Vec<(String, f64)>)> = Vec::new();
    let mut online = None;
    if let Some(mix_node) = f.get("mix") {
        let mix_path = f.child_path("mix");
        cx.origins.insert(mix_path.clone(), mix_node.origin.clone());
        match &mix_node.val {
            _ if is_online(mix_node) => {
                let decoded = decode_online(cx, mix_node, &mix_path, &source_names);
                // Equal shares until the bandit has seen a loss.
                let share = 1.0 / decoded.sources.len().max(1) as f64;
                phases.push((0, decoded.sources.iter().map(|n| (n.clone(), share)).collect()));
                online = Some(decoded);
            }
            Val::Array(items) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("{mix_path}[{i}]");
                    match &item.val {
                        Val::Array(pair) if pair.len() == 2 => {
                            let Some(from) = decode::count(cx, &pair[0], &format!("{path}[0]")) else { continue };
                            let in_order = phases.last().is_none_or(|(last, _)| from > *last);
                            let first_at_zero = !phases.is_empty() || from == 0;
                            if !in_order || !first_at_zero || (from >= steps && steps > 0) {
                                let expected = match (first_at_zero, in_order) {
                                    (false, _) => "the first phase starts at step 0".to_string(),
                                    (_, false) => {
                                        "phases in order of their first step, each later than the last".into()
                                    }
                                    _ => format!("a step before the stage's last ({steps})"),
                                };
                                cx.diags.push(
                                    Diagnostic::new(&pair[0].origin, format!("`{path}` starts at step {from}"))
                                        .label(format!("expected {expected}")),
                                );
                            }
                            let weights = decode_weights(cx, &pair[1], &format!("{path}[1]"), &source_names);
                            phases.push((from, weights));
                        }
                        _ => cx.diags.push(
                            Diagnostic::new(
                                &item.origin,
                                format!("`{path}` must be a pair [STEP, {{ SOURCE = WEIGHT }}]"),
                            )
                            .label("expected `[0, { moby = 1.0 }]`"),
                        ),
                    }
                }
            }
            _ => phases.push((0, decode_weights(cx, mix_node, &mix_path, &source_names))),
        }
    } else {
        cx.diags.push(
            Diagnostic::new(&f.origin, format!("missing key `mix` in `{}`", f.path))
                .label("expected `mix = { SOURCE = 1.0 }`, or phases `[[0, { A = 1 }], [500, { A = 0.5, B = 0.5 }]]`"),
        );
    }
    // Every source any phase reads, with the last phase's weights; each phase's weights aligned.
    let mut names: Vec<String> = phases.iter().flat_map(|(_, w)| w.iter().map(|(n, _)| n.clone())).collect();
    names.sort();
    names.dedup();
    let aligned = |weights: &[(String, f64)]| -> Vec<(String, f64)> {
        names.iter().map(|n| (n.clone(), weights.iter().find(|(m, _)| m == n).map_or(0.0, |(_, w)| *w))).collect()
    };
    let mix = phases.last().map(|(_, last)| aligned(last)).unwrap_or_default();
    let phases =
        if phases.len() > 1 { phases.iter().map(|(from, w)| (*from, aligned(w))).collect() } else { Vec::new() };
    let loss_on = f.word::<LossOn>(cx, "loss_on").unwrap_or(default_loss_on);
    // A pair's two conversations share a row, each scored on its last assistant turn.
    let not_dpo = "a stage whose kind is not dpo (a dpo stage scores each pair's final responses, one pair a row)";
    only_for(cx, &f, "loss_on", f.get("loss_on").is_some(), !dpo, not_dpo);
    only_for(cx, &f, "packing", f.get("packing").is_some(), !dpo, not_dpo);
    if dpo && online.is_some() {
        let origin = cx.origins.get(&f.child_path("mix")).cloned().unwrap_or(f.origin.clone());
        cx.diags.push(
            Diagnostic::new(&origin, format!("dpo stage `{}` cannot mix online", stage.path))
                .label("online mixing is rewarded by each source's cross-entropy, which a dpo stage does not compute")
                .help("give the sources fixed weights: `mix = { prefs = 1.0 }`"),
        );
    }
    // KTO learns from single responses marked desirable or not; the other losses from pairs.
    let wanted = match (dpo, kto) {
        (true, true) => Some(SourceFormat::UnpairedPreferenceJsonl),
        (true, false) => Some(SourceFormat::PreferenceJsonl),
        (false, _) => None,
    };
    for (name, _) in &mix {
        let Some(src) = sources.iter().find(|s| &s.name == name) else { continue };
        if src.format.is_preference() == dpo && wanted.is_none_or(|w| w == src.format) {
            continue;
        }
        let origin = cx.origins.get(&format!("{}.{name}", f.child_path("mix"))).cloned().unwrap_or(f.origin.clone());
        let (what, help) = match wanted {
            Some(SourceFormat::UnpairedPreferenceJsonl) => (
                format!("kto stage `{}` reads source `{name}`, which is {}", stage.path, src.format),
                "`loss = \"kto\"` learns from single responses marked desirable or not: mix only unpaired-preference-jsonl sources",
            ),
            Some(_) => (
                format!("dpo stage `{}` reads source `{name}`, which is {}", stage.path, src.format),
                "a dpo stage learns from pairs: mix only preference-jsonl sources (or set `preference.loss = \"kto\"` for unpaired ones)",
            ),
            None => (
                format!("source `{name}` is {}, which only a dpo stage reads", src.format),
                "set `kind = \"dpo\"`, or mix a chat-jsonl source to fine-tune on conversations",
            ),
        };
        cx.diags.push(
            Diagnostic::new(&origin, what)
                .label("preference-jsonl holds pairs of a chosen and a rejected response; unpaired-preference-jsonl single responses with a `label`")
                .help(help),
        );
    }
    if loss_on == LossOn::Assistant && !dpo {
        for (name, _) in &mix {
            if let Some(src) = sources.iter().find(|s| &s.name == name).filter(|s| s.format != SourceFormat::ChatJsonl)
            {
                let origin = cx.origins.get(&f.child_path("loss_on")).cloned().unwrap_or_else(|| f.origin.clone());
                cx.diags.push(
                    Diagnostic::new(
                        &origin,
                        format!("loss_on = \"assistant\" needs chat data, but source `{name}` is {}", src.format),
                    )
                    .label("only `chat-jsonl` sources have assistant turns")
                    .help("set `loss_on = \"all\"`, or mix only chat-jsonl sources"),
                );
            }
        }
    }
    let packing = if dpo { Packing::Pad } else { f.word::<Packing>(cx, "packing").unwrap_or(Packing::BestFit) };
    Data { mix, phases, online, packing, loss_on }
}

/// One mix's `{ SOURCE = WEIGHT }` table: weights > 0 of known sources, normalised, sorted.
fn decode_weights(cx: &mut Cx, node: &Node, path: &str, source_names: &[&str]) -> Vec<(String, f64)> {
    let mut mix = Vec::new();
    match &node.val {
        Val::Table(t) if !t.entries.is_empty() => {
            for e in &t.entries {
                check_source_ref(cx, &e.key, &e.key_origin, source_names);
                let wpath = format!("{path}.{}", e.key);
                cx.origins.insert(wpath.clone(), e.node.origin.clone());
                if let Some(w) = decode::float(cx, &e.node, &wpath) {
                    check_range(cx, &wpath, w, w > 0.0, "a weight > 0");
                    mix.push((e.key.clone(), w));
                }
            }
        }
        _ => cx.diags.push(
            Diagnostic::new(&node.origin, format!("`{path}` must be a non-empty table of weights"))
                .label("expected `{ SOURCE = 0.7, OTHER = 0.3 }`"),
        ),
    }
    let total: f64 = mix.iter().map(|(_, w)| w).sum();
    if total > 0.0 {
        for (_, w) in &mut mix {
            *w /= total;
        }
    }
    mix.sort_by(|a, b| a.0.cmp(&b.0));
    mix
}

fn decode_optim(cx: &mut Cx, stage: &Fields) -> Optim {
    let mut optim = Optim::adamw(3e-4);
    let Some(node) = stage.get("optim") else { return optim };
    let f = Fields::of(cx, node, &stage.child_path("optim"), OPTIM_KEYS);
    f.check_unknown(cx);
    if let Some(k) = f.opt(cx, "kind", decode::choice(&["adamw", "muon"])) {
        optim.kind = k.into();
    }
    let muon = optim.kind == "muon";
    let momentum = f.opt(cx, "momentum", decode::float);
    if let Some(m) = momentum {
        check_range(cx, &f.child_path("momentum"), m, (0.0..1.0).contains(&m), "a momentum in [0, 1)");
    }
    let nesterov = f.opt(cx, "nesterov", decode::boolean);
    let ns_steps = f.opt(cx, "ns_steps", decode::size(1, 99));
    let adjust_lr = f.word::<MuonScale>(cx, "adjust_lr");
    let adamw_lr = f.opt(cx, "adamw_lr", decode::float);
    if let Some(lr) = adamw_lr {
        check_range(cx, &f.child_path("adamw_lr"), lr, lr > 0.0, "a learning rate > 0");
    }
    for (key, given) in [
        ("adamw_lr", adamw_lr.is_some()),
        ("momentum", momentum.is_some()),
        ("nesterov", nesterov.is_some()),
        ("ns_steps", ns_steps.is_some()),
        ("adjust_lr", adjust_lr.is_some()),
    ] {
        only_for(cx, &f, key, given, muon, "`kind = \"muon\"`");
    }
    optim.muon = muon.then(|| Muon {
        momentum: momentum.unwrap_or(0.95),
        nesterov: nesterov.unwrap_or(true),
        ns_steps: ns_steps.unwrap_or(5),
        adjust_lr: adjust_lr.unwrap_or(MuonScale::MatchRmsAdamw),
        adamw_lr,
    });
    let num = |cx: &mut Cx, key: &str, slot: &mut f64, ok: fn(f64) -> bool, what: &str| {
        if let Some(v) = f.opt(cx, key, decode::float) {
            check_range(cx, &f.child_path(key), v, ok(v), what);
            *slot = v;
        }
    };
    num(cx, "lr", &mut optim.lr, |v| v > 0.0, "a learning rate > 0");
    num(cx, "eps", &mut optim.eps, |v| v > 0.0, "a number > 0");
    num(cx, "weight_decay", &mut optim.weight_decay, |v| v >= 0.0, "a number ≥ 0");
    num(cx, "grad_clip", &mut optim.grad_clip, |v| v >= 0.0, "a norm ≥ 0 (0 turns clipping off)");
    if let Some(node) = f.get("betas") {
        let path = f.child_path("betas");
        cx.origins.insert(path.clone(), node.origin.clone());
        match &node.val {
            Val::Array(items) if items.len() == 2 => {
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    cx.origins.insert(p.clone(), item.origin.clone());
                    if let Some(b) = decode::float(cx, item, &p) {
                        check_range(cx, &p, b, (0.0..1.0).contains(&b), "a beta in [0, 1)");
                        optim.betas[i] = b;
                    }
                }
            }
            _ => cx.diags.push(
                Diagnostic::new(&node.origin, format!("`{path}` must be two numbers")).label("expected `[0.9, 0.95]`"),
            ),
        }
    }
    optim
}
