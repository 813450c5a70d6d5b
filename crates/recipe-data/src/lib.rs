//! `recipe-data` turns a recipe's sources into exactly the token rows a stage trains on.
//! It reads documents (`text`, `jsonl`, `chat-jsonl`, pre-tokenized `tokens`) with errors that
//! name file and line, loads or trains tokenizers, writes each source's tokenization once into
//! a memory-mappable cache with a deterministic holdout split, mixes sources by token weight
//! with a seeded sampler, packs documents into rows (`concat`, `best-fit`, `pad`) with loss
//! masks, document ids and positions, and resumes exactly from a small serialisable state.
//! It prints nothing: long work reports through [`Progress`].

mod documents;
mod error;
mod loader;
mod mix;
mod pack;
mod prepare;
mod store;
mod tokenizer;

pub use documents::{Doc, Documents, Message, Role, read_source};
pub use error::{DataError, Progress, Result, Silent};
pub use loader::{Batch, Loader, LoaderConfig, LoaderState, LoaderStats, Mix, PAD_DOC, SourceStats, Split};
pub use mix::{Sampler, SamplerState};
pub use pack::{PackStats, Packer, PackerState, Piece, Row};
pub use prepare::{DataFacts, MAX_SIMULATED_ROWS, Outcome, data_facts, run_data_node, stage_stores, tokenizer};
pub use store::{StoreMeta, TokenStore, chatml_prompt, format_chatml, is_held_out, tokenize_source};
pub use tokenizer::Tok;
