/* SPDX-License-Identifier: MIT */
/*
 * loop.c - the event loop, run in the caller's thread whenever it uses the
 * pool: keep every worker slot filled, feed the workers batches of every
 * map in the order the maps were started, and move frames both ways with
 * one poll over all channels.  A map waited for (pool_map, pmap_job_wait)
 * and maps in the background (pool_poll, pool_fd) all go through step(),
 * once for each wait.
 *
 * All channels are non-blocking on our side and written only when poll says
 * so (or right after queueing), and every channel is read whenever it has
 * data, so a worker blocked writing a large result is always drained while
 * we write it a large task: no two-pipe deadlock.
 *
 * A worker is lost when its process ends (its pidfd, or a look every
 * PMAP__TICK_NS without one: proc.c), when its channel reaches EOF or
 * fails, when it sends a malformed frame, or when we kill it (timeout,
 * cancellation, not ready in time).  Frames it sent before dying are
 * processed first; then its pid is reaped, the item it was running (read
 * from its own slot) is charged with the death, its other items are sent
 * again, and the slot is refilled.
 *
 * No wait is unbounded while it matters: whenever a map runs, every worker
 * holding a batch of a timed map has a deadline (its item's, or the
 * batch's while none has started), a cancelled map has its grace period,
 * a starting worker its start timeout, a retiring one its grace period,
 * and an empty slot is refilled at the next step (or, after repeated
 * start failures, at a backed-off time that is itself a deadline).
 */
#include "pmap_internal.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif

/* Workers that may die in a row before saying READY, before we stop
 * replacing them for a while (a broken environment, not a bad item)... */
#define START_FAILURES_MAX 3
/* ...a while that doubles at each new give-up, within these bounds. */
#define RESPAWN_MIN_NS 100000000LL
#define RESPAWN_MAX_NS 5000000000LL

/* How long a recycled worker may take to leave (its worker_exit). */
#define RETIRE_GRACE_NS 2000000000LL

/* ---- losing a worker --------------------------------------------------- */

/* A crashed worker's report (capture.c), copied out of its arena before it
 * is unmapped: malloc'ed, its length in *length; NULL if it wrote none
 * (or without memory: the item fails all the same).  The signal it names
 * goes to *died_of (0: no report). */
static char *take_report(const pmap__worker_t *w, size_t *length,
                         bool *out_of_memory, int *died_of)
{
    const pmap__report_t *r =
        (const pmap__report_t *)(const void *)(w->arena + PMAP__REPORT_AT);
    size_t n = atomic_load_explicit(&r->length, memory_order_acquire);
    size_t most = PMAP__ARENA_HEAD - PMAP__REPORT_AT - sizeof *r;
    char *text = n > 0 ? malloc(n < most ? n : most) : NULL;
    *length = text != NULL ? (n < most ? n : most) : 0;
    if (text != NULL)
        memcpy(text, r->text, *length);
    *out_of_memory = r->out_of_memory != 0;
    *died_of = n > 0 ? (int)r->signal : 0;
    return text;
}

/*
 * Reaps w and reports its items to every map.  error, if not 0, overrides
 * the cause read from the wait status (we killed the worker for it); item,
 * if not 0, is the item to charge (index + 1) instead of the one its slot
 * shows.
 */
