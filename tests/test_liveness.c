/* SPDX-License-Identifier: MIT */
/*
 * test_liveness.c - regressions: a pool never hangs, and never reports a
 * wrong result as a success, when its processes die, stop or misbehave
 * between maps or during them: workers killed while idle (by anyone, by
 * their own alarm, by the exit of the thread that made them), a fork server
 * killed or stopped, a worker's grandchild holding its channel, workers
 * seeing each other's shared memory, cancellations meeting crashes and
 * timeouts, recycling with a slow exit hook, worker_init failing for a
 * while, pool_fd woken by a cancel, jobs freed from callbacks, statistics
 * of a running map, pmap_init in a forked child.
 *
 * Every test that could hang arms alarm() first: its default action ends
 * the test's process long before the runner's own timeout.
 */
#include "test.h"

#include "pmap.h"
#include "pmap_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ----------------------------------------------------------- */


static void sleep_ms(int ms)
{
    struct timespec d = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&d, &d) < 0 && errno == EINTR)
        ;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int have_proc(void)
{
    return access("/proc/self/stat", R_OK) == 0;
}

/* Reads /proc/PID/stat: the state letter and the parent; 0 if unknown. */
static char proc_stat(long pid, long *ppid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');    /* the name may hold anything */
    char state = 0;
    long parent = 0;
    if (p == NULL || sscanf(p + 1, " %c %ld", &state, &parent) != 2)
        return 0;
    if (ppid != NULL)
        *ppid = parent;
    return state;
}

/* Waits (at most 5 s) until pid has ended: gone, or a zombie. */
static void wait_dead(long pid)
{
    if (!have_proc()) {     /* a zombie looks alive to kill(pid, 0) */
        sleep_ms(300);
        return;
    }
    for (int i = 0; i < 5000; i++) {
        if (kill((pid_t)pid, 0) < 0 && errno == ESRCH)
            return;
        char s = proc_stat(pid, NULL);
        if (s == 'Z' || s == 'X' || s == 0)
            return;
        sleep_ms(1);
    }
    test_fail(__FILE__, __LINE__, "process %ld did not die", pid);
}

/* Waits (at most 5 s) until pid is stopped. */
static void wait_stopped(long pid)
{
    if (!have_proc()) {
        sleep_ms(100);
        return;
    }
    for (int i = 0; i < 5000; i++) {
        char s = proc_stat(pid, NULL);
        if (s == 'T' || s == 't')
            return;
        sleep_ms(1);
    }
    test_fail(__FILE__, __LINE__, "process %ld did not stop", pid);
}

/* A live child of this process that is not a worker of pool (which may be
 * NULL): the fork server, when only server pools exist.  0 if none. */
static long find_child(const pool_t *pool)
{
    DIR *d = opendir("/proc");
    if (d == NULL)
        return 0;
    long me = (long)getpid(), found = 0;
    struct dirent *e;
    while (found == 0 && (e = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        long ppid = 0;
        if (*end != '\0' || pid <= 0)
            continue;
        char s = proc_stat(pid, &ppid);
        if (ppid != me || s == 'Z' || s == 'X' || s == 0)
            continue;
        int worker = 0;
        for (int i = 0; pool != NULL && i < pool_size(pool); i++) {
            pmap_worker_stats_t ws;
            if (pool_worker_stats(pool, i, &ws) == 0 && ws.pid == pid)
                worker = 1;
        }
        if (!worker)
            found = pid;
    }
    closedir(d);
    return found;
}

static long worker_pid(const pool_t *pool, int i)
{
    pmap_worker_stats_t ws;
    ASSERT_OK(pool_worker_stats(pool, i, &ws));
    ASSERT(ws.pid > 0);
    return ws.pid;
}

/* The failure recorded for item index, or NULL. */
static const pmap_failure_t *failure_of(const pmap_failure_t *f, size_t nf,
                                        size_t index)
{
    for (size_t i = 0; i < nf; i++) {
        if (f[i].index == index)
            return &f[i];
    }
    return NULL;
}

static long twice(long x)
{
    return 2 * x;
}
PMAP_EXPORT(twice, long, long);

/* A map of n items that must succeed, every result right. */
static void map_twice_ok(pool_t *pool, int n)
{
    long xs[64], out[64];
    ASSERT(n <= 64);
    for (int i = 0; i < n; i++) {
        xs[i] = i + 1;
        out[i] = -1;
    }
    ASSERT_OK(pool_map(pool, twice, (size_t)n, out, xs));
    for (int i = 0; i < n; i++)
        ASSERT_EQ(out[i], 2 * (i + 1));
}

/* After every worker died while idle: the next map works, on new ones. */
static void expect_replaced(pool_t *pool)
{
    map_twice_ok(pool, 40);
    pmap_stats_t total;
    ASSERT_OK(pool_stats(pool, NULL, &total));
    ASSERT(total.restarts > 0);
}

/* Where item 100 of stage says that it has started (cancel_then), or -1. */
static int stage_started = -1;

/* x == -1 aborts, x == -2 never returns, 100 says so on stage_started and
 * sleeps 0.3 s, 101 aborts, 102 never returns; else 2 * x. */
static long stage(long x)
{
    if (x == -1 || x == 101)
        abort();
    if (x == -2 || x == 102)
        for (;;)
            pause();
    if (x == 100) {
        if (stage_started >= 0 && write(stage_started, "", 1) != 1)
            abort();
        sleep_ms(300);
    }
    return 2 * x;
}
PMAP_EXPORT(stage, long, long);

/* ---- 1: every worker dies while the pool is idle ------------------------- */

TEST(liveness_idle_sole_worker_killed)
{
    test_arm(15);
    pool_t *pool = pool_create(1);
    ASSERT(pool != NULL);
    map_twice_ok(pool, 10);
    long pid = worker_pid(pool, 0);
    ASSERT(kill((pid_t)pid, SIGKILL) == 0);
    wait_dead(pid);
    expect_replaced(pool);
    pool_destroy(pool);
    alarm(0);
}

TEST(liveness_idle_server_workers_killed)
{
    test_arm(15);
    ASSERT_OK(pmap_init());
    pool_options_t po = {.workers = 2, .start = PMAP_START_SERVER};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    map_twice_ok(pool, 10);
    long pids[2] = {worker_pid(pool, 0), worker_pid(pool, 1)};
    for (int i = 0; i < 2; i++)
        ASSERT(kill((pid_t)pids[i], SIGKILL) == 0);
    for (int i = 0; i < 2; i++)
        wait_dead(pids[i]);
    expect_replaced(pool);
    pool_destroy(pool);
    pmap_exit();
    alarm(0);
}

struct made {
    pool_t *pool;
    long pids[2];
    long tid;       /* the thread that made it */
};

static void *make_pool(void *arg)
{
    struct made *m = arg;
    char self[64] = "";     /* "PID/task/TID" on Linux */
    if (readlink("/proc/thread-self", self, sizeof self - 1) > 0 &&
        strrchr(self, '/') != NULL)
        m->tid = atol(strrchr(self, '/') + 1);
    m->pool = pool_create(2);
    for (int i = 0; i < 2 && m->pool != NULL; i++) {
        pmap_worker_stats_t ws;
        if (pool_worker_stats(m->pool, i, &ws) == 0)
            m->pids[i] = ws.pid;
    }
    return NULL;
}

/* On Linux the parent-death signal comes when the *thread* that forked a
 * worker exits: the pool's workers outlive it while its process lives. */
TEST(liveness_pool_created_by_exited_thread)
{
    test_arm(15);
    struct made m = {NULL, {0, 0}, 0};
    pthread_t t;
    ASSERT(pthread_create(&t, NULL, make_pool, &m) == 0);
    ASSERT(pthread_join(t, NULL) == 0);
    ASSERT(m.pool != NULL);
    /* Until the thread is reaped, which comes after the signal is sent. */
    char task[64];
    snprintf(task, sizeof task, "/proc/self/task/%ld", m.tid);
    for (int i = 0; i < 5000 && m.tid > 0 && access(task, F_OK) == 0; i++)
        sleep_ms(1);
    map_twice_ok(m.pool, 40);
    pmap_stats_t total;
    ASSERT_OK(pool_stats(m.pool, NULL, &total));
    ASSERT_EQ(total.restarts, 0);   /* neither worker was killed */
    for (int i = 0; i < 2; i++)
        ASSERT_EQ(worker_pid(m.pool, i), m.pids[i]);
    pool_destroy(m.pool);
    alarm(0);
}

static long alarm_then_twice(long x)
{
    if (x == 0)
        alarm(1);   /* SIGALRM's default action ends this worker in 1 s */
    return 2 * x;
}
PMAP_EXPORT(alarm_then_twice, long, long);

TEST(liveness_worker_dies_of_its_own_alarm_while_idle)
{
    test_arm(15);
    pool_t *pool = pool_create(1);
    ASSERT(pool != NULL);
    long x = 0, y = -1;
    ASSERT_OK(pool_call(pool, alarm_then_twice, &y, x));
    ASSERT_EQ(y, 0);
    long pid = worker_pid(pool, 0);
    wait_dead(pid);     /* about 1 s */
    expect_replaced(pool);
    pool_destroy(pool);
    alarm(0);
}

/* A pool of two workers from a new fork server, whose pid goes to
 * *server; skips the test where the server cannot be found. */
static pool_t *server_pool(long *server)
{
    if (!have_proc())
        SKIP("no /proc to find the fork server");
    ASSERT_OK(pmap_init());
    pool_options_t po = {.workers = 2, .start = PMAP_START_SERVER};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    *server = find_child(pool);
    if (*server == 0) {
        pool_destroy(pool);
        pmap_exit();
        SKIP("fork server not found among this process's children");
    }
    return pool;
}

TEST(liveness_fork_server_killed_between_maps)
{
    test_arm(20);
    long server;
    pool_t *pool = server_pool(&server);
    map_twice_ok(pool, 10);
    long pids[2] = {worker_pid(pool, 0), worker_pid(pool, 1)};
    ASSERT(kill((pid_t)server, SIGKILL) == 0);
    wait_dead(server);
    for (int i = 0; i < 2; i++)
        wait_dead(pids[i]);     /* PR_SET_PDEATHSIG, on Linux */

    /* Promptly: no worker can start until pmap_init. */
    long xs[20], out[20];
    for (int i = 0; i < 20; i++)
        xs[i] = i;
    double t0 = now_s();
    int rc = pool_map(pool, twice, 20, out, xs);
    double took = now_s() - t0;
    ASSERT(took < 10 * test_slack());
    ASSERT_EQ(rc, PMAP_ESTART);

    /* A new server: the same pool works again. */
    ASSERT_OK(pmap_init());
    map_twice_ok(pool, 20);
    pool_destroy(pool);
    pmap_exit();
    waitpid((pid_t)server, NULL, WNOHANG);  /* if nobody reaped it */
    alarm(0);
}

/* Item 0 kills the fork server, its worker's parent; each item then
 * waits to die with it (PR_SET_PDEATHSIG). */
static long kill_server_then_wait(long x)
{
    if (x == 0)
        kill(getppid(), SIGKILL);
    for (;;)
        pause();
    return x;
}
PMAP_EXPORT(kill_server_then_wait, long, long);

/* The fork server killed in the middle of a map: the running items fail
 * with PMAP_ELOST (their workers' statuses died with the server), the map
 * with PMAP_ESTART, promptly; after pmap_init the pool works again. */
TEST(liveness_fork_server_killed_during_a_map)
{
    test_arm(20);
    long server;
    pool_t *pool = server_pool(&server);
    long xs[4] = {0, 1, 2, 3}, out[4];
    pool_map_options_t one = {.chunk = 1};
    double t0 = now_s();
    int rc = pool_map_with(pool, &one, kill_server_then_wait, 4, out, xs);
    double took = now_s() - t0;
    ASSERT(took < 10 * test_slack());
    ASSERT_EQ(rc, PMAP_ESTART);
    const pmap_failure_t *f;
    size_t n = pool_failures(pool, &f);
    ASSERT(n >= 1);
    for (size_t i = 0; i < n; i++)
        ASSERT(f[i].error == PMAP_ELOST || f[i].error == PMAP_ESTART);
    ASSERT(f[0].error == PMAP_ELOST);   /* item 0, running */
    waitpid((pid_t)server, NULL, WNOHANG);  /* if nobody reaped it */

    ASSERT_OK(pmap_init());
    map_twice_ok(pool, 20);
    pool_destroy(pool);
    pmap_exit();
    alarm(0);
}

struct slow_first {
    int calls;
    long values[6];
    int failed[6], error[6], code[6];
};

static int slow_first_result(void *ctx, size_t index, void *result,
                             const pmap_failure_t *failure)
{
    struct slow_first *s = ctx;
    ASSERT(index < 6);
    if (s->calls++ == 0)
        sleep_ms(20);   /* meanwhile the worker runs item 1 and dies */
    if (failure != NULL) {
        s->failed[index] = 1;
        s->error[index] = failure->error;
        s->code[index] = failure->code;
    } else {
        s->values[index] = *(long *)result;
    }
    return 0;
}

TEST(liveness_crash_during_slow_result_callback)
{
    test_arm(20);
    pool_t *pool = pool_create(1);
    ASSERT(pool != NULL);
    long xs[6] = {0, -1, 2, 3, 4, 5};
    for (int round = 0; round < 20; round++) {
        struct slow_first s;
        memset(&s, 0, sizeof s);
        pool_map_options_t o = {.chunk = 1, .on_result = slow_first_result,
                                .ctx = &s};
        ASSERT_EQ(pool_map_with(pool, &o, stage, 6, (long *)NULL, xs), 1);
        ASSERT_EQ(s.calls, 6);
        const pmap_failure_t *f;
        ASSERT_EQ(pool_failures(pool, &f), 1);
        ASSERT_EQ(f[0].index, 1);
        ASSERT_STR_EQ(pmap_err_name(f[0].error), "ECRASH");
        ASSERT_EQ(f[0].code, SIGABRT);
        for (int i = 0; i < 6; i++) {
            ASSERT_EQ(s.failed[i], i == 1);
            if (i != 1)
                ASSERT_EQ(s.values[i], 2 * xs[i]);
        }
    }
    pool_destroy(pool);
    alarm(0);
}

/* ---- 2: a cancel on an idle pool is not kept for the next map ------------ */

TEST(liveness_cancel_on_idle_pool_is_not_kept)
{
    test_arm(10);
    pool_t *pool = pool_create(2);
    ASSERT(pool != NULL);
    map_twice_ok(pool, 10);
    pool_cancel(pool);      /* nothing runs: nothing to cancel */
    map_twice_ok(pool, 40);
    pool_destroy(pool);
    alarm(0);
}

/* ---- 3: a worker's child holds its channel ------------------------------ */

static int grandchild_pipe[2] = {-1, -1};

/* 1: forks a sleeper, then aborts; 2: forks a sleeper and returns. */
static long fork_then(long x)
{
    if (x == 1 || x == 2) {
        pid_t h = fork();
        if (h == 0) {
            struct timespec d = {30, 0};
            nanosleep(&d, NULL);
            _exit(0);
        }
        long hp = (long)h;
        if (write(grandchild_pipe[1], &hp, sizeof hp) != sizeof hp)
            _exit(9);
        if (x == 1)
            abort();
    }
    return x + 10;
}
PMAP_EXPORT(fork_then, long, long);

static long read_helper(void)
{
    long pid = 0;
    ASSERT(read(grandchild_pipe[0], &pid, sizeof pid) == sizeof pid);
    ASSERT(pid > 0);
    return pid;
}

static void crash_with_grandchild(double timeout)
{
    test_arm(15);
    ASSERT(pipe(grandchild_pipe) == 0);     /* before: workers inherit it */
    pool_t *pool = pool_create(1);
    ASSERT(pool != NULL);
    long xs[4] = {0, 1, 0, 0}, out[4];
    pool_map_options_t o = {.timeout = timeout};
    double t0 = now_s();
    int rc = pool_map_with(pool, &o, fork_then, 4, out, xs);
    double took = now_s() - t0;
    long helper = read_helper();
    ASSERT_EQ(rc, 1);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), 1);
    ASSERT_EQ(f[0].index, 1);
    ASSERT_STR_EQ(pmap_err_name(f[0].error), "ECRASH");
    ASSERT_EQ(f[0].code, SIGABRT);
    ASSERT(took < 5 * test_slack());
    for (int i = 0; i < 4; i++)
        ASSERT_EQ(out[i], i == 1 ? 0 : 10);
    map_twice_ok(pool, 10);
    t0 = now_s();
    pool_destroy(pool);
    took = now_s() - t0;
    kill((pid_t)helper, SIGKILL);   /* not our child: the worker's */
    close(grandchild_pipe[0]);
    close(grandchild_pipe[1]);
    ASSERT(took < 1.5 * test_slack());
    alarm(0);
}

