//! The optimizers: AdamW with decoupled weight decay, or Muon on the blocks' projection
//! matrices with AdamW on every other parameter; global-norm gradient clipping; a state that
//! saves and restores exactly.
//!
//! AdamW's moments are f32 tensors on the parameters' device whatever the weights' dtype; each
//! parameter is updated in place by the fused `adamw_step` of `recipe-kernels`, so no weight or
//! gradient is copied to the host. Candle's AdamW would run about twelve tensor ops per
//! parameter, keep moments in the weights' dtype and cannot save its state (CANDLE.md).
//!
//! Muon keeps one f32 momentum buffer per matrix; its update is that momentum (Nesterov's by
//! default) made nearly orthogonal by five steps of a quintic Newton–Schulz iteration, as
//! `torch.optim.Muon` computes it (in f32 here, where PyTorch uses bf16), and scaled by the
//! matrix's shape. Its matrix products are the device's, in a fixed order, so it is as
//! deterministic as the rest of the step.

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor, Var};
use recipe_kernels::{AdamWStep, adamw_moments, adamw_step};
use recipe_model::Param;
use recipe_spec::{Muon, MuonScale, Optim};

pub struct Optimizer {
    pub config: Optim,
    /// AdamW's, per parameter, by name: `[2, n]` f32, the first moment then the second.
    pub moments: HashMap<String, Var>,
    /// Muon's momentum buffers, per matrix, by name: f32, the matrix's shape.
    pub momenta: HashMap<String, Var>,
    /// Optimizer steps taken (for bias correction).
    pub t: u64,
}

/// The Newton–Schulz iteration's coefficients (Keller Jordan's, as `torch.optim.Muon` has
/// them): `X ← a·X + (b·A + c·A²)·X` with `A = X·Xᵀ`.
const NEWTON_SCHULZ: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

impl Optimizer {
    pub fn new(config: &Optim) -> Optimizer {
        Optimizer { config: config.clone(), moments: HashMap::new(), momenta: HashMap::new(), t: 0 }
    }

    /// One optimizer step over every parameter at learning rate `lr`; each gradient is first
    /// multiplied by `grad_scale` (clipping, and a loss scaler's unscaling).
    pub fn step(&mut self, params: &[Param], grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        self.t += 1;
        let [beta1, beta2] = self.config.betas;
        // Beside Muon, AdamW's own peak, on the same schedule.
        let adamw_lr = match self.config.muon.as_ref().and_then(|m| m.adamw_lr) {
            Some(peak) => lr * peak / self.config.lr,
            None => lr,
        };
        for (p, g) in params.iter().zip(grads) {
            let (lr, adamw_lr) = (lr * p.lr_factor, adamw_lr * p.lr_factor);
            let weight_decay = if p.decay { self.config.weight_decay } else { 0.0 };
            if let Some(muon) = self.config.muon.as_ref().filter(|_| Muon::updates(&p.name)) {
                if !self.momenta.contains_key(&p.name) {
                    let zeros = Tensor::zeros(p.var.shape(), DType::F32, p.var.device())?;
                    self.momenta.insert(p.name.clone(), Var::from_tensor(&zeros)?);
                }
                muon_step(&p.var, g, &self.momenta[&p.name], muon, lr, weight_decay, grad_scale)?;
                continue;
            }
            if !self.moments.contains_key(&p.name) {
                self.moments.insert(p.name.clone(), adamw_moments(&p.var)?);
            }
            let step =
                AdamWStep { lr: adamw_lr, beta1, beta2, eps: self.config.eps, weight_decay, t: self.t, grad_scale };
            adamw_step(&p.var, g, &self.moments[&p.name], &step)?;
        }
        Ok(())
    }

