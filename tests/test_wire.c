/* SPDX-License-Identifier: MIT */
/*
 * test_wire.c - the frame format alone (white box): headers and columns
 * survive a round trip, and every malformed or truncated input is refused
 * with PMAP_EPROTO instead of being read past its end.  And the pipes that
 * carry the frames grow when first needed.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE     /* F_GETPIPE_SZ */
#endif

#include "test.h"

#include "pmap_internal.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

TEST(wire_header_round_trip)
{
    unsigned char b[PMAP__HEADER_SIZE];
    pmap__header_t h = {PMAP__RESULT, 77, 4096}, back;
    pmap__header_encode(b, &h);
    ASSERT_OK(pmap__header_decode(b, &back));
    ASSERT_EQ(back.type, PMAP__RESULT);
    ASSERT_EQ(back.map, 77);
    ASSERT_EQ(back.length, 4096);
}

TEST(wire_header_rejects_garbage)
{
    unsigned char b[PMAP__HEADER_SIZE], bad[PMAP__HEADER_SIZE];
    pmap__header_t h = {PMAP__TASK, 1, 32}, back;
    pmap__header_encode(b, &h);
    for (int i = 0; i < PMAP__HEADER_SIZE; i++) {
        if (i >= 8 && i < 12)
            continue;   /* the map id may be anything */
        if (i >= 16 && i < 24)
            continue;   /* the length: checked below */
        memcpy(bad, b, sizeof b);
        bad[i] ^= 0x40;
        ASSERT_EQ(pmap__header_decode(bad, &back), PMAP_EPROTO);
    }
    h.length = 33;      /* not padded */
    pmap__header_encode(b, &h);
    ASSERT_EQ(pmap__header_decode(b, &back), PMAP_EPROTO);
    h.length = UINT64_MAX - 15;
    pmap__header_encode(b, &h);
    ASSERT_EQ(pmap__header_decode(b, &back), PMAP_EPROTO);
    h = (pmap__header_t){99, 1, 0};
    pmap__header_encode(b, &h);
    ASSERT_EQ(pmap__header_decode(b, &back), PMAP_EPROTO);
}

/* Encodes a column into contiguous bytes. */
static size_t flatten(pmap__outq_t *q, unsigned char *out, size_t size)
{
    struct iovec iov[64];
    int n = pmap__outq_iov(q, iov, 64);
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        ASSERT(len + iov[i].iov_len <= size);
        memcpy(out + len, iov[i].iov_base, iov[i].iov_len);
        len += iov[i].iov_len;
    }
    return len;
}

TEST(wire_string_column_round_trip)
{
    const char *in[4] = {"alpha", "", NULL, "a longer string here"};
    pmap__type_t t = {.kind = PMAP__STRING, .size = sizeof(char *)};
    pmap__outq_t q = {0};
    pmap__column_encode(&q, t, (const unsigned char *)in, sizeof in[0], 4,
                        NULL);
    static unsigned char flat[4096] __attribute__((aligned(16)));
    size_t len = flatten(&q, flat, sizeof flat);
    ASSERT_EQ(len % PMAP__ALIGN, 0);
    const char *scratch[4];
    pmap__column_t col;
    size_t used;
    ASSERT_OK(pmap__column_decode(flat, len, t, 4, scratch, &col, &used, NULL));
    ASSERT_EQ(used, len);
    for (int i = 0; i < 4; i++) {
        const char *s = *(const char *const *)(col.base + i * col.stride);
        if (in[i] == NULL)
            ASSERT(s == NULL);
        else
            ASSERT_STR_EQ(s, in[i]);
    }
    /* Every truncation is refused. */
    for (size_t cut = 0; cut < len; cut++)
        ASSERT(pmap__column_decode(flat, cut, t, 4, scratch, &col, &used, NULL) ==
                   PMAP_EPROTO ||
               used <= cut);
    /* A string without its NUL is refused. */
    flat[32] = 'x', flat[32 + 5] = 'y';
    ASSERT_EQ(pmap__column_decode(flat, len, t, 4, scratch, &col, &used, NULL),
              PMAP_EPROTO);
    /* A length beyond the frame is refused. */
    uint64_t huge = UINT64_MAX - 1;
    memcpy(flat, &huge, sizeof huge);
    ASSERT_EQ(pmap__column_decode(flat, len, t, 4, scratch, &col, &used, NULL),
              PMAP_EPROTO);
    pmap__outq_free(&q);
}

