/* SPDX-License-Identifier: MIT */
/*
 * pmap_internal.h - what libpmap's source files share, never installed.
 *
 * The architecture, one file each, in layers (README.md, "Design", says
 * more).  A file calls only the files listed after it, which
 * tests/layers.sh checks on the object files: each layer can be read, and
 * replaced, on its own, and a new transport or start method is a file of
 * its own, not edits across the loop.
 *
 * The API:
 *   pool.c      pool lifecycle: create, destroy, counters
 *   job.c       a map as the caller sees it: start, wait, cancel, outcome;
 *               pmap_job_next
 * Scheduling, in the caller:
 *   loop.c      the event loop: who drives, poll, channel I/O, worker
 *               deaths, timeouts, cancellation, recycling, pool_poll and
 *               pool_fd
 *   batch.c     a map's items through the workers: batches, results, the
 *               map's end
 *   deliver.c   where items come from and results go: arrays, producer,
 *               callbacks in order or not; failures; progress
 *   output.c    per-item output grouped or captured
 *   iter.c      a background map's finished items not yet handed out
 * Processes:
 *   proc.c      worker processes: start, watch (pidfd), retire, reap
 *   server.c    the fork server, which forks workers for pools that ask
 *   inline.c    the in-process start method: the caller is the worker
 *   worker.c    the worker process: its setup after fork and task loop
 *   capture.c   in the worker: per-item output, crash reports, memory
 *   stack.c     a crashed worker's call stack (libgcc's unwinder, built in)
 *   alloc.c     pmap_alloc: memory the caller shares with every worker
 *               read-only, and the workers' views of it
 *   family.c    this process among its children: who it is, its pools,
 *               what a new child drops
 * Memory, frames and descriptors:
 *   wire.c      the frame format, encoding and decoding (no I/O)
 *   registry.c  PMAP_EXPORT'ed functions, found by identifier
 *   shm.c       the memory shared with the workers, and the page kept
 *               from them
 *   cpu.c       the CPUs this process may use (the default pool size)
 *   fdio.c      every system call on a file descriptor or a child
 *   buf.c       growable byte buffers
 *   error.c     error names and messages
 *   version.c   the library's version, for a program to check
 *
 * Internal functions are prefixed pmap__ because libpmap.a shares the
 * caller's link namespace.  They return 0 (or a count) on success and a
 * negative PMAP_E* code on failure, like the public API.
 */
#ifndef PMAP_INTERNAL_H
#define PMAP_INTERNAL_H

#include "pmap.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/uio.h>

/* ---- buf.c ------------------------------------------------------------ */

/* A growable byte buffer; a zeroed one is empty and valid. */
typedef struct pmap__buf {
    unsigned char *data;
    size_t len;     /* bytes in use */
    size_t cap;     /* bytes allocated */
    bool lent;      /* data is not malloc's (pmap__buf_lend) */
} pmap__buf_t;

void pmap__buf_lend(pmap__buf_t *b, void *room, size_t size);

#define PMAP__FIRST_FRAMES 256   /* room made before the forks for the
                                    first frames a slot or a map queues */

int pmap__buf_reserve(pmap__buf_t *b, size_t extra);
void *pmap__buf_append(pmap__buf_t *b, size_t n);
int pmap__buf_put(pmap__buf_t *b, const void *data, size_t n);
int pmap__buf_pad(pmap__buf_t *b, size_t align);
void pmap__buf_consume(pmap__buf_t *b, size_t n);
void pmap__buf_free(pmap__buf_t *b);
void *pmap__grow(void *array, size_t *cap, size_t size);

/* ---- fdio.c ----------------------------------------------------------- */

/* A worker's channel, as one side holds it: a pipe each way. */
typedef struct pmap__channel {
    int in;     /* read here what the other side writes */
    int out;    /* write here what it reads */
    int keep;   /* the caller's side: the read end of out's pipe, kept open
                   and never read, so that writing never raises SIGPIPE */
} pmap__channel_t;

#define PMAP__NO_CHANNEL ((pmap__channel_t){-1, -1, -1})
#define PMAP__PIPE_BUFFER (1 << 20)     /* a pipe grows to (Linux)... */
#define PMAP__PIPE_NEW (64 << 10)       /* ...from what a new one holds */

int pmap__channel_open(pmap__channel_t *ours, pmap__channel_t *theirs);
void pmap__channel_close(pmap__channel_t *c);
void pmap__pipe_fit(int fd, const struct iovec *iov, int n, bool *grown);
int pmap__socket_pair(int fds[2], bool nonblocking);
int pmap__wake_open(int wake[2]);
void pmap__wake_send(const int wake[2]);
void pmap__wake_drain(const int wake[2]);
int pmap__pipe_open(int fds[2]);
int pmap__set_nonblocking(int fd);
int pmap__fd_sanitize(int fd, bool cloexec);
void pmap__close(int *fd);
/* Descriptors closed in runs of consecutive numbers, with one system call
 * a run where there is close_range: add each, then flush.  An empty one
 * is {-1, -1}. */
typedef struct pmap__fd_runs {
    int lo, hi;
} pmap__fd_runs_t;
void pmap__fd_runs_add(pmap__fd_runs_t *r, int fd);
void pmap__fd_runs_flush(pmap__fd_runs_t *r);
ssize_t pmap__read(int fd, void *data, size_t n);
ssize_t pmap__writev(int fd, const struct iovec *iov, int iovcnt);
int pmap__send_all(int fd, const void *data, size_t n);
int pmap__write_all(int fd, const void *data, size_t n);
int pmap__poll(struct pollfd *fds, size_t nfds, int64_t deadline_ns);
int pmap__reap(pid_t pid, int *status);
int pmap__pidfd_open(pid_t pid);
void pmap__kill(pid_t pid, int pidfd);
/* The signal a worker or the server gets when the thread that forked it
 * ends; it ends too if its parent process is gone (a user's callback is
 * unlikely to use it, and its default action ends the process anyway). */
