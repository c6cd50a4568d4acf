/* SPDX-License-Identifier: MIT */
/*
 * job.c - a map as the caller sees it: starting it, in whichever form it
 * was asked for (arrays or a producer, an output array or a callback, now
 * or in the background, many items or one call); waiting for it; pulling
 * its results one at a time (pmap_job_next); cancelling it; and its
 * outcome: code, failures, counters.
 *
 * Every form becomes one pmap_job_t in the pool's list, and every job is
 * driven by the same loop (loop.c): a map waited for and maps in the
 * background share the workers, in the order they were started.  The
 * loop closes a map when it has finished and frees one released meanwhile
 * (batch.c), without coming back up here.
 */
#include "pmap_internal.h"

#include <stdlib.h>
#include <string.h>

/* The policy options (README, "Policies") make sense. */
static bool policies_valid(const pool_map_options_t *o)
{
    return o->retry_delay >= 0 && o->halt >= PMAP_HALT_NEVER &&
           o->halt <= PMAP_HALT_NOW && o->halt_fraction >= 0 &&
           o->halt_fraction <= 1 && o->joblog_fd >= 0;
}

static int check_call(const pmap__call_t *call, const pmap__fn_t *fn,
                      const void *out, int nargs, const pmap__arg_t *args)
{
    const pool_map_options_t *o = call->options;
    if (fn == NULL || (o != NULL && (o->timeout != o->timeout ||   /* NaN */
                                      o->cancel_grace != o->cancel_grace ||
                                      !policies_valid(o))))
        return PMAP_EINVAL;
    bool to_callback = o != NULL && o->on_result != NULL;
    for (int k = 0; k < fn->nparams && k < PMAP_MAX_ARGS; k++) {
        if (fn->params[k].size == 0)
            return PMAP_EINVAL;     /* an empty struct (GNU C) */
    }
    if (fn->result.size == 0)
        return PMAP_EINVAL;
    if (call->producer != NULL)
        return to_callback && out == NULL && nargs == 0 ? 0 : PMAP_EINVAL;
    size_t n = call->count;     /* SIZE_MAX: no array is that long */
    /* An empty map is a map: its arrays and out may be NULL, as an empty
     * array's pointer may well be in C. */
    bool empty = n == 0;
    if ((to_callback && out != NULL) || (!to_callback && out == NULL &&
                                         !empty) ||
        n == SIZE_MAX || args == NULL ||
        nargs != fn->nparams || nargs < 1 || nargs > PMAP_MAX_ARGS ||
        n > SIZE_MAX / fn->result.size)
        return PMAP_EINVAL;
    for (int k = 0; k < nargs; k++) {
        if (args[k].is_array == args[k].is_const ||
            (args[k].is_array && args[k].array == NULL && !empty) ||
            n > SIZE_MAX / fn->params[k].size)
            return PMAP_EINVAL;
    }
    return 0;
}

/*
 * Builds the map's SETUP frame: u64 function id | u64 signature | u64
 * constants mask | u64 flags | one column of one value per constant.
 * Returns 0, or PMAP_ECODEC if a constant's encoder failed (the map cannot
 * run without it).
 */
static int encode_setup(pmap_job_t *job)
{
    pmap__outq_t *q = &job->setup;
    const pmap__fn_t *fn = job->fn;
    size_t frame = pmap__outq_begin(q, PMAP__SETUP, job->id);
    pmap__outq_u64(q, fn->id);
    pmap__outq_u64(q, pmap__signature(fn));
    pmap__outq_u64(q, job->constants);
    /* flags: bit 0, timed; bit 1, memory measured; bits 2-3, output
     * mode; bit 4, logged (per-item times come back); bits 32-63, output
     * cap (worker.c) */
    uint64_t flags = (uint64_t)(job->timeout_ns > 0) |
                     (uint64_t)(job->memory_cap > 0) << 1 |
                     (uint64_t)(job->output.mode & 3) << 2 |
                     (uint64_t)job->logged << 4 |
                     (uint64_t)job->output.cap << 32;
    pmap__outq_u64(q, flags);
    size_t unencoded = 0;
    /* A constant in a block of pmap_alloc goes by reference where the
     * workers read the heap (no arena: the frame goes to every worker). */
    pmap__region_t heap = {0};
    if (job->pool->heap)
        heap.heap_find = pmap__heap_find;
    for (int k = 0; k < fn->nparams; k++) {
        if (!(job->constants >> k & 1))
            continue;
        pmap__type_t t = fn->params[k];
        const void *v = job->args[k].is_const ? job->args[k].value
                                              : job->args[k].array;
        unencoded += pmap__column_encode(q, t, v, 0, 1, &heap);
    }
    pmap__outq_end(q, frame);
    return unencoded > 0 ? PMAP_ECODEC : 0;
}

