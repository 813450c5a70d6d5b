//! The `[model]` table: a stage's architecture, with defaults and per-stage overrides.

use serde::{Deserialize, Serialize};

use crate::decode::{self, Cx, Fields};
use crate::diag::{Diagnostic, Origin};
use crate::tree::{Node, Val};

/// Keys allowed in `[model]` and in a stage's `model = {...}`.
pub const MODEL_KEYS: &[&str] = &[
    "arch",
    "vocab_size",
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "head_dim",
    "rotary_dim",
    "d_ff",
    "max_seq_len",
    "tie_embeddings",
    "rope_theta",
    "rope_scaling",
    "sliding_window",
    "full_attention_layers",
    "local_rope_theta",
    "query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "embedding_multiplier",
    "residual_multiplier",
    "attention_multiplier",
    "logits_scaling",
    "nope_layers",
    "norm_eps",
    "init_std",
    "from",
    "layers",
];

/// The architectures: `llama` (RMSNorm, RoPE, SwiGLU, grouped-query attention); `qwen2`, the
/// same with a bias on the query, key and value projections (Qwen2 and Qwen2.5); `qwen3`, Llama
/// with an RMSNorm over each query and key head before the rotary embedding (Qwen3); `gemma3`
/// (Gemma 3's text model), Qwen3's head norms with an RMSNorm also after attention and after the
/// MLP, a GeGLU MLP (the tanh GELU), embeddings scaled by √d_model, and every RMSNorm scaling by
/// `1 + w` (so its weights start at 0); `gemma2` (Gemma 2), the same without the head norms
/// and with its attention scores and logits capped (`attn_logit_softcapping`,
/// `final_logit_softcapping`); `olmo2` (OLMo 2 and 3), Llama whose RMSNorms follow
/// attention and the MLP instead of preceding them, and whose query and key projections are
/// RMS-normalised whole; `granite` (IBM Granite 3), Llama with four scalar multipliers
/// (`embedding_multiplier`, `residual_multiplier`, `attention_multiplier`, `logits_scaling`),
/// the knobs of μP-style parametrisations.
pub const ARCHS: &[&str] = &["llama", "qwen2", "qwen3", "gemma2", "gemma3", "olmo2", "granite"];

/// Fields that fix the shape of the weights: a stage that starts from another stage's weights
/// must agree with it on each of these.
pub const SHAPE_FIELDS: &[&str] =
    &["arch", "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "tie_embeddings"];

/// What a `[model]` table or a stage's `model = {...}` says; unset fields inherit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d_model: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_layers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_heads: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_kv_heads: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotary_dim: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d_ff: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_seq_len: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tie_embeddings: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_attention_layers: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_rope_theta: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_multiplier: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual_multiplier: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_multiplier: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logits_scaling: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nope_layers: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub norm_eps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_std: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// With `from`: the layers `[start, end)` of the checkpoint to start from (Inheritune);
    /// written `layers = 6` (the first six) or `layers = "2-7"` (both ends included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<[u32; 2]>,
}

/// A fully resolved architecture: every default applied, the vocabulary taken from the tokenizer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Model {
    /// One of [`ARCHS`]; default `llama`.
    pub arch: String,
    /// Default: the tokenizer's vocabulary size.
    pub vocab_size: u32,
    /// Default 256.
    pub d_model: u32,
    /// Default 4.
    pub n_layers: u32,
    /// Default 8.
    pub n_heads: u32,
    /// Default: `n_heads` (plain multi-head attention).
    pub n_kv_heads: u32,
    /// Set only where it is not `d_model / n_heads` (Qwen3: heads of 128 at any width); absent
    /// from the key otherwise, so that writing the default changes nothing.
    #[serde(rename = "head_dim", skip_serializing_if = "Option::is_none")]
    pub explicit_head_dim: Option<u32>,
    /// Default: the whole head. How many of each head's dimensions (the first ones) the
    /// rotary embedding turns, the rest passing through (Phi-4-mini's three quarters:
    /// `transformers`' `partial_rotary_factor`). Absent from the key when the whole head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotary_dim: Option<u32>,
    /// Default: the SwiGLU rule, 8/3 · d_model rounded up to a multiple of 64.
    pub d_ff: u32,
    /// Default 512.
    pub max_seq_len: u32,
    /// Default true.
    pub tie_embeddings: bool,
    /// Default 10000.
    pub rope_theta: f64,
    /// Default none: the frequencies `rope_theta` gives. Absent from the key when none, so
    /// that keys written before the field existed stay valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Default none: each position attends to its whole document up to itself. Mistral's
    /// sliding window: to itself and the `sliding_window − 1` positions before it. Absent
    /// from the key when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<u32>,
    /// Default none: with `sliding_window`, every layer slides. The layers (from 0, in order)
    /// that attend to their whole document despite the window, as Gemma 3's every sixth.
    /// Absent from the key when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_attention_layers: Option<Vec<u32>>,
    /// Default none: every layer rotates with `rope_theta` (and `rope_scaling`). The rotary base
    /// of the sliding-window layers, which then rotate without `rope_scaling` (Gemma 3's
    /// 10000 beside its global layers' 1e6). Absent from the key when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_rope_theta: Option<f64>,
    /// Default none: attention scores are scaled by 1/√head_dim. Gemma's
    /// `query_pre_attn_scalar`: scaled by 1/√query_pre_attn_scalar instead. Absent from the key
    /// when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<u32>,
    /// Default none. Gemma 2's: attention scores (after scaling) capped at ±this by
    /// `c · tanh(s / c)`. Absent from the key when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<f64>,
    /// Default none. Gemma 2's: logits capped at ±this the same way. Absent from the key when
    /// none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<f64>,
    /// Default none (1). Granite's: what the token embeddings are multiplied by. Absent from
    /// the key when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_multiplier: Option<f64>,
    /// Default none (1). Granite's: what attention's and the MLP's outputs are multiplied by
    /// before they join the residual stream. Absent from the key when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual_multiplier: Option<f64>,
    /// Default none: attention scores are scaled as `query_pre_attn_scalar` says. Granite's:
    /// what they are multiplied by instead. Absent from the key when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_multiplier: Option<f64>,
    /// Default none (1). Granite's: what the logits are divided by. Absent from the key when
    /// none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logits_scaling: Option<f64>,
    /// Default none: every layer rotates its queries and keys. The layers (from 0, in order)
    /// that use no positional encoding at all (NoPE), as SmolLM3's every fourth. Absent from
    /// the key when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nope_layers: Option<Vec<u32>>,
    /// Default 1e-5.
    pub norm_eps: f64,
    /// Default 0.02; residual output projections are further scaled by 1/sqrt(2·n_layers).
    pub init_std: f64,
    /// Default none: random initialisation. A path relative to the recipe's folder.
    pub from: Option<String>,
    /// The layers `[start, end)` of `from` this model starts from; none: all of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<[u32; 2]>,
    /// `from` resolved, when it was read: the file or folder and how it is stored.
    #[serde(skip)]
    pub import: Option<(std::path::PathBuf, crate::vocab::CheckpointFormat)>,
}

