// AdamW on CUDA, in place, a thread per element: the f32 moments `[m..., v...]` from a gradient
// of type T, then a parameter of type T from the moments. The same f32 arithmetic as the CPU.

template <typename T>
__device__ void adamw_moments(float* mv, const T* grad, u32 n, float beta1, float beta2, float scale) {
    const size_t i = (size_t)blockIdx.x * BLOCK + threadIdx.x;
    if (i >= n) return;
    const float g = to_f32(grad[i]) * scale;
    mv[i] = beta1 * mv[i] + (1.0f - beta1) * g;
    mv[n + i] = beta2 * mv[n + i] + (1.0f - beta2) * g * g;
}
KERNELS(adamw_moments, (float* mv, const T* grad, u32 n, float beta1, float beta2, float scale),
        (mv, grad, n, beta1, beta2, scale))

template <typename T>
__device__ void adamw_apply(T* p, const float* mv, u32 n, float lr_bc1, float inv_sqrt_bc2, float decay, float eps) {
    const size_t i = (size_t)blockIdx.x * BLOCK + threadIdx.x;
    if (i >= n) return;
    const float w = to_f32(p[i]);
    p[i] = from_f32<T>(w - (decay * w + lr_bc1 * mv[i] / (sqrtf(mv[n + i]) * inv_sqrt_bc2 + eps)));
}
KERNELS(adamw_apply, (T* p, const float* mv, u32 n, float lr_bc1, float inv_sqrt_bc2, float decay, float eps),
        (p, mv, n, lr_bc1, inv_sqrt_bc2, decay, eps))

// Σ x² over chunks of `per_block` elements, a block each, in f32: partial `b` is the sum of
// elements `b·per_block ..`, in an order that depends only on the sizes. The host adds the
// partials in f64, in order.
template <typename T>
__device__ void squared_norm_partials(const T* x, u32 n, u32 per_block, float* partials) {
    __shared__ float scratch[BLOCK / 32];
    const size_t start = (size_t)blockIdx.x * per_block, end = min(start + per_block, (size_t)n);
    float sum = 0.0f;
    for (size_t i = start + threadIdx.x; i < end; i += BLOCK) {
        const float v = to_f32(x[i]);
        sum += v * v;
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}
KERNELS(squared_norm_partials, (const T* x, u32 n, u32 per_block, float* partials), (x, n, per_block, partials))