static void lose_item(pool_t *pool, pmap__worker_t *w, int error,
                      uint64_t item)
{
    if (pool->in_process) {
        /* No process to bury: its batches fail, and its maps are set up
         * anew (inline.c). */
        pmap__death_t death = {.error = error ? error : PMAP_ENOMEM,
                               .worker = w->index};
        for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later)
            pmap__job_lost(pool, job, w, &death);
        w->nbatch = 0;
        w->nsetup = 0;
        return;
    }
    pmap__slot_t *slot = pmap__arena_state(w->arena);
    pmap__death_t death = {.pid = (long)w->pid, .item = item,
                           .worker = w->index};
    if (item == 0)
        death.item = atomic_load_explicit(&slot->item, memory_order_acquire);
    death.map = atomic_load_explicit(&slot->map, memory_order_relaxed);
    death.started_ns = atomic_load_explicit(&slot->started_ns,
                                            memory_order_relaxed);
    bool out_of_memory = false;
    size_t reported = 0;
    int died_of = 0;
    char *report = take_report(w, &reported, &out_of_memory, &died_of);
    int status = 0;
    int rc = pmap__proc_reap(pool, w, &status);
    if (error != 0) {
        death.error = error;
    } else if (rc < 0 && died_of == 0) {
        death.error = PMAP_ELOST;
    } else if (rc < 0 || WIFSIGNALED(status)) {
        /* An allocation failed under the hard memory limit, then the
         * item crashed: the limit is its cause.  With the wait status
         * lost (the fork server stopped or gone, or taken by the caller's
         * SIGCHLD handler), the worker's own report still names the
         * signal it died of. */
        death.error = out_of_memory && reported ? PMAP_ENOMEM : PMAP_ECRASH;
        death.code = rc < 0 ? died_of : WTERMSIG(status);
        death.message = reported ? report : NULL;
        death.length = reported;
    } else {
        death.error = PMAP_EEXIT;
        death.code = WIFEXITED(status) ? WEXITSTATUS(status) : 0;
    }
    /* Only a start that failed by itself counts: a worker killed before
     * its READY to cancel or halt a map it held batches of (an eager pool)
     * did not fail to start. */
    bool failed_start = !w->ready && (error == 0 || error == PMAP_ESTART);
    if (failed_start && ++pool->start_failures > START_FAILURES_MAX) {
        /* Give up starting workers for a while, longer each time. */
        int64_t b = pool->respawn_backoff_ns;
        b = b < RESPAWN_MIN_NS ? RESPAWN_MIN_NS
            : b < RESPAWN_MAX_NS / 2 ? 2 * b : RESPAWN_MAX_NS;
        pool->respawn_backoff_ns = b;
        pool->respawn_ns = pmap__now_ns() + b;
    }
    for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later)
        pmap__job_lost(pool, job, w, &death);
    free(report);
    pool->lost = true;
    w->nbatch = 0;
    w->nsetup = 0;
    w->ready = false;
}

static void lose(pool_t *pool, pmap__worker_t *w, int error)
{
    lose_item(pool, w, error, 0);
}

/* ---- frames ------------------------------------------------------------ */

static pmap_job_t *find_job(const pool_t *pool, uint32_t id)
{
    for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later) {
        if (job->id == id && !job->finished)
            return job;
    }
    return NULL;
}

/* After a batch of a map with a soft memory cap: a worker past it gets
 * no more work, and is recycled once idle (recycle). */
static void check_memory(pool_t *pool, const pmap_job_t *job,
                         pmap__worker_t *w)
{
    if (job->memory_cap == 0 || w->arena == NULL)
        return;
    pmap__slot_t *slot = pmap__arena_state(w->arena);
    if (atomic_load_explicit(&slot->rss, memory_order_relaxed) >
        job->memory_cap)
        w->over_memory = pool->over_memory = true;
}

/* Handles the complete frames read from w; a negative code if one is
 * malformed or unexpected. */
static int take_frames(pool_t *pool, pmap__worker_t *w)
{
    pmap__header_t h;
    const unsigned char *p;
    int rc;
    while ((rc = pmap__reader_next(&w->in, &h, &p)) > 0) {
        size_t len = (size_t)h.length;
        pmap_job_t *job = find_job(pool, h.map);
        switch (h.type) {
        case PMAP__READY:
            rc = w->ready ? PMAP_EPROTO : 0;
            w->ready = true;
            w->waiting_ns = pmap__now_ns();     /* its batches' time */
            pool->start_failures = 0;
            pool->respawn_backoff_ns = 0;
            break;
        case PMAP__RESULT:
            rc = job ? pmap__job_result(pool, job, w, p, len) : PMAP_EPROTO;
            if (rc == 0)
                check_memory(pool, job, w);
            break;
        case PMAP__MAP_ERROR:
            rc = job ? pmap__job_map_error(pool, job, w, p, len) : PMAP_EPROTO;
            break;
        case PMAP__OUTPUT:
            rc = job && w->nbatch > 0 && w->batch[0].job == job
                     ? pmap__output_frame(job, &w->batch[0].items, p, len)
                     : PMAP_EPROTO;
            break;
        default:
            rc = PMAP_EPROTO;
        }
        if (rc < 0)
            return rc;
    }
    if (rc < 0)
        return rc;
    /* A result announced larger than its batch can be is refused now,
     * rather than waited for. */
    if (pmap__reader_peek(&w->in, &h) == 1 && h.type == PMAP__RESULT &&
        w->nbatch > 0 &&
        h.length > pmap__result_bound(w->batch[0].job->fn->result,
                                      w->batch[0].items.count))
        return PMAP_EPROTO;
    return 0;
}

