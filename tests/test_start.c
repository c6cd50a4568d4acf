/* SPDX-License-Identifier: MIT */
/*
 * test_start.c - workers that start safely in any host: the fork server
 * (every kind of map works through it; its workers are the program as it
 * was at pmap_init), threads holding locks or calling malloc during
 * pool_create, the default size following the CPU affinity, Ctrl-C, and
 * workers that get work before they are ready (no worker_init).
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE     /* sched_setaffinity, CPU_COUNT */
#endif

#include "test.h"

#include "pmap_internal.h"

#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

static void sleep_ms(int ms)
{
    struct timespec d = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&d, NULL);
}

static int marker = 1;      /* 1 at pmap_init, 2 after */

static long probe(long x)
{
    if (x == -1)
        abort();
    if (x == -2)
        for (;;)
            pause();
    if (x == -3)
        return marker;
    return x * 2;
}
PMAP_EXPORT(probe, long, long);

static size_t measure(pmap_bytes_t b)
{
    size_t sum = 0;
    for (size_t i = 0; i < b.size; i += 4096)
        sum += ((unsigned char *)b.data)[i];
    return sum + b.size;
}
PMAP_EXPORT(measure, size_t, pmap_bytes_t);

static int inits;

static int count_init(int worker, void *arg)
{
    (void)worker;
    pmap_set_worker_state(arg);
    return 0;
}

static long from_state(long x)
{
    return x + *(int *)pmap_worker_state();
}
PMAP_EXPORT(from_state, long, long);

static int next_number(void *ctx, long *x)
{
    long *n = ctx;
    if (*n == 1000)
        return 0;
    *x = (*n)++;
    return 1;
}

static int sum_up(void *ctx, size_t i, void *result, const pmap_failure_t *f)
{
    (void)i;
    if (f == NULL)
        *(long *)ctx += *(long *)result;
    return 0;
}

TEST(start_server_runs_every_kind_of_map)
{
    inits = 5;      /* before pmap_init: what the server's workers see */
    ASSERT_OK(pmap_init());
    ASSERT_OK(pmap_init());     /* once is enough */
    pool_options_t po = {.workers = 2, .start = PMAP_START_SERVER,
                         .worker_init = count_init, .worker_arg = &inits};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    long xs[100], out[100];
    for (int i = 0; i < 100; i++)
        xs[i] = i;
    ASSERT_OK(pool_map(pool, probe, 100, out, xs));
    ASSERT_EQ(out[99], 198);
    ASSERT_OK(pool_map(pool, from_state, 100, out, xs));   /* worker_init */
    ASSERT_EQ(out[10], 15);

    /* Large buffers go through shared memory passed to the server. */
    pmap_bytes_t big[3];
    size_t sums[3];
    for (int i = 0; i < 3; i++) {
        big[i].size = (size_t)(i + 1) << 20;
        big[i].data = malloc(big[i].size);
        memset(big[i].data, 1, big[i].size);
    }
    ASSERT_OK(pool_map(pool, measure, 3, sums, big));
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(sums[i], big[i].size + big[i].size / 4096);
        free(big[i].data);
    }

    /* Faults are reported with their causes, via the server. */
    xs[50] = -1;
    ASSERT_EQ(pool_map(pool, probe, 100, out, xs), 1);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), 1);
    ASSERT_EQ(f[0].error, PMAP_ECRASH);
    ASSERT_EQ(f[0].code, SIGABRT);
    xs[50] = -2;
    pool_map_options_t mo = {.timeout = 0.2};
    ASSERT_EQ(pool_map_with(pool, &mo, probe, 100, out, xs), 1);
    ASSERT_EQ(pool_failures(pool, &f), 1);
    ASSERT_EQ(f[0].error, PMAP_ETIMEDOUT);

    /* Streams and callbacks. */
    long n = 0, total = 0;
    pool_map_options_t so = {.on_result = sum_up, .ctx = &total};
    ASSERT_OK(pool_map_stream(pool, &so, probe, next_number, &n));
    ASSERT_EQ(total, 999 * 1000);
    pmap_stats_t st;
    ASSERT_OK(pool_stats(pool, NULL, &st));
    ASSERT_EQ(st.restarts, 2);
    pool_destroy(pool);
    pmap_exit();
}

