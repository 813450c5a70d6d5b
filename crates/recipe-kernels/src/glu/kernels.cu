// The gated activation on CUDA: a thread per element, `y = g·σ(z(g))·u` with `z` the
// activation's (`act` 0: SiLU, `z = g`; 1: tanh GELU, `z = 2·√(2/π)·(g + 0.044715·g³)`);
// backward writes `dg` and `du` into one buffer `[dg..., du...]`, as the CPU kernel does.

__device__ __forceinline__ float glu_z(u32 act, float a) {
    return act == 0 ? a : 1.5957691216057308f * (a + 0.044715f * a * a * a);
}

template <typename T>
__device__ void glu_forward(const T* g, const T* u, T* y, u32 n, u32 act) {
    const size_t i = (size_t)blockIdx.x * BLOCK + threadIdx.x;
    if (i >= n) return;
    const float a = to_f32(g[i]);
    y[i] = from_f32<T>(a / (1.0f + expf(-glu_z(act, a))) * to_f32(u[i]));
}
KERNELS(glu_forward, (const T* g, const T* u, T* y, u32 n, u32 act), (g, u, y, n, act))

template <typename T>
__device__ void glu_backward(const T* g, const T* u, const T* dy, T* out, u32 n, u32 act) {
    const size_t i = (size_t)blockIdx.x * BLOCK + threadIdx.x;
    if (i >= n) return;
    const float a = to_f32(g[i]), b = to_f32(u[i]), d = to_f32(dy[i]);
    const float e = expf(-glu_z(act, a)), s = 1.0f / (1.0f + e);
    const float dz = act == 0 ? 1.0f : 1.5957691216057308f * (1.0f + 3.0f * 0.044715f * a * a);
    // GELU: `1 − s` as `e·s` where `s` nears 1 (and `g·z′` is large), as the CPU kernel.
    const float complement = act == 1 && s > 0.5f ? e * s : 1.0f - s;
    out[i] = from_f32<T>(d * b * s * (1.0f + a * complement * dz));
    out[n + i] = from_f32<T>(d * a * s);
}
KERNELS(glu_backward, (const T* g, const T* u, const T* dy, T* out, u32 n, u32 act), (g, u, dy, out, n, act))
