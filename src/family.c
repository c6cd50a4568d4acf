/* SPDX-License-Identifier: MIT */
/*
 * family.c - this process among its children: who it is (a forked copy
 * must know it is not the caller), the list of its pools, and what a child
 * forked here drops before anything else: every descriptor and arena of
 * every pool that is not its own.
 *
 * Both ways of forking use it, a worker forked by proc.c and the fork
 * server (server.c), which is why it sits below them.  The list is locked
 * across every fork, and while descriptors and arenas are made or dropped:
 * a child must find in it every descriptor it has to close.
 */

#include "pmap_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

bool pmap__in_worker;    /* set by worker.c, server.c */

static pool_t *pools;
static bool forgotten;  /* pmap__pools_forgotten */

/* ---- who we are --------------------------------------------------------- */

/*
 * This process's pid.  Every call on a pool checks that this process made
 * it (a forked copy gets PMAP_EFORKED), and getpid() is a system call,
 * which costs a microsecond or more on virtual machines (one call to a
 * worker went from about 27.0 to 25.5 us here without it).  So the pid is
 * kept in pmap__local, where a child finds 0 and asks the kernel once;
 * without that page, getpid() every time.
 */
pid_t pmap__self(void)
{
    if (!pmap__local_wiped())
        return getpid();
    _Atomic pid_t *self = &pmap__local()->self;
    pid_t pid = atomic_load_explicit(self, memory_order_relaxed);
    if (pid == 0) {
        pid = getpid();
        atomic_store_explicit(self, pid, memory_order_relaxed);
    }
    return pid;
}

/* In a new child: its pid, stored before anything reads it.  Its page is
 * wiped at the fork: a read first would map the zero page, and the store
 * after it copy that, two faults where the store alone takes one. */
void pmap__self_forked(void)
{
    if (pmap__local_wiped())
        atomic_store_explicit(&pmap__local()->self, getpid(),
                              memory_order_relaxed);
}

/* ---- the list of pools -------------------------------------------------- */

static pthread_mutex_t *pools_lock(void)
{
    return &pmap__local()->pools_lock;
}

void pmap__pools_lock(void)
{
    pthread_mutex_lock(pools_lock());
}

void pmap__pools_unlock(void)
{
    pthread_mutex_unlock(pools_lock());
}

/* Links pool into the list of pools; locked by the caller. */
void pmap__pools_add(pool_t *pool)
{
    pool->next = pools;
    pools = pool;
}

void pmap__pools_remove(pool_t *pool)
{
    pthread_mutex_lock(pools_lock());
    for (pool_t **p = &pools; *p != NULL; p = &(*p)->next) {
        if (*p == pool) {
            *p = pool->next;
            break;
        }
    }
    pthread_mutex_unlock(pools_lock());
}

/* ---- what a new child drops ---------------------------------------------- */

/*
 * The descriptors of every pool, as a bitmap over their numbers, which the
 * forking thread makes for the children it is about to fork (pools_lock
 * held from then to the forks): a child reads a page or two of it rather
 * than every slot of every pool, and on a paravirtualized machine each
 * page a new process first touches costs it microseconds (some 250 us a
 * child with 512 slots, 49 pages of them).
 */
static uint64_t *doomed;
static size_t doomed_words;

/*
 * Calls each(fd, ctx) on every descriptor of every pool but keep's channel
 * (keep: the slot a new child is forked for, whose ch.keep and handoff[0]
 * are that child's; or NULL), until one returns false.  Returns whether
 * all returned true.  fd may be -1.
 */
static bool each_descriptor(const pmap__worker_t *keep,
                            bool (*each)(int fd, void *ctx), void *ctx)
{
    for (const pool_t *p = pools; p != NULL; p = p->next) {
        const int own[] = {p->epfd, p->wake[0], p->wake[1]};
        for (size_t k = 0; k < sizeof own / sizeof *own; k++) {
            if (!each(own[k], ctx))
                return false;
        }
        for (int i = 0; i < p->nworkers; i++) {
            const pmap__worker_t *w = &p->workers[i];
            bool mine = w == keep;
            const int fds[] = {w->ch.in, w->ch.out, w->pidfd,
                               mine ? -1 : w->ch.keep,
                               mine ? -1 : w->handoff[0], w->handoff[1]};
            for (size_t k = 0; k < sizeof fds / sizeof *fds; k++) {
                if (!each(fds[k], ctx))
                    return false;
            }
        }
        for (size_t i = 0; i < p->nretirees; i++) {
            if (!each(p->retirees[i].fd, ctx) ||
                !each(p->retirees[i].pidfd, ctx))
                return false;
        }
    }
    return true;
}

