/* SPDX-License-Identifier: MIT */
/*
 * soak.c - libpmap under random faults for a while: `soak [seconds] [seed]`.
 *
 * Pools of both start methods run random maps of every form (arrays of one
 * to three arguments with a constant and strings; a producer with results
 * to a callback; a map in the background; a single call), a fifth of them
 * large enough that their columns go through the workers' shared memory,
 * while faults
 * strike: items crash, exit, loop, stop themselves, fail on purpose, or
 * crash leaving a helper process on their channel; a thread kills or stops
 * workers and the fork server, or cancels the map, at a random time;
 * between maps, idle workers are killed or stopped, the idle pool is
 * cancelled, the server killed, pools recreated (once with the server
 * stopped).
 *
 * Every call must return within its bound (a watchdog thread aborts the
 * program otherwise), and every item must be right, or failed for its true
 * cause (check_item); at the end no descriptor, child or memory may be left
 * over.  Faults are drawn from a seeded RNG in this thread, so a seed
 * replays the same plan (timings differ).  SOAK_FAULTS=0: no faults at all,
 * and every map must succeed.
 */
#include <pmap.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { NMAX = 4096, NPOOLS = 4, MARGIN_S = 10, RSS_BOUND_MIB = 64 };
enum { NSMALL = 400, NLARGE = 2048 };   /* a large map's columns, and its
                                           batches', go through the workers'
                                           shared memory */

/* Every fault: in an item (its code travels in the item's input), from the
 * fault thread during a map (O_), or between maps (E_). */
enum kind {
    F_NONE, F_SEGV, F_NULL, F_ABORT, F_EXIT, F_UEXIT, F_LOOP, F_STOP,
    F_HELPER, F_FAIL, O_KILL, O_STOP, O_CANCEL, O_KILL_SERVER, O_STOP_SERVER,
    E_KILL, E_STOP, E_CANCEL, E_KILL_SERVER, E_RECREATE, E_CREATE_STOPPED,
    NKINDS
};
static const char *const kind_name[NKINDS] = {
    "none", "segv", "null", "abort", "exit", "_exit", "loop", "selfstop",
    "helper", "fail", "kill", "stop", "cancel", "srvkill", "srvstop",
    "idlekill", "idlestop", "idlecancel", "idlesrvkill", "recreate",
    "create-srvstopped"};
static long injected[NKINDS];

enum form { ARRAY, STREAM, ASYNC, CALL };

/* ---- the mapped functions (run in the workers) ------------------------- */

/* An item's input: its value, a "slow" bit and its fault. */
#define FAULT(x) ((int)((x) & 15))
#define SLOW 16L
#define VALUE(x) ((x) >> 5)

static int exit_status(long x) { return 1 + (int)(VALUE(x) % 100); }
static int fail_code(long x) { return 1 + (int)(VALUE(x) % 1000); }

static void sleep_ms(long ms)
{
    struct timespec d = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&d, &d) < 0 && errno == EINTR)
        ;
}

__attribute__((no_sanitize("undefined"))) static void write_null(void)
{
    int *volatile p = NULL;
    *(volatile int *)p = 1;     /* volatile: the compiler may not drop it */
}

static void act(long x)
{
    if (x & SLOW)
        sleep_ms(1);    /* so that faults from outside land mid-map */
    switch (FAULT(x)) {
    case F_SEGV: raise(SIGSEGV); break;
    case F_NULL: write_null(); break;
    case F_ABORT: abort();
    case F_EXIT: exit(exit_status(x));
    case F_UEXIT: _exit(exit_status(x));
    case F_LOOP: for (;;) pause();
    case F_STOP: raise(SIGSTOP); for (;;) pause();
    case F_HELPER:
        /* The worker crashes while a helper it forked holds a copy of its
         * channel for 2-5 s: its death must be seen without end of file. */
        if (fork() == 0) {
            sleep_ms(2000 + VALUE(x) % 3000);
            raise(SIGSEGV);
            _exit(1);
        }
        raise(SIGSEGV);
        break;
    case F_FAIL: pmap_fail(fail_code(x), "soak fail %d", fail_code(x)); break;
    }
}

static long str_hash(const char *s)
{
    unsigned long h = 5;
    for (; s != NULL && *s; s++)
        h = h * 31 + (unsigned char)*s;
    return (long)(h % 1000003);
}

