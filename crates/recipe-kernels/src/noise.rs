//! Random values that are a pure function of a seed and each element's index, so that a
//! resumed run draws them again exactly and a backward pass can redraw instead of keeping them.

use candle_core::{DType, Device, Result, Shape, Tensor};

use crate::{for_each_chunk_mut, unfilled};

/// A counter-based generator step (Steele et al.'s SplitMix64): independent values for
/// consecutive inputs.
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform noise in `[-bound, bound)` of `shape`, element `i` being `bound·(2u − 1)` with `u`
/// the top 53 bits of `splitmix64(seed ^ splitmix64(i))` read as a fraction of 2⁵³ (the hash
/// adapter dropout draws its masks from). Drawn on the host in parallel and moved to `device`
/// in `dtype`.
pub fn uniform_noise(shape: impl Into<Shape>, seed: u64, bound: f64, dtype: DType, device: &Device) -> Result<Tensor> {
    const CHUNK: usize = 1 << 14;
    let shape = shape.into();
    let n = shape.elem_count();
    let scale = 2.0 * bound / (1u64 << 53) as f64;
    // Safety: the chunks cover the buffer and each is written in full.
    let mut values = unsafe { unfilled::<f32>(n) };
    for_each_chunk_mut(&mut values, CHUNK, |c, chunk| {
        for (i, v) in (c * CHUNK..).zip(chunk.iter_mut()) {
            *v = ((splitmix64(seed ^ splitmix64(i as u64)) >> 11) as f64 * scale - bound) as f32;
        }
    });
    Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within the bound, centred, with a uniform's variance bound²/3; the same for the same
    /// seed and different for another.
    #[test]
    fn uniform_noise_is_uniform_and_a_function_of_its_seed() {
        let draw = |seed| uniform_noise((64, 1000), seed, 0.5, DType::F32, &Device::Cpu).unwrap();
        let values = draw(7).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|v| (-0.5..0.5).contains(v)));
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let variance = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 3e-3, "mean {mean}");
        assert!((variance - 0.25 / 3.0).abs() < 2e-3, "variance {variance}");
        let same = draw(7).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values, same);
        let other = draw(8).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().zip(&other).filter(|(a, b)| a == b).count() < 10);
    }
}
