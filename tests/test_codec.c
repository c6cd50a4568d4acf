/* SPDX-License-Identifier: MIT */
/*
 * test_codec.c - objects with pointers (PMAP_EXPORT_TYPE): a struct holding
 * a malloc'ed array and a string, made after pool_create, travels deep-copied
 * as an argument, a constant, a method object and a result, small or of
 * several MiB, with workers forked by the caller, by the fork server or
 * run in process; a value that cannot be encoded or decoded fails its item
 * alone (PMAP_ECODEC), or, as a constant or method object, its map; a
 * decoder that kills its worker costs its batch at most three more tries.
 */
#include "test.h"

#include <pmap.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct codec_model {
    size_t n;           /* weights */
    double *weights;    /* malloc'ed */
    char *name;         /* malloc'ed, or NULL */
} codec_model_t;

/* Names that make the codec fail, on the way out or the way in. */
#define NO_ENCODE "no-encode"
#define NO_DECODE "no-decode"
/* ...and a name that makes decoding kill its process, once it has
 * appended a byte to the file named after the prefix. */
#define KILL_DECODE "kill-in-decode:"

/* Models allocated and not yet released, in this process. */
static long live;

static codec_model_t model_new(size_t n, long seed, const char *name)
{
    codec_model_t m = {n, malloc(n ? n * sizeof(double) : 1), NULL};
    for (size_t i = 0; i < n; i++)
        m.weights[i] = (double)((seed + (long)i) % 1000);
    if (name != NULL) {
        m.name = malloc(strlen(name) + 1);
        strcpy(m.name, name);
    }
    live++;
    return m;
}

static void model_free(codec_model_t *m)
{
    if (m->weights != NULL || m->name != NULL)
        live--;
    free(m->weights);
    free(m->name);
    m->weights = NULL;
    m->name = NULL;
}

/* Counts a decoding in the file at path, then ends the process by a
 * signal (an exit status would be memcheck's under valgrind: the worker
 * leaves with the value it was decoding half made). */
static void decoded_last(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND);
    if (fd >= 0 && write(fd, "d", 1) == 1)
        close(fd);
    kill(getpid(), SIGKILL);
    _exit(7);   /* not reached */
}

/* u64 n | u64 name length + 1 (0: NULL) | n doubles | name */
static size_t model_encode(const codec_model_t *m, void *buf, size_t size)
{
    if (m->name != NULL && strcmp(m->name, NO_ENCODE) == 0)
        return PMAP_ENCODE_ERROR;
    uint64_t head[2] = {m->n, m->name ? strlen(m->name) + 1 : 0};
    size_t need = sizeof head + m->n * sizeof(double) + (size_t)head[1];
    if (need > size)
        return need;
    unsigned char *p = buf;
    memcpy(p, head, sizeof head);
    if (m->n > 0)
        memcpy(p + sizeof head, m->weights, m->n * sizeof(double));
    if (head[1] > 0)
        memcpy(p + sizeof head + m->n * sizeof(double), m->name, head[1]);
    return need;
}

static int model_decode(codec_model_t *m, const void *data, size_t size)
{
    uint64_t head[2];
    const unsigned char *p = data;
    if (size < sizeof head)
        return -1;
    memcpy(head, p, sizeof head);
    if (head[0] > (size - sizeof head) / sizeof(double) ||
        size != sizeof head + head[0] * sizeof(double) + head[1])
        return -1;
    const char *name = (const char *)p + sizeof head + head[0] * sizeof(double);
    if (head[1] > 0 && strcmp(name, NO_DECODE) == 0)
        return -1;
    if (head[1] > 0 && strncmp(name, KILL_DECODE, strlen(KILL_DECODE)) == 0)
        decoded_last(name + strlen(KILL_DECODE));
    *m = model_new((size_t)head[0], 0, head[1] ? name : NULL);
    if (head[0] > 0)
        memcpy(m->weights, p + sizeof head, (size_t)head[0] * sizeof(double));
    return 0;
}

PMAP_EXPORT_TYPE(codec_model_t, model_encode, model_decode, model_free);

static double model_sum(const codec_model_t *m)
{
    double s = 0;
    for (size_t i = 0; i < m->n; i++)
        s += m->weights[i];
    return s + (m->name ? (double)strlen(m->name) : -1);
}

