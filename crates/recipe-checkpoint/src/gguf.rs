//! llama.cpp's `.gguf` files: the architecture in their metadata, their tokenizer (rebuilt as
//! a Hugging Face byte-level BPE), and their tensors, dequantized to f32 with Hugging Face names
//! and the row permutation llama.cpp applies to the query and key projections undone.

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use recipe_spec::{Model, ModelSpec, RopeScaling};
use tokenizers::SplitDelimiterBehavior;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
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
pub(crate) fn architecture(
    g: &gguf_file::Content,
    rope_divisors: Option<Vec<f32>>,
    vocab_size: u32,
) -> Result<ModelSpec, String> {
    let arch = g.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if !ARCHS.contains(&arch.as_str()) {
        return Err(format!("its general.architecture is \"{arch}\"; only {} can be imported", ARCHS.join(", ")));
    }
    if gemma(&arch) {
        return gemma_architecture(g, &arch, vocab_size);
    }
    // Every key but the tokenizer's is under the architecture's name.
    let key = |k: &str| format!("{arch}.{k}");
    let int = |k: &str| -> Result<u32, String> {
        let key = key(k);
        g.metadata.get(&key).and_then(|v| v.to_u32().ok()).ok_or_else(|| format!("its metadata lacks `{key}`"))
    };
    let float =
        |k: &str, default: f64| g.metadata.get(&key(k)).and_then(|v| v.to_f32().ok()).map_or(default, f64::from);
    let n_heads = int("attention.head_count")?;
    let text = |k: &str| g.metadata.get(&key(k)).and_then(|v| v.to_string().ok()).cloned();
    let rope_scaling = match text("rope.scaling.type").as_deref() {
        None | Some("none") => None,
        Some("linear") => Some(RopeScaling::Linear { factor: float("rope.scaling.factor", 1.0) }),
        Some(other) => {
            return Err(format!("its rotary scaling `{other}` is not one this trainer computes (only `linear`)"));
        }
    };
    let mut spec = ModelSpec {
        arch: Some(arch.clone()),
        vocab_size: Some(int("vocab_size").unwrap_or(vocab_size)),
        d_model: Some(int("embedding_length")?),
        n_layers: Some(int("block_count")?),
        n_heads: Some(n_heads),
        n_kv_heads: Some(int("attention.head_count_kv").unwrap_or(n_heads)),
        head_dim: int("attention.key_length").ok(),
        d_ff: Some(int("feed_forward_length")?),
        max_seq_len: Some(int("context_length")?),
        tie_embeddings: Some(!g.tensor_infos.contains_key("output.weight")),
        rope_theta: Some(float("rope.freq_base", 10000.0)),
        rope_scaling,
        // Stored as f32; the nearest f64 with few digits is what the model was trained with.
        norm_eps: Some(round_to_f32_precision(float("attention.layer_norm_rms_epsilon", 1e-5))),
        ..ModelSpec::default()
    };
    if let Some(divisors) = rope_divisors {
        if spec.rope_scaling.is_some() {
            return Err("it has both rotary scaling metadata and a `rope_freqs.weight` tensor".into());
        }
        let original = int("rope.scaling.original_context_length").unwrap_or(LLAMA3_ORIGINAL_CONTEXT);
        spec.rope_scaling = Some(llama3_scaling(&spec, &divisors, original)?);
    }
    Ok(spec)
}

/// The divisors in a file's `rope_freqs.weight`, if it has one.
pub(crate) fn rope_divisors(g: &gguf_file::Content, path: &Path) -> Result<Option<Vec<f32>>, String> {
    if !g.tensor_infos.contains_key("rope_freqs.weight") {
        return Ok(None);
    }
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let divisors = g
        .tensor(&mut file, "rope_freqs.weight", &Device::Cpu)
        .and_then(|t| t.dequantize(&Device::Cpu))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| format!("its `rope_freqs.weight`: {e}"))?;
    Ok(Some(divisors))
}

/// The context Llama 3.1, 3.2 and 3.3 were first trained at, which llama.cpp's converter does
/// not write: the scaling's bands are fractions of it.
const LLAMA3_ORIGINAL_CONTEXT: u32 = 8192;

/// Llama 3.1's rotary scaling from llama.cpp's `rope_freqs.weight`, each frequency's divisor:
/// 1 for wavelengths shorter than `original / high_freq_factor`, `factor` for those longer
/// than `original / low_freq_factor`, blended between. The factor is the largest divisor.
/// Llama 3.x's own band (1 and 4) is taken when it gives the divisors; else the band is solved
/// from two blended divisors, which lie on a line in `original / wavelength`. Whichever is
/// taken must give every divisor back, so the imported model rotates as the file's does.
fn llama3_scaling(spec: &ModelSpec, divisors: &[f32], original: u32) -> Result<RopeScaling, String> {
    let model = spec.resolve(None);
    let plain: Vec<f64> = model.plain_rope_frequencies(model.rope_theta).collect();
    if divisors.len() != plain.len() {
        return Err(format!(
            "its `rope_freqs.weight` has {} divisors; a head of {} rotates {} frequencies",
            divisors.len(),
            model.head_dim(),
            plain.len()
        ));
    }
    let factor = divisors.iter().copied().fold(1.0f32, f32::max) as f64;
    let scaling = |low_freq_factor: f64, high_freq_factor: f64| RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_seq_len: original,
    };
    let gives_the_divisors = |scaling: &RopeScaling| {
        let model = recipe_spec::Model { rope_scaling: Some(scaling.clone()), ..model.clone() };
        plain.iter().zip(model.rope_frequencies()).zip(divisors).all(|((plain, scaled), &divisor)| {
            let d = plain / scaled;
            (d - f64::from(divisor)).abs() <= 1e-5 * d
        })
    };
    let llama3 = scaling(1.0, 4.0);
    if gives_the_divisors(&llama3) {
        return Ok(llama3);
    }
    // In the blend, `1/d = (1 − s)/factor + s` with `s = (original/wavelength − low) / (high − low)`.
    let blended: Vec<(f64, f64)> = plain
        .iter()
        .zip(divisors)
        .filter(|&(_, &d)| d > 1.0 && f64::from(d) < factor)
        .map(|(f, &d)| {
            let smooth = (1.0 / f64::from(d) - 1.0 / factor) / (1.0 - 1.0 / factor);
            (f64::from(original) * f / (2.0 * std::f64::consts::PI), smooth)
        })
        .collect();
    if let [(x0, s0), .., (x1, s1)] = blended[..] {
        let width = (x1 - x0) / (s1 - s0);
        let low = round_to_f32_precision(x0 - s0 * width);
        let solved = scaling(low, round_to_f32_precision(low + width));
        if gives_the_divisors(&solved) {
            return Ok(solved);
        }
    }
    Err(format!(
        "its `rope_freqs.weight` divisors are not Llama 3.1's rotary scaling over an original context of {original} tokens"
    ))
}

