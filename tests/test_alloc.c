/* SPDX-License-Identifier: MIT */
/*
 * test_alloc.c - pmap_alloc and pmap_free: blocks the workers read in
 * place, whether they were forked before the block or by the fork server;
 * nothing copied; read-only in the workers; nothing left behind.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE     /* MAP_FIXED_NOREPLACE, MAP_ANONYMOUS */
#endif

#include "test.h"

#include <pmap.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000    /* Linux 4.17, older headers */
#endif

/* FNV-1a, 64 bits. */
static uint64_t fnv(pmap_bytes_t b)
{
    const unsigned char *p = b.data;
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < b.size; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}
PMAP_EXPORT(fnv, uint64_t, pmap_bytes_t);

/* Writes into its buffer: the block is read-only in a worker. */
static uint64_t scribble(pmap_bytes_t b, int victim)
{
    if (victim)
        ((volatile unsigned char *)b.data)[0] = 1;
    return fnv(b);
}
PMAP_EXPORT(scribble, uint64_t, pmap_bytes_t, int);

/* A constant buffer and a string argument. */
static uint64_t mix(pmap_bytes_t key, const char *s)
{
    return fnv(key) ^ fnv((pmap_bytes_t){(void *)s, strlen(s)});
}
PMAP_EXPORT(mix, uint64_t, pmap_bytes_t, const char *);

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(seed * 131 + i * 7 + (i >> 9));
}

static pool_t *make_pool(int start, int workers)
{
    return test_pool((pool_options_t){.workers = workers, .start = start});
}

static uint64_t bytes_sent(const pool_t *pool)
{
    pmap_stats_t st;
    ASSERT_OK(pool_stats(pool, &st, NULL));
    return st.bytes_sent;
}

enum { BLOCKS = 64, BLOCK = 64 << 10 };

/* Blocks allocated after the pool's workers were forked, mapped over
 * twice (the second time through the workers' cached views), checked
 * against sums made here; in worker processes nothing is copied. */
static void blocks_after_pool(int start)
{
    pool_t *pool = make_pool(start, 2);
    pmap_bytes_t in[BLOCKS];
    uint64_t want[BLOCKS], out[BLOCKS];
    for (int i = 0; i < BLOCKS; i++) {
        size_t size = BLOCK - (size_t)i * 61;   /* not page-rounded */
        in[i] = (pmap_bytes_t){pmap_alloc(size), size};
        ASSERT(in[i].data != NULL);
        ASSERT(((uintptr_t)in[i].data & 4095) == 0);
        fill(in[i].data, size, (unsigned)i);
        want[i] = fnv(in[i]);
    }
    for (int round = 0; round < 2; round++) {
        memset(out, 0, sizeof out);
        ASSERT_OK(pool_map(pool, fnv, BLOCKS, out, in));
        for (int i = 0; i < BLOCKS; i++)
            ASSERT(out[i] == want[i]);
        /* References, not 4 MiB: about 50 bytes an item and 40 a batch,
         * even if a loaded machine makes every batch one item. */
        if (start != PMAP_START_INLINE)
            ASSERT(bytes_sent(pool) < 128 * BLOCKS);
    }
    /* Changed between maps: the workers see the new bytes. */
    fill(in[5].data, in[5].size, 999);
    want[5] = fnv(in[5]);
    ASSERT_OK(pool_map(pool, fnv, BLOCKS, out, in));
    ASSERT(out[5] == want[5]);
    /* A constant buffer and string arguments, all in blocks. */
    char *s = pmap_alloc(3 * BLOCK);
    ASSERT(s != NULL);
    for (int i = 0; i < 3; i++) {
        memset(s + i * BLOCK, 'a' + i, BLOCK - 1);
        s[(i + 1) * BLOCK - 1] = '\0';
    }
    const char *strs[3] = {s, s + BLOCK, s + 2 * BLOCK};
    uint64_t mixed[3];
    ASSERT_OK(pool_map(pool, mix, 3, mixed, PMAP_CONST(in[7]), strs));
    for (int i = 0; i < 3; i++)
        ASSERT(mixed[i] == mix(in[7], strs[i]));
    if (start != PMAP_START_INLINE)
        ASSERT(bytes_sent(pool) < 4096);
    pmap_free(s);
    for (int i = 0; i < BLOCKS; i++)
        pmap_free(in[i].data);
    test_pool_end(pool, start);
}

