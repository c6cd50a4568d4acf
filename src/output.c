/* SPDX-License-Identifier: MIT */
/*
 * output.c - the caller's side of per-item output (README, "Per-item
 * output"): what the items of a map that groups or captures output wrote,
 * as the workers send it in OUTPUT frames (capture.c), held until the item
 * is handed over:
 *  - PMAP_OUTPUT_GROUP: written to the caller's fds 1 and 2, item after
 *    item in input order, as soon as every earlier item has finished (a
 *    bit per item says which have);
 *  - PMAP_OUTPUT_CAPTURE: given to on_result (pmap_item_output) and moved
 *    into the failure record of a failed item; dropped otherwise.
 * An item sent again (its worker died) replaces what an earlier attempt
 * sent.
 */
#include "pmap_internal.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_CAP (1u << 20)

/* The item on_result is being given, for pmap_item_output. */
static _Thread_local const pmap__captured_t *handing;

int pmap__output_init(pool_t *pool, pmap_job_t *job)
{
    pmap__output_t *o = &job->output;
    o->mode = job->opts.output ? job->opts.output : pool->opts.output;
    if (o->mode == PMAP_OUTPUT_AUTO || pool->in_process)
        o->mode = PMAP_OUTPUT_PASS;     /* in process: nothing to redirect */
    o->cap = job->opts.output_cap ? job->opts.output_cap
                                  : pool->opts.output_cap;
    if (o->cap == 0)
        o->cap = DEFAULT_CAP;
    if (o->cap > UINT32_MAX)
        o->cap = UINT32_MAX;    /* what SETUP carries */
    return o->mode >= PMAP_OUTPUT_PASS && o->mode <= PMAP_OUTPUT_CAPTURE
               ? 0 : PMAP_EINVAL;
}

static void release(pmap__captured_t *c)
{
    free(c->text[0]);
    free(c->text[1]);
}

static pmap__captured_t *find(pmap__output_t *o, size_t index)
{
    for (size_t i = 0; i < o->nheld; i++) {
        if (o->held[i].index == index)
            return &o->held[i];
    }
    return NULL;
}

/* Drops what item index wrote (already given away, or never wanted). */
static void drop(pmap__output_t *o, size_t index)
{
    pmap__captured_t *c = find(o, index);
    if (c == NULL)
        return;
    release(c);
    *c = o->held[--o->nheld];
}

static char *copy_text(const unsigned char *p, size_t n)
{
    if (n == 0)
        return NULL;
    char *t = malloc(n + 1);
    if (t != NULL) {
        memcpy(t, p, n);
        t[n] = '\0';
    }
    return t;
}

/* Holds one record's text; PMAP_ENOMEM without memory. */
static int hold(pmap__output_t *o, size_t index, const unsigned char *text[2],
                const size_t len[2])
{
    drop(o, index);     /* an earlier attempt's */
    if (o->nheld == o->held_cap) {
        size_t cap = o->held_cap ? 2 * o->held_cap : 16;
        pmap__captured_t *p = realloc(o->held, cap * sizeof *p);
        if (p == NULL)
            return PMAP_ENOMEM;
        o->held = p;
        o->held_cap = cap;
    }
    pmap__captured_t c = {index, {NULL, NULL}, {len[0], len[1]}};
    for (int i = 0; i < 2; i++) {
        c.text[i] = copy_text(text[i], len[i]);
        if (len[i] > 0 && c.text[i] == NULL) {
            release(&c);
            return PMAP_ENOMEM;
        }
    }
    o->held[o->nheld++] = c;
    return 0;
}

/*
 * An OUTPUT frame, for the batch a worker is about to answer: u64 records
 * | records of u64 index | u64 stdout length | u64 stderr length | bytes,
 * each padded.  Checked whole before anything is held: PMAP_EPROTO.
 */
int pmap__output_frame(pmap_job_t *job, const pmap__range_t *batch,
                       const unsigned char *p, size_t len)
{
    if (len < 8 || job->output.mode < PMAP_OUTPUT_GROUP)
        return PMAP_EPROTO;
    uint64_t records = pmap__get_u64(p);
    size_t at = 8;
    for (int pass = 0; pass < 2; pass++) {
        at = 8;
        for (uint64_t r = 0; r < records; r++) {
            if (len - at < 24)
                return PMAP_EPROTO;
            uint64_t index = pmap__get_u64(p + at);
            size_t n[2] = {(size_t)pmap__get_u64(p + at + 8),
                           (size_t)pmap__get_u64(p + at + 16)};
            at += 24;
            if (index < batch->first || index - batch->first >= batch->count ||
                n[0] > job->output.cap || n[1] > job->output.cap ||
                pmap__pad(n[0]) + pmap__pad(n[1]) > len - at)
                return PMAP_EPROTO;
            const unsigned char *text[2] = {p + at, p + at + pmap__pad(n[0])};
            at += pmap__pad(n[0]) + pmap__pad(n[1]);
            if (pass == 1 && hold(&job->output, (size_t)index, text, n) < 0)
                return PMAP_ENOMEM;
        }
    }
    return pmap__pad(at) == len ? 0 : PMAP_EPROTO;  /* frames are padded */
}