/// The llama.cpp architectures read and written, by the names both use: Llama, Qwen 2
/// (biases on the query, key and value projections), Qwen 3 (per-head query and key norms),
/// Gemma 2 and Gemma 3.
const ARCHS: [&str; 5] = ["llama", "qwen2", "qwen3", "gemma2", "gemma3"];

fn gemma(arch: &str) -> bool {
    arch == "gemma2" || arch == "gemma3"
}

/// The `query_pre_attn_scalar` llama.cpp computes for Gemma (which its metadata does not
/// hold): the head dimension, but d_model / heads in the 27B models (Gemma 2's 46 layers,
/// Gemma 3's 62), after Google's reference code.
fn gemma_query_scalar(arch: &str, n_layers: u32, d_model: u32, n_heads: u32, head_dim: u32) -> u32 {
    let largest = if arch == "gemma2" { 46 } else { 62 };
    if n_layers == largest { d_model / n_heads.max(1) } else { head_dim }
}

/// A Gemma GGUF's architecture, read as the `config.json` it stands for, with what llama.cpp
/// assumes where the metadata is silent: Gemma 2's sliding window of 4096 in every other layer
/// and its logit caps of 50 and 30; Gemma 3's window in all but every sixth layer (or the
/// `attention.sliding_window_pattern` given), its sliding layers' base 10000 unless
/// `rope.freq_base_swa` says; queries scaled by 1/√head_dim, but by 1/√(d_model/heads) in the
/// 27B models (46 and 62 layers), as llama.cpp computes them.
fn gemma_architecture(g: &gguf_file::Content, arch: &str, vocab_size: u32) -> Result<ModelSpec, String> {
    use serde_json::{Value, json};
    let get = |k: &str| g.metadata.get(&format!("{arch}.{k}"));
    let int = |k: &str| -> Result<u32, String> {
        get(k).and_then(|v| v.to_u32().ok()).ok_or_else(|| format!("its metadata lacks `{arch}.{k}`"))
    };
    let float = |k: &str| get(k).and_then(|v| v.to_f32().ok()).map(|f| round_to_f32_precision(f64::from(f)));
    let (d_model, n_layers, n_heads) = (int("embedding_length")?, int("block_count")?, int("attention.head_count")?);
    let head_dim = int("attention.key_length").unwrap_or(d_model / n_heads.max(1));
    let mut c = json!({
        "model_type": if arch == "gemma2" { "gemma2" } else { "gemma3_text" },
        "vocab_size": int("vocab_size").unwrap_or(vocab_size),
        "hidden_size": d_model,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": int("attention.head_count_kv").unwrap_or(n_heads),
        "head_dim": head_dim,
        "intermediate_size": int("feed_forward_length")?,
        "max_position_embeddings": int("context_length")?,
        "tie_word_embeddings": !g.tensor_infos.contains_key("output.weight"),
        "rms_norm_eps": float("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
        "rope_theta": float("rope.freq_base").unwrap_or(if arch == "gemma2" { 1e4 } else { 1e6 }),
        "query_pre_attn_scalar": gemma_query_scalar(arch, n_layers, d_model, n_heads, head_dim),
    });
    match get("rope.scaling.type").and_then(|v| v.to_string().ok()).map(String::as_str) {
        None | Some("none") => {}
        Some("linear") => {
            c["rope_scaling"] = json!({ "rope_type": "linear", "factor": float("rope.scaling.factor").unwrap_or(1.0) })
        }
        Some(other) => {
            return Err(format!("its rotary scaling `{other}` is not one this trainer computes (only `linear`)"));
        }
    }
    for cap in ["attn_logit_softcapping", "final_logit_softcapping"] {
        match float(cap) {
            Some(value) if value > 0.0 => c[cap] = value.into(),
            // Gemma 2's caps are on unless given; Gemma 3 has none unless given.
            _ if arch == "gemma3" => c[cap] = Value::Null,
            _ => {}
        }
    }
    let window = get("attention.sliding_window").and_then(|v| v.to_u32().ok());
    let window = if arch == "gemma2" { Some(window.unwrap_or(4096)) } else { window.filter(|w| *w > 0) };
    let sliding: Vec<bool> = match (window, get("attention.sliding_window_pattern")) {
        (None, _) => vec![false; n_layers as usize],
        (Some(_), Some(gguf_file::Value::Array(flags))) => flags.iter().map(|f| f.to_bool().unwrap_or(false)).collect(),
        (Some(_), pattern) => {
            let every = pattern.and_then(|p| p.to_u32().ok()).unwrap_or(if arch == "gemma2" { 2 } else { 6 }).max(1);
            (0..n_layers).map(|layer| layer % every < every - 1).collect()
        }
    };
    let kind = |slides: &bool| if *slides { "sliding_attention" } else { "full_attention" };
    c["layer_types"] = sliding.iter().map(kind).collect::<Vec<_>>().into();
    c["sliding_window"] = window.map_or(Value::Null, Value::from);
    if arch == "gemma3" {
        c["rope_local_base_freq"] = float("rope.freq_base_swa").unwrap_or(1e4).into();
    } else if let Some(local) = float("rope.freq_base_swa").filter(|local| Some(*local) != c["rope_theta"].as_f64()) {
        return Err(format!("its sliding layers rotate with base {local}, which Gemma 2's do not"));
    }
    crate::hf::spec_of_config(c)
}

/// Whether llama.cpp stores an architecture's query and key rows interleaved: its converter
/// permutes Llama's, whose rotation it computes on pairs, and not Qwen's, rotated by halves.
fn interleaved(arch: &str) -> bool {
    arch == "llama"
}

fn round_to_f32_precision(x: f64) -> f64 {
    format!("{:.7e}", x as f32).parse().unwrap_or(x)
}

/// llama.cpp's token types (`tokenizer.ggml.token_type`), as SentencePiece types its pieces.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

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
    /// The tokens put before and after every text (`tokenizer.ggml.add_bos_token` with
    /// `bos_token_id`, `add_eos_token` with `eos_token_id`), as llama.cpp tokenizes.
    framing: [Option<u32>; 2],
    /// SentencePiece (`llama`) only: each token's score, which orders the merges.
    scores: Vec<f32>,
    /// SentencePiece only: whether a text gets a `▁` before it (default true, as llama.cpp).
    add_space_prefix: bool,
    /// SentencePiece only: whether runs of whitespace are collapsed first (not rebuilt).
    remove_extra_whitespaces: bool,
}

