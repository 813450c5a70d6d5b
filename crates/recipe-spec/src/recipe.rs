//! The typed recipe: every table and field of the language, with its default, decoded from the
//! origin-carrying tree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checkpoint::{CheckpointFormat, CheckpointInfo, TokenizerFile, inspect, tokenizer_facts};
use crate::decode::{self, Cx, Fields, check_range};
use crate::diag::{Diagnostic, Origin, suggestion};
use crate::model::{Model, ModelSpec};
use crate::schedule::{Schedule, ScheduleKind};
use crate::tree::{Node, Table, Val};

/// An enum spelled as a fixed set of words in the recipe.
macro_rules! words {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }
        impl $name {
            pub const WORDS: &'static [&'static str] = &[$($word),+];
            pub fn as_str(self) -> &'static str { match self { $($name::$variant => $word),+ } }
            pub fn from_word(w: &str) -> Option<Self> { match w { $($word => Some($name::$variant),)+ _ => None } }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> { s.serialize_str(self.as_str()) }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}
pub(crate) use words;

words!(StageKind { Pretrain = "pretrain", Sft = "sft", Distill = "distill" });
words!(SourceFormat { Text = "text", Jsonl = "jsonl", ChatJsonl = "chat-jsonl", Tokens = "tokens" });
words!(OnError { Fail = "fail", Skip = "skip" });
words!(ChatTemplate { ChatMl = "chatml" });
words!(TokenDtype { U16 = "u16", U32 = "u32" });

/// The special tokens the ChatML template writes around each turn.
pub const CHATML_TOKENS: [&str; 2] = ["<|im_start|>", "<|im_end|>"];
words!(Packing { Concat = "concat", BestFit = "best-fit", Pad = "pad" });
words!(LossOn { All = "all", Assistant = "assistant" });
words!(Precision { F32 = "f32", Bf16Mixed = "bf16-mixed", F16Mixed = "f16-mixed", Bf16 = "bf16" });
words!(PeftMethod { Lora = "lora", Dora = "dora" });
words!(DistillLoss { ForwardKl = "forward-kl", ReverseKl = "reverse-kl", Jsd = "jsd" });

/// The projections of a Llama block that PEFT can adapt.
pub const PEFT_MODULES: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// A parsed, checked recipe with every default applied.
#[derive(Clone, Debug)]
pub struct Recipe {
    /// The recipe file.
    pub path: PathBuf,
    /// Paths in the recipe are relative to this folder (the recipe file's).
    pub base_dir: PathBuf,
    /// Default: the recipe file's name without `.toml`.
    pub name: String,
    /// Default 0. Seeds every random stream of every stage.
    pub seed: u64,
    /// The `[model]` table as written; each stage's resolved model is in `Stage::model`.
    pub model: ModelSpec,
    pub tokenizer: Tokenizer,
    /// In declaration order.
    pub sources: Vec<Source>,
    /// In declaration order.
    pub stages: Vec<Stage>,
    /// Where each field's value was written, by dotted path.
    pub origins: BTreeMap<String, Origin>,
    /// Problems that do not stop the recipe from running (an unused source, say).
    pub warnings: Vec<Diagnostic>,
}

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
        /// Whether the file has both ChatML special tokens.
        #[serde(skip)]
        has_chatml: bool,
        #[serde(skip)]
        fingerprint: String,
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
    /// `chat-jsonl` only; default `chatml`.
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

#[derive(Clone, Debug, Serialize)]
pub struct Stage {
    #[serde(skip)]
    pub name: String,
    /// Required.
    pub kind: StageKind,
    /// Default none: the stage whose final weights this stage starts from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// `distill` only, required there: one stage, or several whose probabilities are averaged.
    /// The stages among `teacher`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub teacher: Vec<String>,
    /// The imported checkpoints among `teacher` (entries holding `/` or `.`).
    #[serde(rename = "teacher_checkpoints", skip_serializing_if = "Vec::is_empty")]
    pub teacher_checkpoints: Vec<Import>,
    /// The stage's overrides of `[model]` as written.
    #[serde(rename = "model")]
    pub model_overrides: ModelSpec,
    /// The resolved architecture this stage trains.
    #[serde(skip)]
    pub model: Model,
    /// Default 1000 optimizer steps.
    pub steps: u64,
    /// Default: `model.max_seq_len`.
    pub seq_len: u32,
    /// Default 8 sequences per optimizer step.
    pub batch_size: u32,
    /// Default: `batch_size` (no accumulation).
    pub micro_batch_size: u32,
    pub data: Data,
    pub optim: Optim,
    pub schedule: Schedule,
    /// Default `f32`.
    pub precision: Precision,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peft: Option<Peft>,
    /// `distill` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distill: Option<Distill>,
    /// Default 100. Not part of the stage's key.
    pub checkpoint_every: u64,
    /// Default 3 most recent checkpoints kept. Not part of the stage's key.
    pub keep_checkpoints: u32,
    /// Default 10. Not part of the stage's key.
    pub log_every: u64,
    /// Not part of the stage's key: evaluation reads only held-out data and never draws from
    /// the training streams.
    pub eval: Eval,
}

/// A checkpoint a stage imports, as its starting weights or as a teacher.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Import {
    /// As the recipe wrote it, relative to the recipe's folder.
    #[serde(rename = "path")]
    pub written: String,
    #[serde(skip)]
    pub path: PathBuf,
    #[serde(skip)]
    pub format: CheckpointFormat,
    /// The architecture, from the checkpoint.
    #[serde(skip)]
    pub model: Model,
}

/// Stage fields that cannot change a stage; they are outside its content key.
pub const NON_SEMANTIC_STAGE_FIELDS: &[&str] = &["checkpoint_every", "keep_checkpoints", "log_every", "eval"];

#[derive(Clone, Debug, Serialize)]
pub struct Data {
    /// Required. Token proportions per source, normalised to sum to 1, sorted by source name.
    #[serde(serialize_with = "crate::canonical::pairs_as_map")]
    pub mix: Vec<(String, f64)>,
    /// Default `best-fit`.
    pub packing: Packing,
    /// Default `assistant` for `sft` stages, `all` otherwise.
    pub loss_on: LossOn,
}

