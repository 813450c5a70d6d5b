//! Row reductions in 8 independent lanes. A plain fold over floats is one chain of
//! dependent operations the compiler may not reorder (float addition is not associative), so
//! it runs one element at a time; 8 lanes combined at the end vectorise. The order of the
//! additions is fixed, so results stay bit-for-bit reproducible.

use num_traits::Float;

const LANES: usize = 8;

/// The largest element (NaNs are passed over, as `f32::max` does); −∞ for none.
pub(crate) fn max<T: Float>(xs: &[T]) -> T {
    let larger = |m: T, x: T| if x > m { x } else { m };
    let mut lanes = [T::neg_infinity(); LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = larger(*m, x);
        }
    }
    lanes.into_iter().fold(chunks.remainder().iter().copied().fold(T::neg_infinity(), larger), larger)
}

/// The sum of the elements.
pub(crate) fn sum<T: Float>(xs: &[T]) -> T {
    sum_of(xs.len(), |i| xs[i])
}

/// `Σ aᵢ·bᵢ`.
pub(crate) fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    sum_of(n, |i| a[i] * b[i])
}

/// `Σ term(i)` for `i` in `0..n`, lane `i % 8` taking term `i`.
pub(crate) fn sum_of<T: Float>(n: usize, term: impl Fn(usize) -> T) -> T {
    let mut lanes = [T::zero(); LANES];
    let whole = n - n % LANES;
    for at in (0..whole).step_by(LANES) {
        for (j, s) in lanes.iter_mut().enumerate() {
            *s = *s + term(at + j);
        }
    }
    let tail = (whole..n).fold(T::zero(), |s, i| s + term(i));
    lanes.into_iter().fold(tail, |s, x| s + x)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reduce_like_a_fold_for_every_length() {
        for n in [0, 1, 7, 8, 9, 100] {
            let xs: Vec<f64> = (0..n).map(|i| ((i * 37 % 11) as f64 - 5.0) * 0.25).collect();
            let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(super::max(&xs), max, "{n}");
            assert!((super::sum(&xs) - xs.iter().sum::<f64>()).abs() < 1e-12, "{n}");
            let squares: f64 = xs.iter().map(|x| x * x).sum();
            assert!((super::dot(&xs, &xs) - squares).abs() < 1e-12, "{n}");
        }
        assert_eq!(super::max(&[1.0f32, f32::NAN, 3.0]), 3.0);
    }
}
