// Attention over spans of keys on CUDA, tiled (flash-style): no T × T matrix exists, forward or
// backward. A few adjacent threads serve each query (or key), each holding its share of the
// head dimension in registers; tiles of keys (or queries) pass through shared memory. Query `i`
// of row `b` sees keys `spans[2(b·tq + i)] .. spans[2(b·tq + i) + 1]`; a block visits only the
// tiles its spans reach. Every sum runs in a fixed order (no atomics), so results repeat bit for
// bit. Thread `part` (0..P−1) of a query holds the head elements `part + P·d`: in shared memory
// the P read neighbouring words, so a warp's reads never collide in a bank. A `cap` above zero
// caps each scaled score by `cap · tanh(s / cap)` before the softmax, and backward multiplies
// its gradient by the slope `1 − tanh²` (`capped` in `common.cuh`).
// Layouts: q, dq `[B, H, Tq, HD]`; k, v, dk, dv `[B, KVH, Tk, HD]`; out, dout `[B, Tq, H, HD]`;
// lse, delta `[B, H, Tq]` f32.

// Threads that serve one query (or key), adjacent lanes: four, each holding a quarter of the
// head dimension in registers; eight at head dimension 256, so that a thread still holds at most
// 32 values of each vector.
#define PARTS(HD) ((HD) > 128 ? 8 : 4)
// Queries (forward, dq) or keys (dk, dv) per block.
#define ROWS_PER_BLOCK(HD) (BLOCK / PARTS(HD))
// Keys (forward, dq) or queries (dk, dv) per tile in shared memory: two tiles of f32 stay within
// 32 KiB.
#define TILE(HD) ((HD) > 128 ? 16 : 32)

// Σ over the P threads that serve one query or key (adjacent lanes).
template <int P> __device__ __forceinline__ float part_sum(float v) {
    for (int lanes = 1; lanes < P; lanes <<= 1) v += __shfl_xor_sync(0xffffffffu, v, lanes);
    return v;
}

// Rows `first .. first + TILE(HD)` of a `[rows, HD]` matrix into shared `tile` in f32 (zeros past
// `rows`).
template <typename T, int HD>
__device__ __forceinline__ void load_tile(float (*tile)[HD], const T* m, size_t row_stride, u32 first, u32 rows) {
    for (u32 at = threadIdx.x; at < TILE(HD) * HD; at += BLOCK) {
        const u32 r = at / HD, d = at % HD;
        tile[r][d] = first + r < rows ? to_f32(m[(size_t)(first + r) * row_stride + d]) : 0.0f;
    }
}

