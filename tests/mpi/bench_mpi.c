/* SPDX-License-Identifier: MIT */
/*
 * bench_mpi.c - make bench-mpi: W2 and W3 (tests/bench/workloads.h) with 3
 * ranks (rank 0 drives; ranks 1 and 2 serve with one worker each, by
 * PMAP_WORKERS=1) against, in the same run, the local pool of 2 workers
 * and a hand-written MPI master/worker loop (MPI_Send/MPI_Recv, dynamic
 * scheduling, one item per message).  Then one call's round trip against a
 * raw MPI ping-pong, and what the relays cost while idle.
 *
 * The hand-written loop runs first, on MPI_Init_thread of the program's
 * own; then every rank calls pmap_mpi_init (which finds MPI initialized),
 * and ranks 1 and 2 serve the pools of rank 0.
 */
#include "pmap_mpi.h"
#include "../bench/workloads.h"

#include <mpi.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REPS_MAX 3
static int REPS = REPS_MAX;
#define TAG_WORK 1
#define TAG_STOP 2
#define PINGS 2000

static uint64_t spin(uint64_t x)
{
    return w_spin(x, W2_ITERATIONS);
}
PMAP_EXPORT(spin, uint64_t, uint64_t);

static uint64_t fnv(pmap_bytes_t b)
{
    return w_fnv1a(b.data, b.size);
}
PMAP_EXPORT(fnv, uint64_t, pmap_bytes_t);

static uint64_t echo(uint64_t x)
{
    return x;
}
PMAP_EXPORT(echo, uint64_t, uint64_t);

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static uint64_t keys[W2_N], out[W2_N];
static unsigned char *raw[W3_N];
static pmap_bytes_t bufs[W3_N];
static uint64_t sums[W3_N];

/* ---- the hand-written master/worker loop --------------------------------- */

/* W2 (w3 false) or W3: one item per message, the next item to whichever
 * worker answers first.  Returns the seconds taken. */
static double hand_master(int size, bool w3)
{
    size_t n = w3 ? W3_N : W2_N, next = 0, done = 0;
    double t = now();
    for (int r = 1; r < size && next < n; r++, next++) {
        if (w3)
            MPI_Send(raw[next], W3_SIZE, MPI_BYTE, r, TAG_WORK, MPI_COMM_WORLD);
        else
            MPI_Send(&keys[next], 1, MPI_UINT64_T, r, TAG_WORK, MPI_COMM_WORLD);
    }
    while (done < n) {
        uint64_t reply[2];
        MPI_Status st;
        MPI_Recv(reply, 2, MPI_UINT64_T, MPI_ANY_SOURCE, TAG_WORK,
                 MPI_COMM_WORLD, &st);
        (w3 ? sums : out)[reply[0]] = reply[1];
        done++;
        if (next < n) {
            if (w3)
                MPI_Send(raw[next], W3_SIZE, MPI_BYTE, st.MPI_SOURCE,
                         TAG_WORK, MPI_COMM_WORLD);
            else
                MPI_Send(&keys[next], 1, MPI_UINT64_T, st.MPI_SOURCE,
                         TAG_WORK, MPI_COMM_WORLD);
            next++;
        }
    }
    return now() - t;
}

/* The workers' side: items in order of arrival, so the index is counted
 * (each worker is sent items in increasing order; the master tells). */
static void hand_worker(void)
{
    unsigned char *buf = malloc(W3_SIZE);
    for (;;) {
        MPI_Status st;
        MPI_Probe(0, MPI_ANY_TAG, MPI_COMM_WORLD, &st);
        if (st.MPI_TAG == TAG_STOP) {
            MPI_Recv(NULL, 0, MPI_BYTE, 0, TAG_STOP, MPI_COMM_WORLD,
                     MPI_STATUS_IGNORE);
            break;
        }
        int count;
        MPI_Get_count(&st, MPI_BYTE, &count);
        MPI_Recv(buf, count, MPI_BYTE, 0, TAG_WORK, MPI_COMM_WORLD,
                 MPI_STATUS_IGNORE);
        uint64_t reply[2];
        if (count == W3_SIZE) {
            reply[0] = buf[0] | (uint64_t)buf[1] << 8;  /* index, below */
            reply[1] = w_fnv1a(buf, W3_SIZE);
        } else {
            uint64_t key;
            memcpy(&key, buf, sizeof key);
            reply[0] = key;
            reply[1] = w_spin(key, W2_ITERATIONS);
        }
        MPI_Send(reply, 2, MPI_UINT64_T, 0, TAG_WORK, MPI_COMM_WORLD);
    }
    free(buf);
}

