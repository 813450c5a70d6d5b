//! The Hugging Face layout: `config.json` for `LlamaForCausalLM` beside `model.safetensors`,
//! and a PEFT adapter (`adapter_config.json`, `adapter_model.safetensors`). The `[model]`
//! fields and the `config.json` keys are mapped in one table, [`HF_CONFIG`], read and written
//! from it alike, so the two directions cannot drift apart.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use recipe_spec::{
    AdapterInfo, Model, ModelSpec, PeftMethod, RopeScaling, longrope_attention_factor, yarn_attention_factor,
};
use serde_json::{Map, Value, json};

pub const MODEL_WEIGHTS: &str = "model.safetensors";
pub const MODEL_CONFIG: &str = "config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// What `transformers` assumes when a `config.json` key is absent.
pub enum IfAbsent {
    Required,
    /// This value, as JSON.
    Value(&'static str),
    /// The value of another of our fields (listed earlier).
    SameAs(&'static str),
}

/// Each `[model]` field that `config.json` holds, the key it holds it under, and what an
/// absent key means.
pub const HF_CONFIG: &[(&str, &str, IfAbsent)] = &[
    ("vocab_size", "vocab_size", IfAbsent::Required),
    ("d_model", "hidden_size", IfAbsent::Required),
    ("n_layers", "num_hidden_layers", IfAbsent::Required),
    ("n_heads", "num_attention_heads", IfAbsent::Required),
    ("n_kv_heads", "num_key_value_heads", IfAbsent::SameAs("n_heads")),
    ("d_ff", "intermediate_size", IfAbsent::Required),
    ("max_seq_len", "max_position_embeddings", IfAbsent::Required),
    ("tie_embeddings", "tie_word_embeddings", IfAbsent::Value("false")),
    ("norm_eps", "rms_norm_eps", IfAbsent::Value("1e-6")),
];

/// The rotary embeddings a `config.json` asks for.
struct Rope {
    theta: f64,
    scaling: Option<RopeScaling>,
    /// Gemma 3's sliding-window layers' base.
    local_theta: Option<f64>,
    /// The share of each head the rotation turns, when not all of it (Phi-4-mini's 0.75).
    partial: Option<f64>,
}

/// The rotary embedding's base and scaling, from `rope_parameters` (as `transformers` 5 writes
/// them) or else `rope_theta` and `rope_scaling` (as earlier versions did, the kind first
/// called `type`, then `rope_type`). Gemma 3's and OLMo 3's are per kind of layer:
/// `rope_parameters` holds `full_attention` and `sliding_attention` (version 5); in version 4
/// `rope_theta` and `rope_scaling` are the global layers' and Gemma's `rope_local_base_freq` the
/// sliding ones'. Only Gemma's sliding layers may rotate otherwise than its global ones.
fn read_rope(c: &Value, model_type: &str) -> Result<Rope, String> {
    let parameters = &c["rope_parameters"];
    let partial = parameters["partial_rotary_factor"].as_f64().or(c["partial_rotary_factor"].as_f64());
    let partial = match partial {
        Some(p) if p <= 0.0 || p > 1.0 => return Err(format!("its partial_rotary_factor ({p}) is not in (0, 1]")),
        p => p.filter(|p| *p != 1.0),
    };
    let gemma = model_type == "gemma3_text";
    // `transformers`' defaults: Gemma 3 1e6 globally and 1e4 in the sliding layers, OLMo 3 5e5.
    let (global_default, local_default) = match model_type {
        "gemma3_text" => (1e6, 1e4),
        "olmo3" => (5e5, 5e5),
        _ => (1e4, 1e4),
    };
    let ((theta, scaling), local) = match parameters {
        Value::Null if gemma => (
            rope_of(c, &c["rope_theta"], &c["rope_scaling"], global_default)?,
            Some(rope_of(c, &c["rope_local_base_freq"], &Value::Null, local_default)?),
        ),
        Value::Null => (rope_of(c, &c["rope_theta"], &c["rope_scaling"], global_default)?, None),
        by_kind if by_kind.get("full_attention").is_some() => {
            let (global, local) = (&by_kind["full_attention"], &by_kind["sliding_attention"]);
            let local = rope_of(c, &local["rope_theta"], local, local_default)?;
            (rope_of(c, &global["rope_theta"], global, global_default)?, Some(local))
        }
        parameters => (rope_of(c, &parameters["rope_theta"], parameters, global_default)?, None),
    };
    let Some((local_theta, local_scaling)) = local else {
        return Ok(Rope { theta, scaling, local_theta: None, partial });
    };
    if local_scaling.is_some() {
        return Err(
            "its config.json scales the sliding layers' rotary embedding; only the global layers' may be".into()
        );
    }
    if gemma {
        return Ok(Rope { theta, scaling, local_theta: Some(local_theta), partial });
    }
    if local_theta != theta || scaling.is_some() {
        return Err(format!(
            "its sliding layers rotate otherwise (base {local_theta}, unscaled) than its global ones (base {theta}{}); only Gemma 3's may",
            if scaling.is_some() { ", scaled" } else { "" }
        ));
    }
    Ok(Rope { theta, scaling, local_theta: None, partial })
}

/// One rotary embedding's base (`default` when absent) and scaling, in the config `c`.
fn rope_of(c: &Value, theta: &Value, scaling: &Value, default: f64) -> Result<(f64, Option<RopeScaling>), String> {
    let theta = match theta {
        Value::Null => default,
        theta => theta.as_f64().filter(|t| *t > 0.0).ok_or(format!("its rope_theta ({theta}) is not a number > 0"))?,
    };
    let number =
        |key: &str| scaling[key].as_f64().ok_or(format!("its rotary scaling ({scaling}) lacks the number `{key}`"));
    let scaling = match scaling["rope_type"].as_str().or(scaling["type"].as_str()) {
        None if scaling.is_null() => None,
        Some("default") => None,
        Some("linear") => Some(RopeScaling::Linear { factor: number("factor")? }),
        Some("llama3") => Some(RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_seq_len: number("original_max_position_embeddings")? as u32,
        }),
        Some("longrope") => {
            let factors = |key: &str| -> Result<Vec<f64>, String> {
                scaling[key]
                    .as_array()
                    .and_then(|list| list.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
                    .ok_or(format!("its rotary scaling lacks the list of numbers `{key}`"))
            };
            // Phi-3 keeps the original context beside the scaling, `transformers` 5 inside it.
            let original = scaling["original_max_position_embeddings"]
                .as_u64()
                .or(c["original_max_position_embeddings"].as_u64())
                .ok_or("its LongRoPE scaling has no original_max_position_embeddings")?;
            let original = u32::try_from(original).map_err(|_| "its original_max_position_embeddings is too large")?;
            let attention_factor = match (scaling["attention_factor"].as_f64(), scaling["factor"].as_f64()) {
                (Some(a), _) => a,
                (None, Some(factor)) => longrope_attention_factor(factor, original),
                (None, None) => {
                    let longest =
                        c["max_position_embeddings"].as_f64().ok_or("config.json lacks `max_position_embeddings`")?;
                    longrope_attention_factor(longest / f64::from(original), original)
                }
            };
            Some(RopeScaling::LongRope {
                short_factor: factors("short_factor")?,
                long_factor: factors("long_factor")?,
                original_max_seq_len: original,
                attention_factor,
            })
        }
        Some("yarn") => {
            let factor = number("factor")?;
            let given = |key: &str| scaling[key].as_f64().filter(|v| *v != 0.0);
            // As `transformers` infers it: given, else from DeepSeek's `mscale` pair, else from
            // `factor` alone.
            let mscale = |m: f64| if factor <= 1.0 { 1.0 } else { 0.1 * m * factor.ln() + 1.0 };
            let attention_factor = match (given("attention_factor"), given("mscale"), given("mscale_all_dim")) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(all)) => mscale(m) / mscale(all),
                _ => yarn_attention_factor(factor),
            };
            Some(RopeScaling::Yarn {
                factor,
                original_max_seq_len: number("original_max_position_embeddings")? as u32,
                beta_fast: given("beta_fast").unwrap_or(32.0),
                beta_slow: given("beta_slow").unwrap_or(1.0),
                attention_factor,
                truncate: scaling["truncate"].as_bool().unwrap_or(true),
            })
        }
        kind => {
            let kind = kind.map_or("untyped".into(), |k| format!("`{k}`"));
            return Err(format!(
                "its config.json asks for {kind} rotary scaling ({scaling}); only `linear`, `llama3`, `yarn` and `longrope` are implemented"
            ));
        }
    };
    Ok((theta, scaling))
}