/* The server's workers are the program as it was at pmap_init; forked
 * workers are the program as it is at pool_create, heap included. */
TEST(start_server_workers_are_the_program_as_at_init)
{
    marker = 1;
    ASSERT_OK(pmap_init());
    marker = 2;
    size_t size = test_scaled(256u << 20);
    char *heap = malloc(size);
    memset(heap, 7, size);

    long x = -3, seen;
    pool_options_t server = {.workers = 1, .start = PMAP_START_SERVER};
    pool_options_t forked = {.workers = 1, .start = PMAP_START_FORK};
    pool_t *ps, *pf;
    ASSERT_OK(pool_create_with(&ps, &server));
    ASSERT_OK(pool_create_with(&pf, &forked));
    ASSERT_OK(pool_call(ps, probe, &seen, x));
    ASSERT_EQ(seen, 1);
    ASSERT_OK(pool_call(pf, probe, &seen, x));
    ASSERT_EQ(seen, 2);
    /* AUTO means the server once pmap_init was called. */
    pool_t *pa = pool_create(1);
    ASSERT_OK(pool_call(pa, probe, &seen, x));
    ASSERT_EQ(seen, 1);
    pool_destroy(pa);
    pool_destroy(ps);
    pool_destroy(pf);
    free(heap);
    pmap_exit();
    /* Without a server, asking for one is an error. */
    pool_t *p;
    ASSERT_EQ(pool_create_with(&p, &server), PMAP_EINVAL);
}

/* A thread of the caller holds a lock while a pool is created; the
 * workers' init takes that lock. */
static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t go = PTHREAD_MUTEX_INITIALIZER;

static int take_the_lock(int worker, void *arg)
{
    (void)worker;
    (void)arg;
    pthread_mutex_lock(&held);
    pthread_mutex_unlock(&held);
    return 0;
}

static void *hold_the_lock(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&held);
    pthread_mutex_lock(&go);    /* until the test lets go */
    pthread_mutex_unlock(&go);
    pthread_mutex_unlock(&held);
    return NULL;
}

/* Starts a thread running hold, which takes `held` and then waits for
 * `go` (locked here until the test lets go), and returns once the thread
 * holds `held`: 0, or -1 if it could not be started. */
static int start_holder(void *(*hold)(void *), pthread_t *t)
{
    pthread_mutex_lock(&go);
    if (pthread_create(t, NULL, hold, NULL) != 0)
        return -1;
    while (pthread_mutex_trylock(&held) == 0) {     /* until it has it */
        pthread_mutex_unlock(&held);
        sleep_ms(1);
    }
    return 0;
}

TEST(start_threaded_caller_holding_a_lock)
{
    ASSERT_OK(pmap_init());     /* before any thread: the server is clean */
    pthread_t t;
    ASSERT(start_holder(hold_the_lock, &t) == 0);
    /* Forked now, a worker is born with the lock held forever: it is
     * detected, and pool_create fails instead of hanging. */
    pool_options_t forked = {.workers = 2, .start = PMAP_START_FORK,
                             .worker_init = take_the_lock,
                             .start_timeout = 0.5};
    pool_t *pool;
    ASSERT_EQ(pool_create_with(&pool, &forked), PMAP_ESTART);
    /* From the server, the lock is as it was at pmap_init: free. */
    pool_options_t server = forked;
    server.start = PMAP_START_SERVER;
    ASSERT_OK(pool_create_with(&pool, &server));
    long xs[10] = {1, 2, 3}, out[10];
    ASSERT_OK(pool_map(pool, probe, 10, out, xs));
    ASSERT_EQ(out[2], 6);
    pool_destroy(pool);
    pthread_mutex_unlock(&go);
    pthread_join(t, NULL);
    pmap_exit();
}

/* Holds the library's own locks (the list of pools, the registry) until
 * the test lets go. */
static void *hold_library_locks(void *arg)
{
    (void)arg;
    pmap__local_t *local = pmap__local();
    pthread_mutex_lock(&local->pools_lock);
    pthread_mutex_lock(&local->registry_lock);
    pthread_mutex_lock(&held);
    pthread_mutex_lock(&go);    /* until the test lets go */
    pthread_mutex_unlock(&go);
    pthread_mutex_unlock(&held);
    pthread_mutex_unlock(&local->registry_lock);
    pthread_mutex_unlock(&local->pools_lock);
    return NULL;
}

