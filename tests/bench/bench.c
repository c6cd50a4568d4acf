/* SPDX-License-Identifier: MIT */
/*
 * bench.c - `make bench`: the workloads W1-W6 of WORKLOADS.md for libpmap
 * and its peers (serial C, OpenMP threads, a process per item, Python's
 * multiprocessing.Pool when python3 exists), in one run, plus the machine's
 * own limits, printed as one table of medians, min-max and ratios; then
 * the caller's cost by the number of workers (2 to 512).  `bench REPS
 * scale` (`make bench-scale`) prints W2, W3 and W6a at 1, 2, 4, ... nproc
 * workers next to OpenMP at as many threads instead.
 * Timing decides nothing here: it is a report.
 *
 *     usage: bench [REPS [w1 | w3 | w4 | w5 | w5-heap | workers | scale]]
 *         REPS: runs of each figure (5); w1: only W1; w3: only W3 (its
 *         "buffers only" row without the machine's limits); w4: only W4;
 *         w5: only W5 in a small caller; w5-heap: only W5 by start method;
 *         workers: only the cost by the number of workers; scale: only the
 *         scaling table
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE     /* F_SETPIPE_SZ (the 1 MiB pipe), MADV_NOHUGEPAGE,
                           sched_getaffinity */
#endif

#include "workloads.h"

#include <pmap.h>

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif
#include <time.h>
#include <unistd.h>

extern char **environ;

#define MAX_REPS 32

static int reps = 5;
static const char *self_path;

/* ---- the functions the pool runs --------------------------------------- */

static int add(int x, int y)
{
    return w_add(x, y);
}
PMAP_EXPORT(add, int, int, int);

static uint64_t spin(uint64_t x, long iterations)
{
    return w_spin(x, iterations);
}
PMAP_EXPORT(spin, uint64_t, uint64_t, long);

static uint64_t fnv(pmap_bytes_t b)
{
    return w_fnv1a(b.data, b.size);
}
PMAP_EXPORT(fnv, uint64_t, pmap_bytes_t);

/* W3 without the checksum: how fast the buffers themselves travel. */
static uint64_t last_byte(pmap_bytes_t b)
{
    return ((const unsigned char *)b.data)[b.size - 1];
}
PMAP_EXPORT(last_byte, uint64_t, pmap_bytes_t);

static int add1(int x)
{
    return x + 1;
}
PMAP_EXPORT(add1, int, int);

/* ---- measuring --------------------------------------------------------- */

typedef struct sample {
    double v[MAX_REPS];
    int n;
} sample_t;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median_of(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, by_value);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static double median(const sample_t *s)
{
    double v[MAX_REPS];
    memcpy(v, s->v, sizeof v);
    return s->n ? median_of(v, s->n) : 0;
}

static double lowest(const sample_t *s)
{
    double m = s->v[0];
    for (int i = 1; i < s->n; i++)
        m = s->v[i] < m ? s->v[i] : m;
    return m;
}

static double highest(const sample_t *s)
{
    double m = s->v[0];
    for (int i = 1; i < s->n; i++)
        m = s->v[i] > m ? s->v[i] : m;
    return m;
}

static void add_value(sample_t *s, double v)
{
    if (s->n < MAX_REPS)
        s->v[s->n++] = v;
}

/* A figure with a unit: rates are shown scaled, times in us or s. */
static void show(double v, const char *unit, char *out, size_t size)
{
    if (strcmp(unit, "items/s") == 0)
        snprintf(out, size, v >= 1e6 ? "%.1f M/s" : "%.0f /s",
                 v >= 1e6 ? v / 1e6 : v);
    else if (strcmp(unit, "us") == 0)
        snprintf(out, size, v >= 1000 ? "%.0f us" : "%.1f us", v);
    else if (strcmp(unit, "s") == 0)
        snprintf(out, size, "%.3f s", v);
    else if (strcmp(unit, "x") == 0)
        snprintf(out, size, "%.2fx", v);
    else
        snprintf(out, size, "%.0f %s", v, unit);
}

static void row(const char *peer, const sample_t *s, const char *unit,
                const char *note)
{
    char m[32], lo[32], hi[32];
    if (s->n == 0) {
        printf("  %-38s %14s   %s\n", peer, "-", note ? note : "");
        return;
    }
    show(median(s), unit, m, sizeof m);
    show(lowest(s), unit, lo, sizeof lo);
    show(highest(s), unit, hi, sizeof hi);
    printf("  %-38s %14s   [%s - %s]%s%s\n", peer, m, lo, hi,
           note ? "   " : "", note ? note : "");
}

static void heading(const char *title)
{
    printf("\n%s\n", title);
}

/* ---- the machine's limits ---------------------------------------------- */

/* Median round trip (us) of 1-byte ping-pongs between two processes over a
 * pair of pipes or a socketpair, `count` times. */
static double ping_pong(bool socket, int count)
{
    int a[2], b[2];
    if (socket) {
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, a) < 0)
            return 0;
        b[0] = a[1];
        b[1] = a[0];
    } else if (pipe(a) < 0 || pipe(b) < 0) {
        return 0;
    }
    /* parent writes a[1], reads b[0]; child reads a[0], writes b[1];
     * each closes the other's ends, or end of file would never come. */
    pid_t pid = fork();
    char c = 0;
    if (pid == 0) {
        close(a[1]);
        if (!socket)
            close(b[0]);
        while (read(a[0], &c, 1) == 1 && write(b[1], &c, 1) == 1)
            ;
        _exit(0);
    }
    close(a[0]);
    if (!socket)
        close(b[1]);
    double *t = malloc((size_t)count * sizeof *t);
    for (int i = 0; i < count; i++) {
        double t0 = now();
        if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1)
            break;
        t[i] = (now() - t0) * 1e6;
    }
    close(a[1]);
    if (!socket)
        close(b[0]);
    waitpid(pid, NULL, 0);
    double m = median_of(t, count);
    free(t);
    return m;
}

/* MB/s through a pipe (1 MiB pipe buffer) or a socketpair (2 MiB buffers),
 * in 1 MiB writes, 512 MiB in all. */
static double stream_bandwidth(bool socket)
{
    int fd[2];
    size_t chunk = 1u << 20, total = 512u << 20;
    if (socket) {
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, fd) < 0)
            return 0;
        int size = 2 << 20;
        for (int i = 0; i < 2; i++) {
            setsockopt(fd[i], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
            setsockopt(fd[i], SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
        }
    } else {
        if (pipe(fd) < 0)
            return 0;
#ifdef F_SETPIPE_SZ
        fcntl(fd[1], F_SETPIPE_SZ, 1 << 20);
#endif
    }
    int reader = socket ? fd[1] : fd[0], writer = socket ? fd[0] : fd[1];
    char *buf = malloc(chunk);
    memset(buf, 1, chunk);
    pid_t pid = fork();
    if (pid == 0) {
        close(writer);
        while (read(reader, buf, chunk) > 0)
            ;
        _exit(0);
    }
    close(reader);
    double t = now();
    for (size_t sent = 0; sent < total;) {
        ssize_t w = write(writer, buf, chunk);
        if (w <= 0)
            break;
        sent += (size_t)w;
    }
    close(writer);
    waitpid(pid, NULL, 0);
    t = now() - t;
    free(buf);
    return (double)total / t / 1e6;
}

static double memcpy_bandwidth(void)
{
    size_t size = 256u << 20;
    char *a = malloc(size), *b = malloc(size);
    memset(a, 1, size);
    memset(b, 2, size);
    double t = now();
    memcpy(b, a, size);
    __asm__ volatile("" : : "r"(b) : "memory");    /* keep the copy */
    t = now() - t;
    free(a);
    free(b);
    return (double)size / t / 1e6;
}

/* The n values child pid (if above 0) writes to the pipe fd, or zeros;
 * then waits for it, and closes the pipe. */
static void child_values(pid_t pid, int fd[2], double *v, size_t n)
{
    if (pid < 0 || read(fd[0], v, n * sizeof *v) != (ssize_t)(n * sizeof *v))
        memset(v, 0, n * sizeof *v);
    if (pid > 0)
        waitpid(pid, NULL, 0);
    close(fd[0]);
    close(fd[1]);
}

/* Writes value into every page of [p, p + size), or reads each if value
 * is 0; returns the time it took a page (us). */
static double write_pages(volatile unsigned char *p, size_t size,
                          unsigned char value)
{
    double t = now();
    for (size_t i = 0; i < size; i += 4096) {
        if (value != 0)
            p[i] = value;
        else
            (void)p[i];
    }
    return (now() - t) * 1e6 / (double)(size / 4096);
}

