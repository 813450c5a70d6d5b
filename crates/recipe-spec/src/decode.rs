//! Typed reads from the origin-carrying tree. Every failed read records a diagnostic and lets
//! decoding go on, so one run reports every error in the file.

use std::collections::BTreeMap;

use crate::diag::{Diagnostic, Origin, suggestion};
use crate::tree::{Node, Table, Val};
use crate::vocab::Word;

/// Decoding context: the diagnostics so far, and where each field's value came from (by its
/// dotted path), so that later cross-field checks can point at the right place.
#[derive(Default)]
pub struct Cx {
    pub diags: Vec<Diagnostic>,
    pub origins: BTreeMap<String, Origin>,
}

/// A table being read: its path for messages, and the keys the schema allows there.
pub struct Fields<'a> {
    pub table: &'a Table,
    pub path: String,
    pub origin: Origin,
    known: &'static [&'static str],
}

impl<'a> Fields<'a> {
    /// Start reading `node` as a table; on a type error, report it and read an empty table.
    pub fn of(cx: &mut Cx, node: &'a Node, path: &str, known: &'static [&'static str]) -> Fields<'a> {
        static EMPTY: Table = Table { entries: Vec::new() };
        let table = match &node.val {
            Val::Table(t) => t,
            other => {
                cx.diags.push(
                    Diagnostic::new(&node.origin, format!("`{path}` must be a table, found {}", other.type_name()))
                        .label(format!("expected a table with keys: {}", known.join(", "))),
                );
                &EMPTY
            }
        };
        cx.origins.insert(path.to_string(), node.origin.clone());
        Fields { table, path: path.to_string(), origin: node.origin.clone(), known }
    }

    /// Report every key that the schema does not allow, with a suggestion.
    pub fn check_unknown(&self, cx: &mut Cx) {
        for e in &self.table.entries {
            if self.known.contains(&e.key.as_str()) {
                continue;
            }
            let where_ =
                if self.path.is_empty() { "at the top level".to_string() } else { format!("in `{}`", self.path) };
            let mut d = Diagnostic::new(&e.key_origin, format!("unknown key `{}` {where_}", e.key))
                .label(format!("expected one of: {}", self.known.join(", ")));
            if let Some(h) = suggestion(&e.key, self.known.iter().copied()) {
                d = d.help(h);
            }
            cx.diags.push(d);
        }
    }

    /// The keys written in the table that the schema allows, in the order written.
    pub fn written(&self) -> impl Iterator<Item = (&'a str, &'a Node)> + '_ {
        self.table.entries.iter().filter(|e| self.known.contains(&e.key.as_str())).map(|e| (e.key.as_str(), &e.node))
    }

    pub fn get(&self, key: &str) -> Option<&'a Node> {
        debug_assert!(self.known.contains(&key), "{key} not in schema of {}", self.path);
        self.table.get(key)
    }

    pub fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_string() } else { format!("{}.{key}", self.path) }
    }

    /// Read an optional field with `read`; record its origin when present.
    pub fn opt<T>(&self, cx: &mut Cx, key: &str, read: impl FnOnce(&mut Cx, &Node, &str) -> Option<T>) -> Option<T> {
        let node = self.get(key)?;
        let path = self.child_path(key);
        cx.origins.insert(path.clone(), node.origin.clone());
        read(cx, node, &path)
    }

    /// Read a field that must be present.
    pub fn required<T>(
        &self,
        cx: &mut Cx,
        key: &str,
        expected: &str,
        read: impl FnOnce(&mut Cx, &Node, &str) -> Option<T>,
    ) -> Option<T> {
        if self.get(key).is_none() {
            cx.diags.push(
                Diagnostic::new(&self.origin, format!("missing key `{key}` in `{}`", self.path))
                    .label(format!("add `{key} = {expected}`")),
            );
            return None;
        }
        self.opt(cx, key, read)
    }
}

fn type_error(cx: &mut Cx, node: &Node, path: &str, expected: &str) {
    cx.diags.push(
        Diagnostic::new(&node.origin, format!("wrong type for `{path}`: found {}", node.val.type_name()))
            .label(format!("expected {expected}")),
    );
}

pub fn string(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    match &node.val {
        Val::Str(s) => Some(s.clone()),
        _ => {
            type_error(cx, node, path, "a string");
            None
        }
    }
}

pub fn boolean(cx: &mut Cx, node: &Node, path: &str) -> Option<bool> {
    match node.val {
        Val::Bool(b) => Some(b),
        _ => {
            type_error(cx, node, path, "true or false");
            None
        }
    }
}