TEST(wire_value_column_limits)
{
    static unsigned char buf[64] __attribute__((aligned(16)));
    pmap__type_t t = {.kind = PMAP__VALUE, .size = 8};
    pmap__column_t col;
    size_t used;
    ASSERT_OK(pmap__column_decode(buf, 64, t, 8, NULL, &col, &used, NULL));
    ASSERT_EQ(pmap__column_decode(buf, 64, t, 9, NULL, &col, &used, NULL),
              PMAP_EPROTO);
    ASSERT_EQ(pmap__column_decode(buf, 64, t, SIZE_MAX / 4, NULL, &col, &used, NULL),
              PMAP_EPROTO);
}

/* A column of values in a shared region is a record, offset | bytes, that
 * must lie in the region, aligned, and hold exactly the column. */
TEST(wire_shared_value_column_limits)
{
    static unsigned char room[1 << 16] __attribute__((aligned(16)));
    pmap__region_t region = {.base = room, .size = sizeof room};
    pmap__type_t t = {.kind = PMAP__VALUE, .size = sizeof(int)};
    enum { N = (int)(PMAP__VALUES_SHARED_MIN / sizeof(int)) };
    static int values[N];
    for (int i = 0; i < N; i++)
        values[i] = 3 * i;
    pmap__outq_t q = {0};
    ASSERT(!pmap__column_share(&q, t, (const unsigned char *)values, N - 1,
                               &region));   /* too small */
    ASSERT(pmap__column_share(&q, t, (const unsigned char *)values, N,
                              &region));
    ASSERT_EQ(region.used, sizeof values);
    static unsigned char flat[64] __attribute__((aligned(16)));
    ASSERT_EQ(flatten(&q, flat, sizeof flat), 16);
    pmap__column_t col;
    size_t used;
    ASSERT_OK(pmap__column_shared_decode(flat, 16, t, N, &region, &col,
                                         &used));
    ASSERT_EQ(used, 16);
    ASSERT(col.base == room);
    ASSERT_EQ(memcmp(col.base, values, sizeof values), 0);
    static const struct {
        uint64_t offset, bytes;
        size_t count;
    } bad[] = {
        {0, sizeof values, N + 1},          /* not the column's size */
        {8, sizeof values, N},              /* not aligned */
        {sizeof room, 16, 4},               /* past the region */
        {sizeof room - 16, 32, 8},          /* runs past it */
        {UINT64_MAX - 15, 16, 4},           /* wraps */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        uint64_t record[2] = {bad[i].offset, bad[i].bytes};
        ASSERT_EQ(pmap__column_shared_decode((unsigned char *)record, 16, t,
                                             bad[i].count, &region, &col,
                                             &used),
                  PMAP_EPROTO);
    }
    ASSERT_EQ(pmap__column_shared_decode(flat, 8, t, N, &region, &col, &used),
              PMAP_EPROTO);                 /* truncated */
    ASSERT_EQ(pmap__column_shared_decode(flat, 16, t, N, NULL, &col, &used),
              PMAP_EPROTO);                 /* no region: remote */
    pmap__type_t s = {.kind = PMAP__STRING, .size = sizeof(char *)};
    ASSERT_EQ(pmap__column_shared_decode(flat, 16, s, N, &region, &col,
                                         &used),
              PMAP_EPROTO);                 /* only fixed-size values */
    pmap__outq_free(&q);
}

/* A RESULT says where its column is: in the frame, or in the batch's
 * result region, which only a column of fixed-size values may be, and
 * then only one as large as the worker puts there, and that fits. */
