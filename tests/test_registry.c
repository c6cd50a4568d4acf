/* SPDX-License-Identifier: MIT */
/*
 * test_registry.c - callbacks are found by identifier, never by address:
 * two static functions of the same name in two files stay distinct.
 */
#include "test.h"

#include <pmap.h>

int twin_map_a(pool_t *pool, int n, const int *xs, int *out);
int twin_map_b(pool_t *pool, int n, const int *xs, int *out);

TEST(registry_same_static_name_in_two_files)
{
    int xs[50], a[50], b[50];
    for (int i = 0; i < 50; i++)
        xs[i] = i;
    pool_t *pool = pool_create(2);
    ASSERT_OK(twin_map_a(pool, 50, xs, a));
    ASSERT_OK(twin_map_b(pool, 50, xs, b));
    for (int i = 0; i < 50; i++) {
        ASSERT_EQ(a[i], 10 * i);
        ASSERT_EQ(b[i], 100 * i);
    }
    pool_destroy(pool);
}