impl Model {
    /// This architecture with every field set: what a stage that continues this one starts
    /// from, before its own overrides. It imports nothing: its weights are this stage's.
    pub fn continued(&self) -> ModelSpec {
        ModelSpec {
            arch: Some(self.arch.clone()),
            vocab_size: Some(self.vocab_size),
            d_model: Some(self.d_model),
            n_layers: Some(self.n_layers),
            n_heads: Some(self.n_heads),
            n_kv_heads: Some(self.n_kv_heads),
            head_dim: self.explicit_head_dim,
            rotary_dim: self.rotary_dim,
            d_ff: Some(self.d_ff),
            max_seq_len: Some(self.max_seq_len),
            tie_embeddings: Some(self.tie_embeddings),
            rope_theta: Some(self.rope_theta),
            rope_scaling: self.rope_scaling.clone(),
            sliding_window: self.sliding_window,
            full_attention_layers: self.full_attention_layers.clone(),
            local_rope_theta: self.local_rope_theta,
            query_pre_attn_scalar: self.query_pre_attn_scalar,
            attn_logit_softcapping: self.attn_logit_softcapping,
            final_logit_softcapping: self.final_logit_softcapping,
            embedding_multiplier: self.embedding_multiplier,
            residual_multiplier: self.residual_multiplier,
            attention_multiplier: self.attention_multiplier,
            logits_scaling: self.logits_scaling,
            nope_layers: self.nope_layers.clone(),
            norm_eps: Some(self.norm_eps),
            init_std: Some(self.init_std),
            from: None,
            layers: None,
        }
    }

    /// The deepest layer a list of layers (`nope_layers`, `full_attention_layers`) names.
    pub fn deepest_listed_layer(&self) -> Option<u32> {
        [&self.nope_layers, &self.full_attention_layers].into_iter().flatten().filter_map(|l| l.last().copied()).max()
    }

    /// Whether layer `layer` rotates its queries and keys (it is not one of `nope_layers`).
    pub fn rotates(&self, layer: u32) -> bool {
        !self.nope_layers.as_ref().is_some_and(|nope| nope.contains(&layer))
    }

    /// Whether layer `layer` attends through the sliding window: every layer when there is
    /// one, but the `full_attention_layers`.
    pub fn slides(&self, layer: u32) -> bool {
        self.sliding_window.is_some() && !self.full_attention_layers.as_ref().is_some_and(|full| full.contains(&layer))
    }

    /// Whether layer `layer` rotates with `local_rope_theta`: a sliding layer, when it is set.
    pub fn rotates_locally(&self, layer: u32) -> bool {
        self.local_rope_theta.is_some() && self.slides(layer)
    }

    /// What attention scores are multiplied by: `attention_multiplier`, else
    /// 1/√query_pre_attn_scalar, else 1/√head_dim.
    pub fn attention_scale(&self) -> f64 {
        self.attention_multiplier
            .unwrap_or_else(|| 1.0 / f64::from(self.query_pre_attn_scalar.unwrap_or(self.head_dim())).sqrt())
    }

    /// Whether the query, key and value projections add a bias (`qwen2`).
    pub fn qkv_bias(&self) -> bool {
        self.arch == "qwen2"
    }

    /// Gemma 2 and 3: GeGLU, embeddings × √d_model, norms that scale by `1 + w`, four norms a
    /// block.
    pub fn gemma(&self) -> bool {
        matches!(self.arch.as_str(), "gemma2" | "gemma3")
    }

    /// Whether the queries and keys are RMS-normalised before the rotary embedding: each head
    /// on its own (`qwen3`, `gemma3`) or each projection whole (`olmo2`, [`Model::qk_norm_width`]).
    pub fn qk_norm(&self) -> bool {
        matches!(self.arch.as_str(), "qwen3" | "gemma3" | "olmo2")
    }

