//! PEFT adapters over frozen base weights. Every method writes an adapted projection's update
//! as `s · B'·A'`, so one fused kernel (`lora_linear`) runs them all and one merge exports
//! them:
//!
//! - **LoRA**: `A` `[r, in]` and `B` `[out, r]` per projection, `s = alpha / r` (rsLoRA,
//!   Kalajdzievski 2023: `alpha / √r`).
//! - **DoRA**: LoRA, and a learnt magnitude per output row (applied in `Llama::linear`).
//! - **VeRA** (Kopiczko et al.): one random `A` `[r, max in]` and `B` `[max out, r]`, frozen and
//!   shared by every projection (each takes the top-left slice it needs, as the `peft` library
//!   does), with trainable vectors `λ_d` `[r]` and `λ_b` `[out]` per projection:
//!   `A' = diag(λ_d)·A`, `B' = diag(λ_b)·B`, `s = 1`.
//! - **Tied-LoRA** (Renduchintala et al.): `A` and `B` trainable but shared by one module's
//!   projections in every layer, with trainable vectors `u` `[r]` and `v` `[out]` per projection:
//!   `A' = diag(u)·A`, `B' = diag(v)·B`, `s = alpha / r`.
//!
//! Each starts as the base model exactly: `B` is zero (LoRA, DoRA, Tied-LoRA), or `λ_b` is
//! (VeRA); or (LoRA's `init`, PiSSA or OLoRA) `B·A` starts as a part of the weight, which the
//! frozen base gives up: `W_res = W − s·B₀·A₀`. Such an adapter is written for `peft` as the
//! plain LoRA of rank `2r` it equals over the original weights, `[A; A₀]` and `[B, −B₀]`, as
//! `peft` converts it. ReLoRA (Lialin et al.) restarts LoRA: the update merged into the base weights, then
//! fresh `A`, zero `B`.

use std::collections::HashMap;

use candle_core::{DType, Device, Error, Result, Tensor, Var};
use recipe_checkpoint::load_adapter;
use recipe_spec::{LoraInit, Model as Config, Peft, PeftMethod};

use crate::llama::{Llama, Param, row_norms, seeded, uniform};

/// The adapters' settings.
#[derive(Clone, Debug)]
pub struct Lora {
    pub method: PeftMethod,
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Adapted projections, by module name (`q_proj`, ...).
    pub targets: Vec<String>,
    /// ReLoRA merges updates into the base weights, which then keep the master dtype.
    pub relora: bool,
    /// rsLoRA's scale, `alpha / √r`.
    pub rslora: bool,
    /// `B·A` started as a part of the base weights (PiSSA, OLoRA).
    pub init: Option<LoraInit>,
}

/// VeRA's λ_d starts here (the `peft` library's `d_initial`).
pub const VERA_D_INITIAL: f64 = 0.1;

/// The names of VeRA's shared frozen projections, as `peft` saves them (under `base_model.`).
pub const VERA_SHARED: [&str; 2] = ["vera_A", "vera_B"];

impl Lora {
    /// `s`: VeRA's vectors learn the scale themselves.
    pub fn scale(&self) -> f64 {
        match self.method {
            PeftMethod::Vera => 1.0,
            _ if self.rslora => self.alpha / (self.rank as f64).sqrt(),
            _ => self.alpha / self.rank as f64,
        }
    }

    fn adapts(&self, weight: &str) -> bool {
        self.targets.iter().any(|t| weight.ends_with(&format!(".{t}.weight")))
    }

    /// The rank and alpha of the adapter as written for `peft`: an adapter started from the
    /// weights is written as the LoRA of twice the rank it equals, alpha raised to keep its
    /// scale (`peft`'s conversion).
    pub fn written_rank_alpha(&self) -> (usize, f64) {
        match self.init {
            None => (self.rank, self.alpha),
            Some(_) if self.rslora => (2 * self.rank, self.alpha * 2f64.sqrt()),
            Some(_) => (2 * self.rank, 2.0 * self.alpha),
        }
    }
}

/// Where the starting `A₀` and `B₀` of an adapter started from the weights are kept, beside
/// the frozen weights, for the `peft` conversion.
fn initial_names(weight: &str) -> (String, String) {
    let (a, b) = lora_names(weight);
    (format!("{a}.initial"), format!("{b}.initial"))
}

