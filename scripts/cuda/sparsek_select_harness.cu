// Standalone harness for the Sparse-K decode selection kernel (ggml-cuda/sparsek-cluster.cuh of the patched tree):
// checks it against a plain CPU reference of the rule on fresh random data, then times it at decode shapes. Every
// check also has the kernel write sparse flash attention's gather lists (the kept cells ascending, -1 padded to the
// bound of top_k + window + sinks, then the counts) and checks them against the mask it wrote; the times are given
// with and without the lists.
//
//   nvcc -O2 -std=c++17 -arch=sm_90 -I<tree>/ggml/include -I<tree>/ggml/src -I<tree>/ggml/src/ggml-cuda \
//        scripts/cuda/sparsek_select_harness.cu -o sparsek_select_harness && ./sparsek_select_harness
//
// (scripts/gpu_bench.py harness does exactly that on the lent GPU.) Exit code 1 if any check fails.

#include "common.cuh"
#include "sparsek-cluster.cuh"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#define CHECK(...) do { cudaError_t e_ = (__VA_ARGS__); if (e_ != cudaSuccess) { \
    fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #__VA_ARGS__, cudaGetErrorString(e_)); exit(2); } } while (0)

enum mode_t_ { HEAD = 0, GROUP = 1, TOKEN = 2 };
static const char * mode_name(int m) { return m == HEAD ? "head" : m == GROUP ? "group" : "token"; }

struct shape {
    int64_t n_kv;
    int     n_head;
    int     n_head_kv;
    int     mode;
    int     top_k;
    int     ties;    // scores rounded to this many distinct values (0: continuous)
    float   holes;   // share of cells the base mask forbids at random
    int     n_valid; // cells past this one are forbidden (a cache not yet full); -1: all
    bool    keep;    // window of 64 + 4 sinks forced
    float   softcap;
};

struct problem {
    shape s;
    int64_t n_sets, heads_per_set, n_out;
    std::vector<float> kq;     // [n_head][n_kv] (one token)
    std::vector<half>  mask;   // [n_kv]
    std::vector<half>  keep;   // [n_kv] or empty
};

static problem make_problem(const shape & s, std::mt19937 & rng) {
    problem p;
    p.s = s;
    p.heads_per_set = s.mode == HEAD ? 1 : s.mode == GROUP ? s.n_head/s.n_head_kv : s.n_head;
    p.n_sets        = s.n_head/p.heads_per_set;
    p.n_out         = p.n_sets; // one row per set (ggml_sparsek_mask_sets), as decode's flash attention takes it
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_real_distribution<float> ud(0.0f, 1.0f);
    p.kq.resize(size_t(s.n_head)*s.n_kv);
    for (int h = 0; h < s.n_head; ++h) {
        // heads of different scale and offset, as real models have
        const float scale = 4.0f + 8.0f*ud(rng), offset = 10.0f*nd(rng);
        for (int64_t j = 0; j < s.n_kv; ++j) {
            float v = offset + scale*nd(rng);
            if (s.ties > 0) {
                v = std::floor(ud(rng)*s.ties);
            }
            p.kq[h*s.n_kv + j] = v;
        }
    }
    p.mask.resize(s.n_kv);
    const int64_t n_valid = s.n_valid < 0 ? s.n_kv : s.n_valid;
    for (int64_t j = 0; j < s.n_kv; ++j) {
        const bool allowed = j < n_valid && ud(rng) >= s.holes;
        p.mask[j] = __float2half(allowed ? 0.0f : -INFINITY);
    }
    if (s.keep) {
        p.keep.assign(s.n_kv, __float2half(-INFINITY));
        for (int64_t j = 0; j < std::min<int64_t>(4, n_valid); ++j) {
            p.keep[j] = __float2half(0.0f);
        }
        for (int64_t j = std::max<int64_t>(0, n_valid - 64); j < n_valid; ++j) {
            p.keep[j] = __float2half(0.0f);
        }
    }
    return p;
}

static double logit(double v, const problem & p, float scale) {
    return p.s.softcap > 0.0f ? p.s.softcap*std::tanh(scale*v/p.s.softcap) : scale*v;
}

