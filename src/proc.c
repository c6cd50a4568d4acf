/* SPDX-License-Identifier: MIT */
/*
 * proc.c - worker processes as the caller sees them: starting one (forked
 * here, or by the fork server), knowing when it has ended, letting one
 * leave within a grace period, and waiting for it.
 *
 * Invariants:
 *  - Liveness comes from the process, never only from its channel: a
 *    process the callback forked may hold the channel open long after the
 *    worker died.  On Linux each worker has a pidfd, polled beside its
 *    channel; elsewhere the loop looks every PMAP__TICK_NS, with
 *    waitpid(WNOHANG) or the fork server's reports.  No signal handler.
 *  - A worker sees only its own shared memory: each process gets an arena
 *    (a spare one, or new: a new pool's carved from one mapping), which no
 *    child forked here but its own inherits (shm.c, even one that another
 *    thread forks meanwhile; or the child unmaps every other arena of every
 *    pool before anything else), kept for a later worker once it is gone
 *    only if no other process can hold it.
 *  - The child closes every descriptor of every pool of the process except
 *    its own end of its channel, so that closing our end always reaches it
 *    as EOF, and destroying one pool never waits on another's workers.
 *    The list of pools (family.c) is locked across fork, and while
 *    descriptors and arenas are made or dropped, for that reason.
 *  - Before a fork here, stdio is flushed (or the child would print the
 *    caller's buffered text again) and every signal but the synchronous
 *    faults is blocked, so no handler of the caller runs in the child
 *    before worker.c resets them.
 *  - We wait for our own workers by pid and nothing else; the server's
 *    workers are its children, and it reports how they end.  Every wait
 *    has a deadline, or follows a SIGKILL.
 */
#include "pmap_internal.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif

/* How long the fork server has to report the end of a worker we killed,
 * before its status is taken for lost. */
#define KILLED_REPORT_NS 1000000000LL

static const pmap__worker_t *taken;     /* pmap__proc_taken */

/* The process layer of PMAP_START_MPI, when libpmap-mpi is linked in and
 * initialized; a pool using it asks it for everything below that names a
 * pid (pool->remote). */
const pmap__remote_t *pmap__remote;

/* Kills w's process, wherever it runs. */
void pmap__proc_kill(const pool_t *pool, const pmap__worker_t *w)
{
    if (pool->remote != NULL)
        pool->remote->kill(w->pidfd);
    else
        pmap__kill(w->pid, w->pidfd);
}

/* ---- pool_fd's epoll set ------------------------------------------------ */

/* Adds fd to the set, or changes its entry, for input, or for output
 * when it stands for PMAP__EV_OUTPUT.  Returns 0, or a negative code (also
 * where there is no set). */
static int epoll_set(const pool_t *pool, bool add, int fd, uint64_t event)
{
#ifdef __linux__
    bool output = event != PMAP__EV_RETIREE && (event & 3) == PMAP__EV_OUTPUT;
    struct epoll_event ev = {output ? EPOLLOUT : EPOLLIN, {.u64 = event}};
    if (pool->epfd < 0 || fd < 0 || pool->closing)
        return PMAP_ENOSYS;
    int op = add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    return epoll_ctl(pool->epfd, op, fd, &ev) == 0 ? 0 : -errno;
#else
    (void)pool, (void)add, (void)fd, (void)event;
    return PMAP_ENOSYS;
#endif
}

int pmap__epoll_add(const pool_t *pool, int fd, uint64_t event)
{
    return epoll_set(pool, true, fd, event);
}

int pmap__epoll_mod(const pool_t *pool, int fd, uint64_t event)
{
    return epoll_set(pool, false, fd, event);
}

/* Removes fd before it is closed: a copy of it in a child the program
 * forked would otherwise keep it in the set.  Not while the pool is being
 * destroyed: the set is closed with it (pool->closing). */
void pmap__epoll_del(const pool_t *pool, int fd)
{
#ifdef __linux__
    if (pool->epfd >= 0 && fd >= 0 && !pool->closing)
        epoll_ctl(pool->epfd, EPOLL_CTL_DEL, fd, NULL);
#else
    (void)pool, (void)fd;
#endif
}