/// `rope_theta` and `rope_scaling` as `transformers` 4 writes them (version 5 reads them too),
/// and for Gemma 3 its sliding layers' base as `rope_local_base_freq`.
fn write_rope(config: &mut Value, model: &Model) {
    config["rope_theta"] = json!(model.rope_theta);
    if model.arch == "gemma3" {
        config["rope_local_base_freq"] = json!(model.local_rope_theta.unwrap_or(model.rope_theta));
    }
    config["rope_scaling"] = match &model.rope_scaling {
        None => Value::Null,
        Some(RopeScaling::Linear { factor }) => json!({ "rope_type": "linear", "factor": factor }),
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_seq_len }) => json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_seq_len,
        }),
        Some(RopeScaling::LongRope { short_factor, long_factor, original_max_seq_len, attention_factor }) => {
            // Beside the scaling too, where Phi-3's configuration reads it.
            config["original_max_position_embeddings"] = json!(original_max_seq_len);
            json!({
                "rope_type": "longrope",
                "short_factor": short_factor,
                "long_factor": long_factor,
                "original_max_position_embeddings": original_max_seq_len,
                "attention_factor": attention_factor,
            })
        }
        Some(RopeScaling::Yarn { factor, original_max_seq_len, beta_fast, beta_slow, attention_factor, truncate }) => {
            json!({
                "rope_type": "yarn",
                "factor": factor,
                "original_max_position_embeddings": original_max_seq_len,
                "beta_fast": beta_fast,
                "beta_slow": beta_slow,
                "attention_factor": attention_factor,
                "truncate": truncate,
            })
        }
    };
}

/// What `transformers`' Gemma 3 text configuration assumes where our defaults or
/// [`HF_CONFIG`]'s differ.
const GEMMA3_DEFAULTS: &[(&str, &str)] = &[
    ("vocab_size", "262208"),
    ("hidden_size", "2304"),
    ("intermediate_size", "9216"),
    ("num_hidden_layers", "26"),
    ("num_attention_heads", "8"),
    ("num_key_value_heads", "4"),
    ("tie_word_embeddings", "true"),
    ("head_dim", "256"),
    ("query_pre_attn_scalar", "256"),
    ("sliding_window", "4096"),
    ("max_position_embeddings", "131072"),
    ("hidden_activation", "\"gelu_pytorch_tanh\""),
];

/// The same for Gemma 2, which caps its attention scores and logits unless told not to.
const GEMMA2_DEFAULTS: &[(&str, &str)] = &[
    ("tie_word_embeddings", "true"),
    ("head_dim", "256"),
    ("query_pre_attn_scalar", "256"),
    ("sliding_window", "4096"),
    ("max_position_embeddings", "8192"),
    ("hidden_activation", "\"gelu_pytorch_tanh\""),
    ("attn_logit_softcapping", "50.0"),
    ("final_logit_softcapping", "30.0"),
];

/// The architecture in a Hugging Face `config.json`; anything this trainer cannot reproduce
/// exactly is an error rather than a silently different model.
pub fn read_config(path: &Path) -> Result<ModelSpec, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let c: Value = serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    spec_of_config(c)
}

