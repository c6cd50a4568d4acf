/* SPDX-License-Identifier: MIT */
/*
 * workloads.h - the benchmark workloads W1-W6 of WORKLOADS.md, shared by
 * every peer (bench.c, omp.c) so that they all run the same code.
 */
#ifndef PMAP_BENCH_WORKLOADS_H
#define PMAP_BENCH_WORKLOADS_H

#include <stddef.h>
#include <stdint.h>

#define W1_N 1000000            /* tiny add */
#define W2_N 2000               /* ~1 ms of CPU each */
#define W2_ITERATIONS 600000    /* calibrated once: 0.99 ms here, 2026-11 */
#define W3_N 256                /* 1 MiB buffers */
#define W3_SIZE (1u << 20)
#define W4_CALLS 100000         /* single-call round trips */
#define W6_N 20000              /* W2 at N = 20,000 items of 0.1 ms */
#define W6_ITERATIONS (W2_ITERATIONS / 10)
#define W6_W1_N 10000000        /* W1 at N = 10,000,000 */

static inline int w_add(int x, int y)
{
    return x + y;
}

/* A deterministic integer hash loop: the CPU-bound item of W2 and W6. */
static inline uint64_t w_spin(uint64_t x, long iterations)
{
    uint64_t h = x * 0x9e3779b97f4a7c15u + 1;
    for (long i = 0; i < iterations; i++) {
        h ^= h >> 31;
        h *= 0xbf58476d1ce4e5b9u;
        h ^= h >> 27;
    }
    return h;
}

/* FNV-1a, 64 bits: the checksum of W3. */
static inline uint64_t w_fnv1a(const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3u;
    return h;
}

/* OpenMP peers (omp.c), on 2 threads or on `threads`; each returns 0, or
 * -1 without OpenMP. */
int omp_w1(const int *xs, const int *ys, int *out, size_t n);
int omp_w2(const uint64_t *xs, uint64_t *out, size_t n, long iterations,
           int dynamic);
int omp_w3(unsigned char *const *bufs, uint64_t *out, size_t n, size_t size);
int omp_w2_threads(const uint64_t *xs, uint64_t *out, size_t n,
                   long iterations, int dynamic, int threads);
int omp_w3_threads(unsigned char *const *bufs, uint64_t *out, size_t n,
                   size_t size, int threads);
int omp_costs(const uint64_t *xs, uint64_t *out, size_t n, const long *cost);

#endif
