// Masked, scaled softmax on CUDA: a block per row of `x` `[B, H, Tq, Tk]`, with the f32 bias row
// `[B, 1, Tq, Tk]` its heads share; backward `dx = scale · y ⊙ (dy − Σ y·dy)` per row.

template <typename T>
__device__ void masked_softmax_forward(const T* x, const float* bias, T* y, u32 heads, u32 tq, u32 tk, float scale) {
    __shared__ float scratch[BLOCK / 32];
    const size_t row = blockIdx.x;
    const size_t bias_row = (row / ((size_t)heads * tq)) * tq + row % tq;
    const T* xr = x + row * tk;
    const float* br = bias + bias_row * tk;
    T* yr = y + row * tk;
    float m = NEG_INFINITY;
    for (u32 i = threadIdx.x; i < tk; i += BLOCK) m = fmaxf(m, scale * to_f32(xr[i]) + br[i]);
    m = block_max(m, scratch);
    float sum = 0.0f;
    for (u32 i = threadIdx.x; i < tk; i += BLOCK) sum += expf(scale * to_f32(xr[i]) + br[i] - m);
    const float inv = 1.0f / block_sum(sum, scratch);
    for (u32 i = threadIdx.x; i < tk; i += BLOCK) yr[i] = from_f32<T>(expf(scale * to_f32(xr[i]) + br[i] - m) * inv);
}
KERNELS(masked_softmax_forward, (const T* x, const float* bias, T* y, u32 heads, u32 tq, u32 tk, float scale),
        (x, bias, y, heads, tq, tk, scale))

template <typename T>
__device__ void masked_softmax_backward(const T* y, const T* dy, T* dx, u32 tk, float scale) {
    __shared__ float scratch[BLOCK / 32];
    const size_t at = (size_t)blockIdx.x * tk;
    float dot = 0.0f;
    for (u32 i = threadIdx.x; i < tk; i += BLOCK) dot += to_f32(y[at + i]) * to_f32(dy[at + i]);
    dot = block_sum(dot, scratch);
    for (u32 i = threadIdx.x; i < tk; i += BLOCK)
        dx[at + i] = from_f32<T>(scale * to_f32(y[at + i]) * (to_f32(dy[at + i]) - dot));
}
KERNELS(masked_softmax_backward, (const T* y, const T* dy, T* dx, u32 tk, float scale), (y, dy, dx, tk, scale))
