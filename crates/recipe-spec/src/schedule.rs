//! Learning-rate schedules: one definition, used by `plan` to draw the curve and by the trainer
//! to set the rate, so the two cannot disagree.

use serde::Serialize;

use crate::decode::{self, Cx, Fields, check_range, only_for};
use crate::diag::Diagnostic;
use crate::tree::Node;
use crate::vocab::words;

words!(ScheduleKind {
    Constant = "constant",
    Linear = "linear",
    Cosine = "cosine",
    Wsd = "wsd",
    InverseSqrt = "inverse-sqrt",
    Power = "power",
});

/// `schedule = { kind, warmup, decay, min_lr_ratio, power }`. Fields that do not apply to the
/// kind are absent (`None`) rather than ignored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Schedule {
    /// Default `cosine`.
    pub kind: ScheduleKind,
    /// Default 0: optimizer steps of linear warmup from lr/warmup to lr.
    pub warmup: u64,
    /// `wsd` only, default 0.2: the final fraction of the stage that decays linearly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decay: Option<f64>,
    /// Every kind but `constant`; default 0.1 for `linear`, `cosine`, `wsd`, and 0 for
    /// `inverse-sqrt` and `power`: the floor, as a fraction of the peak rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_lr_ratio: Option<f64>,
    /// `power` only, default 0.5: lr ∝ step^-power after warmup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power: Option<f64>,
}

impl Schedule {
    pub fn with_defaults(kind: ScheduleKind) -> Schedule {
        use ScheduleKind::*;
        Schedule {
            kind,
            warmup: 0,
            decay: (kind == Wsd).then_some(0.2),
            min_lr_ratio: match kind {
                Constant => None,
                Linear | Cosine | Wsd => Some(0.1),
                InverseSqrt | Power => Some(0.0),
            },
            power: (kind == Power).then_some(0.5),
        }
    }

    /// The multiplier of the peak rate for the optimizer step `step` (0-based) of `total`.
    pub fn factor(&self, step: u64, total: u64) -> f64 {
        use ScheduleKind::*;
        let w = self.warmup;
        if step < w {
            return (step + 1) as f64 / w as f64;
        }
        let floor = self.min_lr_ratio.unwrap_or(0.0);
        let after = (step - w) as f64;
        let span = total.saturating_sub(w).max(1) as f64;
        let progress = (after / span).min(1.0);
        match self.kind {
            Constant => 1.0,
            Linear => 1.0 - (1.0 - floor) * progress,
            Cosine => floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            Wsd => {
                let decay_steps = (self.decay.unwrap_or(0.0) * total as f64).round() as u64;
                let decay_start = total.saturating_sub(decay_steps);
                if step < decay_start || decay_steps == 0 {
                    1.0
                } else {
                    let q = (step - decay_start + 1) as f64 / decay_steps as f64;
                    1.0 - (1.0 - floor) * q.min(1.0)
                }
            }
            InverseSqrt => (w.max(1) as f64 / (step + 1) as f64).sqrt().max(floor),
            Power => (w.max(1) as f64 / (step + 1) as f64).powf(self.power.unwrap_or(0.5)).max(floor),
        }
    }
}

