//! The tokenization cache: one source's documents as token ids in a memory-mappable file, with a
//! document index, the holdout split and (for chat) the assistant mask.
//!
//! ```text
//! tokens.bin    u16 little-endian when the vocabulary fits, else u32; documents back to back
//! offsets.bin   n_docs + 1 little-endian u64 token offsets
//! holdout.bin   one byte per document: 1 = held out for evaluation
//! mask.bin      chat sources only: one byte per token, 1 = part of an assistant turn
//! pairs.bin     preference sources only: the first conversation's length per document
//! labels.bin    unpaired preference sources only: one byte per document, 1 = desirable
//! meta.json     counts, dtype, end-of-document id, blake3 of each file above
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use recipe_spec::{ChatTemplate, Source, SourceFormat, TokenDtype};
use serde::{Deserialize, Serialize};

use crate::chat::format_chat;
use crate::documents::{Doc, Message, TokenFile, read_source};
use crate::error::{DataError, Result};
use crate::pack::Conversation;
use crate::progress::Progress;
use crate::tokenizer::Tok;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreMeta {
    pub source: String,
    /// 2 or 4 bytes per token.
    pub token_bytes: u8,
    pub docs: u64,
    pub tokens: u64,
    pub holdout_docs: u64,
    pub holdout_tokens: u64,
    pub skipped_records: u64,
    pub empty_docs: u64,
    pub eos: u32,
    pub vocab_size: u32,
    pub chat: bool,
    /// Each document is a preference pair: the chosen conversation's tokens, then the
    /// rejected's, each masked on its final assistant turn only; `pairs.bin` holds the chosen
    /// one's length (a little-endian u32 per document).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pairs: bool,
    /// Each document is an unpaired record (KTO's), laid out as a pair: its prompt with its
    /// own response, then the same prompt with the record before it's response (for the KL
    /// estimate); `labels.bin` holds one byte per document, 1 for a desirable response.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub labels: bool,
    /// blake3 of each data file, by name, so that a damaged cache is found before it is
    /// trained on.
    #[serde(default)]
    pub checksums: std::collections::BTreeMap<String, String>,
}

/// Whether a document is held out: a hash of its content, so the split does not depend on
/// file order or on the run.
pub fn is_held_out(identity: &[u8], fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    let h = blake3::hash(identity);
    let x = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
    (x as f64 / u64::MAX as f64) < fraction
}

