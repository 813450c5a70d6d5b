//! Tokenizers: any Hugging Face `tokenizer.json`, one rebuilt from a GGUF checkpoint's
//! metadata, or a byte-level BPE trained from the recipe's sources. Wraps the `tokenizers` crate with what the pipeline needs: the end-of-document id,
//! the ChatML ids, and plain encoding without added special tokens.

use std::path::Path;

use recipe_spec::checkpoint::{TokenizerFile, gguf_vocab, read_gguf};
use recipe_spec::{CHATML_TOKENS, TokenizerTrain};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{DataError, Result};

/// Names an end-of-document token goes by, in order of preference.
const EOS_NAMES: &[&str] = &["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>"];

pub struct Tok {
    inner: Tokenizer,
    eos: u32,
    chatml: Option<[u32; 2]>,
}

impl Tok {
    pub fn load(file: &TokenizerFile) -> Result<Tok> {
        let path = file.path();
        let inner = match file {
            TokenizerFile::Json(_) => Tokenizer::from_file(path).map_err(|e| format!("not a tokenizer: {e}")),
            TokenizerFile::Gguf(_) => from_gguf(path),
        }
        .map_err(|e| DataError::in_file(path, e))?;
        Tok::wrap(inner).map_err(|e| DataError::in_file(path, e.message))
    }

    fn wrap(inner: Tokenizer) -> Result<Tok> {
        let eos = EOS_NAMES.iter().find_map(|n| inner.token_to_id(n)).ok_or_else(|| {
            DataError::new(format!("the tokenizer has no end-of-document token (one of {})", EOS_NAMES.join(", ")))
        })?;
        let chatml = match CHATML_TOKENS.map(|t| inner.token_to_id(t)) {
            [Some(start), Some(end)] => Some([start, end]),
            _ => None,
        };
        Ok(Tok { inner, eos, chatml })
    }

    /// Train a byte-level BPE on `texts`. Decoding returns the exact input bytes.
    pub fn train<'a>(config: &TokenizerTrain, texts: impl Iterator<Item = &'a str> + Send) -> Result<Tok> {
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> =
            config.special_tokens.iter().map(|s| AddedToken::from(s.clone(), true)).collect();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(config.vocab_size as usize)
            .min_frequency(config.min_frequency as u64)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .show_progress(false)
            .build()
            .into();
        tokenizer.train(&mut trainer, texts).map_err(|e| DataError::new(format!("tokenizer training failed: {e}")))?;
        Tok::wrap(tokenizer)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, false).map_err(|e| DataError::in_file(path, e.to_string()))
    }

    /// Token ids of `text`, with no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| DataError::new(format!("cannot tokenize: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }

    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// `<|im_start|>` and `<|im_end|>`, when the tokenizer has them.
    pub fn chatml(&self) -> Option<[u32; 2]> {
        self.chatml
    }

    /// Ids range over `0..vocab_size()`.
    pub fn vocab_size(&self) -> u32 {
        self.inner.get_vocab_size(true) as u32
    }
}

/// Rebuild the byte-level BPE a GGUF file describes (`tokenizer.ggml.model = "gpt2"`): its
/// vocabulary and merges, control tokens as special tokens, and the pre-tokenizer its
/// `tokenizer.ggml.pre` names.
fn from_gguf(path: &Path) -> std::result::Result<Tokenizer, String> {
    let v = gguf_vocab(&read_gguf(path)?)?;
    if v.model != "gpt2" {
        return Err(format!("its tokenizer is `{}`; only byte-level BPE (`gpt2`) is rebuilt", v.model));
    }
    let vocab: Vocab = v.tokens.iter().enumerate().map(|(id, t)| (t.clone(), id as u32)).collect();
    let merges = v
        .merges
        .iter()
        .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect::<Option<Vec<_>>>()
        .ok_or("a merge is not two tokens separated by a space")?;
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| e.to_string())?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    let pre = match v.pre.as_str() {
        // SmolLM's tokenizer splits every digit on its own before the byte-level split.
        "smollm" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level,
        ])),
        "gpt2" | "default" | "" => byte_level,
        other => return Err(format!("its pre-tokenizer `{other}` is not one this tool can rebuild")),
    };
    tokenizer.with_pre_tokenizer(Some(pre));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    const CONTROL: i32 = 3;
    let specials: Vec<AddedToken> = v
        .tokens
        .iter()
        .zip(&v.types)
        .filter(|(_, ty)| **ty == CONTROL)
        .map(|(t, _)| AddedToken::from(t.clone(), true))
        .collect();
    tokenizer.add_special_tokens(&specials);
    Ok(tokenizer)
}
