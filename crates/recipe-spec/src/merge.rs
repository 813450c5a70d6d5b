//! A `merge` stage: one model made from the weights of several of the same architecture, with
//! no training (model soups, Wortsman et al. 2022). `uniform` averages them; `weighted` by the
//! given weights; `greedy` adds ingredients in order of held-out loss while the soup's
//! held-out loss improves (on the stage's `data`, `eval.batches` batches); `task-arithmetic`
//! adds `scale` × the sum of each input's difference from `base` to `base` ("Composing
//! Parameter-Efficient Modules with Arithmetic Operations").

use std::path::Path;

use serde::Serialize;

use crate::checkpoint::CheckpointReader;
use crate::decode::{self, Cx, Fields, check_range, only_for};
use crate::diag::{Diagnostic, Origin};
use crate::import::{Import, import_teacher, is_path};
use crate::tokenizer::Tokenizer;
use crate::vocab::MergeMethod;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Merge {
    /// Required.
    pub method: MergeMethod,
    /// Required: stages or checkpoint paths, in order.
    pub inputs: Vec<MergeInput>,
    /// `weighted` only, required there: one per input, normalised to sum to 1.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<f64>,
    /// `task-arithmetic` only, required there: what the inputs' differences are taken from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<MergeInput>,
    /// `task-arithmetic` only, default 1.0: λ in base + λ · Σ (input − base).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
}

/// A merge's input: a stage's result, or an imported checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum MergeInput {
    Stage(String),
    Checkpoint(Box<Import>),
}

impl MergeInput {
    /// As the recipe wrote it.
    pub fn written(&self) -> &str {
        match self {
            MergeInput::Stage(name) => name,
            MergeInput::Checkpoint(import) => &import.written,
        }
    }
}

impl Serialize for MergeInput {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.written())
    }
}

impl Merge {
    /// Every input, `base` included.
    pub fn all_inputs(&self) -> impl Iterator<Item = &MergeInput> {
        self.inputs.iter().chain(&self.base)
    }
}

/// Keys of the stage table that only a merge stage takes.
pub(crate) const MERGE_KEYS: &[&str] = &["inputs", "method", "weights", "base", "scale"];

/// Keys of the stage table a merge stage takes besides its own: the rest train, and a merge
/// trains nothing (a greedy one reads `data`, `eval` and the batch shape for its evaluation).
const ALSO_FOR_MERGES: &[&str] = &["kind", "data", "seq_len", "batch_size", "micro_batch_size", "eval"];

/// Where a merge's checkpoint inputs are read from, and how a stage name is checked.
pub(crate) struct MergeContext<'a> {
    pub(crate) stage: &'a str,
    pub(crate) stage_names: &'a [String],
    pub(crate) base_dir: &'a Path,
    pub(crate) checkpoints: &'a dyn CheckpointReader,
    pub(crate) tokenizer: Option<&'a Tokenizer>,
    pub(crate) check_stage_ref: &'a dyn Fn(&mut Cx, &str, &Origin),
}

/// Read the merge keys of a stage table: a merge stage's `Merge`, or (for any other kind) an
/// error for each merge key written.
pub(crate) fn decode_merge(cx: &mut Cx, f: &Fields, is_merge: bool, context: &MergeContext) -> Option<Merge> {
    if !is_merge {
        for key in MERGE_KEYS {
            only_for(cx, f, key, f.get(key).is_some(), false, "kind = \"merge\"");
        }
        return None;
    }
    for (key, node) in f.written().filter(|(k, _)| !MERGE_KEYS.contains(k) && !ALSO_FOR_MERGES.contains(k)) {
        cx.diags.push(
            Diagnostic::new(&node.origin, format!("`{}` does not apply to a merge stage", f.child_path(key)))
                .label("a merge trains nothing: its weights and architecture come from its inputs"),
        );
    }
    let method = f
        .required(cx, "method", "\"uniform\"", decode::choice(MergeMethod::WORDS))
        .and_then(MergeMethod::from_word)
        .unwrap_or(MergeMethod::Uniform);
    let read_input = |cx: &mut Cx, written: &str, origin: &Origin| -> Option<MergeInput> {
        if !context.stage_names.iter().any(|s| s == written) && is_path(written, context.base_dir) {
            let MergeContext { stage, base_dir, checkpoints, tokenizer, .. } = *context;
            return import_teacher(cx, checkpoints, stage, written, origin, base_dir, tokenizer)
                .map(|import| MergeInput::Checkpoint(Box::new(import)));
        }
        (context.check_stage_ref)(cx, written, origin);
        Some(MergeInput::Stage(written.to_string()))
    };
    let listed = f.required(cx, "inputs", "[\"STAGE\", \"OTHER\"]", decode::strings).unwrap_or_default();
    if listed.is_empty() && f.get("inputs").is_some() {
        let origin = cx.origins.get(&f.child_path("inputs")).cloned().unwrap_or_default();
        cx.diags.push(
            Diagnostic::new(&origin, "a merge needs at least one input").label("expected stages or checkpoint paths"),
        );
    }
    let inputs: Vec<MergeInput> = listed.iter().filter_map(|(w, origin)| read_input(cx, w, origin)).collect();

    let weights = f.opt(cx, "weights", decode::floats).unwrap_or_default();
    only_for(cx, f, "weights", !weights.is_empty(), method == MergeMethod::Weighted, "method = \"weighted\"");
    let weights = if method == MergeMethod::Weighted {
        let origin = cx.origins.get(&f.child_path("weights")).cloned().unwrap_or_else(|| f.origin.clone());
        if weights.len() != listed.len() || weights.iter().any(|w| *w < 0.0) || weights.iter().sum::<f64>() <= 0.0 {
            cx.diags.push(
                Diagnostic::new(&origin, format!("a weighted merge needs one weight ≥ 0 per input ({})", listed.len()))
                    .label(format!("found {} weight(s)", weights.len())),
            );
        }
        let total: f64 = weights.iter().sum();
        weights.iter().map(|w| w / total).collect()
    } else {
        Vec::new()
    };

    let arithmetic = method == MergeMethod::TaskArithmetic;
    let base = f.opt(cx, "base", decode::string);
    only_for(cx, f, "base", base.is_some(), arithmetic, "method = \"task-arithmetic\"");
    let base = match (arithmetic, base) {
        (true, Some(b)) => {
            let origin = cx.origins.get(&f.child_path("base")).cloned().unwrap_or_default();
            read_input(cx, &b, &origin)
        }
        (true, None) => {
            cx.diags.push(
                Diagnostic::new(&f.origin, "a task-arithmetic merge needs a `base`")
                    .label("expected `base = \"STAGE\"`: the weights the inputs' differences are taken from"),
            );
            None
        }
        (false, _) => None,
    };
    let scale = f.opt(cx, "scale", decode::float);
    only_for(cx, f, "scale", scale.is_some(), arithmetic, "method = \"task-arithmetic\"");
    if let Some(s) = scale {
        check_range(cx, &f.child_path("scale"), s, s.is_finite(), "a finite number");
    }
    Some(Merge { method, inputs, weights, base, scale: arithmetic.then(|| scale.unwrap_or(1.0)) })
}
