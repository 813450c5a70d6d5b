//! A stage's `peft` table: LoRA, DoRA, VeRA or Tied-LoRA adapters over frozen base weights,
//! fresh or (`from`) starting from a `peft` LoRA or DoRA adapter.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checkpoint::{AdapterInfo, CheckpointReader};
use crate::decode::{self, Cx, Fields, check_range};
use crate::diag::{Diagnostic, Origin, suggestion};
use crate::model::Model;
use crate::tree::Node;
use crate::vocab::{LoraInit, PeftMethod};

/// The projections of a Llama block that PEFT can adapt.
pub const PEFT_MODULES: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

#[derive(Clone, Debug, Serialize)]
pub struct Peft {
    /// Default `lora`.
    pub method: PeftMethod,
    /// Default 8.
    pub rank: u32,
    /// Default 16: the update is scaled by alpha / rank. Not for VeRA, whose vectors learn
    /// the scale.
    pub alpha: f64,
    /// Default false. rsLoRA (Kalajdzievski 2023, `peft`'s `use_rslora`): scale by
    /// alpha / √rank instead, so that the update's size does not shrink as the rank grows.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rslora: bool,
    /// Default none. LoRA+ (Hayou et al. 2024): `B` and every adapter vector learn at this
    /// multiple of the stage's learning rate (its decay scaled alike), as `peft`'s
    /// `create_loraplus_optimizer` groups them; the paper suggests 16.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loraplus_lr_ratio: Option<f64>,
    /// Default none: `A` random, `B` zero. `pissa` (PiSSA, Meng et al. 2024): `B·A` starts as
    /// the weight's top `rank` singular components, `B = U·√(S/s)`, `A = √(S/s)·Vᵀ`, and the
    /// base keeps the rest, `W − s·B·A`; `olora` (OLoRA, Büyükakyüz 2024): `B` and `A` the first
    /// `rank` columns of `Q` and rows of `R` in `W = Q·R`, the base `W − s·B·A`. Either way the
    /// model starts as the checkpoint computes it. LoRA only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<LoraInit>,
    /// Default 0.
    pub dropout: f64,
    /// Default ["q_proj", "v_proj"].
    pub targets: Vec<String>,
    /// Default none. LoRA only: restart the adapters every so many steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relora: Option<ReLora>,
    /// Default none: the adapters start as `peft` starts them (`B` = 0, so training starts
    /// from the base model). A `peft` LoRA or DoRA adapter folder, as written (relative to the
    /// recipe's folder), to start from instead; its method, rank, alpha and targets are the
    /// stage's. Its files enter the stage's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// `from` resolved, and what the adapter says about itself.
    #[serde(skip)]
    pub adapter: Option<(PathBuf, AdapterInfo)>,
}

/// ReLoRA ("ReLoRA: High-Rank Training Through Low-Rank Updates", Lialin et al.): every
/// `every` steps the LoRA update is merged into the base weights, `A` is drawn afresh and `B`
/// zeroed (so the model's function is unchanged), the adapters' optimizer state is zeroed but
/// for the largest `1 − prune` of its first moments (by magnitude, each kept with its second
/// moment), and the learning rate warms up again from 0 over `warmup` steps — a sum of
/// low-rank updates that can reach a high rank.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReLora {
    /// Required, ≥ 1 and before the stage's last step.
    pub every: u64,
    /// Default `every` / 10, less than `every`.
    pub warmup: u64,
    /// Default 0.99: the share of the adapters' AdamW state zeroed at a restart.
    pub prune: f64,
}

const PEFT_KEYS: &[&str] =
    &["method", "rank", "alpha", "rslora", "loraplus_lr_ratio", "init", "dropout", "targets", "relora", "from"];
const RELORA_KEYS: &[&str] = &["every", "warmup", "prune"];

impl ReLora {
    /// Whether the adapters restart before step `step` (0-based): after every `every` steps.
    pub fn restarts_before(&self, step: u64) -> bool {
        step > 0 && step.is_multiple_of(self.every)
    }

    /// The learning rate's factor at `step` for the re-warming after the latest restart: from
    /// 0 at the restart (as the paper's jagged schedule), so the first step after it only
    /// refills the optimizer's moments.
    pub fn warm_factor(&self, step: u64) -> f64 {
        let since = step % self.every;
        if step < self.every || since >= self.warmup { 1.0 } else { since as f64 / self.warmup as f64 }
    }

    fn decode(cx: &mut Cx, node: &Node, path: &str) -> Option<ReLora> {
        let f = Fields::of(cx, node, path, RELORA_KEYS);
        f.check_unknown(cx);
        let every = f.required(cx, "every", "200", decode::count)?;
        check_range(cx, &f.child_path("every"), every as f64, every >= 1, "at least 1 step");
        let warmup = f.opt(cx, "warmup", decode::count).unwrap_or(every / 10);
        check_range(cx, &f.child_path("warmup"), warmup as f64, warmup < every.max(1), "fewer steps than `every`");
        let prune = f.opt(cx, "prune", decode::float).unwrap_or(0.99);
        check_range(cx, &f.child_path("prune"), prune, (0.0..=1.0).contains(&prune), "a share in [0, 1]");
        Some(ReLora { every: every.max(1), warmup, prune })
    }
}

