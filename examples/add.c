/* SPDX-License-Identifier: MIT */
/*
 * add.c - a function of two arguments mapped over two lists, as Python's
 * pathos allows and multiprocessing does not: no zip() or tuple-unpacking
 * wrapper.
 *
 *     pathos:   p.map(add, inX, inY)
 *     libpmap:  pool_map(pool, add, 10, out, xs, ys);
 *
 * Prints [0, 2, 4, 6, 8, 10, 12, 14, 16, 18].
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
    int xs[10], ys[10], out[10];
    for (int i = 0; i < 10; i++)
        xs[i] = ys[i] = i;

    pool_t *pool = pool_create(4);
    if (pool == NULL) {
        fprintf(stderr, "add: cannot create the pool\n");
        return 1;
    }
    int rc = pool_map(pool, add, 10, out, xs, ys);
    pool_destroy(pool);
    if (rc != 0) {
        fprintf(stderr, "add: %s\n", pmap_strerror(rc));
        return 1;
    }

    for (int i = 0; i < 10; i++)
        printf("%s%d", i ? ", " : "[", out[i]);
    printf("]\n");
    return 0;
}
