// SwiGLU on CUDA: a thread per element, `y = g·σ(g)·u`; backward writes `dg` and `du` into one
// buffer `[dg..., du...]`, as the CPU kernel does.

template <typename T>
__device__ void swiglu_forward(const T* g, const T* u, T* y, u32 n) {
    const size_t i = (size_t)blockIdx.x * BLOCK + threadIdx.x;
    if (i >= n) return;
    const float a = to_f32(g[i]);
    y[i] = from_f32<T>(a / (1.0f + expf(-a)) * to_f32(u[i]));
}
KERNELS(swiglu_forward, (const T* g, const T* u, T* y, u32 n), (g, u, y, n))

template <typename T>
__device__ void swiglu_backward(const T* g, const T* u, const T* dy, T* out, u32 n) {
    const size_t i = (size_t)blockIdx.x * BLOCK + threadIdx.x;
    if (i >= n) return;
    const float a = to_f32(g[i]), b = to_f32(u[i]), d = to_f32(dy[i]);
    const float s = 1.0f / (1.0f + expf(-a));
    out[i] = from_f32<T>(d * b * s * (1.0f + a * (1.0f - s)));
    out[n + i] = from_f32<T>(d * a * s);
}
KERNELS(swiglu_backward, (const T* g, const T* u, const T* dy, T* out, u32 n), (g, u, dy, out, n))