fn vocabulary(g: &gguf_file::Content) -> Result<Vocabulary, String> {
    let list = |key: &str| -> Result<&Vec<gguf_file::Value>, String> {
        g.metadata.get(key).and_then(|v| v.to_vec().ok()).ok_or_else(|| format!("its metadata lacks `{key}`"))
    };
    let strings = |key: &str| -> Result<Vec<String>, String> {
        list(key)?.iter().map(|v| v.to_string().cloned().map_err(|_| format!("`{key}` holds a non-string"))).collect()
    };
    let text = |key: &str| g.metadata.get(key).and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    let flag_or = |key: &str, default| g.metadata.get(key).and_then(|v| v.to_bool().ok()).unwrap_or(default);
    Ok(Vocabulary {
        tokens: strings("tokenizer.ggml.tokens")?,
        types: match g.metadata.get("tokenizer.ggml.token_type") {
            Some(_) => list("tokenizer.ggml.token_type")?.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            None => Vec::new(),
        },
        merges: strings("tokenizer.ggml.merges").unwrap_or_default(),
        model: text("tokenizer.ggml.model"),
        pre: text("tokenizer.ggml.pre"),
        framing: ["bos", "eos"].map(|which| {
            // llama.cpp's defaults where the file is silent: a BOS for SentencePiece and for
            // Llama 3's pre-tokenizer, never an EOS.
            let by_default = which == "bos"
                && (text("tokenizer.ggml.model") == "llama"
                    || ["llama3", "llama-v3", "llama-bpe"].contains(&text("tokenizer.ggml.pre").as_str()));
            let added = flag_or(&format!("tokenizer.ggml.add_{which}_token"), by_default);
            let id = g.metadata.get(&format!("tokenizer.ggml.{which}_token_id")).and_then(|v| v.to_u32().ok());
            id.filter(|_| added)
        }),
        scores: match g.metadata.get("tokenizer.ggml.scores") {
            Some(_) => list("tokenizer.ggml.scores")?.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect(),
            None => Vec::new(),
        },
        add_space_prefix: flag_or("tokenizer.ggml.add_space_prefix", true),
        remove_extra_whitespaces: flag_or("tokenizer.ggml.remove_extra_whitespaces", false),
    })
}

/// The tokenizer's tokens, by id, and the one it puts before every text, if any.
pub(crate) fn tokens(g: &gguf_file::Content) -> Result<(Vec<String>, Option<u32>), String> {
    let v = vocabulary(g)?;
    Ok((v.tokens, v.framing[0]))
}

/// Rebuild the byte-level BPE a GGUF file describes (`tokenizer.ggml.model = "gpt2"`): its
/// vocabulary and merges, control tokens as special tokens, and the pre-tokenizer its
/// `tokenizer.ggml.pre` names.
pub fn tokenizer(path: &Path) -> Result<Tokenizer, String> {
    let v = vocabulary(&read(path)?)?;
    let mut tokenizer = match v.model.as_str() {
        "gpt2" => byte_level_bpe(&v)?,
        "llama" => sentencepiece_bpe(&v)?,
        other => {
            return Err(format!(
                "its tokenizer is `{other}`; only byte-level BPE (`gpt2`) and SentencePiece BPE (`llama`) are rebuilt"
            ));
        }
    };
    let added = |kind: i32| -> Vec<AddedToken> {
        let tokens = v.tokens.iter().zip(&v.types).filter(|(_, ty)| **ty == kind);
        // Matched in the text as written, before a normalizer (SentencePiece's `▁`) runs.
        tokens.map(|(t, _)| AddedToken::from(t.clone(), kind == CONTROL).normalized(false)).collect()
    };
    tokenizer.add_special_tokens(&added(CONTROL));
    // SentencePiece emits a user-defined piece whole wherever it occurs, as an added token.
    tokenizer.add_tokens(&added(USER_DEFINED));
    if let Some(framing) = framing(&v)? {
        tokenizer.with_post_processor(Some(framing));
    }
    Ok(tokenizer)
}

