/* SPDX-License-Identifier: MIT */
/*
 * partial.c - multiprocessing's functools.partial workaround, without the
 * workaround: y is fixed at 1 in the call itself, and sent to the workers
 * once for the whole map.
 *
 *     python:   p.map(partial(add, y=1), inX)
 *     libpmap:  pool_map(pool, add, 10, out, xs, PMAP_CONST(1));
 *
 * Prints [1, 2, 3, 4, 5, 6, 7, 8, 9, 10].
 */
#include <pmap.h>
#include <stdio.h>

static int add(int x, int y)
{
    return x + y;
}
PMAP_EXPORT(add, int, int, int);

int main(void)
{
    int xs[10], out[10];
    for (int i = 0; i < 10; i++)
        xs[i] = i;

    pool_t *pool = pool_create(6);
    if (pool == NULL) {
        fprintf(stderr, "partial: cannot create the pool\n");
        return 1;
    }
    int rc = pool_map(pool, add, 10, out, xs, PMAP_CONST(1));
    pool_destroy(pool);
    if (rc != 0) {
        fprintf(stderr, "partial: %s\n", pmap_strerror(rc));
        return 1;
    }

    for (int i = 0; i < 10; i++)
        printf("%s%d", i ? ", " : "[", out[i]);
    printf("]\n");
    return 0;
}
