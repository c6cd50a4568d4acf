/* SPDX-License-Identifier: MIT */
/*
 * iter.c - what pmap_job_next (job.c) hands out: the results of a map
 * started in the background, pulled one at a time by the caller, in input
 * order or as they finish (Python's imap, imap_unordered, as_completed).
 * deliver.c marks each item here as it finishes.
 *
 * Only maps of arrays into an output array are iterated: their results
 * are already in the caller's out, so all a map keeps is two bits an item
 * (finished and not yet handed out; failed), whatever the order in which
 * the caller takes them.  Maps whose results go to on_result have their
 * own way of handing them over.
 */
#include "pmap_internal.h"

#include <stdlib.h>

#define WORD_BITS 64

static bool bit(const uint64_t *set, size_t i)
{
    return set[i / WORD_BITS] >> (i % WORD_BITS) & 1;
}

static void set_bit(uint64_t *set, size_t i)
{
    set[i / WORD_BITS] |= (uint64_t)1 << (i % WORD_BITS);
}

static void clear_bit(uint64_t *set, size_t i)
{
    set[i / WORD_BITS] &= ~((uint64_t)1 << (i % WORD_BITS));
}

/* Sets up a background map for pmap_job_next if it may be iterated.
 * Returns 0 or PMAP_ENOMEM. */
int pmap__iter_init(pmap_job_t *job)
{
    pmap__iter_t *it = &job->iter;
    if (job->opts.on_result != NULL || job->producer != NULL)
        return 0;
    it->on = true;
    if (job->n == 0)
        return 0;
    size_t words = job->n / WORD_BITS + 1;
    it->ready = calloc(words, sizeof *it->ready);
    it->failed = calloc(words, sizeof *it->failed);
    return it->ready && it->failed ? 0 : PMAP_ENOMEM;
}

void pmap__iter_free(pmap_job_t *job)
{
    free(job->iter.ready);
    free(job->iter.failed);
    job->iter.ready = job->iter.failed = NULL;
}

/* Items [first, first + count) have finished: stored, or failed. */
void pmap__iter_mark(pmap_job_t *job, size_t first, size_t count,
                     bool failed)
{
    pmap__iter_t *it = &job->iter;
    if (it->ready == NULL)
        return;
    for (size_t i = first; i < first + count; i++) {
        if (bit(it->ready, i))
            continue;   /* never twice; counted once */
        set_bit(it->ready, i);
        if (failed)
            set_bit(it->failed, i);
        it->pending++;
    }
}

/* The first finished item not handed out in [from, to), or SIZE_MAX. */
static size_t find_ready(const pmap__iter_t *it, size_t from, size_t to)
{
    size_t i = from;
    while (i < to) {
        uint64_t word = it->ready[i / WORD_BITS] >> (i % WORD_BITS);
        if (word != 0) {
            size_t at = i + (size_t)__builtin_ctzll(word);
            return at < to ? at : SIZE_MAX;
        }
        i = (i / WORD_BITS + 1) * WORD_BITS;
    }
    return SIZE_MAX;
}

/* The next item to hand out, or SIZE_MAX if it has not finished yet. */
size_t pmap__iter_next(const pmap_job_t *job)
{
    const pmap__iter_t *it = &job->iter;
    if (it->pending == 0)
        return SIZE_MAX;
    if (!job->opts.unordered && bit(it->ready, it->low))
        return it->low;
    if (!job->opts.unordered)   /* once stopped, no gap is ever filled */
        return job->finished ? find_ready(it, it->low, job->n) : SIZE_MAX;
    /* Items finish roughly in input order within each worker's share
     * (batch.c): searching on from the last one handed out usually finds
     * the next soon. */
    size_t i = find_ready(it, it->cursor, job->n);
    return i != SIZE_MAX ? i : find_ready(it, 0, it->cursor);
}

/* The failure record of item index, copied (the records are sorted when
 * the map finishes), or an ENOMEM one if none could be recorded. */
static const pmap_failure_t *failure_of(pmap_job_t *job, size_t index)
{
    pmap__iter_t *it = &job->iter;
    size_t n = job->nfailures;
    /* Records come roughly in the order items are handed out: search on
     * from the last one found. */
    for (size_t k = 0; k < n; k++) {
        size_t at = (it->hint + k) % n;
        if (job->failures[at].index == index) {
            it->hint = at + 1;
            it->current = job->failures[at];
            return &it->current;
        }
    }
    it->current = (pmap_failure_t){.index = index, .error = PMAP_ENOMEM,
                                   .message = ""};
    return &it->current;
}

/* Hands item index out: it is the caller's from now on. */
void pmap__iter_take(pmap_job_t *job, size_t index, size_t *indexp,
                     const pmap_failure_t **failure)
{
    pmap__iter_t *it = &job->iter;
    clear_bit(it->ready, index);
    it->pending--;
    it->handed++;
    if (job->opts.unordered)
        it->cursor = index;
    else
        it->low = index + 1;
    *indexp = index;
    const pmap_failure_t *f = NULL;
    if (bit(it->failed, index))
        f = failure_of(job, index);
    if (failure != NULL)
        *failure = f;
}
