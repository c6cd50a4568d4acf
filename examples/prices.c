/* SPDX-License-Identifier: MIT */
/*
 * prices.c - debugging a callback that crashes on one item.
 *
 * Run as it is, the crash stays in a worker: that item fails with its
 * cause and every other price is printed.  Run in process, the crash is the
 * program's own, so the debugger stops on the faulting line:
 *
 *     build/examples/prices
 *     PMAP_START=inline gdb -batch -ex run -ex bt build/examples/prices
 */
#include <pmap.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "name=cents": the price in cents, or a crash on a record without '='. */
static long cents(const char *record)
{
    const char *equals = strchr(record, '=');
    return strtol(equals + 1, NULL, 10);    /* the bug: equals may be NULL */
}
PMAP_EXPORT(cents, long, const char *);

int main(void)
{
    const char *records[] = {"tea=250", "cake=420", "scone=180", "jam",
                             "milk=90"};
    enum { N = sizeof records / sizeof records[0] };
    long prices[N];
    pool_t *pool = pool_create(2);
    if (pool == NULL)
        return 1;
    int rc = pool_map(pool, cents, N, prices, records);
    const pmap_failure_t *failures;
    size_t nfailed = pool_failures(pool, &failures), f = 0;
    for (size_t i = 0; i < N; i++) {
        if (f < nfailed && failures[f].index == i) {
            printf("%-6s failed: %s (signal %d)\n", records[i],
                   pmap_err_name(failures[f].error), failures[f].code);
            f++;
        } else {
            printf("%-6s %ld.%02ld\n", records[i], prices[i] / 100,
                   prices[i] % 100);
        }
    }
    pool_destroy(pool);
    return rc < 0 ? 1 : 0;
}
