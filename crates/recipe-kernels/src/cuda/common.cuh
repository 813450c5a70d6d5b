// What every kernel source shares, compiled in front of it by NVRTC: the element types, their
// conversions to and from f32 (where every kernel computes), and a deterministic block sum.
// No headers: NVRTC has no standard library, and bf16/f16 are converted by bits and PTX.

typedef unsigned int u32;

// A bf16 and an f16 are their 16 bits; `float` is itself.
struct bf16 { unsigned short bits; };
struct f16 { unsigned short bits; };

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __uint_as_float(((u32)x.bits) << 16); }
#ifdef RECIPE_EMULATED
// The CPU emulation (scripts/cuda-emulator) converts with the compiler's own f16.
__device__ __forceinline__ float to_f32(f16 x) {
    _Float16 h;
    memcpy(&h, &x.bits, 2);
    return (float)h;
}
#else
__device__ __forceinline__ float to_f32(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}
#endif

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
// Round to nearest, ties to even, as the `half` crate does on the CPU; NaNs stay quiet NaNs.
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) {
    u32 u = __float_as_uint(x);
    bf16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.bits = (unsigned short)((u >> 16) | 0x40u);
    } else {
        r.bits = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return r;
}
template <> __device__ __forceinline__ f16 from_f32<f16>(float x) {
    f16 r;
#ifdef RECIPE_EMULATED
    _Float16 h = (_Float16)x;
    memcpy(&r.bits, &h, 2);
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
#endif
    return r;
}

#define NEG_INFINITY __int_as_float(0xff800000)

// Threads per block of the row kernels: a multiple of the warp.
#define BLOCK 256

// The sum of `v` over the block's threads, returned to every thread. The order of the
// additions depends only on the block size, never on timing, so results repeat bit for bit.
// `scratch` holds BLOCK / 32 floats; the block calls this together.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float s = 0.0f;
    for (int w = 0; w < BLOCK / 32; ++w) s += scratch[w];
    return s;
}

// The largest `v` over the block's threads, to every thread; as `block_sum`.
__device__ __forceinline__ float block_max(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float m = NEG_INFINITY;
    for (int w = 0; w < BLOCK / 32; ++w) m = fmaxf(m, scratch[w]);
    return m;
}

// Attention's, for both its modules (CUDA cores and tensor cores).
//
// The keys that queries `first .. first + count` (of `tq`) of row `b` reach, as spans
// `[lo, hi)` per query (`spans[2(b·tq + i)]`, `spans[2(b·tq + i) + 1]`): `[*lo, *hi)`, to every
// thread of the block (which calls this together).
__device__ __forceinline__ void keys_reached(const u32* spans, u32 b, u32 first, u32 count, u32 tq, u32 tk, u32* lo,
                                             u32* hi) {
    __shared__ u32 range[2];
    __syncthreads();
    if (threadIdx.x == 0) {
        u32 l = tk, h = 0;
        for (u32 i = first; i < min(first + count, tq); ++i) {
            l = min(l, spans[2 * ((size_t)b * tq + i)]);
            h = max(h, spans[2 * ((size_t)b * tq + i) + 1]);
        }
        range[0] = l;
        range[1] = max(l, h);
    }
    __syncthreads();
    *lo = range[0];
    *hi = range[1];
}

// Queries `q0 .. q0 + count` (of `tq`, count ≤ BLOCK) of row `b`, head row `bh`, into shared
// memory: their spans, log-sum-exps and deltas (zeros past `tq`). Returns, to every thread,
// whether one of them sees a key of `[first, last)`.
__device__ __forceinline__ bool stage_queries(const u32* spans, const float* lse, const float* delta, u32 b, size_t bh,
                                              u32 q0, u32 count, u32 tq, u32 first, u32 last, u32* lo_s, u32* hi_s,
                                              float* lse_s, float* delta_s) {
    __syncthreads();
    if (threadIdx.x < count) {
        const u32 i = q0 + threadIdx.x;
        lo_s[threadIdx.x] = i < tq ? spans[2 * ((size_t)b * tq + i)] : 0u;
        hi_s[threadIdx.x] = i < tq ? spans[2 * ((size_t)b * tq + i) + 1] : 0u;
        lse_s[threadIdx.x] = i < tq ? lse[bh * tq + i] : 0.0f;
        delta_s[threadIdx.x] = i < tq ? delta[bh * tq + i] : 0.0f;
    }
    __syncthreads();
    bool reaches = false;
    for (u32 r = 0; r < count; ++r) reaches |= lo_s[r] < last && hi_s[r] > first;
    return reaches;
}

// A query's score for a key from `s`, its scaled dot product: `s` itself, or where `cap` > 0
// `cap · tanh(s / cap)` (Gemma 2's `attn_logit_softcapping`); `*slope` is d score / d s.
// `inv_cap` is 1 / cap, worked out once by the caller: divisions inside attention's unrolled
// loops hold registers the tiles need.
__device__ __forceinline__ float capped(float s, float cap, float inv_cap, float* slope) {
    if (cap <= 0.0f) {
        *slope = 1.0f;
        return s;
    }
    // tanh(x) = 1 − 2 / (e^{2x} + 1), e^{2x} kept finite (tanh(±15) is ±1 in f32).
    const float e = expf(fminf(2.0f * s * inv_cap, 30.0f));
    const float t = 1.0f - 2.0f * __frcp_rn(e + 1.0f);
    *slope = 1.0f - t * t;
    return cap * t;
}

// `extern "C"` entry point `ENTRY_SUFFIX` whose body is `CALL` (in parentheses), with `T` the
// element type `TYPE`. Each entry point sits in a namespace of its own, where `T` is defined.
#define KERNEL_FOR(ENTRY, SUFFIX, TYPE, PARAMS, CALL) \
    namespace ENTRY##_##SUFFIX##_entry { \
    typedef TYPE T; \
    extern "C" __global__ void __launch_bounds__(BLOCK) ENTRY##_##SUFFIX PARAMS { CALL; } \
    }
// Entry points `NAME_f32`, `NAME_bf16`, `NAME_f16` for a kernel template `NAME<T>`:
// `KERNELS(NAME, (params, which may name T), (args))`.
#define KERNELS(NAME, PARAMS, ARGS) \
    KERNEL_FOR(NAME, f32, float, PARAMS, NAME<T> ARGS) \
    KERNEL_FOR(NAME, bf16, bf16, PARAMS, NAME<T> ARGS) \
    KERNEL_FOR(NAME, f16, f16, PARAMS, NAME<T> ARGS)
