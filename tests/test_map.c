/* SPDX-License-Identifier: MIT */
/*
 * test_map.c - what pool_map computes: several arguments, constants,
 * methods, strings and buffers both ways, large inputs and results, results
 * in input order, batching, and workers that persist across maps.
 */
#include "test.h"

#include <pmap.h>
#include <signal.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

static int add(int x, int y)
{
    return x + y;
}
PMAP_EXPORT(add, int, int, int);

TEST(map_two_arrays)
{
    int xs[10], ys[10], out[10];
    for (int i = 0; i < 10; i++)
        xs[i] = ys[i] = i;
    pool_t *pool = pool_create(4);
    ASSERT(pool != NULL);
    ASSERT_OK(pool_map(pool, add, 10, out, xs, ys));
    for (int i = 0; i < 10; i++)
        ASSERT_EQ(out[i], 2 * i);
    pool_destroy(pool);
}

TEST(map_constant)
{
    int xs[10], out[10];
    for (int i = 0; i < 10; i++)
        xs[i] = i;
    pool_t *pool = pool_create(6);
    ASSERT_OK(pool_map(pool, add, 10, out, xs, PMAP_CONST(1)));
    for (int i = 0; i < 10; i++)
        ASSERT_EQ(out[i], i + 1);
    /* The constant may be in any position, and both may be constants. */
    ASSERT_OK(pool_map(pool, add, 10, out, PMAP_CONST(100), xs));
    for (int i = 0; i < 10; i++)
        ASSERT_EQ(out[i], i + 100);
    ASSERT_OK(pool_map(pool, add, 10, out, PMAP_CONST(3), PMAP_CONST(4)));
    for (int i = 0; i < 10; i++)
        ASSERT_EQ(out[i], 7);
    pool_destroy(pool);
}

struct model {
    int power;
    int offset;
    char name[40];
};

static long apply(const struct model *self, int x)
{
    long r = 1;
    for (int i = 0; i < self->power; i++)
        r *= x;
    return r + self->offset + (long)strlen(self->name);
}
PMAP_EXPORT_METHOD(apply, long, struct model, int);

TEST(map_method_state_after_create)
{
    pool_t *pool = pool_create(3);
    struct model m = {2, 0, ""};    /* state set after pool_create */
    int xs[10];
    long out[10];
    for (int i = 0; i < 10; i++)
        xs[i] = i;
    ASSERT_OK(pool_map(pool, apply, 10, out, &m, xs));
    for (int i = 0; i < 10; i++)
        ASSERT_EQ(out[i], i * i);
    /* Changed between maps: each map ships the object again. */
    m.power = 3;
    m.offset = 1000;
    strcpy(m.name, "abc");
    ASSERT_OK(pool_map(pool, apply, 10, out, &m, xs));
    for (int i = 0; i < 10; i++)
        ASSERT_EQ(out[i], i * i * i + 1003);
    /* The object may also be given by value. */
    ASSERT_OK(pool_map(pool, apply, 10, out, PMAP_CONST(m), xs));
    ASSERT_EQ(out[9], 729 + 1003);
    pool_destroy(pool);
}

struct point {
    double x, y;
};

static double mix8(char a, short b, int c, long d, float e, double f,
                   unsigned g, struct point h)
{
    return a + b + c + (double)d + e + f + g + h.x * h.y;
}
PMAP_EXPORT(mix8, double, char, short, int, long, float, double, unsigned,
            struct point);

TEST(map_eight_mixed_arguments)
{
    enum { N = 1000 };
    static char a[N];
    static short b[N];
    static int c[N];
    static long d[N];
    static float e[N];
    static double f[N], out[N];
    static unsigned g[N];
    static struct point h[N];
    for (int i = 0; i < N; i++) {
        a[i] = (char)(i % 100);
        b[i] = (short)(i * 3);
        c[i] = -i;
        d[i] = (long)i * 100000;
        e[i] = (float)i / 4;
        f[i] = i * 0.5;
        g[i] = (unsigned)i * 7;
        h[i] = (struct point){i, 2};
    }
    pool_t *pool = pool_create(2);
    ASSERT_OK(pool_map(pool, mix8, N, out, a, b, c, d, e, f, g, h));
    for (int i = 0; i < N; i++)
        ASSERT(out[i] == mix8(a[i], b[i], c[i], d[i], e[i], f[i], g[i], h[i]));
    pool_destroy(pool);
}