/// A SentencePiece BPE tokenizer (llama.cpp's `llama` model: Llama 2, Mistral, TinyLlama) as
/// Llama 2's `tokenizer.json` has it: BPE over the pieces with byte fallback (`<0x41>`), the
/// merges ranked by the merged piece's score (as `transformers` derives them), spaces written
/// `▁`, and a `▁` before the text when the file asks for one (`add_space_prefix`, default
/// true).
fn sentencepiece_bpe(v: &Vocabulary) -> Result<Tokenizer, String> {
    use tokenizers::decoders::sequence::Sequence as DecoderSequence;
    use tokenizers::decoders::{DecoderWrapper, byte_fallback::ByteFallback, fuse::Fuse, strip::Strip};
    use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormalizerSequence};
    if v.scores.len() != v.tokens.len() {
        return Err("its SentencePiece tokenizer has no score for every token (`tokenizer.ggml.scores`)".into());
    }
    if v.remove_extra_whitespaces {
        return Err("its SentencePiece tokenizer collapses runs of whitespace, which is not rebuilt".into());
    }
    // SentencePiece (and llama.cpp) merge into user-defined pieces too (Gemma's runs of `▁`).
    let mergeable = |id: usize| v.types.get(id).is_none_or(|ty| *ty == NORMAL || *ty == USER_DEFINED);
    let vocab: Vocab = v.tokens.iter().enumerate().map(|(id, t)| (t.clone(), id as u32)).collect();
    // Every way to split a piece into two pieces is a merge, ranked by the piece's score
    // (then the longer left part first), as `transformers` derives them.
    let mut merges: Vec<(&str, &str, f32, usize)> = Vec::new();
    for (id, piece) in v.tokens.iter().enumerate().filter(|(id, _)| mergeable(*id)) {
        let mut local: Vec<(&str, &str)> = piece
            .char_indices()
            .skip(1)
            .map(|(at, _)| piece.split_at(at))
            .filter(|(l, r)| vocab.contains_key(*l) && vocab.contains_key(*r))
            .collect();
        local.sort_by_key(|(l, r)| (vocab[*l], vocab[*r]));
        let first = merges.len();
        merges.extend(local.into_iter().enumerate().map(|(i, (l, r))| (l, r, v.scores[id], first + i)));
    }
    merges.sort_by(|a, b| {
        b.2.total_cmp(&a.2).then(b.0.len().cmp(&a.0.len())).then(b.1.len().cmp(&a.1.len())).then(a.3.cmp(&b.3))
    });
    let merges = merges.into_iter().map(|(l, r, _, _)| (l.to_string(), r.to_string())).collect();
    let mut bpe = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some((unknown, _)) = v.tokens.iter().zip(&v.types).find(|(_, ty)| **ty == UNKNOWN) {
        bpe = bpe.unk_token(unknown.clone());
    }
    let mut tokenizer = Tokenizer::new(bpe.build().map_err(|e| e.to_string())?);
    // As a normalizer, the `▁` goes before every stretch of text between special tokens, as
    // llama.cpp puts it (and Llama 2's own `tokenizer.json`), and before one that already
    // starts with a space, as SentencePiece does.
    let space = Replace::new(" ", "▁").map_err(|e| e.to_string())?.into();
    let normalizer = match v.add_space_prefix {
        true => NormalizerSequence::new(vec![Prepend::new("▁".into()).into(), space]).into(),
        false => space,
    };
    tokenizer.with_normalizer(Some::<NormalizerWrapper>(normalizer));
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(|e| e.to_string())?.into(),
        ByteFallback::default().into(),
        Fuse::default().into(),
    ];
    if v.add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// A byte-level BPE tokenizer (llama.cpp's `gpt2` model) with the pre-tokenizer its
/// `tokenizer.ggml.pre` names.
fn byte_level_bpe(v: &Vocabulary) -> Result<Tokenizer, String> {
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
        "gpt-2" | "gpt2" | "default" | "" => byte_level,
        // Qwen 2's and Llama 3's split by their regex, then map bytes without splitting again.
        "qwen2" | "llama-bpe" => {
            let regex = if v.pre == "qwen2" { QWEN2_SPLIT } else { LLAMA3_SPLIT };
            let split = Split::new(SplitPattern::Regex(regex.into()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| e.to_string())?;
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
            ]))
        }
        other => return Err(format!("its pre-tokenizer `{other}` is not one this tool can rebuild")),
    };
    tokenizer.with_pre_tokenizer(Some(pre));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// The post-processor that puts the file's framing tokens around a text (and around each of a