#[derive(Clone, Debug, Serialize)]
pub struct Optim {
    /// Only `adamw`.
    pub kind: String,
    /// Default 3e-4: the peak learning rate.
    pub lr: f64,
    /// Default [0.9, 0.95].
    pub betas: [f64; 2],
    /// Default 1e-8.
    pub eps: f64,
    /// Default 0.1, decoupled; norms and embeddings are not decayed.
    pub weight_decay: f64,
    /// Default 1.0: clip the global gradient norm; 0 turns clipping off.
    pub grad_clip: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Peft {
    /// Default `lora`.
    pub method: PeftMethod,
    /// Default 8.
    pub rank: u32,
    /// Default 16: the update is scaled by alpha / rank.
    pub alpha: f64,
    /// Default 0.
    pub dropout: f64,
    /// Default ["q_proj", "v_proj"].
    pub targets: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Distill {
    /// Default `forward-kl`.
    pub loss: DistillLoss,
    /// Default 1.0; the KD term is scaled by T².
    pub temperature: f64,
    /// Default 0.5: loss = alpha · KD + (1 − alpha) · CE.
    pub alpha: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Eval {
    /// Default 0 (never): evaluate on the held-out split every this many steps, and at the end.
    pub every: u64,
    /// Default 8 batches of `micro_batch_size` sequences.
    pub batches: u32,
}

const TOP_KEYS: &[&str] = &["recipe", "model", "tokenizer", "sources", "stages"];
const RECIPE_KEYS: &[&str] = &["name", "seed"];
const TOKENIZER_KEYS: &[&str] = &["path", "train"];
const TRAIN_KEYS: &[&str] = &["kind", "vocab_size", "sources", "min_frequency", "special_tokens"];
const SOURCE_KEYS: &[&str] = &["path", "format", "field", "on_error", "template", "holdout", "dtype", "limit"];
const STAGE_KEYS: &[&str] = &[
    "kind",
    "after",
    "teacher",
    "model",
    "steps",
    "seq_len",
    "batch_size",
    "micro_batch_size",
    "data",
    "optim",
    "schedule",
    "precision",
    "peft",
    "distill",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "eval",
];
const DATA_KEYS: &[&str] = &["mix", "packing", "loss_on"];
const OPTIM_KEYS: &[&str] = &["kind", "lr", "betas", "eps", "weight_decay", "grad_clip"];
const PEFT_KEYS: &[&str] = &["method", "rank", "alpha", "dropout", "targets"];
const DISTILL_KEYS: &[&str] = &["loss", "temperature", "alpha"];
const EVAL_KEYS: &[&str] = &["every", "batches"];

/// A recipe that failed to load: every diagnostic, and the texts they point into.
#[derive(Debug)]
pub struct Invalid {
    pub source: crate::SourceText,
    pub diagnostics: Vec<Diagnostic>,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source.render_all(&self.diagnostics))
    }
}

impl std::error::Error for Invalid {}

impl Recipe {
    /// Read, parse, apply `--set` overrides and check a recipe file.
    pub fn load(path: &Path, sets: &[String]) -> Result<Recipe, Box<Invalid>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let source = crate::SourceText { path: path.to_path_buf(), text: String::new(), sets: sets.to_vec() };
                let d = Diagnostic::new(&Origin::Default, format!("cannot read {}: {e}", path.display()));
                return Err(Box::new(Invalid { source, diagnostics: vec![d] }));
            }
        };
        Recipe::parse(path, &text, sets)
    }

    /// Like [`Recipe::load`], for a recipe already in memory; `path` names it and anchors its
    /// relative paths.
    pub fn parse(path: &Path, text: &str, sets: &[String]) -> Result<Recipe, Box<Invalid>> {
        let source = crate::SourceText { path: path.to_path_buf(), text: text.to_string(), sets: sets.to_vec() };
        let (mut doc, mut diags) = crate::tree::parse_document(text);
        for (i, set) in sets.iter().enumerate() {
            if let Err(d) = crate::tree::apply_set(&mut doc, i, set) {
                diags.push(d);
            }
        }
        let mut cx = Cx { diags, ..Cx::default() };
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let recipe = decode_recipe(&mut cx, &doc, path, &base_dir);
        if cx.diags.is_empty() {
            Ok(recipe)
        } else {
            let mut diagnostics = cx.diags;
            diagnostics.sort_by_key(|d| match &d.origin {
                Origin::File(r) => (0, 0, r.start),
                Origin::Set { index, range } => (1, *index, range.start),
                Origin::Default => (2, 0, 0),
            });
            diagnostics.dedup();
            Err(Box::new(Invalid { source, diagnostics }))
        }
    }

    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// A path written in the recipe, resolved against the recipe's folder.
    pub fn resolve(&self, written: &str) -> PathBuf {
        self.base_dir.join(written)
    }

    /// The path at which a stage's model field was set: the stage's override if it has one,
    /// else `[model]`.
    pub fn model_field_path(&self, stage: &Stage, field: &str) -> String {
        model_field_path(&stage.name, &stage.model_overrides, field)
    }
}

fn model_field_path(stage: &str, overrides: &ModelSpec, field: &str) -> String {
    if overrides.set_fields().contains(&field) {
        format!("stages.{stage}.model.{field}")
    } else {
        format!("model.{field}")
    }
}

