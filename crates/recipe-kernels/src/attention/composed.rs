//! The composed fallback: Candle's matmuls around the masked softmax kernel (itself checked
//! against plain Candle ops), gradients derived by Candle; it runs on every device, and is the
//! reference the native kernel is tested against. It materialises the scores of every query
//! against every key.

use candle_core::{Result, Tensor};

use super::KeySpans;
use crate::masked_softmax;

pub fn attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, spans: &KeySpans, scale: f64) -> Result<Tensor> {
    attend(q, k, v, spans, scale, None)
}

/// Attention whose scaled scores are capped at ±`cap` by `cap · tanh(s / cap)` before the
/// softmax (Gemma 2's `attn_logit_softcapping`). No fused kernel caps: this composition runs on
/// every device and keeps the probabilities for backward.
pub fn attention_softcapped(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spans: &KeySpans,
    scale: f64,
    cap: f64,
) -> Result<Tensor> {
    spans.check(q, k)?;
    attend(q, k, v, spans, scale, Some(cap))
}

fn attend(q: &Tensor, k: &Tensor, v: &Tensor, spans: &KeySpans, scale: f64, cap: Option<f64>) -> Result<Tensor> {
    let (b, h, _, _) = q.dims4()?;
    let (kvh, tk, hd) = (k.dim(1)?, k.dim(2)?, k.dim(3)?);
    let repeat = |x: &Tensor| -> Result<Tensor> {
        match h / kvh {
            1 => x.contiguous(),
            n => x.unsqueeze(2)?.expand((b, kvh, n, tk, hd))?.reshape((b, h, tk, hd)),
        }
    };
    let scores = q.contiguous()?.matmul(&repeat(k)?.t()?.contiguous()?)?;
    // In f32 whatever the scores' dtype: the softmax widens its inputs.
    let mask = spans.additive_mask(q.device())?;
    let (scores, scale) = match cap {
        Some(cap) => ((scores.affine(scale / cap, 0.0)?.tanh()? * cap)?, 1.0),
        None => (scores, scale),
    };
    let probs = masked_softmax(&scores, &mask, scale)?;
    probs.matmul(&repeat(v)?)?.transpose(1, 2)?.contiguous()
}