/*
 * The memory of a map waited for goes to the pool's spare, for its next
 * map, with its small buffers: allocating while workers are young costs
 * the caller copy-on-write faults, in the heap and in libc's own state
 * (pmap__jobs_prepare).  The pool's lock is held.
 */
static void job_recycle(pool_t *pool, pmap_job_t *job)
{
    if (pool->spare != NULL) {
        pmap__job_free(job);
        return;
    }
    pmap__job_empty(job, true);
    pmap__outq_t setup = job->setup;    /* zeroed if freed */
    pmap__buf_t scratch = job->scratch;
    memset(job, 0, sizeof *job);
    job->setup = setup;
    pmap__outq_reset(&job->setup);
    job->setup.owns = false;
    job->scratch = scratch;
    job->scratch.len = 0;
    pool->spare = job;
}

/* A new map's memory, zeroed but for its buffers' room: the pool's spare,
 * or new.  The pool's lock is held. */
static pmap_job_t *job_alloc(pool_t *pool)
{
    pmap_job_t *job = pool->spare;
    pool->spare = NULL;
    return job != NULL ? job : calloc(1, sizeof *job);
}

static void unlink_job(pool_t *pool, pmap_job_t *job)
{
    for (pmap_job_t **p = &pool->jobs; *p != NULL; p = &(*p)->later) {
        if (*p == job) {
            *p = job->later;
            return;
        }
    }
}

/* The map's retries (its own, else the pool's) and job log. */
static void set_policies(const pool_t *pool, pmap_job_t *job)
{
    const pool_map_options_t *o = &job->opts;
    int retries = o->retries ? o->retries : pool->opts.retries;
    job->retries = retries > 0 ? retries : 0;
    double delay = o->retry_delay ? o->retry_delay : pool->opts.retry_delay;
    job->retry_delay_ns = delay > 0 ? (delay < 1e6 ? (int64_t)(delay * 1e9)
                                                   : (int64_t)1e15)
                                    : 0;
    job->retry_failed = o->retry_failed || pool->opts.retry_failed;
    job->logged = o->on_log != NULL || o->joblog_fd > 0 || o->joblog;
}

static int job_start(pool_t *pool, const pmap__call_t *call,
                     const pmap__fn_t *fn, void *out, const pmap__arg_t *args,
                     pmap_job_t **jobp)
{
    pmap_job_t *job = job_alloc(pool);
    if (job == NULL)
        return PMAP_ENOMEM;
    const pool_map_options_t *o = call->options;
    if (o != NULL)
        job->opts = *o;
    /* Unique in the process, not only in the pool: an in-process worker
     * (inline.c) serves the maps of every such pool. */
    atomic_uint *last_map = &pmap__local()->last_map;
    unsigned id;
    while ((id = atomic_fetch_add(last_map, 1) + 1) == 0)
        ;
    job->pool = pool;
    job->id = id;
    job->fn = fn;
    job->out = out;
    job->producer = call->producer;
    job->producer_ctx = call->producer_ctx;
    job->n = call->producer ? SIZE_MAX : call->count;
    for (int k = 0; k < fn->nparams && call->producer == NULL; k++) {
        job->args[k] = args[k];
        if (args[k].is_const || (k == 0 && fn->method))
            job->constants |= (uint64_t)1 << k;
    }
    job->chunk = job->opts.chunk ? job->opts.chunk : pool->opts.chunk;
    double timeout = job->opts.timeout ? job->opts.timeout : pool->opts.timeout;
    if (timeout > 0)    /* at least 1 ns, at most about 290 years */
        job->timeout_ns = timeout < 9e9 ? (int64_t)(timeout * 1e9) + 1
                                        : INT64_MAX / 2;
    set_policies(pool, job);
    job->start_ns = job->progress_ns = pmap__now_ns();
    job->cancels = atomic_load(&pool->cancels);
    job->kill_ns = -1;
    job->memory_cap = job->opts.max_worker_memory
                          ? job->opts.max_worker_memory
                          : pool->opts.max_worker_memory;
    if (pool->in_process)
        job->memory_cap = 0;    /* the caller's memory is not ours */
    int invalid = pmap__output_init(pool, job);
    if (invalid < 0) {
        pmap__job_free(job);
        return invalid;
    }
    /* Copied, not referenced: the caller's constants may be gone before a
     * worker (a replacement, say) is sent this frame. */
    job->setup.owns = true;
    int rc = encode_setup(job);
    if (job->setup.error != 0)
        rc = job->setup.error;
    if (rc == 0)
        rc = pmap__window_init(pool, job);
    if (rc == 0 && call->handle != NULL)
        rc = pmap__iter_init(job);
    if (rc < 0) {
        pmap__job_free(job);
        return rc;
    }
    pmap__job_share(pool, job);
    pmap__log_header(job);
    pmap_job_t **tail = &pool->jobs;
    while (*tail != NULL)
        tail = &(*tail)->later;
    *tail = job;
    *jobp = job;
    return 0;
}