#define PMAP__PARENT_DEATH_SIGNAL SIGHUP
bool pmap__die_with_parent(pid_t parent, int status);
void pmap__fork_prepare(sigset_t *old, bool all);
int64_t pmap__now_ns(void);
int pmap__iov_max(void);

#define PMAP__IOV 64    /* iovecs one send takes at most (pmap__iov_max) */

/* ---- wire.c ----------------------------------------------------------- */

#define PMAP__MAGIC 0x31414d50u     /* "PMA1" in memory on little-endian */
#define PMAP__HEADER_SIZE 32
#define PMAP__ALIGN 16              /* payloads and columns are padded to it */
#define PMAP__NULL_LENGTH UINT64_MAX /* length of a NULL string or buffer */
#define PMAP__MESSAGE_MAX 512       /* longest failure message */

enum pmap__frame_type {
    PMAP__READY = 1,    /* worker -> caller: started; payload: pid */
    PMAP__SETUP,        /* caller -> worker: a map's callback and constants */
    PMAP__TASK,         /* caller -> worker: a batch of argument tuples */
    PMAP__RESULT,       /* worker -> caller: a batch's results */
    PMAP__END,          /* caller -> worker: forget a map */
    PMAP__MAP_ERROR,    /* worker -> caller: a map cannot run here */
    PMAP__OUTPUT,       /* worker -> caller: a batch's items' output,
                           just before its RESULT (capture.c) */
    PMAP__LEAVE         /* caller -> worker: leave, as at EOF (proc.c) */
};

typedef struct pmap__header {
    uint8_t type;       /* enum pmap__frame_type */
    uint32_t map;       /* map identifier (0 for READY) */
    uint64_t length;    /* payload bytes after the header, padded */
} pmap__header_t;

void pmap__header_encode(unsigned char *out, const pmap__header_t *h);
int pmap__header_decode(const unsigned char *in, pmap__header_t *h);
size_t pmap__pad(size_t n);
uint64_t pmap__get_u64(const unsigned char *p);

/*
 * Outgoing frames: a list of segments that are either bytes the queue owns
 * (copied into scratch) or references to the caller's memory, sent with one
 * sendmsg per batch of iovecs.  Large arguments are never copied.
 */
typedef struct pmap__segment {
    const unsigned char *ptr;   /* referenced memory, or NULL: scratch */
    size_t offset;              /* in scratch, when ptr is NULL */
    size_t len;
} pmap__segment_t;

typedef struct pmap__outq {
    pmap__buf_t scratch;        /* bytes the queue owns */
    pmap__segment_t *segs;
    size_t nsegs, cap;
    size_t head;                /* first segment not fully written */
    size_t head_done;           /* bytes of it already written */
    uint64_t total;             /* bytes queued since the last reset */
    int error;                  /* first failure to queue (PMAP_ENOMEM) */
    bool owns;                  /* copy everything: keep no reference */
    bool segs_lent;             /* segs is not malloc's (pmap__outq_lend) */
} pmap__outq_t;

/* Room pmap__outq_lend takes: first frames' bytes and 8 segments. */
#define PMAP__OUTQ_ROOM (PMAP__FIRST_FRAMES + 8 * sizeof(pmap__segment_t))

void pmap__outq_lend(pmap__outq_t *q, unsigned char *room);

size_t pmap__outq_begin(pmap__outq_t *q, uint8_t type, uint32_t map);
void pmap__outq_end(pmap__outq_t *q, size_t frame);
void *pmap__outq_alloc(pmap__outq_t *q, size_t n);
void pmap__outq_copy(pmap__outq_t *q, const void *data, size_t n);
void pmap__outq_add(pmap__outq_t *q, const void *data, size_t n);
void pmap__outq_trim(pmap__outq_t *q, size_t n);
void pmap__outq_u64(pmap__outq_t *q, uint64_t v);
size_t pmap__outq_u64_later(pmap__outq_t *q);
void pmap__outq_set(pmap__outq_t *q, size_t at, uint64_t v);
void pmap__outq_pad(pmap__outq_t *q);
void pmap__outq_append(pmap__outq_t *q, const pmap__outq_t *src);
bool pmap__outq_empty(const pmap__outq_t *q);
bool pmap__outq_between_frames(const pmap__outq_t *q);
int pmap__outq_iov(const pmap__outq_t *q, struct iovec *iov, int max);
void pmap__outq_advance(pmap__outq_t *q, size_t n);
int pmap__outq_drain(pmap__outq_t *q, pmap__buf_t *to);
int pmap__outq_reserve(pmap__outq_t *q, size_t n);
void pmap__outq_reset(pmap__outq_t *q);
void pmap__outq_free(pmap__outq_t *q);

/* A column of count values of one type, read as base + i * stride. */
typedef struct pmap__column {
    const unsigned char *base;
    size_t stride;      /* 0 for a constant */
    const unsigned char *lengths;   /* strings, buffers: the length table */
} pmap__column_t;

/*
 * Memory shared with one worker for one batch (see shm.c), and the blocks
 * of pmap_alloc (alloc.c): heap_find, set by the caller where the worker
 * shares this machine's memory, lets the encoder reference a string or
 * buffer that lies in one; heap_view, set by the worker, lets the decoder
 * read such a reference.  Either may be NULL: no such reference then.
 */
typedef struct pmap__region {
    unsigned char *base;
    size_t size;
    size_t used;        /* bytes taken by the encoder */
    bool (*heap_find)(const void *p, size_t n, uint64_t ref[3]);
    const unsigned char *(*heap_view)(uint64_t offset, uint64_t size);
} pmap__region_t;