/* A method object: its weights are read through its pointer. */
static double score(const codec_model_t *self, long i)
{
    return model_sum(self) * (double)i + self->weights[(size_t)i % self->n];
}
PMAP_EXPORT_METHOD(score, double, codec_model_t, long);

/* An argument, as an array element or a constant. */
static double total(codec_model_t m, long i)
{
    return model_sum(&m) + (double)i;
}
PMAP_EXPORT(total, double, codec_model_t, long);

/* A result: n weights, made in the worker. */
static codec_model_t build(long n)
{
    if (n == -1)
        return model_new(1, 0, NO_ENCODE);
    if (n == -2)
        return model_new(1, 0, NO_DECODE);
    char name[32];
    snprintf(name, sizeof name, "m%ld", n);
    return model_new((size_t)n, n, name);
}
PMAP_EXPORT(build, codec_model_t, long);

/* Both ways. */
static codec_model_t twice(codec_model_t m)
{
    codec_model_t r = model_new(m.n, 0, m.name);
    for (size_t i = 0; i < m.n; i++)
        r.weights[i] = 2 * m.weights[i];
    return r;
}
PMAP_EXPORT(twice, codec_model_t, codec_model_t);

#define BIG (8u << 20)      /* bytes: larger than a shared-memory slot */
#define MEDIUM (1u << 20)   /* bytes: through shared memory */

static void check_built(const codec_model_t *m, long n)
{
    char name[32];
    snprintf(name, sizeof name, "m%ld", n);
    ASSERT_EQ(m->n, n);
    ASSERT_STR_EQ(m->name, name);
    for (long i = 0; i < n; i++)
        ASSERT(m->weights[i] == (double)((n + i) % 1000));
}

static pool_t *make_pool(int start)
{
    return test_pool((pool_options_t){.workers = 3, .start = start});
}

/* Every use of the type, on a pool of the given start method; the models
 * are all made after pool_create. */
static void every_use(int start)
{
    pool_t *pool = make_pool(start);
    enum { N = 40 };
    long is[N];
    codec_model_t ms[N];
    for (long i = 0; i < N; i++) {
        is[i] = i;
        /* Mostly small; two large ones, one through shared memory. */
        size_t n = i == 7 ? BIG / sizeof(double)
                 : i == 20 ? MEDIUM / sizeof(double) : (size_t)i % 5;
        ms[i] = model_new(n, i, i % 3 ? "model" : NULL);
    }
    codec_model_t big = model_new(BIG / sizeof(double), 3, "big");
    codec_model_t small = model_new(3, 5, "s");
    double out[N];

    /* Method object, large and small. */
    ASSERT_OK(pool_map(pool, score, N, out, &big, is));
    for (long i = 0; i < N; i++)
        ASSERT(out[i] == score(&big, i));
    ASSERT_OK(pool_map(pool, score, N, out, &small, is));
    for (long i = 0; i < N; i++)
        ASSERT(out[i] == score(&small, i));

    /* Array argument. */
    ASSERT_OK(pool_map(pool, total, N, out, ms, is));
    for (long i = 0; i < N; i++)
        ASSERT(out[i] == model_sum(&ms[i]) + (double)i);

    /* Constant, large and small. */
    ASSERT_OK(pool_map(pool, total, N, out, PMAP_CONST(big), is));
    for (long i = 0; i < N; i++)
        ASSERT(out[i] == model_sum(&big) + (double)i);
    ASSERT_OK(pool_map(pool, total, N, out, PMAP_CONST(small), is));
    for (long i = 0; i < N; i++)
        ASSERT(out[i] == model_sum(&small) + (double)i);

    /* Results, large and small: the caller owns them. */
    long ns[6] = {0, 1, 5, (long)(BIG / sizeof(double)),
                  (long)(MEDIUM / sizeof(double)), 2};
    codec_model_t built[6];
    ASSERT_OK(pool_map(pool, build, 6, built, ns));
    for (int i = 0; i < 6; i++) {
        check_built(&built[i], ns[i]);
        model_free(&built[i]);
    }

    /* Both ways, and one call. */
    codec_model_t doubled[N];
    ASSERT_OK(pool_map(pool, twice, N, doubled, ms));
    for (long i = 0; i < N; i++) {
        ASSERT_EQ(doubled[i].n, ms[i].n);
        ASSERT(model_sum(&doubled[i]) ==
               2 * model_sum(&ms[i]) + (ms[i].name ? -(double)strlen(
                                                        ms[i].name) : 1));
        model_free(&doubled[i]);
    }
    codec_model_t one;
    ASSERT_OK(pool_call(pool, build, &one, 4L));
    check_built(&one, 4);
    model_free(&one);

    for (long i = 0; i < N; i++)
        model_free(&ms[i]);
    model_free(&big);
    model_free(&small);
    test_pool_end(pool, start);
    ASSERT_EQ(live, 0);
}

