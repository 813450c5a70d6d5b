//! Matrix products with bf16 dot products in hardware. AVX512-BF16's `vdpbf16ps` multiplies
//! 16 pairs of bf16 pairs and adds each pair's two products to an f32 lane: twice the work of
//! an f32 FMA per instruction, with the numbers of a bf16 matrix unit (exact products, f32
//! sums). bf16-mixed precision on the CPU takes this path where the CPU has the instruction,
//! checked at run time; elsewhere it multiplies bf16-rounded values in f32 (`super`), which
//! gives the same numbers up to the order of the additions.
//!
//! Each operand is packed once into panels of bf16 pairs, `[panel][pair][width]`: a pair is
//! elements `2p` and `2p + 1` along the summed dimension in one `u32`, each rounded to nearest
//! with ties to even by the hardware's conversion (which, like the dot product, flushes
//! subnormals to zero); an odd last element is paired with zero, and a short last panel is
//! padded with zeros. A tile of 12 rows × 32 columns keeps its 24 accumulators in registers
//! for up to 256 pairs at a time, reading its A panel from L1 and its B panel from L2. Tiles
//! are grouped into tasks of fixed size on Candle's worker pool and each output element is
//! written by one task in a fixed order, so a product is deterministic and its bits do not
//! depend on the number of threads.

use std::arch::x86_64::*;

use crate::{Disjoint, parallel_for, unfilled};

/// Rows of a tile: A's panel width.
const ROWS: usize = 12;
/// Columns of a tile (two vectors of 16 f32 lanes): B's panel width.
const COLS: usize = 32;
/// Pairs a tile sums before its accumulators go to memory: A's panel part is 12 KiB (L1),
/// B's 32 KiB.
const PAIRS: usize = 256;
/// Rows and columns of a task: the B panels it reuses (256 KiB at most) stay in L2.
const TASK_ROWS: usize = 4 * ROWS;
const TASK_COLS: usize = 8 * COLS;

/// Whether this CPU has bf16 dot products (AVX512-BF16).
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
}

/// An f32 matrix seen through strides: element `(i, j)` is `data[i·row_stride + j·col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Strided<'_> {
    /// Whether every element is inside `data`: the packing reads them unchecked.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// `a · b` (`[m, k]` times `[k, n]`) as a row-major `[m, n]`: operands rounded to bf16, products
/// summed in f32, the result rounded to bf16 (kept as f32).
///
/// # Panics
/// Where [`available`] is false, the inner dimensions differ or a view reaches past its data.
pub(crate) fn product(a: Strided, b: Strided) -> Vec<f32> {
    assert!(available(), "bf16 dot products need AVX512-BF16");
    assert_eq!(a.cols, b.rows, "a product's inner dimensions");
    assert!(a.in_bounds() && b.in_bounds(), "a strided view inside its data");
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let pairs = k.div_ceil(2);
    if m == 0 || n == 0 || pairs == 0 {
        return vec![0.0; m * n];
    }
    let packed_a = pack(a.data, m, k, a.row_stride, a.col_stride, ROWS);
    let packed_b = pack(b.data, n, k, b.col_stride, b.row_stride, COLS);
    // Safety: the tasks below cover every element of the product.
    let mut c = unsafe { unfilled::<f32>(m * n) };
    let out = Disjoint::of(&mut c);
    let col_tasks = n.div_ceil(TASK_COLS);
    parallel_for(m.div_ceil(TASK_ROWS) * col_tasks, |task| {
        let (rows, cols) = ((task / col_tasks) * TASK_ROWS, (task % col_tasks) * TASK_COLS);
        for start in (0..pairs).step_by(PAIRS) {
            let count = PAIRS.min(pairs - start);
            for r in (rows..(rows + TASK_ROWS).min(m)).step_by(ROWS) {
                let a = &packed_a[(r / ROWS * pairs + start) * ROWS..][..count * ROWS];
                for j in (cols..(cols + TASK_COLS).min(n)).step_by(COLS) {
                    let b = &packed_b[(j / COLS * pairs + start) * COLS..][..count * COLS];
                    let (height, width) = (ROWS.min(m - r), COLS.min(n - j));
                    let first = start == 0;
                    let last = start + count == pairs;
                    // Safety: the tile's elements lie inside `c` (`at` checks) and belong to this
                    // task alone; the panels hold `count` pairs (sliced above); the CPU has the
                    // features (asserted on entry).
                    unsafe {
                        let c = out.at(r * n + j, (height - 1) * n + width);
                        tile(count, a.as_ptr(), b.as_ptr(), c, n, height, width, first, last);
                    }
                }
            }
        }
    });
    c
}

