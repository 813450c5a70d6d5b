//! The op, and its CPU kernel; the CUDA kernels' launches are in `cuda.rs`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::Activation;
use crate::exp::ExpInPlace;
use crate::{Disjoint, contiguous, for_each_chunk_mut, unfilled, vectorised};

pub(super) fn glu(gate: &Tensor, up: &Tensor, act: Activation) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, Glu(act))
}

struct Glu(Activation);

/// Computes `dg` and `du` together, returned as one flat buffer `[dg..., du...]`.
struct GluGrad(Activation);

/// Elements per parallel chunk.
const CHUNK: usize = 4096;

/// `2·√(2/π)`: the tanh GELU's `z = GELU_SCALE·(g + GELU_CUBIC·g³)`.
const GELU_SCALE: f64 = 1.595_769_121_605_730_7;
const GELU_CUBIC: f64 = 0.044715;

/// `out = exp(−z(g))` over `out`'s length: the sigmoid's exponential, vectorised.
#[inline(always)]
fn exp_of_negated<T: ExpInPlace + Copy>(out: &mut [T], g: &[T], z: impl Fn(T) -> T, neg: impl Fn(T) -> T) {
    out.iter_mut().zip(g).for_each(|(o, &a)| *o = neg(z(a)));
    T::exp_in_place(out);
}

/// The kernels for one element type: for each activation, its `z(g)`, and the factor that
/// turns `s = σ(z(g))` into the derivative of `g·s`: `1 + g·(1 − s)·z′(g)`, given `g`, `s`
/// and `e = exp(−z)`.
macro_rules! kernels {
    ($t:ty, $kernels:ident) => {
        mod $kernels {
            use super::*;

            #[inline(always)]
            fn forward_chunk(y: &mut [$t], g: &[$t], u: &[$t], z: impl Fn($t) -> $t) {
                exp_of_negated(y, g, z, |x| -x);
                for ((o, &a), &b) in y.iter_mut().zip(g).zip(u) {
                    *o = a / (1.0 + *o) * b;
                }
            }

            #[inline(always)]
            fn backward_chunk(
                dg: &mut [$t],
                du: &mut [$t],
                (g, u, dy): (&[$t], &[$t], &[$t]),
                z: impl Fn($t) -> $t,
                factor: impl Fn($t, $t, $t) -> $t,
            ) {
                // One exponential per element serves both gradients.
                exp_of_negated(du, g, z, |x| -x);
                for ((o, p), ((&a, &b), &d)) in dg.iter_mut().zip(du.iter_mut()).zip(g.iter().zip(u).zip(dy)) {
                    let s = 1.0 / (1.0 + *p);
                    *o = d * b * s * factor(a, s, *p);
                    *p = d * a * s;
                }
            }

            #[inline(always)]
            fn gelu_z(a: $t) -> $t {
                GELU_SCALE as $t * (a + GELU_CUBIC as $t * a * a * a)
            }

            pub(super) fn forward(act: Activation, g: &[$t], u: &[$t]) -> Vec<$t> {
                // Safety: the chunks cover `y`, and each is written in full.
                let mut y = unsafe { unfilled(g.len()) };
                for_each_chunk_mut(&mut y, CHUNK, |c, yc| {
                    let range = c * CHUNK..c * CHUNK + yc.len();
                    let (g, u) = (&g[range.clone()], &u[range]);
                    match act {
                        Activation::Silu => vectorised(
                            #[inline(always)]
                            || forward_chunk(yc, g, u, |a| a),
                        ),
                        Activation::GeluTanh => vectorised(
                            #[inline(always)]
                            || forward_chunk(yc, g, u, gelu_z),
                        ),
                    }
                });
                y
            }

            pub(super) fn backward(act: Activation, g: &[$t], u: &[$t], dy: &[$t]) -> Vec<$t> {
                let n = g.len();
                // Safety: the chunks of `dg` cover it, and each writes its own and `du`'s in full.
                let mut out = unsafe { unfilled(2 * n) };
                let (dg, du) = out.split_at_mut(n);
                let du = Disjoint::of(du);
                for_each_chunk_mut(dg, CHUNK, |c, dgc| {
                    let range = c * CHUNK..c * CHUNK + dgc.len();
                    // Safety: `du` is as long as `dg`, and only this call touches its chunk `c`.
                    let duc = unsafe { du.part(range.start, dgc.len()) };
                    let inputs = (&g[range.clone()], &u[range.clone()], &dy[range]);
                    match act {
                        Activation::Silu => vectorised(
                            #[inline(always)]
                            || backward_chunk(dgc, duc, inputs, |a| a, |a, s, _| 1.0 + a * (1.0 - s)),
                        ),
                        Activation::GeluTanh => vectorised(
                            #[inline(always)]
                            || {
                                backward_chunk(dgc, duc, inputs, gelu_z, |a, s, e| {
                                    let dz = GELU_SCALE as $t * (1.0 + 3.0 * GELU_CUBIC as $t * a * a);
                                    // `1 − s` as `e·s` where `s` nears 1 (and `g·z′` is large), as
                                    // a difference where `e` may overflow.
                                    let complement = if s > 0.5 { e * s } else { 1.0 - s };
                                    1.0 + a * complement * dz
                                })
                            },
                        ),
                    }
                });
                out
            }
        }
    };
}

