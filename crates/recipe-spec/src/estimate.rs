//! What a stage will cost, computed from its configuration alone: parameters, tokens, FLOPs
//! and a peak-memory estimate. `recipe plan` prints these before anything runs.

use serde::Serialize;

use crate::merge::Merge;
use crate::model::Model;
use crate::peft::Peft;
use crate::recipe::Recipe;
use crate::stage::{Muon, Stage};
use crate::vocab::{MergeMethod, PeftMethod, Precision};

/// Parameter counts, FLOPs and peak memory of one stage.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Estimate {
    pub params_total: u64,
    pub params_trainable: u64,
    /// Tokens the stage trains on: steps × rows × length, phase by phase.
    pub tokens: u64,
    /// Training FLOPs, PaLM's accounting: per token 6·N (4·N + 6·N_trainable under PEFT) plus
    /// 12·n_layers·seq_len·d_model for attention, plus each teacher's (or the reference's)
    /// forward pass.
    pub flops: f64,
    /// Peak memory of one rank (of the one process when it trains alone).
    pub memory: Memory,
    /// How the stage's steps divide among the ranks of a data-parallel run.
    pub ranks: Ranks,
    /// A stage whose mix or length changes: its tokens and FLOPs phase by phase.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseEstimate>,
}

/// One rank's part of a stage trained by `world` data-parallel ranks: each takes a share of
/// every step's rows, holds the whole model, its gradients and optimizer state, and sums the
/// gradients with the others every step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ranks {
    pub world: u32,
    /// The most rows a rank trains per step (shares differ by one when the batch does not
    /// divide); at the stage's full length.
    pub rows: u32,
    /// The largest micro-batch a rank runs: the stage's, or its whole share when smaller.
    pub micro_batch_size: u32,
    /// Tokens a rank trains over the stage (with shares of `rows`).
    pub tokens: u64,
    /// Bytes each rank sends, and receives, per step to sum the gradients (in f32) with a ring
    /// all-reduce: 2·(world − 1)/world of them.
    pub all_reduce_bytes: u64,
}

/// Steps `from..until` of a stage, over which its data stays the same.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseEstimate {
    pub from: u64,
    pub until: u64,
    pub seq_len: u32,
    /// Rows per step.
    pub batch_size: u32,
    pub tokens: u64,
    pub flops: f64,
}

/// Peak memory in bytes, by part.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Memory {
    /// Model weights, with the f32 master copy under mixed precision.
    pub weights: u64,
    pub grads: u64,
    /// AdamW's two f32 moments per trainable parameter (Muon's one momentum per matrix it
    /// updates), and the averaged copies of an `average`d stage (one for EMA, `window` for
    /// LAWA, in f32).
    pub optimizer: u64,
    /// Activations kept for the backward pass of one micro-batch, logits included.
    pub activations: u64,
    /// Frozen models' weights and logits: a distillation's teachers, a dpo stage's reference.
    pub teachers: u64,
    /// What the process holds before its first tensor: code, libraries, thread stacks, the
    /// tokenizer, the data loader ([`RUNTIME_BYTES`]).
    pub runtime: u64,
    pub total: u64,
}

/// The resident memory of `recipe train` before its first tensor, measured on Linux (x86-64,
/// the CPU build) by training a model of a few thousand parameters: 18–20 MiB of which 2 MiB
/// is allocated. It is the same for every recipe but for the tokenizer, a few MiB at most.
pub const RUNTIME_BYTES: u64 = 18 << 20;

fn elements(shape: &[usize]) -> u64 {
    shape.iter().map(|&n| n as u64).product()
}

impl Model {
    /// All parameters: embedding, blocks, final norm, and the output head unless tied.
    pub fn param_count(&self) -> u64 {
        self.layout().iter().map(|(_, shape, _)| elements(shape)).sum()
    }

    /// Parameters that take part in matrix multiplications per token: the projections and the
    /// output head (the embedding's transpose when tied), not the embedding lookup or the norms.
    pub fn matmul_params(&self) -> u64 {
        let decayed: u64 = self.layout().iter().filter(|(_, _, decay)| *decay).map(|(_, s, _)| elements(s)).sum();
        let tied_head = if self.tie_embeddings { self.vocab_size as u64 * self.d_model as u64 } else { 0 };
        decayed + tied_head
    }