/* What a process pays for a page it did not touch before (us a page):
 * another process reading 64 MiB of shared memory the caller wrote,
 * mapped there anew (as a worker maps blocks of pmap_alloc); a child
 * writing 64 MiB of the caller's private memory after a fork (a copy on
 * write); or the caller writing 8 MiB of its own while a child it forked
 * lives (the other side of it, as after forking its workers).  Threads of
 * the caller pay none of these: they share its page tables.  On a
 * virtual machine that keeps page tables of its own for each process,
 * all are far above the copy of a page. */
enum page_toucher { SHARED_READER, CHILD_WRITER, PARENT_WRITER };

static double page_cost(enum page_toucher who)
{
    size_t size = who == PARENT_WRITER ? 8u << 20 : 64u << 20;
    char name[64];
    snprintf(name, sizeof name, "/pmap-bench-%ld", (long)getpid());
    int shm = who != SHARED_READER
                  ? -1
                  : shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (shm >= 0) {
        shm_unlink(name);
        if (ftruncate(shm, (off_t)size) != 0) {
            close(shm);
            return 0;
        }
    }
    volatile unsigned char *p =
        who != SHARED_READER ? mmap(NULL, size, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        : shm >= 0           ? mmap(NULL, size, PROT_READ | PROT_WRITE,
                                    MAP_SHARED, shm, 0)
                             : MAP_FAILED;
    int fd[2];
    if (p == MAP_FAILED || pipe(fd) < 0)
        return 0;
    write_pages(p, size, 1);
    pid_t pid = fork();
    if (pid == 0 && who == PARENT_WRITER) {
        char c;
        close(fd[1]);
        _exit(read(fd[0], &c, 1) < 0);  /* lives until the parent is done */
    }
    if (pid == 0) {
        double t = now();
        volatile unsigned char *v =
            who == CHILD_WRITER
                ? p
                : mmap(NULL, size, PROT_READ, MAP_SHARED, shm, 0);
        if (v != MAP_FAILED)
            write_pages(v, size, who == CHILD_WRITER ? 2 : 0);
        double us = (now() - t) * 1e6 / (double)(size / 4096);
        _exit(write(fd[1], &us, sizeof us) == sizeof us ? 0 : 1);
    }
    double us = 0;
    if (who == PARENT_WRITER) {
        us = pid > 0 ? write_pages(p, size, 2) : 0;
        close(fd[0]);
        close(fd[1]);
        if (pid > 0)
            waitpid(pid, NULL, 0);
    } else {
        child_values(pid, fd, &us, 1);
    }
    if (shm >= 0)
        close(shm);
    munmap((void *)p, size);
    return us;
}

/* What a new process pays for the first use of a kind of system call
 * (us a call): a child just forked makes eight kinds once each, then each
 * again; *later gets the second figure.  On a virtual machine that keeps
 * page tables of its own for each process, the first use also maps the
 * kernel's and libc's code on that call's path for the process. */
static double first_syscall_cost(double *later)
{
    int fd[2];
    double us[2];
    *later = 0;
    if (pipe(fd) < 0)
        return 0;
    pid_t pid = fork();
    if (pid == 0) {
        double t[3];
        for (int round = 0; round < 2; round++) {
            t[round] = now();
            (void)getppid();
            (void)getuid();
            (void)getgid();
            (void)geteuid();
            (void)getegid();
            (void)getpgrp();
            (void)getsid(0);
            (void)getpriority(PRIO_PROCESS, 0);
        }
        t[2] = now();
        double r[2] = {(t[1] - t[0]) * 1e6 / 8, (t[2] - t[1]) * 1e6 / 8};
        _exit(write(fd[1], r, sizeof r) == sizeof r ? 0 : 1);
    }
    child_values(pid, fd, us, 2);
    *later = us[1];
    return us[0];
}

static double fork_exit_wait(void)
{
    double t = now();
    pid_t pid = fork();
    if (pid == 0)
        _exit(0);
    waitpid(pid, NULL, 0);
    return (now() - t) * 1e6;
}

/* The smallest real pool: fork 2 workers with a pipe pair each, one item
 * through one of them, close, wait for both (us). */
static double hand_rolled_pool(void)
{
    double t = now();
    int to[2][2], from[2][2];
    pid_t pid[2];
    for (int w = 0; w < 2; w++) {
        if (pipe(to[w]) < 0 || pipe(from[w]) < 0)
            return 0;
        pid[w] = fork();
        if (pid[w] == 0) {
            close(to[w][1]);
            close(from[w][0]);
            for (int o = 0; o < w; o++) {  /* the sibling's ends */
                close(to[o][1]);
                close(from[o][0]);
            }
            int x;
            while (read(to[w][0], &x, sizeof x) == sizeof x) {
                x = w_add(x, 1);
                if (write(from[w][1], &x, sizeof x) != sizeof x)
                    break;
            }
            _exit(0);
        }
        close(to[w][0]);
        close(from[w][1]);
    }
    int x = 41;
    if (write(to[0][1], &x, sizeof x) != sizeof x ||
        read(from[0][0], &x, sizeof x) != sizeof x)
        return 0;
    for (int w = 0; w < 2; w++) {
        close(to[w][1]);
        close(from[w][0]);
        waitpid(pid[w], NULL, 0);
    }
    return (now() - t) * 1e6;
}

/* ---- a process per item ------------------------------------------------ */

typedef void (*item_fn)(size_t i, void *ctx, unsigned char *result);

/* Runs item(i) for each i < n in a forked child of its own, two at a time,
 * each sending its result back through a pipe. */
static void fork_per_item(size_t n, item_fn item, void *ctx,
                          unsigned char *out, size_t size)
{
    for (size_t i = 0; i < n; i += 2) {
        int fd[2][2];
        pid_t pid[2];
        size_t k = n - i < 2 ? n - i : 2;
        for (size_t j = 0; j < k; j++) {
            if (pipe(fd[j]) < 0)
                exit(1);
            pid[j] = fork();
            if (pid[j] == 0) {
                unsigned char r[64];
                item(i + j, ctx, r);
                if (write(fd[j][1], r, size) < 0)
                    _exit(1);
                _exit(0);
            }
            close(fd[j][1]);
        }
        for (size_t j = 0; j < k; j++) {
            if (read(fd[j][0], out + (i + j) * size, size) < 0)
                exit(1);
            close(fd[j][0]);
            waitpid(pid[j], NULL, 0);
        }
    }
}

/* ---- the workloads ----------------------------------------------------- */

typedef struct inputs {
    int *xs, *w1_out;
    uint64_t *keys, *w2_out;
    pmap_bytes_t *bufs;
    unsigned char **raw;
    uint64_t *w3_out;
} inputs_t;

static int (*volatile add_pointer)(int, int) = w_add;

static void item_w1(size_t i, void *ctx, unsigned char *r)
{
    const inputs_t *in = ctx;
    int v = add_pointer(in->xs[i], in->xs[i]);
    memcpy(r, &v, sizeof v);
}

static void item_w2(size_t i, void *ctx, unsigned char *r)
{
    const inputs_t *in = ctx;
    uint64_t v = w_spin(in->keys[i], W2_ITERATIONS);
    memcpy(r, &v, sizeof v);
}

static void item_w3(size_t i, void *ctx, unsigned char *r)
{
    const inputs_t *in = ctx;
    uint64_t v = w_fnv1a(in->raw[i], W3_SIZE);
    memcpy(r, &v, sizeof v);
}

static void check_w1(const int *out, size_t n)
{
    long long sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += out[i];
    if (sum != (long long)n * ((long long)n - 1)) {
        fprintf(stderr, "bench: W1 gave a wrong sum\n");
        exit(1);
    }
}

/* Python's figures, read from peers.py's output. */
typedef struct python {
    char name[64];
    sample_t s;
} python_t;

static python_t python[32];
static int npython;

static void run_python(void)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "command -v python3 >/dev/null && python3 tests/bench/peers.py "
             "%d 2>/dev/null",
             reps);
    FILE *p = popen(cmd, "r");
    char line[1024];
    while (p && fgets(line, sizeof line, p) && npython < 32) {
        python_t *py = &python[npython];
        char unit[16];
        int used;
        if (sscanf(line, "%63s %15s%n", py->name, unit, &used) != 2)
            continue;
        char *rest = line + used, *end;
        for (double v = strtod(rest, &end); end != rest;
             v = strtod(rest, &end)) {
            add_value(&py->s, v);
            rest = end;
        }
        npython++;
    }
    if (p)
        pclose(p);
}

static const sample_t *python_figure(const char *name)
{
    for (int i = 0; i < npython; i++) {
        if (strcmp(python[i].name, name) == 0)
            return &python[i].s;
    }
    return NULL;
}

static void python_row(const char *label, const char *name,
                       const char *unit)
{
    const sample_t *s = python_figure(name);
    if (s != NULL)
        row(label, s, unit, NULL);
    else
        row(label, &(sample_t){{0}, 0}, unit, "(no python3)");
}

