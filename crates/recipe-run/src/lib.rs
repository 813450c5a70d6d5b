//! `recipe-run` executes a recipe's graph. It owns the one lifecycle every node goes through —
//! skip it when its `final/` exists; otherwise build it in a fresh staging folder, record in
//! the lock that it started, publish the folder atomically as `final/`, record it done — and
//! gives each kind of node its work: training the tokenizer and tokenizing a source
//! (`recipe-data`), training a stage (`recipe-train`) and writing its model
//! (`recipe-checkpoint`'s Hugging Face layout). It also opens what finished nodes left for the
//! verbs that read them: the recipe's tokenizer, a stage's token stores. It decides nothing
//! about a node's key or state (`recipe-graph`) and prints nothing: progress goes to the
//! [`Hooks`] the caller passes.

mod executor;

pub use executor::{Error, Hooks, NodeReport, execute, load_tokenizer, prepare, recipe_tokenizer, stage_stores};
