//! `recipe-data` turns a recipe's sources into exactly the token rows a stage trains on.
//! It reads documents (`text`, `jsonl`, `chat-jsonl`, pre-tokenized `tokens`) with errors that
//! name file and line, formats conversations with their chat template (a fixed one, or the tokenizer's own Jinja), loads or trains tokenizers, writes each source's tokenization once into
//! a memory-mappable cache with a deterministic holdout split, mixes sources by token weight
//! with a seeded sampler, packs documents into rows (`concat`, `best-fit`, `pad`) with loss
//! masks, document ids and positions, and resumes exactly from a small serialisable state.
//! It does the work of the data nodes into folders it is given; where those folders are, and
//! recording that a node finished, belong to the executor (`recipe-run`). It prints nothing:
//! long work reports through [`Progress`].

mod chat;
mod documents;
mod error;
mod jinja;
mod loader;
mod mix;
mod online;
mod pack;
mod prepare;
mod progress;
mod store;
mod tokenizer;

pub use chat::{chat_prompt, format_chat, jinja};
pub use documents::{Doc, Documents, MAX_LINE_BYTES, Message, Role, read_source};
pub use error::{DataError, Result};
pub use loader::{Batch, Loader, LoaderConfig, LoaderState, LoaderStats, Mix, PAD_DOC, SourceStats, Split};
pub use mix::{Sampler, SamplerState};
pub use online::Bandit;
pub use pack::{Conversation, PackStats, Packer, PackerState, Piece, Row};
pub use prepare::{DataFacts, MAX_SIMULATED_ROWS, TOKENIZER_FILE, data_facts, tokenize, train_tokenizer};
pub use progress::{Progress, Silent};
pub use store::{StoreMeta, TokenStore, is_held_out, tokenize_source};
pub use tokenizer::Tok;
