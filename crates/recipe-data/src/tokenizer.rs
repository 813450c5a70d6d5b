//! The pipeline's tokenizer: any `tokenizers` tokenizer (read from a file by
//! `recipe-checkpoint`), or a byte-level BPE trained from the recipe's sources, with what the
//! pipeline needs: the end-of-document id, the chat templates' ids, and plain encoding without
//! added special tokens.

use std::path::Path;

use recipe_spec::{ChatTemplate, OwnChatTemplate, TokenizerTrain};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{DataError, Result};
use crate::jinja::OwnTemplate;

/// Names an end-of-document token goes by, in order of preference.
const EOS_NAMES: &[&str] = &["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>"];

pub struct Tok {
    inner: Tokenizer,
    eos: u32,
    bos: Option<u32>,
    /// The chat template stored with it, and the token that ends a turn in it.
    own: Option<(OwnTemplate, Option<u32>)>,
}

impl Tok {
    /// Wrap a tokenizer; it must have an end-of-document token. A special token by one of
    /// [`EOS_NAMES`] comes before a plain one (Gemma's `</s>` is an ordinary token, its end of
    /// document `<eos>`).
    pub fn new(inner: Tokenizer) -> Result<Tok> {
        let specials = inner.get_added_tokens_decoder();
        let special = |id: &u32| specials.get(id).is_some_and(|t| t.special);
        let named = || EOS_NAMES.iter().filter_map(|n| inner.token_to_id(n));
        let eos = named().find(special).or_else(|| named().next()).ok_or_else(|| {
            DataError::new(format!("the tokenizer has no end-of-document token (one of {})", EOS_NAMES.join(", ")))
        })?;
        let post_processor = serde_json::to_value(inner.get_post_processor()).unwrap_or_default();
        let bos = recipe_spec::leading_special_token(&post_processor);
        Ok(Tok { inner, eos, bos, own: None })
    }

    /// Give it the chat template stored with it (`template = "tokenizer"`).
    pub fn with_own_template(mut self, own: Option<OwnChatTemplate>) -> Tok {
        self.own = own.map(|source| {
            let specials = self.inner.get_added_tokens_decoder().into_iter().filter(|(_, t)| t.special);
            let template = OwnTemplate::compile(source, specials.map(|(id, t)| (t.content, id)));
            let turn_end = template.turn_end();
            (template, turn_end)
        });
        self
    }

    /// The chat template stored with it, when there is one.
    pub fn own_template(&self) -> Option<&OwnChatTemplate> {
        self.own.as_ref().map(|(t, _)| &t.source)
    }

    pub(crate) fn compiled_own_template(&self) -> Option<&OwnTemplate> {
        self.own.as_ref().map(|(t, _)| t)
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
        Tok::new(tokenizer)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, false).map_err(|e| DataError::in_file(path, e.to_string()))
    }

    /// Token ids of `text`, with no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| DataError::new(format!("cannot tokenize: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` with no special tokens added, and for each whether its bytes
    /// overlap one of `spans` (byte ranges of `text`).
    pub(crate) fn encode_marking(&self, text: &str, spans: &[(usize, usize)]) -> Result<(Vec<u32>, Vec<u8>)> {
        let enc = self.inner.encode(text, false).map_err(|e| DataError::new(format!("cannot tokenize: {e}")))?;
        let overlaps = |&(s, e): &(usize, usize)| spans.iter().any(|&(a, b)| s < b && e > a);
        Ok((enc.get_ids().to_vec(), enc.get_offsets().iter().map(|o| u8::from(overlaps(o))).collect()))
    }

    /// Token ids of a text document or a plain prompt: [`Tok::encode`], after the token the
    /// tokenizer starts every text with when it has one (Llama 3's `<|begin_of_text|>`, Gemma's
    /// `<bos>`), as `transformers`' `tokenizer(text)` gives them.
    pub fn encode_document(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.bos.into_iter().chain(self.encode(text)?).collect())
    }

    /// The token every text document starts with, when the tokenizer has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The string of token `id`.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }

    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// The ids of `template`'s special tokens, in [`ChatTemplate::tokens`]' order, when the
    /// tokenizer has them all. For its own template, when it has one: the token that ends a
    /// turn in it, if it writes one.
    pub fn template_ids(&self, template: ChatTemplate) -> Option<Vec<u32>> {
        match template {
            ChatTemplate::Tokenizer => self.own.as_ref().map(|(_, end)| end.iter().copied().collect()),
            _ => template.tokens().iter().map(|t| self.inner.token_to_id(t)).collect(),
        }
    }

    /// The template a chat with this tokenizer takes when nothing says which: the first of
    /// [`ChatTemplate::ALL`] whose tokens it has.
    pub fn chat_template(&self) -> Option<ChatTemplate> {
        ChatTemplate::ALL.into_iter().find(|t| self.template_ids(*t).is_some())
    }

    /// The id that ends a turn in each template the tokenizer has, other than the
    /// end-of-document id: where generation stops besides that.
    pub fn turn_ends(&self) -> Vec<u32> {
        let mut ends: Vec<u32> = Vec::new();
        for end in ChatTemplate::ALL.into_iter().filter_map(|t| self.template_ids(t)?.last().copied()) {
            if end != self.eos && !ends.contains(&end) {
                ends.push(end);
            }
        }
        ends
    }

    /// Ids range over `0..vocab_size()`.
    pub fn vocab_size(&self) -> u32 {
        self.inner.get_vocab_size(true) as u32
    }
}
