// Experiment for issue #18 (not used by llama.cpp): how fast can the decode selection's first step score every cell
// of a row from the q4_0 copy of K itself, inside the blocks that then select, instead of a separate product
// (mul_mat_vec_q, 13.4 us per layer at 32768 cells with L2-warm data on an H100) whose scores the selection reads back?
//
// One row = one KV head's cells; a row's cells are split over `blocks` blocks (as the selection's cluster splits them),
// each block scores its chunk for the H query heads of the KV head into shared memory (dp4a on the 4-bit keys and the
// query quantized to 8 bits per 32 values, as mul_mat_vec_q does) and keeps each head's maximum (so the compiler
// keeps the work; the real kernel would go on to select from shared memory). Checked against a CPU reference of the
// same integer dot products; timed with the K copy L2-warm (one layer) and cold (rotating over layers that exceed L2).
//
//   nvcc -O2 -std=c++17 -arch=sm_90 scripts/cuda/sparsek_score_harness.cu -o sparsek_score_harness
//
// (scripts/gpu_bench.py score-harness does that on the lent GPU.) Exit code 1 if a check fails.

#include <cuda_fp16.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#define CHECK(...) do { cudaError_t e_ = (__VA_ARGS__); if (e_ != cudaSuccess) { \
    fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #__VA_ARGS__, cudaGetErrorString(e_)); exit(2); } } while (0)

constexpr int D  = 128;    // head size
constexpr int QB = D/32;   // q4_0 blocks per head
constexpr int BQ = 18;     // bytes per q4_0 block: half d, 16 bytes of nibbles (element i low, i+16 high)
constexpr int NT = 512;    // threads per block

// the query of one head, quantized per 32 values: int8 values as 8 int32 words per block, scale d and d*sum(values)
struct q8_head {
    int   w[QB][8];
    float d[QB];
    float s[QB];
};

static __device__ __forceinline__ uint32_t load_u32_2b(const uint8_t * p) {
    const uint16_t * h = (const uint16_t *) p;
    return uint32_t(h[0]) | (uint32_t(h[1]) << 16);
}

// grid (blocks, rows): a group of 4 threads scores one cell (a thread per q4_0 block of the head dimension) for the
// H heads of the row's KV head, CB cells a thread at a time; scores into shared memory [H][chunk]; per-head maxima
// to max_out[row][block][H]
template <int H, int CB>
__launch_bounds__(NT, 1)
static __global__ void score_q4_0_chunk(const uint8_t * __restrict__ kc, const q8_head * __restrict__ q,
        float * __restrict__ max_out, float * __restrict__ scores_out, const int64_t n_kv, const int64_t chunk,
        const int64_t row_bytes, const int64_t head_stride) {
    extern __shared__ float sc[]; // [H][chunk]
    const int row = blockIdx.y;
    const int tid = threadIdx.x;
    const int b   = tid % QB;     // this thread's q4_0 block of the head dimension
    const int64_t j0 = blockIdx.x*chunk;
    const int64_t n  = max(int64_t(0), min(n_kv, j0 + chunk) - j0);

    // this thread's query words for its block, for the row's H heads
    int   qw[H][8];
    float qd[H], qs[H];
#pragma unroll
    for (int h = 0; h < H; ++h) {
        const q8_head & qh = q[row*H + h];
#pragma unroll
        for (int w = 0; w < 8; ++w) {
            qw[h][w] = qh.w[b][w];
        }
        qd[h] = qh.d[b];
        qs[h] = qh.s[b];
    }

    const uint8_t * base = kc + row*head_stride + b*BQ;
    constexpr int cells_per_pass = NT/QB;
    // CB cells a thread has in flight: every load of a pass is issued before the first product needs one (CB = 1
    // measured latency-bound on an H100: ~1400 cycles a cell per thread, 24 us for 8 blocks of 4096 cells)
    for (int64_t c0 = 0; c0 < n; c0 += cells_per_pass*CB) {
        float    dk[CB];
        uint32_t v[CB][4];
#pragma unroll
        for (int u = 0; u < CB; ++u) {
            const int64_t c = c0 + u*cells_per_pass + tid/QB;
            if (c < n) {
                const uint8_t * blk = base + (j0 + c)*row_bytes;
                dk[u] = __half2float(*(const half *) blk);
#pragma unroll
                for (int w = 0; w < 4; ++w) {
                    v[u][w] = load_u32_2b(blk + 2 + 4*w);
                }
            } else {
                dk[u] = 0.0f;
#pragma unroll
                for (int w = 0; w < 4; ++w) {
                    v[u][w] = 0;
                }
            }
        }
#pragma unroll
        for (int u = 0; u < CB; ++u) {
            const int64_t c = c0 + u*cells_per_pass + tid/QB;
            float part[H];
#pragma unroll
            for (int h = 0; h < H; ++h) {
                int sumi = 0;
#pragma unroll
                for (int w = 0; w < 4; ++w) {
                    sumi = __dp4a(int(v[u][w] & 0x0F0F0F0F), qw[h][w], sumi);
                    sumi = __dp4a(int((v[u][w] >> 4) & 0x0F0F0F0F), qw[h][4 + w], sumi);
                }
                part[h] = dk[u]*(qd[h]*float(sumi) - 8.0f*qs[h]);
            }
            // the 4 threads of a cell are adjacent lanes: sum their blocks
#pragma unroll
            for (int h = 0; h < H; ++h) {
                part[h] += __shfl_xor_sync(0xFFFFFFFF, part[h], 1);
                part[h] += __shfl_xor_sync(0xFFFFFFFF, part[h], 2);
            }
            if (c < n && b < H) {
                // thread b of the group stores head b (H <= QB)
                float x = part[0];
#pragma unroll
                for (int h = 1; h < H; ++h) {
                    x = b == h ? part[h] : x;
                }
                sc[b*chunk + c] = x;
            }
        }
    }
    __syncthreads();

    // use the scores: each head's maximum (and optionally the scores themselves, to compare with a product that
    // writes them)
    const int warp = tid/32, lane = tid%32;
    for (int h = warp; h < H; h += NT/32) {
        float m = -INFINITY;
        for (int64_t c = lane; c < n; c += 32) {
            m = fmaxf(m, sc[h*chunk + c]);
            if (scores_out) {
                scores_out[(int64_t(row)*H + h)*n_kv + j0 + c] = sc[h*chunk + c];
            }
        }
        for (int off = 16; off > 0; off >>= 1) {
            m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFF, m, off));
        }
        if (lane == 0) {
            max_out[(int64_t(row)*gridDim.x + blockIdx.x)*H + h] = m;
        }
    }
}