/// Read, split and tokenize a source into `dir` (which should be a staging folder that the
/// caller renames into place). Parallel over documents.
pub fn tokenize_source(source: &Source, tok: &Tok, dir: &Path, progress: &dyn Progress) -> Result<StoreMeta> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::in_file(dir, e.to_string()))?;
    if source.format == SourceFormat::Tokens {
        return copy_token_source(source, tok, dir, progress);
    }
    let documents = read_source(source)?;
    let vocab = tok.vocab_size();
    progress.start(&format!("tokenize {}", source.name), documents.docs.len() as u64);
    let template = source.template.unwrap_or(ChatTemplate::ChatMl);
    let docs = &documents.docs;
    let encoded: Vec<Encoded> = docs
        .par_iter()
        .enumerate()
        .map(|(i, doc)| {
            let held = is_held_out(&doc.identity(), source.holdout);
            // Two conversations one after the other, each masked on its last assistant turn.
            let two = |first: &[Message], second: &[Message]| -> Result<(Vec<u32>, Vec<u8>, u32)> {
                let (mut ids, mut mask) = final_turn(format_chat(tok, template, first)?);
                let first_len = ids.len() as u32;
                let (second_ids, second_mask) = final_turn(format_chat(tok, template, second)?);
                ids.extend(second_ids);
                mask.extend(second_mask);
                Ok((ids, mask, first_len))
            };
            let out = match doc {
                Doc::Text(t) => Encoded { ids: tok.encode_document(t)?, mask: None, held, chosen_len: 0, label: None },
                Doc::Chat(m) => {
                    let (ids, mask) = format_chat(tok, template, m)?;
                    Encoded { ids, mask: Some(mask), held, chosen_len: 0, label: None }
                }
                Doc::Preference { chosen, rejected } => {
                    let (ids, mask, chosen_len) = two(chosen, rejected)?;
                    Encoded { ids, mask: Some(mask), held, chosen_len, label: None }
                }
                // KTO's KL estimate scores the prompt with another record's response: the one
                // before it in the source (the last for the first).
                Doc::Unpaired { prompt, completion, desirable } => {
                    let Doc::Unpaired { completion: other, .. } = &docs[(i + docs.len() - 1) % docs.len()] else {
                        unreachable!("an unpaired source holds unpaired records only")
                    };
                    let (ids, mask, chosen_len) =
                        two(&[prompt.as_slice(), completion].concat(), &[prompt.as_slice(), other].concat())?;
                    Encoded { ids, mask: Some(mask), held, chosen_len, label: Some(*desirable) }
                }
                Doc::Tokens(_) => unreachable!("a tokens source is copied, not tokenized"),
            };
            progress.advance(1);
            Ok(out)
        })
        .collect::<Result<_>>()?;
    progress.finish();

    let token_bytes = token_bytes(vocab);
    let chat = source.format.is_chat();
    let pairs = source.format.is_preference();
    let labelled = source.format == SourceFormat::UnpairedPreferenceJsonl;
    let mut chosen_lens = Vec::new();
    let mut labels = Vec::new();
    let mut tokens = Vec::new();
    let mut offsets: Vec<u8> = 0u64.to_le_bytes().to_vec();
    let (mut holdout, mut mask) = (Vec::new(), Vec::new());
    let (mut total, mut holdout_docs, mut holdout_tokens) = (0u64, 0u64, 0u64);
    for Encoded { ids, mask: doc_mask, held, chosen_len, label } in &encoded {
        if pairs {
            chosen_lens.extend_from_slice(&chosen_len.to_le_bytes());
        }
        labels.extend(label.map(u8::from));
        for &t in ids {
            match token_bytes {
                2 => tokens.extend_from_slice(&(t as u16).to_le_bytes()),
                _ => tokens.extend_from_slice(&t.to_le_bytes()),
            }
        }
        if chat {
            mask.extend_from_slice(doc_mask.as_deref().unwrap_or(&[]));
        }
        total += ids.len() as u64;
        offsets.extend_from_slice(&total.to_le_bytes());
        holdout.push(u8::from(*held));
        if *held {
            holdout_docs += 1;
            holdout_tokens += ids.len() as u64;
        }
    }
    let meta = StoreMeta {
        source: source.name.clone(),
        token_bytes,
        docs: encoded.len() as u64,
        tokens: total,
        holdout_docs,
        holdout_tokens,
        skipped_records: documents.skipped as u64,
        empty_docs: documents.empty as u64,
        eos: tok.eos(),
        vocab_size: vocab,
        chat,
        pairs,
        labels: labelled,
        checksums: Default::default(),
    };
    write_synced(&dir.join("tokens.bin"), &tokens)?;
    let mut files = vec![("offsets.bin", offsets), ("holdout.bin", holdout)];
    if chat {
        files.push(("mask.bin", mask));
    }
    if pairs {
        files.push(("pairs.bin", chosen_lens));
    }
    if labelled {
        files.push(("labels.bin", labels));
    }
    finish_cache(dir, meta, blake3::hash(&tokens), files)
}

/// A document tokenized: its ids, a chat's assistant mask, whether it is held out, a
/// preference pair's chosen length (an unpaired record's own conversation's), and an unpaired
/// record's label.
struct Encoded {
    ids: Vec<u32>,
    mask: Option<Vec<u8>>,
    held: bool,
    chosen_len: u32,
    label: Option<bool>,
}

/// A formatted conversation's ids with its assistant mask narrowed to the last assistant turn
/// (the mask's last run of ones): the response a preference pair scores.
fn final_turn((ids, mut mask): (Vec<u32>, Vec<u8>)) -> (Vec<u32>, Vec<u8>) {
    let end = mask.iter().rposition(|&m| m == 1).map_or(0, |i| i + 1);
    let start = mask[..end].iter().rposition(|&m| m == 0).map_or(0, |i| i + 1);
    mask[..start].fill(0);
    (ids, mask)
}

/// Bytes per token in the cache: two while the vocabulary fits.
fn token_bytes(vocab: u32) -> u8 {
    if vocab <= 1 << 16 { 2 } else { 4 }
}

/// Write the cache's small files and `meta.json` with the checksum of every file;
/// `tokens.bin` is already written, with checksum `tokens`.
fn finish_cache(
    dir: &Path,
    mut meta: StoreMeta,
    tokens: blake3::Hash,
    files: Vec<(&str, Vec<u8>)>,
) -> Result<StoreMeta> {
    meta.checksums.insert("tokens.bin".into(), tokens.to_hex().to_string());
    for (name, bytes) in &files {
        write_synced(&dir.join(name), bytes)?;
        meta.checksums.insert(name.to_string(), blake3::hash(bytes).to_hex().to_string());
    }
    write_synced(&dir.join("meta.json"), serde_json::to_string_pretty(&meta).expect("plain").as_bytes())?;
    Ok(meta)
}