    /// How many values one query/key norm spans, for a projection `width` wide: a head, or
    /// (`olmo2`) the whole projection.
    pub fn qk_norm_width(&self, width: u32) -> u32 {
        if self.arch == "olmo2" { width } else { self.head_dim() }
    }

    /// The RMSNorms of a block, by where they stand, as `transformers` names them.
    pub fn block_norms(&self) -> BlockNorms {
        match self.arch.as_str() {
            "gemma2" | "gemma3" => BlockNorms {
                before_attention: Some("input_layernorm"),
                after_attention: Some("post_attention_layernorm"),
                before_mlp: Some("pre_feedforward_layernorm"),
                after_mlp: Some("post_feedforward_layernorm"),
            },
            "olmo2" => BlockNorms {
                before_attention: None,
                after_attention: Some("post_attention_layernorm"),
                before_mlp: None,
                after_mlp: Some("post_feedforward_layernorm"),
            },
            _ => BlockNorms {
                before_attention: Some("input_layernorm"),
                after_attention: None,
                before_mlp: Some("post_attention_layernorm"),
                after_mlp: None,
            },
        }
    }

    /// Whether the MLP's gate is the tanh GELU (GeGLU, Gemma's) rather than SiLU (SwiGLU).
    pub fn gelu_gate(&self) -> bool {
        self.gemma()
    }

    /// What every RMSNorm adds to its weights before scaling: 1 for Gemma's, whose norms scale
    /// by `1 + w` (and start at `w = 0`), else 0.
    pub fn norm_offset(&self) -> f64 {
        if self.gemma() { 1.0 } else { 0.0 }
    }

    /// What the token embeddings are multiplied by: √d_model for Gemma's, Granite's
    /// `embedding_multiplier`.
    pub fn embedding_scale(&self) -> Option<f64> {
        if self.gemma() { Some(f64::from(self.d_model).sqrt()) } else { self.embedding_multiplier }
    }

    pub fn head_dim(&self) -> u32 {
        self.explicit_head_dim.unwrap_or(self.d_model / self.n_heads.max(1))
    }

    /// How many of each head's dimensions the rotary embedding turns: `rotary_dim`, else all.
    pub fn rotated_dims(&self) -> u32 {
        self.rotary_dim.unwrap_or(self.head_dim())
    }

    /// The rotary embedding's angular frequency for each pair of a head's dimensions:
    /// `rope_theta^(-2i/head_dim)`, then scaled as `rope_scaling` says, exactly as
    /// `transformers` computes them (in f64 here, where it uses f32).
    pub fn rope_frequencies(&self) -> Vec<f64> {
        let plain = self.plain_rope_frequencies(self.rope_theta);
        match &self.rope_scaling {
            None => plain.collect(),
            Some(RopeScaling::Linear { factor }) => plain.map(|f| f / factor).collect(),
            Some(RopeScaling::LongRope { short_factor, .. }) => plain.zip(short_factor).map(|(f, s)| f / s).collect(),
            &Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_seq_len }) => {
                let context = f64::from(original_max_seq_len);
                plain
                    .map(|f| {
                        // Wavelengths shorter than the context / high_freq_factor keep their
                        // frequency, longer than context / low_freq_factor are divided by
                        // `factor`, and those between blend the two.
                        let wavelength = 2.0 * std::f64::consts::PI / f;
                        if wavelength < context / high_freq_factor {
                            f
                        } else if wavelength > context / low_freq_factor {
                            f / factor
                        } else {
                            let smooth =
                                (context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            &Some(RopeScaling::Yarn { factor, original_max_seq_len, beta_fast, beta_slow, truncate, .. }) => {
                // The dimension pair at which a frequency turns `turns` times over the original
                // context; pairs below the fast bound keep their frequency, above the slow one
                // are divided by `factor`, and a linear ramp blends those between.
                let dim = f64::from(self.rotated_dims());
                let base = self.rope_theta;
                let context = f64::from(original_max_seq_len);
                let pair_of =
                    |turns: f64| dim * (context / (turns * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln());
                let (mut low, mut high) = (pair_of(beta_fast), pair_of(beta_slow));
                if truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, high) = (low.max(0.0), high.min(dim - 1.0));
                // `transformers` widens an empty ramp to avoid dividing by zero.
                let span = if low == high { 0.001 } else { high - low };
                plain
                    .enumerate()
                    .map(|(i, f)| {
                        let kept = 1.0 - ((i as f64 - low) / span).clamp(0.0, 1.0);
                        f / factor * (1.0 - kept) + f * kept
                    })
                    .collect()
            }
        }
    }

    /// What the rotation's cos and sin are multiplied by: YaRN's or LongRoPE's
    /// `attention_factor`, else 1.
    pub fn rope_attention_factor(&self) -> f64 {
        match self.rope_scaling {
            Some(RopeScaling::Yarn { attention_factor, .. } | RopeScaling::LongRope { attention_factor, .. }) => {
                attention_factor
            }
            _ => 1.0,
        }
    }

    /// LongRoPE's frequencies for a pass whose positions go past `original_max_seq_len`, and
    /// that length: what [`Model::rope_frequencies`] become there. None for other scalings.
    pub fn long_rope_frequencies(&self) -> Option<(Vec<f64>, u32)> {
        let Some(RopeScaling::LongRope { long_factor, original_max_seq_len, .. }) = &self.rope_scaling else {
            return None;
        };
        let long = self.plain_rope_frequencies(self.rope_theta).zip(long_factor).map(|(f, l)| f / l).collect();
        Some((long, *original_max_seq_len))
    }

    /// The frequencies the layers that [`Model::rotates_locally`] rotate with, when any do:
    /// `local_rope_theta`'s, unscaled.
    pub fn local_rope_frequencies(&self) -> Option<Vec<f64>> {
        self.local_rope_theta.map(|theta| self.plain_rope_frequencies(theta).collect())
    }

    /// The rotary frequencies `theta` gives, unscaled.
    pub fn plain_rope_frequencies(&self, theta: f64) -> impl Iterator<Item = f64> {
        let half = self.rotated_dims() / 2;
        (0..half).map(move |i| 1.0 / theta.powf(f64::from(2 * i) / f64::from(2 * half)))
    }

    /// Every weight's Hugging Face name, its shape (`[out, in]` for a projection) and whether
    /// weight decay applies, in a fixed order: the one definition of the architecture's
    /// shapes, which the model builds from and `plan` counts.
    pub fn layout(&self) -> Vec<(String, Vec<usize>, bool)> {
        let c = self;
        let (v, d, ff, hd) = (c.vocab_size as usize, c.d_model as usize, c.d_ff as usize, c.head_dim() as usize);
        let (q, kv) = (c.n_heads as usize * hd, c.n_kv_heads as usize * hd);
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, d], false)];
        let norms = c.block_norms();
        for i in 0..c.n_layers {
            let p = format!("model.layers.{i}");
            let norm = |name: &str| (format!("{p}.{name}.weight"), vec![d], false);
            out.extend(norms.before_attention.map(norm));
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, d], true));
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, d], true));
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, d], true));
            if c.qkv_bias() {
                out.push((format!("{p}.self_attn.q_proj.bias"), vec![q], false));
                out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv], false));
                out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv], false));
            }
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![d, q], true));
            if c.qk_norm() {
                let (q_norm, kv_norm) = (c.qk_norm_width(q as u32) as usize, c.qk_norm_width(kv as u32) as usize);
                out.push((format!("{p}.self_attn.q_norm.weight"), vec![q_norm], false));
                out.push((format!("{p}.self_attn.k_norm.weight"), vec![kv_norm], false));
            }
            out.extend([norms.after_attention, norms.before_mlp, norms.after_mlp].into_iter().flatten().map(norm));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![ff, d], true));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![ff, d], true));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![d, ff], true));
        }
        out.push(("model.norm.weight".to_string(), vec![d], false));
        if !c.tie_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, d], true));
        }
        out
    }
}

