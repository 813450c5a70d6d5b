//! TensorBoard event files for `recipe train --tensorboard`: every step's scalars written as
//! `Event` protocol buffers in TFRecord framing, one folder per stage under
//! `runs/NAME/_tensorboard/`, so `tensorboard --logdir runs/NAME/_tensorboard` plots them. The
//! format is small and fixed (TensorBoard's `event.proto` and `summary.proto`), so it is
//! written here rather than through a protobuf toolchain.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use recipe_train::{Observer, StepMetrics};

/// Writes each stage's steps to its own event file.
pub struct TensorBoard {
    logdir: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl TensorBoard {
    pub fn new(logdir: &Path) -> TensorBoard {
        TensorBoard { logdir: logdir.to_path_buf(), file: Mutex::new(None) }
    }

    fn write(&self, event: &[u8]) {
        if let Some(file) = self.file.lock().expect("not poisoned").as_mut()
            && let Err(e) = file.write_all(&record(event))
        {
            tracing::warn!("cannot write a TensorBoard event under {}: {e}", self.logdir.display());
        }
    }
}

impl Observer for TensorBoard {
    fn start(&self, stage: &str, _start_step: u64, _steps: u64) {
        let dir = self.logdir.join(stage);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let path = dir.join(format!("events.out.tfevents.{}.recipe.{}", now.as_secs(), std::process::id()));
        let opened = std::fs::create_dir_all(&dir).and_then(|_| std::fs::File::create(&path));
        match opened {
            Ok(file) => {
                *self.file.lock().expect("not poisoned") = Some(file);
                self.write(&event(0, Content::FileVersion("brain.Event:2")));
            }
            Err(e) => tracing::warn!("cannot write TensorBoard events to {}: {e}", path.display()),
        }
    }

    fn step(&self, m: &StepMetrics) {
        let scalars = [
            ("train/loss", Some(m.loss)),
            ("train/lr", Some(m.lr)),
            ("train/grad_norm", Some(m.grad_norm)),
            ("train/tokens_per_s", Some(m.tokens_per_s)),
            ("train/ce_loss", m.ce_loss),
            ("train/kd_loss", m.kd_loss),
            ("train/loss_scale", m.loss_scale),
            ("train/peak_memory_mib", m.peak_memory_mib),
            ("eval/loss", m.eval_loss),
        ];
        let scalars: Vec<(&str, f32)> = scalars.iter().filter_map(|(tag, v)| Some((*tag, (*v)? as f32))).collect();
        self.write(&event(m.step, Content::Scalars(&scalars)));
    }

    fn message(&self, _text: &str) {}

    fn finish(&self) {
        if let Some(file) = self.file.lock().expect("not poisoned").take() {
            let _ = file.sync_all();
        }
    }
}

/// Forwards to two observers: the progress bar and the event writer.
pub struct Both<'a>(pub &'a dyn Observer, pub &'a dyn Observer);

impl Observer for Both<'_> {
    fn start(&self, stage: &str, start_step: u64, steps: u64) {
        self.0.start(stage, start_step, steps);
        self.1.start(stage, start_step, steps);
    }
    fn step(&self, m: &StepMetrics) {
        self.0.step(m);
        self.1.step(m);
    }
    fn message(&self, text: &str) {
        self.0.message(text);
        self.1.message(text);
    }
    fn finish(&self) {
        self.0.finish();
        self.1.finish();
    }
}

enum Content<'a> {
    FileVersion(&'a str),
    Scalars(&'a [(&'a str, f32)]),
}

/// An `Event`: wall_time = 1 (double), step = 2 (int64), file_version = 3, summary = 5.
fn event(step: u64, content: Content) -> Vec<u8> {
    let wall_time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut out = vec![0x09];
    out.extend(wall_time.as_secs_f64().to_le_bytes());
    out.push(0x10);
    varint(&mut out, step);
    match content {
        Content::FileVersion(v) => bytes_field(&mut out, 3, v.as_bytes()),
        Content::Scalars(scalars) => {
            // Summary { repeated Value value = 1 }, Value { tag = 1, simple_value = 2 (float) }.
            let mut summary = Vec::new();
            for (tag, v) in scalars {
                let mut value = Vec::new();
                bytes_field(&mut value, 1, tag.as_bytes());
                value.push(0x15);
                value.extend(v.to_le_bytes());
                bytes_field(&mut summary, 1, &value);
            }
            bytes_field(&mut out, 5, &summary);
        }
    }
    out
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// TFRecord framing: length, its masked CRC, the data, its masked CRC.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend(len);
    out.extend(masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend(masked_crc(data).to_le_bytes());
    out
}

fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// CRC-32C (Castagnoli), bit by bit: event files are small.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_its_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn varints_are_little_endian_groups_of_seven_bits() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }
}