// the kept set of each selection row by the plain rule (double precision); the pooled score of each cell per set,
// for the tolerance of pooled modes
static void reference(const problem & p, float scale, std::vector<std::vector<char>> & kept,
                      std::vector<std::vector<double>> & score, std::vector<double> & thr_score) {
    const int64_t n_kv = p.s.n_kv;
    kept.assign(p.n_sets, std::vector<char>(n_kv, 0));
    score.assign(p.n_sets, std::vector<double>(n_kv, -INFINITY));
    thr_score.assign(p.n_sets, -INFINITY);
    for (int64_t is = 0; is < p.n_sets; ++is) {
        std::vector<double> lse(p.heads_per_set, 0.0);
        for (int64_t hh = 0; hh < p.heads_per_set && p.heads_per_set > 1; ++hh) {
            const float * row = p.kq.data() + (is*p.heads_per_set + hh)*n_kv;
            double m = -INFINITY;
            for (int64_t j = 0; j < n_kv; ++j) {
                if (std::isfinite(__half2float(p.mask[j]))) {
                    m = std::max(m, logit(row[j], p, scale));
                }
            }
            double sum = 0.0;
            for (int64_t j = 0; j < n_kv; ++j) {
                if (std::isfinite(__half2float(p.mask[j]))) {
                    sum += std::exp(logit(row[j], p, scale) - m);
                }
            }
            lse[hh] = m + std::log(sum);
        }
        std::vector<int64_t> idx;
        for (int64_t j = 0; j < n_kv; ++j) {
            if (!std::isfinite(__half2float(p.mask[j]))) {
                continue;
            }
            double s = -INFINITY;
            for (int64_t hh = 0; hh < p.heads_per_set; ++hh) {
                const float v = p.kq[(is*p.heads_per_set + hh)*n_kv + j];
                s = std::max(s, p.heads_per_set == 1 ? double(v) : logit(v, p, scale) - lse[hh]);
            }
            score[is][j] = s;
            idx.push_back(j);
        }
        if (int64_t(idx.size()) > p.s.top_k) {
            std::nth_element(idx.begin(), idx.begin() + (p.s.top_k - 1), idx.end(), [&](int64_t a, int64_t b) {
                return score[is][a] != score[is][b] ? score[is][a] > score[is][b] : a < b;
            });
            thr_score[is] = score[is][idx[p.s.top_k - 1]];
            idx.resize(p.s.top_k);
        }
        for (int64_t j : idx) {
            kept[is][j] = 1;
        }
        for (int64_t j = 0; j < n_kv && !p.keep.empty(); ++j) {
            if (std::isfinite(__half2float(p.mask[j])) && std::isfinite(__half2float(p.keep[j]))) {
                kept[is][j] = 1;
            }
        }
    }
}

struct device_problem {
    float * kq = nullptr;
    half  * mask = nullptr;
    half  * keep = nullptr;
    half  * dst = nullptr;
    int32_t * list = nullptr; // [n_rows][list_cap] then [n_rows] counts
    sparsek_params prm;
    int64_t n_rows;
};