TEST(codec_every_use_fork)
{
    every_use(PMAP_START_FORK);
}

TEST(codec_every_use_server)
{
    every_use(PMAP_START_SERVER);
}

/* In process, the worker's side runs here too: every value it decoded or
 * made has been released once the map is over. */
TEST(codec_every_use_in_process)
{
    every_use(PMAP_START_INLINE);
}

static void failures(int start)
{
    pool_t *pool = make_pool(start);
    enum { N = 12 };
    long is[N];
    codec_model_t ms[N];
    for (long i = 0; i < N; i++) {
        is[i] = i;
        ms[i] = model_new((size_t)i, i, i == 4 ? NO_ENCODE
                                        : i == 9 ? NO_DECODE : "ok");
    }
    double out[N];

    /* An argument that cannot be encoded, or decoded: its item fails. */
    ASSERT_EQ(pool_map(pool, total, N, out, ms, is), 2);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), 2);
    ASSERT_EQ(f[0].index, 4);
    ASSERT_EQ(f[0].error, PMAP_ECODEC);
    ASSERT_STR_EQ(f[0].message, "argument 1 could not be encoded by the caller");
    ASSERT_EQ(f[1].index, 9);
    ASSERT_EQ(f[1].error, PMAP_ECODEC);
    ASSERT_STR_EQ(f[1].message, "argument 1 could not be decoded");
    for (long i = 0; i < N; i++) {
        if (i == 4 || i == 9)
            ASSERT(out[i] == 0);
        else
            ASSERT(out[i] == model_sum(&ms[i]) + (double)i);
    }

    /* A result that cannot be encoded (in the worker), or decoded (here). */
    long ns[5] = {3, -1, 2, -2, 1};
    codec_model_t built[5];
    ASSERT_EQ(pool_map(pool, build, 5, built, ns), 2);
    ASSERT_EQ(pool_failures(pool, &f), 2);
    ASSERT_EQ(f[0].index, 1);
    ASSERT_EQ(f[0].error, PMAP_ECODEC);
    ASSERT_STR_EQ(f[0].message, "the result could not be encoded");
    ASSERT_EQ(f[1].index, 3);
    ASSERT_EQ(f[1].error, PMAP_ECODEC);
    ASSERT_STR_EQ(f[1].message, "the result could not be decoded");
    for (int i = 0; i < 5; i += 2) {
        check_built(&built[i], ns[i]);
        model_free(&built[i]);
    }
    ASSERT(built[1].weights == NULL && built[3].weights == NULL);

    /* A constant or method object that cannot travel fails its map. */
    ASSERT_EQ(pool_map(pool, total, N, out, PMAP_CONST(ms[4]), is),
              PMAP_ECODEC);
    ASSERT_EQ(pool_map(pool, score, N, out, &ms[9], is), PMAP_ECODEC);
    ASSERT_STR_EQ(pmap_err_name(PMAP_ECODEC), "ECODEC");

    /* The pool is still fine. */
    ASSERT_OK(pool_map(pool, score, N, out, &ms[3], is));
    for (long i = 0; i < N; i++)
        ASSERT(out[i] == score(&ms[3], i));
    ASSERT_EQ(pool_failures(pool, &f), 0);
    for (long i = 0; i < N; i++)
        model_free(&ms[i]);
    test_pool_end(pool, start);
    ASSERT_EQ(live, 0);
}

TEST(codec_failure_fails_its_item_fork)
{
    failures(PMAP_START_FORK);
}

