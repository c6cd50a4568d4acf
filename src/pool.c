/* SPDX-License-Identifier: MIT */
/*
 * pool.c - a pool's lifecycle: creating it, destroying it, and the calls
 * that say who may use it now.  Its processes are proc.c's.
 */
#include "pmap_internal.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif

/* How long a new worker has to say it is ready, by default. */
#define START_TIMEOUT_S 30.0

/* How long pool_destroy lets a worker finish before killing it. */
#define STOP_GRACE_NS (2 * 1000000000LL)

/* How long running items may go on after a cancellation, by default. */
#define CANCEL_GRACE_NS 500000000LL

pool_t *pool_create(int workers)
{
    pool_t *pool;
    pool_options_t opts = {.workers = workers};
    return pool_create_with(&pool, &opts) == 0 ? pool : NULL;
}

/*
 * Creates the pool's descriptors and links it into the list of pools, both
 * under the list's lock: a worker forked meanwhile by another thread must
 * find in the list every descriptor it has to close.
 */
static void pool_open(pool_t *pool)
{
    pmap__pools_lock();
#ifdef __linux__
    pool->epfd = pmap__fd_sanitize(epoll_create1(EPOLL_CLOEXEC), true);
    if (pool->epfd < 0)
        pool->epfd = -1;    /* pool_fd, and the loop's wait, go without */
#endif
    pmap__wake_open(pool->wake);
    pmap__epoll_add(pool, pool->wake[0], PMAP__EV_WAKE);
    pmap__pools_add(pool);
    pmap__pools_unlock();
}

/* Seconds as nanoseconds: d if positive and sane, else dflt. */
static int64_t seconds_ns(double d, int64_t dflt)
{
    return d > 0 && d < 1e6 ? (int64_t)(d * 1e9) : dflt;
}

/* ---- settings: the program's options, the environment, or automatic ---- */

/* A count from environment variable name, 1 to max: its value, 0 when the
 * variable is not set, -1 when it is malformed. */
static long env_count(const char *name, long max)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        return 0;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    return errno == 0 && *end == '\0' && n >= 1 && n <= max ? n : -1;
}

/* Whether PMAP_START_MPI can start workers: libpmap-mpi is initialized
 * and other ranks serve. */
static bool remote_usable(void)
{
    return pmap__remote != NULL && pmap__remote->workers() > 0;
}

/* The start method PMAP_START names: 0 when not set, -1 when malformed
 * or unusable (server without pmap_init). */
static int env_start(void)
{
    static const char *const names[] = {"auto", "fork", "server", "inline",
                                        "mpi"};
    const char *v = getenv("PMAP_START");
    if (v == NULL || *v == '\0')
        return 0;
    for (int i = 0; i < 5; i++) {
        if (strcmp(v, names[i]) != 0)
            continue;
        if (i == PMAP_START_SERVER && !pmap__server_running())
            return -1;
        return i == PMAP_START_MPI && !remote_usable() ? -1 : i;
    }
    return -1;
}

/* Settles one setting: the option if set, else the environment's value
 * if set and valid, else the automatic one. */
static long choose(long option, long env, long automatic, int *from)
{
    if (option != 0) {
        *from = PMAP_FROM_OPTION;
        return option;
    }
    if (env > 0) {
        *from = PMAP_FROM_ENV;
        return env;
    }
    *from = env < 0 ? PMAP_FROM_ENV_IGNORED : PMAP_FROM_AUTO;
    return automatic;
}

/* What the pool will be: explicit options win over the environment,
 * which wins over the automatic choice (README, "Environment"). */
static pmap_config_t configure(const pool_options_t *o)
{
    pmap_config_t c;
    int env = env_start();
    c.start = (int)choose(o->start, env == PMAP_START_AUTO ? 0 : env,
                          pmap__server_running() ? PMAP_START_SERVER
                                                 : PMAP_START_FORK,
                          &c.start_from);
    c.workers = (int)choose(o->workers, env_count("PMAP_WORKERS",
                                                  PMAP_MAX_WORKERS),
                            0, &c.workers_from);
    if (c.workers == 0)     /* looked up only when needed: it reads files */
        c.workers = pmap__cpu_count();
    if (c.start == PMAP_START_INLINE) {
        c.workers = 1;      /* the caller itself */
        c.workers_from = c.start_from;
    }
    if (c.start == PMAP_START_MPI) {
        /* Each rank's own count, or fewer when the option says so (not
         * the environment's PMAP_WORKERS: that sizes each rank). */
        int remote = pmap__remote->workers();
        c.workers = o->workers > 0 && o->workers < remote ? o->workers
                                                          : remote;
        c.workers_from = o->workers > 0 ? PMAP_FROM_OPTION : c.start_from;
    }
    c.chunk = (size_t)choose((long)o->chunk, env_count("PMAP_CHUNK", LONG_MAX),
                             0, &c.chunk_from);
    return c;
}

