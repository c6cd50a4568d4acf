/* SPDX-License-Identifier: MIT */
/*
 * test_policy.c - what a failure does (README, "Policies"): retries, the
 * halt policy and the job log, in every form of map and both start
 * methods.
 *
 * A flaky item decides by a marker file of its own, made with O_EXCL
 * before it misbehaves: its first run crashes (or fails, or hangs), every
 * later run, on whichever worker, succeeds.  No sleep hides a race, and no
 * timing decides a pass.
 */
#include "test.h"

#include "pmap.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum how { FINE, CRASH_ONCE, CRASH_ALWAYS, FAIL_ONCE, FAIL_ALWAYS, EXIT_ONCE,
           HANG_ONCE, HANG };

/* Whether this is item x's first run in dir (its marker is made now). */
static bool first_run(const char *dir, int x)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%d", dir, x);
    int fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0600);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

/* Item x misbehaves as `how` says when period > 0 and x % period == 0
 * (period < 0: every item does); otherwise returns 2x + 1. */
static int flaky(int x, const char *dir, int how, int period)
{
    bool bad = period > 0 ? x % period == 0 : period < 0;
    if (!bad)
        return 2 * x + 1;
    switch (how) {
    case CRASH_ONCE:
        if (first_run(dir, x))
            abort();
        break;
    case CRASH_ALWAYS:
        abort();
    case FAIL_ONCE:
        if (first_run(dir, x))
            pmap_fail(7, "item %d: first try", x);
        break;
    case FAIL_ALWAYS:
        pmap_fail(8, "item %d always fails", x);
        break;
    case EXIT_ONCE:
        if (first_run(dir, x))
            _exit(5);
        break;
    case HANG_ONCE:
        if (!first_run(dir, x))
            break;
        for (;;)
            pause();
    case HANG:  /* item 0 fails, the others hang until killed */
        if (x == 0) {
            pmap_fail(9, "item 0 fails");
            break;
        }
        for (;;)
            pause();
    }
    return 2 * x + 1;
}
PMAP_EXPORT(flaky, int, int, const char *, int, int);

/* A fresh directory for markers, and its removal. */
static char *markers(void)
{
    static char dirs[8][64];
    static int used;
    char *d = dirs[used++ % 8];
    snprintf(d, 64, "/tmp/pmap-policy-XXXXXX");
    ASSERT(mkdtemp(d) != NULL);
    return d;
}

static void remove_markers(const char *dir)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ASSERT_EQ(system(cmd), 0);
}

static pool_t *make_pool(int workers, int start)
{
    return test_pool((pool_options_t){.workers = workers, .start = start});
}

enum { N = 40 };
static int xs[N], out[N];

static void fill(void)
{
    for (int i = 0; i < N; i++) {
        xs[i] = i;
        out[i] = -1;
    }
}

/* ---- retries ------------------------------------------------------------ */

/* Items 0, 5, 10... crash on their first run; one retry each saves them. */
static void crash_once_then_succeed(int start)
{
    NEEDS_PROCESSES("items crash");
    fill();
    char *dir = markers();
    pool_t *pool = make_pool(3, start);
    pool_map_options_t mo = {.chunk = 4, .retries = 1};
    ASSERT_OK(pool_map_with(pool, &mo, flaky, N, out, xs, PMAP_CONST(dir),
                            PMAP_CONST(CRASH_ONCE), PMAP_CONST(5)));
    for (int i = 0; i < N; i++)
        ASSERT_EQ(out[i], 2 * i + 1);
    pmap_stats_t st;
    ASSERT_OK(pool_stats(pool, &st, NULL));
    ASSERT_EQ(st.retries, N / 5);
    ASSERT_EQ(st.failed, 0);
    ASSERT_EQ(st.items, N);
    test_pool_end(pool, start);
    remove_markers(dir);
}

TEST(policy_crash_once_then_succeeds_on_retry_fork)
{
    crash_once_then_succeed(PMAP_START_FORK);
}

TEST(policy_crash_once_then_succeeds_on_retry_server)
{
    crash_once_then_succeed(PMAP_START_SERVER);
}

