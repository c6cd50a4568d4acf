/* SPDX-License-Identifier: MIT */
/*
 * method.c - mapping a method of an object, which multiprocessing cannot
 * ship to its workers and pathos can.  In C a method is a function whose
 * first parameter points to the object; the object's state is shipped to
 * the workers by value for the map, so state set after the pool was
 * created is seen.
 *
 *     pathos:   Pool().map(self.square, inList)
 *     libpmap:  pool_map(pool, square, 10, out, &obj, xs);
 *
 * Prints [0, 1, 4, 9, 16, 25, 36, 49, 64, 81].
 */
#include <pmap.h>
#include <stdio.h>

struct my_class {
    int power;      /* set after pool_create: the workers still see it */
};

static int square(const struct my_class *self, int x)
{
    int r = 1;
    for (int i = 0; i < self->power; i++)
        r *= x;
    return r;
}
PMAP_EXPORT_METHOD(square, int, struct my_class, int);

static int run(struct my_class *self, pool_t *pool, int n, int *out)
{
    int xs[10];
    for (int i = 0; i < n; i++)
        xs[i] = i;
    return pool_map(pool, square, (size_t)n, out, self, xs);
}

int main(void)
{
    pool_t *pool = pool_create(4);
    if (pool == NULL) {
        fprintf(stderr, "method: cannot create the pool\n");
        return 1;
    }
    struct my_class m = {.power = 2};
    int out[10];
    int rc = run(&m, pool, 10, out);
    pool_destroy(pool);
    if (rc != 0) {
        fprintf(stderr, "method: %s\n", pmap_strerror(rc));
        return 1;
    }

    for (int i = 0; i < 10; i++)
        printf("%s%d", i ? ", " : "[", out[i]);
    printf("]\n");
    return 0;
}
