/* SPDX-License-Identifier: MIT */
/*
 * stack.c - a crashed worker's call stack, walked from its signal handler
 * (capture.c).
 *
 * The walk is the compiler's own unwinder (_Unwind_Backtrace), which the
 * Makefile links into this file's object from libgcc_eh.a, its symbols
 * made local: a program pays nothing for it until a worker crashes.
 * glibc's backtrace() loads libgcc_s at its first call, which no signal
 * handler may do, so every process had to call it before its first fork:
 * 70 to 200 us of its first pool_create here, the load and libgcc_s's
 * constructor, whose CPUID instructions each trap to a virtual machine's
 * host.  The unwinder finds each frame's unwind table through
 * _dl_find_object (glibc 2.35), which takes no lock; older libcs, through
 * dl_iterate_phdr, as glibc's backtrace() did.  Where the Makefile finds no
 * libgcc_eh.a, a program's link takes the unwinder from libgcc_s.
 */
#include "pmap_internal.h"

#if defined(__GNUC__) && defined(__has_include)
#if __has_include(<unwind.h>)
#include <unwind.h>
#define HAVE_UNWIND 1
#endif
#endif
#ifndef HAVE_UNWIND
#define HAVE_UNWIND 0
#endif

#if HAVE_UNWIND
typedef struct {
    void **frames;
    int n, max;
} walk_t;

static _Unwind_Reason_Code take_frame(struct _Unwind_Context *context,
                                      void *arg)
{
    walk_t *w = arg;
    if (w->n == w->max)
        return _URC_END_OF_STACK;
    w->frames[w->n++] = (void *)_Unwind_GetIP(context);
    return _URC_NO_REASON;
}
#endif

/* Puts the return addresses of the calls on the stack, innermost first,
 * into frames: their count (at most max; 0 where there is no unwinder).
 * Async-signal-safe once pmap__stack_prepare has run in this process or
 * the one it was forked from. */
int pmap__stack_walk(void **frames, int max)
{
#if HAVE_UNWIND
    walk_t w = {frames, 0, max};
    _Unwind_Backtrace(take_frame, &w);
    if (w.n > 1 && frames[w.n - 1] == NULL)
        w.n--;  /* the outermost frame's, which returns nowhere */
    return w.n;
#else
    (void)frames;
    (void)max;
    return 0;
#endif
}

/* Walks a frame, once: the unwinder sets itself up at its first walk
 * (pthread_once), which a signal handler had better not be the one to
 * do.  A few microseconds. */
void pmap__stack_prepare(void)
{
    static atomic_bool done;    /* read first: a write in each new
                                   worker would copy the page */
    if (!atomic_load(&done) && !atomic_exchange(&done, true)) {
        void *frame[1];
        pmap__stack_walk(frame, 1);
    }
}
