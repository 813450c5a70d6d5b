//! Dynamic loss scaling for `f16-mixed` (Micikevicius et al. 2018), with PyTorch's
//! `GradScaler` defaults: the loss is multiplied by `scale` before backward so small f16
//! gradients do not flush to zero; a step whose gradients overflow (inf or NaN) is skipped and
//! halves the scale; after `GROWTH_INTERVAL` good steps in a row the scale doubles. Its state
//! is part of a checkpoint, so a resumed run scales exactly as an uninterrupted one.

use serde::{Deserialize, Serialize};

const INITIAL_SCALE: f64 = 65536.0;
const GROWTH_INTERVAL: u64 = 2000;
const GROWTH: f64 = 2.0;
const BACKOFF: f64 = 0.5;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    /// Good steps since the scale last changed.
    pub good_steps: u64,
    /// Steps skipped so far in this stage.
    pub skipped: u64,
}

impl Default for LossScaler {
    fn default() -> LossScaler {
        LossScaler { scale: INITIAL_SCALE, good_steps: 0, skipped: 0 }
    }
}

impl LossScaler {
    /// Record a step whose (scaled) gradients were `finite` or not; returns whether to apply it.
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.scale *= BACKOFF;
            self.good_steps = 0;
            self.skipped += 1;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps == GROWTH_INTERVAL {
            self.scale *= GROWTH;
            self.good_steps = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_on_overflow_and_grows_after_an_interval() {
        let mut s = LossScaler::default();
        assert!(!s.update(false));
        assert_eq!((s.scale, s.skipped), (INITIAL_SCALE / 2.0, 1));
        for _ in 0..GROWTH_INTERVAL - 1 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale, INITIAL_SCALE / 2.0);
        assert!(s.update(true));
        assert_eq!((s.scale, s.good_steps), (INITIAL_SCALE, 0));
    }
}
