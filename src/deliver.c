/* SPDX-License-Identifier: MIT */
/*
 * deliver.c - where a map's items come from and where its results go.
 *
 * Items come from the caller's arrays, or from a producer called on demand;
 * results go to the caller's output array, or to a callback, in input order
 * or as they arrive.  The streaming cases share one bounded window: a ring
 * of `size` places where item i lives at i % size, from its making (or its
 * sending) to its handing over.  An item is made or sent only when its
 * place is free, so memory stays bounded by the window whatever the number
 * of items; in order, a result that arrives early waits in its place until
 * every earlier one has been handed over.
 *
 * This file also keeps a map's failure records (with the failed runs of
 * items being retried), writes its job log and calls its progress
 * callback: everything the caller sees of a map while it runs.
 */
#include "pmap_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_WINDOW 65536            /* items */
#define DEFAULT_PROGRESS_NS 100000000   /* 0.1 s */

/* The state of a window place. */
enum { EMPTY, STORED, FAILED, HANDED };

static const char no_message[] = "";

/* ---- failure records --------------------------------------------------- */

void pmap__failures_free(pmap_failure_t *f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (f[i].message != no_message)
            free((char *)f[i].message);
        free((char *)f[i].captured_stdout);
        free((char *)f[i].captured_stderr);
    }
    free(f);
}

/* Appends a failure record; returns its index, or SIZE_MAX without memory
 * (the failure still counts in job->failed). */
static size_t record(pmap_job_t *job, const pmap_failure_t *f,
                     const char *msg, size_t msglen)
{
    if (job->nfailures == job->failures_cap) {
        pmap_failure_t *p =
            pmap__grow(job->failures, &job->failures_cap, sizeof *p);
        if (p == NULL) {
            free((char *)f->captured_stdout);
            free((char *)f->captured_stderr);
            return SIZE_MAX;
        }
        job->failures = p;
    }
    char *text = msglen > 0 ? malloc(msglen + 1) : NULL;
    if (text != NULL) {
        memcpy(text, msg, msglen);
        text[msglen] = '\0';
    }
    job->failures[job->nfailures] = *f;
    job->failures[job->nfailures].message = text ? text : no_message;
    return job->nfailures++;
}

/* ---- failed runs of items retried (batch.c decides the retries) -------- */

static pmap__tries_t *find_tries(const pmap_job_t *job, size_t index)
{
    for (size_t i = 0; i < job->ntries; i++) {
        if (job->tries[i].index == index)
            return &job->tries[i];
    }
    return NULL;
}

/*
 * Item index's run ended with error and code: if it has had fewer than
 * `most` failed runs before, notes this one (it runs again) and returns
 * the failed runs it has had; else returns 0 (it fails for good), or
 * PMAP_ENOMEM (then too).
 */
int pmap__tried(pmap_job_t *job, size_t index, int error, int code, int most)
{
    pmap__tries_t *t = find_tries(job, index);
    if (t != NULL && t->attempts >= most)
        return 0;
    if (t == NULL) {
        if (job->ntries == job->tries_cap) {
            pmap__tries_t *p =
                pmap__grow(job->tries, &job->tries_cap, sizeof *p);
            if (p == NULL)
                return PMAP_ENOMEM;
            job->tries = p;
        }
        t = &job->tries[job->ntries++];
        memset(t, 0, sizeof *t);
        t->index = index;
    }
    if (t->attempts < PMAP_CAUSES_MAX)
        t->causes[t->attempts] = (pmap_cause_t){error, code};
    return ++t->attempts;
}

/* Takes item index's failed runs out of the table (none: zeroes). */
static void take_tries(pmap_job_t *job, size_t index, pmap__tries_t *out)
{
    memset(out, 0, sizeof *out);
    pmap__tries_t *t = job->ntries > 0 ? find_tries(job, index) : NULL;
    if (t == NULL)
        return;
    *out = *t;
    *t = job->tries[--job->ntries];
}

void pmap__tries_free(pmap_job_t *job)
{
    free(job->tries);
    job->tries = NULL;
    job->ntries = job->tries_cap = 0;
}

