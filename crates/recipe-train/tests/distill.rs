//! The KD losses against their definitions, on values worked out by hand (with Python's
//! `math` as the calculator): forward and reverse KL, Jensen–Shannon, the T² scaling, the
//! ensemble's averaged probabilities, and rows outside the loss mask. The gradient of each
//! matches finite differences.

use candle_core::{Device, Tensor, Var};
use recipe_spec::DistillLoss;
use recipe_train::distill::{kd_loss, teacher_log_probs};

const STUDENT: [f64; 3] = [1.0, 2.0, 3.0];
const TEACHER: [f64; 3] = [3.0, 1.0, 0.0];
const TEACHER_2: [f64; 3] = [0.0, 0.5, 2.0];
/// A second row that the mask leaves out: it must not count.
const IGNORED: [f64; 3] = [9.0, -4.0, 0.0];

fn rows(a: [f64; 3], b: [f64; 3]) -> Tensor {
    Tensor::from_vec([a, b].concat(), (2, 3), &Device::Cpu).unwrap()
}

fn loss(kind: DistillLoss, teachers: &[[f64; 3]], t: f64, student: &Tensor) -> f64 {
    let teachers: Vec<Tensor> = teachers.iter().map(|z| rows(*z, TEACHER)).collect();
    let mask = Tensor::from_vec(vec![1f64, 0.0], 2, &Device::Cpu).unwrap();
    let lt = teacher_log_probs(&teachers, t).unwrap();
    kd_loss(kind, student, &lt, t, &mask).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn kd_losses_match_their_definitions() {
    let student = rows(STUDENT, IGNORED);
    let cases = [
        (DistillLoss::ForwardKl, &[TEACHER][..], 1.0, 1.6851240160639807),
        (DistillLoss::ReverseKl, &[TEACHER][..], 1.0, 1.822630247150408),
        (DistillLoss::Jsd, &[TEACHER][..], 1.0, 0.3531535765573759),
        // At T = 2 both distributions flatten; the T² factor is included.
        (DistillLoss::ForwardKl, &[TEACHER][..], 2.0, 2.0738163287413798),
        (DistillLoss::ReverseKl, &[TEACHER][..], 2.0, 2.0443756787323717),
        (DistillLoss::Jsd, &[TEACHER][..], 2.0, 0.4843812707776487),
        // Two teachers: KL from the average of their probabilities.
        (DistillLoss::ForwardKl, &[TEACHER, TEACHER_2][..], 1.0, 0.4940249206213615),
        (DistillLoss::ForwardKl, &[TEACHER, TEACHER_2][..], 2.0, 0.561167143795737),
    ];
    for (kind, teachers, t, expected) in cases {
        let got = loss(kind, teachers, t, &student);
        assert!((got - expected).abs() < 1e-12, "{kind} T={t} with {} teachers: {got} vs {expected}", teachers.len());
    }
}

#[test]
fn identical_distributions_cost_nothing() {
    let student = rows(TEACHER, IGNORED);
    for kind in [DistillLoss::ForwardKl, DistillLoss::ReverseKl, DistillLoss::Jsd] {
        assert!(loss(kind, &[TEACHER], 1.5, &student).abs() < 1e-12);
    }
}

#[test]
fn kd_gradients_match_finite_differences() {
    for kind in [DistillLoss::ForwardKl, DistillLoss::ReverseKl, DistillLoss::Jsd] {
        let student = Var::from_tensor(&rows(STUDENT, IGNORED)).unwrap();
        let teachers: Vec<Tensor> = [TEACHER, TEACHER_2].iter().map(|z| rows(*z, TEACHER)).collect();
        let mask = Tensor::from_vec(vec![1f64, 0.0], 2, &Device::Cpu).unwrap();
        let lt = teacher_log_probs(&teachers, 2.0).unwrap();
        let grads = kd_loss(kind, &student, &lt, 2.0, &mask).unwrap().backward().unwrap();
        let g = grads.get(&student).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let base: Vec<f64> = [STUDENT, IGNORED].concat();
        for k in 0..base.len() {
            let at = |d: f64| {
                let mut z = base.clone();
                z[k] += d;
                let z = Tensor::from_vec(z, (2, 3), &Device::Cpu).unwrap();
                kd_loss(kind, &z, &lt, 2.0, &mask).unwrap().to_scalar::<f64>().unwrap()
            };
            let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
            assert!((fd - g[k]).abs() < 1e-7, "{kind} logit {k}: backward {} vs finite difference {fd}", g[k]);
        }
        assert!(g[3..].iter().all(|x| *x == 0.0), "a masked row gets no gradient");
    }
}
