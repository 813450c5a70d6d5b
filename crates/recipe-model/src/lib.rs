//! `recipe-model` is the model side of training: a Llama-style decoder on Candle written for
//! training (every op has a backward pass; attention can be restricted to the packed document
//! of each token), its seeded initialisation, the cross-entropy loss over masked targets, and
//! generation with a key/value cache. Tensors carry Hugging Face Llama names, so a
//! `model.safetensors` it writes loads in `transformers` without renaming.

mod hf;
mod llama;
mod loss;

pub use hf::hf_config;
pub use llama::{KvCache, Llama, Param, document_mask};
pub use loss::masked_cross_entropy;