/* Raw MPI ping-pong of 8 bytes with rank 1: seconds per round trip. */
static double ping_pong(int rank)
{
    uint64_t x = 0;
    double t = now();
    for (int i = 0; i < PINGS; i++) {
        if (rank == 0) {
            MPI_Send(&x, 1, MPI_UINT64_T, 1, TAG_WORK, MPI_COMM_WORLD);
            MPI_Recv(&x, 1, MPI_UINT64_T, 1, TAG_WORK, MPI_COMM_WORLD,
                     MPI_STATUS_IGNORE);
        } else if (rank == 1) {
            MPI_Recv(&x, 1, MPI_UINT64_T, 0, TAG_WORK, MPI_COMM_WORLD,
                     MPI_STATUS_IGNORE);
            MPI_Send(&x, 1, MPI_UINT64_T, 0, TAG_WORK, MPI_COMM_WORLD);
        }
    }
    return (now() - t) / PINGS;
}

/* Waits for a message from rank `from` as the relays do, without spinning:
 * a probe, then a sleep of 20 us (timer slack 1 us), until one is there. */
static void recv_sleeping(uint64_t *x, int from)
{
    int flag = 0;
    for (;;) {
        MPI_Iprobe(from, TAG_WORK, MPI_COMM_WORLD, &flag, MPI_STATUS_IGNORE);
        if (flag)
            break;
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
    MPI_Recv(x, 1, MPI_UINT64_T, from, TAG_WORK, MPI_COMM_WORLD,
             MPI_STATUS_IGNORE);
}

/* The floor of a call's round trip over MPI for a design that does not
 * spin: the ping-pong above waiting as the relays do, and with `child`,
 * rank 1 passing each message through a pipe to a child process and back,
 * as to a worker.  Seconds per round trip. */
static double ping_pong_sleeping(int rank, bool child)
{
    prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
    int to[2] = {-1, -1}, from[2] = {-1, -1};
    pid_t pid = -1;
    if (rank == 1 && child && pipe(to) == 0 && pipe(from) == 0 &&
        (pid = fork()) == 0) {
        close(to[1]);
        close(from[0]);
        uint64_t x;
        while (read(to[0], &x, sizeof x) == sizeof x &&
               write(from[1], &x, sizeof x) == sizeof x)
            ;
        _exit(0);
    }
    uint64_t x = 0;
    double t = now();
    for (int i = 0; i < PINGS; i++) {
        if (rank == 0) {
            MPI_Send(&x, 1, MPI_UINT64_T, 1, TAG_WORK, MPI_COMM_WORLD);
            recv_sleeping(&x, 1);
        } else if (rank == 1) {
            recv_sleeping(&x, 0);
            if (pid > 0 && (write(to[1], &x, sizeof x) != sizeof x ||
                            read(from[0], &x, sizeof x) != sizeof x))
                exit(1);
            MPI_Send(&x, 1, MPI_UINT64_T, 0, TAG_WORK, MPI_COMM_WORLD);
        }
    }
    t = (now() - t) / PINGS;
    if (pid > 0) {
        close(to[1]);
        waitpid(pid, NULL, 0);
    }
    for (int i = 0; i < 2; i++) {
        if (to[i] >= 0)
            close(to[i]);
        if (from[i] >= 0)
            close(from[i]);
    }
    return t;
}

/* ---- libpmap --------------------------------------------------------------- */

static double pool_w2(pool_t *pool)
{
    double t = now();
    if (pool_map(pool, spin, W2_N, out, keys) != 0)
        exit(1);
    return now() - t;
}

static double pool_w3(pool_t *pool)
{
    double t = now();
    if (pool_map(pool, fnv, W3_N, sums, bufs) != 0)
        exit(1);
    return now() - t;
}

/* The fields of /proc/pid/stat after the command's name (which may hold
 * spaces), read into line; NULL if they cannot be had. */
static const char *proc_stat(long pid, char *line, size_t size)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    size_t n = fread(line, 1, size - 1, f);
    fclose(f);
    line[n] = '\0';
    const char *p = strrchr(line, ')');
    return p != NULL && p[1] == ' ' ? p + 2 : NULL;
}