int pool_config(const pool_t *pool, pmap_config_t *config)
{
    if (pool == NULL || config == NULL)
        return PMAP_EINVAL;
    *config = pool->config;
    return 0;
}

/*
 * The pool's lock and condition (struct pool says what they guard): an
 * error-checking mutex, so that a callback calling back into its own pool
 * is told PMAP_EBUSY instead of deadlocking, and a condition on the clock
 * of every deadline here.
 */
static int sync_init(pool_t *pool)
{
    pthread_mutexattr_t ma;
    pthread_condattr_t ca;
    int rc = pthread_mutexattr_init(&ma);
    if (rc == 0) {
        rc = pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ERRORCHECK);
        if (rc == 0)
            rc = pthread_mutex_init(&pool->lock, &ma);
        pthread_mutexattr_destroy(&ma);
    }
    if (rc != 0)
        return PMAP_ENOMEM;
    rc = pthread_condattr_init(&ca);
    if (rc == 0) {
        rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        if (rc == 0)
            rc = pthread_cond_init(&pool->turn, &ca);
        pthread_condattr_destroy(&ca);
    }
    if (rc != 0) {
        pthread_mutex_destroy(&pool->lock);
        return PMAP_ENOMEM;
    }
    return 0;
}

static void sync_destroy(pool_t *pool)
{
    pthread_cond_destroy(&pool->turn);
    pthread_mutex_destroy(&pool->lock);
}

/*
 * The room of the last pool destroyed, kept for the next one if no larger
 * than SPARE_ROOM_MAX: mapping a room, marking it and unmapping it were
 * three system calls a pool, and its first writes a fault a page.  It is
 * noted in the page that children see wiped (pmap__local), under the
 * pools' lock: a child forked meanwhile by another thread finds no spare,
 * never half of one, and noting it copies no page the workers share.  No
 * child ever sees what it holds (it is wiped at fork too).
 */
#define SPARE_ROOM_MAX ((size_t)1 << 20)

/* A room of at least size bytes: the spare if large enough, or new;
 * *got is its size.  NULL if none can be had. */
static unsigned char *room_take(size_t size, size_t *got)
{
    pmap__local_t *l = pmap__local();
    unsigned char *p = NULL;
    pmap__pools_lock();
    if (l->spare_room != NULL && l->spare_room_size >= size) {
        p = l->spare_room;
        *got = l->spare_room_size;
        l->spare_room = NULL;
    }
    pmap__pools_unlock();
    if (p == NULL && (p = pmap__shm_unshared(size)) != NULL)
        *got = size;
    return p;
}

/* Keeps a destroyed pool's room for this process's next pool, or unmaps
 * it (in a forked copy of the pool's owner too: the room is its own there,
 * wiped). */
static void room_give_back(unsigned char *p, size_t size)
{
    pmap__local_t *l = pmap__local();
    if (p == NULL)
        return;
    pmap__pools_lock();
    if (pmap__local_wiped() && l->spare_room == NULL &&
        size <= SPARE_ROOM_MAX) {
        l->spare_room = p;
        l->spare_room_size = size;
        p = NULL;
    }
    pmap__pools_unlock();
    pmap__shm_unmap(p, size);
}

/*
 * The first buffers of the pool's slots and of its spare map, in memory of
 * the pool's own that no child gets a copy of (pmap__shm_unshared), where
 * there is such memory: the caller writes them while its workers are
 * young (their READY, the first batch), and in the heap they share each
 * page written would be copied, 20 to 70 us here.  Returns the spare
 * map's room (job.c), or NULL.
 */
static unsigned char *lend_room(pool_t *pool)
{
    size_t n = (size_t)pool->nworkers;
    size_t map = PMAP__OUTQ_ROOM + PMAP__FIRST_FRAMES;
    size_t size = map + n * (PMAP__OUTQ_ROOM + (size_t)PMAP__READ_SIZE);
    pool->room = room_take(size, &pool->room_size);
    if (pool->room == NULL)
        return NULL;
    unsigned char *out = pool->room + map;
    unsigned char *in = out + n * PMAP__OUTQ_ROOM;
    for (size_t i = 0; i < n; i++) {
        pmap__worker_t *w = &pool->workers[i];
        pmap__outq_lend(&w->out, out + i * PMAP__OUTQ_ROOM);
        pmap__buf_lend(&w->in.buf, in + i * (size_t)PMAP__READ_SIZE,
                       PMAP__READ_SIZE);
    }
    return pool->room;
}