impl ModelSpec {
    /// Read a `[model]`-shaped table.
    pub fn decode(cx: &mut Cx, node: &Node, path: &str) -> ModelSpec {
        let f = Fields::of(cx, node, path, MODEL_KEYS);
        f.check_unknown(cx);
        ModelSpec {
            arch: f.opt(cx, "arch", decode::choice(ARCHS)).map(str::to_string),
            vocab_size: f.opt(cx, "vocab_size", decode::size(1, 1 << 24)),
            d_model: f.opt(cx, "d_model", decode::size(1, 1 << 16)),
            n_layers: f.opt(cx, "n_layers", decode::size(1, 1 << 12)),
            n_heads: f.opt(cx, "n_heads", decode::size(1, 1 << 12)),
            n_kv_heads: f.opt(cx, "n_kv_heads", decode::size(1, 1 << 12)),
            head_dim: f.opt(cx, "head_dim", decode::size(2, 1 << 12)),
            rotary_dim: f.opt(cx, "rotary_dim", decode::size(2, 1 << 12)),
            d_ff: f.opt(cx, "d_ff", decode::size(1, 1 << 20)),
            max_seq_len: f.opt(cx, "max_seq_len", decode::size(1, 1 << 22)),
            tie_embeddings: f.opt(cx, "tie_embeddings", decode::boolean),
            rope_theta: f.opt(cx, "rope_theta", positive),
            rope_scaling: f.opt(cx, "rope_scaling", RopeScaling::decode),
            sliding_window: f.opt(cx, "sliding_window", decode::size(1, 1 << 22)),
            full_attention_layers: f.opt(cx, "full_attention_layers", layer_list),
            local_rope_theta: f.opt(cx, "local_rope_theta", positive),
            query_pre_attn_scalar: f.opt(cx, "query_pre_attn_scalar", decode::size(1, 1 << 16)),
            attn_logit_softcapping: f.opt(cx, "attn_logit_softcapping", positive),
            final_logit_softcapping: f.opt(cx, "final_logit_softcapping", positive),
            embedding_multiplier: f.opt(cx, "embedding_multiplier", positive),
            residual_multiplier: f.opt(cx, "residual_multiplier", positive),
            attention_multiplier: f.opt(cx, "attention_multiplier", positive),
            logits_scaling: f.opt(cx, "logits_scaling", positive),
            nope_layers: f.opt(cx, "nope_layers", layer_list),
            norm_eps: f.opt(cx, "norm_eps", positive),
            init_std: f.opt(cx, "init_std", positive),
            from: f.opt(cx, "from", decode::string),
            layers: f.opt(cx, "layers", layer_slice),
        }
    }

