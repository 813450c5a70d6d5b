//! A model in and out of the Hugging Face layout, through `recipe-checkpoint`: the merged
//! weights with their `config.json` (which `transformers` loads as they are), and under LoRA
//! the adapter alone, which `peft` loads.

use std::path::Path;

use candle_core::{Device, Result, Tensor};
use recipe_checkpoint::{AdapterConfig, config_json, load_checkpoint, save_adapter, save_model};
use recipe_spec::{CheckpointFormat, Model};

use crate::llama::Llama;

impl Llama {
    /// The trainable parameters as named tensors: what a training checkpoint holds (the
    /// adapters alone under LoRA).
    pub fn trainable_tensors(&self) -> Vec<(String, Tensor)> {
        self.params.iter().map(|p| (p.name.clone(), p.var.as_tensor().clone())).collect()
    }

    /// Write `model.safetensors` (LoRA merged in, in the master dtype) and `config.json` into
    /// `dir`; under LoRA also the adapter alone, `adapter_model.safetensors` and
    /// `adapter_config.json`, naming `base_model` as what it adapts. `eos` lists the tokens that
    /// end generation, the end-of-document token first.
    pub fn save_pretrained(&self, dir: &Path, eos: &[u32], base_model: &str) -> Result<()> {
        save_model(dir, &self.weights()?, &config_json(&self.config, eos, self.dtypes.weights))?;
        if let Some(lora) = &self.lora {
            let config = AdapterConfig {
                rank: lora.rank,
                alpha: lora.alpha,
                dropout: lora.dropout,
                targets: &lora.targets,
                dora: lora.dora,
                base_model,
            };
            save_adapter(dir, &self.trainable_tensors(), &config)?;
        }
        Ok(())
    }

    /// Load a model this crate saved (the architecture comes from the recipe).
    pub fn load_pretrained(config: &Model, dir: &Path, device: &Device) -> Result<Llama> {
        Llama::from_tensors(config, load_checkpoint(dir, CheckpointFormat::HfDir, config)?, device)
    }
}