/// `A₀` `[r, in]`, `B₀` `[out, r]` and the residual base `W − s·B₀·A₀` of weight `w`, as `peft`
/// computes them (in f64 here): PiSSA's `B₀ = U·√(Σ/s)`, `A₀ = √(Σ/s)·Vᵀ` from the top `r`
/// singular triplets; OLoRA's `B₀ = Q`, `A₀ = R` from the first `r` columns and rows of
/// `W = Q·R`. Singular vectors and QR columns are defined up to sign; `B₀·A₀` is not.
fn start_from_weight(init: LoraInit, w: &Tensor, r: usize, s: f64) -> Result<(Tensor, Tensor, Tensor)> {
    use nalgebra::DMatrix;
    let (out, input) = w.dims2()?;
    if r > out.min(input) {
        return Err(Error::Msg(format!(
            "{init} needs a rank of at most {}, the weight's smaller side",
            out.min(input)
        )));
    }
    let values = w.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let weight = DMatrix::from_row_slice(out, input, &values);
    let (b0, a0) = match init {
        LoraInit::Pissa => {
            // The top eigenpairs of the smaller Gram matrix give the singular triplets.
            let wide = out <= input;
            let gram = if wide { &weight * weight.transpose() } else { weight.transpose() * &weight };
            let eigen = nalgebra::SymmetricEigen::new(gram);
            let mut order: Vec<usize> = (0..eigen.eigenvalues.len()).collect();
            order.sort_by(|&i, &j| eigen.eigenvalues[j].total_cmp(&eigen.eigenvalues[i]));
            let mut left = DMatrix::zeros(out, r);
            let mut right = DMatrix::zeros(input, r);
            let mut sigma = Vec::with_capacity(r);
            for (k, &i) in order.iter().take(r).enumerate() {
                let value = eigen.eigenvalues[i].max(0.0).sqrt();
                let v = eigen.eigenvectors.column(i);
                let other = if wide { weight.transpose() * v } else { &weight * v } / value.max(f64::MIN_POSITIVE);
                let (u, v) = if wide { (v.into_owned(), other) } else { (other, v.into_owned()) };
                left.set_column(k, &u);
                right.set_column(k, &v);
                sigma.push((value / s).sqrt());
            }
            let root = DMatrix::from_diagonal(&nalgebra::DVector::from_vec(sigma));
            (&left * &root, &root * right.transpose())
        }
        LoraInit::Olora => {
            let qr = weight.clone().qr();
            (qr.q().columns(0, r).into_owned(), qr.r().rows(0, r).into_owned())
        }
    };
    let residual = &weight - (&b0 * &a0) * s;
    let tensor = |m: &DMatrix<f64>| -> Result<Tensor> {
        let rows: Vec<f32> = m.transpose().iter().map(|&x| x as f32).collect();
        Tensor::from_vec(rows, (m.nrows(), m.ncols()), w.device())
    };
    Ok((tensor(&a0)?, tensor(&b0)?, tensor(&residual)?))
}

/// The adapter matrices' names for the projection whose weight is `weight`.
pub fn lora_names(weight: &str) -> (String, String) {
    let stem = weight.trim_end_matches(".weight");
    (format!("{stem}.lora_A.weight"), format!("{stem}.lora_B.weight"))
}

/// DoRA's magnitude vector for the projection whose weight is `weight`, named as `peft` names it.
pub fn magnitude_name(weight: &str) -> String {
    format!("{}.lora_magnitude_vector", weight.trim_end_matches(".weight"))
}

/// The per-projection vectors of VeRA (`vera_lambda_d`, `vera_lambda_b`, as `peft` names them)
/// or Tied-LoRA (`tied_lora_u`, `tied_lora_v`): the one scaling `A`'s rows, then `B`'s.
fn vector_names(method: PeftMethod, weight: &str) -> (String, String) {
    let stem = weight.trim_end_matches(".weight");
    match method {
        PeftMethod::Vera => (format!("{stem}.vera_lambda_d"), format!("{stem}.vera_lambda_b")),
        _ => (format!("{stem}.tied_lora_u"), format!("{stem}.tied_lora_v")),
    }
}

/// Tied-LoRA's `A` and `B` shared by every projection of `weight`'s module.
fn tied_names(weight: &str) -> (String, String) {
    let module = weight.trim_end_matches(".weight").rsplit('.').next().unwrap_or_default();
    (format!("tied_lora.{module}.lora_A.weight"), format!("tied_lora.{module}.lora_B.weight"))
}

/// `n` values uniform in ±`bound` from the seeded stream.
fn uniform_values(rng: &mut rand_chacha::ChaCha8Rng, n: usize, bound: f64) -> Vec<f32> {
    (0..n).map(|_| ((uniform(rng) * 2.0 - 1.0) * bound) as f32).collect()
}

fn var(values: Vec<f32>, shape: &[usize], device: &Device) -> Result<Var> {
    Var::from_tensor(&Tensor::from_vec(values, shape, device)?)
}