TEST(policy_retries_exhausted_record_attempts_and_causes)
{
    NEEDS_PROCESSES("an item crashes");
    fill();
    pool_t *pool = make_pool(2, PMAP_START_FORK);
    pool_map_options_t mo = {.retries = 2};
    ASSERT_EQ(pool_map_with(pool, &mo, flaky, N, out, xs, PMAP_CONST("/"),
                            PMAP_CONST(CRASH_ALWAYS), PMAP_CONST(17)),
              3);   /* items 0, 17 and 34 */
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), 3);
    for (int k = 0; k < 3; k++) {
        ASSERT_EQ(f[k].index, 17 * k);
        ASSERT_EQ(f[k].error, PMAP_ECRASH);
        ASSERT_EQ(f[k].code, SIGABRT);
        ASSERT_EQ(f[k].attempts, 3);
        for (int a = 0; a < 3; a++) {
            ASSERT_EQ(f[k].causes[a].error, PMAP_ECRASH);
            ASSERT_EQ(f[k].causes[a].code, SIGABRT);
        }
        ASSERT_EQ(f[k].causes[3].error, 0);
    }
    pmap_stats_t st;
    ASSERT_OK(pool_stats(pool, &st, NULL));
    ASSERT_EQ(st.retries, 6);
    /* Without retries, one attempt, whose cause is the error. */
    ASSERT_EQ(pool_map(pool, flaky, N, out, xs, PMAP_CONST("/"),
                       PMAP_CONST(CRASH_ALWAYS), PMAP_CONST(17)),
              3);
    ASSERT_EQ(pool_failures(pool, &f), 3);
    ASSERT_EQ(f[1].attempts, 1);
    ASSERT_EQ(f[1].causes[0].error, PMAP_ECRASH);
    ASSERT_OK(pool_stats(pool, &st, NULL));
    ASSERT_EQ(st.retries, 0);
    test_pool_end(pool, PMAP_START_FORK);
}

/* pmap_fail is the callback's own verdict: retried only when asked. */
TEST(policy_fail_retried_only_when_asked)
{
    fill();
    char *dir = markers();
    pool_t *pool = make_pool(2, PMAP_START_AUTO);
    pool_map_options_t mo = {.retries = 3};
    ASSERT_EQ(pool_map_with(pool, &mo, flaky, N, out, xs, PMAP_CONST(dir),
                            PMAP_CONST(FAIL_ONCE), PMAP_CONST(10)),
              4);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), 4);
    ASSERT_EQ(f[0].error, PMAP_EFAIL);
    ASSERT_EQ(f[0].code, 7);
    ASSERT_EQ(f[0].attempts, 1);
    ASSERT_STR_EQ(f[0].message, "item 0: first try");
    remove_markers(dir);

    dir = markers();
    mo.retry_failed = 1;
    fill();
    ASSERT_OK(pool_map_with(pool, &mo, flaky, N, out, xs, PMAP_CONST(dir),
                            PMAP_CONST(FAIL_ONCE), PMAP_CONST(10)));
    for (int i = 0; i < N; i++)
        ASSERT_EQ(out[i], 2 * i + 1);
    pmap_stats_t st;
    ASSERT_OK(pool_stats(pool, &st, NULL));
    ASSERT_EQ(st.retries, 4);

    /* Always failing: every attempt's message is the last one's. */
    ASSERT_EQ(pool_map_with(pool, &mo, flaky, N, out, xs, PMAP_CONST(dir),
                            PMAP_CONST(FAIL_ALWAYS), PMAP_CONST(30)),
              2);
    ASSERT_EQ(pool_failures(pool, &f), 2);
    ASSERT_EQ(f[1].index, 30);
    ASSERT_EQ(f[1].attempts, 4);
    ASSERT_EQ(f[1].causes[3].error, PMAP_EFAIL);
    ASSERT_EQ(f[1].causes[3].code, 8);
    pool_destroy(pool);
    remove_markers(dir);
}

