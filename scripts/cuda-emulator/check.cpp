// The fused ops' CUDA kernels, run on the CPU by emulate.hpp with the grids `cuda.rs` launches,
// against references computed here in double precision from the ops' formulas: forward and
// every gradient, at shapes that leave ragged blocks, rows longer than a block, and more than
// one span of rows. Exits non-zero on the first mismatch.
#include "emulate.hpp"

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "../../crates/recipe-kernels/src/cuda/common.cuh"
#include "../../crates/recipe-kernels/src/adamw/kernels.cu"
#include "../../crates/recipe-kernels/src/attention/kernels.cu"
#include "../../crates/recipe-kernels/src/attention/mma.cu"
#include "../../crates/recipe-kernels/src/cross_entropy/kernels.cu"
#include "../../crates/recipe-kernels/src/embedding/kernels.cu"
#include "../../crates/recipe-kernels/src/glu/kernels.cu"
#include "../../crates/recipe-kernels/src/lora/kernels.cu"
#include "../../crates/recipe-kernels/src/rms_norm/kernels.cu"
#include "../../crates/recipe-kernels/src/rope/kernels.cu"
#include "../../crates/recipe-kernels/src/softmax/kernels.cu"

#define ENTRY(NAME, SUFFIX) NAME##_##SUFFIX##_entry::NAME##_##SUFFIX

using Floats = std::vector<float>;
using Doubles = std::vector<double>;

static std::mt19937 rng(2026);

static Floats uniform(size_t n, float half_width) {
    std::uniform_real_distribution<float> d(-half_width, half_width);
    Floats v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

static dim3 per_row(size_t rows) { return dim3{(unsigned)rows, 1, 1}; }
static dim3 per_element(size_t n) { return dim3{(unsigned)((n + BLOCK - 1) / BLOCK), 1, 1}; }
static const dim3 block{BLOCK, 1, 1};

static int failures = 0;

template <typename Got>
static void expect(const std::string& what, const Got& got, const Doubles& want, double tol) {
    double worst = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        const double g = got[i], w = want[i];
        const double err = std::isnan(w) ? (std::isnan(g) ? 0.0 : INFINITY) : std::fabs(g - w) / (1.0 + std::fabs(w));
        if (!(err <= worst)) worst = err, at = i;
    }
    const bool ok = worst <= tol && got.size() >= want.size();
    std::printf("%s %s: largest relative error %.2e (element %zu)\n", ok ? "ok" : "FAILED", what.c_str(), worst, at);
    if (!ok) ++failures;
}

static void rms_norm() {
    for (auto [rows, d] : {std::pair<size_t, size_t>{5, 300}, {130, 70}}) {
        const float eps = 1e-5f;
        Floats x = uniform(rows * d, 2.0f), w = uniform(d, 1.5f), dy = uniform(rows * d, 1.0f);
        Doubles y(rows * d), dx(rows * d), dw(d, 0.0);
        for (size_t r = 0; r < rows; ++r) {
            double ss = 0, proj = 0;
            for (size_t i = 0; i < d; ++i) ss += (double)x[r * d + i] * x[r * d + i];
            const double inv = 1.0 / std::sqrt(ss / d + eps);
            for (size_t i = 0; i < d; ++i) proj += (double)dy[r * d + i] * w[i] * x[r * d + i] * inv;
            for (size_t i = 0; i < d; ++i) {
                y[r * d + i] = x[r * d + i] * inv * w[i];
                dx[r * d + i] = inv * (dy[r * d + i] * w[i] - x[r * d + i] * inv * proj / d);
                dw[i] += dy[r * d + i] * x[r * d + i] * inv;
            }
        }
        const std::string shape = " " + std::to_string(rows) + "x" + std::to_string(d);
        Floats got(rows * d);
        launch(per_row(rows), block, [&] { ENTRY(rms_norm_forward, f32)(x.data(), w.data(), got.data(), d, eps); });
        expect("rms_norm forward" + shape, got, y, 1e-5);
        // As `cuda.rs`: dx and each row's 1/rms, partial sums of dw over spans of 64 rows, dw.
        const unsigned span = 64, spans = (rows + span - 1) / span, columns = (d + BLOCK - 1) / BLOCK;
        Floats gdx(rows * d), inv(rows), partial(spans * d), gdw(d);
        launch(per_row(rows), block, [&] {
            ENTRY(rms_norm_dx, f32)(x.data(), w.data(), dy.data(), gdx.data(), inv.data(), d, eps);
        });
        launch(dim3{columns, spans, 1}, block, [&] {
            ENTRY(rms_norm_dw_partial, f32)(x.data(), dy.data(), inv.data(), partial.data(), rows, d, span);
        });
        launch(dim3{columns, 1, 1}, block, [&] { ENTRY(rms_norm_dw, f32)(partial.data(), gdw.data(), spans, d); });
        expect("rms_norm dx" + shape, gdx, dx, 1e-5);
        expect("rms_norm dw" + shape, gdw, dw, 1e-5);
        // bf16: the same row through the bf16 entry point, within bf16's rounding.
        std::vector<bf16> xb(rows * d), wb(d), yb(rows * d);
        for (size_t i = 0; i < x.size(); ++i) xb[i] = from_f32<bf16>(x[i]);
        for (size_t i = 0; i < d; ++i) wb[i] = from_f32<bf16>(w[i]);
        launch(per_row(rows), block, [&] { ENTRY(rms_norm_forward, bf16)(xb.data(), wb.data(), yb.data(), d, eps); });
        Floats yb32(rows * d);
        for (size_t i = 0; i < yb.size(); ++i) yb32[i] = to_f32(yb[i]);
        expect("rms_norm forward in bf16" + shape, yb32, y, 3e-2);
    }
}