/* Reads what w sent; loses it at EOF, on error, or for a bad frame. */
static void on_input(pool_t *pool, pmap__worker_t *w)
{
    ssize_t n = pmap__reader_fill(&w->in, w->ch.in);
    if (n > 0)
        w->stats.bytes_received += (uint64_t)n;
    int rc = take_frames(pool, w);
    if (rc < 0)
        lose(pool, w, rc == PMAP_ENOMEM ? PMAP_ENOMEM : PMAP_EPROTO);
    else if (n == 0 || (n < 0 && n != -EAGAIN && n != -EWOULDBLOCK))
        lose(pool, w, 0);
}


/* Takes what w sent before its process ended, then buries it. */
static void bury(pool_t *pool, pmap__worker_t *w)
{
    ssize_t n;
    do {
        n = pmap__reader_fill(&w->in, w->ch.in);
        if (n > 0)
            w->stats.bytes_received += (uint64_t)n;
        if (take_frames(pool, w) < 0)
            break;
    } while (n > 0 && w->pid > 0);
    if (w->pid > 0)
        lose(pool, w, 0);
}

/* Writes what is queued for w, as far as its channel takes it now (in
 * process: serves it, and takes the answers). */
static void flush(pool_t *pool, pmap__worker_t *w)
{
    struct iovec iov[PMAP__IOV];
    if (pool->in_process) {
        if (!pmap__outq_empty(&w->out)) {
            int rc = pmap__inline_serve(pool, w);
            if (rc == 0)
                rc = take_frames(pool, w);
            if (rc < 0)
                lose(pool, w, rc);
        }
        return;
    }
    while (w->pid > 0 && !pmap__outq_empty(&w->out)) {
        int n = pmap__outq_iov(&w->out, iov, pmap__iov_max());
        pmap__pipe_fit(w->ch.out, iov, n, &w->pipe_grown);
        ssize_t r = pmap__writev(w->ch.out, iov, n);
        if (r == -EAGAIN || r == -EWOULDBLOCK)
            return;
        if (r < 0) {
            /* It is gone: take what it sent before dying, then bury it. */
            on_input(pool, w);
            if (w->pid > 0)
                lose(pool, w, 0);
            return;
        }
        pmap__outq_advance(&w->out, (size_t)r);
        w->stats.bytes_sent += (uint64_t)r;
    }
}

/* Catches up with w before it is judged late: the caller may not have run
 * the loop for a while (between maps, or a map in the background), so its
 * answers may be waiting in the channel, or it may be waiting for the rest
 * of a batch we had not written (that wait is ours: it starts again now).
 * Returns whether anything moved (then w may have been lost meanwhile). */
static bool caught_up(pool_t *pool, pmap__worker_t *w)
{
    int out = pmap__outq_empty(&w->out) ? -1 : w->ch.out;
    struct pollfd p[2] = {{w->ch.in, POLLIN, 0}, {out, POLLOUT, 0}};
    if (pmap__poll(p, 2, 0) <= 0)
        return false;
    if (p[1].revents) {
        flush(pool, w);
        w->waiting_ns = pmap__now_ns();
    }
    if (w->pid > 0 && p[0].revents)
        on_input(pool, w);
    return true;
}

/* Whether w holds a batch of job. */
static bool holds(const pmap__worker_t *w, const pmap_job_t *job)
{
    for (int b = 0; b < w->nbatch; b++) {
        if (w->batch[b].job == job)
            return true;
    }
    return false;
}

/* Kills the workers holding batches of job (being cancelled, halted or
 * given up): its items there fail with PMAP_ECANCELED, others are sent
 * again.  What a worker has answered already is taken first: an item that
 * finished is not reported as stopped. */
void pmap__loop_kill_job(pool_t *pool, pmap_job_t *job)
{
    for (int i = 0; i < pool->nworkers; i++) {
        pmap__worker_t *w = &pool->workers[i];
        if (w->pid > 0 && holds(w, job))
            caught_up(pool, w);
        if (w->pid > 0 && holds(w, job)) {
            pmap__proc_kill(pool, w);
            lose(pool, w, PMAP_ECANCELED);
        }
    }
}

/* ---- pool_fd ----------------------------------------------------------- */

/* Watches w's channel for output in the pool's epoll set (see pool.c)
 * only while something waits to be written there. */
static void watch(pool_t *pool, pmap__worker_t *w)
{
#ifdef __linux__
    bool out = !pmap__outq_empty(&w->out);
    if (pool->epfd < 0 || w->pid == 0 || out == w->polled_out)
        return;
    if (!out)
        pmap__epoll_del(pool, w->ch.out);
    if (!out ||
        pmap__epoll_add(pool, w->ch.out,
                        PMAP__EVENT(w->index, PMAP__EV_OUTPUT)) == 0)
        w->polled_out = out;
#else
    (void)pool;
    (void)w;
#endif
}