/* Sets fd's bit; false without the memory to. */
static bool mark(int fd, void *ctx)
{
    (void)ctx;
    if (fd < 0)
        return true;
    size_t word = (size_t)fd / 64;
    if (word >= doomed_words) {
        size_t words = 2 * word + 1;
        uint64_t *p = realloc(doomed, words * sizeof *p);
        if (p == NULL)
            return false;
        memset(p + doomed_words, 0, (words - doomed_words) * sizeof *p);
        doomed = p;
        doomed_words = words;
    }
    doomed[word] |= (uint64_t)1 << (fd % 64);
    return true;
}

/* Makes the bitmap for the forks to come, pools_lock held until they are
 * done, and returns whether it could (without memory, the children look
 * at the pools themselves): each child is told, rather than reading a
 * flag here that the caller would clear after the forks, a write that
 * copies the page.  A pass over every slot of every pool, once a group of
 * forks: cheap in the caller (microseconds at 512 slots), where each child
 * reading the slots cost it a fault a page. */
bool pmap__pools_mark(void)
{
    if (doomed != NULL)
        memset(doomed, 0, doomed_words * sizeof *doomed);
    return each_descriptor(NULL, mark, NULL);
}

/* In a child: closes the descriptors of the bitmap but keep's channel. */
static void close_doomed(const pmap__worker_t *keep)
{
    int own[2] = {keep ? keep->ch.keep : -1, keep ? keep->handoff[0] : -1};
    pmap__fd_runs_t runs = {-1, -1};
    for (size_t i = 0; i < doomed_words; i++) {
        for (uint64_t bits = doomed[i]; bits != 0; bits &= bits - 1) {
            int fd = (int)(i * 64) + __builtin_ctzll(bits);
            if (fd != own[0] && fd != own[1])
                pmap__fd_runs_add(&runs, fd);
        }
    }
    pmap__fd_runs_flush(&runs);
}

static bool add_to_runs(int fd, void *runs)
{
    pmap__fd_runs_add(runs, fd);
    return true;
}

/* In a child, without the bitmap: closes what every slot of every pool
 * shows, but keep's channel. */
static void close_every_slot(const pmap__worker_t *keep)
{
    pmap__fd_runs_t runs = {-1, -1};
    each_descriptor(keep, add_to_runs, &runs);
    pmap__fd_runs_flush(&runs);
}

/* In a child that inherited arenas (shm.c): unmaps all but keep's. */
static void forget_arenas(const pmap__worker_t *keep)
{
    for (const pool_t *p = pools; p != NULL; p = p->next) {
        for (int i = 0; i < p->nworkers; i++) {
            if (&p->workers[i] != keep)
                pmap__arena_forget(p->workers[i].arena);
        }
    }
}

/*
 * In a new child of this process (a worker, or the fork server), before
 * anything else: closes every descriptor of every pool, keeping only
 * keep's channel (from the bitmap if `marked`: pmap__pools_mark made it
 * for this fork), forgets every arena but keep's (shm.c), and makes the
 * list's lock usable again where the child does not see it zeroed (the
 * forking thread held it, and that thread is the only one the child
 * has).  The descriptors are closed in runs and the pools left as they
 * are: writing to them would copy their pages into each new child (a
 * fault each, some 15 us on a paravirtualized machine), and nothing uses
 * their descriptors here again (pmap__pools_forgotten).
 */
void pmap__pools_child_init(const pmap__worker_t *keep, bool marked)
{
    if (marked)
        close_doomed(keep);
    else
        close_every_slot(keep);
    if (pmap__arenas_inherited())
        forget_arenas(keep);
    forgotten = true;
    if (!pmap__local_wiped())
        pthread_mutex_init(pools_lock(), NULL);
}

/* Whether this process is a child forked here (or descends from one):
 * the descriptors and arenas in the pools it inherited are closed or
 * gone, though the pools still show them. */
bool pmap__pools_forgotten(void)
{
    return forgotten;
}