TEST(liveness_crash_with_grandchild_holding_channel)
{
    crash_with_grandchild(0);
}

TEST(liveness_crash_with_grandchild_under_timeout)
{
    crash_with_grandchild(2);   /* still ECRASH, not ETIMEDOUT */
}

/* The worker leaves at pool_destroy, its child keeps the channel open:
 * pool_destroy does not wait out its grace period for an EOF. */
TEST(liveness_destroy_with_grandchild_holding_channel)
{
    test_arm(15);
    ASSERT(pipe(grandchild_pipe) == 0);
    pool_t *pool = pool_create(1);
    ASSERT(pool != NULL);
    long xs[4] = {0, 2, 0, 0}, out[4];
    ASSERT_OK(pool_map(pool, fork_then, 4, out, xs));
    long helper = read_helper();
    ASSERT_EQ(out[1], 12);
    double t0 = now_s();
    pool_destroy(pool);
    double took = now_s() - t0;
    kill((pid_t)helper, SIGKILL);
    close(grandchild_pipe[0]);
    close(grandchild_pipe[1]);
    ASSERT(took < 1.5 * test_slack());
    alarm(0);
}

/* ---- 4: memory isolation between workers (Linux) -------------------------- */

/* Writable shared mappings this process has, and their bytes. */
static long shared_maps_seen(long x)
{
    (void)x;
    sleep_ms(5);    /* spread the items over the workers */
    return (long)test_shared_maps(NULL, false);
}
PMAP_EXPORT(shared_maps_seen, long, long);

static long shared_bytes_seen(long x)
{
    (void)x;
    sleep_ms(5);
    return (long)test_shared_maps(NULL, true);
}
PMAP_EXPORT(shared_bytes_seen, long, long);

TEST(liveness_worker_sees_only_its_own_shared_memory)
{
    if (access("/proc/self/maps", R_OK) != 0)
        SKIP("no /proc/self/maps");
    test_arm(15);
    pool_t *a = pool_create(3), *b = pool_create(10);  /* 2 groups */
    ASSERT(a != NULL && b != NULL);
    long xs[20] = {0}, out[20];
    pool_map_options_t o = {.chunk = 1};
    pool_t *pools[2] = {a, b};
    for (int p = 0; p < 2; p++) {
        ASSERT_OK(pool_map_with(pools[p], &o, shared_maps_seen, 20, out, xs));
        for (int i = 0; i < 20; i++) {
            if (out[i] != 1)
                test_fail(__FILE__, __LINE__,
                          "pool %d item %d: a worker sees %ld writable "
                          "shared mappings, not 1 (its own arena)",
                          p, i, out[i]);
        }
        /* ...and of the size of one arena, though a pool's first arenas
         * are carved from one mapping (proc.c, pmap__proc_spawn_all) */
        ASSERT_OK(pool_map_with(pools[p], &o, shared_bytes_seen, 20, out, xs));
        for (int i = 0; i < 20; i++)
            ASSERT_EQ(out[i], (long)PMAP__ARENA_SIZE);
    }
    pool_destroy(b);
    pool_destroy(a);
    alarm(0);
}

/* The writable shared mappings this process can see (whose line in
 * /proc/self/maps holds `containing`, if not NULL): their bounds, up to
 * 128, go to lo and hi; returns how many.  Ends the process (a worker,
 * or a process it forked) without /proc. */