static void glu() {
    const size_t n = 1000;
    Floats g = uniform(n, 5.0f), u = uniform(n, 2.0f), dy = uniform(n, 1.0f);
    for (unsigned act : {0u, 1u}) {
        const std::string name = act == 0 ? "swiglu" : "geglu";
        Doubles y(n), dgu(2 * n);
        for (size_t i = 0; i < n; ++i) {
            const double a = g[i], c = 2.0 * std::sqrt(2.0 / M_PI);
            const double z = act == 0 ? a : c * (a + 0.044715 * a * a * a);
            const double dz = act == 0 ? 1.0 : c * (1.0 + 3.0 * 0.044715 * a * a);
            const double s = 1.0 / (1.0 + std::exp(-z));
            y[i] = a * s * u[i];
            dgu[i] = dy[i] * u[i] * (s + a * s * (1.0 - s) * dz);
            dgu[n + i] = dy[i] * a * s;
        }
        Floats got(n), out(2 * n);
        launch(per_element(n), block, [&] { ENTRY(glu_forward, f32)(g.data(), u.data(), got.data(), n, act); });
        expect(name + " forward", got, y, 1e-6);
        launch(per_element(n), block, [&] {
            ENTRY(glu_backward, f32)(g.data(), u.data(), dy.data(), out.data(), n, act);
        });
        expect(name + " backward", out, dgu, 2e-6);
        std::vector<f16> gh(n), uh(n), yh(n);
        for (size_t i = 0; i < n; ++i) gh[i] = from_f32<f16>(g[i]), uh[i] = from_f32<f16>(u[i]);
        launch(per_element(n), block, [&] { ENTRY(glu_forward, f16)(gh.data(), uh.data(), yh.data(), n, act); });
        Floats yh32(n);
        for (size_t i = 0; i < n; ++i) yh32[i] = to_f32(yh[i]);
        expect(name + " forward in f16", yh32, y, 4e-3);
    }
}

static void rope() {
    const size_t b = 2, h = 3, t = 5, hd = 8, half = hd / 2;
    // x is stored [B, T, H, hd] and read as [B, H, T, hd], as attention's heads are.
    Floats x = uniform(b * t * h * hd, 2.0f), angles = uniform(b * t * half, 3.0f);
    Floats cos(angles.size()), sin(angles.size());
    for (size_t i = 0; i < angles.size(); ++i) cos[i] = std::cos(angles[i]), sin[i] = std::sin(angles[i]);
    for (float sign : {1.0f, -1.0f}) {
        Doubles want(b * h * t * hd);
        for (size_t bi = 0; bi < b; ++bi)
            for (size_t hi = 0; hi < h; ++hi)
                for (size_t p = 0; p < t; ++p)
                    for (size_t j = 0; j < half; ++j) {
                        const double c = cos[(bi * t + p) * half + j], s = sign * sin[(bi * t + p) * half + j];
                        const double x1 = x[((bi * t + p) * h + hi) * hd + j], x2 = x[((bi * t + p) * h + hi) * hd + half + j];
                        const size_t row = (bi * h + hi) * t + p;
                        want[row * hd + j] = x1 * c - x2 * s;
                        want[row * hd + half + j] = x2 * c + x1 * s;
                    }
        Floats got(want.size());
        const size_t pairs = b * h * t * half;
        launch(per_element(pairs), block, [&] {
            ENTRY(rope_rotate, f32)(x.data(), t * h * hd, hd, h * hd, cos.data(), sin.data(), got.data(), h, t, half,
                                    pairs, sign);
        });
        expect(sign > 0 ? "rope of a transposed view" : "rope backward (rotating back)", got, want, 1e-6);
    }
}