TEST(alloc_blocks_after_pool_fork)
{
    blocks_after_pool(PMAP_START_FORK);
}

TEST(alloc_blocks_after_pool_server)
{
    blocks_after_pool(PMAP_START_SERVER);
}

enum { MANY = 700 };     /* more blocks than a worker keeps views of */

/* Each block's sum, after filling it with seed's bytes. */
static void many_fill(pmap_bytes_t *in, uint64_t *want, int i, unsigned seed)
{
    fill(in[i].data, in[i].size, seed);
    want[i] = fnv(in[i]);
}

/* More blocks than a worker keeps views of (alloc.c: 256): the views are
 * dropped and made again as the maps go, in batches of one item and in
 * one batch of all (whose views stay until it ends); half the blocks are
 * freed and others made between maps, and every sum is right. */
static void many_blocks(int start)
{
    pool_t *pool = make_pool(start, 2);
    static pmap_bytes_t in[MANY];
    static uint64_t want[MANY], out[MANY];
    for (int i = 0; i < MANY; i++) {
        in[i] = (pmap_bytes_t){pmap_alloc(4096), 4096};
        ASSERT(in[i].data != NULL);
        many_fill(in, want, i, (unsigned)i);
    }
    pool_map_options_t chunks[3] = {{.chunk = 1}, {.chunk = MANY}, {0}};
    for (int round = 0; round < 3; round++) {
        memset(out, 0, sizeof out);
        ASSERT_OK(pool_map_with(pool, &chunks[round], fnv, MANY, out, in));
        for (int i = 0; i < MANY; i++)
            ASSERT(out[i] == want[i]);
        for (int i = round % 2; i < MANY; i += 2) {    /* new blocks */
            pmap_free(in[i].data);
            in[i].data = pmap_alloc(4096);
            ASSERT(in[i].data != NULL);
            many_fill(in, want, i, (unsigned)(i + 1000 * (round + 1)));
        }
    }
    for (int i = 0; i < MANY; i++)
        pmap_free(in[i].data);
    test_pool_end(pool, start);
}

TEST(alloc_more_blocks_than_views_kept_fork)
{
    many_blocks(PMAP_START_FORK);
}

TEST(alloc_more_blocks_than_views_kept_server)
{
    many_blocks(PMAP_START_SERVER);
}

TEST(alloc_blocks_after_pool_in_process)
{
    blocks_after_pool(PMAP_START_INLINE);
}

/* A worker writing to a block is killed: its item alone fails. */
TEST(alloc_read_only_in_workers)
{
    pool_t *pool = make_pool(PMAP_START_FORK, 2);
    enum { N = 8, VICTIM = 3 };
    pmap_bytes_t in[N];
    int victim[N];
    uint64_t out[N];
    for (int i = 0; i < N; i++) {
        in[i] = (pmap_bytes_t){pmap_alloc(8192), 8192};
        ASSERT(in[i].data != NULL);
        fill(in[i].data, 8192, (unsigned)i);
        victim[i] = i == VICTIM;
    }
    pool_map_options_t mo = {.chunk = 2};
    ASSERT_EQ(pool_map_with(pool, &mo, scribble, N, out, in, victim), 1);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), 1);
    ASSERT_EQ(f[0].index, VICTIM);
    ASSERT_STR_EQ(pmap_err_name(f[0].error), "ECRASH");
    ASSERT_EQ(f[0].code, SIGSEGV);
    for (int i = 0; i < N; i++) {
        if (i != VICTIM)
            ASSERT(out[i] == fnv(in[i]));
    }
    unsigned char first = (unsigned char)(VICTIM * 131);
    ASSERT_EQ(((unsigned char *)in[VICTIM].data)[0], first);  /* unharmed */
    for (int i = 0; i < N; i++)
        pmap_free(in[i].data);
    pool_destroy(pool);
}

/* Open descriptors; lines of /proc/self/maps (those containing a string,
 * or all), -1 without it. */
