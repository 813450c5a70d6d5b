//! The `[tokenizer]` table: a tokenizer file to load (`path`), or a byte-level BPE to train
//! from named sources (`train`), and the checks that tie it to the model and the chat sources.

use std::path::Path;

use serde::Serialize;

use crate::checkpoint::{CheckpointReader, OwnChatTemplate, TokenizerFile};
use crate::decode::{self, Cx, Fields};
use crate::diag::{Diagnostic, Origin};
use crate::source::{Source, check_source_ref};
use crate::tree::{Node, Val};
use crate::vocab::ChatTemplate;

#[derive(Clone, Debug, Serialize)]
pub enum Tokenizer {
    /// `path = "tokenizer.json"`: any Hugging Face tokenizer file.
    #[serde(rename = "path")]
    File {
        #[serde(rename = "path")]
        written: String,
        /// A `tokenizer.json`, or the `.gguf` whose metadata holds the tokenizer.
        #[serde(skip)]
        file: TokenizerFile,
        /// Read from the file.
        vocab_size: u32,
        /// The chat templates whose special tokens the file has.
        #[serde(skip)]
        templates: Vec<ChatTemplate>,
        #[serde(skip)]
        fingerprint: String,
        /// The token it starts every text document with, when it has one.
        #[serde(skip)]
        bos: Option<u32>,
        /// The chat template stored with it (`template = "tokenizer"`), when there is one.
        #[serde(skip)]
        own_template: Option<OwnChatTemplate>,
    },
    /// `train = {...}`: a byte-level BPE trained on named sources as a cached graph node.
    #[serde(rename = "train")]
    Train(TokenizerTrain),
}

#[derive(Clone, Debug, Serialize)]
pub struct TokenizerTrain {
    /// Only `bpe` (byte-level).
    pub kind: String,
    /// Default 4096. Must leave room for the 256 byte tokens and the special tokens.
    pub vocab_size: u32,
    /// Default: every source of the recipe.
    pub sources: Vec<String>,
    /// Default 2: merges seen fewer times are not learned.
    pub min_frequency: u32,
    /// Default `["<|endoftext|>", "<|im_start|>", "<|im_end|>"]` (end of document, ChatML).
    pub special_tokens: Vec<String>,
}

impl Tokenizer {
    pub fn vocab_size(&self) -> u32 {
        match self {
            Tokenizer::File { vocab_size, .. } => *vocab_size,
            Tokenizer::Train(t) => t.vocab_size,
        }
    }
}

const TOKENIZER_KEYS: &[&str] = &["path", "train", "chat_template_args"];

const TRAIN_KEYS: &[&str] = &["kind", "vocab_size", "sources", "min_frequency", "special_tokens"];

pub(crate) fn decode_tokenizer(
    cx: &mut Cx,
    checkpoints: &dyn CheckpointReader,
    node: Option<&Node>,
    top_origin: &Origin,
    source_names: &[&str],
    base_dir: &Path,
) -> Option<Tokenizer> {
    let Some(node) = node else {
        cx.diags.push(
            Diagnostic::new(top_origin, "missing `[tokenizer]`")
                .label("expected `path = \"tokenizer.json\"` or `train = { vocab_size = 4096 }`"),
        );
        return None;
    };
    let f = Fields::of(cx, node, "tokenizer", TOKENIZER_KEYS);
    f.check_unknown(cx);
    match (f.get("path"), f.get("train")) {
        (Some(_), Some(_)) | (None, None) => {
            cx.diags.push(
                Diagnostic::new(&f.origin, "`[tokenizer]` needs exactly one of `path` and `train`")
                    .label("a tokenizer file to load, or a BPE to train from sources"),
            );
            None
        }
        (Some(_), None) => {
            let written = f.opt(cx, "path", decode::string)?;
            let resolved = crate::hub::locate(base_dir, &written);
            let origin = cx.origins.get("tokenizer.path").cloned().unwrap_or_default();
            let file = TokenizerFile::locate(&resolved);
            let args = f.get("chat_template_args").map(|node| template_args(cx, node));
            match checkpoints.tokenizer_facts(&file) {
                Ok(t) => Some(Tokenizer::File {
                    written,
                    file,
                    vocab_size: t.vocab_size,
                    templates: t.templates,
                    fingerprint: t.fingerprint,
                    bos: t.bos,
                    own_template: match (t.own_template, args) {
                        (Some(own), Some(args)) => Some(OwnChatTemplate { jinja: args + &own.jinja, ..own }),
                        (None, Some(_)) => {
                            let origin = cx.origins.get("tokenizer.chat_template_args").cloned().unwrap_or_default();
                            cx.diags.push(
                                Diagnostic::new(&origin, "`chat_template_args` set, but the tokenizer has no chat template of its own")
                                    .label("they are variables of the template stored with the tokenizer (`template = \"tokenizer\"`)"),
                            );
                            None
                        }
                        (own, None) => own,
                    },
                }),
                Err(why) => {
                    let d = Diagnostic::new(&origin, format!("cannot use tokenizer {}: {why}", resolved.display()))
                        .label("expected a Hugging Face tokenizer.json, a model folder holding one, or a .gguf");
                    cx.diags.push(crate::hub::explain_missing(d, &written, &resolved));
                    None
                }
            }
        }
        (None, Some(train)) => {
            if f.get("chat_template_args").is_some() {
                let origin = cx.origins.get("tokenizer.chat_template_args").cloned().unwrap_or_default();
                cx.diags.push(
                    Diagnostic::new(
                        &origin,
                        "`chat_template_args` set, but a trained tokenizer has no chat template of its own",
                    )
                    .label("they are variables of the template stored with a tokenizer file"),
                );
            }
            let t = Fields::of(cx, train, "tokenizer.train", TRAIN_KEYS);
            t.check_unknown(cx);
            let kind = t.opt(cx, "kind", decode::choice(&["bpe"])).unwrap_or("bpe").to_string();
            let special_tokens = t
                .opt(cx, "special_tokens", decode::strings)
                .map(|v| v.into_iter().map(|(s, _)| s).collect())
                .unwrap_or_else(|| vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()]);
            let min_vocab = 256 + special_tokens.len() as u64;
            let vocab_size = t.opt(cx, "vocab_size", decode::size(min_vocab as u32, 1 << 24)).unwrap_or(4096);
            let min_frequency = t.opt(cx, "min_frequency", decode::size(1, u32::MAX)).unwrap_or(2);
            let sources: Vec<String> = match t.opt(cx, "sources", decode::strings) {
                Some(list) => {
                    for (name, origin) in &list {
                        check_source_ref(cx, name, origin, source_names);
                    }
                    list.into_iter().map(|(s, _)| s).collect()
                }
                None => source_names.iter().map(|s| s.to_string()).collect(),
            };
            if sources.is_empty() {
                cx.diags.push(
                    Diagnostic::new(&t.origin, "the tokenizer has no sources to train on")
                        .label("expected `sources = [\"NAME\", ...]` naming `[sources.NAME]` tables"),
                );
            }
            Some(Tokenizer::Train(TokenizerTrain { kind, vocab_size, sources, min_frequency, special_tokens }))
        }
    }
}