TEST(wire_result_column_in_the_region)
{
    static unsigned char room[1 << 16] __attribute__((aligned(16)));
    pmap__region_t region = {.base = room, .size = sizeof room};
    pmap__type_t t = {.kind = PMAP__VALUE, .size = sizeof(int)};
    pmap__type_t s = {.kind = PMAP__STRING, .size = sizeof(char *)};
    enum { LEAST = (int)(PMAP__VALUES_SHARED_MIN / sizeof(int)),
           MOST = (int)(sizeof room / sizeof(int)) };
    static const struct {
        uint64_t count, where, reserved;
        bool strings, ok;
    } cases[] = {
        {LEAST, PMAP__COLUMN_IN_REGION, 0, false, true},
        {MOST, PMAP__COLUMN_IN_REGION, 0, false, true},     /* just fits */
        {MOST + 1, PMAP__COLUMN_IN_REGION, 0, false, false},
        {LEAST - 1, PMAP__COLUMN_IN_REGION, 0, false, false},   /* small */
        {LEAST, PMAP__COLUMN_IN_REGION, 0, true, false},
        {LEAST, 2, 0, false, false},
        {LEAST, PMAP__COLUMN_IN_REGION, 1, false, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint64_t p[6] = {0, cases[i].count, 0, 0, cases[i].where,
                         cases[i].reserved};
        pmap__result_t r;
        int rc = pmap__result_decode((unsigned char *)p, sizeof p,
                                     cases[i].strings ? s : t, 0,
                                     cases[i].count, false, NULL, &r,
                                     &region);
        ASSERT_EQ(rc, cases[i].ok ? 0 : PMAP_EPROTO);
        if (cases[i].ok)
            ASSERT(r.column.base == room && r.in_region);
    }
    uint64_t p[6] = {0, LEAST, 0, 0, PMAP__COLUMN_IN_REGION, 0};
    pmap__result_t r;
    ASSERT_EQ(pmap__result_decode((unsigned char *)p, sizeof p, t, 0, LEAST,
                                  false, NULL, &r, NULL),
              PMAP_EPROTO);                 /* no region */
    uint64_t none[6] = {0, 0, 0, 0, PMAP__COLUMN_IN_FRAME, 0};
    ASSERT_EQ(pmap__result_decode((unsigned char *)none, sizeof none, t, 0, 0,
                                  false, NULL, &r, &region),
              0);                           /* in the frame: empty */
    ASSERT(!r.in_region);
}

static int tenth_fails(int x, int y)
{
    if (x == 70001)
        abort();        /* once: the item is not run again */
    if (x % 1000 == 0)
        pmap_fail(x, "round: %d", x);
    return x + y;
}
PMAP_EXPORT(tenth_fails, int, int, int);

/* Columns of fixed-size values large enough go through the workers'
 * shared regions, both ways, with failures and a crash among them, and
 * both workers killed between two maps: every other result is right, with
 * workers forked and from the fork server. */
static void values_through_shared_memory(int start)
{
    enum { M = 100000 };
    int *xs = malloc(M * sizeof *xs), *ys = malloc(M * sizeof *ys);
    int *out = malloc(M * sizeof *out);
    ASSERT(xs != NULL && ys != NULL && out != NULL);
    for (int i = 0; i < M; i++) {
        xs[i] = i;
        ys[i] = 7 * i;
        out[i] = -1;
    }
    pool_t *pool = test_pool((pool_options_t){.workers = 2, .start = start});
    pool_map_options_t big = {.chunk = 8192};  /* 32 KiB columns */
    for (int pass = 0; pass < 2; pass++) {     /* batches of 8192, then any */
        if (pass == 1) {    /* both workers killed between the maps */
            for (int i = 0; i < 2; i++)
                if (pool->workers[i].pid > 0)
                    kill(pool->workers[i].pid, SIGKILL);
            for (int i = 0; i < M; i++)
                out[i] = -1;
        }
        ASSERT_EQ(pool_map_with(pool, pass == 0 ? &big : NULL, tenth_fails, M,
                                out, xs, ys),
                  M / 1000 + 1);
        const pmap_failure_t *f;
        ASSERT_EQ(pool_failures(pool, &f), M / 1000 + 1);
        for (int i = 0, k = 0; i < M; i++) {
            bool failed = i % 1000 == 0 || i == 70001;
            ASSERT_EQ(out[i], failed ? 0 : 8 * i);
            if (failed) {
                ASSERT_EQ(f[k].index, (size_t)i);
                ASSERT_EQ(f[k].error, i == 70001 ? PMAP_ECRASH : PMAP_EFAIL);
                k++;
            }
        }
    }
    pmap_stats_t st;
    ASSERT_OK(pool_stats(pool, NULL, &st));
    /* Most of the 2 x 12 bytes an item moved, both passes, were not in
     * the frames (the small batches at a map's end and around the crash
     * are). */
    ASSERT(st.bytes_sent + st.bytes_received < (uint64_t)M * 12 * 2 / 2);
    test_pool_end(pool, start);
    free(xs);
    free(ys);
    free(out);
}

TEST(wire_values_through_shared_memory_fork)
{
    values_through_shared_memory(PMAP_START_FORK);
}

TEST(wire_values_through_shared_memory_server)
{
    values_through_shared_memory(PMAP_START_SERVER);
}

TEST(wire_reader_takes_frames_split_anywhere)
{
    int p[2];
    ASSERT(pipe(p) == 0);
    pmap__outq_t q = {0};
    for (uint32_t m = 1; m <= 3; m++) {
        size_t f = pmap__outq_begin(&q, PMAP__TASK, m);
        pmap__outq_u64(&q, m * 1000);
        pmap__outq_end(&q, f);
    }
    unsigned char flat[1024];
    size_t len = flatten(&q, flat, sizeof flat);
    pmap__reader_t r = {0};
    int got = 0;
    for (size_t i = 0; i < len; i++) {
        ASSERT(write(p[1], flat + i, 1) == 1);     /* one byte at a time */
        ASSERT(pmap__reader_fill(&r, p[0]) == 1);
        pmap__header_t h;
        const unsigned char *payload;
        int rc;
        while ((rc = pmap__reader_next(&r, &h, &payload)) == 1) {
            got++;
            ASSERT_EQ(h.map, got);
            ASSERT_EQ(pmap__get_u64(payload), got * 1000);
        }
        ASSERT_EQ(rc, 0);
    }
    ASSERT_EQ(got, 3);
    pmap__reader_free(&r);
    pmap__outq_free(&q);
    close(p[0]);
    close(p[1]);
}

/* Lent room (the pool's, kept from children) is used first, outgrown
 * into memory of the buffer's or queue's own with nothing lost, and never
 * freed: freeing it would abort here, it is not malloc's. */
TEST(wire_lent_room_is_outgrown_and_never_freed)
{
    static _Alignas(max_align_t) unsigned char room[PMAP__OUTQ_ROOM + 16];
    pmap__buf_t b = {0};
    pmap__buf_lend(&b, room + PMAP__OUTQ_ROOM, 16);
    ASSERT_OK(pmap__buf_put(&b, "0123456789", 10));
    ASSERT(b.data == room + PMAP__OUTQ_ROOM);
    ASSERT_OK(pmap__buf_put(&b, "abcdefghij", 10));     /* past 16 */
    ASSERT(b.data != room + PMAP__OUTQ_ROOM && !b.lent);
    ASSERT(memcmp(b.data, "0123456789abcdefghij", 20) == 0);
    pmap__buf_free(&b);

    pmap__outq_t q = {0};
    pmap__outq_lend(&q, room);
    ASSERT(q.segs_lent && q.cap == 8);
    static unsigned char payload[20][4096];     /* referenced: a segment
                                                   each, besides the
                                                   copied bytes' */
    for (uint32_t m = 1; m <= 20; m++) {
        memset(payload[m - 1], (int)m, sizeof payload[0]);
        size_t f = pmap__outq_begin(&q, PMAP__TASK, m);
        pmap__outq_u64(&q, m);
        pmap__outq_add(&q, payload[m - 1], sizeof payload[0]);
        pmap__outq_end(&q, f);
    }
    ASSERT_EQ(q.error, 0);
    ASSERT(!q.segs_lent && !q.scratch.lent);    /* > 8 segments, > 256 B */
    static unsigned char flat[20 * (4096 + 64)];
    size_t len = flatten(&q, flat, sizeof flat);
    pmap__reader_t r = {{flat, len, len, true}, 0};
    pmap__header_t h;
    const unsigned char *p;
    for (uint32_t m = 1; m <= 20; m++) {
        ASSERT_EQ(pmap__reader_next(&r, &h, &p), 1);
        ASSERT_EQ(h.map, m);
        ASSERT_EQ(pmap__get_u64(p), m);
        ASSERT(p[8] == m && p[8 + 4095] == m);
    }
    ASSERT_EQ(pmap__reader_next(&r, &h, &p), 0);
    pmap__outq_free(&q);

    pmap__outq_lend(&q, room);      /* freed while still in the room */
    size_t f = pmap__outq_begin(&q, PMAP__END, 1);
    pmap__outq_end(&q, f);
    ASSERT(q.segs_lent && q.scratch.lent);
    pmap__outq_free(&q);
    pmap__buf_lend(&b, room + PMAP__OUTQ_ROOM, 16);
    ASSERT_OK(pmap__buf_put(&b, "0123", 4));
    pmap__buf_free(&b);
}

/* A RESULT whose failure records are out of order (or repeated) is
 * refused: each item fails at most once. */
TEST(wire_result_failures_must_be_in_order)
{
    pmap__type_t t = {.kind = PMAP__VALUE, .size = sizeof(int)};
    int values[4] = {0};
    for (int order = 0; order < 2; order++) {
        pmap__outq_t q = {0};
        pmap__outq_u64(&q, 10);     /* first */
        pmap__outq_u64(&q, 4);      /* count */
        pmap__outq_u64(&q, 0);      /* busy */
        pmap__outq_u64(&q, 2);      /* failures */
        pmap__outq_u64(&q, PMAP__COLUMN_IN_FRAME);
        pmap__outq_u64(&q, 0);
        pmap__column_encode(&q, t, (const unsigned char *)values, sizeof(int),
                            4, NULL);
        uint64_t a[3] = {order ? 12u : 11u, 1, 0}, b[3] = {11, 1, 0};
        pmap__outq_copy(&q, a, sizeof a);
        pmap__outq_pad(&q);
        pmap__outq_copy(&q, b, sizeof b);
        pmap__outq_pad(&q);
        static unsigned char flat[4096] __attribute__((aligned(16)));
        size_t len = flatten(&q, flat, sizeof flat);
        pmap__result_t r;
        /* 11 then 11: repeated; 12 then 11: out of order. */
        ASSERT_EQ(pmap__result_decode(flat, len, t, 10, 4, false, NULL, &r,
                                      NULL),
                  PMAP_EPROTO);
        pmap__outq_free(&q);
    }
}

static long plus_one(long x)
{
    return x + 1;
}
PMAP_EXPORT(plus_one, long, long);

/* The size of a new pipe's buffer, and what asking for PMAP__PIPE_BUFFER
 * gives one here (pipe-max-size and the user's quota may cap it); 0 where
 * pipes cannot say. */
static long pipe_sizes(long *grown)
{
    long fresh = 0;
    *grown = 0;
#ifdef F_GETPIPE_SZ
    int p[2];
    if (pipe(p) < 0)
        return 0;
    fresh = fcntl(p[1], F_GETPIPE_SZ);
    if (fcntl(p[1], F_SETPIPE_SZ, PMAP__PIPE_BUFFER) >= 0)
        *grown = fcntl(p[1], F_GETPIPE_SZ);
    close(p[0]);
    close(p[1]);
#endif
    return fresh;
}

static long pipe_size(int fd)
{
#ifdef F_GETPIPE_SZ
    return fcntl(fd, F_GETPIPE_SZ);
#else
    (void)fd;
    return 0;
#endif
}

/* A channel's pipes keep a new pipe's size while the maps are small, and
 * grow, each by its writer, the first time it has more than that to
 * send: the caller's way out with a large batch, the worker's with its
 * results. */
TEST(wire_pipes_grow_when_first_needed)
{
    long grown, fresh = pipe_sizes(&grown);
    if (fresh <= 0 || grown <= fresh)
        SKIP("pipes cannot be asked for their size or grown here");
    pool_options_t po = {.workers = 1, .start = PMAP_START_FORK};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    /* Columns too large for the worker's shared regions travel in the
     * frames (pmap__column_share). */
    size_t n = (size_t)2 * PMAP__SLOT_SIZE / sizeof(long);
    long *xs = malloc(n * sizeof *xs), *out = malloc(n * sizeof *out);
    ASSERT(xs != NULL && out != NULL);
    for (size_t i = 0; i < n; i++)
        xs[i] = (long)i;
    ASSERT_OK(pool_map(pool, plus_one, 100, out, xs));
    const pmap__worker_t *w = &pool->workers[0];
    ASSERT_EQ(pipe_size(w->ch.out), fresh);
    ASSERT_EQ(pipe_size(w->ch.in), fresh);
    pool_map_options_t one_batch = {.chunk = n};
    ASSERT_OK(pool_map_with(pool, &one_batch, plus_one, n, out, xs));
    for (size_t i = 0; i < n; i++)
        ASSERT_EQ(out[i], (long)i + 1);
    ASSERT_EQ(pipe_size(w->ch.out), grown);
    ASSERT_EQ(pipe_size(w->ch.in), grown);
    pool_destroy(pool);
    free(xs);
    free(out);
}