    /// Zero the state of the parameters `names` but for the largest `1 − share` of their first
    /// moments by magnitude, each kept with its second moment: ReLoRA's partial reset. Pruning
    /// the two moments apart would keep first moments whose second moment is gone, and a step
    /// with a zero gradient (a fresh adapter's `A`) would then divide them by `eps`.
    pub fn prune(&mut self, names: &[String], share: f64) -> Result<()> {
        for name in names {
            let Some(mv) = self.moments.get(name) else { continue };
            let (mut m, mut v) = (mv.get(0)?.to_vec1::<f32>()?, mv.get(1)?.to_vec1::<f32>()?);
            let cut = ((m.len() as f64 * share).floor() as usize).min(m.len());
            if cut > 0 {
                let mut magnitudes: Vec<f32> = m.iter().map(|x| x.abs()).collect();
                let (_, threshold, _) = magnitudes.select_nth_unstable_by(cut - 1, f32::total_cmp);
                let threshold = *threshold;
                for (m, v) in m.iter_mut().zip(v.iter_mut()).filter(|(m, _)| m.abs() <= threshold) {
                    (*m, *v) = (0.0, 0.0);
                }
            }
            let n = m.len();
            mv.set(&Tensor::stack(&[Tensor::from_vec(m, n, mv.device())?, Tensor::from_vec(v, n, mv.device())?], 0)?)?;
        }
        Ok(())
    }

    /// The state as named tensors for a checkpoint: AdamW's moments `m.NAME` and `v.NAME`,
    /// Muon's momenta `momentum.NAME`.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (name, mv) in &self.moments {
            out.push((format!("m.{name}"), mv.get(0)?));
            out.push((format!("v.{name}"), mv.get(1)?));
        }
        for (name, buffer) in &self.momenta {
            out.push((format!("momentum.{name}"), buffer.as_tensor().clone()));
        }
        Ok(out)
    }

    pub fn restore(&mut self, t: u64, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.t = t;
        self.moments.clear();
        self.momenta.clear();
        for (key, m) in tensors {
            if let Some(name) = key.strip_prefix("m.") {
                let v = tensors
                    .get(&format!("v.{name}"))
                    .ok_or_else(|| candle_core::Error::Msg(format!("optimizer state lacks v.{name}")))?;
                self.moments.insert(name.to_string(), Var::from_tensor(&Tensor::stack(&[m, v], 0)?)?);
            } else if let Some(name) = key.strip_prefix("momentum.") {
                self.momenta.insert(name.to_string(), Var::from_tensor(m)?);
            }
        }
        Ok(())
    }
}

/// One Muon step of the matrix `w` with gradient `g` (times `grad_scale`) and momentum buffer
/// `buffer`: `buffer ← μ·buffer + (1 − μ)·g`; the update `(1 − μ)·g + μ·buffer` (Nesterov) or
/// `buffer`, orthogonalised; `w ← (1 − lr·λ)·w − lr·scale·update`.
fn muon_step(
    w: &Var,
    g: &Tensor,
    buffer: &Var,
    muon: &Muon,
    lr: f64,
    weight_decay: f64,
    grad_scale: f64,
) -> Result<()> {
    let mu = muon.momentum;
    let g = (g.to_dtype(DType::F32)? * grad_scale)?;
    let momentum = ((buffer.as_tensor() * mu)? + (&g * (1.0 - mu))?)?;
    buffer.set(&momentum)?;
    let direction = if muon.nesterov { ((&g * (1.0 - mu))? + (&momentum * mu)?)? } else { momentum };
    let update = orthogonalised(&direction, muon.ns_steps)?;
    let (rows, cols) = w.dims2()?;
    let scale = match muon.adjust_lr {
        MuonScale::MatchRmsAdamw => 0.2 * (rows.max(cols) as f64).sqrt(),
        MuonScale::Original => (rows as f64 / cols as f64).max(1.0).sqrt(),
    };
    let decayed = (w.as_tensor().to_dtype(DType::F32)? * (1.0 - lr * weight_decay))?;
    w.set(&(decayed - (update * (lr * scale))?)?.to_dtype(w.dtype())?)
}

