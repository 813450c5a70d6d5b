// Just enough of CUDA to run the fused ops' kernels on the CPU, for checking their arithmetic
// and indexing where there is no GPU: each block's threads are CPU threads, run one block at a
// time; `__shared__` memory is a static (so per block, as blocks do not overlap);
// `__syncthreads` is a barrier of the block; a warp shuffle goes through memory between two
// barriers (every kernel here shuffles with the whole block). Compiled with g++ -std=c++20.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define RECIPE_EMULATED 1
#define __device__
#define __global__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(n)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace emulated {
inline std::unique_ptr<std::barrier<>> block_barrier;
inline std::vector<float> shuffle_slots;
}  // namespace emulated

inline void __syncthreads() { emulated::block_barrier->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int offset) {
    const unsigned t = threadIdx.x;
    emulated::shuffle_slots[t] = v;
    __syncthreads();
    const float other = emulated::shuffle_slots[(t & ~31u) | ((t % 32) ^ offset)];
    __syncthreads();
    return other;
}

inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
#include <math.h>  // expf, fmaxf, logf, sqrtf as CUDA names them
using std::max, std::min;

// Run `body` as a kernel launch: every block of `grid`, one after another, each with
// `block.x` threads.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& body) {
    gridDim = grid;
    blockDim = block;
    emulated::shuffle_slots.assign(block.x, 0.0f);
    for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            emulated::block_barrier = std::make_unique<std::barrier<>>(block.x);
            std::vector<std::thread> threads;
            for (unsigned t = 0; t < block.x; ++t) {
                threads.emplace_back([&, t] {
                    threadIdx = dim3{t, 0, 0};
                    blockIdx = dim3{bx, by, 0};
                    body();
                });
            }
            for (auto& t : threads) t.join();
        }
    }
}