    /// `self` with every field that `over` sets replaced.
    pub fn overlay(&self, over: &ModelSpec) -> ModelSpec {
        ModelSpec {
            arch: over.arch.clone().or_else(|| self.arch.clone()),
            vocab_size: over.vocab_size.or(self.vocab_size),
            d_model: over.d_model.or(self.d_model),
            n_layers: over.n_layers.or(self.n_layers),
            n_heads: over.n_heads.or(self.n_heads),
            n_kv_heads: over.n_kv_heads.or(self.n_kv_heads),
            head_dim: over.head_dim.or(self.head_dim),
            rotary_dim: over.rotary_dim.or(self.rotary_dim),
            d_ff: over.d_ff.or(self.d_ff),
            max_seq_len: over.max_seq_len.or(self.max_seq_len),
            tie_embeddings: over.tie_embeddings.or(self.tie_embeddings),
            rope_theta: over.rope_theta.or(self.rope_theta),
            rope_scaling: over.rope_scaling.clone().or_else(|| self.rope_scaling.clone()),
            sliding_window: over.sliding_window.or(self.sliding_window),
            full_attention_layers: over.full_attention_layers.clone().or_else(|| self.full_attention_layers.clone()),
            local_rope_theta: over.local_rope_theta.or(self.local_rope_theta),
            query_pre_attn_scalar: over.query_pre_attn_scalar.or(self.query_pre_attn_scalar),
            attn_logit_softcapping: over.attn_logit_softcapping.or(self.attn_logit_softcapping),
            final_logit_softcapping: over.final_logit_softcapping.or(self.final_logit_softcapping),
            embedding_multiplier: over.embedding_multiplier.or(self.embedding_multiplier),
            residual_multiplier: over.residual_multiplier.or(self.residual_multiplier),
            attention_multiplier: over.attention_multiplier.or(self.attention_multiplier),
            logits_scaling: over.logits_scaling.or(self.logits_scaling),
            nope_layers: over.nope_layers.clone().or_else(|| self.nope_layers.clone()),
            norm_eps: over.norm_eps.or(self.norm_eps),
            init_std: over.init_std.or(self.init_std),
            from: over.from.clone().or_else(|| self.from.clone()),
            layers: over.layers.or(self.layers),
        }
    }

    /// The same spec with its lists of layers (`nope_layers`, `full_attention_layers`) mapped by
    /// `f`: as a stack repeats its blocks, or a slice keeps and renumbers its own.
    pub fn map_layer_lists(self, f: impl Fn(Vec<u32>) -> Vec<u32>) -> ModelSpec {
        ModelSpec {
            nope_layers: self.nope_layers.map(&f),
            full_attention_layers: self.full_attention_layers.map(&f),
            ..self
        }
    }

    /// The names of the fields this spec sets.
    pub fn set_fields(&self) -> Vec<&'static str> {
        let json = serde_json::to_value(self).expect("plain struct serialises");
        MODEL_KEYS.iter().copied().filter(|k| json.get(k).is_some()).collect()
    }

    /// Apply defaults. `tokenizer_vocab` is the tokenizer's size, when known.
    pub fn resolve(&self, tokenizer_vocab: Option<u32>) -> Model {
        let d_model = self.d_model.unwrap_or(256);
        let n_heads = self.n_heads.unwrap_or(8);
        Model {
            arch: self.arch.clone().unwrap_or_else(|| "llama".into()),
            vocab_size: self.vocab_size.or(tokenizer_vocab).unwrap_or(0),
            d_model,
            n_layers: self.n_layers.unwrap_or(4),
            n_heads,
            n_kv_heads: self.n_kv_heads.unwrap_or(n_heads),
            explicit_head_dim: self.head_dim.filter(|hd| hd * n_heads != d_model),
            rotary_dim: self.rotary_dim.filter(|rd| Some(*rd) != self.head_dim.or(Some(d_model / n_heads.max(1)))),
            d_ff: self.d_ff.unwrap_or_else(|| swiglu_hidden(d_model)),
            max_seq_len: self.max_seq_len.unwrap_or(512),
            tie_embeddings: self.tie_embeddings.unwrap_or(true),
            rope_theta: self.rope_theta.unwrap_or(10000.0),
            rope_scaling: self.rope_scaling.clone(),
            sliding_window: self.sliding_window,
            full_attention_layers: self.full_attention_layers.clone().filter(|layers| !layers.is_empty()),
            local_rope_theta: self.local_rope_theta,
            query_pre_attn_scalar: self.query_pre_attn_scalar,
            attn_logit_softcapping: self.attn_logit_softcapping,
            final_logit_softcapping: self.final_logit_softcapping,
            embedding_multiplier: self.embedding_multiplier,
            residual_multiplier: self.residual_multiplier,
            attention_multiplier: self.attention_multiplier,
            logits_scaling: self.logits_scaling,
            nope_layers: self.nope_layers.clone().filter(|layers| !layers.is_empty()),
            norm_eps: self.norm_eps.unwrap_or(1e-5),
            init_std: self.init_std.unwrap_or(0.02),
            from: self.from.clone(),
            layers: self.layers,
            import: None,
        }
    }
}

/// The RMSNorms of a block, each the name of its weight's module or none: before and after
/// attention, before and after the MLP. An output norm's result is what joins the residual
/// stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockNorms {
    pub before_attention: Option<&'static str>,
    pub after_attention: Option<&'static str>,
    pub before_mlp: Option<&'static str>,
    pub after_mlp: Option<&'static str>,
}