/* ---- each thread's last map (pool_failures, pool_stats) ---------------- */

/* The calling thread's entry in the pool's list, or NULL. */
static pmap__last_t *my_last(const pool_t *pool)
{
    pthread_t self = pthread_self();
    for (pmap__last_t *l = pool->lasts; l != NULL; l = l->next) {
        if (pthread_equal(l->thread, self))
            return l;
    }
    return NULL;
}

/* The calling thread's entry, made if it has none; NULL without memory.
 * Made before the map starts, so that its outcome always has a place. */
static pmap__last_t *my_last_made(pool_t *pool)
{
    pmap__last_t *l = my_last(pool);
    if (l == NULL && (l = calloc(1, sizeof *l)) != NULL) {
        l->thread = pthread_self();
        l->next = pool->lasts;
        pool->lasts = l;
    }
    return l;
}

/* Makes job the calling thread's "last map" and frees it. */
static void job_retire(pool_t *pool, pmap_job_t *job, pmap__last_t *last)
{
    unlink_job(pool, job);
    pmap__failures_free(last->failures, last->nfailures);
    last->failures = job->failures;
    last->nfailures = job->nfailures;
    job->failures = NULL;
    job->nfailures = 0;
    last->stats = job->stats;
    job_recycle(pool, job);
}

/* Runs job, started by this call, to its end; returns its code. */
static int job_run(pool_t *pool, pmap_job_t *job)
{
    int rc = pmap__loop_run(pool, job, -1);
    if (rc < 0 && !job->finished) {
        /* The loop itself failed (and this thread drove it: it holds the
         * lock, nobody drives now): give the map up. */
        if (job->error == 0)
            job->error = rc;
        pmap__loop_kill_job(pool, job);
        job->inflight = 0;
        pmap__job_settle(pool, job);
    }
    return job->rc;
}

int pmap__map(pool_t *pool, const pmap__call_t *call, const pmap__fn_t *fn,
              void *out, int nargs, const pmap__arg_t *args)
{
    int rc = pmap__nested() ? PMAP_ENESTED
                             : check_call(call, fn, out, nargs, args);
    if (rc == 0)
        rc = pmap__pool_enter(pool);
    if (rc < 0)
        return rc;
    pmap_job_t *job = NULL;
    pmap__last_t *last = NULL;
    rc = pmap__registry_check(fn);
    if (rc == 0 && call->handle == NULL && (last = my_last_made(pool)) == NULL)
        rc = PMAP_ENOMEM;
    if (rc == 0)
        rc = job_start(pool, call, fn, out, args, &job);
    if (rc == 0 && call->handle != NULL) {
        job->background = true;
        *call->handle = job;
        pmap__loop_nudge(pool);     /* start sending work now */
    } else if (rc == 0) {
        rc = job_run(pool, job);
        job_retire(pool, job, last);
    }
    pmap__pool_leave(pool);
    return rc;
}

/* When a wait of timeout seconds ends; -1 (no end) if timeout < 0. */
static int64_t deadline_of(double timeout)
{
    if (timeout < 0)
        return -1;
    return pmap__now_ns() + (timeout < 1e9 ? (int64_t)(timeout * 1e9)
                                           : INT64_MAX / 4);
}

