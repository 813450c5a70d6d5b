//! Preference losses over pairs of a chosen and a rejected response, each scored by the
//! policy and by a frozen reference: DPO's (Rafailov et al. 2023) and IPO's (Azar et al.
//! 2023), as TRL's `DPOTrainer` computes them (`loss_type` "sigmoid" and "ipo").
//!
//! A batch holds one pair a row (`recipe-data` lays them out): the chosen conversation is the
//! row's segment 0, the rejected one segment 1, and the loss mask keeps each one's final
//! assistant turn. A response's log-probability is the sum of its targets' (IPO: their mean).

use candle_core::{DType, Result, Tensor};
use recipe_data::Batch;
use recipe_spec::{Preference, PreferenceLoss};

/// Per row, the weight each position's log-probability has in the chosen response's score and
/// in the rejected one's: 1 on that segment's loss targets (IPO: 1 / their count), else 0.
fn segment_weights(batch: &Batch, mean: bool) -> [Vec<f64>; 2] {
    let t = batch.seq_len;
    let mut weights = [vec![0f64; batch.rows * t], vec![0f64; batch.rows * t]];
    for row in 0..batch.rows {
        for (segment, w) in weights.iter_mut().enumerate() {
            let span = row * t..(row + 1) * t;
            let counted: Vec<usize> =
                span.filter(|&i| batch.loss_mask[i] == 1 && batch.doc_ids[i] == segment as u32).collect();
            let each = if mean { 1.0 / counted.len().max(1) as f64 } else { 1.0 };
            for i in counted {
                w[i] = each;
            }
        }
    }
    weights
}

/// The chosen and rejected responses' log-probabilities `[rows]` from each position's negative
/// log-likelihood `nll` `[rows · T]`.
pub fn pair_log_probs(nll: &Tensor, batch: &Batch, mean: bool) -> Result<(Tensor, Tensor)> {
    let [chosen, rejected] = segment_weights(batch, mean);
    let score = |w: Vec<f64>| -> Result<Tensor> {
        let w = Tensor::from_vec(w, nll.shape(), nll.device())?.to_dtype(nll.dtype())?;
        (nll * w)?.reshape((batch.rows, batch.seq_len))?.sum(1)?.neg()
    };
    Ok((score(chosen)?, score(rejected)?))
}

/// What a micro-batch of pairs gives: the loss averaged over its pairs, to backpropagate, and
/// (detached, summed over its pairs) the chosen responses' implicit rewards `β·(log π − log
/// π_ref)`, the rejected ones', and how many pairs reward the chosen response more.
pub struct PairLoss {
    pub mean: Tensor,
    pub sums: Tensor,
}