/* A child the program forks while another thread holds libpmap's locks
 * finds them free (it sees their page zeroed), and its pools work. */
TEST(start_child_forked_while_a_thread_holds_the_library_locks)
{
    if (!pmap__local_wiped())
        SKIP("no MADV_WIPEONFORK: the locks are inherited as they are");
    test_arm(30);
    pthread_t t;
    ASSERT(start_holder(hold_library_locks, &t) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        pool_t *pool = pool_create(2);
        long xs[10] = {1, 2, 3}, out[10];
        _exit(pool != NULL && pool_map(pool, probe, 10, out, xs) == 0 &&
                      out[2] == 6
                  ? 0
                  : 1);
    }
    ASSERT(pid > 0);
    int status;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    pthread_mutex_unlock(&go);
    pthread_join(t, NULL);
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* Whether the mapping holding p is one that a child sees zeroed
 * (MADV_WIPEONFORK: "wf" among its VmFlags in /proc/self/smaps). */
static bool wiped_on_fork(const void *p)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (f == NULL)
        return false;
    char line[512];
    unsigned long long lo = 0, hi = 0, at = (unsigned long long)(uintptr_t)p;
    bool here = false, wiped = false;
    while (fgets(line, sizeof line, f) != NULL) {
        if (sscanf(line, "%llx-%llx ", &lo, &hi) == 2)    /* a mapping */
            here = at >= lo && at < hi;
        else if (here && strncmp(line, "VmFlags:", 8) == 0)
            wiped = strstr(line, " wf") != NULL;
    }
    fclose(f);
    return wiped;
}

/* What the caller writes while its workers are young, its locks and the
 * first buffers of the slots and of the first map, lies in memory that no
 * child gets a copy of, so writing it copies no page. */
TEST(start_caller_buffers_are_kept_from_children)
{
    if (!pmap__local_wiped())
        SKIP("no MADV_WIPEONFORK here");
    pool_t *pool = pool_create(2);
    ASSERT(pool != NULL);
    ASSERT(wiped_on_fork(pmap__local()));
    ASSERT(pool->spare != NULL && wiped_on_fork(pool->spare->scratch.data));
    ASSERT(wiped_on_fork(pool->spare->setup.segs));
    for (int i = 0; i < 2; i++) {
        ASSERT(wiped_on_fork(pool->workers[i].in.buf.data));
        ASSERT(wiped_on_fork(pool->workers[i].out.scratch.data));
        ASSERT(wiped_on_fork(pool->workers[i].out.segs));
    }
    ASSERT(!wiped_on_fork(pool->workers));  /* the slots: a forked copy
                                               closes their descriptors */
    long xs[64], out[64];
    for (int i = 0; i < 64; i++)
        xs[i] = i;
    for (int round = 0; round < 3; round++) {
        ASSERT_OK(pool_map(pool, probe, 64, out, xs));
        for (int i = 0; i < 64; i++)
            ASSERT_EQ(out[i], 2 * i);
    }
    pool_destroy(pool);
}

static volatile int stop_churn;

static void *churn_malloc(void *arg)
{
    (void)arg;
    while (!stop_churn) {
        void *p[64];
        for (int i = 0; i < 64; i++)
            p[i] = malloc((size_t)(i * 37 + 1));
        for (int i = 0; i < 64; i++)
            free(p[i]);
        if (test_under_valgrind())
            sleep_ms(1);    /* valgrind runs one thread at a time */
    }
    return NULL;
}

static char *allocate(long x)
{
    char *s = malloc(32);
    snprintf(s, 32, "%ld", x);
    return s;
}
PMAP_EXPORT(allocate, char *, long);