static void masked_softmax() {
    const size_t b = 2, h = 2, tq = 3, tk = 300;
    const float scale = 0.35f;
    Floats x = uniform(b * h * tq * tk, 4.0f), bias(b * tq * tk), dy = uniform(b * h * tq * tk, 1.0f);
    for (size_t i = 0; i < bias.size(); ++i) bias[i] = (i % 7 == 3) ? -1.7e38f : 0.0f;
    Doubles y(x.size()), dx(x.size());
    for (size_t r = 0; r < b * h * tq; ++r) {
        const size_t br = (r / (h * tq)) * tq + r % tq;
        double m = -INFINITY, sum = 0, dot = 0;
        for (size_t i = 0; i < tk; ++i) m = std::max(m, (double)scale * x[r * tk + i] + bias[br * tk + i]);
        for (size_t i = 0; i < tk; ++i) sum += std::exp(scale * x[r * tk + i] + bias[br * tk + i] - m);
        for (size_t i = 0; i < tk; ++i) y[r * tk + i] = std::exp(scale * x[r * tk + i] + bias[br * tk + i] - m) / sum;
        for (size_t i = 0; i < tk; ++i) dot += y[r * tk + i] * dy[r * tk + i];
        for (size_t i = 0; i < tk; ++i) dx[r * tk + i] = scale * y[r * tk + i] * (dy[r * tk + i] - dot);
    }
    Floats got(x.size()), yf(x.size()), gdx(x.size());
    launch(per_row(b * h * tq), block, [&] {
        ENTRY(masked_softmax_forward, f32)(x.data(), bias.data(), got.data(), h, tq, tk, scale);
    });
    expect("masked softmax forward", got, y, 1e-6);
    for (size_t i = 0; i < y.size(); ++i) yf[i] = (float)y[i];
    launch(per_row(b * h * tq), block, [&] {
        ENTRY(masked_softmax_backward, f32)(yf.data(), dy.data(), gdx.data(), tk, scale);
    });
    expect("masked softmax backward", gdx, dx, 1e-6);
}

static void cross_entropy() {
    const size_t n = 5, v = 700;
    Floats logits = uniform(n * v, 6.0f), mask{1.0f, 0.5f, 0.0f, 1.0f, 0.0f}, dnll{0.3f, -1.0f, 2.0f, 0.7f, 1.0f};
    // Row 2 has no weight and a target outside the vocabulary: no loss, no gradient, no read.
    std::vector<u32> targets{3, 699, 100000, 0, 12};
    Doubles nll(n), d(n * v);
    Floats weight(n);
    for (size_t r = 0; r < n; ++r) {
        weight[r] = mask[r] * dnll[r];
        if (mask[r] == 0.0f) continue;
        double m = -INFINITY, sum = 0;
        for (size_t i = 0; i < v; ++i) m = std::max(m, (double)logits[r * v + i]);
        for (size_t i = 0; i < v; ++i) sum += std::exp(logits[r * v + i] - m);
        nll[r] = mask[r] * (std::log(sum) + m - logits[r * v + targets[r]]);
        for (size_t i = 0; i < v; ++i)
            d[r * v + i] = weight[r] * (std::exp(logits[r * v + i] - m) / sum - (i == targets[r] ? 1.0 : 0.0));
    }
    Floats got(n), gd(n * v);
    launch(per_row(n), block, [&] {
        ENTRY(cross_entropy_forward, f32)(logits.data(), targets.data(), mask.data(), got.data(), v);
    });
    expect("cross-entropy forward", got, nll, 1e-6);
    launch(per_row(n), block, [&] {
        ENTRY(cross_entropy_backward, f32)(logits.data(), targets.data(), weight.data(), gd.data(), v);
    });
    expect("cross-entropy backward", gd, d, 1e-6);
    // A counted row whose target is outside the vocabulary: NaN, loudly.
    targets[0] = 700;
    launch(per_row(n), block, [&] {
        ENTRY(cross_entropy_forward, f32)(logits.data(), targets.data(), mask.data(), got.data(), v);
    });
    nll[0] = NAN;
    expect("cross-entropy of a target outside the vocabulary", got, nll, 1e-6);
}

