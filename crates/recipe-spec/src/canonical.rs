//! The canonical form of an effective recipe: defaults filled in, inheritance applied, tables
//! in a fixed order, numbers normalised. Hashing and diffing read this, never the source text,
//! so reordering tables or adding a comment changes nothing.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::recipe::Recipe;

impl Recipe {
    /// The effective recipe as one JSON document with a stable key order. `model` holds every
    /// resolved field of `[model]`; a stage's `model` holds the fields where its resolved
    /// architecture differs from that, however the recipe spelled them.
    pub fn canonical(&self) -> Value {
        let defaults =
            serde_json::to_value(self.model.resolve(Some(self.tokenizer.vocab_size()))).expect("plain struct");
        let sources: BTreeMap<&str, Value> =
            self.sources.iter().map(|s| (s.name.as_str(), serde_json::to_value(s).expect("plain struct"))).collect();
        let stages: BTreeMap<&str, Value> = self
            .stages
            .iter()
            .map(|s| {
                let mut stage = serde_json::to_value(s).expect("plain struct");
                let model = serde_json::to_value(&s.model).expect("plain struct");
                let delta: Map<String, Value> = model
                    .as_object()
                    .expect("a struct")
                    .iter()
                    .filter(|(k, v)| defaults.get(k.as_str()) != Some(v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                stage["model"] = Value::Object(delta);
                (s.name.as_str(), stage)
            })
            .collect();
        json!({
            "recipe": { "name": self.name, "seed": self.seed },
            "model": defaults,
            "tokenizer": self.tokenizer,
            "sources": sources,
            "stages": stages,
        })
    }
}

/// Every leaf of a canonical document by dotted path (arrays are leaves).
pub fn flatten(value: &Value) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, child) in map {
                    let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&path, child, out);
                }
            }
            Value::Object(_) => {}
            _ => {
                out.insert(prefix.to_string(), v.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}