/// The architecture a `config.json`'s content describes ([`read_config`]); also how a GGUF's
/// Gemma metadata is read, written as the `config.json` it stands for.
pub(crate) fn spec_of_config(mut c: Value) -> Result<ModelSpec, String> {
    // Gemma 3's multimodal checkpoints (4B to 27B): the language model's configuration, which
    // leaves out what its class assumes. Its weights load without the vision tower.
    if c["model_type"] == "gemma3" && c["text_config"].is_object() {
        c = c["text_config"].take();
        c["model_type"] = "gemma3_text".into();
    }
    let model_type = c["model_type"].as_str().unwrap_or("").to_string();
    let arch = match model_type.as_str() {
        // Mistral is Llama with a sliding window; Ministral with one in some layers. Phi-3 is
        // Mistral with the query, key and value projections in one matrix and the gate and up
        // projections in another, which loading splits (`weights::unfused`). SmolLM3 is Llama
        // with some layers that use no positions (`no_rope_layers`).
        "llama" | "mistral" | "ministral" | "phi3" | "smollm3" => "llama",
        "qwen2" => "qwen2",
        "qwen3" => "qwen3",
        "gemma3_text" => "gemma3",
        "gemma2" => "gemma2",
        // OLMo 3 is OLMo 2 with a sliding window in most layers.
        "olmo2" | "olmo3" => "olmo2",
        "granite" => "granite",
        _ => {
            return Err(format!(
                "its config.json has model_type \"{model_type}\"; only llama, mistral, ministral, phi3, qwen2, qwen3, smollm3, gemma2, gemma3_text and gemma3 (Gemma 3, its language model), olmo2, olmo3 and granite can be imported"
            ));
        }
    };
    let gemma = arch == "gemma2" || arch == "gemma3";
    let defaults = match arch {
        "gemma2" => GEMMA2_DEFAULTS,
        "gemma3" => GEMMA3_DEFAULTS,
        _ => &[],
    };
    for (key, value) in defaults {
        // Gemma 2's caps default to on: only an explicit null turns one off.
        if c.get(*key).is_none() || (c[*key].is_null() && !key.ends_with("softcapping")) {
            c[*key] = serde_json::from_str(value).expect("valid JSON");
        }
    }
    let (activation, expected) =
        if gemma { ("hidden_activation", "gelu_pytorch_tanh") } else { ("hidden_act", "silu") };
    for (key, fine) in [
        ("attention_bias", !c["attention_bias"].as_bool().unwrap_or(false)),
        ("mlp_bias", !c["mlp_bias"].as_bool().unwrap_or(false)),
        (activation, c[activation].as_str().is_none_or(|a| a == expected)),
        ("attn_logit_softcapping", gemma || c["attn_logit_softcapping"].is_null()),
        ("final_logit_softcapping", gemma || c["final_logit_softcapping"].is_null()),
        ("use_bidirectional_attention", !c["use_bidirectional_attention"].as_bool().unwrap_or(false)),
    ] {
        if !fine {
            return Err(format!("its config.json sets `{key}` = {}, which this trainer does not implement", c[key]));
        }
    }
    let mut fields = Map::new();
    fields.insert("arch".into(), arch.into());
    for (ours, theirs, if_absent) in HF_CONFIG {
        let value = match (&c[*theirs], if_absent) {
            (Value::Null, IfAbsent::Required) => return Err(format!("config.json lacks `{theirs}`")),
            (Value::Null, IfAbsent::Value(json)) => serde_json::from_str(json).expect("valid JSON"),
            (Value::Null, IfAbsent::SameAs(field)) => fields[*field].clone(),
            (value, _) => value.clone(),
        };
        fields.insert(ours.to_string(), value);
    }
    // `no_rope_layers`: 1 where a layer rotates, 0 where it does not.
    let nope: Vec<u32> = match c["no_rope_layers"].as_array() {
        Some(flags) => (0..).zip(flags).filter(|(_, f)| f.as_u64() == Some(0)).map(|(i, _)| i).collect(),
        None => Vec::new(),
    };
    if !nope.is_empty() {
        fields.insert("nope_layers".into(), nope.clone().into());
    }
    let rope = read_rope(&c, &model_type)?;
    let n_layers = fields["n_layers"].as_u64().unwrap_or(0) as u32;
    let slides = sliding_layers(&c, &model_type, n_layers, &nope);
    let window = c["sliding_window"].as_u64().filter(|_| slides.contains(&true));
    let longest = fields["max_seq_len"].as_u64().unwrap_or(u64::MAX);
    // A window as long as the context changes nothing, but where the sliding layers rotate
    // differently (Gemma 3), which layers they are still matters.
    if let Some(window) = window.filter(|w| *w < longest || rope.local_theta.is_some()) {
        fields.insert("sliding_window".into(), window.into());
        let full: Vec<u32> = (0..).zip(&slides).filter(|(_, s)| !**s).map(|(i, _)| i).collect();
        if !full.is_empty() {
            fields.insert("full_attention_layers".into(), full.into());
        }
        if let Some(local) = rope.local_theta {
            fields.insert("local_rope_theta".into(), local.into());
        }
    }
    let spec = ModelSpec {
        rope_theta: Some(rope.theta),
        rope_scaling: rope.scaling,
        ..serde_json::from_value(Value::Object(fields))
            .map_err(|e| format!("its config.json holds a value out of range: {e}"))?
    };
    let size = |key: &str| -> Result<Option<u32>, String> {
        match &c[key] {
            Value::Null => Ok(None),
            v => Ok(Some(
                v.as_u64().and_then(|v| u32::try_from(v).ok()).ok_or(format!("its {key} ({v}) is not a size"))?,
            )),
        }
    };
    let head_dim = match size("head_dim")? {
        // What `transformers`' Qwen3 configuration assumes.
        None if arch == "qwen3" => Some(128),
        hd => hd,
    };
    // `transformers` turns `int(head_dim · partial_rotary_factor)` dimensions.
    let whole_head = match head_dim {
        Some(hd) => hd,
        None => spec.d_model.unwrap_or(0) / spec.n_heads.unwrap_or(1).max(1),
    };
    let rotary_dim = rope.partial.map(|p| (f64::from(whole_head) * p) as u32);
    // Gemma's attention scales by 1/√query_pre_attn_scalar, mostly its head dimension.
    let query_pre_attn_scalar = size("query_pre_attn_scalar")?.filter(|q| Some(*q) != head_dim);
    let cap = |key: &str| match &c[key] {
        Value::Null => Ok(None),
        v => v.as_f64().filter(|v| *v > 0.0).map(Some).ok_or(format!("its {key} ({v}) is not a number > 0")),
    };
    // Granite's multipliers, each 1 where absent (as `transformers` assumes); left unset where
    // they change nothing, but for the attention scale, which otherwise defaults to 1/√head_dim.
    let multiplier = |key: &str, neutral: Option<f64>| -> Result<Option<f64>, String> {
        if arch != "granite" {
            return Ok(None);
        }
        let value = match &c[key] {
            Value::Null => 1.0,
            v => v.as_f64().filter(|v| *v > 0.0).ok_or(format!("its {key} ({v}) is not a number > 0"))?,
        };
        Ok(Some(value).filter(|v| Some(*v) != neutral))
    };
    Ok(ModelSpec {
        head_dim,
        rotary_dim,
        embedding_multiplier: multiplier("embedding_multiplier", Some(1.0))?,
        residual_multiplier: multiplier("residual_multiplier", Some(1.0))?,
        attention_multiplier: multiplier("attention_multiplier", None)?,
        logits_scaling: multiplier("logits_scaling", Some(1.0))?,
        query_pre_attn_scalar: query_pre_attn_scalar.filter(|_| gemma),
        attn_logit_softcapping: cap("attn_logit_softcapping")?,
        final_logit_softcapping: cap("final_logit_softcapping")?,
        ..spec
    })
}

