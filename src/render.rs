//! Small text renderings shared by the verbs: sizes, counts and the LR sparkline.

/// `1.2M`, `35.0k`, `512`.
pub fn count(n: f64) -> String {
    let units = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, suffix) in units {
        if n >= scale {
            return format!("{:.1}{suffix}", n / scale);
        }
    }
    format!("{n:.0}")
}

/// `12.3 MiB`.
pub fn bytes(n: u64) -> String {
    let units = [(1u64 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (scale, suffix) in units {
        if n >= scale {
            return format!("{:.1} {suffix}", n as f64 / scale as f64);
        }
    }
    format!("{n} B")
}

/// One character per bucket of `values`, from ▁ (0) to █ (the maximum).
pub fn sparkline(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if values.is_empty() {
        return String::new();
    }
    let max = values.iter().cloned().fold(0.0, f64::max);
    let width = width.min(values.len()).max(1);
    (0..width)
        .map(|i| {
            let v = values[i * values.len() / width];
            let level = if max > 0.0 { ((v / max) * 7.0).round() as usize } else { 0 };
            BARS[level.min(7)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_spans_the_range() {
        assert_eq!(sparkline(&[0.0, 0.5, 1.0], 3), "▁▅█");
        assert_eq!(count(1_234_567.0), "1.2M");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}
