//! `recipe-model` is the model: a Llama-style decoder on Candle written for training (every op
//! has a backward pass; attention can be restricted to the packed document of each token),
//! its seeded initialisation, its precision (f32 master weights cast to a half-precision
//! compute dtype where used), LoRA, DoRA, VeRA and Tied-LoRA adapters over frozen base weights
//! (and ReLoRA's restarts), the
//! cross-entropy over masked targets, and generation with a key/value cache. Tensors carry
//! Hugging Face Llama names, so saving and loading (`save_pretrained`, `load_pretrained`)
//! are a thin layer over `recipe-checkpoint`'s formats. It knows nothing of recipes beyond the
//! `[model]`, `peft` and `freeze` tables, nor of data, optimizers or the run directory. Weights
//! can be frozen, and layers repeated or sliced (`remap_layers`) to grow or shrink a model.

mod adapters;
mod generate;
mod llama;
mod loss;
mod pretrained;

pub use adapters::{AdapterTensors, Lora, VERA_D_INITIAL, VERA_SHARED, lora_names, magnitude_name};
pub use generate::{Sampling, generate};
pub use llama::{Dtypes, KvCache, Llama, Param};
pub use loss::{masked_cross_entropy, masked_cross_entropy_rows};
pub use pretrained::remap_layers;
pub use recipe_kernels::KeySpans;
