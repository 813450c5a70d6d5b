//! Tokenizer files, a `tokenizer.json` or a `.gguf`'s metadata: loaded whole for the pipeline,
//! or summarised (size, ChatML tokens, a fingerprint of the vocabulary) for validation.

use recipe_spec::{ChatTemplate, TokenizerFacts, TokenizerFile};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::gguf;

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
    Ok(TokenizerFacts { bos: recipe_spec::leading_special_token(&json["post_processor"]), ..facts_of(by_id) })
}

/// The facts of the tokenizer in a GGUF file's metadata.
pub(crate) fn gguf_facts(g: &candle_core::quantized::gguf_file::Content) -> Result<TokenizerFacts, String> {
    let tokens = gguf::tokens(g)?;
    Ok(facts_of(tokens.iter().enumerate().map(|(i, t)| (i as u64, t.as_str())).collect()))
}

fn facts_of(mut by_id: Vec<(u64, &str)>) -> TokenizerFacts {
    by_id.sort();
    by_id.dedup();
    let templates = ChatTemplate::ALL
        .into_iter()
        .filter(|template| template.tokens().iter().all(|c| by_id.iter().any(|(_, t)| t == c)))
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
    }
}
