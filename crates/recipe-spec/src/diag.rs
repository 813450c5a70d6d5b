//! Diagnostics that point into the recipe file (or a `--set` argument) the way a compiler does.

use std::fmt::Write as _;
use std::ops::Range;
use std::path::PathBuf;

/// Where a value came from: a byte range of the recipe file, a byte range of the N-th `--set`
/// argument, or nowhere (a default).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Origin {
    File(Range<usize>),
    Set {
        index: usize,
        range: Range<usize>,
    },
    #[default]
    Default,
}

/// One problem with a recipe: what is wrong, where, what was expected and how to fix it.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub message: String,
    pub origin: Origin,
    /// Printed under the caret: usually what was expected.
    pub label: Option<String>,
    /// A "did you mean" or other fix.
    pub help: Option<String>,
    /// A warning does not make the recipe invalid.
    pub is_warning: bool,
}

impl Diagnostic {
    pub fn new(origin: &Origin, message: impl Into<String>) -> Self {
        Diagnostic { message: message.into(), origin: origin.clone(), label: None, help: None, is_warning: false }
    }
    pub fn warning(origin: &Origin, message: impl Into<String>) -> Self {
        Diagnostic { is_warning: true, ..Diagnostic::new(origin, message) }
    }
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// The texts diagnostics point into, so they can be rendered with file, line, column and snippet.
#[derive(Clone, Debug, Default)]
pub struct SourceText {
    pub path: PathBuf,
    pub text: String,
    /// The `--set` arguments, in command-line order.
    pub sets: Vec<String>,
}

impl SourceText {
    /// 1-based line and column (in characters) of a byte offset in the recipe file.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(&self.text, offset)
    }

    /// Render one diagnostic as text; `file:line:col` in the header line is stable for tools.
    pub fn render(&self, d: &Diagnostic) -> String {
        let severity = if d.is_warning { "warning" } else { "error" };
        let mut out = format!("{severity}: {}\n", d.message);
        let (location, text, range) = match &d.origin {
            Origin::File(r) => {
                let (line, col) = self.line_col(r.start);
                (format!("{}:{line}:{col}", self.path.display()), self.text.as_str(), r.clone())
            }
            Origin::Set { index, range } => {
                let arg = self.sets.get(*index).map(String::as_str).unwrap_or("");
                (format!("--set argument {}", index + 1), arg, range.clone())
            }
            Origin::Default => (format!("{} (a default value)", self.path.display()), "", 0..0),
        };
        let _ = writeln!(out, "  --> {location}");
        if !text.is_empty() {
            let (line_no, col) = line_col(text, range.start);
            let line_start = text[..range.start.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
            let line_end = text[line_start..].find('\n').map_or(text.len(), |i| line_start + i);
            let line = text[line_start..line_end].trim_end_matches('\r');
            let gutter = if matches!(d.origin, Origin::File(_)) { line_no.to_string() } else { String::new() };
            let pad = " ".repeat(gutter.len().max(1));
            let width = text[range.start.min(line_end)..range.end.clamp(range.start, line_end)].chars().count().max(1);
            let _ = writeln!(out, "{pad} |");
            let _ = writeln!(out, "{gutter:>w$} | {line}", w = pad.len());
            let caret = format!("{}{}", " ".repeat(col - 1), "^".repeat(width));
            match &d.label {
                Some(label) => {
                    let _ = writeln!(out, "{pad} | {caret} {label}");
                }
                None => {
                    let _ = writeln!(out, "{pad} | {caret}");
                }
            }
        } else if let Some(label) = &d.label {
            let _ = writeln!(out, "   = {label}");
        }
        if let Some(help) = &d.help {
            let _ = writeln!(out, "   = help: {help}");
        }
        out
    }

    /// Render every diagnostic, then a one-line summary.
    pub fn render_all(&self, diags: &[Diagnostic]) -> String {
        let mut out = String::new();
        for d in diags {
            out.push_str(&self.render(d));
            out.push('\n');
        }
        let n = diags.len();
        let _ = writeln!(out, "error: {} has {n} error{}", self.path.display(), if n == 1 { "" } else { "s" });
        out
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

/// The closest candidate by edit distance, if it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1) || c.starts_with(word) && word.len() >= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `did_you_mean` phrased as a help line.
pub fn suggestion<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    did_you_mean(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// Names for a "defined ...:" label: the list, or "none".
pub fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() { "none".into() } else { names.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_line_column_and_caret() {
        let src = SourceText { path: "r.toml".into(), text: "[model]\nd_modl = 3\n".into(), sets: vec![] };
        let d = Diagnostic::new(&Origin::File(8..14), "unknown key `d_modl`")
            .label("not a field of [model]")
            .help("did you mean `d_model`?");
        let out = src.render(&d);
        assert_eq!(
            out,
            "error: unknown key `d_modl`\n  --> r.toml:2:1\n  |\n2 | d_modl = 3\n  | ^^^^^^ not a field of [model]\n   = help: did you mean `d_model`?\n"
        );
    }

    #[test]
    fn suggests_only_close_words() {
        assert_eq!(did_you_mean("d_modl", ["d_model", "n_layers"]), Some("d_model"));
        assert_eq!(did_you_mean("xyz", ["d_model", "n_layers"]), None);
        assert_eq!(did_you_mean("lrr", ["lr", "eps"]), Some("lr"));
    }
}
