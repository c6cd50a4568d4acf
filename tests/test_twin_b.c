/* SPDX-License-Identifier: MIT */
/*
 * test_twin_b.c - one of two files that each export a static function
 * named twin (see test_registry.c): identifiers include the file, so the
 * two never collide.
 */
#include "test.h"

#include <pmap.h>

int twin_map_b(pool_t *pool, int n, const int *xs, int *out);

static int twin(int x)
{
    return x * 100;
}
PMAP_EXPORT(twin, int, int);

int twin_map_b(pool_t *pool, int n, const int *xs, int *out)
{
    return pool_map(pool, twin, (size_t)n, out, xs);
}
