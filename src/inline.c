/* SPDX-License-Identifier: MIT */
/*
 * inline.c - the in-process start method (PMAP_START_INLINE): a pool whose
 * one worker is the caller itself, for debugging callbacks where the
 * program's debugger, sanitizers and valgrind already look.
 *
 * It is a transport, not a second engine: the loop cuts batches and queues
 * their frames for worker 0 exactly as for a process; where a process's
 * frames would be written to its channel, these are served right here by
 * worker.c's own code, and its answers are taken as if read from a
 * channel.  So constants, method objects, strings and buffers, pmap_fail,
 * statistics, progress and cancellation (between batches) behave as with
 * processes.  The loop holds one batch at a time (loop.c, feed), so that
 * cancellation and progress are looked at between batches.
 */
#include "pmap_internal.h"

/* Makes the caller the pool's worker: its worker_init runs now. */
int pmap__inline_open(pool_t *pool)
{
    pmap__worker_t *w = &pool->workers[0];
    pmap__worker_setup_t setup = {pool->owner, pool->owner, 0,
                                  PMAP__NO_CHANNEL, NULL,
                                  pool->opts.worker_init,
                                  pool->opts.worker_exit,
                                  pool->opts.worker_arg, NULL};
    int rc = pmap__worker_start_inline(&setup);
    w->ready = rc == 0;
    return rc;
}

/* Of the frames queued for w, keeps the END frames only: the maps they
 * end are forgotten (what they hold released), the work is not done. */
static void keep_ends(pool_t *pool, pmap__worker_t *w)
{
    pmap__buf_t *frames = &pool->frames;
    frames->len = 0;
    int rc = pmap__outq_drain(&w->out, frames);
    pmap__reader_t queued = {{frames->data, frames->len, frames->len, true},
                             0};   /* a view: lent */
    pmap__header_t h;
    const unsigned char *payload;
    while (rc == 0 && pmap__reader_next(&queued, &h, &payload) > 0) {
        if (h.type == PMAP__END)
            pmap__outq_end(&w->out,
                           pmap__outq_begin(&w->out, PMAP__END, h.map));
    }
}

/* The worker leaves: the maps still set up in it are forgotten (as the
 * END frames would have told it), then its worker_exit runs. */
void pmap__inline_close(pool_t *pool)
{
    pmap__worker_t *w = &pool->workers[0];
    if (!w->ready)
        return;
    keep_ends(pool, w);
    for (size_t i = 0; i < w->nsetup; i++) {
        size_t frame = pmap__outq_begin(&w->out, PMAP__END, w->setup[i]);
        pmap__outq_end(&w->out, frame);
    }
    w->nsetup = 0;
    pmap__inline_serve(pool, w);
    pmap__worker_stop_inline();
    w->ready = false;
}

/*
 * Serves the frames queued for w in this process; its answers are then in
 * w->in, to be taken as frames read from a channel.  Returns 0, or
 * PMAP_ENOMEM (the batches it held are then lost).
 */
int pmap__inline_serve(pool_t *pool, pmap__worker_t *w)
{
    pmap__buf_t *frames = &pool->frames;
    frames->len = 0;
    if (w->in.start > 0) {      /* the answers already taken */
        pmap__buf_consume(&w->in.buf, w->in.start);
        w->in.start = 0;
    }
    int rc = pmap__outq_drain(&w->out, frames);
    w->stats.bytes_sent += frames->len;
    size_t before = w->in.buf.len;
    if (rc == 0)
        rc = pmap__worker_serve_inline(frames->data, frames->len, &w->in.buf);
    w->stats.bytes_received += w->in.buf.len - before;
    return rc;
}