/* What fn (1, 2 or 3) returns for an item; the caller expects the same. */
static long pure(int fn, long x, const char *s, long k)
{
    long v = VALUE(x) * 7;
    return fn == 1 ? v + 1 : fn == 2 ? v + k * 31 : v + k * 31 + str_hash(s);
}

static long f1(long x) { act(x); return pure(1, x, NULL, 0); }
static long f2(long x, long k) { act(x); return pure(2, x, NULL, k); }
static long f3(long x, const char *s, long k)
{
    act(x);
    return pure(3, x, s, k);
}
PMAP_EXPORT(f1, long, long);
PMAP_EXPORT(f2, long, long, long);
PMAP_EXPORT(f3, long, long, const char *, long);

/* ---- the caller's state ------------------------------------------------ */

static struct slot {
    pool_t *pool;
    int start, nworkers;
} pools[NPOOLS];

static pid_t server_pid;        /* the fork server, 0 if none is known */
static bool server_dead;        /* killed, and pmap_init not called since */
static bool faults = true;
static long maps, items, broken_maps;
static double duration;
static unsigned long long seed, rng;

/* One map: its plan, what the fault thread did, and what came back. */
static struct map {
    long no;
    int pool, form, fn, rc, nfaults, broken;
    size_t n, produced, strays;
    pool_t *p;
    pool_map_options_t opts;
    long x[NMAX], k[NMAX], out[NMAX], got[NMAX];
    const char *s[NMAX];
    char text[NMAX][24];
    unsigned char state[NMAX];  /* 0: never reported; 1: result; 2: failed */
    pmap_failure_t fail[NMAX];  /* without their messages: */
    bool msg_ok[NMAX];          /* EFAIL's message was the callback's */
    double bound;
    char desc[512];
    int outside, delay_ms, cont_ms, before;  /* before: an E_ fault */
    pid_t victim, server, killed[4], stopped[4];
    int nkilled, nstopped;
    bool server_stopped, cancelled, server_down;    /* may have hit it */
} cur;

static void summary(void);
static int take(void *ctx, size_t i, void *result, const pmap_failure_t *f);

/* ---- helpers ----------------------------------------------------------- */

static unsigned long long rnd(void)     /* xorshift64* */
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 2685821657736338717ULL;
}

static long pick(long lo, long hi)
{
    return lo + (long)(rnd() % (unsigned long long)(hi - lo + 1));
}

static bool chance(double p)
{
    return (double)(rnd() >> 11) / 9007199254740992.0 < p;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Reports a broken invariant of m (four lines a map at most), or, with m
 * NULL, anything else. */
static void say(struct map *m, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void say(struct map *m, const char *fmt, ...)
{
    if (m != NULL && m->broken++ >= 4)
        return;
    char what[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (m != NULL)
        printf("soak: map #%ld BROKE: %s [%s]\n", m->no, what, m->desc);
    else
        printf("soak: %s\n", what);
    fflush(stdout);
}

/* Reads a small /proc file; with open(2), as this runs in threads too. */
static void read_proc(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, buf, size - 1) : -1;
    buf[n > 0 ? n : 0] = '\0';
    if (fd >= 0)
        close(fd);
}

/* Whether pid is alive (not a zombie) and a child of parent: a pid reused
 * by a stranger is never signalled. */
static bool alive_child_of(pid_t pid, pid_t parent)
{
    char path[64], buf[512], state;
    int ppid;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    read_proc(path, buf, sizeof buf);
    char *p = strrchr(buf, ')');    /* the name may hold anything */
    return pid > 0 && p != NULL &&
           sscanf(p + 1, " %c %d", &state, &ppid) == 2 &&
           ppid == (int)parent && state != 'Z';
}

static pid_t worker_pid(int pool, int w)
{
    pmap_worker_stats_t ws;
    return pool_worker_stats(pools[pool].pool, w, &ws) == 0 ? (pid_t)ws.pid
                                                            : 0;
}

/* The fork server: the live child of ours that is no fork pool's worker. */
static pid_t find_server(void)
{
    DIR *d = opendir("/proc");
    pid_t found = 0;
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;) {
        pid_t pid = (pid_t)atol(e->d_name);
        bool worker = false;
        for (int i = 0; i < NPOOLS; i++)
            for (int w = 0; w < pools[i].nworkers; w++)
                worker |= pools[i].start == PMAP_START_FORK &&
                          worker_pid(i, w) == pid;
        if (!worker && alive_child_of(pid, getpid()))
            found = pid;
    }
    if (d != NULL)
        closedir(d);
    return found;
}

/* ---- the watchdog ------------------------------------------------------ */

static struct {
    pthread_mutex_t lock;
    double deadline, bound;     /* deadline 0: nothing watched */
    char what[600];
} dog = {PTHREAD_MUTEX_INITIALIZER, 0, 0, ""};

static void guard(double seconds, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void guard(double seconds, const char *fmt, ...)
{
    pthread_mutex_lock(&dog.lock);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dog.what, sizeof dog.what, fmt, ap);
    va_end(ap);
    dog.bound = seconds;
    dog.deadline = seconds > 0 ? now_s() + seconds : 0;
    pthread_mutex_unlock(&dog.lock);
}

/* A call past its bound hangs: nothing can be checked after it, so say so
 * and abort (our workers and the server die with us). */
static void *watchdog(void *arg)
{
    for (;; sleep_ms(100)) {
        pthread_mutex_lock(&dog.lock);
        if (dog.deadline > 0 && now_s() > dog.deadline) {
            say(NULL, "WATCHDOG: %s did not return within its bound of "
                      "%.1f s", dog.what, dog.bound);
            broken_maps++;
            summary();
            abort();
        }
        pthread_mutex_unlock(&dog.lock);
    }
    return arg;
}

/* ---- the fault thread -------------------------------------------------- */

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool armed, running, busy, quit;
} ft = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0};

