//! Weight averaging while training, in f32 on the parameters' device. EMA: the average starts
//! at the stage's starting weights and after every step becomes decay · average + (1 − decay)
//! · weights. LAWA: a snapshot of the weights every `every` steps, the latest `window` kept;
//! the average is their mean. The state goes into each checkpoint beside AdamW's moments
//! (`ema.NAME`, `lawa.I.NAME`), so a resumed stage averages exactly as an uninterrupted one.

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor};
use recipe_model::Llama;
use recipe_spec::{Average, AverageKind};

pub struct Averager {
    config: Average,
    names: Vec<String>,
    /// EMA: one entry, the average. LAWA: the snapshots, oldest first. Each holds one f32
    /// tensor per parameter, in the model's parameter order.
    held: Vec<Vec<Tensor>>,
}

/// A copy of the weights in f32, which the optimizer's in-place updates leave alone.
fn current(model: &Llama) -> Result<Vec<Tensor>> {
    model.params.iter().map(|p| p.var.as_tensor().to_dtype(DType::F32)?.copy()).collect()
}

impl Averager {
    /// An averager over `model`'s parameters as they are now (the stage's start).
    pub fn new(config: &Average, model: &Llama) -> Result<Averager> {
        let held = match config.kind {
            AverageKind::Ema => vec![current(model)?],
            AverageKind::Lawa => Vec::new(),
        };
        Ok(Averager { config: config.clone(), names: model.params.iter().map(|p| p.name.clone()).collect(), held })
    }

    /// Fold in the weights after optimizer step `step` (counted from 1).
    pub fn after_step(&mut self, model: &Llama, step: u64) -> Result<()> {
        match self.config.kind {
            AverageKind::Ema => {
                let decay = self.config.decay.expect("ema has a decay");
                // Read at once, so no copy of the weights is needed.
                for (avg, p) in self.held[0].iter_mut().zip(&model.params) {
                    let w = p.var.as_tensor().to_dtype(DType::F32)?;
                    *avg = (avg.affine(decay, 0.0)? + w.affine(1.0 - decay, 0.0)?)?;
                }
            }
            AverageKind::Lawa => {
                if step.is_multiple_of(self.config.every.expect("lawa has every")) {
                    self.held.push(current(model)?);
                    let window = self.config.window.expect("lawa has a window") as usize;
                    if self.held.len() > window {
                        self.held.remove(0);
                    }
                }
            }
        }
        Ok(())
    }

    /// The averaged weights, one f32 tensor per parameter; none before LAWA's first snapshot.
    pub fn averaged(&self) -> Result<Option<Vec<Tensor>>> {
        let Some(first) = self.held.first() else { return Ok(None) };
        let mut sum = first.clone();
        for snapshot in &self.held[1..] {
            for (s, t) in sum.iter_mut().zip(snapshot) {
                *s = (&*s + t)?;
            }
        }
        let n = self.held.len() as f64;
        Ok(Some(sum.into_iter().map(|s| if n > 1.0 { s.affine(1.0 / n, 0.0) } else { Ok(s) }).collect::<Result<_>>()?))
    }

    /// The state as named tensors, for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let prefix = |i: usize| match self.config.kind {
            AverageKind::Ema => "ema".to_string(),
            AverageKind::Lawa => format!("lawa.{i}"),
        };
        self.held
            .iter()
            .enumerate()
            .flat_map(|(i, ts)| self.names.iter().zip(ts).map(move |(n, t)| (format!("{}.{n}", prefix(i)), t.clone())))
            .collect()
    }

    /// Take back the state [`Averager::state_tensors`] wrote.
    pub fn restore(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let missing = |key: &str| candle_core::Error::Msg(format!("checkpoint lacks the averaged weights {key}"));
        let read = |prefix: &str| -> Result<Vec<Tensor>> {
            self.names
                .iter()
                .map(|n| tensors.get(&format!("{prefix}.{n}")).cloned().ok_or_else(|| missing(n)))
                .collect()
        };
        self.held = match self.config.kind {
            AverageKind::Ema => vec![read("ema")?],
            AverageKind::Lawa => (0..)
                .take_while(|i| self.names.first().is_some_and(|n| tensors.contains_key(&format!("lawa.{i}.{n}"))))
                .map(|i| read(&format!("lawa.{i}")))
                .collect::<Result<_>>()?,
        };
        Ok(())
    }
}

