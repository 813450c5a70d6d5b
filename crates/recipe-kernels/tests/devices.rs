//! Every fused op, run where the tensors live (the native kernel on the CPU, the composed
//! fallback elsewhere), against the composed reference computed in f32 on the CPU from the same
//! inputs: outputs and every gradient, in f32, bf16 and f16. The same cases run on CUDA when
//! this build has it and a GPU answers; otherwise that test says it was skipped.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

mod common;
use common::{assert_close, random};
use recipe_kernels::*;

/// An op, or its reference, over a case's inputs.
type Op = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;

/// One op under test: its inputs (f32 on the CPU; u32 ones are ids), which of them take a
/// gradient, the op, and its reference.
struct Case {
    name: &'static str,
    inputs: Vec<Tensor>,
    trainable: Vec<bool>,
    op: Op,
    reference: Op,
}

fn uniform(rng: &mut ChaCha8Rng, shape: &[usize], half_width: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(random(rng, n, half_width), shape, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap()
}

fn cases(rng: &mut ChaCha8Rng) -> Vec<Case> {
    let (b, h, t, hd) = (2, 3, 7, 8);
    // Two packed documents per row: the causal mask within each.
    let docs: Vec<u32> = (0..b * t).map(|i| u32::from(i % t >= 4)).collect();
    let mut bias = vec![0f32; b * t * t];
    for r in 0..b {
        for i in 0..t {
            for j in 0..t {
                if j > i || docs[r * t + j] != docs[r * t + i] {
                    bias[(r * t + i) * t + j] = f32::MIN / 2.0;
                }
            }
        }
    }
    let bias = Tensor::from_vec(bias, (b, 1, t, t), &Device::Cpu).unwrap();
    let angles = uniform(rng, &[b, 1, t, hd / 2], 3.0);
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    let (n, v) = (19, 37);
    let targets: Vec<u32> = (0..n).map(|_| rng.next_u32() % v as u32).collect();
    let targets = Tensor::from_vec(targets, n, &Device::Cpu).unwrap();
    let mask =
        Tensor::from_vec((0..n).map(|i| if i % 5 == 4 { 0f32 } else { 1.0 }).collect(), n, &Device::Cpu).unwrap();
    let dropout = Some(Dropout { p: 0.25, seed: 5 });
    let spans = KeySpans::documents(&docs, b, t);
    let spans_composed = spans.clone();
    let mut cases = vec![
        Case {
            name: "rms_norm",
            inputs: vec![uniform(rng, &[75, 16], 2.0), uniform(rng, &[16], 1.5)],
            trainable: vec![true, true],
            op: Box::new(|i| rms_norm(&i[0], &i[1], 1e-5)),
            reference: Box::new(|i| rms_norm_composed(&i[0], &i[1], 1e-5)),
        },
        Case {
            name: "masked_softmax",
            inputs: vec![uniform(rng, &[b, h, t, t], 4.0), bias],
            trainable: vec![true, false],
            op: Box::new(|i| masked_softmax(&i[0], &i[1], 0.35)),
            reference: Box::new(|i| masked_softmax_composed(&i[0], &i[1], 0.35)),
        },
        Case {
            name: "attention",
            inputs: vec![
                uniform(rng, &[b, h, t, hd], 1.5),
                uniform(rng, &[b, 1, t, hd], 1.5),
                uniform(rng, &[b, 1, t, hd], 1.5),
            ],
            trainable: vec![true, true, true],
            op: Box::new(move |i| attention(&i[0], &i[1], &i[2], &spans, Scores::scaled(0.35))),
            reference: Box::new(move |i| {
                attention_composed(&i[0], &i[1], &i[2], &spans_composed, Scores::scaled(0.35))
            }),
        },
        long_attention(rng, "attention at head dimension 32", 32, Scores::scaled(0.2)),
        long_attention(rng, "attention at head dimension 128", 128, Scores::scaled(0.2)),
        // Scores capped as Gemma 2 caps them; most reach past ±1.5.
        long_attention(rng, "capped attention at head dimension 64", 64, Scores { scale: 0.2, cap: Some(1.5) }),
        // Gemma's heads, on the CUDA cores in every dtype.
        long_attention(rng, "capped attention at head dimension 256", 256, Scores { scale: 0.1, cap: Some(1.5) }),
        Case {
            name: "embedding",
            // Token 4 at a third of the positions, as frequent tokens are.
            inputs: vec![
                uniform(rng, &[37, 24], 1.0),
                Tensor::from_vec(
                    (0..60).map(|i| if i % 3 == 0 { 4 } else { rng.next_u32() % 37 }).collect(),
                    60,
                    &Device::Cpu,
                )
                .unwrap(),
            ],
            trainable: vec![true, false],
            op: Box::new(|i| embedding(&i[0], &i[1])),
            reference: Box::new(|i| embedding_composed(&i[0], &i[1])),
        },
        Case {
            name: "rope",
            inputs: vec![uniform(rng, &[b, h, t, hd], 2.0), cos, sin],
            trainable: vec![true, false, false],
            op: Box::new(|i| rope(&i[0], &i[1], &i[2])),
            reference: Box::new(|i| rope_composed(&i[0], &i[1], &i[2])),
        },
        Case {
            name: "cross_entropy_rows",
            inputs: vec![uniform(rng, &[n, v], 6.0), targets, mask],
            trainable: vec![true, false, false],
            op: Box::new(|i| cross_entropy_rows(&i[0], &i[1], &i[2])),
            reference: Box::new(|i| cross_entropy_rows_composed(&i[0], &i[1], &i[2])),
        },
        Case {
            name: "frozen_linear",
            inputs: vec![uniform(rng, &[13, 24], 1.0), uniform(rng, &[10, 24], 1.0)],
            trainable: vec![true, false],
            op: Box::new(|i| frozen_linear(&i[0], &i[1], Products::Exact)),
            reference: Box::new(|i| i[0].matmul(&i[1].t()?)),
        },
        Case {
            name: "lora_linear",
            inputs: vec![
                uniform(rng, &[13, 24], 1.0),
                uniform(rng, &[10, 24], 1.0),
                uniform(rng, &[4, 24], 1.0),
                uniform(rng, &[10, 4], 1.0),
            ],
            trainable: vec![true, false, true, true],
            op: Box::new(move |i| lora_linear(&i[0], &i[1], &i[2], &i[3], 2.0, dropout, Products::Exact)),
            reference: Box::new(move |i| {
                lora_linear_composed(&i[0], &i[1], &i[2], &i[3], 2.0, dropout, Products::Exact)
            }),
        },
        Case {
            name: "linear",
            inputs: vec![uniform(rng, &[13, 24], 1.0), uniform(rng, &[10, 24], 1.0)],
            trainable: vec![true, true],
            op: Box::new(|i| linear(&i[0], &i[1], Products::Exact)),
            reference: Box::new(|i| i[0].matmul(&i[1].t()?)),
        },
    ];
    for (name, act) in [("swiglu", Activation::Silu), ("geglu", Activation::GeluTanh)] {
        cases.push(Case {
            name,
            inputs: vec![uniform(rng, &[33, 20], 5.0), uniform(rng, &[33, 20], 2.0)],
            trainable: vec![true, true],
            op: Box::new(move |i| glu(&i[0], &i[1], act)),
            reference: Box::new(move |i| glu_composed(&i[0], &i[1], act)),
        });
    }
    cases
}

/// Attention at a head dimension the CUDA kernels are built for, over more than one tile of keys
/// and one block of queries, grouped-query heads, two documents in the first row.
fn long_attention(rng: &mut ChaCha8Rng, name: &'static str, hd: usize, scores: Scores) -> Case {
    let (b, t) = (2, 70);
    let docs: Vec<u32> = (0..b * t).map(|i| u32::from(i < 30)).collect();
    let spans = KeySpans::documents(&docs, b, t);
    let spans_composed = spans.clone();
    Case {
        name,
        inputs: vec![
            uniform(rng, &[b, 4, t, hd], 1.5),
            uniform(rng, &[b, 2, t, hd], 1.5),
            uniform(rng, &[b, 2, t, hd], 1.5),
        ],
        trainable: vec![true, true, true],
        op: Box::new(move |i| attention(&i[0], &i[1], &i[2], &spans, scores)),
        reference: Box::new(move |i| attention_composed(&i[0], &i[1], &i[2], &spans_composed, scores)),
    }
}

/// The output and the gradients of the trainable inputs of `f` on `inputs`, for the loss
/// `Σ out ⊙ dy`.
fn run(
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    trainable: &[bool],
    dy: &Tensor,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Option<Var>> =
        inputs.iter().zip(trainable).map(|(t, &g)| g.then(|| Var::from_tensor(t).unwrap())).collect();
    let args: Vec<Tensor> =
        inputs.iter().zip(&vars).map(|(t, v)| v.as_ref().map_or(t.clone(), |v| v.as_tensor().clone())).collect();
    let out = f(&args).unwrap();
    let loss = (out.to_dtype(DType::F32).unwrap() * dy.to_device(out.device()).unwrap()).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let grads = vars.iter().flatten().map(|v| grads.get(v).expect("every trainable input gets a gradient").clone());
    (out, grads.collect())
}

fn check_every_op_on(device: &Device) {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    for case in cases(&mut rng) {
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 4e-2), (DType::F16, 6e-3)] {
            // Round the inputs to the dtype once, so both sides start from the same values.
            let rounded: Vec<Tensor> = case
                .inputs
                .iter()
                .map(|t| if t.dtype() == DType::U32 { t.clone() } else { t.to_dtype(dtype).unwrap() })
                .collect();
            let on_device: Vec<Tensor> = rounded.iter().map(|t| t.to_device(device).unwrap()).collect();
            let in_f32: Vec<Tensor> = rounded
                .iter()
                .map(|t| if t.dtype() == DType::U32 { t.clone() } else { t.to_dtype(DType::F32).unwrap() })
                .collect();
            let probe = (case.reference)(&in_f32).unwrap();
            let dy = uniform(&mut rng, probe.dims(), 1.0);
            let (out, grads) = run(&*case.op, &on_device, &case.trainable, &dy);
            let (want, want_grads) = run(&*case.reference, &in_f32, &case.trainable, &dy);
            let what = format!("{} in {dtype:?} on {device:?}", case.name);
            assert_eq!(out.device().location(), device.location(), "{what}: output left the device");
            eprintln!("checking {what}");
            assert_close(&out.to_device(&Device::Cpu).unwrap(), &want, tol);
            for (g, w) in grads.iter().zip(&want_grads) {
                assert_eq!(g.dtype(), dtype, "{what}: a gradient has another dtype than its input");
                assert_close(&g.to_device(&Device::Cpu).unwrap(), w, tol);
            }
        }
    }
}

