/* SPDX-License-Identifier: MIT */
/*
 * stats.c - defines the functions stats.h declares, and exports them, once,
 * like any definition.
 */
#include "stats.h"

#include <stdlib.h>

long square(long x)
{
    return x * x;
}
PMAP_EXPORT(square);

double scaled(double x, double factor)
{
    return x * factor;
}
PMAP_EXPORT(scaled);

long sum_of_squares(pool_t *pool, const long *xs, size_t n)
{
    long *squares = malloc(n * sizeof *squares);
    long sum = 0;
    if (squares != NULL && pool_map(pool, square, n, squares, xs) == 0) {
        for (size_t i = 0; i < n; i++)
            sum += squares[i];
    }
    free(squares);
    return sum;
}