fn decode_recipe(cx: &mut Cx, doc: &Table, path: &Path, base_dir: &Path) -> Recipe {
    let root = Node { val: Val::Table(doc.clone()), origin: Origin::File(0..0) };
    let top = Fields::of(cx, &root, "", TOP_KEYS);
    top.check_unknown(cx);

    let (name, seed) = match top.get("recipe") {
        Some(node) => {
            let f = Fields::of(cx, node, "recipe", RECIPE_KEYS);
            f.check_unknown(cx);
            (f.opt(cx, "name", decode::string), f.opt(cx, "seed", decode::count))
        }
        None => (None, None),
    };
    let name = name.unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
    check_name(cx, "recipe.name", &name);

    let model = match top.get("model") {
        Some(node) => ModelSpec::decode(cx, node, "model"),
        None => ModelSpec::default(),
    };

    let sources = match top.get("sources") {
        Some(node) => named_tables(cx, node, "sources")
            .into_iter()
            .map(|(name, node)| decode_source(cx, &name, node, base_dir))
            .collect(),
        None => Vec::new(),
    };
    let source_names: Vec<&str> = sources.iter().map(|s: &Source| s.name.as_str()).collect();

    let tokenizer = decode_tokenizer(cx, top.get("tokenizer"), &root.origin, &source_names, base_dir);
    let tokenizer_vocab = tokenizer.as_ref().map(Tokenizer::vocab_size);
    if let (Some(v), Some(tv)) = (model.vocab_size, tokenizer_vocab) {
        check_vocab(cx, "model.vocab_size", v, tv);
    }

    let stage_nodes = match top.get("stages") {
        Some(node) => named_tables(cx, node, "stages"),
        None => {
            cx.diags.push(
                Diagnostic::new(&Origin::File(0..0), "the recipe has no stages")
                    .label("expected at least one `[stages.NAME]` table")
                    .help("add `[stages.pretrain]` with `kind = \"pretrain\"` and `data = { mix = { SOURCE = 1.0 } }`"),
            );
            Vec::new()
        }
    };
    let stage_names: Vec<String> = stage_nodes.iter().map(|(n, _)| n.clone()).collect();
    let stages: Vec<Stage> = stage_nodes
        .iter()
        .map(|(name, node)| {
            let context = StageContext {
                model_defaults: &model,
                tokenizer: tokenizer.as_ref(),
                sources: &sources,
                stage_names: &stage_names,
                base_dir,
            };
            decode_stage(cx, name, node, &context)
        })
        .collect();

    check_stage_graph(cx, &stages);
    check_starting_weights(cx, &stages);

    check_chat_tokens(cx, &sources, tokenizer.as_ref());

    let mut warnings = Vec::new();
    for s in &sources {
        let in_mix = stages.iter().any(|st| st.data.mix.iter().any(|(n, _)| n == &s.name));
        let in_tokenizer = matches!(&tokenizer, Some(Tokenizer::Train(t)) if t.sources.contains(&s.name));
        if !in_mix && !in_tokenizer {
            let origin = cx.origins.get(&format!("sources.{}", s.name)).cloned().unwrap_or_default();
            warnings.push(
                Diagnostic::warning(&origin, format!("source `{}` is not used by any stage", s.name))
                    .label("it will not be tokenized"),
            );
        }
    }

    Recipe {
        path: path.to_path_buf(),
        base_dir: base_dir.to_path_buf(),
        name,
        seed: seed.unwrap_or(0),
        model,
        tokenizer: tokenizer.unwrap_or(Tokenizer::File {
            written: String::new(),
            file: TokenizerFile::Json(PathBuf::new()),
            vocab_size: 0,
            has_chatml: false,
            fingerprint: String::new(),
        }),
        sources,
        stages,
        origins: std::mem::take(&mut cx.origins),
        warnings,
    }
}

/// A chat source is formatted with ChatML, so the tokenizer must have its special tokens.
fn check_chat_tokens(cx: &mut Cx, sources: &[Source], tokenizer: Option<&Tokenizer>) {
    let has_chatml = match tokenizer {
        Some(Tokenizer::File { has_chatml, .. }) => *has_chatml,
        Some(Tokenizer::Train(t)) => CHATML_TOKENS.iter().all(|c| t.special_tokens.iter().any(|s| s == c)),
        None => return,
    };
    for s in sources.iter().filter(|s| s.format == SourceFormat::ChatJsonl) {
        if !has_chatml {
            let origin = cx.origins.get(&format!("sources.{}.format", s.name)).cloned().unwrap_or_default();
            let fix = match tokenizer {
                Some(Tokenizer::Train(_)) => "add them to `tokenizer.train.special_tokens`",
                _ => "use a tokenizer that defines them",
            };
            cx.diags.push(
                Diagnostic::new(
                    &origin,
                    format!("source `{}` is chat data, but the tokenizer lacks the ChatML tokens", s.name),
                )
                .label(format!("the chatml template needs {}", CHATML_TOKENS.join(" and ")))
                .help(fix),
            );
        }
    }
}

/// The `NAME = {...}` entries of `[sources]` or `[stages]`, with checked names.
fn named_tables<'a>(cx: &mut Cx, node: &'a Node, path: &str) -> Vec<(String, &'a Node)> {
    let Val::Table(t) = &node.val else {
        cx.diags.push(
            Diagnostic::new(&node.origin, format!("`{path}` must be a table, found {}", node.val.type_name()))
                .label(format!("expected `[{path}.NAME]` tables")),
        );
        return Vec::new();
    };
    t.entries
        .iter()
        .map(|e| {
            let full = format!("{path}.{}", e.key);
            cx.origins.insert(full.clone(), e.key_origin.clone());
            check_name(cx, &full, &e.key);
            (e.key.clone(), &e.node)
        })
        .collect()
}

/// Names become directory names and node names, so they are kept plain.
fn check_name(cx: &mut Cx, path: &str, name: &str) {
    let ok = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        let origin = cx.origins.get(path).cloned().unwrap_or_default();
        cx.diags.push(
            Diagnostic::new(&origin, format!("invalid name `{name}`"))
                .label("expected a letter or digit, then letters, digits, `_` and `-`"),
        );
    }
}

fn check_vocab(cx: &mut Cx, path: &str, model_vocab: u32, tokenizer_vocab: u32) {
    if model_vocab < tokenizer_vocab {
        let origin = cx.origins.get(path).cloned().unwrap_or_default();
        cx.diags.push(
            Diagnostic::new(
                &origin,
                format!("`{path}` ({model_vocab}) is smaller than the tokenizer's vocabulary ({tokenizer_vocab})"),
            )
            .label("the embedding must have a row for every token id")
            .help("remove `vocab_size` to follow the tokenizer, or pad it to a larger size"),
        );
    }
}