// One thread per cell: the cell's 72 bytes of the KV head (4 q4_0 blocks, 8-byte aligned since 72 = 8*9) as 9 8-byte
// loads, CPT cells a thread in flight; the query words of the H heads in shared memory (every lane reads the same
// word: a broadcast). Same output as score_q4_0_chunk.
template <int H, int CPT>
__launch_bounds__(NT, 1)
static __global__ void score_q4_0_cellwise(const uint8_t * __restrict__ kc, const q8_head * __restrict__ q,
        float * __restrict__ max_out, float * __restrict__ scores_out, const int64_t n_kv, const int64_t chunk,
        const int64_t row_bytes, const int64_t head_stride) {
    extern __shared__ float sc[]; // [H][chunk]
    __shared__ q8_head q_s[H];
    const int row = blockIdx.y;
    const int tid = threadIdx.x;
    const int64_t j0 = blockIdx.x*chunk;
    const int64_t n  = max(int64_t(0), min(n_kv, j0 + chunk) - j0);
    for (int i = tid; i < int(H*sizeof(q8_head)/4); i += NT) {
        ((int *) q_s)[i] = ((const int *) (q + row*H))[i];
    }
    __syncthreads();

    const uint8_t * base = kc + row*head_stride;
    for (int64_t c0 = 0; c0 < n; c0 += NT*CPT) {
        uint32_t u[CPT][18];
#pragma unroll
        for (int k = 0; k < CPT; ++k) {
            const int64_t c = c0 + k*NT + tid;
            const uint2 * p = (const uint2 *) (base + (j0 + min(c, n - 1))*row_bytes);
#pragma unroll
            for (int w = 0; w < 9; ++w) {
                const uint2 x = __ldg(p + w);
                u[k][2*w]     = x.x;
                u[k][2*w + 1] = x.y;
            }
        }
#pragma unroll
        for (int k = 0; k < CPT; ++k) {
            const int64_t c = c0 + k*NT + tid;
            float part[H];
#pragma unroll
            for (int h = 0; h < H; ++h) {
                part[h] = 0.0f;
            }
#pragma unroll
            for (int b = 0; b < QB; ++b) {
                // block b starts at byte 18b: its scale is the low (b even) or high (b odd) half of word 18b/4,
                // its 16 bytes of nibbles start at byte 18b + 2
                const int o = 18*b;
                const uint32_t dw = u[k][o/4];
                const float dk = __half2float(__ushort_as_half((unsigned short) ((b % 2 == 0) ? (dw & 0xFFFF) : (dw >> 16))));
                uint32_t v[4];
#pragma unroll
                for (int w = 0; w < 4; ++w) {
                    const int ob = o + 2 + 4*w;
                    v[w] = (ob % 4 == 0) ? u[k][ob/4] : __funnelshift_r(u[k][ob/4], u[k][ob/4 + 1], 16);
                }
#pragma unroll
                for (int h = 0; h < H; ++h) {
                    const int4 qa = *(const int4 *) &q_s[h].w[b][0];
                    const int4 qb = *(const int4 *) &q_s[h].w[b][4];
                    int sumi = 0;
                    sumi = __dp4a(int(v[0] & 0x0F0F0F0F), qa.x, sumi);
                    sumi = __dp4a(int(v[1] & 0x0F0F0F0F), qa.y, sumi);
                    sumi = __dp4a(int(v[2] & 0x0F0F0F0F), qa.z, sumi);
                    sumi = __dp4a(int(v[3] & 0x0F0F0F0F), qa.w, sumi);
                    sumi = __dp4a(int((v[0] >> 4) & 0x0F0F0F0F), qb.x, sumi);
                    sumi = __dp4a(int((v[1] >> 4) & 0x0F0F0F0F), qb.y, sumi);
                    sumi = __dp4a(int((v[2] >> 4) & 0x0F0F0F0F), qb.z, sumi);
                    sumi = __dp4a(int((v[3] >> 4) & 0x0F0F0F0F), qb.w, sumi);
                    part[h] += dk*(q_s[h].d[b]*float(sumi) - 8.0f*q_s[h].s[b]);
                }
            }
            if (c < n) {
#pragma unroll
                for (int h = 0; h < H; ++h) {
                    sc[h*chunk + c] = part[h];
                }
            }
        }
    }
    __syncthreads();

    const int warp = tid/32, lane = tid%32;
    for (int h = warp; h < H; h += NT/32) {
        float m = -INFINITY;
        for (int64_t c = lane; c < n; c += 32) {
            m = fmaxf(m, sc[h*chunk + c]);
            if (scores_out) {
                scores_out[(int64_t(row)*H + h)*n_kv + j0 + c] = sc[h*chunk + c];
            }
        }
        for (int off = 16; off > 0; off >>= 1) {
            m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFF, m, off));
        }
        if (lane == 0) {
            max_out[(int64_t(row)*gridDim.x + blockIdx.x)*H + h] = m;
        }
    }
}