impl Peft {
    pub(crate) fn decode(
        cx: &mut Cx,
        node: &Node,
        path: &str,
        base_dir: &Path,
        checkpoints: &dyn CheckpointReader,
    ) -> Peft {
        let f = Fields::of(cx, node, path, PEFT_KEYS);
        f.check_unknown(cx);
        let from = f.opt(cx, "from", decode::string);
        let adapter = from.as_ref().and_then(|written| read_adapter(cx, &f, written, base_dir, checkpoints));
        let info = adapter.as_ref().map(|(_, info)| info);
        let method = f.word::<PeftMethod>(cx, "method");
        let rank = f.opt(cx, "rank", decode::size(1, 1 << 16));
        let alpha = f.opt(cx, "alpha", decode::float);
        if let Some(alpha) = alpha {
            check_range(cx, &f.child_path("alpha"), alpha, alpha > 0.0, "a number > 0");
        }
        let rslora = f.opt(cx, "rslora", decode::boolean);
        let targets = f.opt(cx, "targets", decode::strings).map(|list| checked_targets(cx, &f, list));
        let (method, rank, alpha, rslora, targets) = match info {
            None => (
                method.unwrap_or(PeftMethod::Lora),
                rank.unwrap_or(8),
                alpha.unwrap_or(16.0),
                rslora.unwrap_or(false),
                targets.unwrap_or_else(|| vec!["q_proj".into(), "v_proj".into()]),
            ),
            Some(info) => {
                let written = from.as_deref().unwrap_or_default();
                let mut agree = |key: &str, mine: Option<String>, theirs: String| {
                    if let Some(mine) = mine.filter(|m| *m != theirs) {
                        let origin = cx.origins.get(&f.child_path(key)).cloned().unwrap_or_default();
                        cx.diags.push(
                            Diagnostic::new(
                                &origin,
                                format!("`{}` is {mine}, but adapter `{written}` has {theirs}", f.child_path(key)),
                            )
                            .label(format!("the stage starts from `{written}`, so its {key} is the adapter's"))
                            .help(format!("remove `{key}`: it comes from the adapter")),
                        );
                    }
                };
                agree("method", method.map(|m| m.to_string()), info.method.to_string());
                agree("rank", rank.map(|r| r.to_string()), info.rank.to_string());
                agree("alpha", alpha.map(|a| a.to_string()), info.alpha.to_string());
                agree("rslora", rslora.map(|r| r.to_string()), info.rslora.to_string());
                agree("targets", targets.map(|t| format!("{t:?}")), format!("{:?}", info.targets));
                (info.method, info.rank, info.alpha, info.rslora, info.targets.clone())
            }
        };
        let vera = method == PeftMethod::Vera;
        let not_vera = "`method` lora, dora or tied-lora";
        decode::only_for(cx, &f, "alpha", f.get("alpha").is_some(), !vera, not_vera);
        decode::only_for(cx, &f, "rslora", f.get("rslora").is_some(), !vera, not_vera);
        let loraplus_lr_ratio = f.opt(cx, "loraplus_lr_ratio", decode::float);
        if let Some(ratio) = loraplus_lr_ratio {
            check_range(cx, &f.child_path("loraplus_lr_ratio"), ratio, ratio > 0.0, "a number > 0");
        }
        // Every VeRA parameter is a vector, so the ratio would only scale the learning rate.
        decode::only_for(cx, &f, "loraplus_lr_ratio", loraplus_lr_ratio.is_some(), !vera, not_vera);
        let dropout = f.opt(cx, "dropout", decode::float).unwrap_or(0.0);
        check_range(cx, &f.child_path("dropout"), dropout, (0.0..1.0).contains(&dropout), "a probability in [0, 1)");
        let relora = f.get("relora").and_then(|node| ReLora::decode(cx, node, &f.child_path("relora")));
        decode::only_for(cx, &f, "relora", relora.is_some(), method == PeftMethod::Lora, "`method = \"lora\"`");
        let init = f.word::<LoraInit>(cx, "init");
        let fresh_lora = method == PeftMethod::Lora && relora.is_none() && from.is_none();
        let fresh = "`method = \"lora\"` starting fresh (not with `relora` or `from`)";
        decode::only_for(cx, &f, "init", init.is_some(), fresh_lora, fresh);
        Peft { method, rank, alpha, rslora, loraplus_lr_ratio, init, dropout, targets, relora, from, adapter }
    }