fn decode_tokenizer(
    cx: &mut Cx,
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
            let resolved = base_dir.join(&written);
            let origin = cx.origins.get("tokenizer.path").cloned().unwrap_or_default();
            let file = TokenizerFile::locate(&resolved);
            match tokenizer_facts(&file) {
                Ok(t) => Some(Tokenizer::File {
                    written,
                    file,
                    vocab_size: t.vocab_size,
                    has_chatml: t.has_chatml,
                    fingerprint: t.fingerprint,
                }),
                Err(why) => {
                    cx.diags.push(
                        Diagnostic::new(&origin, format!("cannot use tokenizer {}: {why}", resolved.display()))
                            .label("expected a Hugging Face tokenizer.json, a model folder holding one, or a .gguf"),
                    );
                    None
                }
            }
        }
        (None, Some(train)) => {
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

fn check_source_ref(cx: &mut Cx, name: &str, origin: &Origin, source_names: &[&str]) {
    if !source_names.contains(&name) {
        let mut d = Diagnostic::new(origin, format!("no source named `{name}`"))
            .label(format!("defined sources: {}", list_or_none(source_names)));
        if let Some(h) = suggestion(name, source_names.iter().copied()) {
            d = d.help(h);
        }
        cx.diags.push(d);
    }
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() { "none".into() } else { names.join(", ") }
}

fn decode_source(cx: &mut Cx, name: &str, node: &Node, base_dir: &Path) -> Source {
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
    let format = f
        .opt(cx, "format", decode::choice(SourceFormat::WORDS))
        .and_then(SourceFormat::from_word)
        .unwrap_or(SourceFormat::Text);
    let field = f.opt(cx, "field", decode::string);
    only_for(cx, &f, "field", field.is_some(), format == SourceFormat::Jsonl, "format = \"jsonl\"");
    let template = f.opt(cx, "template", decode::choice(ChatTemplate::WORDS)).and_then(ChatTemplate::from_word);
    only_for(cx, &f, "template", template.is_some(), format == SourceFormat::ChatJsonl, "format = \"chat-jsonl\"");
    let dtype = f.opt(cx, "dtype", decode::choice(TokenDtype::WORDS)).and_then(TokenDtype::from_word);
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
        on_error: f
            .opt(cx, "on_error", decode::choice(OnError::WORDS))
            .and_then(OnError::from_word)
            .unwrap_or(OnError::Fail),
        template: match format {
            SourceFormat::ChatJsonl => Some(template.unwrap_or(ChatTemplate::ChatMl)),
            _ => None,
        },
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

/// Report a field given where it has no meaning, instead of silently ignoring it.
fn only_for(cx: &mut Cx, f: &Fields, key: &str, given: bool, applies: bool, condition: &str) {
    if given && !applies {
        let origin = cx.origins.get(&f.child_path(key)).cloned().unwrap_or_default();
        cx.diags.push(
            Diagnostic::new(&origin, format!("`{}` only applies with {condition}", f.child_path(key)))
                .label("remove it, or change the kind it depends on"),
        );
    }
}

/// What decoding a stage needs from the rest of the recipe.
struct StageContext<'a> {
    model_defaults: &'a ModelSpec,
    tokenizer: Option<&'a Tokenizer>,
    sources: &'a [Source],
    stage_names: &'a [String],
    base_dir: &'a Path,
}

fn decode_stage(cx: &mut Cx, name: &str, node: &Node, context: &StageContext) -> Stage {
    let StageContext { model_defaults, tokenizer, sources, stage_names, base_dir } = *context;
    let tokenizer_vocab = tokenizer.map(Tokenizer::vocab_size);
    let path = format!("stages.{name}");
    let f = Fields::of(cx, node, &path, STAGE_KEYS);
    f.check_unknown(cx);
    let stage_refs: Vec<&str> = stage_names.iter().map(String::as_str).filter(|s| *s != name).collect();
    let check_stage_ref = |cx: &mut Cx, target: &str, origin: &Origin| {
        if target == name {
            cx.diags.push(
                Diagnostic::new(origin, format!("stage `{name}` refers to itself"))
                    .label(format!("this forms the cycle {name} → {name}")),
            );
        } else if !stage_refs.contains(&target) {
            let mut d = Diagnostic::new(origin, format!("no stage named `{target}`"))
                .label(format!("defined stages: {}", list_or_none(&stage_refs)));
            if let Some(h) = suggestion(target, stage_refs.iter().copied()) {
                d = d.help(h);
            }
            cx.diags.push(d);
        }
    };

    let kind = f
        .required(cx, "kind", "\"pretrain\"", decode::choice(StageKind::WORDS))
        .and_then(StageKind::from_word)
        .unwrap_or(StageKind::Pretrain);

    let after = f.opt(cx, "after", decode::string);
    if let Some(a) = &after {
        let origin = cx.origins.get(&f.child_path("after")).cloned().unwrap_or_default();
        check_stage_ref(cx, a, &origin);
    }
    let teacher = f.opt(cx, "teacher", decode::strings).unwrap_or_default();
    let (teacher_paths, teacher): (Vec<_>, Vec<_>) =
        teacher.into_iter().partition(|(t, _)| !stage_names.contains(t) && is_path(t, base_dir));
    for (t, origin) in &teacher {
        check_stage_ref(cx, t, origin);
    }
    let teacher_checkpoints: Vec<Import> = teacher_paths
        .iter()
        .filter_map(|(written, origin)| import_teacher(cx, name, written, origin, base_dir, tokenizer))
        .collect();
    let has_teacher = !teacher.is_empty() || !teacher_paths.is_empty();
    only_for(cx, &f, "teacher", has_teacher, kind == StageKind::Distill, "kind = \"distill\"");
    if kind == StageKind::Distill && !has_teacher {
        cx.diags.push(
            Diagnostic::new(&f.origin, format!("distill stage `{name}` has no teacher"))
                .label("expected `teacher = \"STAGE\"` or a list of stages")
                .help(match stage_refs.first() {
                    Some(s) => format!("for example `teacher = \"{s}\"`"),
                    None => "define the teacher's stage first".into(),
                }),
        );
    }

    let model_overrides = match f.get("model") {
        Some(m) => ModelSpec::decode(cx, m, &f.child_path("model")),
        None => ModelSpec::default(),
    };
    let spec = model_defaults.overlay(&model_overrides);
    let (spec, imported) = match &spec.from {
        Some(from) => import_architecture(cx, name, &model_overrides, &spec, &base_dir.join(from), tokenizer),
        None => (spec, None),
    };
    let mut model = spec.resolve(tokenizer_vocab);
    model.import = imported;
    let field_path = |field: &str| model_field_path(name, &model_overrides, field);
    crate::model::check_model(cx, &model, &field_path);
    if let (Some(v), Some(tv)) = (model_overrides.vocab_size, tokenizer_vocab) {
        check_vocab(cx, &field_path("vocab_size"), v, tv);
    }

    let steps = f.opt(cx, "steps", decode::count).unwrap_or(1000);
    if steps == 0 {
        check_range(cx, &f.child_path("steps"), 0.0, false, "at least 1 step");
    }
    let seq_len = f.opt(cx, "seq_len", decode::size(1, 1 << 22)).unwrap_or(model.max_seq_len);
    if seq_len > model.max_seq_len {
        let origin = cx.origins.get(&f.child_path("seq_len")).cloned().unwrap_or_else(|| f.origin.clone());
        cx.diags.push(
            Diagnostic::new(
                &origin,
                format!("seq_len ({seq_len}) exceeds the model's max_seq_len ({})", model.max_seq_len),
            )
            .label(format!("max_seq_len is set at `{}`", field_path("max_seq_len"))),
        );
    }
    let batch_size = f.opt(cx, "batch_size", decode::size(1, 1 << 20)).unwrap_or(8);
    let micro_batch_size = f.opt(cx, "micro_batch_size", decode::size(1, 1 << 20)).unwrap_or(batch_size);
    if !batch_size.is_multiple_of(micro_batch_size) {
        let origin = cx.origins.get(&f.child_path("micro_batch_size")).cloned().unwrap_or_default();
        cx.diags.push(
            Diagnostic::new(
                &origin,
                format!("micro_batch_size ({micro_batch_size}) does not divide batch_size ({batch_size})"),
            )
            .label("gradient accumulation runs batch_size / micro_batch_size micro-batches per step"),
        );
    }

    let data = decode_data(cx, &f, kind, sources);
    let optim = decode_optim(cx, &f);
    let schedule = Schedule::decode(cx, f.get("schedule"), &f.child_path("schedule"), steps);
    let precision = f
        .opt(cx, "precision", decode::choice(Precision::WORDS))
        .and_then(Precision::from_word)
        .unwrap_or(Precision::F32);
    let peft = f.get("peft").map(|node| decode_peft(cx, node, &f.child_path("peft")));
    let distill = f.get("distill").map(|node| decode_distill(cx, node, &f.child_path("distill")));
    only_for(cx, &f, "distill", distill.is_some(), kind == StageKind::Distill, "kind = \"distill\"");
    let distill = match kind {
        StageKind::Distill => {
            Some(distill.unwrap_or(Distill { loss: DistillLoss::ForwardKl, temperature: 1.0, alpha: 0.5 }))
        }
        _ => None,
    };

    let eval = match f.get("eval") {
        Some(node) => {
            let e = Fields::of(cx, node, &f.child_path("eval"), EVAL_KEYS);
            e.check_unknown(cx);
            Eval {
                every: e.opt(cx, "every", decode::count).unwrap_or(0),
                batches: e.opt(cx, "batches", decode::size(1, 1 << 20)).unwrap_or(8),
            }
        }
        None => Eval { every: 0, batches: 8 },
    };
    if eval.every > 0 {
        let has_holdout = data.mix.iter().any(|(s, _)| sources.iter().any(|src| &src.name == s && src.holdout > 0.0));
        if !has_holdout {
            let origin = cx.origins.get(&f.child_path("eval.every")).cloned().unwrap_or_default();
            cx.diags.push(
                Diagnostic::new(&origin, format!("stage `{name}` evaluates, but none of its sources holds data out"))
                    .label("evaluation reads the held-out split")
                    .help("set `holdout = 0.05` on a source in this stage's mix"),
            );
        }
    }

    Stage {
        name: name.to_string(),
        kind,
        after,
        teacher: teacher.into_iter().map(|(t, _)| t).collect(),
        teacher_checkpoints,
        model_overrides,
        model,
        steps,
        seq_len,
        batch_size,
        micro_batch_size,
        data,
        optim,
        schedule,
        precision,
        peft,
        distill,
        checkpoint_every: f.opt(cx, "checkpoint_every", decode::count).unwrap_or(100),
        keep_checkpoints: f.opt(cx, "keep_checkpoints", decode::size(1, 1 << 20)).unwrap_or(3),
        log_every: f.opt(cx, "log_every", decode::count).unwrap_or(10).max(1),
        eval,
    }
}

fn decode_data(cx: &mut Cx, stage: &Fields, kind: StageKind, sources: &[Source]) -> Data {
    let source_names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
    let default_loss_on = if kind == StageKind::Sft { LossOn::Assistant } else { LossOn::All };
    let Some(node) = stage.get("data") else {
        cx.diags.push(
            Diagnostic::new(&stage.origin, format!("missing key `data` in `{}`", stage.path))
                .label("expected `data = { mix = { SOURCE = 1.0 } }`"),
        );
        return Data { mix: Vec::new(), packing: Packing::BestFit, loss_on: default_loss_on };
    };
    let f = Fields::of(cx, node, &stage.child_path("data"), DATA_KEYS);
    f.check_unknown(cx);
    let mut mix = Vec::new();
    if let Some(mix_node) = f.get("mix") {
        let mix_path = f.child_path("mix");
        cx.origins.insert(mix_path.clone(), mix_node.origin.clone());
        match &mix_node.val {
            Val::Table(t) if !t.entries.is_empty() => {
                for e in &t.entries {
                    check_source_ref(cx, &e.key, &e.key_origin, &source_names);
                    let wpath = format!("{mix_path}.{}", e.key);
                    cx.origins.insert(wpath.clone(), e.node.origin.clone());
                    if let Some(w) = decode::float(cx, &e.node, &wpath) {
                        check_range(cx, &wpath, w, w > 0.0, "a weight > 0");
                        mix.push((e.key.clone(), w));
                    }
                }
            }
            _ => cx.diags.push(
                Diagnostic::new(&mix_node.origin, format!("`{mix_path}` must be a non-empty table of weights"))
                    .label("expected `{ SOURCE = 0.7, OTHER = 0.3 }`"),
            ),
        }
    } else {
        cx.diags.push(
            Diagnostic::new(&f.origin, format!("missing key `mix` in `{}`", f.path))
                .label("expected `mix = { SOURCE = 1.0 }`"),
        );
    }
    let total: f64 = mix.iter().map(|(_, w)| w).sum();
    if total > 0.0 {
        for (_, w) in &mut mix {
            *w /= total;
        }
    }
    mix.sort_by(|a, b| a.0.cmp(&b.0));
    let loss_on =
        f.opt(cx, "loss_on", decode::choice(LossOn::WORDS)).and_then(LossOn::from_word).unwrap_or(default_loss_on);
    if loss_on == LossOn::Assistant {
        for (name, _) in &mix {
            if let Some(src) = sources.iter().find(|s| &s.name == name).filter(|s| s.format != SourceFormat::ChatJsonl)
            {
                let origin = cx.origins.get(&f.child_path("loss_on")).cloned().unwrap_or_else(|| f.origin.clone());
                cx.diags.push(
                    Diagnostic::new(
                        &origin,
                        format!("loss_on = \"assistant\" needs chat data, but source `{name}` is {}", src.format),
                    )
                    .label("only `chat-jsonl` sources have assistant turns")
                    .help("set `loss_on = \"all\"`, or mix only chat-jsonl sources"),
                );
            }
        }
    }
    Data {
        mix,
        packing: f
            .opt(cx, "packing", decode::choice(Packing::WORDS))
            .and_then(Packing::from_word)
            .unwrap_or(Packing::BestFit),
        loss_on,
    }
}

fn decode_optim(cx: &mut Cx, stage: &Fields) -> Optim {
    let mut optim =
        Optim { kind: "adamw".into(), lr: 3e-4, betas: [0.9, 0.95], eps: 1e-8, weight_decay: 0.1, grad_clip: 1.0 };
    let Some(node) = stage.get("optim") else { return optim };
    let f = Fields::of(cx, node, &stage.child_path("optim"), OPTIM_KEYS);
    f.check_unknown(cx);
    if let Some(k) = f.opt(cx, "kind", decode::choice(&["adamw"])) {
        optim.kind = k.into();
    }
    let num = |cx: &mut Cx, key: &str, slot: &mut f64, ok: fn(f64) -> bool, what: &str| {
        if let Some(v) = f.opt(cx, key, decode::float) {
            check_range(cx, &f.child_path(key), v, ok(v), what);
            *slot = v;
        }
    };
    num(cx, "lr", &mut optim.lr, |v| v > 0.0, "a learning rate > 0");
    num(cx, "eps", &mut optim.eps, |v| v > 0.0, "a number > 0");
    num(cx, "weight_decay", &mut optim.weight_decay, |v| v >= 0.0, "a number ≥ 0");
    num(cx, "grad_clip", &mut optim.grad_clip, |v| v >= 0.0, "a norm ≥ 0 (0 turns clipping off)");
    if let Some(node) = f.get("betas") {
        let path = f.child_path("betas");
        cx.origins.insert(path.clone(), node.origin.clone());
        match &node.val {
            Val::Array(items) if items.len() == 2 => {
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    cx.origins.insert(p.clone(), item.origin.clone());
                    if let Some(b) = decode::float(cx, item, &p) {
                        check_range(cx, &p, b, (0.0..1.0).contains(&b), "a beta in [0, 1)");
                        optim.betas[i] = b;
                    }
                }
            }
            _ => cx.diags.push(
                Diagnostic::new(&node.origin, format!("`{path}` must be two numbers")).label("expected `[0.9, 0.95]`"),
            ),
        }
    }
    optim
}