/// The preference loss of pairs scored `policy` (chosen, rejected; with a graph) and
/// `reference` (without), each `[pairs]`: with `h` the policy's log-ratio of chosen over
/// rejected less the reference's, DPO's `−log σ(β·h)` or IPO's `(h − 1/(2β))²`.
pub fn pair_loss(p: &Preference, policy: (&Tensor, &Tensor), reference: (&Tensor, &Tensor)) -> Result<PairLoss> {
    let chosen = (policy.0 - reference.0)?;
    let rejected = (policy.1 - reference.1)?;
    let h = (&chosen - &rejected)?;
    let losses = match p.loss {
        // −log σ(x) = log(1 + e^{−x}), written to overflow for no x.
        PreferenceLoss::Sigmoid => {
            let x = (&h * p.beta)?;
            (x.neg()?.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?
        }
        PreferenceLoss::Ipo => (&h - 1.0 / (2.0 * p.beta))?.sqr()?,
    };
    let rewards = |r: &Tensor| (r.detach() * p.beta)?.sum_all();
    let correct = h.detach().gt(0.0)?.to_dtype(h.dtype())?.sum_all()?;
    let sums = Tensor::stack(&[rewards(&chosen)?, rewards(&rejected)?, correct], 0)?.to_dtype(DType::F64)?;
    Ok(PairLoss { mean: losses.mean_all()?, sums })
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn batch() -> Batch {
        // Row 0: chosen at 0..3 (targets 1, 2 counted), rejected at 3..6 (targets 4, 5).
        // Row 1: chosen at 0..2 (target 1), rejected at 2..6 (targets 3, 4, 5); padding none.
        Batch {
            rows: 2,
            seq_len: 6,
            input_ids: vec![0; 12],
            target_ids: vec![0; 12],
            loss_mask: vec![1, 1, 0, 0, 1, 0, 1, 0, 1, 1, 1, 0],
            doc_ids: vec![0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1],
            position_ids: vec![0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 2, 3],
            source_ids: vec![0; 12],
        }
    }

    /// Sums (IPO: means) over each segment's counted targets.
    #[test]
    fn responses_are_scored_by_their_own_targets() {
        let nll: Vec<f64> = (1..=12).map(f64::from).collect();
        let nll = Tensor::from_vec(nll, 12, &Device::Cpu).unwrap();
        let (c, r) = pair_log_probs(&nll, &batch(), false).unwrap();
        assert_eq!(c.to_vec1::<f64>().unwrap(), [-(1.0 + 2.0), -7.0]);
        assert_eq!(r.to_vec1::<f64>().unwrap(), [-5.0, -(9.0 + 10.0 + 11.0)]);
        let (c, r) = pair_log_probs(&nll, &batch(), true).unwrap();
        assert_eq!(c.to_vec1::<f64>().unwrap(), [-1.5, -7.0]);
        assert_eq!(r.to_vec1::<f64>().unwrap(), [-5.0, -10.0]);
    }

    /// TRL's formulas, written out for three pairs, and their gradient by finite differences.
    #[test]
    fn dpo_and_ipo_match_their_formulas_and_gradients() {
        let t = |v: &[f64]| Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap();
        let (pc, pr) = ([-3.0, -10.0, -2.5], [-4.0, -9.0, -40.0]);
        let (rc, rr) = ([-3.5, -9.5, -2.0], [-3.8, -9.2, -1.0]);
        for (loss, beta) in [(PreferenceLoss::Sigmoid, 0.1), (PreferenceLoss::Sigmoid, 2.0), (PreferenceLoss::Ipo, 0.5)]
        {
            let p = Preference { loss, beta };
            let expected = |pc: &[f64]| -> f64 {
                (0..3)
                    .map(|i| {
                        let h = (pc[i] - rc[i]) - (pr[i] - rr[i]);
                        match loss {
                            PreferenceLoss::Sigmoid => -(1.0 / (1.0 + (-beta * h).exp())).ln(),
                            PreferenceLoss::Ipo => (h - 1.0 / (2.0 * beta)).powi(2),
                        }
                    })
                    .sum::<f64>()
                    / 3.0
            };
            let var = candle_core::Var::from_tensor(&t(&pc)).unwrap();
            let out = pair_loss(&p, (var.as_tensor(), &t(&pr)), (&t(&rc), &t(&rr))).unwrap();
            let got = out.mean.to_scalar::<f64>().unwrap();
            assert!((got - expected(&pc)).abs() < 1e-12, "{loss:?} β {beta}: {got} vs {}", expected(&pc));
            let grad = out.mean.backward().unwrap().get(var.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
            for i in 0..3 {
                let (mut up, mut down) = (pc, pc);
                up[i] += 1e-6;
                down[i] -= 1e-6;
                let numeric = (expected(&up) - expected(&down)) / 2e-6;
                assert!((grad[i] - numeric).abs() < 1e-6, "{loss:?} ∂/∂chosen[{i}]: {} vs {numeric}", grad[i]);
            }
            let sums = out.sums.to_vec1::<f64>().unwrap();
            let chosen_reward: f64 = (0..3).map(|i| beta * (pc[i] - rc[i])).sum();
            let rejected_reward: f64 = (0..3).map(|i| beta * (pr[i] - rr[i])).sum();
            assert!((sums[0] - chosen_reward).abs() < 1e-12 && (sums[1] - rejected_reward).abs() < 1e-12);
            assert_eq!(sums[2], 2.0, "pairs 0 and 2 prefer the chosen response more than the reference does");
        }
    }
}