/* ---- starting ----------------------------------------------------------- */

/* Whether w is the slot whose buffers this worker took for its own
 * (pmap__worker_take): its pool's copy here must not free them. */
bool pmap__proc_taken(const pmap__worker_t *w)
{
    return w == taken;
}

/* In the child just forked for slot w, with pools_lock held at the fork
 * (and the pools' descriptors marked for it if `marked`): drops what is
 * not the worker's (the caller's side of its channel, every other
 * descriptor and arena of every pool, the fork server's channel) and
 * becomes the worker. */
_Noreturn void pmap__proc_become_worker(const pmap__worker_t *w,
                                        const pmap__worker_setup_t *setup,
                                        bool marked)
{
    taken = w;
    pmap__worker_take(&w->in.buf, &w->out);
    pmap__pools_child_init(w, marked);
    pmap__server_child_init();
    pmap__worker_main(setup);
}

/* What the forking thread found out for the children it forks together:
 * whether the pools' descriptors are marked (pmap__pools_mark), and this
 * process's signal handlers, which they drop. */
typedef struct forking {
    bool marked;
    sigset_t caught;
} forking_t;

static void forking_begin(forking_t *f)
{
    f->marked = pmap__pools_mark();
    pmap__signals_caught(&f->caught);
}

/* Whether the fork handler that tells when a worker's arena is no longer
 * its alone (pmap__worker_forking) is registered: once, in this process,
 * before its first worker is forked here.  Its workers, and what they
 * fork, inherit it. */
static bool forks_watched;

static void watch_forks(void)
{
    forks_watched = pthread_atfork(pmap__worker_forking, NULL, NULL) == 0;
}

/*
 * Forks the process of a worker whose arena is `arena`, as fork() does,
 * but the child alone inherits that arena (shm.c, pmap__arena_inherit);
 * pools_lock held (a worker forked here, or by libpmap-mpi on any rank):
 * one at a time.  errno is fork's.
 */
pid_t pmap__proc_fork_with_arena(unsigned char *arena)
{
    static pthread_once_t watching = PTHREAD_ONCE_INIT;
    pthread_once(&watching, watch_forks);
    pmap__arena_inherit(arena, true);   /* this child's alone */
    pmap__forks_own();
    pid_t pid = fork();
    if (pid != 0) {
        int err = errno;
        pmap__arena_inherit(arena, false);
        errno = err;
    }
    return pid;
}

/* Forks worker w from this process, pools_lock held, signals blocked and
 * stdio flushed (pmap__fork_prepare); its side of the channel is theirs.
 * Returns its pid, or a negative code. */
static pid_t fork_one(pool_t *pool, pmap__worker_t *w,
                      const pmap__channel_t *theirs, const forking_t *f)
{
    pid_t self = pmap__self();
    pmap__worker_setup_t setup = {
        self,             self,            w->index,
        *theirs,          w->arena,        pool->opts.worker_init,
        pool->opts.worker_exit, pool->opts.worker_arg, &f->caught};
    pid_t pid = pmap__proc_fork_with_arena(w->arena);
    if (pid == 0)
        pmap__proc_become_worker(w, &setup, f->marked);
    return pid < 0 ? -errno : pid;
}

/* Forks worker w from this process, pools_lock held. */
static pid_t fork_worker(pool_t *pool, pmap__worker_t *w,
                         const pmap__channel_t *theirs)
{
    sigset_t old;
    forking_t f;
    forking_begin(&f);
    pmap__fork_prepare(&old, false);
    pid_t pid = fork_one(pool, w, theirs, &f);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return pid;
}

/* Asks the fork server for w's process.  The descriptors it is handed are
 * recorded in the slot (so that a child forked meanwhile closes them), and
 * the pools lock is not held while the server answers: a stopped server
 * must not stall the other pools of the process.  Returns its pid, or a
 * negative code. */