/* The pool's defaults, a delay, and the other causes a retry covers. */
TEST(policy_retry_delay_timeout_and_exit_with_pool_defaults)
{
    NEEDS_PROCESSES("items exit and hang");
    fill();
    char *dir = markers();
    pool_options_t po = {.workers = 2, .retries = 1, .retry_delay = 0.05};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    ASSERT_OK(pool_map(pool, flaky, N, out, xs, PMAP_CONST(dir),
                       PMAP_CONST(EXIT_ONCE), PMAP_CONST(13)));
    pmap_stats_t st;
    ASSERT_OK(pool_stats(pool, &st, NULL));
    ASSERT_EQ(st.retries, 4);   /* 0, 13, 26, 39 */
    /* Only a lower bound: the delay was waited, however long the rest. */
    ASSERT(st.wall_ns >= 50000000);
    remove_markers(dir);

    dir = markers();
    pool_map_options_t mo = {.timeout = 0.2, .retry_delay = 0.01};
    ASSERT_OK(pool_map_with(pool, &mo, flaky, N, out, xs, PMAP_CONST(dir),
                            PMAP_CONST(HANG_ONCE), PMAP_CONST(20)));
    for (int i = 0; i < N; i++)
        ASSERT_EQ(out[i], 2 * i + 1);
    ASSERT_OK(pool_stats(pool, &st, NULL));
    ASSERT_EQ(st.retries, 2);

    /* retries < 0: none, whatever the pool says. */
    mo.retries = -1;
    remove_markers(dir);
    dir = markers();
    ASSERT_EQ(pool_map_with(pool, &mo, flaky, N, out, xs, PMAP_CONST(dir),
                            PMAP_CONST(HANG_ONCE), PMAP_CONST(20)),
              2);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), 2);
    ASSERT_EQ(f[0].error, PMAP_ETIMEDOUT);
    ASSERT_EQ(f[0].attempts, 1);
    pool_destroy(pool);
    remove_markers(dir);
}

/* ---- results to a callback: streams, async, calls ----------------------- */

typedef struct seen {
    int count[N];
    int ok, failed, halted;
    int rows;
    int row_attempts[N];
} seen_t;

static int on_result(void *ctx, size_t i, void *result,
                     const pmap_failure_t *f)
{
    seen_t *s = ctx;
    ASSERT(i < N);
    s->count[i]++;
    if (f == NULL) {
        ASSERT_EQ(*(int *)result, 2 * (int)i + 1);
        s->ok++;
    } else {
        s->failed++;
        s->halted += f->error == PMAP_EHALTED;
    }
    return 0;
}

static int on_log(void *ctx, const pmap_log_t *row)
{
    seen_t *s = ctx;
    ASSERT(row->index < N);
    s->rows++;
    s->row_attempts[row->index] = row->attempts;
    return 0;
}

typedef struct producer {
    int next;
    const char *dir;
    int how, period;
} producer_t;

static int produce(void *ctx, int *x, const char **dir, int *how,
                   int *period)
{
    producer_t *p = ctx;
    if (p->next == N)
        return 0;
    *x = p->next++;
    *dir = p->dir;
    *how = p->how;
    *period = p->period;
    return 1;
}

TEST(policy_retries_in_streams_async_and_calls)
{
    NEEDS_PROCESSES("items crash");
    char *dir = markers();
    pool_t *pool = make_pool(3, PMAP_START_FORK);
    seen_t s = {{0}, 0, 0, 0, 0, {0}};
    pool_map_options_t mo = {.on_result = on_result, .ctx = &s,
                             .retries = 2, .on_log = on_log};
    producer_t p = {0, dir, CRASH_ONCE, 7};
    ASSERT_OK(pool_map_stream(pool, &mo, flaky, produce, &p));
    ASSERT_EQ(s.ok, N);
    ASSERT_EQ(s.rows, N);
    for (int i = 0; i < N; i++) {
        ASSERT_EQ(s.count[i], 1);
        ASSERT_EQ(s.row_attempts[i], i % 7 == 0 ? 2 : 1);
    }
    remove_markers(dir);

    /* Arrays in the background, handed out by pmap_job_next. */
    dir = markers();
    fill();
    pool_map_options_t ao = {.retries = 1};
    pmap_job_t *job;
    ASSERT_OK(pool_map_async(pool, &ao, &job, flaky, N, out, xs,
                             PMAP_CONST(dir), PMAP_CONST(CRASH_ONCE),
                             PMAP_CONST(9)));
    size_t i, handed = 0;
    const pmap_failure_t *f;
    while (pmap_job_next(job, &i, &f, -1) > 0) {
        ASSERT(f == NULL);
        ASSERT_EQ(out[i], 2 * (int)i + 1);
        handed++;
    }
    ASSERT_EQ(handed, N);
    ASSERT_OK(pmap_job_wait(job, -1));
    pmap_stats_t st;
    ASSERT_OK(pmap_job_stats(job, &st));
    ASSERT_EQ(st.retries, 5);
    pmap_job_free(job);
    remove_markers(dir);

    /* One call, crashing once. */
    dir = markers();
    int r = 0;
    ASSERT_OK(pool_call_async(pool, &ao, &job, flaky, &r, 0, dir, CRASH_ONCE,
                              1));
    ASSERT_OK(pmap_job_wait(job, -1));
    ASSERT_EQ(r, 1);
    pmap_job_free(job);
    /* Without retries a call fails once. */
    remove_markers(dir);
    dir = markers();
    ASSERT_EQ(pool_call(pool, flaky, &r, 0, dir, CRASH_ONCE, 1), 1);
    pool_destroy(pool);
    remove_markers(dir);
}