    /// How many keys a query at the end of a row of `seq_len` attends, summed over the layers:
    /// in each the row, or in a sliding layer the window.
    fn attended(&self, seq_len: u32) -> f64 {
        let keys = |layer| match self.sliding_window {
            Some(window) if self.slides(layer) => window.min(seq_len),
            _ => seq_len,
        };
        (0..self.n_layers).map(|layer| f64::from(keys(layer))).sum()
    }

    /// The width of the queries of all heads together: `d_model` unless `head_dim` says otherwise.
    fn attention_width(&self) -> u64 {
        u64::from(self.n_heads) * u64::from(self.head_dim())
    }

    /// (input, output) width of a PEFT-adaptable projection (`q_proj`, ...).
    pub fn projection_shape(&self, module: &str) -> (u64, u64) {
        let suffix = format!(".{module}.weight");
        let (_, shape, _) =
            self.layout().into_iter().find(|(n, _, _)| n.ends_with(&suffix)).expect("a validated PEFT target");
        (shape[1] as u64, shape[0] as u64)
    }

    /// Forward FLOPs per token at context `seq_len`.
    fn forward_flops_per_token(&self, seq_len: u32) -> f64 {
        2.0 * self.matmul_params() as f64 + 4.0 * self.attended(seq_len) * self.attention_width() as f64
    }
}

impl Stage {
    pub fn trainable_params(&self) -> u64 {
        if self.merge.is_some() {
            return 0;
        }
        match &self.peft {
            None => self
                .model
                .layout()
                .iter()
                .filter(|(n, _, _)| !self.freeze.freezes(n))
                .map(|(_, s, _)| elements(s))
                .sum(),
            Some(p) => {
                let r = p.rank as u64;
                let layers = self.model.n_layers as u64;
                p.targets
                    .iter()
                    .map(|t| {
                        let (i, o) = self.model.projection_shape(t);
                        match p.method {
                            PeftMethod::Lora => layers * r * (i + o),
                            PeftMethod::Dora => layers * (r * (i + o) + o),
                            // λ_d and λ_b per projection; the projections are frozen.
                            PeftMethod::Vera => layers * (r + o),
                            // One A and B per module, u and v per projection.
                            PeftMethod::TiedLora => r * (i + o) + layers * (r + o),
                        }
                    })
                    .sum()
            }
        }
    }

    /// Tokens the stage trains on: per step, rows × length, over every phase.
    pub fn tokens(&self) -> u64 {
        self.tokens_until(self.steps)
    }

    /// Tokens (row positions) of the stage's first `step` steps.
    pub fn tokens_until(&self, step: u64) -> u64 {
        self.phase_spans()
            .iter()
            .filter(|(from, _)| *from < step)
            .map(|&(from, until)| self.span_tokens(from, until.min(step)))
            .fold(0, u64::saturating_add)
    }

    fn span_tokens(&self, from: u64, until: u64) -> u64 {
        let shape = self.shape_at(from);
        (until - from).saturating_mul(shape.batch_size as u64 * shape.seq_len as u64)
    }

    pub fn estimate(&self, recipe: &Recipe) -> Estimate {
        self.estimate_on(recipe, 1)
    }