static long sum16(long a, long b, long c, long d, long e, long f, long g,
                  long h, long i, long j, long k, long l, long m, long n,
                  long o, long p)
{
    return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + 7 * g + 8 * h +
           9 * i + 10 * j + 11 * k + 12 * l + 13 * m + 14 * n + 15 * o +
           16 * p;
}
PMAP_EXPORT(sum16, long, long, long, long, long, long, long, long, long,
            long, long, long, long, long, long, long, long);

TEST(map_sixteen_arguments)
{
    long v[100], out[100];
    for (int i = 0; i < 100; i++)
        v[i] = i;
    pool_t *pool = pool_create(2);
    ASSERT_OK(pool_map(pool, sum16, 100, out, v, v, v, v, v, v, v, v, v, v,
                       v, v, v, v, v, PMAP_CONST(1000)));
    for (int i = 0; i < 100; i++)
        ASSERT_EQ(out[i], 120 * i + 16000);
    pool_destroy(pool);
}

static size_t count_words(const char *s)
{
    if (s == NULL)
        return (size_t)-1;
    size_t n = 0;
    for (int in = 0; *s; s++) {
        int space = *s == ' ' || *s == '\n' || *s == '\t';
        n += !space && !in;
        in = !space;
    }
    return n;
}
PMAP_EXPORT(count_words, size_t, const char *);

static char *shout(const char *s, int times)
{
    size_t len = strlen(s);
    char *r = malloc(len * (size_t)times + 1);
    for (int t = 0; t < times; t++)
        for (size_t i = 0; i < len; i++)
            r[t * len + i] = (char)(s[i] >= 'a' && s[i] <= 'z' ? s[i] - 32
                                                               : s[i]);
    r[len * (size_t)times] = '\0';
    return r;
}
PMAP_EXPORT(shout, char *, const char *, int);

static const char *parity(int x)
{
    return x % 2 ? "odd" : "even";
}
PMAP_EXPORT(parity, const char *, int);

TEST(map_strings)
{
    const char *texts[] = {"", "one", "two words", " lots  of   space ",
                           NULL, "a\nb\tc d"};
    size_t words[6];
    pool_t *pool = pool_create(2);
    ASSERT_OK(pool_map(pool, count_words, 6, words, texts));
    ASSERT_EQ(words[0], 0);
    ASSERT_EQ(words[1], 1);
    ASSERT_EQ(words[2], 2);
    ASSERT_EQ(words[3], 3);
    ASSERT_EQ(words[4], (size_t)-1);    /* NULL arrives as NULL */
    ASSERT_EQ(words[5], 4);

    const char *in[] = {"abc", "", "Hello, world"};
    char *out[3];
    ASSERT_OK(pool_map(pool, shout, 3, out, in, PMAP_CONST(2)));
    ASSERT_STR_EQ(out[0], "ABCABC");
    ASSERT_STR_EQ(out[1], "");
    ASSERT_STR_EQ(out[2], "HELLO, WORLDHELLO, WORLD");
    for (int i = 0; i < 3; i++)
        free(out[i]);

    int xs[5] = {0, 1, 2, 3, 4};
    const char *p[5];
    ASSERT_OK(pool_map(pool, parity, 5, p, xs));
    for (int i = 0; i < 5; i++) {
        ASSERT_STR_EQ(p[i], i % 2 ? "odd" : "even");
        free((void *)p[i]);     /* results are the caller's copies */
    }
    pool_destroy(pool);
}

/* A string constant, and strings given as char * (like argv). */
static int starts_with(char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}
PMAP_EXPORT(starts_with, int, char *, const char *);

TEST(map_string_constant_and_argv)
{
    char a[] = "prefix-one", b[] = "other", c[] = "prefix";
    char *argv[] = {a, b, c};
    int out[3];
    pool_t *pool = pool_create(2);
    ASSERT_OK(pool_map(pool, starts_with, 3, out, argv, PMAP_CONST("prefix")));
    ASSERT_EQ(out[0], 1);
    ASSERT_EQ(out[1], 0);
    ASSERT_EQ(out[2], 1);
    pool_destroy(pool);
}

static pmap_bytes_t reverse(pmap_bytes_t in)
{
    pmap_bytes_t r = {malloc(in.size ? in.size : 1), in.size};
    for (size_t i = 0; i < in.size; i++)
        ((unsigned char *)r.data)[i] = ((unsigned char *)in.data)[in.size - 1 - i];
    return r;
}
PMAP_EXPORT(reverse, pmap_bytes_t, pmap_bytes_t);