/* Waits ms, or less if the map returns.  Locked. */
static void wait_while_running(long ms)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    long ns = t.tv_nsec + ms % 1000 * 1000000L;
    t.tv_sec += ms / 1000 + ns / 1000000000L;
    t.tv_nsec = ns % 1000000000L;
    while (ft.running && pthread_cond_timedwait(&ft.cond, &ft.lock, &t) == 0)
        ;
}

/* Strikes m's outside fault now (the map runs).  Locked. */
static void strike(struct map *m)
{
    pid_t v = m->victim, parent = pools[m->pool].start == PMAP_START_SERVER
                                      ? m->server : getpid();
    int o = m->outside;
    if (o == O_CANCEL) {
        m->cancelled = true;
        pool_cancel(m->p);
    } else if (o == O_KILL || o == O_STOP) {
        if (!alive_child_of(v, parent))
            return;     /* replaced meanwhile */
        if (o == O_KILL)
            m->killed[m->nkilled++] = v;
        else
            m->stopped[m->nstopped++] = v;
        kill(v, o == O_KILL ? SIGKILL : SIGSTOP);
        if (o == O_STOP && m->opts.timeout == 0) {  /* it has to go on */
            wait_while_running(m->cont_ms);
            kill(v, SIGCONT);
        }   /* in a timed map, left stopped until the map returns */
    } else if (alive_child_of(m->server, getpid())) {
        m->server_down |= o == O_KILL_SERVER;
        m->server_stopped |= o == O_STOP_SERVER;
        kill(m->server, o == O_KILL_SERVER ? SIGKILL : SIGSTOP);
        if (o == O_STOP_SERVER) {
            wait_while_running(m->cont_ms);
            kill(m->server, SIGCONT);
        }
    } else {
        return;
    }
    injected[o]++;
}

static void *fault_thread(void *arg)
{
    struct map *m = arg;
    pthread_mutex_lock(&ft.lock);
    while (!ft.quit) {
        if (ft.armed) {
            ft.armed = false;
            ft.busy = true;
            wait_while_running(m->delay_ms);
            if (ft.running)
                strike(m);
            ft.busy = false;
            pthread_cond_broadcast(&ft.cond);
        }
        if (!ft.quit && !ft.armed)
            pthread_cond_wait(&ft.cond, &ft.lock);
    }
    pthread_mutex_unlock(&ft.lock);
    return NULL;
}

static void arm(struct map *m, bool running)
{
    pthread_mutex_lock(&ft.lock);
    ft.running = running;
    ft.armed = running && m->outside != 0;
    pthread_cond_broadcast(&ft.cond);
    while (!running && (ft.armed || ft.busy))
        pthread_cond_wait(&ft.cond, &ft.lock);
    pthread_mutex_unlock(&ft.lock);
    if (running)
        return;
    /* The map returned and the fault thread is done: go on with what was
     * left stopped. */
    for (int i = 0; i < m->nstopped; i++)
        kill(m->stopped[i], SIGCONT);
    if (m->server_stopped)
        kill(m->server, SIGCONT);
    server_dead |= m->server_down;
}