    /// The estimate when `world` data-parallel ranks train the stage; its memory is one rank's.
    pub fn estimate_on(&self, recipe: &Recipe, world: u32) -> Estimate {
        let world = world.max(1);
        if let Some(merge) = &self.merge {
            // The leader alone merges.
            return self.merge_estimate(merge);
        }
        let m = &self.model;
        let total = m.param_count();
        let trainable = self.trainable_params();
        let frozen = if self.peft.is_some() { total } else { total - trainable };
        let width = m.attention_width() as f64;
        // Forward 2·N and input gradients 2·N; weight gradients 2·N only for the matrices that
        // train (a frozen one computes none; PEFT's adapters also run forward and backward).
        let dense = match (&self.peft, self.freeze.is_empty()) {
            (None, true) => 6.0 * m.matmul_params() as f64,
            (None, false) => {
                let frozen_matmul: u64 = m
                    .layout()
                    .iter()
                    .filter(|(n, _, decay)| *decay && self.freeze.freezes(n))
                    .map(|(_, s, _)| elements(s))
                    .sum();
                6.0 * m.matmul_params() as f64 - 2.0 * frozen_matmul as f64
            }
            (Some(_), _) => 4.0 * m.matmul_params() as f64 + 6.0 * trainable as f64,
        };
        let stage_teachers = self.teacher.iter().filter_map(|t| recipe.stage(t)).map(|t| &t.model);
        // DPO's, IPO's and the hinge's reference is one more forward pass beside the policy's:
        // of a frozen copy of the starting weights, or under PEFT of the policy without its
        // adapters (unless PiSSA, OLoRA or ReLoRA changed its base), which holds no weights of
        // its own.
        let own_base = self.peft.as_ref().is_some_and(Peft::keeps_starting_base);
        let reference = self.preference.as_ref().filter(|p| p.needs_reference()).map(|_| (m, !own_base));
        // The frozen models run forward beside the policy, each with whether its weights are
        // its own.
        let teachers: Vec<(&Model, bool)> = stage_teachers
            .chain(self.teacher_checkpoints.iter().map(|t| &t.model))
            .map(|t| (t, true))
            .chain(reference)
            .collect();
        // Attention's share of a token's FLOPs grows with the length of its row.
        let flops_per_token = |seq_len: u32| {
            let teacher_flops: f64 = teachers.iter().map(|(t, _)| t.forward_flops_per_token(seq_len)).sum();
            dense + 12.0 * m.attended(seq_len) * width + teacher_flops
        };
        let phases: Vec<PhaseEstimate> = self
            .phase_spans()
            .into_iter()
            .map(|(from, until)| {
                let shape = self.shape_at(from);
                let tokens = self.span_tokens(from, until);
                let flops = tokens as f64 * flops_per_token(shape.seq_len);
                PhaseEstimate { from, until, seq_len: shape.seq_len, batch_size: shape.batch_size, tokens, flops }
            })
            .collect();
        let flops = phases.iter().map(|p| p.flops).sum();

        // Parameters Muon updates, each with one f32 momentum where AdamW keeps two moments.
        let muon: u64 = match (&self.optim.muon, &self.peft) {
            (Some(_), None) => m
                .layout()
                .iter()
                .filter(|(n, _, _)| Muon::updates(n) && !self.freeze.freezes(n))
                .map(|(_, s, _)| elements(s))
                .sum(),
            _ => 0,
        };
        let (weight_bytes, act_bytes) = match self.precision {
            Precision::F32 => (4, 4),
            Precision::Bf16Mixed | Precision::F16Mixed => (6, 2),
            Precision::Bf16 => (2, 2),
        };
        let frozen_bytes = if self.precision == Precision::F32 { 4 } else { 2 };
        let grad_bytes = if self.precision == Precision::Bf16 { 2 } else { 4 };
        let weights =
            if self.peft.is_some() { frozen * frozen_bytes + trainable * weight_bytes } else { total * weight_bytes };
        // The longest rows need the most: under `keep = "tokens"` a micro-batch holds as many
        // tokens at every length, and otherwise more at the longest.
        let longest = self.lengths.shape(self.seq_len, self.batch_size, self.micro_batch_size);
        let rows = longest.batch_size.div_ceil(world);
        let micro_rows = longest.micro_batch_size.min(rows);
        let micro_tokens = micro_rows as u64 * self.seq_len as u64;
        let activations =
            micro_tokens.saturating_mul(per_token_activations(m, self.activation_checkpointing) * act_bytes);
        let teacher_bytes: u64 = teachers
            .iter()
            .map(|(t, own_weights)| {
                let weights = if *own_weights { t.param_count() * frozen_bytes } else { 0 };
                weights + micro_tokens.saturating_mul(t.vocab_size as u64 * 4)
            })
            .fold(0, u64::saturating_add);
        let memory = Memory {
            weights,
            grads: trainable * grad_bytes,
            optimizer: trainable * 8 - muon * 4
                + trainable * 4 * self.average.as_ref().map_or(0, |a| a.window.unwrap_or(1) as u64),
            activations,
            teachers: teacher_bytes,
            runtime: RUNTIME_BYTES,
            total: 0,
        };
        let total_bytes =
            [memory.weights, memory.grads, memory.optimizer, memory.activations, memory.teachers, memory.runtime]
                .into_iter()
                .fold(0, u64::saturating_add);
        let tokens = phases.iter().map(|p| p.tokens).fold(0, u64::saturating_add);
        let ranks = Ranks {
            world,
            rows,
            micro_batch_size: micro_rows,
            tokens: tokens.div_ceil(world as u64),
            all_reduce_bytes: 2 * (world as u64 - 1) * trainable * 4 / world as u64,
        };
        Estimate {
            params_total: total,
            params_trainable: trainable,
            tokens,
            flops,
            memory: Memory { total: total_bytes, ..memory },
            ranks,
            phases: if phases.len() > 1 { phases } else { Vec::new() },
        }
    }
}