TEST(map_bytes)
{
    unsigned char b0[] = {1, 2, 3, 0, 5}, b2[] = {9};
    pmap_bytes_t in[4] = {{b0, 5}, {b0, 0}, {b2, 1}, {NULL, 0}};
    pmap_bytes_t out[4];
    pool_t *pool = pool_create(2);
    ASSERT_OK(pool_map(pool, reverse, 4, out, in));
    ASSERT_EQ(out[0].size, 5);
    ASSERT(memcmp(out[0].data, (unsigned char[]){5, 0, 3, 2, 1}, 5) == 0);
    ASSERT_EQ(out[1].size, 0);
    ASSERT_EQ(out[2].size, 1);
    ASSERT_EQ(((unsigned char *)out[2].data)[0], 9);
    ASSERT_EQ(out[3].size, 0);
    for (int i = 0; i < 4; i++)
        free(out[i].data);
    pool_destroy(pool);
}

static uint64_t fnv1a(pmap_bytes_t b)
{
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < b.size; i++)
        h = (h ^ ((unsigned char *)b.data)[i]) * 0x100000001b3u;
    return h;
}
PMAP_EXPORT(fnv1a, uint64_t, pmap_bytes_t);

static pmap_bytes_t make_bytes(size_t size, int seed)
{
    pmap_bytes_t b = {malloc(size), size};
    for (size_t i = 0; i < size; i++)
        ((unsigned char *)b.data)[i] = (unsigned char)(i * 31 + (size_t)seed);
    return b;
}
PMAP_EXPORT(make_bytes, pmap_bytes_t, size_t, int);

TEST(map_inputs_and_results_far_larger_than_a_pipe)
{
    enum { N = 3 };
    size_t sizes[N] = {40u << 20, 1, 24u << 20};    /* 40 MiB, 1 B, 24 MiB */
    pmap_bytes_t in[N];
    uint64_t want[N], got[N];
    for (int i = 0; i < N; i++) {
        in[i] = make_bytes(sizes[i], i);
        want[i] = fnv1a(in[i]);
    }
    pool_t *pool = pool_create(2);
    ASSERT_OK(pool_map(pool, fnv1a, N, got, in));
    for (int i = 0; i < N; i++)
        ASSERT(got[i] == want[i]);

    pmap_bytes_t made[N];
    int seeds[N] = {0, 1, 2};
    ASSERT_OK(pool_map(pool, make_bytes, N, made, sizes, seeds));
    for (int i = 0; i < N; i++) {
        ASSERT_EQ(made[i].size, sizes[i]);
        ASSERT(memcmp(made[i].data, in[i].data, sizes[i]) == 0);
        free(made[i].data);
        free(in[i].data);
    }
    pool_destroy(pool);
}

static char *upper_copy(const char *s)
{
    size_t n = strlen(s);
    char *r = malloc(n + 1);
    for (size_t i = 0; i <= n; i++)
        r[i] = (char)(s[i] >= 'a' && s[i] <= 'z' ? s[i] - 32 : s[i]);
    return r;
}
PMAP_EXPORT(upper_copy, char *, char *);

static pmap_bytes_t copy_bytes(pmap_bytes_t b)
{
    pmap_bytes_t r = {malloc(b.size ? b.size : 1), b.size};
    if (b.size)
        memcpy(r.data, b.data, b.size);
    return r;
}
PMAP_EXPORT(copy_bytes, pmap_bytes_t, pmap_bytes_t);

/* Items around every size the shared arena treats differently: below its
 * threshold, at it, exactly one slot, one byte more, several per slot. */
