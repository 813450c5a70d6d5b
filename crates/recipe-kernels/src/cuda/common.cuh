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
