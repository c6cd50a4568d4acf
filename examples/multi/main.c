/* SPDX-License-Identifier: MIT */
/*
 * main.c - a program of three files (main.c, stats.c, stats.h): it maps
 * functions that another file defines and exports, through the header
 * that declares them.
 *
 *     cc -Iexamples/multi examples/multi/main.c examples/multi/stats.c -lpmap
 */
#include "stats.h"

#include <stdio.h>

enum { N = 1000 };

int main(void)
{
    pool_t *pool = pool_create(0);
    if (pool == NULL) {
        perror("pool_create");
        return 1;
    }
    static long xs[N];
    static double ds[N], parts[N];
    for (int i = 0; i < N; i++) {
        xs[i] = i + 1;
        ds[i] = i + 1;
    }
    printf("sum of squares of 1..%d: %ld\n", N, sum_of_squares(pool, xs, N));
    /* scaled is defined in stats.c: mapped here, through stats.h. */
    int rc = pool_map(pool, scaled, N, parts, ds, PMAP_CONST(1.0 / N));
    double mean = 0;
    for (int i = 0; i < N; i++)
        mean += parts[i];
    printf("mean of 1..%d: %g\n", N, mean);
    pool_destroy(pool);
    return rc == 0 ? 0 : 1;
}