impl Llama {
    /// The base weights `tensors`, frozen, with `peft`'s adapters on `peft.targets` in every
    /// layer, drawn from the seeded stream, so that training starts from exactly the base model;
    /// or, with `peft.from`, the LoRA or DoRA adapter it names.
    pub fn with_lora(
        config: &Config,
        tensors: Vec<(String, Tensor)>,
        peft: &Peft,
        seed: u64,
        device: &Device,
    ) -> Result<Llama> {
        let mut frozen = Llama::checked_frozen(config, tensors, device)?;
        let lora = Lora {
            method: peft.method,
            rank: peft.rank as usize,
            alpha: peft.alpha,
            dropout: peft.dropout,
            targets: peft.targets.clone(),
            relora: peft.relora.is_some(),
            rslora: peft.rslora,
            init: peft.init,
        };
        let r = lora.rank;
        let adapted: Vec<(String, usize, usize)> = config
            .layout()
            .into_iter()
            .filter(|(name, _, _)| lora.adapts(name))
            .map(|(name, shape, _)| (name, shape[0], shape[1]))
            .collect();
        let mut params = Vec::new();
        // LoRA+'s groups as `peft`'s `create_loraplus_optimizer` draws them: `B` and every
        // vector learn at the ratio's multiple of the learning rate.
        let ratio = peft.loraplus_lr_ratio.unwrap_or(1.0);
        let param = |name: String, var: Var, decay: bool| {
            let lr_factor = if name.contains("lora_B") || var.rank() == 1 { ratio } else { 1.0 };
            Param { name, var, decay, lr_factor }
        };
        match lora.method {
            PeftMethod::Lora | PeftMethod::Dora => {
                let mut start = match &peft.adapter {
                    Some((dir, _)) => Some(load_adapter(dir)?.into_iter().collect::<HashMap<_, _>>()),
                    None => None,
                };
                let mut rng = seeded(b"recipe lora init", seed);
                for (name, out, input) in &adapted {
                    let (a, b) = lora_names(name);
                    let magnitude = magnitude_name(name);
                    let (a_init, b_init, m_init) = match &mut start {
                        Some(tensors) => {
                            let mut take = |n: &str, shape: &[usize]| {
                                let t =
                                    tensors.remove(n).ok_or_else(|| Error::Msg(format!("the adapter has no {n}")))?;
                                if t.dims() != shape {
                                    let found = t.dims().to_vec();
                                    return Err(Error::Msg(format!(
                                        "the adapter's {n} is {found:?}, the model needs {shape:?}"
                                    )));
                                }
                                t.to_dtype(DType::F32)?.to_device(device)
                            };
                            let m = match lora.method {
                                PeftMethod::Dora => Some(take(&magnitude, &[*out])?),
                                _ => None,
                            };
                            (take(&a, &[r, *input])?, take(&b, &[*out, r])?, m)
                        }
                        None => match lora.init {
                            Some(init) => {
                                let (a0, b0, residual) = start_from_weight(init, &frozen[name], r, lora.scale())?;
                                let (a_initial, b_initial) = initial_names(name);
                                frozen.insert(name.clone(), residual);
                                frozen.insert(a_initial, a0.clone());
                                frozen.insert(b_initial, b0.clone());
                                (a0, b0, None)
                            }
                            None => {
                                let a_init = uniform_values(&mut rng, r * input, 1.0 / (*input as f64).sqrt());
                                let m = match lora.method {
                                    PeftMethod::Dora => Some(row_norms(&frozen[name])?),
                                    _ => None,
                                };
                                (
                                    Tensor::from_vec(a_init, (r, *input), device)?,
                                    Tensor::zeros((*out, r), DType::F32, device)?,
                                    m,
                                )
                            }
                        },
                    };
                    params.push(param(a, Var::from_tensor(&a_init)?, true));
                    params.push(param(b, Var::from_tensor(&b_init)?, true));
                    if let Some(m) = m_init {
                        params.push(param(magnitude, Var::from_tensor(&m)?, false));
                    }
                }
            }
            PeftMethod::Vera => {
                // Kaiming-uniform, as `peft` draws them: bound √(6 / fan_in).
                let mut rng = seeded(b"recipe vera projections", seed);
                let max_in = adapted.iter().map(|(_, _, i)| *i).max().unwrap_or(0);
                let max_out = adapted.iter().map(|(_, o, _)| *o).max().unwrap_or(0);
                let a = uniform_values(&mut rng, r * max_in, (6.0 / max_in as f64).sqrt());
                let b = uniform_values(&mut rng, max_out * r, (6.0 / r as f64).sqrt());
                frozen.insert(VERA_SHARED[0].into(), Tensor::from_vec(a, (r, max_in), device)?);
                frozen.insert(VERA_SHARED[1].into(), Tensor::from_vec(b, (max_out, r), device)?);
                for (name, out, _) in &adapted {
                    let (d, b) = vector_names(lora.method, name);
                    params.push(param(d, var(vec![VERA_D_INITIAL as f32; r], &[r], device)?, false));
                    params.push(param(b, Var::from_tensor(&Tensor::zeros(*out, DType::F32, device)?)?, false));
                }
            }
            PeftMethod::TiedLora => {
                let mut rng = seeded(b"recipe tied-lora init", seed);
                for (name, out, input) in &adapted {
                    let (a, b) = tied_names(name);
                    if !params.iter().any(|p| p.name == a) {
                        let a_init = uniform_values(&mut rng, r * input, 1.0 / (*input as f64).sqrt());
                        params.push(param(a, var(a_init, &[r, *input], device)?, true));
                        let zeros = Tensor::zeros((*out, r), DType::F32, device)?;
                        params.push(param(b, Var::from_tensor(&zeros)?, true));
                    }
                    let (u, v) = vector_names(lora.method, name);
                    params.push(param(u, var(vec![1.0; r], &[r], device)?, false));
                    params.push(param(v, var(vec![1.0; *out], &[*out], device)?, false));
                }
            }
        }
        Llama::assemble(config, params, frozen, Some(lora), device, crate::Dtypes::F32)
    }

