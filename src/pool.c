/* SPDX-License-Identifier: MIT */
/*
 * pool.c - a pool's lifecycle: creating it, forking and replacing its
 * workers, reaping them, and destroying it.
 *
 * Invariants:
 *  - A worker is started by pmap__worker_spawn only: forked here, or by
 *    the fork server (server.c).  Before a fork here, stdio is flushed (or
 *    the child would print the caller's buffered text again) and every
 *    signal but the synchronous faults is blocked, so no handler of the
 *    caller runs in the child before worker.c resets them.
 *  - The child closes every descriptor of every pool of the process except
 *    its own end of its channel, so that closing our end always reaches it
 *    as EOF, and destroying one pool never waits on another's workers.
 *    The list of pools is locked across fork for that reason.
 *  - We wait for our own workers by pid and nothing else; the server's
 *    workers are its children, and it reports how they end.
 */
#include "pmap_internal.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif

/* How long a new worker has to say it is ready, by default. */
#define START_TIMEOUT_S 30.0

/* How long pool_destroy lets a worker finish before killing it. */
#define STOP_GRACE_NS (2 * 1000000000LL)

static pool_t *pools;
static pthread_mutex_t pools_lock = PTHREAD_MUTEX_INITIALIZER;

pool_t *pool_create(int workers)
{
    pool_t *pool;
    pool_options_t opts = {.workers = workers};
    return pool_create_with(&pool, &opts) == 0 ? pool : NULL;
}

static void pools_unlink(pool_t *pool)
{
    pthread_mutex_lock(&pools_lock);
    for (pool_t **p = &pools; *p != NULL; p = &(*p)->next) {
        if (*p == pool) {
            *p = pool->next;
            break;
        }
    }
    pthread_mutex_unlock(&pools_lock);
}

/*
 * Creates the pool's descriptors and shared memory and links it into the
 * list of pools, all under the list's lock: a worker forked meanwhile by
 * another thread must find in the list every descriptor it has to close.
 * Returns 0, or nonzero if something could not be created.
 */
static int pool_open(pool_t *pool)
{
    pthread_mutex_lock(&pools_lock);
#ifdef __linux__
    pool->epfd = epoll_create1(EPOLL_CLOEXEC);  /* pool_fd; optional */
#endif
    if (pmap__channel(pool->wake) < 0 ||
        pmap__set_nonblocking(pool->wake[0]) < 0 ||
        pmap__set_nonblocking(pool->wake[1]) < 0) {
        pmap__close(&pool->wake[0]);
        pmap__close(&pool->wake[1]);
    }
    pool->slots = pmap__shm_map((size_t)pool->nworkers * sizeof *pool->slots,
                                pool->server ? &pool->slots_fd : NULL);
    pool->next = pools;
    pools = pool;
    pthread_mutex_unlock(&pools_lock);
    return pool->slots == NULL;
}

int pool_create_with(pool_t **poolp, const pool_options_t *opts)
{
    if (poolp == NULL)
        return PMAP_EINVAL;
    *poolp = NULL;
    pool_options_t o = opts ? *opts : (pool_options_t){0};
    if (o.workers < 0 || o.workers > PMAP_MAX_WORKERS || !(o.timeout >= 0) ||
        !(o.start_timeout >= 0) || o.start < PMAP_START_AUTO ||
        o.start > PMAP_START_SERVER)
        return PMAP_EINVAL;
    if (pmap__in_worker)
        return PMAP_ENESTED;
    bool server = o.start == PMAP_START_SERVER ||
                  (o.start == PMAP_START_AUTO && pmap__server_running());
    if (server && !pmap__server_running())
        return PMAP_EINVAL;     /* pmap_init was not called */

    pool_t *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return PMAP_ENOMEM;
    atomic_flag_clear(&pool->busy);
    pool->owner = getpid();
    pool->epfd = pool->wake[0] = pool->wake[1] = pool->slots_fd = -1;
    pool->opts = o;
    pool->server = server;
    double start = o.start_timeout > 0 && o.start_timeout < 1e6
                       ? o.start_timeout
                       : START_TIMEOUT_S;
    pool->start_timeout_ns = (int64_t)(start * 1e9);
    pool->nworkers = o.workers ? o.workers : pmap__cpu_count();
    pool->workers = calloc((size_t)pool->nworkers, sizeof *pool->workers);
    pool->pollfds = calloc((size_t)pool->nworkers + 1, sizeof *pool->pollfds);
    for (int i = 0; i < pool->nworkers && pool->workers != NULL; i++) {
        pool->workers[i].index = i;
        pool->workers[i].fd = -1;
        pool->workers[i].arena_fd = -1;
    }
    if (pool->workers == NULL || pool->pollfds == NULL || pool_open(pool)) {
        pool_destroy(pool);
        return PMAP_ENOMEM;
    }

    int rc = 0;
    for (int i = 0; i < pool->nworkers && rc == 0; i++)
        rc = pmap__worker_spawn(pool, &pool->workers[i]);
    if (rc == 0)
        rc = pmap__loop_run(pool, NULL, pmap__now_ns() + pool->start_timeout_ns);
    if (rc < 0) {
        pool_destroy(pool);
        return rc == PMAP_ETIMEDOUT ? PMAP_ESTART : rc;
    }
    *poolp = pool;
    return 0;
}

