/* SPDX-License-Identifier: MIT */
/*
 * alloc.c - memory the caller shares with every worker, read-only:
 * pmap_alloc and pmap_free, and the worker's side of reading it.
 *
 * The caller's side.  One file per process, the heap (memfd on Linux, an
 * unlinked POSIX shared memory object elsewhere), holds every block of
 * pmap_alloc: a block is a page-rounded range of the file at a bump
 * offset (offsets are never used again: the file is sparse, and a worker's
 * cached view of a freed block can never show another block), mapped
 * MAP_SHARED, read-write, in the caller, and MADV_DONTFORK so that no
 * child inherits that writable mapping.  pmap_free unmaps the block and
 * punches its hole, so its memory returns at once.  A table of the live
 * blocks, sorted by address, tells the encoder (wire.c, through
 * pmap__region_t.heap_find) whether a string or buffer lies in one: it
 * then travels as a reference (heap offset, length) instead of its bytes.
 *
 * Every process that forks workers holds the heap while it may (a pool
 * that forks, or the fork server: pmap__heap_hold), so that its workers
 * inherit the file's descriptor at fork, whenever they are forked, before
 * or after the block was allocated.  The descriptor is closed when nobody
 * holds the heap and no block is left: a heap made later is a new file,
 * which the holders made since then have from the start.  A heap that
 * could not be made while somebody held it stays absent until nobody
 * does: pmap_alloc then returns NULL (every live holder's workers must
 * know the file).
 *
 * The worker's side.  A reference is read through a view of its block,
 * mapped read-only from the inherited descriptor on first use and kept
 * (a bounded cache, least recently used first out) so that the next maps
 * over the same blocks do not map or fault again.  A view is never dropped
 * while the batch that uses it runs, nor while a map's constant points
 * into it (pinned until the map's END).
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE     /* memfd_create, fallocate, MADV_DONTFORK */
#elif !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE
#endif

#include "pmap_internal.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* One block of pmap_alloc, in the caller. */
typedef struct block {
    unsigned char *base;
    uint64_t offset;    /* in the heap file */
    size_t size;        /* page-rounded: what is mapped */
} block_t;

/* Locked with pmap__local()->heap_lock (shm.c), which no child inherits
 * held. */
static struct {
    pid_t owner;        /* the process whose heap this is */
    int fd;             /* the heap file, or -1 */
    uint64_t end;       /* the file's size: where the next block goes */
    int holds;          /* pools and the fork server that fork workers */
    block_t *blocks;    /* live, by address */
    size_t nblocks, cap;
} heap = {0, -1, 0, 0, NULL, 0, 0};

static size_t page_size(void)
{
    static size_t page;
    if (page == 0) {
        long p = sysconf(_SC_PAGESIZE);
        page = p > 0 ? (size_t)p : 4096;
    }
    return page;
}

/* ---- fork --------------------------------------------------------------- */

static pthread_mutex_t *heap_lock(void)
{
    return &pmap__local()->heap_lock;
}

static void before_fork(void)
{
    pthread_mutex_lock(heap_lock());
}

static void after_fork_parent(void)
{
    pthread_mutex_unlock(heap_lock());
}

/* The child's lock is made free again; the rest is the parent's heap and
 * is forgotten (or, in a worker, read) at the next use. */
static void after_fork_child(void)
{
    pthread_mutex_init(heap_lock(), NULL);
}

/* Where a child sees the lock zeroed, it has nothing to do: no handler,
 * and no page of code for each new worker to fault in. */
static void register_fork_handlers(void)
{
    pthread_atfork(before_fork, after_fork_parent,
                   pmap__local_wiped() ? NULL : after_fork_child);
}

/*
 * Locks the heap, making it this process's: a forked child's copy of its
 * parent's (blocks that are not mapped here: MADV_DONTFORK) is forgotten,
 * and its descriptor closed.  Not in a worker, which reads it instead.
 */
static void lock_own(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_fork_handlers);
    pthread_mutex_lock(heap_lock());
    pid_t self = pmap__self();
    if (heap.owner != self) {
        if (heap.owner != 0)
            pmap__close(&heap.fd);
        free(heap.blocks);
        heap.blocks = NULL;
        heap.nblocks = heap.cap = 0;
        heap.holds = 0;
        heap.end = 0;
        heap.owner = self;
    }
}

