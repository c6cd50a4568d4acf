/* SPDX-License-Identifier: MIT */
/*
 * test_faults.c - a worker's death never hangs, leaks or harms the caller.
 *
 * Each fault strikes one item in the middle of a batch in the middle of a
 * large map: that item alone fails, with the right cause; every other item
 * is right and in order; the worker is replaced and the pool keeps its
 * size.  Then the caller's own process misbehaves in the ways real programs
 * do: its own children and SIGCHLD handler, a fast timer without
 * SA_RESTART, unflushed stdio, being killed, two pools, many cycles.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE     /* MADV_POPULATE_WRITE */
#endif
#include "test.h"

#include "pmap_internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

enum fault { NONE, SEGV, ABORT, EXIT, UNDERSCORE_EXIT, HANG, KILLED, FAIL,
             GARBAGE, HUGE_FRAME };

static int killer_pipe[2] = {-1, -1};

/* Where the worker writes to the caller: the write end of its channel,
 * the pipe open for writing whose read end it does not hold (as it does
 * its crash report's pipe), and not one of the tests'. */
static int channel_fd(void)
{
    struct stat st, other;
    for (int fd = 3; fd < 1024; fd++) {
        if (fd == killer_pipe[1] || fd == test_skip_pipe ||
            fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode) ||
            (fcntl(fd, F_GETFL) & O_ACCMODE) != O_WRONLY)
            continue;
        int ends = 0;
        for (int e = 3; e < 1024; e++)
            ends += fstat(e, &other) == 0 && other.st_ino == st.st_ino &&
                    other.st_dev == st.st_dev;
        if (ends == 1)
            return fd;
    }
    return -1;
}

__attribute__((no_sanitize("undefined"))) static void dereference_null(void)
{
    int *volatile p = NULL;
    *(volatile int *)p = 1;     /* volatile: the compiler may not drop it */
}

static void write_garbage(bool huge)
{
    unsigned char frame[PMAP__HEADER_SIZE + 64];
    memset(frame, 0xA5, sizeof frame);
    if (huge) {     /* a well-formed header announcing 1 TiB */
        pmap__header_t h = {PMAP__RESULT, 1, (uint64_t)1 << 40};
        pmap__header_encode(frame, &h);
    }
    if (write(channel_fd(), frame, sizeof frame) < 0)
        _exit(9);
}

static int risky(int x, int bad, int how)
{
    if (x != bad)
        return x * 3;
    switch (how) {
    case SEGV:
        dereference_null();
        break;
    case ABORT:
        abort();
    case EXIT:
        exit(3);
    case UNDERSCORE_EXIT:
        _exit(3);
    case HANG:
        for (;;)
            pause();
    case KILLED: {
        pid_t me = getpid();    /* the test's thread kills us */
        if (write(killer_pipe[1], &me, sizeof me) != sizeof me)
            _exit(9);
        for (;;)
            pause();
    }
    case FAIL:
        pmap_fail(-x, "item %d refused", x);
        return -1;
    case GARBAGE:
    case HUGE_FRAME:
        write_garbage(how == HUGE_FRAME);
        for (;;)
            pause();    /* the caller kills us for what we wrote */
    }
    return x * 3;
}
PMAP_EXPORT(risky, int, int, int, int);

static void *killer(void *arg)
{
    (void)arg;
    pid_t pid;
    if (read(killer_pipe[0], &pid, sizeof pid) == sizeof pid)
        kill(pid, SIGKILL);
    return NULL;
}

enum { N = 3000, BAD = 1550 };

/* Runs a map of N items where item BAD faults with `how`; checks that it
 * alone failed, with the given cause, and that the pool is whole after. */
static void expect_fault(enum fault how, int error, int code, double timeout)
{
    static int xs[N], out[N];
    for (int i = 0; i < N; i++)
        xs[i] = i;
    pthread_t t;
    if (how == KILLED) {    /* before the pool: its workers inherit it */
        ASSERT(pipe(killer_pipe) == 0);
        ASSERT(pthread_create(&t, NULL, killer, NULL) == 0);
    }
    pool_options_t po = {.workers = 3};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    /* Batches of 100: BAD is in the middle of one. */
    pool_map_options_t mo = {.chunk = 100, .timeout = timeout};
    ASSERT_EQ(pool_map_with(pool, &mo, risky, N, out, xs, PMAP_CONST(BAD),
                            PMAP_CONST(how)),
              1);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), 1);
    ASSERT_EQ(f[0].index, BAD);
    ASSERT_STR_EQ(pmap_err_name(f[0].error), pmap_err_name(error));
    if (code >= 0)
        ASSERT_EQ(f[0].code, code);
    ASSERT(f[0].pid > 0 && f[0].pid != (long)getpid());
    for (int i = 0; i < N; i++)
        ASSERT_EQ(out[i], i == BAD ? 0 : 3 * i);

    pmap_stats_t st;
    ASSERT_OK(pool_stats(pool, &st, NULL));
    ASSERT_EQ(st.restarts, how == FAIL ? 0 : 1);
    ASSERT_EQ(st.failed, 1);
    ASSERT_EQ(pool_size(pool), 3);
    /* Usable again, at full size, with no failure left over. */
    ASSERT_OK(pool_map(pool, risky, N, out, xs, PMAP_CONST(-1),
                       PMAP_CONST(NONE)));
    ASSERT_EQ(pool_failures(pool, &f), 0);
    ASSERT_EQ(out[N - 1], 3 * (N - 1));
    for (int i = 0; i < 3; i++)
        ASSERT(pool->workers[i].pid > 0);
    pool_destroy(pool);
    if (how == KILLED) {
        pthread_join(t, NULL);
        close(killer_pipe[0]);
        close(killer_pipe[1]);
    }
}

TEST(fault_null_dereference)
{
    expect_fault(SEGV, PMAP_ECRASH, SIGSEGV, 0);
}

TEST(fault_abort)
{
    expect_fault(ABORT, PMAP_ECRASH, SIGABRT, 0);
}

TEST(fault_exit)
{
    expect_fault(EXIT, PMAP_EEXIT, 3, 0);
}

TEST(fault_underscore_exit)
{
    expect_fault(UNDERSCORE_EXIT, PMAP_EEXIT, 3, 0);
}

TEST(fault_sigkill_from_outside)
{
    expect_fault(KILLED, PMAP_ECRASH, SIGKILL, 0);
}

TEST(fault_endless_loop_with_timeout)
{
    expect_fault(HANG, PMAP_ETIMEDOUT, -1, 0.25);
}

TEST(fault_callback_fails_on_purpose)
{
    expect_fault(FAIL, PMAP_EFAIL, -BAD, 0);
}

TEST(fault_worker_writes_garbage)
{
    expect_fault(GARBAGE, PMAP_EPROTO, -1, 0);
}

TEST(fault_worker_announces_a_huge_frame)
{
    expect_fault(HUGE_FRAME, PMAP_EPROTO, -1, 0);
}

