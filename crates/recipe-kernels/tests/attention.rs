//! The fused attention against its plain Candle composition (scores, masked softmax, values):
//! output and the gradients of q, k and v, in f32 and f64, over rows of several packed
//! documents and padding, lengths that cross the kernel's blocks of queries, grouped-query
//! heads, queries after a cache of keys, and scores capped as Gemma 2 caps them; and in f64
//! against finite differences.

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

mod common;
use common::{assert_close, random};
use recipe_kernels::{KeySpans, Scores, attention, attention_composed};

fn tensor(rng: &mut ChaCha8Rng, shape: &[usize], dtype: DType) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(random(rng, n, 1.5), shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

/// Rows of documents of the given lengths, the rest of each row padding (one more segment).
fn documents(rows: &[&[usize]], t: usize) -> Vec<u32> {
    rows.iter()
        .flat_map(|lengths| {
            let mut ids: Vec<u32> = lengths.iter().enumerate().flat_map(|(d, &n)| vec![d as u32; n]).collect();
            ids.resize(t, u32::MAX);
            ids
        })
        .collect()
}

const PLAIN: Scores = Scores { scale: 0.3, cap: None };

/// Output and gradients of `Σ attention ⊙ dy` for both implementations, compared.
fn compare(q: &Tensor, k: &Tensor, v: &Tensor, spans: &KeySpans, scores: Scores, tol: f64, rng: &mut ChaCha8Rng) {
    let (b, h, tq, hd) = q.dims4().unwrap();
    let dy = tensor(rng, &[b, tq, h, hd], q.dtype());
    let run = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>| {
        let vars = [q, k, v].map(|t| Var::from_tensor(t).unwrap());
        let out = f(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor()).unwrap();
        let grads = (&out * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        (out, vars.map(|x| grads.get(&x).unwrap().clone()))
    };
    let (fused, fused_grads) = run(&|q, k, v| attention(q, k, v, spans, scores));
    let (plain, plain_grads) = run(&|q, k, v| attention_composed(q, k, v, spans, scores));
    assert_close(&fused, &plain, tol);
    for (name, (a, b)) in ["q", "k", "v"].iter().zip(fused_grads.iter().zip(&plain_grads)) {
        assert!(a.dims() == b.dims(), "d{name}");
        assert_close(a, b, tol);
    }
}

#[test]
fn matches_the_composition_over_packed_documents_and_blocks() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let t = 150; // three blocks of queries, the last partial
    let docs = documents(&[&[150], &[40, 70, 20], &[1, 100]], t);
    let spans = KeySpans::documents(&docs, 3, t);
    for (dtype, tol) in [(DType::F32, 2e-5), (DType::F64, 1e-12)] {
        for (h, kvh) in [(4, 4), (4, 2), (6, 1)] {
            let q = tensor(&mut rng, &[3, h, t, 16], dtype);
            let (k, v) = (tensor(&mut rng, &[3, kvh, t, 16], dtype), tensor(&mut rng, &[3, kvh, t, 16], dtype));
            compare(&q, &k, &v, &spans, PLAIN, tol, &mut rng);
        }
    }
}

/// A sliding window shorter than a block of queries and than most documents: each query's
/// span starts inside its block, at a different key.
#[test]
fn matches_the_composition_within_a_sliding_window() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let t = 150;
    let docs = documents(&[&[150], &[40, 70, 20], &[1, 100]], t);
    for window in [1, 5, 64] {
        let spans = KeySpans::documents(&docs, 3, t).within(window);
        let q = tensor(&mut rng, &[3, 4, t, 16], DType::F64);
        let (k, v) = (tensor(&mut rng, &[3, 2, t, 16], DType::F64), tensor(&mut rng, &[3, 2, t, 16], DType::F64));
        compare(&q, &k, &v, &spans, PLAIN, 1e-12, &mut rng);
    }
    let after = KeySpans::after(90, 5).within(8);
    let q = tensor(&mut rng, &[1, 4, 5, 8], DType::F64);
    let (k, v) = (tensor(&mut rng, &[1, 2, 95, 8], DType::F64), tensor(&mut rng, &[1, 2, 95, 8], DType::F64));
    compare(&q, &k, &v, &after, PLAIN, 1e-12, &mut rng);
}

#[test]
fn matches_the_composition_after_a_cache_of_keys() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (past, t) = (90, 5);
    let spans = KeySpans::after(past, t);
    let q = tensor(&mut rng, &[1, 4, t, 8], DType::F64);
    let (k, v) =
        (tensor(&mut rng, &[1, 2, past + t, 8], DType::F64), tensor(&mut rng, &[1, 2, past + t, 8], DType::F64));
    compare(&q, &k, &v, &spans, PLAIN, 1e-12, &mut rng);
}

/// Scores capped at ±1.5 (most of them reach past it): forward and every gradient, in f32 and
/// f64, over packed documents, a sliding window and grouped-query heads.
#[test]
fn matches_the_composition_with_capped_scores() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let t = 150;
    let docs = documents(&[&[150], &[40, 70, 20]], t);
    let capped = Scores { scale: 0.3, cap: Some(1.5) };
    for (dtype, tol) in [(DType::F32, 2e-5), (DType::F64, 1e-12)] {
        for spans in [KeySpans::documents(&docs, 2, t), KeySpans::documents(&docs, 2, t).within(20)] {
            let q = tensor(&mut rng, &[2, 4, t, 16], dtype);
            let (k, v) = (tensor(&mut rng, &[2, 2, t, 16], dtype), tensor(&mut rng, &[2, 2, t, 16], dtype));
            compare(&q, &k, &v, &spans, capped, tol, &mut rng);
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    for scores in [Scores::scaled(0.5), Scores { scale: 0.5, cap: Some(0.8) }] {
        finite_differences(scores);
    }
}

fn finite_differences(scores: Scores) {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (h, t, hd) = (2, 9, 4);
    let docs = documents(&[&[5, 3]], t);
    let spans = KeySpans::documents(&docs, 1, t);
    let inputs = [
        tensor(&mut rng, &[1, h, t, hd], DType::F64),
        tensor(&mut rng, &[1, 1, t, hd], DType::F64),
        tensor(&mut rng, &[1, 1, t, hd], DType::F64),
    ];
    let dy = tensor(&mut rng, &[1, t, h, hd], DType::F64);
    let loss = |x: &[Tensor]| -> f64 {
        let out = attention(&x[0], &x[1], &x[2], &spans, scores).unwrap();
        (out * &dy).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    let vars = inputs.clone().map(|t| Var::from_tensor(&t).unwrap());
    let out = attention(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor(), &spans, scores).unwrap();
    let grads = (out * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    let eps = 1e-6;
    for (which, var) in vars.iter().enumerate() {
        let analytic = grads.get(var).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let base = inputs[which].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (i, g) in analytic.iter().enumerate() {
            let nudged = |delta: f64| {
                let mut x = base.clone();
                x[i] += delta;
                let mut args = inputs.clone();
                args[which] = Tensor::from_vec(x, inputs[which].shape(), &Device::Cpu).unwrap();
                loss(&args)
            };
            let numeric = (nudged(eps) - nudged(-eps)) / (2.0 * eps);
            assert!(
                (numeric - g).abs() < 1e-6 * (1.0 + g.abs()),
                "{scores:?} input {which} element {i}: {g} vs {numeric}"
            );
        }
    }
}