static pid_t ask_server(pool_t *pool, pmap__worker_t *w,
                        const pmap__channel_t *theirs)
{
    pmap__worker_setup_t setup = {pmap__self(), 0, w->index, PMAP__NO_CHANNEL,
                                  NULL, pool->opts.worker_init,
                                  pool->opts.worker_exit,
                                  pool->opts.worker_arg, NULL};
    pid_t pid = -1;
    pmap__pools_unlock();
    int rc = pmap__server_spawn(&setup, theirs, w->handoff[1],
                                pmap__now_ns() + pool->start_timeout_ns, &pid);
    pmap__pools_lock();
    return rc < 0 ? rc : pid;
}

/* Has the remote process layer start w's process, whose side of the
 * channel is theirs; its arena is private to this process (no shared
 * regions: the worker is elsewhere).  Its stand-in pidfd goes to
 * w->pidfd. */
static pid_t ask_remote(pool_t *pool, pmap__worker_t *w,
                        const pmap__channel_t *theirs)
{
    pid_t pid = -1;
    pmap__arena_state(w->arena)->private = 1;
    int rc = pool->remote->spawn(pool, w, theirs,
                                 pmap__now_ns() + pool->start_timeout_ns,
                                 &pid, &w->pidfd);
    w->private = pmap__arena_state(w->arena)->private != 0; /* 0: rank 0's */
    return rc < 0 ? rc : pid;
}

/* Whether w's process is forked here (not by the fork server, not on
 * another rank): its arena is anonymous, one of the spare ones if any. */
static bool forked_here(const pool_t *pool)
{
    return !pool->server && pool->remote == NULL;
}

/* A new arena of w's own, kept from every other child of ours: a spare
 * one (how deep its regions were used goes to w->depth), or a new one. */
static unsigned char *new_arena(const pool_t *pool, pmap__worker_t *w)
{
    unsigned char *arena = forked_here(pool) ? pmap__arena_take(&w->depth)
                                             : NULL;
    if (arena != NULL)
        return arena;   /* kept from children already */
    return pmap__arenas_map(PMAP__ARENA_SIZE,
                            pool->server ? &w->handoff[1] : NULL, NULL);
}

/* Makes the channel and the arena of w's next process, pools_lock held:
 * our side of the channel goes to w->ch, theirs to *theirs (its write end
 * also to w->handoff[0], so that a child forked meanwhile closes it); the
 * arena is `arena` if not NULL (spawn_all), else a spare or new one.
 * Returns 0, or a negative code with nothing made (`arena` is still the
 * caller's). */
static int prepare(pool_t *pool, pmap__worker_t *w, pmap__channel_t *theirs,
                   unsigned char *arena)
{
    /* The slot's buffers, which a worker forked here also takes for its
     * own: made now, before the fork, neither side allocates memory for
     * its first frames (in a new child, malloc writes pages of the heap
     * and of libc that it shares, a copy-on-write fault each). */
    if (!pool->server && pool->remote == NULL &&
        (pmap__buf_reserve(&w->in.buf, PMAP__READ_SIZE) < 0 ||
         pmap__outq_reserve(&w->out, PMAP__FIRST_FRAMES) < 0))
        return PMAP_ENOMEM;
    int rc = pmap__channel_open(&w->ch, theirs);
    if (rc < 0)
        return rc;
    w->handoff[0] = theirs->out;    /* theirs->in is w->ch.keep */
    w->depth = 0;
    w->arena = arena != NULL ? arena : new_arena(pool, w);
    if (w->arena == NULL) {
        pmap__close(&w->handoff[0]);
        pmap__channel_close(&w->ch);
        return PMAP_ENOMEM;
    }
    /* Read by the worker as it starts; the memory is zeroed already, and
     * a page the caller does not touch is one fault less for it. */
    if (pool->opts.worker_memory_limit != 0)
        pmap__arena_state(w->arena)->memory_limit =
            pool->opts.worker_memory_limit;
    return 0;
}

/* After w's process was started (pid), or could not be (a negative
 * code): its side of the channel is no longer ours to hold; without a
 * process, the channel and the arena go too.  pools_lock held. */