static int shared_mappings(const char *containing, unsigned long lo[128],
                           unsigned long hi[128])
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (f == NULL)
        _exit(8);
    char line[4096], perms[8];
    int n = 0;
    while (n < 128 && fgets(line, sizeof line, f) != NULL) {
        if (sscanf(line, "%lx-%lx %7s", &lo[n], &hi[n], perms) == 3 &&
            strcmp(perms, "rw-s") == 0 &&
            (containing == NULL || strstr(line, containing) != NULL))
            n++;
    }
    fclose(f);
    return n;
}

/* Overwrites every writable shared mapping this process can see (as
 * shared_mappings): 0xFF, with a NUL at the end of each page so that a
 * string read from there gives a wrong length rather than a crash. */
static void scribble_shared(const char *containing)
{
    unsigned long lo[128], hi[128];
    int n = shared_mappings(containing, lo, hi);
    for (int i = 0; i < n; i++) {
        unsigned char *p = (unsigned char *)(uintptr_t)lo[i];
        size_t len = (size_t)(hi[i] - lo[i]);
        memset(p, 0xFF, len);
        for (size_t k = 4095; k < len; k += 4096)
            p[k] = 0;
    }
}

static size_t scribble_or_measure(int scribble, const char *s)
{
    if (scribble) {
        scribble_shared(NULL);
        _exit(7);   /* its own items are sent again, to a new worker */
    }
    sleep_ms(40);   /* the scribbler strikes meanwhile */
    return strlen(s);
}
PMAP_EXPORT(scribble_or_measure, size_t, int, const char *);

TEST(liveness_worker_scribbling_shared_memory_harms_no_other)
{
    if (access("/proc/self/maps", R_OK) != 0)
        SKIP("no /proc/self/maps");
    test_arm(30);
    enum { N = 8, LEN = 100 * 1024 };
    char *big = malloc(LEN + 1);
    ASSERT(big != NULL);
    memset(big, 'a', LEN);
    big[LEN] = '\0';
    int modes[N] = {1};
    const char *strs[N];
    for (int i = 0; i < N; i++)
        strs[i] = big;
    pool_t *pool = pool_create(2);
    ASSERT(pool != NULL);
    pool_map_options_t o = {.chunk = 1};
    for (int round = 0; round < 5; round++) {
        size_t out[N];
        for (int i = 0; i < N; i++)
            out[i] = SIZE_MAX;
        int rc = pool_map_with(pool, &o, scribble_or_measure, N, out, modes,
                               strs);
        /* A worker's misdeed fails its own items, never the whole map. */
        if (rc < 1)
            test_fail(__FILE__, __LINE__, "round %d: pool_map returned %s",
                      round, rc < 0 ? pmap_err_name(rc) : "0");
        const pmap_failure_t *f;
        size_t nf = pool_failures(pool, &f);
        ASSERT_EQ(nf, rc);
        ASSERT(failure_of(f, nf, 0) != NULL);
        for (size_t i = 1; i < N; i++) {
            if (failure_of(f, nf, i) == NULL && out[i] != LEN)
                test_fail(__FILE__, __LINE__,
                          "round %d item %zu: length %zu reported as a "
                          "success (right: %d)",
                          round, i, out[i], LEN);
        }
    }
    pool_destroy(pool);
    free(big);
    alarm(0);
}

static int scribble_or_add(int scribble, int x)
{
    if (scribble) {
        scribble_shared(NULL);
        _exit(7);
    }
    if (x % 4096 == 1)
        sleep_ms(20);   /* the scribbler strikes meanwhile */
    return x + 1;
}
PMAP_EXPORT(scribble_or_add, int, int, int);

/* The same with columns of values large enough to travel through the
 * workers' arenas, both ways ("Large columns of values"): the scribbler's
 * items fail, the others' results are right. */
TEST(liveness_worker_scribbling_its_value_regions_harms_no_other)
{
    if (access("/proc/self/maps", R_OK) != 0)
        SKIP("no /proc/self/maps");
    test_arm(30);
    enum {
        CHUNK = (int)(PMAP__VALUES_SHARED_MIN / sizeof(int)),
        N = 4 * CHUNK
    };
    int *modes = calloc(N, sizeof *modes), *xs = malloc(N * sizeof *xs);
    int *out = malloc(N * sizeof *out);
    ASSERT(modes != NULL && xs != NULL && out != NULL);
    for (int i = 0; i < N; i++)
        xs[i] = i;
    modes[0] = 1;
    pool_t *pool = pool_create(2);
    ASSERT(pool != NULL);
    pool_map_options_t o = {.chunk = CHUNK};
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++)
            out[i] = -1;
        /* Its slot scribbled too, the worker cannot say which item it ran:
         * its batch may fail whole, but no other. */
        int rc = pool_map_with(pool, &o, scribble_or_add, N, out, modes, xs);
        ASSERT(rc >= 1 && rc <= CHUNK);
        const pmap_failure_t *f;
        ASSERT_EQ(pool_failures(pool, &f), rc);
        ASSERT_EQ(f[0].index, 0);
        for (int k = 0; k < rc; k++)
            ASSERT(f[k].index < CHUNK && f[k].error == PMAP_EEXIT);
        for (int i = 1; i < N; i++)
            ASSERT(out[i] == i + 1 || failure_of(f, (size_t)rc, i) != NULL);
    }
    pmap_stats_t st;
    ASSERT_OK(pool_stats(pool, NULL, &st));
    ASSERT(st.bytes_sent < (uint64_t)N * 2 * sizeof(int)); /* in the arenas */
    pool_destroy(pool);
    free(modes);
    free(xs);
    free(out);
    alarm(0);
}

/* In a worker forked by the caller: the slot at the head of its arena,
 * the one shared mapping of an arena's size it holds. */
static pmap__slot_t *own_slot(void)
{
    unsigned long lo[128], hi[128];
    int n = shared_mappings("/dev/zero", lo, hi);
    for (int i = 0; i < n; i++) {
        if (hi[i] - lo[i] == PMAP__ARENA_SIZE)
            return (pmap__slot_t *)(uintptr_t)lo[i];
    }
    _exit(8);
}

/* Writes 1 where the arena of this worker says which process holds it
 * alone (a stray write: it is not that process's pid). */
static void stray_write_on_holder(void)
{
    atomic_store(&own_slot()->alone, 1);
}

/* Item 0 forks a process that, once its worker has left, overwrites all
 * the anonymous shared memory it holds (the arenas of workers: shm.c)
 * again and again, for 20 s at most.  Its pid goes to grandchild_pipe,
 * then a byte once it has started.  The worker then writes over the mark
 * of the fork in its arena. */
static long fork_scribbler(long x)
{
    if (x != 0)
        return x + 10;
    pid_t worker = getpid(), h = fork();
    if (h == 0) {
        while (getppid() == worker)
            sleep_ms(1);
        scribble_shared("/dev/zero");
        char started = 1;   /* the test goes on from here */
        if (write(grandchild_pipe[1], &started, 1) != 1)
            _exit(9);
        for (double end = now_s() + 20; now_s() < end;)
            scribble_shared("/dev/zero");
        _exit(0);
    }
    long hp = (long)h;
    if (write(grandchild_pipe[1], &hp, sizeof hp) != sizeof hp)
        _exit(9);
    stray_write_on_holder();
    return x + 10;
}
PMAP_EXPORT(fork_scribbler, long, long);

static int add_one(int x)
{
    return x + 1;
}
PMAP_EXPORT(add_one, int, int);

/* The arenas of a destroyed pool's workers serve the next pools (shm.c,
 * spare arenas), but not one that a process forked by a callback may
 * still hold.  Each later pool moves columns of values through its
 * workers' arenas, both ways, while that process overwrites whatever
 * shared memory it holds; every result must be right.  The other
 * worker's arena is kept and taken again. */
TEST(liveness_callback_child_scribbling_arenas_harms_no_later_pool)
{
    if (access("/proc/self/maps", R_OK) != 0)
        SKIP("no /proc/self/maps");
    test_arm(60);
    enum {
        CHUNK = (int)(PMAP__VALUES_SHARED_MIN / sizeof(int)),
        N = 8 * CHUNK
    };
    int *xs = malloc(N * sizeof *xs), *out = malloc(N * sizeof *out);
    ASSERT(xs != NULL && out != NULL);
    for (int i = 0; i < N; i++)
        xs[i] = i;
    ASSERT(pipe(grandchild_pipe) == 0);     /* before: workers inherit it */
    pool_t *pool = pool_create(2);
    ASSERT(pool != NULL);
    long ids[4] = {0, 1, 2, 3}, res[4];
    pool_map_options_t one = {.chunk = 1}, columns = {.chunk = CHUNK};
    ASSERT_OK(pool_map_with(pool, &one, fork_scribbler, 4, res, ids));
    long helper = read_helper();
    pool_destroy(pool);     /* the scribbler starts */
    char started;
    ASSERT(read(grandchild_pipe[0], &started, 1) == 1);
    bool kept = test_spare_arenas(false) > 0;
    ASSERT(test_spare_arenas(false) == (test_under_valgrind() ? 0 : 1));
    for (int round = 0; round < 30; round++) {
        pool = pool_create(2);
        ASSERT(pool != NULL);
        ASSERT(!kept || test_spare_arenas(false) == 0);
        for (int m = 0; m < 3; m++) {
            memset(out, 0, N * sizeof *out);
            int rc = pool_map_with(pool, &columns, add_one, N, out, xs);
            if (rc != 0)
                test_fail(__FILE__, __LINE__, "round %d map %d: %s", round,
                          m, rc < 0 ? pmap_err_name(rc) : "failed items");
            for (int i = 0; i < N; i++) {
                if (out[i] != i + 1)
                    test_fail(__FILE__, __LINE__,
                              "round %d map %d item %d: %d", round, m, i,
                              out[i]);
            }
        }
        pool_destroy(pool);
    }
    kill((pid_t)helper, SIGKILL);
    close(grandchild_pipe[0]);
    close(grandchild_pipe[1]);
    free(xs);
    free(out);
    alarm(0);
}

/* Writes `depth` where the arena of this worker says how deep its first
 * result region was written (a stray write), and returns it. */
