//! llama.cpp's `.gguf` files: the architecture in their metadata, their tokenizer (rebuilt as
//! a Hugging Face byte-level BPE), and their tensors, dequantized to f32 with Hugging Face names
//! and the row permutation llama.cpp applies to the query and key projections undone.

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use recipe_spec::{Model, ModelSpec, RopeScaling};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

/// The metadata and tensor directory of a GGUF file.
pub fn read(path: &Path) -> Result<gguf_file::Content, String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    // Candle's reader bounds every length by the file's size; a header it still trips over
    // (a zero alignment, say) is a damaged file too, not a reason to abort.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gguf_file::Content::read(&mut file))) {
        Ok(read) => read.map_err(|e| format!("not a GGUF file: {e}")),
        Err(_) => Err("not a GGUF file: its header is inconsistent".into()),
    }
}

/// The architecture in a GGUF file's metadata; `vocab_size` is the tokenizer's when the
/// metadata does not say.
pub(crate) fn architecture(g: &gguf_file::Content, vocab_size: u32) -> Result<ModelSpec, String> {
    let arch = g.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if arch != "llama" {
        return Err(format!("its general.architecture is \"{arch}\"; only \"llama\" can be imported"));
    }
    let int = |key: &str| -> Result<u32, String> {
        g.metadata.get(key).and_then(|v| v.to_u32().ok()).ok_or_else(|| format!("its metadata lacks `{key}`"))
    };
    let float = |key: &str, default: f64| g.metadata.get(key).and_then(|v| v.to_f32().ok()).map_or(default, f64::from);
    let n_heads = int("llama.attention.head_count")?;
    if g.tensor_infos.contains_key("rope_freqs.weight") {
        return Err("it scales its rotary frequencies by a `rope_freqs.weight` tensor (Llama 3.1's \
                    `rope_scaling`), which is not read from GGUF; import the Hugging Face checkpoint"
            .into());
    }
    let text = |key: &str| g.metadata.get(key).and_then(|v| v.to_string().ok()).cloned();
    let rope_scaling = match text("llama.rope.scaling.type").as_deref() {
        None | Some("none") => None,
        Some("linear") => Some(RopeScaling::Linear { factor: float("llama.rope.scaling.factor", 1.0) }),
        Some(other) => {
            return Err(format!("its rotary scaling `{other}` is not one this trainer computes (only `linear`)"));
        }
    };
    Ok(ModelSpec {
        arch: Some("llama".into()),
        vocab_size: Some(int("llama.vocab_size").unwrap_or(vocab_size)),
        d_model: Some(int("llama.embedding_length")?),
        n_layers: Some(int("llama.block_count")?),
        n_heads: Some(n_heads),
        n_kv_heads: Some(int("llama.attention.head_count_kv").unwrap_or(n_heads)),
        head_dim: int("llama.attention.key_length").ok(),
        d_ff: Some(int("llama.feed_forward_length")?),
        max_seq_len: Some(int("llama.context_length")?),
        tie_embeddings: Some(!g.tensor_infos.contains_key("output.weight")),
        rope_theta: Some(float("llama.rope.freq_base", 10000.0)),
        rope_scaling,
        // Stored as f32; the nearest f64 with few digits is what the model was trained with.
        norm_eps: Some(round_to_f32_precision(float("llama.attention.layer_norm_rms_epsilon", 1e-5))),
        ..ModelSpec::default()
    })
}

fn round_to_f32_precision(x: f64) -> f64 {
    format!("{:.7e}", x as f32).parse().unwrap_or(x)
}

/// The vocabulary of a GGUF tokenizer: tokens by id, their llama.cpp types (3 = control), and
/// the BPE merges.
struct Vocabulary {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
    /// `tokenizer.ggml.model`: only `gpt2` (byte-level BPE) is rebuilt.
    model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer's name.
    pre: String,
}

fn vocabulary(g: &gguf_file::Content) -> Result<Vocabulary, String> {
    let list = |key: &str| -> Result<&Vec<gguf_file::Value>, String> {
        g.metadata.get(key).and_then(|v| v.to_vec().ok()).ok_or_else(|| format!("its metadata lacks `{key}`"))
    };
    let strings = |key: &str| -> Result<Vec<String>, String> {
        list(key)?.iter().map(|v| v.to_string().cloned().map_err(|_| format!("`{key}` holds a non-string"))).collect()
    };
    let text = |key: &str| g.metadata.get(key).and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    Ok(Vocabulary {
        tokens: strings("tokenizer.ggml.tokens")?,
        types: match g.metadata.get("tokenizer.ggml.token_type") {
            Some(_) => list("tokenizer.ggml.token_type")?.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            None => Vec::new(),
        },
        merges: strings("tokenizer.ggml.merges").unwrap_or_default(),
        model: text("tokenizer.ggml.model"),
        pre: text("tokenizer.ggml.pre"),
    })
}