impl Schedule {
    pub(crate) fn decode(cx: &mut Cx, node: Option<&Node>, path: &str, steps: u64) -> Schedule {
        const KEYS: &[&str] = &["kind", "warmup", "decay", "min_lr_ratio", "power"];
        let mut s = Schedule::with_defaults(ScheduleKind::Cosine);
        let Some(node) = node else { return s };
        let f = Fields::of(cx, node, path, KEYS);
        f.check_unknown(cx);
        if let Some(kind) = f.word::<ScheduleKind>(cx, "kind") {
            s = Schedule::with_defaults(kind);
        }
        let warmup = f.opt(cx, "warmup", decode::count).unwrap_or(0);
        if warmup >= steps && warmup > 0 {
            let origin = cx.origins.get(&f.child_path("warmup")).cloned().unwrap_or_default();
            cx.diags.push(
                Diagnostic::new(&origin, format!("warmup ({warmup}) must be less than the stage's steps ({steps})"))
                    .label("warmup counts optimizer steps"),
            );
        }
        s.warmup = warmup;
        let decay = f.opt(cx, "decay", decode::float);
        only_for(cx, &f, "decay", decay.is_some(), s.kind == ScheduleKind::Wsd, "kind = \"wsd\"");
        if let (Some(d), Some(slot)) = (decay, s.decay.as_mut()) {
            check_range(cx, &f.child_path("decay"), d, d > 0.0 && d <= 1.0, "a fraction of the stage in (0, 1]");
            *slot = d;
            if warmup.saturating_add((d * steps as f64).round() as u64) > steps {
                let origin = cx.origins.get(&f.child_path("decay")).cloned().unwrap_or_default();
                cx.diags.push(
                    Diagnostic::new(&origin, "warmup and decay together are longer than the stage")
                        .label(format!("{warmup} warmup + {} decay steps > {steps}", (d * steps as f64).round())),
                );
            }
        }
        let min_lr_ratio = f.opt(cx, "min_lr_ratio", decode::float);
        only_for(
            cx,
            &f,
            "min_lr_ratio",
            min_lr_ratio.is_some(),
            s.kind != ScheduleKind::Constant,
            "a decaying schedule",
        );
        if let (Some(m), Some(slot)) = (min_lr_ratio, s.min_lr_ratio.as_mut()) {
            check_range(cx, &f.child_path("min_lr_ratio"), m, (0.0..=1.0).contains(&m), "a ratio in [0, 1]");
            *slot = m;
        }
        let power = f.opt(cx, "power", decode::float);
        only_for(cx, &f, "power", power.is_some(), s.kind == ScheduleKind::Power, "kind = \"power\"");
        if let (Some(p), Some(slot)) = (power, s.power.as_mut()) {
            check_range(cx, &f.child_path("power"), p, p > 0.0, "an exponent > 0");
            *slot = p;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(s: &Schedule, total: u64) -> Vec<f64> {
        (0..total).map(|t| s.factor(t, total)).collect()
    }

    #[test]
    fn warmup_rises_linearly_to_peak() {
        let mut s = Schedule::with_defaults(ScheduleKind::Cosine);
        s.warmup = 4;
        let c = curve(&s, 20);
        assert_eq!(&c[..5], &[0.25, 0.5, 0.75, 1.0, 1.0]);
        assert!(c.windows(2).skip(4).all(|w| w[1] <= w[0]), "cosine decays monotonically");
        assert!(c[19] > 0.1 && c[19] < 0.12);
    }

    #[test]
    fn wsd_is_flat_then_decays_to_floor() {
        let mut s = Schedule::with_defaults(ScheduleKind::Wsd);
        s.min_lr_ratio = Some(0.0);
        let c = curve(&s, 10);
        assert_eq!(&c[..8], &[1.0; 8]);
        assert_eq!(c[8], 0.5);
        assert_eq!(c[9], 0.0);
    }

    #[test]
    fn inverse_sqrt_and_power_decay_after_warmup() {
        let mut s = Schedule::with_defaults(ScheduleKind::InverseSqrt);
        s.warmup = 4;
        assert_eq!(s.factor(3, 100), 1.0);
        assert_eq!(s.factor(15, 100), 0.5);
        let mut p = Schedule::with_defaults(ScheduleKind::Power);
        p.warmup = 4;
        p.power = Some(1.0);
        assert_eq!(p.factor(7, 100), 0.5);
        let l = Schedule::with_defaults(ScheduleKind::Linear);
        assert_eq!(l.factor(0, 10), 1.0);
        assert!((l.factor(5, 10) - 0.55).abs() < 1e-12);
        assert_eq!(Schedule::with_defaults(ScheduleKind::Constant).factor(9, 10), 1.0);
    }
}