static long stray_write_on_depth(long depth)
{
    atomic_store(&own_slot()->reach[0], (uint64_t)depth);
    return depth;
}
PMAP_EXPORT(stray_write_on_depth, long, long);

/* A pool of one worker forked here, that writes `depth` over its arena's
 * record of how deep its results went, then is destroyed. */
static void stray_depth_cycle(long depth)
{
    pool_options_t po = {.workers = 1, .start = PMAP_START_FORK};
    pool_t *pool;
    long out = 0;
    ASSERT_OK(pool_create_with(&pool, &po));
    ASSERT_OK(pool_map(pool, stray_write_on_depth, 1, &out, &depth));
    ASSERT_EQ(out, depth);
    pool_destroy(pool);
}

/* That record decides whether the arena is kept and how much of it the
 * next worker maps ahead (shm.c, spare arenas): a callback that writes
 * there the largest depth (which, reckoned four times over, wraps
 * around) gets its arena dropped; one that writes a plausible depth gets
 * it kept, reckoned that deep, and the next worker's results are right. */
TEST(liveness_worker_writing_its_arenas_depth_harms_no_later_worker)
{
    if (access("/proc/self/maps", R_OK) != 0)
        SKIP("no /proc/self/maps");
    if (test_under_valgrind())
        SKIP("valgrind: every child inherits the arenas, none is kept");
    ASSERT_EQ(test_spare_arenas(false), 0);
    stray_depth_cycle(LONG_MAX);
    ASSERT_EQ(test_spare_arenas(false), 0);
    stray_depth_cycle(200 * 1024);
    ASSERT_EQ(test_spare_arenas(false), 1);
    ASSERT(test_spare_arenas(true) >= 4 * 200 * 1024);
    enum { N = 100000 };
    int *xs = malloc(N * sizeof *xs), *out = malloc(N * sizeof *out);
    ASSERT(xs != NULL && out != NULL);
    for (int i = 0; i < N; i++)
        xs[i] = i;
    pool_options_t po = {.workers = 1, .start = PMAP_START_FORK};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    ASSERT_EQ(test_spare_arenas(false), 0);     /* taken */
    ASSERT_OK(pool_map(pool, add_one, N, out, xs));
    for (int i = 0; i < N; i++)
        ASSERT_EQ(out[i], i + 1);
    pool_destroy(pool);
    ASSERT_EQ(test_children(), 0);
    free(xs);
    free(out);
}

/* Forks the child of child_of_callback: it aborts (x & 1 clear) or
 * reports the item running.  Its pid replaces x. */
static void *fork_child(void *arg)
{
    int *x = arg;
    pid_t c = fork();
    if (c == 0) {
        if (!(*x & 1))
            abort();
        _exit((int)pmap_item_index());
    }
    *x = (int)c;
    return NULL;
}

/* Forks a child (fork_child), from a thread of its own if x & 2; returns
 * how the child ended, as WTERMSIG or 100 + its exit status. */
static int child_of_callback(int x)
{
    int c = x;
    pthread_t t;
    if (!(x & 2))
        fork_child(&c);
    else if (pthread_create(&t, NULL, fork_child, &c) != 0 ||
             pthread_join(t, NULL) != 0)
        return -1;
    int status;
    if (c < 0 || waitpid(c, &status, 0) != c)
        return -1;
    return WIFSIGNALED(status) ? WTERMSIG(status) : 100 + WEXITSTATUS(status);
}
PMAP_EXPORT(child_of_callback, int, int);

/* A process a callback forks is a copy of its worker, whichever of its
 * threads forks it: it dies of the signal it raises (its crash handler's
 * stack is there), and knows the item that forked it. */
TEST(liveness_callback_child_is_a_whole_copy_of_its_worker)
{
    test_arm(30);
    pool_t *pool = pool_create(2);
    ASSERT(pool != NULL);
    int xs[12] = {0, 1, 1, 0, 1, 1, 2, 3, 3, 2, 3, 3}, out[12];
    pool_map_options_t o = {.chunk = 1};
    ASSERT_OK(pool_map_with(pool, &o, child_of_callback, 12, out, xs));
    for (int i = 0; i < 12; i++)
        ASSERT_EQ(out[i], (xs[i] & 1) == 0 ? SIGABRT : 100 + i);
    pool_destroy(pool);
    alarm(0);
}

/* Forks by another thread of the caller while arenas are made, for as
 * long as `starting` says; each child counts the arenas it holds
 * (writable shared mappings of arena_size bytes) and overwrites them, as
 * a hostile child would.  The forks whose child held one go to held[0],
 * all to held[1]. */
static atomic_bool starting, broke;     /* broke: it stopped by itself */
static size_t arena_size;

static void *fork_meanwhile(void *arg)
{
    atomic_long *held = arg;
    while (atomic_load(&starting)) {
        pid_t pid = fork();
        if (pid < 0 && errno == EAGAIN) {
            sleep_ms(1);    /* a loaded machine: out of processes for now */
            continue;
        }
        if (pid == 0) {
            unsigned long lo[128], hi[128];
            int n = shared_mappings(NULL, lo, hi), arenas = 0;
            for (int i = 0; i < n; i++)
                arenas += hi[i] - lo[i] == arena_size;
            if (arenas > 0)
                scribble_shared(NULL);
            _exit(arenas > 0);
        }
        int status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) != pid)
            break;
        if (!WIFEXITED(status) || WEXITSTATUS(status) > 1)
            break;      /* could not look (no /proc, no memory) */
        held[0] += WEXITSTATUS(status);
        held[1]++;
    }
    atomic_store(&broke, atomic_load(&starting));   /* before it was told */
    return NULL;
}

/* Starts fork_meanwhile in a thread, looking for mappings of size bytes. */
static pthread_t forks_begin(size_t size, atomic_long held[2])
{
    pthread_t forker;
    arena_size = size;
    atomic_store(&broke, false);
    atomic_store(&starting, true);
    ASSERT_EQ(pthread_create(&forker, NULL, fork_meanwhile, held), 0);
    return forker;
}

/* Stops it: none of its children may have held such a mapping. */
static void forks_end(pthread_t forker, atomic_long held[2], const char *what)
{
    atomic_store(&starting, false);
    ASSERT_EQ(pthread_join(forker, NULL), 0);
    if (atomic_load(&broke))
        test_fail(__FILE__, __LINE__,
                  "the forking thread could not fork or look, after %ld",
                  (long)held[1]);
    if (held[0] != 0)
        test_fail(__FILE__, __LINE__,
                  "%ld of %ld processes forked by another thread held %s",
                  (long)held[0], (long)held[1], what);
    ASSERT(held[1] > 0);
}

/* A worker's arena is open to a fork only across its own worker's: a
 * process that another thread forks meanwhile (and it forks all the time
 * here) holds none, so it cannot write there; and every pool's results
 * are right. */
TEST(liveness_fork_by_another_thread_holds_no_workers_arena)
{
    if (access("/proc/self/maps", R_OK) != 0)
        SKIP("no /proc/self/maps");
    if (test_under_valgrind())
        SKIP("valgrind does not keep arenas from children (MADV_DONTFORK)");
    test_arm(60);
    atomic_long held[2] = {0, 0};
    pthread_t forker = forks_begin(PMAP__ARENA_SIZE, held);
    for (int round = 0; round < 300; round++) {
        pool_t *pool = pool_create(2);
        ASSERT(pool != NULL);
        int xs[2] = {round, round + 1}, out[2] = {0, 0};
        ASSERT_OK(pool_map(pool, add_one, 2, out, xs));
        ASSERT(out[0] == round + 1 && out[1] == round + 2);
        pool_destroy(pool);
    }
    forks_end(forker, held, "a worker's arena");
    alarm(0);
}

/* The same from an arena's making: new arenas are kept from every child
 * from their mapping on, while another thread forks all the time.  (Made
 * and dropped here directly, of a size no other mapping has: a pool maps
 * new ones only now and then, and the moment is short.) */
TEST(liveness_fork_by_another_thread_holds_no_new_arena)
{
    size_t size = 3 * PMAP__ARENA_SIZE + 4096;
    bool kept = false;
    void *p = pmap__arenas_map(size, NULL, &kept);
    ASSERT(p != NULL);
    pmap__shm_unmap(p, size);
    if (!kept)
        SKIP("no MADV_DONTFORK here (or valgrind): children hold arenas");
    if (access("/proc/self/maps", R_OK) != 0)
        SKIP("no /proc/self/maps");
    test_arm(60);
    atomic_long held[2] = {0, 0};
    pthread_t forker = forks_begin(size, held);
    for (long made = 0;
         made < 20000 || (held[1] < 200 && !atomic_load(&broke)); made++) {
        ASSERT((p = pmap__arenas_map(size, NULL, &kept)) != NULL && kept);
        pmap__shm_unmap(p, size);
    }
    forks_end(forker, held, "a new arena");
    alarm(0);
}

/* ---- 5: a stopped idle worker, then a timed map --------------------------- */

TEST(liveness_stopped_idle_worker_under_timeout)
{
    test_arm(15);
    pool_t *pool = pool_create(2);
    ASSERT(pool != NULL);
    map_twice_ok(pool, 10);
    long stopped = worker_pid(pool, 0);
    ASSERT(kill((pid_t)stopped, SIGSTOP) == 0);
    wait_stopped(stopped);
    long xs[20], out[20];
    for (int i = 0; i < 20; i++)
        xs[i] = i;
    pool_map_options_t o = {.timeout = 1};
    int rc = pool_map_with(pool, &o, twice, 20, out, xs);
    kill((pid_t)stopped, SIGCONT);  /* if it is still there */
    ASSERT_OK(rc);
    for (int i = 0; i < 20; i++)
        ASSERT_EQ(out[i], 2 * i);
    pool_destroy(pool);
    alarm(0);
}

/* ---- 6: a stopped fork server --------------------------------------------- */