/* Garbage reaching a worker from our side: it leaves, and is replaced. */
TEST(fault_garbage_sent_to_a_worker)
{
    pool_t *pool = pool_create(2);
    int xs[100], out[100];
    for (int i = 0; i < 100; i++)
        xs[i] = i;
    unsigned char junk[PMAP__HEADER_SIZE * 2];
    memset(junk, 0x5A, sizeof junk);
    ASSERT(write(pool->workers[0].ch.out, junk, sizeof junk) == sizeof junk);
    ASSERT_OK(pool_map(pool, risky, 100, out, xs, PMAP_CONST(-1),
                       PMAP_CONST(NONE)));
    for (int i = 0; i < 100; i++)
        ASSERT_EQ(out[i], 3 * i);
    pmap_stats_t st;
    ASSERT_OK(pool_stats(pool, &st, NULL));
    ASSERT_EQ(st.restarts, 1);
    pool_destroy(pool);
}

static int fail_some(int x)
{
    if (x % 7 == 0) {
        pmap_fail(x, "multiple of seven: %d", x);
        return 0;
    }
    if (x == 500)
        abort();
    return x + 1;
}
PMAP_EXPORT(fail_some, int, int);

TEST(fault_many_failures_in_one_map)
{
    enum { M = 1000 };
    int xs[M], out[M];
    for (int i = 0; i < M; i++)
        xs[i] = i;
    pool_t *pool = pool_create(2);
    int want = M / 7 + 1 + 1;   /* multiples of 7 (0 included), and 500 */
    ASSERT_EQ(pool_map(pool, fail_some, M, out, xs), want);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), want);
    for (int i = 0; i < want; i++) {
        ASSERT(i == 0 || f[i].index > f[i - 1].index);  /* sorted */
        if (f[i].index == 500) {
            ASSERT_EQ(f[i].error, PMAP_ECRASH);
            continue;
        }
        char msg[64];
        snprintf(msg, sizeof msg, "multiple of seven: %zu", f[i].index);
        ASSERT_EQ(f[i].error, PMAP_EFAIL);
        ASSERT_EQ(f[i].code, (int)f[i].index);
        ASSERT_STR_EQ(f[i].message, msg);
    }
    for (int i = 0; i < M; i++)
        ASSERT_EQ(out[i], i % 7 == 0 || i == 500 ? 0 : i + 1);
    pool_destroy(pool);
}

/* Fails the items the test lists; every item checks that pmap_item_index
 * names it. */
static int fail_listed(int x, unsigned long long low, unsigned long long high)
{
    if (pmap_item_index() != x)
        pmap_fail(-1, "pmap_item_index says %ld in item %d",
                  pmap_item_index(), x);
    else if ((x < 64 ? low >> x : high >> (x - 64)) & 1)
        pmap_fail(x + 1, "listed: %d", x);
    return x + 1;
}
PMAP_EXPORT(fail_listed, int, int, unsigned long long, unsigned long long);

/* Failures in a row, first and last in their batches, first and last of
 * the map: each recorded for its own item, the others' results kept; with
 * workers forked, from the fork server and in process. */
static void failures_at_batch_edges(int start)
{
    enum { M = 100 };
    static const int listed[] = {0, 1, 2, 9, 10, 55, 56, 57, 89, 98, 99};
    enum { NLISTED = sizeof listed / sizeof *listed };
    unsigned long long low = 0, high = 0;
    for (int i = 0; i < NLISTED; i++) {
        if (listed[i] < 64)
            low |= 1ull << listed[i];
        else
            high |= 1ull << (listed[i] - 64);
    }
    int xs[M], out[M];
    for (int i = 0; i < M; i++)
        xs[i] = i;
    pool_t *pool = test_pool((pool_options_t){.workers = 2, .start = start});
    pool_map_options_t tens = {.chunk = 10};
    for (int pass = 0; pass < 2; pass++) {  /* batches of 10, then any */
        ASSERT_EQ(pool_map_with(pool, pass == 0 ? &tens : NULL, fail_listed,
                                M, out, xs, PMAP_CONST(low),
                                PMAP_CONST(high)),
                  NLISTED);
        const pmap_failure_t *f;
        ASSERT_EQ(pool_failures(pool, &f), NLISTED);
        for (int i = 0; i < NLISTED; i++) {
            char msg[32];
            snprintf(msg, sizeof msg, "listed: %d", listed[i]);
            ASSERT_EQ(f[i].index, (size_t)listed[i]);
            ASSERT_EQ(f[i].error, PMAP_EFAIL);
            ASSERT_EQ(f[i].code, listed[i] + 1);
            ASSERT_STR_EQ(f[i].message, msg);
        }
        for (int i = 0, k = 0; i < M; i++) {
            bool failed = k < NLISTED && listed[k] == i;
            ASSERT_EQ(out[i], failed ? 0 : i + 1);
            k += failed;
        }
    }
    test_pool_end(pool, start);
}

TEST(fault_failures_at_batch_edges_fork)
{
    failures_at_batch_edges(PMAP_START_FORK);
}

TEST(fault_failures_at_batch_edges_server)
{
    failures_at_batch_edges(PMAP_START_SERVER);
}

TEST(fault_failures_at_batch_edges_in_process)
{
    failures_at_batch_edges(PMAP_START_INLINE);
}

/* ---- the caller's process ---------------------------------------------- */

static volatile sig_atomic_t chld_seen, alarms;

static void on_sigchld(int sig)
{
    (void)sig;
    chld_seen++;
}

TEST(host_own_children_and_sigchld_handler)
{
    struct sigaction sa = {0};
    sa.sa_handler = on_sigchld;
    sigemptyset(&sa.sa_mask);
    ASSERT(sigaction(SIGCHLD, &sa, NULL) == 0);
    pid_t mine = fork();
    ASSERT(mine >= 0);
    if (mine == 0)
        _exit(42);

    int xs[N], out[N];
    for (int i = 0; i < N; i++)
        xs[i] = i;
    pool_t *pool = pool_create(2);
    ASSERT_EQ(pool_map(pool, risky, N, out, xs, PMAP_CONST(BAD),
                       PMAP_CONST(ABORT)),
              1);
    pool_destroy(pool);
    /* Our child's status is still ours to collect. */
    int status;
    ASSERT(waitpid(mine, &status, 0) == mine);
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 42);
    ASSERT(chld_seen > 0);
}

static void reap_everything(int sig)
{
    (void)sig;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
    errno = saved;
}

/* A careless caller reaps every child in its handler, workers included:
 * nothing hangs, and the item that aborted is still a crash by SIGABRT
 * (its worker's crash report says so when the wait status is gone). */
TEST(host_sigchld_handler_that_steals_worker_statuses)
{
    struct sigaction sa = {0};
    sa.sa_handler = reap_everything;
    sigemptyset(&sa.sa_mask);
    ASSERT(sigaction(SIGCHLD, &sa, NULL) == 0);
    int xs[N], out[N];
    for (int i = 0; i < N; i++)
        xs[i] = i;
    pool_t *pool = pool_create(2);
    ASSERT_EQ(pool_map(pool, risky, N, out, xs, PMAP_CONST(BAD),
                       PMAP_CONST(ABORT)),
              1);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), 1);
    ASSERT_EQ(f[0].index, BAD);
    ASSERT_STR_EQ(pmap_err_name(f[0].error), "ECRASH");
    ASSERT_EQ(f[0].code, SIGABRT);
    for (int i = 0; i < N; i++)
        ASSERT_EQ(out[i], i == BAD ? 0 : 3 * i);
    pool_destroy(pool);
    signal(SIGCHLD, SIG_DFL);
}

