/* SPDX-License-Identifier: MIT */
/*
 * shm.c - memory shared between the caller and one worker process: its
 * arena, which holds the slot that tells which item it runs, and the
 * regions through which large strings and buffers travel with one copy
 * instead of two (the caller's into the arena; the worker reads them in
 * place).
 *
 * Each worker process gets an arena of its own, and only its own: every
 * arena is MADV_DONTFORK from its mapping on (forks wait meanwhile:
 * arenas_hold) but across the fork of its own worker (a child that another
 * thread forks then unmaps it: after_fork_child), so a child forked by the
 * caller never holds another (where that cannot be had, it unmaps every
 * other arena first thing: family.c), and a replacement never gets what
 * its predecessor, or a process that predecessor forked, could still write
 * (spare arenas, below).  (A new pool's first arenas are carved from one
 * mapping, pmap__proc_spawn_all, and go the same way.)
 *
 * A worker forked by the caller inherits its arena at the same address, so
 * it is anonymous.  A worker forked by the fork server (server.c) is not
 * the caller's child: its arena must be a file it is sent and maps itself
 * (memfd on Linux, an unlinked POSIX shared memory object elsewhere).
 *
 * And the opposite: the page of this process's own state that no child
 * inherits as it is (pmap__local).
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* memfd_create, MAP_ANONYMOUS, MADV_DONTFORK etc. */
#elif !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE     /* MAP_ANONYMOUS, POSIX only since 2024 */
#endif

#include "pmap_internal.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__linux__) && !defined(MADV_POPULATE_WRITE)
#define MADV_POPULATE_WRITE 23  /* Linux 5.14, beyond older C libraries'
                                   headers; older kernels refuse it */
#endif

/*
 * A new file of size zeroed bytes for shared memory, named name where the
 * system shows it (memfd; else an unlinked POSIX shared memory object),
 * close-on-exec and never one of fds 0-2 (a worker's output capture may
 * take those); -1 on failure.
 */
int pmap__shm_file(const char *name, size_t size)
{
    int fd = -1;
#if defined(__linux__) && defined(MFD_CLOEXEC)
    fd = pmap__fd_sanitize(memfd_create(name, MFD_CLOEXEC), true);
#endif
    if (fd < 0) {
        char path[64];
        static _Atomic unsigned serial;
        snprintf(path, sizeof path, "/%s-%ld-%u", name, (long)getpid(),
                 atomic_fetch_add(&serial, 1));
        fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
        if (fd >= 0)
            shm_unlink(path);
        fd = pmap__fd_sanitize(fd, false);
    }
    if (fd >= 0 && size > 0 && ftruncate(fd, (off_t)size) < 0)
        pmap__close(&fd);     /* (a new file is empty already) */
    return fd < 0 ? -1 : fd;
}

/*
 * Maps size bytes of zeroed shared memory; NULL on failure.  With fd not
 * NULL, the memory is a file whose descriptor goes there, so that it can
 * be sent to a process that is not our child (pmap__shm_attach).
 */
void *pmap__shm_map(size_t size, int *fd)
{
    void *p = MAP_FAILED;
    if (fd != NULL) {
        *fd = pmap__shm_file("pmap", size);
        if (*fd >= 0)
            p = pmap__shm_attach(*fd, size);
        if (p == NULL) {
            pmap__close(fd);
            p = MAP_FAILED;
        }
        return p == MAP_FAILED ? NULL : p;
    }
#ifdef MAP_ANONYMOUS
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
             -1, 0);
#else
    int zero = open("/dev/zero", O_RDWR | O_CLOEXEC);
    if (zero >= 0) {
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, zero, 0);
        close(zero);
    }
#endif
    return p == MAP_FAILED ? NULL : p;
}

/* Maps size bytes of the shared memory file fd; NULL on failure. */
void *pmap__shm_attach(int fd, size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}

void pmap__shm_unmap(void *p, size_t size)
{
    if (p != NULL)
        munmap(p, size);
}

/*
 * size bytes of this process's own memory that no child gets a copy of
 * (it sees them zeroed: MADV_WIPEONFORK), or NULL where that cannot be
 * had.  The caller's writes there copy nothing while its workers live.
 */
