//! Hugging Face layout: `config.json` for `LlamaForCausalLM` and `model.safetensors` with the
//! same tensor names, so a result loads in `transformers` as it is.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Result, Tensor};
use recipe_spec::Model as Config;
use serde_json::{Value, json};

use crate::llama::Llama;

pub fn hf_config(c: &Config, eos_token_id: u32) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.d_ff,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim(),
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": "float32",
    })
}

impl Llama {
    /// The parameters as named tensors.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.params.iter().map(|p| (p.name.clone(), p.var.as_tensor().clone())).collect()
    }

    /// Write `model.safetensors` and `config.json` into `dir`.
    pub fn save_pretrained(&self, dir: &Path, eos_token_id: u32) -> Result<()> {
        let map: HashMap<String, Tensor> = self.tensors().into_iter().collect();
        candle_core::safetensors::save(&map, dir.join("model.safetensors"))?;
        let config = serde_json::to_vec_pretty(&hf_config(&self.config, eos_token_id)).expect("plain data");
        std::fs::write(dir.join("config.json"), config).map_err(candle_core::Error::wrap)
    }

    /// Load a model this crate saved (the architecture comes from the recipe).
    pub fn load_pretrained(config: &Config, dir: &Path, device: &Device) -> Result<Llama> {
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), device)?;
        Llama::from_tensors(config, tensors.into_iter().collect(), device)
    }
}