TEST(host_sigchld_ignored)
{
    signal(SIGCHLD, SIG_IGN);
    int xs[N], out[N];
    for (int i = 0; i < N; i++)
        xs[i] = i;
    pool_t *pool = pool_create(2);
    ASSERT_EQ(pool_map(pool, risky, N, out, xs, PMAP_CONST(BAD),
                       PMAP_CONST(SEGV)),
              1);
    ASSERT_EQ(out[N - 1], 3 * (N - 1));
    pool_destroy(pool);
    signal(SIGCHLD, SIG_DFL);
}

static void on_alarm(int sig)
{
    (void)sig;
    alarms++;
}

static uint64_t slow_sum(pmap_bytes_t b, int spin)
{
    uint64_t h = 0;
    for (int r = 0; r < spin; r++)
        for (size_t i = 0; i < b.size; i += 64)
            h += ((unsigned char *)b.data)[i] + (uint64_t)r;
    return h;
}
PMAP_EXPORT(slow_sum, uint64_t, pmap_bytes_t, int);

/* A 1 kHz SIGALRM without SA_RESTART interrupts every system call of the
 * map, many times: each one is retried. */
TEST(host_fast_timer_without_sa_restart)
{
    struct sigaction sa = {0};
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    ASSERT(sigaction(SIGALRM, &sa, NULL) == 0);
    /* Under valgrind, whose signal delivery is slow, 100 Hz. */
    long period_us = test_under_valgrind() ? 10000 : 1000;
    struct itimerval it = {{0, period_us}, {0, period_us}};
    ASSERT(setitimer(ITIMER_REAL, &it, NULL) == 0);

    enum { M = 64 };
    static pmap_bytes_t in[M];
    uint64_t out[M];
    int spin[M];
    for (int i = 0; i < M; i++) {
        in[i].size = test_scaled((size_t)(i + 1) << 16);    /* to 4 MiB */
        in[i].data = malloc(in[i].size);
        memset(in[i].data, i, in[i].size);
        spin[i] = (int)test_scaled(40);
    }
    pool_t *pool = pool_create(2);
    ASSERT(pool != NULL);
    /* Map until the timer has fired 50 times during maps. */
    int during = 0;
    for (int round = 0; round < 3 || during < 50; round++) {
        ASSERT(round < 100000);
        sig_atomic_t before = alarms;
        ASSERT_OK(pool_map(pool, slow_sum, M, out, in, spin));
        during += alarms - before;
        for (int i = 0; i < M; i++)
            ASSERT(out[i] == slow_sum(in[i], spin[i]));
    }
    pool_destroy(pool);
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    for (int i = 0; i < M; i++)
        free(in[i].data);
}

static int chatty(int x)
{
    printf("cb%d\n", x);
    fflush(stdout);
    if (x == 5)
        abort();    /* forces a replacement worker mid-map */
    return x;
}
PMAP_EXPORT(chatty, int, int);

static void on_any(int sig)
{
    (void)sig;
}

static void on_any_info(int sig, siginfo_t *info, void *context)
{
    (void)sig, (void)info, (void)context;
}

/* What a worker does with sig: 0 the default, 1 ignore it, 2 a handler. */
static int disposition(int sig)
{
    struct sigaction sa;
    if (sigaction(sig, NULL, &sa) != 0)
        return -1;
    if (sa.sa_flags & SA_SIGINFO)
        return 2;
    return sa.sa_handler == SIG_DFL ? 0 : sa.sa_handler == SIG_IGN ? 1 : 2;
}
PMAP_EXPORT(disposition, int, int);

/* No handler of the caller's is left in a worker, plain or SA_SIGINFO, a
 * standard signal or a real-time one; what the caller ignores stays
 * ignored, and so is SIGINT (the caller's to handle).  Forked from the
 * caller, which tells its workers which signals it handles, or from the
 * fork server, started while the handlers were there. */
static void handlers_not_left(int start)
{
    struct sigaction plain = {0}, info = {0}, ignore = {0}, old[6];
    plain.sa_handler = on_any;
    info.sa_sigaction = on_any_info;
    info.sa_flags = SA_SIGINFO;
    ignore.sa_handler = SIG_IGN;
    /* SIGRTMAX: the mask's last bit (the 64th, where /proc says it);
     * valgrind keeps that one for itself. */
    int last = test_under_valgrind() ? SIGRTMAX - 1 : SIGRTMAX;
    int sigs[6] = {SIGUSR1, SIGUSR2, SIGTERM, SIGRTMIN + 2, last, SIGPIPE};
    const struct sigaction *set[6] = {&plain, &info, &plain,
                                      &info,  &plain, &ignore};
    for (int i = 0; i < 6; i++)
        ASSERT(sigaction(sigs[i], set[i], &old[i]) == 0);
    int in[7] = {SIGUSR1, SIGUSR2, SIGTERM, SIGRTMIN + 2,
                 last,    SIGPIPE, SIGINT};
    int out[7];
    pool_t *pool = test_pool((pool_options_t){.workers = 2, .start = start});
    pool_map_options_t one = {.chunk = 1};     /* both workers */
    ASSERT_OK(pool_map_with(pool, &one, disposition, 7, out, in));
    test_pool_end(pool, start);
    for (int i = 0; i < 6; i++)
        sigaction(sigs[i], &old[i], NULL);
    for (int i = 0; i < 5; i++)
        ASSERT_EQ(out[i], 0);
    ASSERT_EQ(out[5], 1);
    ASSERT_EQ(out[6], 1);
}

TEST(host_handlers_not_left_in_workers)
{
    handlers_not_left(PMAP_START_FORK);
}

TEST(host_handlers_not_left_in_workers_server)
{
    handlers_not_left(PMAP_START_SERVER);
}

/* Text the caller left in stdio buffers is printed once, not once per
 * worker, even when workers are forked again mid-map. */
TEST(host_unflushed_stdio_printed_once)
{
    char path[] = "/tmp/pmap-stdio-XXXXXX";
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    fflush(NULL);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        dup2(fd, STDOUT_FILENO);    /* a file: stdout is fully buffered */
        printf("before-create;");
        pool_t *pool = pool_create(2);
        printf("before-map;");
        int xs[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, out[10];
        pool_map_options_t one = {.chunk = 1};
        int rc = pool_map_with(pool, &one, chatty, 10, out, xs);
        pool_destroy(pool);
        printf("end\n");
        exit(rc == 1 ? 0 : 1);
    }
    int status;
    ASSERT(waitpid(pid, &status, 0) == pid);
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    char text[4096];
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    ASSERT(n > 0);
    text[n] = '\0';
    close(fd);
    unlink(path);
    const char *words[] = {"before-create;", "before-map;", "end\n", "cb9\n"};
    for (int i = 0; i < 4; i++) {
        int count = 0;
        for (const char *p = text; (p = strstr(p, words[i])) != NULL; p++)
            count++;
        if (count != 1)
            test_fail(__FILE__, __LINE__, "\"%s\" printed %d times in: %s",
                      words[i], count, text);
    }
}