int pool_fd(const pool_t *pool)
{
    if (pool == NULL)
        return PMAP_EINVAL;
    /* In a worker, the pool's descriptors were closed (family.c). */
    return pool->epfd >= 0 && !pmap__pools_forgotten() ? pool->epfd
                                                        : PMAP_ENOSYS;
}

/* ---- one step ---------------------------------------------------------- */

/* Refills empty worker slots, unless starting them has failed too often
 * lately; *started says whether it started any.  Fails only when no
 * worker is left. */
static int keep_workers(pool_t *pool, bool *started)
{
    int alive = 0, rc = PMAP_ESTART;
    *started = false;
    if (pool->steady)
        return 0;   /* no slot is empty */
    if (pool->start_failures > START_FAILURES_MAX &&
        pmap__now_ns() >= pool->respawn_ns)
        pool->start_failures = START_FAILURES_MAX;  /* one more try */
    for (int i = 0; i < pool->nworkers; i++) {
        pmap__worker_t *w = &pool->workers[i];
        if (w->pid == 0 && pool->start_failures <= START_FAILURES_MAX) {
            rc = pmap__proc_spawn(pool, w);
            if (rc == 0) {
                *started = true;
                w->stats.restarts++;
                pool->total.restarts++;
                for (pmap_job_t *j = pool->jobs; j != NULL; j = j->later)
                    j->stats.restarts += !j->finished;
            }
        }
        alive += w->pid > 0;
    }
    return alive > 0 ? 0 : rc < 0 ? rc : PMAP_ESTART;
}

/* Lets the workers that have run their quota of items or passed a soft
 * memory cap, and hold no batch, leave (max_items_per_worker,
 * max_worker_memory): their slots are refilled at once, and each
 * has RETIRE_GRACE_NS for its worker_exit before it is killed. */
static void recycle(pool_t *pool)
{
    size_t max = pool->opts.max_items_per_worker;
    if (max == 0 && !pool->over_memory)
        return;
    for (int i = 0; i < pool->nworkers; i++) {
        pmap__worker_t *w = &pool->workers[i];
        bool spent = (max > 0 && w->used >= max) || w->over_memory;
        if (w->pid > 0 && w->ready && !w->gone && spent &&
            w->nbatch == 0 && pmap__outq_empty(&w->out))
            pmap__proc_retire(pool, w, pmap__now_ns() + RETIRE_GRACE_NS);
    }
}

/* The deadline of w's work if it belongs to a timed map, or -1: its
 * running item's, or, while none runs, its next batch's, counted from when
 * that batch became its next work or the last item ended (a worker
 * stopped between batches must not hold them forever).  A worker that has
 * not said READY yet has none: its start timeout holds (check_workers),
 * and its batches' time counts from its READY.  *item is the running item
 * (index + 1), or 0. */
static int64_t work_deadline(pool_t *pool, pmap__worker_t *w, uint64_t *item)
{
    *item = 0;
    if (!w->ready)
        return -1;
    pmap__slot_t *slot = pmap__arena_state(w->arena);
    *item = atomic_load_explicit(&slot->item, memory_order_acquire);
    int64_t since = atomic_load_explicit(&slot->started_ns,
                                         memory_order_relaxed);
    const pmap_job_t *job = w->batch[0].job;
    if (*item != 0) {
        job = find_job(pool, atomic_load_explicit(&slot->map,
                                                  memory_order_relaxed));
    } else if (w->waiting_ns > since) {
        since = w->waiting_ns;
    }
    if (job == NULL || job->timeout_ns == 0)
        return -1;
    return since + job->timeout_ns;
}

/* Kills the workers whose work has run past its map's timeout, charging
 * the running item, if any.  Each item's start is in its worker's slot, so
 * no timer runs in the worker.  Returns when to check again, or -1. */
