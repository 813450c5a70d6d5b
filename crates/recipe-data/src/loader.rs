//! The resumable loader: mixes sources with the [`Sampler`], packs rows with the [`Packer`], and
//! materialises batches of input ids, target ids, loss mask, document ids and positions.
//! Its whole state is a small serialisable value; restoring it yields exactly the batches the
//! uninterrupted loader would have produced.

use std::sync::Arc;

use recipe_spec::{LossOn, Packing, Recipe, Stage};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::mix::{Sampler, SamplerState};
use crate::pack::{PackStats, Packer, PackerState, Row};
use crate::store::TokenStore;

/// Which documents a loader reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    /// The held-out documents, for evaluation.
    Holdout,
}

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub seq_len: u32,
    pub packing: Packing,
    pub loss_on: LossOn,
    pub seed: u64,
    pub split: Split,
    /// Draw each document's source at random, each source's expected share of the tokens being
    /// its current weight (online mixing, whose bandit needs the shares to be probabilities),
    /// rather than keeping every source at its share deterministically.
    pub random_draws: bool,
}

impl LoaderConfig {
    /// How `stage` of `recipe` draws its rows from `split`.
    pub fn of_stage(recipe: &Recipe, stage: &Stage, split: Split) -> LoaderConfig {
        LoaderConfig {
            seq_len: stage.seq_len,
            packing: stage.data.packing,
            loss_on: stage.data.loss_on,
            seed: recipe.seed,
            split,
            random_draws: split == Split::Train && stage.data.online.is_some(),
        }
    }
}

/// Token stores with their normalised mixing weights.
pub type Mix = Vec<(Arc<TokenStore>, f64)>;

/// A document id that marks padding.
pub const PAD_DOC: u32 = u32::MAX;

/// `rows × seq_len` values each, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub seq_len: usize,
    pub input_ids: Vec<u32>,
    pub target_ids: Vec<u32>,
    /// 1 where the target counts towards the loss: same document as the input, not padding,
    /// and (under `loss_on = "assistant"`) part of an assistant turn.
    pub loss_mask: Vec<u8>,
    /// The document segment each position belongs to, numbered from 0 within its row;
    /// [`PAD_DOC`] for padding. Attention stays within a segment.
    pub doc_ids: Vec<u32>,
    /// Position within the segment, restarting at 0 at each segment.
    pub position_ids: Vec<u32>,
    /// The source (its place in the mix) each position's document comes from; [`PAD_DOC`] for
    /// padding. What a loss per source is summed by.
    pub source_ids: Vec<u32>,
    /// Rows of unpaired preference records (KTO's): 1 per row whose response is desirable, 0
    /// per other; empty for other data.
    pub desirable: Vec<u8>,
}

impl Batch {
    /// Rank `rank`'s share of a step's micro-batches when `world` ranks train it: its rows
    /// `[R·rank/world, R·(rank+1)/world)` of all `R` rows in draw order, in micro-batches of at
    /// most as many rows as the step's, and the index of its first row (which seeds adapter
    /// dropout). Shares are disjoint and together are the whole step, so summing what each rank
    /// computes gives the step's loss and gradient; a rank of a step with fewer rows than ranks
    /// may get none.
    pub fn share(step: &[Batch], rank: usize, world: usize) -> (Vec<Batch>, usize) {
        let total: usize = step.iter().map(|b| b.rows).sum();
        let (first, end) = (total * rank / world, total * (rank + 1) / world);
        let Some(micro) = step.first().map(|b| b.rows.max(1)) else { return (Vec::new(), first) };
        let mut out: Vec<Batch> = Vec::new();
        let rows = step.iter().flat_map(|b| (0..b.rows).map(move |r| (b, r)));
        for (batch, row) in rows.skip(first).take(end - first) {
            if out.last().is_none_or(|b| b.rows == micro) {
                out.push(Batch::empty(batch.seq_len));
            }
            out.last_mut().expect("pushed").push_row(batch, row);
        }
        (out, first)
    }

    fn empty(seq_len: usize) -> Batch {
        Batch {
            rows: 0,
            seq_len,
            input_ids: Vec::new(),
            target_ids: Vec::new(),
            loss_mask: Vec::new(),
            doc_ids: Vec::new(),
            position_ids: Vec::new(),
            source_ids: Vec::new(),
            desirable: Vec::new(),
        }
    }