static char *ratio(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static char *ratio(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return buf;
}

/* After each OpenMP figure: its threads spin for some 9 ms of a CPU after
 * their loop (libgomp's default wait policy) before they sleep, which
 * took a CPU from whatever was measured next (W3 over pmap_alloc, right
 * after OpenMP, ran at 0.91 to 0.93 of it instead of 0.97 to 1.03; W1's
 * map takes about as long as that spin).  No figure is taken meanwhile. */
static void openmp_rest(void)
{
    usleep(30000);
}

/* Items per second of pool_map(add) over n pairs. */
static double pool_w1(pool_t *pool, const int *xs, int *out, size_t n)
{
    double t = now();
    if (pool_map(pool, add, n, out, xs, xs) != 0)
        exit(1);
    t = now() - t;
    check_w1(out, n);
    return (double)n / t;
}

/* How many pools (or programs) a first-map row takes the median of: each
 * pool's ratio varies more than the other figures do from run to run (the
 * median of 5 pools gave 1.13 to 1.54 in six runs on 2026-12-01), so three
 * times the runs. */
static int first_map_pools(void)
{
    return 3 * reps < MAX_REPS ? 3 * reps : MAX_REPS;
}

/*
 * W1 in the first map of a new pool against its later ones: a new worker,
 * and the caller's buffers for it, touch their pages for the first time.
 * The output is written again after pool_create: a forked worker shares
 * the pages the caller wrote before, and the first map would copy them.
 */
static void w1_first_map(enum pmap_start start, inputs_t *in, sample_t *first,
                         sample_t *slower)
{
    for (int r = 0; r < first_map_pools(); r++) {
        pool_options_t po = {.workers = 2, .start = start};
        pool_t *pool;
        if (pool_create_with(&pool, &po) != 0)
            return;
        memset(in->w1_out, 0, W1_N * sizeof *in->w1_out);
        double rate = pool_w1(pool, in->xs, in->w1_out, W1_N), later[3];
        for (int m = 0; m < 3; m++)
            later[m] = pool_w1(pool, in->xs, in->w1_out, W1_N);
        pool_destroy(pool);
        add_value(first, rate);
        add_value(slower, median_of(later, 3) / rate);
    }
}

/*
 * `bench --w1-first`: W1 in the first pool of a new process, which has no
 * spare arenas yet (README, "Spare arenas"): prints the first map's items
 * per second and how many times longer it took than the pool's maps 2-4.
 */
static int w1_first_pool(void)
{
    int *xs = malloc(W1_N * sizeof *xs), *out = malloc(W1_N * sizeof *out);
    if (xs == NULL || out == NULL)
        return 1;
    for (size_t i = 0; i < W1_N; i++)
        xs[i] = (int)i;
    pool_options_t po = {.workers = 2, .start = PMAP_START_FORK};
    pool_t *pool;
    if (pool_create_with(&pool, &po) != 0)
        return 1;
    memset(out, 0, W1_N * sizeof *out);     /* as w1_first_map */
    double rate = pool_w1(pool, xs, out, W1_N), later[3];
    for (int m = 0; m < 3; m++)
        later[m] = pool_w1(pool, xs, out, W1_N);
    pool_destroy(pool);
    printf("%.6g %.6g\n", rate, median_of(later, 3) / rate);
    return 0;
}

/* Runs `bench --w1-first` in a new process; its two figures go to first
 * and slower.  Returns whether it gave them. */
static bool spawn_w1_first(sample_t *first, sample_t *slower)
{
    char *argv[] = {(char *)self_path, (char *)"--w1-first", NULL};
    int fds[2];
    posix_spawn_file_actions_t fa;
    if (pipe(fds) != 0)
        return false;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    pid_t pid;
    int rc = posix_spawn(&pid, self_path, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    char text[64] = "";
    ssize_t n = rc == 0 ? read(fds[0], text, sizeof text - 1) : -1;
    close(fds[0]);
    if (rc == 0)
        waitpid(pid, NULL, 0);
    double r, x;
    if (n <= 0 || sscanf(text, "%lf %lf", &r, &x) != 2)
        return false;
    add_value(first, r);
    add_value(slower, x);
    return true;
}

static void bench_w1(pool_t *pool, inputs_t *in, double socket_mbs)
{
    sample_t serial = {{0}, 0}, inlined = {{0}, 0}, omp = {{0}, 0};
    sample_t forked = {{0}, 0}, lib = {{0}, 0};
    size_t n = W1_N;
    for (int r = 0; r < reps; r++) {
        /* The forks first: after them every page of the output is
         * copy-on-write, and the serial loops below take those faults. */
        double t = now();
        fork_per_item(200, item_w1, in, (unsigned char *)in->w1_out,
                      sizeof(int));
        add_value(&forked, 200 / (now() - t));
        t = now();
        for (size_t i = 0; i < n; i++)
            in->w1_out[i] = add_pointer(in->xs[i], in->xs[i]);
        add_value(&serial, (double)n / (now() - t));
        check_w1(in->w1_out, n);
        t = now();
        for (size_t i = 0; i < n; i++)
            in->w1_out[i] = w_add(in->xs[i], in->xs[i]);
        add_value(&inlined, (double)n / (now() - t));
        t = now();
        if (omp_w1(in->xs, in->xs, in->w1_out, n) == 0)
            add_value(&omp, (double)n / (now() - t));
        openmp_rest();
        add_value(&lib, pool_w1(pool, in->xs, in->w1_out, n));
    }
    heading("W1  tiny add(x, y), 1,000,000 pairs: items per second");
    row("serial C, a call per item", &serial, "items/s", NULL);
    row("serial C, inlined", &inlined, "items/s", NULL);
    row("OpenMP, 2 threads", &omp, "items/s",
        omp.n ? NULL : "(no OpenMP)");
    row("a process per item (200 items)", &forked, "items/s", NULL);
    python_row("multiprocessing.Pool.starmap, best", "W1.mp.best",
               "items/s");
    char note[256];
    const sample_t *mp = python_figure("W1.mp.best");
    double m = median(&lib);
    ratio(note, sizeof note,
          "%.0f ns/item; %.2fx serial call; %.0fx Pool.starmap; %.1fx the "
          "channel's 12 B/item limit (values go through shared memory)",
          1e9 / m, m / median(&serial), mp ? m / median(mp) : 0,
          m / (socket_mbs * 1e6 / 12));
    row("libpmap, 2 workers", &lib, "items/s", note);
    static const struct {
        enum pmap_start start;
        const char *peer;
    } news[] = {
        {PMAP_START_FORK, "libpmap, a new pool's first map"},
        {PMAP_START_SERVER, "...from the fork server"},
    };
    for (size_t k = 0; k < sizeof news / sizeof *news; k++) {
        sample_t first = {{0}, 0}, slower = {{0}, 0};
        w1_first_map(news[k].start, in, &first, &slower);
        row(news[k].peer, &first, "items/s",
            ratio(note, sizeof note, "%.2fx the time of the same pool's "
                  "maps 2-4 (each pool's own)", median(&slower)));
        if (news[k].start != PMAP_START_FORK)
            continue;
        first.n = slower.n = 0;
        for (int r = 0;
             r < first_map_pools() && spawn_w1_first(&first, &slower); r++)
            ;
        row("...the first pool of a process", &first, "items/s",
            ratio(note, sizeof note, "%.2fx the time of the same pool's "
                  "maps 2-4 (a new program each)", median(&slower)));
    }
}

static double pool_w2(pool_t *pool, inputs_t *in, size_t n, long iterations)
{
    double t = now();
    if (pool_map(pool, spin, n, in->w2_out, in->keys,
                 PMAP_CONST(iterations)) != 0)
        exit(1);
    return now() - t;
}

static void bench_w2(pool_t *pool, inputs_t *in, size_t n, long iterations,
                     const char *title)
{
    sample_t serial = {{0}, 0}, st = {{0}, 0}, dyn = {{0}, 0};
    sample_t forked = {{0}, 0}, lib = {{0}, 0};
    for (int r = 0; r < reps; r++) {
        double t = now();
        for (size_t i = 0; i < n; i++)
            in->w2_out[i] = w_spin(in->keys[i], iterations);
        add_value(&serial, now() - t);
        t = now();
        if (omp_w2(in->keys, in->w2_out, n, iterations, 0) == 0)
            add_value(&st, now() - t);
        t = now();
        if (omp_w2(in->keys, in->w2_out, n, iterations, 1) == 0)
            add_value(&dyn, now() - t);
        openmp_rest();
        if (iterations == W2_ITERATIONS) {
            t = now();
            fork_per_item(100, item_w2, in, (unsigned char *)in->w2_out, 8);
            add_value(&forked, (now() - t) * (double)n / 100);
        }
        add_value(&lib, pool_w2(pool, in, n, iterations));
    }
    heading(title);
    char note[256];
    double s = median(&serial);
    row("serial C", &serial, "s", NULL);
    row("OpenMP, 2 threads, static", &st, "s",
        st.n ? ratio(note, sizeof note, "speedup %.2f", s / median(&st))
             : "(no OpenMP)");
    row("OpenMP, 2 threads, dynamic", &dyn, "s",
        dyn.n ? ratio(note, sizeof note, "speedup %.2f", s / median(&dyn))
              : "(no OpenMP)");
    if (forked.n)
        row("a process per item (100 items, scaled)", &forked, "s",
            ratio(note, sizeof note, "speedup %.2f", s / median(&forked)));
    if (iterations == W2_ITERATIONS) {
        const sample_t *ps = python_figure("W2.python.serial");
        const sample_t *pm = python_figure("W2.mp.starmap");
        if (ps && pm)
            row("multiprocessing.Pool (of Python serial)", pm, "s",
                ratio(note, sizeof note, "speedup %.2f",
                      median(ps) / median(pm)));
        else
            row("multiprocessing.Pool", &(sample_t){{0}, 0}, "s",
                "(no python3)");
    }
    double best = dyn.n && median(&dyn) < median(&st) ? median(&dyn)
                                                      : median(&st);
    ratio(note, sizeof note, "speedup %.2f; %.3f of OpenMP's best time",
          s / median(&lib), st.n ? best / median(&lib) : 0);
    row("libpmap, 2 workers", &lib, "s", note);
}

static double pool_w3(pool_t *pool, inputs_t *in, bool checksum)
{
    double t = now();
    int rc = checksum ? pool_map(pool, fnv, W3_N, in->w3_out, in->bufs)
                      : pool_map(pool, last_byte, W3_N, in->w3_out, in->bufs);
    if (rc != 0)
        exit(1);
    return (double)W3_N * W3_SIZE / (now() - t) / 1e6;
}

/* W3 with the buffers in memory from pmap_alloc, made after the pool:
 * the workers read them in place. */
static double pool_w3_shared(pool_t *pool, inputs_t *in,
                             const pmap_bytes_t *shared)
{
    double t = now();
    if (pool_map(pool, fnv, W3_N, in->w3_out, shared) != 0)
        exit(1);
    double mbs = (double)W3_N * W3_SIZE / (now() - t) / 1e6;
    for (size_t i = 0; i < W3_N; i += 51) {     /* a few, untimed */
        if (in->w3_out[i] != w_fnv1a(in->raw[i], W3_SIZE)) {
            fprintf(stderr, "bench: W3 from pmap_alloc gave a wrong sum\n");
            exit(1);
        }
    }
    return mbs;
}

static void bench_w3(pool_t *pool, inputs_t *in, double pipe_mbs,
                     double memcpy_mbs)
{
    sample_t serial = {{0}, 0}, omp = {{0}, 0}, forked = {{0}, 0};
    sample_t lib = {{0}, 0}, moved = {{0}, 0}, shared = {{0}, 0};
    sample_t first = {{0}, 0}, to_omp = {{0}, 0};
    double bytes = (double)W3_N * W3_SIZE;
    pmap_bytes_t *blocks = malloc(W3_N * sizeof *blocks);
    for (size_t i = 0; i < W3_N && blocks != NULL; i++) {
        blocks[i] = (pmap_bytes_t){pmap_alloc(W3_SIZE), W3_SIZE};
        if (blocks[i].data == NULL)
            exit(1);
        memcpy(blocks[i].data, in->raw[i], W3_SIZE);
    }
    /* Each worker reads each page of the blocks for the first time in the
     * first map, and of those it was not given then, in later ones. */
    add_value(&first, pool_w3_shared(pool, in, blocks));
    for (int r = 0; r < reps; r++) {
        double t = now();
        for (size_t i = 0; i < W3_N; i++)
            in->w3_out[i] = w_fnv1a(in->raw[i], W3_SIZE);
        add_value(&serial, bytes / (now() - t) / 1e6);
        t = now();
        fork_per_item(32, item_w3, in, (unsigned char *)in->w3_out, 8);
        add_value(&forked, 32.0 * W3_SIZE / (now() - t) / 1e6);
        add_value(&lib, pool_w3(pool, in, true));
        add_value(&moved, pool_w3(pool, in, false));
        /* The map over the same bytes in place, then OpenMP at once: the
         * machine's speed moves from one minute to the next, so the ratio
         * that counts is each repetition's own. */
        double shared_mbs = pool_w3_shared(pool, in, blocks);
        t = now();
        double omp_mbs = omp_w3(in->raw, in->w3_out, W3_N, W3_SIZE) == 0
                             ? bytes / (now() - t) / 1e6
                             : 0;
        openmp_rest();
        add_value(&shared, shared_mbs);
        if (omp_mbs > 0) {
            add_value(&omp, omp_mbs);
            add_value(&to_omp, shared_mbs / omp_mbs);
        }
    }
    for (size_t i = 0; i < W3_N; i++)
        pmap_free(blocks[i].data);
    free(blocks);
    heading("W3  256 buffers of 1 MiB, FNV-1a of each: MB/s delivered");
    char note[256];
    row("serial C", &serial, "MB/s", NULL);
    row("OpenMP, 2 threads", &omp, "MB/s", omp.n ? NULL : "(no OpenMP)");
    row("a process per item (32 items)", &forked, "MB/s", NULL);
    python_row("multiprocessing.Pool.map (crc32)", "W3.mp.map", "MB/s");
    row("libpmap, 2 workers", &lib, "MB/s",
        ratio(note, sizeof note, "%.2fx serial; %.2f of OpenMP",
              median(&lib) / median(&serial),
              omp.n ? median(&lib) / median(&omp) : 0));
    row("libpmap, pmap_alloc inputs, first map", &first, "MB/s",
        ratio(note, sizeof note, "%.2f of OpenMP",
              omp.n ? median(&first) / median(&omp) : 0));
    char later[64];
    snprintf(later, sizeof later, "libpmap, pmap_alloc inputs, maps 2-%d",
             reps + 1);
    row(later, &shared, "MB/s",
        ratio(note, sizeof note, "%.2fx serial; %.2f of OpenMP (each run's "
              "own)", median(&shared) / median(&serial), median(&to_omp)));
    row("libpmap, buffers only (no checksum)", &moved, "MB/s",
        ratio(note, sizeof note, "%.2fx the pipe; %.2f of memcpy",
              median(&moved) / pipe_mbs, median(&moved) / memcpy_mbs));
}

/* W4 and its floors in turns, each repetition a ping-pong of each kind
 * and then the pool's calls, and each ratio the median of the
 * repetitions' own: this machine's round trip moves from one minute to
 * the next, and a floor measured minutes before says little. */
static void bench_w4(pool_t *pool)
{
    sample_t lib = {{0}, 0}, pipe_rtt = {{0}, 0}, socket_rtt = {{0}, 0};
    sample_t to_pipe = {{0}, 0}, to_socket = {{0}, 0};
    double *t = malloc(W4_CALLS * sizeof *t);
    for (int r = 0; r < reps; r++) {
        int calls = r == 0 ? W4_CALLS : W4_CALLS / 10;
        double p = ping_pong(false, calls), q = ping_pong(true, calls);
        for (int i = 0; i < calls; i++) {
            int x = i, y;
            double t0 = now();
            if (pool_map(pool, add1, 1, &y, &x) != 0 || y != i + 1)
                exit(1);
            t[i] = (now() - t0) * 1e6;
        }
        double m = median_of(t, calls);
        add_value(&pipe_rtt, p);
        add_value(&socket_rtt, q);
        add_value(&lib, m);
        add_value(&to_pipe, m / p);
        add_value(&to_socket, m / q);
    }
    free(t);
    heading("W4  one call add1(x) to a running worker: median round trip");
    char note[256];
    row("pipe ping-pong, 2 processes", &pipe_rtt, "us", NULL);
    row("socketpair ping-pong, 2 processes", &socket_rtt, "us", NULL);
    python_row("multiprocessing.Pool.apply", "W4.mp.apply", "us");
    row("libpmap pool_map of 1 item", &lib, "us",
        ratio(note, sizeof note,
              "%.2fx the pipe ping-pong, %.2fx the socketpair one (each "
              "run's own)",
              median(&to_pipe), median(&to_socket)));
}

/* W5 in a fresh process: bench --w5 does it and exits. */
static double spawn_wall(const char *arg)
{
    char *argv[] = {(char *)self_path, (char *)arg, NULL};
    pid_t pid;
    double t = now();
    if (posix_spawn(&pid, self_path, NULL, NULL, argv, environ) != 0)
        return 0;
    waitpid(pid, NULL, 0);
    return (now() - t) * 1e6;
}

static int w5_once_with(int start)
{
    pool_options_t o = {.workers = 2, .start = start};
    pool_t *pool = NULL;
    pool_create_with(&pool, &o);
    int x = 1, y = 0;
    int rc = pool ? pool_map(pool, add1, 1, &y, &x) : -1;
    pool_destroy(pool);
    return rc == 0 && y == 2 ? 0 : 1;
}

static int w5_once(void)
{
    return w5_once_with(PMAP_START_FORK);
}

/* W5 and its floors, all measured now, in the process as it is. */
static void bench_w5(const char *when, bool spawned)
{
    sample_t lib = {{0}, 0}, hand = {{0}, 0}, fork_cost = {{0}, 0};
    sample_t proc = {{0}, 0}, empty = {{0}, 0}, hand_proc = {{0}, 0};
    for (int r = 0; r < reps; r++) {
        double v[40], h[40], f[40];
        for (int i = 0; i < 40; i++) {
            double t = now();
            if (w5_once() != 0)
                exit(1);
            v[i] = (now() - t) * 1e6;
            h[i] = hand_rolled_pool();
            f[i] = fork_exit_wait();
        }
        add_value(&lib, median_of(v, 40));
        add_value(&hand, median_of(h, 40));
        add_value(&fork_cost, median_of(f, 40));
        if (spawned) {
            /* A new process's start moves more than a cycle in one: the
             * median of 15 of each, taken in turn. */
            double p[15], e[15], hp[15];
            for (int i = 0; i < 15; i++) {
                p[i] = spawn_wall("--w5");
                e[i] = spawn_wall("--nothing");
                hp[i] = spawn_wall("--w5-hand");
            }
            add_value(&proc, median_of(p, 15));
            add_value(&empty, median_of(e, 15));
            add_value(&hand_proc, median_of(hp, 15));
        }
    }
    char title[160], note[256];
    snprintf(title, sizeof title,
             "W5  create 2 workers, run 1 item, destroy, %s: microseconds",
             when);
    heading(title);
    row("fork + _exit + waitpid", &fork_cost, "us", NULL);
    row("hand-rolled 2-worker pipe pool", &hand, "us", NULL);
    if (spawned)
        python_row("multiprocessing.Pool (in-process)", "W5.mp.Pool", "us");
    row("libpmap, in-process", &lib, "us",
        ratio(note, sizeof note, "%.2fx the hand-rolled pool",
              median(&lib) / median(&hand)));
    if (spawned) {
        row("a program that does nothing (spawned)", &empty, "us", NULL);
        row("hand-rolled pool, whole program (spawned)", &hand_proc, "us",
            ratio(note, sizeof note, "%.0f us more than doing nothing",
                  median(&hand_proc) - median(&empty)));
        row("libpmap, whole program (spawned)", &proc, "us",
            ratio(note, sizeof note,
                  "%.2fx the hand-rolled program; %.0f us more than doing "
                  "nothing",
                  median(&proc) / median(&hand_proc),
                  median(&proc) - median(&empty)));
    }
}

/* A GiB of heap touched in 4 KiB pages (not huge pages, which make a fork
 * cheap again): the page tables a fork must copy. */
static char *big_heap(size_t size)
{
    char *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
#ifdef MADV_NOHUGEPAGE
    madvise(p, size, MADV_NOHUGEPAGE);
#endif
    memset(p, 1, size);
    return p;
}

/* Median W5 of one start method over 10 runs (us). */
static double w5_median(int start)
{
    double v[10];
    for (int i = 0; i < 10; i++) {
        double t = now();
        if (w5_once_with(start) != 0)
            exit(1);
        v[i] = (now() - t) * 1e6;
    }
    return median_of(v, 10);
}

/* W5 by start method, in a small caller and with 1 GiB of heap touched:
 * the fork server's figure must not grow with the heap.  Each method is
 * measured in a loop of its own: a fork of the big caller leaves all its
 * pages copy-on-write, which would charge the next measurement. */
static void bench_w5_heap(void)
{
    sample_t fork_small = {{0}, 0}, server_small = {{0}, 0};
    sample_t fork_big = {{0}, 0}, server_big = {{0}, 0}, hand_big = {{0}, 0};
    size_t size = (size_t)1 << 30;
    for (int r = 0; r < reps; r++)
        add_value(&server_small, w5_median(PMAP_START_SERVER));
    for (int r = 0; r < reps; r++)
        add_value(&fork_small, w5_median(PMAP_START_FORK));
    char *heap = big_heap(size);
    for (int r = 0; r < reps && heap; r++)
        add_value(&server_big, w5_median(PMAP_START_SERVER));
    for (int r = 0; r < reps && heap; r++)
        add_value(&fork_big, w5_median(PMAP_START_FORK));
    for (int r = 0; r < reps && heap; r++) {
        double h[10];
        for (int i = 0; i < 10; i++)
            h[i] = hand_rolled_pool();
        add_value(&hand_big, median_of(h, 10));
    }
    if (heap != NULL)
        munmap(heap, size);
    heading("W5  by start method: create 2 workers, 1 item, destroy, with "
            "1 GiB touched in 4 KiB pages (us)");
    char note[128];
    row("fork, small caller", &fork_small, "us", NULL);
    row("fork server, small caller", &server_small, "us", NULL);
    row("hand-rolled pool, 1 GiB", &hand_big, "us", NULL);
    row("fork, 1 GiB", &fork_big, "us",
        ratio(note, sizeof note, "%.1fx the small caller",
              median(&fork_big) / median(&fork_small)));
    row("fork server, 1 GiB", &server_big, "us",
        ratio(note, sizeof note, "%.2fx the small caller",
              median(&server_big) / median(&server_small)));
}

/* Peak resident memory since the last reset_peak (KiB), or -1. */
static long peak_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f)) {
        if (sscanf(line, "VmHWM: %ld", &kib) == 1)
            break;
    }
    if (f)
        fclose(f);
    return kib;
}