/* Forks worker w from this process, pools_lock held; its end of the
 * channel is fds[1]. */
static pid_t fork_worker(pool_t *pool, pmap__worker_t *w, int fds[2])
{
    pmap__worker_setup_t setup = {
        getpid(),         getpid(),
        w->index,         fds[1],
        &pool->slots[w->index], w->arena,
        pool->opts.worker_init, pool->opts.worker_exit,
        pool->opts.worker_arg};
    fflush(NULL);
    sigset_t all, old;
    sigfillset(&all);
    static const int faults[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE,
                                 SIGABRT, SIGTRAP, SIGSYS};
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++)
        sigdelset(&all, faults[i]);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = fork();     /* pools_lock is held: see pmap__worker_spawn */
    if (pid == 0) {
        pmap__close(&fds[0]);
        pmap__pool_child_init(fds[1]);
        pmap__server_child_init();
        pmap__worker_main(&setup);
    }
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return pid < 0 ? -err : pid;
}

/*
 * Starts the process for worker slot w, forked from this process or by the
 * fork server, and connects it.  Returns 0 or a negative code (the slot then
 * stays empty).
 */
int pmap__worker_spawn(pool_t *pool, pmap__worker_t *w)
{
    int fds[2];
    /* Locked from the channel's creation until the worker's end is closed
     * here and ours recorded: see pool_open. */
    pthread_mutex_lock(&pools_lock);
    int rc = pmap__channel(fds);
    if (rc < 0) {
        pthread_mutex_unlock(&pools_lock);
        return rc;
    }
    atomic_store(&pool->slots[w->index].item, 0);
    if (w->arena == NULL)   /* kept for its replacements; optional */
        w->arena = pmap__shm_map(PMAP__ARENA_SIZE,
                                 pool->server ? &w->arena_fd : NULL);
    pid_t pid;
    if (pool->server) {
        pmap__worker_setup_t setup = {getpid(), 0, w->index, -1, NULL, NULL,
                                      pool->opts.worker_init,
                                      pool->opts.worker_exit,
                                      pool->opts.worker_arg};
        size_t slots = (size_t)pool->nworkers * sizeof *pool->slots;
        rc = pmap__server_spawn(&setup, fds[1], pool->slots_fd, slots,
                                w->arena_fd, &pid);
        pid = rc < 0 ? rc : pid;
    } else {
        pid = fork_worker(pool, w, fds);
    }
    pmap__close(&fds[1]);
    if (pid < 0) {
        pmap__close(&fds[0]);
        pthread_mutex_unlock(&pools_lock);
        return (int)pid;
    }
    w->pid = pid;
    w->fd = fds[0];
    pthread_mutex_unlock(&pools_lock);
    w->born_ns = pmap__now_ns();
    w->ready = w->retiring = false;
    w->nsetup = 0;
    w->nbatch = 0;
    w->used = 0;
    w->next_slot = 0;
    pmap__outq_reset(&w->out);
    w->in.buf.len = w->in.start = 0;
#ifdef __linux__
    if (pool->epfd >= 0) {
        struct epoll_event ev = {EPOLLIN, {.ptr = w}};
        epoll_ctl(pool->epfd, EPOLL_CTL_ADD, w->fd, &ev);
        w->polled_out = false;
    }
#endif
    rc = pmap__set_nonblocking(w->fd);
    if (rc < 0) {
        int status;
        pmap__worker_reap(pool, w, &status);
        return rc;
    }
    return 0;
}

/*
 * In a new worker, before anything else: closes every descriptor of every
 * pool but keep_fd, and makes the list's lock usable again (the forking
 * thread held it, and that thread is the only one the child has).
 */
void pmap__pool_child_init(int keep_fd)
{
    for (pool_t *p = pools; p != NULL; p = p->next) {
        pmap__close(&p->epfd);
        pmap__close(&p->slots_fd);
        pmap__close(&p->wake[0]);
        pmap__close(&p->wake[1]);
        for (int i = 0; i < p->nworkers; i++) {
            pmap__close(&p->workers[i].arena_fd);
            if (p->workers[i].fd != keep_fd)
                pmap__close(&p->workers[i].fd);
        }
    }
    pthread_mutex_init(&pools_lock, NULL);
}

/*
 * Closes w's channel, makes sure its process is gone (killing it if it is
 * still running) and waits for it.  Stores its wait status and returns 0,
 * or returns PMAP_ELOST when someone else reaped it.  The slot is then
 * empty, for pmap__worker_spawn.
 */