/// The tokenizer's tokens, by id.
pub(crate) fn tokens(g: &gguf_file::Content) -> Result<Vec<String>, String> {
    Ok(vocabulary(g)?.tokens)
}

/// Rebuild the byte-level BPE a GGUF file describes (`tokenizer.ggml.model = "gpt2"`): its
/// vocabulary and merges, control tokens as special tokens, and the pre-tokenizer its
/// `tokenizer.ggml.pre` names.
pub fn tokenizer(path: &Path) -> Result<Tokenizer, String> {
    let v = vocabulary(&read(path)?)?;
    if v.model != "gpt2" {
        return Err(format!("its tokenizer is `{}`; only byte-level BPE (`gpt2`) is rebuilt", v.model));
    }
    let vocab: Vocab = v.tokens.iter().enumerate().map(|(id, t)| (t.clone(), id as u32)).collect();
    let merges = v
        .merges
        .iter()
        .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect::<Option<Vec<_>>>()
        .ok_or("a merge is not two tokens separated by a space")?;
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| e.to_string())?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    let pre = match v.pre.as_str() {
        // SmolLM's tokenizer splits every digit on its own before the byte-level split.
        "smollm" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level,
        ])),
        "gpt2" | "default" | "" => byte_level,
        other => return Err(format!("its pre-tokenizer `{other}` is not one this tool can rebuild")),
    };
    tokenizer.with_pre_tokenizer(Some(pre));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    const CONTROL: i32 = 3;
    let specials: Vec<AddedToken> = v
        .tokens
        .iter()
        .zip(&v.types)
        .filter(|(_, ty)| **ty == CONTROL)
        .map(|(t, _)| AddedToken::from(t.clone(), true))
        .collect();
    tokenizer.add_special_tokens(&specials);
    Ok(tokenizer)
}

/// Every tensor the model uses, dequantized, by Hugging Face name, sorted.
pub(crate) fn tensors(path: &Path, config: &Model) -> candle_core::Result<Vec<(String, Tensor)>> {
    let content = read(path).map_err(candle_core::Error::Msg)?;
    let mut file = std::fs::File::open(path).map_err(candle_core::Error::wrap)?;
    let head_dim = config.head_dim() as usize;
    let layout: std::collections::HashMap<String, Vec<usize>> =
        config.layout().into_iter().map(|(name, shape, _)| (name, shape)).collect();
    let mut out = Vec::new();
    for (name, info) in &content.tensor_infos {
        let Some(hf_name) = hf_name(name) else { continue };
        // Checked before any byte is read, so a header that lies about a shape cannot ask for
        // a huge allocation.
        let expected = layout.get(&hf_name).map(Vec::as_slice);
        if expected != Some(info.shape.dims()) {
            candle_core::bail!(
                "{name} has shape {:?} in the file; the architecture wants {expected:?}",
                info.shape.dims()
            );
        }
        let mut t = content.tensor(&mut file, name, &Device::Cpu)?.dequantize(&Device::Cpu)?;
        if hf_name.ends_with("q_proj.weight") {
            t = unpermute(&t, config.n_heads as usize, head_dim)?;
        } else if hf_name.ends_with("k_proj.weight") {
            t = unpermute(&t, config.n_kv_heads as usize, head_dim)?;
        }
        out.push((hf_name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The Hugging Face name of a llama.cpp tensor, or none for tensors the model does not use.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let part = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{part}"))
}

/// llama.cpp interleaves the two rotary halves of each head's rows; Hugging Face keeps them
/// as halves. `w` `[heads·head_dim, in]` → rows of each head reordered `(hd/2, 2) → (2, hd/2)`.
fn unpermute(w: &Tensor, heads: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let (rows, input) = w.dims2()?;
    w.reshape((heads, head_dim / 2, 2, input))?.transpose(1, 2)?.contiguous()?.reshape((rows, input))
}
