/* SPDX-License-Identifier: MIT */
/*
 * stats.h - the functions of stats.c, for every file of the program: their
 * C prototypes, and PMAP_DECLARE so that any file can map them.
 */
#ifndef STATS_H
#define STATS_H

#include <pmap.h>

#include <stddef.h>

#ifdef __cplusplus  /* usable from C++ files too */
extern "C" {
#endif

long square(long x);
PMAP_DECLARE(square, long, long);

double scaled(double x, double factor);
PMAP_DECLARE(scaled, double, double, double);

/* The sum of xs[i] squared, computed on pool. */
long sum_of_squares(pool_t *pool, const long *xs, size_t n);

#ifdef __cplusplus
}
#endif

#endif
