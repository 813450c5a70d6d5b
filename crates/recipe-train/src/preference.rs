//! Preference losses over pairs of a chosen and a rejected answer, as TRL computes them: DPO's
//! (Rafailov et al. 2023, with conservative DPO's label smoothing), IPO's (Azar et al. 2023)
//! and the hinge loss of SLiC and RSO against a frozen reference (`DPOTrainer`'s `loss_type`
//! "sigmoid", "ipo" and "hinge"), SimPO's (Meng et al. 2024; `CPOTrainer`'s
//! "simpo" with `cpo_alpha` 0) and ORPO's (Hong et al. 2024; `ORPOTrainer`) from the policy's
//! scores alone.
//!
//! A batch holds one pair a row (`recipe-data` lays them out): the chosen conversation is the
//! row's segment 0, the rejected one segment 1, and the loss mask keeps each one's final
//! assistant turn. KTO's unpaired records (Ethayarajh et al. 2024; `KTOTrainer`) are laid out
//! alike: the record's prompt and response, then the prompt with another record's response,
//! which only the KL estimate reads. An answer's score is the sum of its targets' log-probabilities (IPO, SimPO
//! and ORPO: their mean).

use candle_core::{DType, Result, Tensor};
use recipe_data::Batch;
use recipe_spec::{Preference, PreferenceLoss};

/// Each row's chosen and rejected answers: their log-probabilities summed over their
/// targets, and how many targets they have, `[rows]` each.
pub struct PairScores {
    pub chosen: Tensor,
    pub rejected: Tensor,
    pub chosen_tokens: Tensor,
    pub rejected_tokens: Tensor,
}

impl PairScores {
    /// The scores of each position's negative log-likelihood `nll` `[rows · T]` (0 off the loss
    /// mask).
    pub fn of(nll: &Tensor, batch: &Batch) -> Result<PairScores> {
        let t = batch.seq_len;
        let segment = |s: u32| -> Vec<f32> {
            (0..batch.rows * t).map(|i| f32::from(batch.loss_mask[i] == 1 && batch.doc_ids[i] == s)).collect()
        };
        let (chosen, rejected) = (segment(0), segment(1));
        let count = |w: &[f32]| -> Result<Tensor> {
            let per_row: Vec<f64> = w.chunks(t).map(|row| row.iter().map(|&x| f64::from(x)).sum()).collect();
            Tensor::from_vec(per_row, batch.rows, nll.device())?.to_dtype(nll.dtype())
        };
        let score = |w: &[f32]| -> Result<Tensor> {
            let w = Tensor::from_slice(w, nll.shape(), nll.device())?.to_dtype(nll.dtype())?;
            (nll * w)?.reshape((batch.rows, t))?.sum(1)?.neg()
        };
        Ok(PairScores {
            chosen: score(&chosen)?,
            rejected: score(&rejected)?,
            chosen_tokens: count(&chosen)?,
            rejected_tokens: count(&rejected)?,
        })
    }

    /// Per-token mean log-probabilities, chosen and rejected (0 for an answer with no target).
    fn means(&self) -> Result<(Tensor, Tensor)> {
        let mean = |sum: &Tensor, n: &Tensor| sum / n.clamp(1.0, f64::INFINITY)?;
        Ok((mean(&self.chosen, &self.chosen_tokens)?, mean(&self.rejected, &self.rejected_tokens)?))
    }
}

/// What a micro-batch of pairs gives: the loss averaged over its pairs, to backpropagate, and
/// (detached, f64, summed over its pairs) the chosen answers' rewards, the rejected ones', and
/// how many pairs reward the chosen answer more. A reward is `β·(log π − log π_ref)` against a
/// reference, else `β` times the mean log-probability (as TRL reports them).
pub struct PairLoss {
    pub mean: Tensor,
    pub sums: Tensor,
}