/// AdamW where the parameter lives, against the composed update on the CPU in f32, for f32,
/// bf16 and f16 parameters, with decay and a gradient scale.
fn check_adamw_on(device: &Device) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // Over one CPU chunk, so the chunked loop is exercised.
    let n = 70_001;
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2), (DType::F16, 2e-3)] {
        let p0 = uniform(&mut rng, &[n], 1.0).to_dtype(dtype).unwrap();
        let (p, want) = (Var::from_tensor(&p0.to_device(device).unwrap()).unwrap(), Var::from_tensor(&p0).unwrap());
        let (m, want_m) = (adamw_moments(&p).unwrap(), adamw_moments(&want).unwrap());
        for t in 1..=3 {
            let g = uniform(&mut rng, &[n], 0.5).to_dtype(dtype).unwrap();
            let step =
                AdamWStep { lr: 0.01, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, t, grad_scale: 0.5 };
            adamw_step(&p, &g.to_device(device).unwrap(), &m, &step).unwrap();
            adamw_step_composed(&want, &g, &want_m, &step).unwrap();
        }
        eprintln!("checking adamw in {dtype:?} on {device:?}");
        assert_close(&m.to_device(&Device::Cpu).unwrap(), &want_m, 1e-5);
        assert_close(&p.to_device(&Device::Cpu).unwrap(), &want, tol);
        let norm = squared_norm(&[p.as_tensor().clone()]).unwrap();
        let want_norm = squared_norm_composed(&[want.as_tensor().clone()]).unwrap();
        assert!((norm - want_norm).abs() <= 1e-3 * want_norm, "{norm} vs {want_norm}");
    }
}

#[test]
fn every_op_matches_the_reference_on_the_cpu() {
    check_every_op_on(&Device::Cpu);
    check_adamw_on(&Device::Cpu);
}

#[test]
fn every_op_matches_the_reference_on_cuda() {
    match common::cuda() {
        Some(device) => {
            check_every_op_on(&device);
            check_adamw_on(&device);
        }
        None => eprintln!("skipped: no CUDA device (build with --features cuda on a machine with a GPU)"),
    }
}