#define PMAP__SHARED_FLAG ((uint64_t)1 << 62) /* length: data is shared */
#define PMAP__SHARED_MIN (64u << 10)    /* smallest item put there */
#define PMAP__VALUES_SHARED_MIN (16u << 10) /* smallest column of values */
#define PMAP__HEAP_MIN 4096u    /* smallest item of pmap_alloc referenced */

bool pmap__values_shared(const pmap__region_t *shared, pmap__type_t type,
                         size_t count, size_t *bytes);
bool pmap__column_share(pmap__outq_t *q, pmap__type_t type,
                        const unsigned char *base, size_t count,
                        pmap__region_t *shared);
int pmap__column_shared_decode(const unsigned char *p, size_t avail,
                               pmap__type_t type, size_t count,
                               const pmap__region_t *shared,
                               pmap__column_t *col, size_t *used);
size_t pmap__column_encode(pmap__outq_t *q, pmap__type_t type,
                           const unsigned char *base, size_t stride,
                           size_t count, pmap__region_t *shared);
int pmap__column_decode(const unsigned char *p, size_t avail,
                        pmap__type_t type, size_t count, void *scratch,
                        pmap__column_t *col, size_t *used,
                        const pmap__region_t *shared);
size_t pmap__column_scratch(pmap__type_t type, size_t count);
size_t pmap__column_length(const pmap__column_t *col, size_t i);

/* A RESULT payload, checked whole against the batch it answers. */
typedef struct pmap__result {
    uint64_t busy_ns;           /* the worker's time in the callback */
    const unsigned char *timing;    /* logged maps: u64 start ns, u64 end
                                       ns per item, after the failures;
                                       else NULL */
    uint64_t nfailed;           /* failure records... */
    const unsigned char *failures;  /* ...starting here */
    pmap__column_t column;      /* the results */
    bool in_region;             /* ...read in place in the result region */
} pmap__result_t;

/* One record of pmap__result_t.failures. */
typedef struct pmap__failure_record {
    uint64_t index;
    int error;                  /* 0: pmap_fail (PMAP_EFAIL) */
    int code;
    const char *message;        /* not NUL-terminated */
    size_t length;
} pmap__failure_record_t;

/* A RESULT payload's first words (see pmap__result_decode), and where its
 * column is. */
#define PMAP__RESULT_META (6 * sizeof(uint64_t))
#define PMAP__TASK_META (6 * sizeof(uint64_t))     /* see worker.c */
enum { PMAP__COLUMN_IN_FRAME = 0, PMAP__COLUMN_IN_REGION = 1 };

int pmap__result_decode(const unsigned char *p, size_t len,
                        pmap__type_t type, uint64_t first, uint64_t count,
                        bool timed, void *scratch, pmap__result_t *r,
                        const pmap__region_t *shared);
const unsigned char *pmap__failure_next(const unsigned char *p,
                                        pmap__failure_record_t *f);

/*
 * Incoming frames from one channel: bytes are read greedily into buf and
 * complete frames are taken from its front.
 */
typedef struct pmap__reader {
    pmap__buf_t buf;
    size_t start;       /* offset of the first unconsumed byte */
} pmap__reader_t;

#define PMAP__READ_SIZE 65536    /* room a reader reads into, at least */

ssize_t pmap__reader_fill(pmap__reader_t *r, int fd);
int pmap__reader_next(pmap__reader_t *r, pmap__header_t *h,
                      const unsigned char **payload);
int pmap__reader_peek(const pmap__reader_t *r, pmap__header_t *h);
uint64_t pmap__result_bound(pmap__type_t type, uint64_t count);
void pmap__reader_free(pmap__reader_t *r);

/* ---- registry.c ------------------------------------------------------- */

int pmap__registry_check(const pmap__fn_t *fn);
int pmap__registry_find(uint64_t id, const pmap__fn_t **fn);
uint64_t pmap__signature(const pmap__fn_t *fn);
uint64_t pmap__registry_hash(void);

/* ---- shm.c ------------------------------------------------------------ */

#define PMAP__DEPTH 2   /* batches a worker holds at most: one runs, one waits */

/*
 * What a worker tells the caller through shared memory, without a system
 * call: the item it is running, so that a crash is charged to that item
 * alone, and when it started (or when the last one ended), for timeouts.
 * At the head of the worker's own arena: no other worker can write it.
 */
typedef struct pmap__slot {
    _Atomic uint64_t item;      /* index + 1 of the running item; 0: none */
    _Atomic uint32_t map;       /* the map that item belongs to */
    _Atomic int64_t started_ns; /* timed or logged maps: when the item
                                   started, or when the batch's last item
                                   ended */
    uint64_t memory_limit;      /* written by the caller before the worker
                                   starts: its RLIMIT_AS, or 0 */
    _Atomic uint64_t rss;       /* the worker's resident bytes after its
                                   last batch (maps with a soft cap) */
    uint32_t private;           /* set before the worker starts: no shared
                                   regions (a worker on another machine,
                                   src/mpi/): every value travels in frames */
    _Atomic int32_t alone;      /* the worker's pid, stored as it starts;
                                   0 once a process holding the arena has
                                   forked (shm.c, spare arenas) */
    _Atomic uint64_t reach[PMAP__DEPTH];    /* how deep results went into
                                   each result region, set by the worker
                                   before it writes there; a new worker
                                   finds its predecessor's (shm.c) */
} pmap__slot_t;

/*
 * A crashed worker's report, written by its signal handler (capture.c) at
 * PMAP__REPORT_AT in its arena, read by the caller before the arena is
 * unmapped (loop.c).  length is stored last.
 */