// score_q4_0_cellwise measured bound by the L1's handling of scattered loads (a warp's 8-byte load touches 32 cells
// 576 bytes apart: 32 lines a load), not by memory. Here a warp loads G groups of 32 cells cooperatively, a load
// instruction covering 32 consecutive 8-byte words of the groups' 72-byte segments (4-5 cells, a few lines), stages them
// in shared memory, then every lane scores its own cell from there.
template <int H, int G>
__launch_bounds__(NT, 1)
static __global__ void score_q4_0_coalesced(const uint8_t * __restrict__ kc, const q8_head * __restrict__ q,
        float * __restrict__ max_out, float * __restrict__ scores_out, const int64_t n_kv, const int64_t chunk,
        const int64_t row_bytes, const int64_t head_stride) {
    extern __shared__ float sc[]; // [H][chunk], then the staging tiles [NT/32][G][32*9] (8-byte words)
    __shared__ q8_head q_s[H];
    uint2 (*tile)[G][32*9] = (uint2 (*)[G][32*9]) (sc + ((H*chunk + 1)/2)*2);
    const int row  = blockIdx.y;
    const int tid  = threadIdx.x;
    const int warp = tid/32, lane = tid%32;
    const int64_t j0 = blockIdx.x*chunk;
    const int64_t n  = max(int64_t(0), min(n_kv, j0 + chunk) - j0);
    for (int i = tid; i < int(H*sizeof(q8_head)/4); i += NT) {
        ((int *) q_s)[i] = ((const int *) (q + row*H))[i];
    }
    __syncthreads();

    const uint8_t * base = kc + row*head_stride + j0*row_bytes;
    for (int64_t c0 = int64_t(warp)*32*G; c0 < n; c0 += int64_t(NT/32)*32*G) {
#pragma unroll
        for (int g = 0; g < G; ++g) {
            uint2 r[9];
#pragma unroll
            for (int i = 0; i < 9; ++i) {
                const int f = i*32 + lane;
                const int64_t c = min(c0 + g*32 + f/9, n - 1);
                r[i] = __ldg((const uint2 *) (base + c*row_bytes) + f % 9);
            }
#pragma unroll
            for (int i = 0; i < 9; ++i) {
                tile[warp][g][i*32 + lane] = r[i];
            }
        }
        __syncwarp();
#pragma unroll
        for (int g = 0; g < G; ++g) {
            const int64_t c = c0 + g*32 + lane;
            uint32_t u[18];
#pragma unroll
            for (int w = 0; w < 9; ++w) {
                const uint2 x = tile[warp][g][lane*9 + w];
                u[2*w]     = x.x;
                u[2*w + 1] = x.y;
            }
            float part[H];
#pragma unroll
            for (int h = 0; h < H; ++h) {
                part[h] = 0.0f;
            }
#pragma unroll
            for (int b = 0; b < QB; ++b) {
                const int o = 18*b;
                const uint32_t dw = u[o/4];
                const float dk = __half2float(__ushort_as_half((unsigned short) ((b % 2 == 0) ? (dw & 0xFFFF) : (dw >> 16))));
                uint32_t v[4];
#pragma unroll
                for (int w = 0; w < 4; ++w) {
                    const int ob = o + 2 + 4*w;
                    v[w] = (ob % 4 == 0) ? u[ob/4] : __funnelshift_r(u[ob/4], u[ob/4 + 1], 16);
                }
#pragma unroll
                for (int h = 0; h < H; ++h) {
                    const int4 qa = *(const int4 *) &q_s[h].w[b][0];
                    const int4 qb = *(const int4 *) &q_s[h].w[b][4];
                    int sumi = 0;
                    sumi = __dp4a(int(v[0] & 0x0F0F0F0F), qa.x, sumi);
                    sumi = __dp4a(int(v[1] & 0x0F0F0F0F), qa.y, sumi);
                    sumi = __dp4a(int(v[2] & 0x0F0F0F0F), qa.z, sumi);
                    sumi = __dp4a(int(v[3] & 0x0F0F0F0F), qa.w, sumi);
                    sumi = __dp4a(int((v[0] >> 4) & 0x0F0F0F0F), qb.x, sumi);
                    sumi = __dp4a(int((v[1] >> 4) & 0x0F0F0F0F), qb.y, sumi);
                    sumi = __dp4a(int((v[2] >> 4) & 0x0F0F0F0F), qb.z, sumi);
                    sumi = __dp4a(int((v[3] >> 4) & 0x0F0F0F0F), qb.w, sumi);
                    part[h] += dk*(q_s[h].d[b]*float(sumi) - 8.0f*q_s[h].s[b]);
                }
            }
            if (c < n) {
#pragma unroll
                for (int h = 0; h < H; ++h) {
                    sc[h*chunk + c] = part[h];
                }
            }
        }
        __syncwarp();
    }
    __syncthreads();

    for (int h = warp; h < H; h += NT/32) {
        float m = -INFINITY;
        for (int64_t c = lane; c < n; c += 32) {
            m = fmaxf(m, sc[h*chunk + c]);
            if (scores_out) {
                scores_out[(int64_t(row)*H + h)*n_kv + j0 + c] = sc[h*chunk + c];
            }
        }
        for (int off = 16; off > 0; off >>= 1) {
            m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFF, m, off));
        }
        if (lane == 0) {
            max_out[(int64_t(row)*gridDim.x + blockIdx.x)*H + h] = m;
        }
    }
}