static long resident_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f)) {
        if (sscanf(line, "VmRSS: %ld", &kib) == 1)
            break;
    }
    if (f)
        fclose(f);
    return kib;
}

static void reset_peak(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}

static void bench_w6(pool_t *pool, inputs_t *in)
{
    bench_w2(pool, in, W6_N, W6_ITERATIONS,
             "W6a W2 at N = 20,000 items of 0.1 ms: seconds");
    /* W1 at ten times the items: the cost per item must not grow. */
    size_t n = W6_W1_N;
    int *xs = malloc(n * sizeof *xs), *out = malloc(n * sizeof *out);
    for (size_t i = 0; i < n; i++)
        xs[i] = (int)i;
    memset(out, 0, n * sizeof *out);
    sample_t small = {{0}, 0}, large = {{0}, 0};
    long grew = -1;
    for (int r = 0; r < reps; r++) {
        add_value(&small, pool_w1(pool, in->xs, in->w1_out, W1_N));
        long before = resident_kib();
        reset_peak();
        add_value(&large, pool_w1(pool, xs, out, n));
        long peak = peak_kib() - before;
        grew = peak > grew ? peak : grew;
    }
    heading("W6b W1 at N = 1,000,000 and 10,000,000: items per second");
    char note[256];
    row("libpmap, N = 1,000,000", &small, "items/s", NULL);
    row("libpmap, N = 10,000,000", &large, "items/s",
        ratio(note, sizeof note,
              "%.2f of the rate at 1/10 the size; the map's peak memory "
              "beyond the caller's arrays: %ld KiB",
              median(&large) / median(&small), grew));
    free(xs);
    free(out);
}