/* ---- the job log -------------------------------------------------------- */

/* The header line of a job log written to joblog_fd.  Write errors (a
 * closed pipe...) are the caller's to see there: the map goes on. */
void pmap__log_header(pmap_job_t *job)
{
    static const char header[] =
        "index\tworker\tpid\tattempts\tstart\tduration\tstatus\tcode\n";
    if (job->opts.joblog_fd > 0)
        (void)pmap__write_all(job->opts.joblog_fd - 1, header,
                              sizeof header - 1);
}

/* Seconds from the map's start to t (0 if t is unknown). */
static double since_start(const pmap_job_t *job, int64_t t)
{
    return t > job->start_ns ? (double)(t - job->start_ns) / 1e9 : 0.0;
}

/* Item index's log row: to on_log, and to joblog_fd. */
static void log_item(pmap_job_t *job, size_t index, int attempts,
                     const pmap__ran_t *ran, int error, int code)
{
    pmap_log_t row = {index, -1, 0, attempts, 0.0, 0.0, error, code};
    if (ran != NULL) {
        int64_t start = ran->start_ns, end = ran->end_ns;
        if (ran->timing != NULL) {
            const unsigned char *t = ran->timing + 16 * (index - ran->first);
            start = (int64_t)pmap__get_u64(t);
            end = (int64_t)pmap__get_u64(t + 8);
        }
        row.worker = ran->worker;
        row.pid = ran->pid;
        if (start > 0) {
            row.start = since_start(job, start);
            row.duration = end > start ? (double)(end - start) / 1e9 : 0.0;
        }
    }
    if (job->window.log != NULL)    /* for its on_result: pmap_item_log */
        job->window.log[index % job->window.size] = row;
    if (job->opts.on_log != NULL && !job->released &&
        job->opts.on_log(job->opts.ctx, &row) != 0)
        job->cancel = 1;
    if (job->opts.joblog_fd > 0) {
        char line[256];
        int n = snprintf(line, sizeof line,
                         "%zu\t%d\t%ld\t%d\t%.6f\t%.6f\t%s\t%d\n", row.index,
                         row.worker, row.pid, row.attempts, row.start,
                         row.duration, error ? pmap_err_name(error) : "ok",
                         row.code);
        if (n > 0 && (size_t)n < sizeof line)
            (void)pmap__write_all(job->opts.joblog_fd - 1, line, (size_t)n);
    }
}

/* ---- the window -------------------------------------------------------- */

/* Sets up the window of a map that needs one.  Returns 0 or PMAP_ENOMEM. */
int pmap__window_init(pool_t *pool, pmap_job_t *job)
{
    pmap__window_t *w = &job->window;
    if ((job->producer == NULL && job->out != NULL) || job->n == 0)
        return 0;   /* arrays in and out, or an empty map: nothing held */
    size_t size = job->opts.window ? job->opts.window : DEFAULT_WINDOW;
    size_t least = 2 * PMAP__DEPTH * (size_t)pool->nworkers;
    if (size < least)
        size = least;   /* room for a batch per worker */
    if (job->n != SIZE_MAX && job->n < size)
        size = job->n;
    const pmap__fn_t *fn = job->fn;
    w->size = size;
    for (int k = 0; k < fn->nparams && job->producer != NULL; k++) {
        w->inputs[k] = calloc(size, fn->params[k].size);
        if (w->inputs[k] == NULL)
            return PMAP_ENOMEM;
    }
    w->tail = SIZE_MAX;
    w->results = calloc(size, fn->result.size);
    w->state = calloc(size, 1);
    w->failure = calloc(size, sizeof *w->failure);
    if (job->logged && (w->log = calloc(size, sizeof *w->log)) == NULL)
        return PMAP_ENOMEM;
    return w->results && w->state && w->failure ? 0 : PMAP_ENOMEM;
}

/* Frees what a variable value owns (a produced input, or a result never
 * handed over), in place. */