static pid_t handed(pmap__worker_t *w, pid_t pid)
{
    pmap__close(&w->handoff[0]);
    pmap__close(&w->handoff[1]);
    if (pid < 0) {
        pmap__channel_close(&w->ch);
        pmap__shm_unmap(w->arena, PMAP__ARENA_SIZE);
        w->arena = NULL;
    } else {
        w->pid = pid;
    }
    return pid;
}

/* Makes the channel and the arena of w's next process and starts it;
 * pools_lock held (released while the server answers).  Returns its pid,
 * or a negative code. */
static pid_t start(pool_t *pool, pmap__worker_t *w)
{
    pmap__channel_t theirs;
    int rc = prepare(pool, w, &theirs, NULL);
    if (rc < 0)
        return rc;
    pid_t pid;
    if (pool->remote != NULL)
        pid = ask_remote(pool, w, &theirs);
    else if (pool->server)
        pid = ask_server(pool, w, &theirs);
    else
        pid = fork_worker(pool, w, &theirs);
    return handed(w, pid);
}

/* Connects w's new process (pid) to the loop: its pidfd, its entries in
 * the epoll set.  Returns 0, or pid itself where it is a negative code
 * (no process: the slot stays empty). */
static int connect_slot(pool_t *pool, pmap__worker_t *w, pid_t pid)
{
    if (pid < 0)
        return (int)pid;
    w->born_ns = pmap__now_ns();
    w->ready = w->gone = w->reaped = false;
    w->nsetup = 0;
    w->nbatch = 0;
    w->used = 0;
    w->over_memory = false;
    w->next_slot = 0;
    pmap__outq_reset(&w->out);
    w->in.buf.len = w->in.start = 0;
    if (pool->remote == NULL)
        w->pidfd = pmap__pidfd_open(pid);
    if (w->pidfd == -ESRCH)
        w->gone = true;     /* the server's child, dead and reaped already */
    if (w->pidfd < 0)
        w->pidfd = -1;
    w->polled_out = false;
    w->pipe_grown = false;
    pmap__epoll_add(pool, w->ch.in,
                    PMAP__EVENT(w->index, PMAP__EV_INPUT));
    pmap__epoll_add(pool, w->pidfd,
                    PMAP__EVENT(w->index, PMAP__EV_ENDED));
    return 0;
}

/*
 * Starts the process for worker slot w and connects it.  Returns 0 or a
 * negative code (the slot then stays empty).
 */
int pmap__proc_spawn(pool_t *pool, pmap__worker_t *w)
{
    pool->steady = false;   /* not ready yet */
    pmap__pools_lock();
    pid_t pid = start(pool, w);
    pmap__pools_unlock();
    return connect_slot(pool, w, pid);
}

/* Slots a new pool forks at once, at most (spawn_group). */
#define GROUP 8

/* A new pool's arenas carved from one mapping (spawn_all), for its slots
 * from `first` on; the slots before take spare ones. */
typedef struct carved {
    unsigned char *base;    /* or NULL: none */
    int first;
} carved_t;

/* Slot i's arena, carved from a new pool's, or NULL. */
static unsigned char *arena_of(const carved_t *c, int i)
{
    return c->base != NULL && i >= c->first
               ? c->base + (size_t)(i - c->first) * PMAP__ARENA_SIZE
               : NULL;
}

/* Unmaps the carved arenas of slots [from, to), never given to a slot. */
static void carved_drop(const carved_t *c, int from, int to)
{
    from = from > c->first ? from : c->first;
    if (c->base != NULL && from < to)
        pmap__shm_unmap(arena_of(c, from),
                        (size_t)(to - from) * PMAP__ARENA_SIZE);
}

/*
 * Forks the processes of slots [first, first + n) of a new pool, n at most
 * GROUP: every channel and arena made first, then the forks back to back,
 * then each process connected.  Once a child lives, each page this process
 * writes costs a copy-on-write fault, 20 to 30 us on a paravirtualized
 * machine (it flushes the other CPUs' TLBs); forking slot by slot wrote
 * the slots, the locks, errno and stdio's between forks, each page again
 * after each fork.  Returns 0 or the first negative code (the slots from
 * the failed one on then stay empty).
 */