/// pair, as Llama 3's `tokenizer.json` does).
fn framing(v: &Vocabulary) -> Result<Option<TemplateProcessing>, String> {
    if v.framing == [None, None] {
        return Ok(None);
    }
    let name =
        |id: u32| v.tokens.get(id as usize).cloned().ok_or(format!("its framing token {id} is not in its vocabulary"));
    let [bos, eos] = v.framing.map(|id| id.map(name).transpose());
    let (bos, eos) = (bos?, eos?);
    let around =
        |sequence: &str| bos.iter().cloned().chain([sequence.to_string()]).chain(eos.iter().cloned()).collect();
    let single: Vec<String> = around("$A");
    let pair: Vec<String> = [around("$A"), around("$B:1")].concat();
    let specials: Vec<(String, u32)> =
        v.framing.iter().flatten().map(|&id| Ok((name(id)?, id))).collect::<Result<_, String>>()?;
    TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(|e| e.to_string())?
        .special_tokens(specials)
        .build()
        .map(Some)
        .map_err(|e| e.to_string())
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
        let Some(hf_name) = hf_name(name, &config.arch) else { continue };
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
        if interleaved(&config.arch) && hf_name.ends_with("q_proj.weight") {
            t = unpermute(&t, config.n_heads as usize, head_dim)?;
        } else if interleaved(&config.arch) && hf_name.ends_with("k_proj.weight") {
            t = unpermute(&t, config.n_kv_heads as usize, head_dim)?;
        }
        if let Some(shift) = norm_shift(&config.arch, &hf_name) {
            t = (t - shift)?;
        }
        out.push((hf_name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Each tensor's name in llama.cpp and in Hugging Face: the model's, then a block's.
const FIXED_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];
const BLOCK_NAMES: [(&str, &str); 14] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    ("attn_k_norm.weight", "self_attn.k_norm.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// Gemma's block norms, which differ from Llama's: a norm after attention and after the MLP
/// besides the one before each (`ffn_norm` is the one before the MLP).
const GEMMA_BLOCK_NORMS: [(&str, &str); 3] = [
    ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
    ("post_attention_norm.weight", "post_attention_layernorm.weight"),
    ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"),
];

/// `name` in the other naming, through [`FIXED_NAMES`] and [`BLOCK_NAMES`] (with
/// [`GEMMA_BLOCK_NORMS`] first for Gemma): `from_gguf` says which way. None for a tensor the
/// model does not use.
fn renamed(name: &str, from_gguf: bool, arch: &str) -> Option<String> {
    let (block_from, block_to) = if from_gguf { ("blk.", "model.layers.") } else { ("model.layers.", "blk.") };
    let pick = |(gguf, hf): &(&'static str, &'static str)| if from_gguf { (*gguf, *hf) } else { (*hf, *gguf) };
    if let Some((_, to)) = FIXED_NAMES.iter().map(pick).find(|(from, _)| *from == name) {
        return Some(to.to_string());
    }
    let (layer, part) = name.strip_prefix(block_from)?.split_once('.')?;
    let gemma_norms: &[(&str, &str)] = if gemma(arch) { &GEMMA_BLOCK_NORMS } else { &[] };
    let (_, to) = gemma_norms.iter().chain(&BLOCK_NAMES).map(pick).find(|(from, _)| *from == part)?;
    Some(format!("{block_to}{layer}.{to}"))
}

/// The Hugging Face name of a llama.cpp tensor, or none for tensors the model does not use.
fn hf_name(gguf: &str, arch: &str) -> Option<String> {
    renamed(gguf, true, arch)
}

/// What llama.cpp adds to Gemma's norm weights: its converter stores `1 + w` for the `(1 + w)`
/// that Gemma's RMSNorm multiplies by.
fn norm_shift(arch: &str, hf_name: &str) -> Option<f64> {
    (gemma(arch) && hf_name.ends_with("norm.weight")).then_some(1.0)
}

/// llama.cpp interleaves the two rotary halves of each head's rows; Hugging Face keeps them
/// as halves. `w` `[heads·head_dim, in]` → rows of each head reordered `(hd/2, 2) → (2, hd/2)`.
fn unpermute(w: &Tensor, heads: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let (rows, input) = w.dims2()?;
    w.reshape((heads, head_dim / 2, 2, input))?.transpose(1, 2)?.contiguous()?.reshape((rows, input))
}

/// The weight `w` (Hugging Face name `name`, architecture `arch`) as a GGUF written in `dtype`
/// reads back: shifted as llama.cpp stores it, stored (quantized) as [`gguf_storage`] says,
/// read and shifted back, as [`write_gguf`] and the importer do.
pub fn gguf_round_trip(arch: &str, name: &str, w: &Tensor, dtype: GgmlDType) -> candle_core::Result<Tensor> {
    let shift = norm_shift(arch, name).unwrap_or(0.0);
    let stored = (w.to_dtype(candle_core::DType::F32)? + shift)?;
    let q = candle_core::quantized::QTensor::quantize(&stored, gguf_storage(stored.dims(), dtype))?;
    q.dequantize(&Device::Cpu)? - shift
}

/// How a GGUF export stores each matrix (vectors stay f32, as llama.cpp's converter keeps them).
pub use candle_core::quantized::GgmlDType;

/// What a GGUF export writes besides the weights: the tokenizer (a `tokenizer.json`'s
/// contents), the ids that start and end a text, and the chat template.
pub struct GgufTokenizer<'a> {
    pub json: &'a serde_json::Value,
    pub bos: Option<u32>,
    pub eos: u32,
    pub chat_template: Option<&'a str>,
}

/// Write `weights` (Hugging Face names, f32 or wider, merged) of a model of architecture
/// `config` as a llama.cpp `.gguf` of the same architecture (`llama`, `qwen2`, `qwen3`): the
/// metadata llama.cpp reads, the byte-level BPE tokenizer with the pre-tokenizer it names, and
/// the tensors under its names, Llama's query and key rows interleaved as llama.cpp's
/// converter interleaves them. What llama.cpp's architecture cannot express is an error that
/// says which.
pub fn write_gguf(
    path: &Path,
    name: &str,
    config: &Model,
    weights: &[(String, Tensor)],
    tokenizer: &GgufTokenizer,
    dtype: GgmlDType,
) -> Result<(), String> {
    use gguf_file::Value as V;
    let unsupported = |what: &str| format!("llama.cpp's `{}` architecture has no {what}", config.arch);
    let arch = config.arch.as_str();
    if !ARCHS.contains(&arch) {
        return Err(format!("llama.cpp's architectures written are {}, not `{arch}`", ARCHS.join(", ")));
    }
    let llama_cpp_scale = gemma_query_scalar(arch, config.n_layers, config.d_model, config.n_heads, config.head_dim());
    let gemma_caps =
        arch == "gemma2" && (config.attn_logit_softcapping.is_none() || config.final_logit_softcapping.is_none());
    let refused = [
        (config.rotary_dim.is_some(), "partial rotary embedding (`rotary_dim`)"),
        (config.sliding_window.is_some() && !gemma(arch), "sliding window"),
        (config.nope_layers.is_some(), "layers without positions (`nope_layers`)"),
        (
            gemma(arch) && config.query_pre_attn_scalar.unwrap_or(config.head_dim()) != llama_cpp_scale,
            "query scale but 1/√head_dim (1/√(d_model/heads) at its 27B size): `query_pre_attn_scalar`",
        ),
        (gemma_caps, "Gemma 2 without both logit caps"),
        (arch == "gemma3" && config.attn_logit_softcapping.is_some(), "attention logit cap"),
        (arch == "gemma2" && config.local_rope_theta.is_some(), "rotary base of its own in the sliding layers"),
    ];
    if let Some((_, what)) = refused.iter().find(|(on, _)| *on) {
        return Err(unsupported(what));
    }
    let mut metadata: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(arch.into())),
        ("general.name".into(), V::String(name.into())),
        ("general.file_type".into(), V::U32(file_type(dtype)?)),
    ];
    let mut put = |key: &str, value: V| metadata.push((format!("{arch}.{key}"), value));
    put("vocab_size", V::U32(config.vocab_size));
    put("context_length", V::U32(config.max_seq_len));
    put("embedding_length", V::U32(config.d_model));
    put("block_count", V::U32(config.n_layers));
    put("feed_forward_length", V::U32(config.d_ff));
    put("attention.head_count", V::U32(config.n_heads));
    put("attention.head_count_kv", V::U32(config.n_kv_heads));
    put("attention.key_length", V::U32(config.head_dim()));
    put("attention.value_length", V::U32(config.head_dim()));
    put("rope.dimension_count", V::U32(config.head_dim()));
    put("rope.freq_base", V::F32(config.rope_theta as f32));
    put("attention.layer_norm_rms_epsilon", V::F32(config.norm_eps as f32));
    if gemma(arch) {
        if let Some(window) = config.sliding_window {
            put("attention.sliding_window", V::U32(window));
            let slides = (0..config.n_layers).map(|layer| V::Bool(config.slides(layer))).collect();
            put("attention.sliding_window_pattern", V::Array(slides));
        }
        if let Some(local) = config.local_rope_theta {
            put("rope.freq_base_swa", V::F32(local as f32));
        }
        for (key, cap) in [
            ("attn_logit_softcapping", config.attn_logit_softcapping),
            ("final_logit_softcapping", config.final_logit_softcapping),
        ] {
            if let Some(cap) = cap {
                put(key, V::F32(cap as f32));
            }
        }
    }
    match &config.rope_scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => {
            put("rope.scaling.type", V::String("linear".into()));
            put("rope.scaling.factor", V::F32(*factor as f32));
        }
        // llama.cpp takes Llama 3.1's scaling as each frequency's divisor, a tensor; the
        // original context (which llama.cpp reads only for YaRN) lets the import solve the band.
        Some(RopeScaling::Llama3 { original_max_seq_len, .. }) => {
            put("rope.scaling.original_context_length", V::U32(*original_max_seq_len));
        }
        Some(_) => return Err(unsupported("rotary scaling but `linear` and `llama3`")),
    }
    metadata.extend(tokenizer_metadata(tokenizer, config.vocab_size)?);

    let head_dim = config.head_dim() as usize;
    let mut tensors = Vec::new();
    for (hf, t) in weights {
        let gguf = gguf_name(hf, arch).ok_or_else(|| format!("no llama.cpp name for {hf}"))?;
        let t = if interleaved(arch) && hf.ends_with("q_proj.weight") {
            permute(t, config.n_heads as usize, head_dim)
        } else if interleaved(arch) && hf.ends_with("k_proj.weight") {
            permute(t, config.n_kv_heads as usize, head_dim)
        } else {
            Ok(t.clone())
        };
        let t = t.and_then(|t| t.to_dtype(candle_core::DType::F32)).map_err(|e| e.to_string())?;
        let t = match norm_shift(arch, hf) {
            Some(shift) => (t + shift).map_err(|e| e.to_string())?,
            None => t,
        };
        let q = candle_core::quantized::QTensor::quantize(&t, gguf_storage(t.dims(), dtype))
            .map_err(|e| format!("{hf}: {e}"))?;
        tensors.push((gguf, q));
    }
    if let Some(RopeScaling::Llama3 { .. }) = config.rope_scaling {
        let divisors: Vec<f32> = config
            .plain_rope_frequencies(config.rope_theta)
            .zip(config.rope_frequencies())
            .map(|(plain, scaled)| (plain / scaled) as f32)
            .collect();
        let n = divisors.len();
        let t = Tensor::from_vec(divisors, n, &Device::Cpu).map_err(|e| e.to_string())?;
        let q = candle_core::quantized::QTensor::quantize(&t, GgmlDType::F32).map_err(|e| e.to_string())?;
        tensors.push(("rope_freqs.weight".to_string(), q));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata: Vec<(&str, &V)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &candle_core::quantized::QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    gguf_file::write(&mut file, &metadata, &tensors).map_err(|e| e.to_string())
}