/* ---- pools and the fork server ----------------------------------------- */

/* (Re)creates pool i; a stopped server may make it fail with ESTART. */
static int create_pool(struct map *m, int i, bool server_stopped)
{
    struct slot *s = &pools[i];
    const char *how = s->start == PMAP_START_SERVER ? "server" : "fork";
    pool_options_t o = {.workers = s->nworkers, .start = s->start,
                        .start_timeout = 3};
    guard(3 + MARGIN_S, "pool_create_with(%s, %d workers)%s before map #%ld",
          how, s->nworkers, server_stopped ? ", the server stopped," : "",
          m->no);
    int rc = pool_create_with(&s->pool, &o);
    guard(0, "nothing");
    if (rc != 0 && !(rc == PMAP_ESTART && server_stopped))
        say(m, "pool_create_with(%s) returned %s", how, pmap_err_name(rc));
    return rc;
}

static void destroy_pool(int i)
{
    guard(2 + MARGIN_S, "pool_destroy(pool %d)", i);
    pool_destroy(pools[i].pool);
    guard(0, "nothing");
    pools[i].pool = NULL;
}

/* After the server was killed, pmap_init must start a new one.  If it does
 * not, the server pools are rebuilt on a new server, so the soak goes on. */
static void restart_server(struct map *m)
{
    for (int i = 0; i < 200 && alive_child_of(server_pid, getpid()); i++)
        sleep_ms(10);   /* until the kill has taken */
    guard(MARGIN_S, "pmap_init() after the server was killed (map #%ld)",
          m->no);
    int rc = pmap_init();
    guard(0, "nothing");
    server_dead = false;
    if (rc == 0 && (server_pid = find_server()) > 0)
        return;
    say(m, "pmap_init() after the fork server was killed returned %s, and "
           "%s", pmap_err_name(rc), server_pid ? "a server runs"
                                              : "no new server runs");
    for (int i = 0; i < NPOOLS; i++)
        if (pools[i].start == PMAP_START_SERVER)
            destroy_pool(i);
    guard(MARGIN_S, "pmap_exit() and pmap_init() to rebuild the server");
    pmap_exit();
    rc = pmap_init();
    guard(0, "nothing");
    if (rc != 0 || (server_pid = find_server()) == 0) {
        say(NULL, "cannot restart the fork server (%s)", pmap_err_name(rc));
        summary();
        exit(1);
    }
}

/* ---- planning a map ---------------------------------------------------- */

/* A fault between maps, on the pool of the next map.  Returns whether the
 * next map must be timed (a worker of its pool is left stopped). */
static bool between_maps(struct map *m)
{
    struct slot *s = &pools[m->pool];
    int kind = (int)pick(E_KILL, E_CREATE_STOPPED);
    pid_t v = worker_pid(m->pool, (int)pick(0, s->nworkers - 1));
    bool stop = kind == E_CREATE_STOPPED;
    if ((kind <= E_STOP && v <= 0) ||
        (kind == E_KILL_SERVER && (server_pid <= 0 || !chance(0.3))) ||
        (stop && (s->start != PMAP_START_SERVER || server_pid <= 0)))
        return false;   /* the server's death is rarer: it costs more */
    m->before = kind;
    injected[kind]++;
    if (kind == E_KILL || kind == E_STOP) {
        kill(v, kind == E_KILL ? SIGKILL : SIGSTOP);
        if (kind == E_KILL)
            m->killed[m->nkilled++] = v;
        else
            m->stopped[m->nstopped++] = v;
    } else if (kind == E_CANCEL) {
        pool_cancel(s->pool);   /* idle: the next map must not see it */
    } else if (kind == E_KILL_SERVER) {
        kill(server_pid, SIGKILL);
        server_dead = true;
    } else {
        destroy_pool(m->pool);
        s->nworkers = (int)pick(1, 4);
        if (stop)
            kill(server_pid, SIGSTOP);
        create_pool(m, m->pool, stop);
        if (stop)
            kill(server_pid, SIGCONT);
    }
    return kind == E_STOP;
}