/// For each layer, whether `transformers` gives it sliding-window attention: as `layer_types`
/// says where it is written, else by each model type's rule — Mistral and Phi-3 every layer;
/// Qwen's from `max_window_layers` on, and SmolLM3's NoPE layers, under `use_sliding_window`;
/// Gemma 3's all but every `sliding_window_pattern`-th, Gemma 2's every other from the first,
/// OLMo 3's all but every fourth. None at
/// all without a `sliding_window`.
fn sliding_layers(c: &Value, model_type: &str, n_layers: u32, nope: &[u32]) -> Vec<bool> {
    let flagged = matches!(model_type, "qwen2" | "qwen3" | "smollm3");
    if c["sliding_window"].is_null() || (flagged && c["use_sliding_window"].as_bool() != Some(true)) {
        return Vec::new();
    }
    if let Some(types) = c["layer_types"].as_array().filter(|types| !types.is_empty()) {
        return types.iter().map(|t| t == "sliding_attention").collect();
    }
    (0..n_layers)
        .map(|i| match model_type {
            "qwen2" | "qwen3" => u64::from(i) >= c["max_window_layers"].as_u64().unwrap_or(28),
            "smollm3" => nope.contains(&i),
            "gemma3_text" => (u64::from(i) + 1) % c["sliding_window_pattern"].as_u64().unwrap_or(6).max(1) != 0,
            "gemma2" => i % 2 == 0,
            "olmo3" => (i + 1) % 4 != 0,
            _ => true,
        })
        .collect()
}