void *pmap__shm_unshared(size_t size)
{
#ifdef MADV_WIPEONFORK
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED && madvise(p, size, MADV_WIPEONFORK) == 0)
        return p;
    if (p != MAP_FAILED)
        munmap(p, size);
#else
    (void)size;
#endif
    return NULL;
}

/* ---- the page kept from children -------------------------------------- */

/*
 * What this process writes right after forking (pmap__local_t: its pid,
 * its locks, the last map's number), in a page that a child sees zeroed
 * (MADV_WIPEONFORK, Linux 4.14).  A zeroed mutex is an unlocked one, so a
 * child forked in any way, while any thread held them, finds them free,
 * and its pid unknown.  In the data segment, which the caller's young
 * workers share, the first write after a fork copies the page (20 us on
 * a paravirtualized machine, up to 70 while the new workers start on the
 * other CPU), and releasing these locks after each fork did.  Where no such page can be had, a static copy: a child forked
 * by libpmap, or through pthread_atfork for the heap's lock, initializes
 * the locks again (pmap__local_wiped says which).
 */
static _Atomic(pmap__local_t *) local;
static pmap__local_t local_static = {
    0, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
    PTHREAD_MUTEX_INITIALIZER, 0, NULL, 0, 0, 0, {{NULL, 0}}, 0, 0};
static pthread_once_t local_once = PTHREAD_ONCE_INIT;

/* Whether a zeroed mutex is an unlocked one here (glibc, musl). */
static bool zero_mutex_unlocked(void)
{
    static const pthread_mutex_t init = PTHREAD_MUTEX_INITIALIZER, zero;
    return memcmp(&init, &zero, sizeof init) == 0;
}

static void local_map(void)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t size = page > 0 ? (size_t)page : 4096;
    void *p = zero_mutex_unlocked() && sizeof(pmap__local_t) <= size
                  ? pmap__shm_unshared(size)
                  : NULL;
    atomic_store_explicit(&local, p != NULL ? p : &local_static,
                          memory_order_release);
}

/* Once made, read without pthread_once: in a new worker, its code is one
 * page fault less. */
pmap__local_t *pmap__local(void)
{
    pmap__local_t *l = atomic_load_explicit(&local, memory_order_acquire);
    if (l == NULL) {
        pthread_once(&local_once, local_map);
        l = atomic_load_explicit(&local, memory_order_acquire);
    }
    return l;
}

/* Whether a child sees pmap__local zeroed: else its fork handlers
 * initialize the locks again. */
bool pmap__local_wiped(void)
{
    return pmap__local() != &local_static;
}

/* ---- arenas ------------------------------------------------------------- */

/* Set once an arena could not be made MADV_DONTFORK: children forked
 * since may hold arenas that are not theirs, and unmap them. */
static _Atomic bool arenas_inherited;

/* Whether this process runs under valgrind, whose picture of the address
 * space misses MADV_DONTFORK: a child would take the ranges it did not
 * inherit for mapped, and memcheck's leak scan at its exit would fault on
 * every word of them.  (Its preloaded libraries say so.) */
static bool under_valgrind(void)
{
    static _Atomic int known;   /* 0: not looked yet; 1: no; 2: yes */
    if (known == 0) {
        const char *preload = getenv("LD_PRELOAD");
        known = preload != NULL && strstr(preload, "vgpreload") ? 2 : 1;
    }
    return known == 2;
}

/*
 * Says whether children forked from now on inherit [p, p + size)
 * (MADV_DOFORK) or not (MADV_DONTFORK).  Returns false where that cannot
 * be said, or should not be (under valgrind): children then inherit it.
 */
bool pmap__shm_fork_inherit(void *p, size_t size, bool inherit)
{
#if defined(MADV_DONTFORK) && defined(MADV_DOFORK)
    return p != NULL && !under_valgrind() &&
           madvise(p, size, inherit ? MADV_DOFORK : MADV_DONTFORK) == 0;
#else
    (void)p, (void)size, (void)inherit;
    return false;
#endif
}

