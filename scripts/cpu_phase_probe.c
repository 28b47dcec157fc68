// Issue #23: does this machine's speed change over time with nothing else running in it?
// Two threads (one per vCPU, pinned), each timing fixed slices of work, one line per slice:
//   compute: dependent FMA chains in registers (no memory traffic)
//   stream:  sums over a private 64 MiB buffer (DRAM bandwidth; the L3 is shared with whatever else runs on the host)
// plus the guest's steal time per slice. A phase where a slice takes much longer while the guest is idle and steal
// stays ~0 is a slowdown outside the VM (a busy SMT sibling or a neighbour on the host's shared L3/memory).
// Build: gcc -O2 -march=native -pthread scripts/cpu_phase_probe.c -o /tmp/cpu_phase_probe
// Run:   /tmp/cpu_phase_probe compute|stream SECONDS > out.tsv
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <immintrin.h>

#define N_THREADS 2
#define STREAM_BYTES (64u << 20)

static int    g_stream;
static double g_seconds;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static long long steal_jiffies(void) {
    FILE * f = fopen("/proc/stat", "r");
    long long v[8] = {0};
    if (f) {
        if (fscanf(f, "cpu %lld %lld %lld %lld %lld %lld %lld %lld",
                   &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) != 8) {
            v[7] = -1;
        }
        fclose(f);
    }
    return v[7];
}

static float compute_slice(void) {
    __m256 a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm256_set1_ps(1.0f + i*1e-3f);
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int it = 0; it < 2000000; it++) {
        for (int i = 0; i < 8; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);
    }
    float out[8];
    __m256 s = a[0];
    for (int i = 1; i < 8; i++) s = _mm256_add_ps(s, a[i]);
    _mm256_storeu_ps(out, s);
    return out[0];
}

static float stream_slice(const float * buf) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    const size_t n = STREAM_BYTES / sizeof(float);
    for (size_t i = 0; i < n; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(buf + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(buf + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(buf + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(buf + i + 24));
    }
    float out[8];
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    return out[0];
}

static void * worker(void * arg) {
    const int id = (int)(intptr_t) arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(id, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    float * buf = NULL;
    if (g_stream) {
        buf = aligned_alloc(64, STREAM_BYTES);
        memset(buf, 0, STREAM_BYTES);
    }
    volatile float sink = 0;
    const double t_end = now() + g_seconds;
    double t = now();
    long long st = steal_jiffies();
    while (t < t_end) {
        sink += g_stream ? stream_slice(buf) : compute_slice();
        const double t1 = now();
        const long long st1 = steal_jiffies();
        printf("%d\t%.3f\t%.3f\t%lld\n", id, t1, 1e3 * (t1 - t), st1 - st);
        fflush(stdout);
        t = t1;
        st = st1;
    }
    free(buf);
    return NULL;
}

int main(int argc, char ** argv) {
    if (argc != 3 || (strcmp(argv[1], "compute") && strcmp(argv[1], "stream"))) {
        fprintf(stderr, "usage: %s compute|stream SECONDS\n", argv[0]);
        return 2;
    }
    g_stream  = !strcmp(argv[1], "stream");
    g_seconds = atof(argv[2]);
    printf("thread\tt\tslice_ms\tsteal_jiffies\n");
    pthread_t th[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) pthread_create(&th[i], NULL, worker, (void *)(intptr_t) i);
    for (int i = 0; i < N_THREADS; i++) pthread_join(th[i], NULL);
    return 0;
}