/// Run `f` with `model`'s parameters set to `weights` (f32, in parameter order), then put the
/// parameters back as they were.
pub fn with_weights<T>(model: &Llama, weights: &[Tensor], f: impl FnOnce() -> T) -> Result<T> {
    let raw = model.params.iter().map(|p| p.var.as_tensor().copy()).collect::<Result<Vec<_>>>()?;
    set_weights(model, weights)?;
    let out = f();
    for (p, t) in model.params.iter().zip(&raw) {
        p.var.set(t)?;
    }
    Ok(out)
}

/// Set `model`'s parameters to `weights` (f32, in parameter order), each in its own dtype.
pub fn set_weights(model: &Llama, weights: &[Tensor]) -> Result<()> {
    for (p, w) in model.params.iter().zip(weights) {
        p.var.set(&w.to_dtype(p.var.dtype())?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use recipe_spec::AverageUse;

    fn model(value: f32) -> Llama {
        let config = recipe_spec::ModelSpec {
            vocab_size: Some(8),
            d_model: Some(4),
            n_layers: Some(1),
            n_heads: Some(2),
            d_ff: Some(8),
            max_seq_len: Some(4),
            ..recipe_spec::ModelSpec::default()
        }
        .resolve(None);
        let tensors =
            config.layout().into_iter().map(|(n, s, _)| (n, Tensor::full(value, s, &Device::Cpu).unwrap())).collect();
        Llama::from_tensors(&config, tensors, &Device::Cpu).unwrap()
    }

    fn set(m: &Llama, value: f32) {
        for p in &m.params {
            p.var.set(&Tensor::full(value, p.var.shape(), &Device::Cpu).unwrap()).unwrap();
        }
    }

    fn first_value(ts: &[Tensor]) -> f32 {
        ts[0].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
    }

    #[test]
    fn ema_is_decay_times_the_average_plus_the_rest_times_the_weights() {
        let m = model(0.0);
        let config = Average {
            kind: AverageKind::Ema,
            decay: Some(0.5),
            every: None,
            window: None,
            result: AverageUse::Average,
        };
        let mut avg = Averager::new(&config, &m).unwrap();
        for (step, value) in [(1, 4.0), (2, 8.0)] {
            set(&m, value);
            avg.after_step(&m, step).unwrap();
        }
        // 0 → 0.5·0 + 0.5·4 = 2 → 0.5·2 + 0.5·8 = 5
        assert_eq!(first_value(&avg.averaged().unwrap().unwrap()), 5.0);
        let mut back = Averager::new(&config, &m).unwrap();
        back.restore(&avg.state_tensors().into_iter().collect()).unwrap();
        assert_eq!(first_value(&back.averaged().unwrap().unwrap()), 5.0);
    }

    #[test]
    fn lawa_averages_the_latest_window_of_snapshots() {
        let m = model(0.0);
        let config = Average {
            kind: AverageKind::Lawa,
            decay: None,
            every: Some(2),
            window: Some(2),
            result: AverageUse::Average,
        };
        let mut avg = Averager::new(&config, &m).unwrap();
        assert!(avg.averaged().unwrap().is_none(), "nothing before the first snapshot");
        for step in 1..=6 {
            set(&m, step as f32);
            avg.after_step(&m, step).unwrap();
        }
        // Snapshots at steps 2, 4, 6; the latest two are 4 and 6.
        assert_eq!(first_value(&avg.averaged().unwrap().unwrap()), 5.0);
        let mut back = Averager::new(&config, &m).unwrap();
        back.restore(&avg.state_tensors().into_iter().collect()).unwrap();
        assert_eq!(back.held.len(), 2);
        assert_eq!(first_value(&back.averaged().unwrap().unwrap()), 5.0);
        let before: Vec<f32> = m.params[0].var.flatten_all().unwrap().to_vec1().unwrap();
        let seen =
            with_weights(&m, &avg.averaged().unwrap().unwrap(), || first_value(&[m.params[0].var.as_tensor().clone()]))
                .unwrap();
        assert_eq!(seen, 5.0);
        assert_eq!(m.params[0].var.flatten_all().unwrap().to_vec1::<f32>().unwrap(), before, "put back");
    }
}
