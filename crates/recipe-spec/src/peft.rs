//! A stage's `peft` table: LoRA, DoRA, VeRA or Tied-LoRA adapters over frozen base weights.

use serde::Serialize;

use crate::decode::{self, Cx, Fields, check_range};
use crate::diag::{Diagnostic, suggestion};
use crate::tree::Node;
use crate::vocab::PeftMethod;

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
    /// Default 0.
    pub dropout: f64,
    /// Default ["q_proj", "v_proj"].
    pub targets: Vec<String>,
    /// Default none. LoRA only: restart the adapters every so many steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relora: Option<ReLora>,
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

const PEFT_KEYS: &[&str] = &["method", "rank", "alpha", "dropout", "targets", "relora"];
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
    pub(crate) fn decode(cx: &mut Cx, node: &Node, path: &str) -> Peft {
        let f = Fields::of(cx, node, path, PEFT_KEYS);
        f.check_unknown(cx);
        let method = f.word::<PeftMethod>(cx, "method").unwrap_or(PeftMethod::Lora);
        let rank = f.opt(cx, "rank", decode::size(1, 1 << 16)).unwrap_or(8);
        let alpha = f.opt(cx, "alpha", decode::float).unwrap_or(16.0);
        check_range(cx, &f.child_path("alpha"), alpha, alpha > 0.0, "a number > 0");
        let vera = method == PeftMethod::Vera;
        decode::only_for(cx, &f, "alpha", f.get("alpha").is_some(), !vera, "`method` lora, dora or tied-lora");
        let dropout = f.opt(cx, "dropout", decode::float).unwrap_or(0.0);
        check_range(cx, &f.child_path("dropout"), dropout, (0.0..1.0).contains(&dropout), "a probability in [0, 1)");
        let targets = match f.opt(cx, "targets", decode::strings) {
            Some(list) => {
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
                        Diagnostic::new(&f.origin, format!("`{path}.targets` is empty"))
                            .label("expected modules to adapt"),
                    );
                }
                let mut names: Vec<String> = list.into_iter().map(|(t, _)| t).collect();
                names.sort_by_key(|t| PEFT_MODULES.iter().position(|m| m == t));
                names.dedup();
                names
            }
            None => vec!["q_proj".into(), "v_proj".into()],
        };
        let relora = f.get("relora").and_then(|node| ReLora::decode(cx, node, &f.child_path("relora")));
        decode::only_for(cx, &f, "relora", relora.is_some(), method == PeftMethod::Lora, "`method = \"lora\"`");
        Peft { method, rank, alpha, dropout, targets, relora }
    }
}