/// A `tokens` source into the cache without holding it: each file memory-mapped and its
/// documents streamed through in order, so memory grows with the number of documents, not
/// with the tokens.
fn copy_token_source(source: &Source, tok: &Tok, dir: &Path, progress: &dyn Progress) -> Result<StoreMeta> {
    let vocab = tok.vocab_size();
    let width = token_bytes(vocab);
    let mut files: Vec<TokenFile> = source
        .files
        .iter()
        .map(|f| TokenFile::open(f, source.dtype.unwrap_or(TokenDtype::U16)))
        .collect::<Result<_>>()?;
    let limit = source.limit.map_or(u64::MAX, |n| n);
    progress.start(&format!("copy {}", source.name), files.iter().map(|f| f.docs() as u64).sum::<u64>().min(limit));
    let path = dir.join("tokens.bin");
    let io = |e: std::io::Error| DataError::in_file(&path, e.to_string());
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
    let mut checksum = blake3::Hasher::new();
    let (mut offsets, mut holdout): (Vec<u8>, Vec<u8>) = (0u64.to_le_bytes().to_vec(), Vec::new());
    let (mut docs, mut total, mut holdout_docs, mut holdout_tokens, mut empty) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut ids, mut identity, mut written) = (Vec::new(), Vec::new(), Vec::new());
    'files: for file in &mut files {
        for i in 0..file.docs() {
            if docs == limit {
                break 'files;
            }
            file.read_doc(i, &mut ids)?;
            identity.clear();
            written.clear();
            for &id in &ids {
                if id >= vocab {
                    return Err(DataError::new(format!(
                        "source `{}` has token id {id}, outside the tokenizer's vocabulary of {vocab}",
                        source.name
                    )));
                }
                identity.extend_from_slice(&id.to_le_bytes());
                match width {
                    2 => written.extend_from_slice(&(id as u16).to_le_bytes()),
                    _ => written.extend_from_slice(&id.to_le_bytes()),
                }
            }
            progress.advance(1);
            let n = (identity.len() / 4) as u64;
            if n == 0 {
                empty += 1;
                continue;
            }
            out.write_all(&written).map_err(io)?;
            checksum.update(&written);
            let held = is_held_out(&identity, source.holdout);
            (docs, total) = (docs + 1, total + n);
            offsets.extend_from_slice(&total.to_le_bytes());
            holdout.push(u8::from(held));
            if held {
                (holdout_docs, holdout_tokens) = (holdout_docs + 1, holdout_tokens + n);
            }
        }
    }
    progress.finish();
    out.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
    if docs == 0 {
        return Err(DataError::new(format!("source `{}` has no documents ({empty} empty)", source.name)));
    }
    let meta = StoreMeta {
        source: source.name.clone(),
        token_bytes: width,
        docs,
        tokens: total,
        holdout_docs,
        holdout_tokens,
        skipped_records: 0,
        empty_docs: empty,
        eos: tok.eos(),
        vocab_size: vocab,
        chat: false,
        pairs: false,
        labels: false,
        checksums: Default::default(),
    };
    finish_cache(dir, meta, checksum.finalize(), vec![("offsets.bin", offsets), ("holdout.bin", holdout)])
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| DataError::in_file(path, e.to_string()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| DataError::in_file(path, e.to_string()))
}

/// A finished tokenization, memory-mapped.
pub struct TokenStore {
    pub meta: StoreMeta,
    pub dir: PathBuf,
    tokens: Option<Mmap>,
    offsets: Vec<u64>,
    holdout: Vec<u8>,
    mask: Option<Mmap>,
    /// A preference source's chosen lengths, per document.
    chosen_lens: Vec<u32>,
    /// An unpaired source's labels, per document: 1 for a desirable response.
    labels: Vec<u8>,
}

