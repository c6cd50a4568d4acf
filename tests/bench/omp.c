/* SPDX-License-Identifier: MIT */
/*
 * omp.c - the OpenMP peers: the same loops, parallel over 2 threads in one
 * process (built with -fopenmp when the compiler has it); the *_threads
 * forms take the number of threads (`make bench-scale`).
 */
#include "workloads.h"

#ifdef _OPENMP
#include <omp.h>
#define PARALLEL 1
#else
#define PARALLEL 0
#endif

int omp_w1(const int *xs, const int *ys, int *out, size_t n)
{
#pragma omp parallel for num_threads(2) schedule(static)
    for (long i = 0; i < (long)n; i++)
        out[i] = w_add(xs[i], ys[i]);
    return PARALLEL - 1;
}

int omp_w2_threads(const uint64_t *xs, uint64_t *out, size_t n,
                   long iterations, int dynamic, int threads)
{
    if (dynamic) {
#pragma omp parallel for num_threads(threads) schedule(dynamic)
        for (long i = 0; i < (long)n; i++)
            out[i] = w_spin(xs[i], iterations);
    } else {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (long i = 0; i < (long)n; i++)
            out[i] = w_spin(xs[i], iterations);
    }
    (void)threads;
    return PARALLEL - 1;
}

int omp_w2(const uint64_t *xs, uint64_t *out, size_t n, long iterations,
           int dynamic)
{
    return omp_w2_threads(xs, out, n, iterations, dynamic, 2);
}

int omp_w3_threads(unsigned char *const *bufs, uint64_t *out, size_t n,
                   size_t size, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (long i = 0; i < (long)n; i++)
        out[i] = w_fnv1a(bufs[i], size);
    (void)threads;
    return PARALLEL - 1;
}

int omp_w3(unsigned char *const *bufs, uint64_t *out, size_t n, size_t size)
{
    return omp_w3_threads(bufs, out, n, size, 2);
}

int omp_costs(const uint64_t *xs, uint64_t *out, size_t n, const long *cost)
{
#pragma omp parallel for num_threads(2) schedule(dynamic)
    for (long i = 0; i < (long)n; i++)
        out[i] = w_spin(xs[i], cost[i]);
    return PARALLEL - 1;
}
