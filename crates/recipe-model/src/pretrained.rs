//! A model in and out of the Hugging Face layout, through `recipe-checkpoint`: the merged
//! weights with their `config.json` (which `transformers` loads as they are), and under LoRA
//! the adapter alone, which `peft` loads.

use std::path::Path;

use candle_core::{Device, Result, Tensor};
use recipe_checkpoint::{AdapterConfig, AdapterKind, config_json, load_checkpoint, save_adapter, save_model};
use recipe_spec::{CheckpointFormat, Model, PeftMethod};

use crate::adapters::VERA_D_INITIAL;
use crate::llama::Llama;

impl Llama {
    /// The trainable parameters as named tensors: what a training checkpoint holds (the
    /// adapters alone under LoRA).
    pub fn trainable_tensors(&self) -> Vec<(String, Tensor)> {
        self.params.iter().map(|p| (p.name.clone(), p.var.as_tensor().clone())).collect()
    }

    /// Write `model.safetensors` (LoRA merged in, in the master dtype) and `config.json` into
    /// `dir`; under PEFT also the adapter alone, `adapter_model.safetensors` and
    /// `adapter_config.json` as the `peft` library writes them (Tied-LoRA as the LoRA adapter
    /// it equals), naming `base_model` as what it adapts. `bos` is the token the tokenizer
    /// starts a text with, when it has one; `eos` lists the tokens that end generation, the
    /// end-of-document token first.
    pub fn save_pretrained(&self, dir: &Path, bos: Option<u32>, eos: &[u32], base_model: &str) -> Result<()> {
        save_model(dir, &self.weights()?, &config_json(&self.config, bos, eos, self.dtypes.weights))?;
        if let Some(lora) = &self.lora {
            let (rank, alpha) = lora.written_rank_alpha();
            let kind = match lora.method {
                PeftMethod::Vera => AdapterKind::Vera { d_initial: VERA_D_INITIAL },
                method => AdapterKind::Lora { alpha, dora: method == PeftMethod::Dora, rslora: lora.rslora },
            };
            let config = AdapterConfig { kind, rank, dropout: lora.dropout, targets: &lora.targets, base_model };
            let tensors = self.adapter_tensors()?;
            save_adapter(dir, &tensors.named, &tensors.shared, &config)?;
        }
        Ok(())
    }

    /// Load a model this crate saved (the architecture comes from the recipe).
    pub fn load_pretrained(config: &Model, dir: &Path, device: &Device) -> Result<Llama> {
        Llama::from_tensors(config, load_checkpoint(dir, CheckpointFormat::HfDir, config)?, device)
    }
}

/// Weights with layers rearranged: layer `i` of the result is layer `map[i]` of `tensors` (a
/// layer may appear several times, when stacking, or not at all, when taking a slice); the
/// embedding, final norm and head are kept.
pub fn remap_layers(tensors: Vec<(String, Tensor)>, map: &[u32]) -> Vec<(String, Tensor)> {
    let layer_of = |name: &str| -> Option<(u32, String)> {
        let rest = name.strip_prefix("model.layers.")?;
        let (index, tail) = rest.split_once('.')?;
        Some((index.parse().ok()?, tail.to_string()))
    };
    let mut out = Vec::new();
    for (name, tensor) in tensors {
        match layer_of(&name) {
            None => out.push((name, tensor)),
            Some((source, tail)) => {
                for (i, _) in map.iter().enumerate().filter(|(_, s)| **s == source) {
                    out.push((format!("model.layers.{i}.{tail}"), tensor.clone()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn layers_are_repeated_or_sliced_by_the_map() {
        let t = |v: f32| Tensor::new(&[v], &Device::Cpu).unwrap();
        let tensors = vec![
            ("model.embed_tokens.weight".to_string(), t(-1.0)),
            ("model.layers.0.mlp.up_proj.weight".to_string(), t(0.0)),
            ("model.layers.1.mlp.up_proj.weight".to_string(), t(1.0)),
            ("model.layers.2.mlp.up_proj.weight".to_string(), t(2.0)),
        ];
        let names = |out: Vec<(String, Tensor)>| -> Vec<(String, f32)> {
            let mut v: Vec<_> = out.into_iter().map(|(n, t)| (n, t.to_vec1::<f32>().unwrap()[0])).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let stacked = names(remap_layers(tensors.clone(), &[0, 1, 2, 0, 1, 2]));
        assert_eq!(stacked.len(), 7);
        assert_eq!(stacked[4], ("model.layers.3.mlp.up_proj.weight".into(), 0.0));
        assert_eq!(stacked[6], ("model.layers.5.mlp.up_proj.weight".into(), 2.0));
        let sliced = names(remap_layers(tensors, &[1, 2]));
        assert_eq!(
            sliced,
            [
                ("model.embed_tokens.weight".into(), -1.0),
                ("model.layers.0.mlp.up_proj.weight".into(), 1.0),
                ("model.layers.1.mlp.up_proj.weight".into(), 2.0)
            ]
        );
    }
}
