//! Checkpoints a stage imports, as its starting weights (`model.from`) or as teachers: the
//! architecture comes from the checkpoint (asked through [`crate::CheckpointReader`]), and a
//! recipe that contradicts it or pairs it with another tokenizer is refused.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checkpoint::{CheckpointInfo, CheckpointReader};
use crate::decode::Cx;
use crate::diag::{Diagnostic, Origin};
use crate::model::{MODEL_KEYS, Model, ModelSpec, model_field_path};
use crate::tokenizer::Tokenizer;
use crate::vocab::CheckpointFormat;

/// A checkpoint a stage imports, as its starting weights or as a teacher.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Import {
    /// As the recipe wrote it, relative to the recipe's folder.
    #[serde(rename = "path")]
    pub written: String,
    #[serde(skip)]
    pub path: PathBuf,
    #[serde(skip)]
    pub format: CheckpointFormat,
    /// The architecture, from the checkpoint.
    #[serde(skip)]
    pub model: Model,
}

/// A `teacher` entry that is no stage's name names a checkpoint when it looks like a path
/// (stage names hold neither `/` nor `.`) or something by that name exists.
pub(crate) fn is_path(entry: &str, base_dir: &Path) -> bool {
    entry.contains('/') || entry.contains('.') || base_dir.join(entry).exists()
}

/// Read a checkpoint a stage imports, or explain in a diagnostic at `origin` why it cannot be.
fn read_checkpoint(
    cx: &mut Cx,
    checkpoints: &dyn CheckpointReader,
    path: &Path,
    written: &str,
    origin: &Origin,
) -> Option<CheckpointInfo> {
    match checkpoints.inspect(path) {
        Ok(info) => Some(info),
        Err(why) => {
            let d = Diagnostic::new(origin, format!("cannot import `{written}`: {why}"))
                .label("expected a Hugging Face model folder, a .safetensors file or a .gguf file");
            cx.diags.push(crate::hub::explain_missing(d, written, path));
            None
        }
    }
}

/// A checkpoint that carries a tokenizer must carry the recipe's: the same ids for the same
/// strings.
fn check_same_tokenizer(
    cx: &mut Cx,
    stage: &str,
    info: &CheckpointInfo,
    written: &str,
    origin: &Origin,
    tokenizer: Option<&Tokenizer>,
) {
    let (Some(theirs), Some(ours)) = (&info.tokenizer, tokenizer) else { return };
    let same = matches!(ours, Tokenizer::File { fingerprint, .. } if *fingerprint == theirs.fingerprint);
    if !same {
        let what = match ours {
            Tokenizer::File { written, .. } => format!("`{written}`"),
            Tokenizer::Train(_) => "the tokenizer this recipe trains".into(),
        };
        cx.diags.push(
            Diagnostic::new(origin, format!("stage `{stage}` uses `{written}`, whose tokenizer is not the recipe's"))
                .label(format!(
                    "the recipe tokenizes with {what} ({} tokens); the checkpoint was trained with {} tokens \
                     and other ids, so its logits would mean other tokens",
                    ours.vocab_size(),
                    theirs.vocab_size
                ))
                .help(format!("set `[tokenizer] path = \"{written}\"`")),
        );
    }
}