static __device__ __forceinline__ void cp_async8(void * dst_smem, const void * src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" :: "r"((unsigned) __cvta_generic_to_shared(dst_smem)), "l"(src));
}
static __device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N));
}

// score_q4_0_coalesced with the staging as a ring of S tiles a warp filled by cp.async (no registers held by loads in
// flight): S - 1 groups of 32 cells are requested ahead of the one being scored.
template <int H, int S>
__launch_bounds__(NT, 1)
static __global__ void score_q4_0_pipelined(const uint8_t * __restrict__ kc, const q8_head * __restrict__ q,
        float * __restrict__ max_out, float * __restrict__ scores_out, const int64_t n_kv, const int64_t chunk,
        const int64_t row_bytes, const int64_t head_stride) {
    extern __shared__ float sc[]; // [H][chunk], then the rings [NT/32][S][32*9] (8-byte words)
    __shared__ q8_head q_s[H];
    uint2 (*tile)[S][32*9] = (uint2 (*)[S][32*9]) (sc + ((H*chunk + 1)/2)*2);
    const int row  = blockIdx.y;
    const int tid  = threadIdx.x;
    const int warp = tid/32, lane = tid%32;
    const int64_t j0 = blockIdx.x*chunk;
    const int64_t n  = max(int64_t(0), min(n_kv, j0 + chunk) - j0);
    for (int i = tid; i < int(H*sizeof(q8_head)/4); i += NT) {
        ((int *) q_s)[i] = ((const int *) (q + row*H))[i];
    }
    __syncthreads();

    const uint8_t * base = kc + row*head_stride + j0*row_bytes;
    const int64_t n_groups = (n + 31)/32; // groups of 32 cells; warp w takes groups w, w + NT/32, ...
    auto issue = [&](const int64_t t) {
        const int64_t grp = t*(NT/32) + warp;
        if (grp < n_groups) {
#pragma unroll
            for (int i = 0; i < 9; ++i) {
                const int f = i*32 + lane;
                const int64_t c = min(grp*32 + f/9, n - 1);
                cp_async8(&tile[warp][t % S][i*32 + lane], (const uint2 *) (base + c*row_bytes) + f % 9);
            }
        }
        cp_async_commit();
    };
#pragma unroll
    for (int t = 0; t < S - 1; ++t) {
        issue(t);
    }
    for (int64_t t = 0; t*(NT/32) + warp < n_groups; ++t) {
        issue(t + S - 1);
        cp_async_wait<S - 1>();
        __syncwarp();
        const int64_t c = (t*(NT/32) + warp)*32 + lane;
        uint32_t u[18];
#pragma unroll
        for (int w = 0; w < 9; ++w) {
            const uint2 x = tile[warp][t % S][lane*9 + w];
            u[2*w]     = x.x;
            u[2*w + 1] = x.y;
        }
        __syncwarp(); // the slot is refilled by the next issue
        float part[H];
#pragma unroll
        for (int h = 0; h < H; ++h) {
            part[h] = 0.0f;
        }
#pragma unroll
        for (int b = 0; b < QB; ++b) {
            const int o = 18*b;
            const uint32_t dw = u[o/4];
            const float dk = __half2float(__ushort_as_half((unsigned short) ((b % 2 == 0) ? (dw & 0xFFFF) : (dw >> 16))));
            uint32_t v[4];
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                const int ob = o + 2 + 4*w;
                v[w] = (ob % 4 == 0) ? u[ob/4] : __funnelshift_r(u[ob/4], u[ob/4 + 1], 16);
            }
#pragma unroll
            for (int h = 0; h < H; ++h) {
                const int4 qa = *(const int4 *) &q_s[h].w[b][0];
                const int4 qb = *(const int4 *) &q_s[h].w[b][4];
                int sumi = 0;
                sumi = __dp4a(int(v[0] & 0x0F0F0F0F), qa.x, sumi);
                sumi = __dp4a(int(v[1] & 0x0F0F0F0F), qa.y, sumi);
                sumi = __dp4a(int(v[2] & 0x0F0F0F0F), qa.z, sumi);
                sumi = __dp4a(int(v[3] & 0x0F0F0F0F), qa.w, sumi);
                sumi = __dp4a(int((v[0] >> 4) & 0x0F0F0F0F), qb.x, sumi);
                sumi = __dp4a(int((v[1] >> 4) & 0x0F0F0F0F), qb.y, sumi);
                sumi = __dp4a(int((v[2] >> 4) & 0x0F0F0F0F), qb.z, sumi);
                sumi = __dp4a(int((v[3] >> 4) & 0x0F0F0F0F), qb.w, sumi);
                part[h] += dk*(q_s[h].d[b]*float(sumi) - 8.0f*q_s[h].s[b]);
            }
        }
        if (c < n) {
#pragma unroll
            for (int h = 0; h < H; ++h) {
                sc[h*chunk + c] = part[h];
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();

    for (int h = warp; h < H; h += NT/32) {
        float m = -INFINITY;
        for (int64_t c = lane; c < n; c += 32) {
            m = fmaxf(m, sc[h*chunk + c]);
            if (scores_out) {
                scores_out[(int64_t(row)*H + h)*n_kv + j0 + c] = sc[h*chunk + c];
            }
        }
        for (int off = 16; off > 0; off >>= 1) {
            m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFF, m, off));
        }
        if (lane == 0) {
            max_out[(int64_t(row)*gridDim.x + blockIdx.x)*H + h] = m;
        }
    }
}

