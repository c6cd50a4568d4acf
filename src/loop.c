/* SPDX-License-Identifier: MIT */
/*
 * loop.c - the event loop a map runs in the caller's thread: keep every
 * worker slot filled, keep every worker fed with batches, and move frames
 * both ways with one poll over all channels.
 *
 * All channels are non-blocking on our side and written only when poll says
 * so (or right after queueing), and every channel is read whenever it has
 * data, so a worker blocked writing a large result is always drained while
 * we write it a large task: no two-pipe deadlock.
 *
 * A worker is lost when its channel reaches EOF or fails, when it sends a
 * malformed frame, or when we kill it.  Frames it sent before dying are
 * processed first; then its pid is reaped, the item it was running (read
 * from its shared slot) is charged with the death, its other items are sent
 * again, and the slot is refilled before the next poll.
 */
#include "pmap_internal.h"

#include <signal.h>
#include <sys/wait.h>

/* Workers that may die in a row before saying READY, before we give up
 * replacing them (a broken environment, not a bad item). */
#define START_FAILURES_MAX 3

/*
 * Reaps w and reports its items to job.  error, if not 0, overrides the
 * cause read from the wait status (we killed the worker for it); item, if
 * not 0, is the item to charge (index + 1) instead of the one its slot
 * shows.
 */
static void lose_item(pool_t *pool, pmap__job_t *job, pmap__worker_t *w,
                      int error, uint64_t item)
{
    pmap__slot_t *slot = &pool->slots[w->index];
    pmap__death_t death = {0, 0, (long)w->pid, 0, item};
    if (item == 0)
        death.item = atomic_load_explicit(&slot->item, memory_order_acquire);
    death.map = atomic_load_explicit(&slot->map, memory_order_relaxed);
    int status = 0;
    int rc = pmap__worker_reap(w, &status);
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
    if (!w->ready)
        pool->start_failures++;
    if (job != NULL)
        pmap__job_lost(pool, job, w, &death);
    w->nbatch = 0;
    w->ready = false;
}

static void lose(pool_t *pool, pmap__job_t *job, pmap__worker_t *w, int error)
{
    lose_item(pool, job, w, error, 0);
}

/*
 * Kills the workers whose item has run past the job's timeout, charging
 * that item.  The start of each item is in the worker's slot, so no timer
 * runs in the worker.  Returns when to check again (for poll), or -1 when
 * the job has no timeout; *killed counts the workers killed.
 */
static int64_t enforce_timeouts(pool_t *pool, pmap__job_t *job, int *killed)
{
    *killed = 0;
    if (job == NULL || job->timeout_ns == 0)
        return -1;
    int64_t now = pmap__now_ns(), next = now + job->timeout_ns;
    for (int i = 0; i < pool->nworkers; i++) {
        pmap__worker_t *w = &pool->workers[i];
        pmap__slot_t *slot = &pool->slots[i];
        if (w->pid == 0 || w->nbatch == 0)
            continue;
        uint64_t item = atomic_load_explicit(&slot->item, memory_order_acquire);
        if (item == 0 || atomic_load_explicit(&slot->map, memory_order_relaxed)
                             != job->id)
            continue;
        int64_t deadline =
            atomic_load_explicit(&slot->started_ns, memory_order_relaxed) +
            job->timeout_ns;
        if (deadline <= now) {
            kill(w->pid, SIGKILL);
            lose_item(pool, job, w, PMAP_ETIMEDOUT, item);
            ++*killed;
        } else if (deadline < next) {
            next = deadline;
        }
    }
    return next;
}

/* Handles the complete frames read from w; a negative code if one is
 * malformed or unexpected. */
