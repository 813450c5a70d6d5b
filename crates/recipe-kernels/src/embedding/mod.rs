//! Token embedding as one op: forward gathers the ids' rows of the table; backward sums each
//! token's output gradients into its row. Candle's `index_select` differentiates to
//! `index_add`, which on CUDA gives one thread per column and walks every position of the batch
//! in turn (768 threads, one SM, for the whole step's 16k tokens), and sums a half-precision
//! table's gradient in half precision. Here backward groups the positions by token on the host
//! (a counting sort over the ids: O(tokens + vocabulary), positions ascending within a token),
//! then each row of the table sums its positions' gradient rows in that order, in f32 (f64 for
//! f64), rows in parallel: no atomics, so the sums repeat bit for bit, and in the order
//! Candle's CPU `index_add` adds them.

mod composed;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{DType, Result, Tensor};
pub use composed::embedding_composed;

use crate::Backend;

/// The rows of `table` `[vocabulary, d]` at `ids` (u32, `[N]`): `[N, d]` in the table's dtype.
/// An id outside the vocabulary is an error.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    if ids.dtype() != DType::U32 || ids.rank() != 1 {
        candle_core::bail!("embedding: ids must be u32 of one dimension, not {:?} {:?}", ids.dtype(), ids.dims());
    }
    match Backend::of(table) {
        Backend::Composed => embedding_composed(table, ids),
        _ => cpu::embedding(table, ids),
    }
}

/// The positions of a batch grouped by token: the positions of token `v` are
/// `order[offsets[v]..offsets[v + 1]]`, ascending.
struct Groups {
    offsets: Vec<u32>,
    order: Vec<u32>,
}

impl Groups {
    fn of(ids: &[u32], vocabulary: usize) -> Result<Groups> {
        let mut offsets = vec![0u32; vocabulary + 1];
        for &id in ids {
            if id as usize >= vocabulary {
                candle_core::bail!("embedding: token id {id} is outside the vocabulary of {vocabulary}");
            }
            offsets[id as usize + 1] += 1;
        }
        for v in 0..vocabulary {
            offsets[v + 1] += offsets[v];
        }
        let mut next = offsets.clone();
        let mut order = vec![0u32; ids.len()];
        for (position, &id) in ids.iter().enumerate() {
            order[next[id as usize] as usize] = position as u32;
            next[id as usize] += 1;
        }
        Ok(Groups { offsets, order })
    }

    fn rows(&self) -> usize {
        self.offsets.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::Groups;

    #[test]
    fn positions_are_grouped_by_token_in_order() {
        let groups = Groups::of(&[3, 0, 3, 1, 3, 0], 5).unwrap();
        assert_eq!(groups.offsets, [0, 2, 3, 3, 6, 6]);
        assert_eq!(groups.order, [1, 5, 3, 0, 2, 4]);
        let error = Groups::of(&[1, 5], 5).err().unwrap().to_string();
        assert!(error.contains("token id 5 is outside the vocabulary of 5"), "{error}");
    }
}