/// `chat_template_args = { enable_thinking = false }`: variables of the tokenizer's own
/// template, as `apply_chat_template(..., enable_thinking=False)` passes them, written as
/// `{%- set name = value -%}` lines put before the template — so that the template kept with a
/// stage's result and exported renders as it trained, and its key changes with them. Values
/// are booleans, numbers and strings; names are identifiers.
fn template_args(cx: &mut Cx, node: &Node) -> String {
    let Val::Table(table) = &node.val else {
        cx.diags.push(
            Diagnostic::new(&node.origin, "`tokenizer.chat_template_args` is not a table")
                .label("expected `{ enable_thinking = false }`"),
        );
        return String::new();
    };
    let mut out = String::new();
    for entry in &table.entries {
        let identifier = entry.key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && entry.key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let literal = match &entry.node.val {
            Val::Bool(b) => Some(b.to_string()),
            Val::Int(i) => Some(i.to_string()),
            Val::Float(x) if x.is_finite() => Some(format!("{x:?}")),
            Val::Str(s) if !s.chars().any(|c| c.is_control() && c != '\n') => {
                Some(format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
            }
            _ => None,
        };
        match (identifier, literal) {
            (true, Some(literal)) => out += &format!("{{%- set {} = {literal} -%}}\n", entry.key),
            (false, _) => cx.diags.push(
                Diagnostic::new(&entry.key_origin, format!("`{}` is not a template variable's name", entry.key))
                    .label("expected letters, digits and `_`, not starting with a digit"),
            ),
            (true, None) => cx.diags.push(
                Diagnostic::new(
                    &entry.node.origin,
                    format!("`chat_template_args.{}` cannot be a template value", entry.key),
                )
                .label("expected a boolean, a number or a string without control characters"),
            ),
        }
    }
    out
}

/// A chat source is formatted with its template, so the tokenizer must have the template's
/// special tokens, or for `template = "tokenizer"` a template of its own.
pub(crate) fn check_chat_tokens(cx: &mut Cx, sources: &[Source], tokenizer: Option<&Tokenizer>) {
    let has = |template: ChatTemplate| match tokenizer {
        Some(Tokenizer::File { templates, .. }) => templates.contains(&template),
        Some(Tokenizer::Train(_)) if template == ChatTemplate::Tokenizer => false,
        Some(Tokenizer::Train(t)) => template.tokens().iter().all(|c| t.special_tokens.iter().any(|s| s == c)),
        None => true,
    };
    for s in sources.iter().filter(|s| s.format.is_chat()) {
        let Some(template) = s.template.filter(|t| !has(*t)) else { continue };
        let origin = cx
            .origins
            .get(&format!("sources.{}.template", s.name))
            .or_else(|| cx.origins.get(&format!("sources.{}.format", s.name)))
            .cloned()
            .unwrap_or_default();
        let mut fix = match tokenizer {
            Some(Tokenizer::Train(_)) if template == ChatTemplate::Tokenizer => {
                "a trained tokenizer has no template of its own; name one".to_string()
            }
            Some(Tokenizer::Train(_)) => "add them to `tokenizer.train.special_tokens`".to_string(),
            _ if template == ChatTemplate::Tokenizer => {
                "put its `tokenizer_config.json` (or `chat_template.jinja`) beside the tokenizer file".to_string()
            }
            _ => "use a tokenizer that defines them".to_string(),
        };
        match ChatTemplate::ALL.into_iter().find(|t| has(*t)) {
            Some(ChatTemplate::Tokenizer) => fix += ", or `template = \"tokenizer\"`, the template stored with it",
            Some(other) => fix += &format!(", or `template = \"{other}\"`, whose tokens the tokenizer has"),
            None => {}
        }
        let (message, label) = match template {
            ChatTemplate::Tokenizer => (
                format!("source `{}` is chat data in the tokenizer's own template, but it has none", s.name),
                "expected `chat_template.jinja`, or `chat_template` in `tokenizer_config.json`, beside `tokenizer.json`, or a .gguf's `tokenizer.chat_template`".to_string(),
            ),
            _ => (
                format!("source `{}` is chat data, but the tokenizer lacks the {template} template's tokens", s.name),
                format!("the {template} template needs {}", template.tokens().join(", ")),
            ),
        };
        cx.diags.push(Diagnostic::new(&origin, message).label(label).help(fix));
    }
}