int pmap__worker_reap(const pool_t *pool, pmap__worker_t *w, int *status)
{
    int rc = PMAP_ELOST;
    pmap__close(&w->fd);
    if (w->pid > 0 && pool->server) {
        /* The server is its parent, and reports how it ended. */
        rc = pmap__server_reap(w->pid, status, pmap__now_ns() + 100000000);
        if (rc == PMAP_ETIMEDOUT) {
            kill(w->pid, SIGKILL);  /* alive without its channel: stuck */
            rc = pmap__server_reap(w->pid, status,
                                   pmap__now_ns() + 10000000000LL);
        }
        rc = rc < 0 ? PMAP_ELOST : 0;
    } else if (w->pid > 0) {
        pid_t r;
        do
            r = waitpid(w->pid, status, WNOHANG);
        while (r < 0 && errno == EINTR);
        if (r == w->pid) {
            rc = 0;
        } else if (r == 0) {
            /* Alive without its channel, or stuck: it cannot serve us. */
            kill(w->pid, SIGKILL);
            rc = pmap__reap(w->pid, status);
        }
    }
    w->pid = 0;
    return rc;
}

/*
 * Stops every worker: EOF on its channel asks it to leave; a worker that has
 * not left within the grace period is killed.  Then reaps them all.
 */
static void stop_workers(pool_t *pool)
{
    int left = 0;
    for (int i = 0; i < pool->nworkers; i++) {
        if (pool->workers[i].fd >= 0) {
            shutdown(pool->workers[i].fd, SHUT_WR);
            left++;
        }
    }
    struct pollfd *pfd = pool->pollfds;
    int64_t deadline = pmap__now_ns() + STOP_GRACE_NS;
    while (left > 0) {
        for (int i = 0; i < pool->nworkers; i++)
            pfd[i] = (struct pollfd){pool->workers[i].fd, POLLIN, 0};
        if (pmap__poll(pfd, (size_t)pool->nworkers, deadline) <= 0)
            break;
        for (int i = 0; i < pool->nworkers; i++) {
            pmap__worker_t *w = &pool->workers[i];
            if (w->fd < 0 || pfd[i].revents == 0)
                continue;
            char sink[4096];
            ssize_t r = pmap__read(w->fd, sink, sizeof sink);
            if (r == 0 || (r < 0 && r != -EAGAIN)) {
                pmap__close(&w->fd);    /* it left */
                left--;
            }
        }
    }
    for (int i = 0; i < pool->nworkers; i++) {
        int status;
        pmap__worker_reap(pool, &pool->workers[i], &status);
    }
}

void pool_destroy(pool_t *pool)
{
    if (pool == NULL)
        return;
    pools_unlink(pool);
    if (pool->owner == getpid()) {
        stop_workers(pool);
    } else {
        /* A forked copy: the workers are our parent's, not ours to stop. */
        for (int i = 0; i < pool->nworkers; i++)
            pmap__close(&pool->workers[i].fd);
    }
    for (int i = 0; i < pool->nworkers; i++) {
        pmap__outq_free(&pool->workers[i].out);
        pmap__reader_free(&pool->workers[i].in);
        pmap__shm_unmap(pool->workers[i].arena, PMAP__ARENA_SIZE);
        pmap__close(&pool->workers[i].arena_fd);
        free(pool->workers[i].setup);
    }
    pmap__close(&pool->slots_fd);
    pmap__jobs_free(pool);
    pmap__close(&pool->epfd);
    pmap__close(&pool->wake[0]);
    pmap__close(&pool->wake[1]);
    pmap__shm_unmap(pool->slots, (size_t)pool->nworkers * sizeof *pool->slots);
    free(pool->pollfds);
    free(pool->workers);
    free(pool);
}

int pool_size(const pool_t *pool)
{
    return pool ? pool->nworkers : PMAP_EINVAL;
}

int pool_worker_stats(const pool_t *pool, int worker,
                      pmap_worker_stats_t *stats)
{
    if (pool == NULL || stats == NULL || worker < 0 ||
        worker >= pool->nworkers)
        return PMAP_EINVAL;
    const pmap__worker_t *w = &pool->workers[worker];
    stats->pid = (long)w->pid;
    stats->work = w->stats;
    return 0;
}

/*
 * Checks that the calling process and thread may use pool now, and marks it
 * busy.  Returns 0, or PMAP_EINVAL, PMAP_ENESTED, PMAP_EFORKED, PMAP_EBUSY.
 */
int pmap__pool_enter(pool_t *pool)
{
    if (pool == NULL)
        return PMAP_EINVAL;
    if (pmap__in_worker)
        return PMAP_ENESTED;
    if (pool->owner != getpid())
        return PMAP_EFORKED;
    if (atomic_flag_test_and_set(&pool->busy))
        return PMAP_EBUSY;
    return 0;
}

void pmap__pool_leave(pool_t *pool)
{
    atomic_flag_clear(&pool->busy);
}

/* Wakes the loop if it waits in poll; async-signal-safe (a cancellation
 * may come from a signal handler running on any thread). */
void pmap__pool_wake(pool_t *pool)
{
    int saved = errno;
    char c = 0;
    if (pool->wake[1] >= 0 && send(pool->wake[1], &c, 1, MSG_NOSIGNAL) < 0) {
        /* Full: the loop is awake already. */
    }
    errno = saved;
}
