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