int pmap_job_wait(pmap_job_t *job, double timeout)
{
    if (job == NULL || timeout != timeout)
        return PMAP_EINVAL;
    pool_t *pool = job->pool;
    int rc = pmap__pool_enter(pool);
    if (rc < 0)     /* PMAP_EBUSY: in a callback, which holds the lock */
        return job->finished ? job->rc : rc;
    job->waited = true;     /* a callback may release it meanwhile */
    rc = pmap__loop_run(pool, job, deadline_of(timeout));
    job->waited = false;
    rc = job->finished ? job->rc : rc < 0 ? rc : PMAP_ETIMEDOUT;
    if (job->released && job->finished) {
        unlink_job(pool, job);
        pmap__job_free(job);
    }
    pmap__pool_leave(pool);
    return rc;
}

void pmap_job_cancel(pmap_job_t *job)
{
    if (job != NULL) {
        job->cancel = 1;
        pmap__pool_wake(job->pool);
    }
}

void pool_cancel(pool_t *pool)
{
    if (pool != NULL) {
        /* Lock-free, so signal-safe: the maps started before this call
         * see a count other than theirs (loop.c, cancel). */
        atomic_fetch_add(&pool->cancels, 1);
        pmap__pool_wake(pool);
    }
}

size_t pmap_job_failures(const pmap_job_t *job,
                         const pmap_failure_t **failures)
{
    if (job == NULL) {
        if (failures != NULL)
            *failures = NULL;
        return 0;
    }
    bool locked = pmap__pool_lock(job->pool);
    if (failures != NULL)
        *failures = job->failures;
    size_t n = job->nfailures;
    pmap__pool_unlock(job->pool, locked);
    return n;
}

int pmap_job_stats(const pmap_job_t *job, pmap_stats_t *stats)
{
    if (job == NULL || stats == NULL)
        return PMAP_EINVAL;
    bool locked = pmap__pool_lock(job->pool);
    *stats = job->stats;
    stats->items = job->done;
    stats->failed = job->failed;
    if (!job->finished)
        stats->wall_ns = (uint64_t)(pmap__now_ns() - job->start_ns);
    pmap__pool_unlock(job->pool, locked);
    return 0;
}

void pmap_job_free(pmap_job_t *job)
{
    if (job == NULL)
        return;
    pool_t *pool = job->pool;
    int rc = pmap__pool_enter(pool);
    if (rc == PMAP_EBUSY && !job->finished) {
        /* Inside a callback of this pool: the loop frees the map when it
         * has finished. */
        job->opts.kill_on_cancel = 1;
        job->released = true;
        pmap_job_cancel(job);
        return;
    }
    if (rc == 0 && !job->finished) {
        job->opts.kill_on_cancel = 1;
        job->cancel = 1;
        pmap__loop_run(pool, job, -1);  /* wakes another thread driving */
    }
    unlink_job(pool, job);
    pmap__job_free(job);
    if (rc == 0)
        pmap__pool_leave(pool);
}

/*
 * Makes, before the pool's workers are forked, what its first map from
 * this thread would allocate: its memory (the spare) with room in its
 * buffers, at `room` if not NULL (PMAP__OUTQ_ROOM + PMAP__FIRST_FRAMES
 * bytes that no child shares: pool.c), and the thread's last-map entry.  Once children
 * share the caller's heap, an allocation writes pages of it and of libc's
 * state, a copy-on-write fault each (some 20 us on a paravirtualized
 * machine).  Without memory, they are made when needed.
 */
void pmap__jobs_prepare(pool_t *pool, unsigned char *room)
{
    my_last_made(pool);
    pmap_job_t *job = calloc(1, sizeof *job);
    if (job != NULL && room != NULL) {
        pmap__outq_lend(&job->setup, room);
        pmap__buf_lend(&job->scratch, room + PMAP__OUTQ_ROOM,
                       PMAP__FIRST_FRAMES);
    }
    if (job != NULL &&
        (pmap__outq_reserve(&job->setup, PMAP__FIRST_FRAMES) < 0 ||
         pmap__buf_reserve(&job->scratch, PMAP__FIRST_FRAMES) < 0)) {
        pmap__job_free(job);
        job = NULL;
    }
    pool->spare = job;
}

