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

/// One conversation of a preference pair: its length in tokens and where its answer, the last
/// assistant turn, starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conversation {
    pub len: u32,
    pub answer: u32,
}

impl Conversation {
    /// Where a stretch of `keep` of its tokens starts, to hold as much of the answer as it can.
    fn window(self, keep: u32) -> u32 {
        if keep >= self.len {
            0
        } else if self.len - self.answer <= keep {
            self.len - keep
        } else {
            self.answer.saturating_sub(keep / 4)
        }
    }
}

/// Rows packed but not yet handed out, and `concat`'s partly filled row.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PackerState {
    pub ready: VecDeque<Row>,
    pub open: Row,
    /// Pieces of rows packed at an earlier length and never handed out, packed again (before
    /// any new document) at the length that holds now.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub carried: VecDeque<Piece>,
    /// The length rows are packed at, once it has changed from the one the packer was made
    /// with (a length that grows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<u32>,
}

/// Counts over everything packed so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PackStats {
    pub rows: u64,
    /// Positions in those rows, padding included.
    #[serde(default)]
    pub positions: u64,
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
                self.count(&row);
                return row;
            }
            match self.mode {
                Packing::Concat => self.fill_concat(draw),
                Packing::BestFit => self.fill_best_fit(draw),
                Packing::Pad => {
                    let next = self.next_piece(draw);
                    let chunks = self.chunks(next);
                    self.state.ready.extend(chunks.into_iter().map(|c| vec![c]));
                }
            }
        }
    }

    /// The row of preference pair `doc` of `source`: its chosen conversation (the document's
    /// first `chosen.len` tokens) and its rejected one (the rest), each a segment of its own.
    /// When the two do not fit in a row, one no longer than half the row stays whole and the
    /// other takes the rest (both longer get half each), and each cut conversation keeps what is
    /// scored: its whole answer with as much of its prompt's end as fits (a prompt is cut from
    /// its start, as TRL cuts prompts), or for an answer longer than that, the answer's start
    /// after a quarter of the room's worth of prompt. A cut pair counts as split.
    pub fn pair_row(&mut self, source: u32, doc: u32, chosen: Conversation, rejected: Conversation) -> Row {
        let (room, half) = (self.capacity, self.capacity / 2);
        let kept_chosen = chosen.len.min(half.max(room.saturating_sub(rejected.len)));
        let kept_rejected = rejected.len.min(room - kept_chosen);
        self.stats.docs += 1;
        if (kept_chosen, kept_rejected) != (chosen.len, rejected.len) {
            self.stats.docs_split += 1;
        }
        let row = vec![
            Piece { source, doc, start: chosen.window(kept_chosen), len: kept_chosen },
            Piece { source, doc, start: chosen.len + rejected.window(kept_rejected), len: kept_rejected },
        ];
        self.count(&row);
        row
    }

    /// Count a row handed out.
    fn count(&mut self, row: &Row) {
        self.stats.rows += 1;
        self.stats.positions += self.capacity as u64;
        for p in row {
            let s = p.source as usize;
            if self.stats.source_tokens.len() <= s {
                self.stats.source_tokens.resize(s + 1, 0);
            }
            self.stats.source_tokens[s] += p.len as u64;
            self.stats.tokens += p.len as u64;
        }
    }

    /// Pack rows of `seq_len` from now on. What was packed at the old length and not handed
    /// out is unpacked, in order, and packed again before any new document, so no token is
    /// lost or repeated.
    pub fn set_seq_len(&mut self, seq_len: u32) {
        if seq_len + 1 == self.capacity {
            return;
        }
        let mut pending: VecDeque<Piece> = VecDeque::new();
        let rows = std::mem::take(&mut self.state.ready).into_iter().chain([std::mem::take(&mut self.state.open)]);
        for piece in rows.flatten().chain(std::mem::take(&mut self.state.carried)) {
            // Rejoin a document that a row boundary cut.
            match pending.back_mut() {
                Some(last)
                    if last.source == piece.source && last.doc == piece.doc && last.start + last.len == piece.start =>
                {
                    last.len += piece.len;
                }
                _ => pending.push_back(piece),
            }
        }
        self.state.carried = pending;
        self.state.seq_len = Some(seq_len);
        self.capacity = seq_len + 1;
    }

    /// The next stretch of a document to pack, and whether it is a new document: a carried
    /// piece first, else the next document `draw` yields.
    fn next_piece(&mut self, draw: &mut dyn FnMut() -> (u32, u32, u32)) -> (Piece, bool) {
        match self.state.carried.pop_front() {
            Some(piece) => (piece, false),
            None => {
                let (source, doc, len) = draw();
                self.stats.docs += 1;
                (Piece { source, doc, start: 0, len }, true)
            }
        }
    }

    /// A stretch of a document cut into pieces of at most one row.
    fn chunks(&mut self, (piece, new): (Piece, bool)) -> Vec<Piece> {
        if new && piece.len > self.capacity {
            self.stats.docs_split += 1;
        }
        let end = piece.start + piece.len;
        (piece.start..end)
            .step_by(self.capacity as usize)
            .map(|start| Piece { start, len: self.capacity.min(end - start), ..piece })
            .collect()
    }

    fn fill_concat(&mut self, draw: &mut dyn FnMut() -> (u32, u32, u32)) {
        let (piece, new) = self.next_piece(draw);
        let end = piece.start + piece.len;
        let mut start = piece.start;
        let mut pieces = 0;
        while start < end {
            let used: u32 = self.state.open.iter().map(|p| p.len).sum();
            let take = (self.capacity - used).min(end - start);
            self.state.open.push(Piece { start, len: take, ..piece });
            pieces += 1;
            start += take;
            if used + take == self.capacity {
                let row = std::mem::take(&mut self.state.open);
                self.state.ready.push_back(row);
            }
        }
        if new && pieces > 1 {
            self.stats.docs_split += 1;
        }
    }

    fn fill_best_fit(&mut self, draw: &mut dyn FnMut() -> (u32, u32, u32)) {
        let mut pieces = Vec::new();
        let mut buffered = 0u64;
        while buffered < BEST_FIT_BUFFER_ROWS * self.capacity as u64 {
            let next = self.next_piece(draw);
            buffered += next.0.len as u64;
            pieces.extend(self.chunks(next));
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
