//! The composed fallback: Candle's `index_select`, whose gradient Candle derives; it runs on
//! every device, and is the reference the native kernels are tested against.

use candle_core::{Result, Tensor};

pub fn embedding_composed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    table.index_select(ids, 0)
}