TEST(map_large_items_through_shared_memory)
{
    NEEDS_PROCESSES("shared memory");
    size_t slot = 4u << 20, sizes[] = {1, 65535, 65536, 65537, slot - 1,
                                       slot, slot + 1, 1u << 20, 1u << 20,
                                       1u << 20, 3u << 20, 100000, 0};
    enum { N = sizeof sizes / sizeof sizes[0] };
    pmap_bytes_t in[N], out[N];
    char *strs[N], *up[N];
    size_t total = 0;
    for (size_t i = 0; i < N; i++) {
        in[i] = make_bytes(sizes[i], (int)i);
        strs[i] = malloc(sizes[i] + 1);
        for (size_t j = 0; j < sizes[i]; j++)
            strs[i][j] = (char)('a' + (i + j) % 26);
        strs[i][sizes[i]] = '\0';
        total += 2 * sizes[i];
    }
    pool_t *pool = pool_create(2);
    for (int round = 0; round < 3; round++) {
        ASSERT_OK(pool_map(pool, copy_bytes, N, out, in));
        for (size_t i = 0; i < N; i++) {
            ASSERT_EQ(out[i].size, sizes[i]);
            ASSERT(memcmp(out[i].data, in[i].data, sizes[i]) == 0);
            free(out[i].data);
        }
        ASSERT_OK(pool_map(pool, upper_copy, N, up, strs));
        for (size_t i = 0; i < N; i++) {
            ASSERT_EQ(strlen(up[i]), sizes[i]);
            for (size_t j = 0; j < sizes[i]; j++)
                ASSERT(up[i][j] == strs[i][j] - 32);
            free(up[i]);
        }
    }
    pmap_stats_t st;
    ASSERT_OK(pool_stats(pool, &st, NULL));
    /* Most of those bytes went through shared memory, not the channel. */
    ASSERT(st.bytes_sent + st.bytes_received < total);
    for (size_t i = 0; i < N; i++) {
        free(in[i].data);
        free(strs[i]);
    }
    pool_destroy(pool);
}

static uint64_t last_byte(pmap_bytes_t b)
{
    return b.size ? ((const unsigned char *)b.data)[b.size - 1] : 0;
}
PMAP_EXPORT(last_byte, uint64_t, pmap_bytes_t);

/* Quick items of 1 MiB: sized by time alone, a batch would hold a dozen,
 * more than a worker's shared slot, and the rest would go through the
 * channel. */
TEST(map_large_items_batched_to_fit_shared_memory)
{
    NEEDS_PROCESSES("shared memory");
    enum { N = 48 };
    size_t size = 1u << 20;
    pmap_bytes_t in[N];
    uint64_t out[N];
    for (size_t i = 0; i < N; i++)
        in[i] = make_bytes(size, (int)i);
    pool_t *pool = pool_create(2);
    for (int round = 0; round < 3; round++) {
        ASSERT_OK(pool_map(pool, last_byte, N, out, in));
        for (size_t i = 0; i < N; i++)
            ASSERT_EQ(out[i], ((const unsigned char *)in[i].data)[size - 1]);
        pmap_stats_t st;
        ASSERT_OK(pool_stats(pool, &st, NULL));
        ASSERT(st.bytes_sent < size);   /* not one buffer by the channel */
    }
    for (size_t i = 0; i < N; i++)
        free(in[i].data);
    pool_destroy(pool);
}

static size_t length_plus(const char *s, int k)
{
    return strlen(s) + (size_t)k;
}
PMAP_EXPORT(length_plus, size_t, const char *, int);

TEST(map_large_string_constant)
{
    size_t size = 20u << 20;
    char *big = malloc(size + 1);
    memset(big, 'x', size);
    big[size] = '\0';
    int ks[100];
    size_t out[100];
    for (int i = 0; i < 100; i++)
        ks[i] = i;
    pool_t *pool = pool_create(2);
    ASSERT_OK(pool_map(pool, length_plus, 100, out, PMAP_CONST(big), ks));
    for (int i = 0; i < 100; i++)
        ASSERT_EQ(out[i], size + (size_t)i);
    pmap_stats_t st;
    ASSERT_OK(pool_stats(pool, &st, NULL));
    /* Sent once per worker, not once per item. */
    ASSERT(st.bytes_sent < 3 * size);
    free(big);
    pool_destroy(pool);
}

struct stamp {
    int index;
    long pid;
    int64_t done_ns;
};

/* Item 0 of every 4 is slow, so later items finish first. */
static struct stamp slow_first(int i)
{
    if (i % 4 == 0) {
        struct timespec d = {0, 30000000};
        nanosleep(&d, NULL);
    }
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (struct stamp){i, (long)getpid(),
                          (int64_t)now.tv_sec * 1000000000 + now.tv_nsec};
}
PMAP_EXPORT(slow_first, struct stamp, int);