static void plan_items(struct map *m, bool timed)
{
    for (size_t i = 0; i < m->n; i++) {
        bool slow = m->n >= NLARGE ? (m->outside && i % 64 == 0) ||
                                         chance(0.001)
                                   : m->outside || chance(0.05);
        m->x[i] = pick(0, 1000000) << 5 | (slow ? SLOW : 0);
        m->k[i] = pick(-1000, 1000);
        snprintf(m->text[i], sizeof m->text[i], "i%zu-%ld", i, pick(0, 99999));
        m->s[i] = chance(0.1) ? NULL : m->text[i];
    }
    for (int f = faults && chance(0.4) ? (int)pick(1, 3) : 0; f > 0; f--) {
        int kind = (int)pick(F_SEGV, F_FAIL);
        /* An item that never returns only where something ends it: a
         * timeout, or a cancel (running items are killed after a grace). */
        if ((kind == F_LOOP && !timed && m->outside != O_CANCEL) ||
            (kind == F_STOP && !timed))
            kind = F_ABORT;
        size_t i = (size_t)pick(0, (long)m->n - 1);
        if (FAULT(m->x[i]) == F_NONE) {
            m->x[i] |= kind;
            injected[kind]++;
            m->nfaults++;
        }
    }
}

static void describe(struct map *m)
{
    static const char *const forms[] = {"array", "stream", "async", "call"};
    char *d = m->desc, *end = d + sizeof m->desc - 160;
    d += snprintf(d, 200, "%s f%d, %s pool %d (%d workers), n=%zu chunk=%zu "
                  "timeout=%.2f%s%s window=%zu", forms[m->form], m->fn,
                  pools[m->pool].start == PMAP_START_SERVER ? "server" : "fork",
                  m->pool, pools[m->pool].nworkers, m->n, m->opts.chunk,
                  m->opts.timeout, m->opts.kill_on_cancel ? " kill_on_cancel"
                                                          : "",
                  m->opts.unordered ? " unordered" : "", m->opts.window);
    for (size_t i = 0; i < m->n && d < end; i++)
        if (FAULT(m->x[i]) != F_NONE)
            d += sprintf(d, " item %zu:%s", i, kind_name[FAULT(m->x[i])]);
    if (m->outside)
        d += sprintf(d, "; %s (pid %d) at %d ms", kind_name[m->outside],
                     (int)(m->outside >= O_KILL_SERVER ? m->server : m->victim),
                     m->delay_ms);
    pid_t hit = m->nkilled ? m->killed[0] : m->nstopped ? m->stopped[0] : 0;
    if (m->before)
        sprintf(d, "; before it: %s%s%.0d", kind_name[m->before],
                hit ? " " : "", (int)hit);
}

static void plan_map(struct map *m, bool force_timed)
{
    static const int forms[] = {ARRAY, ARRAY, ARRAY, STREAM, STREAM, ASYNC,
                                ASYNC, CALL};
    bool server = pools[m->pool].start == PMAP_START_SERVER;
    m->p = pools[m->pool].pool;
    m->form = forms[pick(0, force_timed ? 6 : 7)];
    m->fn = m->form == STREAM || m->form == CALL ? 3 : (int)pick(1, 3);
    bool large = m->form != CALL && chance(0.2);
    m->n = m->form == CALL ? 1 : large ? (size_t)pick(NLARGE, NMAX)
                                       : (size_t)pick(1, NSMALL);
    bool timed = m->form != CALL && (force_timed || chance(0.5));
    m->opts.timeout = timed ? (double)pick(50, 100) / 100 : 0;
    if (m->form != CALL) {      /* pool_call has the pool's options */
        m->opts.chunk = chance(0.5) ? 0
                        : large ? (size_t)pick(NLARGE, NMAX)
                                : (size_t)pick(1, 16);
        m->opts.kill_on_cancel = chance(0.3);
    }
    if (m->form == STREAM) {
        m->opts.on_result = take;
        m->opts.ctx = m;
        m->opts.unordered = chance(0.5);
        m->opts.window = chance(0.5) ? 0 : (size_t)pick(8, 64);
    }
    m->server = server_pid;
    m->server_down = server_dead && server;
    m->outside = faults && chance(0.35) ? (int)pick(O_KILL, O_STOP_SERVER) : 0;
    if (m->outside >= O_KILL_SERVER &&
        (!server || server_pid <= 0 ||
         (m->outside == O_KILL_SERVER && !chance(0.3))))
        m->outside = O_CANCEL;
    m->delay_ms = (int)pick(0, 40);
    m->cont_ms = (int)(m->outside == O_STOP_SERVER ? pick(50, 300)
                                                   : pick(50, 1000));
    m->victim = worker_pid(m->pool, (int)pick(0, pools[m->pool].nworkers - 1));
    plan_items(m, timed);
    memset(m->out, 0x55, sizeof m->out);    /* a failed item's must be 0 */
    /* Its bound: the work, each timeout it may wait, our own delays. */
    m->bound = MARGIN_S + 1 + m->opts.timeout * (m->nfaults + 2) +
               (m->delay_ms + m->cont_ms) / 1000.0;
    describe(m);
}

