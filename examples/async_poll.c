/* SPDX-License-Identifier: MIT */
/*
 * async_poll.c - three maps running in the background while the program's
 * own poll loop does other work (here, a heartbeat every 20 ms): the pool's
 * descriptor, pool_fd, sits in the loop beside the program's own; when it
 * is readable, or when pool_poll asked to be called back, pool_poll moves
 * the maps along.  Events go to stderr, the results to stdout.
 */
#include <pmap.h>

#include <poll.h>
#include <stdio.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static long primes_in(long block)   /* primes in [block*10000, +10000) */
{
    long count = 0;
    for (long n = block * 10000; n < (block + 1) * 10000; n++) {
        int prime = n > 1;
        for (long d = 2; d * d <= n && prime; d++)
            prime = n % d != 0;
        count += prime;
    }
    return count;
}
PMAP_EXPORT(primes_in, long, long);

static long collatz(long n)         /* steps to reach 1 */
{
    long steps = 0;
    for (unsigned long x = (unsigned long)n; x > 1; steps++)
        x = x % 2 ? 3 * x + 1 : x / 2;
    return steps;
}
PMAP_EXPORT(collatz, long, long);

enum { BLOCKS = 400, STARTS = 1000000, SQUARES = 100000 };
static long blocks[BLOCKS], primes[BLOCKS], starts[STARTS], steps[STARTS];
static long xs[SQUARES], cubes[SQUARES];

static long cube(long x)
{
    return x * x * x;
}
PMAP_EXPORT(cube, long, long);

int main(void)
{
    for (long i = 0; i < STARTS; i++)
        starts[i] = i + 1;
    for (long i = 0; i < BLOCKS; i++)
        blocks[i] = i;
    for (long i = 0; i < SQUARES; i++)
        xs[i] = i;
    pool_t *pool = pool_create(0);
    if (pool == NULL)
        return 1;
    const char *names[3] = {"primes", "collatz", "cubes"};
    pmap_job_t *job[3];
    if (pool_map_async(pool, NULL, &job[0], primes_in, BLOCKS, primes,
                       blocks) < 0 ||
        pool_map_async(pool, NULL, &job[1], collatz, STARTS, steps,
                       starts) < 0 ||
        pool_map_async(pool, NULL, &job[2], cube, SQUARES, cubes, xs) < 0)
        return 1;

    int fd = pool_fd(pool), running = 3, beats = 0;
    double wake = 0, beat = now() + 0.02;
    while (running > 0) {
        /* Wait for the pool, the next heartbeat, or pool_poll's wake. */
        struct pollfd p = {fd, POLLIN, 0};
        double until = beat - now();
        if (wake >= 0 && wake < until)
            until = wake;
        poll(&p, fd >= 0 ? 1 : 0, until > 0 ? (int)(until * 1000) + 1 : 0);
        if (now() >= beat) {
            beats++;    /* the program's own work goes here */
            beat += 0.02;
        }
        int finished = pool_poll(pool, &wake);
        if (finished < 0)
            return 1;
        for (int j = 0; j < 3 && finished > 0; j++) {
            if (job[j] != NULL && pmap_job_wait(job[j], 0) != PMAP_ETIMEDOUT) {
                fprintf(stderr, "%s finished after %d heartbeats\n",
                        names[j], beats);
                pmap_job_free(job[j]);
                job[j] = NULL;
                running--;
            }
        }
    }

    long total = 0, longest = 0, from = 0, sum = 0;
    for (long i = 0; i < BLOCKS; i++)
        total += primes[i];
    for (long i = 0; i < STARTS; i++) {
        if (steps[i] > longest) {
            longest = steps[i];
            from = starts[i];
        }
    }
    for (long i = 0; i < SQUARES; i++)
        sum += cubes[i] % 1000;
    printf("primes below %d: %ld\n", BLOCKS * 10000, total);
    printf("longest Collatz chain from 1..%d: %ld steps, from %ld\n", STARTS,
           longest, from);
    printf("sum of the last three digits of the cubes of 0..%d: %ld\n",
           SQUARES - 1, sum);
    pool_destroy(pool);
    return 0;
}