TEST(map_results_in_input_order_when_workers_finish_out_of_order)
{
    NEEDS_PROCESSES("several workers finishing out of order");
    enum { N = 24 };
    int xs[N];
    struct stamp out[N];
    for (int i = 0; i < N; i++)
        xs[i] = i;
    pool_t *pool = pool_create(4);
    pool_map_options_t one = {.chunk = 1};
    ASSERT_OK(pool_map_with(pool, &one, slow_first, N, out, xs));
    int inversions = 0;
    for (int i = 0; i < N; i++) {
        ASSERT_EQ(out[i].index, i);
        for (int j = i + 1; j < N; j++)
            inversions += out[j].done_ns < out[i].done_ns;
    }
    ASSERT(inversions > 0);     /* they did finish out of order */
    pool_destroy(pool);
}

static long identity_pid(int x)
{
    (void)x;
    return (long)getpid();
}
PMAP_EXPORT(identity_pid, long, int);

TEST(map_workers_persist_across_maps_and_functions)
{
    NEEDS_PROCESSES("worker pids");
    pool_t *pool = pool_create(2);
    int xs[64];
    long pids[64], again[64];
    int sums[64];
    for (int i = 0; i < 64; i++)
        xs[i] = i;
    pool_map_options_t one = {.chunk = 1};
    ASSERT_OK(pool_map_with(pool, &one, identity_pid, 64, pids, xs));
    ASSERT_OK(pool_map(pool, add, 64, sums, xs, xs));
    ASSERT_OK(pool_map_with(pool, &one, identity_pid, 64, again, xs));
    for (int i = 0; i < 64; i++) {
        ASSERT(pids[i] != (long)getpid());
        ASSERT_EQ(sums[i], 2 * i);
        int known = 0;
        for (int j = 0; j < 64; j++)
            known |= again[i] == pids[j];
        ASSERT(known);      /* no new process served the third map */
    }
    pmap_stats_t total;
    ASSERT_OK(pool_stats(pool, NULL, &total));
    ASSERT_EQ(total.maps, 3);
    ASSERT_EQ(total.restarts, 0);
    pool_destroy(pool);
}

/* x < 0: the worker dies on it (SIGKILL). */
static long pid_or_die(int x)
{
    if (x < 0)
        kill(getpid(), SIGKILL);
    return (long)getpid();
}
PMAP_EXPORT(pid_or_die, long, int);

/*
 * A map of arrays gives each worker a contiguous share of the items and
 * sends it the front of its share first (README, "Scheduling a map"): the
 * first item of each share goes to its own worker, and to the same one in
 * the next map over the same items, whatever the timing.  When the owner of
 * a share dies on its first item, that item alone fails, and the rest of
 * its share is run by its replacement or taken by the others.  (With one
 * cursor, items 1000, 2000 and 3000 go to whichever worker is free: four
 * distinct workers about one time in ten.)
 */
TEST(map_each_worker_starts_on_its_own_share_in_every_map)
{
    NEEDS_PROCESSES("worker pids");
    enum { N = 4000, W = 4, SHARE = N / W };
    pool_t *pool = pool_create(W);
    int *xs = malloc(N * sizeof *xs);
    long *pids = malloc(N * sizeof *pids), *again = malloc(N * sizeof *again);
    for (int i = 0; i < N; i++)
        xs[i] = i;
    ASSERT_OK(pool_map(pool, pid_or_die, N, pids, xs));
    ASSERT_OK(pool_map(pool, pid_or_die, N, again, xs));
    for (int w = 0; w < W; w++) {
        ASSERT_EQ(again[w * SHARE], pids[w * SHARE]);
        for (int v = 0; v < w; v++)
            ASSERT(pids[v * SHARE] != pids[w * SHARE]);
    }
    xs[2 * SHARE] = -1;
    ASSERT_EQ(pool_map(pool, pid_or_die, N, again, xs), 1);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), 1);
    ASSERT_EQ(f[0].index, 2 * SHARE);
    ASSERT_EQ(f[0].error, PMAP_ECRASH);
    ASSERT_EQ(f[0].pid, pids[2 * SHARE]);
    for (int i = 0; i < N; i++)
        ASSERT(i == 2 * SHARE || (again[i] > 0 && again[i] != (long)getpid()));
    free(xs);
    free(pids);
    free(again);
    pool_destroy(pool);
}