typedef struct pmap__report {
    _Atomic uint32_t length;    /* bytes of text; 0: no report */
    uint32_t out_of_memory;     /* an allocation had failed under the
                                   worker's memory limit */
    uint32_t signal;            /* the signal it dies of, raised again
                                   right after the report */
    char text[];
} pmap__report_t;

#define PMAP__REPORT_AT 256u

/*
 * Each worker process's arena, made for it alone and unmapped when it is
 * gone: its slot, then two argument regions and two result regions, one
 * of each per batch it may hold (PMAP__DEPTH), then the stack its crash
 * handler runs on (capture.c).  A batch's region is named in its TASK and
 * is used again only after the batch's RESULT has been read, so the two
 * sides never write the same bytes at once.
 */
#define PMAP__ARENA_HEAD 16384u     /* slot, crash report */
#define PMAP__SLOT_SIZE (4u << 20)
#define PMAP__ALTSTACK_AT (PMAP__ARENA_HEAD + 4 * PMAP__SLOT_SIZE)
#define PMAP__ALTSTACK_SIZE 65536u  /* last, the crash handler's stack */
#define PMAP__ARENA_SIZE (PMAP__ALTSTACK_AT + PMAP__ALTSTACK_SIZE)

int pmap__shm_file(const char *name, size_t size);
void *pmap__shm_map(size_t size, int *fd);
void *pmap__shm_attach(int fd, size_t size);
void pmap__shm_unmap(void *p, size_t size);
bool pmap__shm_fork_inherit(void *p, size_t size, bool inherit);
void *pmap__shm_unshared(size_t size);

/* An arena kept for a later worker, and how deep its regions were used
 * (shm.c). */
#define PMAP__SPARE_ARENAS 64
typedef struct pmap__spare_arena {
    unsigned char *arena;
    size_t depth;
} pmap__spare_arena_t;

/* What this process writes right after forking, in a page no child
 * inherits as it is (shm.c). */
typedef struct pmap__local {
    _Atomic pid_t self;             /* family.c: pmap__self; 0: unknown */
    pthread_mutex_t pools_lock;     /* family.c: the list of pools */
    pthread_mutex_t heap_lock;      /* alloc.c: pmap_alloc's heap */
    pthread_mutex_t registry_lock;  /* registry.c */
    pthread_mutex_t server_lock;    /* server.c: the fork server's channel */
    pthread_mutex_t arenas_lock;    /* shm.c: what children inherit */
    atomic_uint last_map;           /* job.c: the last map's number */
    unsigned char *spare_room;      /* pool.c: a destroyed pool's room */
    size_t spare_room_size;
    unsigned nspare_arenas;         /* shm.c: ended workers' arenas */
    size_t spare_arena_bytes;
    pmap__spare_arena_t spare_arenas[PMAP__SPARE_ARENAS];
    atomic_ulong forks;             /* shm.c: this process's, and... */
    atomic_ulong own_forks;         /* ...the library's (pmap__forks_*) */
} pmap__local_t;

pmap__local_t *pmap__local(void);
bool pmap__local_wiped(void);
void pmap__forks_watch(void);
void pmap__forks_own(void);
unsigned long pmap__forks_program(void);
void *pmap__arenas_map(size_t size, int *fd, bool *kept);
void pmap__arena_inherit(void *p, bool inherit);
bool pmap__arenas_inherited(void);
void pmap__arena_forget(void *p);
unsigned char *pmap__arena_take(size_t *depth);
void pmap__arena_prefault(unsigned char *arena);
int pmap__arenas_spare(void);
void pmap__arena_give_back(unsigned char *arena, pid_t left, size_t depth);
pmap__slot_t *pmap__arena_state(unsigned char *arena);
pmap__region_t pmap__arena_slot(unsigned char *arena, bool private,
                                unsigned slot, bool results);

/* ---- alloc.c ---------------------------------------------------------- */

bool pmap__heap_hold(void);
void pmap__heap_drop(void);
bool pmap__heap_find(const void *p, size_t n, uint64_t ref[3]);
void pmap__heap_next_batch(void);
const unsigned char *pmap__heap_view(uint64_t offset, uint64_t size);
const unsigned char *pmap__heap_view_pinned(uint64_t offset, uint64_t size);
void pmap__heap_unpin(const void *p);

/* ---- cpu.c ------------------------------------------------------------ */

int pmap__cpu_count(void);

/* ---- the engine: pool.c, loop.c, job.c, batch.c, deliver.c --------------- */

/* Items [first, first + count), tried `attempts` times before. */
typedef struct pmap__range {
    size_t first;
    size_t count;
    int attempts;
} pmap__range_t;

/* A batch sent to a worker. */
typedef struct pmap__batch {
    pmap_job_t *job;
    pmap__range_t items;
    unsigned slot;              /* of the worker's arena */
} pmap__batch_t;

typedef struct pmap__worker {
    pid_t pid;                  /* 0 when there is no process */
    int index;
    pmap__channel_t ch;         /* our side of its channel, non-blocking */
    int pidfd;                  /* readable when the process has ended, or
                                   -1: looked at every PMAP__TICK_NS */
    bool ready;                 /* READY received */
    bool gone;                  /* known to have ended, not yet buried */
    bool reaped;                /* ...and waited for: status is its own */
    int status;                 /* its wait status, once reaped */
    bool polled_out;            /* registered for output in the epoll set */
    bool pipe_grown;            /* its channel's way out (pmap__pipe_fit) */
    bool private;               /* its arena has no shared regions: its
                                   process is on another rank (as its
                                   arena's slot says; known here without
                                   reading that page again) */
    uint32_t *setup;            /* maps set up on it */
    size_t nsetup, setup_cap;
    size_t used;                /* items given to this process */
    pmap__outq_t out;
    pmap__reader_t in;
    pmap__batch_t batch[PMAP__DEPTH];   /* in flight, oldest first */
    int nbatch;
    unsigned next_slot;         /* arena slot of the next batch */
    unsigned char *arena;       /* this process's own (shm.c) */
    size_t depth;               /* how deep its argument regions were
                                   written (shm.c, spare arenas) */
    int handoff[2];             /* being handed to its process: the write
                                   end of its result pipe (the read end of
                                   its task pipe is ch.keep), its arena
                                   file (fork server) */
    int64_t born_ns;            /* when the process was started */
    int64_t waiting_ns;         /* when batch[0] became its next work */
    bool over_memory;           /* passed a soft memory cap: recycle it */
    pmap_stats_t stats;         /* of this slot, all its processes */
} pmap__worker_t;

