//! A `dpo` stage's `preference` table: how it learns from pairs of a preferred (`chosen`) and a
//! dispreferred (`rejected`) response to one prompt — against a frozen reference, the model the
//! stage starts from (DPO, IPO, hinge), or by the policy's own scores alone (SimPO, ORPO) — or,
//! with KTO, from single responses marked desirable or not.

use serde::Serialize;

use crate::decode::{self, Cx, Fields, check_range};
use crate::tree::Node;
use crate::vocab::PreferenceLoss;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Preference {
    /// Default `sigmoid`: DPO's loss (Rafailov et al. 2023), `−log σ(β·h)` with `h` the
    /// policy's log-ratio of chosen over rejected less the reference's; `ipo`: IPO's
    /// (Azar et al. 2023), `(h − 1/(2β))²` with `h` over per-token mean log-probabilities;
    /// `hinge`: SLiC's and RSO's (Zhao et al. 2023, Liu et al. 2024), `max(0, 1 − β·h)`;
    /// `simpo`: SimPO's (Meng et al. 2024), `−log σ(β·(ā_c − ā_r) − γ)` over the policy's mean
    /// log-probabilities `ā`, no reference; `orpo`: ORPO's (Hong et al. 2024), the chosen
    /// answers' cross-entropy less `β·log σ(log odds_c − log odds_r)`, no reference; `kto`:
    /// KTO's (Ethayarajh et al. 2024) over single responses marked desirable or not, with `r`
    /// the policy's log-ratio against the reference and `z` the batch's KL estimate:
    /// `1 − σ(β·(r − z))` for a desirable one, `1 − σ(β·(z − r))` for another.
    pub loss: PreferenceLoss,
    /// Default 0.1: DPO's and IPO's KL weight, SimPO's reward scale, ORPO's odds-ratio weight.
    pub beta: f64,
    /// `simpo` only, default 0.5: the margin SimPO asks of the chosen answer (TRL's
    /// `simpo_gamma`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f64>,
    /// `sigmoid` only, default 0: conservative DPO's (Mitchell 2023) share `ε` of pairs taken
    /// to be mislabelled, `(1 − ε)·(−log σ(β·h)) + ε·(−log σ(−β·h))` (TRL's
    /// `label_smoothing`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_smoothing: Option<f64>,
    /// `kto` only, default 1: the weight of the desirable responses' loss (TRL's
    /// `desirable_weight`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desirable_weight: Option<f64>,
    /// `kto` only, default 1: the weight of the undesirable responses' loss (TRL's
    /// `undesirable_weight`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undesirable_weight: Option<f64>,
}

const PREFERENCE_KEYS: &[&str] =
    &["loss", "beta", "gamma", "label_smoothing", "desirable_weight", "undesirable_weight"];

impl Preference {
    /// What a `dpo` stage gets when it has no `preference` table.
    pub const DEFAULT: Preference = Preference {
        loss: PreferenceLoss::Sigmoid,
        beta: 0.1,
        gamma: None,
        label_smoothing: None,
        desirable_weight: None,
        undesirable_weight: None,
    };

    /// Whether the loss compares the policy with a reference model (DPO, IPO, hinge, KTO).
    pub fn needs_reference(&self) -> bool {
        matches!(self.loss, PreferenceLoss::Sigmoid | PreferenceLoss::Ipo | PreferenceLoss::Hinge | PreferenceLoss::Kto)
    }

    pub(crate) fn decode(cx: &mut Cx, node: &Node, path: &str) -> Preference {
        let f = Fields::of(cx, node, path, PREFERENCE_KEYS);
        f.check_unknown(cx);
        let loss = f.word::<PreferenceLoss>(cx, "loss").unwrap_or(PreferenceLoss::Sigmoid);
        let beta = f.opt(cx, "beta", decode::float).unwrap_or(0.1);
        check_range(cx, &f.child_path("beta"), beta, beta > 0.0, "a number > 0");
        let simpo = loss == PreferenceLoss::Simpo;
        let gamma = f.opt(cx, "gamma", decode::float);
        decode::only_for(cx, &f, "gamma", gamma.is_some(), simpo, "loss = \"simpo\"");
        if let Some(gamma) = gamma {
            check_range(cx, &f.child_path("gamma"), gamma, gamma >= 0.0, "a margin ≥ 0");
        }
        let label_smoothing = f.opt(cx, "label_smoothing", decode::float);
        let sigmoid = loss == PreferenceLoss::Sigmoid;
        decode::only_for(cx, &f, "label_smoothing", label_smoothing.is_some(), sigmoid, "loss = \"sigmoid\"");
        if let Some(e) = label_smoothing {
            check_range(cx, &f.child_path("label_smoothing"), e, (0.0..0.5).contains(&e), "a share in [0, 0.5)");
        }
        let kto = loss == PreferenceLoss::Kto;
        let mut weight = |key: &str| {
            let w = f.opt(cx, key, decode::float);
            decode::only_for(cx, &f, key, w.is_some(), kto, "loss = \"kto\"");
            if let Some(w) = w {
                check_range(cx, &f.child_path(key), w, w > 0.0, "a weight > 0");
            }
            kto.then(|| w.unwrap_or(1.0))
        };
        let (desirable_weight, undesirable_weight) = (weight("desirable_weight"), weight("undesirable_weight"));
        Preference {
            loss,
            beta,
            gamma: simpo.then(|| gamma.unwrap_or(0.5)),
            label_smoothing,
            desirable_weight,
            undesirable_weight,
        }
    }
}
