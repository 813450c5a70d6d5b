//! The mixing sampler: decides which source the next document comes from, so that the tokens
//! taken from each source track its weight within one document at every point (or, for online
//! mixing, at random with the weights as probabilities), and walks each source in a seeded,
//! per-epoch shuffled order, repeating it when it runs out.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

/// Everything that determines the sampler's future: small enough to live in a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplerState {
    /// Tokens taken from each source so far (each document counts its end-of-document token).
    pub taken: Vec<u64>,
    /// Documents drawn from each source so far.
    pub drawn: Vec<u64>,
    /// The current epoch of each source (0 = first pass).
    pub epoch: Vec<u32>,
    /// The position within the current epoch's order.
    pub cursor: Vec<u64>,
    /// The phase of a mix that changes, and the tokens taken from each source when it began:
    /// the shares are kept within a phase, so a new mix starts afresh rather than making up
    /// for the old one.
    #[serde(default, skip_serializing_if = "is_first_phase")]
    pub phase: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub since: Vec<u64>,
}

fn is_first_phase(phase: &u32) -> bool {
    *phase == 0
}

pub struct Sampler {
    seed: [u8; 32],
    names: Vec<String>,
    weights: Vec<f64>,
    /// Per source, the documents (by their number in the store) this sampler may draw.
    pools: Vec<Vec<u32>>,
    /// Per source, the current epoch's order over its pool.
    orders: Vec<Vec<u32>>,
    /// When choosing sources at random: each source's mean document length (tokens), so that a
    /// source is drawn with probability ∝ weight / mean length and its expected share of the
    /// tokens is its weight.
    random_draws: Option<Vec<f64>>,
    pub state: SamplerState,
}

impl Sampler {
    /// `stream` separates independent samplers over the same data (training, evaluation).
    pub fn new(seed: u64, stream: &str, sources: Vec<(String, f64, Vec<u32>)>) -> Sampler {
        let n = sources.len();
        let mut key = blake3::Hasher::new();
        key.update(&seed.to_le_bytes());
        key.update(stream.as_bytes());
        let mut s = Sampler {
            seed: *key.finalize().as_bytes(),
            names: sources.iter().map(|(n, _, _)| n.clone()).collect(),
            weights: sources.iter().map(|(_, w, _)| *w).collect(),
            pools: sources.into_iter().map(|(_, _, p)| p).collect(),
            orders: Vec::new(),
            random_draws: None,
            state: SamplerState {
                taken: vec![0; n],
                drawn: vec![0; n],
                epoch: vec![0; n],
                cursor: vec![0; n],
                phase: 0,
                since: Vec::new(),
            },
        };
        s.orders = (0..n).map(|i| s.order(i, 0)).collect();
        s
    }

    /// Draw each document's source at random, its expected share of the tokens being its
    /// weight, given each source's mean document length in tokens.
    pub fn drawing_at_random(self, mean_doc_len: Vec<f64>) -> Sampler {
        Sampler { random_draws: Some(mean_doc_len), ..self }
    }

    pub fn restore(&mut self, state: SamplerState) {
        self.orders = (0..self.pools.len()).map(|i| self.order(i, state.epoch[i])).collect();
        self.state = state;
    }

    /// The order of source `i`'s pool in `epoch`: a Fisher–Yates shuffle driven by ChaCha8
    /// seeded from (seed, stream, source name, epoch), written out so it never changes with a
    /// crate version.
    fn order(&self, i: usize, epoch: u32) -> Vec<u32> {
        let mut key = blake3::Hasher::new_keyed(&self.seed);
        key.update(self.names[i].as_bytes());
        key.update(&epoch.to_le_bytes());
        let mut rng = ChaCha8Rng::from_seed(*key.finalize().as_bytes());
        let mut order = self.pools[i].clone();
        for j in (1..order.len()).rev() {
            let k = (rng.next_u64() % (j as u64 + 1)) as usize;
            order.swap(j, k);
        }
        order
    }

    /// Use `weights` from now on as `phase` of a mix that changes; entering a new phase starts
    /// its shares afresh. Setting the phase a restored state is in changes nothing.
    pub fn set_phase(&mut self, phase: u32, weights: Vec<f64>) {
        if phase != self.state.phase {
            self.state.phase = phase;
            self.state.since = self.state.taken.clone();
        }
        self.weights = weights;
    }

