// Experiment for issue #18 (not used by llama.cpp yet): the decode selection of GROUP mode in ONE launch that scores the
// cells itself from the q4_0 copy of K and writes the gather list that sparse flash attention reads, instead of
// today's four launches (q -> q8_1, mul_mat_vec_q of the copy, sparsek_select_cluster writing a mask row, and the
// mask -> index compaction in fattn.cu, two launches).
//
// One row = one KV head; a row is one thread-block cluster (sm_90), each block holds a chunk of the row's cells:
//   1. quantizes the H query heads of the KV head to 8 bits per 32 values (as the CPU reference does, same floats),
//   2. scores its cells from the copy (one thread a cell, 8-byte loads of the cell's q4_0 blocks; integer dot
//      products, then fmaf in a fixed order: the CPU reference computes the same floats), logits into shared memory,
//   3. per head (max, sum of exp) over its cells, merged over the cluster in rank order -> the same log-sum-exp in
//      every block; pooled key of a cell = max over heads of (logit - lse), as sparsek_select_cluster,
//   4. the threshold bin of the distance below the row's largest key (histograms merged through distributed shared
//      memory), its candidates ranked on chip (key descending, index ascending), as sparsek_select_cluster,
//   5. writes the kept cells (top_k, plus window/sinks of `keep`) as an ascending index list padded with -1 to n_kv_max,
//      and the count, in the layout of fattn.cu's compaction.
// Rows whose threshold bin holds more than SPARSEK_CL_CAND cells would take the radix levels of sparsek_select_cluster;
// this harness reports them (none occur with continuous scores) instead of handling them.
//
// Checked against a CPU reference (same quantization and float order for the scores, log-sum-exp in double: a cell
// whose pooled score is within 1e-4 of the threshold may differ); timed with the copy L2-warm and cold, for the copy as
// the cache stores it today (a cell's row holds every KV head) and head-major (a KV head's cells contiguous).
//
//   nvcc -O2 -std=c++17 -arch=sm_90 -I<tree>/ggml/include -I<tree>/ggml/src -I<tree>/ggml/src/ggml-cuda \
//        scripts/cuda/sparsek_fused_harness.cu -o sparsek_fused_harness && ./sparsek_fused_harness
//
// (scripts/gpu_bench.py fused_harness does that on the lent GPU.) Exit code 1 if a check fails.

#include "common.cuh"
#include "sparsek-cluster.cuh"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#define CHECK(...) do { cudaError_t e_ = (__VA_ARGS__); if (e_ != cudaSuccess) { \
    fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #__VA_ARGS__, cudaGetErrorString(e_)); exit(2); } } while (0)

constexpr int D  = 128;  // head size
constexpr int QB = D/32; // q4_0 blocks per head
constexpr int BQ = 18;   // bytes per q4_0 block
constexpr int NT = SPARSEK_CL_BLOCK;
constexpr int NW = NT/WARP_SIZE;
#define FUSED_MAX_CHUNK 16384 // cells a block holds at most
#define SCORE_BLOCKS    16    // two launches: scoring blocks a row

// phase clocks of every block of row 0: [block][mark] (SM clocks: compare only within a block)
__device__ long long fused_trace[SPARSEK_CL_MAX_SIZE*16];
#define FMARK(i) do { if (threadIdx.x == 0 && blockIdx.y == 0) { fused_trace[blockIdx.x*16 + (i)] = clock64(); } } while (0)

struct fused_params {
    int64_t n_kv;
    int64_t chunk;
    int64_t cell_stride;  // bytes between cells of the copy
    int64_t head_stride;  // bytes between KV heads of the copy
    int     top_k;
    int     n_kv_max;
    float   scale;
    float  * lg_g;    // two launches: the logits [rows][H][n_kv] ...
    float2 * part_g;  // ... and each scoring block's (max, sum of exp) per head [rows][n_parts][H]
    int      n_parts;
};

// MODE 0: one launch (a cluster per row scores and selects); MODE 1: scoring only, n_parts plain blocks per row over
// the whole GPU, logits and per-block (max, sum) to global memory; MODE 2: the selection of MODE 0 from those
enum { FUSED = 0, SCORE_ONLY = 1, SELECT_SCORED = 2 };

// the query of H heads quantized per 32 values (as quantize_row_q8_0 rounds, with correctly rounded float ops):
// w[h][b][8] int8x4 words (word w < 4: elements 4w..4w+3, the low nibbles' partners; w >= 4: 16 + 4(w-4)..),
// d[h][b] the scale, m[h][b] = -8*d*sum (the q4_0 offset of 8 folded in)
template <int H>
struct q8_query {
    int   w[H][QB][8];
    float d[H][QB];
    float m[H][QB];
};

static __device__ __forceinline__ uint32_t u32_of(const uint32_t * u, const int byte) {
    return (byte % 4 == 0) ? u[byte/4] : __funnelshift_r(u[byte/4], u[byte/4 + 1], 8*(byte % 4));
}