static device_problem upload(const problem & p, float scale) {
    device_problem d;
    const int64_t n_kv = p.s.n_kv;
    CHECK(cudaMalloc(&d.kq, p.kq.size()*sizeof(float)));
    CHECK(cudaMemcpy(d.kq, p.kq.data(), p.kq.size()*sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMalloc(&d.mask, n_kv*sizeof(half)));
    CHECK(cudaMemcpy(d.mask, p.mask.data(), n_kv*sizeof(half), cudaMemcpyHostToDevice));
    if (!p.keep.empty()) {
        CHECK(cudaMalloc(&d.keep, n_kv*sizeof(half)));
        CHECK(cudaMemcpy(d.keep, p.keep.data(), n_kv*sizeof(half), cudaMemcpyHostToDevice));
    }
    CHECK(cudaMalloc(&d.dst, p.n_out*n_kv*sizeof(half)));
    sparsek_params & q = d.prm;
    q = {};
    q.n_kv = n_kv; q.n_tokens = 1; q.n_head = p.s.n_head; q.n_sets = p.n_sets; q.heads_per_set = p.heads_per_set;
    q.s_kq1 = n_kv; q.s_kq2 = n_kv; q.s_kq3 = n_kv*p.s.n_head;
    q.s_m1 = n_kv; q.s_m3 = n_kv; q.mask_ne3 = 1;
    q.s_d1 = n_kv; q.s_d2 = n_kv; q.s_d3 = n_kv*p.n_out;
    q.top_k = p.s.top_k; q.scale = scale; q.softcap = p.s.softcap; q.rows_per_set = 1;
    q.list_cap = std::min<int64_t>(n_kv, p.s.top_k + (p.s.keep ? 68 : 0)); // as llama's graph bounds it
    d.n_rows = p.n_sets;
    CHECK(cudaMalloc(&d.list, d.n_rows*(q.list_cap + 1)*sizeof(int32_t)));
    return d;
}

static void release(device_problem & d) {
    cudaFree(d.kq); cudaFree(d.mask); cudaFree(d.keep); cudaFree(d.dst); cudaFree(d.list);
}

#ifdef SPARSEK_CL_TRACE
static void * sparsek_cl_trace_ptr() {
    void * ptr;
    CHECK(cudaGetSymbolAddress(&ptr, sparsek_cl_trace));
    return ptr;
}
#endif

static std::array<int, 5> g_cap_small, g_cap_large;

// cluster size for a problem (forced: a cap on the size; 0 = the kernel's own choice)
static int pick_cluster(const device_problem & d, int forced) {
    return sparsek_cluster_size(d.n_rows, d.prm.n_kv, d.prm.heads_per_set, g_cap_small, g_cap_large,
                                forced > 0 ? forced : SPARSEK_CL_MAX_SIZE);
}

static void launch(device_problem & d, int cluster, cudaStream_t stream, bool with_list = true) {
    d.prm.chunk    = (d.prm.n_kv + cluster - 1)/cluster;
    d.prm.n_chunks = cluster;
    CHECK(sparsek_select_cluster_launch<half, half>(d.kq, d.mask, d.keep, d.dst, with_list ? d.list : nullptr, d.prm,
        d.n_rows, cluster, false, stream));
}

// returns the number of unexplained mismatches
static int64_t check(const shape & s, std::mt19937 & rng, int forced_cluster) {
    const float scale = 1.0f/std::sqrt(128.0f);
    problem p = make_problem(s, rng);
    device_problem d = upload(p, scale);
    const int cluster = pick_cluster(d, forced_cluster);
    if (cluster == 0) {
        printf("  skip (no cluster path for this shape)\n");
        release(d);
        return 0;
    }
    CHECK(cudaMemset(d.dst, 0x7F, p.n_out*s.n_kv*sizeof(half))); // poison: NaN
    const int64_t cap = d.prm.list_cap;
    CHECK(cudaMemset(d.list, 0x7F, d.n_rows*(cap + 1)*sizeof(int32_t)));
    launch(d, cluster, 0);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    std::vector<half> out(p.n_out*s.n_kv);
    CHECK(cudaMemcpy(out.data(), d.dst, out.size()*sizeof(half), cudaMemcpyDeviceToHost));
    std::vector<int32_t> lists(d.n_rows*(cap + 1));
    CHECK(cudaMemcpy(lists.data(), d.list, lists.size()*sizeof(int32_t), cudaMemcpyDeviceToHost));

    // the lists: exactly the finite cells of each row of the mask written, ascending, -1 padded, count after the lists
    int64_t bad_list = 0;
    for (int64_t r = 0; r < d.n_rows; ++r) {
        std::vector<int32_t> want;
        for (int64_t j = 0; j < s.n_kv; ++j) {
            if (std::isfinite(__half2float(out[r*s.n_kv + j]))) {
                want.push_back(int32_t(j));
            }
        }
        const int64_t n = std::min<int64_t>(int64_t(want.size()), cap);
        bad_list += int64_t(want.size()) > cap; // the bound must hold
        bad_list += lists[d.n_rows*cap + r] != n;
        for (int64_t i = 0; i < cap; ++i) {
            bad_list += lists[r*cap + i] != (i < n ? want[i] : -1);
        }
    }

    std::vector<std::vector<char>> kept;
    std::vector<std::vector<double>> score;
    std::vector<double> thr;
    reference(p, scale, kept, score, thr);

    int64_t bad = 0, near = 0, unwritten = 0;
    for (int64_t h = 0; h < p.n_out; ++h) {
        const int64_t is = h;
        for (int64_t j = 0; j < s.n_kv; ++j) {
            const float v = __half2float(out[h*s.n_kv + j]);
            if (std::isnan(v)) {
                unwritten++;
                continue;
            }
            const bool got = std::isfinite(v);
            if (got != bool(kept[is][j])) {
                // pooled scores are float sums on the GPU: only cells within rounding of the threshold may differ
                const double tol = 1e-5*std::max(1.0, std::fabs(thr[is]));
                if (p.heads_per_set > 1 && std::fabs(score[is][j] - thr[is]) <= tol) {
                    near++;
                } else {
                    bad++;
                }
            } else if (got && v != __half2float(p.mask[j])) {
                bad++;
            }
        }
    }
    printf("  n_kv=%-6lld %-5s heads=%d/%d K=%-4d ties=%d holes=%.2f valid=%lld keep=%d softcap=%.0f cluster=%2d: "
           "%s (mismatch %lld, near-threshold %lld, unwritten %lld, list errors %lld)\n",
           (long long) s.n_kv, mode_name(s.mode), s.n_head, s.n_head_kv, s.top_k, s.ties, s.holes,
           (long long) (s.n_valid < 0 ? s.n_kv : s.n_valid), s.keep, s.softcap, cluster,
           bad + unwritten + bad_list == 0 ? "ok" : "FAIL", (long long) bad, (long long) near, (long long) unwritten,
           (long long) bad_list);
    release(d);
    return bad + unwritten + bad_list;
}

// microseconds per launch: a CUDA graph of `per_graph` launches, replayed, median over replays
static double time_us(const shape & s, std::mt19937 & rng, int forced_cluster, int & cluster_out, bool with_list) {
    problem p = make_problem(s, rng);
    device_problem d = upload(p, 1.0f/std::sqrt(128.0f));
    const int cluster = pick_cluster(d, forced_cluster);
    cluster_out = cluster;
    if (cluster == 0) {
        release(d);
        return NAN;
    }
    cudaStream_t stream;
    CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    launch(d, cluster, stream, with_list); // sets the function attributes outside the capture
    CHECK(cudaStreamSynchronize(stream));
    // warm-up: ~200 ms of launches, so that the clocks have ramped up
    for (auto t0 = std::chrono::steady_clock::now(); std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(200);) {
        for (int i = 0; i < 100; ++i) {
            launch(d, cluster, stream, with_list);
        }
        CHECK(cudaStreamSynchronize(stream));
    }
    const int per_graph = 20;
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < per_graph; ++i) {
        launch(d, cluster, stream, with_list);
    }
    CHECK(cudaStreamEndCapture(stream, &graph));
    CHECK(cudaGraphInstantiate(&exec, graph, 0));
    cudaEvent_t e0, e1;
    CHECK(cudaEventCreate(&e0));
    CHECK(cudaEventCreate(&e1));
    std::vector<float> us;
    for (int rep = 0; rep < 25; ++rep) {
        CHECK(cudaEventRecord(e0, stream));
        CHECK(cudaGraphLaunch(exec, stream));
        CHECK(cudaEventRecord(e1, stream));
        CHECK(cudaEventSynchronize(e1));
        float ms;
        CHECK(cudaEventElapsedTime(&ms, e0, e1));
        us.push_back(1000.0f*ms/per_graph);
    }
    std::sort(us.begin(), us.end());
#ifdef SPARSEK_CL_TRACE
    // phase clocks of block 0 of row 0 in the last launch (SM cycles since the first mark)
    long long tr[16];
    CHECK(cudaMemcpyFromSymbol(tr, sparsek_cl_trace, sizeof(tr)));
    printf("trace (cycles from mark 0):");
    for (int i = 1; i < 14; ++i) {
        printf(" %d:%lld", i, tr[i] - tr[0]);
    }
    const long long last = std::max(tr[12], tr[13]);
    printf(" | %.0f MHz over %.1f us\n", double(last - tr[0])/double(tr[15] - tr[14])*1000.0, (tr[15] - tr[14])/1000.0);
    CHECK(cudaMemset(sparsek_cl_trace_ptr(), 0, sizeof(tr)));
#endif
    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphDestroy(graph));
    CHECK(cudaStreamDestroy(stream));
    release(d);
    return us[us.size()/2];
}