/*
 * Held while what children inherit of the arenas changes (a new arena,
 * from its mapping to its MADV_DONTFORK; an arena opened to its worker's
 * fork or closed again, proc.c), and by every fork of this process (fork
 * handlers, registered before the first arena is mapped), so that a
 * child that another thread forks meanwhile sees each change whole.
 * (The library's own forks are kept out by the pools lock; the program's
 * are not.)  Whoever holds it for such a change waits for no other lock,
 * so its order among the locks that fork handlers take does not matter.
 */
static void arenas_lock(void)
{
    pthread_mutex_lock(&pmap__local()->arenas_lock);
}

/* Before every fork of this process (with arenas_lock): counted. */
static void before_fork(void)
{
    arenas_lock();
    atomic_fetch_add(&pmap__local()->forks, 1);
}

static void arenas_unlock(void)
{
    pthread_mutex_unlock(&pmap__local()->arenas_lock);
}

/*
 * The arena open to its own worker's fork (pmap__arena_inherit), and the
 * thread that forks it: a child that another thread forks meanwhile (the
 * program's: the library forks one worker at a time, under the pools
 * lock) inherits that arena too, and unmaps it before anything else runs
 * there (after_fork_child), so that no process but the worker and what
 * the worker forks ever holds it.
 */
static struct {
    unsigned char *_Atomic arena;
    pthread_t by;
} opened;

/* In every child, before fork returns there: drops the arena open to a
 * worker's fork unless this is that worker, and forgets it either way,
 * so that what this child forks later never unmaps that range again (it
 * may hold its own mapping there by then; where arenas cannot be kept
 * from children, family.c drops them all instead).  Its lock is free
 * again where it does not see pmap__local zeroed. */
static void after_fork_child(void)
{
    unsigned char *arena = atomic_exchange(&opened.arena, NULL);
    if (arena != NULL && !atomic_load(&arenas_inherited) &&
        !pthread_equal(opened.by, pthread_self()))
        pmap__shm_unmap(arena, PMAP__ARENA_SIZE);
    if (!pmap__local_wiped())
        pthread_mutex_init(&pmap__local()->arenas_lock, NULL);
}

static void watch_forks(void)
{
    pthread_atfork(before_fork, arenas_unlock, after_fork_child);
}

/* Registers the fork handlers above, once: before the first pool's
 * descriptors and arenas are made. */
void pmap__forks_watch(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, watch_forks);
}

/* Says that the fork about to be made is the library's (a worker's, the
 * fork server's): one that drops every descriptor of every pool. */
void pmap__forks_own(void)
{
    atomic_fetch_add(&pmap__local()->own_forks, 1);
}

/* How many forks the program has made, with fork(), since the handlers
 * were registered: the children that may hold every descriptor of the
 * pools that existed then (pmap__proc_retire).  Counted in the page no
 * child inherits, so that counting copies nothing. */
unsigned long pmap__forks_program(void)
{
    pmap__local_t *l = pmap__local();
    return atomic_load(&l->forks) - atomic_load(&l->own_forks);
}

/* Holds every fork of this process off (hold) or lets them go again:
 * around a change to what children inherit of an arena. */
static void arenas_hold(bool hold)
{
    pmap__forks_watch();
    if (hold)
        arenas_lock();
    else
        arenas_unlock();
}

/*
 * Maps size bytes of zeroed shared memory for arenas (as pmap__shm_map),
 * which no child inherits from the start (MADV_DONTFORK).  Where that
 * cannot be had, every child forked from now on holds them, and unmaps
 * the arenas it finds in the pools (pmap__arena_forget); *kept, if not
 * NULL, says which.  NULL on failure.
 */
void *pmap__arenas_map(size_t size, int *fd, bool *kept)
{
    arenas_hold(true);
    void *p = pmap__shm_map(size, fd);
    bool k = pmap__shm_fork_inherit(p, size, false);
    arenas_hold(false);
    if (p != NULL && !k)
        atomic_store(&arenas_inherited, true);
    if (kept != NULL)
        *kept = k;
    return p;
}

