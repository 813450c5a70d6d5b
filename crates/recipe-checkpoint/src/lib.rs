//! `recipe-checkpoint` owns every file format a model lives in. It reads what a checkpoint
//! says about itself without loading weights ([`Headers`], the [`recipe_spec::CheckpointReader`]
//! that validation and `plan` use); loads weights from a Hugging Face folder (sharded or not),
//! a `.safetensors` file or a llama.cpp `.gguf` ([`load_checkpoint`]); maps `[model]` to and
//! from `config.json` through one table ([`HF_CONFIG`]); writes a model folder and a PEFT
//! adapter; rebuilds a GGUF file's tokenizer and writes a model as one ([`write_gguf`]); and writes and verifies the atomic, checksummed
//! training checkpoints that exact resume reads ([`training`]). It knows file formats and
//! tensor names only: no model, no training, no run-directory bookkeeping beyond the
//! `step-NNNNNN` folders it is handed.

mod gguf;
mod headers;
mod hf;
mod tokenizer;
pub mod training;
mod weights;

pub use gguf::{GgmlDType, GgufTokenizer, gguf_round_trip, gguf_storage, write_gguf};
pub use headers::Headers;
pub use hf::{
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterConfig, AdapterKind, HF_CONFIG, IfAbsent, MODEL_CONFIG, MODEL_WEIGHTS,
    adapter_config, config_json, load_adapter, read_adapter_config, read_config, save_adapter, save_model, torch_dtype,
};
pub use tokenizer::{CHAT_TEMPLATE_FILE, read_own_template, read_tokenizer, write_own_template};
pub use weights::load_checkpoint;