static long sleepy_pid(int x)
{
    if (x >= 0) {
        struct timespec d = {30, 0};
        nanosleep(&d, NULL);
    }
    return (long)getpid();
}
PMAP_EXPORT(sleepy_pid, long, int);

/* The caller is SIGKILLed while its workers are busy: none survives it.
 * This test adopts the orphans (a subreaper) to see them end. */
TEST(host_caller_killed_mid_map_leaves_no_worker)
{
#ifdef PR_SET_CHILD_SUBREAPER
    ASSERT(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    int p[2];
    ASSERT(pipe(p) == 0);
    pid_t caller = fork();
    ASSERT(caller >= 0);
    if (caller == 0) {
        pool_t *pool = pool_create(3);
        int xs[3] = {-1, -1, -1}, busy[3] = {0, 1, 2};
        long pids[3];
        pool_map_options_t one = {.chunk = 1};
        pool_map_with(pool, &one, sleepy_pid, 3, pids, xs);
        if (write(p[1], pids, sizeof pids) != sizeof pids)
            _exit(1);
        pool_map_with(pool, &one, sleepy_pid, 3, pids, busy);  /* 30 s */
        _exit(1);
    }
    close(p[1]);
    long pids[3];
    ASSERT(read(p[0], pids, sizeof pids) == sizeof pids);
    close(p[0]);
    struct timespec settle = {0, 100000000};
    nanosleep(&settle, NULL);   /* let the workers enter their 30 s sleep */
    kill(caller, SIGKILL);
    ASSERT(waitpid(caller, NULL, 0) == caller);
    /* Each orphan must end promptly: we reap it as its new parent. */
    for (int i = 0; i < 3; i++) {
        int waited_ms = 0;
        while (waitpid((pid_t)pids[i], NULL, WNOHANG) == 0) {
            if (waited_ms++ > 5000)
                test_fail(__FILE__, __LINE__, "worker %ld survived", pids[i]);
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        }
    }
#else
    SKIP("no PR_SET_CHILD_SUBREAPER to adopt the orphans");
#endif
}

/* The pipes a process holds at descriptors 3 and above, as inodes from
 * /proc, less those of skip (nskip of them). */
static int pipes_of(long pid, unsigned long *inodes, int max,
                    const unsigned long *skip, int nskip)
{
    int n = 0;
    for (int fd = 3; fd < 1024 && n < max; fd++) {
        char path[64], link[64];
        snprintf(path, sizeof path, "/proc/%ld/fd/%d", pid, fd);
        ssize_t len = readlink(path, link, sizeof link - 1);
        if (len <= 0)
            continue;
        link[len] = '\0';
        bool skipped = false;
        if (sscanf(link, "pipe:[%lu]", &inodes[n]) != 1)
            continue;
        for (int i = 0; i < nskip; i++)
            skipped = skipped || inodes[n] == skip[i];
        if (!skipped)
            n++;
    }
    return n;
}

/* Two pools: each worker holds the two pipes of its own channel and
 * nothing of another worker's or of the other pool, and destroying one
 * does not disturb the other. */
TEST(host_two_pools_share_no_descriptor)
{
    if (access("/proc/self/fd", R_OK) != 0)
        SKIP("no /proc to list a worker's descriptors");
    unsigned long before[64];   /* the test's own, which workers inherit */
    int nbefore = pipes_of((long)getpid(), before, 64, NULL, 0);
    pool_t *a = pool_create(2), *b = pool_create(2);
    int xs[2] = {-1, -1};
    long pa[2], pb[2];
    pool_map_options_t one = {.chunk = 1};
    ASSERT_OK(pool_map_with(a, &one, sleepy_pid, 2, pa, xs));
    ASSERT_OK(pool_map_with(b, &one, sleepy_pid, 2, pb, xs));
    unsigned long mine[64], theirs[4][64];
    int nmine = pipes_of((long)getpid(), mine, 64, before, nbefore);
    ASSERT_EQ(nmine, 4 * 3);    /* per worker: in, out and out's reader */
    long workers[4] = {pa[0], pa[1], pb[0], pb[1]};
    for (int w = 0; w < 4; w++) {
        unsigned long held[64];
        int nheld = pipes_of(workers[w], held, 64, before, nbefore), n = 0;
        for (int k = 0; k < nheld; k++) {   /* those of the caller's */
            for (int i = 0; i < nmine; i++) {
                if (held[k] == mine[i]) {
                    ASSERT(n < 2);
                    theirs[w][n++] = held[k];
                    break;
                }
            }
        }
        ASSERT_EQ(n, 2);
        ASSERT(theirs[w][0] != theirs[w][1]);   /* one pipe each way */
        for (int k = 0; k < 2; k++) {
            for (int v = 0; v < w; v++)     /* and no other worker's */
                ASSERT(theirs[w][k] != theirs[v][0] &&
                       theirs[w][k] != theirs[v][1]);
        }
    }
    pool_destroy(b);
    ASSERT_OK(pool_map_with(a, &one, sleepy_pid, 2, pa, xs));
    pool_destroy(a);
}

/* This process's descriptors that are 0, 1 or 2, or not close-on-exec,
 * as bits (fd 63 at most) in *bad, but the listing's own and those in
 * `before` (the test runner's); how many descriptors it saw, or -1 without
 * /proc. */
static int unclean_fds(uint64_t before, uint64_t *bad)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    int seen = 0;
    *bad = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] == '.' || fd == dirfd(d))
            continue;
        seen++;
        uint64_t bit = (uint64_t)1 << (fd < 63 ? fd : 63);
        int flags = fcntl(fd, F_GETFD);
        if (!(before & bit) &&
            (fd <= 2 || flags < 0 || !(flags & FD_CLOEXEC)))
            *bad |= bit;
    }
    closedir(d);
    return seen;
}

/* In a worker: its unclean descriptors (unclean_fds) but before's. */
static long worker_unclean_fds(int x, long before)
{
    uint64_t bad;
    (void)x;
    return unclean_fds((uint64_t)before, &bad) < 0 ? -1 : (long)bad;
}
PMAP_EXPORT(worker_unclean_fds, long, int, long);

/* Runs check(arg) in a child process, whose state it may change at will
 * (close its standard descriptors, set the environment): its result, as
 * the child's exit status (0: all went as expected). */
static int in_child(int (*check)(int), int arg)
{
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0)
        _exit(check(arg));
    int status;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* With descriptors 0 to 2 closed, as a daemon may have them: every
 * descriptor the library makes, in the caller (its pools' epoll sets and
 * channels, pmap_alloc's heap, the fork server's channel) and in the
 * workers, is above 2, so that a stray printf cannot write into one, and
 * close-on-exec.  In a child, whose report is its exit status: 0, or 1 +
 * the step that found a bad one. */