/* Threads calling malloc while workers are forked: malloc works in them. */
TEST(start_threads_calling_malloc_during_pool_create)
{
    if (TEST_ASAN)  /* seen: a worker stuck on the allocator's lock */
        SKIP("AddressSanitizer's allocator is not fork-safe: a thread may "
             "hold its lock at fork");
    pthread_t t[3];
    stop_churn = 0;
    for (int i = 0; i < 3; i++)
        ASSERT(pthread_create(&t[i], NULL, churn_malloc, NULL) == 0);
    for (int round = 0; round < (int)test_scaled(40); round++) {
        pool_t *pool;
        ASSERT_OK(pool_create_with(&pool, &(pool_options_t){.workers = 2}));
        long xs[20];
        char *out[20];
        for (int i = 0; i < 20; i++)
            xs[i] = i * round;
        ASSERT_OK(pool_map(pool, allocate, 20, out, xs));
        for (int i = 0; i < 20; i++) {
            char want[32];
            snprintf(want, sizeof want, "%ld", xs[i]);
            ASSERT_STR_EQ(out[i], want);
            free(out[i]);
        }
        pool_destroy(pool);
    }
    stop_churn = 1;
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
}

/* pool_create(0) uses the CPUs this process may run on. */
TEST(start_default_size_is_the_affinity)
{
#ifdef CPU_COUNT
    cpu_set_t set;
    ASSERT(sched_getaffinity(0, sizeof set, &set) == 0);
    pool_t *pool = pool_create(0);
    ASSERT(pool_size(pool) <= CPU_COUNT(&set));
    ASSERT(pool_size(pool) >= 1);
    pool_destroy(pool);
    /* Pinned to one CPU, as `taskset -c 0` does: one worker. */
    cpu_set_t one;
    CPU_ZERO(&one);
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (CPU_ISSET(cpu, &set)) {
            CPU_SET(cpu, &one);
            break;
        }
    }
    ASSERT(sched_setaffinity(0, sizeof one, &one) == 0);
    pool = pool_create(0);
    ASSERT_EQ(pool_size(pool), 1);
    pool_destroy(pool);
    ASSERT(sched_setaffinity(0, sizeof set, &set) == 0);
#else
    SKIP("no sched_getaffinity");
#endif
}

TEST(start_default_size_under_taskset)
{
    if (test_run("command -v taskset >/dev/null", NULL, 0) != 0)
        SKIP("no taskset (util-linux)");
    /* The test above, run alone on one CPU: there, one worker. */
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "taskset -c 0 %s/tests/runner --inline "
             "start_default_size_is_the_affinity",
             test_build_dir());
    ASSERT_EQ(test_run(cmd, NULL, 0), 0);
}

/*
 * Ctrl-C: SIGINT to the whole process group of a program with the default
 * SIGINT, during a long map.  The program ends; none of its workers (nor
 * its fork server) outlives it; the workers print nothing.  This test
 * adopts the orphans (a subreaper) to see them end.
 */
static void ctrl_c(bool server)
{
#ifdef PR_SET_CHILD_SUBREAPER
    ASSERT(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    int p[2], err[2];
    ASSERT(pipe(p) == 0 && pipe(err) == 0);
    pid_t program = fork();
    ASSERT(program >= 0);
    if (program == 0) {
        setpgid(0, 0);          /* a terminal's foreground job */
        signal(SIGINT, SIG_DFL);
        dup2(err[1], STDERR_FILENO);
        if (server && pmap_init() != 0)
            _exit(1);
        pool_t *pool = pool_create(3);
        long xs[3] = {-3, -3, -3}, pids[3];
        pool_map_options_t one = {.chunk = 1};
        if (pool == NULL || pool_map_with(pool, &one, probe, 3, pids, xs) != 0)
            _exit(1);
        long busy[6] = {-2, -2, -2, -2, -2, -2}, out[6];
        if (write(p[1], "x", 1) != 1)
            _exit(1);
        pool_map_with(pool, &one, probe, 6, out, busy);    /* forever */
        _exit(1);
    }
    close(p[1]);
    close(err[1]);
    char c;
    ASSERT(read(p[0], &c, 1) == 1);
    close(p[0]);
    sleep_ms(50);   /* the workers are in their endless items */
    kill(-program, SIGINT);
    int status;
    ASSERT(waitpid(program, &status, 0) == program);
    ASSERT(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT);
    /* Every descendant ends promptly: we reap them all as their parent. */
    for (int waited = 0;; waited++) {
        pid_t r = waitpid(-1, NULL, WNOHANG);
        if (r < 0 && errno == ECHILD)
            break;
        if (waited > 5000)
            test_fail(__FILE__, __LINE__, "a process survived Ctrl-C");
        if (r == 0)
            sleep_ms(1);
    }
    char text[256];
    ASSERT_EQ(read(err[0], text, sizeof text), 0);  /* nothing printed */
    close(err[0]);
#else
    (void)server;
    SKIP("no PR_SET_CHILD_SUBREAPER to adopt the orphans");
#endif
}

TEST(start_ctrl_c_ends_the_program_and_its_workers)
{
    ctrl_c(false);
}

TEST(start_ctrl_c_ends_the_program_its_server_and_its_workers)
{
    ctrl_c(true);
}

static pool_t *interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    pool_cancel(interrupted);   /* async-signal-safe */
}

