/* SPDX-License-Identifier: MIT */
/*
 * worker.c - the code that runs only in a worker process: its setup right
 * after fork (by the caller or by the fork server), and the loop that
 * serves frames until the caller closes the channel.
 *
 * A worker reads SETUP (a map's function identifier and constants), TASK (a
 * batch of argument tuples) and END (forget a map) frames, and answers each
 * TASK with one RESULT.  Before each call it writes the item's index into
 * its shared slot, so that if the callback kills the process the caller
 * knows which item did it.  It leaves only by _exit: exit() would run the
 * caller's atexit handlers.  What callbacks print with stdio is flushed
 * after every batch, before its RESULT, and before leaving, so nothing is
 * lost when stdout is a pipe or a file (the buffers copied from the caller
 * were emptied before the fork).
 *
 * The same code serves the in-process start method (PMAP_START_INLINE,
 * inline.c): frames are then handed to pmap__worker_serve_inline by the
 * caller's own loop and the answers appended to a buffer, and nothing here
 * may leave the process: a failure that would end a worker returns from
 * that call instead.
 */
#include "pmap_internal.h"

#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Statuses of a worker that leaves on its own. */
#define EXIT_DONE 0         /* the caller closed the channel, or is gone */
#define EXIT_INIT 124       /* worker_init refused to start */
#define EXIT_BROKEN 125     /* malformed frame or no memory: cannot go on */

/* One map this worker has been set up for. */
typedef struct worker_map {
    uint32_t id;
    int error;                  /* the map cannot run here (ENOFUNC...) */
    const pmap__fn_t *fn;
    uint64_t constants;         /* bit k: parameter k is a constant */
    pmap__column_t column[PMAP_MAX_ARGS];   /* the constants */
    unsigned char *setup;       /* copy of the SETUP payload they live in */
    pmap_bytes_t scratch[PMAP_MAX_ARGS];    /* decoded constant strings */
    void *objects[PMAP_MAX_ARGS];   /* decoded constants of a codec's type
                                       (PMAP_EXPORT_TYPE), released at END */
    bool timed;                 /* stamp each item's start in the slot */
    bool measured;              /* note the resident size after a batch */
    int output;                 /* enum pmap_output */
    size_t output_cap;          /* bytes kept per item and stream */
    bool logged;                /* ...and report each item's times (the
                                   job log: RESULT's timing) */
    struct worker_map *next;
} worker_map_t;

static struct {
    pmap__worker_setup_t setup; /* who we are */
    int index;                  /* in the pool */
    void *state;                /* pmap_set_worker_state */
    pmap__channel_t ch;         /* to and from the caller, blocking */
    pmap__slot_t *slot;
    unsigned char *arena;       /* shared with the caller */
    pmap__reader_t in;
    pmap__outq_t out;
    worker_map_t *maps;
    pmap__buf_t results;        /* one batch's results */
    unsigned char *result_column;   /* ...there, or in the batch's result
                                       region (pmap__column_share) */
    pmap__buf_t scratch;        /* one batch's decoded variable arguments */
    pmap__buf_t failures;       /* one batch's failure records */
    pmap__buf_t timing;         /* logged maps: a batch's item times */
    pmap__buf_t values;         /* one item's decoded arguments (codecs) */
    pmap__buf_t encoded;        /* one batch's encoded results (codec)... */
    pmap__buf_t blobs;          /* ...as a pmap_bytes_t per item (offsets
                                   until the batch is done) */
    bool running;               /* inside a callback */
    bool user_ran;              /* worker_init, a codec or a callback ran */
    bool stdio_written;         /* a callback has written to stdio: look
                                   after every item (call_plain) */
    bool capturing;             /* fds 1 and 2 go to capture.c's files */
    bool pipe_grown;            /* ch.out's pipe (pmap__pipe_fit) */
    pmap__buf_t outputs;        /* one batch's OUTPUT records */
    pmap__buf_t *answers;       /* in-process: where frames go, else NULL */
    jmp_buf *broken;            /* in-process: where a failure returns */
    bool failed;                /* pmap_fail was called for this item */
    int fail_error;             /* 0: pmap_fail's PMAP_EFAIL */
    int fail_code;
    char fail_message[PMAP__MESSAGE_MAX];
    /* A new worker's first map, results and decoded arguments live here
     * rather than in memory from malloc, whose first use in a child writes
     * pages of the heap and of libc's state it shares with the caller, a
     * copy of each (5 faults, some 17 us each here, before its first
     * result). */
    worker_map_t first_map;     /* map_alloc's, while not in use */
    bool first_map_used;
    _Alignas(max_align_t) unsigned char first_setup[256];  /* its SETUP */
    _Alignas(max_align_t) unsigned char first_results[256];
    _Alignas(max_align_t) unsigned char first_scratch[256];
} self;

/* The caught signals' mask as Linux shows it ("SigCgt:" in
 * /proc/self/status: bit sig - 1), read in a few microseconds where
 * asking sigaction for each signal takes 64 system calls; false where it
 * cannot be read. */
