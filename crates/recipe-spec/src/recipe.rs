//! The whole recipe: the `[recipe]` table, loading and checking a file, and how the tables
//! fit together. Each table's type, defaults and decoding live in its own module.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::checkpoint::{CheckpointReader, TokenizerFile};
use crate::checks::{check_merges, check_stage_graph, check_starting_weights};
use crate::decode::{self, Cx, Fields};
use crate::diag::{Diagnostic, Origin, SourceText};
use crate::model::{ModelSpec, check_vocab, model_field_path};
use crate::source::{Source, decode_source};
use crate::stage::{Stage, StageContext, decode_stage};
use crate::tokenizer::{Tokenizer, check_chat_tokens, decode_tokenizer};
use crate::tree::{Node, Table, Val};

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

const TOP_KEYS: &[&str] = &["recipe", "model", "tokenizer", "sources", "stages"];

const RECIPE_KEYS: &[&str] = &["name", "seed"];

/// A recipe that failed to load: every diagnostic, and the texts they point into.
#[derive(Debug)]
pub struct Invalid {
    pub source: SourceText,
    pub diagnostics: Vec<Diagnostic>,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source.render_all(&self.diagnostics))
    }
}

impl std::error::Error for Invalid {}

impl Recipe {
    /// Read, parse, apply `--set` overrides and check a recipe file; `checkpoints` reads the
    /// checkpoints and tokenizer files it names.
    pub fn load(path: &Path, sets: &[String], checkpoints: &dyn CheckpointReader) -> Result<Recipe, Box<Invalid>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let source = SourceText { path: path.to_path_buf(), text: String::new(), sets: sets.to_vec() };
                let d = Diagnostic::new(&Origin::Default, format!("cannot read {}: {e}", path.display()));
                return Err(Box::new(Invalid { source, diagnostics: vec![d] }));
            }
        };
        Recipe::parse(path, &text, sets, checkpoints)
    }

    /// Like [`Recipe::load`], for a recipe already in memory; `path` names it and anchors its
    /// relative paths.
    pub fn parse(
        path: &Path,
        text: &str,
        sets: &[String],
        checkpoints: &dyn CheckpointReader,
    ) -> Result<Recipe, Box<Invalid>> {
        let source = SourceText { path: path.to_path_buf(), text: text.to_string(), sets: sets.to_vec() };
        let (mut doc, mut diags) = crate::tree::parse_document(text);
        for (i, set) in sets.iter().enumerate() {
            if let Err(d) = crate::tree::apply_set(&mut doc, i, set) {
                diags.push(d);
            }
        }
        let mut cx = Cx { diags, ..Cx::default() };
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let recipe = decode_recipe(&mut cx, &doc, path, &base_dir, checkpoints);
        if cx.diags.is_empty() {
            Ok(recipe)
        } else {
            let mut diagnostics = cx.diags;
            diagnostics.sort_by_key(|d| match &d.origin {
                Origin::File(r) => (0, 0, r.start),
                Origin::Set { index, range } => (1, *index, range.start),
                Origin::Default => (2, 0, 0),
            });
            // The same finding reached twice (a `[model]` error once for each stage that
            // inherits it) is said once, wherever the two landed in the sort.
            let mut said: Vec<Diagnostic> = Vec::new();
            diagnostics.retain(|d| {
                let new = !said.contains(d);
                if new {
                    said.push(d.clone());
                }
                new
            });
            Err(Box::new(Invalid { source, diagnostics }))
        }
    }

    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// A checkpoint path written in the recipe: against the recipe's folder, or a hub id in
    /// the Hugging Face cache ([`crate::hub::locate`]).
    pub fn resolve(&self, written: &str) -> PathBuf {
        crate::hub::locate(&self.base_dir, written)
    }

    /// The path at which a stage's model field was set: the stage's override if it has one,
    /// else `[model]`.
    pub fn model_field_path(&self, stage: &Stage, field: &str) -> String {
        model_field_path(&stage.name, &stage.model_overrides, field)
    }
}

