/* SPDX-License-Identifier: MIT */
/*
 * map.c - one map, seen from the caller: checking the call, cutting the
 * items into batches, storing each batch's results at their input indices,
 * and accounting for the items of a worker that died.
 *
 * Every item is, at any time, in exactly one of these states, and the map
 * ends when none is left in the first three:
 *   not yet sent   [job->next, n)
 *   to send again  job->retry (ranges whose worker died)
 *   in flight      a batch of some worker (job->inflight counts batches)
 *   done           its result stored, or its failure recorded
 * Results go straight to out + index * size, so they are in input order
 * whatever order batches finish in, with no reordering buffer.
 */
#include "pmap_internal.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Batch sizing, when the caller does not fix it (see chunk_size). */
#define TARGET_BATCH_NS 2000000         /* 2 ms of work a batch */
#define TARGET_BATCH_BYTES (1u << 20)   /* 1 MiB of fixed-size data */
#define FIRST_BATCH 16                  /* items, before any is measured */

/* Times a range is sent again after its worker died outside any item. */
#define MAX_ATTEMPTS 3

/* ---- failures ---------------------------------------------------------- */

static const char no_message[] = "";

void pmap__failures_clear(pool_t *pool)
{
    for (size_t i = 0; i < pool->nfailures; i++) {
        if (pool->failures[i].message != no_message)
            free((char *)pool->failures[i].message);
    }
    pool->nfailures = 0;
}

/* Records that item index failed.  A failure that cannot be recorded for
 * lack of memory is still counted in job->failed. */
static void fail_item(pool_t *pool, pmap__job_t *job, size_t index,
                      int error, int code, long pid, const char *msg,
                      size_t msglen)
{
    job->failed++;
    job->done++;
    memset(job->out + index * job->fn->result.size, 0, job->fn->result.size);
    if (pool->nfailures == pool->failures_cap) {
        size_t cap = pool->failures_cap ? pool->failures_cap * 2 : 16;
        pmap_failure_t *f = realloc(pool->failures, cap * sizeof *f);
        if (f == NULL)
            return;
        pool->failures = f;
        pool->failures_cap = cap;
    }
    char *text = msglen > 0 ? malloc(msglen + 1) : NULL;
    if (text != NULL) {
        memcpy(text, msg, msglen);
        text[msglen] = '\0';
    }
    pool->failures[pool->nfailures++] = (pmap_failure_t){
        index, error, code, pid, text ? text : no_message};
}

static int by_index(const void *a, const void *b)
{
    size_t x = ((const pmap_failure_t *)a)->index;
    size_t y = ((const pmap_failure_t *)b)->index;
    return (x > y) - (x < y);
}

size_t pool_failures(const pool_t *pool, const pmap_failure_t **failures)
{
    if (failures != NULL)
        *failures = pool ? pool->failures : NULL;
    return pool ? pool->nfailures : 0;
}

/* ---- the state of a map ------------------------------------------------ */

bool pmap__job_has_work(const pmap__job_t *job)
{
    return job->error == 0 && (job->nretry > 0 || job->next < job->n);
}

bool pmap__job_finished(const pmap__job_t *job)
{
    return job->inflight == 0 && (job->error != 0 || job->done == job->n);
}

static void retry_push(pool_t *pool, pmap__job_t *job, pmap__range_t r,
                       const pmap__death_t *death)
{
    if (r.count == 0)
        return;
    if (r.attempts > MAX_ATTEMPTS || job->error != 0) {
        for (size_t i = 0; i < r.count; i++)
            fail_item(pool, job, r.first + i, death->error, death->code,
                      death->pid, NULL, 0);
        return;
    }
    if (job->nretry == job->retry_cap) {
        size_t cap = job->retry_cap ? job->retry_cap * 2 : 8;
        pmap__range_t *p = realloc(job->retry, cap * sizeof *p);
        if (p == NULL) {
            job->error = PMAP_ENOMEM;
            job->done += r.count;
            return;
        }
        job->retry = p;
        job->retry_cap = cap;
    }
    job->retry[job->nretry++] = r;
}

