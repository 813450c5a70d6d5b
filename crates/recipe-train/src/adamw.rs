//! AdamW with decoupled weight decay and f32 moments, global-norm gradient clipping, and a
//! state that saves and restores exactly. The update runs over host buffers, one pass per
//! parameter: Candle's AdamW would run about twelve tensor ops per parameter and cannot save
//! its state (CANDLE.md).

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{Device, Result, Tensor};
use recipe_spec::Optim;

/// One parameter's moments.
pub struct Moments {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

/// One parameter as the optimizer sees it: its weights on the host, and whether it decays.
pub struct Slot<'a> {
    pub name: &'a str,
    pub weights: &'a mut [f32],
    pub grad: &'a [f32],
    pub decay: bool,
}

pub struct AdamW {
    pub config: Optim,
    /// Per parameter, by name.
    pub moments: HashMap<String, Moments>,
    /// Optimizer steps taken (for bias correction).
    pub t: u64,
}

impl AdamW {
    pub fn new(config: &Optim) -> AdamW {
        AdamW { config: config.clone(), moments: HashMap::new(), t: 0 }
    }

    /// One optimizer step over every parameter at learning rate `lr`, the parameters spread
    /// over Candle's worker threads.
    pub fn step(&mut self, slots: Vec<Slot>, lr: f64) {
        self.t += 1;
        for s in &slots {
            let n = s.weights.len();
            self.moments.entry(s.name.to_string()).or_insert_with(|| Moments { m: vec![0.0; n], v: vec![0.0; n] });
        }
        let mut by_name: HashMap<&str, &mut Moments> = self.moments.iter_mut().map(|(k, v)| (k.as_str(), v)).collect();
        let work: Vec<Mutex<(Slot, &mut Moments)>> = slots
            .into_iter()
            .map(|s| {
                let m = by_name.remove(s.name).expect("inserted above; names are unique");
                Mutex::new((s, m))
            })
            .collect();
        let (config, t) = (&self.config, self.t);
        recipe_kernels::parallel_for(work.len(), |i| {
            let mut guard = work[i].lock().expect("each item is taken once");
            let (s, m) = &mut *guard;
            update(config, t, s.weights, s.grad, m, lr, s.decay);
        });
    }

    /// The moments as named tensors, for a checkpoint.
    pub fn state_tensors(&self, device: &Device) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (name, st) in &self.moments {
            out.push((format!("m.{name}"), Tensor::from_slice(&st.m, st.m.len(), device)?));
            out.push((format!("v.{name}"), Tensor::from_slice(&st.v, st.v.len(), device)?));
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
                self.moments.insert(name.to_string(), Moments { m: m.to_vec1()?, v: v.to_vec1()? });
            }
        }
        Ok(())
    }
}

/// The AdamW update of one parameter at step `t` (1-based), in place, in one pass.
fn update(config: &Optim, t: u64, param: &mut [f32], grad: &[f32], st: &mut Moments, lr: f64, decay: bool) {
    let [b1, b2] = config.betas;
    let (bc1, bc2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
    let step = (lr / bc1) as f32;
    let inv_bc2_sqrt = (1.0 / bc2.sqrt()) as f32;
    let (b1, b2, eps) = (b1 as f32, b2 as f32, config.eps as f32);
    let wd = if decay { (lr * config.weight_decay) as f32 } else { 0.0 };
    for (((p, g), m), v) in param.iter_mut().zip(grad).zip(st.m.iter_mut()).zip(st.v.iter_mut()) {
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        *p -= wd * *p + step * *m / (v.sqrt() * inv_bc2_sqrt + eps);
    }
}

/// The global L2 norm of all gradients; scales them down to `max_norm` when above it (and
/// `max_norm` > 0). Returns the norm before clipping.
pub fn clip_global_norm(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    let norm = grads.iter().flatten().map(|g| (*g as f64) * (*g as f64)).sum::<f64>().sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = (max_norm / (norm + 1e-6)) as f32;
        grads.iter_mut().flatten().for_each(|g| *g *= scale);
    }
    norm
}

#[cfg(test)]
mod tests {
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
            let mut p = [1.5f32];
            for g in grads {
                opt.step(vec![Slot { name: "w", weights: &mut p, grad: &[g as f32], decay }], 0.1);
            }
            let expected = reference(1.5, &grads, &optim(), decay);
            assert!((p[0] as f64 - expected).abs() < 1e-5, "decay {decay}: {} vs {expected}", p[0]);
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = vec![vec![3.0f32], vec![4.0]];
        assert_eq!(clip_global_norm(&mut g, 1.0), 5.0);
        let after = (g[0][0] * g[0][0] + g[1][0] * g[1][0]).sqrt();
        assert!((after - 1.0).abs() < 1e-5);
        let mut g = vec![vec![0.3f32]];
        clip_global_norm(&mut g, 1.0);
        assert_eq!(g[0][0], 0.3);
    }
}
