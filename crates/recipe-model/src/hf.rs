//! Hugging Face layout: `config.json` for `LlamaForCausalLM` and `model.safetensors` with the
//! same tensor names, so a result loads in `transformers` as it is.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use recipe_spec::Model as Config;
use recipe_spec::checkpoint::CheckpointFormat;
use serde_json::{Value, json};

use crate::import::load_checkpoint;
use crate::llama::{Llama, Lora};

pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// `config.json` for `LlamaForCausalLM`. `eos` lists the tokens that end generation, the
/// end-of-document token first (also written as `bos_token_id`); a chat model adds
/// `<|im_end|>`, so `transformers` stops at the end of an answer too. `dtype` is what
/// `model.safetensors` holds.
pub fn hf_config(c: &Config, eos: &[u32], dtype: DType) -> Value {
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
        "bos_token_id": eos.first(),
        "eos_token_id": if eos.len() == 1 { json!(eos[0]) } else { json!(eos) },
        "torch_dtype": torch_dtype(dtype),
    })
}

/// The name `transformers` gives `dtype` in `config.json`.
pub fn torch_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// The `adapter_config.json` of a PEFT LoRA adapter, as the `peft` library writes it.
pub fn adapter_config(lora: &Lora, base_model: &str) -> Value {
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": lora.targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_dora": lora.dora,
        "inference_mode": true,
    })
}

/// The prefix `peft` puts before a base model's tensor names.
const PEFT_PREFIX: &str = "base_model.model.";

impl Llama {
    /// The trainable parameters as named tensors: what a checkpoint holds.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.params.iter().map(|p| (p.name.clone(), p.var.as_tensor().clone())).collect()
    }

    /// Write `model.safetensors` (LoRA merged in, in the master dtype) and `config.json` into
    /// `dir`; under LoRA also
    /// the adapter alone, `adapter_model.safetensors` and `adapter_config.json`, naming
    /// `base_model` as what it adapts.
    pub fn save_pretrained(&self, dir: &Path, eos: &[u32], base_model: &str) -> Result<()> {
        let map: HashMap<String, Tensor> = self.weights()?.into_iter().collect();
        candle_core::safetensors::save(&map, dir.join("model.safetensors"))?;
        let config = hf_config(&self.config, eos, self.dtypes.weights);
        let config = serde_json::to_vec_pretty(&config).expect("plain data");
        std::fs::write(dir.join("config.json"), config).map_err(candle_core::Error::wrap)?;
        if let Some(lora) = &self.lora {
            let adapters: HashMap<String, Tensor> =
                self.tensors().into_iter().map(|(name, t)| (format!("{PEFT_PREFIX}{name}"), t)).collect();
            candle_core::safetensors::save(&adapters, dir.join(ADAPTER_WEIGHTS))?;
            let config = serde_json::to_vec_pretty(&adapter_config(lora, base_model)).expect("plain data");
            std::fs::write(dir.join(ADAPTER_CONFIG), config).map_err(candle_core::Error::wrap)?;
        }
        Ok(())
    }

    /// Load a model this crate saved (the architecture comes from the recipe).
    pub fn load_pretrained(config: &Config, dir: &Path, device: &Device) -> Result<Llama> {
        Llama::from_tensors(config, load_checkpoint(dir, CheckpointFormat::HfDir, config)?, device)
    }
}
