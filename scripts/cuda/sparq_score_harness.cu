// Standalone harness for SparQ's score pass on CUDA: the shipped kernel (ggml-cuda/sparq-score-kernel.cuh of the
// patched tree) against a candidate that reads the r chosen rows at memory speed (below: each thread 8 consecutive
// cells per 16-byte load, the rows of a batch loaded before they are used, the query weights in shared memory,
// float4 stores). Both are checked against a CPU reference in double on fresh random data (misaligned row strides,
// cells not a multiple of the block, several columns per ids column, ids shared or not), then timed at decode
// shapes (Llama-3.1-8B: 8 KV heads, 4 query heads each, head 128) as CUDA-graph replays, warm and cold.
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -I<tree>/ggml/include -I<tree>/ggml/src -I<tree>/ggml/src/ggml-cuda \
//        scripts/cuda/sparq_score_harness.cu -o sparq_score_harness && ./sparq_score_harness
//
// (scripts/gpu_bench.py sparq_harness does that on the lent GPU.) Exit code 1 if any check fails.

#include "common.cuh"
#include "sparq-score-kernel.cuh"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#define CHECK(...) do { cudaError_t e_ = (__VA_ARGS__); if (e_ != cudaSuccess) { \
    fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #__VA_ARGS__, cudaGetErrorString(e_)); exit(2); } } while (0)

// ---- candidate ------------------------------------------------------------------------------------------------------
#define SQ2_THREADS 128
#define SQ2_KEYS    8   // cells per thread: one 16-byte load of f16 per row
#define SQ2_BATCH   4   // rows loaded before use
#define SQ2_MAX_R   128