impl TokenStore {
    pub fn open(dir: &Path) -> Result<TokenStore> {
        let read =
            |name: &str| std::fs::read(dir.join(name)).map_err(|e| DataError::in_file(&dir.join(name), e.to_string()));
        let meta: StoreMeta = serde_json::from_slice(&read("meta.json")?)
            .map_err(|e| DataError::in_file(&dir.join("meta.json"), format!("damaged: {e}")))?;
        let offsets: Vec<u64> =
            read("offsets.bin")?.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        let holdout = read("holdout.bin")?;
        let map = |name: &str| -> Result<Option<Mmap>> {
            let path = dir.join(name);
            let file = std::fs::File::open(&path).map_err(|e| DataError::in_file(&path, e.to_string()))?;
            if file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
                return Ok(None);
            }
            // Safety: cache files are written once, then only read; nothing truncates them
            // while a store is open.
            unsafe { Mmap::map(&file) }.map(Some).map_err(|e| DataError::in_file(&path, e.to_string()))
        };
        let tokens = map("tokens.bin")?;
        let mask = if meta.chat { map("mask.bin")? } else { None };
        let expected = meta.tokens * meta.token_bytes as u64;
        let found = tokens.as_ref().map_or(0, |m| m.len() as u64);
        if offsets.len() as u64 != meta.docs + 1 || holdout.len() as u64 != meta.docs || found != expected {
            return Err(DataError::in_file(dir, "token cache is inconsistent with its meta.json; delete the folder"));
        }
        let chosen_lens: Vec<u32> = match meta.pairs {
            true => {
                read("pairs.bin")?.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
            }
            false => Vec::new(),
        };
        let labels = if meta.labels { read("labels.bin")? } else { Vec::new() };
        if (meta.pairs && chosen_lens.len() as u64 != meta.docs) || (meta.labels && labels.len() as u64 != meta.docs) {
            return Err(DataError::in_file(dir, "token cache is inconsistent with its meta.json; delete the folder"));
        }
        Ok(TokenStore { meta, dir: dir.to_path_buf(), tokens, offsets, holdout, mask, chosen_lens, labels })
    }

    /// Check every file of the cache in `dir` against the checksum its `meta.json` recorded;
    /// the error names the first that differs.
    pub fn verify(dir: &Path) -> Result<()> {
        let meta_path = dir.join("meta.json");
        let meta: StoreMeta = std::fs::read(&meta_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| DataError::in_file(&meta_path, "missing or damaged"))?;
        for (name, want) in &meta.checksums {
            let path = dir.join(name);
            let mut hasher = blake3::Hasher::new();
            let file = std::fs::File::open(&path).map_err(|e| DataError::in_file(&path, e.to_string()))?;
            hasher.update_reader(file).map_err(|e| DataError::in_file(&path, e.to_string()))?;
            if hasher.finalize().to_hex().as_str() != want {
                return Err(DataError::in_file(&path, "does not match its checksum"));
            }
        }
        Ok(())
    }

    pub fn n_docs(&self) -> usize {
        self.holdout.len()
    }

    pub fn doc_len(&self, doc: usize) -> u32 {
        (self.offsets[doc + 1] - self.offsets[doc]) as u32
    }

    /// How many of a preference pair's tokens are the chosen conversation's (the rest are the
    /// rejected one's); none for a source of single documents.
    pub fn chosen_len(&self, doc: usize) -> Option<u32> {
        self.chosen_lens.get(doc).copied()
    }

    /// Preference pair `doc`'s chosen and rejected conversations, each with where its answer
    /// (the last run of assistant tokens) starts.
    pub fn pair(&self, doc: usize) -> (Conversation, Conversation) {
        let split = self.chosen_len(doc).expect("a preference source");
        let conversation = |from: u32, to: u32| {
            let end = (from..to).rev().find(|&i| self.is_assistant(doc, i as usize)).map_or(to, |i| i + 1);
            let answer = (from..end).rev().find(|&i| !self.is_assistant(doc, i as usize)).map_or(from, |i| i + 1);
            Conversation { len: to - from, answer: answer - from }
        };
        (conversation(0, split), conversation(split, self.doc_len(doc)))
    }

    /// An unpaired source's label of `doc`: whether its response is desirable.
    pub fn desirable(&self, doc: usize) -> Option<bool> {
        self.labels.get(doc).map(|&l| l == 1)
    }

    pub fn is_held_out(&self, doc: usize) -> bool {
        self.holdout[doc] == 1
    }

    /// Token `i` of document `doc`.
    pub fn token(&self, doc: usize, i: usize) -> u32 {
        let at = self.offsets[doc] as usize + i;
        let bytes = self.tokens.as_deref().expect("a non-empty store");
        match self.meta.token_bytes {
            2 => u16::from_le_bytes([bytes[2 * at], bytes[2 * at + 1]]) as u32,
            _ => u32::from_le_bytes(bytes[4 * at..4 * at + 4].try_into().expect("4 bytes")),
        }
    }

    /// Whether any token belongs to an assistant turn (every token of a non-chat source does).
    pub fn has_assistant_tokens(&self) -> bool {
        match &self.mask {
            Some(m) => m.contains(&1),
            None => !self.meta.chat,
        }
    }

    /// Whether token `i` of `doc` belongs to an assistant turn; every token of a non-chat
    /// source does.
    pub fn is_assistant(&self, doc: usize, i: usize) -> bool {
        match &self.mask {
            Some(m) => m[self.offsets[doc] as usize + i] == 1,
            None => !self.meta.chat,
        }
    }
}