/* ---- running a map ----------------------------------------------------- */

static void record_failure(struct map *m, size_t i, const pmap_failure_t *f)
{
    char want[64];
    snprintf(want, sizeof want, "soak fail %d", fail_code(m->x[i]));
    m->state[i] = 2;
    m->fail[i] = *f;
    m->fail[i].message = NULL;
    m->msg_ok[i] = f->message != NULL && strcmp(f->message, want) == 0;
}

static int produce(void *ctx, long *x, const char **s, long *k)
{
    struct map *m = ctx;
    if (m->produced == m->n)
        return 0;
    size_t i = m->produced++;
    *x = m->x[i];
    *s = m->s[i];
    *k = m->k[i];
    return 1;
}

static int take(void *ctx, size_t i, void *result, const pmap_failure_t *f)
{
    struct map *m = ctx;
    if (i >= m->produced || m->state[i] != 0 || (f && f->index != i)) {
        m->strays++;    /* never made, handed over twice, or mislabelled */
    } else if (f != NULL) {
        record_failure(m, i, f);
    } else {
        m->state[i] = 1;
        m->got[i] = *(long *)result;
    }
    return 0;
}

/* The outcome of a map of arrays: out[], then the failure records. */
static void take_array(struct map *m, const pmap_failure_t *f, size_t nf)
{
    for (size_t i = 0; i < m->n; i++) {
        m->state[i] = 1;
        m->got[i] = m->out[i];
    }
    for (size_t j = 0; j < nf; j++) {
        size_t i = f[j].index;
        if (i >= m->n || m->state[i] == 2 || (j > 0 && i < f[j - 1].index)) {
            m->strays++;    /* out of range, twice, or out of order */
            continue;
        }
        if (m->out[i] != 0)
            say(m, "item %zu failed, but its out[] is %ld, not 0", i,
                m->out[i]);
        record_failure(m, i, &f[j]);
    }
}

static int run_arrays(struct map *m)
{
    pmap_job_t *job = NULL, **jp = m->form == ASYNC ? &job : NULL;
    const pmap_failure_t *f = NULL;
    pool_map_options_t *o = &m->opts;
#define MAP(fn, ...)                                                          \
    (jp ? pool_map_async(m->p, o, jp, fn, m->n, m->out, __VA_ARGS__)          \
        : pool_map_with(m->p, o, fn, m->n, m->out, __VA_ARGS__))
    int rc = m->form == CALL
                 ? pool_call(m->p, f3, m->out, m->x[0], m->s[0], m->k[0])
             : m->fn == 1 ? MAP(f1, m->x)
             : m->fn == 2 ? MAP(f2, m->x, m->k)
                          : MAP(f3, m->x, m->s, PMAP_CONST(m->k[0]));
#undef MAP
    if (job != NULL && rc == 0)
        rc = pmap_job_wait(job, -1);
    size_t nf = job ? pmap_job_failures(job, &f) : pool_failures(m->p, &f);
    for (size_t i = 1; i < m->n && m->fn == 3; i++)
        m->k[i] = m->k[0];      /* it was a constant */
    if (rc >= 0 || rc == PMAP_ECANCELED)
        take_array(m, f, nf);
    pmap_job_free(job);
    return rc;
}

static void run_map(struct map *m)
{
    arm(m, true);
    guard(m->bound, "map #%ld [%s]", m->no, m->desc);
    if (m->form == STREAM)
        m->rc = pool_map_stream(m->p, &m->opts, f3, produce, m);
    else
        m->rc = run_arrays(m);
    guard(0, "nothing");
    arm(m, false);
}

/* ---- checking a map ---------------------------------------------------- */

static bool in(pid_t pid, const pid_t *set, int n)
{
    for (int i = 0; i < n; i++)
        if (pid == set[i])
            return pid > 0;
    return false;
}