static bool caught_from_proc(uint64_t *mask)
{
#ifdef __linux__
    char buf[4096];
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    size_t len = 0;
    ssize_t n;
    while (len < sizeof buf - 1 &&
           (n = pmap__read(fd, buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)n;
    close(fd);
    buf[len] = '\0';
    const char *at = strstr(buf, "\nSigCgt:");
    char *end;
    if (at == NULL)
        return false;
    *mask = strtoull(at + 8, &end, 16);
    return end != at + 8 && *end == '\n';
#else
    (void)mask;
    return false;
#endif
}

/* The signals whose action is a handler of this process's (neither
 * SIG_DFL nor SIG_IGN), asked one by one. */
static void caught_by_asking(sigset_t *caught)
{
    sigemptyset(caught);
    for (int sig = 1, last = SIGRTMAX; sig <= last; sig++) {
        struct sigaction sa;
        if (sig != SIGKILL && sig != SIGSTOP &&
            sigaction(sig, NULL, &sa) == 0 &&
            ((sa.sa_flags & SA_SIGINFO) ||
             (sa.sa_handler != SIG_IGN && sa.sa_handler != SIG_DFL)))
            sigaddset(caught, sig);
    }
}

/* The same, in the caller before it forks: from /proc where it can. */
void pmap__signals_caught(sigset_t *caught)
{
    uint64_t mask;
    if (!caught_from_proc(&mask)) {
        caught_by_asking(caught);
        return;
    }
    sigemptyset(caught);
    for (int sig = 1; sig <= 64; sig++) {
        if (mask >> (sig - 1) & 1)
            sigaddset(caught, sig);     /* fails past the last one */
    }
}

/*
 * In a new worker or the fork server: handlers of the caller's must never
 * run there, so those of `caught` (NULL: asked here) go back to SIG_DFL;
 * ignored signals stay ignored, Ctrl-C, sent to the whole process group,
 * is the caller's to handle, and nothing stays blocked.  Asking for each
 * signal's action is 64 system calls, some 90 us in a new process here
 * (its first calls of a kind are slow), and its first look at /proc is no
 * faster; so the caller, for whom /proc/self/status takes microseconds,
 * finds out once for the workers it forks together and tells them
 * (proc.c).
 */
void pmap__signals_reset(const sigset_t *caught)
{
    sigset_t own;
    if (caught == NULL) {
        caught_by_asking(&own);
        caught = &own;
    }
    struct sigaction dfl = {0};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int sig = 1, last = SIGRTMAX; sig <= last; sig++) {
        if (sigismember(caught, sig) == 1)
            sigaction(sig, &dfl, NULL);
    }
    struct sigaction ignore = {0};
    ignore.sa_handler = SIG_IGN;
    sigaction(SIGINT, &ignore, NULL);
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
}

static _Noreturn void broken(void)
{
    if (self.broken != NULL)
        longjmp(*self.broken, 1);   /* in-process: the caller goes on */
    _exit(EXIT_BROKEN);
}

/* Sends what is queued, blocking. */
static void send_queued(void)
{
    if (self.out.error != 0)
        broken();
    if (self.answers != NULL) {     /* in-process: to the caller */
        if (pmap__outq_drain(&self.out, self.answers) < 0)
            broken();
        return;
    }
    struct iovec iov[PMAP__IOV];
    while (!pmap__outq_empty(&self.out)) {
        int n = pmap__outq_iov(&self.out, iov, pmap__iov_max());
        pmap__pipe_fit(self.ch.out, iov, n, &self.pipe_grown);
        ssize_t r = pmap__writev(self.ch.out, iov, n);
        if (r < 0)
            _exit(EXIT_DONE);   /* EPIPE (SIGPIPE ignored): the caller is
                                   gone */
        pmap__outq_advance(&self.out, (size_t)r);
    }
}

/* READY, made on the stack: a worker that is never given work then
 * writes none of the pages it shares with the caller. */
static void send_ready(void)
{
    unsigned char frame[PMAP__HEADER_SIZE + PMAP__ALIGN] = {0};
    pmap__header_encode(frame, &(pmap__header_t){PMAP__READY, 0,
                                                 PMAP__ALIGN});
    uint64_t pid = (uint64_t)pmap__self();
    memcpy(frame + PMAP__HEADER_SIZE, &pid, sizeof pid);
    for (size_t done = 0; done < sizeof frame;) {
        struct iovec iov = {frame + done, sizeof frame - done};
        ssize_t r = pmap__writev(self.ch.out, &iov, 1);
        if (r <= 0)
            _exit(EXIT_DONE);   /* the caller is gone */
        done += (size_t)r;
    }
}

static void send_map_error(uint32_t map, int code)
{
    size_t frame = pmap__outq_begin(&self.out, PMAP__MAP_ERROR, map);
    pmap__outq_u64(&self.out, (uint64_t)(int64_t)code);
    pmap__outq_end(&self.out, frame);
    send_queued();
}

static worker_map_t *find_map(uint32_t id)
{
    for (worker_map_t *m = self.maps; m != NULL; m = m->next) {
        if (m->id == id)
            return m;
    }
    return NULL;
}

/* Decodes constant k of a codec's type into memory of the map's own,
 * once: 0, PMAP_ENOMEM or PMAP_ECODEC. */
static int decode_object(worker_map_t *m, int k)
{
    pmap__type_t t = m->fn->params[k];
    pmap_bytes_t b = m->scratch[k];
    if (b.data == NULL)
        return PMAP_ECODEC;     /* the caller could not encode it */
    void *object = calloc(1, t.size);
    if (object == NULL)
        return PMAP_ENOMEM;
    if (t.codec->decode(object, b.data, b.size) != 0) {
        free(object);
        return PMAP_ECODEC;
    }
    m->objects[k] = object;
    m->column[k].base = object;
    return 0;
}

/* Decodes a map's constants from its SETUP payload; 0 or a code (PMAP_EPROTO,
 * PMAP_ECODEC...). */
static int decode_constants(worker_map_t *m, size_t len)
{
    size_t off = 4 * sizeof(uint64_t);
    for (int k = 0; k < m->fn->nparams; k++) {
        if (!(m->constants >> k & 1))
            continue;
        size_t used;
        /* In a block of pmap_alloc: its view is kept until the END. */
        const pmap__region_t heap = {.heap_view = pmap__heap_view_pinned};
        int rc = pmap__column_decode(m->setup + off, len - off,
                                     m->fn->params[k], 1, &m->scratch[k],
                                     &m->column[k], &used, &heap);
        if (rc < 0)
            return rc;
        m->column[k].stride = 0;
        off += used;
        if (m->fn->params[k].kind == PMAP__CODEC &&
            (rc = decode_object(m, k)) < 0)
            return rc;
    }
    return 0;
}

/* A map's memory, zeroed, with room for a SETUP payload of len bytes. */
static worker_map_t *map_alloc(size_t len)
{
    worker_map_t *m = &self.first_map;
    if (self.first_map_used)
        m = calloc(1, sizeof *m);
    else
        memset(m, 0, sizeof *m);
    if (m == NULL)
        return NULL;
    bool first = m == &self.first_map;
    m->setup = first && len <= sizeof self.first_setup ? self.first_setup
                                                       : malloc(len);
    if (m->setup == NULL) {
        if (!first)
            free(m);
        return NULL;
    }
    self.first_map_used |= first;
    return m;
}

static void map_free(worker_map_t *m)
{
    if (m->setup != self.first_setup)
        free(m->setup);
    if (m == &self.first_map)
        self.first_map_used = false;
    else
        free(m);
}

static void map_end(uint32_t id)
{
    for (worker_map_t **p = &self.maps; *p != NULL; p = &(*p)->next) {
        worker_map_t *m = *p;
        if (m->id == id) {
            *p = m->next;
            for (int k = 0; k < PMAP_MAX_ARGS; k++) {
                void *data;     /* a string's pointer, or a buffer's */
                memcpy(&data, &m->scratch[k], sizeof data);
                pmap__heap_unpin(data);
            }
            for (int k = 0; k < PMAP_MAX_ARGS; k++) {
                if (m->objects[k] == NULL)
                    continue;
                m->fn->params[k].codec->release(m->objects[k]);
                free(m->objects[k]);
            }
            map_free(m);
            return;
        }
    }
}

/*
 * SETUP payload: u64 function id | u64 signature | u64 constants mask |
 * u64 flags (bit 0: timed; bit 1: measure memory; bits 2-3: output mode;
 * bit 4: logged; bits 32-63: output cap in bytes) | one column of 1 value
 * per constant.
 */
static void map_setup(uint32_t id, const unsigned char *p, size_t len)
{
    if (self.answers != NULL && find_map(id) != NULL)
        map_end(id);    /* in-process, after a failure: set up anew */
    worker_map_t *m = map_alloc(len);
    if (m == NULL || len < 4 * sizeof(uint64_t) || find_map(id) != NULL)
        broken();
    m->id = id;
    m->constants = pmap__get_u64(p + 16);
    uint64_t flags = pmap__get_u64(p + 24);
    m->logged = flags >> 4 & 1;
    m->timed = (flags & 1) || m->logged;
    m->measured = flags >> 1 & 1;
    m->output = (int)(flags >> 2 & 3);
    m->output_cap = (size_t)(flags >> 32);
    memcpy(m->setup, p, len);
    m->error = pmap__registry_find(pmap__get_u64(p), &m->fn);
    if (m->error == 0 && pmap__signature(m->fn) != pmap__get_u64(p + 8))
        m->error = PMAP_ENOFUNC;    /* same name, other types: not ours */
    if (m->error == 0)
        m->error = decode_constants(m, len);
    m->next = self.maps;
    self.maps = m;
}

/* Decodes a TASK's argument columns; false if the payload is malformed. */
static bool decode_arguments(const worker_map_t *m, const unsigned char *p,
                             size_t len, size_t count, pmap__column_t *col,
                             const pmap__region_t *shared)
{
    const pmap__fn_t *fn = m->fn;
    size_t need = 0;
    for (int k = 0; k < fn->nparams; k++)
        need += pmap__column_scratch(fn->params[k], count);
    self.scratch.len = 0;
    unsigned char *scratch = pmap__buf_append(&self.scratch, need);
    if (scratch == NULL)
        broken();
    uint64_t in_region = pmap__get_u64(p + 32);
    if (pmap__get_u64(p + 40) != 0 || in_region >> fn->nparams != 0)
        return false;
    size_t off = PMAP__TASK_META;
    for (int k = 0; k < fn->nparams; k++) {
        if (m->constants >> k & 1) {
            col[k] = m->column[k];
            continue;
        }
        size_t used;
        pmap__type_t t = fn->params[k];
        int rc = off > len ? PMAP_EPROTO
                 : in_region >> k & 1
                     ? pmap__column_shared_decode(p + off, len - off, t, count,
                                                  shared, &col[k], &used)
                     : pmap__column_decode(p + off, len - off, t, count,
                                           scratch, &col[k], &used, shared);
        if (rc < 0)
            return false;
        scratch += pmap__column_scratch(t, count);
        off += used;
    }
    return true;
}

/* A buffer result too large to be real (its size would also collide with
 * the wire's markers): the item fails instead of arriving altered. */
static void check_result(const pmap__fn_t *fn, unsigned char *result)
{
    pmap_bytes_t b;
    if (fn->result.kind != PMAP__BYTES)
        return;
    memcpy(&b, result, sizeof b);
    if ((uint64_t)b.size >= PMAP__SHARED_FLAG) {
        self.failed = true;
        self.fail_error = PMAP_EINVAL;
        self.fail_code = 0;
        snprintf(self.fail_message, sizeof self.fail_message,
                 "result buffer of %zu bytes: out of range", b.size);
        b.data = NULL;  /* not ours to free: it cannot be that large */
        memcpy(result, &b, sizeof b);
    }
}

/* Records the running item's pmap_fail, and frees its result if owned. */
static void record_failure(const pmap__fn_t *fn, uint64_t index,
                           unsigned char *result)
{
    if (fn->result.kind == PMAP__STRING_OWNED) {
        char *s;
        memcpy(&s, result, sizeof s);
        free(s);
    } else if (fn->result.kind == PMAP__BYTES) {
        pmap_bytes_t b;
        memcpy(&b, result, sizeof b);
        free(b.data);
    }
    memset(result, 0, fn->result.size);
    size_t len = strlen(self.fail_message);
    /* Record: u64 index | u64 error << 32 | code (32 bits each) | u64
     * message length | message, padded */
    uint64_t why = (uint64_t)(uint32_t)self.fail_error << 32 |
                   (uint32_t)self.fail_code;
    uint64_t head[3] = {index, why, len};
    if (pmap__buf_put(&self.failures, head, sizeof head) < 0 ||
        pmap__buf_put(&self.failures, self.fail_message, len) < 0 ||
        pmap__buf_pad(&self.failures, PMAP__ALIGN) < 0)
        broken();
}

/* Frees the results the worker owns once they are sent: none but strings
 * it was given to free and buffers (a pass over a batch of plain values
 * took a fifth of W1's workers' time). */
static void free_results(const pmap__fn_t *fn, size_t count)
{
    if (fn->result.kind != PMAP__STRING_OWNED &&
        fn->result.kind != PMAP__BYTES)
        return;
    for (size_t j = 0; j < count; j++) {
        unsigned char *r = self.results.data + j * fn->result.size;
        if (fn->result.kind == PMAP__STRING_OWNED) {
            char *s;
            memcpy(&s, r, sizeof s);
            free(s);
        } else if (fn->result.kind == PMAP__BYTES) {
            pmap_bytes_t b;
            memcpy(&b, r, sizeof b);
            free(b.data);
        }
    }
}

/* ---- values of a codec's type (PMAP_EXPORT_TYPE) ------------------------ */

/* Fails the running item with PMAP_ECODEC and a message saying which
 * value (argument k, or the result for k < 0) and why. */
static void codec_failure(int k, const char *why)
{
    self.failed = true;
    self.fail_error = PMAP_ECODEC;
    self.fail_code = 0;
    if (k < 0)
        snprintf(self.fail_message, sizeof self.fail_message,
                 "the result %s", why);
    else
        snprintf(self.fail_message, sizeof self.fail_message,
                 "argument %d %s", k + 1, why);
}

/* Whether parameter k is decoded item by item (not a constant). */
static bool decoded_per_item(const worker_map_t *m, int k)
{
    return m->fn->params[k].kind == PMAP__CODEC && !(m->constants >> k & 1);
}

/*
 * Makes room for one item's decoded arguments and points their argv at it;
 * returns whether the function has any such parameter.
 */
static bool codec_arguments(const worker_map_t *m, unsigned char **argv)
{
    const pmap__fn_t *fn = m->fn;
    size_t need = 0;
    for (int k = 0; k < fn->nparams; k++) {
        if (decoded_per_item(m, k))
            need += pmap__pad(fn->params[k].size);
    }
    if (need == 0)
        return false;
    self.values.len = 0;
    unsigned char *p = pmap__buf_append(&self.values, need);
    if (p == NULL)
        broken();
    for (int k = 0; k < fn->nparams; k++) {
        if (decoded_per_item(m, k)) {
            argv[k] = p;
            p += pmap__pad(fn->params[k].size);
        }
    }
    return true;
}

/* Releases item arguments [0, upto) decoded into argv. */
static void release_arguments(const worker_map_t *m, unsigned char **argv,
                              int upto)
{
    for (int k = 0; k < upto; k++) {
        if (decoded_per_item(m, k))
            m->fn->params[k].codec->release(argv[k]);
    }
}

/* Decodes item j's arguments of a codec's type into argv; false (the item
 * failed, nothing left to release) if one cannot be. */
static bool decode_arguments_of(const worker_map_t *m, size_t j,
                                const pmap__column_t *col, unsigned char **argv)
{
    const pmap__fn_t *fn = m->fn;
    for (int k = 0; k < fn->nparams; k++) {
        if (!decoded_per_item(m, k))
            continue;
        pmap_bytes_t b;
        memcpy(&b, col[k].base + j * col[k].stride, sizeof b);
        memset(argv[k], 0, fn->params[k].size);
        const char *why = NULL;
        if (b.data == NULL)
            why = "could not be encoded by the caller";
        else if (fn->params[k].codec->decode(argv[k], b.data,
                                             pmap__column_length(&col[k], j)))
            why = "could not be decoded";
        if (why != NULL) {
            release_arguments(m, argv, k);
            codec_failure(k, why);
            return false;
        }
    }
    return true;
}

/* Encodes result j (the item succeeded) at the end of self.encoded; its
 * place there goes in self.blobs, as offset + 1 for now (0: no blob). */
static void encode_result(const pmap__codec_t *c, const void *result,
                          size_t j)
{
    pmap__buf_t *e = &self.encoded;
    if (pmap__buf_reserve(e, 4096) < 0)
        broken();
    size_t room = e->cap - e->len;
    size_t n = c->encode(result, e->data + e->len, room);
    if (n != PMAP_ENCODE_ERROR && n > room) {   /* snprintf-style: again */
        if (pmap__buf_reserve(e, n) < 0)
            broken();
        if (c->encode(result, e->data + e->len, n) != n)
            n = PMAP_ENCODE_ERROR;
    }
    if (n == PMAP_ENCODE_ERROR || (uint64_t)n >= PMAP__SHARED_FLAG) {
        codec_failure(-1, "could not be encoded");
        return;
    }
    pmap_bytes_t b = {(void *)(uintptr_t)(e->len + 1), n};
    memcpy(self.blobs.data + j * sizeof b, &b, sizeof b);
    e->len += pmap__pad(n);
}

/* After item j's call: its result of a codec's type is encoded (unless it
 * failed) and released, in the worker that made it. */
static void finish_result(const pmap__fn_t *fn, unsigned char *result,
                          size_t j)
{
    if (!self.failed)
        encode_result(fn->result.codec, result, j);
    fn->result.codec->release(result);
    memset(result, 0, fn->result.size);
}

/* The blobs of a batch's encoded results, from offsets to pointers. */
static void locate_blobs(size_t count)
{
    for (size_t j = 0; j < count; j++) {
        pmap_bytes_t b;
        memcpy(&b, self.blobs.data + j * sizeof b, sizeof b);
        if (b.data == NULL)
            continue;   /* failed: no blob */
        b.data = self.encoded.data + ((uintptr_t)b.data - 1);
        memcpy(self.blobs.data + j * sizeof b, &b, sizeof b);
    }
}

/* Empties the batch's encoded results: a zeroed pmap_bytes_t per item. */
static int prepare_blobs(size_t count)
{
    self.encoded.len = 0;
    self.blobs.len = 0;
    if (count > SIZE_MAX / sizeof(pmap_bytes_t))
        return PMAP_ENOMEM;
    void *p = pmap__buf_append(&self.blobs, count * sizeof(pmap_bytes_t));
    if (p == NULL)
        return PMAP_ENOMEM;
    memset(p, 0, count * sizeof(pmap_bytes_t));
    return 0;
}

/* Calls the function on one item whose arguments include values of a
 * codec's type (or whose result is one). */
static void call_decoded(const worker_map_t *m, size_t j,
                         const pmap__column_t *col, unsigned char **argv,
                         unsigned char *result)
{
    const pmap__fn_t *fn = m->fn;
    if (!decode_arguments_of(m, j, col, argv))
        return;
    fn->call(result, (void *const *)argv);
    release_arguments(m, argv, fn->nparams);
    if (fn->result.kind == PMAP__CODEC)
        finish_result(fn, result, j);
}

/* Whether stdio may hold output of the item.  It is asked after every
 * item, so on glibc it reads the buffers' pointers inline: a tiny item
 * must not pay a call into libc for it. */
static inline bool stdio_pending(void)
{
#if defined(__GLIBC__)
    return stdout->_IO_write_ptr != stdout->_IO_write_base ||
           stderr->_IO_write_ptr != stderr->_IO_write_base;
#else
    return true;
#endif
}

/* After an item's call in a map whose output is grouped or captured: the
 * item's output taken. */
static void take_output(const worker_map_t *m, uint64_t index)
{
    if (pmap__capture_take(m->output_cap, index, &self.outputs) < 0)
        broken();
}

/* The end of a plain batch: what its callbacks wrote to stdio flushed
 * (and after every item from now on: call_plain), and no item running. */
static void plain_batch_over(void)
{
    if (stdio_pending()) {
        self.stdio_written = true;
        pmap__flush_item();
    }
    self.running = false;
    atomic_store_explicit(&self.slot->item, 0, memory_order_release);
}

/* call_plain's loop in the export's own code (pmap__fn_t's run), where
 * the function is inlined: one call per stretch of items up to the next
 * that fails (W1's workers spent as long in the loop and the call per item
 * as in the function).  Its callbacks have not written to stdio yet: their
 * output is flushed once, at the end.  Returns how many failed. */
static uint64_t run_plain(const pmap__fn_t *fn, uint64_t first, size_t count,
                          unsigned char *const *argv, const size_t *stride)
{
    size_t result_size = fn->result.size;
    uint64_t nfailed = 0;
    unsigned char *at[PMAP_MAX_ARGS];
    for (size_t j = 0; j < count;) {
        for (int k = 0; k < fn->nparams; k++)
            at[k] = argv[k] + j * stride[k];
        unsigned char *result = self.result_column + j * result_size;
        size_t ran = fn->run(result, (void *const *)at, stride, count - j,
                             first + j, (void *)&self.slot->item,
                             (const volatile unsigned char *)&self.failed);
        j += ran;
        if (self.failed) {
            record_failure(fn, first + j - 1, result + (ran - 1) * result_size);
            self.failed = false;
            nfailed++;
        }
    }
    plain_batch_over();
    return nfailed;
}

/* The hot loop, for a map that asks for nothing more (no codec, timing,
 * capture or buffer result): one slot store, one indirect call and a look
 * at stdio per item.  Returns how many failed. */
static uint64_t call_plain(const pmap__fn_t *fn, uint64_t first,
                           size_t count, unsigned char **argv,
                           const size_t *stride)
{
    void (*call)(void *, void *const *) = fn->call;
    int nparams = fn->nparams;
    size_t result_size = fn->result.size;
    unsigned char *result = self.result_column;
    uint64_t nfailed = 0;
    /* Looking at stdio after every item costs a tiny item a sixth of its
     * time: a worker does it once its callbacks have written something
     * (until then, its output is flushed at the end of each batch). */
    bool watch = self.stdio_written;
    if (!watch && fn->run != NULL)
        return run_plain(fn, first, count, argv, stride);
    for (size_t j = 0; j < count; j++) {
        atomic_store_explicit(&self.slot->item, first + j + 1,
                              memory_order_release);
        call(result, (void *const *)argv);
        if (watch && stdio_pending())
            pmap__flush_item();     /* passed through, whole */
        if (self.failed) {
            record_failure(fn, first + j, result);
            self.failed = false;
            nfailed++;
        }
        for (int k = 0; k < nparams; k++)
            argv[k] += stride[k];
        result += result_size;
    }
    plain_batch_over();
    return nfailed;
}

/* Calls the function on count items; returns how many failed. */
static uint64_t call_items(const worker_map_t *m, uint64_t first,
                           size_t count, const pmap__column_t *col)
{
    const pmap__fn_t *fn = m->fn;
    void (*call)(void *, void *const *) = fn->call;
    int nparams = fn->nparams;
    size_t result_size = fn->result.size;
    unsigned char *argv[PMAP_MAX_ARGS], *result = self.result_column;
    size_t stride[PMAP_MAX_ARGS];
    for (int k = 0; k < nparams; k++) {
        argv[k] = (unsigned char *)col[k].base;
        stride[k] = col[k].stride;
    }
    bool decoded = codec_arguments(m, argv) || fn->result.kind == PMAP__CODEC;
    for (int k = 0; k < nparams; k++) {
        if (decoded_per_item(m, k))
            stride[k] = 0;  /* argv[k] is the one item's decoded value */
    }
    uint64_t nfailed = 0;
    self.failures.len = 0;
    self.timing.len = 0;
    uint64_t *times = NULL;
    if (m->logged && (count > SIZE_MAX / 16 ||
                      (times = pmap__buf_append(&self.timing, count * 16)) ==
                          NULL))
        broken();
    self.failed = false;
    self.running = true;
    atomic_store_explicit(&self.slot->map, m->id, memory_order_relaxed);
    /* Read once: the calls in the loop may write anywhere. */
    bool timed = m->timed, capturing = self.capturing;
    bool bytes = fn->result.kind == PMAP__BYTES;
    if (!decoded && !timed && !capturing && !bytes)
        return call_plain(fn, first, count, argv, stride);
    for (size_t j = 0; j < count; j++) {
        if (timed) {
            int64_t now = pmap__now_ns();
            atomic_store_explicit(&self.slot->started_ns, now,
                                  memory_order_relaxed);
            if (times != NULL)
                times[2 * j] = (uint64_t)now;
        }
        atomic_store_explicit(&self.slot->item, first + j + 1,
                              memory_order_release);
        if (decoded)
            call_decoded(m, j, col, argv, result);
        else
            call(result, (void *const *)argv);
        if (capturing)
            take_output(m, first + j);
        else if (stdio_pending())
            pmap__flush_item();     /* passed through, whole */
        if (bytes)
            check_result(fn, result);
        if (self.failed) {
            record_failure(fn, first + j, result);
            self.failed = false;
            nfailed++;
        }
        if (times != NULL)
            times[2 * j + 1] = (uint64_t)pmap__now_ns();
        for (int k = 0; k < nparams; k++)
            argv[k] += stride[k];
        result += result_size;
    }
    self.running = false;
    if (timed)      /* the wait for the next batch starts now */
        atomic_store_explicit(&self.slot->started_ns, pmap__now_ns(),
                              memory_order_relaxed);
    atomic_store_explicit(&self.slot->item, 0, memory_order_release);
    return nfailed;
}

/* OUTPUT payload, before a batch's RESULT, if an item wrote anything:
 * u64 records | records (capture.c's pmap__capture_take). */
static void send_outputs(uint32_t id)
{
    if (self.outputs.len == 0)
        return;
    uint64_t records = 0;
    for (size_t at = 0; at < self.outputs.len; records++) {
        const unsigned char *r = self.outputs.data + at;
        at += 3 * sizeof(uint64_t) + pmap__pad(pmap__get_u64(r + 8)) +
              pmap__pad(pmap__get_u64(r + 16));
    }
    size_t frame = pmap__outq_begin(&self.out, PMAP__OUTPUT, id);
    pmap__outq_u64(&self.out, records);
    pmap__outq_add(&self.out, self.outputs.data, self.outputs.len);
    pmap__outq_end(&self.out, frame);
}

/* How deep this batch's results go into its result region, for the
 * caller to know what the arena holds once this worker has left (shm.c,
 * spare arenas): noted before they are sent, the callback's before it
 * runs (it may exit). */
static void note_reach(unsigned slot, size_t depth)
{
    if (self.slot != NULL &&
        depth > atomic_load_explicit(&self.slot->reach[slot],
                                     memory_order_relaxed))
        atomic_store_explicit(&self.slot->reach[slot], depth,
                              memory_order_relaxed);
}

/*
 * TASK payload: u64 function id | u64 first item | u64 count | u64 arena
 * slot | u64 the parameters whose columns are in the slot's argument
 * region (bit k: parameter k's; pmap__column_share) | u64 0 | one column
 * per parameter that is not a constant.  Answered by RESULT (see
 * pmap__result_decode), whose fixed-size results are written straight
 * into the slot's result region when they are many enough and fit.
 */
static void run_task(uint32_t id, const unsigned char *p, size_t len)
{
    worker_map_t *m = find_map(id);
    if (m == NULL || len < PMAP__TASK_META)
        broken();
    if (m->error != 0) {
        send_map_error(id, m->error);
        return;
    }
    const pmap__fn_t *fn = m->fn;
    uint64_t first = pmap__get_u64(p + 8), count = pmap__get_u64(p + 16);
    unsigned slot = (unsigned)(pmap__get_u64(p + 24) % 2);
    bool private = self.slot->private;
    pmap__region_t arguments =
        pmap__arena_slot(self.arena, private, slot, false);
    pmap__region_t results_area =
        pmap__arena_slot(self.arena, private, slot, true);
    arguments.heap_view = pmap__heap_view;  /* blocks of pmap_alloc */
    pmap__heap_next_batch();
    pmap__column_t col[PMAP_MAX_ARGS];
    if (pmap__get_u64(p) != fn->id || count == 0 || fn->result.size == 0 ||
        count > SIZE_MAX / fn->result.size ||
        !decode_arguments(m, p, len, (size_t)count, col, &arguments)) {
        send_map_error(id, PMAP_EPROTO);
        return;
    }
    size_t bytes = (size_t)count * fn->result.size;
    uint64_t where = pmap__values_shared(&results_area, fn->result,
                                         (size_t)count, &bytes)
                         ? PMAP__COLUMN_IN_REGION
                         : PMAP__COLUMN_IN_FRAME;
    if (where == PMAP__COLUMN_IN_REGION)
        note_reach(slot, bytes);    /* before the callback writes there */
    self.results.len = 0;
    unsigned char *results = where == PMAP__COLUMN_IN_REGION
                                 ? results_area.base
                                 : pmap__buf_append(&self.results, bytes);
    if (results == NULL)
        broken();
    memset(results, 0, bytes);
    self.result_column = results;
    bool encoded = fn->result.kind == PMAP__CODEC;
    if (encoded && prepare_blobs((size_t)count) < 0)
        broken();

    int64_t start = pmap__now_ns();
    self.outputs.len = 0;
    self.capturing = self.answers == NULL &&
                     m->output >= PMAP_OUTPUT_GROUP &&
                     pmap__capture_begin() == 0;
    uint64_t nfailed = call_items(m, first, (size_t)count, col);
    uint64_t busy = (uint64_t)(pmap__now_ns() - start);
    if (self.capturing)
        pmap__capture_end();
    self.capturing = false;
    if (m->measured && self.answers == NULL)
        pmap__memory_note(self.arena);
    fflush(NULL);
    send_outputs(id);
    /* Encoded results travel as buffers (the same column on the wire). */
    pmap__type_t result_type = fn->result;
    if (encoded) {
        locate_blobs((size_t)count);
        results = self.blobs.data;
        result_type = (pmap__type_t){PMAP__BYTES, sizeof(pmap_bytes_t),
                                     NULL, NULL};
    }

    size_t frame = pmap__outq_begin(&self.out, PMAP__RESULT, id);
    pmap__outq_u64(&self.out, first);
    pmap__outq_u64(&self.out, count);
    pmap__outq_u64(&self.out, busy);
    pmap__outq_u64(&self.out, nfailed);
    pmap__outq_u64(&self.out, where);
    pmap__outq_u64(&self.out, 0);
    if (where == PMAP__COLUMN_IN_FRAME)
        pmap__column_encode(&self.out, result_type, results, result_type.size,
                            (size_t)count, &results_area);
    pmap__outq_add(&self.out, self.failures.data, self.failures.len);
    pmap__outq_add(&self.out, self.timing.data, self.timing.len);
    pmap__outq_end(&self.out, frame);
    note_reach(slot, results_area.used);    /* values encoded there */
    send_queued();
    free_results(fn, (size_t)count);
}

/* Leaves normally: the pool is destroyed, or this worker recycled. */
static _Noreturn void leave(void)
{
    if (self.setup.exit != NULL)
        self.setup.exit(self.index, self.setup.arg);
    /* Only code of the caller's can have written to stdio here (what the
     * caller had buffered was flushed before the fork); a worker that
     * never ran any leaves without touching stdio's pages. */
    if (self.setup.exit != NULL || self.user_ran)
        fflush(NULL);
    _exit(EXIT_DONE);
}

static void take_frame(const pmap__header_t *h, const unsigned char *payload)
{
    if (h->type == PMAP__LEAVE)
        leave();
    self.user_ran = true;   /* a map's codecs, its callback (leave) */
    switch (h->type) {
    case PMAP__SETUP:
        map_setup(h->map, payload, (size_t)h->length);
        break;
    case PMAP__TASK:
        run_task(h->map, payload, (size_t)h->length);
        break;
    case PMAP__END:
        map_end(h->map);
        break;
    default:
        broken();
    }
}

static _Noreturn void serve(void)
{
    for (;;) {
        pmap__header_t h;
        const unsigned char *payload;
        int rc;
        while ((rc = pmap__reader_next(&self.in, &h, &payload)) == 0) {
            ssize_t n = pmap__reader_fill(&self.in, self.ch.in);
            if (n == 0)
                leave();    /* the caller closed the channel */
            if (n < 0)
                broken();
        }
        if (rc < 0)
            broken();
        take_frame(&h, payload);
    }
}

/* ---- in-process (inline.c) ---------------------------------------------- */

static pmap__slot_t inline_slot;    /* nobody watches it in-process */

/* Becomes the worker of an in-process pool, in the caller: its hooks, and
 * its worker_init.  Returns 0 or PMAP_ESTART if worker_init refused. */
int pmap__worker_start_inline(const pmap__worker_setup_t *setup)
{
    self.setup = *setup;
    self.ch = PMAP__NO_CHANNEL;
    self.slot = &inline_slot;
    self.arena = NULL;
    self.index = setup->index;
    if (setup->init != NULL && setup->init(setup->index, setup->arg) != 0)
        return PMAP_ESTART;
    return 0;
}

/* The in-process worker leaves: its worker_exit. */
void pmap__worker_stop_inline(void)
{
    if (self.setup.exit != NULL)
        self.setup.exit(self.index, self.setup.arg);
    fflush(NULL);
}

/*
 * Serves the frames in frames[0, len) in this process and appends the
 * answers to *answers.  Returns 0, or PMAP_ENOMEM if it could not (the
 * frames' maps are then in an unknown state: the caller fails them).
 */
int pmap__worker_serve_inline(const unsigned char *frames, size_t len,
                              pmap__buf_t *answers)
{
    jmp_buf failed;
    pmap__reader_t in = {{(unsigned char *)frames, len, len, true}, 0};
    self.answers = answers;
    self.broken = &failed;
    int rc = 0;
    if (setjmp(failed) == 0) {
        pmap__header_t h;
        const unsigned char *payload;
        while (pmap__reader_next(&in, &h, &payload) > 0)
            take_frame(&h, payload);
    } else {
        self.running = false;
        pmap__outq_reset(&self.out);
        rc = PMAP_ENOMEM;
    }
    self.answers = NULL;
    self.broken = NULL;
    return rc;
}

/* In a worker forked by the caller, before pmap__worker_main: takes the
 * buffers of its slot in the caller's pool for its channel's, so that it
 * allocates nothing before its first frames (the caller made them before
 * the fork: proc.c). */
void pmap__worker_take(const pmap__buf_t *in, const pmap__outq_t *out)
{
    self.in = (pmap__reader_t){*in, 0};
    self.in.buf.len = 0;
    self.out = *out;
    self.out.owns = false;
    pmap__outq_reset(&self.out);
}

/*
 * Runs in the child right after fork, with all signals blocked: becomes the
 * worker `setup` describes, and never returns.
 */
_Noreturn void pmap__worker_main(const pmap__worker_setup_t *setup)
{
    pmap__in_worker = true;
    pmap__self_forked();
    pmap__buf_lend(&self.results, self.first_results,
                   sizeof self.first_results);
    pmap__buf_lend(&self.scratch, self.first_scratch,
                   sizeof self.first_scratch);
    self.answers = NULL;    /* no in-process serving is going on here */
    self.broken = NULL;
    self.running = false;
    pmap__signals_reset(setup->caught);
    pmap__crash_arm(setup->arena);
    /* The parent is the caller, or the fork server, which dies with it. */
    if (!pmap__die_with_parent(setup->parent, EXIT_DONE))
        _exit(EXIT_DONE);   /* the parent died before we got here */
    self.setup = *setup;
    self.ch = setup->ch;
    self.pipe_grown = false;    /* a new channel: its pipes are new */
    self.slot = pmap__arena_state(setup->arena);
    self.arena = setup->arena;
    self.index = setup->index;
    /* Its slot's page comes in one fault if written first (the running
     * item: none yet), where reading the memory limit first and writing
     * the first item later took two.  It holds the arena alone, until a
     * fork (pmap__worker_forking). */
    atomic_store_explicit(&self.slot->item, 0, memory_order_relaxed);
    atomic_store_explicit(&self.slot->alone, (int32_t)pmap__self(),
                          memory_order_relaxed);
    pmap__memory_limit_apply(setup->arena);
    pmap__arena_prefault(setup->arena);
    self.user_ran = setup->init != NULL;
    if (setup->init != NULL && setup->init(setup->index, setup->arg) != 0)
        _exit(EXIT_INIT);
    send_ready();
    serve();
}

/* Before every fork of a process that descends from the caller (its
 * pthread_atfork handler, registered by proc.c): in a worker, or in a
 * process its callbacks forked, the child will hold the worker's arena
 * too, which is then no longer the worker's alone (shm.c, spare
 * arenas). */
void pmap__worker_forking(void)
{
    if (pmap__in_worker && self.arena != NULL)
        atomic_store_explicit(&self.slot->alone, 0, memory_order_relaxed);
}

/* Whether a pool may not be used here: in a worker, or inside a callback
 * run in process (its worker state is the one in use). */
bool pmap__nested(void)
{
    return pmap__in_worker || self.answers != NULL;
}

int pmap_worker_index(void)
{
    return pmap__in_worker || self.answers != NULL ? self.index : -1;
}

long pmap_item_index(void)
{
    if (!self.running)
        return -1;      /* not in a callback: worker_init, the caller... */
    /* The slot holds index + 1 from just before the call (call_items). */
    uint64_t item = atomic_load_explicit(&self.slot->item,
                                         memory_order_relaxed);
    if (item == 0)
        return -1;
    return item - 1 > (uint64_t)LONG_MAX ? LONG_MAX : (long)(item - 1);
}

void pmap_set_worker_state(void *state)
{
    self.state = state;
}

void *pmap_worker_state(void)
{
    return self.state;
}

int pmap_fail(int code, const char *format, ...)
{
    if (!self.running)
        return PMAP_EINVAL;     /* not in a callback */
    self.failed = true;
    self.fail_error = 0;
    self.fail_code = code;
    self.fail_message[0] = '\0';
    if (format != NULL) {
        va_list ap;
        va_start(ap, format);
        vsnprintf(self.fail_message, sizeof self.fail_message, format, ap);
        va_end(ap);
    }
    return 0;
}