impl Stage {
    /// A merge holds its inputs and the result in f32 and trains nothing; a greedy one
    /// evaluates each ingredient and each candidate soup once (`eval.batches` forward passes).
    fn merge_estimate(&self, merge: &Merge) -> Estimate {
        let m = &self.model;
        let total = m.param_count();
        let models = merge.all_inputs().count() as u64 + 1;
        let evaluations = match merge.method {
            MergeMethod::Greedy => 2 * merge.inputs.len() as u64 - 1,
            _ => 0,
        };
        let micro_tokens = self.micro_batch_size as u64 * self.seq_len as u64;
        let eval_tokens = evaluations * self.eval.batches as u64 * micro_tokens;
        let flops = eval_tokens as f64 * m.forward_flops_per_token(self.seq_len);
        let activations = if evaluations > 0 { micro_tokens.saturating_mul(3 * m.vocab_size as u64 * 4) } else { 0 };
        let memory = Memory {
            weights: models * total * 4,
            grads: 0,
            optimizer: 0,
            activations,
            teachers: 0,
            runtime: RUNTIME_BYTES,
            total: 0,
        };
        Estimate {
            params_total: total,
            params_trainable: 0,
            tokens: 0,
            flops,
            memory: Memory { total: memory.weights + memory.activations + memory.runtime, ..memory },
            ranks: Ranks { world: 1, rows: 0, micro_batch_size: 0, tokens: 0, all_reduce_bytes: 0 },
            phases: Vec::new(),
        }
    }
}

/// Values kept per token for the backward pass: per block the residual stream at its three
/// points, both norms' outputs, the projections' outputs (o, down: d each; q: the attention
/// width; k, v: kv each), q and k laid out by head (and under Qwen3 normalised) and rotated, v
/// laid out by head, the attention output and each head's log-sum-exp (the fused attention
/// keeps no scores), and the MLP's gate, up and product (under Gemma 3 also its two more norms'
/// inputs and outputs); then the final norm and the logits,
/// their softmax and its gradient; and the gradients backward holds at its widest, a block's
/// worth. Under activation checkpointing a block keeps only its input until the backward pass
/// runs it again, one block at a time (its input's copy, its values and their gradients).
fn per_token_activations(m: &Model, checkpointing: bool) -> u64 {
    let (d, ff, kv, h) = (m.d_model as u64, m.d_ff as u64, m.projection_shape("k_proj").1, m.n_heads as u64);
    let q = m.attention_width();
    let qk_norms = if m.qk_norm() { q + kv } else { 0 };
    // Beyond the two norms of a Llama block, each keeps its input and its output.
    let norms = m.block_norms();
    let count =
        [norms.before_attention, norms.after_attention, norms.before_mlp, norms.after_mlp].iter().flatten().count();
    let extra_norms = 2 * d * (count as u64).saturating_sub(2);
    let block = 8 * d + 3 * q + 5 * kv + qk_norms + extra_norms + h + 3 * ff;
    let head = 2 * d + 3 * m.vocab_size as u64;
    match checkpointing {
        true => m.n_layers as u64 * d + d + 2 * block + head,
        false => (m.n_layers as u64 + 1) * block + head,
    }
}