static int take_frames(pool_t *pool, pmap__job_t *job, pmap__worker_t *w)
{
    pmap__header_t h;
    const unsigned char *p;
    int rc;
    while ((rc = pmap__reader_next(&w->in, &h, &p)) > 0) {
        size_t len = (size_t)h.length;
        switch (h.type) {
        case PMAP__READY:
            rc = w->ready ? PMAP_EPROTO : 0;
            w->ready = true;
            pool->start_failures = 0;
            break;
        case PMAP__RESULT:
            rc = job && h.map == job->id
                     ? pmap__job_result(pool, job, w, p, len)
                     : PMAP_EPROTO;
            break;
        case PMAP__MAP_ERROR:
            rc = job && h.map == job->id ? pmap__job_map_error(job, w, p, len)
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
        w->nbatch > 0 && w->batch[0].job != NULL &&
        h.length > pmap__result_bound(w->batch[0].job->fn->result,
                                      w->batch[0].items.count))
        return PMAP_EPROTO;
    return 0;
}

/* Reads what w sent; loses it at EOF, on error, or for a bad frame. */
static void on_input(pool_t *pool, pmap__job_t *job, pmap__worker_t *w)
{
    ssize_t n = pmap__reader_fill(&w->in, w->fd);
    if (n > 0)
        pool->last.bytes_received += (uint64_t)n;
    int rc = take_frames(pool, job, w);
    if (rc < 0)
        lose(pool, job, w, rc == PMAP_ENOMEM ? PMAP_ENOMEM : PMAP_EPROTO);
    else if (n == 0 || (n < 0 && n != -EAGAIN && n != -EWOULDBLOCK))
        lose(pool, job, w, 0);
}

/* Writes what is queued for w, as far as its channel takes it now. */
static void flush(pool_t *pool, pmap__job_t *job, pmap__worker_t *w)
{
    struct iovec iov[64];
    while (w->pid > 0 && !pmap__outq_empty(&w->out)) {
        int n = pmap__outq_iov(&w->out, iov, 64);
        ssize_t r = pmap__sendv(w->fd, iov, n);
        if (r == -EAGAIN || r == -EWOULDBLOCK)
            return;
        if (r < 0) {
            /* It is gone: take what it sent before dying, then bury it. */
            on_input(pool, job, w);
            if (w->pid > 0)
                lose(pool, job, w, 0);
            return;
        }
        pmap__outq_advance(&w->out, (size_t)r);
        pool->last.bytes_sent += (uint64_t)r;
    }
}

/* Refills empty worker slots.  Fails only when no worker is left. */
static int keep_workers(pool_t *pool)
{
    int alive = 0, rc = PMAP_ESTART;
    for (int i = 0; i < pool->nworkers; i++) {
        pmap__worker_t *w = &pool->workers[i];
        if (w->pid == 0 && pool->start_failures <= START_FAILURES_MAX) {
            rc = pmap__worker_spawn(pool, w);
            pool->last.restarts += rc == 0;
        }
        alive += w->pid > 0;
    }
    return alive > 0 ? 0 : rc < 0 ? rc : PMAP_ESTART;
}

/*
 * Gives every ready worker as many batches as it may hold, one round at a
 * time, so that a map of few items is spread over all workers instead of
 * queued on the first ones.
 */
static void feed(pool_t *pool, pmap__job_t *job)
{
    for (int depth = 1; depth <= PMAP__DEPTH; depth++) {
        for (int i = 0; i < pool->nworkers && pmap__job_has_work(job); i++) {
            pmap__worker_t *w = &pool->workers[i];
            if (w->pid == 0 || !w->ready || w->nbatch >= depth)
                continue;
            int rc = pmap__job_dispatch(pool, job, w);
            if (rc < 0) {
                /* A half-queued frame: this channel cannot be used again. */
                job->error = rc;
                lose(pool, job, w, rc);
            }
        }
    }
    for (int i = 0; i < pool->nworkers; i++)
        flush(pool, job, &pool->workers[i]);
}

static bool all_ready(const pool_t *pool)
{
    for (int i = 0; i < pool->nworkers; i++) {
        if (!pool->workers[i].ready)
            return false;
    }
    return true;
}

/* Whether the loop is over: the job finished, or (with no job, when a pool
 * starts) every worker is ready.  Stores the outcome in *rc. */
static bool loop_done(pool_t *pool, pmap__job_t *job, int *rc)
{
    *rc = 0;
    if (job == NULL) {
        if (pool->start_failures > 0)
            *rc = PMAP_ESTART;
        return *rc < 0 || all_ready(pool);
    }
    /* Refilled even when the job is over: the pool stays at full size. */
    int spawned = keep_workers(pool);
    if (pmap__job_finished(job))
        return true;
    if (spawned < 0 && job->error == 0)
        job->error = spawned;
    feed(pool, job);
    return pmap__job_finished(job);
}

/*
 * Runs job to its end (or, with job NULL, waits until every worker is
 * ready), until deadline_ns if not negative.  Returns 0 when done (the job
 * itself may have failed: see job->error), PMAP_ETIMEDOUT at the deadline,
 * or another negative code if poll fails.
 */
int pmap__loop_run(pool_t *pool, pmap__job_t *job, int64_t deadline_ns)
{
    struct pollfd *pfd = pool->pollfds;
    int rc, killed;
    while (!loop_done(pool, job, &rc)) {
        int64_t wake = enforce_timeouts(pool, job, &killed);
        if (killed > 0)
            continue;   /* refill and feed before waiting */
        if (wake < 0 || (deadline_ns >= 0 && deadline_ns < wake))
            wake = deadline_ns;
        for (int i = 0; i < pool->nworkers; i++) {
            pmap__worker_t *w = &pool->workers[i];
            pfd[i].fd = w->pid > 0 ? w->fd : -1;
            pfd[i].events = POLLIN;
            if (!pmap__outq_empty(&w->out))
                pfd[i].events |= POLLOUT;
            pfd[i].revents = 0;
        }
        int ready = pmap__poll(pfd, (size_t)pool->nworkers, wake);
        if (ready < 0)
            return ready;
        if (ready == 0 && deadline_ns >= 0 && pmap__now_ns() >= deadline_ns)
            return PMAP_ETIMEDOUT;
        for (int i = 0; i < pool->nworkers; i++) {
            pmap__worker_t *w = &pool->workers[i];
            if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
                on_input(pool, job, w);
            if (w->pid > 0 && (pfd[i].revents & POLLOUT))
                flush(pool, job, w);
        }
    }
    return rc;
}

/*
 * Kills the workers still holding batches of job, which is being given up:
 * their answers would otherwise arrive during a later map.
 */
void pmap__loop_abandon(pool_t *pool, pmap__job_t *job)
{
    for (int i = 0; i < pool->nworkers; i++) {
        pmap__worker_t *w = &pool->workers[i];
        for (int b = 0; b < w->nbatch; b++) {
            if (w->batch[b].job == job) {
                lose(pool, NULL, w, PMAP_ECANCELED);
                break;
            }
        }
    }
}