/// `−log σ(x) = log(1 + e^{−x})`, written to overflow for no `x`.
fn softplus_neg(x: &Tensor) -> Result<Tensor> {
    x.neg()?.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// KTO's loss (Ethayarajh et al. 2024, as TRL's `KTOTrainer` computes it) over rows of
/// unpaired records, each laid out as a pair whose first segment is the prompt with its own
/// response, scored by the policy (with a graph) and the reference (without). With `r` the
/// response's log-ratio `log π − log π_ref` and `kl` the step's KL estimate (see
/// [`kl_terms`]): `w_D·(1 − σ(β·(r − kl)))` for a desirable response, `w_U·(1 − σ(β·(kl −
/// r)))` for another, averaged over the rows. The sums: the desirable responses' rewards
/// `β·r`, the undesirable ones', and how many are desirable.
pub fn kto_loss(
    p: &Preference,
    policy: &PairScores,
    reference: &PairScores,
    desirable: &[u8],
    kl: f64,
) -> Result<PairLoss> {
    let r = (&policy.chosen - &reference.chosen)?;
    let d: Vec<f64> = desirable.iter().map(|&l| f64::from(l)).collect();
    let n = d.len();
    let d = Tensor::from_vec(d, n, r.device())?.to_dtype(r.dtype())?;
    // ±1: the side of the KL estimate a desirable (+) or undesirable (−) response's reward is pushed to.
    let sign = ((&d * 2.0)? - 1.0)?;
    let x = (((&r - kl)? * &sign)? * p.beta)?;
    let (wd, wu) = (p.desirable_weight.unwrap_or(1.0), p.undesirable_weight.unwrap_or(1.0));
    let weight = ((&d * (wd - wu))? + wu)?;
    // 1 − σ(x) = σ(−x) = exp(−log(1 + e^x)), which overflows for no x.
    let losses = (softplus_neg(&x.neg()?)?.neg()?.exp()? * weight)?;
    let rewards = (r.detach() * p.beta)?;
    let desirable_rewards = (&rewards * &d)?.sum_all()?;
    let undesirable_rewards = (&rewards * (1.0 - &d)?)?.sum_all()?;
    let sums = Tensor::stack(&[desirable_rewards, undesirable_rewards, d.sum_all()?], 0)?.to_dtype(DType::F64)?;
    Ok(PairLoss { mean: losses.mean_all()?, sums })
}

/// KTO's KL terms of a micro-batch of unpaired rows: the sum over its rows of the policy's
/// log-ratio against the reference on the second segment — the prompt with another record's
/// response — and the number of rows. Over a step, `max(0, sum / rows)` is the KL estimate
/// (TRL's `kl`, treated as a constant).
pub fn kl_terms(policy: &PairScores, reference: &PairScores) -> Result<(f64, f64)> {
    let sum = (&policy.rejected - &reference.rejected)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok((sum, policy.rejected.dim(0)? as f64))
}

/// The preference loss of pairs scored by the policy (with a graph) and, for DPO and IPO, by
/// the reference (without). With `h` the policy's log-ratio of chosen over rejected less the
/// reference's: DPO `−log σ(β·h)` (summed scores; with label smoothing `ε`, `(1 − ε)` of it and
/// `ε` of `−log σ(−β·h)`), hinge `max(0, 1 − β·h)`, IPO `(h − 1/(2β))²` (mean scores); with
/// the policy's mean scores `ā`: SimPO `−log σ(β·(ā_c − ā_r) − γ)`, ORPO the chosen answers'
/// cross-entropy (their tokens' mean over the micro-batch) less `β·log σ(log odds_c −
/// log odds_r)`, `log odds = ā − log(1 − e^ā)`.
pub fn pair_loss(p: &Preference, policy: &PairScores, reference: Option<&PairScores>) -> Result<PairLoss> {
    let against = |chosen: Tensor, rejected: Tensor, mean: bool| -> Result<(Tensor, Tensor)> {
        let reference = reference.ok_or_else(|| candle_core::Error::Msg(format!("{} needs a reference", p.loss)))?;
        let (rc, rr) = if mean { reference.means()? } else { (reference.chosen.clone(), reference.rejected.clone()) };
        Ok(((chosen - rc)?, (rejected - rr)?))
    };
    let (chosen, rejected, losses) = match p.loss {
        PreferenceLoss::Sigmoid => {
            let (c, r) = against(policy.chosen.clone(), policy.rejected.clone(), false)?;
            let x = ((&c - &r)? * p.beta)?;
            let losses = match p.label_smoothing.filter(|e| *e > 0.0) {
                Some(e) => ((softplus_neg(&x)? * (1.0 - e))? + (softplus_neg(&x.neg()?)? * e)?)?,
                None => softplus_neg(&x)?,
            };
            (c, r, losses)
        }
        PreferenceLoss::Hinge => {
            let (c, r) = against(policy.chosen.clone(), policy.rejected.clone(), false)?;
            let losses = (((&c - &r)? * -p.beta)? + 1.0)?.relu()?;
            (c, r, losses)
        }
        PreferenceLoss::Ipo => {
            let (ac, ar) = policy.means()?;
            let (c, r) = against(ac, ar, true)?;
            let losses = ((&c - &r)? - 1.0 / (2.0 * p.beta))?.sqr()?;
            (c, r, losses)
        }
        PreferenceLoss::Simpo => {
            let (c, r) = policy.means()?;
            let losses = softplus_neg(&(((&c - &r)? * p.beta)? - p.gamma.unwrap_or(0.5))?)?;
            (c, r, losses)
        }
        PreferenceLoss::Orpo => {
            let (c, r) = policy.means()?;
            let log_odds = |a: &Tensor| a - (a.exp()?.neg()? + 1.0)?.log()?;
            let ratio = (log_odds(&c)? - log_odds(&r)?)?;
            let nll = (policy.chosen.sum_all()?.neg()? / policy.chosen_tokens.sum_all()?.clamp(1.0, f64::INFINITY)?)?;
            let losses = (softplus_neg(&ratio)? * p.beta)?.broadcast_add(&nll)?;
            (c, r, losses)
        }
        PreferenceLoss::Kto => {
            return Err(candle_core::Error::Msg("KTO scores unpaired rows: `kto_loss`, not pairs".into()));
        }
    };
    let (chosen, rejected) = ((chosen.detach() * p.beta)?, (rejected.detach() * p.beta)?);
    let correct = chosen.gt(&rejected)?.to_dtype(chosen.dtype())?.sum_all()?;
    let sums = Tensor::stack(&[chosen.sum_all()?, rejected.sum_all()?, correct], 0)?.to_dtype(DType::F64)?;
    Ok(PairLoss { mean: losses.mean_all()?, sums })
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn batch() -> Batch {
        // Row 0: chosen at 0..3 (targets 1, 2 counted), rejected at 3..6 (target 4).
        // Row 1: chosen at 0..2 (target 1), rejected at 2..6 (targets 3, 4, 5).
        Batch {
            rows: 2,
            seq_len: 6,
            input_ids: vec![0; 12],
            target_ids: vec![0; 12],
            loss_mask: vec![1, 1, 0, 0, 1, 0, 1, 0, 1, 1, 1, 0],
            doc_ids: vec![0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1],
            position_ids: vec![0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 2, 3],
            source_ids: vec![0; 12],
            desirable: Vec::new(),
        }
    }

    /// Each answer sums its own counted targets, and counts them.
    #[test]
    fn answers_are_scored_by_their_own_targets() {
        let nll: Vec<f64> = (1..=12).map(f64::from).collect();
        let s = PairScores::of(&Tensor::from_vec(nll, 12, &Device::Cpu).unwrap(), &batch()).unwrap();
        let v = |t: &Tensor| t.to_vec1::<f64>().unwrap();
        assert_eq!((v(&s.chosen), v(&s.chosen_tokens)), (vec![-(1.0 + 2.0), -7.0], vec![2.0, 1.0]));
        assert_eq!((v(&s.rejected), v(&s.rejected_tokens)), (vec![-5.0, -(9.0 + 10.0 + 11.0)], vec![1.0, 3.0]));
    }

    /// TRL's formulas for each loss, written out in f64 for three pairs, with the rewards and
    /// accuracy TRL logs, and the loss's gradient by finite differences.
    #[test]
    fn every_loss_matches_its_formula_and_gradient() {
        let (pc, pr) = ([-3.0, -10.0, -2.5], [-4.0, -9.0, -40.0]);
        let (nc, nr) = ([2.0, 5.0, 1.0], [4.0, 3.0, 8.0]);
        let (rc, rr) = ([-3.5, -9.5, -2.0], [-3.8, -9.2, -1.0]);
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let t = |v: &[f64]| Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap();
        let cases = [
            Preference::DEFAULT,
            Preference { beta: 2.0, label_smoothing: Some(0.2), ..Preference::DEFAULT },
            Preference { loss: PreferenceLoss::Ipo, beta: 0.5, ..Preference::DEFAULT },
            Preference { loss: PreferenceLoss::Hinge, beta: 0.4, ..Preference::DEFAULT },
            Preference { loss: PreferenceLoss::Simpo, beta: 2.0, gamma: Some(0.8), ..Preference::DEFAULT },
            Preference { loss: PreferenceLoss::Orpo, beta: 0.3, ..Preference::DEFAULT },
        ];
        for p in cases {
            let beta = p.beta;
            // The loss and per-pair rewards (chosen, rejected) from the chosen answers' sums.
            let expected = |pc: &[f64]| -> (f64, Vec<(f64, f64)>) {
                let mut total = 0.0;
                let mut rewards = Vec::new();
                let nll = -pc.iter().sum::<f64>() / nc.iter().sum::<f64>();
                for i in 0..3 {
                    let (ac, ar) = (pc[i] / nc[i], pr[i] / nr[i]);
                    let (loss, reward) = match p.loss {
                        PreferenceLoss::Sigmoid => {
                            let (c, r) = (pc[i] - rc[i], pr[i] - rr[i]);
                            let e = p.label_smoothing.unwrap_or(0.0);
                            let x = beta * (c - r);
                            (-(1.0 - e) * sigmoid(x).ln() - e * sigmoid(-x).ln(), (beta * c, beta * r))
                        }
                        PreferenceLoss::Hinge => {
                            let (c, r) = (pc[i] - rc[i], pr[i] - rr[i]);
                            ((1.0 - beta * (c - r)).max(0.0), (beta * c, beta * r))
                        }
                        PreferenceLoss::Ipo => {
                            let (c, r) = (ac - rc[i] / nc[i], ar - rr[i] / nr[i]);
                            ((c - r - 1.0 / (2.0 * beta)).powi(2), (beta * c, beta * r))
                        }
                        PreferenceLoss::Simpo => (-sigmoid(beta * (ac - ar) - 0.8).ln(), (beta * ac, beta * ar)),
                        PreferenceLoss::Orpo => {
                            let odds = |a: f64| a - (1.0 - a.exp()).ln();
                            (nll - beta * sigmoid(odds(ac) - odds(ar)).ln(), (beta * ac, beta * ar))
                        }
                        PreferenceLoss::Kto => unreachable!("KTO's loss has its own test"),
                    };
                    total += loss / 3.0;
                    rewards.push(reward);
                }
                (total, rewards)
            };
            let scores = |chosen: Tensor| PairScores {
                chosen,
                rejected: t(&pr),
                chosen_tokens: t(&nc),
                rejected_tokens: t(&nr),
            };
            let reference =
                PairScores { chosen: t(&rc), rejected: t(&rr), chosen_tokens: t(&nc), rejected_tokens: t(&nr) };
            let var = Var::from_tensor(&t(&pc)).unwrap();
            let out = pair_loss(&p, &scores(var.as_tensor().clone()), Some(&reference)).unwrap();
            let (want, rewards) = expected(&pc);
            let got = out.mean.to_scalar::<f64>().unwrap();
            assert!((got - want).abs() < 1e-12, "{p:?}: {got} vs {want}");
            let grad = out.mean.backward().unwrap().get(var.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
            for i in 0..3 {
                let (mut up, mut down) = (pc, pc);
                up[i] += 1e-6;
                down[i] -= 1e-6;
                let numeric = (expected(&up).0 - expected(&down).0) / 2e-6;
                assert!((grad[i] - numeric).abs() < 1e-6, "{p:?} ∂/∂chosen[{i}]: {} vs {numeric}", grad[i]);
            }
            let sums = out.sums.to_vec1::<f64>().unwrap();
            let (c, r): (f64, f64) = (rewards.iter().map(|x| x.0).sum(), rewards.iter().map(|x| x.1).sum());
            let correct = rewards.iter().filter(|(c, r)| c > r).count() as f64;
            assert!((sums[0] - c).abs() < 1e-12 && (sums[1] - r).abs() < 1e-12, "{p:?}: {sums:?}");
            assert_eq!(sums[2], correct, "{p:?}");
        }
    }

    /// KTO's loss as TRL's `kto_loss` computes it, written out in f64 for three responses (two
    /// desirable) with their weights, the rewards it logs, the loss's gradient by finite
    /// differences, and the KL terms of the second segments.
    #[test]
    fn kto_matches_its_formula_and_gradient() {
        let (pc, rc) = ([-3.0, -10.0, -2.5], [-3.5, -9.5, -2.0]);
        let (pk, rk) = ([-7.0, -6.0, -9.0], [-6.5, -6.5, -8.0]);
        let desirable = [1u8, 0, 1];
        let (beta, kl, wd, wu) = (0.3, 0.2, 1.5, 0.7);
        let p = Preference {
            loss: PreferenceLoss::Kto,
            beta,
            desirable_weight: Some(wd),
            undesirable_weight: Some(wu),
            ..Preference::DEFAULT
        };
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let expected = |pc: &[f64]| -> f64 {
            (0..3)
                .map(|i| {
                    let r = pc[i] - rc[i];
                    match desirable[i] {
                        1 => wd * (1.0 - sigmoid(beta * (r - kl))),
                        _ => wu * (1.0 - sigmoid(beta * (kl - r))),
                    }
                })
                .sum::<f64>()
                / 3.0
        };
        let t = |v: &[f64]| Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap();
        let ones = t(&[1.0; 3]);
        let scores = |chosen: Tensor, kl_segment: &[f64]| PairScores {
            chosen,
            rejected: t(kl_segment),
            chosen_tokens: ones.clone(),
            rejected_tokens: ones.clone(),
        };
        let var = Var::from_tensor(&t(&pc)).unwrap();
        let (policy, reference) = (scores(var.as_tensor().clone(), &pk), scores(t(&rc), &rk));
        let out = kto_loss(&p, &policy, &reference, &desirable, kl).unwrap();
        let got = out.mean.to_scalar::<f64>().unwrap();
        assert!((got - expected(&pc)).abs() < 1e-12, "{got} vs {}", expected(&pc));
        let grad = out.mean.backward().unwrap().get(var.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
        for i in 0..3 {
            let (mut up, mut down) = (pc, pc);
            up[i] += 1e-6;
            down[i] -= 1e-6;
            let numeric = (expected(&up) - expected(&down)) / 2e-6;
            assert!((grad[i] - numeric).abs() < 1e-6, "∂/∂chosen[{i}]: {} vs {numeric}", grad[i]);
        }
        let reward = |i: usize| beta * (pc[i] - rc[i]);
        let sums = out.sums.to_vec1::<f64>().unwrap();
        assert!((sums[0] - (reward(0) + reward(2))).abs() < 1e-12 && (sums[1] - reward(1)).abs() < 1e-12);
        assert_eq!(sums[2], 2.0);
        let (sum, rows) = kl_terms(&policy, &reference).unwrap();
        assert!((sum - (-0.5 + 0.5 - 1.0)).abs() < 1e-12 && rows == 3.0, "{sum} over {rows}");
    }
}