static void *press_ctrl_c(void *arg)
{
    (void)arg;
    sleep_ms(100);
    kill(getpid(), SIGINT);     /* this thread takes it: main blocks it */
    return NULL;
}

/* A caller that handles SIGINT cancels the map from its handler, even when
 * the signal lands on another thread, and gets the pool back usable. */
TEST(start_caller_handles_ctrl_c_by_cancelling)
{
    interrupted = pool_create(2);
    struct sigaction sa = {0};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    ASSERT(sigaction(SIGINT, &sa, NULL) == 0);
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    pthread_t t;
    ASSERT(pthread_create(&t, NULL, press_ctrl_c, NULL) == 0);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    long busy[4] = {-2, -2, -2, -2}, out[4];
    pool_map_options_t o = {.kill_on_cancel = 1, .chunk = 1};
    ASSERT_EQ(pool_map_with(interrupted, &o, probe, 4, out, busy),
              PMAP_ECANCELED);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_join(t, NULL);
    long x = 21, y;
    ASSERT_OK(pool_call(interrupted, probe, &y, x));
    ASSERT_EQ(y, 42);
    pool_destroy(interrupted);
    signal(SIGINT, SIG_DFL);
}

/* ---- without worker_init: work before READY ------------------------------ */

/*
 * A gate that the n-th worker forked from here on waits at if bit n of
 * `wait` is set, before anything of libpmap's runs in it (a pthread_atfork
 * child handler), and what it does then: die if bit n of `die` is set,
 * hang if bit n of `hang` is (stopped, then, if continued, in pause).  The
 * others pass.  Forks are numbered in the caller, as they are made (the
 * children may run in any order).
 */
static struct {
    int fd[2];
    uint64_t wait, die, hang;
    int forked;     /* forks made since the gate was installed */
    int n;          /* in a child: its number */
} gate;

enum { GATE_PASS = 0, GATE_DIE = 1, GATE_HANG = 2 };   /* the first worker */

static void gate_count(void)
{
    gate.n = gate.forked++;
}

static void at_gate(void)
{
    int n = gate.n;
    char c;
    if (n < 64 && (gate.wait >> n & 1) && read(gate.fd[0], &c, 1) != 1)
        _exit(90);
    if (n < 64 && (gate.die >> n & 1))
        kill(getpid(), SIGKILL);
    if (n < 64 && (gate.hang >> n & 1))
        kill(getpid(), SIGSTOP);
    while (n < 64 && (gate.hang >> n & 1))
        pause();    /* every signal is blocked here: until SIGKILL */
}

/* Holds the workers forked from here on whose bits are set in `wait`;
 * those whose bits are set in `die` or `hang` then do so. */
static int gate_install_with(uint64_t wait, uint64_t die, uint64_t hang)
{
    if (pipe(gate.fd) < 0)
        return -1;
    gate.forked = 0;
    gate.wait = wait;
    gate.die = die;
    gate.hang = hang;
    static bool registered;     /* once: handlers cannot be removed */
    if (registered)
        return 0;
    registered = true;
    return pthread_atfork(gate_count, NULL, at_gate);
}

static int gate_install(int first)
{
    return gate_install_with(0x3, first == GATE_DIE, first == GATE_HANG);
}

/* Lets n held workers through. */
static void gate_let(int n)
{
    for (int i = 0; i < n; i++) {
        if (write(gate.fd[1], "g", 1) != 1)
            abort();
    }
}

static void gate_open(void)
{
    gate_let(2);
}

/* The number of workers forked through the gate; closes it (later forks
 * pass). */