/// `lines` lines of `len` elements (element `e` of line `l` at `l·line_stride + e·step`) as bf16
/// pairs along the line, in panels of `width` (at most 32) lines: `[panel][pair][width]`,
/// zero-padded.
fn pack(data: &[f32], lines: usize, len: usize, line_stride: usize, step: usize, width: usize) -> Vec<u32> {
    let pairs = len.div_ceil(2);
    let panel_len = pairs * width;
    let panels = lines.div_ceil(width);
    // Safety: the packing below writes every element of every panel, padding included.
    let mut packed = unsafe { unfilled::<u32>(panels * panel_len) };
    let out = Disjoint::of(&mut packed);
    if line_stride == 1 && step != 1 {
        // Neighbouring lines are neighbours in memory: read element rows front to back (a
        // panel at a time would read a few bytes of every row: one cache miss each) and write
        // each pair position's part of every panel.
        parallel_for(pairs.div_ceil(16), |chunk| {
            let positions = 16 * chunk..(16 * chunk + 16).min(pairs);
            // Safety: each chunk writes its own pair positions of the panels; the lines'
            // elements are inside `data` (checked by `product`), and so are the CPU's features.
            unsafe { pack_across(data, lines, len, step, width, positions, out) };
        });
        return packed;
    }
    parallel_for(panels, |panel| {
        let (first, count) = (panel * width, width.min(lines - panel * width));
        // Safety: one task per panel and `packed` outlives the loop; the lines' elements are
        // inside `data` (checked by `product`), and so are the CPU's features.
        unsafe {
            pack_along(data, first, count, len, line_stride, step, width, out.part(panel * panel_len, panel_len))
        };
    });
    packed
}

/// Pair positions `positions` of every panel, for lines that are neighbours in memory: a
/// vector of lines at a time from each of the pair's two element rows.
///
/// # Safety
/// The `lines` lines lie inside `data`; `out` is the packed panels and no other task writes
/// these positions; the CPU has the features.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_across(
    data: &[f32],
    lines: usize,
    len: usize,
    step: usize,
    width: usize,
    positions: std::ops::Range<usize>,
    out: Disjoint<u32>,
) {
    let panel_len = len.div_ceil(2) * width;
    for p in positions {
        for first in (0..lines).step_by(width) {
            // Safety: this pair position of this panel (`at` checks it is inside the buffer).
            let dst = unsafe { out.at(first / width * panel_len + p * width, width) };
            for at in (0..width).step_by(16) {
                let (load, store) = (lane_mask((lines - first).saturating_sub(at)), lane_mask(width - at));
                let from = first + at;
                // Safety: the load mask reads only the panel's lines (the caller's promise); the
                // store mask writes only this pair's `width` elements of the panel.
                unsafe {
                    let bf16 = |element: usize| {
                        let values = _mm512_maskz_loadu_ps(load, data.as_ptr().wrapping_add(element * step + from));
                        _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(values)))
                    };
                    let mut pairs = bf16(2 * p);
                    if 2 * p + 1 < len {
                        pairs = _mm512_or_si512(pairs, _mm512_slli_epi32::<16>(bf16(2 * p + 1)));
                    }
                    _mm512_mask_storeu_epi32(dst.add(at).cast(), store, pairs);
                }
            }
        }
    }
}