// The gradient norm's partial sums, as `adamw/cuda.rs` chunks a tensor: 3 blocks of 7000
// elements over 20001 (the last one short).
static void squared_norm() {
    const u32 n = 20001, per_block = 7000, blocks = 3;
    Floats x = uniform(n, 2.0f), got(blocks);
    Doubles want(blocks, 0.0);
    for (u32 i = 0; i < n; ++i) want[i / per_block] += (double)x[i] * x[i];
    launch(dim3{blocks, 1, 1}, block, [&] { ENTRY(squared_norm_partials, f32)(x.data(), n, per_block, got.data()); });
    expect("squared norm partial sums", got, want, 1e-6);
}

// The embedding table's gradient: rows wider than a block, a frequent token, a token that never
// occurs; positions grouped by token as `Groups::of` groups them.
static void embedding_backward() {
    const u32 n = 50, rows = 9, cols = 300;
    std::vector<u32> ids(n);
    for (u32 i = 0; i < n; ++i) ids[i] = i % 3 == 0 ? 4 : (u32)(rng() % (rows - 1));
    std::vector<u32> offsets(rows + 1, 0), order(n);
    for (u32 id : ids) ++offsets[id + 1];
    for (u32 v = 0; v < rows; ++v) offsets[v + 1] += offsets[v];
    std::vector<u32> next(offsets.begin(), offsets.end() - 1);
    for (u32 i = 0; i < n; ++i) order[next[ids[i]]++] = i;
    Floats dy = uniform(n * cols, 1.0f), got(rows * cols);
    Doubles want(rows * cols, 0.0);
    for (u32 i = 0; i < n; ++i)
        for (u32 c = 0; c < cols; ++c) want[ids[i] * cols + c] += dy[i * cols + c];
    launch(dim3{rows, (cols + BLOCK - 1) / BLOCK, 1}, block, [&] {
        ENTRY(embedding_backward, f32)(dy.data(), offsets.data(), order.data(), got.data(), cols);
    });
    expect("embedding backward", got, want, 1e-6);
}

static void adamw() {
    const size_t n = 700;
    const float b1 = 0.9f, b2 = 0.95f, scale = 0.5f, lr_bc1 = 0.1f, inv_sqrt_bc2 = 3.2f, decay = 0.001f, eps = 1e-8f;
    Floats grad = uniform(n, 0.5f), mv = uniform(2 * n, 0.1f), p = uniform(n, 1.0f);
    for (size_t i = n; i < 2 * n; ++i) mv[i] = std::fabs(mv[i]);
    Doubles want_mv(2 * n), want_p(n);
    for (size_t i = 0; i < n; ++i) {
        const double g = (double)grad[i] * scale;
        want_mv[i] = b1 * mv[i] + (1.0 - b1) * g;
        want_mv[n + i] = b2 * mv[n + i] + (1.0 - b2) * g * g;
        want_p[i] = p[i] - (decay * p[i] + lr_bc1 * want_mv[i] / (std::sqrt(want_mv[n + i]) * inv_sqrt_bc2 + eps));
    }
    launch(per_element(n), block, [&] { ENTRY(adamw_moments, f32)(mv.data(), grad.data(), n, b1, b2, scale); });
    expect("adamw moments", mv, want_mv, 1e-6);
    launch(per_element(n), block, [&] {
        ENTRY(adamw_apply, f32)(p.data(), mv.data(), n, lr_bc1, inv_sqrt_bc2, decay, eps);
    });
    expect("adamw parameter", p, want_p, 1e-6);
}

