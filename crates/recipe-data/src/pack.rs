//! Packing documents into rows of `seq_len + 1` tokens (inputs and shifted targets):
//! `concat` streams documents and cuts rows wherever they fill; `best-fit` splits documents
//! longer than a row into row-sized chunks and packs a buffer of chunks best-fit-decreasing;
//! `pad` puts one document (or chunk) in each row and pads the rest.
//!
//! Packing decides layout only, as [`Piece`]s (a stretch of one document); the loader fills in
//! token ids. `recipe plan` runs the same packer on document lengths alone.

use std::collections::{BTreeMap, VecDeque};

use recipe_spec::Packing;
use serde::{Deserialize, Serialize};

/// Tokens `start..start + len` of one document, whose token `doc_len` is its end-of-document
/// token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    pub source: u32,
    pub doc: u32,
    pub start: u32,
    pub len: u32,
}

pub type Row = Vec<Piece>;

/// Rows packed but not yet handed out, and `concat`'s partly filled row.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PackerState {
    pub ready: VecDeque<Row>,
    pub open: Row,
}

/// Counts over everything packed so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PackStats {
    pub rows: u64,
    /// Tokens placed in rows (the rest of each row is padding).
    pub tokens: u64,
    /// Of those, per source.
    pub source_tokens: Vec<u64>,
    pub docs: u64,
    /// Documents cut into more than one piece.
    pub docs_split: u64,
}

/// How many rows' worth of documents best-fit packs at a time: more packs tighter.
const BEST_FIT_BUFFER_ROWS: u64 = 256;

pub struct Packer {
    pub mode: Packing,
    /// Tokens per row: seq_len + 1.
    pub capacity: u32,
    pub state: PackerState,
    pub stats: PackStats,
}

impl Packer {
    pub fn new(mode: Packing, seq_len: u32) -> Packer {
        Packer { mode, capacity: seq_len + 1, state: PackerState::default(), stats: PackStats::default() }
    }

    /// The next row. `draw` yields the next document as (source, doc, length with its
    /// end-of-document token).
    pub fn next_row(&mut self, draw: &mut dyn FnMut() -> (u32, u32, u32)) -> Row {
        loop {
            if let Some(row) = self.state.ready.pop_front() {
                self.stats.rows += 1;
                for p in &row {
                    let s = p.source as usize;
                    if self.stats.source_tokens.len() <= s {
                        self.stats.source_tokens.resize(s + 1, 0);
                    }
                    self.stats.source_tokens[s] += p.len as u64;
                    self.stats.tokens += p.len as u64;
                }
                return row;
            }
            match self.mode {
                Packing::Concat => self.fill_concat(draw),
                Packing::BestFit => self.fill_best_fit(draw),
                Packing::Pad => {
                    let (source, doc, len) = draw();
                    let chunks = self.chunks(source, doc, len);
                    self.state.ready.extend(chunks.into_iter().map(|c| vec![c]));
                }
            }
        }
    }

    /// A document cut into pieces of at most one row.
    fn chunks(&mut self, source: u32, doc: u32, len: u32) -> Vec<Piece> {
        self.stats.docs += 1;
        if len > self.capacity {
            self.stats.docs_split += 1;
        }
        (0..len)
            .step_by(self.capacity as usize)
            .map(|start| Piece { source, doc, start, len: self.capacity.min(len - start) })
            .collect()
    }

    fn fill_concat(&mut self, draw: &mut dyn FnMut() -> (u32, u32, u32)) {
        let (source, doc, len) = draw();
        self.stats.docs += 1;
        let mut start = 0;
        let mut pieces = 0;
        while start < len {
            let used: u32 = self.state.open.iter().map(|p| p.len).sum();
            let take = (self.capacity - used).min(len - start);
            self.state.open.push(Piece { source, doc, start, len: take });
            pieces += 1;
            start += take;
            if used + take == self.capacity {
                let row = std::mem::take(&mut self.state.open);
                self.state.ready.push_back(row);
            }
        }
        if pieces > 1 {
            self.stats.docs_split += 1;
        }
    }

    fn fill_best_fit(&mut self, draw: &mut dyn FnMut() -> (u32, u32, u32)) {
        let mut pieces = Vec::new();
        let mut buffered = 0u64;
        while buffered < BEST_FIT_BUFFER_ROWS * self.capacity as u64 {
            let (source, doc, len) = draw();
            buffered += len as u64;
            pieces.extend(self.chunks(source, doc, len));
        }
        // Longest first; ties in draw order, so packing is deterministic.
        pieces.sort_by_key(|p| std::cmp::Reverse(p.len));
        let mut bins: Vec<(u32, Row)> = Vec::new();
        // Remaining capacity -> bins with exactly that much room, in creation order.
        let mut by_room: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for piece in pieces {
            let fit = by_room.range(piece.len..).next().map(|(&room, _)| room);
            let bin = match fit {
                Some(room) => {
                    let list = by_room.get_mut(&room).expect("found above");
                    let bin = list.remove(0);
                    if list.is_empty() {
                        by_room.remove(&room);
                    }
                    bin
                }
                None => {
                    bins.push((self.capacity, Vec::new()));
                    bins.len() - 1
                }
            };
            bins[bin].0 -= piece.len;
            bins[bin].1.push(piece);
            if bins[bin].0 > 0 {
                by_room.entry(bins[bin].0).or_default().push(bin);
            }
        }
        self.state.ready.extend(bins.into_iter().map(|(_, row)| row));
    }
}