/*
 * The items of a worker that died.  The item it was running (from its
 * slot) failed with the death's cause; the others of its batches did
 * nothing wrong and are sent again.  A batch that died with no item running
 * is sent again at most MAX_ATTEMPTS times.
 */
void pmap__job_lost(pool_t *pool, pmap__job_t *job, pmap__worker_t *w,
                    const pmap__death_t *death)
{
    for (int i = 0; i < w->nbatch; i++) {
        pmap__range_t r = w->batch[i].items;
        if (w->batch[i].job != job)
            continue;
        job->inflight--;
        size_t culprit = (size_t)death->item - 1;
        if (death->item == 0 || death->map != job->id ||
            culprit < r.first || culprit - r.first >= r.count) {
            r.attempts++;
            retry_push(pool, job, r, death);
            continue;
        }
        fail_item(pool, job, culprit, death->error, death->code, death->pid,
                  NULL, 0);
        retry_push(pool, job,
                   (pmap__range_t){r.first, culprit - r.first, r.attempts},
                   death);
        retry_push(pool, job,
                   (pmap__range_t){culprit + 1, r.first + r.count - culprit - 1,
                                   r.attempts},
                   death);
    }
    w->nbatch = 0;
}

/* ---- batches ----------------------------------------------------------- */

/*
 * Bytes one item moves, both ways: measured from the frames so far, or,
 * before any, its fixed-size arguments and result plus the variable
 * arguments of the next item.
 */
static double item_bytes(const pmap__job_t *job)
{
    const pmap__fn_t *fn = job->fn;
    if (job->sent_items > 0) {
        double b = (double)job->sent_bytes / (double)job->sent_items;
        if (job->busy_items > 0)
            b += (double)job->received_bytes / (double)job->busy_items;
        return b > 1 ? b : 1;
    }
    size_t bytes = fn->result.size, i = job->next < job->n ? job->next : 0;
    for (int k = 0; k < fn->nparams; k++) {
        if (job->constants >> k & 1)
            continue;
        const unsigned char *item = (const unsigned char *)job->args[k].array +
                                    i * fn->params[k].size;
        bytes += fn->params[k].size;
        if (fn->params[k].kind == PMAP__BYTES) {
            pmap_bytes_t b;
            memcpy(&b, item, sizeof b);
            bytes += b.size;
        } else if (fn->params[k].kind != PMAP__VALUE) {
            const char *str;
            memcpy(&str, item, sizeof str);
            bytes += str ? strlen(str) : 0;
        }
    }
    return (double)bytes;
}

/*
 * Items in the next batch, of left still to send.  Guided scheduling: never
 * more than a share of what is left (so the end of the map is cut fine and
 * no worker idles while another has a long batch), and sized so that a
 * batch takes about TARGET_BATCH_NS by the workers' own measure: long
 * enough that the cost of a round trip vanishes, short enough for progress
 * and balance.  Capped in bytes (about 1 MiB a batch, or one item if
 * larger) so that pipelined batches and the workers' buffers stay small.
 */
static size_t chunk_size(const pool_t *pool, const pmap__job_t *job,
                         size_t left)
{
    if (job->chunk != 0)
        return job->chunk < left ? job->chunk : left;
    size_t c = left / (2 * (size_t)pool->nworkers);
    if (job->busy_items == 0) {
        if (c > FIRST_BATCH)
            c = FIRST_BATCH;
    } else if (job->busy_ns > 0) {
        double per_item = (double)job->busy_ns / (double)job->busy_items;
        double by_time = TARGET_BATCH_NS / per_item;
        if (by_time < (double)c)
            c = (size_t)by_time;
    }
    double by_bytes = TARGET_BATCH_BYTES / item_bytes(job);
    if (by_bytes < (double)c)
        c = (size_t)by_bytes;
    if (c < 1)
        c = 1;
    return c < left ? c : left;
}

