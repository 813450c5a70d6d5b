// arch: compute_80
// Attention over spans of keys on tensor cores, for bf16 and f16 (f32 stays with `kernels.cu`),
// head dimensions 32, 64 and 128: the same tiled scheme as `kernels.cu` (forward keeps each
// query's log-sum-exp; backward is `dq` per block of queries, `dk`, `dv` per block of keys),
// with every product an `mma.m16n8k16` (16-bit operands, f32 accumulators), as FlashAttention-2
// does.
// Each warp owns 16 queries (or keys); with g = lane / 4 and t = lane % 4 a thread holds rows
// g and g + 8 of the warp's tiles, columns 2t and 2t + 1 of every 8. Scores, probabilities and
// their gradients stay in registers, where a product's f32 result is, in the layout the next
// product's operand needs (rounded to the input dtype). Layouts and the score cap as in
// `kernels.cu`. Needs sm_80 or newer.

#define WARPS (BLOCK / 32)
// Queries (forward, dq) or keys (dk, dv) per block: 16 a warp.
#define ROWS_PER_BLOCK (WARPS * 16)
// Keys (forward, dq) or queries (dk, dv) per tile in shared memory.
#define TILE 64

// The 32-bit word of two adjacent 16-bit elements (the lower index in the lower half).
template <typename T> __device__ __forceinline__ u32 pair_at(const T* p) { return *reinterpret_cast<const u32*>(p); }
template <typename T> __device__ __forceinline__ u32 pair_of(T lo, T hi) { return (u32)lo.bits | ((u32)hi.bits << 16); }
template <typename T> __device__ __forceinline__ u32 pack(float lo, float hi) {
    return pair_of(from_f32<T>(lo), from_f32<T>(hi));
}

