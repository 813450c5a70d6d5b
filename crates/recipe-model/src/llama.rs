//! The Llama-style decoder: token embedding, pre-norm blocks of RMSNorm → grouped-query causal
//! attention with rotary embeddings → RMSNorm → SwiGLU MLP, a final RMSNorm and a tied or
//! untied output head; `qwen2` adds a bias to the query, key and value projections, `qwen3` an
//! RMSNorm over each query and key head; the `nope_layers` (SmolLM3's) skip the rotation, and a
//! `sliding_window` (Mistral's) cuts the keys each position sees, in every layer but the
//! `full_attention_layers`, which may rotate with another base than the sliding ones. `gemma3`
//! (Gemma 3) adds an RMSNorm after attention and after the MLP, gates the MLP with the tanh GELU,
//! scales the embeddings by √d_model, and its norms scale by `1 + w`: the weights are stored as
//! Hugging Face stores them, and the 1 added where they are used; `gemma2` (Gemma 2) has no
//! head norms and caps attention scores and logits at `±c` by `c · tanh(x / c)`. `olmo2`
//! (OLMo 2) moves the block's norms after attention and the MLP and normalises the query and
//! key projections whole (`Model::block_norms` says where each norm stands). Built only from ops that have a
//! backward pass (CANDLE.md: Candle's fused norm, softmax and rope ops silently drop
//! gradients): Candle compositions, and the fused projection, RMSNorm, rotary embedding,
//! attention and gated activation of `recipe-kernels`. Tensors carry Hugging Face names.
//!
//! Weights are either trainable [`Param`]s or frozen tensors. Projections go through
//! `linear`, frozen ones through `frozen_linear`, whose backward computes no weight gradient;
//! under LoRA every base weight is frozen and each adapted projection adds
//! `(alpha / rank) · B·A·x`, with `A` and `B` the only parameters. DoRA (Liu et al. 2024) also learns each output row's magnitude `m`:
//! `y = m / ‖W + s·B·A‖ ⊙ (W + s·B·A)·x`, the norm per output row and, as the paper's §4.3
//! suggests, treated as a constant in the backward pass so no weight-sized gradient is needed.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use recipe_kernels::{Activation, Dropout, KeySpans, Products};
use recipe_spec::{Freeze, Model as Config, Precision, Stage};

use crate::adapters::Lora;

/// The dtypes a model trains in: what its trainable weights are stored in (the master copy
/// the optimizer updates), what its matrix products and activations compute in, and how the
/// projections multiply. Norm statistics, softmax and the loss are computed in f32 whatever
/// `compute` is (the kernels widen half-precision inputs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dtypes {
    pub weights: DType,
    pub compute: DType,
    pub products: Products,
}

impl Dtypes {
    pub const F32: Dtypes = Dtypes { weights: DType::F32, compute: DType::F32, products: Products::Exact };

    /// `f32`: f32 throughout. `bf16-mixed` / `f16-mixed`: f32 master weights, half-precision
    /// compute. `bf16`: bf16 weights and compute (the optimizer's moments stay f32). What the
    /// precision means, wherever it trains; [`Dtypes::on`] is how it trains on a device.
    pub fn of(precision: Precision) -> Dtypes {
        let (weights, compute) = match precision {
            Precision::F32 => (DType::F32, DType::F32),
            Precision::Bf16Mixed => (DType::F32, DType::BF16),
            Precision::F16Mixed => (DType::F32, DType::F16),
            Precision::Bf16 => (DType::BF16, DType::BF16),
        };
        Dtypes { weights, compute, products: Products::Exact }
    }

    /// [`Dtypes::of`] as trained on `device`. On the CPU, `bf16-mixed` computes in f32 with
    /// every projection's operands and results rounded to bf16 ([`Products::Bf16`]): the
    /// numbers of bf16 products with f32 accumulation, as PyTorch's autocast gives them, at
    /// f32 speed — where the CPU has no bf16 dot products, bf16 tensors would only add
    /// conversions around every op (2.4× the f32 step on the tiny configuration).
    pub fn on(precision: Precision, device: &Device) -> Dtypes {
        match precision {
            Precision::Bf16Mixed if device.is_cpu() => Dtypes { products: Products::Bf16, ..Dtypes::F32 },
            _ => Dtypes::of(precision),
        }
    }
}

