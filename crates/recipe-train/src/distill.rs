//! Knowledge-distillation losses between a student's logits and one or more teachers', at a
//! temperature T (Hinton et al. 2015): both distributions are softmax(logits / T), the
//! teachers' probabilities are averaged when there are several, and the divergence is scaled by
//! T² so its gradient keeps the size of a T = 1 loss as T changes. Rows are averaged over the
//! loss mask, like the cross-entropy the KD term is mixed with.

use candle_core::{D, DType, Result, Tensor};
use recipe_spec::DistillLoss;

/// Row-wise log-softmax of `logits / temperature`.
pub fn log_softmax(logits: &Tensor, temperature: f64) -> Result<Tensor> {
    let z = (logits / temperature)?;
    let max = z.max_keepdim(D::Minus1)?.detach();
    let shifted = z.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}

/// `log(mean_i exp(log_probs_i))`, element-wise and without underflow: the log of the
/// teachers' averaged probabilities.
pub fn log_mean_exp(log_probs: &[Tensor]) -> Result<Tensor> {
    if let [only] = log_probs {
        return Ok(only.clone());
    }
    let stacked = Tensor::stack(log_probs, 0)?;
    // The result does not depend on the shift, so neither does its gradient.
    let max = stacked.max_keepdim(0)?.detach();
    let sum = stacked.broadcast_sub(&max)?.exp()?.sum_keepdim(0)?;
    (sum.log()? + max)?.squeeze(0)? - (log_probs.len() as f64).ln()
}

/// The teachers' averaged distribution at `temperature`, as log-probabilities `[N, V]`.
pub fn teacher_log_probs(teacher_logits: &[Tensor], temperature: f64) -> Result<Tensor> {
    let each = teacher_logits.iter().map(|z| log_softmax(z, temperature)).collect::<Result<Vec<_>>>()?;
    log_mean_exp(&each)
}

/// The divergence of each row `[N]` between the teacher's log-probabilities `lt` and the
/// student's `ls`: KL(t‖s) for forward-kl, KL(s‖t) for reverse-kl, and for jsd
/// ½·KL(t‖m) + ½·KL(s‖m) with m = ½(t + s).
pub fn divergence(kind: DistillLoss, lt: &Tensor, ls: &Tensor) -> Result<Tensor> {
    let kl = |lp: &Tensor, lq: &Tensor| (lp.exp()? * (lp - lq)?)?.sum(D::Minus1);
    match kind {
        DistillLoss::ForwardKl => kl(lt, ls),
        DistillLoss::ReverseKl => kl(ls, lt),
        DistillLoss::Jsd => {
            let lm = log_mean_exp(&[lt.clone(), ls.clone()])?;
            (kl(lt, &lm)? + kl(ls, &lm)?)? * 0.5
        }
    }
}

/// The KD term: T² times the mean divergence over the rows where `mask` `[N]` is 1, and
/// the number of such rows.
pub fn kd_loss(
    kind: DistillLoss,
    student_logits: &Tensor,
    teacher_log_probs: &Tensor,
    temperature: f64,
    mask: &Tensor,
) -> Result<Tensor> {
    let ls = log_softmax(student_logits, temperature)?;
    let rows = divergence(kind, teacher_log_probs, &ls)?;
    let count = mask.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?.max(1.0);
    (rows * mask)?.sum_all()? * (temperature * temperature / count)
}
