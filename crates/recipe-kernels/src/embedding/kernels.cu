// The embedding table's gradient on CUDA: a block per (table row, 256 columns), a thread per
// column, summing the output-gradient rows at the token's positions in order (`order[offsets[v]
// .. offsets[v + 1]]`, grouped on the host) in f32. No atomics: every run sums alike.

template <typename T>
__device__ void embedding_backward(const T* dy, const u32* offsets, const u32* order, T* dw, u32 cols) {
    const size_t v = blockIdx.x;
    const u32 c = blockIdx.y * BLOCK + threadIdx.x;
    if (c >= cols) return;
    float acc = 0.0f;
#pragma unroll 4
    for (u32 k = offsets[v]; k < offsets[v + 1]; ++k) acc += to_f32(dy[(size_t)order[k] * cols + c]);
    dw[v * cols + c] = from_f32<T>(acc);
}
KERNELS(embedding_backward, (const T* dy, const u32* offsets, const u32* order, T* dw, u32 cols),
        (dy, offsets, order, dw, cols))
