//! What a checkpoint on disk says about itself, read without loading its weights: the format,
//! the architecture, and the tokenizer it was trained with. Validation asks a
//! [`CheckpointReader`] for these, to take a stage's architecture from the checkpoint it
//! imports and to refuse a recipe that contradicts it or pairs it with another tokenizer. The
//! `recipe-checkpoint` crate reads the files; this crate only says what it must answer, so the
//! recipe language needs no tensor library.

use std::path::{Path, PathBuf};

use crate::model::ModelSpec;
use crate::vocab::{ChatTemplate, CheckpointFormat, PeftMethod};

/// Reads checkpoint and tokenizer headers for validation.
pub trait CheckpointReader {
    /// A checkpoint's format, architecture and tokenizer; the error says what is wrong with it.
    fn inspect(&self, path: &Path) -> Result<CheckpointInfo, String>;
    /// What validation needs from a tokenizer file.
    fn tokenizer_facts(&self, file: &TokenizerFile) -> Result<TokenizerFacts, String>;
    /// A `peft` adapter folder's settings and tensor shapes.
    fn adapter(&self, path: &Path) -> Result<AdapterInfo, String>;
}

/// What a `peft` LoRA or DoRA adapter (`adapter_config.json` and `adapter_model.safetensors`)
/// says about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterInfo {
    /// `lora`, or `dora` when it was saved with `use_dora`.
    pub method: PeftMethod,
    pub rank: u32,
    pub alpha: f64,
    /// Scaled by alpha / √rank (`use_rslora`).
    pub rslora: bool,
    /// The projections it adapts (`target_modules`).
    pub targets: Vec<String>,
    /// Each tensor's shape, by its name in the model (without `peft`'s `base_model.model.`).
    pub shapes: std::collections::BTreeMap<String, Vec<u64>>,
}

/// A checkpoint's self-description.
#[derive(Clone, Debug)]
pub struct CheckpointInfo {
    pub path: PathBuf,
    pub format: CheckpointFormat,
    /// The architecture fields the checkpoint fixes.
    pub arch: ModelSpec,
    /// Set when `arch` came from tensor shapes alone, so the head count is unknown: the
    /// key/value projection's width, which gives `n_kv_heads` once the recipe gives `n_heads`.
    pub kv_width_of_unknown_heads: Option<u32>,
    /// The tokenizer stored with the weights, when there is one.
    pub tokenizer: Option<TokenizerFacts>,
}

/// What validation needs to know about a tokenizer.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerFacts {
    /// One more than the largest id.
    pub vocab_size: u32,
    /// The chat templates whose special tokens it has.
    pub templates: Vec<ChatTemplate>,
    /// blake3 over every (id, token) pair: equal exactly when two tokenizers map the same
    /// strings to the same ids, whatever file they were read from.
    pub fingerprint: String,
    /// The token it starts every text with: [`leading_special_token`] of its post-processor.
    pub bos: Option<u32>,
    /// The chat template stored with it, when there is one (then `templates` holds
    /// [`ChatTemplate::Tokenizer`]).
    pub own_template: Option<OwnChatTemplate>,
}

/// A tokenizer's own chat template as `transformers` keeps it: `chat_template.jinja` beside
/// `tokenizer.json`, or `chat_template` in its `tokenizer_config.json`, or a `.gguf`'s
/// `tokenizer.chat_template`.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnChatTemplate {
    /// The template, in Jinja.
    pub jinja: String,
    /// The special tokens it may name, as `apply_chat_template` passes them: `bos_token`,
    /// `eos_token`, `unk_token`, `pad_token` (those the tokenizer's config sets).
    pub tokens: std::collections::BTreeMap<String, String>,
}

/// The special token a tokenizer's post-processor (as `tokenizer.json` writes it) puts before a
/// single sequence — Llama 3's `<|begin_of_text|>`, Gemma's `<bos>` — which `transformers`
/// adds wherever it encodes a text; none for the others (Qwen's, SmolLM's).
pub fn leading_special_token(post_processor: &serde_json::Value) -> Option<u32> {
    match post_processor["type"].as_str()? {
        "TemplateProcessing" => {
            let first = post_processor["single"][0]["SpecialToken"]["id"].as_str()?;
            u32::try_from(post_processor["special_tokens"][first]["ids"][0].as_u64()?).ok()
        }
        "Sequence" => post_processor["processors"].as_array()?.iter().find_map(leading_special_token),
        _ => None,
    }
}

/// Where a tokenizer is read from: a `tokenizer.json`, or a `.gguf`'s metadata. A model folder
/// means its `tokenizer.json`.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenizerFile {
    Json(PathBuf),
    Gguf(PathBuf),
}

impl TokenizerFile {
    pub fn path(&self) -> &Path {
        match self {
            TokenizerFile::Json(p) | TokenizerFile::Gguf(p) => p,
        }
    }

    pub fn locate(path: &Path) -> TokenizerFile {
        if is_gguf(path) {
            TokenizerFile::Gguf(path.to_path_buf())
        } else if path.is_dir() {
            TokenizerFile::Json(path.join("tokenizer.json"))
        } else {
            TokenizerFile::Json(path.to_path_buf())
        }
    }
}

/// Whether `path` names a llama.cpp `.gguf` file.
pub fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gguf")
}