/// The architecture of a stage that imports `path`: the checkpoint's, with a diagnostic for
/// each field set beside `from` (in the stage's `model`, or in `[model]` when `from` is there)
/// to something else; fields of the less specific `[model]` give way to a stage's own `from`.
/// `max_seq_len` may only shrink.
pub(crate) fn import_architecture(
    cx: &mut Cx,
    checkpoints: &dyn CheckpointReader,
    stage: &str,
    overrides: &ModelSpec,
    spec: &ModelSpec,
    path: &Path,
    tokenizer: Option<&Tokenizer>,
) -> (ModelSpec, Option<(PathBuf, CheckpointFormat)>) {
    let written = spec.from.clone().unwrap_or_default();
    let from_path = model_field_path(stage, overrides, "from");
    let from_origin = cx.origins.get(&from_path).cloned().unwrap_or_default();
    let Some(info) = read_checkpoint(cx, checkpoints, path, &written, &from_origin) else {
        return (spec.clone(), None);
    };
    check_same_tokenizer(cx, stage, &info, &written, &from_origin, tokenizer);
    let mut arch = info.arch.clone();
    if let Some(kv) = info.kv_width_of_unknown_heads {
        match spec.n_heads {
            Some(n_heads) => {
                let head_dim = arch.d_model.unwrap_or(0) / n_heads.max(1);
                arch.n_heads = Some(n_heads);
                arch.n_kv_heads = Some(kv / head_dim.max(1));
            }
            None => cx.diags.push(
                Diagnostic::new(&from_origin, format!("`{written}` has no config.json beside it"))
                    .label("tensor shapes do not tell the number of attention heads")
                    .help("set `n_heads` in the stage's model, or put the model's config.json beside the file"),
            ),
        }
    }
    let theirs = serde_json::to_value(&arch).expect("plain struct");
    let beside_from = if overrides.from.is_some() { overrides } else { spec };
    let mine = serde_json::to_value(beside_from).expect("plain struct");
    for field in MODEL_KEYS {
        // The one architecture field a checkpoint may leave out: then it has no rotary scaling.
        let unscaled = (*field == "rope_scaling").then_some(&serde_json::Value::Null);
        let (Some(t), Some(m)) = (theirs.get(field).or(unscaled), mine.get(field)) else { continue };
        let differs = match (t.as_f64(), m.as_f64()) {
            (Some(t), Some(m)) if *field == "max_seq_len" => m > t,
            (Some(t), Some(m)) => (t - m).abs() > 1e-6 * t.abs().max(m.abs()),
            _ => t != m,
        };
        if differs {
            let path = model_field_path(stage, overrides, field);
            let origin = cx.origins.get(&path).cloned().unwrap_or_default();
            let (bound, help) = match *field {
                "max_seq_len" => (format!("at most {t}"), "lower it or remove it".to_string()),
                _ => (t.to_string(), format!("remove `{field}`: the architecture comes from the checkpoint")),
            };
            cx.diags.push(
                Diagnostic::new(&origin, format!("`{path}` is {m}, but `{written}` has {field} = {t}"))
                    .label(format!("stage `{stage}` imports `{written}`, so {field} must be {bound}"))
                    .help(help),
            );
        }
    }
    // The recipe may train on shorter sequences than the checkpoint supports.
    let max_seq_len = match (spec.max_seq_len, arch.max_seq_len) {
        (Some(wanted), Some(most)) => Some(wanted.min(most)),
        (wanted, most) => wanted.or(most),
    };
    let n_layers = match (spec.layers, arch.n_layers) {
        (Some([start, end]), Some(all)) if end > all => {
            let path = model_field_path(stage, overrides, "layers");
            let origin = cx.origins.get(&path).cloned().unwrap_or_default();
            let last = end - 1;
            cx.diags.push(
                Diagnostic::new(&origin, format!("`{written}` has {all} layers, so it has no layer {last}"))
                    .label(format!("expected layers within 0-{}", all.saturating_sub(1)))
                    .help(format!("take at most `layers = {all}`; this asks for {start}-{last}")),
            );
            arch.n_layers
        }
        (Some([start, end]), _) => Some(end - start),
        (None, all) => all,
    };
    // A slice of the layers keeps the listed layers (NoPE, full attention) within it, renumbered.
    let arch = match spec.layers {
        Some([start, end]) => arch.map_layer_lists(|layers| {
            layers.into_iter().filter(|l| (start..end).contains(l)).map(|l| l - start).collect()
        }),
        None => arch,
    };
    let merged = ModelSpec {
        max_seq_len,
        init_std: spec.init_std,
        from: spec.from.clone(),
        layers: spec.layers,
        n_layers,
        ..arch
    };
    (merged, Some((path.to_path_buf(), info.format)))
}

/// A teacher checkpoint: its architecture comes whole from the checkpoint.
pub(crate) fn import_teacher(
    cx: &mut Cx,
    checkpoints: &dyn CheckpointReader,
    stage: &str,
    written: &str,
    origin: &Origin,
    base_dir: &Path,
    tokenizer: Option<&Tokenizer>,
) -> Option<Import> {
    let path = crate::hub::locate(base_dir, written);
    let info = read_checkpoint(cx, checkpoints, &path, written, origin)?;
    check_same_tokenizer(cx, stage, &info, written, origin, tokenizer);
    if info.kv_width_of_unknown_heads.is_some() {
        cx.diags.push(
            Diagnostic::new(origin, format!("teacher `{written}` has no config.json beside it"))
                .label("a teacher's architecture must come whole from its checkpoint")
                .help("point at the model's folder, or put its config.json beside the file"),
        );
        return None;
    }
    let model = info.arch.resolve(None);
    Some(Import { written: written.to_string(), path, format: info.format, model })
}
