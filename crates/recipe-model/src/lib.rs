//! `recipe-model` is the model side of training: a Llama-style decoder on Candle written for
//! training (every op has a backward pass; attention can be restricted to the packed document
//! of each token), its seeded initialisation, the cross-entropy loss over masked targets, and
//! generation with a key/value cache; LoRA adapters over frozen base weights; and import of
//! published checkpoints (Hugging Face folders, safetensors, GGUF). Tensors carry Hugging Face
//! Llama names, so a `model.safetensors` it writes loads in `transformers` without renaming,
//! and an adapter loads in `peft`.

mod hf;
mod import;
mod llama;
mod loss;

pub use hf::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_config, hf_config, torch_dtype};
pub use import::load_checkpoint;
pub use llama::{Dtypes, KvCache, Llama, Lora, Param, document_mask, lora_names, magnitude_name};
pub use loss::masked_cross_entropy;