/// The type a tensor of shape `dims` is stored in when matrices are asked for in `dtype`:
/// vectors in f32; a matrix whose rows do not fill the type's blocks (256 values for the
/// k-quants, 32 for the others) in q8_0 where they fill its blocks, else f16, as llama.cpp's
/// quantizer falls back.
pub fn gguf_storage(dims: &[usize], dtype: GgmlDType) -> GgmlDType {
    let row = dims.last().copied().unwrap_or(0);
    match dims.len() {
        0 | 1 => GgmlDType::F32,
        _ => [dtype, GgmlDType::Q8_0, GgmlDType::F16]
            .into_iter()
            .find(|t| row % t.block_size() == 0)
            .expect("f16's block is one value"),
    }
}

/// llama.cpp's `general.file_type` for a model whose matrices are stored in `dtype`.
fn file_type(dtype: GgmlDType) -> Result<u32, String> {
    match dtype {
        GgmlDType::F32 => Ok(0),
        GgmlDType::F16 => Ok(1),
        GgmlDType::Q4_0 => Ok(2),
        GgmlDType::Q8_0 => Ok(7),
        // llama.cpp's "small" mixes, the nearest to every matrix in one type.
        GgmlDType::Q4K => Ok(14),
        GgmlDType::Q5K => Ok(16),
        GgmlDType::Q6K => Ok(18),
        GgmlDType::BF16 => Ok(32),
        other => Err(format!("{other:?} is not a GGUF export dtype")),
    }
}