/* One item costs 100 times the others: how close to the ideal split? */
static void bench_balance(pool_t *pool, inputs_t *in)
{
    size_t n = 1000;
    long *cost = malloc(n * sizeof *cost);
    sample_t middle = {{0}, 0}, last = {{0}, 0};
    sample_t omp_middle = {{0}, 0}, omp_last = {{0}, 0};
    for (int where = 0; where < 2; where++) {
        double work = 0;
        for (size_t i = 0; i < n; i++)
            cost[i] = W6_ITERATIONS;
        cost[where ? n - 1 : n / 2] = 100L * W6_ITERATIONS;
        double t = now();
        for (size_t i = 0; i < n; i++)
            in->w2_out[i] = w_spin(in->keys[i], cost[i]);
        work = now() - t;
        for (int r = 0; r < reps; r++) {
            t = now();
            if (pool_map(pool, spin, n, in->w2_out, in->keys, cost) != 0)
                exit(1);
            add_value(where ? &last : &middle, (now() - t) / (work / 2));
            t = now();
            if (omp_costs(in->keys, in->w2_out, n, cost) == 0)
                add_value(where ? &omp_last : &omp_middle,
                          (now() - t) / (work / 2));
            openmp_rest();
        }
    }
    free(cost);
    heading("Balance: 1,000 items of 0.1 ms, one of 10 ms: time / ideal "
            "(half the serial time)");
    row("OpenMP dynamic, the long item in the middle", &omp_middle, "x",
        NULL);
    row("libpmap, the long item in the middle", &middle, "x", NULL);
    row("OpenMP dynamic, the long item last", &omp_last, "x", NULL);
    row("libpmap, the long item last", &last, "x",
        "(no schedule that comes to the long item last beats 1.09x)");
}