/// How the rotary frequencies are stretched for contexts longer than the ones a model was
/// first trained on: `linear` (position interpolation) divides every frequency by `factor`;
/// `llama3` (Llama 3.1 and 3.2) divides only the low ones, keeps the high ones and blends those
/// between, by wavelength against `original_max_seq_len`; `yarn` (Peng et al. 2023; Qwen's long
/// contexts) blends by how many turns each frequency makes over `original_max_seq_len` (more
/// than `beta_fast`: kept; fewer than `beta_slow`: divided) and multiplies the rotation's cos
/// and sin by `attention_factor` (by default `0.1 · ln(factor) + 1`); `longrope` (Phi-3.5,
/// Phi-3's 128k models) divides each frequency by its own factor, `short_factor`'s while the
/// positions of a pass stay within `original_max_seq_len` and `long_factor`'s beyond, and
/// multiplies cos and sin by `attention_factor` (by default `√(1 + ln(max_seq_len / original) /
/// ln(original))`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RopeScaling {
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_seq_len: u32,
    },
    Yarn {
        factor: f64,
        original_max_seq_len: u32,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        /// Whether the band of blended frequencies is rounded out to whole dimensions
        /// (`transformers`' `truncate`, on by default).
        truncate: bool,
    },
    #[serde(rename = "longrope")]
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_seq_len: u32,
        attention_factor: f64,
    },
}

const ROPE_SCALING_KEYS: &[&str] = &[
    "kind",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_seq_len",
    "beta_fast",
    "beta_slow",
    "attention_factor",
    "truncate",
    "short_factor",
    "long_factor",
];

/// LongRoPE's attention factor for a stretch of `factor` over a context of `original`.
pub fn longrope_attention_factor(factor: f64, original: u32) -> f64 {
    if factor <= 1.0 { 1.0 } else { (1.0 + factor.ln() / f64::from(original).ln()).sqrt() }
}

/// YaRN's attention factor for a stretch of `factor`, as its paper suggests.
pub fn yarn_attention_factor(factor: f64) -> f64 {
    if factor <= 1.0 { 1.0 } else { 0.1 * factor.ln() + 1.0 }
}

impl RopeScaling {
    fn decode(cx: &mut Cx, node: &Node, path: &str) -> Option<RopeScaling> {
        let f = Fields::of(cx, node, path, ROPE_SCALING_KEYS);
        f.check_unknown(cx);
        let kind = f.required(cx, "kind", "\"llama3\"", decode::choice(&["linear", "llama3", "yarn", "longrope"]));
        let longrope = kind == Some("longrope");
        // LongRoPE's factors are per frequency; its `factor` (the context's stretch) only sets
        // the default attention factor.
        let factor =
            if longrope { f.opt(cx, "factor", decode::float) } else { f.required(cx, "factor", "8.0", decode::float) };
        if let Some(factor) = factor {
            decode::check_range(cx, &f.child_path("factor"), factor, factor >= 1.0, "a factor ≥ 1");
        }
        let (llama3, yarn) = (kind == Some("llama3"), kind == Some("yarn"));
        let low = f.opt(cx, "low_freq_factor", positive);
        let high = f.opt(cx, "high_freq_factor", positive);
        for (key, given) in [("low_freq_factor", low.is_some()), ("high_freq_factor", high.is_some())] {
            decode::only_for(cx, &f, key, given, llama3, "kind = \"llama3\"");
        }
        let beta_fast = f.opt(cx, "beta_fast", positive);
        let beta_slow = f.opt(cx, "beta_slow", positive);
        let attention_factor = f.opt(cx, "attention_factor", positive);
        let truncate = f.opt(cx, "truncate", decode::boolean);
        let yarn_keys = [
            ("beta_fast", beta_fast.is_some()),
            ("beta_slow", beta_slow.is_some()),
            ("attention_factor", attention_factor.is_some()),
            ("truncate", truncate.is_some()),
        ];
        for (key, given) in yarn_keys {
            let allowed = yarn || (longrope && key == "attention_factor");
            decode::only_for(cx, &f, key, given, allowed, "kind = \"yarn\"");
        }
        let (short, long) = if longrope {
            (
                f.required(cx, "short_factor", "[1.0, ...]", decode::floats),
                f.required(cx, "long_factor", "[1.0, ...]", decode::floats),
            )
        } else {
            for key in ["short_factor", "long_factor"] {
                let given = f.opt(cx, key, decode::floats).is_some();
                decode::only_for(cx, &f, key, given, false, "kind = \"longrope\"");
            }
            (None, None)
        };
        let original = if llama3 || yarn || longrope {
            f.required(cx, "original_max_seq_len", "8192", decode::size(1, 1 << 22))
        } else {
            let given = f.opt(cx, "original_max_seq_len", decode::size(1, 1 << 22));
            decode::only_for(cx, &f, "original_max_seq_len", given.is_some(), false, "kind = \"llama3\" or \"yarn\"");
            None
        };
        let (low_freq_factor, high_freq_factor) = (low.unwrap_or(1.0), high.unwrap_or(4.0));
        if llama3 && low_freq_factor >= high_freq_factor {
            let path = f.child_path(if high.is_some() { "high_freq_factor" } else { "low_freq_factor" });
            let what = format!("low_freq_factor ({low_freq_factor}) below high_freq_factor ({high_freq_factor})");
            decode::check_range(cx, &path, high_freq_factor, false, &what);
        }
        if longrope {
            let original = original?;
            let attention_factor = match (attention_factor, factor) {
                (Some(a), _) => a,
                (None, Some(factor)) => longrope_attention_factor(factor, original),
                (None, None) => {
                    let d = Diagnostic::new(&f.origin, format!("`{path}` needs `attention_factor` or `factor`"))
                        .label("LongRoPE scales cos and sin by √(1 + ln(factor) / ln(original_max_seq_len)), factor being max_seq_len / original_max_seq_len");
                    cx.diags.push(d);
                    return None;
                }
            };
            return Some(RopeScaling::LongRope {
                short_factor: short?,
                long_factor: long?,
                original_max_seq_len: original,
                attention_factor,
            });
        }
        match (kind?, factor?) {
            ("linear", factor) => Some(RopeScaling::Linear { factor }),
            ("yarn", factor) => Some(RopeScaling::Yarn {
                factor,
                original_max_seq_len: original?,
                beta_fast: beta_fast.unwrap_or(32.0),
                beta_slow: beta_slow.unwrap_or(1.0),
                attention_factor: attention_factor.unwrap_or_else(|| yarn_attention_factor(factor)),
                truncate: truncate.unwrap_or(true),
            }),
            (_, factor) => {
                Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_seq_len: original? })
            }
        }
    }
}

