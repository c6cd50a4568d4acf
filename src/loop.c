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
 * A worker is lost when its channel reaches EOF or fails, when it sends a
 * malformed frame, or when we kill it (timeout, cancellation).  Frames it
 * sent before dying are processed first; then its pid is reaped, the item
 * it was running (read from its shared slot) is charged with the death,
 * its other items are sent again, and the slot is refilled.
 */
#include "pmap_internal.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif

/* Workers that may die in a row before saying READY, before we give up
 * replacing them (a broken environment, not a bad item). */
#define START_FAILURES_MAX 3

/* ---- losing a worker --------------------------------------------------- */

/*
 * Reaps w and reports its items to every map.  error, if not 0, overrides
 * the cause read from the wait status (we killed the worker for it); item,
 * if not 0, is the item to charge (index + 1) instead of the one its slot
 * shows.
 */
static void lose_item(pool_t *pool, pmap__worker_t *w, int error,
                      uint64_t item)
{
    pmap__slot_t *slot = &pool->slots[w->index];
    pmap__death_t death = {0, 0, (long)w->pid, 0, item};
    if (item == 0)
        death.item = atomic_load_explicit(&slot->item, memory_order_acquire);
    death.map = atomic_load_explicit(&slot->map, memory_order_relaxed);
    int status = 0;
    int rc = pmap__worker_reap(pool, w, &status);
    if (error != 0) {
        death.error = error;
    } else if (rc < 0) {
        death.error = PMAP_ELOST;
    } else if (WIFSIGNALED(status)) {
        death.error = PMAP_ECRASH;
        death.code = WTERMSIG(status);
    } else {
        death.error = PMAP_EEXIT;
        death.code = WIFEXITED(status) ? WEXITSTATUS(status) : 0;
    }
    if (!w->ready && !w->retiring)
        pool->start_failures++;
    for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later)
        pmap__job_lost(pool, job, w, &death);
    w->nbatch = 0;
    w->nsetup = 0;
    w->ready = false;
}

static void lose(pool_t *pool, pmap__worker_t *w, int error)
{
    lose_item(pool, w, error, 0);
}

/* Kills the workers holding batches of job (being cancelled or given up):
 * its items there fail with PMAP_ECANCELED, others are sent again. */
void pmap__loop_kill_job(pool_t *pool, pmap_job_t *job)
{
    for (int i = 0; i < pool->nworkers; i++) {
        pmap__worker_t *w = &pool->workers[i];
        for (int b = 0; b < w->nbatch; b++) {
            if (w->batch[b].job == job) {
                kill(w->pid, SIGKILL);
                lose(pool, w, PMAP_ECANCELED);
                break;
            }
        }
    }
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
            pool->start_failures = 0;
            break;
        case PMAP__RESULT:
            rc = job ? pmap__job_result(pool, job, w, p, len) : PMAP_EPROTO;
            break;
        case PMAP__MAP_ERROR:
            rc = job ? pmap__job_map_error(pool, job, w, p, len) : PMAP_EPROTO;
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
    ssize_t n = pmap__reader_fill(&w->in, w->fd);
    if (n > 0)
        w->stats.bytes_received += (uint64_t)n;
    int rc = take_frames(pool, w);
    if (rc < 0)
        lose(pool, w, rc == PMAP_ENOMEM ? PMAP_ENOMEM : PMAP_EPROTO);
    else if (n == 0 || (n < 0 && n != -EAGAIN && n != -EWOULDBLOCK))
        lose(pool, w, 0);
}