    /// Whether the frozen base stays the starting weights throughout, so that the model with
    /// its adapters left out is the model the stage started from: not when PiSSA or OLoRA take
    /// a part of it, nor when ReLoRA merges updates into it.
    pub fn keeps_starting_base(&self) -> bool {
        self.init.is_none() && self.relora.is_none()
    }

    /// The adapter in folder `dir` (written `written`), as it is, without dropout: what sampling
    /// with it applies.
    pub fn of_adapter(written: &str, dir: &Path, info: AdapterInfo) -> Peft {
        Peft {
            method: info.method,
            rank: info.rank,
            alpha: info.alpha,
            rslora: info.rslora,
            loraplus_lr_ratio: None,
            init: None,
            dropout: 0.0,
            targets: info.targets.clone(),
            relora: None,
            from: Some(written.to_string()),
            adapter: Some((dir.to_path_buf(), info)),
        }
    }

    /// An adapter to start from must fit the stage's model: `A` and `B` of every adapted
    /// projection (and DoRA's magnitudes) at the shapes the model and the rank give.
    pub(crate) fn check_adapter_fits(&self, cx: &mut Cx, path: &str, model: &Model) {
        let Some((_, info)) = &self.adapter else { return };
        let written = self.from.as_deref().unwrap_or_default();
        let origin = cx.origins.get(&format!("{path}.from")).cloned().unwrap_or_default();
        let rank = u64::from(self.rank);
        for (name, shape, _) in model.layout() {
            let Some(target) = self.targets.iter().find(|t| name.ends_with(&format!(".{t}.weight"))) else { continue };
            let stem = name.trim_end_matches(".weight");
            let (out, input) = (shape[0] as u64, shape[1] as u64);
            let mut wanted = vec![
                (format!("{stem}.lora_A.weight"), vec![rank, input]),
                (format!("{stem}.lora_B.weight"), vec![out, rank]),
            ];
            if self.method == PeftMethod::Dora {
                wanted.push((format!("{stem}.lora_magnitude_vector"), vec![out]));
            }
            for (tensor, expected) in wanted {
                let found = info.shapes.get(&tensor);
                if found != Some(&expected) {
                    let what = found.map_or("is missing".to_string(), |s| format!("has shape {s:?}"));
                    cx.diags.push(
                        Diagnostic::new(
                            &origin,
                            format!("adapter `{written}` does not fit this stage's model: `{tensor}` {what}"),
                        )
                        .label(format!("{target} of this model wants it at {expected:?}")),
                    );
                    return;
                }
            }
        }
    }
}

/// The adapter folder `written` says about itself, or a diagnostic at `from`.
fn read_adapter(
    cx: &mut Cx,
    f: &Fields,
    written: &str,
    base_dir: &Path,
    checkpoints: &dyn CheckpointReader,
) -> Option<(PathBuf, AdapterInfo)> {
    let path = crate::hub::locate(base_dir, written);
    let origin: Origin = cx.origins.get(&f.child_path("from")).cloned().unwrap_or_default();
    match checkpoints.adapter(&path) {
        Ok(info) => {
            for t in info.targets.iter().filter(|t| !PEFT_MODULES.contains(&t.as_str())) {
                cx.diags.push(
                    Diagnostic::new(
                        &origin,
                        format!("adapter `{written}` adapts `{t}`, no module of the llama architecture"),
                    )
                    .label(format!("its target_modules must be among: {}", PEFT_MODULES.join(", "))),
                );
            }
            Some((path, info))
        }
        Err(why) => {
            let d = Diagnostic::new(&origin, format!("cannot start from adapter `{written}`: {why}"))
                .label("expected a folder with adapter_config.json and adapter_model.safetensors, as peft saves them");
            cx.diags.push(crate::hub::explain_missing(d, written, &path));
            None
        }
    }
}

/// `targets` as written, each checked against the modules PEFT can adapt, in layer order.
fn checked_targets(cx: &mut Cx, f: &Fields, list: Vec<(String, Origin)>) -> Vec<String> {
    for (t, origin) in &list {
        if !PEFT_MODULES.contains(&t.as_str()) {
            let mut d = Diagnostic::new(origin, format!("`{t}` names no module of the llama architecture"))
                .label(format!("expected one of: {}", PEFT_MODULES.join(", ")));
            if let Some(h) = suggestion(t, PEFT_MODULES.iter().copied()) {
                d = d.help(h);
            }
            cx.diags.push(d);
        }
    }
    if list.is_empty() {
        cx.diags.push(
            Diagnostic::new(&f.origin, format!("`{}.targets` is empty", f.path)).label("expected modules to adapt"),
        );
    }
    in_layer_order(list.into_iter().map(|(t, _)| t).collect())
}

/// Module names sorted as they come in a block, without repeats.
fn in_layer_order(mut names: Vec<String>) -> Vec<String> {
    names.sort_by_key(|t| PEFT_MODULES.iter().position(|m| m == t));
    names.dedup();
    names
}