static int spawn_group(pool_t *pool, int first, int n, const carved_t *arenas)
{
    pmap__channel_t theirs[GROUP];
    pid_t pid[GROUP];
    int made = 0, rc = 0;
    pool->steady = false;   /* not ready yet */
    pmap__pools_lock();
    while (made < n &&
           (rc = prepare(pool, &pool->workers[first + made], &theirs[made],
                         arena_of(arenas, first + made))) == 0)
        made++;
    carved_drop(arenas, first + made, first + n);   /* slots not made */
    sigset_t old;
    forking_t f;
    forking_begin(&f);
    pmap__fork_prepare(&old, false);
    int forked = 0;
    while (forked < made &&
           (pid[forked] = fork_one(pool, &pool->workers[first + forked],
                                   &theirs[forked], &f)) > 0)
        forked++;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (forked < made)
        rc = pid[forked];
    for (int i = 0; i < made; i++)
        handed(&pool->workers[first + i], i < forked ? pid[i] : rc);
    pmap__pools_unlock();
    for (int i = 0; i < forked; i++) {
        int c = connect_slot(pool, &pool->workers[first + i], pid[i]);
        rc = rc < 0 ? rc : c;
    }
    return rc;
}

/*
 * Starts the processes of every slot of a new pool and connects them:
 * forked here, GROUP at a time (spawn_group); the fork server and the
 * remote layer start them one by one.  Returns 0 or the first negative
 * code.
 *
 * The arenas of a pool forked here are the spare ones (shm.c), then
 * carved from one mapping, kept from every child but across the fork of
 * each slot's own: fork copies the caller's mappings one by one, even
 * those it does not pass on, and with an arena apiece the 512th worker's
 * fork took hundreds of microseconds more than the first's.  (A
 * replacement gets a spare or new arena, that nothing its predecessor
 * forked can hold: start.)
 */
int pmap__proc_spawn_all(pool_t *pool)
{
    bool forks = forked_here(pool);
    int step = forks ? GROUP : 1, rc = 0, i;
    pmap__pools_lock();
    carved_t arenas = {NULL, forks ? pmap__arenas_spare() : 0};
    size_t size = arenas.first < pool->nworkers
                      ? (size_t)(pool->nworkers - arenas.first) *
                            PMAP__ARENA_SIZE
                      : 0;
    bool kept = false;
    if (forks && size > 0)
        arenas.base = pmap__arenas_map(size, NULL, &kept);
    if (arenas.base != NULL && !kept) {
        pmap__shm_unmap(arenas.base, size);     /* an arena apiece, then */
        arenas.base = NULL;
    }
    pmap__pools_unlock();
    for (i = 0; i < pool->nworkers && rc == 0; i += step) {
        int n = pool->nworkers - i < step ? pool->nworkers - i : step;
        rc = forks ? spawn_group(pool, i, n, &arenas)
                   : pmap__proc_spawn(pool, &pool->workers[i]);
    }
    carved_drop(&arenas, i, pool->nworkers);    /* groups never tried */
    return rc;
}

/* The pool's poll array, with room for n entries; NULL without memory.
 * Scratch for one wait: the retirees' here, every channel's in loop.c
 * where there is no epoll. */
struct pollfd *pmap__pollfds(pool_t *pool, size_t n)
{
    if (n > pool->pollfds_cap) {
        struct pollfd *p = realloc(pool->pollfds, n * sizeof *p);
        if (p == NULL)
            return NULL;
        pool->pollfds = p;
        pool->pollfds_cap = n;
    }
    return pool->pollfds;
}

/* ---- ending ------------------------------------------------------------- */

/*
 * Where there is no pidfd: whether w's process has ended, taking its
 * status if so (it is then reaped).  Sets w->gone.
 */