static int gate_close(void)
{
    close(gate.fd[0]);
    close(gate.fd[1]);
    gate.wait = gate.die = gate.hang = 0;
    return gate.forked;
}

/* Starts a map of 100 items in batches of 10 (each item given `timeout`
 * seconds, 0: none) on a pool of two workers held at the gate, opens it
 * `after` seconds later, and checks every result.  Returns the pool, to be
 * destroyed. */
static pool_t *map_through_the_gate(double start_timeout, double timeout,
                                    double after)
{
    pool_options_t po = {.workers = 2, .start = PMAP_START_FORK,
                         .start_timeout = start_timeout};
    pool_t *pool;
    /* Had it waited for READY, it would wait for the start timeout and
     * fail: nobody opens the gate before it returns. */
    if (pool_create_with(&pool, &po) != 0)
        return NULL;
    long xs[100], out[100];
    for (int i = 0; i < 100; i++)
        xs[i] = i;
    pool_map_options_t tens = {.chunk = 10, .timeout = timeout};
    pmap_job_t *job;
    if (pool_map_async(pool, &tens, &job, probe, 100, out, xs) != 0) {
        pool_destroy(pool);
        return NULL;
    }
    int holding = 0;    /* the batches are in the workers' channels */
    for (int i = 0; i < 2; i++)
        holding += pool->workers[i].nbatch > 0;
    sleep_ms((int)(after * 1000));
    gate_open();
    int rc = pmap_job_wait(job, -1);
    pmap_job_free(job);
    for (int i = 0; i < 100 && rc == 0; i++)
        rc = out[i] == 2 * xs[i] ? 0 : -1;
    rc = holding == 2 ? rc : -1;
    if (rc != 0 || pool_failures(pool, NULL) != 0) {
        pool_destroy(pool);
        return NULL;
    }
    return pool;
}

/* Destroys pool and closes the gate: the workers forked through it go to
 * *forked, and the pool's restarts are returned. */
static uint64_t pool_and_gate_close(pool_t *pool, int *forked)
{
    pmap_stats_t total = {0};
    pool_stats(pool, NULL, &total);
    pool_destroy(pool);
    *forked = gate_close();
    return total.restarts;
}

/* Without a worker_init, nothing in a worker's start can fail: pool_create
 * returns once they are forked, and a map's batches wait in the channels
 * of workers that have not started yet. */
TEST(start_without_worker_init_pool_create_does_not_wait)
{
    NEEDS_PROCESSES("workers forked by the caller");
    ASSERT(gate_install(GATE_PASS) == 0);
    pool_t *pool = map_through_the_gate(10 * test_slack(), 0, 0);
    ASSERT(pool != NULL);
    pool_destroy(pool);
    ASSERT_EQ(gate_close(), 2);
}

/* A worker killed before it said READY, holding its batches: they go to
 * the other worker or its replacement, and no item fails. */
TEST(start_worker_dying_before_ready_hands_its_batches_on)
{
    NEEDS_PROCESSES("workers forked by the caller");
    ASSERT(gate_install(GATE_DIE) == 0);
    pool_t *pool = map_through_the_gate(10 * test_slack(), 0, 0);
    ASSERT(pool != NULL);
    long x = 21, y = 0;
    ASSERT_OK(pool_call(pool, probe, &y, x));   /* with its replacement */
    ASSERT_EQ(y, 42);
    int forked;
    ASSERT_EQ(pool_and_gate_close(pool, &forked), 1);
    ASSERT_EQ(forked, 3);
}

/* A worker stuck before READY (stopped), holding its batches: it is killed
 * at the start timeout and its batches go on; the map does not wait for it
 * longer than that. */
TEST(start_worker_stuck_before_ready_is_killed_and_its_batches_go_on)
{
    NEEDS_PROCESSES("workers forked by the caller");
    ASSERT(gate_install(GATE_HANG) == 0);
    pool_t *pool = map_through_the_gate(0.5 * test_slack(), 0, 0);
    ASSERT(pool != NULL);
    int forked;
    ASSERT(pool_and_gate_close(pool, &forked) >= 1);
    ASSERT(forked >= 3);
}