static int64_t enforce_timeouts(pool_t *pool)
{
    int64_t now = pmap__now_ns(), next = -1;
    bool timed = false;
    for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later)
        timed = timed || job->timeout_ns > 0;
    for (int i = 0; timed && i < pool->nworkers; i++) {
        pmap__worker_t *w = &pool->workers[i];
        if (w->pid == 0 || w->nbatch == 0)
            continue;
        uint64_t item;
        int64_t deadline = work_deadline(pool, w, &item);
        if (deadline >= 0 && deadline <= now && caught_up(pool, w))
            deadline = work_deadline(pool, w, &item);
        if (deadline < 0 || w->pid == 0 || w->nbatch == 0)
            continue;
        if (deadline <= now) {
            pmap__proc_kill(pool, w);
            lose_item(pool, w, PMAP_ETIMEDOUT, item);
        } else if (next < 0 || deadline < next) {
            next = deadline;
        }
    }
    /* An item may start any moment on a worker now idle: look again within
     * one timeout at the latest. */
    for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later) {
        if (!job->finished && job->timeout_ns > 0 &&
            (next < 0 || now + job->timeout_ns < next))
            next = now + job->timeout_ns;
    }
    return next;
}

/* Kills the workers that have not said READY within the start timeout
 * (stuck in worker_init, or on a lock a thread of the caller held when it
 * forked), and buries those whose process has ended where no pidfd says
 * so.  Returns when to check again, or -1. */
static int64_t check_workers(pool_t *pool)
{
    if (pool->steady)
        return -1;
    int64_t now = pmap__now_ns(), next = -1;
    bool ticking = false, steady = true;
    for (int i = 0; i < pool->nworkers; i++) {
        pmap__worker_t *w = &pool->workers[i];
        pmap__proc_check(pool, w);
        if (w->gone)
            bury(pool, w);
        steady = steady && w->pid > 0 && w->pidfd >= 0 && w->ready;
        if (w->pid == 0)
            continue;
        ticking |= w->pidfd < 0;
        if (w->ready)
            continue;
        int64_t deadline = w->born_ns + pool->start_timeout_ns;
        if (deadline <= now && caught_up(pool, w) && (w->pid == 0 || w->ready))
            continue;
        if (deadline <= now) {
            pmap__proc_kill(pool, w);
            lose(pool, w, PMAP_ESTART);
        } else if (next < 0 || deadline < next) {
            next = deadline;
        }
    }
    if (pool->start_failures > START_FAILURES_MAX &&
        (next < 0 || pool->respawn_ns < next))
        next = pool->respawn_ns;
    if (ticking && (next < 0 || now + PMAP__TICK_NS < next))
        next = now + PMAP__TICK_NS;
    pool->steady = steady;
    return next;
}

/* Whether w may be given work: ready (or, in an eager pool, started),
 * and its process (if any) alive. */
static bool serving(const pool_t *pool, const pmap__worker_t *w)
{
    return (w->ready || pool->eager) && !w->gone &&
           (w->pid > 0 || pool->in_process);
}

/* Gives every ready worker as many batches as it may hold, one round at a
 * time (so a map of few items is spread over all workers), each from the
 * oldest map that has work for it.  In process, one batch at a time: it
 * runs as it is flushed. */
static void feed(pool_t *pool)
{
    int depth_max = pool->in_process ? 1 : PMAP__DEPTH;
    for (int depth = 1; depth <= depth_max; depth++) {
        for (int i = 0; i < pool->nworkers; i++) {
            pmap__worker_t *w = &pool->workers[i];
            if (!serving(pool, w) || w->nbatch >= depth)
                continue;
            for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later) {
                if (!pmap__job_has_work(pool, job, w))
                    continue;
                int rc = pmap__job_dispatch(pool, job, w);
                if (rc == 0)
                    break;
                if (rc < 0) {
                    /* A half-queued frame: this channel is unusable. */
                    job->error = rc;
                    lose(pool, w, rc);
                    break;
                }
            }
        }
    }
    for (int i = 0; i < pool->nworkers; i++) {
        flush(pool, &pool->workers[i]);
        watch(pool, &pool->workers[i]);
    }
}

/* Carries out the cancellations asked for since the last step (perhaps by
 * a signal handler), before any more work is sent, and kills the running
 * items of cancelled maps whose grace period is over.  Returns when the
 * next grace period ends, or -1. */
static int64_t cancel(pool_t *pool)
{
    unsigned cancels = atomic_load(&pool->cancels);
    int64_t next = -1;
    for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later) {
        if (job->finished)
            continue;
        if (job->cancels != cancels)
            job->cancel = 1;    /* pool_cancel since it started */
        if (job->cancel && !job->cancelled)
            pmap__job_cancel_now(pool, job);
        if (!job->cancelled || job->kill_ns < 0 || job->inflight == 0)
            continue;
        if (job->kill_ns <= pmap__now_ns()) {
            job->kill_ns = -1;
            pmap__loop_kill_job(pool, job);
        } else if (next < 0 || job->kill_ns < next) {
            next = job->kill_ns;
        }
    }
    return next;
}