void pmap__proc_check(pool_t *pool, pmap__worker_t *w)
{
    if (w->pid <= 0 || w->gone || w->pidfd >= 0)
        return;
    if (pool->server) {
        w->reaped = pmap__server_reap(w->pid, &w->status, 0) == 0;
    } else {
        pid_t r;
        do
            r = waitpid(w->pid, &w->status, WNOHANG);
        while (r < 0 && errno == EINTR);
        w->reaped = r == w->pid;
        w->gone = r < 0;    /* reaped by someone else: its status is lost */
    }
    w->gone = w->gone || w->reaped;
}

/*
 * Waits for process pid, killing it first unless it has ended; stores its
 * wait status.  Returns 0, or PMAP_ELOST when the status cannot be had
 * (the caller's SIGCHLD handler took it, or the fork server is gone or
 * stopped).
 */
static int reap_pid(const pool_t *pool, pid_t pid, int pidfd, int *status)
{
    if (pool->remote != NULL)
        return pool->remote->reap(pidfd, status);
    if (pool->server) {
        int rc = pmap__server_reap(pid, status,
                                   pmap__now_ns() + PMAP__REPORT_NS);
        if (rc == PMAP_ETIMEDOUT) {
            pmap__kill(pid, pidfd);
            rc = pmap__server_reap(pid, status,
                                   pmap__now_ns() + KILLED_REPORT_NS);
        }
        return rc < 0 ? PMAP_ELOST : 0;
    }
    pid_t r;
    do
        r = waitpid(pid, status, WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == pid)
        return 0;
    if (r < 0)
        return PMAP_ELOST;
    pmap__kill(pid, pidfd);
    return pmap__reap(pid, status);
}

/* For process pid, forked here and waited for (wait status `status`):
 * pid if its arena may be another worker's (shm.c, spare arenas), else 0.
 * It must have left as a worker told to leave does (worker.c: EXIT_DONE),
 * and the fork handler that says whether a process it forked holds the
 * arena too must have been registered before it was forked. */
static pid_t left_as_told(const pool_t *pool, pid_t pid, int status)
{
    return forks_watched && forked_here(pool) && WIFEXITED(status) &&
                   WEXITSTATUS(status) == 0
               ? pid
               : 0;
}

/* Drops w's arena, whose process was waited for (`left`: its pid if it
 * left as told, else 0), under the lock: a child forked meanwhile by
 * another thread must not keep a mapping that the list no longer shows. */
static void drop_arena(pmap__worker_t *w, pid_t left)
{
    pmap__pools_lock();
    pmap__arena_give_back(w->arena, left, w->depth);
    w->arena = NULL;
    pmap__pools_unlock();
}

/* Closes a descriptor of the pool's, under the lock: a child forked
 * meanwhile by another thread must not find its number in the list after
 * it was closed, when it may already name that child's own channel. */
static void close_watched(const pool_t *pool, int *fd)
{
    if (*fd < 0)
        return;
    pmap__pools_lock();
    pmap__epoll_del(pool, *fd);
    pmap__close(fd);
    pmap__pools_unlock();
}

/*
 * Closes w's channel, makes sure its process is gone (killing it if it is
 * still running) and waits for it.  Stores its wait status and returns 0,
 * or returns PMAP_ELOST when it cannot be had.  The slot is then empty,
 * for pmap__proc_spawn.
 */
int pmap__proc_reap(pool_t *pool, pmap__worker_t *w, int *status)
{
    int rc = PMAP_ELOST;
    pool->steady = false;   /* its slot is empty */
    close_watched(pool, &w->ch.in);
    close_watched(pool, &w->ch.out);
    close_watched(pool, &w->ch.keep);
    if (w->reaped) {
        *status = w->status;
        rc = 0;
    } else if (w->pid > 0) {
        rc = reap_pid(pool, w->pid, w->pidfd, status);
    }
    close_watched(pool, &w->pidfd);
    drop_arena(w, rc == 0 ? left_as_told(pool, w->pid, *status) : 0);
    w->pid = 0;
    w->gone = w->reaped = false;
    return rc;
}