/* A worker told to leave (recycled, or its pool destroyed): its slot is
 * free for a replacement; it is killed if it is still there at deadline. */
typedef struct pmap__retiree {
    pid_t pid;                  /* 0 once waited for */
    int fd;                     /* its channel, drained until it ends */
    int pidfd;                  /* or -1 */
    int64_t deadline_ns;
    unsigned char *arena;       /* given back once it has ended, or NULL */
    size_t depth;               /* as pmap__worker_t's */
    pid_t left;                 /* its pid once waited for, if it left as
                                   told; else 0 */
} pmap__retiree_t;

/* How often processes without a pidfd are looked at, while it matters. */
#define PMAP__TICK_NS 50000000

/* How long the fork server has to report what it has seen: a worker's
 * end, or the answer to a request given up on (server.c). */
#define PMAP__REPORT_NS 100000000LL

/* One thread's last map waited for in a call (pool_failures, pool_stats);
 * a pool keeps one per thread that has used it, until pool_destroy. */
typedef struct pmap__last {
    pthread_t thread;
    pmap_failure_t *failures;
    size_t nfailures;
    pmap_stats_t stats;
    struct pmap__last *next;
} pmap__last_t;

/*
 * A pool is used by several threads at once (README, "Threads"): every
 * call holds `lock` (an error-checking mutex: a callback calling back into
 * its pool finds it held by its own thread, PMAP_EBUSY), and one thread at
 * a time, the driver, runs the loop; the others wait on `turn` for their
 * map to finish or for the loop to be free.  The driver lets go of the lock
 * only in poll (loop.c, wait_events); meanwhile the others may only append
 * maps, flag them cancelled or released, free finished ones and write the
 * wake pipe: workers, their queues, retirees and the poll array are the
 * driver's.  Only cancels and wake are used without the lock.
 */
struct pool {
    pid_t owner;                /* process that created the pool */
    pthread_mutex_t lock;       /* everything but cancels and wake */
    pthread_cond_t turn;        /* a map finished, or the loop is free */
    bool driving;               /* a thread runs the loop */
    bool poll_missed;           /* pool_poll found it driven: wake pool_fd
                                   when the driver stops */
    atomic_uint cancels;        /* pool_cancel calls: a map started before
                                   the last one is cancelled */
    int wake[2];                /* wakes the loop (cancels): fdio.c */
    pool_options_t opts;
    int nworkers;
    pmap__worker_t *workers;
    pmap__retiree_t *retirees;
    size_t nretirees, retirees_cap;
    bool server;                /* workers come from the fork server */
    bool in_process;            /* PMAP_START_INLINE: no process (inline.c) */
    bool eager;                 /* a new worker gets work before its READY,
                                   and pool_create does not wait for it:
                                   nothing in its start can fail (pool.c) */
    unsigned long program_forks;    /* pmap__forks_program at its start */
    bool holds_heap;            /* holds pmap_alloc's heap (alloc.c)... */
    bool heap;                  /* ...which exists: its workers have it,
                                   and its blocks go by reference */
    const struct pmap__remote *remote;  /* PMAP_START_MPI: processes
                                   elsewhere (proc.c, src/mpi/) */
    pmap_config_t config;       /* what was chosen, and why */
    unsigned char *room;        /* the first buffers, kept from children */
    size_t room_size;           /* (pool.c, reserve) */
    pmap__buf_t frames;         /* in-process: frames being served */
    int64_t start_timeout_ns;   /* a worker not READY by then is stuck */
    int64_t cancel_grace_ns;    /* running items' time after a cancel;
                                   < 0: they finish */
    struct pollfd *pollfds;     /* workers, wake pipe, retirees */
    size_t pollfds_cap;
    int epfd;                   /* pool_fd, or -1 */
    bool lost;                  /* a worker was lost since the last refill */
    int start_failures;         /* workers dead before READY, in a row */
    bool steady;                /* every slot's process is ready and has a
                                   pidfd: the loop need not look at each
                                   (proc.c clears it as one starts or goes) */
    bool over_memory;           /* a worker passed a soft memory cap */
    bool closing;               /* pool_destroy stops the workers: the
                                   epoll set is left as it is (proc.c) */
    int64_t respawn_ns;         /* after too many: when to try again */
    int64_t respawn_backoff_ns;
    pmap_job_t *jobs;           /* maps not yet released, oldest first */
    pmap_job_t *spare;          /* a map's memory for the next (job.c) */
    pmap__last_t *lasts;        /* each thread's last map waited for */
    pmap_stats_t total;         /* counters of all maps */
    struct pool *next;          /* every live pool of the process */
};

/* How a worker died, as the caller reports it for the item it ran. */
typedef struct pmap__death {
    int error;                  /* PMAP_ECRASH, PMAP_EEXIT, PMAP_ELOST... */
    int code;                   /* signal number or exit status */
    long pid;
    uint32_t map;               /* the item it was running, from its slot */
    uint64_t item;              /* index + 1, or 0: none */
    const char *message;        /* its crash report, or NULL */
    size_t length;
    int worker;                 /* its index in the pool */
    int64_t started_ns;         /* when that item started (timed or logged
                                   maps), or 0 */
} pmap__death_t;