static pmap__range_t next_range(const pool_t *pool, pmap__job_t *job)
{
    if (job->nretry > 0) {
        pmap__range_t *r = &job->retry[job->nretry - 1];
        pmap__range_t take = *r;
        take.count = chunk_size(pool, job, r->count);
        r->first += take.count;
        r->count -= take.count;
        if (r->count == 0)
            job->nretry--;
        return take;
    }
    pmap__range_t take = {job->next, chunk_size(pool, job, job->n - job->next),
                          0};
    job->next += take.count;
    return take;
}

/*
 * Queues the next batch of job for worker w (after the map's SETUP frame if
 * w has not seen it).  TASK payload: u64 function id | u64 first | u64
 * count | u64 arena slot | a column per argument that is not a constant.
 */
int pmap__job_dispatch(pool_t *pool, pmap__job_t *job, pmap__worker_t *w)
{
    pmap__outq_t *q = &w->out;
    if (w->setup_map != job->id) {
        pmap__outq_append(q, &job->setup);
        w->setup_map = job->id;
    }
    pmap__range_t r = next_range(pool, job);
    uint64_t queued = q->total;
    size_t frame = pmap__outq_begin(q, PMAP__TASK, job->id);
    pmap__outq_u64(q, job->fn->id);
    pmap__outq_u64(q, r.first);
    pmap__outq_u64(q, r.count);
    unsigned slot = w->next_slot++ % 2;
    pmap__outq_u64(q, slot);
    pmap__region_t shared = pmap__arena_slot(w->arena, slot, false);
    for (int k = 0; k < job->fn->nparams; k++) {
        if (job->constants >> k & 1)
            continue;
        size_t size = job->fn->params[k].size;
        const unsigned char *array = job->args[k].array;
        pmap__column_encode(q, job->fn->params[k], array + r.first * size,
                            size, r.count, &shared);
    }
    pmap__outq_end(q, frame);
    job->sent_bytes += q->total - queued;
    job->sent_items += r.count;
    w->batch[w->nbatch++] = (pmap__batch_t){job, r, slot};
    job->inflight++;
    pool->last.batches++;
    return q->error;
}

/* ---- results ----------------------------------------------------------- */

/* Copies variable result j (a string or buffer in the frame or in shared
 * memory) into memory the caller will own; false without memory.  Lengths
 * come from the frame: shared bytes may change under us, not the frame. */
static bool store_variable(const pmap__fn_t *fn, const pmap__column_t *col,
                           size_t j, unsigned char *dst)
{
    const unsigned char *v = col->base + j * col->stride;
    const void *data;
    memcpy(&data, v, sizeof data);  /* both kinds begin with the pointer */
    if (data == NULL) {
        memset(dst, 0, fn->result.size);
        return true;
    }
    size_t len = pmap__column_length(col, j);
    bool bytes = fn->result.kind == PMAP__BYTES;
    unsigned char *copy = malloc(len + 1);
    if (copy == NULL)
        return false;
    memcpy(copy, data, len);
    copy[len] = '\0';
    if (bytes)
        memcpy(dst, &(pmap_bytes_t){copy, len}, sizeof(pmap_bytes_t));
    else
        memcpy(dst, &copy, sizeof copy);
    return true;
}

/*
 * A RESULT from worker w answers its oldest batch.  The frame is checked
 * whole before anything is stored; PMAP_EPROTO means the worker is broken.
 */