fn decode_peft(cx: &mut Cx, node: &Node, path: &str) -> Peft {
    let f = Fields::of(cx, node, path, PEFT_KEYS);
    f.check_unknown(cx);
    let method = f
        .opt(cx, "method", decode::choice(PeftMethod::WORDS))
        .and_then(PeftMethod::from_word)
        .unwrap_or(PeftMethod::Lora);
    let rank = f.opt(cx, "rank", decode::size(1, 1 << 16)).unwrap_or(8);
    let alpha = f.opt(cx, "alpha", decode::float).unwrap_or(16.0);
    check_range(cx, &f.child_path("alpha"), alpha, alpha > 0.0, "a number > 0");
    let dropout = f.opt(cx, "dropout", decode::float).unwrap_or(0.0);
    check_range(cx, &f.child_path("dropout"), dropout, (0.0..1.0).contains(&dropout), "a probability in [0, 1)");
    let targets = match f.opt(cx, "targets", decode::strings) {
        Some(list) => {
            for (t, origin) in &list {
                if !PEFT_MODULES.contains(&t.as_str()) {
                    let mut d = Diagnostic::new(origin, format!("`{t}` names no module of the llama architecture"))
                        .label(format!("expected one of: {}", PEFT_MODULES.join(", ")));
                    if let Some(h) = suggestion(t, PEFT_MODULES.iter().copied()) {
                        d = d.help(h);
                    }
                    cx.diags.push(d);
                }
            }
            if list.is_empty() {
                cx.diags.push(
                    Diagnostic::new(&f.origin, format!("`{path}.targets` is empty")).label("expected modules to adapt"),
                );
            }
            let mut names: Vec<String> = list.into_iter().map(|(t, _)| t).collect();
            names.sort_by_key(|t| PEFT_MODULES.iter().position(|m| m == t));
            names.dedup();
            names
        }
        None => vec!["q_proj".into(), "v_proj".into()],
    };
    Peft { method, rank, alpha, dropout, targets }
}

