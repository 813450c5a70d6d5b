//! `recipe export`: copy a finished stage's result, a Hugging Face model directory
//! (`config.json`, `model.safetensors` with any LoRA merged in, `tokenizer.json`, and a
//! `tokenizer_config.json` with the chat template it trained with) or a LoRA stage's PEFT
//! adapter, to a folder of the user's choice, in the dtype asked for, and check that it loads
//! back bit for bit; or, to an `--out` ending in `.gguf`, the merged model as one llama.cpp
//! file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use recipe_checkpoint::{
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, GgmlDType, GgufTokenizer, MODEL_CONFIG, MODEL_WEIGHTS, gguf_round_trip,
    gguf_storage, load_checkpoint, torch_dtype, write_gguf,
};
use recipe_data::{TOKENIZER_FILE, Tok};
use recipe_model::{Dtypes, Llama};
use recipe_run::load_tokenizer;
use recipe_spec::{ChatTemplate, CheckpointFormat, Precision, Recipe, Stage, TokenizerFile};

use crate::{Failure, load};

/// The quantized types a `.gguf` export stores matrices in, by `--dtype` name.
const QUANTIZED: [(&str, GgmlDType); 5] = [
    ("q8_0", GgmlDType::Q8_0),
    ("q6_k", GgmlDType::Q6K),
    ("q5_k", GgmlDType::Q5K),
    ("q4_k", GgmlDType::Q4K),
    ("q4_0", GgmlDType::Q4_0),
];

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
    let gguf = out.extension().is_some_and(|e| e == "gguf");
    if gguf && adapter {
        return Err(Failure::Invalid(
            "error: a .gguf holds the merged model; drop `--adapter`, or export the adapter into a folder\n".into(),
        ));
    }
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
        Some(quantized) if gguf && QUANTIZED.iter().any(|(name, _)| *name == quantized) => {
            let (_, ggml) = QUANTIZED.iter().find(|(name, _)| *name == quantized).expect("listed");
            return export_gguf(&recipe, stage, &result, out, force, *ggml);
        }
        Some(other) => {
            let names: Vec<&str> = QUANTIZED.iter().map(|(name, _)| *name).collect();
            let also = if gguf {
                format!(", or {}", names.join(", "))
            } else {
                format!(" (and {} into a .gguf)", names.join(", "))
            };
            return Err(Failure::Invalid(format!("error: --dtype {other}: expected f32, bf16 or f16{also}\n")));
        }
        None if matches!(stage.precision, Precision::Bf16Mixed | Precision::F16Mixed) => {
            Dtypes::of(stage.precision).compute
        }
        None => DType::F32,
    };
    if gguf {
        let dtype = match dtype {
            DType::BF16 => GgmlDType::BF16,
            DType::F16 => GgmlDType::F16,
            _ => GgmlDType::F32,
        };
        return export_gguf(&recipe, stage, &result, out, force, dtype);
    }
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
    let mut config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": tok.token(tok.eos()),
        "clean_up_tokenization_spaces": false,
        "model_max_length": stage.model.max_seq_len,
    });
    if let Some(bos) = tok.bos() {
        config["bos_token"] = tok.token(bos).into();
    }
    let template = chat_template(recipe, stage, tok);
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

/// The chat template an exported model is prompted with: the one the stage's chat sources were
/// formatted with, else the first the tokenizer has.
fn chat_template(recipe: &Recipe, stage: &Stage, tok: &Tok) -> Option<ChatTemplate> {
    load::trained_template(recipe, stage).or(tok.chat_template()).filter(|t| tok.template_ids(*t).is_some())
}

/// The stage's merged model as one llama.cpp `.gguf` file (its matrices in `dtype`), written
/// beside `out` and renamed into place once it reads back: every tensor as stored (what
/// quantizing gives), the architecture as the stage's, the tokenizer giving the same ids.
fn export_gguf(
    recipe: &Recipe,
    stage: &Stage,
    result: &Path,
    out: &Path,
    force: bool,
    dtype: GgmlDType,
) -> Result<(), Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure::Run(format!("export to {}: {e}", out.display()));
    if out.exists() && !force {
        return Err(Failure::Invalid(format!("error: {} exists; pass --force to write over it\n", out.display())));
    }
    let tok = load_tokenizer(&TokenizerFile::Json(result.join(TOKENIZER_FILE))).map_err(|e| fail(&e))?;
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(result.join(TOKENIZER_FILE)).map_err(|e| fail(&e))?)
            .map_err(|e| fail(&e))?;
    let jinja = chat_template(recipe, stage, &tok).and_then(|t| recipe_data::jinja(&tok, t));
    let tokenizer = GgufTokenizer { json: &json, bos: tok.bos(), eos: tok.eos(), chat_template: jinja.as_deref() };
    let device = Device::Cpu;
    let mut weights: Vec<(String, Tensor)> = candle_core::safetensors::load(result.join(MODEL_WEIGHTS), &device)
        .map_err(|e| fail(&e))?
        .into_iter()
        .collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    let name = format!("{}/{}", recipe.name, stage.name);
    let partial = out.with_extension("gguf.partial");
    write_gguf(&partial, &name, &stage.model, &weights, &tokenizer, dtype).map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        Failure::Invalid(format!("error: stage `{}` cannot be written as GGUF: {e}\n", stage.name))
    })?;
    let verified = read_back(stage, &partial, &weights, &tok, dtype);
    if let Err(why) = verified {
        let _ = std::fs::remove_file(&partial);
        return Err(fail(&why));
    }
    std::fs::rename(&partial, out).map_err(|e| fail(&e))?;
    let fallen = weights.iter().filter(|(_, w)| w.rank() > 1 && gguf_storage(w.dims(), dtype) != dtype).count();
    let fallback = match fallen {
        0 => String::new(),
        n => format!(", {n} whose rows do not fill its blocks in q8_0 or f16"),
    };
    tracing::info!(
        "exported `{}` ({} tensors, matrices in {dtype:?}{fallback}) to {}",
        stage.name,
        weights.len(),
        out.display()
    );
    Ok(())
}

/// Whether the `.gguf` at `path` reads back as written: every tensor as `dtype` stores it,
/// the tokenizer giving the stage tokenizer's ids.
fn read_back(
    stage: &Stage,
    path: &Path,
    weights: &[(String, Tensor)],
    tok: &Tok,
    dtype: GgmlDType,
) -> Result<(), String> {
    let read = load_checkpoint(path, CheckpointFormat::Gguf, &stage.model).map_err(|e| e.to_string())?;
    let read: HashMap<String, Tensor> = read.into_iter().collect();
    for (name, w) in weights {
        let want = gguf_round_trip(&stage.model.arch, name, w, dtype).map_err(|e| e.to_string())?;
        if !read.get(name).is_some_and(|got| same_bits(got, &want).unwrap_or(false)) {
            return Err(format!("{name} does not read back as stored"));
        }
    }
    let again = load_tokenizer(&TokenizerFile::Gguf(path.to_path_buf())).map_err(|e| e.to_string())?;
    let probe =
        "Call me Ishmael. Some years ago—never mind how long precisely—I thought I would sail about 2,024 miles.";
    if again.encode(probe).map_err(|e| e.to_string())? != tok.encode(probe).map_err(|e| e.to_string())? {
        return Err("its tokenizer does not read back as the stage's".into());
    }
    Ok(())
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