static int descriptors_clean(int unused)
{
    (void)unused;
    uint64_t before, bad;
    if (unclean_fds(0, &before) < 0)
        return 1;
    before &= ~(uint64_t)7;     /* 0 to 2 are closed, may come back */
    for (int fd = 0; fd <= 2; fd++)
        close(fd);
    void *block = pmap_alloc(4096);
    pool_t *pools[2] = {NULL, NULL};
    pool_options_t fork_opts = {.workers = 2, .start = PMAP_START_FORK};
    pool_options_t server_opts = {.workers = 2, .start = PMAP_START_SERVER};
    if (block == NULL || pool_create_with(&pools[0], &fork_opts) != 0 ||
        pmap_init() != 0 || pool_create_with(&pools[1], &server_opts) != 0)
        return 1;
    for (int p = 0; p < 2; p++) {
        int xs[4] = {0};
        long out[4];
        if (pool_fd(pools[p]) <= 2 ||
            pool_map(pools[p], worker_unclean_fds, 4, out, xs,
                     PMAP_CONST((long)before)) != 0)
            return 2 + p;
        for (int i = 0; i < 4; i++) {
            if (out[i] != 0)
                return 4 + p;   /* a worker's */
        }
    }
    if (unclean_fds(before, &bad) < 0 || bad != 0)
        return 6;               /* the caller's */
    for (int p = 0; p < 2; p++)
        pool_destroy(pools[p]);
    pmap_free(block);
    pmap_exit();
    return 0;
}

TEST(host_descriptors_above_stderr_and_close_on_exec)
{
    if (access("/proc/self/fd", R_OK) != 0)
        SKIP("no /proc to list the descriptors");
    ASSERT_EQ(in_child(descriptors_clean, 0), 0);
}

/* ---- the caller's signal state --------------------------------------- */

#ifdef NSIG
#define SIGNALS NSIG
#else
#define SIGNALS 65
#endif

/* The caller's signal dispositions and mask, as sigaction and
 * pthread_sigmask show them. */
typedef struct signal_state {
    struct sigaction act[SIGNALS];
    sigset_t mask;
} signal_state_t;

static void signal_state(signal_state_t *s)
{
    memset(s, 0, sizeof *s);
    for (int sig = 1; sig < SIGNALS; sig++)
        sigaction(sig, NULL, &s->act[sig]);     /* fails for some: zeroed */
    pthread_sigmask(SIG_BLOCK, NULL, &s->mask);
}

/* The first signal whose disposition or blocking differs, or 0. */
static int signal_state_changed(const signal_state_t *a)
{
    signal_state_t b;
    signal_state(&b);
    for (int sig = 1; sig < SIGNALS; sig++) {
        const struct sigaction *x = &a->act[sig], *y = &b.act[sig];
        if (x->sa_handler != y->sa_handler || x->sa_flags != y->sa_flags ||
            sigismember(&a->mask, sig) != sigismember(&b.mask, sig))
            return sig;
        for (int m = 1; m < SIGNALS; m++) {
            if (sigismember(&x->sa_mask, m) != sigismember(&y->sa_mask, m))
                return sig;
        }
    }
    return 0;
}

static void on_usr1(int sig)
{
    (void)sig;
}

/* -1 aborts, -2 sleeps for a minute, else x. */
static long crash_or_sleep(long x)
{
    if (x == -1)
        abort();
    if (x == -2) {
        struct timespec d = {60, 0};
        nanosleep(&d, NULL);
    }
    return x;
}
PMAP_EXPORT(crash_or_sleep, long, long);

/* Crashes, a timeout and a cancel in a pool of each start method: they
 * leave the caller's signal handlers and mask as they were (a handler of
 * its own, an ignored signal and a blocked one among them): the library
 * installs no handler and changes no mask in the caller, not even for a
 * moment that another thread could see after the call returns. */
static void signals_untouched(int start)
{
    struct sigaction usr1 = {.sa_handler = on_usr1};
    struct sigaction ign = {.sa_handler = SIG_IGN};
    sigemptyset(&usr1.sa_mask);
    sigaddset(&usr1.sa_mask, SIGUSR2);
    sigemptyset(&ign.sa_mask);
    ASSERT(sigaction(SIGUSR1, &usr1, NULL) == 0);
    ASSERT(sigaction(SIGUSR2, &ign, NULL) == 0);
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGWINCH);
    ASSERT(pthread_sigmask(SIG_BLOCK, &block, &old) == 0);
    signal_state_t before;
    signal_state(&before);

    if (start == PMAP_START_SERVER)
        ASSERT_OK(pmap_init());
    ASSERT_EQ(signal_state_changed(&before), 0);
    pool_options_t po = {.workers = 2, .start = start};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    ASSERT_EQ(signal_state_changed(&before), 0);
    long xs[4] = {1, -1, 3, 4}, out[4];
    ASSERT_EQ(pool_map(pool, crash_or_sleep, 4, out, xs), 1);   /* a crash */
    ASSERT_EQ(signal_state_changed(&before), 0);
    pool_map_options_t quick = {.timeout = 0.2};
    xs[1] = -2;
    ASSERT_EQ(pool_map_with(pool, &quick, crash_or_sleep, 4, out, xs), 1);
    ASSERT_EQ(signal_state_changed(&before), 0);
    pmap_job_t *job;
    ASSERT_OK(pool_map_async(pool, NULL, &job, crash_or_sleep, 4, out, xs));
    pmap_job_cancel(job);
    ASSERT_EQ(pmap_job_wait(job, -1), PMAP_ECANCELED);
    pmap_job_free(job);
    ASSERT_EQ(signal_state_changed(&before), 0);
    pool_destroy(pool);
    if (start == PMAP_START_SERVER)
        pmap_exit();
    ASSERT_EQ(signal_state_changed(&before), 0);

    pthread_sigmask(SIG_SETMASK, &old, NULL);
    signal(SIGUSR1, SIG_DFL);
    signal(SIGUSR2, SIG_DFL);
}

TEST(host_caller_signal_state_untouched)
{
    signals_untouched(PMAP_START_FORK);
}

TEST(host_caller_signal_state_untouched_server)
{
    signals_untouched(PMAP_START_SERVER);
}

/* A worker_init that never returns. */
static int never_ready(int worker, void *arg)
{
    (void)worker;
    (void)arg;
    for (;;)
        pause();
    return 0;
}

/* The parent of process pid (/proc/pid/stat), or 0. */
static long parent_of(long pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    long ppid = 0;
    if (p == NULL || sscanf(p + 1, " %*c %ld", &ppid) != 1)
        return 0;
    return ppid;
}

/* In a child whose fds 1 and 2 go to one file: malformed environment
 * settings, crashes, a timeout, a cancel, a stuck worker_init and a
 * killed fork server, with every start method.  Exit status 0 when all
 * went as expected (what the library says is in return codes). */