/* A worker slow to start holds its batches longer than the map's timeout
 * per item: that time is its start's (start_timeout), not its items', and
 * none of them fails. */
TEST(start_slow_start_is_not_charged_to_the_items)
{
    NEEDS_PROCESSES("workers forked by the caller");
    ASSERT(gate_install(GATE_PASS) == 0);
    double timeout = 0.2 * test_slack();
    pool_t *pool = map_through_the_gate(30 * test_slack(), timeout,
                                        3 * timeout);
    ASSERT(pool != NULL);
    int forked;
    ASSERT_EQ(pool_and_gate_close(pool, &forked), 0);
    ASSERT_EQ(forked, 2);
}

/* Cancelling a map whose batches wait with workers still starting kills
 * those workers (kill_on_cancel): no start failed, and the next map finds
 * new workers at once rather than a pool that gave up starting them. */
TEST(start_cancel_while_workers_start_leaves_the_pool_usable)
{
    NEEDS_PROCESSES("workers forked by the caller");
    ASSERT(gate_install_with(UINT64_MAX, 0, 0) == 0);   /* all wait */
    pool_options_t po = {.workers = 4, .start = PMAP_START_FORK,
                         .start_timeout = 30 * test_slack()};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    long xs[100], out[100];
    for (int i = 0; i < 100; i++)
        xs[i] = i;
    pool_map_options_t now = {.chunk = 10, .kill_on_cancel = 1};
    pmap_job_t *job;
    ASSERT_OK(pool_map_async(pool, &now, &job, probe, 100, out, xs));
    pmap_job_cancel(job);
    ASSERT_EQ(pmap_job_wait(job, -1), PMAP_ECANCELED);
    pmap_job_free(job);
    gate_let(64);
    ASSERT_OK(pool_map(pool, probe, 100, out, xs));
    for (int i = 0; i < 100; i++)
        ASSERT_EQ(out[i], 2 * xs[i]);
    pool_destroy(pool);
    gate_close();
}

/* A batch whose workers keep dying before their READY, never having read
 * it, is not to blame: it goes on to a worker that starts, and its item
 * does not fail (a batch that kills workers fails after four tries). */
/* Runs pool's loop as a program's own loop would (pool_fd, pool_poll)
 * until worker slot 0 holds a batch in a process other than `before`:
 * returns that process, or -1 if a map ended first. */
static pid_t slot0_takes_a_batch(pool_t *pool, pid_t before)
{
    for (double wake = 0;;) {
        const pmap__worker_t *w = &pool->workers[0];
        if (w->pid > 0 && w->pid != before && w->nbatch > 0)
            return w->pid;
        struct pollfd ready = {.fd = pool_fd(pool), .events = POLLIN};
        if (poll(&ready, 1, wake < 0 ? -1 : (int)(wake * 1000) + 1) < 0 ||
            pool_poll(pool, &wake) != 0)
            return -1;
    }
}

TEST(start_deaths_before_ready_are_not_charged_to_the_batch)
{
    NEEDS_PROCESSES("workers forked by the caller");
    /* Forks 0, 2, 3 and 4 wait at the gate, then die: worker 0 and its
     * next three replacements, each let through once the batch is in its
     * channel (the loop refills a slot before it hands out work, as long
     * as starts have not failed more than three times in a row).  Fork 1,
     * worker 1, is sound: the batch goes to it after the fourth death,
     * which would have been one attempt too many had each death counted. */
    ASSERT(gate_install_with(0x1d, 0x1d, 0) == 0);
    pool_options_t po = {.workers = 2, .start = PMAP_START_FORK};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    long x = 21, y = 0;
    pmap_job_t *job;
    ASSERT_OK(pool_map_async(pool, NULL, &job, probe, 1, &y, &x));
    pid_t holder = 0;
    for (int death = 0; death < 4; death++) {
        holder = slot0_takes_a_batch(pool, holder);
        ASSERT(holder > 0);
        ASSERT_EQ(pool->workers[1].nbatch, 0);
        gate_let(1);
    }
    ASSERT_OK(pmap_job_wait(job, -1));
    pmap_job_free(job);
    ASSERT_EQ(y, 42);
    ASSERT_EQ(pool_failures(pool, NULL), 0);
    pool_destroy(pool);
    ASSERT(gate_close() >= 5);
}
