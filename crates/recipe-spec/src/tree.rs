//! An owned TOML tree in which every key and value remembers where it came from, so that
//! `--set` overrides can be merged in and still be blamed precisely.

use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostic, Origin};

#[derive(Clone, Debug)]
pub struct Node {
    pub val: Val,
    pub origin: Origin,
}

#[derive(Clone, Debug)]
pub enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Node>),
    Table(Table),
}

#[derive(Clone, Debug, Default)]
pub struct Table {
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub key: String,
    pub key_origin: Origin,
    pub node: Node,
}

impl Table {
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries.iter().find(|e| e.key == key).map(|e| &e.node)
    }
    fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.entries.iter_mut().find(|e| e.key == key).map(|e| &mut e.node)
    }
}

impl Val {
    /// The TOML type name, as used in "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Val::Str(_) => "a string",
            Val::Int(_) => "an integer",
            Val::Float(_) => "a float",
            Val::Bool(_) => "a boolean",
            Val::Datetime(_) => "a datetime",
            Val::Array(_) => "an array",
            Val::Table(_) => "a table",
        }
    }
}

/// Parse a TOML document, reporting every syntax error the parser can recover from.
pub fn parse_document(text: &str) -> (Table, Vec<Diagnostic>) {
    let (doc, errors) = DeTable::parse_recoverable(text);
    let mut diags: Vec<Diagnostic> = errors
        .iter()
        .map(|e| {
            let origin = Origin::File(e.span().unwrap_or(0..0));
            Diagnostic::new(&origin, format!("invalid TOML: {}", e.message().trim_end()))
        })
        .collect();
    let table = convert_table(doc.get_ref(), &|r| Origin::File(r), &mut diags);
    (table, diags)
}

fn convert_table(
    table: &DeTable<'_>,
    origin_of: &dyn Fn(std::ops::Range<usize>) -> Origin,
    diags: &mut Vec<Diagnostic>,
) -> Table {
    let entries = table
        .iter()
        .map(|(k, v)| Entry {
            key: k.get_ref().to_string(),
            key_origin: origin_of(k.span()),
            node: convert_value(v.get_ref(), origin_of(v.span()), origin_of, diags),
        })
        .collect();
    Table { entries }
}