/* The failure an item's own fault causes (error 0: none). */
static void own_cause(long x, int *error, int *code)
{
    int f = FAULT(x);
    *error = f == F_NONE ? 0 : f == F_EXIT || f == F_UEXIT ? PMAP_EEXIT
             : f == F_LOOP || f == F_STOP ? PMAP_ETIMEDOUT
             : f == F_FAIL ? PMAP_EFAIL : PMAP_ECRASH;
    *code = *error == PMAP_EEXIT ? exit_status(x)
            : *error == PMAP_EFAIL ? fail_code(x)
            : *error != PMAP_ECRASH ? 0 : f == F_ABORT ? SIGABRT : SIGSEGV;
}

/* Whether a failure is explained by what was done to the map from outside:
 * a cancel, a worker killed or (in a timed map) stopped, the server. */
static bool from_outside(const struct map *m, const pmap_failure_t *f)
{
    bool server = pools[m->pool].start == PMAP_START_SERVER;
    return (f->error == PMAP_ECANCELED && m->cancelled) ||
           (f->error == PMAP_ECRASH && f->code == SIGKILL &&
            in((pid_t)f->pid, m->killed, m->nkilled)) ||
           (f->error == PMAP_ETIMEDOUT && m->opts.timeout > 0 &&
            in((pid_t)f->pid, m->stopped, m->nstopped)) ||
           (server && m->server_down &&
            (f->error == PMAP_ELOST || f->error == PMAP_ESTART ||
             (f->error == PMAP_ECRASH && f->code == SIGKILL)));
}

/* Why item i is wrong, or NULL if it is right. */
static const char *check_item(const struct map *m, size_t i, char *why,
                              size_t size)
{
    int error, code;
    own_cause(m->x[i], &error, &code);
    const pmap_failure_t *f = &m->fail[i];
    long want = pure(m->fn, m->x[i], m->s[i], m->k[i]);
    if (m->state[i] == 0 && m->form == STREAM && m->cancelled &&
        i >= m->produced)
        return NULL;    /* the producer was stopped before it */
    if (m->state[i] == 0)
        return "never reported";
    if (m->state[i] == 1 && error == 0 && m->got[i] == want)
        return NULL;
    if (m->state[i] == 1) {
        snprintf(why, size, "result %ld, want %s%ld", m->got[i],
                 error ? "a failure, not " : "", want);
        return why;
    }
    if (from_outside(m, f) ||
        (error != 0 && f->error == error && f->code == code &&
         (error != PMAP_EFAIL || m->msg_ok[i])))
        return NULL;
    char cause[32] = "success";
    if (error != 0)
        snprintf(cause, sizeof cause, "%s %d", pmap_err_name(error), code);
    snprintf(why, size, "failed %s %d (pid %ld), want %s%s",
             pmap_err_name(f->error), f->code, f->pid, cause,
             m->cancelled ? " or ECANCELED" : "");
    return why;
}

static void check_map(struct map *m)
{
    bool server = pools[m->pool].start == PMAP_START_SERVER;
    if (m->rc == PMAP_ESTART && server && m->server_down)
        return;     /* the server died: the map could not run */
    if (m->rc < 0 && !(m->rc == PMAP_ECANCELED && m->cancelled)) {
        say(m, "returned %s%s", pmap_err_name(m->rc),
            m->rc == PMAP_ECANCELED ? ", but no pool_cancel came during it"
                                    : "");
        if (m->rc != PMAP_ECANCELED)
            return;
        m->cancelled = true;    /* said once: check its items as such */
    }
    size_t failed = 0;
    char why[256];
    for (size_t i = 0; i < m->n; i++) {
        failed += m->state[i] == 2;
        const char *bad = check_item(m, i, why, sizeof why);
        if (bad != NULL)
            say(m, "item %zu (%s): %s", i, kind_name[FAULT(m->x[i])], bad);
    }
    if (m->rc >= 0 && (size_t)m->rc != failed)
        say(m, "returned %d, but %zu items failed", m->rc, failed);
    if (m->strays > 0)
        say(m, "%zu results or failure records out of range, repeated or "
               "out of order", m->strays);
    if (m->form == STREAM && !m->cancelled && m->produced != m->n)
        say(m, "the producer made %zu items of %zu", m->produced, m->n);
}

/* ---- the end ----------------------------------------------------------- */

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.';
    if (d != NULL)
        closedir(d);
    return n;
}

static long resident_mib(void)
{
    char buf[128];
    long size, pages;
    read_proc("/proc/self/statm", buf, sizeof buf);
    if (sscanf(buf, "%ld %ld", &size, &pages) != 2)
        return 0;
    return pages * (sysconf(_SC_PAGESIZE) / 1024) / 1024;
}