static void prepare(inputs_t *in);

/* ---- cost by the number of workers ------------------------------------ */

#define SCALE_ITEMS 20000       /* trivial items per map */
#define SCALE_CHUNK 16          /* items per batch */
#define SCALE_MAPS 3            /* maps measured a pool, after the first */

static double thread_cpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static long mem_available_kib(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f)) {
        if (sscanf(line, "MemAvailable: %ld", &kib) == 1)
            break;
    }
    if (f)
        fclose(f);
    return kib;
}

/* Why a pool of `workers` would not fit this machine's limits, or NULL.
 * The soft limit on open files is raised to the hard one first: the
 * caller holds a few descriptors per worker. */
static const char *too_many(int workers)
{
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        setrlimit(RLIMIT_NOFILE, &r);
    }
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur != RLIM_INFINITY &&
        r.rlim_cur < (rlim_t)workers * 4 + 64)
        return "RLIMIT_NOFILE";
    if (getrlimit(RLIMIT_NPROC, &r) == 0 && r.rlim_cur != RLIM_INFINITY &&
        r.rlim_cur < (rlim_t)workers + 64)
        return "RLIMIT_NPROC";
    long kib = mem_available_kib();
    if (kib >= 0 && kib / 4 < (long)workers * 4096)    /* 4 MiB each */
        return "memory";
    return NULL;
}

#ifdef __linux__
/* The hand-rolled pool's worker w, with the batches it holds (at most two:
 * the index of each, oldest first). */
typedef struct hand_worker {
    int to, from;
    pid_t pid;
    size_t held[2];
    int nheld;
} hand_worker_t;

enum { HAND_CHUNK = SCALE_CHUNK, HAND_BATCHES = SCALE_ITEMS / SCALE_CHUNK };

/* Gives w batches from *next until it holds `depth` of them. */
static void hand_feed(hand_worker_t *w, int depth, const int *xs,
                      size_t *next)
{
    while (w->nheld < depth && *next < HAND_BATCHES) {
        if (write(w->to, xs + *next * HAND_CHUNK, sizeof(int[HAND_CHUNK])) < 0)
            exit(1);
        w->held[w->nheld++] = (*next)++;
    }
}

/* A worker of the hand-rolled pool: add1 on each batch it reads. */
static _Noreturn void hand_serve(int in, int out)
{
    int batch[HAND_CHUNK];
    while (read(in, batch, sizeof batch) == sizeof batch) {
        for (int i = 0; i < HAND_CHUNK; i++)
            batch[i] = w_add(batch[i], 1);
        if (write(out, batch, sizeof batch) != sizeof batch)
            break;
    }
    _exit(0);
}

/*
 * The same map on a hand-rolled pool of `workers` processes, each with a
 * pipe each way, holding two batches of SCALE_CHUNK ints at most (as
 * libpmap's workers do) and fed as it answers, through one epoll set: what
 * waking that many processes and touching that many pipes costs the
 * kernel, whoever drives them.  The caller's CPU time per batch, the
 * median of SCALE_MAPS maps after the first (*wall: its wall time per
 * batch, likewise), or 0.
 */
static double hand_rolled_batches(int workers, const int *xs, int *out,
                                  double *wall)
{
    hand_worker_t *ws = calloc((size_t)workers, sizeof *ws);
    int ep = epoll_create1(EPOLL_CLOEXEC), started = 0;
    double cpu = 0;
    while (ws != NULL && ep >= 0 && started < workers) {
        hand_worker_t *w = &ws[started];
        int to[2], from[2];
        if (pipe(to) < 0)
            break;
        if (pipe(from) < 0) {
            close(to[0]);
            close(to[1]);
            break;
        }
        w->pid = fork();
        if (w->pid == 0) {
            close(to[1]);
            close(from[0]);
            hand_serve(to[0], from[1]);
        }
        close(to[0]);
        close(from[1]);
        w->to = to[1];
        w->from = from[0];
        started++;      /* its ends are closed at the end, whatever comes */
        struct epoll_event ev = {.events = EPOLLIN,
                                 .data.u32 = (uint32_t)(started - 1)};
        if (w->pid < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, w->from, &ev) < 0)
            break;
    }
    double map_cpu[SCALE_MAPS], map_wall[SCALE_MAPS];
    int measured = 0;
    for (int pass = 0; pass <= SCALE_MAPS && started == workers; pass++) {
        double c = thread_cpu(), t = now();
        size_t next = 0, done = 0;
        for (int depth = 1; depth <= 2; depth++) {  /* a round at a time */
            for (int w = 0; w < workers; w++)
                hand_feed(&ws[w], depth, xs, &next);
        }
        while (done < HAND_BATCHES) {
            struct epoll_event evs[64];
            int n = epoll_wait(ep, evs, 64, -1);
            for (int e = 0; e < n; e++) {
                hand_worker_t *w = &ws[evs[e].data.u32];
                /* one batch's results: a 64-byte write arrives whole */
                if (read(w->from, out + w->held[0] * HAND_CHUNK,
                         sizeof(int[HAND_CHUNK])) !=
                    (ssize_t)sizeof(int[HAND_CHUNK]))
                    exit(1);
                done++;
                w->held[0] = w->held[1];
                w->nheld--;
                hand_feed(w, 2, xs, &next);
            }
        }
        if (pass > 0) {
            map_cpu[measured] = (thread_cpu() - c) * 1e6 / HAND_BATCHES;
            map_wall[measured++] = (now() - t) * 1e6 / HAND_BATCHES;
        }
    }
    if (measured == SCALE_MAPS) {
        cpu = median_of(map_cpu, SCALE_MAPS);
        *wall = median_of(map_wall, SCALE_MAPS);
    }
    /* A worker holds the ends of the pipes made before it: all closed
     * first, they all see the end of their input. */
    for (int w = 0; w < started; w++) {
        close(ws[w].to);
        close(ws[w].from);
    }
    for (int w = 0; w < started; w++) {
        if (ws[w].pid > 0)
            waitpid(ws[w].pid, NULL, 0);
    }
    if (ep >= 0)
        close(ep);
    free(ws);
    if (cpu > 0 && out[HAND_BATCHES * HAND_CHUNK - 1] !=
                       HAND_BATCHES * HAND_CHUNK)
        cpu = 0;
    return cpu;
}
#endif

/* The caller's CPU time per batch of a map of SCALE_ITEMS trivial items in
 * batches of SCALE_CHUNK, and pool_create's and pool_destroy's wall time per
 * worker, at 2 to 512 workers forked from a small caller (this process
 * does nothing else): each should stay flat as the pool grows.  The
 * median of `reps` pools of each size (and of SCALE_MAPS maps a pool):
 * the best of them, taken before, favoured the 2-worker pool, whose maps
 * vary most (its best map 2.0 to 2.4 us a batch, its median 2.8). */