/* Writes what is queued for w, as far as its channel takes it now. */
static void flush(pool_t *pool, pmap__worker_t *w)
{
    struct iovec iov[PMAP__IOV];
    if (w->retiring)
        pmap__outq_reset(&w->out);  /* it has closed for writing */
    while (w->pid > 0 && !pmap__outq_empty(&w->out)) {
        int n = pmap__outq_iov(&w->out, iov, pmap__iov_max());
        ssize_t r = pmap__sendv(w->fd, iov, n);
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

/* ---- pool_fd ----------------------------------------------------------- */

/* Watches w's channel for output in the pool's epoll set (see pool.c)
 * only while something waits to be written there. */
static void watch(pool_t *pool, pmap__worker_t *w)
{
#ifdef __linux__
    bool out = !pmap__outq_empty(&w->out);
    if (pool->epfd < 0 || w->pid == 0 || out == w->polled_out)
        return;
    struct epoll_event ev = {EPOLLIN | (out ? EPOLLOUT : 0), {.ptr = w}};
    if (epoll_ctl(pool->epfd, EPOLL_CTL_MOD, w->fd, &ev) == 0)
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
    return pool->epfd >= 0 ? pool->epfd : PMAP_ENOSYS;
}

/* ---- one step ---------------------------------------------------------- */

/* Refills empty worker slots.  Fails only when no worker is left. */
static int keep_workers(pool_t *pool)
{
    int alive = 0, rc = PMAP_ESTART;
    for (int i = 0; i < pool->nworkers; i++) {
        pmap__worker_t *w = &pool->workers[i];
        if (w->pid == 0 && pool->start_failures <= START_FAILURES_MAX) {
            rc = pmap__worker_spawn(pool, w);
            if (rc == 0) {
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

/* Tells the workers that have run their quota of items, and hold no batch,
 * to leave (max_items_per_worker); they are replaced when they have. */
static void recycle(pool_t *pool)
{
    size_t max = pool->opts.max_items_per_worker;
    for (int i = 0; i < pool->nworkers && max > 0; i++) {
        pmap__worker_t *w = &pool->workers[i];
        if (w->pid > 0 && w->ready && !w->retiring && w->used >= max &&
            w->nbatch == 0 && pmap__outq_empty(&w->out)) {
            w->retiring = true;
            shutdown(w->fd, SHUT_WR);   /* EOF: its worker_exit, then _exit */
        }
    }
}

/* Kills the workers whose item has run past its map's timeout, charging
 * that item.  Each item's start is in its worker's slot, so no timer runs
 * in the worker.  Returns when to check again, or -1. */
static int64_t enforce_timeouts(pool_t *pool)
{
    int64_t now = pmap__now_ns(), next = -1;
    for (int i = 0; i < pool->nworkers; i++) {
        pmap__worker_t *w = &pool->workers[i];
        pmap__slot_t *slot = &pool->slots[i];
        if (w->pid == 0 || w->nbatch == 0)
            continue;
        uint64_t item = atomic_load_explicit(&slot->item, memory_order_acquire);
        pmap_job_t *job = item ? find_job(pool, atomic_load_explicit(
                                                    &slot->map,
                                                    memory_order_relaxed))
                               : NULL;
        if (job == NULL || job->timeout_ns == 0)
            continue;
        int64_t deadline =
            atomic_load_explicit(&slot->started_ns, memory_order_relaxed) +
            job->timeout_ns;
        if (deadline <= now) {
            kill(w->pid, SIGKILL);
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
 * forked).  Returns when to check again, or -1. */
static int64_t check_births(pool_t *pool)
{
    int64_t now = pmap__now_ns(), next = -1;
    for (int i = 0; i < pool->nworkers; i++) {
        pmap__worker_t *w = &pool->workers[i];
        if (w->pid == 0 || w->ready)
            continue;
        int64_t deadline = w->born_ns + pool->start_timeout_ns;
        if (deadline <= now) {
            kill(w->pid, SIGKILL);
            lose(pool, w, PMAP_ESTART);
        } else if (next < 0 || deadline < next) {
            next = deadline;
        }
    }
    return next;
}

/* Gives every ready worker as many batches as it may hold, one round at a
 * time (so a map of few items is spread over all workers), each from the
 * oldest map that has work for it. */
static void feed(pool_t *pool)
{
    for (int depth = 1; depth <= PMAP__DEPTH; depth++) {
        for (int i = 0; i < pool->nworkers; i++) {
            pmap__worker_t *w = &pool->workers[i];
            if (w->pid == 0 || !w->ready || w->retiring || w->nbatch >= depth)
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
 * a signal handler), before any more work is sent. */
static void cancel(pool_t *pool)
{
    bool all = atomic_exchange(&pool->cancel, 0) != 0;
    for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later) {
        if (all && !job->finished)
            job->cancel = 1;
        if (job->cancel && !job->cancelled)
            pmap__job_cancel_now(pool, job);
    }
}

/* Closes the maps that have finished (their END frames leave with the next
 * write to each worker), calls the others' progress callbacks, and frees
 * the maps released meanwhile. */
static void settle(pool_t *pool)
{
    for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later) {
        if (!pmap__job_settle(pool, job) && !job->finished)
            pmap__progress(pool, job, false);
    }
    pmap__jobs_reap(pool);
}

/* Everything but waiting.  Returns when to wake at the latest, or -1. */
static int64_t step(pool_t *pool)
{
    cancel(pool);
    int64_t wake = enforce_timeouts(pool), born = check_births(pool);
    if (born >= 0 && (wake < 0 || born < wake))
        wake = born;
    int spawned = keep_workers(pool);
    if (spawned < 0) {
        for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later) {
            if (!job->finished && job->error == 0)
                job->error = spawned;
        }
    }
    recycle(pool);
    feed(pool);
    settle(pool);
    for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later) {
        int64_t due = pmap__progress_due(job);
        if (due >= 0 && (wake < 0 || due < wake))
            wake = due;
    }
    return wake;
}

/* Waits for events until wake (or not at all if 0 >= wake) and handles
 * them.  Returns poll's count, or a negative code. */
static int wait_events(pool_t *pool, int64_t wake)
{
    struct pollfd *pfd = pool->pollfds;
    for (int i = 0; i < pool->nworkers; i++) {
        pmap__worker_t *w = &pool->workers[i];
        pfd[i].fd = w->pid > 0 ? w->fd : -1;
        pfd[i].events = POLLIN;
        if (!pmap__outq_empty(&w->out))
            pfd[i].events |= POLLOUT;
        pfd[i].revents = 0;
    }
    struct pollfd *alarm = &pfd[pool->nworkers];
    *alarm = (struct pollfd){pool->wake[0], POLLIN, 0};
    int ready = pmap__poll(pfd, (size_t)pool->nworkers + 1, wake);
    if (ready > 0 && alarm->revents) {  /* a cancellation: see settle() */
        char sink[64];
        while (pmap__read(pool->wake[0], sink, sizeof sink) > 0)
            ;
        ready--;
    }
    for (int i = 0; i < pool->nworkers && ready > 0; i++) {
        pmap__worker_t *w = &pool->workers[i];
        if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
            on_input(pool, w);
        if (w->pid > 0 && (pfd[i].revents & POLLOUT))
            flush(pool, w);
    }
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

/*
 * Runs the pool until job has finished (or, with job NULL, while a pool
 * starts, until every worker is ready), or until deadline_ns if not
 * negative.  Returns 0, PMAP_ETIMEDOUT at the deadline, PMAP_ESTART if a
 * starting worker died, or another negative code if poll fails.
 */
int pmap__loop_run(pool_t *pool, const pmap_job_t *job, int64_t deadline_ns)
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

/* One round without waiting; returns when to wake at the latest, or -1. */
int64_t pmap__loop_once(pool_t *pool)
{
    step(pool);
    wait_events(pool, 0);
    return step(pool);
}

int pool_poll(pool_t *pool, double *wake)
{
    int rc = pmap__pool_enter(pool);
    if (rc < 0)
        return rc;
    int before = 0, after = 0;
    for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later)
        before += job->finished;
    int64_t next = pmap__loop_once(pool);
    for (pmap_job_t *job = pool->jobs; job != NULL; job = job->later)
        after += job->finished;
    if (wake != NULL) {
        int64_t left = next < 0 ? -1 : next - pmap__now_ns();
        *wake = next < 0 ? -1.0 : left > 0 ? (double)left / 1e9 : 0.0;
    }
    pmap__pool_leave(pool);
    return after - before;
}