/* ---- halt --------------------------------------------------------------- */

enum { M = 400 };

/* Every item of an arrays map is accounted for: a result, or a failure
 * record; returns the records with each error counted in *fails (EFAIL),
 * *halted (EHALTED), *cancelled (ECANCELED). */
static void account(pool_t *pool, const int *res, size_t n, size_t *fails,
                    size_t *halted, size_t *cancelled)
{
    const pmap_failure_t *f;
    size_t nf = pool_failures(pool, &f), k = 0;
    *fails = *halted = *cancelled = 0;
    for (size_t i = 0; i < n; i++) {
        if (k < nf && f[k].index == i) {
            *fails += f[k].error == PMAP_EFAIL;
            *halted += f[k].error == PMAP_EHALTED;
            *cancelled += f[k].error == PMAP_ECANCELED;
            if (f[k].error == PMAP_EHALTED)
                ASSERT_EQ(f[k].attempts, 0);
            ASSERT_EQ(res[i], 0);
            k++;
        } else {
            ASSERT_EQ(res[i], 2 * (int)i + 1);
        }
    }
    ASSERT_EQ(k, nf);
    ASSERT_EQ(*fails + *halted + *cancelled, nf);
}

static void halt_test(int start, int halt, size_t failures, double fraction,
                      int period, size_t at_least_failed)
{
    static int in[M], res[M];
    for (int i = 0; i < M; i++)
        in[i] = i;
    pool_t *pool = make_pool(2, start);
    pool_map_options_t mo = {.chunk = 1, .halt = halt,
                             .halt_failures = failures,
                             .halt_fraction = fraction};
    ASSERT_EQ(pool_map_with(pool, &mo, flaky, M, res, in, PMAP_CONST("/"),
                            PMAP_CONST(FAIL_ALWAYS), PMAP_CONST(period)),
              PMAP_EHALTED);
    size_t fails, halted, cancelled;
    account(pool, res, M, &fails, &halted, &cancelled);
    ASSERT(fails >= at_least_failed);
    ASSERT(halted > 0);
    if (halt == PMAP_HALT_SOON)
        ASSERT_EQ(cancelled, 0);    /* running items finished */
    pmap_stats_t st;
    ASSERT_OK(pool_stats(pool, &st, NULL));
    ASSERT_EQ(st.items, M);
    test_pool_end(pool, start);
}

TEST(policy_halt_now_at_the_first_failure)
{
    halt_test(PMAP_START_FORK, PMAP_HALT_NOW, 0, 0, 50, 1);
}

TEST(policy_halt_soon_after_n_failures_server)
{
    NEEDS_PROCESSES("the fork server");
    halt_test(PMAP_START_SERVER, PMAP_HALT_SOON, 3, 0, 20, 3);
}

TEST(policy_halt_soon_after_n_failures_in_process)
{
    halt_test(PMAP_START_INLINE, PMAP_HALT_SOON, 3, 0, 20, 3);
}

TEST(policy_halt_at_a_fraction_of_the_items_finished)
{
    /* Half the items fail: 30% halts once 10 have finished... */
    halt_test(PMAP_START_AUTO, PMAP_HALT_SOON, 0, 0.3, 2, 3);
    /* ...90% never does. */
    static int in[M], res[M];
    for (int i = 0; i < M; i++)
        in[i] = i;
    pool_t *pool = make_pool(2, PMAP_START_AUTO);
    pool_map_options_t mo = {.halt = PMAP_HALT_NOW, .halt_fraction = 0.9};
    ASSERT_EQ(pool_map_with(pool, &mo, flaky, M, res, in, PMAP_CONST("/"),
                            PMAP_CONST(FAIL_ALWAYS), PMAP_CONST(2)),
              M / 2);
    /* A failure of the last item left halts nothing: the map is whole. */
    mo = (pool_map_options_t){.halt = PMAP_HALT_NOW};
    pmap_job_t *job;
    ASSERT_OK(pool_call_async(pool, &mo, &job, flaky, res, 0, "/",
                              FAIL_ALWAYS, 1));
    ASSERT_EQ(pmap_job_wait(job, -1), 1);
    pmap_job_free(job);
    pool_destroy(pool);
}