static void free_value(pmap__type_t type, unsigned char *value)
{
    void *p;
    memcpy(&p, value, sizeof p);    /* both kinds begin with the pointer */
    if (type.kind == PMAP__CODEC)
        type.codec->release(value);
    else if (type.kind != PMAP__VALUE)
        free(p);
    memset(value, 0, type.size);
}

static void free_inputs(pmap_job_t *job, size_t place)
{
    const pmap__fn_t *fn = job->fn;
    for (int k = 0; k < fn->nparams && job->producer != NULL; k++)
        free_value(fn->params[k],
                   job->window.inputs[k] + place * fn->params[k].size);
}

void pmap__window_free(pmap_job_t *job)
{
    pmap__window_t *w = &job->window;
    if (w->size == 0)
        return;
    size_t end = job->producer ? job->produced : job->next;
    if (end > w->tail)
        end = w->tail;
    for (size_t i = w->low; i < end; i++) {
        size_t place = i % w->size;
        free_inputs(job, place);
        if (w->state[place] == STORED)
            free_value(job->fn->result,
                       w->results + place * job->fn->result.size);
    }
    for (int k = 0; k < PMAP_MAX_ARGS; k++)
        free(w->inputs[k]);
    free(w->results);
    free(w->state);
    free(w->failure);
    free(w->log);
    memset(w, 0, sizeof *w);
}

/*
 * How many items from `first` on may be sent now: the free places of the
 * window, up to its wrap (a batch never wraps).  Unlimited without one.
 */
size_t pmap__window_room(const pmap_job_t *job, size_t first)
{
    const pmap__window_t *w = &job->window;
    if (w->size == 0)
        return SIZE_MAX;
    size_t used = first - w->low;
    if (used >= w->size)
        return 0;
    size_t room = w->size - used, wrap = w->size - first % w->size;
    return room < wrap ? room : wrap;
}

/* Replaces a produced value of a codec by a deep copy of it (encoded,
 * then decoded in its place): 0, PMAP_ENOMEM or PMAP_ECODEC. */
static int own_encoded(pmap__type_t type, unsigned char *value)
{
    const pmap__codec_t *c = type.codec;
    size_t n = c->encode(value, NULL, 0);
    if (n == PMAP_ENCODE_ERROR)
        return PMAP_ECODEC;
    unsigned char *data = malloc(n ? n : 1);
    if (data == NULL)
        return PMAP_ENOMEM;
    int rc = c->encode(value, data, n) == n ? 0 : PMAP_ECODEC;
    if (rc == 0) {
        memset(value, 0, type.size);
        rc = c->decode(value, data, n) == 0 ? 0 : PMAP_ECODEC;
    }
    free(data);
    return rc;
}

/* Copies a produced string, buffer or encoded value, which the producer
 * may reuse. */
static int own_value(pmap__type_t type, unsigned char *value)
{
    if (type.kind == PMAP__CODEC)
        return own_encoded(type, value);
    if (type.kind == PMAP__BYTES) {
        pmap_bytes_t b;
        memcpy(&b, value, sizeof b);
        if (b.data == NULL)
            return 0;
        void *copy = malloc(b.size ? b.size : 1);
        if (copy == NULL)
            return PMAP_ENOMEM;
        memcpy(copy, b.data, b.size);
        b.data = copy;
        memcpy(value, &b, sizeof b);
    } else if (type.kind != PMAP__VALUE) {
        const char *s;
        memcpy(&s, value, sizeof s);
        if (s == NULL)
            return 0;
        size_t n = strlen(s) + 1;
        char *copy = malloc(n);
        if (copy == NULL)
            return PMAP_ENOMEM;
        memcpy(copy, s, n);
        memcpy(value, &copy, sizeof copy);
    }
    return 0;
}

/*
 * Calls the producer until `upto` items exist, it has no more, or it
 * fails (the map then fails with its code).  Returns the items made.
 */