/// One trainable tensor, by its Hugging Face name.
pub struct Param {
    pub name: String,
    pub var: Var,
    /// Whether AdamW decays it: matrices yes; norms and embeddings no.
    pub decay: bool,
    /// Its learning rate as a multiple of the stage's: 1, but LoRA+'s ratio for the adapters'
    /// `B` and vectors.
    pub lr_factor: f64,
}

pub struct Llama {
    pub config: Config,
    /// What training updates: every weight, or under LoRA only the adapters.
    pub params: Vec<Param>,
    /// Weights that get no gradient: the base weights under PEFT (and VeRA's shared
    /// projections), every weight of a teacher.
    pub(crate) frozen: HashMap<String, Tensor>,
    pub lora: Option<Lora>,
    /// Seeds this forward pass's random draws, adapter dropout and NEFTune's noise; none means
    /// neither (evaluation).
    noise_seed: Cell<Option<u64>>,
    /// Whether forward passes leave the adapters out ([`Llama::base_forward`]).
    adapters_off: Cell<bool>,
    /// NEFTune's alpha (Jain et al. 2023): while a noise seed is set, each embedding gets
    /// uniform noise in ±alpha/√(T·d_model), T the rows' length.
    pub neftune_alpha: Option<f64>,
    /// Activation checkpointing: a forward pass made while [`Llama::set_recording`] is on keeps
    /// each block's input alone, and [`Llama::backward_blocks`] runs each block again to
    /// backpropagate through it.
    pub activation_checkpointing: bool,
    /// The checkpointed forward passes awaiting their backward; `None` when not recording.
    segments: RefCell<Option<Vec<Segment>>>,
    /// cos and sin of the rotary angles, `[max_seq_len, head_dim / 2]`, in f32 (f64 when
    /// computing in f64).
    rope: (Tensor, Tensor),
    /// The same for the layers that rotate with `local_rope_theta`, when it is set.
    local_rope: Option<(Tensor, Tensor)>,
    /// LongRoPE's tables for passes whose positions go past its original context, and that
    /// context's length.
    long_rope: Option<((Tensor, Tensor), u32)>,
    n_layers: usize,
    pub dtypes: Dtypes,
}

/// What the layers of one forward pass attend with: each token's rotary angles (`[B, 1, T,
/// head_dim / 2]`) and the keys each position sees, for the layers that attend to the whole
/// document and, when there is a window, for those that slide.
struct Positions {
    rotary: (Tensor, Tensor),
    local_rotary: Option<(Tensor, Tensor)>,
    spans: KeySpans,
    windowed: Option<KeySpans>,
}

/// A checkpointed forward pass: what its blocks' backward passes need to run them again.
struct Segment {
    /// The embeddings, with their graph back to the table.
    embedded: Tensor,
    /// Each block's input, with no graph.
    inputs: Vec<Tensor>,
    /// The last block's output, a leaf the head's graph starts from.
    last: Var,
    b: usize,
    t: usize,
    positions: Positions,
    noise_seed: Option<u64>,
}

impl Positions {
    fn rotary(&self, local: bool) -> &(Tensor, Tensor) {
        self.local_rotary.as_ref().filter(|_| local).unwrap_or(&self.rotary)
    }

    fn spans(&self, slides: bool) -> &KeySpans {
        self.windowed.as_ref().filter(|_| slides).unwrap_or(&self.spans)
    }
}

/// Per-layer keys and values of the tokens seen so far, for generation.
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    pub len: usize,
}

impl Llama {
    /// A freshly initialised model: weights normal(0, init_std), the attention and MLP output
    /// projections further scaled by 1/sqrt(2·n_layers) (GPT-2's residual scaling), norms
    /// scaling by 1, biases 0.
    /// The draw is seeded, so the same seed gives the same weights on every machine.
    pub fn init(config: &Config, seed: u64, device: &Device) -> Result<Llama> {
        let mut rng = seeded(b"recipe model init", seed);
        let std = config.init_std;
        let residual_std = std / (2.0 * config.n_layers as f64).sqrt();
        let mut tensors = Vec::new();
        for (name, shape, _) in config.layout() {
            let numel: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with("norm.weight") {
                vec![(1.0 - config.norm_offset()) as f32; numel]
            } else if name.ends_with(".bias") {
                vec![0.0; numel]
            } else {
                let s = if name.contains("o_proj") || name.contains("down_proj") { residual_std } else { std };
                normal(&mut rng, numel, s)
            };
            tensors.push((name, Tensor::from_vec(data, shape, device)?));
        }
        Llama::from_tensors(config, tensors, device)
    }

