// Cross-entropy over the vocabulary on CUDA: a block per row of `logits` `[N, V]`. Forward
// writes the f32 loss `mask · (logsumexp(row) − row[target])`; backward writes
// `(softmax(row) − onehot(target)) · weight` in the logits' dtype. A target outside the
// vocabulary gives a NaN loss (and NaN gradients) where its row counts, never a read out of
// bounds.

__device__ __forceinline__ float nan_f32() { return __int_as_float(0x7fc00000); }

// The row's max and log of its sum of exponentials, to every thread.
template <typename T>
__device__ float log_sum_exp(const T* row, u32 v, float* scratch, float* max_out) {
    float m = NEG_INFINITY;
    for (u32 i = threadIdx.x; i < v; i += BLOCK) m = fmaxf(m, to_f32(row[i]));
    m = block_max(m, scratch);
    float sum = 0.0f;
    for (u32 i = threadIdx.x; i < v; i += BLOCK) sum += expf(to_f32(row[i]) - m);
    *max_out = m;
    return logf(block_sum(sum, scratch));
}

template <typename T>
__device__ void cross_entropy_forward(const T* logits, const u32* targets, const float* mask, float* nll, u32 v) {
    __shared__ float scratch[BLOCK / 32];
    const size_t r = blockIdx.x;
    const T* row = logits + r * v;
    float m;
    const float log_z = log_sum_exp(row, v, scratch, &m) + m;
    if (threadIdx.x == 0) {
        const u32 target = targets[r];
        if (mask[r] == 0.0f) nll[r] = 0.0f;
        else nll[r] = target < v ? mask[r] * (log_z - to_f32(row[target])) : nan_f32();
    }
}
KERNELS(cross_entropy_forward, (const T* logits, const u32* targets, const float* mask, float* nll, u32 v),
        (logits, targets, mask, nll, v))

template <typename T>
__device__ void cross_entropy_backward(const T* logits, const u32* targets, const float* weight, T* d, u32 v) {
    __shared__ float scratch[BLOCK / 32];
    const size_t r = blockIdx.x;
    const T* row = logits + r * v;
    T* out = d + r * v;
    const float w = weight[r];
    if (w == 0.0f) {
        for (u32 i = threadIdx.x; i < v; i += BLOCK) out[i] = from_f32<T>(0.0f);
        return;
    }
    float m;
    const float log_z = log_sum_exp(row, v, scratch, &m);
    const u32 target = targets[r];
    const float bad = target < v ? 0.0f : nan_f32();
    for (u32 i = threadIdx.x; i < v; i += BLOCK)
        out[i] = from_f32<T>(w * (expf(to_f32(row[i]) - m - log_z) - (i == target ? 1.0f : 0.0f)) + bad);
}
KERNELS(cross_entropy_backward, (const T* logits, const u32* targets, const float* weight, T* d, u32 v),
        (logits, targets, weight, d, v))