/// `g` made nearly orthogonal — about `U·Vᵀ` of its SVD `U·S·Vᵀ`, each singular value sent
/// into roughly [0.7, 1.2] — by `steps` quintic Newton–Schulz iterations on `g / ‖g‖_F`, on
/// the wide side (`Xᵀ` of a tall matrix, so `X·Xᵀ` is the smaller square).
pub fn orthogonalised(g: &Tensor, steps: u32) -> Result<Tensor> {
    let (rows, cols) = g.dims2()?;
    let tall = rows > cols;
    let x = if tall { g.t()?.contiguous()? } else { g.clone() };
    let norm = x.sqr()?.sum_all()?.sqrt()?.maximum(1e-7)?;
    let mut x = x.broadcast_div(&norm)?;
    let (a, b, c) = NEWTON_SCHULZ;
    for _ in 0..steps {
        let gram = x.matmul(&x.t()?)?;
        let polynomial = ((&gram * b)? + (gram.matmul(&gram)? * c)?)?;
        x = ((&x * a)? + polynomial.matmul(&x)?)?;
    }
    if tall { x.t()?.contiguous() } else { Ok(x) }
}

/// The factor that scales gradients of global norm `norm` down to `max_norm`: 1 when the
/// norm is within it or `max_norm` is 0 (no clipping).
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm { max_norm / (norm + 1e-6) } else { 1.0 }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn optim() -> Optim {
        Optim { betas: [0.9, 0.999], weight_decay: 0.5, ..Optim::adamw(0.1) }
    }

    /// The textbook update, in f64, written the long way.
    fn reference(p: f64, grads: &[f64], o: &Optim, decay: bool) -> f64 {
        let (mut p, mut m, mut v) = (p, 0.0, 0.0);
        for (t, g) in grads.iter().enumerate() {
            let t = (t + 1) as i32;
            m = o.betas[0] * m + (1.0 - o.betas[0]) * g;
            v = o.betas[1] * v + (1.0 - o.betas[1]) * g * g;
            let m_hat = m / (1.0 - o.betas[0].powi(t));
            let v_hat = v / (1.0 - o.betas[1].powi(t));
            if decay {
                p -= o.lr * o.weight_decay * p;
            }
            p -= o.lr * m_hat / (v_hat.sqrt() + o.eps);
        }
        p
    }

    /// With and without decay, and at a parameter's own multiple of the learning rate (LoRA+'s
    /// `B`), which scales the decay too, as a `torch` parameter group's `lr` does.
    #[test]
    fn matches_the_textbook_update_with_and_without_decay() {
        let grads = [0.3, -1.2, 0.05, 2.0, -0.7];
        for (decay, lr_factor) in [(true, 1.0), (false, 1.0), (true, 4.0)] {
            let mut opt = Optimizer::new(&optim());
            let var = Var::from_slice(&[1.5f32], 1, &Device::Cpu).unwrap();
            let params = [Param { name: "w".into(), var, decay, lr_factor }];
            for g in grads {
                let g = Tensor::from_slice(&[g as f32], 1, &Device::Cpu).unwrap();
                opt.step(&params, &[g], 0.1, 1.0).unwrap();
            }
            let expected = reference(1.5, &grads, &Optim { lr: 0.1 * lr_factor, ..optim() }, decay);
            let got = params[0].var.to_vec1::<f32>().unwrap()[0] as f64;
            assert!((got - expected).abs() < 1e-5, "decay {decay}, lr × {lr_factor}: {got} vs {expected}");
        }
    }

    fn muon_optim(nesterov: bool, adjust_lr: MuonScale) -> Optim {
        let muon = Muon { momentum: 0.9, nesterov, ns_steps: 5, adjust_lr, adamw_lr: None };
        Optim { kind: "muon".into(), muon: Some(muon), ..optim() }
    }

    /// `a · b` of row-major matrices `[n, k]` and `[k, m]`.
    fn product(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
        (0..n * m).map(|i| (0..k).map(|j| a[i / m * k + j] * b[j * m + i % m]).sum()).collect()
    }

    fn transposed(a: &[f64], n: usize, m: usize) -> Vec<f64> {
        (0..n * m).map(|i| a[(i % n) * m + i / n]).collect()
    }

    /// Muon as `torch.optim.Muon` writes it, in f64, the long way: momentum, Nesterov, the
    /// quintic Newton–Schulz iteration on the wide side, the shape's scale, decoupled decay.
    fn muon_reference(w: &[f64], grads: &[Vec<f64>], (n, m): (usize, usize), o: &Optim) -> Vec<f64> {
        let muon = o.muon.as_ref().unwrap();
        let (mut w, mut buffer) = (w.to_vec(), vec![0.0; n * m]);
        for g in grads {
            for (b, g) in buffer.iter_mut().zip(g) {
                *b = muon.momentum * *b + (1.0 - muon.momentum) * g;
            }
            let direction: Vec<f64> = match muon.nesterov {
                true => g.iter().zip(&buffer).map(|(g, b)| (1.0 - muon.momentum) * g + muon.momentum * b).collect(),
                false => buffer.clone(),
            };
            let tall = n > m;
            let (r, c) = if tall { (m, n) } else { (n, m) };
            let mut x = if tall { transposed(&direction, n, m) } else { direction };
            let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-7);
            x.iter_mut().for_each(|v| *v /= norm);
            let (a, b, c2) = NEWTON_SCHULZ;
            for _ in 0..muon.ns_steps {
                let gram = product(&x, &transposed(&x, r, c), r, c, r);
                let square = product(&gram, &gram, r, r, r);
                let poly: Vec<f64> = gram.iter().zip(&square).map(|(g, s)| b * g + c2 * s).collect();
                let px = product(&poly, &x, r, r, c);
                x = x.iter().zip(&px).map(|(x, p)| a * x + p).collect();
            }
            let update = if tall { transposed(&x, m, n) } else { x };
            let scale = match muon.adjust_lr {
                MuonScale::MatchRmsAdamw => 0.2 * (n.max(m) as f64).sqrt(),
                MuonScale::Original => (n as f64 / m as f64).max(1.0).sqrt(),
            };
            for (w, u) in w.iter_mut().zip(&update) {
                *w = *w * (1.0 - o.lr * o.weight_decay) - o.lr * scale * u;
            }
        }
        w
    }

    #[test]
    fn muon_matches_the_long_way_on_tall_and_wide_matrices() {
        let value = |i: usize, salt: f64| ((i as f64 * 0.7 + salt).sin() * 1.3) as f32 as f64;
        for (n, m) in [(6, 4), (3, 5)] {
            for (nesterov, adjust) in [(true, MuonScale::MatchRmsAdamw), (false, MuonScale::Original)] {
                let o = muon_optim(nesterov, adjust);
                let w0: Vec<f64> = (0..n * m).map(|i| value(i, 0.1)).collect();
                let grads: Vec<Vec<f64>> =
                    (0..3).map(|s| (0..n * m).map(|i| value(i, 1.0 + s as f64)).collect()).collect();
                let as_f32 = |v: &[f64]| Tensor::from_vec(v.iter().map(|x| *x as f32).collect(), (n, m), &Device::Cpu);
                let name = "model.layers.0.self_attn.q_proj.weight";
                let params = [Param {
                    name: name.into(),
                    var: Var::from_tensor(&as_f32(&w0).unwrap()).unwrap(),
                    decay: true,
                    lr_factor: 1.0,
                }];
                let mut opt = Optimizer::new(&o);
                for g in &grads {
                    opt.step(&params, &[as_f32(g).unwrap()], o.lr, 1.0).unwrap();
                }
                let got = params[0].var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let want = muon_reference(&w0, &grads, (n, m), &o);
                let worst = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
                assert!(worst < 1e-5, "{n}×{m}, nesterov {nesterov}: off by {worst}");
                assert!(opt.moments.is_empty(), "Muon's matrices take no AdamW moments");
            }
        }
    }

    /// Beside Muon, AdamW's parameters take `adamw_lr` where it is given, on the same schedule.
    #[test]
    fn adamw_parameters_beside_muon_take_their_own_peak() {
        let grads = [0.3, -1.2, 0.05];
        let mut o = muon_optim(true, MuonScale::Original);
        o.muon.as_mut().unwrap().adamw_lr = Some(0.3);
        let mut opt = Optimizer::new(&o);
        let params = [Param {
            name: "model.norm.weight".into(),
            var: Var::from_slice(&[1.5f32], 1, &Device::Cpu).unwrap(),
            decay: true,
            lr_factor: 1.0,
        }];
        // Half way down the schedule: the stage's lr 0.1 at 0.05, so AdamW's 0.3 at 0.15.
        for g in grads {
            opt.step(&params, &[Tensor::from_slice(&[g as f32], 1, &Device::Cpu).unwrap()], 0.05, 1.0).unwrap();
        }
        let expected = reference(1.5, &grads, &Optim { lr: 0.15, ..optim() }, true);
        let got = params[0].var.to_vec1::<f32>().unwrap()[0] as f64;
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
    }

    /// Muon on the blocks' projections, AdamW on the rest, and a checkpoint in between
    /// continues bit for bit.
    #[test]
    fn muon_state_restores_exactly() {
        let o = muon_optim(true, MuonScale::MatchRmsAdamw);
        let params = || {
            let t = |n: usize, salt: f32| {
                let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37 + salt).cos()).collect();
                Var::from_vec(values, n, &Device::Cpu).unwrap()
            };
            [
                Param {
                    name: "model.layers.0.mlp.up_proj.weight".into(),
                    var: Var::from_tensor(&t(12, 0.0).reshape((4, 3)).unwrap()).unwrap(),
                    decay: true,
                    lr_factor: 1.0,
                },
                Param { name: "model.norm.weight".into(), var: t(3, 1.0), decay: false, lr_factor: 1.0 },
            ]
        };
        let grad = |s: usize| {
            [
                Tensor::from_vec((0..12).map(|i| ((i + s) as f32).sin()).collect(), (4, 3), &Device::Cpu).unwrap(),
                Tensor::from_vec((0..3).map(|i| ((i * s) as f32).cos()).collect(), 3, &Device::Cpu).unwrap(),
            ]
        };
        let (straight, resumed) = (params(), params());
        let mut a = Optimizer::new(&o);
        for s in 0..5 {
            a.step(&straight, &grad(s), 0.05, 0.5).unwrap();
        }
        let mut b = Optimizer::new(&o);
        for s in 0..3 {
            b.step(&resumed, &grad(s), 0.05, 0.5).unwrap();
        }
        let saved: HashMap<String, Tensor> =
            b.state_tensors().unwrap().into_iter().map(|(n, t)| (n, t.copy().unwrap())).collect();
        assert!(
            saved.contains_key("momentum.model.layers.0.mlp.up_proj.weight")
                && saved.contains_key("m.model.norm.weight")
        );
        let mut c = Optimizer::new(&o);
        c.restore(b.t, &saved).unwrap();
        for s in 3..5 {
            c.step(&resumed, &grad(s), 0.05, 0.5).unwrap();
        }
        for (x, y) in straight.iter().zip(&resumed) {
            let bits = |p: &Param| {
                p.var.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            assert_eq!(bits(x), bits(y), "{}", x.name);
        }
    }

    #[test]
    fn pruning_keeps_the_largest_first_moments_with_their_second_moments() {
        let mut opt = Optimizer::new(&optim());
        let m = [1.0f32, -5.0, 0.1, 3.0];
        let v = [0.5f32, 0.25, 9.0, 0.75];
        let state = Tensor::stack(&[Tensor::new(&m, &Device::Cpu).unwrap(), Tensor::new(&v, &Device::Cpu).unwrap()], 0);
        opt.moments.insert("w".into(), Var::from_tensor(&state.unwrap()).unwrap());
        opt.prune(&["w".into(), "absent".into()], 0.5).unwrap();
        let kept = opt.moments["w"].to_vec2::<f32>().unwrap();
        assert_eq!(kept, [vec![0.0, -5.0, 0.0, 3.0], vec![0.0, 0.25, 0.0, 0.75]]);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        assert!((clip_factor(5.0, 1.0) * 5.0 - 1.0).abs() < 1e-6);
        assert_eq!(clip_factor(0.3, 1.0), 1.0);
        assert_eq!(clip_factor(7.0, 0.0), 1.0);
    }
}
