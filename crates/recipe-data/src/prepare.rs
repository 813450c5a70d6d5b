//! The work of the data nodes — training the recipe's tokenizer, tokenizing a source — into
//! a folder the caller provides, and what a stage's data will look like before it trains.

use recipe_spec::{Recipe, Stage, TokenizerTrain};

use crate::documents::read_source;
use crate::error::Result;
use crate::loader::{Loader, LoaderConfig, LoaderStats, Mix, Split};
use crate::pack::PackStats;
use crate::progress::Progress;
use crate::store::tokenize_source;
use crate::tokenizer::Tok;

/// The file a trained tokenizer is saved as, in its node's result.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Train the recipe's tokenizer on its sources and save it in `out`; returns a summary line.
pub fn train_tokenizer(
    recipe: &Recipe,
    config: &TokenizerTrain,
    out: &std::path::Path,
    progress: &dyn Progress,
) -> Result<String> {
    let mut texts = Vec::new();
    for name in &config.sources {
        let source = recipe.source(name).expect("validated reference");
        texts.extend(read_source(source)?.docs.iter().map(|d| d.text()));
    }
    progress.start("train tokenizer", 1);
    let tok = Tok::train(config, texts.iter().map(String::as_str))?;
    progress.advance(1);
    progress.finish();
    tok.save(&out.join(TOKENIZER_FILE))?;
    Ok(format!("{} tokens from {} documents", tok.vocab_size(), texts.len()))
}

/// Tokenize source `name` with `tok` into `out`; returns a summary line.
pub fn tokenize(
    recipe: &Recipe,
    name: &str,
    tok: &Tok,
    out: &std::path::Path,
    progress: &dyn Progress,
) -> Result<String> {
    let source = recipe.source(name).expect("validated reference");
    let meta = tokenize_source(source, tok, out, progress)?;
    let mut s = format!("{} documents, {} tokens ({} held out)", meta.docs, meta.tokens, meta.holdout_docs);
    if meta.skipped_records > 0 {
        s.push_str(&format!(", {} bad records skipped", meta.skipped_records));
    }
    if meta.empty_docs > 0 {
        s.push_str(&format!(", {} empty documents dropped", meta.empty_docs));
    }
    Ok(s)
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

/// Run the stage's sampler and packer over document lengths alone: each phase of a mix or a
/// length that changes in turn (one phase when neither does), each from a sample of its rows
/// scaled up to all of them when it has more than its share of [`MAX_SIMULATED_ROWS`].
pub fn data_facts(recipe: &Recipe, stage: &Stage, stores: Mix) -> Result<DataFacts> {
    let mut loader = Loader::new(stores, &LoaderConfig::of_stage(recipe, stage, Split::Train))?;
    let spans = stage.phase_spans();
    let per_phase = MAX_SIMULATED_ROWS / spans.len() as u64;
    let mut sources = loader.stats().sources;
    for s in &mut sources {
        (s.tokens, s.docs, s.epochs) = (0, 0, 0.0);
    }
    let (mut rows_simulated, mut rows_total) = (0, 0);
    let mut pack = PackStats::default();
    for (from, until) in spans {
        if !stage.data.phases.is_empty() {
            loader.set_phase(stage.data.phase_at(from), stage.data.weights_at(from));
        }
        let shape = stage.shape_at(from);
        loader.set_seq_len(shape.seq_len);
        let rows = (until - from).saturating_mul(shape.batch_size as u64);
        let sample = rows.min(per_phase);
        let before = loader.stats();
        let mut left = sample;
        while left > 0 {
            let n = left.min(4096);
            loader.next_rows(n as usize);
            left -= n;
        }
        let after = loader.stats();
        let scale = if sample > 0 { rows as f64 / sample as f64 } else { 0.0 };
        let scaled = |now: u64, then: u64| ((now - then) as f64 * scale) as u64;
        for ((acc, now), then) in sources.iter_mut().zip(&after.sources).zip(&before.sources) {
            acc.tokens += scaled(now.tokens, then.tokens);
            acc.docs += scaled(now.docs, then.docs);
            acc.epochs += (now.epochs - then.epochs) * scale;
        }
        let (now, then) = (&after.pack, &before.pack);
        pack.rows += scaled(now.rows, then.rows);
        pack.positions += scaled(now.positions, then.positions);
        pack.tokens += scaled(now.tokens, then.tokens);
        pack.docs += scaled(now.docs, then.docs);
        pack.docs_split += scaled(now.docs_split, then.docs_split);
        rows_simulated += sample;
        rows_total += rows;
    }
    pack.source_tokens = sources.iter().map(|s| s.tokens).collect();
    let stats = LoaderStats { sources, pack, ..loader.stats() };
    Ok(DataFacts { stats, rows_simulated, rows_total })
}