static __device__ __forceinline__ void barrier_cluster_arrive() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
}
static __device__ __forceinline__ void barrier_cluster_wait() {
    asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

// dynamic shared memory: H*chunk logits (the keys overwrite the first chunk of them), then the candidates
static size_t fused_dyn_smem(int H, int64_t chunk) {
    return size_t(H)*chunk*sizeof(float) + 2*SPARSEK_CL_CAND*(sizeof(uint32_t) + sizeof(int));
}

template <int H, int MODE>
__launch_bounds__(NT, MODE == SELECT_SCORED ? 2 : 1)
static __global__ void sparsek_fused_q4_0(
        const uint8_t * __restrict__ kc, const float * __restrict__ q, const half * __restrict__ mask,
        const half * __restrict__ keep, int32_t * __restrict__ list, int32_t * __restrict__ counts,
        int * __restrict__ fallback, const fused_params p) {
    namespace cg = cooperative_groups;
    const cg::cluster_group cluster = cg::this_cluster();
    const int rank  = MODE == SCORE_ONLY ? int(blockIdx.x) : int(cluster.block_rank());
    const int nrank = MODE == SCORE_ONLY ? int(gridDim.x) : int(cluster.num_blocks());
    const int tid   = threadIdx.x;
    const int warp  = tid / WARP_SIZE;
    const int lane  = tid % WARP_SIZE;
    const int row   = blockIdx.y;

    extern __shared__ float lg_s[]; // [H][chunk]; keys_s aliases the first chunk; then the candidates
    uint32_t * keys_s   = (uint32_t *) lg_s;
    uint32_t * cand_key = (uint32_t *) (lg_s + (MODE == SELECT_SCORED ? 1 : H)*p.chunk); // two launches: keys only
    int      * cand_idx = (int *) (cand_key + SPARSEK_CL_CAND);
    uint32_t * all_key  = (uint32_t *) (cand_idx + SPARSEK_CL_CAND);
    int      * all_idx  = (int *) (all_key + SPARSEK_CL_CAND);

    __shared__ q8_query<H> qq;
    __shared__ float  xq[H*D];
    __shared__ int    histd[2048];
    __shared__ int    supd[64];
    __shared__ int    msup[64], mbin[32];
    __shared__ float2 wpart[H][NW];
    __shared__ float2 part_s[H];
    __shared__ uint32_t allowed_bits[FUSED_MAX_CHUNK/32], kept_bits[FUSED_MAX_CHUNK/32], keep_bits[FUSED_MAX_CHUNK/32];
    __shared__ int    wscan[FUSED_MAX_CHUNK/32];
    __shared__ float  lse_s[H], lbest_s[H];
    __shared__ int    rank_s[SPARSEK_CL_MAX_SIZE];
    __shared__ int    allowed_s, n_cand_s, kept_s;
    __shared__ uint32_t kmax_s;
    __shared__ int    found_s[3];

    const int64_t j0      = rank*p.chunk;
    const int64_t n_cells = max(int64_t(0), min(p.n_kv, j0 + p.chunk) - j0);

    for (int b = tid; b < 2048; b += NT) {
        histd[b] = 0;
        if (b < 64) { msup[b] = 0; }
        if (b < 32) { mbin[b] = 0; }
    }
    if (tid == 0) {
        allowed_s = 0;
        n_cand_s  = 0;
        kept_s    = 0;
    }
    for (int i = tid; i < H*D; i += NT) {
        xq[i] = q[int64_t(row)*H*D + i];
    }
    __syncthreads();
    FMARK(0);

    // 1. the query, quantized by one thread per 32 values
    if (MODE != SELECT_SCORED && tid < H*QB) {
        const int h = tid / QB;
        const int b = tid % QB;
        const float * x = xq + h*D + b*32;
        float amax = 0.0f;
        for (int i = 0; i < 32; ++i) {
            amax = fmaxf(amax, fabsf(x[i]));
        }
        const float d  = __fdiv_rn(amax, 127.0f);
        const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
        int sum = 0;
        for (int w = 0; w < 8; ++w) {
            const int e0 = w < 4 ? 4*w : 16 + 4*(w - 4);
            uint32_t word = 0;
            for (int k = 0; k < 4; ++k) {
                const int v = int(roundf(__fmul_rn(x[e0 + k], id)));
                sum += v;
                word |= uint32_t(uint8_t(int8_t(v))) << (8*k);
            }
            qq.w[h][b][w] = int(word);
        }
        qq.d[h][b] = d;
        qq.m[h][b] = -8.0f*__fmul_rn(d, float(sum));
    }
    __syncthreads();
    FMARK(1);

    // 2. logits of this block's cells (-INF where the mask forbids), each head's running (max, sum of exp) per thread,
    //    and a bit per cell that the mask allows it (a warp scores 32 consecutive cells: one word)
    const uint8_t * base = kc + row*p.head_stride + j0*p.cell_stride;
    float * lg_dst = MODE == SCORE_ONLY ? p.lg_g + int64_t(row)*H*p.n_kv + j0 : lg_s;
    const int64_t ld = MODE == SCORE_ONLY ? p.n_kv : p.chunk;
    float2 ms[H];
#pragma unroll
    for (int h = 0; h < H; ++h) {
        ms[h] = make_float2(-INFINITY, 0.0f);
    }
    for (int64_t c = tid; MODE != SELECT_SCORED && c - lane < n_cells; c += NT) {
        const bool in = c < n_cells;
        uint32_t u[QB*BQ/4];
        const uint2 * src = (const uint2 *) (base + min(c, n_cells - 1)*p.cell_stride);
#pragma unroll
        for (int w = 0; w < QB*BQ/8; ++w) {
            const uint2 x = __ldg(src + w);
            u[2*w]     = x.x;
            u[2*w + 1] = x.y;
        }
        const bool allowed = in && __half2float(mask[j0 + c]) != -INFINITY;
        const uint32_t abits = __ballot_sync(0xFFFFFFFF, allowed);
        if (lane == 0) {
            allowed_bits[(c - lane)/32] = abits;
        }
        float acc[H];
#pragma unroll
        for (int h = 0; h < H; ++h) {
            acc[h] = 0.0f;
        }
#pragma unroll
        for (int b = 0; b < QB; ++b) {
            const uint32_t dw = u[(BQ*b)/4];
            const float dk = __half2float(__ushort_as_half((unsigned short) ((BQ*b) % 4 == 0 ? (dw & 0xFFFF) : (dw >> 16))));
            uint32_t v[4];
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                v[w] = u32_of(u, BQ*b + 2 + 4*w);
            }
#pragma unroll
            for (int h = 0; h < H; ++h) {
                const int4 qa = *(const int4 *) &qq.w[h][b][0];
                const int4 qb = *(const int4 *) &qq.w[h][b][4];
                int sumi = 0;
                sumi = __dp4a(int(v[0] & 0x0F0F0F0F), qa.x, sumi);
                sumi = __dp4a(int(v[1] & 0x0F0F0F0F), qa.y, sumi);
                sumi = __dp4a(int(v[2] & 0x0F0F0F0F), qa.z, sumi);
                sumi = __dp4a(int(v[3] & 0x0F0F0F0F), qa.w, sumi);
                sumi = __dp4a(int((v[0] >> 4) & 0x0F0F0F0F), qb.x, sumi);
                sumi = __dp4a(int((v[1] >> 4) & 0x0F0F0F0F), qb.y, sumi);
                sumi = __dp4a(int((v[2] >> 4) & 0x0F0F0F0F), qb.z, sumi);
                sumi = __dp4a(int((v[3] >> 4) & 0x0F0F0F0F), qb.w, sumi);
                acc[h] = __fmaf_rn(dk, __fmaf_rn(qq.d[h][b], float(sumi), qq.m[h][b]), acc[h]);
            }
        }
        if (in) {
#pragma unroll
            for (int h = 0; h < H; ++h) {
                float l = __fmul_rn(p.scale, acc[h]);
                l = allowed && !isnan(l) ? l : -INFINITY;
                lg_dst[h*ld + c] = l;
                if (l > ms[h].x) {
                    ms[h].y = ms[h].y*expf(ms[h].x - l) + 1.0f; // exp(-INF) = 0 for the first
                    ms[h].x = l;
                } else if (l != -INFINITY) {
                    ms[h].y += expf(l - ms[h].x);
                }
            }
        }
    }
    FMARK(2);

    // 3. the block's (max, sum) per head, merged over the cluster in rank order (two launches: over the scoring
    //    blocks, in their order, from global memory)
#pragma unroll
    for (int h = 0; h < H && MODE != SELECT_SCORED; ++h) {
        float2 v = ms[h];
#pragma unroll
        for (int off = WARP_SIZE/2; off > 0; off >>= 1) {
            const float2 o = make_float2(__shfl_xor_sync(0xFFFFFFFF, v.x, off), __shfl_xor_sync(0xFFFFFFFF, v.y, off));
            v = sparsek_lse_combine(v, o);
        }
        if (lane == 0) {
            wpart[h][warp] = v;
        }
    }
    __syncthreads();
    if (MODE != SELECT_SCORED && tid < H) {
        float2 v = wpart[tid][0];
        for (int w = 1; w < NW; ++w) {
            v = sparsek_lse_combine(v, wpart[tid][w]);
        }
        part_s[tid] = v;
        if (MODE == SCORE_ONLY) {
            p.part_g[(int64_t(row)*nrank + rank)*H + tid] = v;
        }
    }
    if constexpr (MODE == SCORE_ONLY) {
        return;
    }
    if constexpr (MODE == FUSED) {
        cluster.sync();
    } else {
        __syncthreads();
    }
    // warp h merges head h's partials: lane r loads partial r, then a shuffle tree in a fixed order (every block
    // computes the same floats); a dependent chain of remote or L2 loads measured ~10k cycles
    const int n_parts = MODE == FUSED ? nrank : p.n_parts;
    if (warp < H) {
        const int hh = warp;
        float2 ms = make_float2(-INFINITY, 0.0f);
        if (lane < n_parts) {
            ms = MODE == FUSED ? *cluster.map_shared_rank(&part_s[hh], lane) : p.part_g[(int64_t(row)*p.n_parts + lane)*H + hh];
        }
#pragma unroll
        for (int off = 1; off < WARP_SIZE; off <<= 1) {
            const float2 o = make_float2(__shfl_xor_sync(0xFFFFFFFF, ms.x, off), __shfl_xor_sync(0xFFFFFFFF, ms.y, off));
            ms = (lane & off) ? sparsek_lse_combine(o, ms) : sparsek_lse_combine(ms, o);
        }
        if (lane == 0) {
            const float lse = ms.x == -INFINITY ? INFINITY : ms.x + logf(ms.y);
            lse_s[hh] = lse;
            lbest_s[hh] = __fsub_rn(ms.x, lse);
        }
    }
    __syncthreads();
    if (tid == 0) {
        float best = -INFINITY;
        for (int hh = 0; hh < H; ++hh) {
            best = lbest_s[hh] > best ? lbest_s[hh] : best;
        }
        kmax_s = sparsek_key(best);
    }
    FMARK(3);
    __syncthreads();
    const uint32_t kmax = kmax_s;

    // 4. pooled keys (0: forbidden), in place of the first head's logits; the distance histogram; a bit per cell
    //    that `keep` forces (window, sinks). KU rounds of cells a thread load before any is used (two launches: the
    //    logits come from L2, and the histogram's atomics would otherwise hold each round's loads back).
    constexpr int KU = 4;
    int allowed = 0;
    for (int64_t cb = tid; cb - lane < n_cells; cb += NT*KU) {
        float l[KU][H];
        bool  okv[KU], kpv[KU];
#pragma unroll
        for (int u = 0; u < KU; ++u) {
            const int64_t c  = cb + u*NT;
            const bool    in = c < n_cells;
            if constexpr (MODE == SELECT_SCORED) {
                okv[u] = in && __half2float(mask[j0 + c]) != -INFINITY;
#pragma unroll
                for (int h = 0; h < H; ++h) {
                    l[u][h] = in ? p.lg_g[(int64_t(row)*H + h)*p.n_kv + j0 + c] : -INFINITY;
                }
            } else {
                okv[u] = in && ((allowed_bits[c/32] >> (c % 32)) & 1);
#pragma unroll
                for (int h = 0; h < H; ++h) {
                    l[u][h] = in ? lg_s[h*p.chunk + c] : -INFINITY;
                }
            }
            kpv[u] = in && keep && __half2float(keep[j0 + c]) != -INFINITY;
        }
#pragma unroll
        for (int u = 0; u < KU; ++u) {
            const int64_t c = cb + u*NT;
            float s = -INFINITY;
#pragma unroll
            for (int h = 0; h < H; ++h) {
                const float lp = __fsub_rn(l[u][h], lse_s[h]);
                s = lp > s ? lp : s;
            }
            const uint32_t key = okv[u] ? sparsek_key(s) : 0;
            if (c < n_cells) {
                keys_s[c] = key;
            }
            allowed += okv[u];
            sparsek_hist_add(histd, key != 0 ? sparsek_dbin(kmax, key) : 0, key != 0);
            const uint32_t kb = __ballot_sync(0xFFFFFFFF, okv[u] && kpv[u]);
            if (lane == 0 && c - lane < n_cells) {
                keep_bits[(c - lane)/32] = kb;
            }
        }
    }
    allowed = warp_reduce_sum(allowed);
    if (lane == 0 && allowed > 0) {
        atomicAdd(&allowed_s, allowed);
    }
    __syncthreads();
    sparsek_cluster_group_sums<2048>(histd, supd);
    cluster.sync();
    FMARK(4);
    if (tid < nrank) {
        rank_s[tid] = *cluster.map_shared_rank(&allowed_s, tid);
    }
    __syncthreads();
    int n_allowed = 0;
    for (int r = 0; r < nrank; ++r) {
        n_allowed += rank_s[r];
    }

    uint32_t bd = 0; // every allowed cell is kept when n_allowed <= top_k
    if (n_allowed > p.top_k) {
        sparsek_cluster_find<2048>(cluster, histd, supd, msup, mbin, found_s, p.top_k);
        bd = found_s[0];
        const int rem_d = found_s[1];
        const int n_bd  = found_s[2];
        FMARK(5);
        if (n_bd > SPARSEK_CL_CAND) {
            if (tid == 0 && rank == 0) {
                atomicAdd(fallback, 1);
            }
            cluster.sync();
            return;
        }
        for (int64_t c = tid; c < n_cells; c += NT) {
            const uint32_t key = keys_s[c];
            if (key != 0 && sparsek_dbin(kmax, key) == bd) {
                const int slot = atomicAdd(&n_cand_s, 1);
                cand_key[slot] = key;
                cand_idx[slot] = int(j0 + c);
            }
        }
        cluster.sync();
        if (tid < nrank) {
            rank_s[tid] = *cluster.map_shared_rank(&n_cand_s, tid);
        }
        __syncthreads();
        for (int t = tid; t < n_bd; t += NT) {
            int r   = 0;
            int off = 0;
            while (r < nrank - 1 && t >= off + rank_s[r]) {
                off += rank_s[r];
                r++;
            }
            all_key[t] = cluster.map_shared_rank(cand_key, r)[t - off];
            all_idx[t] = cluster.map_shared_rank(cand_idx, r)[t - off];
        }
        cluster.sync();
        FMARK(6);
        const int n_own = n_cand_s;
        {
            for (int i = warp; i < n_own; i += NW) {
                const uint32_t key = cand_key[i];
                const int      idx = cand_idx[i];
                int above = 0;
                for (int t = lane; t < n_bd; t += WARP_SIZE) {
                    above += all_key[t] > key || (all_key[t] == key && all_idx[t] < idx);
                }
                above = warp_reduce_sum(above);
                if (lane == 0) {
                    keys_s[idx - j0] = above < rem_d ? SPARSEK_CL_KEPT : SPARSEK_CL_DROP;
                }
            }
        }
        __syncthreads();
    }
    FMARK(7);

    // 5. the kept cells as an ascending list: a bit per kept cell (a warp's 32 consecutive cells: one word), this
    //    block's count, the earlier blocks' counts (distributed shared memory), then each word's cells in order
    const int n_words = int((n_cells + 31)/32);
    for (int64_t c = tid; c - lane < n_cells; c += NT) {
        bool k = false;
        if (c < n_cells) {
            const uint32_t key = keys_s[c];
            k = key != 0 && (n_allowed <= p.top_k || key == SPARSEK_CL_KEPT ||
                (key > SPARSEK_CL_DROP && sparsek_dbin(kmax, key) > bd) ||
                ((keep_bits[c/32] >> (c % 32)) & 1));
        }
        const uint32_t kbits = __ballot_sync(0xFFFFFFFF, k);
        if (lane == 0) {
            kept_bits[(c - lane)/32] = kbits;
        }
    }
    __syncthreads();
    if (warp == 0) {
        // exclusive scan of the words' counts, 32 words a round
        int run = 0;
        for (int w0 = 0; w0 < n_words; w0 += WARP_SIZE) {
            const int w = w0 + lane;
            const int n = w < n_words ? __popc(kept_bits[w]) : 0;
            const int incl = sparsek_warp_incl_sum(n);
            if (w < n_words) {
                wscan[w] = run + incl - n;
            }
            run += __shfl_sync(0xFFFFFFFF, incl, WARP_SIZE - 1);
        }
        if (lane == 0) {
            kept_s = run;
        }
    }
    FMARK(8);
    cluster.sync();
    if (tid < nrank) {
        rank_s[tid] = *cluster.map_shared_rank(&kept_s, tid);
    }
    __syncthreads();
    barrier_cluster_arrive(); // done reading the other blocks' shared memory
    FMARK(9);
    int offset = 0;
    int total  = 0;
    for (int r = 0; r < nrank; ++r) {
        offset += r < rank ? rank_s[r] : 0;
        total  += rank_s[r];
    }
    int32_t * lrow = list + int64_t(row)*p.n_kv_max;
    for (int w = tid; w < n_words; w += NT) {
        uint32_t bits = kept_bits[w];
        int dst = offset + wscan[w];
        while (bits) {
            const int b = __ffs(bits) - 1;
            bits &= bits - 1;
            if (dst < p.n_kv_max) {
                lrow[dst] = int32_t(j0 + w*32 + b);
            }
            dst++;
        }
    }
    if (rank == nrank - 1) {
        for (int i = min(total, p.n_kv_max) + tid; i < p.n_kv_max; i += NT) {
            lrow[i] = -1;
        }
        if (tid == 0) {
            counts[row] = min(total, p.n_kv_max);
        }
    }
    FMARK(10);
    barrier_cluster_wait(); // no block leaves while another may read its shared memory
}