/// One panel of lines laid out along memory (or strided): 16 pairs of every line at a time,
/// converted a vector a line, then written across the lines.
///
/// # Safety
/// Lines `first .. first + count` lie inside `data`; `dst` is the panel; the CPU has the features.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)] // the panel's geometry
unsafe fn pack_along(
    data: &[f32],
    first: usize,
    count: usize,
    len: usize,
    line_stride: usize,
    step: usize,
    width: usize,
    dst: &mut [u32],
) {
    let pairs = len.div_ceil(2);
    assert!(width <= COLS && dst.len() == pairs * width);
    let mut block = [[0u32; 16]; COLS];
    let mut gathered = [0f32; 32];
    for start in (0..pairs).step_by(16) {
        let at = 2 * start;
        for (l, converted) in block.iter_mut().enumerate().take(width) {
            if l >= count {
                *converted = [0; 16];
                continue;
            }
            let line = (first + l) * line_stride;
            let values = match step {
                // Safety: the line's elements are inside `data` (the caller's promise).
                1 => unsafe {
                    let values = data.as_ptr().add(line + at);
                    // A panel reads its lines side by side, more streams than the hardware
                    // prefetcher follows: ask for each line's next kilobyte.
                    _mm_prefetch::<_MM_HINT_T0>(values.wrapping_add(256).cast());
                    _mm_prefetch::<_MM_HINT_T0>(values.wrapping_add(272).cast());
                    values
                },
                _ => {
                    for (e, g) in gathered.iter_mut().enumerate() {
                        *g = if at + e < len { data[line + (at + e) * step] } else { 0.0 };
                    }
                    gathered.as_ptr()
                }
            };
            let valid = |from: usize| lane_mask((len - at).saturating_sub(from));
            // Safety: the masks keep the loads inside the line's remaining elements.
            unsafe {
                let low = _mm512_maskz_loadu_ps(valid(0), values);
                let high = _mm512_maskz_loadu_ps(valid(16), values.wrapping_add(16));
                let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(high, low));
                _mm512_storeu_si512(converted.as_mut_ptr().cast(), pairs);
            }
        }
        for q in 0..16.min(pairs - start) {
            let row = &mut dst[(start + q) * width..][..width];
            for (d, converted) in row.iter_mut().zip(&block) {
                *d = converted[q];
            }
        }
    }
}

/// The first `lanes` (at most 16) of 16 lanes.
fn lane_mask(lanes: usize) -> __mmask16 {
    ((1u32 << lanes.min(16)) - 1) as __mmask16
}

