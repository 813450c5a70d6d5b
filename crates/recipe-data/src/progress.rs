//! How long work reports how far it has got, so that this crate prints nothing itself.

/// Reports progress of long work to whoever shows it (the binary draws a bar); this crate
/// prints nothing itself.
pub trait Progress: Sync {
    fn start(&self, what: &str, total: u64);
    fn advance(&self, n: u64);
    fn finish(&self);
}

/// Progress that goes nowhere.
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
