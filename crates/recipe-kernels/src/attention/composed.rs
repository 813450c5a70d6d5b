//! The composed fallback: Candle's matmuls around the masked softmax kernel (itself checked
//! against plain Candle ops), gradients derived by Candle; it runs on every device, and is the
//! reference the native kernel is tested against. It materialises the scores of every query
//! against every key.

use candle_core::{Result, Tensor};

use super::{KeySpans, Scores};
use crate::masked_softmax;

pub fn attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, spans: &KeySpans, scores: Scores) -> Result<Tensor> {
    spans.check(q, k)?;
    let (b, h, _, _) = q.dims4()?;
    let (kvh, tk, hd) = (k.dim(1)?, k.dim(2)?, k.dim(3)?);
    let repeat = |x: &Tensor| -> Result<Tensor> {
        match h / kvh {
            1 => x.contiguous(),
            n => x.unsqueeze(2)?.expand((b, kvh, n, tk, hd))?.reshape((b, h, tk, hd)),
        }
    };
    let dots = q.contiguous()?.matmul(&repeat(k)?.t()?.contiguous()?)?;
    // In f32 whatever the scores' dtype: the softmax widens its inputs.
    let mask = spans.additive_mask(q.device())?;
    let probs = match scores.cap {
        Some(cap) => masked_softmax(&(dots.affine(scores.scale / cap, 0.0)?.tanh()? * cap)?, &mask, 1.0)?,
        None => masked_softmax(&dots, &mask, scores.scale)?,
    };
    probs.matmul(&repeat(v)?)?.transpose(1, 2)?.contiguous()
}