    fn param_tensor(&self, name: &str) -> Option<&Tensor> {
        self.params.iter().find(|p| p.name == name).map(|p| p.var.as_tensor())
    }

    /// DoRA's magnitude of the projection whose weight is `weight`.
    pub(crate) fn magnitude(&self, weight: &str) -> Option<&Tensor> {
        self.param_tensor(&magnitude_name(weight))
    }

    /// `A'` and `B'` of the projection whose weight is `weight`, when it is adapted, in the
    /// adapters' dtype: its update is `scale · B'·A'`.
    pub(crate) fn adapter(&self, weight: &str) -> Result<Option<(Tensor, Tensor)>> {
        let Some(lora) = self.lora.as_ref().filter(|l| l.adapts(weight)) else { return Ok(None) };
        let scaled_rows = |m: &Tensor, by: &Tensor| m.to_dtype(by.dtype())?.broadcast_mul(&by.unsqueeze(1)?);
        match lora.method {
            PeftMethod::Lora | PeftMethod::Dora => {
                let (a, b) = lora_names(weight);
                Ok(self.param_tensor(&a).zip(self.param_tensor(&b)).map(|(a, b)| (a.clone(), b.clone())))
            }
            PeftMethod::Vera => {
                let (d, b) = vector_names(lora.method, weight);
                let (Some(d), Some(b)) = (self.param_tensor(&d), self.param_tensor(&b)) else { return Ok(None) };
                let (out, input) = self.stored(weight).dims2()?;
                let a_shared = self.frozen[VERA_SHARED[0]].narrow(1, 0, input)?;
                let b_shared = self.frozen[VERA_SHARED[1]].narrow(0, 0, out)?;
                Ok(Some((scaled_rows(&a_shared, d)?, scaled_rows(&b_shared, b)?)))
            }
            PeftMethod::TiedLora => {
                let ((a, b), (u, v)) = (tied_names(weight), vector_names(lora.method, weight));
                let (Some(a), Some(b), Some(u), Some(v)) =
                    (self.param_tensor(&a), self.param_tensor(&b), self.param_tensor(&u), self.param_tensor(&v))
                else {
                    return Ok(None);
                };
                Ok(Some((scaled_rows(a, u)?, scaled_rows(b, v)?)))
            }
        }
    }