static void bench_workers(void)
{
    static const int sizes[] = {2, 8, 32, 128, 512};
    enum { NSIZES = sizeof sizes / sizeof *sizes };
    sample_t cpu[NSIZES], wall[NSIZES], create[NSIZES], destroy[NSIZES];
    sample_t server_create[NSIZES], server_destroy[NSIZES];
    sample_t hand_cpu[NSIZES], hand_wall[NSIZES];
    const char *skipped[NSIZES] = {NULL};
    int *xs = malloc(SCALE_ITEMS * sizeof *xs);
    int *out = malloc(SCALE_ITEMS * sizeof *out);
    double batches = (SCALE_ITEMS + SCALE_CHUNK - 1) / SCALE_CHUNK;
    pool_map_options_t mo = {.chunk = SCALE_CHUNK};
    int largest = -1;
    for (size_t i = 0; i < SCALE_ITEMS; i++)
        xs[i] = (int)i;
    for (int k = 0; k < NSIZES; k++) {
        cpu[k].n = wall[k].n = create[k].n = destroy[k].n = 0;
        server_create[k].n = server_destroy[k].n = 0;
        hand_cpu[k].n = hand_wall[k].n = 0;
        skipped[k] = k > 0 && skipped[k - 1] ? "smaller pool failed"
                                             : too_many(sizes[k]);
        for (int r = 0; r < reps && skipped[k] == NULL; r++) {
            pool_options_t po = {.workers = sizes[k],
                                 .start = PMAP_START_FORK};
            pool_t *pool = NULL;
            double t = now();
            int rc = pool_create_with(&pool, &po);
            if (rc != 0) {
                skipped[k] = pmap_strerror(rc);
                break;
            }
            add_value(&create[k], (now() - t) * 1e6 / sizes[k]);
            /* the first map warms the workers up; the median of the next
             * SCALE_MAPS is taken */
            double map_cpu[SCALE_MAPS], map_wall[SCALE_MAPS];
            for (int pass = 0; pass <= SCALE_MAPS && rc == 0; pass++) {
                double c = thread_cpu();
                t = now();
                rc = pool_map_with(pool, &mo, add1, SCALE_ITEMS, out, xs);
                if (pass > 0) {
                    map_cpu[pass - 1] = (thread_cpu() - c) * 1e6 / batches;
                    map_wall[pass - 1] = (now() - t) * 1e6 / batches;
                }
            }
            if (rc == 0) {
                add_value(&cpu[k], median_of(map_cpu, SCALE_MAPS));
                add_value(&wall[k], median_of(map_wall, SCALE_MAPS));
            }
            if (rc != 0 || out[SCALE_ITEMS - 1] != SCALE_ITEMS) {
                fprintf(stderr, "bench: the map at %d workers failed\n",
                        sizes[k]);
                exit(1);
            }
            t = now();
            pool_destroy(pool);
            add_value(&destroy[k], (now() - t) * 1e6 / sizes[k]);
            /* The same from the fork server, which holds no other worker's
             * descriptors or memory when it forks one. */
            po.start = PMAP_START_SERVER;
            t = now();
            if (pool_create_with(&pool, &po) != 0)
                continue;
            add_value(&server_create[k], (now() - t) * 1e6 / sizes[k]);
            rc = pool_map_with(pool, &mo, add1, SCALE_ITEMS, out, xs);
            t = now();
            pool_destroy(pool);
            if (rc == 0)
                add_value(&server_destroy[k], (now() - t) * 1e6 / sizes[k]);
#ifdef __linux__
            double hand_w = 0, hand_c = hand_rolled_batches(sizes[k], xs, out,
                                                        &hand_w);
            if (hand_c > 0) {
                add_value(&hand_cpu[k], hand_c);
                add_value(&hand_wall[k], hand_w);
            }
#endif
        }
        if (skipped[k] == NULL)
            largest = k;
    }
    free(xs);
    free(out);

    char title[320];
    snprintf(title, sizeof title,
             "Cost by the number of workers, forked from a small caller, "
             "median of %d pools:\nthe caller's CPU time and the wall time "
             "per batch of a map of 20,000 add1(x)\nin batches of %d (each "
             "pool's median of %d maps, after one); pool_create\nand "
             "pool_destroy per worker (forked from the caller, and from the "
             "fork server)", reps, SCALE_CHUNK, SCALE_MAPS);
    heading(title);
    printf("  %-30s", "workers");
    for (int k = 0; k < NSIZES; k++)
        printf(" %9d", sizes[k]);
    if (largest > 0)
        printf("   %d/%d", sizes[largest], sizes[0]);
    printf("\n");
    const struct {
        const char *label;
        sample_t *s;
    } rows[] = {
        {"caller CPU per batch", cpu},
        {"  ...hand-rolled pipe pool", hand_cpu},
        {"map wall time per batch", wall},
        {"  ...hand-rolled pipe pool", hand_wall},
        {"pool_create per worker", create},
        {"  ...from the fork server", server_create},
        {"pool_destroy per worker", destroy},
        {"  ...from the fork server", server_destroy},
    };
    for (size_t j = 0; j < sizeof rows / sizeof *rows; j++) {
        char v[32];
        printf("  %-30s", rows[j].label);
        for (int k = 0; k < NSIZES; k++) {
            if (rows[j].s[k].n)
                show(median(&rows[j].s[k]), "us", v, sizeof v);
            else
                snprintf(v, sizeof v, "-");
            printf(" %9s", v);
        }
        if (largest > 0 && rows[j].s[largest].n && rows[j].s[0].n)
            printf("   %.2fx", median(&rows[j].s[largest]) /
                                   median(&rows[j].s[0]));
        printf("\n");
    }
    for (int k = 0; k < NSIZES; k++) {
        if (skipped[k] != NULL)
            printf("  (%d workers: skipped: %s)\n", sizes[k], skipped[k]);
    }
}

/* ---- scaling: W2, W3 and W6a at 1, 2, 4, ... nproc workers ------------- */