// Causal attention inside packed documents with grouped-query heads, against the softmax of
// every score (plain, and capped by `cap · tanh(s / cap)`): output and log-sum-exp, then dq,
// dk, dv for a random output gradient; the kernels' f32 entry points for head dimension `hd`.
template <typename T>
static std::vector<T> rounded(Floats& v) {
    std::vector<T> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = from_f32<T>(v[i]), v[i] = to_f32(out[i]);
    return out;
}
template <typename T>
static Floats widened(const std::vector<T>& v) {
    Floats out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = to_f32(v[i]);
    return out;
}

// LoRA's dropout mask against the masks `Dropout::mask` draws on the CPU (printed by the Rust
// side: 1 kept, 0 dropped), the threshold ⌈p·2⁵³⌉ and keep 1 / (1 − p) as `lora/cuda.rs` passes
// them; and in bf16 over two blocks.
static void dropout_mask() {
    const struct {
        double p;
        u64 seed;
        const char* kept;
    } cases[] = {{0.25, 5, "0111111110111110111001111111111101010101"},
                 {0.5, 0xDEADBEEF1234ull, "1100101001100000100111111001001010001111"}};
    for (const auto& c : cases) {
        const u32 n = 40;
        const u64 threshold = (u64)std::ceil(c.p * 9007199254740992.0);
        const float keep = (float)(1.0 / (1.0 - c.p));
        Floats got(n);
        launch(per_element(n), block, [&] { ENTRY(dropout_mask, f32)(got.data(), n, c.seed, threshold, keep); });
        Doubles want(n);
        for (u32 i = 0; i < n; ++i) want[i] = c.kept[i] == '1' ? keep : 0.0;
        expect("dropout mask p = " + std::to_string(c.p), got, want, 0.0);
    }
    const u32 n = 300;
    std::vector<bf16> got(n);
    Floats f32(n);
    launch(per_element(n), block, [&] { ENTRY(dropout_mask, bf16)(got.data(), n, 5, 2251799813685248ull, 1.3359375f); });
    launch(per_element(n), block, [&] { ENTRY(dropout_mask, f32)(f32.data(), n, 5, 2251799813685248ull, 1.3359375f); });
    expect("dropout mask in bf16", widened(got), Doubles(f32.begin(), f32.end()), 0.0);
}