static float f16_to_f32(uint16_t h) {
    return __half2float(*(const half *) &h);
}

int main() {
    constexpr int H = 4;
    const int n_head_kv = 8;
    // layout 0 (today's copy, like K): a cell's row holds every KV head's blocks (576 bytes, a head's 72 at 72h);
    // layout 1 (head-major): a KV head's cells are contiguous (72 bytes apart), heads n_kv*72 bytes apart
    int64_t row_bytes = int64_t(n_head_kv)*QB*BQ;
    int64_t head_stride = QB*BQ;
    int dev = 0;
    CHECK(cudaSetDevice(dev));
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, dev));
    cudaFuncAttributes fa;
    CHECK(cudaFuncGetAttributes(&fa, (const void *) score_q4_0_chunk<H, 8>));
    printf("device: %s, %d SMs, L2 %d MB; kernel (8 cells in flight): %d registers\n", prop.name, prop.multiProcessorCount,
           prop.l2CacheSize >> 20, fa.numRegs);
    CHECK(cudaFuncSetAttribute(score_q4_0_chunk<H, 1>, cudaFuncAttributeMaxDynamicSharedMemorySize, 200*1024));
    CHECK(cudaFuncSetAttribute(score_q4_0_chunk<H, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize, 200*1024));
    CHECK(cudaFuncSetAttribute(score_q4_0_cellwise<H, 1>, cudaFuncAttributeMaxDynamicSharedMemorySize, 200*1024));
    CHECK(cudaFuncSetAttribute(score_q4_0_cellwise<H, 2>, cudaFuncAttributeMaxDynamicSharedMemorySize, 200*1024));
    CHECK(cudaFuncSetAttribute(score_q4_0_cellwise<H, 4>, cudaFuncAttributeMaxDynamicSharedMemorySize, 200*1024));
    CHECK(cudaFuncSetAttribute(score_q4_0_coalesced<H, 1>, cudaFuncAttributeMaxDynamicSharedMemorySize, 220*1024));
    CHECK(cudaFuncSetAttribute(score_q4_0_coalesced<H, 2>, cudaFuncAttributeMaxDynamicSharedMemorySize, 220*1024));
    CHECK(cudaFuncSetAttribute(score_q4_0_coalesced<H, 4>, cudaFuncAttributeMaxDynamicSharedMemorySize, 220*1024));
    CHECK(cudaFuncSetAttribute(score_q4_0_pipelined<H, 2>, cudaFuncAttributeMaxDynamicSharedMemorySize, 220*1024));
    CHECK(cudaFuncSetAttribute(score_q4_0_pipelined<H, 3>, cudaFuncAttributeMaxDynamicSharedMemorySize, 220*1024));
    CHECK(cudaFuncSetAttribute(score_q4_0_pipelined<H, 4>, cudaFuncAttributeMaxDynamicSharedMemorySize, 220*1024));
    CHECK(cudaFuncSetAttribute(score_q4_0_pipelined<H, 6>, cudaFuncAttributeMaxDynamicSharedMemorySize, 220*1024));

    std::mt19937 rng(std::random_device{}());
    std::normal_distribution<float> nd(0.0f, 1.0f);
    int failures = 0;

    printf("| n_kv | blocks per row | cells in flight (<0: a thread a cell) | K copy | scores written | us | GB/s of K copy |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    for (int layout : {0, 1}) {
    for (int64_t n_kv : {int64_t(32768), int64_t(131072)}) {
        row_bytes   = layout == 0 ? int64_t(n_head_kv)*QB*BQ : QB*BQ;
        head_stride = layout == 0 ? QB*BQ : n_kv*QB*BQ;
        printf("layout: %s\n", layout == 0 ? "cell-major (today's copy)" : "head-major");
        // layers of K copy: enough that rotating over them leaves L2 (>= 150 MB)
        const int64_t layer_bytes = n_kv*int64_t(n_head_kv)*QB*BQ;
        const int n_layers = int(std::max<int64_t>(2, (150ll << 20)/layer_bytes + 1));
        std::vector<uint8_t> kc(layer_bytes);
        for (int64_t i = 0; i < layer_bytes; i += BQ) {
            const half d = __float2half(0.005f + 0.05f*float(rng() % 1000)/1000.0f);
            memcpy(&kc[i], &d, 2);
            for (int k = 2; k < BQ; ++k) {
                kc[i + k] = uint8_t(rng());
            }
        }
        std::vector<q8_head> qh(n_head_kv*H);
        std::vector<float> qf(n_head_kv*H*D);
        for (auto & x : qf) {
            x = nd(rng);
        }
        for (int hq = 0; hq < n_head_kv*H; ++hq) {
            for (int bb = 0; bb < QB; ++bb) {
                const float * x = &qf[hq*D + bb*32];
                float amax = 0.0f;
                for (int i = 0; i < 32; ++i) {
                    amax = std::max(amax, std::fabs(x[i]));
                }
                const float d = amax/127.0f;
                int8_t qi[32];
                int sum = 0;
                for (int i = 0; i < 32; ++i) {
                    qi[i] = int8_t(d > 0.0f ? std::lround(x[i]/d) : 0);
                    sum += qi[i];
                }
                // word w < 4 pairs with the low nibbles of bytes 4w..4w+3 (elements 4w..4w+3), w >= 4 with the high
                // nibbles (elements 16 + 4(w-4)..)
                for (int w = 0; w < 8; ++w) {
                    const int e0 = w < 4 ? 4*w : 16 + 4*(w - 4);
                    uint32_t word = 0;
                    for (int k = 0; k < 4; ++k) {
                        word |= uint32_t(uint8_t(qi[e0 + k])) << (8*k);
                    }
                    qh[hq].w[bb][w] = int(word);
                }
                qh[hq].d[bb] = d;
                qh[hq].s[bb] = d*float(sum);
            }
        }

        uint8_t * d_kc;
        q8_head * d_q;
        float * d_max;
        float * d_scores;
        CHECK(cudaMalloc(&d_kc, layer_bytes*n_layers));
        for (int l = 0; l < n_layers; ++l) {
            CHECK(cudaMemcpy(d_kc + l*layer_bytes, kc.data(), layer_bytes, cudaMemcpyHostToDevice));
        }
        CHECK(cudaMalloc(&d_q, qh.size()*sizeof(q8_head)));
        CHECK(cudaMemcpy(d_q, qh.data(), qh.size()*sizeof(q8_head), cudaMemcpyHostToDevice));
        CHECK(cudaMalloc(&d_max, n_head_kv*32*H*sizeof(float)));
        CHECK(cudaMalloc(&d_scores, int64_t(n_head_kv)*H*n_kv*sizeof(float)));

        // CPU reference: the same integer sums, scaled in double
        std::vector<float> ref(int64_t(n_head_kv)*H*n_kv);
        for (int r = 0; r < n_head_kv; ++r) {
            for (int64_t j = 0; j < n_kv; ++j) {
                for (int h = 0; h < H; ++h) {
                    double acc = 0.0;
                    for (int bb = 0; bb < QB; ++bb) {
                        const uint8_t * blk = &kc[j*row_bytes + r*head_stride + bb*BQ];
                        uint16_t dh;
                        memcpy(&dh, blk, 2);
                        int sumi = 0;
                        for (int i = 0; i < 16; ++i) {
                            const int8_t * qi = (const int8_t *) qh[r*H + h].w[bb];
                            // element i (low nibble of byte i) is in word i/4, element 16+i in word 4 + i/4
                            sumi += (blk[2 + i] & 0x0F)*qi[(i/4)*4 + i%4];
                            sumi += (blk[2 + i] >> 4)*qi[16 + (i/4)*4 + i%4];
                        }
                        acc += double(f16_to_f32(dh))*(double(qh[r*H + h].d[bb])*sumi - 8.0*qh[r*H + h].s[bb]);
                    }
                    ref[(int64_t(r)*H + h)*n_kv + j] = float(acc);
                }
            }
        }

        for (int blocks : {8, 16}) {
        for (int cb : {1, -1, 101, 202}) {
            // cb in 1..99: 4 threads a cell, cb cells in flight; cb < 0: a thread a cell, -cb cells in flight;
            // cb = 100 + G: warps load G groups of 32 cells cooperatively (score_q4_0_coalesced)
            const auto kernel = cb == 1 ? score_q4_0_chunk<H, 1> : cb == -1 ? score_q4_0_cellwise<H, 1> :
                cb == 101 ? score_q4_0_coalesced<H, 1> : cb == 102 ? score_q4_0_coalesced<H, 2> :
                cb == 104 ? score_q4_0_coalesced<H, 4> : cb == 202 ? score_q4_0_pipelined<H, 2> :
                cb == 203 ? score_q4_0_pipelined<H, 3> : cb == 204 ? score_q4_0_pipelined<H, 4> : score_q4_0_pipelined<H, 6>;
            // cb = 200 + S: score_q4_0_pipelined with a ring of S tiles a warp
            const int64_t chunk = (n_kv + blocks - 1)/blocks;
            const size_t smem = size_t((H*chunk + 1)/2*2)*sizeof(float) + (cb > 100 ? size_t(NT/32)*(cb % 100)*32*9*8 : 0);
            if (smem > 220*1024) {
                printf("| %lld | %d | %d | - | - | (chunk of %lld cells needs %zu B of shared memory) | - |\n",
                       (long long) n_kv, blocks, cb, (long long) chunk, smem);
                continue;
            }
            const dim3 grid(blocks, n_head_kv);
            // check: scores written, against the reference
            CHECK(cudaMemset(d_scores, 0xFF, int64_t(n_head_kv)*H*n_kv*sizeof(float)));
            kernel<<<grid, NT, smem>>>(d_kc, d_q, d_max, d_scores, n_kv, chunk, row_bytes, head_stride);
            CHECK(cudaGetLastError());
            CHECK(cudaDeviceSynchronize());
            std::vector<float> got(ref.size());
            CHECK(cudaMemcpy(got.data(), d_scores, got.size()*sizeof(float), cudaMemcpyDeviceToHost));
            int64_t bad = 0;
            for (size_t i = 0; i < got.size(); ++i) {
                if (!(std::fabs(got[i] - ref[i]) <= 1e-4f*std::max(1.0f, std::fabs(ref[i])))) {
                    bad++;
                }
            }
            if (bad) {
                failures++;
                printf("check FAILED: n_kv %lld, %d blocks per row, %d cells in flight: %lld of %zu scores differ\n",
                       (long long) n_kv, blocks, cb, (long long) bad, got.size());
            }
            for (int cold = 0; cold < 2; ++cold) {
                for (int write = 0; write < 2; ++write) {
                    cudaStream_t stream;
                    CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
                    auto launch = [&](int i) {
                        const uint8_t * kcl = d_kc + (cold ? (i % n_layers)*layer_bytes : 0);
                        kernel<<<grid, NT, smem, stream>>>(kcl, d_q, d_max, write ? d_scores : nullptr,
                            n_kv, chunk, row_bytes, head_stride);
                    };
                    for (auto t0 = std::chrono::steady_clock::now();
                         std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(100);) {
                        for (int i = 0; i < 50; ++i) {
                            launch(i);
                        }
                        CHECK(cudaStreamSynchronize(stream));
                    }
                    const int per_graph = 4*n_layers;
                    cudaGraph_t graph;
                    cudaGraphExec_t exec;
                    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
                    for (int i = 0; i < per_graph; ++i) {
                        launch(i);
                    }
                    CHECK(cudaStreamEndCapture(stream, &graph));
                    CHECK(cudaGraphInstantiate(&exec, graph, 0));
                    cudaEvent_t e0, e1;
                    CHECK(cudaEventCreate(&e0));
                    CHECK(cudaEventCreate(&e1));
                    std::vector<float> us;
                    for (int rep = 0; rep < 15; ++rep) {
                        CHECK(cudaEventRecord(e0, stream));
                        CHECK(cudaGraphLaunch(exec, stream));
                        CHECK(cudaEventRecord(e1, stream));
                        CHECK(cudaEventSynchronize(e1));
                        float ms;
                        CHECK(cudaEventElapsedTime(&ms, e0, e1));
                        us.push_back(1000.0f*ms/per_graph);
                    }
                    std::sort(us.begin(), us.end());
                    const float t = us[us.size()/2];
                    printf("| %lld | %d | %d | %s | %s | %.1f | %.0f |\n", (long long) n_kv, blocks, cb,
                           cold ? "cold (HBM)" : "warm (L2)", write ? "yes" : "no", t,
                           double(n_kv)*n_head_kv*QB*BQ/(t*1e3));
                    CHECK(cudaGraphExecDestroy(exec));
                    CHECK(cudaGraphDestroy(graph));
                    CHECK(cudaEventDestroy(e0));
                    CHECK(cudaEventDestroy(e1));
                    CHECK(cudaStreamDestroy(stream));
                }
            }
        }
        }
        cudaFree(d_kc);
        cudaFree(d_q);
        cudaFree(d_max);
        cudaFree(d_scores);
    }
    }
    printf("%s: %d failing checks\n", failures ? "FAILED" : "ok", failures);
    return failures ? 1 : 0;
}