int main(int argc, char ** argv) {
    const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
    int dev = 0;
    CHECK(cudaSetDevice(dev));
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, dev));
    cudaFuncAttributes fa;
    CHECK(cudaFuncGetAttributes(&fa, (const void *) sparsek_select_cluster<half, half>));
    g_cap_small = sparsek_cluster_capacity<half, half>(SPARSEK_CL_SMEM_SMALL);
    g_cap_large = sparsek_cluster_capacity<half, half>(SPARSEK_CL_SMEM_LARGE);
    printf("device: %s, %d SMs, %zu B shared memory per block, kernel: %d registers, %zu B static shared memory; "
           "clusters of 1/2/4/8/16 blocks at once: %d/%d/%d/%d/%d (80 KiB dynamic), %d/%d/%d/%d/%d (176 KiB)\n",
           prop.name, prop.multiProcessorCount, prop.sharedMemPerBlockOptin, fa.numRegs, fa.sharedSizeBytes,
           g_cap_small[0], g_cap_small[1], g_cap_small[2], g_cap_small[3], g_cap_small[4],
           g_cap_large[0], g_cap_large[1], g_cap_large[2], g_cap_large[3], g_cap_large[4]);

    std::mt19937 rng(std::random_device{}());
    int64_t failures = 0;
    printf("checks against the CPU reference (fresh random data):\n");
    const std::vector<shape> checks = {
        // n_kv, heads, kv heads, mode, K, ties, holes, valid, keep, softcap
        {  1000, 32, 8, HEAD,  64,  0, 0.1f,   -1, false, 0.0f},
        {  4097, 32, 8, GROUP, 256, 0, 0.1f, 3000, true,  0.0f},
        {  4097, 32, 8, TOKEN, 256, 0, 0.1f,   -1, true,  0.0f},
        { 32768, 32, 8, GROUP, 1024, 0, 0.0f,  -1, false, 0.0f},
        { 32768, 32, 8, GROUP, 1024, 0, 0.05f, 30000, true, 30.0f},
        { 32768, 32, 8, HEAD,  1024, 0, 0.05f, -1, true,  0.0f},
        { 32768, 32, 8, TOKEN, 1024, 0, 0.05f, -1, false, 0.0f},
        { 32768, 32, 8, HEAD,  1024, 3, 0.0f,  -1, false, 0.0f},  // ties spanning every block
        { 32768, 32, 8, GROUP, 1000, 7, 0.3f,  -1, true,  0.0f},  // ties, pooled
        { 32768, 32, 8, HEAD,  4096, 0, 0.9f,  -1, false, 0.0f},  // fewer allowed cells than K: copied
        { 65536,  9, 3, GROUP, 128, 0, 0.0f,   -1, true,  0.0f},  // SmolLM2's heads
        {131072, 32, 8, GROUP, 4096, 0, 0.0f,  -1, false, 0.0f},
        {131072, 32, 8, HEAD,  4096, 5, 0.0f,  -1, false, 0.0f},
        {131072, 32, 8, TOKEN, 4096, 0, 0.01f, 131000, true, 0.0f},
    };
    for (const shape & s : checks) {
        for (int forced : {0, 2}) {
            failures += check(s, rng, forced);
        }
    }

    printf("\ntimes per launch (us, median of 25 graph replays of 20 launches; one decoded token, 32 heads, 8 KV heads):\n");
    printf("| n_kv | K | mode | cluster | us, mask only | us, mask + gather lists |\n| --- | --- | --- | --- | --- | --- |\n");
    for (int64_t n_kv : {32768, 131072}) {
        const int k = n_kv == 32768 ? 1024 : 4096;
        for (int mode : {GROUP, HEAD, TOKEN}) {
            for (int forced : quick ? std::vector<int>{0} : std::vector<int>{0, 8}) {
                const shape s = {n_kv, 32, 8, mode, k, 0, 0.0f, -1, false, 0.0f};
                int cluster;
                const double us      = time_us(s, rng, forced, cluster, false);
                const double us_list = time_us(s, rng, forced, cluster, true);
                printf("| %lld | %d | %s | %d%s | %.1f | %.1f |\n", (long long) n_kv, k, mode_name(mode), cluster,
                       forced ? " (capped)" : "", us, us_list);
            }
        }
    }
    printf("\n%s: %lld failing checks\n", failures ? "FAIL" : "ok", (long long) failures);
    return failures ? 1 : 0;
}
