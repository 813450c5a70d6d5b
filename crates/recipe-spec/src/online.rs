//! Online data mixing (`data.mix = { kind = "online", sources = ["a", "b"] }`, "Efficient
//! Online Data Mixing For Language Model Pre-Training", Albalak et al.): the shares of the
//! sources are not fixed in advance but chosen while training by an EXP3 bandit whose reward
//! for a source is its training loss, so sources the model still finds hard are drawn more.

use serde::Serialize;

use crate::decode::{self, Cx, Fields, check_range};
use crate::diag::Diagnostic;
use crate::source::check_source_ref;
use crate::tree::{Node, Val};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Online {
    /// Required, at least two: the sources the bandit chooses among, sorted.
    pub sources: Vec<String>,
    /// Default 0.9: α of the paper's moving average of each source's importance-weighted
    /// loss, `R ← α·R + (1 − α)·L/π`.
    pub smoothing: f64,
}

const ONLINE_KEYS: &[&str] = &["kind", "sources", "smoothing"];

/// Whether a `mix` table asks for online mixing rather than giving weights.
pub(crate) fn is_online(node: &Node) -> bool {
    matches!(&node.val, Val::Table(t) if t.entries.iter().any(|e| e.key == "kind"))
}

pub(crate) fn decode_online(cx: &mut Cx, node: &Node, path: &str, source_names: &[&str]) -> Online {
    let f = Fields::of(cx, node, path, ONLINE_KEYS);
    f.check_unknown(cx);
    f.required(cx, "kind", "\"online\"", decode::choice(&["online"]));
    let mut sources: Vec<String> = Vec::new();
    for (name, origin) in f.required(cx, "sources", "[\"a\", \"b\"]", decode::strings).unwrap_or_default() {
        check_source_ref(cx, &name, &origin, source_names);
        if sources.contains(&name) {
            cx.diags.push(Diagnostic::new(&origin, format!("source `{name}` is listed twice")).label("list it once"));
        }
        sources.push(name);
    }
    if sources.len() == 1 {
        let origin = cx.origins.get(&f.child_path("sources")).cloned().unwrap_or_default();
        cx.diags.push(
            Diagnostic::new(&origin, "online mixing chooses among sources, but only one is listed")
                .label("expected at least two sources")
                .help(format!("for one source write `mix = {{ {} = 1 }}`", sources[0])),
        );
    }
    sources.sort();
    sources.dedup();
    let smoothing = f.opt(cx, "smoothing", decode::float).unwrap_or(0.9);
    check_range(cx, &f.child_path("smoothing"), smoothing, (0.0..1.0).contains(&smoothing), "a number in [0, 1)");
    Online { sources, smoothing }
}