kernels!(f32, kernels_f32);
kernels!(f64, kernels_f64);

fn check(l1: &Layout, l2: &Layout) -> Result<()> {
    if l1.shape() != l2.shape() {
        candle_core::bail!("glu: gate {:?} and up {:?} differ", l1.shape(), l2.shape());
    }
    Ok(())
}

impl CustomOp2 for Glu {
    fn name(&self) -> &'static str {
        "glu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        check(l1, l2)?;
        let y = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(kernels_f32::forward(self.0, contiguous(s1, l1)?, contiguous(s2, l2)?))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(kernels_f64::forward(self.0, contiguous(s1, l1)?, contiguous(s2, l2)?))
            }
            _ => candle_core::bail!("glu supports f32 and f64 of one dtype"),
        };
        Ok((y, l1.shape().clone()))
    }

    crate::cuda_fwd!(self, |s1, l1, s2, l2| {
        check(l1, l2)?;
        let y = crate::cuda::for_dtype!(s1.dtype(), super::cuda::forward(self.0, (s1, l1), (s2, l2)))?;
        Ok((y, l1.shape().clone()))
    });

    fn bwd(&self, g: &Tensor, u: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = g.apply_op3_no_bwd(u, &dy.contiguous()?, &GluGrad(self.0))?;
        let n = g.elem_count();
        let dg = both.narrow(0, 0, n)?.reshape(g.shape())?;
        let du = both.narrow(0, n, n)?.reshape(u.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

impl CustomOp3 for GluGrad {
    fn name(&self) -> &'static str {
        "glu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        check(l1, l2)?;
        check(l1, l3)?;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(kernels_f32::backward(
                self.0,
                contiguous(s1, l1)?,
                contiguous(s2, l2)?,
                contiguous(s3, l3)?,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(kernels_f64::backward(
                self.0,
                contiguous(s1, l1)?,
                contiguous(s2, l2)?,
                contiguous(s3, l3)?,
            )),
            _ => candle_core::bail!("glu supports f32 and f64 of one dtype"),
        };
        Ok((out, Shape::from(2 * l1.shape().elem_count())))
    }

    crate::cuda_fwd!(self, |s1, l1, s2, l2, s3, l3| {
        check(l1, l2)?;
        check(l1, l3)?;
        let out = crate::cuda::for_dtype!(s1.dtype(), super::cuda::backward(self.0, (s1, l1), (s2, l2), (s3, l3)))?;
        Ok((out, Shape::from(2 * l1.shape().elem_count())))
    });
}
