//! Attention over spans of keys, fused and tiled (flash-style): `softmax(scale · q·kᵀ) · v`
//! where each query sees one contiguous span of its row's keys — in training, from the start
//! of its document to itself (causal attention inside packed documents); when generating, the
//! whole cache and itself. Grouped-query heads share their key/value head in place. Scores may
//! be capped first, `cap · tanh(s / cap)` (Gemma 2); backward then multiplies each score's
//! gradient by the cap's slope `1 − tanh²`, recomputed beside the probability.
//!
//! Forward, per (row, head) and per block of queries: the scores against the keys the block
//! can see (the union of its spans, so tiles past the diagonal or before the document are never
//! computed), softmax in place, times `v`; it keeps each query's log-sum-exp. At most a block
//! × keys of scores exists at a time, never the `T × T` matrix per layer. Backward recomputes a
//! block's probabilities from the log-sum-exp: with `D = Σ dO·O` per query,
//! `dS = P ⊙ (dO·vᵀ − D)`, `dq = scale · dS·k`, `dk += scale · dSᵀ·q`, `dv += Pᵀ·dO`; each
//! (row, key/value head) is one task, so its sums run in a fixed order and resume is exact.
//!
//! On CUDA (`kernels.cu`, head dimensions 32, 64, 128 and 256) the same scheme runs with four
//! threads per query (eight at 256), each holding its share of the head dimension in
//! registers, tiles of 32 keys (16 at 256) in shared memory and the softmax online; backward is a pass for `dq` per block of
//! queries and one for `dk`, `dv` per block of keys (every query head of the group, in order),
//! so no sum depends on timing there either. bf16 and f16 on sm_80 and newer take the
//! tensor-core version of the same passes (`mma.cu`) up to head dimension 128.

mod composed;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use std::sync::Arc;

use candle_core::{Device, Result, Tensor};
pub use composed::attention_composed;

use crate::{Backend, widened};

/// Which keys each query attends: query `i` of row `r` sees keys `lo..hi` of row `r`.
#[derive(Clone, Debug)]
pub struct KeySpans {
    spans: Arc<[(u32, u32)]>,
    rows: usize,
    queries: usize,
    keys: usize,
    /// The spans on the GPU, uploaded by the first layer that attends there with them (or a
    /// clone of them); every other layer of the pass reuses that copy.
    #[cfg(feature = "cuda")]
    on_cuda: cuda::Uploaded,
}

impl KeySpans {
    fn new(spans: Vec<(u32, u32)>, rows: usize, queries: usize, keys: usize) -> KeySpans {
        KeySpans {
            spans: spans.into(),
            rows,
            queries,
            keys,
            #[cfg(feature = "cuda")]
            on_cuda: Default::default(),
        }
    }

    /// Causal attention inside documents: `doc_ids` `[rows · t]` numbers each position's
    /// document within its row (documents are contiguous runs, as packing lays them out); a
    /// position sees its document's positions up to itself.
    pub fn documents(doc_ids: &[u32], rows: usize, t: usize) -> KeySpans {
        assert_eq!(doc_ids.len(), rows * t, "one document id per position");
        let mut spans = Vec::with_capacity(rows * t);
        for row in doc_ids.chunks_exact(t.max(1)) {
            let mut start = 0;
            for (i, doc) in row.iter().enumerate() {
                if i > 0 && *doc != row[i - 1] {
                    start = i;
                }
                spans.push((start as u32, i as u32 + 1));
            }
        }
        KeySpans::new(spans, rows, t, t)
    }

    /// `t` new queries after `past` cached keys, in one row: query `i` sees keys `0..=past + i`.
    pub fn after(past: usize, t: usize) -> KeySpans {
        KeySpans::new((0..t).map(|i| (0, (past + i + 1) as u32)).collect(), 1, t, past + t)
    }

    /// The same spans cut to at most the `window` keys that end each one (sliding-window
    /// attention: a query sees itself and the `window − 1` keys before it, within its span).
    pub fn within(&self, window: usize) -> KeySpans {
        let spans = self.spans.iter().map(|&(lo, hi)| (lo.max(hi.saturating_sub(window as u32)), hi)).collect();
        KeySpans::new(spans, self.rows, self.queries, self.keys)
    }

    /// The same pattern as an additive mask `[rows, 1, queries, keys]`: 0 where a query sees a
    /// key, `f32::MIN / 2` where not (what a plain softmax needs).
    pub fn additive_mask(&self, device: &Device) -> Result<Tensor> {
        let (tq, tk) = (self.queries, self.keys);
        let mut mask = vec![f32::MIN / 2.0; self.rows * tq * tk];
        for (q, &(lo, hi)) in self.spans.iter().enumerate() {
            mask[q * tk + lo as usize..q * tk + hi as usize].fill(0.0);
        }
        Tensor::from_vec(mask, (self.rows, 1, tq, tk), device)
    }

    fn check(&self, q: &Tensor, k: &Tensor) -> Result<()> {
        let (b, _, tq, _) = q.dims4()?;
        let tk = k.dim(2)?;
        if (b, tq, tk) != (self.rows, self.queries, self.keys) {
            candle_core::bail!(
                "attention: spans for {} rows of {} queries over {} keys, tensors have {b} rows of {tq} over {tk}",
                self.rows,
                self.queries,
                self.keys
            );
        }
        Ok(())
    }
}

/// How a query scores a key: `scale · q·k`, then, where there is a cap, `cap · tanh(s / cap)`
/// (Gemma 2's `attn_logit_softcapping`, which keeps every score within ±cap).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    pub scale: f64,
    pub cap: Option<f64>,
}

impl Scores {
    /// Scaled and not capped, as most models score.
    pub fn scaled(scale: f64) -> Scores {
        Scores { scale, cap: None }
    }
}

/// Attention of `q` `[B, H, Tq, hd]` over `k`, `v` `[B, KVH, Tk, hd]` (H a multiple of KVH),
/// each query over its span of keys; the result is `[B, Tq, H, hd]` (heads side by side, as the
/// output projection reads them), in `q`'s dtype. The CPU kernel computes half-precision
/// inputs in f32, and so does the CUDA kernel (head dimensions 32, 64, 128 and 256) reading them in
/// their dtype; the composed fallback multiplies in their dtype, the softmax in f32.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, spans: &KeySpans, scores: Scores) -> Result<Tensor> {
    spans.check(q, k)?;
    match Backend::of(q) {
        Backend::Cpu => {
            let dtype = widened(q.dtype());
            let (q32, k32, v32) = (q.to_dtype(dtype)?, k.to_dtype(dtype)?, v.to_dtype(dtype)?);
            cpu::attention(&q32, &k32, &v32, spans, scores)?.to_dtype(q.dtype())
        }
        // The kernels are built for the common head dimensions; others compose.
        #[cfg(feature = "cuda")]
        Backend::Cuda if cuda::has_kernel_for(q.dim(3)?) => cpu::attention(q, k, v, spans, scores),
        _ => attention_composed(q, k, v, spans, scores),
    }
}
