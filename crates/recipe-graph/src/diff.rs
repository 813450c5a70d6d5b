//! Semantic diff: which fields of the effective recipe changed, and which nodes each change
//! invalidates, following the graph.

use std::collections::{BTreeMap, BTreeSet};

use recipe_spec::flatten;
use serde::Serialize;
use serde_json::Value;

use crate::graph::{Graph, Node};

/// One field of the effective recipe that differs; `old` or `new` is null when absent.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    pub path: String,
    pub old: Value,
    pub new: Value,
}

/// Whether a node's key changes, and the recipe paths (or `file:PATH` for input files) that
/// cause it, including those inherited from upstream nodes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeChange {
    pub name: String,
    pub invalidated: bool,
    pub because: Vec<String>,
    /// Upstream nodes whose own change reaches this one.
    pub upstream: Vec<String>,
    /// True when the node did not exist before.
    pub new: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diff {
    pub changes: Vec<Change>,
    /// Every node of the new graph, in graph order.
    pub stages: Vec<NodeChange>,
}

/// Field-level changes between two canonical recipes.
pub fn field_changes(old: &Value, new: &Value) -> Vec<Change> {
    let (old, new) = (flatten(old), flatten(new));
    let paths: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    paths
        .into_iter()
        .filter_map(|p| {
            let (o, n) = (old.get(p).cloned().unwrap_or(Value::Null), new.get(p).cloned().unwrap_or(Value::Null));
            (o != n).then(|| Change { path: p.clone(), old: o, new: n })
        })
        .collect()
}

/// Compare two snapshots (a canonical recipe and its graph).
pub fn diff(old_recipe: &Value, old: &Graph, new_recipe: &Value, new: &Graph) -> Diff {
    let mut by_name: BTreeMap<String, NodeChange> = BTreeMap::new();
    let mut stages = Vec::new();
    for node in &new.nodes {
        let change = match old.node(&node.name) {
            None => NodeChange {
                name: node.name.clone(),
                invalidated: true,
                because: Vec::new(),
                upstream: Vec::new(),
                new: true,
            },
            Some(before) if before.key == node.key => NodeChange {
                name: node.name.clone(),
                invalidated: false,
                because: Vec::new(),
                upstream: Vec::new(),
                new: false,
            },
            Some(before) => {
                let (because, upstream) = causes(before, node, &by_name);
                NodeChange { name: node.name.clone(), invalidated: true, because, upstream, new: false }
            }
        };
        by_name.insert(node.name.clone(), change.clone());
        stages.push(change);
    }
    Diff { changes: field_changes(old_recipe, new_recipe), stages }
}

fn causes(old: &Node, new: &Node, done: &BTreeMap<String, NodeChange>) -> (Vec<String>, Vec<String>) {
    let mut because = BTreeSet::new();
    let (om, nm) = (&old.material, &new.material);
    for name in om.fields.keys().chain(nm.fields.keys()) {
        let (o, n) = (om.fields.get(name), nm.fields.get(name));
        if o.map(|f| &f.value) != n.map(|f| &f.value) {
            because.insert(n.or(o).expect("one side has it").path.clone());
        }
    }
    for file in om.files.keys().chain(nm.files.keys()) {
        if om.files.get(file) != nm.files.get(file) {
            because.insert(format!("file:{file}"));
        }
    }
    let mut upstream = BTreeSet::new();
    for (input, key) in &nm.inputs {
        if om.inputs.get(input) == Some(key) {
            continue;
        }
        if let Some(up) = done.get(input).filter(|c| c.invalidated) {
            upstream.insert(input.clone());
            upstream.extend(up.upstream.iter().cloned());
            because.extend(up.because.iter().cloned());
        }
    }
    (because.into_iter().collect(), upstream.into_iter().collect())
}
