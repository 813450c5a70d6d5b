//! Generation: greedy, temperature and top-p (nucleus) decoding over a
//! key/value cache, seeded so the same call gives the same text.

use crate::llama::Llama;
use candle_core::Result;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

#[derive(Clone, Debug)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    /// Keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f64,
    pub seed: u64,
    /// Stop when this token is produced.
    pub stop: Option<u32>,
}

/// Continue `prompt` (token ids); returns the new ids.
pub fn generate(model: &Llama, prompt: &[u32], s: &Sampling) -> Result<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut cache = model.new_cache();
    let room = model.config.max_seq_len as usize;
    let prompt = &prompt[prompt.len().saturating_sub(room.saturating_sub(1))..];
    let mut logits = model.forward_cached(prompt, &mut cache)?;
    let mut out = Vec::new();
    while out.len() < s.max_new_tokens && cache.len < room {
        let row = logits.squeeze(0)?.to_vec1::<f32>()?;
        let next = if s.temperature <= 0.0 { argmax(&row) } else { nucleus(&row, s.temperature, s.top_p, &mut rng) };
        if Some(next) == s.stop {
            break;
        }
        out.push(next);
        logits = model.forward_cached(&[next], &mut cache)?;
    }
    Ok(out)
}

fn argmax(row: &[f32]) -> u32 {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}

fn nucleus(row: &[f32], temperature: f64, top_p: f64, rng: &mut ChaCha8Rng) -> u32 {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(u32, f64)> =
        row.iter().enumerate().map(|(i, &l)| (i as u32, ((l as f64 - max) / temperature).exp())).collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0.0;
    let cut = probs.iter().position(|p| {
        kept += p.1;
        kept >= top_p
    });
    probs.truncate(cut.map_or(probs.len(), |c| c + 1));
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * mass;
    for (id, p) in &probs {
        if u < *p {
            return *id;
        }
        u -= p;
    }
    probs.last().map_or(0, |p| p.0)
}