/// The tokenizer's GGUF metadata: llama.cpp's `gpt2` (byte-level BPE) model with a token for
/// each of the `vocab_size` embeddings, their types (special added tokens are control tokens),
/// merges and pre-tokenizer.
fn tokenizer_metadata(t: &GgufTokenizer, vocab_size: u32) -> Result<Vec<(String, gguf_file::Value)>, String> {
    use gguf_file::Value as V;
    let json = t.json;
    if json["model"]["type"] != "BPE" {
        return Err(format!(
            "the tokenizer is {}; only a byte-level or SentencePiece BPE is written as GGUF",
            json["model"]["type"]
        ));
    }
    let sentencepiece = sentencepiece_prefix(json)?;
    let pre = match sentencepiece {
        Some(_) => "default",
        None => pre_tokenizer_name(&json["pre_tokenizer"])?,
    };
    let vocab = json["model"]["vocab"].as_object().ok_or("the tokenizer has no `model.vocab`")?;
    let mut tokens: Vec<Option<(String, i32)>> = Vec::new();
    let mut put = |id: u64, token: &str, kind: i32| {
        let id = id as usize;
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
        }
        tokens[id] = Some((token.to_string(), kind));
    };
    for (token, id) in vocab {
        put(id.as_u64().ok_or("a vocabulary id is not a number")?, token, NORMAL);
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else { continue };
        put(id, content, if added["special"] == true { CONTROL } else { USER_DEFINED });
    }
    if tokens.len() > vocab_size as usize {
        return Err(format!(
            "the tokenizer has {} tokens, more than the model's {vocab_size} embeddings",
            tokens.len()
        ));
    }
    // llama.cpp counts the vocabulary by the tokens listed: every embedding row gets one, the
    // rows no token uses (padding, as Qwen's 151936 rows for 151669 tokens) a placeholder, as
    // llama.cpp's converter writes them.
    tokens.resize(vocab_size as usize, None);
    let (tokens, types): (Vec<_>, Vec<_>) = tokens
        .into_iter()
        .enumerate()
        .map(|(id, token)| token.unwrap_or_else(|| (format!("[PAD{id}]"), UNUSED)))
        .unzip();
    // `tokenizers` writes a merge as "a b" or, since 0.20, as ["a", "b"].
    let merges = json["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(pair) => Some(format!("{} {}", pair.first()?.as_str()?, pair.get(1)?.as_str()?)),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or("a merge is neither \"a b\" nor [\"a\", \"b\"]")?;
    // Candle writes an empty list as integers, which llama.cpp refuses for the merges.
    if merges.is_empty() {
        return Err("the tokenizer has no merges; llama.cpp reads a BPE by them".into());
    }
    let strings = |v: Vec<String>| V::Array(v.into_iter().map(V::String).collect());
    let mut out = vec![("tokenizer.ggml.pre".to_string(), V::String(pre.into()))];
    match sentencepiece {
        // SentencePiece merges by the merged piece's score: each piece scores minus the rank
        // of the first merge that makes it, so llama.cpp merges in the BPE's order; a piece no
        // merge makes scores below them all. Byte-fallback pieces are llama.cpp's byte tokens.
        Some(add_space_prefix) => {
            let mut first_rank: std::collections::HashMap<String, usize> = Default::default();
            for (rank, merge) in merges.iter().enumerate() {
                first_rank.entry(merge.replacen(' ', "", 1)).or_insert(rank);
            }
            let scores = tokens.iter().map(|token| -(first_rank.get(token).copied().unwrap_or(merges.len()) as f32));
            let is_byte = |token: &str| {
                token.len() == 6
                    && token.starts_with("<0x")
                    && token.ends_with('>')
                    && u8::from_str_radix(&token[3..5], 16).is_ok()
            };
            let unknown = json["model"]["unk_token"].as_str();
            let types = tokens.iter().zip(types).map(|(token, ty)| match () {
                _ if Some(token.as_str()) == unknown => UNKNOWN,
                _ if is_byte(token) && ty == NORMAL => BYTE,
                _ => ty,
            });
            if let Some(id) = unknown.and_then(|u| tokens.iter().position(|t| t == u)) {
                out.push(("tokenizer.ggml.unknown_token_id".to_string(), V::U32(id as u32)));
            }
            out.extend([
                ("tokenizer.ggml.model".to_string(), V::String("llama".into())),
                ("tokenizer.ggml.scores".to_string(), V::Array(scores.map(V::F32).collect())),
                ("tokenizer.ggml.token_type".to_string(), V::Array(types.map(V::I32).collect())),
                ("tokenizer.ggml.add_space_prefix".to_string(), V::Bool(add_space_prefix)),
                ("tokenizer.ggml.tokens".to_string(), strings(tokens)),
            ]);
        }
        None => out.extend([
            ("tokenizer.ggml.model".to_string(), V::String("gpt2".into())),
            ("tokenizer.ggml.tokens".to_string(), strings(tokens)),
            ("tokenizer.ggml.token_type".to_string(), V::Array(types.into_iter().map(V::I32).collect())),
            ("tokenizer.ggml.merges".to_string(), strings(merges)),
        ]),
    }
    out.extend([
        ("tokenizer.ggml.eos_token_id".to_string(), V::U32(t.eos)),
        ("tokenizer.ggml.add_bos_token".to_string(), V::Bool(t.bos.is_some())),
    ]);
    if let Some(bos) = t.bos {
        out.push(("tokenizer.ggml.bos_token_id".to_string(), V::U32(bos)));
    }
    if let Some(template) = t.chat_template {
        out.push(("tokenizer.chat_template".to_string(), V::String(template.into())));
    }
    Ok(out)
}