template <typename T, int HD>
__device__ void attention_forward(const T* q, const T* k, const T* v, const u32* spans, T* out, float* lse, u32 heads,
                                  u32 kv_heads, u32 tq, u32 tk, float scale, float cap) {
    const float inv_cap = cap > 0.0f ? 1.0f / cap : 0.0f;
    constexpr int P = PARTS(HD), S = HD / P;
    __shared__ float ks[TILE(HD)][HD], vs[TILE(HD)][HD];
    const u32 b = blockIdx.y / heads, h = blockIdx.y % heads, g = h / (heads / kv_heads);
    const u32 first = blockIdx.x * ROWS_PER_BLOCK(HD), i = first + threadIdx.x / P, part = threadIdx.x % P;
    const bool active = i < tq;
    u32 lo = 0, hi = 0;
    if (active) lo = spans[2 * ((size_t)b * tq + i)], hi = spans[2 * ((size_t)b * tq + i) + 1];
    float qr[S], o[S];
    const T* qi = q + (((size_t)b * heads + h) * tq + (active ? i : 0)) * HD + part;
    for (int d = 0; d < S; ++d) qr[d] = to_f32(qi[P * d]) * scale, o[d] = 0.0f;
    const T* kg = k + ((size_t)b * kv_heads + g) * tk * HD;
    const T* vg = v + ((size_t)b * kv_heads + g) * tk * HD;
    float m = NEG_INFINITY, l = 0.0f;
    u32 first_key, end_key;
    keys_reached(spans, b, first, ROWS_PER_BLOCK(HD), tq, tk, &first_key, &end_key);
    for (u32 k0 = first_key; k0 < end_key; k0 += TILE(HD)) {
        __syncthreads();
        load_tile<T, HD>(ks, kg, HD, k0, tk);
        load_tile<T, HD>(vs, vg, HD, k0, tk);
        __syncthreads();
        float s[TILE(HD)];
        float tile_max = NEG_INFINITY;
        // Unrolled, so that `s` stays in registers.
#pragma unroll
        for (int j = 0; j < TILE(HD); ++j) {
            float dot = 0.0f;
            for (int d = 0; d < S; ++d) dot += qr[d] * ks[j][part + P * d];
            dot = part_sum<P>(dot);
            const u32 key = k0 + j;
            s[j] = (key >= lo && key < hi) ? dot : NEG_INFINITY;
        }
#pragma unroll
        for (int j = 0; j < TILE(HD); ++j) {
            float slope;
            if (cap > 0.0f && s[j] != NEG_INFINITY) s[j] = capped(s[j], cap, inv_cap, &slope);
            tile_max = fmaxf(tile_max, s[j]);
        }
        const float m_new = fmaxf(m, tile_max);
        if (m_new == NEG_INFINITY) continue;
        const float alpha = m == NEG_INFINITY ? 0.0f : expf(m - m_new);
        l *= alpha;
        for (int d = 0; d < S; ++d) o[d] *= alpha;
#pragma unroll
        for (int j = 0; j < TILE(HD); ++j) {
            const float p = s[j] == NEG_INFINITY ? 0.0f : expf(s[j] - m_new);
            l += p;
            for (int d = 0; d < S; ++d) o[d] += p * vs[j][part + P * d];
        }
        m = m_new;
    }
    if (!active) return;
    T* oi = out + (((size_t)b * tq + i) * heads + h) * HD + part;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int d = 0; d < S; ++d) oi[P * d] = from_f32<T>(o[d] * inv);
    if (part == 0) lse[((size_t)b * heads + h) * tq + i] = l > 0.0f ? m + logf(l) : NEG_INFINITY;
}

// delta = Σ dout·out per query, a thread each.
template <typename T, int HD>
__device__ void attention_delta(const T* out, const T* dout, float* delta, u32 heads, u32 tq, u32 queries) {
    const size_t at = (size_t)blockIdx.x * BLOCK + threadIdx.x;
    if (at >= queries) return;
    // `at` runs over [B, Tq, H], as out is laid out; delta is [B, H, Tq].
    const size_t h = at % heads, i = (at / heads) % tq, b = at / ((size_t)heads * tq);
    float sum = 0.0f;
    for (int d = 0; d < HD; ++d) sum += to_f32(out[at * HD + d]) * to_f32(dout[at * HD + d]);
    delta[(b * heads + h) * tq + i] = sum;
}