/// `config.json` for the `transformers` class that computes what `model` does: Llama, Mistral
/// (a sliding window in every layer), Ministral (in some), SmolLM3 (NoPE layers), Phi-3 (part of
/// each head turned), Qwen2, Qwen3, Gemma 2 and 3, OLMo 2 and 3, or Granite. `eos` lists the tokens that end generation, the end-of-document token first;
/// a chat model adds its end-of-turn token, so `transformers` stops at the end of an answer
/// too. `bos` is the token the tokenizer starts a text with (else the end-of-document token
/// stands in for it). `dtype` is what `model.safetensors` holds.
pub fn config_json(model: &Model, bos: Option<u32>, eos: &[u32], dtype: DType) -> Value {
    let fields = serde_json::to_value(model).expect("plain struct");
    let (class, model_type) = match (model.arch.as_str(), model.sliding_window) {
        ("qwen2", _) => ("Qwen2ForCausalLM", "qwen2"),
        ("qwen3", _) => ("Qwen3ForCausalLM", "qwen3"),
        ("gemma3", _) => ("Gemma3ForCausalLM", "gemma3_text"),
        ("gemma2", _) => ("Gemma2ForCausalLM", "gemma2"),
        // OLMo 3 is OLMo 2 with sliding windows.
        ("olmo2", None) => ("Olmo2ForCausalLM", "olmo2"),
        ("olmo2", Some(_)) => ("Olmo3ForCausalLM", "olmo3"),
        ("granite", _) => ("GraniteForCausalLM", "granite"),
        // Phi-3's class turns part of each head (and fuses its projections: `save_model`).
        _ if model.rotary_dim.is_some() => ("Phi3ForCausalLM", "phi3"),
        _ if model.nope_layers.is_some() => ("SmolLM3ForCausalLM", "smollm3"),
        // `transformers`' Llama has no sliding window; Mistral is Llama with one in every
        // layer, Ministral with one in the layers `layer_types` says.
        (_, Some(_)) if model.full_attention_layers.is_some() => ("MinistralForCausalLM", "ministral"),
        (_, Some(_)) => ("MistralForCausalLM", "mistral"),
        _ => ("LlamaForCausalLM", "llama"),
    };
    let mut config = json!({
        "architectures": [class],
        "model_type": model_type,
        "head_dim": model.head_dim(),
        "bos_token_id": bos.or(eos.first().copied()),
        // No padding token: some classes (SmolLM3's) would otherwise assume one.
        "pad_token_id": null,
        "eos_token_id": if eos.len() == 1 { json!(eos[0]) } else { json!(eos) },
        "torch_dtype": torch_dtype(dtype),
    });
    if model.gemma() {
        config["hidden_activation"] = "gelu_pytorch_tanh".into();
        config["query_pre_attn_scalar"] = json!(model.query_pre_attn_scalar.unwrap_or(model.head_dim()));
        config["final_logit_softcapping"] = json!(model.final_logit_softcapping);
        config["attn_logit_softcapping"] = json!(model.attn_logit_softcapping);
    } else {
        config["hidden_act"] = "silu".into();
    }
    if model_type == "granite" {
        config["embedding_multiplier"] = json!(model.embedding_multiplier.unwrap_or(1.0));
        config["residual_multiplier"] = json!(model.residual_multiplier.unwrap_or(1.0));
        config["attention_multiplier"] = json!(model.attention_scale());
        config["logits_scaling"] = json!(model.logits_scaling.unwrap_or(1.0));
    }
    if !model.qkv_bias() {
        config["attention_bias"] = false.into();
        config["mlp_bias"] = false.into();
    }
    if let Some(rotary) = model.rotary_dim {
        config["partial_rotary_factor"] = json!(f64::from(rotary) / f64::from(model.head_dim()));
    }
    if model.nope_layers.is_some() {
        config["no_rope_layers"] = (0..model.n_layers).map(|l| u32::from(model.rotates(l))).collect::<Vec<_>>().into();
    }
    let gemma = model.gemma();
    if model.sliding_window.is_some() || gemma {
        // Gemma's configurations would otherwise assume a window of 4096.
        config["sliding_window"] = json!(model.sliding_window);
    }
    if (model.sliding_window.is_some() && !matches!(model_type, "mistral" | "phi3")) || gemma {
        // Every layer's kind, as the Qwen, SmolLM3, Ministral and Gemma configurations say it.
        let kind = |l| if model.slides(l) { "sliding_attention" } else { "full_attention" };
        config["layer_types"] = (0..model.n_layers).map(kind).collect::<Vec<_>>().into();
    }
    if model.sliding_window.is_some() && matches!(model_type, "qwen2" | "qwen3" | "smollm3") {
        config["use_sliding_window"] = true.into();
        config["max_window_layers"] = 0.into();
    }
    for (ours, theirs, _) in HF_CONFIG {
        config[*theirs] = fields[*ours].clone();
    }
    write_rope(&mut config, model);
    if model_type == "olmo3" {
        // Its configuration would give the sliding layers its default base, not `rope_theta`:
        // both kinds of layer spelled out, as version 5 writes them.
        let mut every = if config["rope_scaling"].is_null() {
            json!({ "rope_type": "default" })
        } else {
            config["rope_scaling"].clone()
        };
        every["rope_theta"] = json!(model.rope_theta);
        config["rope_parameters"] = json!({ "full_attention": every, "sliding_attention": every });
    }
    config
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

/// What a PEFT adapter's `adapter_config.json` records.
pub struct AdapterConfig<'a> {
    pub kind: AdapterKind,
    pub rank: usize,
    pub dropout: f64,
    pub targets: &'a [String],
    /// The model it adapts, as a name or path.
    pub base_model: &'a str,
}

/// The `peft` library's adapter types this crate writes.
pub enum AdapterKind {
    Lora {
        alpha: f64,
        dora: bool,
        /// Scaled by alpha / √rank.
        rslora: bool,
    },
    /// VeRA with its shared projections saved in the adapter (`save_projection`), and the
    /// value its λ_d vectors started at.
    Vera { d_initial: f64 },
}

/// The `adapter_config.json` of a PEFT adapter, as the `peft` library writes it.
pub fn adapter_config(a: &AdapterConfig) -> Value {
    let mut config = json!({
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": a.base_model,
        "r": a.rank,
        "target_modules": a.targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
    });
    let specific = match a.kind {
        AdapterKind::Lora { alpha, dora, rslora } => json!({
            "peft_type": "LORA",
            "lora_alpha": alpha,
            "lora_dropout": a.dropout,
            "use_dora": dora,
            "use_rslora": rslora,
        }),
        AdapterKind::Vera { d_initial } => json!({
            "peft_type": "VERA",
            "vera_dropout": a.dropout,
            "d_initial": d_initial,
            "save_projection": true,
            "projection_prng_key": 0,
        }),
    };
    for (key, value) in specific.as_object().expect("an object") {
        config[key] = value.clone();
    }
    config
}

/// The prefixes `peft` puts before a base model's tensor names, and before tensors the whole
/// adapter shares (VeRA's projections).
const PEFT_PREFIX: &str = "base_model.model.";
const PEFT_SHARED_PREFIX: &str = "base_model.";

/// An adapter tensor's name in the model: `peft`'s prefix removed, and a multimodal model's
/// language model named as the text model's; none for its vision tower's.
pub(crate) fn unprefixed(name: &str) -> Option<String> {
    crate::weights::text_model_name(name.strip_prefix(PEFT_PREFIX).unwrap_or(name).to_string())
}

/// Whether `peft` saved an adapter initialised this way over weights it changed: PiSSA,
/// OLoRA, CorDA, LoftQ and LoRA-GA subtract (or quantize) the base, and an adapter saved
/// without `peft`'s conversion to plain LoRA fits only that changed base.
fn residual_init(init: &str) -> bool {
    init.starts_with("pissa") || ["olora", "corda", "loftq", "lora_ga"].contains(&init)
}