// grid: x = blocks of SQ2_THREADS*SQ2_KEYS cells, y = ids column j0, z = (ne2, ne3) slice; COLS: query columns per
// pass (those sharing an ids column: n_q/n_ids, 1 when each query has its own components)
template <int COLS>
static __global__ void sparq_score_v2(const char * a, const char * b, const char * ids, char * dst,
        const sparq_score_params p, const bool vec) {
    __shared__ int32_t comp_s[SQ2_MAX_R];
    __shared__ float   w_s[SQ2_MAX_R][COLS];

    const int64_t j0 = blockIdx.y;
    const int64_t i2 = blockIdx.z % p.ne2;
    const int64_t i3 = blockIdx.z / p.ne2;
    const int64_t x0 = ((int64_t) blockIdx.x*SQ2_THREADS + threadIdx.x)*SQ2_KEYS;

    ggml_cuda_pdl_sync();

    const int32_t * comp = (const int32_t *) (ids + j0*p.nb21 + i2*p.nb22 + i3*p.nb23);
    for (int i = threadIdx.x; i < p.r; i += SQ2_THREADS) {
        comp_s[i] = comp[i];
    }
    __syncthreads();

    const char * a_slice = a + i2*p.nb02 + i3*p.nb03;
    const char * b_slice = b + i2*p.nb12 + i3*p.nb13;
    const bool full = vec && x0 + SQ2_KEYS <= p.n_kv;

    for (int64_t jc = j0; jc < p.n_q; jc += p.n_ids*COLS) {
        const int64_t left = (p.n_q - jc + p.n_ids - 1)/p.n_ids;
        const int ncols = left < COLS ? (int) left : COLS;
        __syncthreads(); // the previous pass is done with w_s
        for (int t = threadIdx.x; t < p.r*COLS; t += SQ2_THREADS) {
            const int i = t / COLS;
            const int k = t % COLS;
            w_s[i][k] = k < ncols ? *(const float *) (b_slice + comp_s[i]*p.nb10 + (jc + k*p.n_ids)*p.nb11) : 0.0f;
        }
        __syncthreads();

        float acc[COLS][SQ2_KEYS] = {{0.0f}};
        for (int i0 = 0; i0 < p.r; i0 += SQ2_BATCH) {
            half2 v[SQ2_BATCH][SQ2_KEYS/2];
#pragma unroll
            for (int u = 0; u < SQ2_BATCH; ++u) {
                const int i = i0 + u;
                const half * row = (const half *) (a_slice + (i < p.r ? comp_s[i] : 0)*p.nb01);
                if (i < p.r && full) {
                    ggml_cuda_memcpy_1<16>(v[u], row + x0);
                } else {
#pragma unroll
                    for (int e = 0; e < SQ2_KEYS/2; ++e) {
                        const int64_t x = x0 + 2*e;
                        v[u][e] = make_half2(i < p.r && x     < p.n_kv ? row[x]     : half(0.0f),
                                             i < p.r && x + 1 < p.n_kv ? row[x + 1] : half(0.0f));
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < SQ2_BATCH; ++u) {
                const int i = i0 + u;
                if (i >= p.r) {
                    break; // the same for the whole block: w_s holds nothing past r
                }
#pragma unroll
                for (int e = 0; e < SQ2_KEYS/2; ++e) {
                    const float2 f = __half22float2(v[u][e]);
#pragma unroll
                    for (int k = 0; k < COLS; ++k) {
                        acc[k][2*e + 0] = fmaf(f.x, w_s[i][k], acc[k][2*e + 0]);
                        acc[k][2*e + 1] = fmaf(f.y, w_s[i][k], acc[k][2*e + 1]);
                    }
                }
            }
        }

#pragma unroll
        for (int k = 0; k < COLS; ++k) {
            if (k >= ncols) {
                break;
            }
            float * out = (float *) (dst + (jc + k*p.n_ids)*p.nb1 + i2*p.nb2 + i3*p.nb3);
            if (full && p.nb1 % 16 == 0 && (uintptr_t) dst % 16 == 0) {
                ggml_cuda_memcpy_1<16>(out + x0,     acc[k] + 0);
                ggml_cuda_memcpy_1<16>(out + x0 + 4, acc[k] + 4);
            } else {
#pragma unroll
                for (int e = 0; e < SQ2_KEYS; ++e) {
                    if (x0 + e < p.n_kv) {
                        out[x0 + e] = acc[k][e];
                    }
                }
            }
        }
    }
}

// ---- problems -------------------------------------------------------------------------------------------------------
struct problem {
    int64_t n_kv, d, n_q, ne2, r, n_ids, row; // row: elements per row of a (>= n_kv: a view of a wider buffer)
    std::vector<half>    a;   // [ne2][d][row]
    std::vector<float>   b;   // [ne2][n_q][d]
    std::vector<int32_t> ids; // [ne2][n_ids][r]
};

static problem make(int64_t n_kv, int64_t d, int64_t n_q, int64_t ne2, int64_t r, int64_t n_ids, int64_t pad,
                    std::mt19937 & rng) {
    problem pr{n_kv, d, n_q, ne2, r, n_ids, n_kv + pad, {}, {}, {}};
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    pr.a.resize(size_t(ne2)*d*pr.row);
    for (auto & x : pr.a) {
        x = __float2half(u(rng));
    }
    pr.b.resize(size_t(ne2)*n_q*d);
    for (auto & x : pr.b) {
        x = u(rng);
    }
    pr.ids.resize(size_t(ne2)*n_ids*r);
    std::vector<int32_t> perm(d);
    for (int64_t s = 0; s < ne2; ++s) {
        for (int64_t j = 0; j < n_ids; ++j) {
            for (int64_t c = 0; c < d; ++c) {
                perm[c] = (int32_t) c;
            }
            std::shuffle(perm.begin(), perm.end(), rng);
            std::copy(perm.begin(), perm.begin() + r, pr.ids.begin() + (s*n_ids + j)*r);
        }
    }
    return pr;
}

static std::vector<double> reference(const problem & pr) {
    std::vector<double> out(size_t(pr.ne2)*pr.n_q*pr.n_kv);
    for (int64_t s = 0; s < pr.ne2; ++s) {
        for (int64_t j = 0; j < pr.n_q; ++j) {
            const int32_t * comp = pr.ids.data() + (s*pr.n_ids + j % pr.n_ids)*pr.r;
            for (int64_t x = 0; x < pr.n_kv; ++x) {
                double acc = 0.0;
                for (int64_t i = 0; i < pr.r; ++i) {
                    acc += double(pr.b[(s*pr.n_q + j)*pr.d + comp[i]]) *
                           double(__half2float(pr.a[(s*pr.d + comp[i])*pr.row + x]));
                }
                out[(s*pr.n_q + j)*pr.n_kv + x] = acc;
            }
        }
    }
    return out;
}

struct device_problem {
    char * a = nullptr, * b = nullptr, * ids = nullptr, * dst = nullptr;
    sparq_score_params p{};
};

static device_problem upload(const problem & pr, const int layers, char * a_shared = nullptr) {
    device_problem dp;
    const size_t a_bytes = pr.a.size()*sizeof(half);
    if (a_shared) {
        dp.a = a_shared;
    } else {
        CHECK(cudaMalloc(&dp.a, a_bytes*layers));
        for (int l = 0; l < layers; ++l) {
            CHECK(cudaMemcpy(dp.a + a_bytes*l, pr.a.data(), a_bytes, cudaMemcpyHostToDevice));
        }
    }
    CHECK(cudaMalloc(&dp.b, pr.b.size()*sizeof(float)));
    CHECK(cudaMemcpy(dp.b, pr.b.data(), pr.b.size()*sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMalloc(&dp.ids, pr.ids.size()*sizeof(int32_t)));
    CHECK(cudaMemcpy(dp.ids, pr.ids.data(), pr.ids.size()*sizeof(int32_t), cudaMemcpyHostToDevice));
    CHECK(cudaMalloc(&dp.dst, size_t(pr.ne2)*pr.n_q*pr.n_kv*sizeof(float)));
    sparq_score_params & p = dp.p;
    p.n_kv = pr.n_kv; p.n_q = pr.n_q; p.r = pr.r; p.n_ids = pr.n_ids; p.ne2 = pr.ne2;
    p.nb01 = pr.row*sizeof(half); p.nb02 = p.nb01*pr.d; p.nb03 = p.nb02*pr.ne2;
    p.nb10 = sizeof(float); p.nb11 = pr.d*sizeof(float); p.nb12 = p.nb11*pr.n_q; p.nb13 = p.nb12*pr.ne2;
    p.nb21 = pr.r*sizeof(int32_t); p.nb22 = p.nb21*pr.n_ids; p.nb23 = p.nb22*pr.ne2;
    p.nb1 = pr.n_kv*sizeof(float); p.nb2 = p.nb1*pr.n_q; p.nb3 = p.nb2*pr.ne2;
    return dp;
}

static void launch(const int v, const device_problem & dp, const char * a, cudaStream_t stream) {
    const sparq_score_params & p = dp.p;
    if (p.r > SQ2_MAX_R) {
        fprintf(stderr, "r > %d\n", SQ2_MAX_R);
        exit(2);
    }
    if (v == 1) {
        const int64_t per_block = SPARQ_SCORE_BLOCK_SIZE*SPARQ_SCORE_KEYS;
        const dim3 grid((p.n_kv + per_block - 1)/per_block, p.n_ids, p.ne2);
        sparq_score<half><<<grid, SPARQ_SCORE_BLOCK_SIZE, p.r*sizeof(int32_t), stream>>>(a, dp.b, dp.ids, dp.dst, p);
    } else {
        const int64_t per_block = SQ2_THREADS*SQ2_KEYS;
        const bool vec = p.nb01 % 16 == 0 && p.nb02 % 16 == 0 && (uintptr_t) a % 16 == 0;
        const dim3 grid((p.n_kv + per_block - 1)/per_block, p.n_ids, p.ne2);
        const int64_t per_ids = (p.n_q + p.n_ids - 1)/p.n_ids;
        if (per_ids <= 1) {
            sparq_score_v2<1><<<grid, SQ2_THREADS, 0, stream>>>(a, dp.b, dp.ids, dp.dst, p, vec);
        } else if (per_ids <= 4) {
            sparq_score_v2<4><<<grid, SQ2_THREADS, 0, stream>>>(a, dp.b, dp.ids, dp.dst, p, vec);
        } else {
            sparq_score_v2<8><<<grid, SQ2_THREADS, 0, stream>>>(a, dp.b, dp.ids, dp.dst, p, vec);
        }
    }
}

static void release(device_problem & dp, bool own_a) {
    if (own_a) {
        CHECK(cudaFree(dp.a));
    }
    CHECK(cudaFree(dp.b)); CHECK(cudaFree(dp.ids)); CHECK(cudaFree(dp.dst));
}

int main() {
    std::random_device rd;
    const unsigned seed = rd();
    printf("seed %u\n", seed);
    std::mt19937 rng(seed);
    int failed = 0;

    // checks: n_kv (odd, below a block, several blocks), d, n_q, ne2, r, n_ids, row padding (13: rows misaligned)
    const int64_t cases[][7] = {
        {  300,  64, 3, 3, 16, 3, 13}, { 1000, 128, 4, 8, 16, 4,  0}, { 1000, 128, 4, 8, 16, 1,  0},
        { 4099, 128, 4, 2,  8, 4,  0}, { 4096, 128, 4, 2,  8, 2, 13}, {   17,  64, 1, 1,  1, 1,  0},
        { 2048,  64, 9, 1, 64, 3,  0}, { 8192, 128, 32, 1, 16, 32, 0}, { 5000, 256, 8, 2, 32, 1,  3},
    };
    for (const auto & c : cases) {
        problem pr = make(c[0], c[1], c[2], c[3], c[4], c[5], c[6], rng);
        const std::vector<double> ref = reference(pr);
        device_problem dp = upload(pr, 1);
        for (int v = 1; v <= 2; ++v) {
            CHECK(cudaMemset(dp.dst, 0xFF, ref.size()*sizeof(float))); // NaN: a cell not written shows
            launch(v, dp, dp.a, 0);
            CHECK(cudaGetLastError());
            CHECK(cudaDeviceSynchronize());
            std::vector<float> got(ref.size());
            CHECK(cudaMemcpy(got.data(), dp.dst, got.size()*sizeof(float), cudaMemcpyDeviceToHost));
            double max_err = 0.0;
            for (size_t i = 0; i < ref.size(); ++i) {
                const double e = std::fabs(double(got[i]) - ref[i]);
                max_err = std::isfinite(got[i]) ? std::max(max_err, e) : INFINITY;
            }
            const bool ok = max_err <= 1e-4*std::sqrt(double(pr.r));
            failed += !ok;
            printf("  v%d n_kv=%-5lld d=%-3lld n_q=%-2lld ne2=%lld r=%-2lld n_ids=%-2lld pad=%-2lld: max abs err %.2e %s\n",
                v, (long long) c[0], (long long) c[1], (long long) c[2], (long long) c[3], (long long) c[4],
                (long long) c[5], (long long) c[6], max_err, ok ? "ok" : "FAIL");
        }
        release(dp, true);
    }

    // times: median of 15 graph replays of 20 launches, warm (one a) and cold (a rotating over layers past L2)
    printf("\n| n_kv | r | n_ids | kernel | warm us | cold us | GB/s cold (rows read + scores written) |\n"
           "| --- | --- | --- | --- | ---: | ---: | ---: |\n");
    cudaStream_t stream;
    CHECK(cudaStreamCreate(&stream));
    for (int64_t n_kv : {32768, 131072}) {
        for (int64_t r : {8, 16}) {
            for (int64_t n_ids : {4, 1}) {
                problem pr = make(n_kv, 128, 4, 8, r, n_ids, 0, rng);
                const size_t a_bytes = pr.a.size()*sizeof(half);
                const int layers = (int) std::max<size_t>(2, (400u << 20)/a_bytes + 1);
                device_problem dp = upload(pr, layers);
                const double bytes = double(8*n_ids*r*n_kv*2) + double(8*4*n_kv*4);
                for (int v = 1; v <= 2; ++v) {
                    double us[2];
                    for (int cold = 0; cold <= 1; ++cold) {
                        cudaGraph_t graph;
                        cudaGraphExec_t exec;
                        CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
                        for (int l = 0; l < 20; ++l) {
                            launch(v, dp, dp.a + (cold ? a_bytes*(l % layers) : 0), stream);
                        }
                        CHECK(cudaStreamEndCapture(stream, &graph));
                        CHECK(cudaGraphInstantiate(&exec, graph, 0));
                        std::vector<float> t;
                        cudaEvent_t e0, e1;
                        CHECK(cudaEventCreate(&e0)); CHECK(cudaEventCreate(&e1));
                        for (int rep = 0; rep < 16; ++rep) {
                            CHECK(cudaEventRecord(e0, stream));
                            CHECK(cudaGraphLaunch(exec, stream));
                            CHECK(cudaEventRecord(e1, stream));
                            CHECK(cudaEventSynchronize(e1));
                            float ms;
                            CHECK(cudaEventElapsedTime(&ms, e0, e1));
                            if (rep > 0) {
                                t.push_back(ms*1000.0f/20);
                            }
                        }
                        std::sort(t.begin(), t.end());
                        us[cold] = t[t.size()/2];
                        CHECK(cudaGraphExecDestroy(exec)); CHECK(cudaGraphDestroy(graph));
                        CHECK(cudaEventDestroy(e0)); CHECK(cudaEventDestroy(e1));
                    }
                    printf("| %lld | %lld | %lld | %s | %.1f | %.1f | %.0f |\n", (long long) n_kv, (long long) r,
                        (long long) n_ids, v == 1 ? "shipped" : "candidate", us[0], us[1], bytes/(us[1]*1e3));
                }
                release(dp, true);
            }
        }
    }
    printf("\n%s: %d failing checks\n", failed ? "FAIL" : "ok", failed);
    return failed ? 1 : 0;
}