/* ---- grouped ------------------------------------------------------------ */

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;     /* the caller's stdout is gone: nothing to do */
        p += w;
        n -= (size_t)w;
    }
}

static void print(pmap__output_t *o, size_t index)
{
    pmap__captured_t *c = find(o, index);
    if (c == NULL)
        return;
    for (int i = 0; i < 2; i++) {
        if (c->text[i] != NULL)
            write_all(i + 1, c->text[i], c->len[i]);
    }
    drop(o, index);
}

static bool is_done(const pmap__output_t *o, size_t i)
{
    return i / 64 < o->done_words && (o->done[i / 64] >> (i % 64) & 1);
}

/* Items [first, first + count) have finished: marked, and what may be is
 * written (without memory for the marks, they are written at the end). */
static void finished(pmap__output_t *o, size_t first, size_t count)
{
    if (count == 0)
        return;
    size_t need = (first + count - 1) / 64 + 1;
    if (need > o->done_words) {
        size_t words = need > 2 * o->done_words ? need : 2 * o->done_words;
        uint64_t *d = realloc(o->done, words * sizeof *d);
        if (d == NULL)
            return;
        memset(d + o->done_words, 0, (words - o->done_words) * sizeof *d);
        o->done = d;
        o->done_words = words;
    }
    for (size_t i = first; i < first + count; i++)
        o->done[i / 64] |= (uint64_t)1 << (i % 64);
    while (is_done(o, o->printed))
        print(o, o->printed++);
}

/* ---- the hooks of deliver.c and job.c ----------------------------------- */

void pmap__output_stored(pmap_job_t *job, size_t first, size_t count)
{
    pmap__output_t *o = &job->output;
    if (o->mode == PMAP_OUTPUT_GROUP) {
        finished(o, first, count);
    } else if (o->mode == PMAP_OUTPUT_CAPTURE && job->window.size == 0) {
        for (size_t i = 0; i < count && o->nheld > 0; i++)
            drop(o, first + i);     /* no on_result to give it to */
    }
}

/* Item f->index failed: its captured output moves into its record. */
void pmap__output_failed(pmap_job_t *job, pmap_failure_t *f)
{
    pmap__output_t *o = &job->output;
    if (o->mode == PMAP_OUTPUT_GROUP) {
        finished(o, f->index, 1);
        return;
    }
    pmap__captured_t *c = o->mode == PMAP_OUTPUT_CAPTURE
                              ? find(o, f->index) : NULL;
    if (c == NULL)
        return;
    f->captured_stdout = c->text[0];
    f->captured_stdout_size = c->len[0];
    f->captured_stderr = c->text[1];
    f->captured_stderr_size = c->len[1];
    c->text[0] = c->text[1] = NULL;
    drop(o, f->index);
}

/* on_result is about to be given item index (f: its failure, or NULL). */
void pmap__output_handing(pmap_job_t *job, size_t index,
                          const pmap_failure_t *f)
{
    static _Thread_local pmap__captured_t failed;
    if (job->output.mode != PMAP_OUTPUT_CAPTURE) {
        handing = NULL;
    } else if (f != NULL) {
        failed = (pmap__captured_t){index,
                                    {(char *)f->captured_stdout,
                                     (char *)f->captured_stderr},
                                    {f->captured_stdout_size,
                                     f->captured_stderr_size}};
        handing = &failed;
    } else {
        handing = find(&job->output, index);
    }
}

/* ...and has been. */
void pmap__output_handed(pmap_job_t *job, size_t index)
{
    handing = NULL;
    if (job->output.mode == PMAP_OUTPUT_CAPTURE)
        drop(&job->output, index);
}

/* The map has finished: grouped output not yet written is, in order
 * (items never run, marks without memory). */
void pmap__output_finish(pmap_job_t *job)
{
    pmap__output_t *o = &job->output;
    while (o->mode == PMAP_OUTPUT_GROUP && o->nheld > 0) {
        size_t lowest = 0;
        for (size_t i = 1; i < o->nheld; i++) {
            if (o->held[i].index < o->held[lowest].index)
                lowest = i;
        }
        print(o, o->held[lowest].index);
    }
}

void pmap__output_free(pmap_job_t *job)
{
    pmap__output_t *o = &job->output;
    for (size_t i = 0; i < o->nheld; i++)
        release(&o->held[i]);
    free(o->held);
    free(o->done);
    memset(o, 0, sizeof *o);
}

const char *pmap_item_output(int fd, size_t *size)
{
    const pmap__captured_t *c = handing;
    const char *text = c != NULL && (fd == 1 || fd == 2) ? c->text[fd - 1]
                                                         : NULL;
    if (size != NULL)
        *size = text != NULL ? c->len[fd - 1] : 0;
    return text;
}
