//! Candle's backward pass as vendored (`vendor/candle-core/PATCHES.md`): a tensor's first
//! gradient is kept as it arrives when it is contiguous (a strided one is still laid out by
//! adding it to zeros); later ones are summed onto it. The gradients must be what the
//! unpatched pass gives.

use candle_core::{Device, Result, Tensor, Var};

fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1()
}

#[test]
fn a_gradient_that_arrives_strided_is_kept_contiguous_and_exact() -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_vec((0..6).map(|i| i as f32 * 0.5 - 1.0).collect::<Vec<_>>(), (2, 3), &dev)?;
    let w = Tensor::from_vec(vec![1f32, -2.0, 0.5, 3.0, 0.25, -1.0], (2, 3), &dev)?;
    // d(sum(xᵀ ⊙ wᵀ))/dx arrives through the transpose's backward as a strided view.
    let grads = (x.t()? * w.t()?)?.sum_all()?.backward()?;
    let g = grads.get(&x).expect("x has a gradient");
    assert!(g.is_contiguous());
    assert_eq!(g.dims(), &[2, 3]);
    assert_eq!(values(g)?, values(&w)?);
    Ok(())
}

#[test]
fn gradients_from_several_uses_sum_and_subtraction_negates() -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_vec(vec![1.5f32, -2.0, 0.25], 3, &dev)?;
    let y = Var::from_vec(vec![0.5f32, 4.0, -3.0], 3, &dev)?;
    // x is used three times (x·x counts twice), y only as what is subtracted.
    let loss = ((x.as_tensor() * x.as_tensor())? + (x.as_tensor() * 3.0)? - y.as_tensor())?.sum_all()?;
    let grads = loss.backward()?;
    let gx = values(grads.get(&x).expect("x has a gradient"))?;
    let want: Vec<f32> = values(&x)?.iter().map(|v| v + v + 3.0).collect();
    assert_eq!(gx, want);
    assert_eq!(values(grads.get(&y).expect("y has a gradient"))?, vec![-1.0; 3]);
    Ok(())
}