/* A map with a halt policy sends its items in input order (README, "Which
 * items a worker gets"), so a halt stops a tail of them: the items never
 * run are the last ones, whatever ran meanwhile.  (Each worker starting on
 * a share of its own, the second would have run item M / 2 at once.) */
TEST(policy_halt_stops_a_tail_of_the_items)
{
    static int in[M], res[M];
    for (int i = 0; i < M; i++)
        in[i] = i;
    pool_t *pool = make_pool(2, PMAP_START_FORK);
    pool_map_options_t mo = {.chunk = 1, .halt = PMAP_HALT_SOON};
    ASSERT_EQ(pool_map_with(pool, &mo, flaky, M, res, in, PMAP_CONST("/"),
                            PMAP_CONST(FAIL_ALWAYS), PMAP_CONST(M)),
              PMAP_EHALTED);
    size_t fails, halted, cancelled;
    account(pool, res, M, &fails, &halted, &cancelled);
    ASSERT_EQ(fails, 1);    /* item 0 */
    ASSERT(halted > 0);
    const pmap_failure_t *f;
    size_t nf = pool_failures(pool, &f);
    for (size_t k = 1; k < nf; k++)
        ASSERT_EQ(f[k].index, M - (nf - k));
    test_pool_end(pool, PMAP_START_FORK);
}

/* Halting NOW kills the running items: they fail as cancelled. */
TEST(policy_halt_now_kills_running_items)
{
    NEEDS_PROCESSES("items hang");
    int in[3] = {0, 1, 2}, res[3];
    pool_t *pool = make_pool(3, PMAP_START_FORK);
    /* Item 0 fails at once; items 1 and 2 hang until killed. */
    pool_map_options_t mo = {.chunk = 1, .halt = PMAP_HALT_NOW};
    ASSERT_EQ(pool_map_with(pool, &mo, flaky, 3, res, in, PMAP_CONST("/"),
                            PMAP_CONST(HANG), PMAP_CONST(-1)),
              PMAP_EHALTED);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), 3);
    ASSERT_EQ(f[0].error, PMAP_EFAIL);
    for (int i = 1; i < 3; i++)     /* killed running, or never started */
        ASSERT(f[i].error == PMAP_ECANCELED || f[i].error == PMAP_EHALTED);
    test_pool_end(pool, PMAP_START_FORK);
}

TEST(policy_halt_in_streams_and_async_maps)
{
    pool_t *pool = make_pool(2, PMAP_START_AUTO);
    seen_t s = {{0}, 0, 0, 0, 0, {0}};
    pool_map_options_t mo = {.on_result = on_result, .ctx = &s, .chunk = 1,
                             .halt = PMAP_HALT_SOON, .halt_failures = 2};
    producer_t p = {0, "/", FAIL_ALWAYS, 6};
    ASSERT_EQ(pool_map_stream(pool, &mo, flaky, produce, &p), PMAP_EHALTED);
    /* Every item made is handed over once: the producer is not called
     * after the halt. */
    ASSERT(p.next < N);
    for (int i = 0; i < p.next; i++)
        ASSERT_EQ(s.count[i], 1);
    ASSERT_EQ(s.ok + s.failed, p.next);
    ASSERT(s.failed - s.halted >= 2);

    /* Arrays to a callback, in the background. */
    seen_t t = {{0}, 0, 0, 0, 0, {0}};
    mo.ctx = &t;
    fill();
    pmap_job_t *job;
    ASSERT_OK(pool_map_async(pool, &mo, &job, flaky, N, NULL, xs,
                             PMAP_CONST("/"), PMAP_CONST(FAIL_ALWAYS),
                             PMAP_CONST(6)));
    ASSERT_EQ(pmap_job_wait(job, -1), PMAP_EHALTED);
    pmap_job_free(job);
    for (int i = 0; i < N; i++)
        ASSERT_EQ(t.count[i], 1);
    ASSERT_EQ(t.ok + t.failed, N);
    ASSERT(t.halted > 0);
    pool_destroy(pool);
}