// ---------------------------------------------------------------------------------------------------------------
// host

static float f16_to_f32(uint16_t h) {
    return __half2float(*(const half *) &h);
}

struct cpu_q8 {
    int8_t v[QB][32];
    float  d[QB];
    float  m[QB];
};

// the same quantization as the kernel, with the same correctly rounded float operations
static cpu_q8 cpu_quantize(const float * x) {
    cpu_q8 r;
    for (int b = 0; b < QB; ++b) {
        float amax = 0.0f;
        for (int i = 0; i < 32; ++i) {
            amax = std::max(amax, std::fabs(x[b*32 + i]));
        }
        const float d  = amax/127.0f;
        const float id = d != 0.0f ? 1.0f/d : 0.0f;
        int sum = 0;
        for (int i = 0; i < 32; ++i) {
            const float prod = x[b*32 + i]*id;
            r.v[b][i] = int8_t(int(std::round(prod)));
            sum += r.v[b][i];
        }
        r.d[b] = d;
        const float ds = d*float(sum);
        r.m[b] = -8.0f*ds;
    }
    return r;
}

// q4_0 block: element i < 16 is the low nibble of byte 2 + i, element 16 + i the high nibble
static float cpu_score(const uint8_t * cell, const cpu_q8 & q) {
    float acc = 0.0f;
    for (int b = 0; b < QB; ++b) {
        const uint8_t * blk = cell + b*BQ;
        uint16_t dh;
        memcpy(&dh, blk, 2);
        int sumi = 0;
        for (int i = 0; i < 16; ++i) {
            sumi += (blk[2 + i] & 0x0F)*q.v[b][i];
            sumi += (blk[2 + i] >> 4)*q.v[b][16 + i];
        }
        acc = std::fmaf(f16_to_f32(dh), std::fmaf(q.d[b], float(sumi), q.m[b]), acc);
    }
    return acc;
}