TEST(liveness_stopped_fork_server_fails_pool_create)
{
    if (!have_proc())
        SKIP("no /proc to find the fork server");
    test_arm(20);
    ASSERT_OK(pmap_init());
    long server = find_child(NULL);
    if (server == 0) {
        pmap_exit();
        SKIP("fork server not found among this process's children");
    }
    ASSERT(kill((pid_t)server, SIGSTOP) == 0);
    wait_stopped(server);
    pool_options_t po = {.workers = 1, .start = PMAP_START_SERVER,
                         .start_timeout = 2};
    pool_t *pool = NULL;
    double t0 = now_s();
    int rc = pool_create_with(&pool, &po);
    double took = now_s() - t0;
    kill((pid_t)server, SIGCONT);
    if (rc == 0)
        pool_destroy(pool);
    pmap_exit();
    ASSERT(rc < 0);
    ASSERT(took < 6 * test_slack());
    alarm(0);
}

/* Item 1 stops the fork server (its parent), then aborts: the server
 * cannot report how it died. */
static int stop_server_then_abort(int x)
{
    if (x == 1) {
        kill(getppid(), SIGSTOP);
        abort();
    }
    return x;
}
PMAP_EXPORT(stop_server_then_abort, int, int);

struct stopped_server {
    long pid;
    int out[3];
    size_t failed;      /* index + 1 of the failed item */
    int error, code;
    int named;          /* the message names the signal */
};

/* Takes the results; at the failure, which comes after the server was
 * stopped, lets the server go on (the pool needs it for a new worker). */
static int continue_server(void *ctx, size_t index, void *result,
                           const pmap_failure_t *failure)
{
    struct stopped_server *s = ctx;
    if (failure == NULL) {
        s->out[index] = *(int *)result;
        return 0;
    }
    s->failed = index + 1;
    s->error = failure->error;
    s->code = failure->code;
    s->named = failure->message && strstr(failure->message, "SIGABRT");
    kill((pid_t)s->pid, SIGCONT);
    return 0;
}

/* A worker crashes while the fork server, which alone may collect its
 * wait status, is stopped: its own crash report still names the signal,
 * so the item fails as a crash, not as a death of unknown cause. */
TEST(liveness_crash_under_a_stopped_fork_server_keeps_its_cause)
{
    if (!have_proc())
        SKIP("no /proc to find the fork server");
    test_arm(20);
    ASSERT_OK(pmap_init());
    struct stopped_server s = {.pid = find_child(NULL)};
    if (s.pid == 0) {
        pmap_exit();
        SKIP("fork server not found among this process's children");
    }
    pool_options_t po = {.workers = 1, .start = PMAP_START_SERVER};
    pool_t *pool = NULL;
    ASSERT_OK(pool_create_with(&pool, &po));
    int xs[3] = {0, 1, 2};
    pool_map_options_t o = {.on_result = continue_server, .ctx = &s,
                            .unordered = 1};
    int rc = pool_map_with(pool, &o, stop_server_then_abort, 3, NULL, xs);
    kill((pid_t)s.pid, SIGCONT);
    ASSERT_EQ(rc, 1);
    ASSERT_EQ(s.failed, 2);
    ASSERT_STR_EQ(pmap_err_name(s.error), "ECRASH");
    ASSERT_EQ(s.code, SIGABRT);
    ASSERT(s.named);
    ASSERT_EQ(s.out[0], 0);
    ASSERT_EQ(s.out[2], 2);
    pool_destroy(pool);
    pmap_exit();
    alarm(0);
}

/* ---- 7: sizes that cannot be ------------------------------------------- */

static char same_char(char c)
{
    return c;
}
PMAP_EXPORT(same_char, char, char);

static int count_then_stop(void *ctx, size_t index, void *result,
                           const pmap_failure_t *failure)
{
    (void)index;
    (void)result;
    (void)failure;
    int *calls = ctx;
    return ++*calls >= 100;     /* cancels, should it ever run */
}

TEST(liveness_map_of_size_max_items_refused)
{
    test_arm(10);
    pool_t *pool = pool_create(1);
    ASSERT(pool != NULL);
    int calls = 0;
    pool_map_options_t o = {.on_result = count_then_stop, .ctx = &calls};
    ASSERT_EQ(pool_map_with(pool, &o, same_char, SIZE_MAX, (char *)NULL,
                            PMAP_CONST((char)'a')),
              PMAP_EINVAL);
    ASSERT_EQ(calls, 0);
    map_twice_ok(pool, 10);
    pool_destroy(pool);
    alarm(0);
}

static pmap_bytes_t bytes_or_huge(int x)
{
    pmap_bytes_t b = {malloc(16), 16};
    if (b.data != NULL)
        memset(b.data, 'k', 16);
    if (x == 1)
        b.size = SIZE_MAX;  /* a size no buffer has */
    return b;
}
PMAP_EXPORT(bytes_or_huge, pmap_bytes_t, int);

TEST(liveness_bytes_result_of_size_max_fails)
{
    test_arm(10);
    pool_t *pool = pool_create(1);
    ASSERT(pool != NULL);
    int xs[3] = {0, 1, 2};
    pmap_bytes_t out[3];
    int rc = pool_map(pool, bytes_or_huge, 3, out, xs);
    const pmap_failure_t *f;
    size_t nf = pool_failures(pool, &f);
    int ok_sizes = out[0].size == 16 && out[2].size == 16;
    if (rc >= 0) {
        for (int i = 0; i < 3; i++)
            free(out[i].data);
    }
    ASSERT_EQ(rc, 1);
    ASSERT_EQ(nf, 1);
    ASSERT_EQ(f[0].index, 1);
    ASSERT_STR_EQ(pmap_err_name(f[0].error), "EINVAL");
    ASSERT(ok_sizes);
    map_twice_ok(pool, 10);
    pool_destroy(pool);
    alarm(0);
}

/* ---- 8: Ctrl-C cancels endless items with default options ----------------- */

static pool_t *sigint_pool;

static void cancel_on_sigint(int sig)
{
    (void)sig;
    pool_cancel(sigint_pool);
}

static void *interrupt_main(void *arg)
{
    sleep_ms(200);
    pthread_kill(*(pthread_t *)arg, SIGINT);
    return NULL;
}

TEST(liveness_sigint_cancel_of_endless_items)
{
    test_arm(15);
    sigint_pool = pool_create(2);
    ASSERT(sigint_pool != NULL);
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = cancel_on_sigint;
    sigemptyset(&sa.sa_mask);
    ASSERT(sigaction(SIGINT, &sa, &old) == 0);
    pthread_t me = pthread_self(), t;
    ASSERT(pthread_create(&t, NULL, interrupt_main, &me) == 0);
    long xs[4] = {-2, -2, -2, -2}, out[4];
    double t0 = now_s();
    int rc = pool_map(sigint_pool, stage, 4, out, xs);
    double took = now_s() - t0;
    pthread_join(t, NULL);
    sigaction(SIGINT, &old, NULL);
    ASSERT_EQ(rc, PMAP_ECANCELED);
    ASSERT(took < 10 * test_slack());
    pool_destroy(sigint_pool);
    alarm(0);
}

/* ---- 9: what workers print is not lost --------------------------------- */

static int print_line(int x)
{
    printf("line %d\n", x);     /* no fflush: the library's to flush */
    return x;
}
PMAP_EXPORT(print_line, int, int);

/* Redirects stdout to fd, runs 50 printing items on 2 workers, destroys
 * the pool and puts stdout back.  Returns the map's code. */
static int print_50_lines_to(int fd)
{
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    ASSERT(saved >= 0);
    ASSERT(dup2(fd, STDOUT_FILENO) == STDOUT_FILENO);
    pool_t *pool = pool_create(2);
    int rc = PMAP_ENOMEM;
    if (pool != NULL) {
        int xs[50], out[50];
        for (int i = 0; i < 50; i++)
            xs[i] = i;
        rc = pool_map(pool, print_line, 50, out, xs);
        pool_destroy(pool);
    }
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    return rc;
}

static void expect_50_lines(const char *text)
{
    for (int i = 0; i < 50; i++) {
        char want[32];
        snprintf(want, sizeof want, "\nline %d\n", i);
        int count = 0;
        for (const char *p = text; (p = strstr(p, want)) != NULL; p++)
            count++;
        if (count != 1)
            test_fail(__FILE__, __LINE__, "\"line %d\" printed %d times", i,
                      count);
    }
}

TEST(liveness_worker_stdout_to_pipe_is_flushed)
{
    test_arm(15);
    int p[2];
    ASSERT(pipe(p) == 0);
    int rc = print_50_lines_to(p[1]);
    close(p[1]);
    char text[8192] = "\n";    /* every line starts after a newline */
    test_read_all(p[0], text + 1, sizeof text - 1);
    close(p[0]);
    ASSERT_OK(rc);
    expect_50_lines(text);
    alarm(0);
}

TEST(liveness_worker_stdout_to_file_is_flushed)
{
    test_arm(15);
    char path[] = "/tmp/pmap-liveness-stdout-XXXXXX";
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    int rc = print_50_lines_to(fd);
    char text[8192] = "\n";
    ssize_t n = pread(fd, text + 1, sizeof text - 2, 0);
    text[n > 0 ? n + 1 : 1] = '\0';
    close(fd);
    unlink(path);
    ASSERT_OK(rc);
    expect_50_lines(text);
    alarm(0);
}

/* ---- 11: a cancel, then a crash or a timeout in the same batch -------------- */

struct cancel_when {
    int started;    /* stage_started's reading end */
    pool_t *pool;
};

/* Cancels the pool once item 100 of stage has started. */
static void *cancel_when_started(void *arg)
{
    struct cancel_when *c = arg;
    char byte;
    if (read(c->started, &byte, 1) == 1)
        pool_cancel(c->pool);
    return NULL;
}

/* 1 worker, one batch of 4 then another: item 0 sleeps 0.3 s, item 1 is
 * `bad`; the map is cancelled while item 0 runs, with a grace period long
 * enough for the batch to go on on a loaded machine.  Only item 1 may carry
 * the crash or the timeout; the others are cancelled (or done right). */