/// One tile: `c[..height][..width]` (row stride `ldc`) gets the sum over `pairs` pairs of A's
/// panel `a` (`[pair][ROWS]`) times B's panel `b` (`[pair][COLS]`), written on the `first` pass
/// and added on later ones, rounded to bf16 on the `last`.
///
/// # Safety
/// `a` and `b` hold `pairs` pairs of their panels; `c` is writable for the tile; the CPU has
/// the features.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)] // a microkernel's operands, kept in registers
unsafe fn tile(
    pairs: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    height: usize,
    width: usize,
    first: bool,
    last: bool,
) {
    let mut sums = [[_mm512_setzero_ps(); 2]; ROWS];
    for p in 0..pairs {
        // Safety: inside the panels (the caller's promise).
        unsafe {
            let b = b.add(p * COLS);
            let left: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.cast()));
            let right: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16).cast()));
            let a = a.add(p * ROWS);
            for (r, sums) in sums.iter_mut().enumerate() {
                let pair: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r) as i32));
                sums[0] = _mm512_dpbf16_ps(sums[0], pair, left);
                sums[1] = _mm512_dpbf16_ps(sums[1], pair, right);
            }
        }
    }
    for (r, sums) in sums.iter().enumerate().take(height) {
        for (half, &sum) in sums.iter().enumerate() {
            let lanes = width.saturating_sub(16 * half);
            if lanes == 0 {
                break;
            }
            let mask = lane_mask(lanes);
            // Safety: the tile's row `r`, its first `width` columns (the caller's promise).
            unsafe {
                let at = c.add(r * ldc + 16 * half);
                let mut v = sum;
                if !first {
                    v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), v);
                }
                if last {
                    let bf16: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                    v = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bf16)));
                }
                _mm512_mask_storeu_ps(at, mask, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator: values in [-2, 2) with a few large and tiny ones.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let v = (s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0;
                match i % 97 {
                    0 => v * 1e4,
                    1 => v * 1e-4,
                    _ => v,
                }
            })
            .collect()
    }

    fn bf16(v: f32) -> f64 {
        half::bf16::from_f32(v).to_f32() as f64
    }

    /// The product in f64 of the bf16-rounded operands.
    fn reference(a: Strided, b: Strided) -> Vec<f64> {
        let at = |s: &Strided, i: usize, j: usize| bf16(s.data[i * s.row_stride + j * s.col_stride]);
        let mut c = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                c[i * b.cols + j] = (0..a.cols).map(|e| at(&a, i, e) * at(&b, e, j)).sum();
            }
        }
        c
    }

    /// Every element within a bf16 rounding of the exact sum (plus f32 summation error, which
    /// scales with the sum of magnitudes) and a bf16 value.
    fn check(got: &[f32], want: &[f64], magnitude: &[f64], k: usize, what: &str) {
        for (i, ((&g, &w), &mag)) in got.iter().zip(want).zip(magnitude).enumerate() {
            assert_eq!(g, half::bf16::from_f32(g).to_f32(), "{what}: element {i} is not a bf16 value");
            let tolerance = w.abs() / 128.0 + mag * k as f64 * 6e-8;
            assert!((g as f64 - w).abs() <= tolerance, "{what}: element {i}: {g} vs {w}");
        }
    }

    /// `[rows, cols]` in the given memory order: row-major, column-major, or rows 3 apart
    /// inside a wider buffer (neither stride 1).
    fn matrix(rows: usize, cols: usize, order: usize, seed: u64) -> (Vec<f32>, usize, usize) {
        match order {
            0 => (values(rows * cols, seed), cols, 1),
            1 => (values(rows * cols, seed), 1, rows),
            _ => (values(rows * cols * 3, seed), 3 * cols, 3),
        }
    }

    #[test]
    fn products_match_bf16_operands_summed_exactly_in_every_layout() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        // Ragged tiles and tasks, odd k, k over one pass of pairs, a single row and column.
        for &(m, k, n) in &[(1, 1, 1), (13, 7, 33), (50, 600, 70), (97, 513, 260), (5, 1030, 3)] {
            for a_order in 0..3 {
                for b_order in 0..3 {
                    let (ad, ars, acs) = matrix(m, k, a_order, 1 + m as u64);
                    let (bd, brs, bcs) = matrix(k, n, b_order, 2 + n as u64);
                    let a = Strided { data: &ad, rows: m, cols: k, row_stride: ars, col_stride: acs };
                    let b = Strided { data: &bd, rows: k, cols: n, row_stride: brs, col_stride: bcs };
                    let magnitude = reference(
                        Strided { data: &ad.iter().map(|v| v.abs()).collect::<Vec<_>>(), ..a },
                        Strided { data: &bd.iter().map(|v| v.abs()).collect::<Vec<_>>(), ..b },
                    );
                    let what = format!("{m}x{k}x{n}, layouts {a_order}/{b_order}");
                    check(&product(a, b), &reference(a, b), &magnitude, k, &what);
                }
            }
        }
    }

    #[test]
    fn products_are_the_same_bits_every_time() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let (a, b) = (values(300 * 700, 3), values(700 * 200, 4));
        let a = Strided { data: &a, rows: 300, cols: 700, row_stride: 700, col_stride: 1 };
        let b = Strided { data: &b, rows: 700, cols: 200, row_stride: 200, col_stride: 1 };
        let first = product(a, b);
        assert!((0..3).all(|_| product(a, b) == first));
    }

    #[test]
    fn an_empty_sum_is_zero() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let a = Strided { data: &[], rows: 4, cols: 0, row_stride: 0, col_stride: 1 };
        let b = Strided { data: &[], rows: 0, cols: 3, row_stride: 3, col_stride: 1 };
        assert_eq!(product(a, b), vec![0.0; 12]);
    }
}