    /// The next document: from the source (of weight > 0) furthest below its share of the
    /// tokens taken so far in this phase. `len` gives a document's length in tokens,
    /// end-of-document token included.
    pub fn next(&mut self, len: impl Fn(usize, u32) -> u64) -> (usize, u32) {
        let src = match &self.random_draws {
            Some(mean_doc_len) => self.random_source(mean_doc_len),
            None => self.furthest_below_share(),
        };
        if self.state.cursor[src] as usize == self.orders[src].len() {
            self.state.epoch[src] += 1;
            self.state.cursor[src] = 0;
            self.orders[src] = self.order(src, self.state.epoch[src]);
        }
        let doc = self.orders[src][self.state.cursor[src] as usize];
        self.state.cursor[src] += 1;
        self.state.drawn[src] += 1;
        self.state.taken[src] += len(src, doc);
        (src, doc)
    }
}

impl Sampler {
    /// The source (of weight > 0) furthest below its share of the tokens taken in this phase.
    fn furthest_below_share(&self) -> usize {
        let state = &self.state;
        let taken = |s: usize| state.taken[s] - state.since.get(s).copied().unwrap_or(0);
        let total: u64 = (0..self.weights.len()).map(taken).sum();
        (0..self.weights.len())
            .filter(|&s| self.weights[s] > 0.0)
            .max_by(|&a, &b| {
                let deficit = |s: usize| self.weights[s] * total as f64 - taken(s) as f64;
                deficit(a).total_cmp(&deficit(b)).then(b.cmp(&a))
            })
            .expect("a mix has a source of weight > 0")
    }

    /// A source drawn with probability ∝ weight / mean document length, from a stream seeded
    /// by (seed, stream, draws so far): the state restores it exactly.
    fn random_source(&self, mean_doc_len: &[f64]) -> usize {
        let draws: u64 = self.state.drawn.iter().sum();
        let mut key = blake3::Hasher::new_keyed(&self.seed);
        key.update(b"source");
        key.update(&draws.to_le_bytes());
        let bits = u64::from_le_bytes(key.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
        let odds: Vec<f64> = self.weights.iter().zip(mean_doc_len).map(|(w, len)| w / len.max(1.0)).collect();
        let mut left = (bits >> 11) as f64 / (1u64 << 53) as f64 * odds.iter().sum::<f64>();
        let last = odds.iter().rposition(|o| *o > 0.0).expect("a mix has a source of weight > 0");
        odds.iter()
            .position(|o| {
                left -= o;
                *o > 0.0 && left < 0.0
            })
            .unwrap_or(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens taken from each source by `n` draws of documents of `len` tokens each.
    fn draw(sampler: &mut Sampler, n: usize, len: &[u64]) -> Vec<u64> {
        let mut taken = vec![0; len.len()];
        for _ in 0..n {
            let (src, _) = sampler.next(|s, _| len[s]);
            taken[src] += len[src];
        }
        taken
    }

    #[test]
    fn random_draws_give_each_source_its_weight_of_the_tokens() {
        // Documents of 10 and 1,000 tokens: drawing documents with equal odds would give `b`
        // 99% of the tokens.
        let sources = vec![("a".to_string(), 0.75, (0..50).collect()), ("b".to_string(), 0.25, (0..50).collect())];
        let len = [10, 1000];
        let mut sampler = Sampler::new(1, "train", sources).drawing_at_random(vec![10.0, 1000.0]);
        let taken = draw(&mut sampler, 400_000, &len);
        let share = taken[0] as f64 / (taken[0] + taken[1]) as f64;
        assert!((share - 0.75).abs() < 0.02, "{taken:?}");
    }

    #[test]
    fn a_new_phase_keeps_its_own_shares_and_restores_exactly() {
        let sources = vec![("a".to_string(), 1.0, (0..50).collect()), ("b".to_string(), 0.0, (0..50).collect())];
        let len = [10, 30];
        let mut sampler = Sampler::new(1, "train", sources);
        assert_eq!(draw(&mut sampler, 20, &len), [200, 0], "a source of weight 0 is never drawn");
        // The new shares hold within the phase, not over the whole run (which would draw only
        // `b` until it had caught up with the 200 tokens of `a`).
        sampler.set_phase(1, vec![0.25, 0.75]);
        let second = draw(&mut sampler, 40, &len);
        let share = second[1] as f64 / (second[0] + second[1]) as f64;
        assert!((share - 0.75).abs() <= 30.0 / (second[0] + second[1]) as f64, "{second:?}");
        assert!(second[0] > 0);
        // A restored state in the same phase draws exactly what the original goes on to draw.
        let saved = sampler.state.clone();
        let mut restored = Sampler::new(
            1,
            "train",
            vec![("a".to_string(), 1.0, (0..50).collect()), ("b".to_string(), 0.0, (0..50).collect())],
        );
        restored.restore(saved);
        restored.set_phase(1, vec![0.25, 0.75]);
        let ahead: Vec<(usize, u32)> = (0..30).map(|_| sampler.next(|s, _| len[s])).collect();
        let again: Vec<(usize, u32)> = (0..30).map(|_| restored.next(|s, _| len[s])).collect();
        assert_eq!(ahead, again);
    }
}