/*
 * Whether a child forked now inherits arena p: no (MADV_DONTFORK) from
 * its making, so that a worker is never given its siblings' arenas and
 * neither the fork nor the new worker spends time on them; yes
 * (MADV_DOFORK, and recorded in `opened`) only across the fork of its own
 * worker (proc.c, under the pools lock), which a fork by another thread
 * sees whole or not at all.  Where that cannot be said, every arena is
 * inherited and the child unmaps the others' (pmap__arena_forget).
 */
void pmap__arena_inherit(void *p, bool inherit)
{
    if (p == NULL)
        return;
    arenas_hold(true);
    opened.by = pthread_self();
    atomic_store(&opened.arena, inherit ? p : NULL);
    bool said = pmap__shm_fork_inherit(p, PMAP__ARENA_SIZE, inherit);
    arenas_hold(false);
    if (!said && !inherit)
        atomic_store(&arenas_inherited, true);
}

/* Whether children forked here hold arenas not their own (to forget). */
bool pmap__arenas_inherited(void)
{
    return atomic_load(&arenas_inherited);
}

/*
 * In a forked child: drops arena p of the parent's, which the child holds
 * only where arenas could not be kept from it.  Otherwise the range is
 * left alone: it may hold a mapping of the child's own by now.
 */
void pmap__arena_forget(void *p)
{
    if (atomic_load(&arenas_inherited))
        pmap__shm_unmap(p, PMAP__ARENA_SIZE);
}

/* ---- spare arenas -------------------------------------------------------- */

/*
 * The arenas of workers that ended cleanly, kept for this process's next
 * workers forked here: a new arena cost its mapping, its marking and its
 * unmapping, and each of its pages a first touch in the caller, in a new
 * pool's first map (1.5 times its later ones in W1; bench/NOTES.md).
 *
 * Kept only where nothing else can still write one: the caller keeps every
 * arena from its children but its own worker (MADV_DONTFORK); no process
 * that held it has forked since that worker started (its slot's `alone`
 * still holds its pid, which a fork handler clears: pmap__worker_forking,
 * registered by proc.c; a stray write there is not taken for it either);
 * and that worker has exited of its own accord and been waited for.
 * (vfork and posix_spawn lend the worker's memory until an exec, which a
 * worker that exits waited for; a raw clone system call runs no fork
 * handler and is not seen.)  At most PMAP__SPARE_ARENAS of them, holding at most
 * SPARE_ARENA_BYTES between them, as reckoned from how deep batches went
 * into an arena's regions under every worker that had it: an arena used
 * deeper goes.
 */
#define SPARE_ARENA_BYTES ((size_t)8 << 20)
#define SPARE_ARENA_DEPTH ((size_t)256 << 10)

/* What an arena whose regions were used `depth` deep may hold, reckoned:
 * each of its four regions that deep, its slot's page and report, and the
 * crash handler's stack. */
static size_t reckoned(size_t depth)
{
    return PMAP__ARENA_HEAD + PMAP__ALTSTACK_SIZE + 4 * depth;
}

/* Whether arenas can be kept for later workers here. */
static bool arenas_recyclable(void)
{
    return pmap__local_wiped() && !pmap__arenas_inherited() &&
           !under_valgrind();
}

/*
 * A spare arena for a worker forked here, its slot and report cleared as
 * a new one's are, or NULL; *depth is how deep its regions were used
 * (pmap__arena_give_back).  pools_lock held.
 */
unsigned char *pmap__arena_take(size_t *depth)
{
    pmap__local_t *l = pmap__local();
    if (l->nspare_arenas == 0)
        return NULL;
    pmap__spare_arena_t *a = &l->spare_arenas[--l->nspare_arenas];
    l->spare_arena_bytes -= reckoned(a->depth);
    *depth = a->depth;
    pmap__slot_t *slot = pmap__arena_state(a->arena);
    uint64_t reach[PMAP__DEPTH];
    for (int r = 0; r < PMAP__DEPTH; r++)
        reach[r] = atomic_load_explicit(&slot->reach[r], memory_order_relaxed);
    memset(a->arena, 0, sizeof(pmap__slot_t));
    memset(a->arena + PMAP__REPORT_AT, 0, sizeof(pmap__report_t));
    for (int r = 0; r < PMAP__DEPTH; r++)    /* for pmap__arena_prefault */
        atomic_store_explicit(&slot->reach[r], reach[r], memory_order_relaxed);
    return a->arena;
}