/// A list of layer indices, in increasing order.
fn layer_list(cx: &mut Cx, node: &Node, path: &str) -> Option<Vec<u32>> {
    let list = match &node.val {
        Val::Array(items) => items
            .iter()
            .map(|item| match item.val {
                Val::Int(i) => u32::try_from(i).ok(),
                _ => None,
            })
            .collect::<Option<Vec<u32>>>(),
        _ => None,
    };
    match list {
        Some(layers) if layers.windows(2).all(|w| w[0] < w[1]) => Some(layers),
        _ => {
            cx.diags.push(
                Diagnostic::new(&node.origin, format!("`{path}` must be layer numbers in increasing order"))
                    .label("expected a list such as `[3, 7, 11]`"),
            );
            None
        }
    }
}

/// `layers = N` (the first N) or `layers = "A-B"` (A to B, both included), as `[start, end)`.
fn layer_slice(cx: &mut Cx, node: &Node, path: &str) -> Option<[u32; 2]> {
    let slice = match &node.val {
        Val::Int(n) if *n >= 1 => Some([0, u32::try_from(*n).ok()?]),
        Val::Str(s) => s.split_once('-').and_then(|(a, b)| {
            let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            (a <= b).then_some([a, b + 1])
        }),
        _ => None,
    };
    if slice.is_none() {
        cx.diags.push(
            Diagnostic::new(&node.origin, format!("`{path}` must be a number of layers or a range"))
                .label("expected `layers = 6` (the first six) or `layers = \"2-7\"` (both ends included)"),
        );
    }
    slice
}

/// The Llama MLP width rule: 2/3 of 4·d, rounded up to a multiple of 64.
pub fn swiglu_hidden(d_model: u32) -> u32 {
    let raw = (8 * d_model).div_ceil(3);
    raw.div_ceil(64) * 64
}

fn positive(cx: &mut Cx, node: &Node, path: &str) -> Option<f64> {
    let v = decode::float(cx, node, path)?;
    decode::check_range(cx, path, v, v > 0.0, "a number > 0");
    (v > 0.0).then_some(v)
}

