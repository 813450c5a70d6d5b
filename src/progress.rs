//! Progress bars for long work, drawn on stderr with indicatif (hidden when stderr is not a
//! terminal).

use indicatif::{ProgressBar, ProgressStyle};
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

/// The training bar: step of N, loss, lr, tokens/s and ETA.
pub struct TrainBar {
    bar: Mutex<Option<ProgressBar>>,
}

impl TrainBar {
    pub fn new() -> TrainBar {
        TrainBar { bar: Mutex::new(None) }
    }
}

impl recipe_train::Observer for TrainBar {
    fn start(&self, stage: &str, start_step: u64, steps: u64) {
        let bar = ProgressBar::new(steps).with_message(stage.to_string());
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
        if let Some(bar) = self.bar.lock().expect("not poisoned").as_ref() {
            let eval = m.eval_loss.map_or(String::new(), |e| format!(" eval {e:.3}"));
            bar.set_prefix(format!("loss {:.3}{eval} lr {:.2e} {:.0} tok/s", m.loss, m.lr, m.tokens_per_s));
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