int pmap__job_result(pool_t *pool, pmap__job_t *job, pmap__worker_t *w,
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
    pmap__region_t shared = pmap__arena_slot(w->arena, w->batch[0].slot, true);
    int rc = pmap__result_decode(p, len, fn->result, r.first, r.count,
                                 scratch, &res, &shared);
    if (rc < 0)
        return rc;

    unsigned char *out = job->out + r.first * fn->result.size;
    size_t unstored = 0;
    if (fn->result.kind == PMAP__VALUE) {
        memcpy(out, res.column.base, r.count * fn->result.size);
    } else {
        for (size_t j = 0; j < r.count; j++) {
            if (!store_variable(fn, &res.column, j,
                                out + j * fn->result.size)) {
                fail_item(pool, job, r.first + j, PMAP_ENOMEM, 0, w->pid,
                          NULL, 0);
                unstored++;
            }
        }
    }
    const unsigned char *record = res.failures;
    for (uint64_t i = 0; i < res.nfailed; i++) {
        pmap__failure_record_t f;
        record = pmap__failure_next(record, &f);
        fail_item(pool, job, (size_t)f.index, PMAP_EFAIL, f.code, w->pid,
                  f.message, f.length);
    }
    job->done += r.count - res.nfailed - unstored;
    job->busy_ns += res.busy_ns;
    pool->last.busy_ns += res.busy_ns;
    job->busy_items += r.count;
    job->received_bytes += len;
    job->inflight--;
    w->batch[0] = w->batch[1];
    w->nbatch--;
    return 0;
}

/* A MAP_ERROR: the function cannot run on w; the map fails with its code. */
int pmap__job_map_error(pmap__job_t *job, pmap__worker_t *w,
                        const unsigned char *p, size_t len)
{
    if (w->nbatch == 0 || w->batch[0].job != job || len < sizeof(uint64_t))
        return PMAP_EPROTO;
    int64_t code = (int64_t)pmap__get_u64(p);
    if (code >= 0 || code < INT_MIN)
        return PMAP_EPROTO;
    if (job->error == 0)
        job->error = (int)code;
    job->done += w->batch[0].items.count;
    job->inflight--;
    w->batch[0] = w->batch[1];
    w->nbatch--;
    return 0;
}

/* ---- pool_map ---------------------------------------------------------- */

/* Closes the counters of a map and adds them to the pool's totals. */
static void account(pool_t *pool, const pmap__job_t *job, int64_t start)
{
    pmap_stats_t *l = &pool->last, *t = &pool->total;
    l->maps = job->id != 0;
    l->items = job->done;
    l->failed = job->failed;
    l->wall_ns = (uint64_t)(pmap__now_ns() - start);
    t->maps += l->maps;
    t->items += l->items;
    t->failed += l->failed;
    t->batches += l->batches;
    t->bytes_sent += l->bytes_sent;
    t->bytes_received += l->bytes_received;
    t->busy_ns += l->busy_ns;
    t->wall_ns += l->wall_ns;
    t->restarts += l->restarts;
}

int pool_stats(const pool_t *pool, pmap_stats_t *last, pmap_stats_t *total)
{
    if (pool == NULL)
        return PMAP_EINVAL;
    if (last != NULL)
        *last = pool->last;
    if (total != NULL)
        *total = pool->total;
    return 0;
}

static int check_call(const pool_map_options_t *opts, const pmap__fn_t *fn,
                      size_t n, const void *out, int nargs,
                      const pmap__arg_t *args)
{
    if (opts != NULL && opts->timeout != opts->timeout)
        return PMAP_EINVAL;     /* NaN */
    if (fn == NULL || out == NULL || n == 0 || args == NULL ||
        nargs != fn->nparams || nargs < 1 || nargs > PMAP_MAX_ARGS ||
        n > SIZE_MAX / fn->result.size)
        return PMAP_EINVAL;
    for (int k = 0; k < nargs; k++) {
        if (args[k].is_array == args[k].is_const ||
            (args[k].is_array && args[k].array == NULL) ||
            n > SIZE_MAX / fn->params[k].size)
            return PMAP_EINVAL;
    }
    return 0;
}

/*
 * Builds the map's SETUP frame: u64 function id | u64 signature | u64
 * constants mask | u64 flags | one column of one value per constant.
 */