/// A float; integers are accepted (`lr = 1` is 1.0). NaN and infinities are rejected.
pub fn float(cx: &mut Cx, node: &Node, path: &str) -> Option<f64> {
    let v = match node.val {
        Val::Float(f) => f,
        Val::Int(i) => i as f64,
        _ => {
            type_error(cx, node, path, "a number");
            return None;
        }
    };
    if !v.is_finite() {
        cx.diags
            .push(Diagnostic::new(&node.origin, format!("`{path}` must be a finite number")).label("found nan or inf"));
        return None;
    }
    Some(v)
}

/// The largest step count or interval accepted (a trillion steps).
pub const MAX_STEPS: u64 = 1_000_000_000_000;

/// A non-negative integer up to [`MAX_STEPS`]; floats with no fraction are not accepted, to keep
/// step counts and sizes exact.
pub fn count(cx: &mut Cx, node: &Node, path: &str) -> Option<u64> {
    match node.val {
        Val::Int(i) if i >= 0 && i as u64 <= MAX_STEPS => Some(i as u64),
        Val::Int(i) if i >= 0 => {
            cx.diags.push(
                Diagnostic::new(&node.origin, format!("`{path}` is out of range"))
                    .label(format!("expected an integer ≤ {MAX_STEPS}, found {i}")),
            );
            None
        }
        Val::Int(i) => {
            cx.diags.push(
                Diagnostic::new(&node.origin, format!("`{path}` must not be negative")).label(format!("found {i}")),
            );
            None
        }
        _ => {
            type_error(cx, node, path, "a non-negative integer");
            None
        }
    }
}

/// A `count` in `min..=max`. Sizes are bounded so that every product the planner forms from
/// them (parameters, tokens, bytes) fits in 64 bits.
pub fn size(min: u32, max: u32) -> impl FnOnce(&mut Cx, &Node, &str) -> Option<u32> {
    move |cx, node, path| {
        let v = count(cx, node, path)?;
        if v < min as u64 || v > max as u64 {
            let expected =
                if v < min as u64 { format!("an integer ≥ {min}") } else { format!("an integer ≤ {max}") };
            cx.diags.push(
                Diagnostic::new(&node.origin, format!("`{path}` is out of range"))
                    .label(format!("expected {expected}, found {v}")),
            );
            return None;
        }
        Some(v as u32)
    }
}

/// One of a fixed set of words, with a suggestion for a near miss.
pub fn choice(choices: &'static [&'static str]) -> impl FnOnce(&mut Cx, &Node, &str) -> Option<&'static str> {
    move |cx, node, path| {
        let s = string(cx, node, path)?;
        if let Some(c) = choices.iter().find(|c| **c == s) {
            return Some(c);
        }
        let mut d = Diagnostic::new(&node.origin, format!("unknown value `{s}` for `{path}`"))
            .label(format!("expected one of: {}", choices.join(", ")));
        if let Some(h) = suggestion(&s, choices.iter().copied()) {
            d = d.help(h);
        }
        cx.diags.push(d);
        None
    }
}

/// A string or an array of strings, with the origin of each.
pub fn strings(cx: &mut Cx, node: &Node, path: &str) -> Option<Vec<(String, Origin)>> {
    match &node.val {
        Val::Str(s) => Some(vec![(s.clone(), node.origin.clone())]),
        Val::Array(items) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                out.push((string(cx, item, &format!("{path}[{i}]"))?, item.origin.clone()));
            }
            Some(out)
        }
        _ => {
            type_error(cx, node, path, "a string or an array of strings");
            None
        }
    }
}

pub fn floats(cx: &mut Cx, node: &Node, path: &str) -> Option<Vec<f64>> {
    match &node.val {
        Val::Array(items) => {
            items.iter().enumerate().map(|(i, item)| float(cx, item, &format!("{path}[{i}]"))).collect()
        }
        _ => {
            type_error(cx, node, path, "an array of numbers");
            None
        }
    }
}

/// Check a float against a range; `what` describes the range in the message.
pub fn check_range(cx: &mut Cx, path: &str, value: f64, ok: bool, what: &str) {
    if !ok {
        let origin = cx.origins.get(path).cloned().unwrap_or_default();
        cx.diags.push(
            Diagnostic::new(&origin, format!("`{path}` is out of range"))
                .label(format!("expected {what}, found {value}")),
        );
    }
}

impl Fields<'_> {
    /// An optional field spelled as one of `W`'s words.
    pub fn word<W: Word>(&self, cx: &mut Cx, key: &str) -> Option<W> {
        self.opt(cx, key, choice(W::WORDS)).and_then(W::from_word)
    }
}

/// Report a field given where it has no meaning, instead of silently ignoring it.
pub fn only_for(cx: &mut Cx, f: &Fields, key: &str, given: bool, applies: bool, condition: &str) {
    if given && !applies {
        let origin = cx.origins.get(&f.child_path(key)).cloned().unwrap_or_default();
        cx.diags.push(
            Diagnostic::new(&origin, format!("`{}` only applies with {condition}", f.child_path(key)))
                .label("remove it, or change the kind it depends on"),
        );
    }
}