static void cancel_then(long bad, double timeout)
{
    test_arm(30);
    int started[2];
    ASSERT(pipe(started) == 0);
    stage_started = started[1];     /* the worker inherits it */
    pool_t *pool = NULL;
    ASSERT_OK(pool_create_with(
        &pool, &(pool_options_t){.workers = 1, .cancel_grace = 20}));
    long xs[8] = {100, bad, 2, 3, 4, 5, 6, 7}, out[8];
    pool_map_options_t o = {.chunk = 4, .timeout = timeout};
    struct cancel_when c = {started[0], pool};
    pthread_t t;
    ASSERT(pthread_create(&t, NULL, cancel_when_started, &c) == 0);
    int rc = pool_map_with(pool, &o, stage, 8, out, xs);
    pthread_join(t, NULL);
    stage_started = -1;
    close(started[0]);
    close(started[1]);
    ASSERT_EQ(rc, PMAP_ECANCELED);
    const pmap_failure_t *f;
    size_t nf = pool_failures(pool, &f);
    const pmap_failure_t *one = failure_of(f, nf, 1);
    ASSERT(one != NULL);
    if (bad == 101) {
        ASSERT_STR_EQ(pmap_err_name(one->error), "ECRASH");
        ASSERT_EQ(one->code, SIGABRT);
    } else if (one->error != PMAP_ETIMEDOUT) {
        test_fail(__FILE__, __LINE__, "item 1: %s", pmap_err_name(one->error));
    }
    for (size_t i = 0; i < 8; i++) {
        const pmap_failure_t *fi = failure_of(f, nf, i);
        if (i == 1)
            continue;
        if (fi != NULL && fi->error != PMAP_ECANCELED)
            test_fail(__FILE__, __LINE__, "item %zu: %s, not ECANCELED", i,
                      pmap_err_name(fi->error));
        if (fi == NULL)
            ASSERT_EQ(out[i], 2 * xs[i]);
    }
    map_twice_ok(pool, 10);
    pool_destroy(pool);
    alarm(0);
}

TEST(liveness_cancel_then_crash_blames_only_the_crash)
{
    cancel_then(101, 0);
}

TEST(liveness_cancel_then_timeout_blames_only_the_timeout)
{
    cancel_then(102, 0.5);
}

/* ---- 12: recycling with an exit hook that takes long or forever ------------ */

static void exit_forever(int worker, void *arg)
{
    (void)worker;
    (void)arg;
    for (;;)
        pause();
}

static void exit_slowly(int worker, void *arg)
{
    (void)worker;
    (void)arg;
    sleep_ms(3000);
}

static void recycle_with_hook(int start, void (*hook)(int, void *))
{
    if (start == PMAP_START_SERVER)
        ASSERT_OK(pmap_init());
    pool_options_t po = {.workers = 1, .max_items_per_worker = 4,
                         .worker_exit = hook, .start = start};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    double t0 = now_s();
    map_twice_ok(pool, 12);     /* two recycles on the way */
    double took = now_s() - t0;
    pool_destroy(pool);
    if (start == PMAP_START_SERVER)
        pmap_exit();
    if (hook == exit_slowly)
        ASSERT(took < 6 * test_slack());       /* not 3 s per recycle, in series */
}

TEST(liveness_endless_exit_hook_does_not_stall_recycling_fork)
{
    test_arm(15);
    recycle_with_hook(PMAP_START_FORK, exit_forever);
    alarm(0);
}

TEST(liveness_endless_exit_hook_does_not_stall_recycling_server)
{
    test_arm(15);
    recycle_with_hook(PMAP_START_SERVER, exit_forever);
    alarm(0);
}

TEST(liveness_slow_exit_hook_does_not_stall_recycling)
{
    test_arm(25);
    recycle_with_hook(PMAP_START_FORK, exit_slowly);
    alarm(0);
}

/* ---- 13: worker_init fails for a while ------------------------------------ */

static char init_flag[64];

static int init_unless_flag(int worker, void *arg)
{
    (void)worker;
    return access((const char *)arg, F_OK) == 0;    /* nonzero: refuse */
}