static int quiet_through_trouble(int out)
{
    if (dup2(out, 1) < 0 || dup2(out, 2) < 0)
        return 1;
    setenv("PMAP_WORKERS", "lots", 1);
    setenv("PMAP_CHUNK", "-3", 1);
    setenv("PMAP_START", "teleport", 1);
    if (pmap_init() != 0)
        return 2;
    int starts[3] = {PMAP_START_FORK, PMAP_START_SERVER, PMAP_START_INLINE};
    for (int k = 0; k < 3; k++) {
        pool_options_t po = {.workers = 2, .start = starts[k]};
        pool_t *pool;
        if (pool_create_with(&pool, &po) != 0)
            return 3;
        /* In process, a crash or a hang would be the caller's own. */
        if (starts[k] != PMAP_START_INLINE) {
            long xs[4] = {1, -1, 3, -2}, out4[4];
            pool_map_options_t quick = {.timeout = 0.3};
            if (pool_map_with(pool, &quick, crash_or_sleep, 4, out4, xs) != 2)
                return 4;   /* a crash and a timeout */
            pmap_job_t *job;
            xs[1] = -2;
            if (pool_map_async(pool, NULL, &job, crash_or_sleep, 4, out4,
                               xs) != 0)
                return 5;
            pmap_job_cancel(job);
            int rc = pmap_job_wait(job, -1);
            pmap_job_free(job);
            if (rc != PMAP_ECANCELED)
                return 5;
        }
        pool_destroy(pool);
    }
    pool_options_t stuck = {.workers = 1, .start_timeout = 0.3,
                            .worker_init = never_ready};
    pool_t *pool;
    if (pool_create_with(&pool, &stuck) != PMAP_ESTART)
        return 6;
    pool_options_t po = {.workers = 1, .start = PMAP_START_SERVER};
    if (pool_create_with(&pool, &po) != 0)
        return 7;
    pmap_worker_stats_t ws;
    if (pool_worker_stats(pool, 0, &ws) != 0)
        return 8;
    long server = parent_of(ws.pid);
    if (server <= 0 || kill((pid_t)server, SIGKILL) != 0)
        return 9;
    long x = 1, y;
    for (int i = 0; i < 2000 && pool_call(pool, crash_or_sleep, &y, x) == 0;
         i++)
        nanosleep(&(struct timespec){0, 1000000}, NULL);   /* until the
                                                    server's death shows */
    pool_destroy(pool);
    waitpid((pid_t)server, NULL, 0);
    pmap_exit();
    return 0;
}

TEST(host_library_never_prints)
{
    if (access("/proc/self/stat", R_OK) != 0)
        SKIP("no /proc to find the fork server");
    char path[] = "/tmp/pmap-quiet-XXXXXX";
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    unlink(path);
    int status = in_child(quiet_through_trouble, fd);
    struct stat st;
    ASSERT(fstat(fd, &st) == 0);
    close(fd);
    ASSERT_EQ(status, 0);
    ASSERT_EQ(st.st_size, 0);
}