    /// A model from named tensors (which must match [`Config::layout`]), trained in f32.
    pub fn from_tensors(config: &Config, tensors: Vec<(String, Tensor)>, device: &Device) -> Result<Llama> {
        Llama::from_tensors_in(config, tensors, device, DType::F32)
    }

    /// Like [`Llama::from_tensors`], storing and computing in `dtype` (f64 for gradient checks).
    pub fn from_tensors_in(
        config: &Config,
        tensors: Vec<(String, Tensor)>,
        device: &Device,
        dtype: DType,
    ) -> Result<Llama> {
        let checked = Llama::checked(config, tensors, device, dtype)?;
        let params = checked
            .into_iter()
            .zip(config.layout())
            .map(|((name, t), (_, _, decay))| Ok(Param { name, var: Var::from_tensor(&t)?, decay, lr_factor: 1.0 }))
            .collect::<Result<Vec<_>>>()?;
        Llama::assemble(
            config,
            params,
            HashMap::new(),
            None,
            device,
            Dtypes { weights: dtype, compute: dtype, ..Dtypes::F32 },
        )
    }

    /// The model a stage trains from the starting weights `tensors`: LoRA or DoRA adapters over
    /// them under `peft`, else the weights themselves, less those the stage freezes; a merge
    /// trains nothing.
    pub fn for_stage(stage: &Stage, tensors: Vec<(String, Tensor)>, seed: u64, device: &Device) -> Result<Llama> {
        match (&stage.peft, &stage.merge) {
            (_, Some(_)) => Llama::frozen(&stage.model, tensors, device),
            (Some(peft), None) => Llama::with_lora(&stage.model, tensors, peft, seed, device),
            (None, None) => Llama::from_tensors(&stage.model, tensors, device)?.freeze(&stage.freeze),
        }
    }

    /// A model that is only run, never trained (a distillation teacher): no weight is a
    /// variable, so its forward pass records no graph.
    pub fn frozen(config: &Config, tensors: Vec<(String, Tensor)>, device: &Device) -> Result<Llama> {
        let frozen = Llama::checked_frozen(config, tensors, device)?;
        Llama::assemble(config, Vec::new(), frozen, None, device, Dtypes::F32)
    }

    /// The same model with the weights `freeze` names made constant: they take no gradient and
    /// no optimizer state, and keep the master dtype so that they leave training bit for bit
    /// as they came.
    pub fn freeze(self, freeze: &Freeze) -> Result<Llama> {
        if freeze.is_empty() {
            return Ok(self);
        }
        let (frozen, params): (Vec<Param>, Vec<Param>) = self.params.into_iter().partition(|p| freeze.freezes(&p.name));
        let mut fixed = self.frozen;
        fixed.extend(frozen.into_iter().map(|p| (p.name, p.var.as_tensor().detach())));
        let device = self.rope.0.device().clone();
        Llama::assemble(&self.config, params, fixed, self.lora, &device, self.dtypes)
    }

    /// `tensors` checked against the layout: each present once, with its shape, on `device` in
    /// `dtype`; extra tensors are ignored.
    fn checked(
        config: &Config,
        tensors: Vec<(String, Tensor)>,
        device: &Device,
        dtype: DType,
    ) -> Result<Vec<(String, Tensor)>> {
        let mut by_name: HashMap<String, Tensor> = tensors.into_iter().collect();
        let mut out = Vec::new();
        for (name, shape, _) in config.layout() {
            let t = by_name.remove(&name).ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {name}")))?;
            if t.dims() != shape.as_slice() {
                return Err(candle_core::Error::Msg(format!("{name} has shape {:?}, expected {shape:?}", t.dims())));
            }
            out.push((name, t.to_dtype(dtype)?.to_device(device)?));
        }
        Ok(out)
    }

    /// Checked f32 copies cut off from any graph, so nothing can give them a gradient.
    pub(crate) fn checked_frozen(
        config: &Config,
        tensors: Vec<(String, Tensor)>,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        let checked = Llama::checked(config, tensors, device, DType::F32)?;
        Ok(checked.into_iter().map(|(name, t)| (name, t.detach())).collect())
    }

