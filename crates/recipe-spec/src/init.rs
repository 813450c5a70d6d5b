//! A stage's `init` table: starting weights made from another stage's result rather than taken
//! as they are. `stack` grows a model by depthwise stacking ("Stacking Your Transformers",
//! G_stack): the finished stage's blocks repeated `factor` times in order (layers 0..n, then
//! 0..n again), its embedding, final norm and head carried over.

use serde::Serialize;

use crate::decode::{self, Cx, Fields, check_range};
use crate::tree::Node;
use crate::vocab::InitKind;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Init {
    /// Required; only `stack`.
    pub kind: InitKind,
    /// Required: the finished stage whose weights are grown.
    pub from: String,
    /// Default 2: how many times its blocks are repeated.
    pub factor: u32,
}

const INIT_KEYS: &[&str] = &["kind", "from", "factor"];

impl Init {
    pub(crate) fn decode(cx: &mut Cx, node: &Node, path: &str) -> Option<Init> {
        let f = Fields::of(cx, node, path, INIT_KEYS);
        f.check_unknown(cx);
        let kind = f.required(cx, "kind", "\"stack\"", decode::choice(InitKind::WORDS)).and_then(InitKind::from_word);
        let from = f.required(cx, "from", "\"STAGE\"", decode::string);
        let factor = f.opt(cx, "factor", decode::size(1, 64)).unwrap_or(2);
        check_range(cx, &f.child_path("factor"), factor as f64, factor >= 2, "a factor of at least 2");
        Some(Init { kind: kind?, from: from?, factor })
    }

    /// Which layer of `from`'s model each layer of the grown one starts as.
    pub fn layer_map(&self, grown_layers: u32) -> Vec<u32> {
        let source = grown_layers / self.factor;
        (0..grown_layers).map(|i| i % source.max(1)).collect()
    }
}
