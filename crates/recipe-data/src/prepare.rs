//! Running the data nodes of a recipe's graph — tokenizer training and each source's
//! tokenization — into the run directory, and opening their results for a stage.

use std::sync::Arc;

use recipe_graph::{Graph, Node, NodeKind, RecordedState, RunDir, TOKENIZER_NODE, tokenize_node};
use recipe_spec::{Recipe, Stage, Tokenizer};

use crate::documents::read_source;
use crate::error::{DataError, Progress, Result};
use crate::loader::{Loader, LoaderConfig, LoaderStats, Mix, Split};
use crate::store::{TokenStore, tokenize_source};
use crate::tokenizer::Tok;

/// What running a node did.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Its result was already there.
    Cached,
    /// It ran; with a one-line summary.
    Ran(String),
}

/// Run one data node unless its result exists; record it in the lock either way.
pub fn run_data_node(
    recipe: &Recipe,
    graph: &Graph,
    run: &RunDir,
    node: &Node,
    progress: &dyn Progress,
) -> Result<Outcome> {
    if run.final_dir(node).is_dir() {
        return Ok(Outcome::Cached);
    }
    let io = |e: std::io::Error| DataError::in_file(&run.node_dir(node), e.to_string());
    let staging = run.staging_dir(node).map_err(io)?;
    let summary = match &node.kind {
        NodeKind::TrainTokenizer => {
            let Tokenizer::Train(config) = &recipe.tokenizer else { unreachable!("the node exists only for train") };
            let mut texts = Vec::new();
            for name in &config.sources {
                let source = recipe.source(name).expect("validated reference");
                texts.extend(read_source(source)?.docs.iter().map(|d| d.text()));
            }
            progress.start("train tokenizer", 1);
            let tok = Tok::train(config, texts.iter().map(String::as_str))?;
            progress.advance(1);
            progress.finish();
            tok.save(&staging.join("tokenizer.json"))?;
            format!("{} tokens from {} documents", tok.vocab_size(), texts.len())
        }
        NodeKind::Tokenize { source } => {
            let tok = tokenizer(recipe, graph, run)?;
            let source = recipe.source(source).expect("validated reference");
            let meta = tokenize_source(source, &tok, &staging, progress)?;
            let mut s = format!("{} documents, {} tokens ({} held out)", meta.docs, meta.tokens, meta.holdout_docs);
            if meta.skipped_records > 0 {
                s.push_str(&format!(", {} bad records skipped", meta.skipped_records));
            }
            if meta.empty_docs > 0 {
                s.push_str(&format!(", {} empty documents dropped", meta.empty_docs));
            }
            s
        }
        NodeKind::Stage { .. } => unreachable!("only data nodes are run here"),
    };
    run.publish(node, &staging).map_err(io)?;
    run.record(&recipe.canonical(), node, RecordedState::Done, Some(now_rfc3339())).map_err(DataError::new)?;
    Ok(Outcome::Ran(summary))
}

/// The recipe's tokenizer: its file, or the trained tokenizer node's result.
pub fn tokenizer(recipe: &Recipe, graph: &Graph, run: &RunDir) -> Result<Tok> {
    match &recipe.tokenizer {
        Tokenizer::File { file, .. } => Tok::load(file),
        Tokenizer::Train(_) => {
            let node = graph.node(TOKENIZER_NODE).expect("a trained tokenizer has a node");
            let path = run.final_dir(node).join("tokenizer.json");
            if !path.is_file() {
                return Err(DataError::new("the tokenizer has not been trained yet"));
            }
            Tok::load(&recipe_spec::checkpoint::TokenizerFile::Json(path))
        }
    }
}

/// The token stores of a stage's mix with their weights, or `None` while any is missing.
pub fn stage_stores(stage: &Stage, graph: &Graph, run: &RunDir) -> Result<Option<Mix>> {
    let mut out = Vec::new();
    for (name, weight) in &stage.data.mix {
        let node = graph.node(&tokenize_node(name)).expect("every mixed source has a node");
        let dir = run.final_dir(node);
        if !dir.is_dir() {
            return Ok(None);
        }
        out.push((Arc::new(TokenStore::open(&dir)?), *weight));
    }
    Ok(Some(out))
}

/// What a stage's data will look like, from the real token counts: per-source tokens and
/// epochs, packing efficiency and truncation rate.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DataFacts {
    pub stats: LoaderStats,
    /// Rows simulated, and rows the stage trains on; counts were scaled up when fewer.
    pub rows_simulated: u64,
    pub rows_total: u64,
}

/// At most this many rows are packed to compute a stage's data facts; beyond it they are
/// scaled from the sample.
pub const MAX_SIMULATED_ROWS: u64 = 100_000;

/// Run the stage's sampler and packer over document lengths alone.
pub fn data_facts(recipe: &Recipe, stage: &Stage, stores: Mix) -> Result<DataFacts> {
    let config = LoaderConfig {
        seq_len: stage.seq_len,
        packing: stage.data.packing,
        loss_on: stage.data.loss_on,
        seed: recipe.seed,
        split: Split::Train,
    };
    let mut loader = Loader::new(stores, &config)?;
    let rows_total = stage.steps.saturating_mul(stage.batch_size as u64);
    let rows_simulated = rows_total.min(MAX_SIMULATED_ROWS);
    let mut left = rows_simulated;
    while left > 0 {
        let n = left.min(4096);
        loader.next_rows(n as usize);
        left -= n;
    }
    let mut stats = loader.stats();
    if rows_simulated < rows_total {
        let scale = rows_total as f64 / rows_simulated as f64;
        for s in &mut stats.sources {
            s.tokens = (s.tokens as f64 * scale) as u64;
            s.docs = (s.docs as f64 * scale) as u64;
            s.epochs *= scale;
        }
    }
    Ok(DataFacts { stats, rows_simulated, rows_total })
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