static void summary(void)
{
    char kinds[1024] = "none";
    long total = 0;
    for (int k = F_SEGV, len = 0; k < NKINDS; k++) {
        total += injected[k];
        if (injected[k] > 0)
            len += snprintf(kinds + len, sizeof kinds - (size_t)len,
                            "%s%s=%ld", len ? " " : "", kind_name[k],
                            injected[k]);
    }
    printf("soak: %.0f s, seed %llu: %ld maps, %ld items, %ld faults injected "
           "(by kind: %s), %ld maps broke an invariant\n", duration, seed,
           maps, items, total, kinds, broken_maps);
    fflush(stdout);
}

/* The pools destroyed and the server stopped: nothing may be left. */
static bool end_checks(int fds0, long rss0)
{
    int fds = count_fds(), status;
    pid_t child = waitpid(-1, &status, WNOHANG);
    bool no_child = child < 0 && errno == ECHILD;
    long rss = resident_mib();
    if (fds != fds0)
        say(NULL, "END CHECK BROKE: %d descriptors open, %d at the start",
            fds, fds0);
    if (!no_child)
        say(NULL, "END CHECK BROKE: a child is left (pid %d)", (int)child);
    if (rss0 > 0 && rss - rss0 > RSS_BOUND_MIB)
        say(NULL, "END CHECK BROKE: resident memory grew from %ld to %ld "
                  "MiB", rss0, rss);
    return fds == fds0 && no_child && !(rss0 > 0 && rss - rss0 > RSS_BOUND_MIB);
}

/* One round: perhaps a fault between maps, then a map, checked. */
static void one_map(double start, long *rss0)
{
    struct map *m = &cur;
    memset(m, 0, sizeof *m);
    m->no = maps + 1;
    m->pool = (int)pick(0, NPOOLS - 1);
    bool stopped = pools[m->pool].pool != NULL && faults && chance(0.12) &&
                   between_maps(m);
    if (pools[m->pool].pool == NULL && create_pool(m, m->pool, false)) {
        broken_maps += m->broken > 0;   /* (re)creating it failed */
        return;
    }
    maps++;
    plan_map(m, stopped);
    run_map(m);
    check_map(m);
    if (server_dead)
        restart_server(m);
    items += (long)m->n;
    broken_maps += m->broken > 0;
    if (*rss0 == 0 && now_s() - start > duration / 10)
        *rss0 = resident_mib();     /* once the pools and buffers grew */
}

int main(int argc, char **argv)
{
    const char *env = getenv("SOAK_SECONDS");
    duration = argc > 1 ? atof(argv[1]) : env ? atof(env) : 60;
    seed = argc > 2 ? strtoull(argv[2], NULL, 10)
                    : (unsigned long long)time(NULL) * 1000003u ^
                          (unsigned long long)getpid();
    rng = seed ? seed : 1;
    faults = (env = getenv("SOAK_FAULTS")) == NULL || strcmp(env, "0") != 0;
    printf("soak: seed %llu\n", seed);
    fflush(stdout);
    int fds0 = count_fds();
    /* Thousands of crashes: no core files (inherited by the server). */
    struct rlimit nocore = {0, 0};
    setrlimit(RLIMIT_CORE, &nocore);
    if (pmap_init() != 0 || (server_pid = find_server()) == 0) {
        say(NULL, "cannot start the fork server");
        return 1;
    }
    pthread_t faulter, dogger;
    pthread_create(&faulter, NULL, fault_thread, &cur);
    pthread_create(&dogger, NULL, watchdog, NULL);
    for (int i = 0; i < NPOOLS; i++)
        pools[i] = (struct slot){NULL, i % 2 ? PMAP_START_SERVER
                                             : PMAP_START_FORK, 2 + i / 2};

    double start = now_s();
    long rss0 = 0;
    while (now_s() - start < duration)
        one_map(start, &rss0);

    pthread_mutex_lock(&ft.lock);
    ft.quit = true;
    pthread_cond_broadcast(&ft.cond);
    pthread_mutex_unlock(&ft.lock);
    pthread_join(faulter, NULL);
    for (int i = 0; i < NPOOLS; i++)
        destroy_pool(i);
    guard(MARGIN_S, "pmap_exit() at the end");
    pmap_exit();
    guard(0, "nothing");
    bool ok = end_checks(fds0, rss0);
    summary();
    return ok && broken_maps == 0 ? 0 : 1;
}
