//! The bandit of online data mixing (Albalak et al., "Efficient Online Data Mixing For
//! Language Model Pre-Training", Algorithm 1): EXP3 over the sources, rewarded with each
//! source's training loss, so the mix leans towards what the model has learned least.
//!
//! At step t (from 1), with K sources, exploration ε_t = min(1/K, √(ln K / (K·t))) and
//! ε_0 = 1/K, the policy is π_i = (1 − K·ε_t) · softmax(ε_{t−1}·R)_i + ε_t. After the step, each
//! source i that had loss tokens in it updates R_i ← α·R_i + (1 − α)·L_i/π_i, where L_i is its
//! mean loss in the step: the importance weight 1/π keeps a rarely drawn source's estimate fair.

use serde::{Deserialize, Serialize};

/// Everything that determines the bandit's future: lives in the training checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bandit {
    /// Steps whose losses have been seen.
    pub steps: u64,
    /// Per source, the moving average of its importance-weighted loss.
    pub rewards: Vec<f64>,
}

impl Bandit {
    pub fn new(sources: usize) -> Bandit {
        Bandit { steps: 0, rewards: vec![0.0; sources] }
    }

    /// ε_t: the share each source is drawn with at least, at step `t` (from 1).
    fn exploration(&self, t: u64) -> f64 {
        let k = self.rewards.len() as f64;
        if t == 0 { 1.0 / k } else { (1.0 / k).min((k.ln() / (k * t as f64)).sqrt()) }
    }

    /// The shares to draw the next step with.
    pub fn policy(&self) -> Vec<f64> {
        let k = self.rewards.len() as f64;
        let t = self.steps + 1;
        let (explore, temperature) = (self.exploration(t), self.exploration(t - 1));
        let top = self.rewards.iter().map(|r| temperature * r).fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = self.rewards.iter().map(|r| (temperature * r - top).exp()).collect();
        let total: f64 = weights.iter().sum();
        weights.iter().map(|w| (1.0 - k * explore) * w / total + explore).collect()
    }

    /// Take in one step's mean loss per source (`None` for a source the step did not train
    /// on), drawn with `policy`.
    pub fn update(&mut self, losses: &[Option<f64>], policy: &[f64], smoothing: f64) {
        for ((reward, loss), share) in self.rewards.iter_mut().zip(losses).zip(policy) {
            if let Some(loss) = loss.filter(|l| l.is_finite()) {
                *reward = smoothing * *reward + (1.0 - smoothing) * loss / share;
            }
        }
        self.steps += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_follows_the_update_rule_on_a_hand_made_loss_sequence() {
        let mut bandit = Bandit::new(2);
        // ε_1 = min(1/2, √(ln 2 / 2)) = 1/2: all exploration, equal shares.
        assert_eq!(bandit.policy(), [0.5, 0.5]);
        bandit.update(&[Some(4.0), Some(2.0)], &[0.5, 0.5], 0.9);
        // R = (1 − α)·L/π = [0.8, 0.4].
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(bandit.rewards[0], 0.8) && close(bandit.rewards[1], 0.4), "{:?}", bandit.rewards);
        let before = bandit.rewards.clone();
        // t = 2: ε_2 = √(ln 2 / 4), the softmax tempered by ε_1 = 1/2.
        let eps = (2f64.ln() / 4.0).sqrt();
        let soft = |a: f64, b: f64| (0.5f64 * a).exp() / ((0.5f64 * a).exp() + (0.5f64 * b).exp());
        let expected = [(1.0 - 2.0 * eps) * soft(0.8, 0.4) + eps, (1.0 - 2.0 * eps) * soft(0.4, 0.8) + eps];
        let policy = bandit.policy();
        assert!(close(policy[0], expected[0]) && close(policy[1], expected[1]), "{policy:?} vs {expected:?}");
        assert!(policy[0] > policy[1], "the harder source is drawn more");
        // A source absent from a step keeps its reward; the present one is importance-weighted.
        bandit.update(&[None, Some(3.0)], &policy, 0.9);
        assert_eq!(bandit.rewards[0], before[0]);
        assert!(close(bandit.rewards[1], 0.9 * before[1] + 0.1 * 3.0 / policy[1]));
        assert_eq!(bandit.steps, 2);
        // Shares stay a distribution with at least ε each, however lopsided the rewards.
        let lopsided = Bandit { steps: 10_000, rewards: vec![1e6, 0.0, -1e6] };
        let p = lopsided.policy();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{p:?}");
        let floor = (3f64.ln() / (3.0 * 10_001.0)).sqrt();
        assert!(p.iter().all(|&x| x >= floor - 1e-15), "{p:?}");
    }
}