/* Closes the maps that have finished (their END frames leave with the next
 * write to each worker), calls the others' progress callbacks, and frees
 * the maps released meanwhile. */
static void settle(pool_t *pool)
{
    bool settled = false;
    for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later) {
        if (pmap__job_settle(pool, job))
            settled = true;
        else if (!job->finished)
            pmap__progress(pool, job, false);
    }
    pmap__jobs_reap(pool);
    if (settled)    /* other threads may be waiting for these maps */
        pthread_cond_broadcast(&pool->turn);
}

static int64_t earliest(int64_t a, int64_t b)
{
    return a < 0 ? b : b < 0 ? a : a < b ? a : b;
}

/* Looks after the worker processes: timeouts, deaths, births, retirees,
 * recycling, and empty slots refilled.  Returns when to look again, or
 * -1. */
static int64_t tend(pool_t *pool)
{
    int64_t wake = enforce_timeouts(pool);
    wake = earliest(wake, check_workers(pool));
    wake = earliest(wake, pmap__retirees_check(pool));
    recycle(pool);
    bool started;
    int spawned = keep_workers(pool, &started);
    if (spawned < 0) {
        for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later) {
            if (!job->finished && job->error == 0)
                job->error = spawned;
        }
    }
    /* check_workers looked before these processes existed: each has the
     * start timeout to say READY, and nothing else may wake the loop
     * meanwhile (a pool of one worker that hangs in worker_init). */
    if (started)
        wake = earliest(wake, pmap__now_ns() + pool->start_timeout_ns);
    return wake;
}

/* Whether a map has items for the in-process worker now. */
static bool work_left(const pool_t *pool)
{
    for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later) {
        if (pmap__job_has_work(pool, job, &pool->workers[0]))
            return true;
    }
    return false;
}

/* Everything but waiting.  Returns when to wake at the latest, or -1. */
static int64_t step(pool_t *pool)
{
    int64_t wake = cancel(pool);
    if (!pool->in_process)
        wake = earliest(wake, tend(pool));
    pool->lost = false;
    feed(pool);
    settle(pool);
    for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later) {
        wake = earliest(wake, pmap__progress_due(job));
        wake = earliest(wake, pmap__job_retry_due(job));
    }
    /* A worker lost while feeding (its channel broke) left a slot empty
     * after the refill, or the in-process worker has more to do: step
     * again without waiting. */
    return pool->lost || (pool->in_process && work_left(pool)) ? 0 : wake;
}

/* Handles what w's process has done: sent frames, taken what we wrote,
 * ended.  A callback run for an earlier worker may have killed this one
 * (pmap_job_free): then its events are stale. */
static void on_events(pool_t *pool, pmap__worker_t *w, bool input,
                      bool output, bool ended)
{
    if (w->pid > 0 && input)
        on_input(pool, w);
    if (w->pid > 0 && output)
        flush(pool, w);
    if (w->pid > 0 && ended)
        bury(pool, w);
}

/* A cancellation (see cancel()) woke us. */
static void on_wake(pool_t *pool)
{
    pmap__wake_drain(pool->wake);
}

#ifdef __linux__
/*
 * wait_events on the pool's epoll set, which holds every descriptor the
 * loop waits on (proc.c, watch()): the wait costs as much as the events
 * that come, whatever the number of workers.
 */
static int wait_epoll(pool_t *pool, int64_t wake)
{
    struct epoll_event ev[64];
    int ready;
    pthread_mutex_unlock(&pool->lock);
    do {
        /* Milliseconds, rounded up: waking late by less than one is
         * fine, early would spin. */
        int64_t left = wake < 0 ? -1 : wake - pmap__now_ns();
        int ms = left < 0                     ? (wake < 0 ? -1 : 0)
                 : left > INT_MAX * 1000000LL ? INT_MAX
                 : (int)((left + 999999) / 1000000);
        ready = epoll_wait(pool->epfd, ev, 64, ms);
    } while (ready < 0 && errno == EINTR);
    pthread_mutex_lock(&pool->lock);
    if (ready < 0)
        return -errno;
    for (int i = 0; i < ready; i++) {
        uint64_t what = ev[i].data.u64;
        if (what == PMAP__EV_WAKE) {
            on_wake(pool);
        } else if (what != PMAP__EV_RETIREE) {  /* retirees: the next step */
            int kind = (int)(what & 3), index = (int)(what >> 2);
            on_events(pool, &pool->workers[index], kind == PMAP__EV_INPUT,
                      kind == PMAP__EV_OUTPUT, kind == PMAP__EV_ENDED);
        }
    }
    return ready;
}
#endif

