// RMSNorm on CUDA: a block per row forward and for `dx`; `dw` in two deterministic passes
// (per column, a partial sum over each span of `span` rows, then the partials in order).

template <typename T>
__device__ void rms_norm_forward(const T* x, const T* w, T* y, u32 d, float eps) {
    __shared__ float scratch[BLOCK / 32];
    const T* xr = x + (size_t)blockIdx.x * d;
    T* yr = y + (size_t)blockIdx.x * d;
    float squares = 0.0f;
    for (u32 i = threadIdx.x; i < d; i += BLOCK) {
        float a = to_f32(xr[i]);
        squares += a * a;
    }
    const float inv = 1.0f / sqrtf(block_sum(squares, scratch) / d + eps);
    for (u32 i = threadIdx.x; i < d; i += BLOCK) yr[i] = from_f32<T>(to_f32(xr[i]) * inv * to_f32(w[i]));
}
KERNELS(rms_norm_forward, (const T* x, const T* w, T* y, u32 d, float eps), (x, w, y, d, eps))

// dx = r·(dy·w − x̂·mean(dy·w·x̂)) with r = 1/rms and x̂ = x·r; each row's r kept for dw.
template <typename T>
__device__ void rms_norm_dx(const T* x, const T* w, const T* dy, T* dx, float* inv_rms, u32 d, float eps) {
    __shared__ float scratch[BLOCK / 32];
    const size_t at = (size_t)blockIdx.x * d;
    float squares = 0.0f, projected = 0.0f;
    for (u32 i = threadIdx.x; i < d; i += BLOCK) {
        float a = to_f32(x[at + i]);
        squares += a * a;
        projected += to_f32(dy[at + i]) * to_f32(w[i]) * a;
    }
    const float inv = 1.0f / sqrtf(block_sum(squares, scratch) / d + eps);
    const float mean = inv * block_sum(projected, scratch) / d;
    for (u32 i = threadIdx.x; i < d; i += BLOCK) {
        float a = to_f32(x[at + i]);
        dx[at + i] = from_f32<T>(inv * (to_f32(dy[at + i]) * to_f32(w[i]) - a * inv * mean));
    }
    if (threadIdx.x == 0) inv_rms[blockIdx.x] = inv;
}
KERNELS(rms_norm_dx, (const T* x, const T* w, const T* dy, T* dx, float* inv_rms, u32 d, float eps),
        (x, w, dy, dx, inv_rms, d, eps))

// partial[s, j] = Σ over the rows of span s (blockIdx.y) of dy·x·r, for column
// j = blockIdx.x·BLOCK + thread.
template <typename T>
__device__ void rms_norm_dw_partial(const T* x, const T* dy, const float* inv_rms, float* partial, u32 rows, u32 d,
                                    u32 span) {
    const u32 j = blockIdx.x * BLOCK + threadIdx.x;
    if (j >= d) return;
    const u32 first = blockIdx.y * span, last = min(first + span, rows);
    float s = 0.0f;
    for (u32 r = first; r < last; ++r) s += to_f32(dy[(size_t)r * d + j]) * to_f32(x[(size_t)r * d + j]) * inv_rms[r];
    partial[(size_t)blockIdx.y * d + j] = s;
}
KERNELS(rms_norm_dw_partial,
        (const T* x, const T* dy, const float* inv_rms, float* partial, u32 rows, u32 d, u32 span),
        (x, dy, inv_rms, partial, rows, d, span))

// dw[j] = Σ_s partial[s, j], spans in order.
template <typename T>
__device__ void rms_norm_dw(const float* partial, T* dw, u32 spans, u32 d) {
    const u32 j = blockIdx.x * BLOCK + threadIdx.x;
    if (j >= d) return;
    float s = 0.0f;
    for (u32 p = 0; p < spans; ++p) s += partial[(size_t)p * d + j];
    dw[j] = from_f32<T>(s);
}
KERNELS(rms_norm_dw, (const float* partial, T* dw, u32 spans, u32 d), (partial, dw, spans, d))