/// The settings of a `peft` LoRA or DoRA adapter in `dir` (its tensors' shapes left empty).
/// A setting this trainer would not reproduce exactly is an error: other adapter types,
/// per-module ranks or alphas, trained biases, token rows or whole modules, some layers only
/// or some modules left out, targets given as a pattern, or another computation (KaSA,
/// BD-LoRA, MonteCLoRA, Arrow routing).
pub fn read_adapter_config(dir: &Path) -> Result<AdapterInfo, String> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let c: Value = serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    match c["peft_type"].as_str() {
        Some("LORA") => {}
        other => {
            let kind = other.map_or("no peft_type".to_string(), |k| format!("peft_type {k}"));
            return Err(format!(
                "its {ADAPTER_CONFIG} has {kind}; only LoRA and DoRA adapters (LORA) can be started from"
            ));
        }
    }
    let empty = |v: &Value| {
        v.is_null() || v.as_object().is_some_and(|o| o.is_empty()) || v.as_array().is_some_and(|a| a.is_empty())
    };
    for (key, fine) in [
        ("rank_pattern", empty(&c["rank_pattern"])),
        ("alpha_pattern", empty(&c["alpha_pattern"])),
        ("bias", c["bias"].as_str().is_none_or(|b| b == "none")),
        ("modules_to_save", empty(&c["modules_to_save"])),
        ("layers_to_transform", empty(&c["layers_to_transform"])),
        ("fan_in_fan_out", !c["fan_in_fan_out"].as_bool().unwrap_or(false)),
        ("lora_bias", !c["lora_bias"].as_bool().unwrap_or(false)),
        ("use_qalora", !c["use_qalora"].as_bool().unwrap_or(false)),
        ("exclude_modules", empty(&c["exclude_modules"])),
        ("layer_replication", empty(&c["layer_replication"])),
        ("target_parameters", empty(&c["target_parameters"])),
        ("trainable_token_indices", empty(&c["trainable_token_indices"])),
        ("alora_invocation_tokens", empty(&c["alora_invocation_tokens"])),
        ("kasa_config", empty(&c["kasa_config"])),
        ("use_bdlora", empty(&c["use_bdlora"])),
        ("monteclora_config", empty(&c["monteclora_config"])),
        ("arrow_config", empty(&c["arrow_config"])),
        // Adapters initialised from the weights apply over a residual base, which was not saved.
        ("init_lora_weights", !c["init_lora_weights"].as_str().is_some_and(residual_init)),
    ] {
        if !fine {
            return Err(format!(
                "its {ADAPTER_CONFIG} sets `{key}` = {}, which this trainer does not implement",
                c[key]
            ));
        }
    }
    let rank = c["r"].as_u64().and_then(|r| u32::try_from(r).ok()).filter(|r| *r > 0);
    let rank = rank.ok_or(format!("its {ADAPTER_CONFIG} has no rank `r` ≥ 1"))?;
    let targets = match &c["target_modules"] {
        Value::Array(list) => list.iter().map(|t| t.as_str().map(str::to_string)).collect::<Option<Vec<_>>>(),
        _ => None,
    };
    let mut targets = targets.ok_or(format!(
        "its {ADAPTER_CONFIG}'s target_modules ({}) is not a list of module names",
        c["target_modules"]
    ))?;
    targets.sort_by_key(|t| recipe_spec::PEFT_MODULES.iter().position(|m| m == t));
    let dora = c["use_dora"].as_bool().unwrap_or(false);
    Ok(AdapterInfo {
        method: if dora { PeftMethod::Dora } else { PeftMethod::Lora },
        rank,
        // What `peft` assumes when it is absent.
        alpha: c["lora_alpha"].as_f64().unwrap_or(8.0),
        rslora: c["use_rslora"].as_bool().unwrap_or(false),
        targets,
        shapes: Default::default(),
    })
}

/// The tensors of the `peft` adapter in `dir`, by their names in the model.
pub fn load_adapter(dir: &Path) -> candle_core::Result<Vec<(String, Tensor)>> {
    let tensors = candle_core::safetensors::load(dir.join(ADAPTER_WEIGHTS), &candle_core::Device::Cpu)?;
    Ok(tensors.into_iter().filter_map(|(name, t)| Some((unprefixed(&name)?, t))).collect())
}

/// Write a model folder: `model.safetensors` and its `config.json`.
pub fn save_model(dir: &Path, weights: &[(String, Tensor)], config: &Value) -> candle_core::Result<()> {
    let weights = weights.iter().map(|(n, t)| (n.clone(), t.clone())).collect();
    let weights = if config["model_type"] == "phi3" { crate::weights::fused(weights)? } else { weights };
    save_tensors(dir, MODEL_WEIGHTS, weights.into_iter())?;
    write_json(dir, MODEL_CONFIG, config)
}

/// Write a PEFT adapter beside a model: its tensors under `peft`'s names — those named as in
/// the model, and those the whole adapter shares — and its config.
pub fn save_adapter(
    dir: &Path,
    adapter: &[(String, Tensor)],
    shared: &[(String, Tensor)],
    config: &AdapterConfig,
) -> candle_core::Result<()> {
    let named = adapter.iter().map(|(n, t)| (format!("{PEFT_PREFIX}{n}"), t.clone()));
    let shared = shared.iter().map(|(n, t)| (format!("{PEFT_SHARED_PREFIX}{n}"), t.clone()));
    save_tensors(dir, ADAPTER_WEIGHTS, named.chain(shared))?;
    write_json(dir, ADAPTER_CONFIG, &adapter_config(config))
}

fn save_tensors(dir: &Path, file: &str, tensors: impl Iterator<Item = (String, Tensor)>) -> candle_core::Result<()> {
    let map: HashMap<String, Tensor> = tensors.collect();
    candle_core::safetensors::save(&map, dir.join(file))
}