template <typename T, typename Forward, typename Delta, typename Dq, typename Dkv>
static void attention(const std::string& kernels, u32 hd, unsigned rows_per_block, double tol, Forward forward,
                      Delta delta_of, Dq dq_of, std::initializer_list<Dkv> key_passes) {
    const u32 b = 2, heads = 4, kv_heads = 2, t = 150;
    const float scale = 0.3f;
    // Row 0 holds documents [0, 30) and [30, 150); row 1 one document seen through a sliding
    // window of 40 keys (spans that start inside a block of queries, each at its own key).
    std::vector<u32> spans(2 * b * t);
    for (u32 r = 0; r < b; ++r)
        for (u32 i = 0; i < t; ++i) {
            const u32 windowed = i + 1 > 40 ? i + 1 - 40 : 0;
            spans[2 * (r * t + i)] = r == 0 ? (i >= 30 ? 30 : 0) : windowed, spans[2 * (r * t + i) + 1] = i + 1;
        }
    Floats q = uniform(b * heads * t * hd, 1.5f), k = uniform(b * kv_heads * t * hd, 1.5f),
           v = uniform(b * kv_heads * t * hd, 1.5f), dout = uniform(b * t * heads * hd, 1.0f);
    // The kernels read T; the reference takes the same rounded values.
    auto qt = rounded<T>(q), kt = rounded<T>(k), vt = rounded<T>(v), dot = rounded<T>(dout);
    // Plain scores, then scores capped at ±2.5 (Gemma 2's soft-capping; they reach about ±5).
    for (const float cap : {0.0f, 2.5f}) {
        Doubles out(b * t * heads * hd, 0.0), lse(b * heads * t), dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
        const u32 group = heads / kv_heads;
        for (u32 r = 0; r < b; ++r)
            for (u32 h = 0; h < heads; ++h)
                for (u32 i = 0; i < t; ++i) {
                    const u32 lo = spans[2 * (r * t + i)], hi = spans[2 * (r * t + i) + 1], g = h / group;
                    auto qv = [&](u32 d) { return (double)q[((r * heads + h) * t + i) * hd + d]; };
                    auto kv = [&](const Floats& m, u32 j, u32 d) { return (double)m[((r * kv_heads + g) * t + j) * hd + d]; };
                    Doubles s(t, -INFINITY), slope(t, 1.0);
                    double m = -INFINITY, sum = 0;
                    for (u32 j = lo; j < hi; ++j) {
                        s[j] = 0;
                        for (u32 d = 0; d < hd; ++d) s[j] += qv(d) * kv(k, j, d);
                        s[j] *= scale;
                        if (cap > 0) s[j] = cap * std::tanh(s[j] / cap), slope[j] = 1 - (s[j] / cap) * (s[j] / cap);
                        m = std::max(m, s[j]);
                    }
                    for (u32 j = lo; j < hi; ++j) sum += std::exp(s[j] - m);
                    lse[(r * heads + h) * t + i] = m + std::log(sum);
                    const size_t o_at = ((r * t + i) * heads + h) * hd;
                    double delta = 0;
                    Doubles p(t, 0.0), dp(t, 0.0);
                    for (u32 j = lo; j < hi; ++j) {
                        p[j] = std::exp(s[j] - m) / sum;
                        for (u32 d = 0; d < hd; ++d) out[o_at + d] += p[j] * kv(v, j, d);
                    }
                    // As the kernels do (and FlashAttention), delta = Σ dout·out over the output as
                // written, in T.
                for (u32 d = 0; d < hd; ++d) delta += (double)to_f32(from_f32<T>((float)out[o_at + d])) * dout[o_at + d];
                    for (u32 j = lo; j < hi; ++j) {
                        for (u32 d = 0; d < hd; ++d) dp[j] += dout[o_at + d] * kv(v, j, d);
                        const double ds = p[j] * (dp[j] - delta) * slope[j];
                        for (u32 d = 0; d < hd; ++d) {
                            dq[((r * heads + h) * t + i) * hd + d] += scale * ds * kv(k, j, d);
                            dk[((r * kv_heads + g) * t + j) * hd + d] += scale * ds * qv(d);
                            dv[((r * kv_heads + g) * t + j) * hd + d] += p[j] * dout[o_at + d];
                        }
                    }
                }
        // The grids `attention/cuda.rs` launches.
        const unsigned query_blocks = (t + rows_per_block - 1) / rows_per_block;
        std::vector<T> got(out.size()), gdq(q.size()), gdk(k.size()), gdv(v.size());
        Floats got_lse(lse.size()), delta(lse.size());
        launch(dim3{query_blocks, b * heads, 1}, block, [&] {
            forward(qt.data(), kt.data(), vt.data(), spans.data(), got.data(), got_lse.data(), heads, kv_heads, t, t, scale, cap);
        });
        const std::string at = " (" + kernels + ", head dimension " + std::to_string(hd) + (cap > 0 ? ", capped" : "") + ")";
        expect("attention forward" + at, widened(got), out, tol);
        expect("attention log-sum-exp" + at, got_lse, lse, tol);
        launch(per_element(b * t * heads), block, [&] {
            delta_of(got.data(), dot.data(), delta.data(), heads, t, b * t * heads);
        });
        launch(dim3{query_blocks, b * heads, 1}, block, [&] {
            dq_of(qt.data(), kt.data(), vt.data(), spans.data(), dot.data(), got_lse.data(), delta.data(), gdq.data(), heads,
                  kv_heads, t, t, scale, cap);
        });
        expect("attention dq" + at, widened(gdq), dq, tol);
        for (Dkv pass : key_passes)
            launch(dim3{query_blocks, b * kv_heads, 1}, block, [&] {
                pass(qt.data(), kt.data(), vt.data(), spans.data(), dot.data(), got_lse.data(), delta.data(), gdk.data(),
                     gdv.data(), heads, kv_heads, t, t, scale, cap);
            });
        expect("attention dk" + at, widened(gdk), dk, tol);
        expect("attention dv" + at, widened(gdv), dv, tol);
    }
}