static int cpus_usable(void)
{
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* Speedup over serial C [efficiency] of one figure, as a table cell. */
static void scale_cell(const sample_t *s, double serial, int workers,
                       bool rate)
{
    char cell[32];
    if (s->n == 0) {
        printf(" %15s", "-");
        return;
    }
    double speedup = rate ? median(s) / serial : serial / median(s);
    snprintf(cell, sizeof cell, "%.2f [%3.0f%%]", speedup,
             100 * speedup / workers);
    printf(" %15s", cell);
}

static void bench_scale(void)
{
    enum { W2, W3, W6A, NW };
    int ncpu = cpus_usable(), counts[32], ncounts = 0;
    for (int t = 1; t < ncpu && ncounts < 31; t *= 2)
        counts[ncounts++] = t;
    counts[ncounts++] = ncpu;
    inputs_t in;
    prepare(&in);
    sample_t serial[NW] = {{{0}, 0}};
    for (int r = 0; r < reps; r++) {
        double t = now();
        for (size_t i = 0; i < W2_N; i++)
            in.w2_out[i] = w_spin(in.keys[i], W2_ITERATIONS);
        add_value(&serial[W2], now() - t);
        t = now();
        for (size_t i = 0; i < W3_N; i++)
            in.w3_out[i] = w_fnv1a(in.raw[i], W3_SIZE);
        add_value(&serial[W3], (double)W3_N * W3_SIZE / (now() - t) / 1e6);
        t = now();
        for (size_t i = 0; i < W6_N; i++)
            in.w2_out[i] = w_spin(in.keys[i], W6_ITERATIONS);
        add_value(&serial[W6A], now() - t);
    }
    char title[256];
    snprintf(title, sizeof title,
             "Scaling, %d CPUs: speedup over serial C [efficiency = speedup "
             "/ workers],\nmedian of %d runs; OpenMP with as many threads "
             "(dynamic schedule)", ncpu, reps);
    heading(title);
    printf("  serial C: W2 %.3f s, W3 %.0f MB/s, W6a %.3f s\n",
           median(&serial[W2]), median(&serial[W3]), median(&serial[W6A]));
    printf("  %-7s %15s %15s %15s %15s %15s %15s\n", "workers",
           "W2 libpmap", "W2 OpenMP", "W3 libpmap", "W3 OpenMP",
           "W6a libpmap", "W6a OpenMP");
    for (int c = 0; c < ncounts; c++) {
        int workers = counts[c];
        pool_options_t po = {.workers = workers, .start = PMAP_START_SERVER};
        pool_t *pool;
        int rc = pool_create_with(&pool, &po);
        if (rc != 0) {
            printf("  %-7d (pool_create: %s)\n", workers, pmap_strerror(rc));
            continue;
        }
        /* warm up: the workers' first pages, OpenMP's threads */
        pool_w1(pool, in.xs, in.w1_out, W1_N);
        omp_w2_threads(in.keys, in.w2_out, 64, 1000, 1, workers);
        openmp_rest();
        sample_t lib[NW] = {{{0}, 0}}, omp[NW] = {{{0}, 0}};
        for (int r = 0; r < reps; r++) {
            add_value(&lib[W2], pool_w2(pool, &in, W2_N, W2_ITERATIONS));
            double t = now();
            if (omp_w2_threads(in.keys, in.w2_out, W2_N, W2_ITERATIONS, 1,
                               workers) == 0)
                add_value(&omp[W2], now() - t);
            openmp_rest();
            add_value(&lib[W3], pool_w3(pool, &in, true));
            t = now();
            if (omp_w3_threads(in.raw, in.w3_out, W3_N, W3_SIZE,
                               workers) == 0)
                add_value(&omp[W3],
                          (double)W3_N * W3_SIZE / (now() - t) / 1e6);
            openmp_rest();
            add_value(&lib[W6A], pool_w2(pool, &in, W6_N, W6_ITERATIONS));
            t = now();
            if (omp_w2_threads(in.keys, in.w2_out, W6_N, W6_ITERATIONS, 1,
                               workers) == 0)
                add_value(&omp[W6A], now() - t);
            openmp_rest();
        }
        pool_destroy(pool);
        printf("  %-7d", workers);
        for (int w = 0; w < NW; w++) {
            scale_cell(&lib[w], median(&serial[w]), workers, w == W3);
            scale_cell(&omp[w], median(&serial[w]), workers, w == W3);
        }
        printf("\n");
    }
}

/* Runs this program again with `arg` as its mode, in a fresh small
 * process; its output goes to ours.  Returns its exit status. */
static int run_self(const char *arg)
{
    char count[16];
    snprintf(count, sizeof count, "%d", reps);
    char *argv[] = {(char *)self_path, count, (char *)arg, NULL};
    pid_t pid;
    int status;
    fflush(stdout);
    if (posix_spawn(&pid, self_path, NULL, NULL, argv, environ) != 0 ||
        waitpid(pid, &status, 0) != pid)
        return 1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

static void prepare(inputs_t *in)
{
    size_t n = W6_N > W1_N ? W6_N : W1_N;
    in->xs = malloc(n * sizeof *in->xs);
    in->w1_out = malloc(n * sizeof *in->w1_out);
    in->keys = malloc(n * sizeof *in->keys);
    in->w2_out = malloc(n * sizeof *in->w2_out);
    for (size_t i = 0; i < n; i++) {
        in->xs[i] = (int)i;
        in->keys[i] = i;
    }
    in->bufs = malloc(W3_N * sizeof *in->bufs);
    in->raw = malloc(W3_N * sizeof *in->raw);
    in->w3_out = malloc(W3_N * sizeof *in->w3_out);
    for (size_t i = 0; i < W3_N; i++) {
        in->raw[i] = malloc(W3_SIZE);
        for (size_t j = 0; j < W3_SIZE; j++)
            in->raw[i][j] = (unsigned char)(i * 131 + j * 7);
        in->bufs[i] = (pmap_bytes_t){in->raw[i], W3_SIZE};
    }
}

/* W4 and the round trips it is measured against, by themselves. */
static void bench_w4_alone(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    pool_options_t po = {.workers = 2, .start = PMAP_START_FORK};
    pool_t *pool;
    if (pool_create_with(&pool, &po) != 0)
        return;
    bench_w4(pool);
    pool_destroy(pool);
}

/* `bench REPS w1` or `w3`: that workload alone, on a pool forked while
 * the process is small (the fork server started first, for W1's new
 * pools), after the machine limits its ratios use: the socketpair's
 * bandwidth for W1, the pipe's and memcpy's for W3. */
static int workload_alone(bool w1)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    pool_options_t o = {.workers = 2, .start = PMAP_START_FORK};
    pool_t *pool;
    if (pmap_init() != 0 || pool_create_with(&pool, &o) != 0)
        return 1;
    sample_t channel_bw = {{0}, 0}, copy_bw = {{0}, 0};
    for (int r = 0; r < reps; r++) {
        add_value(&channel_bw, stream_bandwidth(w1));
        if (!w1)
            add_value(&copy_bw, memcpy_bandwidth());
    }
    inputs_t in;
    prepare(&in);
    omp_w1(in.xs, in.xs, in.w1_out, W1_N);  /* start OpenMP's threads */
    openmp_rest();
    if (w1)
        bench_w1(pool, &in, median(&channel_bw));
    else
        bench_w3(pool, &in, median(&channel_bw), median(&copy_bw));
    pool_destroy(pool);
    return 0;
}

int main(int argc, char **argv)
{
    self_path = argv[0];
    if (argc > 1 && strcmp(argv[1], "--w5") == 0)
        return w5_once();
    if (argc > 1 && strcmp(argv[1], "--nothing") == 0)
        return 0;
    if (argc > 1 && strcmp(argv[1], "--w1-first") == 0)
        return w1_first_pool();
    if (argc > 1 && strcmp(argv[1], "--w5-hand") == 0)
        return hand_rolled_pool() > 0 ? 0 : 1;
    if (argc > 1)
        reps = atoi(argv[1]) > 0 && atoi(argv[1]) <= MAX_REPS ? atoi(argv[1])
                                                                : 5;
    if (argc > 2 && strcmp(argv[2], "w5-heap") == 0) {
        if (pmap_init() != 0)
            return 1;
        bench_w5_heap();    /* this section alone */
        return 0;
    }
    if (argc > 2 && (strcmp(argv[2], "w1") == 0 || strcmp(argv[2], "w3") == 0))
        return workload_alone(strcmp(argv[2], "w1") == 0);
    if (argc > 2 && strcmp(argv[2], "w5") == 0) {
        setvbuf(stdout, NULL, _IOLBF, 0);
        bench_w5("small caller", true);     /* this section alone */
        return 0;
    }
    if (argc > 2 && strcmp(argv[2], "workers") == 0) {
        if (pmap_init() != 0)   /* the fork server's pools */
            return 1;
        bench_workers();    /* this section alone, in a small process */
        return 0;
    }
    if (argc > 2 && strcmp(argv[2], "w4") == 0) {
        bench_w4_alone();   /* this section alone, with its baselines */
        return 0;
    }
    if (argc > 2 && strcmp(argv[2], "scale") == 0) {
        setvbuf(stdout, NULL, _IOLBF, 0);
        if (pmap_init() != 0)   /* pools started while the process is small */
            return 1;
        bench_scale();
        return 0;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("libpmap benchmark: %d runs of each figure, median [min - max]\n",
           reps);

    /* The fork server and the pool first, while the process is small (see
     * README, "Start methods"). */
    if (pmap_init() != 0)
        return 1;
    pool_options_t po = {.workers = 2, .start = PMAP_START_FORK};
    pool_t *pool;
    if (pool_create_with(&pool, &po) != 0)
        return 1;
    sample_t pipe_rtt = {{0}, 0}, socket_rtt = {{0}, 0}, pipe_bw = {{0}, 0};
    sample_t socket_bw = {{0}, 0}, copy_bw = {{0}, 0};
    sample_t first_read = {{0}, 0}, cow = {{0}, 0}, parent_cow = {{0}, 0};
    sample_t first_call = {{0}, 0}, later_call = {{0}, 0};
    char note[256];
    run_python();   /* first: it takes a while, and W5 below needs it */
    for (int r = 0; r < reps; r++) {
        add_value(&pipe_rtt, ping_pong(false, r == 0 ? 100000 : 20000));
        add_value(&socket_rtt, ping_pong(true, r == 0 ? 100000 : 20000));
        add_value(&pipe_bw, stream_bandwidth(false));
        add_value(&socket_bw, stream_bandwidth(true));
        add_value(&copy_bw, memcpy_bandwidth());
        add_value(&first_read, page_cost(SHARED_READER));
        add_value(&cow, page_cost(CHILD_WRITER));
        add_value(&parent_cow, page_cost(PARENT_WRITER));
        double f[20], l[20];
        for (int i = 0; i < 20; i++)
            f[i] = first_syscall_cost(&l[i]);
        add_value(&first_call, median_of(f, 20));
        add_value(&later_call, median_of(l, 20));
    }
    heading("Machine limits");
    row("pipe round trip (1 byte)", &pipe_rtt, "us", NULL);
    row("socketpair round trip (1 byte)", &socket_rtt, "us", NULL);
    row("pipe bandwidth (1 MiB pipe, 1 MiB writes)", &pipe_bw, "MB/s", NULL);
    row("socketpair bandwidth (1 MiB writes)", &socket_bw, "MB/s", NULL);
    row("memcpy bandwidth (256 MiB)", &copy_bw, "MB/s", NULL);
    row("a page, first read by a process", &first_read, "us",
        ratio(note, sizeof note, "shared memory the caller wrote, mapped by "
              "another process (pmap_alloc's blocks); 256 MiB: %.0f ms",
              median(&first_read) * 65536 / 1e3));
    row("a page, first written by a child", &cow, "us",
        "copy on write, after a fork");
    row("a page, first written by a parent", &parent_cow, "us",
        "copy on write, while its child lives");
    row("a system call, first use in a child", &first_call, "us",
        ratio(note, sizeof note, "then %.1f us; eight kinds, just after "
              "a fork", median(&later_call)));
    bench_w5("small caller", true);
    bench_w5_heap();    /* before the inputs exist: a small caller */

    inputs_t in;
    prepare(&in);
    omp_w1(in.xs, in.xs, in.w1_out, W1_N);  /* start OpenMP's threads */
    openmp_rest();
    bench_w1(pool, &in, median(&socket_bw));
    bench_w2(pool, &in, W2_N, W2_ITERATIONS,
             "W2  2,000 items of ~1 ms of CPU: seconds");
    bench_w3(pool, &in, median(&pipe_bw), median(&copy_bw));
    bench_w4(pool);
    bench_w5("caller with 340 MB touched", false);
    bench_w6(pool, &in);
    bench_balance(pool, &in);
    pool_destroy(pool);
    return run_self("workers");
}