size_t pmap__produce(pool_t *pool, pmap_job_t *job, size_t upto)
{
    (void)pool;
    const pmap__fn_t *fn = job->fn;
    while (job->produced < upto && job->n == SIZE_MAX) {
        size_t place = job->produced % job->window.size;
        void *slot[PMAP_MAX_ARGS];
        for (int k = 0; k < fn->nparams; k++) {
            slot[k] = job->window.inputs[k] + place * fn->params[k].size;
            memset(slot[k], 0, fn->params[k].size);
        }
        int rc = fn->pull(job->producer, job->producer_ctx, slot);
        int owned = 0;  /* values copied: the others are the producer's */
        for (; owned < fn->nparams && rc > 0; owned++) {
            int copied = own_value(fn->params[owned], slot[owned]);
            if (copied < 0)
                rc = copied;
        }
        if (rc <= 0) {
            for (int k = 0; k < fn->nparams; k++) {
                if (rc < 0 && k < owned - 1)
                    free_value(fn->params[k], slot[k]);
                memset(slot[k], 0, fn->params[k].size);
            }
            if (rc < 0 && job->error == 0)
                job->error = rc;
            job->n = job->produced;     /* no more items */
            break;
        }
        job->window.state[place] = EMPTY;
        job->produced++;
    }
    return job->produced;
}

/* Where argument k of item index is. */
const unsigned char *pmap__input(const pmap_job_t *job, int k, size_t index)
{
    size_t size = job->fn->params[k].size;
    if (job->producer != NULL)
        return job->window.inputs[k] + index % job->window.size * size;
    return (const unsigned char *)job->args[k].array + index * size;
}

/* Where the result of item index goes. */
unsigned char *pmap__output(const pmap_job_t *job, size_t index)
{
    size_t size = job->fn->result.size;
    if (job->out != NULL)
        return job->out + index * size;
    return job->window.results + index % job->window.size * size;
}

/* ---- handing results over ---------------------------------------------- */

/* The job log row of the item on_result is being given (pmap_item_log). */
static _Thread_local const pmap_log_t *handing_log;

static void hand_over(pmap_job_t *job, size_t index)
{
    pmap__window_t *w = &job->window;
    size_t place = index % w->size;
    static const pmap_failure_t unrecorded = {.error = PMAP_ENOMEM,
                                              .message = no_message};
    const pmap_failure_t *f = NULL;
    if (w->state[place] == FAILED)
        f = w->failure[place] < job->nfailures ? &job->failures[w->failure[place]]
                                               : &unrecorded;
    void *result = f ? NULL : pmap__output(job, index);
    if (job->released) {
        /* pmap_job_free has returned: no callback of the map runs again,
         * and what the result owns is nobody else's to free. */
        if (result != NULL)
            free_value(job->fn->result, result);
    } else {
        pmap__output_handing(job, index, f);
        handing_log = w->log != NULL ? &w->log[place] : NULL;
        if (job->opts.on_result(job->opts.ctx, index, result, f) != 0)
            job->cancel = 1;
        handing_log = NULL;
    }
    pmap__output_handed(job, index);
    free_inputs(job, place);
    w->state[place] = HANDED;
}

const pmap_log_t *pmap_item_log(void)
{
    return handing_log;
}

/* Hands over the cancelled items that were never sent, once every item
 * before them has been. */
static void hand_over_tail(pmap_job_t *job)
{
    pmap__window_t *w = &job->window;
    int error = job->error ? job->error : PMAP_ECANCELED;
    for (size_t i = w->tail; i < job->n; i++) {
        pmap_failure_t f = {.index = i, .error = error,
                            .message = no_message};
        job->failed++;
        job->done++;
        if (job->logged)
            log_item(job, i, 0, NULL, error, 0);
        if (!job->released)
            job->opts.on_result(job->opts.ctx, i, NULL, &f);
    }
    w->low = job->n;
    w->tail = SIZE_MAX;
}