/* A hang ends the test by SIGALRM: the flag file goes first. */
static void remove_flag_then_die(int sig)
{
    unlink(init_flag);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* A pool of `workers` whose worker_init (init) looks at a flag file, not
 * there yet, that a hang (alarm in `seconds`) removes before it ends the
 * test; the workers start, and map. */
static pool_t *flagged_pool(int start, int workers,
                            int (*init)(int, void *), double start_timeout,
                            unsigned seconds)
{
    snprintf(init_flag, sizeof init_flag, "/tmp/pmap-liveness-init-XXXXXX");
    int fd = mkstemp(init_flag);
    ASSERT(fd >= 0);
    close(fd);
    unlink(init_flag);      /* absent: the first workers start */
    signal(SIGALRM, remove_flag_then_die);
    test_arm(seconds);
    if (start == PMAP_START_SERVER)
        ASSERT_OK(pmap_init());     /* after the name is set: it sees it */
    pool_options_t po = {.workers = workers, .worker_init = init,
                         .worker_arg = init_flag, .start = start,
                         .start_timeout = start_timeout};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    map_twice_ok(pool, 10);
    return pool;
}

static void flag_raise(void)
{
    int fd = open(init_flag, O_CREAT | O_WRONLY, 0600);
    ASSERT(fd >= 0);
    close(fd);
}

/* With the flag gone, the pool maps right again within seconds (its
 * replacements wait out their backoff first); then it is destroyed. */
static void flagged_pool_recovers(pool_t *pool, int start)
{
    unlink(init_flag);
    long xs[10], out[10];
    for (int i = 0; i < 10; i++)
        xs[i] = i;
    int rc = -1;
    double t0 = now_s();
    while (now_s() - t0 < 10 * test_slack()) {
        rc = pool_map(pool, twice, 10, out, xs);
        if (rc == 0)
            break;
        sleep_ms(200);
    }
    ASSERT_OK(rc);
    for (int i = 0; i < 10; i++)
        ASSERT_EQ(out[i], 2 * i);
    pool_destroy(pool);
    if (start == PMAP_START_SERVER)
        pmap_exit();
    alarm(0);
    signal(SIGALRM, SIG_DFL);
}

static void init_recovers(int start)
{
    pool_t *pool = flagged_pool(start, 2, init_unless_flag, 0, 40);
    flag_raise();   /* now they refuse */
    /* Both workers die in a map (not while idle: that is another test);
     * their replacements cannot start. */
    long crash[2] = {-1, -1}, out[10];
    pool_map_options_t one = {.chunk = 1};
    int rc = pool_map_with(pool, &one, stage, 2, out, crash);
    if (rc == 0) {
        unlink(init_flag);
        test_fail(__FILE__, __LINE__, "both items crashed, yet rc 0");
    }
    long xs[10];
    for (int i = 0; i < 10; i++)
        xs[i] = i;
    for (int i = 0; i < 3; i++) {
        rc = pool_map(pool, twice, 10, out, xs);
        if (rc >= 0) {
            unlink(init_flag);
            test_fail(__FILE__, __LINE__, "map %d with no worker: %d", i, rc);
        }
    }
    flagged_pool_recovers(pool, start);
}

TEST(liveness_worker_init_failing_for_a_while_recovers_fork)
{
    init_recovers(PMAP_START_FORK);
}

TEST(liveness_worker_init_failing_for_a_while_recovers_server)
{
    init_recovers(PMAP_START_SERVER);
}

/* worker_init that never returns while the flag file exists. */
static int init_stuck_if_flag(int worker, void *arg)
{
    (void)worker;
    while (access((const char *)arg, F_OK) == 0)
        pause();
    return 0;
}

/* The only worker dies in a map and its replacement hangs in worker_init:
 * it is killed at its start timeout, though nothing else happens in the
 * pool to wake the loop meanwhile (the map hung for ever), the map ends,
 * its other items failed or run, and the pool recovers once the
 * replacements may start. */
static void stuck_replacement(int start)
{
    pool_t *pool = flagged_pool(start, 1, init_stuck_if_flag, 0.5, 30);
    flag_raise();   /* now they hang */
    long xs[6] = {0, 1, -1, 3, 4, 5}, out[6];
    pool_map_options_t one = {.chunk = 1};
    double t0 = now_s();
    int rc = pool_map_with(pool, &one, stage, 6, out, xs);
    double took = now_s() - t0;
    if (rc >= 0 && out[3] != 6) {
        unlink(init_flag);
        test_fail(__FILE__, __LINE__, "rc %d, yet item 3 did not run", rc);
    }
    const pmap_failure_t *f;
    size_t n = pool_failures(pool, &f);
    if (rc == 0 || n == 0 || took >= 15 * test_slack()) {
        unlink(init_flag);
        test_fail(__FILE__, __LINE__, "rc %d, %zu failures, %.1f s", rc, n,
                  took);
    }
    flagged_pool_recovers(pool, start);
}

TEST(liveness_replacement_stuck_before_ready_is_killed_fork)
{
    stuck_replacement(PMAP_START_FORK);
}

TEST(liveness_replacement_stuck_before_ready_is_killed_server)
{
    stuck_replacement(PMAP_START_SERVER);
}

/* Where stubborn says that it runs (a pipe the workers inherit). */
static int stubborn_started = -1;

/* Never returns, and ignores what a polite stop would send. */
static long stubborn(long x)
{
    signal(SIGTERM, SIG_IGN);
    sigset_t hup;
    sigemptyset(&hup);
    sigaddset(&hup, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &hup, NULL);
    if (write(stubborn_started, "", 1) != 1)
        abort();
    for (;;)
        pause();
    return x;
}
PMAP_EXPORT(stubborn, long, long);

/* pool_destroy while a map in the background keeps both workers busy for
 * ever: they are killed after the grace period, the map is abandoned
 * with its handle, and destroy returns (the runner checks that no child
 * or descriptor is left). */
static void destroy_busy(int start)
{
    test_arm(30);
    int started[2];
    ASSERT(pipe(started) == 0);
    stubborn_started = started[1];
    if (start == PMAP_START_SERVER)
        ASSERT_OK(pmap_init());     /* its workers inherit the pipe */
    pool_options_t po = {.workers = 2, .start = start};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    long xs[4] = {1, 2, 3, 4}, out[4];
    pool_map_options_t one = {.chunk = 1};
    pmap_job_t *job;
    ASSERT_OK(pool_map_async(pool, &one, &job, stubborn, 4, out, xs));
    char two[2];
    for (size_t got = 0; got < 2;) {
        ASSERT_EQ(pool_poll(pool, NULL), 0);    /* send the batches */
        struct pollfd p = {started[0], POLLIN, 0};
        if (poll(&p, 1, 10) == 1) {
            ssize_t n = read(started[0], two + got, 2 - got);
            ASSERT(n > 0);
            got += (size_t)n;
        }
    }
    double t0 = now_s();
    pool_destroy(pool);
    double took = now_s() - t0;
    if (start == PMAP_START_SERVER)
        pmap_exit();
    close(started[0]);
    close(started[1]);
    stubborn_started = -1;
    ASSERT(took < 10 * test_slack());
    alarm(0);
}

TEST(liveness_destroy_kills_workers_busy_for_ever_fork)
{
    destroy_busy(PMAP_START_FORK);
}

TEST(liveness_destroy_kills_workers_busy_for_ever_server)
{
    destroy_busy(PMAP_START_SERVER);
}

/* ---- 14: a cancel from another thread wakes pool_fd ------------------------ */

struct job_canceller {
    pmap_job_t *job;
    double at;
};

static void *cancel_job_later(void *arg)
{
    struct job_canceller *c = arg;
    sleep_ms(300);
    c->at = now_s();
    pmap_job_cancel(c->job);
    return NULL;
}

TEST(liveness_job_cancel_wakes_pool_fd)
{
    test_arm(10);
    pool_t *pool = pool_create(1);
    ASSERT(pool != NULL);
    int fd = pool_fd(pool);
    if (fd == PMAP_ENOSYS) {
        pool_destroy(pool);
        SKIP("no pool_fd here");
    }
    ASSERT(fd >= 0);
    long xs[2] = {-2, -2}, out[2];
    pool_map_options_t o = {.kill_on_cancel = 1};
    pmap_job_t *job;
    ASSERT_OK(pool_map_async(pool, &o, &job, stage, 2, out, xs));
    struct job_canceller c = {job, 0};
    pthread_t t;
    ASSERT(pthread_create(&t, NULL, cancel_job_later, &c) == 0);
    for (;;) {
        double wake;
        int n = pool_poll(pool, &wake);
        ASSERT(n >= 0);
        if (n > 0)
            break;
        struct pollfd p = {fd, POLLIN, 0};
        int ms = wake < 0 ? -1 : (int)(wake * 1000) + 1;
        ASSERT(poll(&p, 1, ms) >= 0 || errno == EINTR);
    }
    double done = now_s();
    pthread_join(t, NULL);
    ASSERT(c.at > 0);
    ASSERT(done - c.at < 2.5 * test_slack());
    ASSERT_EQ(pmap_job_wait(job, 0), PMAP_ECANCELED);
    pmap_job_free(job);
    pool_destroy(pool);
    alarm(0);
}

/* ---- 16: a freed job's callbacks are never called again --------------------- */

static long nap(long ms)
{
    sleep_ms((int)ms);
    return ms;
}
PMAP_EXPORT(nap, long, long);

struct counted {
    int calls, after_free, freed;
};

static int count_result(void *ctx, size_t index, void *result,
                        const pmap_failure_t *failure)
{
    (void)index;
    (void)result;
    (void)failure;
    struct counted *c = ctx;
    c->calls++;
    c->after_free += c->freed;
    return 0;
}

static int count_progress(void *ctx, const pmap_progress_t *progress)
{
    (void)progress;
    struct counted *c = ctx;
    c->calls++;
    c->after_free += c->freed;
    return 0;
}

struct free_other {
    pmap_job_t *other;
    struct counted *seen;
};

static int free_other_at_five(void *ctx, size_t index, void *result,
                              const pmap_failure_t *failure)
{
    (void)result;
    (void)failure;
    struct free_other *fo = ctx;
    if (index == 5 && fo->other != NULL) {
        pmap_job_free(fo->other);
        fo->other = NULL;
        fo->seen->freed = 1;    /* from here on, not one call */
    }
    return 0;
}

TEST(liveness_freed_job_gets_no_more_callbacks)
{
    test_arm(15);
    enum { NA = 40, NB = 8 };
    long as[NA], bs[NB];
    for (int i = 0; i < NA; i++)
        as[i] = 50;     /* ms each */
    for (int i = 0; i < NB; i++)
        bs[i] = 20;
    pool_t *pool = pool_create(2);
    ASSERT(pool != NULL);
    struct counted seen = {0, 0, 0};
    struct free_other fo = {NULL, &seen};
    /* B, first in line, frees A from its callback while A has items left
     * (not started, or running). */
    pool_map_options_t ob = {.chunk = 1, .on_result = free_other_at_five,
                             .ctx = &fo};
    pmap_job_t *b;
    ASSERT_OK(pool_map_async(pool, &ob, &b, nap, NB, (long *)NULL, bs));
    pool_map_options_t oa = {.chunk = 1, .on_result = count_result,
                             .on_progress = count_progress,
                             .progress_interval = 0.001, .ctx = &seen};
    ASSERT_OK(pool_map_async(pool, &oa, &fo.other, nap, NA, (long *)NULL,
                             as));
    ASSERT_OK(pmap_job_wait(b, -1));
    pmap_job_free(b);
    ASSERT(fo.other == NULL);
    ASSERT(seen.freed);
    map_twice_ok(pool, 10);     /* the pool goes on: nothing more for A */
    ASSERT_EQ(seen.after_free, 0);
    pool_destroy(pool);
    ASSERT_EQ(seen.after_free, 0);
    alarm(0);
}

struct self_free {
    pmap_job_t *job;
    int freed;
};

static int free_self_at_three(void *ctx, size_t index, void *result,
                              const pmap_failure_t *failure)
{
    (void)result;
    (void)failure;
    struct self_free *s = ctx;
    if (index == 3 && !s->freed) {
        s->freed = 1;
        pmap_job_free(s->job);
    }
    return 0;
}

/* Under AddressSanitizer (make check-asan) a use of the freed job by the
 * wait shows; elsewhere this checks that the wait returns. */
TEST(liveness_job_freed_by_its_own_callback_during_wait)
{
    test_arm(15);
    long xs[20];
    for (int i = 0; i < 20; i++)
        xs[i] = 5;
    pool_t *pool = pool_create(2);
    ASSERT(pool != NULL);
    struct self_free s = {NULL, 0};
    pool_map_options_t o = {.chunk = 1, .on_result = free_self_at_three,
                            .ctx = &s};
    ASSERT_OK(pool_map_async(pool, &o, &s.job, nap, 20, (long *)NULL, xs));
    pmap_job_t *job = s.job;
    int rc = pmap_job_wait(job, -1);    /* job is freed meanwhile */
    (void)rc;
    ASSERT(s.freed);
    map_twice_ok(pool, 10);
    pool_destroy(pool);
    alarm(0);
}

/* ---- 17: counters of a running map ---------------------------------------- */

TEST(liveness_running_job_stats)
{
    test_arm(15);
    enum { N = 40 };
    long xs[N], out[N];
    for (int i = 0; i < N; i++)
        xs[i] = 20;
    pool_t *pool = pool_create(2);
    ASSERT(pool != NULL);
    pool_map_options_t o = {.chunk = 1};
    pmap_job_t *job;
    ASSERT_OK(pool_map_async(pool, &o, &job, nap, N, out, xs));
    pmap_stats_t st;
    memset(&st, 0, sizeof st);
    double t0 = now_s();
    for (;;) {
        ASSERT(pool_poll(pool, NULL) >= 0);
        ASSERT_OK(pmap_job_stats(job, &st));
        if (st.items > 0)
            break;
        ASSERT(now_s() - t0 < 5 * test_slack());
        sleep_ms(2);
    }
    ASSERT(st.items < N);   /* still running */
    ASSERT(st.bytes_sent > 0);
    ASSERT(st.wall_ns > 0);
    ASSERT_OK(pmap_job_wait(job, -1));
    pmap_job_free(job);
    pool_destroy(pool);
    alarm(0);
}

/* ---- 18: pmap_init in a forked child -------------------------------------- */

TEST(liveness_pmap_init_in_forked_child)
{
    test_arm(20);
    ASSERT_OK(pmap_init());
    fflush(NULL);
    pid_t child = fork();
    ASSERT(child >= 0);
    if (child == 0) {
        int rc = pmap_init();
        if (rc < 0)
            _exit(0);   /* refused: fair */
        pool_options_t po = {.workers = 1, .start = PMAP_START_SERVER};
        pool_t *pool;
        rc = pool_create_with(&pool, &po);
        if (rc == PMAP_EINVAL)
            _exit(3);   /* "pmap_init was not called", after it said 0 */
        if (rc != 0)
            _exit(4);
        long x = 21, y = 0;
        rc = pool_call(pool, twice, &y, x);
        pool_destroy(pool);
        pmap_exit();
        _exit(rc == 0 && y == 42 ? 0 : 5);
    }
    int status;
    pid_t r;
    while ((r = waitpid(child, &status, 0)) < 0 && errno == EINTR)
        ;
    pmap_exit();
    ASSERT_EQ(r, child);
    ASSERT(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), 0);
    alarm(0);
}

/* ---- 15: the window bounds the items alive, as documented ------------------ */

struct alive_count {
    size_t n, made, handed, most;
    const char *text;
};

static size_t text_length(const char *s)
{
    return strlen(s);
}
PMAP_EXPORT(text_length, size_t, const char *);

static int make_text(void *ctx, const char **s)
{
    struct alive_count *c = ctx;
    if (c->made == c->n)
        return 0;
    c->made++;
    if (c->made - c->handed > c->most)
        c->most = c->made - c->handed;
    *s = c->text;
    return 1;
}

static int count_handed(void *ctx, size_t index, void *result,
                        const pmap_failure_t *failure)
{
    struct alive_count *c = ctx;
    (void)index;
    if (failure == NULL && *(size_t *)result == strlen(c->text))
        c->handed++;
    return 0;
}