TEST(codec_failure_fails_its_item_server)
{
    failures(PMAP_START_SERVER);
}

TEST(codec_failure_fails_its_item_in_process)
{
    failures(PMAP_START_INLINE);
}

/* A constant whose decoding kills its worker each time: the worker dies
 * with no item running, so its batch is sent again, at most three times,
 * then its items fail with that death; the pool is fine. */
static void decoder_kills_its_worker(int start)
{
    char path[] = "/tmp/pmap-decode-XXXXXX";
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    char name[64];
    snprintf(name, sizeof name, "%s%s", KILL_DECODE, path);
    codec_model_t deadly = model_new(2, 1, name);
    pool_t *pool = test_pool((pool_options_t){.workers = 1, .start = start});
    enum { N = 6 };
    long is[N] = {0, 1, 2, 3, 4, 5};
    double out[N];
    pool_map_options_t one_batch = {.chunk = N};
    ASSERT_EQ(pool_map_with(pool, &one_batch, total, N, out,
                            PMAP_CONST(deadly), is), N);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), N);
    for (int i = 0; i < N; i++) {
        ASSERT_EQ(f[i].index, (size_t)i);
        ASSERT_EQ(f[i].error, PMAP_ECRASH);
        ASSERT_EQ(f[i].code, SIGKILL);
    }
    struct stat st;
    ASSERT_OK(fstat(fd, &st));
    ASSERT_EQ(st.st_size, 1 + 3);   /* decoded by four workers in turn */
    close(fd);
    unlink(path);

    codec_model_t fine = model_new(3, 2, "ok");
    ASSERT_OK(pool_map(pool, total, N, out, PMAP_CONST(fine), is));
    for (long i = 0; i < N; i++)
        ASSERT(out[i] == model_sum(&fine) + (double)i);
    model_free(&fine);
    model_free(&deadly);
    test_pool_end(pool, start);
    ASSERT_EQ(live, 0);
}

TEST(codec_decoder_that_kills_its_worker_is_tried_four_times_fork)
{
    decoder_kills_its_worker(PMAP_START_FORK);
}

TEST(codec_decoder_that_kills_its_worker_is_tried_four_times_server)
{
    decoder_kills_its_worker(PMAP_START_SERVER);
}

/* Models made on demand into the producer's own memory, which it frees
 * at its next call: each is deep-copied before that. */
struct feed {
    long next, n;
    codec_model_t scratch;
};

static int feed_one(void *ctx, codec_model_t *m)
{
    struct feed *f = ctx;
    if (f->next == f->n)
        return 0;
    model_free(&f->scratch);
    f->scratch = model_new((size_t)(f->next % 7 + 1), f->next, "fed");
    *m = f->scratch;
    f->next++;
    return 1;
}

struct seen {
    long count, bad;
};

/* Results handed to a callback are the caller's: it frees them. */
static int take(void *ctx, size_t index, void *result,
                const pmap_failure_t *failure)
{
    struct seen *s = ctx;
    codec_model_t *m = result;
    if (failure != NULL)
        return 1;
    s->count++;
    if (m->n != index % 7 + 1 || strcmp(m->name, "fed") != 0)
        s->bad++;
    for (size_t i = 0; i < m->n; i++)
        s->bad += m->weights[i] != 2.0 * (double)((index + i) % 1000);
    model_free(m);
    return 0;
}

TEST(codec_stream_to_callback)
{
    pool_t *pool = make_pool(PMAP_START_FORK);
    struct feed f = {0, 300, {0, NULL, NULL}};
    struct seen s = {0, 0};
    pool_map_options_t o = {.on_result = take, .ctx = &s, .window = 16};
    ASSERT_OK(pool_map_stream(pool, &o, twice, feed_one, &f));
    model_free(&f.scratch);
    ASSERT_EQ(s.count, 300);
    ASSERT_EQ(s.bad, 0);
    o.unordered = 1;
    f.next = 0;
    s.count = 0;
    ASSERT_OK(pool_map_stream(pool, &o, twice, feed_one, &f));
    model_free(&f.scratch);
    ASSERT_EQ(s.count, 300);
    ASSERT_EQ(s.bad, 0);
    pool_destroy(pool);
    ASSERT_EQ(live, 0);
}
