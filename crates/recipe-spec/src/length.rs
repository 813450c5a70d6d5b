//! A stage's sequence length: one length throughout, or lengths that grow in phases
//! (`seq_len = [[0, 128], [300, 256], [600, 512]]`, "GrowLength: Accelerating LLMs Pretraining
//! by Progressively Growing Training Length") with `keep = "tokens"` (a phase of shorter rows
//! takes proportionally more of them, so every step trains on as many tokens as a step at the
//! longest length) or `keep = "batch"` (the same rows per step, so shorter phases take fewer
//! tokens).

use serde::Serialize;
use serde::ser::SerializeMap;

use crate::decode::{self, Cx, Fields, only_for};
use crate::diag::Diagnostic;
use crate::tree::Val;
use crate::vocab::Keep;

#[derive(Clone, Debug, PartialEq)]
pub struct Lengths {
    /// From which step each length holds, in order, the first from step 0; one entry for a
    /// fixed length.
    pub phases: Vec<(u64, u32)>,
    /// Default `tokens`; only for lengths that change.
    pub keep: Keep,
}

/// What one step trains on: rows of `seq_len` tokens, `batch_size` of them in
/// micro-batches of `micro_batch_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepShape {
    pub seq_len: u32,
    pub batch_size: u32,
    pub micro_batch_size: u32,
}

impl Lengths {
    pub fn fixed(seq_len: u32) -> Lengths {
        Lengths { phases: vec![(0, seq_len)], keep: Keep::Tokens }
    }

    /// Whether the length changes during the stage.
    pub fn grows(&self) -> bool {
        self.phases.len() > 1
    }

    /// The longest length: what `batch_size` is counted at, what evaluation reads, what
    /// memory is planned for.
    pub fn longest(&self) -> u32 {
        self.phases.iter().map(|(_, len)| *len).max().unwrap_or(1)
    }

    /// The length that holds at `step`.
    pub fn at(&self, step: u64) -> u32 {
        self.phases.iter().rev().find(|(from, _)| *from <= step).map_or(self.longest(), |(_, len)| *len)
    }

    /// The shape of a step at length `seq_len`, for a stage of `batch_size` rows per step in
    /// micro-batches of `micro_batch_size` (both counted at the longest length).
    pub fn shape(&self, seq_len: u32, batch_size: u32, micro_batch_size: u32) -> StepShape {
        let longest = self.longest();
        match self.keep {
            Keep::Tokens => StepShape {
                seq_len,
                batch_size: batch_size * (longest / seq_len),
                micro_batch_size: micro_batch_size * (longest / seq_len),
            },
            Keep::Batch => StepShape { seq_len, batch_size, micro_batch_size },
        }
    }
}

/// Written back as it was written: `seq_len = N`, or `seq_len = [[STEP, N], ...]` with `keep`.
impl Serialize for Lengths {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        match self.phases.as_slice() {
            [(_, len)] => map.serialize_entry("seq_len", len)?,
            phases => {
                map.serialize_entry("seq_len", phases)?;
                map.serialize_entry("keep", &self.keep)?;
            }
        }
        map.end()
    }
}

/// The limits a stage's lengths must keep.
pub(crate) struct LengthBounds {
    /// The length when `seq_len` is not given.
    pub default: u32,
    pub max_seq_len: u32,
    /// Where `max_seq_len` is set, for the error that names it.
    pub max_seq_len_path: String,
    pub steps: u64,
}

pub(crate) fn decode_lengths(cx: &mut Cx, f: &Fields, bounds: &LengthBounds) -> Lengths {
    let path = f.child_path("seq_len");
    let mut phases: Vec<(u64, u32)> = Vec::new();
    // Where each length is written, for the error that names one.
    let mut written: Vec<crate::diag::Origin> = Vec::new();
    let check_fits = |cx: &mut Cx, len: u32, origin: &crate::diag::Origin| {
        if len > bounds.max_seq_len {
            cx.diags.push(
                Diagnostic::new(
                    origin,
                    format!("seq_len ({len}) exceeds the model's max_seq_len ({})", bounds.max_seq_len),
                )
                .label(format!("max_seq_len is set at `{}`", bounds.max_seq_len_path)),
            );
        }
    };
    match f.get("seq_len") {
        None => phases.push((0, bounds.default)),
        Some(node) => {
            cx.origins.insert(path.clone(), node.origin.clone());
            match &node.val {
                Val::Array(items) if !items.is_empty() => {
                    for (i, item) in items.iter().enumerate() {
                        let at = format!("{path}[{i}]");
                        let pair = match &item.val {
                            Val::Array(pair) if pair.len() == 2 => pair,
                            _ => {
                                cx.diags.push(
                                    Diagnostic::new(&item.origin, format!("`{at}` must be a pair [STEP, LENGTH]"))
                                        .label("expected `[0, 128]`"),
                                );
                                continue;
                            }
                        };
                        let from = decode::count(cx, &pair[0], &format!("{at}[0]"));
                        let len = decode::size(1, 1 << 22)(cx, &pair[1], &format!("{at}[1]"));
                        let (Some(from), Some(len)) = (from, len) else { continue };
                        let expected = if phases.is_empty() && from != 0 {
                            Some("the first length holds from step 0".to_string())
                        } else if phases.last().is_some_and(|(last, _)| from <= *last) {
                            Some("lengths in order of their first step, each later than the last".into())
                        } else if from >= bounds.steps && bounds.steps > 0 {
                            Some(format!("a step before the stage's last ({})", bounds.steps))
                        } else {
                            None
                        };
                        if let Some(expected) = expected {
                            cx.diags.push(
                                Diagnostic::new(&pair[0].origin, format!("`{at}` starts at step {from}"))
                                    .label(format!("expected {expected}")),
                            );
                        }
                        check_fits(cx, len, &pair[1].origin);
                        phases.push((from, len));
                        written.push(pair[1].origin.clone());
                    }
                }
                Val::Array(_) => cx.diags.push(
                    Diagnostic::new(&node.origin, format!("`{path}` is an empty list"))
                        .label("expected a length, or lengths from steps: `[[0, 128], [300, 256]]`"),
                ),
                _ => {
                    if let Some(len) = decode::size(1, 1 << 22)(cx, node, &path) {
                        check_fits(cx, len, &node.origin);
                        phases.push((0, len));
                    }
                }
            }
        }
    }
    if phases.is_empty() {
        phases.push((0, bounds.default));
    }
    let grows = phases.len() > 1;
    only_for(cx, f, "keep", f.get("keep").is_some(), grows, "`seq_len` given in phases, `[[0, 128], [300, 256]]`");
    let lengths = Lengths { phases, keep: f.word::<Keep>(cx, "keep").unwrap_or(Keep::Tokens) };
    if lengths.keep == Keep::Tokens && grows {
        let longest = lengths.longest();
        for (i, ((_, len), origin)) in lengths.phases.iter().zip(&written).enumerate() {
            if !longest.is_multiple_of(*len) {
                let divisors: Vec<String> =
                    (1..=longest).rev().filter(|d| longest.is_multiple_of(*d)).take(4).map(|d| d.to_string()).collect();
                cx.diags.push(
                    Diagnostic::new(
                        origin,
                        format!("`{path}[{i}]`: length {len} does not divide the longest length, {longest}"),
                    )
                    .label(format!(
                        "with keep = \"tokens\" a step at length {len} takes {longest}/{len} times the rows of a step at \
                         {longest}, which must be whole"
                    ))
                    .help(format!("use lengths that divide {longest} ({}, ...), or keep = \"batch\"", divisors.join(", "))),
                );
            }
        }
    }
    lengths
}
