//! A `merge` stage: one model made from the weights of several of the same architecture, with
//! no training (model soups, Wortsman et al. 2022). `uniform` averages them; `weighted` by the
//! given weights; `greedy` adds ingredients in order of held-out loss while the soup's
//! held-out loss improves (on the stage's `data`, `eval.batches` batches); `task-arithmetic`
//! adds `scale` × the sum of each input's difference from `base` to `base` ("Composing
//! Parameter-Efficient Modules with Arithmetic Operations"); `ties` (Yadav et al. 2023) keeps
//! each difference's largest `density` of entries, elects each entry's sign by the weighted
//! sum, and averages the differences that agree with it; `dare-linear` and `dare-ties` (Yu et
//! al. 2023) drop entries at random instead, scaling the survivors by 1/`density`, then add
//! (or elect and add, as mergekit does); `slerp` interpolates two models along the great
//! circle between each pair of tensors.

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
    /// `task-arithmetic`, `ties`, `dare-ties`, `dare-linear`, required there: what the
    /// inputs' differences are taken from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<MergeInput>,
    /// `task-arithmetic`, `ties`, `dare-*`, default 1.0: λ in base + λ · Σ (input − base).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// `ties`, `dare-*`, required there, in (0, 1]: the fraction of each difference's entries
    /// kept (TIES: the largest in magnitude; DARE: at random, the survivors × 1/density).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub density: Option<f64>,
    /// `ties`, `dare-*` (default true for `ties`, false for `dare-*`, as mergekit's): whether
    /// the summed differences are divided by the summed weights of those that take part
    /// (`ties`, `dare-ties`: those agreeing with the elected sign).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    /// `slerp` only, required there, in [0, 1]: how far from the first input to the second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub t: Option<f64>,
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
pub(crate) const MERGE_KEYS: &[&str] = &["inputs", "method", "weights", "base", "scale", "density", "normalize", "t"];

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
    let weighted = method == MergeMethod::Weighted;
    let takes_base = method.takes_base();
    let trims = method.trims();
    only_for(cx, f, "weights", !weights.is_empty(), weighted || trims, "method = \"weighted\", \"ties\" or \"dare-*\"");
    let weights_origin = cx.origins.get(&f.child_path("weights")).cloned().unwrap_or_else(|| f.origin.clone());
    let weights = if weighted {
        if weights.len() != listed.len() || weights.iter().any(|w| *w < 0.0) || weights.iter().sum::<f64>() <= 0.0 {
            cx.diags.push(
                Diagnostic::new(
                    &weights_origin,
                    format!("a weighted merge needs one weight ≥ 0 per input ({})", listed.len()),
                )
                .label(format!("found {} weight(s)", weights.len())),
            );
        }
        let total: f64 = weights.iter().sum();
        weights.iter().map(|w| w / total).collect()
    } else if trims {
        // Each difference's weight, as written (mergekit's `weight`): not normalised.
        if weights.is_empty() {
            vec![1.0; listed.len()]
        } else {
            if weights.len() != listed.len() || weights.iter().any(|w| !w.is_finite()) {
                cx.diags.push(
                    Diagnostic::new(
                        &weights_origin,
                        format!("expected one finite weight per input ({})", listed.len()),
                    )
                    .label(format!("found {} weight(s)", weights.len())),
                );
            }
            weights
        }
    } else {
        Vec::new()
    };

    let base = f.opt(cx, "base", decode::string);
    let base_methods = "method = \"task-arithmetic\", \"ties\" or \"dare-*\"";
    only_for(cx, f, "base", base.is_some(), takes_base, base_methods);
    let base = match (takes_base, base) {
        (true, Some(b)) => {
            let origin = cx.origins.get(&f.child_path("base")).cloned().unwrap_or_default();
            read_input(cx, &b, &origin)
        }
        (true, None) => {
            cx.diags.push(
                Diagnostic::new(&f.origin, format!("a {} merge needs a `base`", method))
                    .label("expected `base = \"STAGE\"`: the weights the inputs' differences are taken from"),
            );
            None
        }
        (false, _) => None,
    };
    let scale = f.opt(cx, "scale", decode::float);
    only_for(cx, f, "scale", scale.is_some(), takes_base, base_methods);
    if let Some(s) = scale {
        check_range(cx, &f.child_path("scale"), s, s.is_finite(), "a finite number");
    }

    let density = f.opt(cx, "density", decode::float);
    let trimming = "method = \"ties\", \"dare-ties\" or \"dare-linear\"";
    only_for(cx, f, "density", density.is_some(), trims, trimming);
    match density {
        Some(d) => check_range(cx, &f.child_path("density"), d, d > 0.0 && d <= 1.0, "a fraction in (0, 1]"),
        None if trims => cx.diags.push(
            Diagnostic::new(&f.origin, format!("a {} merge needs a `density`", method))
                .label("expected `density = 0.5`: the fraction of each input's difference from `base` kept"),
        ),
        None => {}
    }
    let normalize = f.opt(cx, "normalize", decode::boolean);
    only_for(cx, f, "normalize", normalize.is_some(), trims, trimming);

    let t = f.opt(cx, "t", decode::float);
    let slerp = method == MergeMethod::Slerp;
    only_for(cx, f, "t", t.is_some(), slerp, "method = \"slerp\"");
    match t {
        Some(t) => check_range(cx, &f.child_path("t"), t, (0.0..=1.0).contains(&t), "a fraction in [0, 1]"),
        None if slerp => cx.diags.push(
            Diagnostic::new(&f.origin, "a slerp merge needs `t`")
                .label("expected `t = 0.5`: how far from the first input towards the second"),
        ),
        None => {}
    }
    if slerp && listed.len() != 2 {
        let origin = cx.origins.get(&f.child_path("inputs")).cloned().unwrap_or_else(|| f.origin.clone());
        cx.diags.push(
            Diagnostic::new(&origin, "a slerp merge interpolates between exactly two inputs")
                .label(format!("found {}", listed.len())),
        );
    }
    Some(Merge {
        method,
        inputs,
        weights,
        base,
        scale: takes_base.then(|| scale.unwrap_or(1.0)),
        density: density.filter(|_| trims),
        normalize: trims.then(|| normalize.unwrap_or(method == MergeMethod::Ties)),
        t: t.filter(|_| slerp),
    })
}