struct layout {
    const char * name;
    bool head_major;
};

int main() {
    constexpr int H = 4;
    const int n_head_kv = 8;
    const float scale = 1.0f/std::sqrt(float(D));
    int dev = 0;
    CHECK(cudaSetDevice(dev));
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, dev));
    cudaFuncAttributes fa;
    CHECK(cudaFuncGetAttributes(&fa, (const void *) sparsek_fused_q4_0<H, FUSED>));
    printf("device: %s, %d SMs, L2 %d MB; fused kernel: %d registers, %zu B static shared memory\n", prop.name,
           prop.multiProcessorCount, prop.l2CacheSize >> 20, fa.numRegs, fa.sharedSizeBytes);
    CHECK(cudaFuncSetAttribute(sparsek_fused_q4_0<H, FUSED>, cudaFuncAttributeMaxDynamicSharedMemorySize, 227*1024 - int(fa.sharedSizeBytes)));
    CHECK(cudaFuncSetAttribute(sparsek_fused_q4_0<H, FUSED>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    CHECK(cudaFuncSetAttribute(sparsek_fused_q4_0<H, SELECT_SCORED>, cudaFuncAttributeMaxDynamicSharedMemorySize, 227*1024 - int(fa.sharedSizeBytes)));
    CHECK(cudaFuncSetAttribute(sparsek_fused_q4_0<H, SELECT_SCORED>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));

    std::mt19937 rng(std::random_device{}());
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_real_distribution<float> ud(0.0f, 1.0f);
    int failures = 0;

    int * d_fallback;
    CHECK(cudaMalloc(&d_fallback, sizeof(int)));
    void * trace_ptr;
    CHECK(cudaGetSymbolAddress(&trace_ptr, fused_trace));

    printf("| n_kv | K | copy layout | cluster | check | K copy | us | GB/s of K copy |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    struct cfg { int64_t n_kv; int top_k; float holes; bool keep; };
    // FUSED_PROFILE=1: one launch of the two-launch pair at 32768 (head-major, selection cluster 16) and exit, for ncu
    const bool profile = getenv("FUSED_PROFILE") != nullptr;
    std::vector<cfg> cfgs = {cfg{4097, 256, 0.1f, true}, cfg{32768, 1024, 0.0f, true}, cfg{32768, 1024, 0.05f, false},
                             cfg{131072, 4096, 0.0f, true}, cfg{3000, 4096, 0.0f, true}};
    if (profile) {
        cfgs = {cfg{32768, 1024, 0.0f, true}};
    }
    for (const cfg & cf : cfgs) {
        const int64_t n_kv = cf.n_kv;
        const int64_t seg  = QB*BQ;               // a KV head's bytes of one cell
        const int64_t layer_bytes = n_kv*n_head_kv*seg;
        const int n_layers = int(std::max<int64_t>(2, (150ll << 20)/layer_bytes + 1));
        std::vector<uint8_t> kc(layer_bytes);
        for (int64_t i = 0; i < layer_bytes; i += BQ) {
            const half d = __float2half(0.005f + 0.05f*float(rng() % 1000)/1000.0f);
            memcpy(&kc[i], &d, 2);
            for (int k = 2; k < BQ; ++k) {
                kc[i + k] = uint8_t(rng());
            }
        }
        std::vector<float> qf(size_t(n_head_kv)*H*D);
        for (auto & x : qf) {
            x = nd(rng);
        }
        std::vector<half> mask(n_kv), keep(n_kv);
        for (int64_t j = 0; j < n_kv; ++j) {
            mask[j] = __float2half(ud(rng) < cf.holes ? -INFINITY : 0.0f);
            keep[j] = __float2half(j < 4 || j >= n_kv - 64 ? 0.0f : -INFINITY);
        }
        const int n_kv_max = int(std::min<int64_t>(n_kv, cf.top_k + 64 + 4));

        uint8_t * d_kc;
        float * d_q;
        half * d_mask, * d_keep;
        int32_t * d_list, * d_counts;
        CHECK(cudaMalloc(&d_kc, layer_bytes*n_layers));
        CHECK(cudaMalloc(&d_q, qf.size()*sizeof(float)));
        CHECK(cudaMemcpy(d_q, qf.data(), qf.size()*sizeof(float), cudaMemcpyHostToDevice));
        CHECK(cudaMalloc(&d_mask, n_kv*sizeof(half)));
        CHECK(cudaMemcpy(d_mask, mask.data(), n_kv*sizeof(half), cudaMemcpyHostToDevice));
        CHECK(cudaMalloc(&d_keep, n_kv*sizeof(half)));
        CHECK(cudaMemcpy(d_keep, keep.data(), n_kv*sizeof(half), cudaMemcpyHostToDevice));
        CHECK(cudaMalloc(&d_list, int64_t(n_head_kv)*n_kv_max*sizeof(int32_t)));
        CHECK(cudaMalloc(&d_counts, n_head_kv*sizeof(int32_t)));
        float * d_lg;
        float2 * d_part;
        CHECK(cudaMalloc(&d_lg, int64_t(n_head_kv)*H*n_kv*sizeof(float)));
        CHECK(cudaMalloc(&d_part, int64_t(n_head_kv)*SCORE_BLOCKS*H*sizeof(float2)));

        for (const layout & lay : {layout{"cell-major (today)", false}, layout{"head-major", true}}) {
            if (profile && !lay.head_major) {
                continue;
            }
            const int64_t cell_stride = lay.head_major ? seg : n_head_kv*seg;
            const int64_t head_stride = lay.head_major ? n_kv*seg : seg;
            for (int l = 0; l < n_layers; ++l) {
                CHECK(cudaMemcpy(d_kc + l*layer_bytes, kc.data(), layer_bytes, cudaMemcpyHostToDevice));
            }

            // CPU reference: kept set per KV head and each cell's pooled score
            std::vector<std::vector<char>> ref_kept(n_head_kv, std::vector<char>(n_kv, 0));
            std::vector<std::vector<double>> pooled(n_head_kv, std::vector<double>(n_kv, -INFINITY));
            std::vector<double> thr(n_head_kv, -INFINITY);
            for (int r = 0; r < n_head_kv; ++r) {
                std::vector<std::vector<float>> lg(H, std::vector<float>(n_kv));
                std::vector<double> lse(H);
                for (int h = 0; h < H; ++h) {
                    const cpu_q8 qq = cpu_quantize(&qf[(size_t(r)*H + h)*D]);
                    double m = -INFINITY;
                    for (int64_t j = 0; j < n_kv; ++j) {
                        const float l = scale*cpu_score(&kc[j*cell_stride + r*head_stride], qq);
                        lg[h][j] = std::isfinite(f16_to_f32(*(uint16_t *) &mask[j])) && !std::isnan(l) ? l : -INFINITY;
                        m = std::max(m, double(lg[h][j]));
                    }
                    double s = 0.0;
                    for (int64_t j = 0; j < n_kv; ++j) {
                        s += lg[h][j] == -INFINITY ? 0.0 : std::exp(double(lg[h][j]) - m);
                    }
                    lse[h] = m + std::log(s);
                }
                std::vector<int64_t> idx;
                for (int64_t j = 0; j < n_kv; ++j) {
                    if (!std::isfinite(f16_to_f32(*(uint16_t *) &mask[j]))) {
                        continue;
                    }
                    double s = -INFINITY;
                    for (int h = 0; h < H; ++h) {
                        s = std::max(s, double(lg[h][j]) - lse[h]);
                    }
                    pooled[r][j] = s;
                    idx.push_back(j);
                }
                if (int64_t(idx.size()) > cf.top_k) {
                    std::nth_element(idx.begin(), idx.begin() + (cf.top_k - 1), idx.end(), [&](int64_t a, int64_t b) {
                        return pooled[r][a] != pooled[r][b] ? pooled[r][a] > pooled[r][b] : a < b;
                    });
                    thr[r] = pooled[r][idx[cf.top_k - 1]];
                    idx.resize(cf.top_k);
                }
                for (int64_t j : idx) {
                    ref_kept[r][j] = 1;
                }
                for (int64_t j = 0; j < n_kv && cf.keep; ++j) {
                    if (std::isfinite(f16_to_f32(*(uint16_t *) &mask[j])) && std::isfinite(f16_to_f32(*(uint16_t *) &keep[j]))) {
                        ref_kept[r][j] = 1;
                    }
                }
            }

            // variant: the cluster size of the one launch; 1000 + size: two launches (scoring by 16 plain blocks a row,
            // then the selection in clusters of that size)
            for (int variant : {8, 12, 16, 1008, 1016}) {
                if (profile && variant != 1016) {
                    continue;
                }
                const bool two = variant > 1000;
                const int cluster = variant % 1000;
                const auto kernel = two ? sparsek_fused_q4_0<H, SELECT_SCORED> : sparsek_fused_q4_0<H, FUSED>;
                fused_params prm;
                prm.n_kv = n_kv;
                prm.chunk = (n_kv + cluster - 1)/cluster;
                prm.cell_stride = cell_stride;
                prm.head_stride = head_stride;
                prm.top_k = cf.top_k;
                prm.n_kv_max = n_kv_max;
                prm.scale = scale;
                prm.lg_g = d_lg;
                prm.part_g = d_part;
                prm.n_parts = SCORE_BLOCKS;
                fused_params prm_score = prm;
                prm_score.chunk = (n_kv + SCORE_BLOCKS - 1)/SCORE_BLOCKS;
                const size_t smem = two ? fused_dyn_smem(1, prm.chunk) : fused_dyn_smem(H, prm.chunk);
                const char * how = two ? "2 launches, " : "";
                if (smem + fa.sharedSizeBytes > 227*1024 || prm.chunk > FUSED_MAX_CHUNK) {
                    printf("| %lld | %d | %s | %s%d | - | - | (%zu B of shared memory) | - |\n", (long long) n_kv, cf.top_k,
                           lay.name, how, cluster, smem);
                    continue;
                }
                cudaLaunchAttribute attr;
                attr.id = cudaLaunchAttributeClusterDimension;
                attr.val.clusterDim.x = cluster;
                attr.val.clusterDim.y = 1;
                attr.val.clusterDim.z = 1;
                int co_resident = 0;
                {
                    cudaLaunchConfig_t lc = {};
                    lc.gridDim = dim3(cluster, n_head_kv, 1);
                    lc.blockDim = dim3(NT, 1, 1);
                    lc.dynamicSmemBytes = smem;
                    lc.attrs = &attr;
                    lc.numAttrs = 1;
                    CHECK(cudaOccupancyMaxActiveClusters(&co_resident, (const void *) kernel, &lc));
                }
                auto launch = [&](const uint8_t * kcl, cudaStream_t stream) {
                    if (two) {
                        sparsek_fused_q4_0<H, SCORE_ONLY><<<dim3(SCORE_BLOCKS, n_head_kv), NT, 0, stream>>>(kcl,
                            (const float *) d_q, (const half *) d_mask, (const half *) nullptr, d_list, d_counts, d_fallback, prm_score);
                    }
                    cudaLaunchConfig_t lc = {};
                    lc.gridDim = dim3(cluster, n_head_kv, 1);
                    lc.blockDim = dim3(NT, 1, 1);
                    lc.dynamicSmemBytes = smem;
                    lc.stream = stream;
                    lc.attrs = &attr;
                    lc.numAttrs = 1;
                    CHECK(cudaLaunchKernelEx(&lc, kernel, kcl, (const float *) d_q, (const half *) d_mask,
                                             cf.keep ? (const half *) d_keep : (const half *) nullptr, d_list, d_counts, d_fallback, prm));
                };
                // check
                CHECK(cudaMemset(d_fallback, 0, sizeof(int)));
                CHECK(cudaMemset(d_list, 0x7F, int64_t(n_head_kv)*n_kv_max*sizeof(int32_t)));
                launch(d_kc, 0);
                CHECK(cudaDeviceSynchronize());
                std::vector<int32_t> got(int64_t(n_head_kv)*n_kv_max), cnt(n_head_kv);
                int fb = 0;
                CHECK(cudaMemcpy(got.data(), d_list, got.size()*sizeof(int32_t), cudaMemcpyDeviceToHost));
                CHECK(cudaMemcpy(cnt.data(), d_counts, cnt.size()*sizeof(int32_t), cudaMemcpyDeviceToHost));
                CHECK(cudaMemcpy(&fb, d_fallback, sizeof(int), cudaMemcpyDeviceToHost));
                int64_t mismatch = 0, near = 0, malformed = 0;
                for (int r = 0; r < n_head_kv; ++r) {
                    std::vector<char> k(n_kv, 0);
                    const int32_t * lr = &got[int64_t(r)*n_kv_max];
                    for (int i = 0; i < n_kv_max; ++i) {
                        if (i < cnt[r]) {
                            if (lr[i] < 0 || lr[i] >= n_kv || (i > 0 && lr[i] <= lr[i - 1])) {
                                malformed++;
                            } else {
                                k[lr[i]] = 1;
                            }
                        } else if (lr[i] != -1) {
                            malformed++;
                        }
                    }
                    for (int64_t j = 0; j < n_kv; ++j) {
                        if (k[j] != ref_kept[r][j]) {
                            const double t = thr[r];
                            if (std::fabs(pooled[r][j] - t) <= 1e-4*std::max(1.0, std::fabs(t))) {
                                near++;
                            } else {
                                mismatch++;
                            }
                        }
                    }
                }
                const bool ok = mismatch == 0 && malformed == 0 && fb == 0;
                failures += !ok;
                char check[128];
                snprintf(check, sizeof(check), "%s (mismatch %lld, near %lld, malformed %lld, fallback %d)", ok ? "ok" : "FAILED",
                         (long long) mismatch, (long long) near, (long long) malformed, fb);
                if (profile) {
                    printf("profile launch done: %s\n", check);
                    return ok ? 0 : 1;
                }
                if (n_kv < 32768) {
                    printf("| %lld | %d | %s | %s%d | %s | - | - | - |\n", (long long) n_kv, cf.top_k, lay.name, how, cluster, check);
                    continue;
                }
                for (int cold = 0; cold < 2; ++cold) {
                    cudaStream_t stream;
                    CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
                    for (int i = 0; i < 20; ++i) {
                        launch(d_kc + (cold ? (i % n_layers)*layer_bytes : 0), stream);
                    }
                    CHECK(cudaStreamSynchronize(stream));
                    const int per_graph = 4*n_layers;
                    cudaGraph_t graph;
                    cudaGraphExec_t exec;
                    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
                    for (int i = 0; i < per_graph; ++i) {
                        launch(d_kc + (cold ? (i % n_layers)*layer_bytes : 0), stream);
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
                    printf("| %lld | %d | %s | %s%d (%d at once) | %s | %s | %.1f | %.0f |\n", (long long) n_kv, cf.top_k, lay.name, how, cluster, co_resident,
                           check, cold ? "cold (HBM)" : "warm (L2)", t, double(layer_bytes)/(t*1e3));
                    CHECK(cudaGraphExecDestroy(exec));
                    CHECK(cudaGraphDestroy(graph));
                    CHECK(cudaEventDestroy(e0));
                    CHECK(cudaEventDestroy(e1));
                    CHECK(cudaStreamDestroy(stream));
                }
                // phase clocks of every block of row 0, one more launch: each phase's duration in block 0 and the
                // longest over the blocks (a phase ending in a cluster barrier waits for the slowest block)
                if (n_kv >= 32768) {
                    static long long tr[SPARSEK_CL_MAX_SIZE*16];
                    CHECK(cudaMemset(trace_ptr, 0, sizeof(tr)));
                    launch(d_kc, 0);
                    CHECK(cudaDeviceSynchronize());
                    CHECK(cudaMemcpy(tr, trace_ptr, sizeof(tr), cudaMemcpyDeviceToHost));
                    const char * names[] = {"", "q8", "scores", "lse merged", "keys+hist", "find", "candidates", "ranked",
                                            "kept bits+scan", "cluster sync", "list"};
                    printf("  phases, cycles (block 0 / longest block):");
                    for (int m = 1; m <= 10; ++m) {
                        long long b0 = -1, mx = -1;
                        for (int r = 0; r < cluster; ++r) {
                            const long long * t = tr + r*16;
                            int prev = m - 1;
                            while (prev > 0 && t[prev] == 0) {
                                prev--;
                            }
                            const long long d = t[m] && t[prev] ? t[m] - t[prev] : -1;
                            if (r == 0) {
                                b0 = d;
                            }
                            mx = std::max(mx, d);
                        }
                        printf(" %s %lld/%lld |", names[m], b0, mx);
                    }
                    printf("\n");
                }
            }
        }
        cudaFree(d_kc); cudaFree(d_q); cudaFree(d_mask); cudaFree(d_keep); cudaFree(d_list); cudaFree(d_counts); cudaFree(d_lg); cudaFree(d_part);
    }
    printf("%s: %d failing checks\n", failures ? "FAILED" : "ok", failures);
    return failures ? 1 : 0;
}
