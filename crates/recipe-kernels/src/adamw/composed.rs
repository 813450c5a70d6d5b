//! The composed fallback: plain Candle ops, run on every device without a native kernel, and
//! the reference the native kernels are tested against.

use candle_core::{DType, Result, Tensor, Var};

use super::AdamWStep;

pub fn adamw_step_composed(param: &Var, grad: &Tensor, moments: &Var, step: &AdamWStep) -> Result<()> {
    let (lr_bc1, inv_sqrt_bc2, decay) = step.factors();
    let (b1, b2) = (step.beta1 as f32 as f64, step.beta2 as f32 as f64);
    let g = (grad.flatten_all()?.to_dtype(DType::F32)? * step.grad_scale as f32 as f64)?;
    let m = ((moments.get(0)? * b1)? + (&g * (1.0 - b1))?)?;
    let v = ((moments.get(1)? * b2)? + (g.sqr()? * (1.0 - b2))?)?;
    let p = param.flatten_all()?.to_dtype(DType::F32)?;
    let denom = ((v.sqrt()? * inv_sqrt_bc2 as f64)? + step.eps as f32 as f64)?;
    let update = ((&p * decay as f64)? + ((&m / denom)? * lr_bc1 as f64)?)?;
    let p = (p - update)?.to_dtype(param.dtype())?.reshape(param.shape())?;
    moments.set(&Tensor::stack(&[m, v], 0)?)?;
    param.set(&p)
}

pub fn squared_norm_composed(tensors: &[Tensor]) -> Result<f64> {
    let sums = tensors.iter().map(|t| t.to_dtype(DType::F32)?.sqr()?.sum_all()).collect::<Result<Vec<_>>>()?;
    let total = Tensor::stack(&sums, 0)?.to_dtype(DType::F64)?.sum_all()?;
    total.to_scalar::<f64>()
}