static void encode_setup(pmap__job_t *job)
{
    pmap__outq_t *q = &job->setup;
    const pmap__fn_t *fn = job->fn;
    size_t frame = pmap__outq_begin(q, PMAP__SETUP, job->id);
    pmap__outq_u64(q, fn->id);
    pmap__outq_u64(q, pmap__signature(fn));
    pmap__outq_u64(q, job->constants);
    pmap__outq_u64(q, job->timeout_ns > 0);     /* flags: bit 0, timed */
    for (int k = 0; k < fn->nparams; k++) {
        if (!(job->constants >> k & 1))
            continue;
        if (job->args[k].is_const) {
            /* The value lives in the caller's stack frame: copy it. */
            pmap__type_t t = fn->params[k];
            if (t.kind == PMAP__VALUE) {
                pmap__outq_copy(q, job->args[k].value, t.size);
                pmap__outq_pad(q);
            } else {
                pmap__column_encode(q, t, job->args[k].value, 0, 1, NULL);
            }
        } else {
            /* A method's object, by address: large ones are referenced. */
            pmap__column_encode(q, fn->params[k], job->args[k].array, 0, 1,
                                NULL);
        }
    }
    pmap__outq_end(q, frame);
}

static int job_init(pmap__job_t *job, pool_t *pool,
                    const pool_map_options_t *opts, const pmap__fn_t *fn,
                    size_t n, void *out, const pmap__arg_t *args)
{
    if (++pool->last_map == 0)
        pool->last_map = 1;
    job->id = pool->last_map;
    job->fn = fn;
    job->n = n;
    job->out = out;
    memcpy(job->args, args, (size_t)fn->nparams * sizeof *args);
    for (int k = 0; k < fn->nparams; k++) {
        if (args[k].is_const || (k == 0 && fn->method))
            job->constants |= (uint64_t)1 << k;
    }
    job->chunk = opts && opts->chunk ? opts->chunk : pool->opts.chunk;
    double timeout = opts && opts->timeout ? opts->timeout : pool->opts.timeout;
    if (timeout > 0)    /* at least 1 ns, at most about 290 years */
        job->timeout_ns = timeout < 9e9 ? (int64_t)(timeout * 1e9) + 1 : INT64_MAX / 2;
    encode_setup(job);
    return job->setup.error;
}

/* Tells the workers to forget the map, when they next hear from us. */
static void job_end(pool_t *pool, pmap__job_t *job)
{
    for (int i = 0; i < pool->nworkers; i++) {
        pmap__worker_t *w = &pool->workers[i];
        if (job->id != 0 && w->pid > 0 && w->setup_map == job->id) {
            size_t frame = pmap__outq_begin(&w->out, PMAP__END, job->id);
            pmap__outq_end(&w->out, frame);
            w->setup_map = 0;
        }
    }
    pmap__outq_free(&job->setup);
    pmap__buf_free(&job->scratch);
    free(job->retry);
}

int pmap__map(pool_t *pool, const pool_map_options_t *opts,
              const pmap__fn_t *fn, size_t n, void *out, int nargs,
              const pmap__arg_t *args)
{
    int rc = pmap__in_worker ? PMAP_ENESTED
                             : check_call(opts, fn, n, out, nargs, args);
    if (rc == 0)
        rc = pmap__pool_enter(pool);
    if (rc < 0)
        return rc;
    pmap__failures_clear(pool);
    pool->last = (pmap_stats_t){0};
    int64_t start = pmap__now_ns();
    pmap__job_t job = {0};
    rc = pmap__registry_check(fn);
    if (rc == 0)
        rc = job_init(&job, pool, opts, fn, n, out, args);
    if (rc == 0)
        rc = pmap__loop_run(pool, &job, -1);
    if (rc == 0)
        rc = job.error;
    if (rc == 0)
        rc = job.failed > INT_MAX ? INT_MAX : (int)job.failed;
    if (job.inflight > 0)
        pmap__loop_abandon(pool, &job);
    if (pool->nfailures > 1)
        qsort(pool->failures, pool->nfailures, sizeof *pool->failures,
              by_index);
    job_end(pool, &job);
    account(pool, &job, start);
    pmap__pool_leave(pool);
    return rc;
}
