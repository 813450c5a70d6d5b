//! A distillation stage's `distill` table: the divergence, temperature and mixing weight.

use serde::Serialize;

use crate::decode::{self, Cx, Fields, check_range};
use crate::tree::Node;
use crate::vocab::DistillLoss;

#[derive(Clone, Debug, Serialize)]
pub struct Distill {
    /// Default `forward-kl`.
    pub loss: DistillLoss,
    /// Default 1.0; the KD term is scaled by T².
    pub temperature: f64,
    /// Default 0.5: loss = alpha · KD + (1 − alpha) · CE.
    pub alpha: f64,
}

const DISTILL_KEYS: &[&str] = &["loss", "temperature", "alpha"];

impl Distill {
    /// What a distillation stage gets when it has no `distill` table.
    pub(crate) const DEFAULT: Distill = Distill { loss: DistillLoss::ForwardKl, temperature: 1.0, alpha: 0.5 };

    pub(crate) fn decode(cx: &mut Cx, node: &Node, path: &str) -> Distill {
        let f = Fields::of(cx, node, path, DISTILL_KEYS);
        f.check_unknown(cx);
        let loss = f.word::<DistillLoss>(cx, "loss").unwrap_or(DistillLoss::ForwardKl);
        let temperature = f.opt(cx, "temperature", decode::float).unwrap_or(1.0);
        check_range(cx, &f.child_path("temperature"), temperature, temperature > 0.0, "a temperature > 0");
        let alpha = f.opt(cx, "alpha", decode::float).unwrap_or(0.5);
        check_range(cx, &f.child_path("alpha"), alpha, (0.0..=1.0).contains(&alpha), "a weight in [0, 1]");
        Distill { loss, temperature, alpha }
    }
}