/*
 * Makes, before the workers are forked, what the pool's first map and its
 * end would allocate (the spare map and the caller's entry: job.c; room
 * for the slots' maps, the retirees and the poll array): once children
 * share the caller's heap, an allocation writes pages of it and of libc's
 * state, a copy-on-write fault each.  Without memory, they are made when
 * needed.
 */
static void reserve(pool_t *pool)
{
    if (pool->in_process)
        return;
    pmap__jobs_prepare(pool, lend_room(pool));
    size_t n = (size_t)pool->nworkers;
    for (size_t i = 0; i < n; i++) {
        pmap__worker_t *w = &pool->workers[i];
        uint32_t *maps = pmap__grow(w->setup, &w->setup_cap, sizeof *maps);
        if (maps != NULL)
            w->setup = maps;
    }
    pool->retirees = malloc(n * sizeof *pool->retirees);
    pool->retirees_cap = pool->retirees != NULL ? n : 0;
    pmap__pollfds(pool, 2 * n);    /* the retirees' (proc.c) */
}

/*
 * Starts the pool's workers.  With a worker_init, waits until each has run
 * it and said READY, so that a worker that cannot start fails pool_create.
 * Without one, nothing in a worker's start can fail (proc.c, worker.c): the
 * pool is returned once they are forked, and the first map's batches wait
 * in the channels of the workers still starting (pool->eager), where
 * waiting for their READY first cost the caller two more sleeps and the
 * worker a wake-up from idle, 60 to 100 us a new pool here.  No other
 * thread knows the pool yet, but the loop runs with the lock held.
 */
static int start_workers(pool_t *pool)
{
    if (pool->in_process)
        return pmap__inline_open(pool);
    int rc = pmap__proc_spawn_all(pool);
    if (rc == 0 && !pool->eager) {
        pthread_mutex_lock(&pool->lock);
        rc = pmap__loop_run(pool, NULL,
                            pmap__now_ns() + pool->start_timeout_ns);
        pthread_mutex_unlock(&pool->lock);
    }
    return rc == PMAP_ETIMEDOUT ? PMAP_ESTART : rc;
}

int pool_create_with(pool_t **poolp, const pool_options_t *opts)
{
    if (poolp == NULL)
        return PMAP_EINVAL;
    *poolp = NULL;
    pool_options_t o = opts ? *opts : (pool_options_t){0};
    if (o.workers < 0 || o.workers > PMAP_MAX_WORKERS || !(o.timeout >= 0) ||
        !(o.start_timeout >= 0) || o.cancel_grace != o.cancel_grace ||
        o.start < PMAP_START_AUTO || o.start > PMAP_START_MPI ||
        o.output < PMAP_OUTPUT_AUTO || o.output > PMAP_OUTPUT_CAPTURE ||
        !(o.retry_delay >= 0))
        return PMAP_EINVAL;
    if (o.start == PMAP_START_MPI && !remote_usable())
        return PMAP_EINVAL;     /* pmap_mpi_init was not called, or alone */
    if (pmap__nested())
        return PMAP_ENESTED;
    if (o.start == PMAP_START_SERVER && !pmap__server_running())
        return PMAP_EINVAL;     /* pmap_init was not called */

    pool_t *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return PMAP_ENOMEM;
    if (sync_init(pool) < 0) {
        free(pool);
        return PMAP_ENOMEM;
    }
    pool->owner = pmap__self();
    pool->epfd = pool->wake[0] = pool->wake[1] = -1;
    pool->config = configure(&o);
    pool->opts = o;
    pool->opts.chunk = pool->config.chunk;
    pool->server = pool->config.start == PMAP_START_SERVER;
    pool->in_process = pool->config.start == PMAP_START_INLINE;
    pool->remote = pool->config.start == PMAP_START_MPI ? pmap__remote : NULL;
    pool->eager = o.worker_init == NULL && !pool->in_process &&
                  pool->remote == NULL;
    pool->start_timeout_ns =
        seconds_ns(o.start_timeout, (int64_t)(START_TIMEOUT_S * 1e9));
    pool->cancel_grace_ns = o.cancel_grace < 0
                                ? -1
                                : seconds_ns(o.cancel_grace, CANCEL_GRACE_NS);
    pool->nworkers = pool->config.workers;
    pool->workers = calloc((size_t)pool->nworkers, sizeof *pool->workers);
    for (int i = 0; i < pool->nworkers && pool->workers != NULL; i++) {
        pool->workers[i].index = i;
        pool->workers[i].ch = PMAP__NO_CHANNEL;
        pool->workers[i].pidfd = -1;
        pool->workers[i].handoff[0] = pool->workers[i].handoff[1] = -1;
    }
    if (pool->workers == NULL) {
        sync_destroy(pool);
        free(pool);
        return PMAP_ENOMEM;
    }
    /* The program's forks from now on may hold this pool's descriptors
     * (pmap__proc_retire): counted from before its first channel. */
    pmap__forks_watch();
    pool->program_forks = pmap__forks_program();
    /* Workers on this machine (forked here or by the fork server) inherit
     * pmap_alloc's heap, held before the first fork; they, and those rank 0
     * forks for PMAP_START_MPI, the unwinder of their crash reports, set
     * up once.  An in-process pool needs neither. */
    pool->holds_heap = !pool->in_process && pool->remote == NULL;
    if (pool->holds_heap)
        pool->heap = pmap__heap_hold();
    if (!pool->in_process)
        pmap__crash_prepare();
    pool_open(pool);
    reserve(pool);
    int rc = start_workers(pool);
    if (rc < 0) {
        pool_destroy(pool);
        return rc;
    }
    *poolp = pool;
    return 0;
}