/* Items made and not handed over never exceed max(window, 4 x workers). */
static void check_alive(int workers, size_t window, char *text)
{
    pool_t *pool = pool_create(workers);
    ASSERT(pool != NULL);
    struct alive_count c = {test_scaled(60), 0, 0, 0, text};
    pool_map_options_t o = {.on_result = count_handed, .ctx = &c,
                            .window = window};
    ASSERT_OK(pool_map_stream(pool, &o, text_length, make_text, &c));
    ASSERT_EQ(c.handed, c.n);
    size_t bound = 4 * (size_t)workers > window ? 4 * (size_t)workers : window;
    if (c.most > bound)
        test_fail(__FILE__, __LINE__, "%zu items alive, window %zu, %d "
                  "workers: more than %zu", c.most, window, workers, bound);
    pool_destroy(pool);
}

TEST(liveness_window_bounds_items_alive)
{
    size_t size = 1 << 20;
    char *text = malloc(size);
    ASSERT(text != NULL);
    memset(text, 'w', size - 1);
    text[size - 1] = '\0';
    check_alive(2, 1, text);
    check_alive(8, 1, text);
    check_alive(2, 12, text);
    free(text);
}

/* ---- 8: cancel_grace: running items finish within it, or are killed ------ */

static long nap_then_double(long ms)
{
    sleep_ms((int)ms);
    return 2 * ms;
}
PMAP_EXPORT(nap_then_double, long, long);

/* Item 0 naps `nap` ms, the others are quick; the map is cancelled while
 * item 0 runs.  Returns item 0's failure code, or 0 if it finished. */
static int cancel_during_nap(pool_t *pool, const pool_map_options_t *o,
                             long nap)
{
    long xs[40] = {nap}, out[40];
    pmap_job_t *job;
    ASSERT_OK(pool_map_async(pool, o, &job, nap_then_double, 40, out, xs));
    ASSERT_EQ(pmap_job_wait(job, 0.1), PMAP_ETIMEDOUT);
    pmap_job_cancel(job);
    ASSERT_EQ(pmap_job_wait(job, -1), PMAP_ECANCELED);
    const pmap_failure_t *f;
    size_t nf = pmap_job_failures(job, &f);
    int error = nf > 0 && f[0].index == 0 ? f[0].error : 0;
    if (error == 0)
        ASSERT_EQ(out[0], 2 * nap);
    for (size_t i = 0; i < nf; i++)
        ASSERT_EQ(f[i].error, PMAP_ECANCELED);  /* never another cause */
    pmap_job_free(job);
    return error;
}

TEST(liveness_cancel_grace_lets_running_items_finish_or_kills_them)
{
    test_arm(30);
    pool_t *pool = pool_create(2);
    ASSERT(pool != NULL);
    pool_map_options_t o = {.chunk = 1};
    ASSERT_EQ(cancel_during_nap(pool, &o, 3000), PMAP_ECANCELED);  /* 0.5 s */
    o.cancel_grace = -1;
    ASSERT_EQ(cancel_during_nap(pool, &o, 800), 0);     /* finishes */
    o.cancel_grace = 2;
    ASSERT_EQ(cancel_during_nap(pool, &o, 800), 0);     /* within 2 s */
    pool_destroy(pool);
    pool_options_t po = {.workers = 2, .cancel_grace = -1};
    ASSERT_OK(pool_create_with(&pool, &po));
    o.cancel_grace = 0;     /* the pool's: let them finish */
    ASSERT_EQ(cancel_during_nap(pool, &o, 800), 0);
    pool_destroy(pool);
    alarm(0);
}

/* ---- 6: a stopped fork server stalls none of the other pools ------------- */

static pool_t *bystander;
static double bystander_took;

/* In another thread: a fork pool whose items hang under a 0.2 s timeout. */
static void *bystander_map(void *arg)
{
    (void)arg;
    /* By now the server pool has given up learning its dead worker's
     * status (1.1 s) and waits for the stopped server to start another. */
    sleep_ms(1500);
    long xs[2] = {60000, 60000}, out[2];
    pool_map_options_t o = {.timeout = 0.2};
    double t0 = now_s();
    int rc = pool_map_with(bystander, &o, nap_then_double, 2, out, xs);
    bystander_took = now_s() - t0;
    return rc == 2 ? NULL : (void *)1;
}

TEST(liveness_stopped_fork_server_stalls_no_other_pool)
{
    if (!have_proc())
        SKIP("no /proc to find the fork server");
    test_arm(30);
    ASSERT_OK(pmap_init());
    long server = find_child(NULL);
    if (server == 0) {
        pmap_exit();
        SKIP("fork server not found among this process's children");
    }
    pool_options_t so = {.workers = 1, .start = PMAP_START_SERVER,
                         .start_timeout = 5};
    pool_t *sp;
    ASSERT_OK(pool_create_with(&sp, &so));
    pool_options_t fo = {.workers = 2, .start = PMAP_START_FORK};
    ASSERT_OK(pool_create_with(&bystander, &fo));
    long worker = worker_pid(sp, 0);
    ASSERT(kill((pid_t)server, SIGSTOP) == 0);
    wait_stopped(server);
    kill((pid_t)worker, SIGKILL);   /* its replacement needs the server */
    wait_dead(worker);
    pthread_t t;
    ASSERT(pthread_create(&t, NULL, bystander_map, NULL) == 0);
    long x = 1, r;
    int rc = pool_call(sp, twice, &r, x);   /* waits on the server */
    void *failed;
    pthread_join(t, &failed);
    kill((pid_t)server, SIGCONT);
    pool_destroy(bystander);
    pool_destroy(sp);
    pmap_exit();
    ASSERT(rc < 0);
    ASSERT(failed == NULL);
    if (bystander_took > 2 * test_slack())
        test_fail(__FILE__, __LINE__, "the fork pool's 0.2 s timeouts took "
                  "%.2f s while the server was stopped", bystander_took);
    alarm(0);
}

/* ---- 1, 3 and 14 together: a background map in the program's own poll
 * loop learns of a crash through pool_fd, while a process the callback
 * forked still holds the worker's channel ---------------------------------- */

TEST(liveness_pool_fd_wakes_on_a_death_behind_a_held_channel)
{
#ifndef __linux__
    SKIP("pool_fd needs epoll");
#endif
    test_arm(15);
    ASSERT(pipe(grandchild_pipe) == 0);     /* before: workers inherit it */
    pool_t *pool = pool_create(1);
    ASSERT(pool != NULL);
    int fd = pool_fd(pool);
    ASSERT(fd >= 0);
    long xs[4] = {0, 1, 0, 0}, out[4];
    pmap_job_t *job;
    pool_map_options_t o = {.chunk = 1};
    double t0 = now_s();
    ASSERT_OK(pool_map_async(pool, &o, &job, fork_then, 4, out, xs));
    /* The program's loop: sleep on pool_fd alone, as long as it says. */
    while (pmap_job_wait(job, 0) == PMAP_ETIMEDOUT) {
        double wake;
        ASSERT(pool_poll(pool, &wake) >= 0);
        if (pmap_job_wait(job, 0) != PMAP_ETIMEDOUT)
            break;
        struct pollfd p = {fd, POLLIN, 0};
        int ms = wake < 0 ? -1 : (int)(wake * 1000) + 1;
        ASSERT(poll(&p, 1, ms) >= 0 || errno == EINTR);
    }
    double took = now_s() - t0;
    long helper = read_helper();
    ASSERT_EQ(pmap_job_wait(job, 0), 1);
    const pmap_failure_t *f;
    ASSERT_EQ(pmap_job_failures(job, &f), 1);
    ASSERT_EQ(f[0].index, 1);
    ASSERT_EQ(f[0].error, PMAP_ECRASH);
    ASSERT_EQ(f[0].code, SIGABRT);
    for (int i = 0; i < 4; i++)
        ASSERT_EQ(out[i], i == 1 ? 0 : 10);
    pmap_job_free(job);
    pool_destroy(pool);
    kill((pid_t)helper, SIGKILL);   /* not our child: the worker's */
    close(grandchild_pipe[0]);
    close(grandchild_pipe[1]);
    ASSERT(took < 5 * test_slack());     /* the helper sleeps 30 s */
    alarm(0);
}

/* ---- 17: the caller away longer than a deadline --------------------------- */

/* A worker started as a map ends (replacing one that crashed) says READY
 * while nobody runs the pool's loop: the next map, after longer than the
 * start timeout, reads that before judging the worker late. */
TEST(liveness_worker_started_between_maps_is_not_judged_late)
{
    test_arm(20);
    pool_t *pool;
    pool_options_t po = {.workers = 1, .start_timeout = 1};
    ASSERT_OK(pool_create_with(&pool, &po));
    long xs[3] = {1, 2, -1}, out[3];
    ASSERT_EQ(pool_map(pool, stage, 3, out, xs), 1);
    pmap_stats_t total;
    ASSERT_OK(pool_stats(pool, NULL, &total));
    ASSERT_EQ(total.restarts, 1);   /* the replacement started meanwhile */
    sleep_ms(2000);                 /* twice its start timeout, away */
    map_twice_ok(pool, 10);
    ASSERT_OK(pool_stats(pool, NULL, &total));
    ASSERT_EQ(total.restarts, 1);   /* and it was not killed as late */
    pool_destroy(pool);
    alarm(0);
}

/* A timed map in the background whose results wait in the channels while
 * the caller is away for longer than its timeout: they are taken, not
 * charged as a timeout. */
TEST(liveness_results_waiting_past_a_timeout_are_taken)
{
    test_arm(20);
    pool_t *pool = pool_create(2);
    ASSERT(pool != NULL);
    enum { N = 8 };
    long xs[N], out[N];
    for (int i = 0; i < N; i++)
        xs[i] = i;
    pool_map_options_t o = {.timeout = 0.3};
    pmap_job_t *job;
    ASSERT_OK(pool_map_async(pool, &o, &job, stage, N, out, xs));
    sleep_ms(1500);                 /* five timeouts, away */
    ASSERT_EQ(pmap_job_wait(job, -1), 0);
    for (int i = 0; i < N; i++)
        ASSERT_EQ(out[i], 2 * i);
    pmap_stats_t total;
    ASSERT_OK(pool_stats(pool, NULL, &total));
    ASSERT_EQ(total.restarts, 0);   /* no worker was killed as late */
    pmap_job_free(job);
    pool_destroy(pool);
    alarm(0);
}
