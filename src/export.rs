//! `recipe export`: copy a finished stage's result, a Hugging Face model directory
//! (`config.json`, `model.safetensors` with any LoRA merged in, `tokenizer.json`, and a
//! `tokenizer_config.json` with the chat template it trained with) or a LoRA stage's PEFT
//! adapter, to a folder of the user's choice, in the dtype asked for, and check that it loads
//! back bit for bit.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use recipe_checkpoint::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, MODEL_CONFIG, MODEL_WEIGHTS, torch_dtype};
use recipe_data::{TOKENIZER_FILE, Tok};
use recipe_model::{Dtypes, Llama};
use recipe_run::load_tokenizer;
use recipe_spec::{ChatTemplate, Precision, Recipe, Stage, TokenizerFile};

use crate::{Failure, load};

/// Where and what to export.
pub struct Target<'a> {
    pub dir: &'a Path,
    /// Write into a folder that is not empty.
    pub force: bool,
    /// The PEFT adapter alone, not the merged weights.
    pub adapter: bool,
    /// `f32`, `bf16` or `f16`; by default what the stage computed in.
    pub dtype: Option<&'a str>,
}

pub fn run(path: &Path, sets: &[String], runs: &Path, stage_name: &str, target: &Target) -> Result<(), Failure> {
    let Target { dir: out, force, adapter, dtype } = *target;
    let recipe = load::load(path, sets)?;
    let stage = load::stage(&recipe, stage_name)?;
    let result = load::stage_result(&recipe, stage, runs)?;
    if adapter && stage.peft.is_none() {
        return Err(Failure::Invalid(format!(
            "error: stage `{stage_name}` trains every weight, so it has no adapter to export; drop `--adapter`\n"
        )));
    }
    // A model that turns part of each head exports as Phi-3, whose class fuses the projections
    // a `peft` adapter would name.
    if adapter && stage.model.rotary_dim.is_some() {
        return Err(Failure::Invalid(format!(
            "error: stage `{stage_name}` exports as Phi-3, whose fused qkv_proj and gate_up_proj no `peft` adapter on q_proj … down_proj fits; export the merged model (drop `--adapter`)\n"
        )));
    }
    // Mixed precision exports what it computed in; f32 and bf16 stages export f32.
    let dtype = match dtype {
        Some("f32") => DType::F32,
        Some("bf16") => DType::BF16,
        Some("f16") => DType::F16,
        Some(other) => return Err(Failure::Invalid(format!("error: --dtype {other}: expected f32, bf16 or f16\n"))),
        None if matches!(stage.precision, Precision::Bf16Mixed | Precision::F16Mixed) => {
            Dtypes::of(stage.precision).compute
        }
        None => DType::F32,
    };
    let fail = |e: &dyn std::fmt::Display| Failure::Run(format!("export to {}: {e}", out.display()));
    let occupied = std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some());
    if occupied && !force {
        return Err(Failure::Invalid(format!(
            "error: {} is not empty; export into an empty or new folder, or pass --force to write over it\n",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| fail(&e))?;
    let weights = if adapter { ADAPTER_WEIGHTS } else { MODEL_WEIGHTS };
    let mut files = vec![TOKENIZER_FILE];
    if adapter {
        files.push(ADAPTER_CONFIG);
    }
    for file in files {
        std::fs::copy(result.join(file), out.join(file)).map_err(|e| fail(&e))?;
    }
    let tok = load_tokenizer(&TokenizerFile::Json(result.join(TOKENIZER_FILE))).map_err(|e| fail(&e))?;
    let tokenizer_config = serde_json::to_vec_pretty(&tokenizer_config(&recipe, stage, &tok)).expect("plain data");
    std::fs::write(out.join(TOKENIZER_CONFIG), tokenizer_config).map_err(|e| fail(&e))?;
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(result.join(MODEL_CONFIG)).map_err(|e| fail(&e))?)
            .map_err(|e| fail(&e))?;
    config["torch_dtype"] = torch_dtype(dtype).into();
    // Results written before `bos_token_id` came from the tokenizer.
    if let Some(bos) = tok.bos() {
        config["bos_token_id"] = bos.into();
    }
    let config = serde_json::to_vec_pretty(&config).expect("plain data");
    std::fs::write(out.join(MODEL_CONFIG), config).map_err(|e| fail(&e))?;

    let device = Device::Cpu;
    let read = |dir: &Path| candle_core::safetensors::load(dir.join(weights), &device).map_err(|e| fail(&e));
    let converted = read(&result)?
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(dtype)?)))
        .collect::<candle_core::Result<HashMap<String, Tensor>>>()
        .map_err(|e| fail(&e))?;
    candle_core::safetensors::save(&converted, out.join(weights)).map_err(|e| fail(&e))?;
    let exported = read(out)?;
    let mut elements = 0;
    for (name, want) in &converted {
        let same = exported.get(name).is_some_and(|got| same_bits(got, want).unwrap_or(false));
        if !same {
            return Err(fail(&format!("{name} does not load back bit for bit")));
        }
        elements += want.elem_count();
    }
    if !adapter {
        Llama::load_pretrained(&stage.model, out, &device).map_err(|e| fail(&e))?;
    }
    tracing::info!("exported `{stage_name}` ({elements} parameters, {weights}, {dtype:?}) to {}", out.display());
    Ok(())
}

const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// What `transformers`' `AutoTokenizer` reads beside `tokenizer.json`: the class, the special
/// tokens and, where the tokenizer has a chat template's tokens, the template in Jinja — the
/// one the stage's chat sources were formatted with, else the tokenizer's — so that
/// `apply_chat_template` gives the ids the model trained on.
fn tokenizer_config(recipe: &Recipe, stage: &Stage, tok: &Tok) -> serde_json::Value {
    let trained_with = stage
        .sources_read()
        .into_iter()
        .filter_map(|name| recipe.source(name))
        .find_map(|source| source.format.is_chat().then(|| source.template.unwrap_or(ChatTemplate::ChatMl)));
    let mut config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": tok.token(tok.eos()),
        "clean_up_tokenization_spaces": false,
        "model_max_length": stage.model.max_seq_len,
    });
    if let Some(bos) = tok.bos() {
        config["bos_token"] = tok.token(bos).into();
    }
    let template = trained_with.or(tok.chat_template()).filter(|t| tok.template_ids(*t).is_some());
    if let Some(jinja) = template.and_then(|t| recipe_data::jinja(tok, t)) {
        config["chat_template"] = jinja.into();
    }
    // The tokens the template names, as it was rendered with.
    if let (Some(ChatTemplate::Tokenizer), Some(own)) = (template, tok.own_template()) {
        for (name, token) in &own.tokens {
            config[name] = token.clone().into();
        }
    }
    config
}

/// Same dtype, shape and bits in every element. Widening f32, bf16 and f16 to f64 is exact and
/// one-to-one, so comparing the widened bits compares the stored ones.
fn same_bits(a: &Tensor, b: &Tensor) -> candle_core::Result<bool> {
    if a.dtype() != b.dtype() || a.shape() != b.shape() {
        return Ok(false);
    }
    let bits = |t: &Tensor| -> candle_core::Result<Vec<u64>> {
        Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?.into_iter().map(f64::to_bits).collect())
    };
    Ok(bits(a)? == bits(b)?)
}
