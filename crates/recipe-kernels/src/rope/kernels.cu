// Rotary embedding on CUDA: a thread per pair (x[j], x[j + half]) of a row of `x` `[B, H, T, hd]`,
// read through its strides (attention's heads are a transposed view); `cos`, `sin`
// `[B, 1, T, hd/2]` are f32; `y` is contiguous. `sign` −1 rotates back (backward).

template <typename T>
__device__ void rope_rotate(const T* x, unsigned long long sb, unsigned long long sh, unsigned long long st,
                            const float* cos, const float* sin, T* y, u32 heads, u32 t, u32 half, u32 pairs,
                            float sign) {
    const size_t i = (size_t)blockIdx.x * BLOCK + threadIdx.x;
    if (i >= pairs) return;
    const size_t row = i / half;
    const u32 j = i % half, p = row % t;
    const size_t h = (row / t) % heads, b = row / ((size_t)t * heads);
    const size_t angle = (b * t + p) * half + j;
    const float c = cos[angle], s = sign * sin[angle];
    const T* xr = x + b * sb + h * sh + p * st;
    const float x1 = to_f32(xr[j]), x2 = to_f32(xr[half + j]);
    y[row * 2 * half + j] = from_f32<T>(x1 * c - x2 * s);
    y[row * 2 * half + half + j] = from_f32<T>(x2 * c + x1 * s);
}
KERNELS(rope_rotate,
        (const T* x, unsigned long long sb, unsigned long long sh, unsigned long long st, const float* cos,
         const float* sin, T* y, u32 heads, u32 t, u32 half, u32 pairs, float sign),
        (x, sb, sh, st, cos, sin, y, heads, t, half, pairs, sign))