/*
 * Waits for events until wake (or not at all if 0 >= wake) and handles
 * them, on the epoll set where there is one.  Else polls, in this order:
 * each worker's channel (to read), pidfd and channel (to write, when there
 * is something to), the wake pipe, and each retiree's channel and pidfd
 * (handled by the next step).  Returns the number of events, or a negative
 * code.
 */
static int wait_events(pool_t *pool, int64_t wake)
{
#ifdef __linux__
    if (pool->epfd >= 0)
        return wait_epoll(pool, wake);
#endif
    size_t nw = (size_t)pool->nworkers, n = 3 * nw + 1 + 2 * pool->nretirees;
    struct pollfd *pfd = pmap__pollfds(pool, n);
    if (pfd == NULL)
        return PMAP_ENOMEM;
    for (size_t i = 0; i < nw; i++) {
        pmap__worker_t *w = &pool->workers[i];
        bool on = w->pid > 0, out = on && !pmap__outq_empty(&w->out);
        pfd[i] = (struct pollfd){on ? w->ch.in : -1, POLLIN, 0};
        pfd[nw + i] = (struct pollfd){on ? w->pidfd : -1, POLLIN, 0};
        pfd[2 * nw + i] = (struct pollfd){out ? w->ch.out : -1, POLLOUT, 0};
    }
    struct pollfd *alarm = &pfd[3 * nw];
    *alarm = (struct pollfd){pool->wake[0], POLLIN, 0};
    for (size_t i = 0; i < pool->nretirees; i++) {
        alarm[1 + 2 * i] = (struct pollfd){pool->retirees[i].fd, POLLIN, 0};
        alarm[2 + 2 * i] =
            (struct pollfd){pool->retirees[i].pidfd, POLLIN, 0};
    }
    /* The only wait: other threads may start, cancel and free maps
     * meanwhile (struct pool says what they may touch), and wake us. */
    pthread_mutex_unlock(&pool->lock);
    int ready = pmap__poll(pfd, n, wake);
    pthread_mutex_lock(&pool->lock);
    if (ready > 0 && alarm->revents)
        on_wake(pool);
    for (size_t i = 0; i < nw && ready > 0; i++)
        on_events(pool, &pool->workers[i], pfd[i].revents != 0,
                  pfd[2 * nw + i].revents != 0, pfd[nw + i].revents != 0);
    return ready;
}

static bool all_ready(const pool_t *pool)
{
    for (int i = 0; i < pool->nworkers; i++) {
        if (!pool->workers[i].ready)
            return false;
    }
    return true;
}

/* ---- the pool's lock -------------------------------------------------- */

/*
 * Checks that the calling process may use pool now, and takes its lock,
 * waiting for the other threads' calls to let go of it (a driver lets go
 * while it polls: below).  Returns 0, or PMAP_EINVAL, PMAP_ENESTED,
 * PMAP_EFORKED, or PMAP_EBUSY when this thread holds the lock already: a
 * callback of the pool calling back into it.
 */
int pmap__pool_enter(pool_t *pool)
{
    if (pool == NULL)
        return PMAP_EINVAL;
    if (pmap__nested())
        return PMAP_ENESTED;
    if (pool->owner != pmap__self())
        return PMAP_EFORKED;
    if (pthread_mutex_lock(&pool->lock) != 0)
        return PMAP_EBUSY;      /* EDEADLK: ours already */
    return 0;
}

void pmap__pool_leave(pool_t *pool)
{
    pthread_mutex_unlock(&pool->lock);
}

/* For the calls that only read the pool (counters, failures): takes its
 * lock unless this thread holds it already (in a callback) or the pool is
 * a forked copy.  Returns whether it did, for pmap__pool_unlock. */
bool pmap__pool_lock(const pool_t *pool)
{
    pool_t *p = (pool_t *)pool;     /* the lock is not part of its value */
    return p->owner == pmap__self() && pthread_mutex_lock(&p->lock) == 0;
}

void pmap__pool_unlock(const pool_t *pool, bool locked)
{
    if (locked)
        pthread_mutex_unlock(&((pool_t *)pool)->lock);
}

/* Wakes the loop if it waits in poll; async-signal-safe (a cancellation
 * may come from a signal handler running on any thread). */
void pmap__pool_wake(pool_t *pool)
{
    /* In a worker, the number may be its own by now (family.c). */
    if (!pmap__pools_forgotten())
        pmap__wake_send(pool->wake);
}

/* ---- who drives -------------------------------------------------------- */

