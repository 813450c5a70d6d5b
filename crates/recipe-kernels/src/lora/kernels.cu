// LoRA's dropout mask on CUDA, element for element the CPU's (`Dropout::mask_of` in `mod.rs`),
// so a GPU run drops what a CPU run drops and nothing crosses from the host. Element `i` is 0
// when the top 53 bits of splitmix64(seed ^ splitmix64(i)) fall below `threshold` = ⌈p·2⁵³⌉
// (the CPU's `u < p` in integers), else `keep` = 1 / (1 − p), rounded to T on the host.

typedef unsigned long long u64;

__device__ __forceinline__ u64 splitmix64(u64 z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

template <typename T>
__device__ void dropout_mask(T* mask, u32 n, u64 seed, u64 threshold, float keep) {
    const size_t i = (size_t)blockIdx.x * BLOCK + threadIdx.x;
    if (i >= n) return;
    mask[i] = from_f32<T>((splitmix64(seed ^ splitmix64(i)) >> 11) < threshold ? 0.0f : keep);
}
KERNELS(dropout_mask, (T * mask, u32 n, u64 seed, u64 threshold, float keep), (mask, n, seed, threshold, keep))