// dq = scale · Σ_j P_ij (dP_ij − delta_i) k_j with P recomputed from the log-sum-exp.
template <typename T, int HD>
__device__ void attention_dq(const T* q, const T* k, const T* v, const u32* spans, const T* dout, const float* lse,
                             const float* delta, T* dq, u32 heads, u32 kv_heads, u32 tq, u32 tk, float scale, float cap) {
    const float inv_cap = cap > 0.0f ? 1.0f / cap : 0.0f;
    constexpr int P = PARTS(HD), S = HD / P;
    __shared__ float ks[TILE(HD)][HD], vs[TILE(HD)][HD];
    const u32 b = blockIdx.y / heads, h = blockIdx.y % heads, g = h / (heads / kv_heads);
    const u32 first = blockIdx.x * ROWS_PER_BLOCK(HD), i = first + threadIdx.x / P, part = threadIdx.x % P;
    const bool active = i < tq;
    const u32 row = active ? i : 0;
    u32 lo = 0, hi = 0;
    if (active) lo = spans[2 * ((size_t)b * tq + i)], hi = spans[2 * ((size_t)b * tq + i) + 1];
    float qr[S], dor[S], acc[S];
    const T* qi = q + (((size_t)b * heads + h) * tq + row) * HD + part;
    const T* doi = dout + (((size_t)b * tq + row) * heads + h) * HD + part;
    for (int d = 0; d < S; ++d) qr[d] = to_f32(qi[P * d]) * scale, dor[d] = to_f32(doi[P * d]), acc[d] = 0.0f;
    const float lse_i = lse[((size_t)b * heads + h) * tq + row], delta_i = delta[((size_t)b * heads + h) * tq + row];
    const T* kg = k + ((size_t)b * kv_heads + g) * tk * HD;
    const T* vg = v + ((size_t)b * kv_heads + g) * tk * HD;
    u32 first_key, end_key;
    keys_reached(spans, b, first, ROWS_PER_BLOCK(HD), tq, tk, &first_key, &end_key);
    for (u32 k0 = first_key; k0 < end_key; k0 += TILE(HD)) {
        __syncthreads();
        load_tile<T, HD>(ks, kg, HD, k0, tk);
        load_tile<T, HD>(vs, vg, HD, k0, tk);
        __syncthreads();
        for (int j = 0; j < TILE(HD); ++j) {
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < S; ++d) s += qr[d] * ks[j][part + P * d], dp += dor[d] * vs[j][part + P * d];
            s = part_sum<P>(s);
            dp = part_sum<P>(dp);
            const u32 key = k0 + j;
            float slope;
            s = capped(s, cap, inv_cap, &slope);
            const float p = (key >= lo && key < hi) ? expf(s - lse_i) : 0.0f;
            const float ds = p * (dp - delta_i) * slope;
            for (int d = 0; d < S; ++d) acc[d] += ds * ks[j][part + P * d];
        }
    }
    if (!active) return;
    T* dqi = dq + (((size_t)b * heads + h) * tq + i) * HD + part;
    for (int d = 0; d < S; ++d) dqi[P * d] = from_f32<T>(acc[d] * scale);
}

// dk_j = scale · Σ_i dS_ij q_i and dv_j = Σ_i P_ij dout_i over every query head of the key's
// group and every query that sees key j, heads in order, queries in order.
template <typename T, int HD>
__device__ void attention_dkv(const T* q, const T* k, const T* v, const u32* spans, const T* dout, const float* lse,
                              const float* delta, T* dk, T* dv, u32 heads, u32 kv_heads, u32 tq, u32 tk, float scale, float cap) {
    const float inv_cap = cap > 0.0f ? 1.0f / cap : 0.0f;
    constexpr int P = PARTS(HD), S = HD / P;
    __shared__ float qs[TILE(HD)][HD], dos[TILE(HD)][HD];
    __shared__ float lse_s[TILE(HD)], delta_s[TILE(HD)];
    __shared__ u32 lo_s[TILE(HD)], hi_s[TILE(HD)];
    const u32 b = blockIdx.y / kv_heads, g = blockIdx.y % kv_heads, group = heads / kv_heads;
    const u32 first = blockIdx.x * ROWS_PER_BLOCK(HD), j = first + threadIdx.x / P, part = threadIdx.x % P;
    const bool active = j < tk;
    const u32 key = active ? j : 0;
    const u32 last = min(first + ROWS_PER_BLOCK(HD), tk);
    float kr[S], vr[S], dka[S], dva[S];
    const size_t kv_at = (((size_t)b * kv_heads + g) * tk + key) * HD + part;
    for (int d = 0; d < S; ++d) kr[d] = to_f32(k[kv_at + P * d]), vr[d] = to_f32(v[kv_at + P * d]), dka[d] = 0.0f, dva[d] = 0.0f;
    for (u32 h = g * group; h < (g + 1) * group; ++h) {
        const size_t bh = (size_t)b * heads + h;
        for (u32 q0 = 0; q0 < tq; q0 += TILE(HD)) {
            // Skip the tile unless one of its queries sees one of the block's keys.
            if (!stage_queries(spans, lse, delta, b, bh, q0, TILE(HD), tq, first, last, lo_s, hi_s, lse_s, delta_s))
                continue;
            load_tile<T, HD>(qs, q + bh * tq * HD, HD, q0, tq);
            load_tile<T, HD>(dos, dout + ((size_t)b * tq * heads + h) * HD, (size_t)heads * HD, q0, tq);
            __syncthreads();
            for (int r = 0; r < TILE(HD); ++r) {
                float s = 0.0f, dp = 0.0f;
                for (int d = 0; d < S; ++d) s += qs[r][part + P * d] * kr[d], dp += dos[r][part + P * d] * vr[d];
                float slope;
                s = capped(part_sum<P>(s) * scale, cap, inv_cap, &slope);
                dp = part_sum<P>(dp);
                const bool sees = active && key >= lo_s[r] && key < hi_s[r];
                const float p = sees ? expf(s - lse_s[r]) : 0.0f;
                const float ds = p * (dp - delta_s[r]) * slope;
                for (int d = 0; d < S; ++d) dva[d] += p * dos[r][part + P * d], dka[d] += ds * qs[r][part + P * d];
            }
        }
    }
    if (!active) return;
    for (int d = 0; d < S; ++d) dk[kv_at + P * d] = from_f32<T>(dka[d] * scale), dv[kv_at + P * d] = from_f32<T>(dva[d]);
}