/*
 * Tells w to leave, before the EOF that follows, where a frame fits in its
 * pipe now and none is half sent (what is queued for it is dropped, as
 * at EOF).  EOF alone is not enough: a process that the program forked
 * while the pool lived, and that has not called exec, holds a copy of our
 * end, and the worker would wait for it until killed at the deadline, its
 * worker_exit never run.  Only then: a write to an empty pipe costs a page.
 */
static void say_leave(const pool_t *pool, const pmap__worker_t *w)
{
    if (pmap__forks_program() == pool->program_forks ||
        !pmap__outq_between_frames(&w->out))
        return;
    unsigned char frame[PMAP__HEADER_SIZE];
    pmap__header_encode(frame, &(pmap__header_t){PMAP__LEAVE, 0, 0});
    struct iovec iov = {frame, sizeof frame};
    pmap__writev(w->ch.out, &iov, 1);   /* 32 bytes: all or nothing */
}

/*
 * Tells w to leave (EOF on its channel, after a LEAVE frame where needed:
 * its worker_exit, then _exit) and frees its slot at once; the process
 * has until deadline, then is killed.
 */
void pmap__proc_retire(pool_t *pool, pmap__worker_t *w, int64_t deadline)
{
    pool->steady = false;   /* its slot is empty */
    /* Under the lock: its descriptors move from the slot to the list of
     * retirees, both of which a child forked meanwhile must see whole. */
    pmap__pools_lock();
    if (pool->nretirees == pool->retirees_cap) {
        pmap__retiree_t *r =
            pmap__grow(pool->retirees, &pool->retirees_cap, sizeof *r);
        if (r == NULL) {
            pmap__pools_unlock();
            int status;     /* no room to wait for it: kill it now */
            pmap__proc_reap(pool, w, &status);
            return;
        }
        pool->retirees = r;
    }
    if (w->polled_out)  /* else not in the set (ENOENT writes errno) */
        pmap__epoll_del(pool, w->ch.out);
    w->polled_out = false;
    say_leave(pool, w);
    pmap__close(&w->ch.out);    /* EOF for it: leave */
    pmap__close(&w->ch.keep);
    /* Its events are no longer the slot's (the next step looks at every
     * retiree). */
    pmap__epoll_mod(pool, w->ch.in, PMAP__EV_RETIREE);
    pmap__epoll_mod(pool, w->pidfd, PMAP__EV_RETIREE);
    if (pool->remote != NULL)
        pool->remote->detach(w->pidfd);     /* its arena goes now */
    /* Its arena is kept until it has ended, unless children forked
     * meanwhile would inherit it (family.c forgets only the slots'). */
    if (pmap__arenas_inherited()) {
        pmap__shm_unmap(w->arena, PMAP__ARENA_SIZE);
        w->arena = NULL;
    }
    pool->retirees[pool->nretirees] = (pmap__retiree_t){
        w->reaped ? 0 : w->pid, w->ch.in, w->pidfd, deadline, w->arena,
        w->depth, w->reaped ? left_as_told(pool, w->pid, w->status) : 0};
    pool->nretirees++;  /* 0: already waited for (pmap__proc_check) */
    w->ch.in = w->pidfd = -1;
    w->pid = 0;
    w->gone = w->reaped = false;
    w->arena = NULL;
    pmap__pools_unlock();
}

/* Whether retiree r has ended: its pidfd, or a look without one (which
 * may wait for it: pid 0 then). */
static bool retiree_gone(const pool_t *pool, pmap__retiree_t *r, int *status)
{
    if (r->pid == 0)
        return true;
    if (r->pidfd >= 0) {
        struct pollfd p = {r->pidfd, POLLIN, 0};
        return pmap__poll(&p, 1, 0) > 0;
    }
    pid_t got = pool->server
                    ? (pmap__server_reap(r->pid, status, 0) == 0 ? r->pid : 0)
                    : waitpid(r->pid, status, WNOHANG);
    if (got == r->pid)
        r->left = left_as_told(pool, r->pid, *status);
    if (got == r->pid || got < 0)
        r->pid = 0;
    return r->pid == 0;
}