    fn push_row(&mut self, from: &Batch, row: usize) {
        let span = row * from.seq_len..(row + 1) * from.seq_len;
        self.input_ids.extend_from_slice(&from.input_ids[span.clone()]);
        self.target_ids.extend_from_slice(&from.target_ids[span.clone()]);
        self.loss_mask.extend_from_slice(&from.loss_mask[span.clone()]);
        self.doc_ids.extend_from_slice(&from.doc_ids[span.clone()]);
        self.position_ids.extend_from_slice(&from.position_ids[span.clone()]);
        self.source_ids.extend_from_slice(&from.source_ids[span]);
        self.desirable.extend(from.desirable.get(row));
        self.rows += 1;
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoaderState {
    pub sampler: SamplerState,
    pub packer: PackerState,
    pub stats: PackStats,
}

/// What a loader has produced so far, per source and overall.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoaderStats {
    pub sources: Vec<SourceStats>,
    pub pack: PackStats,
    pub capacity: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SourceStats {
    pub name: String,
    /// Tokens of this source in the rows handed out.
    pub tokens: u64,
    /// Documents the sampler has drawn (some may still wait in the packer).
    pub docs: u64,
    /// Passes over the source: tokens handed out / tokens in the split.
    pub epochs: f64,
}

impl LoaderStats {
    /// The share of row positions that hold tokens rather than padding.
    pub fn efficiency(&self) -> f64 {
        if self.pack.positions == 0 { 0.0 } else { self.pack.tokens as f64 / self.pack.positions as f64 }
    }

    /// The share of documents cut across rows or into chunks.
    pub fn truncation_rate(&self) -> f64 {
        if self.pack.docs == 0 { 0.0 } else { self.pack.docs_split as f64 / self.pack.docs as f64 }
    }
}

pub struct Loader {
    stores: Vec<Arc<TokenStore>>,
    split_tokens: Vec<u64>,
    sampler: Sampler,
    packer: Packer,
    loss_on_assistant: bool,
}

impl Loader {
    /// A loader over `mix` (stores with their normalised weights). Evaluation reads the sources that hold documents out, in their
    /// mix proportions; a source without held-out documents is left out of it.
    pub fn new(mut mix: Mix, config: &LoaderConfig) -> Result<Loader> {
        let holdout = config.split == Split::Holdout;
        let pool_of = |store: &TokenStore| -> Vec<u32> {
            (0..store.n_docs()).filter(|&d| store.is_held_out(d) == holdout).map(|d| d as u32).collect()
        };
        if holdout {
            mix.retain(|(store, _)| !pool_of(store).is_empty());
            if mix.is_empty() {
                return Err(DataError::new("no source of the mix has held-out documents"));
            }
        }
        if config.loss_on == LossOn::Assistant
            && let Some((store, _)) = mix.iter().find(|(store, _)| !store.has_assistant_tokens())
        {
            return Err(DataError::new(format!(
                "source `{}` has no assistant turn, so with loss_on = \"assistant\" nothing of it would be \
                 trained on; add assistant messages, or set loss_on = \"all\"",
                store.meta.source
            )));
        }
        let mut sources = Vec::new();
        let mut split_tokens = Vec::new();
        for (store, weight) in &mix {
            let pool = pool_of(store);
            if pool.is_empty() {
                return Err(DataError::new(format!("source `{}` has every document held out", store.meta.source)));
            }
            // A document is packed with its end-of-document token; a preference pair without.
            let end = u64::from(!store.meta.pairs);
            split_tokens.push(pool.iter().map(|&d| store.doc_len(d as usize) as u64 + end).sum());
            sources.push((store.meta.source.clone(), *weight, pool));
        }
        let mean_doc_len: Vec<f64> = sources
            .iter()
            .zip(&split_tokens)
            .map(|((_, _, pool), tokens)| *tokens as f64 / pool.len() as f64)
            .collect();
        let stream = match config.split {
            Split::Train => "train",
            Split::Holdout => "eval",
        };
        let sampler = Sampler::new(config.seed, stream, sources);
        let sampler = if config.random_draws { sampler.drawing_at_random(mean_doc_len) } else { sampler };
        Ok(Loader {
            stores: mix.into_iter().map(|(s, _)| s).collect(),
            split_tokens,
            sampler,
            packer: Packer::new(config.packing, config.seq_len),
            loss_on_assistant: config.loss_on == LossOn::Assistant,
        })
    }

    /// The layout of the next `n` rows: packed documents, or for preference sources one pair a
    /// row.
    pub fn next_rows(&mut self, n: usize) -> Vec<Row> {
        let stores = &self.stores;
        let sampler = &mut self.sampler;
        if stores.iter().any(|s| s.meta.pairs) {
            return (0..n)
                .map(|_| {
                    let (src, doc) = sampler.next(|s, d| stores[s].doc_len(d as usize) as u64);
                    let (chosen, rejected) = stores[src].pair(doc as usize);
                    self.packer.pair_row(src as u32, doc, chosen, rejected)
                })
                .collect();
        }
        let mut draw = || {
            let (src, doc) = sampler.next(|s, d| stores[s].doc_len(d as usize) as u64 + 1);
            (src as u32, doc, stores[src].doc_len(doc as usize) + 1)
        };
        (0..n).map(|_| self.packer.next_row(&mut draw)).collect()
    }

    pub fn next_batch(&mut self, rows: usize) -> Batch {
        let layout = self.next_rows(rows);
        self.materialize(&layout)
    }

    /// Fill in the token ids, masks, document ids and positions of packed rows.
    pub fn materialize(&self, rows: &[Row]) -> Batch {
        let cap = self.packer.capacity as usize;
        let seq_len = cap - 1;
        let n = rows.len() * seq_len;
        let mut b = Batch {
            rows: rows.len(),
            seq_len,
            input_ids: Vec::with_capacity(n),
            target_ids: Vec::with_capacity(n),
            loss_mask: Vec::with_capacity(n),
            doc_ids: Vec::with_capacity(n),
            position_ids: Vec::with_capacity(n),
            source_ids: Vec::with_capacity(n),
            desirable: Vec::new(),
        };
        let (mut tok, mut seg, mut pos, mut counts) =
            (vec![0u32; cap], vec![PAD_DOC; cap], vec![0u32; cap], vec![false; cap]);
        let mut src = vec![PAD_DOC; cap];
        for row in rows {
            if let Some(label) = row.first().and_then(|p| self.stores[p.source as usize].desirable(p.doc as usize)) {
                b.desirable.push(u8::from(label));
            }
            tok.fill(self.stores.first().map_or(0, |s| s.meta.eos));
            seg.fill(PAD_DOC);
            pos.fill(0);
            counts.fill(false);
            src.fill(PAD_DOC);
            let mut at = 0;
            for (k, piece) in row.iter().enumerate() {
                let store = &self.stores[piece.source as usize];
                let doc = piece.doc as usize;
                let doc_len = store.doc_len(doc) as usize;
                for j in 0..piece.len as usize {
                    let t = piece.start as usize + j;
                    let is_token = t < doc_len;
                    tok[at] = if is_token { store.token(doc, t) } else { store.meta.eos };
                    seg[at] = k as u32;
                    pos[at] = j as u32;
                    src[at] = piece.source;
                    counts[at] = !self.loss_on_assistant || (is_token && store.is_assistant(doc, t));
                    at += 1;
                }
            }
            for i in 0..seq_len {
                b.input_ids.push(tok[i]);
                b.target_ids.push(tok[i + 1]);
                b.doc_ids.push(seg[i]);
                b.position_ids.push(pos[i]);
                b.source_ids.push(src[i]);
                b.loss_mask.push(u8::from(seg[i] != PAD_DOC && seg[i + 1] == seg[i] && counts[i + 1]));
            }
        }
        b
    }

    /// Rows of `seq_len` from now on (a length that grows); what was packed at the old length
    /// and not handed out is packed again at the new one.
    pub fn set_seq_len(&mut self, seq_len: u32) {
        self.packer.set_seq_len(seq_len);
    }

    /// Draw from now on with `weights` (over the mix's sources, in its order), as `phase` of a
    /// mix that changes (phase 0 for online mixing's shares of the moment).
    pub fn set_phase(&mut self, phase: usize, weights: Vec<f64>) {
        self.sampler.set_phase(phase as u32, weights);
    }

    pub fn state(&self) -> LoaderState {
        LoaderState {
            sampler: self.sampler.state.clone(),
            packer: self.packer.state.clone(),
            stats: self.packer.stats.clone(),
        }
    }

    pub fn restore(&mut self, state: LoaderState) {
        self.sampler.restore(state.sampler);
        if let Some(seq_len) = state.packer.seq_len {
            self.packer.capacity = seq_len + 1;
        }
        self.packer.state = state.packer;
        self.packer.stats = state.stats;
        if self.packer.stats.positions == 0 {
            // Written before positions were counted, when every row had the same length.
            self.packer.stats.positions = self.packer.stats.rows * self.packer.capacity as u64;
        }
    }

    pub fn stats(&self) -> LoaderStats {
        let s = &self.sampler.state;
        LoaderStats {
            sources: self
                .stores
                .iter()
                .enumerate()
                .map(|(i, store)| {
                    let tokens = self.packer.stats.source_tokens.get(i).copied().unwrap_or(0);
                    SourceStats {
                        name: store.meta.source.clone(),
                        tokens,
                        docs: s.drawn[i],
                        epochs: tokens as f64 / self.split_tokens[i] as f64,
                    }
                })
                .collect(),
            pack: self.packer.stats.clone(),
            capacity: self.packer.capacity,
        }
    }
}