/* Closes the heap if nobody needs it any more.  Locked. */
static void close_if_idle(void)
{
    if (heap.holds == 0 && heap.nblocks == 0 && heap.fd >= 0) {
        pmap__close(&heap.fd);
        heap.end = 0;
        free(heap.blocks);
        heap.blocks = NULL;
        heap.cap = 0;
    }
}

/*
 * A pool that forks workers, or the fork server, is about to fork: the
 * heap must exist first, so that every process it forks inherits it.
 * Returns whether it does (then references to blocks may be sent to those
 * workers); false if it could not be made, which is no error.
 */
bool pmap__heap_hold(void)
{
    lock_own();
    if (heap.fd < 0 && heap.holds == 0 && heap.nblocks == 0)
        heap.fd = pmap__shm_file("pmap-heap", 0);
    heap.holds++;
    bool have = heap.fd >= 0;
    pthread_mutex_unlock(heap_lock());
    return have;
}

/* What pmap__heap_hold took: the pool is destroyed, the server stopped. */
void pmap__heap_drop(void)
{
    lock_own();
    if (heap.holds > 0)
        heap.holds--;
    close_if_idle();
    pthread_mutex_unlock(heap_lock());
}

/* The index of the first block whose base is above p.  Locked. */
static size_t block_after(const void *p)
{
    size_t lo = 0, hi = heap.nblocks;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if ((uintptr_t)heap.blocks[mid].base <= (uintptr_t)p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

void *pmap_alloc(size_t size)
{
    size_t page = page_size();
    if (size == 0 || size > SIZE_MAX - page || pmap__in_worker)
        return NULL;
    size = (size + page - 1) / page * page;
    lock_own();
    void *p = NULL;
    if (heap.fd < 0 && heap.holds == 0)
        heap.fd = pmap__shm_file("pmap-heap", 0);
    if (heap.fd < 0 || heap.nblocks == SIZE_MAX / sizeof(block_t) ||
        heap.end > (uint64_t)INT64_MAX - size)
        goto out;
    if (heap.nblocks == heap.cap) {
        block_t *b = pmap__grow(heap.blocks, &heap.cap, sizeof *b);
        if (b == NULL)
            goto out;
        heap.blocks = b;
    }
    uint64_t at = heap.end;
    if (ftruncate(heap.fd, (off_t)(at + size)) < 0)
        goto out;
    heap.end = at + size;
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, heap.fd,
             (off_t)at);
    if (p == MAP_FAILED) {
        p = NULL;
        goto out;
    }
    pmap__shm_fork_inherit(p, size, false);
    size_t i = block_after(p);
    memmove(&heap.blocks[i + 1], &heap.blocks[i],
            (heap.nblocks - i) * sizeof *heap.blocks);
    heap.blocks[i] = (block_t){p, at, size};
    heap.nblocks++;
out:
    close_if_idle();
    pthread_mutex_unlock(heap_lock());
    return p;
}

void pmap_free(void *p)
{
    if (p == NULL || pmap__in_worker)
        return;
    lock_own();
    size_t i = block_after(p);
    if (i > 0 && heap.blocks[i - 1].base == p) {
        block_t b = heap.blocks[--i];
        munmap(b.base, b.size);
#if defined(__linux__) && defined(FALLOC_FL_PUNCH_HOLE)
        fallocate(heap.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)b.offset, (off_t)b.size);
#endif
        memmove(&heap.blocks[i], &heap.blocks[i + 1],
                (heap.nblocks - i - 1) * sizeof *heap.blocks);
        heap.nblocks--;
    }
    close_if_idle();
    pthread_mutex_unlock(heap_lock());
}

/*
 * The encoder's question (pmap__region_t.heap_find): whether [p, p + n)
 * lies wholly inside one block; if so, stores its place in ref: the
 * offset of p in the heap file, the block's offset and its size.
 */
bool pmap__heap_find(const void *p, size_t n, uint64_t ref[3])
{
    bool found = false;
    pthread_mutex_lock(heap_lock());
    if (heap.owner == pmap__self() && heap.nblocks > 0) {
        size_t i = block_after(p);
        if (i > 0) {
            const block_t *b = &heap.blocks[i - 1];
            size_t into = (size_t)((uintptr_t)p - (uintptr_t)b->base);
            if (into < b->size && n <= b->size - into) {
                ref[0] = b->offset + into;
                ref[1] = b->offset;
                ref[2] = b->size;
                found = true;
            }
        }
    }
    pthread_mutex_unlock(heap_lock());
    return found;
}