/// Check the architecture's internal consistency. `path_of` names where a field was set
/// (`model.d_model` or `stages.x.model.d_model`), for messages that point at it.
pub fn check_model(cx: &mut Cx, m: &Model, path_of: &dyn Fn(&str) -> String) {
    let fail = |cx: &mut Cx, field: &str, msg: String, label: String| {
        let path = path_of(field);
        let origin = cx.origins.get(&path).cloned().unwrap_or(Origin::Default);
        cx.diags.push(crate::Diagnostic::new(&origin, msg).label(label));
    };
    if let Some(head_dim) = m.explicit_head_dim {
        if !head_dim.is_multiple_of(2) {
            fail(
                cx,
                "head_dim",
                format!("head_dim ({head_dim}) is odd"),
                "rotary embeddings need an even head dimension".into(),
            );
        }
    } else if !m.d_model.is_multiple_of(m.n_heads) {
        fail(
            cx,
            "n_heads",
            format!("n_heads ({}) does not divide d_model ({})", m.n_heads, m.d_model),
            "d_model must be a multiple of n_heads, or `head_dim` set".into(),
        );
    } else if !m.head_dim().is_multiple_of(2) {
        fail(
            cx,
            "n_heads",
            format!("head dimension d_model / n_heads = {} is odd", m.head_dim()),
            "rotary embeddings need an even head dimension".into(),
        );
    }
    for (field, list) in [("nope_layers", &m.nope_layers), ("full_attention_layers", &m.full_attention_layers)] {
        if let Some(beyond) = list.as_ref().and_then(|layers| layers.iter().find(|l| **l >= m.n_layers)) {
            fail(
                cx,
                field,
                format!("{field} names layer {beyond}, but the model has {} (0 to {})", m.n_layers, m.n_layers - 1),
                "each entry is a layer of this model, counted from 0".into(),
            );
        }
    }
    // Only Gemma's Hugging Face classes have them, so that every model exports as one that
    // computes the same.
    let gemma_only = [
        ("local_rope_theta", m.local_rope_theta.is_some() && m.arch != "gemma3", "gemma3"),
        ("query_pre_attn_scalar", m.query_pre_attn_scalar.is_some() && !m.gemma(), "gemma3"),
        ("attn_logit_softcapping", m.attn_logit_softcapping.is_some() && !m.gemma(), "gemma2"),
        ("final_logit_softcapping", m.final_logit_softcapping.is_some() && !m.gemma(), "gemma2"),
    ];
    for (field, _, arch) in gemma_only.into_iter().filter(|(_, misplaced, _)| *misplaced) {
        fail(
            cx,
            field,
            format!("{field} is Gemma's, but the model's arch is \"{}\"", m.arch),
            format!("set `arch = \"{arch}\"`, or remove it"),
        );
    }
    // Likewise Granite's multipliers.
    let granite_only = [
        ("embedding_multiplier", m.embedding_multiplier.is_some()),
        ("residual_multiplier", m.residual_multiplier.is_some()),
        ("attention_multiplier", m.attention_multiplier.is_some()),
        ("logits_scaling", m.logits_scaling.is_some()),
    ];
    for (field, _) in granite_only.into_iter().filter(|(_, set)| *set && m.arch != "granite") {
        fail(
            cx,
            field,
            format!("{field} is Granite's, but the model's arch is \"{}\"", m.arch),
            "set `arch = \"granite\"`, or remove it".into(),
        );
    }
    if m.arch == "granite" {
        let unsupported = [("sliding_window", m.sliding_window.is_some()), ("nope_layers", m.nope_layers.is_some())];
        for (field, _) in unsupported.into_iter().filter(|(_, set)| *set) {
            fail(
                cx,
                field,
                format!("{field} does not go with `arch = \"granite\"`"),
                "Granite's Hugging Face class attends to every position, with positions, in every layer".into(),
            );
        }
    }
    if m.sliding_window.is_none() {
        let windowed = [
            ("full_attention_layers", m.full_attention_layers.is_some()),
            ("local_rope_theta", m.local_rope_theta.is_some()),
        ];
        for (field, _) in windowed.into_iter().filter(|(_, set)| *set) {
            fail(
                cx,
                field,
                format!("{field} is set, but the model has no sliding_window"),
                "it says how the sliding-window layers differ from the others".into(),
            );
        }
    }
    // Phi-3's Hugging Face class, the one that turns part of each head, is Llama's otherwise.
    if m.rotary_dim.is_some() {
        let others = [
            ("arch", m.arch != "llama"),
            ("nope_layers", m.nope_layers.is_some()),
            ("full_attention_layers", m.full_attention_layers.is_some()),
        ];
        for (field, _) in others.into_iter().filter(|(_, set)| *set) {
            let msg = match field {
                "arch" => format!("rotary_dim goes with `arch = \"llama\"`, not \"{}\"", m.arch),
                field => format!("rotary_dim does not go with {field}"),
            };
            fail(
                cx,
                "rotary_dim",
                msg,
                "a part of each head turns only in Phi-3's Hugging Face class, a Llama without either".into(),
            );
        }
    }
    if let Some(rotary) = m.rotary_dim
        && (!rotary.is_multiple_of(2) || rotary > m.head_dim())
    {
        fail(
            cx,
            "rotary_dim",
            format!("rotary_dim ({rotary}) must be even and at most the head dimension ({})", m.head_dim()),
            "the rotary embedding turns pairs of a head's first dimensions".into(),
        );
    }
    if let Some(RopeScaling::LongRope { short_factor, long_factor, .. }) = &m.rope_scaling {
        let pairs = m.rotated_dims() / 2;
        if short_factor.len() != pairs as usize || long_factor.len() != pairs as usize {
            fail(
                cx,
                "rope_scaling",
                format!(
                    "rope_scaling has {} short and {} long factors, but the rotary embedding turns {pairs} pairs of dimensions",
                    short_factor.len(),
                    long_factor.len(),
                ),
                "LongRoPE needs one factor per pair".into(),
            );
        }
    }
    if !m.n_heads.is_multiple_of(m.n_kv_heads) {
        fail(
            cx,
            "n_kv_heads",
            format!("n_kv_heads ({}) does not divide n_heads ({})", m.n_kv_heads, m.n_heads),
            "grouped-query attention shares each key/value head among n_heads / n_kv_heads query heads".into(),
        );
    }
}

/// Where a stage's model field was written: its override when it has one, else `[model]`.
pub(crate) fn model_field_path(stage: &str, overrides: &ModelSpec, field: &str) -> String {
    if overrides.set_fields().contains(&field) {
        format!("stages.{stage}.model.{field}")
    } else {
        format!("model.{field}")
    }
}

pub(crate) fn check_vocab(cx: &mut Cx, path: &str, model_vocab: u32, tokenizer_vocab: u32) {
    if model_vocab < tokenizer_vocab {
        let origin = cx.origins.get(path).cloned().unwrap_or_default();
        cx.diags.push(
            Diagnostic::new(
                &origin,
                format!("`{path}` ({model_vocab}) is smaller than the tokenizer's vocabulary ({tokenizer_vocab})"),
            )
            .label("the embedding must have a row for every token id")
            .help("remove `vocab_size` to follow the tokenizer, or pad it to a larger size"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swiglu_rule_matches_llama_sizes() {
        assert_eq!(swiglu_hidden(256), 704);
        assert_eq!(swiglu_hidden(4096), 10944);
    }
}
