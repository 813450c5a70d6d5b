//! A stage's `peft` table: LoRA or DoRA adapters over frozen base weights.

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
    /// Default 16: the update is scaled by alpha / rank.
    pub alpha: f64,
    /// Default 0.
    pub dropout: f64,
    /// Default ["q_proj", "v_proj"].
    pub targets: Vec<String>,
}

const PEFT_KEYS: &[&str] = &["method", "rank", "alpha", "dropout", "targets"];

impl Peft {
    pub(crate) fn decode(cx: &mut Cx, node: &Node, path: &str) -> Peft {
        let f = Fields::of(cx, node, path, PEFT_KEYS);
        f.check_unknown(cx);
        let method = f.word::<PeftMethod>(cx, "method").unwrap_or(PeftMethod::Lora);
        let rank = f.opt(cx, "rank", decode::size(1, 1 << 16)).unwrap_or(8);
        let alpha = f.opt(cx, "alpha", decode::float).unwrap_or(16.0);
        check_range(cx, &f.child_path("alpha"), alpha, alpha > 0.0, "a number > 0");
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
        Peft { method, rank, alpha, dropout, targets }
    }
}