/* ---- the job log -------------------------------------------------------- */

static void joblog_test(int start)
{
    bool processes = start != PMAP_START_INLINE;
    fill();
    char *dir = markers();
    pool_t *pool = make_pool(2, start);
    /* After the pool: a worker forked later would hold the pipe open (no
     * item here makes one: none crashes). */
    int fds[2];
    ASSERT(pipe(fds) == 0);
    /* Items 0, 8, 16... fail once then succeed; item 3 always fails. */
    pool_map_options_t mo = {.retries = 1, .retry_failed = 1,
                             .joblog_fd = fds[1] + 1};
    ASSERT_OK(pool_map_with(pool, &mo, flaky, N, out, xs, PMAP_CONST(dir),
                            PMAP_CONST(FAIL_ONCE), PMAP_CONST(8)));
    mo.retries = -1;
    ASSERT_EQ(pool_map_with(pool, &mo, flaky, 5, out, xs, PMAP_CONST(dir),
                            PMAP_CONST(FAIL_ALWAYS), PMAP_CONST(3)),
              2);   /* items 0 and 3 */
    close(fds[1]);
    static char log[65536];
    test_read_all(fds[0], log, sizeof log);    /* the log, whole */
    close(fds[0]);

    static const char header[] =
        "index\tworker\tpid\tattempts\tstart\tduration\tstatus\tcode\n";
    int seen[N] = {0}, maps = 0, rows = 0;
    char *save, *line = strtok_r(log, "\n", &save);
    for (; line != NULL; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, header, strlen(header) - 1) == 0) {
            maps++;
            continue;
        }
        size_t index;
        int worker, attempts, code;
        long pid;
        double st, dur;
        char status[32];
        ASSERT_EQ(sscanf(line, "%zu\t%d\t%ld\t%d\t%lf\t%lf\t%31s\t%d", &index,
                         &worker, &pid, &attempts, &st, &dur, status, &code),
                  8);
        ASSERT(index < N);
        ASSERT(worker >= 0 && worker < 2);
        ASSERT(st >= 0 && dur >= 0);
        if (processes)
            ASSERT(pid > 0 && pid != (long)getpid());
        rows++;
        if (maps == 1) {
            seen[index]++;
            ASSERT_STR_EQ(status, "ok");
            ASSERT_EQ(code, 0);
            ASSERT_EQ(attempts, index % 8 == 0 ? 2 : 1);
        } else {
            bool bad = index % 3 == 0;
            ASSERT_STR_EQ(status, bad ? "EFAIL" : "ok");
            ASSERT_EQ(code, bad ? 8 : 0);
            ASSERT_EQ(attempts, 1);
        }
    }
    ASSERT_EQ(maps, 2);
    ASSERT_EQ(rows, N + 5);
    for (int i = 0; i < N; i++)
        ASSERT_EQ(seen[i], 1);
    test_pool_end(pool, start);
    remove_markers(dir);
}

TEST(policy_joblog_rows_through_a_pipe_fork)
{
    joblog_test(PMAP_START_FORK);
}

TEST(policy_joblog_rows_through_a_pipe_server)
{
    NEEDS_PROCESSES("the fork server");
    joblog_test(PMAP_START_SERVER);
}

TEST(policy_joblog_rows_through_a_pipe_in_process)
{
    joblog_test(PMAP_START_INLINE);
}

/* A crashed item's row, the halted items' rows, a call's row. */
TEST(policy_joblog_of_crashes_halts_and_calls)
{
    NEEDS_PROCESSES("an item crashes");
    char *dir = markers();
    pool_t *pool = make_pool(2, PMAP_START_FORK);
    seen_t s = {{0}, 0, 0, 0, 0, {0}};
    pool_map_options_t mo = {.on_log = on_log, .ctx = &s, .chunk = 1,
                             .halt = PMAP_HALT_SOON};
    fill();
    ASSERT_EQ(pool_map_with(pool, &mo, flaky, N, out, xs, PMAP_CONST(dir),
                            PMAP_CONST(CRASH_ALWAYS), PMAP_CONST(4)),
              PMAP_EHALTED);
    ASSERT_EQ(s.rows, N);   /* one per item, run or not */
    ASSERT_EQ(s.row_attempts[0], 1);
    ASSERT_EQ(s.row_attempts[N - 1], 0);    /* never ran */

    seen_t c = {{0}, 0, 0, 0, 0, {0}};
    pool_map_options_t co = {.on_log = on_log, .ctx = &c};
    pmap_job_t *job;
    int r;
    ASSERT_OK(pool_call_async(pool, &co, &job, flaky, &r, 3, dir, FINE, 0));
    ASSERT_OK(pmap_job_wait(job, -1));
    pmap_job_free(job);
    ASSERT_EQ(c.rows, 1);
    ASSERT_EQ(c.row_attempts[0], 1);
    ASSERT_EQ(r, 7);
    pool_destroy(pool);
    remove_markers(dir);
}