/* Frees every map of a pool being destroyed. */
void pmap__jobs_free(pool_t *pool)
{
    pmap__job_free(pool->spare);
    pool->spare = NULL;
    while (pool->jobs != NULL) {
        pmap_job_t *job = pool->jobs;
        pool->jobs = job->later;
        pmap__job_free(job);
    }
    while (pool->lasts != NULL) {
        pmap__last_t *l = pool->lasts;
        pool->lasts = l->next;
        pmap__failures_free(l->failures, l->nfailures);
        free(l);
    }
}

/* The calling thread's last map: its entry is written by this thread
 * alone, but the list may grow meanwhile. */
size_t pool_failures(const pool_t *pool, const pmap_failure_t **failures)
{
    const pmap__last_t *l = NULL;
    if (pool != NULL) {
        bool locked = pmap__pool_lock(pool);
        l = my_last(pool);
        pmap__pool_unlock(pool, locked);
    }
    if (failures != NULL)
        *failures = l ? l->failures : NULL;
    return l ? l->nfailures : 0;
}

int pool_stats(const pool_t *pool, pmap_stats_t *last, pmap_stats_t *total)
{
    if (pool == NULL)
        return PMAP_EINVAL;
    bool locked = pmap__pool_lock(pool);
    const pmap__last_t *l = my_last(pool);
    if (last != NULL)
        *last = l ? l->stats : (pmap_stats_t){0};
    if (total != NULL)
        *total = pool->total;
    pmap__pool_unlock(pool, locked);
    return 0;
}

/* ---- pmap_job_next: a background map's results one at a time ---------- */

static int64_t earliest(int64_t a, int64_t b)
{
    return a < 0 ? b : b < 0 ? a : a < b ? a : b;
}

/* Blocks until the pool has something to do, or until `until` (-1: no
 * limit): on pool_fd's epoll set, or, without one, for at most 1 ms. */
static void rest(pool_t *pool, int64_t until)
{
    if (pool->epfd >= 0) {
        struct pollfd p = {pool->epfd, POLLIN, 0};
        pmap__poll(&p, 1, until);
        return;
    }
    int64_t soon = pmap__now_ns() + 1000000;
    pmap__poll(NULL, 0, earliest(until, soon));
}

/*
 * Runs the pool until job has an item to hand out, has finished, or has
 * been released (pmap_job_free from a callback: PMAP_ECANCELED, and job
 * is not ours to look at any more), or until deadline (-1: no limit).
 * Returns 0, PMAP_ETIMEDOUT, or a code of the pool's.
 */
static int wait_for_item(pmap_job_t *job, int64_t deadline)
{
    pool_t *pool = job->pool;
    int rc = pmap__pool_enter(pool);
    if (rc < 0)
        return rc;
    job->waited = true;     /* a callback may release it meanwhile */
    for (;;) {
        int64_t wake = pmap__loop_once(pool);
        if (job->released) {
            rc = PMAP_ECANCELED;
            break;
        }
        if (pmap__iter_next(job) != SIZE_MAX || job->finished)
            break;
        if (deadline >= 0 && pmap__now_ns() >= deadline) {
            rc = PMAP_ETIMEDOUT;
            break;
        }
        rest(pool, earliest(wake, deadline));
    }
    job->waited = false;    /* the loop frees it if it was released */
    pmap__pool_leave(pool);
    return rc;
}

int pmap_job_next(pmap_job_t *job, size_t *index,
                  const pmap_failure_t **failure, double timeout)
{
    if (job == NULL || index == NULL || timeout != timeout || !job->iter.on)
        return PMAP_EINVAL;     /* results go to on_result, or a producer */
    if (failure != NULL)
        *failure = NULL;
    size_t next = pmap__iter_next(job);
    if (next == SIZE_MAX && !job->finished) {
        int rc = wait_for_item(job, deadline_of(timeout));
        if (rc < 0)
            return rc;
        next = pmap__iter_next(job);
    }
    if (next != SIZE_MAX) {
        pmap__iter_take(job, next, index, failure);
        return 1;
    }
    /* Finished, and everything that finished was handed out: the end,
     * unless the map stopped before some of its items could finish. */
    return job->iter.handed == job->n || job->rc >= 0 ? 0 : job->rc;
}