/* Resident memory, in pages. */
static long resident_pages(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (f != NULL) {
        if (fscanf(f, "%ld %ld", &size, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident;
}

static int plus_one(int x)
{
    return x + 1;
}
PMAP_EXPORT(plus_one, int, int);

/* The number of the free descriptor that has n free ones below it: as
 * RLIMIT_NOFILE, it leaves the process n descriptors to open. */
static int free_fd_after(int n)
{
    int fd = 0;
    for (;; fd++) {
        if (fcntl(fd, F_GETFD) < 0 && n-- == 0)
            return fd;
    }
}

/* Bytes of the workers' arenas this process has mapped, less the spare
 * ones. */
static long long arenas_in_use(void)
{
    return test_shared_maps("/dev/zero", true) -
           test_spare_arenas(false) * PMAP__ARENA_SIZE;
}

/* pool_create running out of descriptors at every point of a new pool's
 * start (making the slots' channels and arenas, between forks of a group
 * and in the second group of 8): it fails with PMAP_EMFILE, leaving no
 * descriptor open, no child and no arena mapped (those of the slots made
 * and of the slots never reached), until the limit lets it through. */
TEST(host_pool_create_out_of_descriptors_leaves_nothing)
{
    struct rlimit old;
    ASSERT(getrlimit(RLIMIT_NOFILE, &old) == 0);
    int before = test_open_fds();
    long long mapped = arenas_in_use();
    bool made = false;
    for (int room = 0; room < 200 && !made; room++) {
        struct rlimit tight = {(rlim_t)free_fd_after(room), old.rlim_max};
        ASSERT(setrlimit(RLIMIT_NOFILE, &tight) == 0);
        pool_options_t o = {.workers = 10, .start = PMAP_START_FORK};
        pool_t *pool = NULL;
        int rc = pool_create_with(&pool, &o);
        ASSERT(setrlimit(RLIMIT_NOFILE, &old) == 0);
        if (rc == 0) {
            int x[20], y[20];
            for (int i = 0; i < 20; i++)
                x[i] = i;
            ASSERT_OK(pool_map(pool, plus_one, 20, y, x));
            ASSERT_EQ(y[19], 20);
            pool_destroy(pool);
            made = true;
        } else if (rc != PMAP_EMFILE) {
            test_fail(__FILE__, __LINE__, "room %d: %s", room,
                      pmap_err_name(rc));
        }
        ASSERT(pool == NULL || made);
        ASSERT_EQ(test_open_fds(), before);
        ASSERT_EQ(test_children(), 0);
        ASSERT_EQ(arenas_in_use(), mapped);
    }
    ASSERT(made);
}

TEST(host_thousand_create_destroy_cycles_leak_nothing)
{
    int xs[4] = {1, 2, 3, 4}, out[4];
    int fds = test_open_fds();
    long rss = 0;
    int cycles = (int)test_scaled(1000);
    for (int i = 0; i < cycles; i++) {
        pool_t *pool = pool_create(2);
        ASSERT(pool != NULL);
        if (i % 100 == 0)
            ASSERT_OK(pool_map(pool, plus_one, 4, out, xs));
        pool_destroy(pool);
        if (i == 100)
            rss = resident_pages();
        if (i % 50 == 0) {
            ASSERT_EQ(test_open_fds(), fds);
            ASSERT_EQ(test_children(), 0);
        }
    }
    ASSERT_EQ(test_open_fds(), fds);
    if (rss > 0 && !TEST_ASAN && !test_under_valgrind())
        ASSERT(resident_pages() - rss < 64);    /* < 256 KiB of growth */
}

/* As its worker leaves, writes a byte to the pipe whose write end arg
 * points to. */
static void say_gone(int worker, void *arg)
{
    char c = (char)('0' + worker);
    if (write(*(int *)arg, &c, 1) != 1)
        _exit(9);
}

/* The program forks a helper that does not exec, so that it holds a copy
 * of every descriptor of the pool, and the pool's workers are recycled
 * and then destroyed while the helper lives: each worker leaves as told
 * (its worker_exit runs) rather than waiting for an EOF that cannot come
 * until it is killed at the grace period's end. */
static void helper_holds_the_pools_ends(int start)
{
    enum { ITEMS = 60 };
    int hooks[2], alive[2];
    ASSERT(pipe(hooks) == 0);
    ASSERT_OK(pmap__set_nonblocking(hooks[0]));
    if (start == PMAP_START_SERVER)
        ASSERT_OK(pmap_init());
    pool_options_t po = {.workers = 2, .max_items_per_worker = 20,
                         .worker_exit = say_gone, .worker_arg = &hooks[1],
                         .start = start};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    ASSERT(pipe(alive) == 0);   /* after pmap_init: not the server's too */
    pid_t helper = fork();
    ASSERT(helper >= 0);
    if (helper == 0) {  /* until the test ends, however it ends */
        char c;
        close(alive[1]);
        _exit(read(alive[0], &c, 1) == 0 ? 0 : 1);
    }
    int xs[ITEMS], out[ITEMS];
    for (int i = 0; i < ITEMS; i++)
        xs[i] = i;
    pool_map_options_t o = {.chunk = 1};
    ASSERT_OK(pool_map_with(pool, &o, plus_one, ITEMS, out, xs));
    for (int i = 0; i < ITEMS; i++)
        ASSERT_EQ(out[i], i + 1);
    pmap_stats_t total;
    ASSERT_OK(pool_stats(pool, NULL, &total));
    ASSERT(total.restarts >= 2);    /* ITEMS / 20 workers at least, in all */
    pool_destroy(pool);
    char gone[64];
    ssize_t n = read(hooks[0], gone, sizeof gone);
    close(alive[1]);
    ASSERT(waitpid(helper, NULL, 0) == helper);
    close(alive[0]);
    if (start == PMAP_START_SERVER)
        pmap_exit();
    close(hooks[0]);
    close(hooks[1]);
    /* every worker that lived, the recycled and the last two */
    ASSERT_EQ(n, (ssize_t)(2 + total.restarts));
}

TEST(host_forked_helper_holding_the_pools_ends_fork)
{
    test_arm(30);
    helper_holds_the_pools_ends(PMAP_START_FORK);
    alarm(0);
}

TEST(host_forked_helper_holding_the_pools_ends_server)
{
    test_arm(30);
    helper_holds_the_pools_ends(PMAP_START_SERVER);
    alarm(0);
}

/* This process's mapped pages, all of them (-1 without /proc). */
static long mapped_pages(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = -1;
    if (f != NULL) {
        if (fscanf(f, "%ld", &size) != 1)
            size = -1;
        fclose(f);
    }
    return size;
}

/* pool_destroy keeps the first buffers of its pool (its room, at most
 * 1 MiB) for the next pool, which takes it if it is large enough: pools
 * growing and shrinking in turn, past that limit too, get their results
 * right, and no room is left behind (the process's mappings do not grow). */
TEST(host_pools_of_changing_sizes_share_one_spare_room)
{
    static const int sizes[] = {1, 6, 2, 12, 3, 24};
    int xs[300], out[300];
    for (int i = 0; i < 300; i++)
        xs[i] = i;
    pool_map_options_t one = {.chunk = 1};  /* every worker, small frames */
    long before = -1;
    int cycles = (int)test_scaled(120);
    for (int c = 0; c < cycles; c++) {
        int n = sizes[c % 6];
        pool_t *pool = pool_create(n);
        ASSERT(pool != NULL);
        ASSERT_OK(pool_map_with(pool, &one, plus_one, 300, out, xs));
        for (int i = 0; i < 300; i++)
            ASSERT_EQ(out[i], i + 1);
        pool_destroy(pool);
        if (c == 5)
            before = mapped_pages();
    }
    ASSERT_EQ(test_children(), 0);
    /* A room left behind a cycle would be some 50 MiB by now. */
    if (before >= 0 && !TEST_ASAN && !test_under_valgrind())
        ASSERT(mapped_pages() - before < 1024);     /* 4 MiB */
}

/* 0, 1, ... m - 1, and room for as many results (both freed by the
 * caller). */
static long *counted(size_t m, long **out)
{
    long *xs = malloc(m * sizeof *xs);
    *out = malloc(m * sizeof **out);
    ASSERT(xs != NULL && *out != NULL);
    for (size_t i = 0; i < m; i++)
        xs[i] = (long)i;
    return xs;
}

/* A pool of n workers forked here, one map of m items through it (chunk
 * items a batch), the pool destroyed; returns the spare arenas while it
 * lived. */
static int pool_cycle(int n, const long *xs, long *out, size_t m,
                      size_t chunk)
{
    pool_options_t po = {.workers = n, .start = PMAP_START_FORK};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    pool_map_options_t mo = {.chunk = chunk};
    int rc = pool_map_with(pool, &mo, crash_or_sleep, m, out, xs);
    for (size_t i = 0; i < m; i++)
        ASSERT(out[i] == xs[i] || (xs[i] == -1 && rc == 1));
    ASSERT(rc == 0 || rc == 1);
    int spare = (int)test_spare_arenas(false);
    pool_destroy(pool);
    return spare;
}

/* The arenas of workers that left as told serve the next workers forked
 * here: a new pool takes them and maps none, and pool_destroy keeps them,
 * but not the arena of a worker that crashed, nor one whose batches went
 * deep into its regions, nor more than 64. */
TEST(host_ended_workers_arenas_serve_the_next_pools)
{
    if (access("/proc/self/maps", R_OK) != 0)
        SKIP("no /proc/self/maps");
    if (test_under_valgrind())
        SKIP("valgrind: every child inherits the arenas, none is kept");
    enum { DEEP = 256 << 10, M = 20 * DEEP / sizeof(long) };
    long *out, *xs = counted(M, &out);
    ASSERT_EQ(test_spare_arenas(false), 0);
    ASSERT_EQ(pool_cycle(3, xs, out, 30, 1), 0);
    ASSERT_EQ(test_spare_arenas(false), 3);
    ASSERT_EQ(arenas_in_use(), 0);
    for (int c = 0; c < 20; c++) {
        long long mapped = test_shared_maps("/dev/zero", true);
        ASSERT_EQ(pool_cycle(c % 3 + 1, xs, out, 30, 1), 3 - (c % 3 + 1));
        ASSERT_EQ(test_shared_maps("/dev/zero", true), mapped);
        ASSERT_EQ(test_spare_arenas(false), 3);
    }
    /* Columns of values in shared memory, 256 KiB a batch: kept, and
     * still reckoned that deep after a pool of small batches had them. */
    long long shallow = test_spare_arenas(true);
    ASSERT_EQ(pool_cycle(2, xs, out, M, DEEP / sizeof(long)), 1);
    ASSERT_EQ(test_spare_arenas(false), 3);
    long long deep = test_spare_arenas(true);
    ASSERT(deep > shallow + 2 * 4 * 200 * 1024);
    ASSERT_EQ(pool_cycle(2, xs, out, 30, 1), 1);
    ASSERT_EQ(test_spare_arenas(true), deep);
    /* A crash: the crashed worker's arena goes, its replacement takes the
     * last spare one and keeps it. */
    xs[7] = -1;
    ASSERT_EQ(pool_cycle(2, xs, out, 30, 1), 0);
    xs[7] = 7;
    ASSERT_EQ(test_spare_arenas(false), 2);
    /* More than 256 KiB a batch: not kept. */
    ASSERT_EQ(pool_cycle(2, xs, out, M, M / 4), 0);
    ASSERT_EQ(test_spare_arenas(false), 0);
    ASSERT_EQ(arenas_in_use(), 0);
    /* 64 at most. */
    ASSERT_EQ(pool_cycle(66, xs, out, 66, 1), 0);
    ASSERT_EQ(test_spare_arenas(false), 64);
    ASSERT_EQ(arenas_in_use(), 0);
    /* 8 MiB at most, as reckoned: ten of them used 256 KiB deep each (two
     * full batches apiece) reckon four times that, and their slot and
     * crash handler's stack; beside the 54 others, only so many fit. */
    ASSERT_EQ(pool_cycle(10, xs, out, M, DEEP / sizeof(long)), 54);
    long long bare = PMAP__ARENA_HEAD + PMAP__ALTSTACK_SIZE;
    ASSERT_EQ(test_spare_arenas(false),
              54 + ((8 << 20) - 54 * bare) / (bare + 4 * DEEP));
    ASSERT(test_spare_arenas(true) <= 8 << 20);
    ASSERT_EQ(arenas_in_use(), 0);
    ASSERT_EQ(test_children(), 0);
    free(xs);
    free(out);
}

/* The resident KiB of this process's shared mappings of /dev/zero: in a
 * worker, its arena's pages in its page tables. */
static long arena_resident_kib(long x)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (f == NULL)
        return -1;
    char line[4096], perms[8];
    unsigned long long lo, hi;
    bool arena = false;
    long kib, total = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        if (sscanf(line, "%llx-%llx %7s", &lo, &hi, perms) == 3)
            arena = strcmp(perms, "rw-s") == 0 &&
                    strstr(line, "/dev/zero") != NULL;
        else if (arena && sscanf(line, "Rss: %ld kB", &kib) == 1)
            total += kib;
    }
    fclose(f);
    (void)x;
    return total;
}
PMAP_EXPORT(arena_resident_kib, long, long);

/* Whether this system can map pages in ahead of use (Linux 5.14), and
 * maps shared memory in pages of 4 KiB (no transparent huge pages for it,
 * which would map a new arena's first result page 2 MiB at once). */
static bool populate_works(void)
{
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "r");
    char modes[256] = "";
    if (f != NULL) {
        if (fgets(modes, sizeof modes, f) == NULL)
            modes[0] = '\0';
        fclose(f);
    }
    if (modes[0] != '\0' && strstr(modes, "[never]") == NULL &&
        strstr(modes, "[deny]") == NULL && strstr(modes, "[advise]") == NULL)
        return false;
#ifdef MADV_POPULATE_WRITE
    size_t size = 4096;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    bool works = p != MAP_FAILED && madvise(p, size, MADV_POPULATE_WRITE) == 0;
    if (p != MAP_FAILED)
        munmap(p, size);
    return works;
#else
    return false;
#endif
}