TEST(map_a_million_items_in_few_batches)
{
    enum { N = 1000000 };
    int *xs = malloc(N * sizeof *xs), *out = malloc(N * sizeof *out);
    for (int i = 0; i < N; i++)
        xs[i] = i;
    pool_t *pool = pool_create(2);
    ASSERT_OK(pool_map(pool, add, N, out, xs, xs));
    long long sum = 0;
    for (int i = 0; i < N; i++)
        sum += out[i];
    ASSERT_EQ(sum, (long long)N * (N - 1));
    pmap_stats_t st;
    ASSERT_OK(pool_stats(pool, &st, NULL));
    ASSERT_EQ(st.items, N);
    ASSERT(st.batches < 1000);  /* batched, not one round trip per item */
    free(xs);
    free(out);
    pool_destroy(pool);
}

TEST(map_fixed_chunk_size)
{
    int xs[100], out[100];
    for (int i = 0; i < 100; i++)
        xs[i] = i;
    pool_t *pool;
    pool_options_t opts = {.workers = 2, .chunk = 10};
    ASSERT_OK(pool_create_with(&pool, &opts));
    ASSERT_OK(pool_map(pool, add, 100, out, xs, xs));
    pmap_stats_t st;
    ASSERT_OK(pool_stats(pool, &st, NULL));
    ASSERT_EQ(st.batches, 10);
    pool_map_options_t one = {.chunk = 1};
    ASSERT_OK(pool_map_with(pool, &one, add, 100, out, xs, xs));
    ASSERT_OK(pool_stats(pool, &st, NULL));
    ASSERT_EQ(st.batches, 100);
    for (int i = 0; i < 100; i++)
        ASSERT_EQ(out[i], 2 * i);
    pool_destroy(pool);
}

/*
 * Shares and steals never cut a fixed chunk: every batch is `chunk` items
 * but the one that ends the map, so a map of n items takes exactly
 * ceil(n / chunk) batches, whatever the pool's size, the remainder and the
 * steals; and every item runs once.
 */
TEST(map_fixed_chunk_kept_by_every_worker_share)
{
    static const struct { int workers, n, chunk; } cases[] = {
        {3, 1001, 7}, {5, 37, 4}, {8, 1000, 3}, {4, 64, 16}, {2, 5, 2},
    };
    int xs[1001], out[1001];
    for (int i = 0; i < 1001; i++)
        xs[i] = i;
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        pool_t *pool = pool_create(cases[c].workers);
        ASSERT(pool != NULL);
        int n = cases[c].n, chunk = cases[c].chunk;
        for (int rep = 0; rep < 3; rep++) {
            pool_map_options_t o = {.chunk = (size_t)chunk};
            for (int i = 0; i < n; i++)
                out[i] = -1;
            ASSERT_OK(pool_map_with(pool, &o, add, (size_t)n, out, xs, xs));
            for (int i = 0; i < n; i++)
                ASSERT_EQ(out[i], 2 * i);
            pmap_stats_t st;
            ASSERT_OK(pool_stats(pool, &st, NULL));
            ASSERT_EQ(st.batches, (uint64_t)((n + chunk - 1) / chunk));
            ASSERT_EQ(st.items, (uint64_t)n);
        }
        pool_destroy(pool);
    }
}

TEST(map_more_workers_than_items)
{
    NEEDS_PROCESSES("several workers");
    int xs[3] = {1, 2, 3}, out[3];
    pool_t *pool = pool_create(8);
    ASSERT_EQ(pool_size(pool), 8);
    ASSERT_OK(pool_map(pool, add, 3, out, xs, PMAP_CONST(10)));
    ASSERT_EQ(out[0], 11);
    ASSERT_EQ(out[2], 13);
    ASSERT_OK(pool_map(pool, add, 1, out, xs, xs));
    ASSERT_EQ(out[0], 2);
    pool_destroy(pool);
}

TEST(map_default_size_is_the_cpu_count)
{
    pool_t *pool = pool_create(0);
    ASSERT(pool != NULL);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    ASSERT(pool_size(pool) >= 1 && pool_size(pool) <= cpus);
    pool_destroy(pool);
}

TEST(map_many_maps_on_one_pool)
{
    pool_t *pool = pool_create(2);
    int xs[7] = {1, 2, 3, 4, 5, 6, 7}, out[7];
    for (int m = 0; m < 2000; m++) {
        ASSERT_OK(pool_map(pool, add, 7, out, xs, PMAP_CONST(m)));
        ASSERT_EQ(out[6], 7 + m);
    }
    pool_destroy(pool);
}
