/* SPDX-License-Identifier: MIT */
/*
 * policies.c - what a failure does: retries, the halt policy, grouped
 * output and the job log together, as with GNU parallel's --retries,
 * --halt, --group --keep-order and --joblog.
 *
 *     policies [N...]
 *
 * Counts the Collatz steps of each number (12 built-in ones by default).
 * The work is flaky on purpose: a multiple of 5 kills its worker the first
 * time it is tried (as the OOM killer would), and 13 always refuses
 * (pmap_fail).  With two retries the multiples of 5 succeed on their
 * second run; 13 is retried too (retry_failed) and still fails.  What each
 * item prints comes out grouped, in input order, whichever worker ran it;
 * the job log, one row per number, goes to standard error as TSV; then a
 * second map, halted at its first failure, shows the numbers it never
 * ran.
 */
#include <pmap.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char markers[64];     /* where a number's first try is noted */

/* Whether this is n's first run (its marker is made now, atomically, so
 * whichever worker runs it next knows). */
static int first_try(long n)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%ld", markers, n);
    FILE *f = fopen(path, "wx");
    if (f == NULL)
        return 0;
    fclose(f);
    return 1;
}

static long collatz_steps(long n)
{
    if (n == 13) {
        pmap_fail(13, "%ld is unlucky", n);
        return 0;
    }
    if (n % 5 == 0 && first_try(n))
        raise(SIGKILL);     /* the worker dies: the item runs again */
    long steps = 0;
    printf("%ld:", n);      /* its first values, grouped with its item */
    for (unsigned long x = (unsigned long)n; x > 1; steps++) {
        x = x % 2 ? 3 * x + 1 : x / 2;
        if (steps < 6)
            printf(" %lu", x);
    }
    printf("%s\n", steps > 6 ? " ..." : "");
    return steps;
}
PMAP_EXPORT(collatz_steps, long, long);

static void forget_markers(const long *ns, int count)
{
    for (int i = 0; i < count; i++) {
        char path[128];
        snprintf(path, sizeof path, "%s/%ld", markers, ns[i]);
        unlink(path);
    }
    rmdir(markers);
}

static void report(const char *what, pool_t *pool, const long *ns,
                   const long *steps, int count, int rc)
{
    const pmap_failure_t *f;
    size_t nf = pool_failures(pool, &f), k = 0;
    printf("\n%s: %s\n", what, rc < 0 ? pmap_strerror(rc) : rc == 0
                                           ? "every number done"
                                           : "some numbers failed");
    for (int i = 0; i < count; i++) {
        if (k < nf && f[k].index == (size_t)i) {
            printf("  %4ld  failed: %s%s%s (%d run%s)\n", ns[i],
                   pmap_strerror(f[k].error), *f[k].message ? ": " : "",
                   f[k].message, f[k].attempts,
                   f[k].attempts == 1 ? "" : "s");
            k++;
        } else {
            printf("  %4ld  %ld steps\n", ns[i], steps[i]);
        }
    }
}

int main(int argc, char **argv)
{
    static const long builtin[] = {6, 7, 10, 13, 15, 27, 30, 97, 100, 871,
                                   1000, 6171};
    int count = argc > 1 ? argc - 1 : (int)(sizeof builtin / sizeof *builtin);
    long *ns = malloc((size_t)count * sizeof *ns);
    long *steps = malloc((size_t)count * sizeof *steps);
    if (ns == NULL || steps == NULL)
        return 1;
    for (int i = 0; i < count; i++)
        ns[i] = argc > 1 ? strtol(argv[i + 1], NULL, 10) : builtin[i];
    const char *tmp = getenv("TMPDIR");
    snprintf(markers, sizeof markers, "%s/policies-XXXXXX",
             tmp && *tmp && strlen(tmp) < 40 ? tmp : "/tmp");
    if (mkdtemp(markers) == NULL) {
        perror("policies: mkdtemp");
        return 1;
    }

    pool_t *pool = pool_create(4);
    if (pool == NULL) {
        fprintf(stderr, "policies: cannot create the pool\n");
        return 1;
    }
    /* Two more runs for an item whose worker died or that failed, each
     * item's output whole and in input order, a job log on standard error,
     * and a halt if a third of them fail. */
    pool_map_options_t opts = {0};
    opts.retries = 2;
    opts.retry_failed = 1;
    opts.halt = PMAP_HALT_SOON;
    opts.halt_fraction = 0.34;
    opts.output = PMAP_OUTPUT_GROUP;
    opts.joblog_fd = 1 + STDERR_FILENO;
    printf("what each item printed, in input order:\n");
    fflush(stdout);     /* grouped output is written to the descriptor */
    int rc = pool_map_with(pool, &opts, collatz_steps, (size_t)count, steps,
                           ns);
    report("with retries", pool, ns, steps, count, rc);
    fflush(stdout);
    pmap_stats_t st;
    pool_stats(pool, &st, NULL);
    printf("  (%llu runs again, %llu workers replaced)\n",
           (unsigned long long)st.retries, (unsigned long long)st.restarts);

    /* Without retries, halted at the first failure, one item at a time:
     * the numbers after it never run. */
    pool_map_options_t strict = {0};
    strict.chunk = 1;
    strict.halt = PMAP_HALT_NOW;
    strict.retries = -1;
    strict.output = PMAP_OUTPUT_GROUP;
    printf("\nagain, halted at the first failure:\n");
    fflush(stdout);
    int halted = pool_map_with(pool, &strict, collatz_steps, (size_t)count,
                               steps, ns);
    report("halted at the first failure", pool, ns, steps, count, halted);
    fflush(stdout);

    pool_destroy(pool);
    forget_markers(ns, count);
    free(ns);
    free(steps);
    /* The failures shown are the demonstration: success means the map
     * ran as asked. */
    return rc >= 0 && (halted == PMAP_EHALTED || halted >= 0) ? 0 : 1;
}