/* A worker given a spare arena has the result pages that its predecessor
 * wrote mapped before its first batch (pmap__arena_prefault), where a
 * worker of a new arena maps each as it first writes it; and only its
 * predecessor's: after a worker that wrote none, the next maps none. */
TEST(host_spare_arena_comes_with_its_result_pages_mapped)
{
    if (access("/proc/self/smaps", R_OK) != 0)
        SKIP("no /proc/self/smaps");
    if (test_under_valgrind())
        SKIP("valgrind: every child inherits the arenas, none is kept");
    if (!populate_works())
        SKIP("pages are not mapped ahead of use here (no "
             "MADV_POPULATE_WRITE, or huge pages for shared memory)");
    enum { DEEP = 256 << 10, M = 2 * DEEP / sizeof(long) };
    long *out, *xs = counted(M, &out);
    ASSERT_EQ(test_spare_arenas(false), 0);
    pool_options_t po = {.workers = 1, .start = PMAP_START_FORK};
    pool_t *pool;
    long fresh, taken, after;
    ASSERT_OK(pool_create_with(&pool, &po));
    ASSERT_OK(pool_map(pool, arena_resident_kib, 1, &fresh, xs));
    pool_destroy(pool);
    ASSERT_EQ(test_spare_arenas(false), 1);     /* the first worker's */
    /* Both result regions written 256 KiB deep, the arena kept. */
    ASSERT_EQ(pool_cycle(1, xs, out, M, DEEP / sizeof(long)), 0);
    ASSERT_EQ(test_spare_arenas(false), 1);
    ASSERT_OK(pool_create_with(&pool, &po));
    ASSERT_EQ(test_spare_arenas(false), 0);
    ASSERT_OK(pool_map(pool, arena_resident_kib, 1, &taken, xs));
    pool_destroy(pool);
    ASSERT_OK(pool_create_with(&pool, &po));
    ASSERT_OK(pool_map(pool, arena_resident_kib, 1, &after, xs));
    pool_destroy(pool);
    ASSERT(fresh >= 0 && fresh < DEEP / 1024);
    ASSERT(taken >= fresh + 2 * DEEP / 1024 - 8);
    ASSERT(after >= 0 && after < DEEP / 1024);
    free(xs);
    free(out);
}

TEST(host_ten_thousand_maps_leak_nothing)
{
    pool_t *pool = pool_create(2);
    int xs[16], out[16];
    for (int i = 0; i < 16; i++)
        xs[i] = i;
    int fds = test_open_fds();
    long rss = 0;
    for (int m = 0; m < (int)test_scaled(10000); m++) {
        ASSERT_OK(pool_map(pool, plus_one, 16, out, xs));
        if (m == 1000)
            rss = resident_pages();
    }
    ASSERT_EQ(out[15], 16);
    ASSERT_EQ(test_open_fds(), fds);
    if (rss > 0 && !TEST_ASAN && !test_under_valgrind())
        ASSERT(resident_pages() - rss < 64);
    pool_destroy(pool);
}

/* ---- sizes ------------------------------------------------------------- */

static pmap_bytes_t echo_bytes(pmap_bytes_t b)
{
    pmap_bytes_t r = {malloc(b.size ? b.size : 1), b.size};
    if (b.size)
        memcpy(r.data, b.data, b.size);
    return r;
}
PMAP_EXPORT(echo_bytes, pmap_bytes_t, pmap_bytes_t);

TEST(size_64_mib_in_one_item_both_ways)
{
    size_t size = 64u << 20;
    pmap_bytes_t in[2] = {{malloc(size), size}, {(void *)"", 0}}, out[2];
    for (size_t i = 0; i < size; i++)
        ((unsigned char *)in[0].data)[i] = (unsigned char)(i * 7 + (i >> 13));
    pool_t *pool = pool_create(2);
    ASSERT_OK(pool_map(pool, echo_bytes, 2, out, in));
    ASSERT_EQ(out[0].size, size);
    ASSERT(memcmp(out[0].data, in[0].data, size) == 0);
    ASSERT_EQ(out[1].size, 0);
    free(out[0].data);
    free(out[1].data);
    free(in[0].data);
    pool_destroy(pool);
}

TEST(size_one_item_and_more_workers_than_cpus)
{
    pool_t *pool = pool_create(64);
    ASSERT(pool != NULL);
    ASSERT_EQ(pool_size(pool), 64);
    int x = 41, out;
    ASSERT_OK(pool_map(pool, plus_one, 1, &out, &x));
    ASSERT_EQ(out, 42);
    int xs[1000], outs[1000];
    for (int i = 0; i < 1000; i++)
        xs[i] = i;
    ASSERT_OK(pool_map(pool, plus_one, 1000, outs, xs));
    ASSERT_EQ(outs[999], 1000);
    pool_destroy(pool);
}