/*
 * In a new worker: maps, in one call a region, the pages of its result
 * regions that its predecessor wrote (a spare arena's: the slot's `reach`,
 * which then starts again from 0 for this worker's own), where writing its
 * first results would fault them in one by one, a trap each, in the first
 * map of every pool but a process's first (W1: a new pool's first map 1.21
 * times its later ones, against 1.15 with this; bench/NOTES.md).  Where
 * the system cannot, they are faulted in as used.
 */
void pmap__arena_prefault(unsigned char *arena)
{
    pmap__slot_t *slot = pmap__arena_state(arena);
    for (unsigned r = 0; r < PMAP__DEPTH; r++) {
        size_t reach = (size_t)atomic_exchange_explicit(
            &slot->reach[r], 0, memory_order_relaxed);
        if (reach == 0)
            continue;   /* a new arena: no call, no page of libc's code */
#ifdef MADV_POPULATE_WRITE
        /* The kernel rounds the length up to a whole page. */
        (void)madvise(pmap__arena_slot(arena, false, r, true).base,
                      reach < PMAP__SLOT_SIZE ? reach : PMAP__SLOT_SIZE,
                      MADV_POPULATE_WRITE);
#endif
    }
}

/* How many spare arenas there are now.  pools_lock held. */
int pmap__arenas_spare(void)
{
    return (int)pmap__local()->nspare_arenas;
}

/*
 * Gives back the arena of a worker forked here that has been waited for:
 * kept for a later worker if that worker, pid `left` (0: it did not
 * exit of its own accord, or the fork handler is not registered), held
 * the arena alone, the regions went no deeper than `depth` (its batches'
 * arguments, and before them the arena's earlier workers') or its
 * results, and there is room; else unmapped.  pools_lock held.
 */
void pmap__arena_give_back(unsigned char *arena, pid_t left, size_t depth)
{
    if (arena == NULL)
        return;
    pmap__local_t *l = pmap__local();
    pmap__slot_t *slot = pmap__arena_state(arena);
    for (int r = 0; r < PMAP__DEPTH; r++) {
        uint64_t results =
            atomic_load_explicit(&slot->reach[r], memory_order_relaxed);
        depth = results > depth ? (size_t)results : depth;
    }
    size_t bytes = reckoned(depth);
    if (left > 0 && atomic_load(&slot->alone) == left &&
        depth <= SPARE_ARENA_DEPTH && arenas_recyclable() &&
        l->nspare_arenas < PMAP__SPARE_ARENAS &&
        l->spare_arena_bytes + bytes <= SPARE_ARENA_BYTES) {
        l->spare_arenas[l->nspare_arenas++] =
            (pmap__spare_arena_t){arena, depth};
        l->spare_arena_bytes += bytes;
        return;
    }
    pmap__shm_unmap(arena, PMAP__ARENA_SIZE);
}

/* The slot at the head of a worker's arena. */
pmap__slot_t *pmap__arena_state(unsigned char *arena)
{
    return (pmap__slot_t *)(void *)arena;
}

/* Argument or result region `slot` of a worker's arena; empty without one
 * (an in-process worker: inline.c) or where it is private (its slot says
 * so, which the caller keeps in the worker's record, pmap__worker_t: a
 * page of the arena it never reads is one fault less). */
pmap__region_t pmap__arena_slot(unsigned char *arena, bool private,
                                unsigned slot, bool results)
{
    if (arena == NULL || private)
        return (pmap__region_t){0};
    size_t at = PMAP__ARENA_HEAD +
                ((results ? 2u : 0u) + slot % 2) * (size_t)PMAP__SLOT_SIZE;
    return (pmap__region_t){.base = arena + at, .size = PMAP__SLOT_SIZE};
}