/// Qwen 2's and 3's split, then byte-level: llama.cpp's `qwen2`.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split (numbers in threes): llama.cpp's `llama-bpe`.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's name for the pre-tokenizer a `tokenizer.json` describes, for those it knows:
/// GPT-2's byte-level split (`gpt-2`), SmolLM's digits then byte-level (`smollm`), Qwen 2's
/// (`qwen2`) and Llama 3's (`llama-bpe`).
/// Whether a `tokenizer.json` is a SentencePiece BPE as llama.cpp tokenizes one (byte
/// fallback, spaces written `▁` by the normalizer, no pre-tokenizer that changes anything), and
/// then whether it puts a `▁` before each stretch of text: Llama 2's layout (and Gemma's, with
/// none), and what a GGUF's `llama` tokenizer is read back as.
fn sentencepiece_prefix(json: &serde_json::Value) -> Result<Option<bool>, String> {
    if json["model"]["byte_fallback"] != true {
        return Ok(None);
    }
    let space = |n: &serde_json::Value| n["type"] == "Replace" && n["pattern"]["String"] == " " && n["content"] == "▁";
    let normalizer = &json["normalizer"];
    let prefix = match normalizer["normalizers"].as_array().map(Vec::as_slice) {
        Some([prepend, replace]) if prepend["type"] == "Prepend" && prepend["prepend"] == "▁" && space(replace) => {
            true
        }
        _ if space(normalizer) => false,
        _ => {
            return Err(format!(
                "llama.cpp reads a SentencePiece BPE that writes spaces as `▁` by its normalizer (Llama 2's layout); \
                 this one's normalizer is {normalizer} and its pre-tokenizer {}",
                json["pre_tokenizer"]
            ));
        }
    };
    // Gemma's splits at spaces, which its normalizer has already turned into `▁`: none is left.
    let pre = &json["pre_tokenizer"];
    let splits_at_spaces = pre["type"] == "Split" && pre["pattern"]["String"] == " ";
    if !pre.is_null() && !splits_at_spaces {
        return Err(format!(
            "llama.cpp reads a SentencePiece BPE with no pre-tokenizer (Llama 2's layout); this one has {}",
            json["pre_tokenizer"]
        ));
    }
    Ok(Some(prefix))
}

fn pre_tokenizer_name(pre: &serde_json::Value) -> Result<&'static str, String> {
    let byte_level = |p: &serde_json::Value, regex: bool| {
        p["type"] == "ByteLevel" && p["add_prefix_space"] == false && p["use_regex"] == regex
    };
    let split = |p: &serde_json::Value| p["type"] == "Split" && p["pattern"]["Regex"].is_string();
    if byte_level(pre, true) {
        return Ok("gpt-2");
    }
    if let [first, second] = pre["pretokenizers"].as_array().map(Vec::as_slice).unwrap_or_default() {
        if first["type"] == "Digits" && first["individual_digits"] == true && byte_level(second, true) {
            return Ok("smollm");
        }
        if split(first) && byte_level(second, false) {
            match first["pattern"]["Regex"].as_str() {
                Some(QWEN2_SPLIT) => return Ok("qwen2"),
                Some(LLAMA3_SPLIT) => return Ok("llama-bpe"),
                _ => {}
            }
        }
    }
    Err(format!(
        "llama.cpp knows no pre-tokenizer like the tokenizer's ({pre}); GPT-2's, SmolLM's, Qwen 2's and Llama 3's are written"
    ))
}

/// The llama.cpp name of a Hugging Face tensor: [`hf_name`] inverted.
fn gguf_name(hf: &str, arch: &str) -> Option<String> {
    renamed(hf, false, arch)
}

/// [`unpermute`] inverted: each head's rows from halves `(2, hd/2)` to pairs `(hd/2, 2)`.
fn permute(w: &Tensor, heads: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let (rows, input) = w.dims2()?;
    w.reshape((heads, 2, head_dim / 2, input))?.transpose(1, 2)?.contiguous()?.reshape((rows, input))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama 3.2 1B's rotary settings: heads of 64, base 500000, and its scaling.
    fn llama32(scaling: RopeScaling) -> (ModelSpec, Vec<f32>) {
        let spec = ModelSpec {
            d_model: Some(2048),
            n_heads: Some(32),
            rope_theta: Some(500000.0),
            rope_scaling: Some(scaling),
            ..ModelSpec::default()
        };
        let model = spec.resolve(None);
        let divisors = model
            .plain_rope_frequencies(model.rope_theta)
            .zip(model.rope_frequencies())
            .map(|(plain, scaled)| (plain / scaled) as f32)
            .collect();
        (ModelSpec { rope_scaling: None, ..spec }, divisors)
    }

    fn llama3(low_freq_factor: f64, high_freq_factor: f64) -> RopeScaling {
        RopeScaling::Llama3 { factor: 32.0, low_freq_factor, high_freq_factor, original_max_seq_len: 8192 }
    }

    #[test]
    fn llama_3_2s_divisors_give_its_scaling_back() {
        let (spec, divisors) = llama32(llama3(1.0, 4.0));
        assert_eq!(llama3_scaling(&spec, &divisors, 8192), Ok(llama3(1.0, 4.0)));
    }

    #[test]
    fn another_band_is_solved_from_the_blended_divisors() {
        let (spec, divisors) = llama32(llama3(2.0, 8.0));
        assert_eq!(llama3_scaling(&spec, &divisors, 8192), Ok(llama3(2.0, 8.0)));
    }

    #[test]
    fn divisors_that_are_not_llama_3s_scaling_are_refused() {
        let (spec, mut divisors) = llama32(llama3(1.0, 4.0));
        divisors[3] = 2.0;
        assert!(llama3_scaling(&spec, &divisors, 8192).unwrap_err().contains("not Llama 3.1's"));
        assert!(llama3_scaling(&spec, &divisors[1..], 8192).unwrap_err().contains("rotates 32 frequencies"));
    }
}