fn decode_distill(cx: &mut Cx, node: &Node, path: &str) -> Distill {
    let f = Fields::of(cx, node, path, DISTILL_KEYS);
    f.check_unknown(cx);
    let loss = f
        .opt(cx, "loss", decode::choice(DistillLoss::WORDS))
        .and_then(DistillLoss::from_word)
        .unwrap_or(DistillLoss::ForwardKl);
    let temperature = f.opt(cx, "temperature", decode::float).unwrap_or(1.0);
    check_range(cx, &f.child_path("temperature"), temperature, temperature > 0.0, "a temperature > 0");
    let alpha = f.opt(cx, "alpha", decode::float).unwrap_or(0.5);
    check_range(cx, &f.child_path("alpha"), alpha, (0.0..=1.0).contains(&alpha), "a weight in [0, 1]");
    Distill { loss, temperature, alpha }
}

/// A `teacher` entry that is no stage's name names a checkpoint when it looks like a path
/// (stage names hold neither `/` nor `.`) or something by that name exists.
fn is_path(entry: &str, base_dir: &Path) -> bool {
    entry.contains('/') || entry.contains('.') || base_dir.join(entry).exists()
}

/// Read a checkpoint a stage imports, or explain in a diagnostic at `origin` why it cannot be.
fn read_checkpoint(cx: &mut Cx, path: &Path, written: &str, origin: &Origin) -> Option<CheckpointInfo> {
    match inspect(path) {
        Ok(info) => Some(info),
        Err(why) => {
            cx.diags.push(
                Diagnostic::new(origin, format!("cannot import `{written}`: {why}"))
                    .label("expected a Hugging Face model folder, a .safetensors file or a .gguf file"),
            );
            None
        }
    }
}