// Entry points `NAME_HD_f32`, `NAME_HD_bf16`, `NAME_HD_f16` for head dimensions 32, 64, 128, 256.
#define HEAD_DIM_KERNELS_FOR(NAME, HD, PARAMS, ARGS) \
    KERNEL_FOR(NAME##_##HD, f32, float, PARAMS, (NAME<T, HD> ARGS)) \
    KERNEL_FOR(NAME##_##HD, bf16, bf16, PARAMS, (NAME<T, HD> ARGS)) \
    KERNEL_FOR(NAME##_##HD, f16, f16, PARAMS, (NAME<T, HD> ARGS))
#define HEAD_DIM_KERNELS(NAME, PARAMS, ARGS) \
    HEAD_DIM_KERNELS_FOR(NAME, 32, PARAMS, ARGS) \
    HEAD_DIM_KERNELS_FOR(NAME, 64, PARAMS, ARGS) \
    HEAD_DIM_KERNELS_FOR(NAME, 128, PARAMS, ARGS) \
    HEAD_DIM_KERNELS_FOR(NAME, 256, PARAMS, ARGS)

HEAD_DIM_KERNELS(attention_forward,
                 (const T* q, const T* k, const T* v, const u32* spans, T* out, float* lse, u32 heads, u32 kv_heads,
                  u32 tq, u32 tk, float scale, float cap),
                 (q, k, v, spans, out, lse, heads, kv_heads, tq, tk, scale, cap))
HEAD_DIM_KERNELS(attention_delta, (const T* out, const T* dout, float* delta, u32 heads, u32 tq, u32 queries),
                 (out, dout, delta, heads, tq, queries))
HEAD_DIM_KERNELS(attention_dq,
                 (const T* q, const T* k, const T* v, const u32* spans, const T* dout, const float* lse,
                  const float* delta, T* dq, u32 heads, u32 kv_heads, u32 tq, u32 tk, float scale, float cap),
                 (q, k, v, spans, dout, lse, delta, dq, heads, kv_heads, tq, tk, scale, cap))
HEAD_DIM_KERNELS(attention_dkv,
                 (const T* q, const T* k, const T* v, const u32* spans, const T* dout, const float* lse,
                  const float* delta, T* dk, T* dv, u32 heads, u32 kv_heads, u32 tq, u32 tk, float scale, float cap),
                 (q, k, v, spans, dout, lse, delta, dk, dv, heads, kv_heads, tq, tk, scale, cap))

#undef PARTS
#undef ROWS_PER_BLOCK
#undef TILE