    /// The adapter as the `peft` library stores it: tensors named as in the model (to go under
    /// `base_model.model.`) and tensors shared by the whole model (under `base_model.`). LoRA
    /// and DoRA are their parameters; VeRA its vectors and its shared projections; Tied-LoRA,
    /// which `peft` does not know, is written exactly as the LoRA adapter it equals, `A'` and
    /// `B'` per projection.
    pub fn adapter_tensors(&self) -> Result<AdapterTensors> {
        let Some(lora) = &self.lora else { return Ok(AdapterTensors::default()) };
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        let named = |named| AdapterTensors { named, shared: Vec::new() };
        match lora.method {
            PeftMethod::Lora | PeftMethod::Dora if lora.init.is_none() => Ok(named(self.trainable_tensors())),
            PeftMethod::Lora | PeftMethod::Dora => {
                // ΔW = s·(B·A − B₀·A₀) = s·[B, −B₀]·[A; A₀], at twice the rank.
                let mut out = Vec::new();
                for (name, _, _) in self.config.layout() {
                    let Some((a, b)) = self.adapter(&name)? else { continue };
                    let (a0, b0) = initial_names(&name);
                    let (a0, b0) = (f32(&self.frozen[&a0])?, f32(&self.frozen[&b0])?);
                    let (a_name, b_name) = lora_names(&name);
                    out.push((a_name, Tensor::cat(&[&f32(&a)?, &a0], 0)?));
                    out.push((b_name, Tensor::cat(&[&f32(&b)?, &b0.neg()?], 1)?));
                }
                Ok(named(out))
            }
            PeftMethod::Vera => {
                let shared = VERA_SHARED.iter().map(|n| Ok((n.to_string(), f32(&self.frozen[*n])?)));
                Ok(AdapterTensors { named: self.trainable_tensors(), shared: shared.collect::<Result<_>>()? })
            }
            PeftMethod::TiedLora => {
                let mut out = Vec::new();
                for (name, _, _) in self.config.layout() {
                    if let Some((a, b)) = self.adapter(&name)? {
                        let (a_name, b_name) = lora_names(&name);
                        out.push((a_name, f32(&a)?));
                        out.push((b_name, f32(&b)?));
                    }
                }
                Ok(named(out))
            }
        }
    }
}

/// An adapter's tensors as the `peft` library saves them.
#[derive(Default)]
pub struct AdapterTensors {
    /// Named as in the model (saved under `base_model.model.`).
    pub named: Vec<(String, Tensor)>,
    /// Shared by the whole model (saved under `base_model.`).
    pub shared: Vec<(String, Tensor)>,
}

/// The prefix of ReLoRA's merged base weights in a training checkpoint.
const RELORA_BASE: &str = "relora_base.";

impl Llama {
    /// ReLoRA's restart: each adapter's update merged into its base weight (in f32, stored back
    /// in the base's dtype), `A` drawn afresh from the stream of (`seed`, `restart`) and `B`
    /// zeroed, so the model computes what it did before. Returns the names of the adapters'
    /// parameters, whose optimizer state the caller resets.
    pub fn restart_adapters(&mut self, seed: u64, restart: u64) -> Result<Vec<String>> {
        let Some(lora) = self.lora.clone() else { return Ok(Vec::new()) };
        let mut rng = seeded(format!("recipe relora restart {restart}").as_bytes(), seed);
        let mut reset = Vec::new();
        for (name, _, _) in self.config.layout().into_iter().filter(|(n, _, _)| lora.adapts(n)) {
            let (a_name, b_name) = lora_names(&name);
            let (Some(a), Some(b)) = (self.param_var(&a_name), self.param_var(&b_name)) else { continue };
            let base = &self.frozen[&name];
            let update = (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * lora.scale())?;
            let merged = (base.to_dtype(DType::F32)? + update)?.to_dtype(base.dtype())?.detach();
            let (r, input) = a.dims2()?;
            let fresh = uniform_values(&mut rng, r * input, 1.0 / (input as f64).sqrt());
            a.set(&Tensor::from_vec(fresh, (r, input), a.device())?.to_dtype(a.dtype())?)?;
            b.set(&b.zeros_like()?)?;
            self.frozen.insert(name, merged);
            reset.extend([a_name, b_name]);
        }
        Ok(reset)
    }

    fn param_var(&self, name: &str) -> Option<Var> {
        self.params.iter().find(|p| p.name == name).map(|p| p.var.clone())
    }

    /// ReLoRA's base weights, which restarts change, for a training checkpoint (none without
    /// ReLoRA: there the base weights are the stage's starting weights).
    pub fn merged_bases(&self) -> Vec<(String, Tensor)> {
        let Some(lora) = self.lora.as_ref().filter(|l| l.relora) else { return Vec::new() };
        let adapted = self.config.layout().into_iter().filter(|(n, _, _)| lora.adapts(n));
        adapted.map(|(name, _, _)| (format!("{RELORA_BASE}{name}"), self.frozen[&name].clone())).collect()
    }

    /// Put back the base weights [`Llama::merged_bases`] saved.
    pub fn restore_bases(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (name, _) in self.merged_bases() {
            let saved =
                tensors.get(&name).ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {name}")))?;
            let weight = name.trim_start_matches(RELORA_BASE).to_string();
            let dtype = self.frozen[&weight].dtype();
            self.frozen.insert(weight, saved.to_dtype(dtype)?.detach());
        }
        Ok(())
    }
}
