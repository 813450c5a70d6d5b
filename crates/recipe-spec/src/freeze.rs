//! A stage's `freeze` list: weights that keep their starting values, as in layer-wise selective
//! training (Spectrum and the like). A pattern names weights by their Hugging Face name without
//! `model.` and `.weight`, a prefix of dot-separated parts: `embed_tokens`, `lm_head`, `norm`,
//! `layers.3`, `layers.0-5` (a range of layers, both ends included), `layers.*.self_attn`,
//! `layers.0-5.mlp.up_proj`. Frozen weights take no gradient and no optimizer state.

use serde::Serialize;

use crate::decode::{self, Cx, Fields};
use crate::diag::{Diagnostic, Origin, suggestion};
use crate::model::Model;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Freeze {
    /// As written, sorted and without repeats.
    pub patterns: Vec<String>,
}

impl Freeze {
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether the weight with Hugging Face name `name` is frozen.
    pub fn freezes(&self, name: &str) -> bool {
        let short = short_name(name);
        self.patterns.iter().any(|p| matches(p, short))
    }

    /// The deepest layer a pattern names (`layers.3`, the upper end of `layers.0-5`), for
    /// shrinking a model without making a pattern name nothing.
    pub fn deepest_layer(&self) -> Option<u32> {
        self.patterns
            .iter()
            .filter_map(|p| {
                let part = p.strip_prefix("layers.")?.split('.').next()?;
                range(part).map(|(_, hi)| hi).or_else(|| part.parse().ok())
            })
            .max()
    }
}

/// `model.layers.3.mlp.up_proj.weight` → `layers.3.mlp.up_proj`; a projection's bias goes
/// with its weight.
fn short_name(name: &str) -> &str {
    let name = name.strip_prefix("model.").unwrap_or(name);
    name.strip_suffix(".weight").or_else(|| name.strip_suffix(".bias")).unwrap_or(name)
}

/// Whether `pattern`'s parts match the first parts of `name`: equal, `*`, or a range `A-B`
/// holding the part's number.
fn matches(pattern: &str, name: &str) -> bool {
    let mut parts = name.split('.');
    pattern.split('.').all(|want| {
        let Some(part) = parts.next() else { return false };
        match (want, range(want), part.parse::<u32>()) {
            ("*", _, _) => true,
            (_, Some((lo, hi)), Ok(n)) => (lo..=hi).contains(&n),
            _ => want == part,
        }
    })
}

fn range(part: &str) -> Option<(u32, u32)> {
    let (lo, hi) = part.split_once('-')?;
    Some((lo.parse().ok()?, hi.parse().ok()?))
}

/// Read `freeze` for a stage training `model`: each pattern must be well formed and freeze at
/// least one weight, and something must be left to train.
pub(crate) fn decode_freeze(cx: &mut Cx, stage: &Fields, model: &Model, has_peft: bool) -> Freeze {
    let Some(list) = stage.opt(cx, "freeze", decode::strings) else { return Freeze::default() };
    let path = stage.child_path("freeze");
    let origin = cx.origins.get(&path).cloned().unwrap_or_else(|| stage.origin.clone());
    if has_peft {
        cx.diags.push(
            Diagnostic::new(&origin, "`freeze` does not combine with `peft`")
                .label("PEFT already freezes every base weight and trains only its adapters")
                .help("remove `freeze`, or `peft` to train the unfrozen weights themselves"),
        );
        return Freeze::default();
    }
    let names: Vec<String> = model.layout().into_iter().map(|(n, _, _)| short_name(&n).to_string()).collect();
    let mut patterns = Vec::new();
    for (pattern, origin) in list {
        if check_pattern(cx, &pattern, &origin, &names, model) {
            patterns.push(pattern);
        }
    }
    patterns.sort();
    patterns.dedup();
    let freeze = Freeze { patterns };
    if !freeze.is_empty() && names.iter().all(|n| freeze.patterns.iter().any(|p| matches(p, n))) {
        cx.diags.push(
            Diagnostic::new(&origin, "`freeze` freezes every weight: nothing is left to train")
                .label("list only the weights to keep as they are"),
        );
    }
    freeze
}

fn check_pattern(cx: &mut Cx, pattern: &str, origin: &Origin, names: &[String], model: &Model) -> bool {
    let last = model.n_layers.saturating_sub(1);
    let roots: Vec<String> = {
        let mut r: Vec<String> = names.iter().map(|n| n.split('.').next().unwrap_or("").to_string()).collect();
        r.dedup();
        r
    };
    let malformed = pattern.split('.').any(|p| {
        p.is_empty() || (p.contains('-') && range(p).is_none_or(|(lo, hi)| lo > hi || p.parse::<u32>().is_ok()))
    });
    if malformed {
        cx.diags.push(Diagnostic::new(origin, format!("`{pattern}` is not a weight pattern")).label(format!(
            "expected dot-separated parts, such as `embed_tokens`, `layers.0-{last}` or `layers.*.mlp`"
        )));
        return false;
    }
    if names.iter().any(|n| matches(pattern, n)) {
        return true;
    }
    let first = pattern.split('.').next().unwrap_or("");
    let mut d = Diagnostic::new(origin, format!("`{pattern}` freezes no weight of this stage's model")).label(format!(
        "its weights: {}, layers.0-{last}.{{input_layernorm,self_attn,post_attention_layernorm,mlp}}",
        roots.iter().filter(|r| *r != "layers").cloned().collect::<Vec<_>>().join(", ")
    ));
    if let Some(h) = suggestion(first, roots.iter().map(String::as_str)).filter(|_| !roots.iter().any(|r| r == first)) {
        d = d.help(h);
    } else if first == "layers" {
        d = d.help(format!("the model has layers 0 to {last}"));
    }
    cx.diags.push(d);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_prefixes_of_parts_with_ranges_and_wildcards() {
        let f = |p: &str| Freeze { patterns: vec![p.into()] };
        let up = "model.layers.3.mlp.up_proj.weight";
        assert!(f("layers.3").freezes(up));
        assert!(f("layers.0-5").freezes(up));
        assert!(f("layers.*.mlp").freezes(up));
        assert!(f("layers.3-3.mlp.up_proj").freezes(up));
        assert!(!f("layers.4-5").freezes(up));
        assert!(!f("layers.3.self_attn").freezes(up));
        assert!(!f("layers.3.mlp.up_proj.x").freezes(up));
        assert!(f("embed_tokens").freezes("model.embed_tokens.weight"));
        assert!(f("norm").freezes("model.norm.weight"));
        assert!(!f("norm").freezes("model.layers.0.input_layernorm.weight"));
        assert!(f("lm_head").freezes("lm_head.weight"));
        let deep = Freeze { patterns: vec!["embed_tokens".into(), "layers.0-5.mlp".into(), "layers.7".into()] };
        assert_eq!((deep.deepest_layer(), f("layers.*").deepest_layer()), (Some(7), None));
    }
}
