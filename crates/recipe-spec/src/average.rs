//! A stage's `average` table: weights averaged while training, evaluated beside the raw ones,
//! and either of them the stage's result. `ema` keeps an exponential moving average updated
//! every step; `lawa` ("Early Weight Averaging meets High Learning Rates for LLM
//! Pre-training") averages the latest `window` snapshots taken every `every` steps.

use serde::Serialize;

use crate::decode::{self, Cx, Fields, check_range, only_for};
use crate::tree::Node;
use crate::vocab::{AverageKind, AverageUse};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Average {
    /// Required: `ema` or `lawa`.
    pub kind: AverageKind,
    /// `ema` only, default 0.999: average ← decay · average + (1 − decay) · weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decay: Option<f64>,
    /// `lawa` only, default 50: steps between snapshots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
    /// `lawa` only, default 5: snapshots averaged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<u32>,
    /// Default `average`: which weights become the stage's result.
    #[serde(rename = "use")]
    pub result: AverageUse,
}

const AVERAGE_KEYS: &[&str] = &["kind", "decay", "every", "window", "use"];

impl Average {
    pub(crate) fn decode(cx: &mut Cx, node: &Node, path: &str) -> Average {
        let f = Fields::of(cx, node, path, AVERAGE_KEYS);
        f.check_unknown(cx);
        let kind = f
            .required(cx, "kind", "\"ema\"", decode::choice(AverageKind::WORDS))
            .and_then(AverageKind::from_word)
            .unwrap_or(AverageKind::Ema);
        let ema = kind == AverageKind::Ema;
        let decay = f.opt(cx, "decay", decode::float);
        if let Some(d) = decay {
            check_range(cx, &f.child_path("decay"), d, (0.0..1.0).contains(&d), "a decay in [0, 1)");
        }
        only_for(cx, &f, "decay", decay.is_some(), ema, "kind = \"ema\"");
        let every = f.opt(cx, "every", decode::count);
        if every == Some(0) {
            check_range(cx, &f.child_path("every"), 0.0, false, "at least 1 step");
        }
        only_for(cx, &f, "every", every.is_some(), !ema, "kind = \"lawa\"");
        let window = f.opt(cx, "window", decode::size(1, 1 << 10));
        only_for(cx, &f, "window", window.is_some(), !ema, "kind = \"lawa\"");
        Average {
            kind,
            decay: ema.then(|| decay.unwrap_or(0.999)),
            every: (!ema).then(|| every.unwrap_or(50)),
            window: (!ema).then(|| window.unwrap_or(5)),
            result: f.word::<AverageUse>(cx, "use").unwrap_or(AverageUse::Average),
        }
    }
}