fn write_json(dir: &Path, file: &str, value: &Value) -> candle_core::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).expect("plain data");
    std::fs::write(dir.join(file), bytes).map_err(candle_core::Error::wrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_config_reads_back_as_the_same_architecture() {
        let spec = ModelSpec {
            d_model: Some(96),
            n_layers: Some(3),
            n_heads: Some(6),
            n_kv_heads: Some(2),
            max_seq_len: Some(128),
            tie_embeddings: Some(false),
            rope_theta: Some(50000.0),
            rope_scaling: Some(RopeScaling::Linear { factor: 2.0 }),
            norm_eps: Some(1e-6),
            ..ModelSpec::default()
        };
        let windowed = |arch: &str| ModelSpec {
            arch: Some(arch.into()),
            sliding_window: Some(32),
            full_attention_layers: Some(vec![1]),
            ..spec.clone()
        };
        let gemma = ModelSpec {
            head_dim: Some(32),
            local_rope_theta: Some(1e4),
            query_pre_attn_scalar: Some(24),
            rope_scaling: None,
            ..windowed("gemma3")
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MODEL_CONFIG);
        for spec in [spec.clone(), windowed("llama"), windowed("qwen2"), gemma] {
            let model = spec.resolve(Some(300));
            std::fs::write(&path, config_json(&model, None, &[0], DType::F32).to_string()).unwrap();
            let read = read_config(&path).unwrap();
            assert_eq!(read.resolve(None), Model { init_std: 0.02, from: None, ..model });
        }
    }

    #[test]
    fn absent_keys_take_the_values_transformers_assumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MODEL_CONFIG);
        let config = r#"{"model_type": "llama", "vocab_size": 300, "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 64}"#;
        std::fs::write(&path, config).unwrap();
        let spec = read_config(&path).unwrap();
        assert_eq!(spec.n_kv_heads, Some(4), "num_key_value_heads defaults to num_attention_heads");
        assert_eq!((spec.tie_embeddings, spec.rope_theta, spec.norm_eps), (Some(false), Some(10000.0), Some(1e-6)));
        std::fs::write(&path, config.replace(r#""vocab_size": 300, "#, "")).unwrap();
        assert_eq!(read_config(&path).unwrap_err(), "config.json lacks `vocab_size`");
    }

    /// Gemma 3 4B's config.json as Google publishes it: its language model's configuration names
    /// only what differs from `transformers`' Gemma 3 defaults, which fill in the rest.
    #[test]
    fn a_multimodal_gemma3_config_reads_as_its_language_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MODEL_CONFIG);
        let config = r#"{"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
            "mm_tokens_per_image": 256, "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
            "model_type": "gemma3_text", "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0,
            "rope_type": "linear"}, "sliding_window": 1024}, "vision_config": {"model_type": "siglip_vision_model"}}"#;
        std::fs::write(&path, config).unwrap();
        let spec = read_config(&path).unwrap();
        let sizes = (spec.vocab_size, spec.d_model, spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.head_dim);
        assert_eq!(sizes, (Some(262208), Some(2560), Some(34), Some(8), Some(4), Some(256)));
        assert_eq!((spec.arch.as_deref(), spec.d_ff, spec.max_seq_len), (Some("gemma3"), Some(10240), Some(131072)));
        assert_eq!((spec.rope_theta, spec.local_rope_theta, spec.sliding_window), (Some(1e6), Some(1e4), Some(1024)));
        assert_eq!(spec.rope_scaling, Some(RopeScaling::Linear { factor: 8.0 }));
        let every_sixth = (0..34).filter(|l| l % 6 == 5).collect();
        assert_eq!((spec.full_attention_layers, spec.tie_embeddings), (Some(every_sixth), Some(true)));
    }

    /// Mistral imports as Llama with its sliding window in every layer (when it is shorter
    /// than the context); Qwen2 as `qwen2`, with its window only when it slides, in the layers
    /// that slide; Gemma 3 with its windows and its two rotary bases.
    #[test]
    fn model_types_map_to_architectures_within_their_attention_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MODEL_CONFIG);
        let read = |model_type: &str, window: &str| {
            let config = format!(
                r#"{{"model_type": "{model_type}", "vocab_size": 300, "hidden_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 128 {window}}}"#
            );
            std::fs::write(&path, config).unwrap();
            read_config(&path)
        };
        let windows = |model_type: &str, window: &str| {
            read(model_type, window).map(|spec| (spec.arch.unwrap(), spec.sliding_window, spec.full_attention_layers))
        };
        let llama = |window, full| Ok(("llama".to_string(), window, full));
        let qwen2 = |window, full| Ok(("qwen2".to_string(), window, full));
        assert_eq!(windows("mistral", r#", "sliding_window": 64"#), llama(Some(64), None));
        assert_eq!(windows("mistral", r#", "sliding_window": null"#), llama(None, None));
        assert_eq!(windows("mistral", r#", "sliding_window": 4096"#), llama(None, None));
        let qwen2_window = r#", "sliding_window": 32, "use_sliding_window": false"#;
        assert_eq!(windows("qwen2", qwen2_window), qwen2(None, None), "a window that does not slide");
        let from_28 = qwen2_window.replace("false", "true");
        assert_eq!(windows("qwen2", &from_28), qwen2(None, None), "layers from max_window_layers (28) slide");
        let from_1 = format!(r#"{from_28}, "max_window_layers": 1"#);
        assert_eq!(windows("qwen2", &from_1), qwen2(Some(32), Some(vec![0])));
        let every = format!(r#"{from_28}, "max_window_layers": 0"#);
        assert_eq!(windows("qwen2", &every), qwen2(Some(32), None));
        let layer_types = r#", "sliding_window": 32, "use_sliding_window": true,
            "layer_types": ["full_attention", "sliding_attention"]"#;
        assert_eq!(windows("qwen2", layer_types), qwen2(Some(32), Some(vec![0])));
        let ministral = r#", "sliding_window": 32, "layer_types": ["sliding_attention", "full_attention"]"#;
        assert_eq!(windows("ministral", ministral), llama(Some(32), Some(vec![1])));
        // Gemma 3 as `transformers` 4 saved it: the layer kinds from the pattern, the rotary
        // bases from `rope_theta` and `rope_local_base_freq`, the rest from its defaults.
        let gemma = read(
            "gemma3_text",
            r#", "sliding_window": 16, "sliding_window_pattern": 2, "head_dim": 32,
            "query_pre_attn_scalar": 24, "rope_theta": 1e6, "rope_local_base_freq": 1e4"#,
        )
        .unwrap();
        assert_eq!((gemma.arch.as_deref(), gemma.sliding_window), (Some("gemma3"), Some(16)));
        assert_eq!((gemma.full_attention_layers, gemma.local_rope_theta), (Some(vec![1]), Some(1e4)));
        assert_eq!(
            (gemma.rope_theta, gemma.query_pre_attn_scalar, gemma.tie_embeddings),
            (Some(1e6), Some(24), Some(true))
        );
        let softcapped = read("llama", r#", "attn_logit_softcapping": 50.0"#).unwrap_err();
        assert!(softcapped.contains("`attn_logit_softcapping` = 50.0"), "{softcapped}");
        // Gemma 2 caps unless its config.json says null.
        let gemma2 = read("gemma2", r#", "final_logit_softcapping": null"#).unwrap();
        assert_eq!((gemma2.attn_logit_softcapping, gemma2.final_logit_softcapping), (Some(50.0), None));
        assert_eq!((gemma2.sliding_window, gemma2.full_attention_layers), (None, None), "4096 ≥ its 128 positions");
        let olmo3 = read("olmo3", r#", "sliding_window": 16"#).unwrap();
        // Two layers, both sliding: OLMo 3's fourth is its first global one.
        assert_eq!(
            (olmo3.arch.as_deref(), olmo3.sliding_window, olmo3.full_attention_layers),
            (Some("olmo2"), Some(16), None)
        );
        assert_eq!(olmo3.rope_theta, Some(5e5));
        let bases = r#", "sliding_window": 16, "rope_parameters": {"full_attention": {"rope_type": "default",
            "rope_theta": 5e5}, "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}"#;
        let error = read("olmo3", bases).unwrap_err();
        assert!(
            error.contains("sliding layers rotate otherwise (base 10000, unscaled) than its global ones (base 500000)"),
            "{error}"
        );
        let neox = read("gpt_neox", "").unwrap_err();
        assert!(neox.contains(r#"model_type "gpt_neox"; only llama, mistral, ministral"#), "{neox}");
    }

    /// The rotary base and scaling as each `transformers` version spells them.
    #[test]
    fn rotary_settings_are_read_as_every_transformers_version_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MODEL_CONFIG);
        let read = |rope: &str| {
            let config = format!(
                r#"{{"model_type": "llama", "vocab_size": 300, "hidden_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 64, {rope}}}"#
            );
            std::fs::write(&path, config).unwrap();
            read_config(&path).map(|spec| (spec.rope_theta.unwrap(), spec.rope_scaling))
        };
        let llama3 = Some(RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_seq_len: 8192,
        });
        let llama3_keys = r#""factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192"#;
        // transformers 5
        assert_eq!(read(r#""rope_parameters": {"rope_type": "default", "rope_theta": 50000.0}"#), Ok((50000.0, None)));
        let v5 = format!(r#""rope_parameters": {{"rope_type": "llama3", "rope_theta": 500000.0, {llama3_keys}}}"#);
        assert_eq!(read(&v5), Ok((500000.0, llama3.clone())));
        // transformers 4, and its older spelling of the kind
        let v4 = format!(r#""rope_theta": 500000.0, "rope_scaling": {{"rope_type": "llama3", {llama3_keys}}}"#);
        assert_eq!(read(&v4), Ok((500000.0, llama3)));
        let linear = read(r#""rope_theta": 10000.0, "rope_scaling": {"type": "linear", "factor": 2.0}"#);
        assert_eq!(linear, Ok((10000.0, Some(RopeScaling::Linear { factor: 2.0 }))));
        let yarn = read(r#""rope_scaling": {"rope_type": "yarn", "factor": 4.0}"#).unwrap_err();
        assert!(yarn.contains("lacks the number `original_max_position_embeddings`"), "{yarn}");
        // DeepSeek's attention factor, from its `mscale` pair: (0.1·ln 40 + 1) / (0.1·0.5·ln 40 + 1).
        let deepseek = r#""rope_scaling": {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
            "mscale": 1.0, "mscale_all_dim": 0.5, "beta_fast": 16}"#;
        let Ok((_, Some(RopeScaling::Yarn { attention_factor, beta_fast, beta_slow, truncate, .. }))) = read(deepseek)
        else {
            panic!("yarn reads")
        };
        let expected = (0.1 * 40f64.ln() + 1.0) / (0.05 * 40f64.ln() + 1.0);
        assert_eq!((attention_factor, beta_fast, beta_slow, truncate), (expected, 16.0, 1.0, true));
        let dynamic = read(r#""rope_scaling": {"rope_type": "dynamic", "factor": 4.0}"#).unwrap_err();
        assert!(
            dynamic.contains("`dynamic` rotary scaling") && dynamic.contains("and `longrope` are implemented"),
            "{dynamic}"
        );
        let partial = read(r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0}"#).unwrap_err();
        assert!(partial.contains("lacks the number `low_freq_factor`"), "{partial}");
        // Phi-3's long-context models keep the original context beside the scaling.
        let longrope = read(r#""rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}"#);
        assert!(longrope.unwrap_err().contains("no original_max_position_embeddings"));
        let longrope = r#""original_max_position_embeddings": 16,
            "rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}"#;
        let Ok((_, Some(RopeScaling::LongRope { original_max_seq_len, attention_factor, .. }))) = read(longrope) else {
            panic!("longrope reads")
        };
        // max_position_embeddings 64 over 16: a factor of 4.
        assert_eq!((original_max_seq_len, attention_factor), (16, (1.0 + 4f64.ln() / 16f64.ln()).sqrt()));
        // Phi-4-mini turns three quarters of each head: 12 of 16 dimensions.
        let config = r#"{"model_type": "phi3", "vocab_size": 300, "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 64, "partial_rotary_factor": 0.75}"#;
        std::fs::write(&path, config).unwrap();
        assert_eq!(read_config(&path).unwrap().rotary_dim, Some(12));
    }
}