/*
 * Who ran items and when, for failure records and the job log: the worker
 * that answered a batch, or the one that died running an item.  NULL
 * where an item never ran (cancelled, halted).
 */
typedef struct pmap__ran {
    long pid;
    int worker;
    size_t first;               /* the batch's first item */
    const unsigned char *timing;    /* logged: pmap__result_t.timing */
    int64_t start_ns, end_ns;   /* without timing: the one item's, or 0 */
} pmap__ran_t;

/* An item that failed and runs again (retries), once due. */
typedef struct pmap__again {
    size_t index;
    int64_t due_ns;
} pmap__again_t;

/* The runs an item has had that failed, while it is retried (deliver.c
 * keeps them until its outcome is recorded). */
typedef struct pmap__tries {
    size_t index;
    int attempts;
    pmap_cause_t causes[PMAP_CAUSES_MAX];
} pmap__tries_t;

/*
 * The items of a map alive between their making and their handing over
 * (deliver.c): a ring of `size` items, for maps whose items come from a
 * producer or whose results go to a callback.  Item i lives in place
 * i % size; batches never wrap around the ring.
 */
typedef struct pmap__window {
    size_t size;                /* 0: no window (arrays in, array out) */
    unsigned char *inputs[PMAP_MAX_ARGS];   /* items made by a producer */
    unsigned char *results;     /* results not yet handed over */
    unsigned char *state;       /* per place: enum in deliver.c */
    size_t *failure;            /* per place: index in job->failures */
    pmap_log_t *log;            /* per place, logged maps: the item's job
                                   log row, for pmap_item_log */
    size_t low;                 /* oldest item not handed over */
    size_t tail;                /* cancelled items [tail, n) were never
                                   sent: handed over after the others
                                   (SIZE_MAX: none) */
} pmap__window_t;

/*
 * What pmap_job_next needs of a background map of arrays (iter.c): which
 * items have finished and not yet been handed out, one bit an item (the
 * results themselves are in the caller's out).
 */
typedef struct pmap__iter {
    bool on;                    /* the map may be iterated */
    uint64_t *ready;            /* bit i: item i finished, not handed out */
    uint64_t *failed;           /* bit i: item i failed */
    size_t pending;             /* bits set in ready */
    size_t handed;              /* items handed out */
    size_t low;                 /* in order: the next item to hand out */
    size_t cursor;              /* unordered: where the search starts */
    size_t hint;                /* where the failure record search starts */
    pmap_failure_t current;     /* the failure last handed out */
} pmap__iter_t;

/* Output of items grouped or captured, held by the caller (output.c). */
typedef struct pmap__captured {
    size_t index;
    char *text[2];              /* what it wrote to fds 1 and 2, or NULL */
    size_t len[2];
} pmap__captured_t;

typedef struct pmap__output {
    int mode;                   /* enum pmap_output, never AUTO */
    size_t cap;                 /* bytes kept per item and stream */
    pmap__captured_t *held;     /* arrived, not yet handed over */
    size_t nheld, held_cap;
    uint64_t *done;             /* GROUP: bit i, item i has finished */
    size_t done_words;
    size_t printed;             /* GROUP: items [0, printed) written */
} pmap__output_t;

/* A map, from pmap__map to pmap_job_free. */
struct pmap_job {
    pool_t *pool;
    pmap_job_t *later;          /* the pool's next map in start order */
    uint32_t id;
    const pmap__fn_t *fn;
    pmap__arg_t args[PMAP_MAX_ARGS];
    uint64_t constants;         /* bit k: argument k is the same for all */
    pool_map_options_t opts;
    size_t chunk;               /* fixed batch size, or 0: automatic */
    int64_t timeout_ns;         /* per item, or 0: none */
    pmap__outq_t setup;         /* the SETUP frame, sent once per worker */
    /* Items: [0, next) were sent; [done...]: see batch.c's comment. */
    size_t n;                   /* items; SIZE_MAX while a producer runs */
    void (*producer)(void);     /* typed producer (pmap__fn_t.pull) */
    void *producer_ctx;
    size_t produced;            /* items the producer made */
    size_t next;                /* first item never sent */
    pmap__range_t *shares;      /* or, affine maps: each worker slot's
                                   items never sent (batch.c) */
    uint32_t *largest;          /* ...a tournament of their sizes */
    size_t leaves;              /* ...whose leaves are from here on */
    size_t share_left;          /* items left in the shares */
    size_t done;                /* items stored or failed */
    size_t failed;              /* items failed */
    size_t inflight;            /* batches sent and not answered */
    pmap__range_t *retry;       /* items to send again */
    size_t nretry, retry_cap;
    /* Policies (README, "Policies"): retries, halt, job log. */
    int retries;                /* runs more an item may have; 0: none */
    int64_t retry_delay_ns;
    bool retry_failed;          /* pmap_fail'ed items are retried too */
    pmap__again_t *again;       /* items failed, to run again when due */
    size_t nagain, again_cap;
    pmap__tries_t *tries;       /* their failed runs so far */
    size_t ntries, tries_cap;
    size_t halt_failed;         /* items failed for good, not cancelled */
    bool logged;                /* on_log or joblog_fd: rows per item */
    unsigned char *out;         /* the caller's array, or NULL: window */
    pmap__window_t window;
    /* Counters (items and failed are done and failed above), and the
     * items they cover, for batch sizes. */
    pmap_stats_t stats;
    uint64_t sent_items;        /* items in stats.bytes_sent */
    uint64_t shared_sent;       /* ...and the bytes of theirs copied into
                                   the workers' shared memory instead */
    uint64_t shared_values;     /* ...of which fixed-size arguments */
    uint64_t busy_items;        /* items in stats.busy_ns, bytes_received
                                   and shared_results */
    uint64_t shared_results;    /* bytes of results read from the workers'
                                   shared memory */
    int64_t start_ns;
    int64_t progress_ns;        /* last progress callback */
    pmap__buf_t scratch;        /* for decoding variable results */
    pmap_failure_t *failures;   /* messages malloc'ed */
    size_t nfailures, failures_cap;
    /* Outcome. */
    int error;                  /* the map failed or was cancelled */
    volatile sig_atomic_t cancel;   /* cancellation asked, from anywhere */
    unsigned cancels;           /* pool->cancels when it started */
    bool cancelled;             /* and carried out */
    int64_t kill_ns;            /* cancelled: when its running items are
                                   killed; -1: never (they finish) */
    bool waited;                /* pmap_job_wait is running it: not freed
                                   by the loop even if released */
    bool background;            /* started by an _async call */
    bool released;              /* pmap_job_free'd while running: the loop
                                   frees it when it has finished */
    bool finished;              /* rc is final */
    int rc;
    pmap__iter_t iter;          /* pmap_job_next */
    pmap__output_t output;      /* per-item output (output.c) */
    size_t memory_cap;          /* soft cap on its workers, or 0 */
};