fn convert_value(
    value: &DeValue<'_>,
    origin: Origin,
    origin_of: &dyn Fn(std::ops::Range<usize>) -> Origin,
    diags: &mut Vec<Diagnostic>,
) -> Node {
    let val = match value {
        DeValue::String(s) => Val::Str(s.to_string()),
        DeValue::Integer(i) => {
            let digits = i.as_str().replace('_', "");
            let (negative, digits) = match digits.strip_prefix('-') {
                Some(rest) => (true, rest.to_string()),
                None => (false, digits.trim_start_matches('+').to_string()),
            };
            let digits = digits.trim_start_matches("0x").trim_start_matches("0o").trim_start_matches("0b");
            match i64::from_str_radix(digits, i.radix()) {
                Ok(n) => Val::Int(if negative { -n } else { n }),
                Err(_) => {
                    diags.push(Diagnostic::new(&origin, "integer out of range").label("expected a 64-bit integer"));
                    Val::Int(0)
                }
            }
        }
        DeValue::Float(f) => Val::Float(f.as_str().replace('_', "").parse::<f64>().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => Val::Bool(*b),
        DeValue::Datetime(d) => Val::Datetime(d.to_string()),
        DeValue::Array(items) => Val::Array(
            items.iter().map(|item| convert_value(item.get_ref(), origin_of(item.span()), origin_of, diags)).collect(),
        ),
        DeValue::Table(t) => Val::Table(convert_table(t, origin_of, diags)),
    };
    Node { val, origin }
}

/// Merge one `--set dotted.path=value` argument into the document. The value is read as a TOML
/// value (`3e-4`, `true`, `["a","b"]`, `{ rank = 4 }`), or as a plain string when it is not one.
pub fn apply_set(root: &mut Table, index: usize, arg: &str) -> Result<(), Diagnostic> {
    let whole = Origin::Set { index, range: 0..arg.len() };
    let Some(eq) = arg.find('=') else {
        return Err(Diagnostic::new(&whole, format!("`--set {arg}` has no `=`"))
            .label("expected dotted.path=value")
            .help("for example `--set stages.pretrain.steps=500`"));
    };
    let path_text = &arg[..eq];
    let value_text = &arg[eq + 1..];
    let value_origin = Origin::Set { index, range: eq + 1..arg.len() };
    let mut segments = Vec::new();
    let mut offset = 0;
    for seg in path_text.split('.') {
        let trimmed = seg.trim();
        if trimmed.is_empty() {
            return Err(Diagnostic::new(&Origin::Set { index, range: 0..eq }, "empty segment in `--set` path")
                .label("expected dotted.path=value"));
        }
        segments.push((trimmed.to_string(), Origin::Set { index, range: offset..offset + seg.len() }));
        offset += seg.len() + 1;
    }
    let node = match DeValue::parse(value_text) {
        Ok(v) => {
            let shift = eq + 1;
            let origin_of =
                move |r: std::ops::Range<usize>| Origin::Set { index, range: r.start + shift..r.end + shift };
            let mut diags = Vec::new();
            let node = convert_value(v.get_ref(), value_origin.clone(), &origin_of, &mut diags);
            if let Some(d) = diags.into_iter().next() {
                return Err(d);
            }
            node
        }
        Err(_) => Node { val: Val::Str(value_text.to_string()), origin: value_origin },
    };
    let (last, parents) = segments.split_last().expect("split on '.' yields at least one segment");
    let mut table = root;
    let mut walked = String::new();
    for (seg, seg_origin) in parents {
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(seg);
        if table.get(seg).is_none() {
            table.entries.push(Entry {
                key: seg.clone(),
                key_origin: seg_origin.clone(),
                node: Node { val: Val::Table(Table::default()), origin: seg_origin.clone() },
            });
        }
        let child = table.get_mut(seg).expect("inserted above");
        match &mut child.val {
            Val::Table(t) => table = t,
            other => {
                return Err(Diagnostic::new(seg_origin, format!("`{walked}` is {}, not a table", other.type_name()))
                    .label("cannot set a field inside it"));
            }
        }
    }
    let (key, key_origin) = last;
    match table.get_mut(key) {
        Some(existing) => *existing = node,
        None => table.entries.push(Entry { key: key.clone(), key_origin: key_origin.clone(), node }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_creates_tables_and_reads_toml_values() {
        let (mut doc, errs) = parse_document("[stages.a]\nsteps = 5\n");
        assert!(errs.is_empty());
        apply_set(&mut doc, 0, "stages.a.steps=7").unwrap();
        apply_set(&mut doc, 1, "stages.a.peft.rank=4").unwrap();
        apply_set(&mut doc, 2, "stages.a.after=pre").unwrap();
        let Val::Table(stages) = &doc.get("stages").unwrap().val else { panic!() };
        let Val::Table(a) = &stages.get("a").unwrap().val else { panic!() };
        assert!(matches!(a.get("steps").unwrap().val, Val::Int(7)));
        assert!(matches!(&a.get("after").unwrap().val, Val::Str(s) if s == "pre"));
        let Val::Table(peft) = &a.get("peft").unwrap().val else { panic!() };
        assert!(matches!(peft.get("rank").unwrap().val, Val::Int(4)));
        assert_eq!(a.get("steps").unwrap().origin, Origin::Set { index: 0, range: 15..16 });
    }

    #[test]
    fn set_into_a_scalar_is_an_error() {
        let (mut doc, _) = parse_document("[stages.a]\nsteps = 5\n");
        let err = apply_set(&mut doc, 0, "stages.a.steps.x=1").unwrap_err();
        assert!(err.message.contains("not a table"), "{}", err.message);
        assert!(apply_set(&mut doc, 0, "novalue").is_err());
    }
}