// d += a·b for one m16n8k16 tile.
#ifdef RECIPE_EMULATED
template <typename T> __device__ __forceinline__ void mma(float d[4], const u32 a[4], const u32 b0, const u32 b1) {
    const u32 b[2] = {b0, b1};
    mma_m16n8k16(d, a, b, [](unsigned short bits) { T x; x.bits = bits; return to_f32(x); });
}
#else
template <typename T> __device__ __forceinline__ void mma(float d[4], const u32 a[4], const u32 b0, const u32 b1);
template <> __device__ __forceinline__ void mma<bf16>(float d[4], const u32 a[4], const u32 b0, const u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma<f16>(float d[4], const u32 a[4], const u32 b0, const u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

// Over the four threads of a quad (the threads that share rows g and g + 8).
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_add(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// A-operand fragments of the warp's 16 rows `first..first + 16` of a matrix of `rows` rows
// of HD elements, `row_stride` apart (zeros past `rows`).
template <typename T, int HD>
__device__ __forceinline__ void load_a(u32 (*a)[4], const T* m, size_t row_stride, u32 first, u32 rows) {
    const u32 g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
    for (int r = 0; r < 2; ++r) {
        const u32 row = first + g + 8 * r;
        for (int s = 0; s < HD / 16; ++s) {
            a[s][r] = row < rows ? pair_at(m + row * row_stride + s * 16 + 2 * t) : 0u;
            a[s][2 + r] = row < rows ? pair_at(m + row * row_stride + s * 16 + 8 + 2 * t) : 0u;
        }
    }
}

// Rows `first..first + TILE` of a matrix of `rows` rows of HD elements into shared memory.
template <typename T, int HD>
__device__ __forceinline__ void load_tile(T (*tile)[HD], const T* m, size_t row_stride, u32 first, u32 rows) {
    for (u32 at = threadIdx.x; at < TILE * HD / 2; at += BLOCK) {
        const u32 r = at / (HD / 2), c = 2 * (at % (HD / 2));
        *reinterpret_cast<u32*>(&tile[r][c]) = first + r < rows ? pair_at(m + (first + r) * row_stride + c) : 0u;
    }
}

// acc[n] += a·tileᵀ over the tile's TILE rows as the columns: a `[16, HD]` operand against
// rows of HD (scores against keys, or against queries).
template <typename T, int HD>
__device__ __forceinline__ void times_rows(float (*acc)[4], const u32 (*a)[4], const T (*tile)[HD]) {
    const u32 g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
    for (int n = 0; n < TILE / 8; ++n)
        for (int s = 0; s < HD / 16; ++s)
            mma<T>(acc[n], a[s], pair_at(&tile[n * 8 + g][s * 16 + 2 * t]), pair_at(&tile[n * 8 + g][s * 16 + 8 + 2 * t]));
}

// acc[n] += p·tile: `p` the f32 result of a `times_rows` (`[16, TILE]`), rounded to T, against
// the tile's TILE rows of HD.
template <typename T, int HD>
__device__ __forceinline__ void times_tile(float (*acc)[4], const float (*p)[4], const T (*tile)[HD]) {
    const u32 g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
    for (int s = 0; s < TILE / 16; ++s) {
        const u32 a[4] = {pack<T>(p[2 * s][0], p[2 * s][1]), pack<T>(p[2 * s][2], p[2 * s][3]),
                          pack<T>(p[2 * s + 1][0], p[2 * s + 1][1]), pack<T>(p[2 * s + 1][2], p[2 * s + 1][3])};
        const u32 r = s * 16 + 2 * t;
        for (int n = 0; n < HD / 8; ++n) {
            const u32 c = n * 8 + g;
            mma<T>(acc[n], a, pair_of(tile[r][c], tile[r + 1][c]), pair_of(tile[r + 8][c], tile[r + 9][c]));
        }
    }
}

template <typename T, int HD>
__device__ void attention_mma_forward(const T* q, const T* k, const T* v, const u32* spans, T* out, float* lse,
                                      u32 heads, u32 kv_heads, u32 tq, u32 tk, float scale, float cap) {
    const float inv_cap = cap > 0.0f ? 1.0f / cap : 0.0f;
    __shared__ T ks[TILE][HD], vs[TILE][HD];
    const u32 b = blockIdx.y / heads, h = blockIdx.y % heads, kvg = h / (heads / kv_heads);
    const u32 g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
    const u32 first = blockIdx.x * ROWS_PER_BLOCK, q0 = first + (threadIdx.x / 32) * 16;
    u32 row[2], lo[2], hi[2];
    for (int r = 0; r < 2; ++r) {
        row[r] = q0 + g + 8 * r;
        lo[r] = row[r] < tq ? spans[2 * ((size_t)b * tq + row[r])] : 0u;
        hi[r] = row[r] < tq ? spans[2 * ((size_t)b * tq + row[r]) + 1] : 0u;
    }
    u32 qa[HD / 16][4];
    load_a<T, HD>(qa, q + ((size_t)b * heads + h) * tq * HD, HD, q0, tq);
    const T* kg = k + ((size_t)b * kv_heads + kvg) * tk * HD;
    const T* vg = v + ((size_t)b * kv_heads + kvg) * tk * HD;
    float o[HD / 8][4] = {};
    float m[2] = {NEG_INFINITY, NEG_INFINITY}, l[2] = {0.0f, 0.0f};
    u32 first_key, end_key;
    keys_reached(spans, b, first, ROWS_PER_BLOCK, tq, tk, &first_key, &end_key);
    for (u32 k0 = first_key; k0 < end_key; k0 += TILE) {
        __syncthreads();
        load_tile<T, HD>(ks, kg, HD, k0, tk);
        load_tile<T, HD>(vs, vg, HD, k0, tk);
        __syncthreads();
        float s[TILE / 8][4] = {};
        times_rows<T, HD>(s, qa, ks);
        // Unrolled, so that `s` stays in registers.
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float top = NEG_INFINITY;
            for (int n = 0; n < TILE / 8; ++n)
                for (int c = 0; c < 2; ++c) {
                    const u32 key = k0 + n * 8 + 2 * t + c;
                    float& x = s[n][2 * r + c];
                    float slope;
                    x = key >= lo[r] && key < hi[r] ? capped(x * scale, cap, inv_cap, &slope) : NEG_INFINITY;
                    top = fmaxf(top, x);
                }
            const float m_new = fmaxf(m[r], quad_max(top));
            const float alpha = m[r] == NEG_INFINITY ? 0.0f : expf(m[r] - m_new);
            float sum = 0.0f;
            for (int n = 0; n < TILE / 8; ++n)
                for (int c = 0; c < 2; ++c) {
                    float& x = s[n][2 * r + c];
                    x = x == NEG_INFINITY ? 0.0f : expf(x - m_new);
                    sum += x;
                }
            l[r] = l[r] * alpha + quad_add(sum);
            for (int n = 0; n < HD / 8; ++n) o[n][2 * r] *= alpha, o[n][2 * r + 1] *= alpha;
            m[r] = m_new;
        }
        times_tile<T, HD>(o, s, vs);
    }
    for (int r = 0; r < 2; ++r) {
        if (row[r] >= tq) continue;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        T* at = out + (((size_t)b * tq + row[r]) * heads + h) * HD;
        for (int n = 0; n < HD / 8; ++n)
            at[n * 8 + 2 * t] = from_f32<T>(o[n][2 * r] * inv), at[n * 8 + 2 * t + 1] = from_f32<T>(o[n][2 * r + 1] * inv);
        if (t == 0) lse[((size_t)b * heads + h) * tq + row[r]] = l[r] > 0.0f ? m[r] + logf(l[r]) : NEG_INFINITY;
    }
}

// dq = scale · dS·k with dS = P ⊙ (dout·vᵀ − delta), P recomputed from the log-sum-exp.
template <typename T, int HD>
__device__ void attention_mma_dq(const T* q, const T* k, const T* v, const u32* spans, const T* dout,
                                 const float* lse, const float* delta, T* dq, u32 heads, u32 kv_heads, u32 tq, u32 tk,
                                 float scale, float cap) {
    const float inv_cap = cap > 0.0f ? 1.0f / cap : 0.0f;
    __shared__ T ks[TILE][HD], vs[TILE][HD];
    const u32 b = blockIdx.y / heads, h = blockIdx.y % heads, kvg = h / (heads / kv_heads);
    const u32 g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
    const u32 first = blockIdx.x * ROWS_PER_BLOCK, q0 = first + (threadIdx.x / 32) * 16;
    const size_t bh = (size_t)b * heads + h;
    u32 row[2], lo[2], hi[2];
    float lse_r[2], delta_r[2];
    for (int r = 0; r < 2; ++r) {
        row[r] = q0 + g + 8 * r;
        const bool in = row[r] < tq;
        lo[r] = in ? spans[2 * ((size_t)b * tq + row[r])] : 0u;
        hi[r] = in ? spans[2 * ((size_t)b * tq + row[r]) + 1] : 0u;
        lse_r[r] = in ? lse[bh * tq + row[r]] : 0.0f;
        delta_r[r] = in ? delta[bh * tq + row[r]] : 0.0f;
    }
    u32 qa[HD / 16][4], da[HD / 16][4];
    load_a<T, HD>(qa, q + bh * tq * HD, HD, q0, tq);
    load_a<T, HD>(da, dout + ((size_t)b * tq * heads + h) * HD, (size_t)heads * HD, q0, tq);
    const T* kg = k + ((size_t)b * kv_heads + kvg) * tk * HD;
    const T* vg = v + ((size_t)b * kv_heads + kvg) * tk * HD;
    float acc[HD / 8][4] = {};
    u32 first_key, end_key;
    keys_reached(spans, b, first, ROWS_PER_BLOCK, tq, tk, &first_key, &end_key);
    for (u32 k0 = first_key; k0 < end_key; k0 += TILE) {
        __syncthreads();
        load_tile<T, HD>(ks, kg, HD, k0, tk);
        load_tile<T, HD>(vs, vg, HD, k0, tk);
        __syncthreads();
        float s[TILE / 8][4] = {}, dp[TILE / 8][4] = {};
        times_rows<T, HD>(s, qa, ks);
        times_rows<T, HD>(dp, da, vs);
#pragma unroll
        for (int n = 0; n < TILE / 8; ++n)
            for (int i = 0; i < 4; ++i) {
                const int r = i / 2;
                const u32 key = k0 + n * 8 + 2 * t + (i & 1);
                float slope;
                const float score = capped(s[n][i] * scale, cap, inv_cap, &slope);
                const float p = key >= lo[r] && key < hi[r] ? expf(score - lse_r[r]) : 0.0f;
                s[n][i] = p * (dp[n][i] - delta_r[r]) * slope;
            }
        times_tile<T, HD>(acc, s, ks);
    }
    for (int r = 0; r < 2; ++r) {
        if (row[r] >= tq) continue;
        T* at = dq + (bh * tq + row[r]) * HD;
        for (int n = 0; n < HD / 8; ++n)
            at[n * 8 + 2 * t] = from_f32<T>(acc[n][2 * r] * scale), at[n * 8 + 2 * t + 1] = from_f32<T>(acc[n][2 * r + 1] * scale);
    }
}

// dk = scale · dSᵀ·q (when DK) and dv = Pᵀ·dout (when DV) for the warp's 16 keys, over every
// query head of the group in order and every tile of queries that sees one of the block's keys.
// At head dimension 128 both accumulators would not fit in registers beside the operands, so
// `dk` and `dv` are two passes there (each recomputes P).
template <typename T, int HD, bool DK, bool DV>
__device__ void attention_mma_key_pass(const T* q, const T* k, const T* v, const u32* spans, const T* dout,
                                  const float* lse, const float* delta, T* dk, T* dv, u32 heads, u32 kv_heads, u32 tq,
                                  u32 tk, float scale, float cap) {
    const float inv_cap = cap > 0.0f ? 1.0f / cap : 0.0f;
    __shared__ T qs[TILE][HD], dos[TILE][HD];
    __shared__ float lse_s[TILE], delta_s[TILE];
    __shared__ u32 lo_s[TILE], hi_s[TILE];
    const u32 b = blockIdx.y / kv_heads, kvg = blockIdx.y % kv_heads, group = heads / kv_heads;
    const u32 g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
    const u32 first = blockIdx.x * ROWS_PER_BLOCK, key0 = first + (threadIdx.x / 32) * 16;
    const u32 last = min(first + ROWS_PER_BLOCK, tk);
    const size_t kv_at = ((size_t)b * kv_heads + kvg) * tk * HD;
    u32 ka[HD / 16][4], va[HD / 16][4];
    load_a<T, HD>(ka, k + kv_at, HD, key0, tk);
    if constexpr (DK) load_a<T, HD>(va, v + kv_at, HD, key0, tk);
    float dka[HD / 8][4] = {}, dva[HD / 8][4] = {};
    for (u32 h = kvg * group; h < (kvg + 1) * group; ++h) {
        const size_t bh = (size_t)b * heads + h;
        for (u32 q0 = 0; q0 < tq; q0 += TILE) {
            // Skip the tile unless one of its queries sees one of the block's keys.
            if (!stage_queries(spans, lse, delta, b, bh, q0, TILE, tq, first, last, lo_s, hi_s, lse_s, delta_s))
                continue;
            load_tile<T, HD>(qs, q + bh * tq * HD, HD, q0, tq);
            load_tile<T, HD>(dos, dout + ((size_t)b * tq * heads + h) * HD, (size_t)heads * HD, q0, tq);
            __syncthreads();
            // Rows are keys, columns queries: sᵀ = k·qᵀ and dpᵀ = v·doutᵀ.
            float st[TILE / 8][4] = {}, dpt[TILE / 8][4] = {};
            times_rows<T, HD>(st, ka, qs);
            if constexpr (DK) times_rows<T, HD>(dpt, va, dos);
#pragma unroll
            for (int n = 0; n < TILE / 8; ++n)
                for (int i = 0; i < 4; ++i) {
                    const u32 key = key0 + g + 8 * (i / 2), query = n * 8 + 2 * t + (i & 1);
                    const bool sees = key < tk && key >= lo_s[query] && key < hi_s[query];
                    float slope;
                    const float score = capped(st[n][i] * scale, cap, inv_cap, &slope);
                    const float p = sees ? expf(score - lse_s[query]) : 0.0f;
                    st[n][i] = p;
                    if constexpr (DK) dpt[n][i] = p * (dpt[n][i] - delta_s[query]) * slope;
                }
            if constexpr (DV) times_tile<T, HD>(dva, st, dos);
            if constexpr (DK) times_tile<T, HD>(dka, dpt, qs);
        }
    }
    for (int r = 0; r < 2; ++r) {
        const u32 key = key0 + g + 8 * r;
        if (key >= tk) continue;
        T* dk_at = dk + kv_at + (size_t)key * HD;
        T* dv_at = dv + kv_at + (size_t)key * HD;
        for (int n = 0; n < HD / 8; ++n)
            for (int c = 0; c < 2; ++c) {
                if constexpr (DK) dk_at[n * 8 + 2 * t + c] = from_f32<T>(dka[n][2 * r + c] * scale);
                if constexpr (DV) dv_at[n * 8 + 2 * t + c] = from_f32<T>(dva[n][2 * r + c]);
            }
    }
}

#define DKV_PARAMS \
    (const T* q, const T* k, const T* v, const u32* spans, const T* dout, const float* lse, const float* delta, T* dk, \
     T* dv, u32 heads, u32 kv_heads, u32 tq, u32 tk, float scale, float cap)
#define DKV_ARGS (q, k, v, spans, dout, lse, delta, dk, dv, heads, kv_heads, tq, tk, scale, cap)
template <typename T, int HD> __device__ void attention_mma_dk DKV_PARAMS { attention_mma_key_pass<T, HD, true, false> DKV_ARGS; }
template <typename T, int HD> __device__ void attention_mma_dv DKV_PARAMS { attention_mma_key_pass<T, HD, false, true> DKV_ARGS; }
template <typename T, int HD> __device__ void attention_mma_dkv DKV_PARAMS { attention_mma_key_pass<T, HD, true, true> DKV_ARGS; }

// Entry points `NAME_HD_bf16` and `NAME_HD_f16`.
#define MMA_KERNELS_FOR(NAME, HD, PARAMS, ARGS) \
    KERNEL_FOR(NAME##_##HD, bf16, bf16, PARAMS, (NAME<T, HD> ARGS)) \
    KERNEL_FOR(NAME##_##HD, f16, f16, PARAMS, (NAME<T, HD> ARGS))
#define FORWARD_PARAMS \
    (const T* q, const T* k, const T* v, const u32* spans, T* out, float* lse, u32 heads, u32 kv_heads, u32 tq, u32 tk, \
     float scale, float cap)
#define DQ_PARAMS \
    (const T* q, const T* k, const T* v, const u32* spans, const T* dout, const float* lse, const float* delta, T* dq, \
     u32 heads, u32 kv_heads, u32 tq, u32 tk, float scale, float cap)
#define FORWARD_AND_DQ(HD) \
    MMA_KERNELS_FOR(attention_mma_forward, HD, FORWARD_PARAMS, (q, k, v, spans, out, lse, heads, kv_heads, tq, tk, scale, cap)) \
    MMA_KERNELS_FOR(attention_mma_dq, HD, DQ_PARAMS, (q, k, v, spans, dout, lse, delta, dq, heads, kv_heads, tq, tk, scale, cap))

FORWARD_AND_DQ(32)
FORWARD_AND_DQ(64)
FORWARD_AND_DQ(128)
// dk and dv: one pass at head dimensions 32 and 64, a pass each at 128.
MMA_KERNELS_FOR(attention_mma_dkv, 32, DKV_PARAMS, DKV_ARGS)
MMA_KERNELS_FOR(attention_mma_dkv, 64, DKV_PARAMS, DKV_ARGS)
MMA_KERNELS_FOR(attention_mma_dk, 128, DKV_PARAMS, DKV_ARGS)
MMA_KERNELS_FOR(attention_mma_dv, 128, DKV_PARAMS, DKV_ARGS)

#undef DKV_PARAMS
#undef DKV_ARGS
#undef FORWARD_PARAMS
#undef DQ_PARAMS
#undef FORWARD_AND_DQ
#undef MMA_KERNELS_FOR
#undef WARPS
#undef ROWS_PER_BLOCK
#undef TILE