/// A checkpoint that carries a tokenizer must carry the recipe's: the same ids for the same
/// strings.
fn check_same_tokenizer(
    cx: &mut Cx,
    stage: &str,
    info: &CheckpointInfo,
    written: &str,
    origin: &Origin,
    tokenizer: Option<&Tokenizer>,
) {
    let (Some(theirs), Some(ours)) = (&info.tokenizer, tokenizer) else { return };
    let same = matches!(ours, Tokenizer::File { fingerprint, .. } if *fingerprint == theirs.fingerprint);
    if !same {
        let what = match ours {
            Tokenizer::File { written, .. } => format!("`{written}`"),
            Tokenizer::Train(_) => "the tokenizer this recipe trains".into(),
        };
        cx.diags.push(
            Diagnostic::new(origin, format!("stage `{stage}` uses `{written}`, whose tokenizer is not the recipe's"))
                .label(format!(
                    "the recipe tokenizes with {what} ({} tokens); the checkpoint was trained with {} tokens \
                     and other ids, so its logits would mean other tokens",
                    ours.vocab_size(),
                    theirs.vocab_size
                ))
                .help(format!("set `[tokenizer] path = \"{written}\"`")),
        );
    }
}

/// The architecture of a stage that imports `path`: the checkpoint's, with a diagnostic for
/// each field set beside `from` (in the stage's `model`, or in `[model]` when `from` is there)
/// to something else; fields of the less specific `[model]` give way to a stage's own `from`.
/// `max_seq_len` may only shrink.
fn import_architecture(
    cx: &mut Cx,
    stage: &str,
    overrides: &ModelSpec,
    spec: &ModelSpec,
    path: &Path,
    tokenizer: Option<&Tokenizer>,
) -> (ModelSpec, Option<(PathBuf, CheckpointFormat)>) {
    let written = spec.from.clone().unwrap_or_default();
    let from_path = model_field_path(stage, overrides, "from");
    let from_origin = cx.origins.get(&from_path).cloned().unwrap_or_default();
    let Some(info) = read_checkpoint(cx, path, &written, &from_origin) else { return (spec.clone(), None) };
    check_same_tokenizer(cx, stage, &info, &written, &from_origin, tokenizer);
    let mut arch = info.arch.clone();
    if let Some(kv) = info.kv_width_of_unknown_heads {
        match spec.n_heads {
            Some(n_heads) => {
                let head_dim = arch.d_model.unwrap_or(0) / n_heads.max(1);
                arch.n_heads = Some(n_heads);
                arch.n_kv_heads = Some(kv / head_dim.max(1));
            }
            None => cx.diags.push(
                Diagnostic::new(&from_origin, format!("`{written}` has no config.json beside it"))
                    .label("tensor shapes do not tell the number of attention heads")
                    .help("set `n_heads` in the stage's model, or put the model's config.json beside the file"),
            ),
        }
    }
    let theirs = serde_json::to_value(&arch).expect("plain struct");
    let beside_from = if overrides.from.is_some() { overrides } else { spec };
    let mine = serde_json::to_value(beside_from).expect("plain struct");
    for field in crate::model::MODEL_KEYS {
        let (Some(t), Some(m)) = (theirs.get(field), mine.get(field)) else { continue };
        let differs = match (t.as_f64(), m.as_f64()) {
            (Some(t), Some(m)) if *field == "max_seq_len" => m > t,
            (Some(t), Some(m)) => (t - m).abs() > 1e-6 * t.abs().max(m.abs()),
            _ => t != m,
        };
        if differs {
            let path = model_field_path(stage, overrides, field);
            let origin = cx.origins.get(&path).cloned().unwrap_or_default();
            let (bound, help) = match *field {
                "max_seq_len" => (format!("at most {t}"), "lower it or remove it".to_string()),
                _ => (t.to_string(), format!("remove `{field}`: the architecture comes from the checkpoint")),
            };
            cx.diags.push(
                Diagnostic::new(&origin, format!("`{path}` is {m}, but `{written}` has {field} = {t}"))
                    .label(format!("stage `{stage}` imports `{written}`, so {field} must be {bound}"))
                    .help(help),
            );
        }
    }
    // The recipe may train on shorter sequences than the checkpoint supports.
    let max_seq_len = match (spec.max_seq_len, arch.max_seq_len) {
        (Some(wanted), Some(most)) => Some(wanted.min(most)),
        (wanted, most) => wanted.or(most),
    };
    let merged = ModelSpec { max_seq_len, init_std: spec.init_std, from: spec.from.clone(), ..arch };
    (merged, Some((path.to_path_buf(), info.format)))
}

/// A teacher checkpoint: its architecture comes whole from the checkpoint.
fn import_teacher(
    cx: &mut Cx,
    stage: &str,
    written: &str,
    origin: &Origin,
    base_dir: &Path,
    tokenizer: Option<&Tokenizer>,
) -> Option<Import> {
    let path = base_dir.join(written);
    let info = read_checkpoint(cx, &path, written, origin)?;
    check_same_tokenizer(cx, stage, &info, written, origin, tokenizer);
    if info.kv_width_of_unknown_heads.is_some() {
        cx.diags.push(
            Diagnostic::new(origin, format!("teacher `{written}` has no config.json beside it"))
                .label("a teacher's architecture must come whole from its checkpoint")
                .help("point at the model's folder, or put its config.json beside the file"),
        );
        return None;
    }
    let model = info.arch.resolve(None);
    Some(Import { written: written.to_string(), path, format: info.format, model })
}

/// `after` and `teacher` must form no cycle; a cycle is named in full.
fn check_stage_graph(cx: &mut Cx, stages: &[Stage]) {
    let deps = |s: &Stage| -> Vec<String> {
        s.after.iter().chain(s.teacher.iter()).filter(|d| **d != s.name).cloned().collect()
    };
    // 0 = unvisited, 1 = on the current path, 2 = done
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    let mut reported = false;
    fn visit<'a>(
        name: &'a str,
        stages: &'a [Stage],
        deps: &dyn Fn(&Stage) -> Vec<String>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
        found: &mut Option<Vec<String>>,
    ) {
        if found.is_some() {
            return;
        }
        match state.get(name) {
            Some(2) => return,
            Some(1) => {
                let start = path.iter().position(|p| *p == name).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(name.to_string());
                *found = Some(cycle);
                return;
            }
            _ => {}
        }
        let Some(stage) = stages.iter().find(|s| s.name == name) else { return };
        state.insert(name, 1);
        path.push(name);
        for d in deps(stage) {
            if let Some(target) = stages.iter().find(|s| s.name == d) {
                visit(&target.name, stages, deps, state, path, found);
            }
        }
        path.pop();
        state.insert(name, 2);
    }
    for s in stages {
        let mut found = None;
        visit(&s.name, stages, &deps, &mut state, &mut Vec::new(), &mut found);
        if let (Some(cycle), false) = (found, reported) {
            reported = true;
            let first = &cycle[0];
            let origin = cx
                .origins
                .get(&format!("stages.{first}.after"))
                .or_else(|| cx.origins.get(&format!("stages.{first}.teacher")))
                .cloned()
                .unwrap_or_default();
            cx.diags.push(
                Diagnostic::new(&origin, format!("the stages form a cycle: {}", cycle.join(" → ")))
                    .label("`after` and `teacher` must point to earlier stages"),
            );
        }
    }
}