TEST(policy_options_checked_and_named)
{
    ASSERT_STR_EQ(pmap_err_name(PMAP_EHALTED), "EHALTED");
    ASSERT_STR_EQ(pmap_strerror(PMAP_EHALTED),
                  "the map was halted by its halt policy");
    pool_t *pool = make_pool(1, PMAP_START_AUTO);
    pool_map_options_t bad[] = {{.retry_delay = -1}, {.halt = 3},
                                {.halt_fraction = 1.5}, {.joblog_fd = -1}};
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++)
        ASSERT_EQ(pool_map_with(pool, &bad[k], flaky, N, out, xs,
                                PMAP_CONST("/"), PMAP_CONST(FINE),
                                PMAP_CONST(0)),
                  PMAP_EINVAL);
    pool_destroy(pool);
    pool_options_t po = {.retry_delay = -0.5};
    ASSERT_EQ(pool_create_with(&pool, &po), PMAP_EINVAL);
}

/* ---- the log row in on_result -------------------------------------------- */

struct rows {
    size_t seen, bad;
};

static int check_row(void *ctx, size_t i, void *result,
                     const pmap_failure_t *f)
{
    struct rows *r = ctx;
    const pmap_log_t *row = pmap_item_log();
    bool fails = (int)i % 4 == 0;   /* FAIL_ALWAYS with period 4 */
    r->seen++;
    if (row == NULL || row->index != i || row->attempts != 1 ||
        (f != NULL) != fails || row->error != (fails ? PMAP_EFAIL : 0) ||
        (!fails && *(int *)result != 2 * (int)i + 1) ||
        (row->pid <= 0 && !test_in_process()) || row->duration < 0)
        r->bad++;
    return 0;
}

/* With joblog set, on_result finds each item's row (pmap_item_log), in
 * order and unordered; outside on_result there is none. */
TEST(policy_log_row_in_on_result)
{
    char *dir = markers();
    pool_t *pool = make_pool(2, PMAP_START_FORK);
    for (int unordered = 0; unordered < 2; unordered++) {
        fill();
        struct rows r = {0, 0};
        pool_map_options_t mo = {.on_result = check_row, .ctx = &r,
                                 .unordered = unordered, .joblog = 1,
                                 .chunk = 3};
        ASSERT_EQ(pool_map_with(pool, &mo, flaky, N, (int *)NULL, xs,
                                PMAP_CONST(dir), PMAP_CONST(FAIL_ALWAYS),
                                PMAP_CONST(4)),
                  N / 4);
        ASSERT_EQ(r.seen, N);
        ASSERT_EQ(r.bad, 0);
    }
    ASSERT(pmap_item_log() == NULL);
    test_pool_end(pool, PMAP_START_FORK);
    remove_markers(dir);
}

/* One worker, one item crashing on every run: it alone fails, after all
 * its runs; the batches sent around its retries all succeed. */
TEST(policy_one_worker_only_the_crashing_item_fails)
{
    NEEDS_PROCESSES("an item crashes");
    fill();
    pool_t *pool = make_pool(1, PMAP_START_FORK);
    pool_map_options_t mo = {.retries = 5, .chunk = 2};
    ASSERT_EQ(pool_map_with(pool, &mo, flaky, N, out, xs, PMAP_CONST("/"),
                            PMAP_CONST(CRASH_ALWAYS), PMAP_CONST(N + 1)),
              1);   /* item 0 alone */
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), 1);
    ASSERT_EQ(f[0].index, 0);
    ASSERT_EQ(f[0].attempts, 6);
    for (int i = 1; i < N; i++)
        ASSERT_EQ(out[i], 2 * i + 1);
    test_pool_end(pool, PMAP_START_FORK);
}
