//! Progress bars for long work, drawn on stderr with indicatif (hidden when stderr is not a
//! terminal).

use std::time::{Duration, Instant};

use indicatif::{HumanDuration, ProgressBar, ProgressStyle};
use std::sync::Mutex;

pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bar {
    pub fn new() -> Bar {
        Bar { bar: Mutex::new(None) }
    }
}

impl recipe_data::Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        let bar = ProgressBar::new(total).with_message(what.to_string());
        bar.set_style(
            ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} {per_sec} ETA {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        *self.bar.lock().expect("not poisoned") = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = self.bar.lock().expect("not poisoned").as_ref() {
            bar.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().expect("not poisoned").take() {
            bar.finish_and_clear();
        }
    }
}

/// The training bar: which stage of how many, step of N, loss, lr, tokens/s, and the time left
/// for the stage (indicatif's ETA) and for the whole run.
pub struct TrainBar {
    bar: Mutex<Option<ProgressBar>>,
    /// The stages this run trains, in order, with the steps each has left when it starts.
    plan: Vec<(String, u64)>,
    pace: Mutex<Pace>,
}

/// How long a step takes lately, and where the run is in its plan.
struct Pace {
    stage: usize,
    last_step: Option<Instant>,
    /// Seconds per step, smoothed.
    seconds: Option<f64>,
}

impl TrainBar {
    pub fn new(plan: Vec<(String, u64)>) -> TrainBar {
        TrainBar { bar: Mutex::new(None), plan, pace: Mutex::new(Pace { stage: 0, last_step: None, seconds: None }) }
    }

    /// Steps left in the stages after the current one.
    fn later_steps(&self, stage: usize) -> u64 {
        self.plan.iter().skip(stage + 1).map(|(_, steps)| steps).sum()
    }
}

impl recipe_train::Observer for TrainBar {
    fn start(&self, stage: &str, start_step: u64, steps: u64) {
        let index = self.plan.iter().position(|(name, _)| name == stage).unwrap_or(0);
        *self.pace.lock().expect("not poisoned") = Pace { stage: index, last_step: None, seconds: None };
        let label = match self.plan.len() {
            0 | 1 => stage.to_string(),
            n => format!("{stage} (stage {} of {n})", index + 1),
        };
        let bar = ProgressBar::new(steps).with_message(label);
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] step {pos}/{len} {prefix} ETA {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_position(start_step);
        bar.reset_eta();
        *self.bar.lock().expect("not poisoned") = Some(bar);
    }

    fn step(&self, m: &recipe_train::StepMetrics) {
        let mut pace = self.pace.lock().expect("not poisoned");
        let now = Instant::now();
        if let Some(last) = pace.last_step {
            let took = now.duration_since(last).as_secs_f64();
            pace.seconds = Some(pace.seconds.map_or(took, |s| 0.9 * s + 0.1 * took));
        }
        pace.last_step = Some(now);
        if let Some(bar) = self.bar.lock().expect("not poisoned").as_ref() {
            let eval = m.eval_loss.map_or(String::new(), |e| format!(" eval {e:.3}"));
            let run_left = match (pace.seconds, self.plan.len() > 1) {
                (Some(s), true) => {
                    let steps = bar.length().unwrap_or(0).saturating_sub(m.step) + self.later_steps(pace.stage);
                    format!(" · run ETA {}", HumanDuration(Duration::from_secs_f64(s * steps as f64)))
                }
                _ => String::new(),
            };
            bar.set_prefix(format!("loss {:.3}{eval} lr {:.2e} {:.0} tok/s{run_left}", m.loss, m.lr, m.tokens_per_s));
            bar.set_position(m.step);
            if let Some(e) = m.eval_loss {
                bar.println(format!("step {}: loss {:.4}, eval loss {e:.4} (ppl {:.2})", m.step, m.loss, e.exp()));
            }
        }
    }
    fn message(&self, text: &str) {
        match self.bar.lock().expect("not poisoned").as_ref() {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().expect("not poisoned").take() {
            bar.finish_and_clear();
        }
    }
}

/// What a rank other than the leader shows: nothing (the leader shows the run's progress).
pub struct Quiet;

impl recipe_train::Observer for Quiet {
    fn start(&self, _: &str, _: u64, _: u64) {}
    fn step(&self, _: &recipe_train::StepMetrics) {}
    fn message(&self, _: &str) {}
    fn finish(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_eta_counts_the_steps_of_the_stages_still_to_come() {
        let bar = TrainBar::new(vec![("a".into(), 10), ("b".into(), 20), ("c".into(), 5)]);
        assert_eq!((bar.later_steps(0), bar.later_steps(1), bar.later_steps(2)), (25, 5, 0));
    }
}