fn decode_recipe(cx: &mut Cx, doc: &Table, path: &Path, base_dir: &Path, checkpoints: &dyn CheckpointReader) -> Recipe {
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

    let tokenizer = decode_tokenizer(cx, checkpoints, top.get("tokenizer"), &root.origin, &source_names, base_dir);
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
    // A stage that starts from another inherits its architecture (an imported one included;
    // deeper by the stacking factor when grown), so the stage it starts from is decoded first.
    let mut decoded: Vec<Option<Stage>> = stage_nodes.iter().map(|_| None).collect();
    for i in continuations_last(&stage_nodes) {
        let (name, node) = &stage_nodes[i];
        let start = start_of(node);
        let parent = start.as_ref().and_then(|(a, _)| stage_names.iter().position(|n| n == a));
        let inherited = parent.and_then(|p| decoded[p].as_ref()).map(|p| {
            let factor = start.as_ref().map_or(1, |(_, factor)| *factor);
            // Stacked in order, the listed layers (NoPE, full attention) repeat with their blocks.
            let n = p.model.n_layers;
            let mut spec = p
                .model
                .continued()
                .map_layer_lists(|layers| (0..factor).flat_map(|k| layers.iter().map(move |l| l + k * n)).collect());
            spec.n_layers = spec.n_layers.map(|n| n.saturating_mul(factor));
            spec
        });
        let context = StageContext {
            model_defaults: inherited.as_ref().unwrap_or(&model),
            tokenizer: tokenizer.as_ref(),
            sources: &sources,
            stage_names: &stage_names,
            base_dir,
            checkpoints,
        };
        decoded[i] = Some(decode_stage(cx, name, node, &context));
    }
    let stages: Vec<Stage> = decoded.into_iter().map(|s| s.expect("every stage decoded")).collect();

    check_stage_graph(cx, &stages);
    check_starting_weights(cx, &stages);
    check_merges(cx, &stages);

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
            templates: Vec::new(),
            fingerprint: String::new(),
            bos: None,
            own_template: None,
        }),
        sources,
        stages,
        origins: std::mem::take(&mut cx.origins),
        warnings,
    }
}

/// The stage whose architecture a stage's table inherits, as written in `after`, a merge's
/// first input or `init.from`, with how many times `init` stacks its layers (else 1).
fn start_of(node: &Node) -> Option<(String, u32)> {
    fn get<'a>(val: &'a Val, key: &str) -> Option<&'a Val> {
        let Val::Table(t) = val else { return None };
        t.entries.iter().find(|e| e.key == key).map(|e| &e.node.val)
    }
    if let Some(Val::Str(after)) = get(&node.val, "after") {
        return Some((after.clone(), 1));
    }
    // A merge has the architecture of its first input.
    if let Some(Val::Array(inputs)) = get(&node.val, "inputs")
        && let Some(Val::Str(first)) = inputs.first().map(|n| &n.val)
    {
        return Some((first.clone(), 1));
    }
    let init = get(&node.val, "init")?;
    let Some(Val::Str(from)) = get(init, "from") else { return None };
    let factor = match get(init, "factor") {
        Some(Val::Int(f)) => u32::try_from(*f).ok()?,
        _ => 2,
    };
    Some((from.clone(), factor))
}

/// The stages' indices, each after the stage it continues; declaration order otherwise, and
/// where `after` forms a cycle (reported by `check_stage_graph`).
fn continuations_last(stages: &[(String, &Node)]) -> Vec<usize> {
    let mut order = Vec::new();
    let mut waiting: Vec<usize> = (0..stages.len()).collect();
    while !waiting.is_empty() {
        let ready = waiting
            .iter()
            .position(|&i| {
                let parent = start_of(stages[i].1).and_then(|(a, _)| stages.iter().position(|(n, _)| *n == a));
                parent.is_none_or(|p| p == i || order.contains(&p))
            })
            .unwrap_or(0);
        order.push(waiting.remove(ready));
    }
    order
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

/// The longest name a recipe, source or stage may have.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` may name a recipe, source or stage. Names become directory names and node
/// names, so they are kept plain: no separator, no `..`, nothing a file system or a shell
/// treats specially, and short.
pub fn is_plain_name(name: &str) -> bool {
    name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.len() <= MAX_NAME_LEN
}

fn check_name(cx: &mut Cx, path: &str, name: &str) {
    if !is_plain_name(name) {
        let origin = cx.origins.get(path).cloned().unwrap_or_default();
        let shown: String = name.escape_debug().take(MAX_NAME_LEN + 8).collect();
        cx.diags.push(Diagnostic::new(&origin, format!("invalid name `{shown}`")).label(format!(
            "expected a letter or digit, then letters, digits, `_` and `-`, at most {MAX_NAME_LEN} in all"
        )));
    }
}
