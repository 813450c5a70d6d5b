// Just enough of CUDA to run the fused ops' kernels on the CPU, for checking their arithmetic
// and indexing where there is no GPU: each block's threads are CPU threads, run one block at a
// time; `__shared__` memory is a static (so per block, as blocks do not overlap);
// `__syncthreads` is a barrier of the block; a warp shuffle goes through memory between two
// barriers (every kernel here shuffles with the whole block). Compiled with g++ -std=c++20.
#pragma once

#include <algorithm>
#include <array>
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
inline std::vector<std::array<unsigned, 4>> mma_a;
inline std::vector<std::array<unsigned, 2>> mma_b;
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

// `d += a·b` for one m16n8k16 tile of the warp (`mma.sync.aligned.m16n8k16.row.col`, 16-bit
// A and B, f32 C and D), the fragments laid out as the PTX ISA gives them: with g = lane / 4
// and t = lane % 4, A's registers hold (row g, k 2t..2t+1), (g + 8, 2t..), (g, 2t + 8..),
// (g + 8, 2t + 8..); B's (k 2t..2t+1, column g), (k 2t + 8.., g); D's (g, 2t..2t+1) and
// (g + 8, 2t..2t+1). The lower half of a register is the lower index. `to_float` reads a half.
inline void mma_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2], float (*to_float)(unsigned short)) {
    const unsigned t = threadIdx.x, base = t & ~31u, lane = t % 32, g = lane / 4, tig = lane % 4;
    emulated::mma_a[t] = {a[0], a[1], a[2], a[3]};
    emulated::mma_b[t] = {b[0], b[1]};
    __syncthreads();
    auto half = [&](unsigned word, unsigned k) { return to_float((unsigned short)(k % 2 ? word >> 16 : word & 0xffffu)); };
    auto at_a = [&](unsigned row, unsigned k) {
        return half(emulated::mma_a[base + (row % 8) * 4 + (k % 8) / 2][(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k);
    };
    auto at_b = [&](unsigned k, unsigned col) {
        return half(emulated::mma_b[base + col * 4 + (k % 8) / 2][k >= 8 ? 1 : 0], k);
    };
    for (unsigned i = 0; i < 4; ++i) {
        const unsigned row = g + (i >= 2 ? 8 : 0), col = 2 * tig + (i & 1);
        float sum = 0.0f;
        for (unsigned k = 0; k < 16; ++k) sum += at_a(row, k) * at_b(k, col);
        d[i] += sum;
    }
    __syncthreads();
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
inline float __frcp_rn(float x) { return 1.0f / x; }
using std::max, std::min;

// Run `body` as a kernel launch: every block of `grid`, one after another, each with
// `block.x` threads.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& body) {
    gridDim = grid;
    blockDim = block;
    emulated::shuffle_slots.assign(block.x, 0.0f);
    emulated::mma_a.assign(block.x, {});
    emulated::mma_b.assign(block.x, {});
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
