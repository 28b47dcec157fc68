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
        const int64_t row_bytes, const int n_head_kv) {
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

    const uint8_t * base = kc + row*(QB*BQ) + b*BQ;
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

static float f16_to_f32(uint16_t h) {
    return __half2float(*(const half *) &h);
}

int main() {
    constexpr int H = 4;
    const int n_head_kv = 8;
    const int64_t row_bytes = int64_t(n_head_kv)*QB*BQ; // a cell's K copy row: every KV head's blocks
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

    std::mt19937 rng(std::random_device{}());
    std::normal_distribution<float> nd(0.0f, 1.0f);
    int failures = 0;

    printf("| n_kv | blocks per row | cells in flight | K copy | scores written | us | GB/s of K copy |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    for (int64_t n_kv : {int64_t(32768), int64_t(131072)}) {
        // layers of K copy: enough that rotating over them leaves L2 (>= 150 MB)
        const int64_t layer_bytes = n_kv*row_bytes;
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
                        const uint8_t * blk = &kc[j*row_bytes + r*QB*BQ + bb*BQ];
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

        for (int blocks : {4, 8, 16}) {
        for (int cb : {1, 8}) {
            const auto kernel = cb == 1 ? score_q4_0_chunk<H, 1> : score_q4_0_chunk<H, 8>;
            const int64_t chunk = (n_kv + blocks - 1)/blocks;
            const size_t smem = size_t(H)*chunk*sizeof(float);
            if (smem > 200*1024) {
                printf("| %lld | %d | %d | - | - | (chunk of %lld cells needs %zu B of shared memory) | - |\n",
                       (long long) n_kv, blocks, cb, (long long) chunk, smem);
                continue;
            }
            const dim3 grid(blocks, n_head_kv);
            // check: scores written, against the reference
            CHECK(cudaMemset(d_scores, 0xFF, int64_t(n_head_kv)*H*n_kv*sizeof(float)));
            kernel<<<grid, NT, smem>>>(d_kc, d_q, d_max, d_scores, n_kv, chunk, row_bytes, n_head_kv);
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
                            n_kv, chunk, row_bytes, n_head_kv);
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
    printf("%s: %d failing checks\n", failures ? "FAILED" : "ok", failures);
    return failures ? 1 : 0;
}
