//! `exp` over a slice, vectorised. The standard library's `f32::exp` is a call per element
//! into libm that the compiler cannot vectorise, and it was a tenth of the tiny model's step
//! (softmax, SiLU and cross-entropy exponentiate every score, activation and logit). This is
//! Cephes' `expf` — `2ⁿ · e^r` with `r = x − n·ln 2` in `[−ln2/2, ln2/2]` and a degree-6
//! polynomial for `e^r`, within 2 ulp — written as plain arithmetic so the loop vectorises, and
//! compiled twice: for AVX2 with FMA, chosen at run time, and for the baseline CPU. Inputs are
//! clamped to `[−87.3, 88]`: below, the result is about 1e-38 instead of a subnormal or 0,
//! which no sum of exponentials here can tell apart. f64 keeps the standard library's.

/// Values the kernels exponentiate in place.
pub(crate) trait ExpInPlace: Sized {
    fn exp_in_place(xs: &mut [Self]);
}

impl ExpInPlace for f64 {
    fn exp_in_place(xs: &mut [f64]) {
        xs.iter_mut().for_each(|x| *x = x.exp());
    }
}

impl ExpInPlace for f32 {
    fn exp_in_place(xs: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // Safety: the CPU has both features.
            return unsafe { exp_avx2_fma(xs) };
        }
        xs.iter_mut().for_each(|x| *x = exp::<false>(*x));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_avx2_fma(xs: &mut [f32]) {
    xs.iter_mut().for_each(|x| *x = exp::<true>(*x));
}

/// `a·b + c`, fused where the CPU has FMA.
#[inline(always)]
fn mul_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

#[inline(always)]
fn exp<const FMA: bool>(x: f32) -> f32 {
    let x = x.clamp(-87.336_55, 88.0);
    // Round to nearest by adding and removing 1.5·2²³ (exact for |v| < 2²²), which vectorises
    // where `round` would be a libm call on the baseline CPU.
    const ROUND: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // The same n as an integer, read from the low bits of `shifted` (whose last place is 1):
    // `n as i32` saturates, which compiles to a compare and branch per element.
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    // ln 2 in two parts, so n·C1 is exact.
    let r = mul_add::<FMA>(n, 2.121_944_4e-4, mul_add::<FMA>(n, -0.693_359_4, x));
    let mut p = 1.987_569_2e-4;
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = mul_add::<FMA>(p, r, c);
    }
    let e = mul_add::<FMA>(p, r * r, r + 1.0);
    e * f32::from_bits(((n_int + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::ExpInPlace;

    #[test]
    fn within_two_ulp_of_the_standard_library_over_the_range() {
        let xs: Vec<f32> = (0..200_001).map(|i| -87.0 + 175.0 * i as f32 / 200_000.0).collect();
        let mut ys = xs.clone();
        f32::exp_in_place(&mut ys);
        for (x, y) in xs.iter().zip(&ys) {
            let want = (*x as f64).exp();
            assert!(((*y as f64 - want) / want).abs() < 2.5e-7, "exp({x}) = {y}, want {want}");
        }
        let mut edges = [f32::NEG_INFINITY, -1e4, 0.0, 100.0];
        f32::exp_in_place(&mut edges);
        assert!(edges[0] >= 0.0 && edges[0] < 1.2e-38 && edges[1] < 1.2e-38, "{edges:?}");
        assert_eq!(edges[2], 1.0);
        assert!(edges[3].is_finite() && edges[3] > 1e38);
    }
}