/*
 * Stops every worker: EOF on its channel asks it to leave; a worker that
 * has not left within the grace period is killed.  Then reaps them all.
 */
static void stop_workers(pool_t *pool)
{
    int64_t deadline = pmap__now_ns() + STOP_GRACE_NS;
    pool->closing = true;   /* no more work: the loop does not run again */
    for (int i = 0; i < pool->nworkers; i++) {
        if (pool->workers[i].pid > 0)
            pmap__proc_retire(pool, &pool->workers[i], deadline);
    }
    pmap__retirees_wait(pool);
}

/* Waits until no thread runs the pool's loop.  Returns false, doing
 * nothing, when called from a callback of the pool. */
static bool wait_idle(pool_t *pool)
{
    if (pthread_mutex_lock(&pool->lock) != 0)
        return false;
    while (pool->driving)
        pthread_cond_wait(&pool->turn, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
    return true;
}

void pool_destroy(pool_t *pool)
{
    if (pool == NULL)
        return;
    /* A forked copy never touches the lock: another thread of the parent
     * may have held it at the fork. */
    bool owner = pool->owner == pmap__self();
    if (owner && !wait_idle(pool))
        return;
    if (!owner)
        pmap__pools_remove(pool);
    if (pool->in_process) {
        if (owner)
            pmap__inline_close(pool);
    } else if (owner) {
        stop_workers(pool);
    } else {
        /* A forked copy: the workers are our parent's, not ours to stop.
         * In a worker, their descriptors were closed at its start, and
         * their numbers may be its own by now. */
        for (int i = 0; i < pool->nworkers && !pmap__pools_forgotten(); i++) {
            pmap__channel_close(&pool->workers[i].ch);
            pmap__close(&pool->workers[i].pidfd);
            pmap__arena_forget(pool->workers[i].arena);
        }
        if (!pmap__pools_forgotten())
            pmap__retirees_abandon(pool);
    }
    /* The caller's pool leaves the list once its workers are gone: the
     * list's head is in a page they share until then, which the write
     * would copy.  (Its descriptors change under the list's lock.) */
    if (owner)
        pmap__pools_remove(pool);
    bool taken = false;     /* in one of its workers, which has its slot's
                               buffers, perhaps in the room */
    for (int i = 0; i < pool->nworkers; i++) {
        if (pmap__proc_taken(&pool->workers[i])) {
            taken = true;
        } else {
            pmap__outq_free(&pool->workers[i].out);
            pmap__reader_free(&pool->workers[i].in);
        }
        free(pool->workers[i].setup);
    }
    pmap__jobs_free(pool);
    if (!pmap__pools_forgotten()) {     /* else as the workers' above */
        pmap__close(&pool->epfd);
        pmap__close(&pool->wake[0]);
        pmap__close(&pool->wake[1]);
    }
    if (!taken)
        room_give_back(pool->room, pool->room_size);    /* what it lent */
    free(pool->retirees);
    pmap__buf_free(&pool->frames);
    free(pool->pollfds);
    free(pool->workers);
    if (owner && pool->holds_heap)
        pmap__heap_drop();
    if (owner)
        sync_destroy(pool);
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
    bool locked = pmap__pool_lock(pool);
    stats->pid = (long)w->pid;
    stats->work = w->stats;
    pmap__pool_unlock(pool, locked);
    return 0;
}