/*
 * Worker processes that are not this process's children (PMAP_START_MPI:
 * another rank's, src/mpi/): a narrow process layer that proc.c asks
 * instead of fork, pidfds, kill and waitpid.  Each worker has a descriptor
 * standing for its pidfd, readable once its end is known, which is also
 * the key of the other calls.
 *   workers: the slots a pool gets (0: no remote worker)
 *   spawn:   starts a worker for pool's slot w, its side of the channel
 *            being channel (the callee takes copies) and its arena w->arena
 *            (whose slot it keeps up to date), with the pool's worker
 *            hooks; sets *pid and *deathfd; 0 or a negative code
 *   kill:    kills it (SIGKILL, where it runs)
 *   reap:    its wait status, killing it if it has not ended within a
 *            grace period; 0, or PMAP_ELOST; the worker is forgotten
 *   detach:  its arena is about to be unmapped (retired)
 */
typedef struct pmap__remote {
    int (*workers)(void);
    int (*spawn)(const struct pool *pool, struct pmap__worker *w,
                 const pmap__channel_t *channel, int64_t deadline,
                 pid_t *pid, int *deathfd);
    void (*kill)(int deathfd);
    int (*reap)(int deathfd, int *status);
    void (*detach)(int deathfd);
} pmap__remote_t;

extern const pmap__remote_t *pmap__remote;  /* set by libpmap-mpi */

/* family.c */
extern bool pmap__in_worker;    /* this process is a worker (or server) */
pid_t pmap__self(void);
void pmap__self_forked(void);
void pmap__pools_lock(void);
void pmap__pools_unlock(void);
void pmap__pools_add(pool_t *pool);
void pmap__pools_remove(pool_t *pool);
bool pmap__pools_mark(void);
void pmap__pools_child_init(const pmap__worker_t *keep, bool marked);
bool pmap__pools_forgotten(void);

/* proc.c */
void pmap__proc_kill(const pool_t *pool, const pmap__worker_t *w);
bool pmap__proc_taken(const pmap__worker_t *w);
int pmap__proc_spawn(pool_t *pool, pmap__worker_t *w);
int pmap__proc_spawn_all(pool_t *pool);
void pmap__proc_check(pool_t *pool, pmap__worker_t *w);
int pmap__proc_reap(pool_t *pool, pmap__worker_t *w, int *status);
void pmap__proc_retire(pool_t *pool, pmap__worker_t *w, int64_t deadline);
int64_t pmap__retirees_check(pool_t *pool);
void pmap__retirees_wait(pool_t *pool);
void pmap__retirees_abandon(pool_t *pool);
struct pollfd *pmap__pollfds(pool_t *pool, size_t n);
/* What an entry of the pool's epoll set stands for (its data.u64): the
 * wake pipe, a retiree's descriptor, or one of worker index's, as
 * PMAP__EVENT(index, kind). */
enum { PMAP__EV_WAKE, PMAP__EV_INPUT, PMAP__EV_ENDED, PMAP__EV_OUTPUT };
#define PMAP__EVENT(index, kind) ((uint64_t)(index) << 2 | (kind))
#define PMAP__EV_RETIREE UINT64_MAX
int pmap__epoll_add(const pool_t *pool, int fd, uint64_t event);
int pmap__epoll_mod(const pool_t *pool, int fd, uint64_t event);
void pmap__epoll_del(const pool_t *pool, int fd);

/* loop.c */
int pmap__pool_enter(pool_t *pool);
void pmap__pool_leave(pool_t *pool);
bool pmap__pool_lock(const pool_t *pool);
void pmap__pool_unlock(const pool_t *pool, bool locked);
void pmap__pool_wake(pool_t *pool);
int pmap__loop_run(pool_t *pool, const pmap_job_t *job, int64_t deadline_ns);
int64_t pmap__loop_once(pool_t *pool);
void pmap__loop_nudge(pool_t *pool);
void pmap__loop_kill_job(pool_t *pool, pmap_job_t *job);

/* job.c */
void pmap__jobs_free(pool_t *pool);
void pmap__jobs_prepare(pool_t *pool, unsigned char *room);

/* batch.c */
bool pmap__job_has_work(const pool_t *pool, const pmap_job_t *job,
                        const pmap__worker_t *w);
bool pmap__job_finished(const pmap_job_t *job);
int pmap__job_dispatch(pool_t *pool, pmap_job_t *job, pmap__worker_t *w);
void pmap__job_share(const pool_t *pool, pmap_job_t *job);
int pmap__job_result(pool_t *pool, pmap_job_t *job, pmap__worker_t *w,
                     const unsigned char *payload, size_t len);