/// A stage that starts from another's weights must share its shape, and PEFT needs weights to
/// adapt.
fn check_starting_weights(cx: &mut Cx, stages: &[Stage]) {
    for s in stages {
        if let Some(parent) = s.after.as_ref().and_then(|a| stages.iter().find(|p| &p.name == a)) {
            let mine = serde_json::to_value(&s.model).expect("plain struct");
            let theirs = serde_json::to_value(&parent.model).expect("plain struct");
            for field in crate::model::SHAPE_FIELDS {
                if mine[field] != theirs[field] {
                    let path = model_field_path(&s.name, &s.model_overrides, field);
                    let origin = cx
                        .origins
                        .get(&path)
                        .or_else(|| cx.origins.get(&format!("stages.{}.after", s.name)))
                        .cloned()
                        .unwrap_or_default();
                    cx.diags.push(
                        Diagnostic::new(
                            &origin,
                            format!(
                                "stage `{}` starts from `{}`'s weights but its {field} is {} where `{}`'s is {}",
                                s.name, parent.name, mine[field], parent.name, theirs[field]
                            ),
                        )
                        .label("a stage that continues another must keep its architecture"),
                    );
                }
            }
        }
        let teachers =
            s.teacher.iter().filter_map(|t| stages.iter().find(|p| &p.name == t)).map(|p| (&p.name, &p.model));
        let imported = s.teacher_checkpoints.iter().map(|t| (&t.written, &t.model));
        for (teacher, model) in teachers.chain(imported) {
            if model.vocab_size != s.model.vocab_size {
                let origin = cx.origins.get(&format!("stages.{}.teacher", s.name)).cloned().unwrap_or_default();
                cx.diags.push(
                    Diagnostic::new(
                        &origin,
                        format!(
                            "teacher `{teacher}` has {} logits per token but student `{}` has {}",
                            model.vocab_size, s.name, s.model.vocab_size
                        ),
                    )
                    .label("distillation compares their distributions token by token")
                    .help("give the student the teacher's `vocab_size`"),
                );
            }
        }
        if s.peft.is_some() && s.after.is_none() && s.model.from.is_none() {
            let origin = cx.origins.get(&format!("stages.{}.peft", s.name)).cloned().unwrap_or_default();
            cx.diags.push(
                Diagnostic::new(
                    &origin,
                    format!("stage `{}` adapts a model with PEFT but starts from random weights", s.name),
                )
                .label("PEFT freezes the base weights, so they must come from somewhere")
                .help("set `after = \"STAGE\"` or `model.from = \"path\"`"),
            );
        }
    }
}

impl Schedule {
    fn decode(cx: &mut Cx, node: Option<&Node>, path: &str, steps: u64) -> Schedule {
        const KEYS: &[&str] = &["kind", "warmup", "decay", "min_lr_ratio", "power"];
        let mut s = Schedule::with_defaults(ScheduleKind::Cosine);
        let Some(node) = node else { return s };
        let f = Fields::of(cx, node, path, KEYS);
        f.check_unknown(cx);
        if let Some(kind) = f.opt(cx, "kind", decode::choice(ScheduleKind::WORDS)).and_then(ScheduleKind::from_word) {
            s = Schedule::with_defaults(kind);
        }
        let warmup = f.opt(cx, "warmup", decode::count).unwrap_or(0);
        if warmup >= steps && warmup > 0 {
            let origin = cx.origins.get(&f.child_path("warmup")).cloned().unwrap_or_default();
            cx.diags.push(
                Diagnostic::new(&origin, format!("warmup ({warmup}) must be less than the stage's steps ({steps})"))
                    .label("warmup counts optimizer steps"),
            );
        }
        s.warmup = warmup;
        let decay = f.opt(cx, "decay", decode::float);
        only_for(cx, &f, "decay", decay.is_some(), s.kind == ScheduleKind::Wsd, "kind = \"wsd\"");
        if let (Some(d), Some(slot)) = (decay, s.decay.as_mut()) {
            check_range(cx, &f.child_path("decay"), d, d > 0.0 && d <= 1.0, "a fraction of the stage in (0, 1]");
            *slot = d;
            if warmup.saturating_add((d * steps as f64).round() as u64) > steps {
                let origin = cx.origins.get(&f.child_path("decay")).cloned().unwrap_or_default();
                cx.diags.push(
                    Diagnostic::new(&origin, "warmup and decay together are longer than the stage")
                        .label(format!("{warmup} warmup + {} decay steps > {steps}", (d * steps as f64).round())),
                );
            }
        }
        let min_lr_ratio = f.opt(cx, "min_lr_ratio", decode::float);
        only_for(
            cx,
            &f,
            "min_lr_ratio",
            min_lr_ratio.is_some(),
            s.kind != ScheduleKind::Constant,
            "a decaying schedule",
        );
        if let (Some(m), Some(slot)) = (min_lr_ratio, s.min_lr_ratio.as_mut()) {
            check_range(cx, &f.child_path("min_lr_ratio"), m, (0.0..=1.0).contains(&m), "a ratio in [0, 1]");
            *slot = m;
        }
        let power = f.opt(cx, "power", decode::float);
        only_for(cx, &f, "power", power.is_some(), s.kind == ScheduleKind::Power, "kind = \"power\"");
        if let (Some(p), Some(slot)) = (power, s.power.as_mut()) {
            check_range(cx, &f.child_path("power"), p, p > 0.0, "an exponent > 0");
            *slot = p;
        }
        s
    }
}