/* Hands over what may be, and frees the places of the window behind. */
void pmap__deliver(pmap_job_t *job)
{
    if (job->window.size == 0)
        return;
    pmap__window_t *w = &job->window;
    size_t end = job->producer ? job->produced : job->next;
    if (end > w->tail)
        end = w->tail;
    while (w->low < end) {
        size_t place = w->low % w->size;
        if (!job->opts.unordered &&
            (w->state[place] == STORED || w->state[place] == FAILED))
            hand_over(job, w->low);
        if (w->state[place] != HANDED)
            break;
        w->state[place] = EMPTY;
        w->low++;
    }
    if (w->low == w->tail)
        hand_over_tail(job);
}

/* Items [first, first + count) have their results stored; ran says who
 * ran them (for the job log). */
void pmap__stored(pool_t *pool, pmap_job_t *job, size_t first, size_t count,
                  const pmap__ran_t *ran)
{
    (void)pool;
    for (size_t i = first; (job->ntries > 0 || job->logged) &&
                           i < first + count; i++) {
        pmap__tries_t t;
        take_tries(job, i, &t);
        if (job->logged)
            log_item(job, i, t.attempts + 1, ran, 0, 0);
    }
    job->done += count;
    pmap__output_stored(job, first, count);
    pmap__iter_mark(job, first, count, false);
    if (job->window.size == 0)
        return;
    for (size_t i = first; i < first + count; i++) {
        job->window.state[i % job->window.size] = STORED;
        if (job->opts.unordered)
            hand_over(job, i);
    }
    pmap__deliver(job);
}

/* Item index failed for good: records why (with its earlier runs, if it
 * was retried; ran is NULL if it did not run this time), zeroes its
 * output, hands it over. */
void pmap__fail_item(pool_t *pool, pmap_job_t *job, size_t index, int error,
                     int code, const pmap__ran_t *ran, const char *msg,
                     size_t msglen)
{
    (void)pool;
    job->failed++;
    job->done++;
    if (error != PMAP_ECANCELED && error != PMAP_EHALTED)
        job->halt_failed++;
    pmap__tries_t t;
    take_tries(job, index, &t);
    if (ran != NULL) {
        if (t.attempts < PMAP_CAUSES_MAX)
            t.causes[t.attempts] = (pmap_cause_t){error, code};
        t.attempts++;
    }
    pmap_failure_t f = {.index = index, .error = error, .code = code,
                        .pid = ran ? ran->pid : 0, .attempts = t.attempts};
    memcpy(f.causes, t.causes, sizeof f.causes);
    pmap__output_failed(job, &f);
    if (job->logged)
        log_item(job, index, t.attempts, ran, error, code);
    size_t at = record(job, &f, msg, msglen);
    unsigned char *out = pmap__output(job, index);
    memset(out, 0, job->fn->result.size);
    pmap__iter_mark(job, index, 1, true);
    if (job->window.size == 0)
        return;
    size_t place = index % job->window.size;
    job->window.state[place] = FAILED;
    job->window.failure[place] = at;
    if (job->opts.unordered)
        hand_over(job, index);
    pmap__deliver(job);
}

/* ---- progress ---------------------------------------------------------- */

static int64_t progress_period(const pmap_job_t *job)
{
    double s = job->opts.progress_interval;
    return s > 0 && s < 1e6 ? (int64_t)(s * 1e9) : DEFAULT_PROGRESS_NS;
}

/* When the progress callback is next due, or -1 if it never is. */
int64_t pmap__progress_due(const pmap_job_t *job)
{
    if (job->opts.on_progress == NULL || job->finished)
        return -1;
    return job->progress_ns + progress_period(job);
}

/* Calls the progress callback if due (or, final, once at the end). */
void pmap__progress(pool_t *pool, pmap_job_t *job, bool final)
{
    (void)pool;
    if (job->opts.on_progress == NULL || job->released)
        return;
    int64_t now = pmap__now_ns();
    if (!final && now < job->progress_ns + progress_period(job))
        return;
    job->progress_ns = now;
    pmap_progress_t p = {job->done, job->failed,
                         job->n == SIZE_MAX ? 0 : job->n,
                         (double)(now - job->start_ns) / 1e9};
    if (job->opts.on_progress(job->opts.ctx, &p) != 0)
        job->cancel = 1;
}