static int count_fds(void)
{
    int n = 0;
    for (int fd = 0; fd < 1024; fd++)
        n += fcntl(fd, F_GETFD) >= 0;
    return n;
}

static int count_maps(const char *containing)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (f == NULL)
        return -1;
    int n = 0;
    char line[4096];
    while (fgets(line, sizeof line, f) != NULL)
        n += containing == NULL || strstr(line, containing) != NULL;
    fclose(f);
    return n;
}

/* Freed, allocated again, mapped again; then nothing is left: no
 * descriptor, no mapping. */
TEST(alloc_free_leaves_nothing)
{
    /* Only the heap's mappings are counted: the rest of the process may
     * map and unmap meanwhile (AddressSanitizer's allocator does). */
    int fds = count_fds(), maps = count_maps("pmap-heap");
    pmap_free(NULL);                    /* nothing */
    ASSERT(pmap_alloc(0) == NULL);      /* nothing either */
    ASSERT_EQ(count_fds(), fds);
    unsigned char *lone = pmap_alloc(100);  /* a heap with no pool */
    ASSERT(lone != NULL);
    ASSERT_EQ(lone[99], 0);
    ASSERT_EQ(count_fds(), fds + 1);
    pmap_free(lone);
    ASSERT_EQ(count_fds(), fds);
    ASSERT_EQ(count_maps("pmap-heap"), maps);

    pool_t *pool = make_pool(PMAP_START_FORK, 2);
    int with_pool = count_maps("pmap-heap");
    for (int round = 0; round < 3; round++) {
        pmap_bytes_t in[4];
        uint64_t out[4];
        for (int i = 0; i < 4; i++) {
            in[i] = (pmap_bytes_t){pmap_alloc(BLOCK), BLOCK};
            ASSERT(in[i].data != NULL);
            fill(in[i].data, BLOCK, (unsigned)(round * 4 + i));
        }
        ASSERT_OK(pool_map(pool, fnv, 4, out, in));
        for (int i = 0; i < 4; i++) {
            ASSERT(out[i] == fnv(in[i]));
            pmap_free(in[i].data);
        }
        ASSERT_EQ(count_maps("pmap-heap"), with_pool);
    }
    pmap_free(&fds);                    /* not a block: ignored */
    pool_destroy(pool);
    ASSERT_EQ(count_fds(), fds);
    ASSERT_EQ(count_maps("pmap-heap"), 0);
}

/* A buffer that starts in a block and ends past it, and one in plain
 * memory, travel by copy and arrive whole. */
TEST(alloc_partly_inside_goes_by_copy)
{
    enum { PART = 16 << 10 };
    pool_t *pool = make_pool(PMAP_START_FORK, 2);
    unsigned char *a = pmap_alloc(BLOCK), *plain = malloc(2 * PART);
    ASSERT(a != NULL && plain != NULL);
    /* Memory of our own right after the block (or right before it). */
    int rw = PROT_READ | PROT_WRITE;
    int how = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE;
    unsigned char *low = a, *next = mmap(a + BLOCK, BLOCK, rw, how, -1, 0);
    if (next != a + BLOCK) {
        if (next != MAP_FAILED)
            munmap(next, BLOCK);
        low = next = mmap(a - BLOCK, BLOCK, rw, how, -1, 0);
        if (next != a - BLOCK) {
            if (next != MAP_FAILED)
                munmap(next, BLOCK);
            SKIP("no room next to the block");
        }
    }
    fill(low, 2 * BLOCK, 1);
    fill(plain, 2 * PART, 3);
    pmap_bytes_t in[3] = {{low + BLOCK - PART, 2 * PART},   /* across */
                          {plain, 2 * PART},
                          {a + 4096, BLOCK - 4096}};        /* inside */
    uint64_t out[3];
    ASSERT_OK(pool_map(pool, fnv, 3, out, in));
    for (int i = 0; i < 3; i++)
        ASSERT(out[i] == fnv(in[i]));
    /* The first two were copied, the third was not. */
    uint64_t sent = bytes_sent(pool);
    ASSERT(sent >= 4 * PART && sent < 4 * PART + 4096);
    munmap(next, BLOCK);
    pmap_free(a);
    free(plain);
    pool_destroy(pool);
}