/* Reads and drops what a retiree sends (a worker finishing a batch when
 * its pool is destroyed must not block writing it); closes at EOF.  A
 * small sink: a frame a page deep is probed at entry (stack clash
 * protection), and a page of stack that deep is one the caller's young
 * workers share, its first write a copy. */
static void drain(const pool_t *pool, pmap__retiree_t *r)
{
    char sink[1024];
    ssize_t n;
    if (r->fd < 0)
        return;
    while ((n = pmap__read(r->fd, sink, sizeof sink)) > 0)
        ;
    if (n != -EAGAIN && n != -EWOULDBLOCK)
        close_watched(pool, &r->fd);
}

/* When to look at retiree r again if nothing comes: now if it was waited
 * for already, else its deadline, or without a pidfd to tell of its end,
 * a tick from now. */
static int64_t look_again(const pmap__retiree_t *r, int64_t now)
{
    if (r->pid == 0)
        return now;
    if (r->pidfd < 0 && now + PMAP__TICK_NS < r->deadline_ns)
        return now + PMAP__TICK_NS;
    return r->deadline_ns;
}

/*
 * Waits for the retirees that have ended (their channel is then dropped
 * unread), drains the others' channels and kills the ones past their
 * deadline.  Returns when to look again at the latest, or -1 when none is
 * left.
 */
int64_t pmap__retirees_check(pool_t *pool)
{
    if (pool->nretirees == 0)
        return -1;
    int64_t now = pmap__now_ns(), next = -1;
    for (size_t i = 0; i < pool->nretirees;) {
        pmap__retiree_t *r = &pool->retirees[i];
        int status;
        bool gone = retiree_gone(pool, r, &status);
        if (!gone)
            drain(pool, r);
        if (!gone && r->deadline_ns > now) {
            int64_t at = look_again(r, now);
            if (next < 0 || at < next)
                next = at;
            i++;
            continue;
        }
        if (r->pid > 0)
            r->left = reap_pid(pool, r->pid, r->pidfd, &status) == 0
                          ? left_as_told(pool, r->pid, status)
                          : 0;
        pmap__pools_lock();
        pmap__epoll_del(pool, r->fd);
        pmap__epoll_del(pool, r->pidfd);
        pmap__close(&r->fd);
        pmap__close(&r->pidfd);
        pmap__arena_give_back(r->arena, r->left, r->depth);
        pool->retirees[i] = pool->retirees[--pool->nretirees];
        pmap__pools_unlock();
    }
    return next;
}

/* Waits until every retiree has ended or been killed at its deadline.
 * It waits first and looks after: workers just told to leave have not
 * left yet, and a look at each before was a read and a poll apiece. */
void pmap__retirees_wait(pool_t *pool)
{
    int64_t now = pmap__now_ns(), next = -1;
    for (size_t i = 0; i < pool->nretirees; i++) {
        int64_t at = look_again(&pool->retirees[i], now);
        next = next < 0 || at < next ? at : next;
    }
    while (pool->nretirees > 0) {
        struct pollfd *pfd = pmap__pollfds(pool, 2 * pool->nretirees);
        if (pfd == NULL) {
            pmap__poll(NULL, 0, pmap__now_ns() + PMAP__TICK_NS);
        } else {
            for (size_t i = 0; i < pool->nretirees; i++) {
                const pmap__retiree_t *r = &pool->retirees[i];
                pfd[2 * i] = (struct pollfd){r->fd, POLLIN, 0};
                pfd[2 * i + 1] = (struct pollfd){r->pidfd, POLLIN, 0};
            }
            pmap__poll(pfd, 2 * pool->nretirees, next);
        }
        next = pmap__retirees_check(pool);
    }
}

/* In a forked copy of the pool's owner: the retirees are not ours (nor
 * their arenas: not inherited, their range may hold a mapping of ours). */
void pmap__retirees_abandon(pool_t *pool)
{
    for (size_t i = 0; i < pool->nretirees; i++) {
        pmap__close(&pool->retirees[i].fd);
        pmap__close(&pool->retirees[i].pidfd);
        pool->retirees[i].arena = NULL;
    }
    pool->nretirees = 0;
}
