//! The mixing sampler: decides which source the next document comes from, so that the tokens
//! taken from each source track its weight within one document at every point, and walks each
//! source in a seeded, per-epoch shuffled order, repeating it when it runs out.

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
}

pub struct Sampler {
    seed: [u8; 32],
    names: Vec<String>,
    weights: Vec<f64>,
    /// Per source, the documents (by their number in the store) this sampler may draw.
    pools: Vec<Vec<u32>>,
    /// Per source, the current epoch's order over its pool.
    orders: Vec<Vec<u32>>,
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
            state: SamplerState { taken: vec![0; n], drawn: vec![0; n], epoch: vec![0; n], cursor: vec![0; n] },
        };
        s.orders = (0..n).map(|i| s.order(i, 0)).collect();
        s
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

    /// The next document: from the source furthest below its share of the tokens taken so far.
    /// `len` gives a document's length in tokens, end-of-document token included.
    pub fn next(&mut self, len: impl Fn(usize, u32) -> u64) -> (usize, u32) {
        let total: u64 = self.state.taken.iter().sum();
        let src = (0..self.weights.len())
            .max_by(|&a, &b| {
                let deficit = |s: usize| self.weights[s] * total as f64 - self.state.taken[s] as f64;
                deficit(a).total_cmp(&deficit(b)).then(b.cmp(&a))
            })
            .expect("a loader has at least one source");
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