static void conversions() {
    // Round to nearest, ties to even, NaN kept quiet: as the `half` crate rounds on the CPU.
    const float cases[] = {1.0f, 1.00390625f, 1.01171875f, -3.3e38f, 1e-40f, INFINITY, -0.0f};
    const unsigned short want[] = {0x3f80, 0x3f80, 0x3f82, 0xff78, 0x0001, 0x7f80, 0x8000};
    Floats got, expected;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
        got.push_back(from_f32<bf16>(cases[i]).bits);
        expected.push_back(want[i]);
    }
    expect("bf16 rounding", got, Doubles(expected.begin(), expected.end()), 0.0);
    const bf16 nan = from_f32<bf16>(NAN);
    expect("bf16 NaN", Floats{std::isnan(to_f32(nan)) ? 1.0f : 0.0f}, Doubles{1.0}, 0.0);
}

int main() {
    rms_norm();
    glu();
    rope();
    masked_softmax();
    cross_entropy();
    adamw();
    squared_norm();
    embedding_backward();
    dropout_mask();
    const unsigned simt = BLOCK / 4, mma = BLOCK / 32 * 16;
    attention<float>("f32", 32, simt, 1e-5, ENTRY(attention_forward_32, f32), ENTRY(attention_delta_32, f32),
                     ENTRY(attention_dq_32, f32), {ENTRY(attention_dkv_32, f32)});
    attention<float>("f32", 64, simt, 1e-5, ENTRY(attention_forward_64, f32), ENTRY(attention_delta_64, f32),
                     ENTRY(attention_dq_64, f32), {ENTRY(attention_dkv_64, f32)});
    attention<float>("f32", 128, simt, 1e-5, ENTRY(attention_forward_128, f32), ENTRY(attention_delta_128, f32),
                     ENTRY(attention_dq_128, f32), {ENTRY(attention_dkv_128, f32)});
    // Head dimension 256 (Gemma's): eight threads a query, tiles of 16; 16-bit inputs stay on
    // the CUDA cores there.
    const unsigned simt_256 = BLOCK / 8;
    attention<float>("f32", 256, simt_256, 1e-5, ENTRY(attention_forward_256, f32), ENTRY(attention_delta_256, f32),
                     ENTRY(attention_dq_256, f32), {ENTRY(attention_dkv_256, f32)});
    attention<bf16>("bf16", 256, simt_256, 1.5e-2, ENTRY(attention_forward_256, bf16), ENTRY(attention_delta_256, bf16),
                    ENTRY(attention_dq_256, bf16), {ENTRY(attention_dkv_256, bf16)});
    // Tensor cores: products of bf16 (f16) operands, the probabilities and their gradients
    // rounded to bf16 (f16) on the way into the second product, as FlashAttention does.
    attention<bf16>("bf16 tensor cores", 32, mma, 1.5e-2, ENTRY(attention_mma_forward_32, bf16),
                    ENTRY(attention_delta_32, bf16), ENTRY(attention_mma_dq_32, bf16),
                    {ENTRY(attention_mma_dkv_32, bf16)});
    attention<bf16>("bf16 tensor cores", 64, mma, 1.5e-2, ENTRY(attention_mma_forward_64, bf16),
                    ENTRY(attention_delta_64, bf16), ENTRY(attention_mma_dq_64, bf16),
                    {ENTRY(attention_mma_dkv_64, bf16)});
    attention<f16>("f16 tensor cores", 64, mma, 2e-3, ENTRY(attention_mma_forward_64, f16),
                   ENTRY(attention_delta_64, f16), ENTRY(attention_mma_dq_64, f16), {ENTRY(attention_mma_dkv_64, f16)});
    // Head dimension 128: dk and dv in passes of their own.
    attention<bf16>("bf16 tensor cores", 128, mma, 1.5e-2, ENTRY(attention_mma_forward_128, bf16),
                    ENTRY(attention_delta_128, bf16), ENTRY(attention_mma_dq_128, bf16),
                    {ENTRY(attention_mma_dk_128, bf16), ENTRY(attention_mma_dv_128, bf16)});
    attention<f16>("f16 tensor cores", 128, mma, 2e-3, ENTRY(attention_mma_forward_128, f16),
                   ENTRY(attention_delta_128, f16), ENTRY(attention_mma_dq_128, f16),
                   {ENTRY(attention_mma_dk_128, f16), ENTRY(attention_mma_dv_128, f16)});
    conversions();
    if (failures) std::printf("%d checks failed\n", failures);
    return failures ? 1 : 0;
}