    pub(crate) fn assemble(
        config: &Config,
        params: Vec<Param>,
        frozen: HashMap<String, Tensor>,
        lora: Option<Lora>,
        device: &Device,
        dtypes: Dtypes,
    ) -> Result<Llama> {
        let tables = |frequencies: &[f64], factor: f64| {
            rope_tables(frequencies, factor, config.max_seq_len, device, widened(dtypes.compute))
        };
        let rope = tables(&config.rope_frequencies(), config.rope_attention_factor())?;
        let local_rope = config.local_rope_frequencies().map(|f| tables(&f, 1.0)).transpose()?;
        let long_rope = config
            .long_rope_frequencies()
            .map(|(f, original)| tables(&f, config.rope_attention_factor()).map(|t| (t, original)))
            .transpose()?;
        let n_layers = config.n_layers as usize;
        Ok(Llama {
            config: config.clone(),
            params,
            frozen,
            lora,
            noise_seed: Cell::new(None),
            adapters_off: Cell::new(false),
            neftune_alpha: None,
            activation_checkpointing: false,
            segments: RefCell::new(None),
            rope,
            local_rope,
            long_rope,
            n_layers,
            dtypes,
        })
    }

    /// The same model training in `dtypes`: trainable weights converted to `dtypes.weights`
    /// (new variables), frozen ones to `dtypes.compute`.
    pub fn in_precision(self, dtypes: Dtypes) -> Result<Llama> {
        if dtypes == self.dtypes {
            return Ok(self);
        }
        // PEFT's base weights and a teacher's are only computed with, so they are kept in the
        // compute dtype; weights frozen beside trainable ones are part of the result and keep
        // the master dtype (and are cast where used, like a trainable weight).
        let computed_only = self.lora.as_ref().is_some_and(|l| !l.relora) || self.params.is_empty();
        let kept = if computed_only { dtypes.compute } else { dtypes.weights };
        let params = self
            .params
            .into_iter()
            .map(|p| Ok(Param { var: Var::from_tensor(&p.var.to_dtype(dtypes.weights)?)?, ..p }))
            .collect::<Result<Vec<_>>>()?;
        let frozen = self
            .frozen
            .into_iter()
            .map(|(name, t)| Ok((name, t.to_dtype(kept)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let device = self.rope.0.device().clone();
        Llama::assemble(&self.config, params, frozen, self.lora, &device, dtypes)
    }

    /// Turn training's random draws (adapter dropout, NEFTune's noise) on for the next forward
    /// passes, drawn from `seed`; `None` turns them off.
    pub fn set_noise_seed(&self, seed: Option<u64>) {
        self.noise_seed.set(seed);
    }

    /// The weight `name` as stored: a frozen tensor, or a parameter's master copy.
    pub(crate) fn stored(&self, name: &str) -> &Tensor {
        match self.frozen.get(name) {
            Some(t) => t,
            None => {
                self.params.iter().find(|p| p.name == name).map(|p| p.var.as_tensor()).expect("a weight of the layout")
            }
        }
    }

    /// The weight `name` in the compute dtype; the cast is part of the graph, so a master
    /// weight's gradient arrives in its own dtype.
    fn p(&self, name: &str) -> Result<Tensor> {
        self.stored(name).to_dtype(self.dtypes.compute)
    }

    /// The rows of the embedding table at `ids` `[B, T]` (scaled, for Gemma's), with NEFTune's
    /// noise while training, in the compute dtype: what `transformers`' embedding module
    /// outputs, where its NEFTune hook adds the noise. Gathered from the stored table, so under
    /// mixed precision the table's gradient sums in its master dtype.
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let rows = recipe_kernels::embedding(self.stored("model.embed_tokens.weight"), &ids.flatten_all()?)?;
        let rows = match self.config.embedding_scale() {
            Some(scale) => rows.affine(scale, 0.0)?,
            None => rows,
        };
        let rows = match (self.neftune_alpha, self.noise_seed.get()) {
            (Some(alpha), Some(seed)) => {
                let (t, d) = (ids.dim(1)?, self.config.d_model as usize);
                // `transformers` adds it to the embedding module's output: Gemma's scale is
                // inside that module, Granite's multiplier comes after it and scales the noise.
                let after = if self.config.gemma() { 1.0 } else { self.config.embedding_multiplier.unwrap_or(1.0) };
                let bound = alpha / ((t * d) as f64).sqrt() * after;
                let noise = recipe_kernels::uniform_noise(
                    rows.shape(),
                    draw_seed(seed, "neftune"),
                    bound,
                    rows.dtype(),
                    rows.device(),
                )?;
                (rows + noise)?
            }
            _ => rows,
        };
        rows.to_dtype(self.dtypes.compute)
    }

    /// `x` RMS-normalised by the norm `name`, whose weight is used with the architecture's offset
    /// added (in f32 or wider, before the cast to the compute dtype, as `transformers` does).
    fn rms_norm(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let offset = self.config.norm_offset();
        let weight = if offset == 0.0 {
            self.p(name)?
        } else {
            let stored = self.stored(name);
            stored.to_dtype(widened(stored.dtype()))?.affine(1.0, offset)?.to_dtype(self.dtypes.compute)?
        };
        recipe_kernels::rms_norm(x, &weight, self.config.norm_eps)
    }

    /// The full model's weights in layout order, in the master dtype, with any adapter merged
    /// in (in f32): `W + (alpha / rank) · B·A`, under DoRA rescaled row by row to `m`.
    pub fn weights(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (name, _, _) in self.config.layout() {
            let mut w = self.stored(&name).to_dtype(self.dtypes.weights)?;
            if let Some(lora) = &self.lora
                && let Some((a, b)) = self.adapter(&name)?
            {
                let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
                w = (w.to_dtype(DType::F32)? + (b.matmul(&a)? * lora.scale())?)?;
                if let Some(m) = self.magnitude(&name) {
                    w = w.broadcast_mul(&(m.to_dtype(DType::F32)? / row_norms(&w)?)?.unsqueeze(1)?)?;
                }
                w = w.to_dtype(self.dtypes.weights)?;
            }
            out.push((name, w));
        }
        Ok(out)
    }

    /// `x · Wᵀ` for the weight `name`, plus the LoRA update when the projection is adapted.
    fn linear(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let adapter = if self.adapters_off.get() { None } else { self.adapter(name)? };
        let (Some(lora), Some((a, b))) = (&self.lora, adapter) else {
            return match self.frozen.get(name) {
                Some(w) => recipe_kernels::frozen_linear(x, &w.to_dtype(self.dtypes.compute)?, self.dtypes.products),
                None => recipe_kernels::linear(x, &self.p(name)?, self.dtypes.products),
            };
        };
        let compute = self.dtypes.compute;
        let (a, b) = (&a.to_dtype(compute)?, &b.to_dtype(compute)?);
        let dropout = match self.noise_seed.get() {
            Some(seed) if lora.dropout > 0.0 => Some(Dropout { p: lora.dropout, seed: draw_seed(seed, name) }),
            _ => None,
        };
        // ReLoRA's base weights keep the master dtype.
        let base = self.stored(name).to_dtype(compute)?;
        let adapted = recipe_kernels::lora_linear(x, &base, a, b, lora.scale(), dropout, self.dtypes.products)?;
        let Some(m) = self.magnitude(name) else { return Ok(adapted) };
        // The norm in f32: a half-precision sum of squares over a row loses too much.
        let wide = |t: &Tensor| t.to_dtype(DType::F32);
        let merged = (wide(self.stored(name))? + (wide(b)?.matmul(&wide(a)?)? * lora.scale())?)?;
        let scale = (wide(m)? / row_norms(&merged.detach())?)?;
        adapted.broadcast_mul(&scale.to_dtype(compute)?)
    }

    /// Trainable elements (the adapters alone under LoRA).
    pub fn trainable_param_count(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    /// [`Llama::forward`] without the adapters and without training's noise: under PEFT the
    /// model the adapters started from — unless its base gave a part of itself to them (PiSSA,
    /// OLoRA) or took their updates in (ReLoRA). It records no graph, every weight it reads
    /// being frozen.
    pub fn base_forward(&self, ids: &Tensor, positions: &Tensor, spans: &KeySpans) -> Result<Tensor> {
        let seed = self.noise_seed.replace(None);
        let segments = self.segments.replace(None);
        self.adapters_off.set(true);
        let logits = self.forward(ids, positions, spans);
        self.adapters_off.set(false);
        self.segments.replace(segments);
        self.noise_seed.set(seed);
        logits
    }

    /// Logits `[B·T, vocab]` for token ids `[B, T]`, with per-token positions `[B·T]` (restarting
    /// at each packed document) and the keys each position attends (its document up to itself:
    /// [`KeySpans::documents`]).
    pub fn forward(&self, ids: &Tensor, positions: &Tensor, spans: &KeySpans) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let mut x = self.embed(ids)?;
        let positions = self.positions(positions, b, t, spans.clone())?;
        let mut segments = self.segments.borrow_mut();
        let Some(segments) = segments.as_mut().filter(|_| self.activation_checkpointing) else {
            for i in 0..self.n_layers {
                x = self.block(i, &x, b, t, &positions, None)?;
            }
            return self.head(&x);
        };
        // Each block's graph is dropped as soon as its output is detached from it.
        let embedded = x;
        let mut inputs = Vec::with_capacity(self.n_layers);
        let mut x = embedded.detach();
        for i in 0..self.n_layers {
            let out = self.block(i, &x, b, t, &positions, None)?.detach();
            inputs.push(x);
            x = out;
        }
        let last = Var::from_tensor(&x)?;
        let logits = self.head(last.as_tensor())?;
        segments.push(Segment { embedded, inputs, last, b, t, positions, noise_seed: self.noise_seed.get() });
        Ok(logits)
    }

    /// Record the forward passes to come for [`Llama::backward_blocks`] (when
    /// `activation_checkpointing` is on), or stop and drop what was recorded.
    pub fn set_recording(&self, on: bool) {
        *self.segments.borrow_mut() = on.then(Vec::new);
    }

    /// Finish the backward pass `grads` began from a loss over checkpointed forward passes:
    /// from the gradient of each pass's last block output, run each block again, last first,
    /// with the pass's noise seed (so dropout draws the same), backpropagate through it, and
    /// add its weights' gradients to `grads`; then through the embeddings. Nothing when no pass
    /// was checkpointed.
    pub fn backward_blocks(&self, grads: &mut GradStore) -> Result<()> {
        let segments = self.segments.borrow_mut().as_mut().map(std::mem::take).unwrap_or_default();
        let seed = self.noise_seed.get();
        let result = segments.into_iter().rev().try_for_each(|segment| {
            self.noise_seed.set(segment.noise_seed);
            self.backward_segment(segment, grads)
        });
        self.noise_seed.set(seed);
        result
    }

    fn backward_segment(&self, segment: Segment, grads: &mut GradStore) -> Result<()> {
        let Segment { embedded, inputs, last, b, t, positions, .. } = segment;
        let Some(mut grad) = grads.remove(last.as_tensor()) else { return Ok(()) };
        // The gradient of `Σ y ⊙ grad` with respect to `y` is `grad`, exactly.
        let mut through = |output: &Tensor, grad: &Tensor| -> Result<GradStore> {
            let mut local = (output * grad)?.sum_all()?.backward()?;
            for p in &self.params {
                if let Some(g) = local.remove(p.var.as_tensor()) {
                    let sum = match grads.remove(p.var.as_tensor()) {
                        Some(earlier) => (earlier + g)?,
                        None => g,
                    };
                    grads.insert(p.var.as_tensor(), sum);
                }
            }
            Ok(local)
        };
        for (i, input) in inputs.into_iter().enumerate().rev() {
            let input = Var::from_tensor(&input)?;
            let output = self.block(i, input.as_tensor(), b, t, &positions, None)?;
            let mut local = through(&output, &grad)?;
            match local.remove(input.as_tensor()) {
                Some(g) => grad = g,
                None => return Ok(()),
            }
        }
        through(&embedded, &grad).map(drop)
    }

    /// Logits of the last of `ids` (new tokens), reading and extending the cache.
    pub fn forward_cached(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let device = self.rope.0.device();
        let t = ids.len();
        let ids = Tensor::from_slice(ids, (1, t), device)?;
        let positions: Vec<u32> = (cache.len..cache.len + t).map(|p| p as u32).collect();
        let positions = Tensor::from_vec(positions, t, device)?;
        let positions = self.positions(&positions, 1, t, KeySpans::after(cache.len, t))?;
        let mut x = self.embed(&ids)?;
        for i in 0..self.n_layers {
            x = self.block(i, &x, 1, t, &positions, Some(&mut cache.layers[i]))?;
        }
        cache.len += t;
        self.head(&x.narrow(0, t - 1, 1)?)
    }

    /// What the layers attend with for tokens at `positions` `[B·T]` that see the keys `spans`.
    fn positions(&self, positions: &Tensor, b: usize, t: usize, spans: KeySpans) -> Result<Positions> {
        let half = (self.config.rotated_dims() / 2) as usize;
        let rotary = |(cos, sin): &(Tensor, Tensor)| -> Result<(Tensor, Tensor)> {
            let at = |table: &Tensor| table.index_select(positions, 0)?.reshape((b, 1, t, half));
            Ok((at(cos)?, at(sin)?))
        };
        // LongRoPE switches to its long factors for a pass whose positions go past its original
        // context, as `transformers` does (by the largest position, packed rows included).
        let rope = match &self.long_rope {
            Some((long, original)) if positions.max(0)?.to_scalar::<u32>()? >= *original => long,
            _ => &self.rope,
        };
        Ok(Positions {
            rotary: rotary(rope)?,
            local_rotary: self.local_rope.as_ref().map(rotary).transpose()?,
            windowed: self.config.sliding_window.map(|window| spans.within(window as usize)),
            spans,
        })
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache { layers: (0..self.n_layers).map(|_| None).collect(), len: 0 }
    }

    fn head(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.rms_norm(x, "model.norm.weight")?;
        let w = if self.config.tie_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
        let logits = match self.config.logits_scaling {
            Some(scaling) => self.linear(&x, w)?.affine(1.0 / scaling, 0.0)?,
            None => self.linear(&x, w)?,
        };
        match self.config.final_logit_softcapping {
            Some(cap) => logits.affine(1.0 / cap, 0.0)?.tanh()? * cap,
            None => Ok(logits),
        }
    }

    /// One pre-norm block on `x` `[B·T, d]`.
    fn block(
        &self,
        i: usize,
        x: &Tensor,
        b: usize,
        t: usize,
        positions: &Positions,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (h, kvh, hd) = (c.n_heads as usize, c.n_kv_heads as usize, c.head_dim() as usize);
        let linear = |x: &Tensor, n: &str| self.linear(x, &format!("model.layers.{i}.{n}.weight"));
        let norm = |x: &Tensor, n: &str| self.rms_norm(x, &format!("model.layers.{i}.{n}.weight"));
        let (cos, sin) = positions.rotary(c.rotates_locally(i as u32));
        let spans = positions.spans(c.slides(i as u32));

        let norms = c.block_norms();
        // A norm where the block has one, else the identity.
        let maybe_norm = |x: Tensor, n: Option<&str>| match n {
            Some(n) => norm(&x, n),
            None => Ok(x),
        };
        // What a sublayer's output adds to the residual stream: normalised where the block has
        // a norm after it, scaled by Granite's `residual_multiplier`.
        let joining = |y: Tensor, n: Option<&str>| match c.residual_multiplier {
            Some(m) => maybe_norm(y, n)?.affine(m, 0.0),
            None => maybe_norm(y, n),
        };
        let normed = maybe_norm(x.clone(), norms.before_attention)?;
        let heads = |y: Tensor, n: usize| y.reshape((b, t, n, hd))?.transpose(1, 2);
        let qkv = |n: &str| {
            let y = linear(&normed, n)?;
            if c.qkv_bias() { y.broadcast_add(&self.p(&format!("model.layers.{i}.{n}.bias"))?) } else { Ok(y) }
        };
        // Qwen3 normalises each query and key head on its own.
        let normed_heads = |y: Tensor, n: usize, name: &str| {
            let y = if c.qk_norm() {
                let width = c.qk_norm_width((n * hd) as u32) as usize;
                norm(&y.reshape((b * t * n * hd / width, width))?, name)?
            } else {
                y
            };
            heads(y, n)
        };
        // A NoPE layer attends without positions: no rotation.
        let rotary_dims = c.rotated_dims() as usize;
        let rotated = |x: Tensor| match (c.rotates(i as u32), rotary_dims < hd) {
            (false, _) => Ok(x),
            (true, false) => recipe_kernels::rope(&x, cos, sin),
            // Phi-4-mini turns a head's first dimensions and passes the rest through.
            (true, true) => {
                let turned = recipe_kernels::rope(&x.narrow(3, 0, rotary_dims)?.contiguous()?, cos, sin)?;
                Tensor::cat(&[&turned, &x.narrow(3, rotary_dims, hd - rotary_dims)?], 3)
            }
        };
        let q = rotated(normed_heads(qkv("self_attn.q_proj")?, h, "self_attn.q_norm")?)?;
        let mut k = rotated(normed_heads(qkv("self_attn.k_proj")?, kvh, "self_attn.k_norm")?)?;
        let mut v = heads(qkv("self_attn.v_proj")?, kvh)?;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let scores = recipe_kernels::Scores { scale: c.attention_scale(), cap: c.attn_logit_softcapping };
        let attn = recipe_kernels::attention(&q, &k, &v, spans, scores)?;
        let attn = linear(&attn.reshape((b * t, h * hd))?, "self_attn.o_proj")?;
        let x = (x + joining(attn, norms.after_attention)?)?;

        let normed = maybe_norm(x.clone(), norms.before_mlp)?;
        let act = if c.gelu_gate() { Activation::GeluTanh } else { Activation::Silu };
        let gated = recipe_kernels::glu(&linear(&normed, "mlp.gate_proj")?, &linear(&normed, "mlp.up_proj")?, act)?;
        let mlp = linear(&gated, "mlp.down_proj")?;
        x + joining(mlp, norms.after_mlp)?
    }
}

/// cos and sin of the angles `position · frequency`, each times `factor` (YaRN's attention
/// factor), `[max_seq_len, frequencies]`.
fn rope_tables(inv: &[f64], factor: f64, max_seq_len: u32, device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
    let (half, n) = (inv.len(), max_seq_len as usize);
    let angles: Vec<f64> = (0..n).flat_map(|p| inv.iter().map(move |f| p as f64 * f)).collect();
    let cos = Tensor::from_vec(angles.iter().map(|a| a.cos() * factor).collect::<Vec<_>>(), (n, half), device)?;
    let sin = Tensor::from_vec(angles.iter().map(|a| a.sin() * factor).collect::<Vec<_>>(), (n, half), device)?;
    Ok((cos.to_dtype(dtype)?, sin.to_dtype(dtype)?))
}

/// The Euclidean norm of each row of `w` `[out, in]`, as `[out]`.
pub(crate) fn row_norms(w: &Tensor) -> Result<Tensor> {
    w.sqr()?.sum(1)?.sqrt()
}

/// A stream for one purpose (`domain`) and seed.
pub(crate) fn seeded(domain: &[u8], seed: u64) -> ChaCha8Rng {
    let mut key = blake3::Hasher::new();
    key.update(domain);
    key.update(&seed.to_le_bytes());
    ChaCha8Rng::from_seed(*key.finalize().as_bytes())
}

/// Uniform in [0, 1) with 53 random bits.
pub(crate) fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The seed of one draw (a projection's dropout, the embeddings' noise) in one forward pass: a
/// resumed run draws the same values.
fn draw_seed(pass: u64, name: &str) -> u64 {
    let mut key = blake3::Hasher::new();
    key.update(&pass.to_le_bytes());
    key.update(name.as_bytes());
    u64::from_le_bytes(key.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// `n` draws from normal(0, std) by Box–Muller over the seeded stream.
fn normal(rng: &mut ChaCha8Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u1, u2) = (uniform(rng).max(f64::MIN_POSITIVE), uniform(rng));
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect()
}

/// The dtype the rotary tables are kept in: f64 when computing in f64, else f32 (the kernels
/// cast them to the activations' dtype where they need to).
fn widened(compute: DType) -> DType {
    if compute == DType::F64 { DType::F64 } else { DType::F32 }
}

#[cfg(test)]
mod tests {
    use recipe_spec::ModelSpec;

    use super::*;

    /// NEFTune's noise is there only while a seed is set, within ±alpha/√(T·d) and near that
    /// bound, and the same for the same seed (so a resumed step draws it again).
    #[test]
    fn neftune_noise_is_bounded_by_alpha_over_the_root_of_the_row_size() {
        let config = ModelSpec {
            vocab_size: Some(50),
            d_model: Some(16),
            n_layers: Some(1),
            n_heads: Some(2),
            max_seq_len: Some(32),
            ..ModelSpec::default()
        }
        .resolve(None);
        let mut model = Llama::init(&config, 3, &Device::Cpu).unwrap();
        model.neftune_alpha = Some(5.0);
        let ids = Tensor::from_vec((0..64u32).map(|i| i % 50).collect(), (2, 32), &Device::Cpu).unwrap();
        let plain = model.embed(&ids).unwrap();
        let noised = |seed| {
            model.set_noise_seed(Some(seed));
            let x = model.embed(&ids).unwrap();
            model.set_noise_seed(None);
            (x - &plain).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let noise = noised(9);
        let bound = 5.0 / (32.0f32 * 16.0).sqrt();
        let largest = noise.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(largest <= bound * 1.0001 && largest > 0.95 * bound, "{largest} against {bound}");
        assert_eq!(noise, noised(9));
        assert_ne!(noise, noised(10));
        let after = model.embed(&ids).unwrap();
        assert_eq!(
            after.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            plain.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