/* CPU seconds of process pid (utime + stime from /proc), or -1. */
static double proc_cpu(long pid)
{
    char line[1024];
    const char *p = proc_stat(pid, line, sizeof line);
    unsigned long ut = 0, st = 0;
    if (p == NULL || sscanf(p, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u "
                               "%*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static long proc_ppid(long pid)
{
    char line[1024];
    const char *p = proc_stat(pid, line, sizeof line);
    long ppid = -1;
    if (p == NULL || sscanf(p, "%*c %ld", &ppid) != 1)
        return -1;
    return ppid;
}

int main(int argc, char **argv)
{
    int level, rank, size;
    bool quick = argc > 1 && strcmp(argv[1], "--round-trip") == 0;
    if (getenv("BENCH_REPS") && atoi(getenv("BENCH_REPS")) >= 1 && atoi(getenv("BENCH_REPS")) <= REPS_MAX)
        REPS = atoi(getenv("BENCH_REPS"));
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &level);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    for (size_t i = 0; i < W2_N; i++)
        keys[i] = i;
    for (size_t i = 0; i < W3_N && rank == 0; i++) {
        raw[i] = malloc(W3_SIZE);
        for (size_t j = 0; j < W3_SIZE; j++)
            raw[i][j] = (unsigned char)(i * 131 + j * 7);
        raw[i][0] = (unsigned char)i;   /* the hand loop's index */
        raw[i][1] = (unsigned char)(i >> 8);
        bufs[i] = (pmap_bytes_t){raw[i], W3_SIZE};
    }
    double hand2[REPS_MAX], hand3[REPS_MAX], ping = 0;
    if (rank == 0) {
        for (int r = 0; r < REPS && !quick; r++) {
            hand2[r] = hand_master(size, false);
            hand3[r] = hand_master(size, true);
        }
        for (int r = 1; r < size; r++)
            MPI_Send(NULL, 0, MPI_BYTE, r, TAG_STOP, MPI_COMM_WORLD);
    } else {
        hand_worker();
    }
    ping = ping_pong(rank);
    double sleeping = ping_pong_sleeping(rank, false);
    double via_child = ping_pong_sleeping(rank, true);
    if (pmap_mpi_init(&argc, &argv) != 0) {     /* ranks > 0 serve */
        fprintf(stderr, "bench-mpi: %s\n", pmap_mpi_message());
        return 1;
    }
    printf("bench-mpi: %d ranks (rank 0 drives; %d remote workers), Open MPI "
           "over --mca btl tcp,self, %ld CPUs here\n",
           size, pmap_mpi_workers(), sysconf(_SC_NPROCESSORS_ONLN));

    double serial[REPS_MAX], local2[REPS_MAX], local3[REPS_MAX], mpi2[REPS_MAX], mpi3[REPS_MAX];
    for (int r = 0; r < REPS && !quick; r++) {
        double t = now();
        for (size_t i = 0; i < W2_N; i++)
            out[i] = w_spin(keys[i], W2_ITERATIONS);
        serial[r] = now() - t;
    }
    pool_t *local = pool_create(2);
    for (int r = 0; r < REPS && !quick; r++) {
        local2[r] = pool_w2(local);
        local3[r] = pool_w3(local);
    }
    pool_destroy(local);
    pool_t *pool = NULL;
    pool_options_t po = {.start = PMAP_START_MPI};
    if (pool_create_with(&pool, &po) != 0)
        return 1;
    for (int r = 0; r < REPS && !quick; r++) {
        mpi2[r] = pool_w2(pool);
        mpi3[r] = pool_w3(pool);
    }
    /* One call's round trip. */
    uint64_t y = 0;
    pool_call(pool, echo, &y, 1);
    double t = now();
    for (int i = 0; i < PINGS; i++)
        pool_call(pool, echo, &y, (uint64_t)i);
    double call = (now() - t) / PINGS;

    /* Idle: CPU of rank 0 (its relay) and of one serving rank (its relay:
     * the parent of a worker, when it runs on this machine). */
    pmap_worker_stats_t ws;
    pool_worker_stats(pool, 0, &ws);
    long server = proc_ppid(ws.pid);
    double c0 = cpu_now(), s0 = proc_cpu(server), w0 = now();
    sleep(2);
    double idle_wall = now() - w0;
    double idle0 = (cpu_now() - c0) / idle_wall * 100;
    double idle1 = s0 >= 0 && proc_cpu(server) >= 0
                       ? (proc_cpu(server) - s0) / idle_wall * 100 : -1;
    pool_destroy(pool);

    if (quick) {
        printf("ping-pong %.1f us (sleeping %.1f us, through a child %.1f "
               "us), pool_call %.1f us, idle %.2f%% / %.2f%%\n", ping * 1e6,
               sleeping * 1e6, via_child * 1e6, call * 1e6, idle0, idle1);
        return 0;
    }
    double s = median(serial, REPS), l2 = median(local2, REPS),
           m2 = median(mpi2, REPS), h2 = median(hand2, REPS);
    double mb = (double)W3_N * W3_SIZE / 1e6;
    double l3 = mb / median(local3, REPS), m3 = mb / median(mpi3, REPS),
           h3 = mb / median(hand3, REPS);
    printf("\nW2  %d items of ~1 ms of CPU: seconds (median of %d)\n", W2_N,
           REPS);
    printf("  serial C                              %8.3f\n", s);
    printf("  libpmap, local pool of 2 workers      %8.3f  speedup %.2f\n", l2,
           s / l2);
    printf("  hand-written MPI master/worker loop   %8.3f  speedup %.2f\n", h2,
           s / h2);
    printf("  libpmap over MPI, 2 remote workers    %8.3f  speedup %.2f; "
           "%.2fx the local pool's, %.2fx the hand loop's\n",
           m2, s / m2, l2 / m2, h2 / m2);
    printf("\nW3  %d buffers of 1 MiB, FNV-1a of each: MB/s (median of %d)\n",
           W3_N, REPS);
    printf("  libpmap, local pool of 2 workers      %8.0f\n", l3);
    printf("  hand-written MPI master/worker loop   %8.0f\n", h3);
    printf("  libpmap over MPI, 2 remote workers    %8.0f  %.2fx the local "
           "pool's, %.2fx the hand loop's\n", m3, m3 / l3, m3 / h3);
    printf("\nRound trip of one call (%d calls)\n", PINGS);
    printf("  raw MPI ping-pong, 8 bytes            %8.1f us\n", ping * 1e6);
    printf("  the same, waiting without spinning    %8.1f us  (probe, "
           "sleep 20 us)\n", sleeping * 1e6);
    printf("  ...and through a child of rank 1      %8.1f us  (a pipe each "
           "way, as to a worker)\n", via_child * 1e6);
    printf("  pool_call over MPI                    %8.1f us  %.2fx the "
           "ping-pong, %.2fx the one through a child\n", call * 1e6,
           call / ping, call / via_child);
    printf("\nIdle (a pool over MPI, no map, %.1f s)\n", idle_wall);
    printf("  rank 0 (its relay thread)             %8.2f %% of a CPU\n",
           idle0);
    if (idle1 >= 0)
        printf("  a serving rank (its relay)            %8.2f %% of a CPU\n",
               idle1);
    return 0;
}