/* ---- the worker's views ------------------------------------------------- */

#define VIEWS_MAX 256               /* views kept between batches */
#define VIEW_BYTES_MAX (1ull << 30) /* bytes of them */

typedef struct view {
    uint64_t offset, size;      /* the block's */
    const unsigned char *base;
    uint64_t used;              /* batch that used it last */
    unsigned pins;              /* constants of live maps in it */
} view_t;

/* A worker runs one batch at a time, on one thread: no lock. */
static struct {
    view_t *v;
    size_t n, cap;
    uint64_t bytes;
    uint64_t batch;
} views;

static void view_drop(size_t i)
{
    munmap((void *)views.v[i].base, (size_t)views.v[i].size);
    views.bytes -= views.v[i].size;
    views.v[i] = views.v[--views.n];
}

/* Drops the least recently used views that are not pinned and not used
 * by the running batch, until at most keep views and keep_bytes bytes are
 * left (or nothing more may go). */
static void views_shrink(size_t keep, uint64_t keep_bytes)
{
    while (views.n > keep || views.bytes > keep_bytes) {
        size_t oldest = SIZE_MAX;
        for (size_t i = 0; i < views.n; i++) {
            const view_t *v = &views.v[i];
            if (v->pins == 0 && v->used < views.batch &&
                (oldest == SIZE_MAX || v->used < views.v[oldest].used))
                oldest = i;
        }
        if (oldest == SIZE_MAX)
            return;
        view_drop(oldest);
    }
}

/* In a worker, before a batch is decoded: the views no batch has used
 * lately may go. */
void pmap__heap_next_batch(void)
{
    views.batch++;
    views_shrink(VIEWS_MAX, VIEW_BYTES_MAX);
}

static const unsigned char *view_of(uint64_t offset, uint64_t size,
                                    bool pin)
{
    view_t *v = NULL;
    for (size_t i = 0; i < views.n && v == NULL; i++) {
        if (views.v[i].offset == offset && views.v[i].size == size)
            v = &views.v[i];
    }
    if (v == NULL) {
        struct stat st;
        size_t page = page_size();
        if (heap.fd < 0 || size == 0 || size > SIZE_MAX || offset % page ||
            size % page || fstat(heap.fd, &st) < 0 ||
            offset > (uint64_t)st.st_size ||
            size > (uint64_t)st.st_size - offset)
            return NULL;
        if (views.n == views.cap) {
            view_t *p = pmap__grow(views.v, &views.cap, sizeof *p);
            if (p == NULL)
                return NULL;
            views.v = p;
        }
        void *p = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, heap.fd,
                       (off_t)offset);
        if (p == MAP_FAILED) {  /* out of address space: keep only ours */
            views_shrink(0, 0);
            p = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, heap.fd,
                     (off_t)offset);
        }
        if (p == MAP_FAILED)
            return NULL;
        v = &views.v[views.n++];
        *v = (view_t){offset, size, p, 0, 0};
        views.bytes += size;
    }
    v->used = views.batch;
    v->pins += pin;
    return v->base;
}

/* The decoder's way to a referenced block (pmap__region_t.heap_view): its
 * view, mapped read-only; NULL if it cannot be. */
const unsigned char *pmap__heap_view(uint64_t offset, uint64_t size)
{
    return view_of(offset, size, false);
}

/* The same for a map's constant: kept until pmap__heap_unpin. */
const unsigned char *pmap__heap_view_pinned(uint64_t offset, uint64_t size)
{
    return view_of(offset, size, true);
}

/* A map's constant that may point into a view is gone. */
void pmap__heap_unpin(const void *p)
{
    for (size_t i = 0; i < views.n && p != NULL; i++) {
        view_t *v = &views.v[i];
        if ((uintptr_t)p >= (uintptr_t)v->base &&
            (uintptr_t)p - (uintptr_t)v->base < v->size && v->pins > 0) {
            v->pins--;
            return;
        }
    }
}