/*
 * One thread at a time runs the loop for every thread's maps: the driver.
 * The others wait on pool->turn until their map has finished (settle) or
 * the driver stops, and then one of them drives.  The lock is held
 * throughout, except in poll and while waiting here.
 */
static void drive_begin(pool_t *pool)
{
    pool->driving = true;
}

static void drive_end(pool_t *pool)
{
    pool->driving = false;
    pthread_cond_broadcast(&pool->turn);
    if (pool->poll_missed) {
        /* A program's own loop was told to wait for pool_fd meanwhile:
         * its maps are its own to drive now. */
        pool->poll_missed = false;
        pmap__pool_wake(pool);
    }
}

/* Waits for the driver to finish a map or to stop, until deadline_ns if
 * not negative. */
static void wait_turn(pool_t *pool, int64_t deadline_ns)
{
    if (deadline_ns < 0) {
        pthread_cond_wait(&pool->turn, &pool->lock);
        return;
    }
    struct timespec ts = {(time_t)(deadline_ns / 1000000000),
                          (long)(deadline_ns % 1000000000)};
    pthread_cond_timedwait(&pool->turn, &pool->lock, &ts);
}

/* The loop, in the driver. */
static int run(pool_t *pool, const pmap_job_t *job, int64_t deadline_ns)
{
    int64_t wake = job != NULL ? step(pool) : -1;
    for (;;) {
        if (job == NULL && pool->start_failures > 0)
            return PMAP_ESTART;
        if (job == NULL ? all_ready(pool) : job->finished)
            return 0;
        if (deadline_ns >= 0 && (wake < 0 || deadline_ns < wake))
            wake = deadline_ns;
        int ready = wait_events(pool, wake);
        if (ready < 0)
            return ready;
        wake = job != NULL ? step(pool) : -1;
        if (job != NULL && job->finished)
            return 0;
        if (deadline_ns >= 0 && pmap__now_ns() >= deadline_ns)
            return PMAP_ETIMEDOUT;
    }
}

/*
 * Runs the pool until job has finished (or, with job NULL, while a pool
 * starts, until every worker is ready), or until deadline_ns if not
 * negative: drives it, or waits while another thread does.  The lock is
 * held.  Returns 0, PMAP_ETIMEDOUT at the deadline, PMAP_ESTART if a
 * starting worker died, or another negative code if poll fails.
 */
int pmap__loop_run(pool_t *pool, const pmap_job_t *job, int64_t deadline_ns)
{
    if (pool->driving)
        pmap__pool_wake(pool);  /* to take up a new map, or a cancel */
    while (pool->driving) {
        if (job != NULL && job->finished)
            return 0;
        if (deadline_ns >= 0 && pmap__now_ns() >= deadline_ns)
            return PMAP_ETIMEDOUT;
        wait_turn(pool, deadline_ns);
    }
    drive_begin(pool);
    int rc = run(pool, job, deadline_ns);
    drive_end(pool);
    return rc;
}

/* One round without waiting, as the driver; returns when to wake at the
 * latest, or -1.  Nobody else drives. */
int64_t pmap__loop_once(pool_t *pool)
{
    drive_begin(pool);
    step(pool);
    wait_events(pool, 0);
    int64_t next = step(pool);
    drive_end(pool);
    return next;
}

/* Has the maps just started sent to the workers: one round now, or, when
 * another thread drives, a nudge to its poll. */
void pmap__loop_nudge(pool_t *pool)
{
    if (pool->driving)
        pmap__pool_wake(pool);
    else
        pmap__loop_once(pool);
}

/* pool_poll: one round, unless another thread drives (then the program's
 * loop is woken through pool_fd when it stops: drive_end). */
int pool_poll(pool_t *pool, double *wake)
{
    int rc = pmap__pool_enter(pool);
    if (rc < 0)
        return rc;
    if (pool->driving) {
        pool->poll_missed = true;
        if (wake != NULL)
            *wake = -1.0;
        pmap__pool_leave(pool);
        return 0;
    }
    /* Maps that finish are counted there (pmap__job_settle); others'
     * may be freed meanwhile. */
    uint64_t before = pool->total.maps;
    int64_t next = pmap__loop_once(pool);
    uint64_t finished = pool->total.maps - before;
    if (wake != NULL) {
        int64_t left = next < 0 ? -1 : next - pmap__now_ns();
        *wake = next < 0 ? -1.0 : left > 0 ? (double)left / 1e9 : 0.0;
    }
    pmap__pool_leave(pool);
    return finished > INT_MAX ? INT_MAX : (int)finished;
}