int pmap__job_map_error(pool_t *pool, pmap_job_t *job, pmap__worker_t *w,
                        const unsigned char *payload, size_t len);
void pmap__job_lost(pool_t *pool, pmap_job_t *job, pmap__worker_t *w,
                    const pmap__death_t *death);
void pmap__job_cancel_now(pool_t *pool, pmap_job_t *job);
int64_t pmap__job_retry_due(const pmap_job_t *job);
bool pmap__job_settle(pool_t *pool, pmap_job_t *job);
void pmap__job_empty(pmap_job_t *job, bool keep);
void pmap__job_free(pmap_job_t *job);
void pmap__jobs_reap(pool_t *pool);

/* deliver.c */
int pmap__window_init(pool_t *pool, pmap_job_t *job);
void pmap__window_free(pmap_job_t *job);
size_t pmap__window_room(const pmap_job_t *job, size_t first);
size_t pmap__produce(pool_t *pool, pmap_job_t *job, size_t upto);
const unsigned char *pmap__input(const pmap_job_t *job, int k, size_t index);
unsigned char *pmap__output(const pmap_job_t *job, size_t index);
void pmap__stored(pool_t *pool, pmap_job_t *job, size_t first, size_t count,
                  const pmap__ran_t *ran);
void pmap__deliver(pmap_job_t *job);
void pmap__fail_item(pool_t *pool, pmap_job_t *job, size_t index, int error,
                     int code, const pmap__ran_t *ran, const char *msg,
                     size_t msglen);
int pmap__tried(pmap_job_t *job, size_t index, int error, int code,
                int most);
void pmap__tries_free(pmap_job_t *job);
void pmap__log_header(pmap_job_t *job);
void pmap__progress(pool_t *pool, pmap_job_t *job, bool final);
int64_t pmap__progress_due(const pmap_job_t *job);
void pmap__failures_free(pmap_failure_t *f, size_t n);

/* output.c */
int pmap__output_init(pool_t *pool, pmap_job_t *job);
int pmap__output_frame(pmap_job_t *job, const pmap__range_t *batch,
                       const unsigned char *p, size_t len);
void pmap__output_stored(pmap_job_t *job, size_t first, size_t count);
void pmap__output_failed(pmap_job_t *job, pmap_failure_t *f);
void pmap__output_handing(pmap_job_t *job, size_t index,
                          const pmap_failure_t *f);
void pmap__output_handed(pmap_job_t *job, size_t index);
void pmap__output_finish(pmap_job_t *job);
void pmap__output_free(pmap_job_t *job);

/* iter.c */
int pmap__iter_init(pmap_job_t *job);
void pmap__iter_mark(pmap_job_t *job, size_t first, size_t count,
                     bool failed);
void pmap__iter_free(pmap_job_t *job);
size_t pmap__iter_next(const pmap_job_t *job);
void pmap__iter_take(pmap_job_t *job, size_t index, size_t *indexp,
                     const pmap_failure_t **failure);

/* What a new worker needs to know; pool.c or server.c fills it. */
typedef struct pmap__worker_setup {
    pid_t owner;                /* the caller, whose pool this is */
    pid_t parent;               /* our parent: the caller, or the server */
    int index;                  /* in the pool */
    pmap__channel_t ch;         /* our side of the channel */
    unsigned char *arena;       /* shared with the caller: slot, regions */
    int (*init)(int, void *);   /* the pool's worker hooks */
    void (*exit)(int, void *);
    void *arg;
    const sigset_t *caught;     /* the parent's handlers, to drop; NULL:
                                   not known (pmap__signals_reset) */
} pmap__worker_setup_t;

/* proc.c: the fork of a worker whose arena is arena (its alone), and in
 * a child forked for slot w (marked: pmap__pools_mark) */
pid_t pmap__proc_fork_with_arena(unsigned char *arena);
_Noreturn void pmap__proc_become_worker(const pmap__worker_t *w,
                                        const pmap__worker_setup_t *setup,
                                        bool marked);

/* worker.c */
bool pmap__nested(void);
void pmap__signals_caught(sigset_t *caught);
void pmap__signals_reset(const sigset_t *caught);
_Noreturn void pmap__worker_main(const pmap__worker_setup_t *setup);
void pmap__worker_forking(void);
void pmap__worker_take(const pmap__buf_t *in, const pmap__outq_t *out);
int pmap__worker_start_inline(const pmap__worker_setup_t *setup);
void pmap__worker_stop_inline(void);
int pmap__worker_serve_inline(const unsigned char *frames, size_t len,
                              pmap__buf_t *answers);

/* capture.c: the worker's side of per-item output, crash reports and
 * memory caps */
void pmap__crash_prepare(void);
void pmap__crash_arm(unsigned char *arena);
void pmap__memory_limit_apply(const unsigned char *arena);
void pmap__memory_note(unsigned char *arena);
void pmap__flush_item(void);
int pmap__capture_begin(void);
int pmap__capture_take(size_t cap, uint64_t index, pmap__buf_t *into);
void pmap__capture_end(void);

/* stack.c: a crashed worker's call stack */
int pmap__stack_walk(void **frames, int max);
void pmap__stack_prepare(void);

/* inline.c */
int pmap__inline_open(pool_t *pool);
void pmap__inline_close(pool_t *pool);
int pmap__inline_serve(pool_t *pool, pmap__worker_t *w);

/* server.c */
bool pmap__server_running(void);
int pmap__server_spawn(const pmap__worker_setup_t *setup,
                       const pmap__channel_t *channel,
                       int arena_fd, int64_t deadline, pid_t *pid);
int pmap__server_reap(pid_t pid, int *status, int64_t deadline);
void pmap__server_child_init(void);

#endif /* PMAP_INTERNAL_H */
