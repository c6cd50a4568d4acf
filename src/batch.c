/* SPDX-License-Identifier: MIT */
/*
 * batch.c - a map's items on their way through the workers: cutting them
 * into batches, sending them, storing the results that come back, and
 * accounting for the items of a worker that died; then the map's end (its
 * code, failures in order, counters, END frames) and its memory.
 *
 * Every item of a map is, at any time, in exactly one of these states, and
 * the map is over when none is left in the first three:
 *   not yet sent   [job->next, n)  (made by the producer, or not yet),
 *                  or job->shares  (affine maps: see pmap__job_share)
 *   to send again  job->retry      (ranges whose worker died)
 *   to run again   job->again      (items whose run failed, and which
 *                                   have retries left: once due)
 *   in flight      a batch of some worker (job->inflight counts batches)
 *   done           its result stored, or its failure recorded (deliver.c)
 */
#include "pmap_internal.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Batch sizing, when the caller does not fix it (see chunk_size).  8 ms of
 * work a batch: each batch costs both sides a wake-up and a few system
 * calls, some 50 us on a virtual machine, which at 2 ms a batch took 5% of
 * W2 (items of 1 ms: 0.94 of OpenMP's time, 0.99-1.00 at 8 ms).  The end
 * of a map is cut finer anyway. */
#define TARGET_BATCH_NS 8000000
#define TARGET_REMOTE_NS 25000000       /* ...over MPI, whose round trips
                                           take up to milliseconds */
#define TARGET_BATCH_BYTES (256u << 10) /* moved a batch: each side reads
                                           a batch whole into a buffer, whose
                                           pages a new process touches for
                                           the first time in its first map
                                           (1 MiB made W1's first map of a
                                           pool 1.2-1.6x its later ones) */
#define FIRST_BATCH 16                  /* items, before any is measured */

/* Times a range is sent again after its worker died outside any item. */
#define MAX_ATTEMPTS 3

bool pmap__job_finished(const pmap_job_t *job)
{
    if (job->inflight > 0)
        return false;
    return job->error != 0 || (job->n != SIZE_MAX && job->done == job->n);
}

/* Items worker w may still be given before it is recycled. */
static size_t quota(const pool_t *pool, const pmap__worker_t *w)
{
    size_t max = pool->opts.max_items_per_worker;
    if (w->over_memory)
        return 0;   /* to be recycled as soon as it is idle (loop.c) */
    return max == 0 ? SIZE_MAX : max > w->used ? max - w->used : 0;
}

/* Whether job has items to send to worker w now. */
/* The first item of job->again due now, or SIZE_MAX. */
static size_t again_due(const pmap_job_t *job)
{
    if (job->nagain == 0)
        return SIZE_MAX;
    int64_t now = pmap__now_ns();
    for (size_t i = 0; i < job->nagain; i++) {
        if (job->again[i].due_ns <= now)
            return i;
    }
    return SIZE_MAX;
}

/* When the next item of job->again that is not due yet will be, or -1:
 * those due now are sent as soon as a worker is ready (an event). */
int64_t pmap__job_retry_due(const pmap_job_t *job)
{
    if (job->nagain == 0 || job->finished || job->error != 0)
        return -1;
    int64_t now = pmap__now_ns(), next = -1;
    for (size_t i = 0; i < job->nagain; i++) {
        int64_t due = job->again[i].due_ns;
        if (due > now && (next < 0 || due < next))
            next = due;
    }
    return next;
}

bool pmap__job_has_work(const pool_t *pool, const pmap_job_t *job,
                        const pmap__worker_t *w)
{
    if (job->error != 0 || job->finished || quota(pool, w) == 0)
        return false;
    if (job->nretry > 0 || again_due(job) != SIZE_MAX)
        return true;
    if (job->shares != NULL)
        return job->share_left > 0;
    if (job->n != SIZE_MAX && job->next >= job->n)
        return false;
    return pmap__window_room(job, job->next) > 0;
}

/*
 * Queues items to be sent again.  They fail instead if the map has failed
 * or been cancelled (with the map's own code: a neighbour's death is not
 * their cause), or if they have been tried too often (with the death that
 * ended the last attempt, which struck no item of theirs).
 */
static void retry_push(pool_t *pool, pmap_job_t *job, pmap__range_t r,
                       const pmap__death_t *death)
{
    if (r.count == 0)
        return;
    if (job->error != 0) {
        for (size_t i = 0; i < r.count; i++)
            pmap__fail_item(pool, job, r.first + i, job->error, 0, NULL,
                            NULL, 0);
        return;
    }
    if (r.attempts > MAX_ATTEMPTS) {
        for (size_t i = 0; i < r.count; i++)
            pmap__fail_item(pool, job, r.first + i, death->error, death->code,
                            NULL, NULL, 0);
        return;
    }
    if (job->nretry == job->retry_cap) {
        pmap__range_t *p = pmap__grow(job->retry, &job->retry_cap, sizeof *p);
        if (p == NULL) {
            job->error = PMAP_ENOMEM;
            retry_push(pool, job, r, death);
            return;
        }
        job->retry = p;
    }
    job->retry[job->nretry++] = r;
}

/* ---- policies: retries and halt (README, "Policies") -------------------- */

/* Whether a run that ended with error may be retried under job's policy:
 * its process died (crashed, exited, timed out, vanished), or, when asked,
 * it called pmap_fail. */
static bool retryable(const pmap_job_t *job, int error)
{
    switch (error) {
    case PMAP_ECRASH:
    case PMAP_EEXIT:
    case PMAP_ETIMEDOUT:
    case PMAP_ELOST:
        return true;
    case PMAP_EFAIL:
        return job->retry_failed;
    default:
        return false;
    }
}

/* Queues item index to run again, after the map's retry delay, if it has
 * retries left; returns whether it did (its failed run is then noted). */
static bool again_push(pmap_job_t *job, size_t index, int error, int code)
{
    if (job->nagain == job->again_cap) {
        pmap__again_t *p = pmap__grow(job->again, &job->again_cap, sizeof *p);
        if (p == NULL)
            return false;   /* it fails now rather than not at all */
        job->again = p;
    }
    if (pmap__tried(job, index, error, code, job->retries) <= 0)
        return false;
    int64_t due = pmap__now_ns() + job->retry_delay_ns;
    job->again[job->nagain++] = (pmap__again_t){index, due};
    job->stats.retries++;
    return true;
}

/* Item index's run failed (ran says where): it runs again if the policy
 * allows, else it fails for good. */
static void charge(pool_t *pool, pmap_job_t *job, size_t index, int error,
                   int code, const pmap__ran_t *ran, const char *msg,
                   size_t msglen)
{
    if (job->error == 0 && job->retries > 0 && retryable(job, error) &&
        again_push(job, index, error, code))
        return;
    pmap__fail_item(pool, job, index, error, code, ran, msg, msglen);
}

/* Takes the item of job->again at i. */
static size_t again_take(pmap_job_t *job, size_t i)
{
    size_t index = job->again[i].index;
    memmove(&job->again[i], &job->again[i + 1],
            (job->nagain - i - 1) * sizeof *job->again);
    job->nagain--;
    return index;
}

/*
 * Stops job with error (PMAP_ECANCELED, PMAP_EHALTED): items not sent fail
 * with it (a producer is not called again), as do items waiting to run
 * again; items in flight are left to the caller.
 */
static void stop(pool_t *pool, pmap_job_t *job, int error)
{
    job->cancelled = true;
    if (job->error == 0)
        job->error = error;
    if (job->n == SIZE_MAX)
        job->n = job->produced;
    static const pmap__death_t stopped = {.error = PMAP_ECANCELED};
    pmap__range_t rest = {job->next, job->n - job->next, 0};
    job->next = job->n;
    if (job->shares != NULL) {
        for (int i = 0; i < pool->nworkers; i++)
            retry_push(pool, job, job->shares[i], &stopped);
    }
    free(job->shares);
    job->shares = NULL;
    job->share_left = 0;
    if (job->window.size != 0 && job->producer == NULL && rest.count > 0) {
        /* Arrays to a callback: those items have no place in the window;
         * deliver.c hands them over after the earlier ones. */
        job->window.tail = rest.first;
        rest.count = 0;
    }
    retry_push(pool, job, rest, &stopped);
    while (job->nretry > 0)
        retry_push(pool, job, job->retry[--job->nretry], &stopped);
    while (job->nagain > 0)
        pmap__fail_item(pool, job, again_take(job, job->nagain - 1),
                        job->error, 0, NULL, NULL, 0);
    pmap__deliver(job);     /* the tail, if nothing comes before it */
}

/* Whether job's failures so far call for its halt policy: see
 * pool_map_options_t.halt. */
static bool halt_due(const pmap_job_t *job)
{
    const pool_map_options_t *o = &job->opts;
    if (o->halt == PMAP_HALT_NEVER || job->error != 0 ||
        job->halt_failed == 0 || job->finished)
        return false;
    if (job->n != SIZE_MAX && job->done >= job->n)
        return false;   /* nothing is left to stop */
    bool fraction = o->halt_fraction > 0;
    if (o->halt_failures == 0 && !fraction)
        return true;    /* the first failure */
    if (o->halt_failures > 0 && job->halt_failed >= o->halt_failures)
        return true;
    size_t least = o->halt_min ? o->halt_min : 10;
    return fraction && job->done >= least &&
           (double)job->halt_failed >= o->halt_fraction * (double)job->done;
}

/* Halts job if its policy says so: nothing more is sent, and with
 * PMAP_HALT_NOW its running items are killed by the loop's next step
 * (loop.c, cancel: not here, where a worker's frames are being read). */
static void halt_if_due(pool_t *pool, pmap_job_t *job)
{
    if (!halt_due(job))
        return;
    stop(pool, job, PMAP_EHALTED);
    job->kill_ns = job->opts.halt == PMAP_HALT_NOW ? pmap__now_ns() : -1;
}

/* Whether the item a dead worker was running, as its slot says, is in one
 * of the batches it held. */
static bool culprit_held(const pmap__worker_t *w, const pmap__death_t *death)
{
    size_t culprit = (size_t)death->item - 1;
    for (int b = 0; b < w->nbatch && death->item != 0; b++) {
        const pmap__batch_t *x = &w->batch[b];
        if (x->job->id == death->map && culprit >= x->items.first &&
            culprit - x->items.first < x->items.count)
            return true;
    }
    return false;
}

/*
 * The items of job that a dead worker held.  The item it was running (from
 * its slot) failed with the death's cause (or runs again: retries); the
 * others did nothing wrong
 * and are sent again.  A batch that died with no item running is sent
 * again at most MAX_ATTEMPTS times.  When the worker was killed to cancel
 * another map, none of this map's items is to blame.
 */
void pmap__job_lost(pool_t *pool, pmap_job_t *job, pmap__worker_t *w,
                    const pmap__death_t *death)
{
    bool blameless = death->error == PMAP_ECANCELED && !job->cancelled;
    for (int i = 0; i < w->nbatch; i++) {
        pmap__range_t r = w->batch[i].items;
        if (w->batch[i].job != job)
            continue;
        job->inflight--;
        size_t culprit = (size_t)death->item - 1;
        if (blameless) {
            retry_push(pool, job, r, death);
            continue;
        }
        if (death->item == 0 || death->map != job->id ||
            culprit < r.first || culprit - r.first >= r.count) {
            /* Not the running batch.  If the worker was running an item
             * of another batch it held, this one only waited behind it,
             * and a worker that died before its READY (an eager pool)
             * never read it; otherwise (no item, or a slot the worker
             * scribbled on) it counts against the batch, lest one that
             * kills every worker go round forever. */
            if (w->ready && !culprit_held(w, death))
                r.attempts++;
            retry_push(pool, job, r, death);
            continue;
        }
        pmap__ran_t ran = {death->pid, death->worker, culprit, NULL,
                           death->started_ns, pmap__now_ns()};
        charge(pool, job, culprit, death->error, death->code, &ran,
               death->message, death->length);
        retry_push(pool, job,
                   (pmap__range_t){r.first, culprit - r.first, r.attempts},
                   death);
        retry_push(pool, job,
                   (pmap__range_t){culprit + 1, r.first + r.count - culprit - 1,
                                   r.attempts},
                   death);
    }
    halt_if_due(pool, job);
}

/* The time running items of job have after a cancellation: -1 for as
 * long as they take. */
static int64_t cancel_grace(const pool_t *pool, const pmap_job_t *job)
{
    double g = job->opts.cancel_grace;
    if (job->opts.kill_on_cancel)
        return 0;
    if (g < 0)
        return -1;
    return g > 0 ? (g < 1e6 ? (int64_t)(g * 1e9) : INT64_MAX / 4)
                 : pool->cancel_grace_ns;
}

/*
 * Cancels job now: items not sent fail with PMAP_ECANCELED (a producer is
 * not called again); items in flight may finish within the map's grace
 * period, after which loop.c kills their workers (in the same step if it
 * is 0).
 */
void pmap__job_cancel_now(pool_t *pool, pmap_job_t *job)
{
    if (job->cancelled || job->finished)
        return;
    stop(pool, job, PMAP_ECANCELED);
    int64_t grace = cancel_grace(pool, job);
    if (grace >= 0)
        job->kill_ns = pmap__now_ns() + grace;
}

/* ---- cutting batches --------------------------------------------------- */

/*
 * Bytes one item moves, both ways: measured from the frames so far, or,
 * before any, its fixed-size arguments and result plus the variable
 * arguments of item i, the next to go.
 */
static double item_bytes(pool_t *pool, pmap_job_t *job, size_t i)
{
    const pmap__fn_t *fn = job->fn;
    if (job->sent_items > 0) {
        /* Fixed-size values in shared memory count as moved: their pages
         * are touched like a buffer's. */
        double b = (double)(job->stats.bytes_sent + job->shared_values) /
                   (double)job->sent_items;
        if (job->busy_items > 0)
            b += (double)(job->stats.bytes_received + job->shared_results) /
                 (double)job->busy_items;
        return b > 1 ? b : 1;
    }
    if (job->producer != NULL && pmap__produce(pool, job, i + 1) <= i)
        return 1;   /* no item to look at */
    size_t bytes = fn->result.size;
    for (int k = 0; k < fn->nparams && i < job->n; k++) {
        if (job->constants >> k & 1)
            continue;
        const unsigned char *item = pmap__input(job, k, i);
        bytes += fn->params[k].size;
        if (fn->params[k].kind == PMAP__BYTES) {
            pmap_bytes_t b;
            memcpy(&b, item, sizeof b);
            bytes += b.size;
        } else if (fn->params[k].kind == PMAP__STRING ||
                   fn->params[k].kind == PMAP__STRING_OWNED) {
            const char *str;
            memcpy(&str, item, sizeof str);
            bytes += str ? strlen(str) : 0;
        }
    }
    return (double)bytes;
}

/*
 * Items in the next batch, the first being `first`, of `left` that could
 * go.  Guided scheduling:
 * never more than a share of what is left (so the end of the map is cut
 * fine and no worker idles while another has a long batch), and sized so
 * that a batch takes about TARGET_BATCH_NS by the workers' own measure:
 * long enough that the cost of a round trip vanishes, short enough for
 * progress and balance.  Capped in bytes (about 1 MiB a batch, or one item
 * if larger) so that pipelined batches and the workers' buffers stay small,
 * and to what the worker's shared slot holds of large values: a value that
 * does not fit there goes through the channel, copied twice more.
 */
static size_t chunk_size(pool_t *pool, pmap_job_t *job, size_t first,
                         size_t left)
{
    if (job->chunk != 0)
        return job->chunk < left ? job->chunk : left;
    size_t c = left / (2 * (size_t)pool->nworkers);
    if (job->busy_items == 0) {
        if (c > FIRST_BATCH)
            c = FIRST_BATCH;
    } else if (job->stats.busy_ns > 0) {
        double per_item = (double)job->stats.busy_ns / (double)job->busy_items;
        double by_time =
            (pool->remote ? TARGET_REMOTE_NS : TARGET_BATCH_NS) / per_item;
        if (by_time < (double)c)
            c = (size_t)by_time;
    }
    double by_bytes = TARGET_BATCH_BYTES / item_bytes(pool, job, first);
    if (by_bytes < (double)c)
        c = (size_t)by_bytes;
    if (job->shared_sent > 0) {     /* what does not fit goes by the pipe */
        double by_slot = (double)PMAP__SLOT_SIZE * (double)job->sent_items /
                         (double)job->shared_sent;
        if (by_slot < (double)c)
            c = (size_t)by_slot;
    }
    if (c < 1)
        c = 1;
    return c < left ? c : left;
}

/* ---- affine maps ------------------------------------------------------- */

/*
 * A map of arrays gives each worker slot a contiguous share
 * of its items, which the slot's processes take from the front, and a slot
 * whose share is spent takes the back half of the largest left.  A map
 * over the same inputs again then sends each worker mostly the items it
 * had: the pages it read are mapped in its process already (a first read
 * of a page of pmap_alloc memory costs a process microseconds here: W3)
 * and warm in its caches.  Maps whose order shows stay on the single
 * cursor: streams and callbacks (their window keeps a stretch of items in
 * input order), pmap_job_next in input order (it hands out the front of
 * the map, which every worker should be running), a halt policy (it stops
 * the items after a failure), grouped output (written in input order), and
 * MPI pools, whose workers are nodes of different sizes.  (An in-process
 * pool has one worker.)
 */

/* Shares are cut in whole chunks where the map fixes them: how many
 * there are in count items, the last perhaps partial. */
static size_t share_units(const pmap_job_t *job, size_t count, size_t *unit)
{
    *unit = job->chunk ? job->chunk : 1;
    return count / *unit + (count % *unit != 0);
}

/* The tournament of the shares' sizes: each node holds the larger share of
 * its two children's, the root (1) the largest of all, so that a steal
 * costs no scan of every worker's share.  Node's match is played again. */
static void share_play(pmap_job_t *job, size_t node)
{
    uint32_t l = job->largest[2 * node], r = job->largest[2 * node + 1];
    job->largest[node] = job->shares[l].count >= job->shares[r].count ? l : r;
}

/* Share i's size changed: the matches above its leaf are played again. */
static void share_resized(pmap_job_t *job, size_t i)
{
    for (size_t node = (job->leaves + i) / 2; node >= 1; node /= 2)
        share_play(job, node);
}

void pmap__job_share(const pool_t *pool, pmap_job_t *job)
{
    size_t workers = (size_t)pool->nworkers, n = job->n, unit;
    size_t chunks = share_units(job, n, &unit);
    if (job->producer != NULL || job->window.size != 0 ||
        (job->iter.on && !job->opts.unordered) ||
        job->opts.halt != PMAP_HALT_NEVER ||
        job->output.mode == PMAP_OUTPUT_GROUP || pool->remote != NULL ||
        workers < 2 || chunks <= workers)
        return;
    size_t leaves = 1;
    while (leaves < workers)
        leaves *= 2;
    /* A share more than the workers', empty, for the leaves beyond them. */
    job->shares = malloc((workers + 1) * sizeof *job->shares +
                         2 * leaves * sizeof *job->largest);
    if (job->shares == NULL)
        return;     /* the single cursor, without the locality */
    job->largest = (uint32_t *)(job->shares + workers + 1);
    job->leaves = leaves;
    size_t each = chunks / workers, extra = chunks % workers, first = 0;
    for (size_t i = 0; i < workers; i++) {
        size_t count = (each + (i < extra)) * unit;
        count = count < n - first ? count : n - first;
        job->shares[i] = (pmap__range_t){first, count, 0};
        first += count;
    }
    job->shares[workers] = (pmap__range_t){n, 0, 0};
    for (size_t i = 0; i < leaves; i++)
        job->largest[leaves + i] = (uint32_t)(i < workers ? i : workers);
    for (size_t node = leaves - 1; node >= 1; node--)
        share_play(job, node);
    job->share_left = n;
    job->next = n;
}

/* w's share being spent, it takes the back half of the largest, in whole
 * chunks when the map fixes them. */
static void share_steal(pmap_job_t *job, const pmap__worker_t *w)
{
    size_t victim = job->largest[1];
    pmap__range_t *own = &job->shares[w->index], *largest = &job->shares[victim];
    size_t unit, kept = share_units(job, largest->count, &unit) / 2 * unit;
    *own = (pmap__range_t){largest->first + kept, largest->count - kept, 0};
    largest->count = kept;
    share_resized(job, victim);
}

static pmap__range_t share_take(pool_t *pool, pmap_job_t *job,
                                const pmap__worker_t *w, size_t most)
{
    pmap__range_t *own = &job->shares[w->index];
    if (own->count == 0)
        share_steal(job, w);
    size_t c = chunk_size(pool, job, own->first, job->share_left);
    c = c < own->count ? c : own->count;
    c = c < most ? c : most;
    pmap__range_t take = {own->first, c, 0};
    own->first += c;
    own->count -= c;
    job->share_left -= c;
    share_resized(job, (size_t)w->index);
    return take;
}

/* ---- sending batches --------------------------------------------------- */

/* The items of the next batch for w (count 0: none now). */
static pmap__range_t next_range(pool_t *pool, pmap_job_t *job,
                                const pmap__worker_t *w)
{
    size_t most = quota(pool, w);
    size_t due = job->nretry == 0 ? again_due(job) : SIZE_MAX;
    if (due != SIZE_MAX && most > 0)    /* a retried item runs alone */
        return (pmap__range_t){again_take(job, due), 1, 0};
    if (job->nretry > 0) {
        pmap__range_t *r = &job->retry[job->nretry - 1];
        pmap__range_t take = *r;
        take.count = chunk_size(pool, job, r->first, r->count);
        if (take.count > most)
            take.count = most;
        r->first += take.count;
        r->count -= take.count;
        if (r->count == 0)
            job->nretry--;
        return take;
    }
    if (job->shares != NULL)
        return share_take(pool, job, w, most);
    size_t room = pmap__window_room(job, job->next);
    size_t left = job->n != SIZE_MAX ? job->n - job->next : room;
    size_t c = chunk_size(pool, job, job->next, left);
    c = c < room ? c : room;
    c = c < most ? c : most;
    if (job->producer != NULL) {
        size_t made = pmap__produce(pool, job, job->next + c);
        c = made - job->next < c ? made - job->next : c;
    }
    pmap__range_t take = {job->next, c, 0};
    job->next += c;
    return take;
}

static bool set_up_on(const pmap__worker_t *w, uint32_t map)
{
    for (size_t i = 0; i < w->nsetup; i++) {
        if (w->setup[i] == map)
            return true;
    }
    return false;
}

/*
 * Queues the next batch of job for worker w, after the map's SETUP frame if
 * w has not had it.  Returns 0, 1 if there was nothing to send, or
 * PMAP_ENOMEM.  TASK payload: u64 function id | u64 first | u64 count |
 * u64 arena slot | a column per argument that is not a constant.
 */
int pmap__job_dispatch(pool_t *pool, pmap_job_t *job, pmap__worker_t *w)
{
    bool new_map = !set_up_on(w, job->id);
    if (new_map && w->nsetup == w->setup_cap) {
        uint32_t *p = pmap__grow(w->setup, &w->setup_cap, sizeof *p);
        if (p == NULL)
            return 1;   /* nothing taken: try again later */
        w->setup = p;
    }
    pmap__range_t r = next_range(pool, job, w);
    if (r.count == 0)
        return 1;
    pmap__outq_t *q = &w->out;
    if (new_map) {
        w->setup[w->nsetup++] = job->id;
        pmap__outq_append(q, &job->setup);
    }
    uint64_t queued = q->total;
    size_t frame = pmap__outq_begin(q, PMAP__TASK, job->id);
    pmap__outq_u64(q, job->fn->id);
    pmap__outq_u64(q, r.first);
    pmap__outq_u64(q, r.count);
    unsigned slot = w->next_slot++ % 2;
    pmap__outq_u64(q, slot);
    size_t in_region_at = pmap__outq_u64_later(q);
    pmap__outq_u64(q, 0);
    pmap__region_t shared = pmap__arena_slot(w->arena, w->private,
                                             slot, false);
    if (pool->heap && shared.base != NULL)  /* not private: reads the heap */
        shared.heap_find = pmap__heap_find;
    uint64_t in_region = 0;
    for (int k = 0; k < job->fn->nparams; k++) {
        if (job->constants >> k & 1)
            continue;
        pmap__type_t type = job->fn->params[k];
        const unsigned char *column = pmap__input(job, k, r.first);
        if (pmap__column_share(q, type, column, r.count, &shared)) {
            in_region |= (uint64_t)1 << k;
            job->shared_values += r.count * type.size;
        } else {
            pmap__column_encode(q, type, column, type.size, r.count,
                                &shared);
        }
    }
    pmap__outq_set(q, in_region_at, in_region);
    pmap__outq_end(q, frame);
    if (shared.used > w->depth)
        w->depth = shared.used;     /* what its arena holds: shm.c */
    job->stats.bytes_sent += q->total - queued;
    job->shared_sent += shared.used;
    job->sent_items += r.count;
    if (w->nbatch == 0)
        w->waiting_ns = pmap__now_ns();     /* timeouts: loop.c */
    w->batch[w->nbatch++] = (pmap__batch_t){job, r, slot};
    w->used += r.count;
    job->inflight++;
    job->stats.batches++;
    w->stats.batches++;
    return q->error;
}

/* ---- results ----------------------------------------------------------- */

/* w has answered its oldest batch: the next one, if any, is its work from
 * now on. */
static void pop_batch(pmap__worker_t *w)
{
    w->batch[0] = w->batch[1];
    if (--w->nbatch > 0)
        w->waiting_ns = pmap__now_ns();
}

/* Decodes encoded result j (PMAP_EXPORT_TYPE) into dst, which the caller
 * will own: 0, or PMAP_ECODEC if the decoder refused it. */
static int store_decoded(const pmap__fn_t *fn, const pmap__column_t *col,
                         size_t j, unsigned char *dst)
{
    pmap_bytes_t b;
    memcpy(&b, col->base + j * col->stride, sizeof b);
    memset(dst, 0, fn->result.size);
    if (b.data == NULL ||
        fn->result.codec->decode(dst, b.data,
                                 pmap__column_length(col, j)) != 0) {
        memset(dst, 0, fn->result.size);
        return PMAP_ECODEC;
    }
    return 0;
}

/* Copies variable result j (a string or buffer in the frame or in shared
 * memory) into memory the caller will own: 0, PMAP_ENOMEM or PMAP_ECODEC.
 * Lengths come from the frame: shared bytes may change under us, not the
 * frame. */
static int store_variable(const pmap__fn_t *fn, const pmap__column_t *col,
                          size_t j, unsigned char *dst)
{
    if (fn->result.kind == PMAP__CODEC)
        return store_decoded(fn, col, j, dst);
    const unsigned char *v = col->base + j * col->stride;
    const void *data;
    memcpy(&data, v, sizeof data);  /* both kinds begin with the pointer */
    if (data == NULL) {
        memset(dst, 0, fn->result.size);
        return 0;
    }
    size_t len = pmap__column_length(col, j);
    unsigned char *copy = malloc(len + 1);
    if (copy == NULL)
        return PMAP_ENOMEM;
    memcpy(copy, data, len);
    copy[len] = '\0';
    if (fn->result.kind == PMAP__BYTES)
        memcpy(dst, &(pmap_bytes_t){copy, len}, sizeof(pmap_bytes_t));
    else
        memcpy(dst, &copy, sizeof copy);
    return 0;
}

/*
 * Stores items [first, first + count) of a checked RESULT, in runs between
 * the failed items, which the worker lists in item order.
 */
static void store_results(pool_t *pool, pmap_job_t *job, size_t first,
                          size_t count, const pmap__result_t *res,
                          const pmap__ran_t *ran)
{
    const pmap__fn_t *fn = job->fn;
    size_t size = fn->result.size, run = first, end = first + count;
    const unsigned char *record = res->failures;
    pmap__failure_record_t f = {SIZE_MAX, 0, 0, NULL, 0};
    uint64_t taken = 0;
    if (taken < res->nfailed) {
        record = pmap__failure_next(record, &f);
        taken++;
    }
    if (fn->result.kind == PMAP__VALUE) {
        /* One copy, then only the failed items are visited. */
        memcpy(pmap__output(job, first), res->column.base, count * size);
        while (f.index != SIZE_MAX) {
            pmap__stored(pool, job, run, (size_t)f.index - run, ran);
            charge(pool, job, (size_t)f.index, f.error ? f.error : PMAP_EFAIL,
                   f.code, ran, f.message, f.length);
            run = (size_t)f.index + 1;
            f.index = SIZE_MAX;
            if (taken < res->nfailed) {
                record = pmap__failure_next(record, &f);
                taken++;
            }
        }
        pmap__stored(pool, job, run, end - run, ran);
        return;
    }
    for (size_t i = first; i < end; i++) {
        int error = 0;
        if (i == f.index)
            error = f.error ? f.error : PMAP_EFAIL;
        else
            error = store_variable(fn, &res->column, i - first,
                                   pmap__output(job, i));
        if (error == 0)
            continue;
        pmap__stored(pool, job, run, i - run, ran);
        run = i + 1;
        if (i != f.index) {     /* no memory for the copy, or no decoding */
            static const char undecoded[] = "the result could not be decoded";
            bool codec = error == PMAP_ECODEC;
            pmap__fail_item(pool, job, i, error, 0, ran,
                            codec ? undecoded : NULL,
                            codec ? sizeof undecoded - 1 : 0);
            continue;
        }
        charge(pool, job, i, error, f.code, ran, f.message, f.length);
        f.index = SIZE_MAX;
        if (taken < res->nfailed) {
            record = pmap__failure_next(record, &f);
            taken++;
        }
    }
    pmap__stored(pool, job, run, end - run, ran);
}

/*
 * A RESULT from worker w answers its oldest batch.  The frame is checked
 * whole before anything is stored; PMAP_EPROTO means the worker is broken.
 */
int pmap__job_result(pool_t *pool, pmap_job_t *job, pmap__worker_t *w,
                     const unsigned char *p, size_t len)
{
    if (w->nbatch == 0 || w->batch[0].job != job)
        return PMAP_EPROTO;
    pmap__range_t r = w->batch[0].items;
    const pmap__fn_t *fn = job->fn;
    job->scratch.len = 0;
    void *scratch = pmap__buf_append(&job->scratch,
                                     pmap__column_scratch(fn->result, r.count));
    if (scratch == NULL)
        return PMAP_ENOMEM;
    pmap__result_t res;
    pmap__region_t shared = pmap__arena_slot(w->arena, w->private,
                                             w->batch[0].slot, true);
    int rc = pmap__result_decode(p, len, fn->result, r.first, r.count,
                                 job->logged, scratch, &res, &shared);
    if (rc < 0)
        return rc;
    pop_batch(w);
    job->inflight--;
    job->busy_items += r.count;
    job->stats.bytes_received += len;
    if (res.in_region)
        job->shared_results += r.count * fn->result.size;
    job->stats.busy_ns += res.busy_ns;
    w->stats.busy_ns += res.busy_ns;
    w->stats.items += r.count;
    pmap__ran_t ran = {w->pid, w->index, r.first, res.timing, 0, 0};
    store_results(pool, job, r.first, r.count, &res, &ran);
    halt_if_due(pool, job);
    return 0;
}

/* A MAP_ERROR: the function cannot run on w; the map fails with its code. */
int pmap__job_map_error(pool_t *pool, pmap_job_t *job, pmap__worker_t *w,
                        const unsigned char *p, size_t len)
{
    (void)pool;
    if (w->nbatch == 0 || w->batch[0].job != job || len < sizeof(uint64_t))
        return PMAP_EPROTO;
    int64_t code = (int64_t)pmap__get_u64(p);
    if (code >= 0 || code < INT_MIN)
        return PMAP_EPROTO;
    if (job->error == 0)
        job->error = (int)code;
    job->inflight--;
    pop_batch(w);
    return 0;
}

/* ---- a map's end ------------------------------------------------------ */

/* Buffers a map's memory keeps for the pool's next map, at most (bytes
 * each): enough for a SETUP frame of a few constants and a batch of small
 * results. */
#define KEPT_MAX 4096

/* Frees what job holds but itself, its SETUP frame's and its scratch
 * buffers when they are small and `keep` is set. */
void pmap__job_empty(pmap_job_t *job, bool keep)
{
    pmap__window_free(job);
    pmap__iter_free(job);
    pmap__output_free(job);
    if (!keep || job->setup.scratch.cap > KEPT_MAX)
        pmap__outq_free(&job->setup);
    if (!keep || job->scratch.cap > KEPT_MAX)
        pmap__buf_free(&job->scratch);
    free(job->retry);
    free(job->shares);
    free(job->again);
    pmap__tries_free(job);
    pmap__failures_free(job->failures, job->nfailures);
}

void pmap__job_free(pmap_job_t *job)
{
    if (job != NULL) {
        pmap__job_empty(job, false);
        free(job);
    }
}

static int by_index(const void *a, const void *b)
{
    size_t x = ((const pmap_failure_t *)a)->index;
    size_t y = ((const pmap_failure_t *)b)->index;
    return (x > y) - (x < y);
}

/*
 * If job has just finished, closes it: last progress call, failures in
 * order, its code, counters, and END frames so that workers forget it.
 * Returns whether it did.
 */
bool pmap__job_settle(pool_t *pool, pmap_job_t *job)
{
    if (job->finished || !pmap__job_finished(job))
        return false;
    pmap__progress(pool, job, true);
    pmap__output_finish(job);
    job->finished = true;
    if (job->nfailures > 1)
        qsort(job->failures, job->nfailures, sizeof *job->failures,
              by_index);
    job->rc = job->error ? job->error
                         : job->failed > INT_MAX ? INT_MAX : (int)job->failed;
    for (int i = 0; i < pool->nworkers; i++) {
        pmap__worker_t *w = &pool->workers[i];
        for (size_t s = 0; s < w->nsetup; s++) {
            if (w->setup[s] != job->id)
                continue;
            w->setup[s] = w->setup[--w->nsetup];
            size_t frame = pmap__outq_begin(&w->out, PMAP__END, job->id);
            pmap__outq_end(&w->out, frame);
            break;
        }
    }
    pmap_stats_t *s = &job->stats, *t = &pool->total;
    s->maps = 1;
    s->items = job->done;
    s->failed = job->failed;
    s->wall_ns = (uint64_t)(pmap__now_ns() - job->start_ns);
    t->maps++;
    t->items += s->items;
    t->failed += s->failed;
    t->batches += s->batches;
    t->bytes_sent += s->bytes_sent;
    t->bytes_received += s->bytes_received;
    t->busy_ns += s->busy_ns;
    t->wall_ns += s->wall_ns;
    t->retries += s->retries;
    pmap__window_free(job);
    if (job->setup.scratch.cap > KEPT_MAX)  /* else kept: job_recycle */
        pmap__outq_free(&job->setup);
    return true;
}

/* Frees the maps released while running, once they have finished. */
void pmap__jobs_reap(pool_t *pool)
{
    for (pmap_job_t **p = &pool->jobs; *p != NULL;) {
        pmap_job_t *job = *p;
        if (job->released && job->finished && !job->waited) {
            *p = job->later;
            pmap__job_free(job);
        } else {
            p = &job->later;
        }
    }
}
