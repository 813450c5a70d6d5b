//! A `dpo` stage's `preference` table: how it learns from pairs of a preferred (`chosen`) and a
//! dispreferred (`rejected`) response to one prompt, against a frozen reference — the model the
//! stage starts from.

use serde::Serialize;

use crate::decode::{self, Cx, Fields, check_range};
use crate::tree::Node;
use crate::vocab::PreferenceLoss;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Preference {
    /// Default `sigmoid`: DPO's loss (Rafailov et al. 2023), `−log σ(β·h)` with `h` the
    /// policy's log-ratio of chosen over rejected less the reference's; `ipo`: IPO's
    /// (Azar et al. 2023), `(h − 1/(2β))²` with `h` over per-token mean log-probabilities.
    pub loss: PreferenceLoss,
    /// Default 0.1: how far from the reference the policy may move (the KL penalty's weight).
    pub beta: f64,
}

const PREFERENCE_KEYS: &[&str] = &["loss", "beta"];

impl Preference {
    /// What a `dpo` stage gets when it has no `preference` table.
    pub(crate) const DEFAULT: Preference = Preference { loss: PreferenceLoss::Sigmoid, beta: 0.1 };

    pub(crate) fn decode(cx: &mut Cx, node: &Node, path: &str) -> Preference {
        let f = Fields::of(cx, node, path, PREFERENCE_KEYS);
        f.check_unknown(cx);
        let loss = f.word::<PreferenceLoss>(cx, "loss").unwrap_or(PreferenceLoss::Sigmoid);
        let beta = f.opt(cx, "beta", decode::float).unwrap_or(0.1);
        check_range(cx, &f.child_path("beta"), beta, beta > 0.0, "a number > 0");
        Preference { loss, beta }
    }
}
