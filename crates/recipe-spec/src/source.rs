//! The `[sources.NAME]` tables: which files hold a source's documents and how to read them.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::decode::{self, Cx, Fields, check_range, only_for};
use crate::diag::{Diagnostic, Origin, list_or_none, suggestion};
use crate::tree::Node;
use crate::vocab::{ChatTemplate, OnError, SourceFormat, TokenDtype};

#[derive(Clone, Debug, Serialize)]
pub struct Source {
    #[serde(skip)]
    pub name: String,
    /// Required. Globs relative to the recipe folder; every matching file is read.
    pub path: Vec<String>,
    /// The files the globs matched, sorted.
    #[serde(skip)]
    pub files: Vec<PathBuf>,
    /// Default `text`.
    pub format: SourceFormat,
    /// `jsonl` only; default `text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Default `fail`.
    pub on_error: OnError,
    /// `chat-jsonl` and `preference-jsonl` only; default `chatml`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<ChatTemplate>,
    /// Default 0: the fraction of documents held out for evaluation, chosen by a hash of each
    /// document so the split is the same on every run.
    pub holdout: f64,
    /// `tokens` only, default `u16`: the little-endian width of each token id in `X.bin`;
    /// `X.idx` beside it holds n_docs + 1 little-endian u64 token offsets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<TokenDtype>,
    /// Default none: read at most this many documents, in sorted file order (`recipe smoke`
    /// uses it to train on a slice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

const SOURCE_KEYS: &[&str] = &["path", "format", "field", "on_error", "template", "holdout", "dtype", "limit"];

pub(crate) fn decode_source(cx: &mut Cx, name: &str, node: &Node, base_dir: &Path) -> Source {
    let path = format!("sources.{name}");
    let f = Fields::of(cx, node, &path, SOURCE_KEYS);
    f.check_unknown(cx);
    let patterns = f.required(cx, "path", "\"data/*.txt\"", decode::strings).unwrap_or_default();
    let mut files = Vec::new();
    for (pattern, origin) in &patterns {
        match glob_files(base_dir, pattern) {
            Ok(found) if found.is_empty() => cx.diags.push(
                Diagnostic::new(origin, format!("`{pattern}` matches no file"))
                    .label(format!("looked under {}", display_dir(base_dir))),
            ),
            Ok(found) => files.extend(found),
            Err(why) => cx.diags.push(Diagnostic::new(origin, format!("bad glob `{pattern}`: {why}"))),
        }
    }
    files.sort();
    files.dedup();
    let format = f.word::<SourceFormat>(cx, "format").unwrap_or(SourceFormat::Text);
    let field = f.opt(cx, "field", decode::string);
    only_for(cx, &f, "field", field.is_some(), format == SourceFormat::Jsonl, "format = \"jsonl\"");
    let template = f.word::<ChatTemplate>(cx, "template");
    only_for(cx, &f, "template", template.is_some(), format.is_chat(), "`format` chat-jsonl or preference-jsonl");
    let dtype = f.word::<TokenDtype>(cx, "dtype");
    only_for(cx, &f, "dtype", dtype.is_some(), format == SourceFormat::Tokens, "format = \"tokens\"");
    if format == SourceFormat::Tokens {
        for file in &files {
            let index = file.with_extension("idx");
            if !index.is_file() {
                let origin = cx.origins.get(&f.child_path("path")).cloned().unwrap_or_default();
                cx.diags.push(
                    Diagnostic::new(&origin, format!("{} has no document index {}", file.display(), index.display()))
                        .label("a tokens source is X.bin with X.idx beside it (n_docs + 1 little-endian u64 offsets)"),
                );
            }
        }
    }
    let holdout = f.opt(cx, "holdout", decode::float).unwrap_or(0.0);
    check_range(cx, &f.child_path("holdout"), holdout, (0.0..1.0).contains(&holdout), "a fraction in [0, 1)");
    Source {
        name: name.to_string(),
        path: patterns.into_iter().map(|(p, _)| p).collect(),
        files,
        format,
        field: match format {
            SourceFormat::Jsonl => Some(field.unwrap_or_else(|| "text".into())),
            _ => None,
        },
        on_error: f.word::<OnError>(cx, "on_error").unwrap_or(OnError::Fail),
        template: format.is_chat().then(|| template.unwrap_or(ChatTemplate::ChatMl)),
        holdout,
        dtype: match format {
            SourceFormat::Tokens => Some(dtype.unwrap_or(TokenDtype::U16)),
            _ => None,
        },
        limit: f.opt(cx, "limit", decode::count).filter(|&n| {
            check_range(cx, &format!("sources.{name}.limit"), n as f64, n > 0, "at least 1 document");
            n > 0
        }),
    }
}

fn display_dir(dir: &Path) -> String {
    if dir.as_os_str().is_empty() { ".".into() } else { dir.display().to_string() }
}

/// Regular files matching a glob relative to `base_dir`.
fn glob_files(base_dir: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let full = base_dir.join(pattern);
    let full = full.to_str().ok_or("the path is not valid UTF-8")?;
    let paths = glob::glob(full).map_err(|e| e.to_string())?;
    Ok(paths.filter_map(Result::ok).filter(|p| p.is_file()).collect())
}

/// Report a mention of a source that the recipe does not define.
pub(crate) fn check_source_ref(cx: &mut Cx, name: &str, origin: &Origin, source_names: &[&str]) {
    if !source_names.contains(&name) {
        let mut d = Diagnostic::new(origin, format!("no source named `{name}`"))
            .label(format!("defined sources: {}", list_or_none(source_names)));
        if let Some(h) = suggestion(name, source_names.iter().copied()) {
            d = d.help(h);
        }
        cx.diags.push(d);
    }
}
