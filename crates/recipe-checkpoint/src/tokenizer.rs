//! Tokenizer files, a `tokenizer.json` or a `.gguf`'s metadata: loaded whole for the pipeline,
//! or summarised (size, chat templates' tokens, a fingerprint of the vocabulary) for
//! validation; and the chat template stored with one.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use recipe_spec::{ChatTemplate, OwnChatTemplate, TokenizerFacts, TokenizerFile};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::gguf;

/// The file `transformers` keeps a chat template in beside `tokenizer.json`.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// The special tokens `apply_chat_template` passes to a template by name.
const TEMPLATE_TOKENS: [&str; 4] = ["bos_token", "eos_token", "unk_token", "pad_token"];

/// The tokenizer a file holds.
pub fn read_tokenizer(file: &TokenizerFile) -> Result<Tokenizer, String> {
    match file {
        TokenizerFile::Json(path) => Tokenizer::from_file(path).map_err(|e| format!("not a tokenizer: {e}")),
        TokenizerFile::Gguf(path) => gguf::tokenizer(path),
    }
}

/// Read what validation needs from a tokenizer file.
pub(crate) fn tokenizer_facts(file: &TokenizerFile) -> Result<TokenizerFacts, String> {
    let path = match file {
        TokenizerFile::Gguf(path) => return gguf_facts(&gguf::read(path)?),
        TokenizerFile::Json(path) => path,
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    let vocab = json.pointer("/model/vocab").ok_or("no `model.vocab` in it")?;
    let mut by_id: Vec<(u64, &str)> = match vocab {
        Value::Object(map) => map.iter().filter_map(|(t, id)| Some((id.as_u64()?, t.as_str()))).collect(),
        // Unigram: a list of [token, score] pairs.
        Value::Array(items) => {
            items.iter().enumerate().filter_map(|(i, item)| Some((i as u64, item.get(0)?.as_str()?))).collect()
        }
        _ => return Err("`model.vocab` is neither a map nor a list".into()),
    };
    for t in json["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(content)) = (t["id"].as_u64(), t["content"].as_str()) {
            by_id.push((id, content));
        }
    }
    if by_id.is_empty() {
        return Err("its vocabulary is empty".into());
    }
    if by_id.iter().any(|(id, _)| *id >= u32::MAX as u64) {
        return Err("its vocabulary is too large".into());
    }
    let own_template = read_own_template(file)?;
    Ok(TokenizerFacts {
        bos: recipe_spec::leading_special_token(&json["post_processor"]),
        ..facts_of(by_id, own_template)
    })
}

/// The facts of the tokenizer in a GGUF file's metadata.
pub(crate) fn gguf_facts(g: &gguf_file::Content) -> Result<TokenizerFacts, String> {
    let (tokens, bos) = gguf::tokens(g)?;
    let own_template = gguf_own_template(g, &tokens);
    Ok(TokenizerFacts {
        bos,
        ..facts_of(tokens.iter().enumerate().map(|(i, t)| (i as u64, t.as_str())).collect(), own_template)
    })
}

/// The chat template stored with a tokenizer: beside a `tokenizer.json`, `chat_template.jinja`,
/// else `chat_template` in `tokenizer_config.json` (one string, or a list of named templates of
/// which `default` is taken); in a `.gguf`, `tokenizer.chat_template`.
pub fn read_own_template(file: &TokenizerFile) -> Result<Option<OwnChatTemplate>, String> {
    let path = match file {
        TokenizerFile::Gguf(path) => {
            let g = gguf::read(path)?;
            return Ok(gguf_own_template(&g, &gguf::tokens(&g)?.0));
        }
        TokenizerFile::Json(path) => path,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let read = |name: &str| -> Result<Option<String>, String> {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", dir.join(name).display())),
        }
    };
    let config: Value = match read(TOKENIZER_CONFIG_FILE)? {
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| format!("{}: not JSON: {e}", dir.join(TOKENIZER_CONFIG_FILE).display()))?,
        None => Value::Null,
    };
    let jinja = match (read(CHAT_TEMPLATE_FILE)?, &config["chat_template"]) {
        (Some(jinja), _) => jinja,
        (None, Value::String(jinja)) => jinja.clone(),
        (None, Value::Array(named)) => {
            let template = |t: &Value| t["template"].as_str().map(str::to_string);
            let default = named.iter().find(|t| t["name"] == "default").or(named.first());
            match default.and_then(template) {
                Some(jinja) => jinja,
                None => return Err(format!("{}: `chat_template` names no template", TOKENIZER_CONFIG_FILE)),
            }
        }
        _ => return Ok(None),
    };
    // A token is written as its string, or as an added token's fields.
    let tokens = TEMPLATE_TOKENS
        .into_iter()
        .filter_map(|name| {
            let value = &config[name];
            let text = value.as_str().or_else(|| value["content"].as_str())?;
            Some((name.to_string(), text.to_string()))
        })
        .collect();
    Ok(Some(OwnChatTemplate { jinja, tokens }))
}

/// Store a tokenizer's own chat template in `dir` beside its `tokenizer.json`, where
/// [`read_own_template`] finds it.
pub fn write_own_template(dir: &Path, own: &OwnChatTemplate) -> Result<(), String> {
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).map_err(|e| format!("{name}: {e}"));
    write(CHAT_TEMPLATE_FILE, own.jinja.as_bytes())?;
    write(TOKENIZER_CONFIG_FILE, &serde_json::to_vec_pretty(&own.tokens).expect("strings"))
}

fn gguf_own_template(g: &gguf_file::Content, tokens: &[String]) -> Option<OwnChatTemplate> {
    let jinja = g.metadata.get("tokenizer.chat_template")?.to_string().ok()?.clone();
    let token = |key: &str| Some(tokens.get(g.metadata.get(key)?.to_u32().ok()? as usize)?.clone());
    let tokens: BTreeMap<String, String> =
        [("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id")]
            .into_iter()
            .filter_map(|(name, key)| Some((name.to_string(), token(key)?)))
            .collect();
    Some(OwnChatTemplate { jinja, tokens })
}

fn facts_of(mut by_id: Vec<(u64, &str)>, own_template: Option<OwnChatTemplate>) -> TokenizerFacts {
    by_id.sort();
    by_id.dedup();
    let templates = ChatTemplate::ALL
        .into_iter()
        .filter(|template| match template {
            ChatTemplate::Tokenizer => own_template.is_some(),
            _ => template.tokens().iter().all(|c| by_id.iter().any(|(_, t)| t == c)),
        })
        .collect();
    let mut hasher = blake3::Hasher::new();
    for (id, token) in &by_id {
        hasher.update(&id.to_le_bytes());
        hasher.update(&(token.len() as u64).to_le_bytes());
        hasher.update(token.as_bytes());
    }
    TokenizerFacts {
        vocab_size: by_id.last().map_or(0, |(id, _)| *id as u32 + 1),
        templates,
        fingerprint: hasher.finalize().to_hex().to_string(),
        bos: None,
        own_template,
    }
}
