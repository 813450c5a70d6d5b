//! AdamW with decoupled weight decay, global-norm gradient clipping, and a state that saves and
//! restores exactly. Moments are f32 tensors on the parameters' device whatever the weights'
//! dtype; each parameter is updated in place by the fused `adamw_step` of `recipe-kernels`, so
//! no weight or gradient is copied to the host. Candle's AdamW would run about twelve tensor
//! ops per parameter, keep moments in the weights' dtype and cannot save its state (CANDLE.md).

use std::collections::HashMap;

use candle_core::{Result, Tensor, Var};
use recipe_kernels::{AdamWStep, adamw_moments, adamw_step};
use recipe_model::Param;
use recipe_spec::Optim;

pub struct AdamW {
    pub config: Optim,
    /// Per parameter, by name: `[2, n]` f32, the first moment then the second.
    pub moments: HashMap<String, Var>,
    /// Optimizer steps taken (for bias correction).
    pub t: u64,
}

impl AdamW {
    pub fn new(config: &Optim) -> AdamW {
        AdamW { config: config.clone(), moments: HashMap::new(), t: 0 }
    }

    /// One optimizer step over every parameter at learning rate `lr`; each gradient is first
    /// multiplied by `grad_scale` (clipping, and a loss scaler's unscaling).
    pub fn step(&mut self, params: &[Param], grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        self.t += 1;
        let [beta1, beta2] = self.config.betas;
        for (p, g) in params.iter().zip(grads) {
            if !self.moments.contains_key(&p.name) {
                self.moments.insert(p.name.clone(), adamw_moments(&p.var)?);
            }
            let step = AdamWStep {
                lr,
                beta1,
                beta2,
                eps: self.config.eps,
                weight_decay: if p.decay { self.config.weight_decay } else { 0.0 },
                t: self.t,
                grad_scale,
            };
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

    /// The moments as named tensors `m.NAME` and `v.NAME`, for a checkpoint.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (name, mv) in &self.moments {
            out.push((format!("m.{name}"), mv.get(0)?));
            out.push((format!("v.{name}"), mv.get(1)?));
        }
        Ok(out)
    }

    pub fn restore(&mut self, t: u64, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.t = t;
        self.moments.clear();
        for (key, m) in tensors {
            if let Some(name) = key.strip_prefix("m.") {
                let v = tensors
                    .get(&format!("v.{name}"))
                    .ok_or_else(|| candle_core::Error::Msg(format!("optimizer state lacks v.{name}")))?;
                self.moments.insert(name.to_string(), Var::from_tensor(&Tensor::stack(&[m, v], 0)?)?);
            }
        }
        Ok(())
    }
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
        Optim { kind: "adamw".into(), lr: 0.1, betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.5, grad_clip: 1.0 }
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

    #[test]
    fn matches_the_textbook_update_with_and_without_decay() {
        let grads = [0.3, -1.2, 0.05, 2.0, -0.7];
        for decay in [true, false] {
            let mut opt = AdamW::new(&optim());
            let var = Var::from_slice(&[1.5f32], 1, &Device::Cpu).unwrap();
            let params = [Param { name: "w".into(), var, decay }];
            for g in grads {
                let g = Tensor::from_slice(&[g as f32], 1, &Device::Cpu).unwrap();
                opt.step(&params, &[g], 0.1, 1.0).unwrap();
            }
            let expected = reference(1.5, &grads, &optim(), decay);
            let got = params[0].var.to_vec1::<f32>().unwrap()[0] as f64;
            assert!((got - expected).abs() < 1e-5, "decay {decay}: {got} vs {expected}");
        }
    }

    #[test]
    fn pruning_keeps_the_largest_first_moments_with_their_second_moments() {
        let mut opt = AdamW::new(&optim());
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
