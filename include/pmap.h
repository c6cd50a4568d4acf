/* SPDX-License-Identifier: MIT */
/*
 * pmap.h - libpmap's public API.
 *
 * libpmap maps a C function over arrays in a pool of forked worker
 * processes and stores the results in input order:
 *
 *     int add(int x, int y) { return x + y; }
 *     PMAP_EXPORT(add, int, int, int);
 *
 *     pool_t *pool = pool_create(4);
 *     pool_map(pool, add, 10, out, xs, ys);      // out[i] = add(xs[i], ys[i])
 *     pool_destroy(pool);
 *
 * Conventions used by every call in this header:
 *  - Errors are negative PMAP_E* codes, returned, never stored in errno;
 *    pmap_strerror() describes them.  0 or more means success.
 *  - pool_map returns 0 when every item succeeded, the number of failed items
 *    when some failed (see pool_failures), or a negative code when the map
 *    could not run at all.  A failed item never fails the others.
 *  - A pool belongs to the process that created it: calls from a forked
 *    child of that process, or from inside a worker, are refused with a
 *    distinct code.  Several threads may use one pool at once (README,
 *    "Threads"): their maps share the workers, and each thread's outcomes
 *    (codes, pool_failures, pool_stats' last map) are its own.  One thread
 *    at a time runs the pool's loop for all of them, so the callbacks of a
 *    map (on_result, on_progress, a stream's producer) run on whichever
 *    thread is using the pool then, never two at once; a callback calling
 *    back into its own pool gets PMAP_EBUSY.
 *  - The library never prints, never exits, never installs signal handlers
 *    and never waits for a child it did not fork.
 */
#ifndef PMAP_H
#define PMAP_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version this header belongs to (README, "Versions"). */
#define PMAP_VERSION_MAJOR 0
#define PMAP_VERSION_MINOR 5
#define PMAP_VERSION_PATCH 6
#define PMAP_VERSION                                                          \
    (PMAP_VERSION_MAJOR * 10000 + PMAP_VERSION_MINOR * 100 + PMAP_VERSION_PATCH)

#if defined(__GNUC__)
#define PMAP_API __attribute__((visibility("default")))
#else
#error "libpmap needs a compiler with GNU C attributes (gcc or clang)"
#endif

/* Most parameters a mapped function may have. */
#define PMAP_MAX_ARGS 16

/* Most workers one pool may have. */
#define PMAP_MAX_WORKERS 1024

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * Every code the library returns.  Codes taken from errno keep their value
 * (negated); codes of libpmap's own sit in their own range.
 */
#define PMAP_ERROR_MAP(XX)                                                    \
    XX(EINVAL, -EINVAL, "invalid argument")                                   \
    XX(ENOMEM, -ENOMEM, "out of memory")                                      \
    XX(EAGAIN, -EAGAIN, "no process could be created (fork)")                 \
    XX(EMFILE, -EMFILE, "too many open files in this process")                \
    XX(ENFILE, -ENFILE, "too many open files in the system")                  \
    XX(EBUSY, -EBUSY, "pool is in use by another call")                       \
    XX(ETIMEDOUT, -ETIMEDOUT, "timed out")                                    \
    XX(ECANCELED, -ECANCELED, "cancelled")                                    \
    XX(ENOSYS, -ENOSYS, "not available on this system")                       \
    XX(EFAIL, -4001, "the callback reported a failure (pmap_fail)")           \
    XX(ECRASH, -4002, "the worker was killed by a signal")                    \
    XX(EEXIT, -4003, "the worker exited during the call")                     \
    XX(ENOFUNC, -4004, "callback is not exported in the worker")              \
    XX(EAMBIGUOUS, -4005, "callback identifier is exported twice")            \
    XX(EPROTO, -4006, "malformed message on a worker channel")                \
    XX(EFORKED, -4007, "pool belongs to another process")                     \
    XX(ENESTED, -4008, "pool used from inside one of its workers")            \
    XX(ESTART, -4009, "a worker failed to start")                             \
    XX(ELOST, -4010, "the worker vanished (exit status unknown)")             \
    XX(ESYSTEM, -4011, "unexpected system error")                           \
    XX(ECODEC, -4012, "a value could not be encoded or decoded")             \
    XX(EHALTED, -4013, "the map was halted by its halt policy")

enum {
#define PMAP__ERROR_ENUM(name, value, text) PMAP_##name = (value),
    PMAP_ERROR_MAP(PMAP__ERROR_ENUM)
#undef PMAP__ERROR_ENUM
};

/* The version of the library the program runs with, as PMAP_VERSION
 * (which is the one it was compiled against). */
PMAP_API int pmap_version(void);

/* A static English description of code; never NULL. */
PMAP_API const char *pmap_strerror(int code);

/* The code's name without prefix ("EINVAL", "ECRASH"); never NULL. */
PMAP_API const char *pmap_err_name(int code);

/* ------------------------------------------------------------------------ */
/* Values                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * A byte buffer, as an argument or a result.  As an argument, data points to
 * size bytes the caller owns.  As a result returned by a callback, data must
 * come from malloc (or be NULL): the worker frees it after sending it; the
 * caller receives its own malloc'ed copy in out[i] and frees it.
 */
typedef struct pmap_bytes {
    void *data;
    size_t size;
} pmap_bytes_t;

/*
 * Memory shared with the workers (README, "Shared inputs").  pmap_alloc
 * returns size bytes, page-aligned and zeroed, that the caller reads and
 * writes as any memory, and that every worker of a pool started by fork
 * or by the fork server reads in place: a string or buffer argument (or a
 * PMAP_CONST one) of 4 KiB or more lying wholly inside one such block is
 * sent as a reference, never copied, whether the pool was created before
 * or after the block.  Workers see it read-only: a callback that writes
 * to it is killed (SIGSEGV) and fails its item with PMAP_ECRASH.  Pools
 * started in process use it as any memory; remote workers (libpmap-mpi)
 * get copies of its bytes.
 *
 * Returns NULL if size is 0, if memory cannot be had, inside a worker,
 * and where the system has no shared memory file (memfd or shm_open) or
 * could not make one while a pool or the fork server already existed.
 * The block must not be freed, nor written, while a map that reads it
 * runs.  A child the program forks does not inherit the block (it is
 * mapped MADV_DONTFORK).  Since 0.4.
 */
PMAP_API void *pmap_alloc(size_t size);

/* Frees a block of pmap_alloc, whose memory returns to the system at once.
 * NULL, or a pointer pmap_alloc did not return, is ignored.  Since 0.4. */
PMAP_API void pmap_free(void *p);

/* ------------------------------------------------------------------------ */
/* Pools                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct pool pool_t;

/* Options of pool_create_with; a zeroed struct means every default. */
typedef struct pool_options {
    int workers;    /* worker processes; 0: one per CPU this process may use */
    size_t chunk;   /* items per batch sent to a worker; 0: automatic */
    double timeout; /* seconds one item may run before its worker is
                       killed and the item fails with PMAP_ETIMEDOUT;
                       0: no limit (negative: PMAP_EINVAL) */
    /* Run in each worker when it starts, before its first item (e.g. to
     * open a database once per worker; see pmap_set_worker_state).  A
     * nonzero return means the worker cannot serve: pool_create fails with
     * PMAP_ESTART. */
    int (*worker_init)(int worker, void *arg);
    /* Run in each worker when it leaves normally: at pool_destroy, or when
     * it is recycled (max_items_per_worker); a worker still in it after
     * 2 s is killed (its replacement does not wait for it). */
    void (*worker_exit)(int worker, void *arg);
    void *worker_arg;           /* passed to both */
    size_t max_items_per_worker;    /* replace a worker after it ran this
                                       many items (leaky code); 0: never */
    int start;              /* how workers are made: enum pmap_start */
    double start_timeout;   /* seconds a new worker has to get ready
                               (worker_init included) before it is taken
                               for stuck and killed; 0: 30 */
    double cancel_grace;    /* seconds running items may go on after a
                               cancellation before their workers are
                               killed (and replaced); 0: 0.5; < 0: let
                               them finish */
    /* Per-item output, crash reports and memory caps (README, "Policies",
     * "Per-item output" and "Memory caps"): defaults of every map. */
    int output;             /* enum pmap_output; 0: PMAP_OUTPUT_PASS */
    size_t output_cap;      /* bytes of output kept per item and stream
                               (the tail) when grouped or captured; 0:
                               1 MiB */
    size_t max_worker_memory;   /* soft cap: a worker whose resident
                                   memory passes it after a batch is
                                   recycled; 0: none */
    size_t worker_memory_limit; /* hard cap: each worker's address space
                                   (RLIMIT_AS, set when it starts); an item
                                   allocating past it fails with
                                   PMAP_ENOMEM; 0: none */
    /* ---- Policies (README, "Policies"): defaults of every map's own
     * retries, retry_delay and retry_failed (pool_map_options_t).  Since
     * 0.3. */
    int retries;
    double retry_delay;
    int retry_failed;
} pool_options_t;

/*
 * What becomes of what a map's callbacks write to their stdout and stderr
 * (file descriptors 1 and 2: stdio, write(2), child processes they run;
 * README, "Per-item output"):
 *  - PMAP_OUTPUT_PASS: it goes where the caller's goes, stdio flushed after
 *    every item (the default);
 *  - PMAP_OUTPUT_GROUP: held per item and written by the caller to its own
 *    fds 1 and 2, item after item in input order (parallel --group
 *    --keep-order);
 *  - PMAP_OUTPUT_CAPTURE: held per item and handed over: to on_result
 *    (pmap_item_output) and in the failure record of a failed item.
 * Grouped and captured output keeps the last output_cap bytes of each
 * stream of each item.  In-process pools always pass output through.
 */
enum pmap_output {
    PMAP_OUTPUT_AUTO,       /* a map's 0: the pool's setting */
    PMAP_OUTPUT_PASS,
    PMAP_OUTPUT_GROUP,
    PMAP_OUTPUT_CAPTURE
};

/*
 * How a pool's workers are made (README, "Start methods"):
 *  - PMAP_START_FORK: forked from the caller, as it is at pool_create and
 *    whenever a worker is replaced;
 *  - PMAP_START_SERVER: forked from the fork server that pmap_init started,
 *    a copy of the program as it was then: the cost of starting a worker
 *    does not grow with the caller's heap, and no lock held by one of the
 *    caller's threads is held in a worker;
 *  - PMAP_START_INLINE: no process at all: every callback runs in the
 *    calling process, one item after another, in input order, with the
 *    same results, failure records, progress, cancellation, statistics and
 *    hooks (pmap_worker_index() is 0).  For debugging a callback under the
 *    debugger, the sanitizers or valgrind the program already uses; what
 *    cannot be isolated is the caller's own: a crash or exit in a callback
 *    ends the program (that is the point: the debugger stops there),
 *    timeouts are not enforced and max_items_per_worker is ignored.
 *  - PMAP_START_MPI: on other MPI ranks, each running its own forked
 *    workers (one slot here per remote worker), with libpmap-mpi's
 *    pmap_mpi_init (pmap_mpi.h; README, "Across machines"); without it,
 *    pool_create_with says PMAP_EINVAL.
 *  - PMAP_START_AUTO (0, the default): the environment's PMAP_START if set
 *    (README, "Environment"), else the server if pmap_init was called, else
 *    fork.
 */
enum pmap_start {
    PMAP_START_AUTO,
    PMAP_START_FORK,
    PMAP_START_SERVER,
    PMAP_START_INLINE,
    PMAP_START_MPI
};

/*
 * Starts the fork server.  Call it first thing in main, before the program
 * starts threads or fills its heap: every worker of a pool using the server
 * is a copy of the program as it is now (what it inherits: README, "Start
 * methods").  The server is a small process that leaves with the program.
 * If the server has died, this starts a new one, and the pools that used
 * it (whose maps returned PMAP_ESTART meanwhile) work again; in a forked
 * child of the server's owner it starts the child's own server.  Returns 0
 * (also if already started), PMAP_ENESTED in a worker, or a system code.
 */
PMAP_API int pmap_init(void);

/* Stops the fork server and waits for it (destroy the pools using it
 * first); a later pmap_init starts a new one.  Not needed before exit. */
PMAP_API void pmap_exit(void);

/*
 * Forks the workers of a new pool, once: they serve every later pool_map
 * until pool_destroy.  workers is the number of processes, or 0 for one per
 * CPU this process may run on.  Returns NULL on failure; pool_create_with
 * says why.
 *
 * Workers are copies of the caller at this moment (fork): globals, heap and
 * open files are inherited.  Create pools early, before the program starts
 * threads (see README, "Processes").  Text buffered in stdio is flushed
 * before forking, so it is never printed twice.
 */
PMAP_API pool_t *pool_create(int workers);

/*
 * pool_create with options (opts may be NULL).  Stores the pool in *poolp
 * and returns 0, or returns PMAP_EINVAL (poolp NULL, workers < 0 or >
 * PMAP_MAX_WORKERS, a negative or NaN timeout or start_timeout, a NaN
 * cancel_grace, an unknown start, or PMAP_START_SERVER without pmap_init),
 * PMAP_ENESTED (inside a worker or a callback), PMAP_ENOMEM, PMAP_EMFILE/ENFILE
 * (channels), PMAP_EAGAIN (fork) or PMAP_ESTART (a worker died before it
 * was ready, or worker_init refused), leaving *poolp NULL.  An in-process
 * pool (PMAP_START_INLINE) has one worker, whatever workers says.  With a
 * worker_init it waits until every worker has run it; without one it
 * returns once they are forked (nothing else in a start can fail), and
 * the first map's batches wait for the workers still starting.
 */
PMAP_API int pool_create_with(pool_t **poolp, const pool_options_t *opts);

/*
 * Stops the workers (closing their channels; a worker still busy after a
 * 2 s grace period is killed), waits for every one of them, closes every
 * file descriptor and frees all memory of the pool.  Maps still in the
 * background are abandoned and their handles freed: do not pass them to
 * pmap_job_free afterwards.  NULL is allowed.  Called in a forked child of
 * the pool's owner, it only frees the child's copy and leaves the workers
 * to their owner.  Not to be called from a callback of the pool (it then
 * does nothing), nor before every other thread's last call on it has
 * returned; it waits for the pool's loop to be free.
 */
PMAP_API void pool_destroy(pool_t *pool);

/* Number of workers of the pool, or PMAP_EINVAL for NULL. */
PMAP_API int pool_size(const pool_t *pool);

/* Where a setting of a pool came from (pmap_config_t). */
enum pmap_origin {
    PMAP_FROM_AUTO,         /* the library's automatic choice */
    PMAP_FROM_OPTION,       /* the program's pool_options_t */
    PMAP_FROM_ENV,          /* the environment (PMAP_WORKERS, ...) */
    PMAP_FROM_ENV_IGNORED   /* the environment's value was malformed or
                               unusable: the automatic choice was kept */
};

/* The settings a pool was created with, and why (enum pmap_origin). */
typedef struct pmap_config {
    int workers;
    int workers_from;
    int start;              /* PMAP_START_FORK, _SERVER, _INLINE or _MPI */
    int start_from;
    size_t chunk;           /* items per batch; 0: automatic */
    int chunk_from;
} pmap_config_t;

/* Stores the pool's settings in *config.  Returns 0 or PMAP_EINVAL. */
PMAP_API int pool_config(const pool_t *pool, pmap_config_t *config);

/* ------------------------------------------------------------------------ */
/* Mapping                                                                  */
/* ------------------------------------------------------------------------ */

/*
 * PMAP_EXPORT(fn, R, T1, ..., Tk);
 *
 * Makes the function `R fn(T1, ..., Tk)` callable by workers, at file scope,
 * once, in the .c file that defines or declares fn (1 <= k <= PMAP_MAX_ARGS).
 * The types are those of the array elements a caller passes; the function's
 * own parameters must accept them (C's usual conversions apply).  A type is
 * one of:
 *  - a value: any arithmetic type, or a struct copied by value (its pointers,
 *    if any, are copied as they are and NOT followed: they mean nothing in
 *    the worker unless the memory existed when the pool was created);
 *  - a type given an encoder and a decoder by PMAP_EXPORT_TYPE: deep-copied,
 *    whatever it points to, any size;
 *  - a string: `const char *` or `char *`, NUL-terminated, any length, NULL
 *    allowed;
 *  - pmap_bytes_t: a byte buffer of any size.
 * As the result type R the same kinds apply; a `char *` result is freed by
 * the worker after it is sent (return malloc'ed memory), a `const char *`
 * result is not.  String and byte results reach the caller as new memory
 * from malloc that the caller frees (with a `const char *` result type,
 * out is a `const char *` array: free((char *)out[i])).
 *
 * The worker finds fn by an identifier derived from (fn, file, line): two
 * static functions of the same name in different files never collide.
 * PMAP_EXPORT(fn) with the name alone exports a function a header
 * declared with PMAP_DECLARE (below).
 */
#define PMAP_EXPORT(...)                                                      \
    PMAP__CAT(PMAP__EXPORT_, PMAP__ONE(__VA_ARGS__))(0, , __VA_ARGS__)

/*
 * PMAP_EXPORT_TYPE(T, encode, decode, release);
 *
 * Makes values of type T travel deep-copied, through the program's own
 * encoder and decoder, as arguments (array elements), constants
 * (PMAP_CONST), method objects (PMAP_EXPORT_METHOD's S, passed as &obj) and
 * results of every exported function that names T.  At file scope, once in
 * the whole program (in any one .c file), with
 *
 *     size_t encode(const T *value, void *buf, size_t size);
 *         Writes the value's bytes to buf, at most size of them (buf may be
 *         NULL when size is 0), and returns the number it needs, as
 *         snprintf does: when that is more than size, encode is called
 *         again with a buffer of that size.  PMAP_ENCODE_ERROR: it cannot.
 *     int decode(T *value, const void *data, size_t size);
 *         Rebuilds *value from the size bytes at data (not aligned: read
 *         them with memcpy), allocating what it points to.  Returns 0, or
 *         -1 after freeing whatever it allocated.
 *     void release(T *value);
 *         Frees what decode allocated (NULL: there is nothing to free).
 *
 * In a worker, an argument is decoded before its call and released after
 * it; a constant or method object is decoded once per map and released at
 * the map's end; a result is encoded and released after its call, then
 * decoded in the caller into out[i] (or handed to on_result): the caller
 * owns it and frees it with release.  A value that fails to encode or
 * decode fails its item with PMAP_ECODEC (pool_failures' message says
 * which), or, for a constant or method object, the whole map.
 *
 * T is recognized by its spelling: PMAP_EXPORT and PMAP_EXPORT_TYPE must
 * name it the same way (`struct model` in both, or the same typedef name:
 * a typedef's other names are not matched, and the value then travels by
 * value again); whitespace does not matter.  A type exported twice makes
 * the maps using it fail with PMAP_EAMBIGUOUS.  Strings and pmap_bytes_t
 * keep their own handling.  A producer's values (pool_map_stream) are
 * deep-copied by encoding and decoding them.
 */
#define PMAP_EXPORT_TYPE(T, encode, decode, release)                          \
    PMAP__EXPORT_TYPE(T, encode, decode, release, __LINE__)

/* What an encoder returns when it cannot encode a value. */
#define PMAP_ENCODE_ERROR ((size_t)-1)

/*
 * PMAP_DECLARE(fn, R, T1, ..., Tk);      in a header
 * PMAP_EXPORT(fn);                       in exactly one .c file
 *
 * For programs of several files: fn is declared (with its C prototype) and
 * PMAP_DECLAREd in a header, so that every file including it can pool_map
 * fn, and exported by name in one .c file, as any C function is defined
 * once.  The types are as for PMAP_EXPORT.  Forgetting the PMAP_EXPORT is
 * a link error about `pmap_export__fn`; exporting it twice, a "multiple
 * definition" of it.
 */
#define PMAP_DECLARE(fn, R, ...)                                              \
    PMAP__DECLARE(fn, R, 0, , extern PMAP__HIDDEN, __VA_ARGS__)

/*
 * PMAP_EXPORT_METHOD(fn, R, S, T1, ..., Tk);
 *
 * Exports a "method": a function whose first parameter points to an object
 * of struct type S, `R fn(const S *self, T1, ..., Tk)`.  In pool_map the
 * object is given by address (`&obj`); its bytes are shipped to the workers
 * once per map, so state set after pool_create is seen (what its pointers
 * point to only if S has a PMAP_EXPORT_TYPE).  Each worker calls fn with a
 * pointer to its own copy: changes it makes are not sent back.
 */
#define PMAP_EXPORT_METHOD(...)                                               \
    PMAP__CAT(PMAP__EXPORT_, PMAP__ONE(__VA_ARGS__))(1, &, __VA_ARGS__)

/* PMAP_DECLARE for a method: in a header, with PMAP_EXPORT(fn) (or
 * PMAP_EXPORT_METHOD(fn)) in one .c file. */
#define PMAP_DECLARE_METHOD(fn, R, ...)                                       \
    PMAP__DECLARE(fn, R, 1, &, extern PMAP__HIDDEN, __VA_ARGS__)

/*
 * PMAP_CONST(value)
 *
 * In a pool_map argument list, passes the same value to every item in place
 * of an array.  The value is sent once per map, not per item.
 */
#ifdef __cplusplus
#define PMAP_CONST(v) pmap__constant(v)
#else
#define PMAP_CONST(v) .value = (v)
#endif

/* Attempts of one item a failure record keeps the causes of. */
#define PMAP_CAUSES_MAX 8

/* How one attempt at an item ended (pmap_failure_t.causes). */
typedef struct pmap_cause {
    int error;              /* as pmap_failure_t.error */
    int code;               /* as pmap_failure_t.code */
} pmap_cause_t;

/* One failed item. */
typedef struct pmap_failure {
    size_t index;           /* the item's input index */
    int error;              /* PMAP_EFAIL, PMAP_ECRASH, PMAP_EEXIT,
                               PMAP_ETIMEDOUT, PMAP_ECANCELED,
                               PMAP_EHALTED (never run: the map halted) */
    int code;               /* EFAIL: callback's code; ECRASH: signal;
                               EEXIT: exit status; else 0 */
    long pid;               /* worker that ran it (0 if none did) */
    const char *message;    /* EFAIL: the callback's message; ECRASH
                               (or ENOMEM under worker_memory_limit): the
                               crash report; else "" */
    /* With PMAP_OUTPUT_CAPTURE: what the item wrote to fds 1 and 2 (the
     * last output_cap bytes of each, NUL-terminated), or NULL. */
    const char *captured_stdout;
    size_t captured_stdout_size;
    const char *captured_stderr;
    size_t captured_stderr_size;
    /* Since 0.3 (retries, README "Policies"): the times the item ran (0:
     * never), and how each of the first PMAP_CAUSES_MAX runs ended, oldest
     * first: causes[attempts - 1] is error and code when the last run
     * failed the item; an item retried then cancelled or halted before it
     * ran again has error PMAP_ECANCELED or PMAP_EHALTED and its runs'
     * causes. */
    int attempts;
    pmap_cause_t causes[PMAP_CAUSES_MAX];
} pmap_failure_t;

/* Where a map stands, for a progress callback. */
typedef struct pmap_progress {
    size_t done;            /* items finished, failed ones included */
    size_t failed;          /* items failed */
    size_t total;           /* items in all; 0 while a producer runs */
    double elapsed;         /* seconds since the map started */
} pmap_progress_t;

/*
 * A result handed to the caller as soon as it can be (instead of stored in
 * an output array): result points to the item's R, or is NULL if the item
 * failed (failure says why).  String and buffer results are the caller's
 * to free.  Return 0 to go on, nonzero to cancel the map.
 */
typedef int (*pmap_result_fn)(void *ctx, size_t index, void *result,
                              const pmap_failure_t *failure);

/* Called at most every progress_interval seconds, and once at the end.
 * Return 0 to go on, nonzero to cancel the map. */
typedef int (*pmap_progress_fn)(void *ctx, const pmap_progress_t *progress);

/* When a map stops for its failures (pool_map_options_t.halt). */
enum pmap_halt {
    PMAP_HALT_NEVER,        /* 0: every item runs, whatever fails */
    PMAP_HALT_SOON,         /* no batch is sent after the halt; items
                               already sent to a worker finish */
    PMAP_HALT_NOW           /* the running items are killed too: they
                               fail with PMAP_ECANCELED */
};

/* One row of a map's job log (on_log, joblog_fd): an item's outcome. */
typedef struct pmap_log {
    size_t index;           /* the item's input index */
    int worker;             /* index of the worker that ran it last; -1:
                               none did */
    long pid;               /* its process (0: none) */
    int attempts;           /* times the item ran (retries + 1; 0: never) */
    double start;           /* seconds from the map's start to its last
                               run's start (0 if it never ran) */
    double duration;        /* seconds its last run took */
    int error;              /* 0: success, else pmap_failure_t.error */
    int code;               /* pmap_failure_t.code */
} pmap_log_t;

/* Inside on_result of a map with a job log (on_log, joblog_fd or joblog):
 * the log row of the item being handed over; NULL elsewhere. */
PMAP_API const pmap_log_t *pmap_item_log(void);

/* Called once for each item of a map as it finishes, with its log row,
 * before the item's on_result call if it has one then (in input order, its
 * on_result may come later).  Return 0 to go on, nonzero to cancel. */
typedef int (*pmap_log_fn)(void *ctx, const pmap_log_t *row);

/* Options of one map; a zeroed struct means the pool's defaults. */
typedef struct pool_map_options {
    size_t chunk;   /* items per batch; 0: the pool's setting */
    double timeout; /* seconds per item; 0: the pool's setting; < 0: none */
    /* Results to a callback, in input order or (unordered) as they
     * arrive, instead of to an output array (out must then be NULL).
     * Memory stays bounded by `window`: at most max(window, 4 x workers)
     * items are alive at once (produced or sent, and not yet handed
     * over; each worker may hold two batches). */
    pmap_result_fn on_result;
    int unordered;
    size_t window;  /* items; 0: 65,536 */
    pmap_progress_fn on_progress;
    double progress_interval;   /* seconds; 0: 0.1 */
    void *ctx;      /* passed to on_result and on_progress */
    /* On cancellation, kill the workers running items of this map at once
     * (their items fail with PMAP_ECANCELED), without cancel_grace. */
    int kill_on_cancel;
    /* Seconds this map's running items may go on after a cancellation
     * before their workers are killed; 0: the pool's cancel_grace; < 0:
     * let them finish. */
    double cancel_grace;
    /* Per-item output and memory caps (README, "Policies"); 0: the
     * pool's setting. */
    int output;             /* enum pmap_output */
    size_t output_cap;      /* bytes kept per item and stream */
    size_t max_worker_memory;   /* soft cap, checked after each batch of
                                   this map */
    /* ---- Policies (README, "Policies").  Since 0.3. ---- */
    /* Times an item whose worker crashed, exited, timed out or vanished
     * is run again, each time on another process (the one it ran on is
     * gone); 0: the pool's retries; < 0: never. */
    int retries;
    /* Seconds before each such run; 0: the pool's retry_delay. */
    double retry_delay;
    /* Nonzero: an item failed by pmap_fail is retried too (0: the pool's
     * retry_failed). */
    int retry_failed;
    /* Stops the map (enum pmap_halt) at halt_failures failed items, or
     * when halt_fraction (0 < f <= 1) of the items finished so far have
     * failed once at least halt_min have finished; with neither set, at
     * the first failure.  Counted are items failed for good (after their
     * retries), not cancelled ones.  The map then returns PMAP_EHALTED;
     * items never run fail with PMAP_EHALTED; a halt at the map's last
     * item is no halt. */
    int halt;
    size_t halt_failures;
    double halt_fraction;
    size_t halt_min;        /* 0: 10 */
    /* The job log: on_log is called with each item's row (ctx is its
     * first argument); joblog_fd, if nonzero, is a file descriptor plus
     * one (0, the default, means none: pass 1 + fd, e.g. 1 +
     * STDOUT_FILENO), where the rows are written as tab-separated lines
     * under a header line (README, "Policies"), blocking.  The library
     * writes nothing anywhere else. */
    pmap_log_fn on_log;
    int joblog_fd;
    /* Nonzero: keep the log without on_log or joblog_fd, for
     * pmap_item_log in on_result. */
    int joblog;
} pool_map_options_t;

/* A map running in the background (pool_map_async and friends). */
typedef struct pmap_job pmap_job_t;

/*
 * int pool_map(pool_t *pool, fn, size_t n, R *out, args...);
 *
 * Calls fn(args[0][i], args[1][i], ...) for i in 0..n-1 on the pool's
 * workers and stores each result in out[i].  fn must be PMAP_EXPORTed and
 * visible here.  Each argument is an array of at least n elements of the
 * exported type, PMAP_CONST(value), or, for a method's object, &object.
 * Array types, argument count and out's type are checked at compile time.
 *
 * A map of n == 0 items is a map: it returns 0 and runs nothing (out and
 * the arrays may be NULL; on_progress gets its final call, 0 of 0).
 *
 * Returns 0 when all items succeeded; a positive count of failed items (their
 * out[i] are zeroed; pool_failures says which and why); or a negative code:
 * PMAP_EINVAL (NULL pool, out or array with n > 0, n == SIZE_MAX, out
 * given with on_result or neither, a NaN timeout or cancel_grace), PMAP_EBUSY
 * (called from a callback of this pool), PMAP_EFORKED (called in a forked
 * child of the pool's owner), PMAP_ENESTED (called inside a worker, or a
 * callback of an in-process pool),
 * PMAP_ENOFUNC or PMAP_EAMBIGUOUS (fn cannot be identified),
 * PMAP_ECANCELED (the map was cancelled: items not run are in
 * pool_failures), PMAP_ENOMEM.  The pool stays usable after every
 * outcome.
 */
#define pool_map(pool, fn, n, out, ...)                                       \
    PMAP__RUN(fn, PMAP__NARGS(__VA_ARGS__), (out),                            \
              pmap__map_##fn((pool), PMAP__CALL(NULL, NULL, (n)), pmap__out,  \
                             PMAP__INPUTS(fn, __VA_ARGS__)))

/* pool_map with options for this map (opts may be NULL). */
#define pool_map_with(pool, opts, fn, n, out, ...)                            \
    PMAP__RUN(fn, PMAP__NARGS(__VA_ARGS__), (out),                            \
              pmap__map_##fn((pool), PMAP__CALL((opts), NULL, (n)),          \
                             pmap__out, PMAP__INPUTS(fn, __VA_ARGS__)))

/*
 * int pool_map_async(pool, opts, pmap_job_t **job, fn, n, out, args...);
 *
 * Starts the map and returns at once, storing its handle in *job: wait for
 * it with pmap_job_wait, and release it with pmap_job_free.  Its arrays and
 * out must stay valid until it has finished (constants are copied).  Several
 * maps may be outstanding on one pool; they run in the order they were
 * started, and progress whenever the pool is used (any call on it, or
 * pool_poll).
 */
#define pool_map_async(pool, opts, job, fn, n, out, ...)                      \
    PMAP__RUN(fn, PMAP__NARGS(__VA_ARGS__), (out),                            \
              pmap__map_##fn((pool), PMAP__CALL((opts), (job), (n)),         \
                             pmap__out, PMAP__INPUTS(fn, __VA_ARGS__)))

/*
 * int pool_map_stream(pool, opts, fn, producer, void *ctx);
 *
 * Maps fn over items made on demand by
 *     int producer(void *ctx, T1 *a1, ..., Tk *ak)
 * which stores the next item's arguments and returns 1, or returns 0 when
 * there are no more (or a negative code: the map stops with it).  Results go
 * to opts->on_result (required), in input order unless opts->unordered.  At
 * most opts->window items are alive at once, so inputs of any length (the
 * lines of a huge file) run in bounded memory.  Strings and buffers the
 * producer stores are copied before it is called again.
 */
#define pool_map_stream(pool, opts, fn, producer, ctx)                        \
    PMAP__RUN(fn, pmap__nparams_##fn, NULL,                                   \
              pmap__stream_##fn((pool), PMAP__CALL((opts), NULL, 0),         \
                                (producer), (ctx)))

/* pool_map_stream in the background, as pool_map_async. */
#define pool_map_stream_async(pool, opts, job, fn, producer, ctx)             \
    PMAP__RUN(fn, pmap__nparams_##fn, NULL,                                   \
              pmap__stream_##fn((pool), PMAP__CALL((opts), (job), 0),        \
                                (producer), (ctx)))

/*
 * int pool_call(pool, fn, R *out, a1, ..., ak);
 *
 * One call, fn(a1, ..., ak), run on a worker (values, not arrays): pathos'
 * `pipe`, multiprocessing's `apply`.  Returns as pool_map with n = 1.
 */
#define pool_call(pool, fn, out, ...)                                         \
    PMAP__RUN(fn, PMAP__NARGS(__VA_ARGS__), (out),                            \
              pmap__map_##fn((pool), PMAP__CALL(NULL, NULL, 1), pmap__out,   \
                             PMAP__VALUES(fn, __VA_ARGS__)))

/*
 * int pool_call_async(pool, opts, pmap_job_t **job, fn, R *out, a1, ...);
 *
 * pool_call in the background, as pool_map_async: options for this call
 * (opts may be NULL: timeout, on_result, on_progress... apply as to a map
 * of one item).
 */
#define pool_call_async(pool, opts, job, fn, out, ...)                        \
    PMAP__RUN(fn, PMAP__NARGS(__VA_ARGS__), (out),                            \
              pmap__map_##fn((pool), PMAP__CALL((opts), (job), 1), pmap__out, \
                             PMAP__VALUES(fn, __VA_ARGS__)))

/*
 * Waits until the map has finished, at most timeout seconds (< 0: no limit,
 * 0: just look).  Returns what pool_map would have returned, or
 * PMAP_ETIMEDOUT if it has not finished yet (it goes on).  Other maps of the
 * pool progress meanwhile.
 */
PMAP_API int pmap_job_wait(pmap_job_t *job, double timeout);

/*
 * The next finished item of a map of arrays started in the background
 * (pool_map_async, pool_call_async), for a loop over its results as they
 * come (Python's imap, imap_unordered, as_completed):
 *
 *     size_t i;
 *     const pmap_failure_t *f;
 *     while (pmap_job_next(job, &i, &f, -1) > 0)
 *         if (f == NULL) use(out[i]); else report(f);
 *
 * Waits at most timeout seconds (< 0: no limit, 0: just look) for an item,
 * in input order, or in the order they finish with opts->unordered.
 * Returns 1 and stores its index in *index (its result is in out[*index])
 * and in *failure (may be NULL) NULL if it succeeded, or its failure
 * record, valid until the next call or pmap_job_free.  Each item is handed
 * out once; the map keeps two bits an item for this, whatever the order.
 * Returns 0 when every item has been handed out; PMAP_ETIMEDOUT; the map's
 * negative code (as pmap_job_wait) when it stopped with items that never
 * finished (the others are handed out first); PMAP_EINVAL for a NULL job
 * or index, a NaN timeout, or a map whose results go to on_result (a
 * stream, too); PMAP_ECANCELED if the map was released meanwhile
 * (pmap_job_free from a callback); PMAP_EBUSY, PMAP_EFORKED,
 * PMAP_ENESTED as pool_map.  Other maps of the pool progress meanwhile.
 * Since 0.3.
 */
PMAP_API int pmap_job_next(pmap_job_t *job, size_t *index,
                           const pmap_failure_t **failure, double timeout);

/*
 * Asks the map to stop: items not yet started fail with PMAP_ECANCELED;
 * running ones may finish within the map's cancel_grace (0.5 s by
 * default), then their workers are killed and replaced and the items fail
 * with PMAP_ECANCELED.  Only sets a flag and writes a byte, so it is safe
 * in a signal handler and from any thread; a map being waited for stops at
 * once, and pool_fd becomes readable for a program's own loop.
 */
PMAP_API void pmap_job_cancel(pmap_job_t *job);

/* The map's failed items so far, in input order once it has finished; the
 * array is the job's, valid until pmap_job_free. */
PMAP_API size_t pmap_job_failures(const pmap_job_t *job,
                                  const pmap_failure_t **failures);

/* Releases a map's handle; one still running is cancelled (its running
 * items killed) and waited for first.  No callback of the map runs after
 * this returns, even when called from another map's callback (the map is
 * then freed by the pool once it has stopped) or from its own while
 * pmap_job_wait waits for it (that wait then returns, and frees it).
 * NULL is allowed.  A handle is used by one thread at a time: never free
 * one that another thread waits for. */
PMAP_API void pmap_job_free(pmap_job_t *job);

/*
 * Cancels every map running on the pool at this moment, those of every
 * thread, as pmap_job_cancel; maps started later are not affected (a Ctrl-C that
 * lands between two maps cancels neither).  Safe in a signal handler
 * (e.g. SIGINT's, to get control back from a long pool_map: it returns
 * within about cancel_grace, whatever its callbacks do).
 */
PMAP_API void pool_cancel(pool_t *pool);

/*
 * Makes progress on the pool's background maps without blocking: reads the
 * results that arrived, sends more work, hands results and progress to the
 * callbacks.  Stores in *wake (if not NULL) the seconds after which it should
 * be called again even if pool_fd stays quiet (timeouts, progress), or -1.
 * Returns the number of maps that finished during this call, or a negative
 * code.  While another thread runs the pool's loop (in a map or a wait),
 * it returns 0 at once with *wake -1: that thread moves the background maps
 * meanwhile, and pool_fd becomes readable when it stops.
 */
PMAP_API int pool_poll(pool_t *pool, double *wake);

/*
 * A descriptor that becomes readable when pool_poll has work to do, for the
 * caller's own poll/select/epoll loop.  Owned by the pool.  Returns it, or
 * PMAP_ENOSYS where the system has no epoll (then call pool_poll
 * periodically).
 */
PMAP_API int pool_fd(const pool_t *pool);

/*
 * Called by a callback running in a worker: marks the current item failed
 * with code (any value of the caller's choosing) and a printf-style message
 * (truncated to 511 bytes), which reach the caller through pool_failures
 * with the item's index.  The callback should then return; its result is
 * discarded and the worker goes on with the next item.  Returns 0, or
 * PMAP_EINVAL when not called from a callback.
 */
PMAP_API int pmap_fail(int code, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * The failed items of the calling thread's last pool_map (or pool_call, or
 * pool_map_stream) on this pool, in input order: stores the array in
 * *failures (owned by the pool, valid until that thread's next such call
 * or pool_destroy) and returns their number.
 */
PMAP_API size_t pool_failures(const pool_t *pool,
                              const pmap_failure_t **failures);

/* Counters of a pool's work. */
typedef struct pmap_stats {
    uint64_t maps;          /* maps that ran */
    uint64_t items;         /* items finished (results stored or failed) */
    uint64_t failed;        /* items failed */
    uint64_t batches;       /* batches sent to workers */
    uint64_t bytes_sent;    /* bytes written to workers' channels */
    uint64_t bytes_received;/* bytes read from their channels */
    uint64_t busy_ns;       /* time workers spent running items */
    uint64_t wall_ns;       /* from the start to the end of each map */
    uint64_t restarts;      /* workers replaced (died or recycled) */
    uint64_t retries;       /* runs of items again after they failed
                               (retries); since 0.3 */
} pmap_stats_t;

/*
 * Stores the counters of the calling thread's last map waited for in a
 * call on this pool (pool_map, pool_call, pool_map_stream: not background
 * maps, which have pmap_job_stats; before the thread's first, zeroes or
 * those of an ended thread that had its pthread_t) in *last, and those of every map since its creation in
 * *total (either may be NULL).  Returns 0 or PMAP_EINVAL.
 */
PMAP_API int pool_stats(const pool_t *pool, pmap_stats_t *last,
                        pmap_stats_t *total);

/* The counters of one map: live while it runs (items, bytes, batches,
 * busy and wall time so far), final once it has finished. */
PMAP_API int pmap_job_stats(const pmap_job_t *job, pmap_stats_t *stats);

/* Counters of one worker slot of a pool (its current process, and all the
 * processes it had: items, batches, busy time, bytes, restarts). */
typedef struct pmap_worker_stats {
    long pid;               /* its current process, or 0 */
    pmap_stats_t work;      /* maps, wall_ns: unused */
} pmap_worker_stats_t;

/* Stores the counters of worker `worker` (0 <= worker < pool_size). */
PMAP_API int pool_worker_stats(const pool_t *pool, int worker,
                               pmap_worker_stats_t *stats);

/* ------------------------------------------------------------------------ */
/* Inside a worker                                                          */
/* ------------------------------------------------------------------------ */

/* The calling worker's index in its pool (0 <= index < pool_size), or -1
 * outside a worker. */
PMAP_API int pmap_worker_index(void);

/* Inside a callback: the input index of the item it is running (the index
 * pool_failures and on_result give that item; 0 in pool_call), whichever
 * worker runs it and however often it was sent.  -1 outside a callback
 * (in worker_init or worker_exit, in the caller).  Since 0.3; an index
 * above LONG_MAX reads as LONG_MAX. */
PMAP_API long pmap_item_index(void);

/*
 * In on_result of a map with PMAP_OUTPUT_CAPTURE: what the item being
 * handed over wrote to fd (1: stdout, 2: stderr), NUL-terminated, with its
 * size in *size (may be NULL); valid until on_result returns.  NULL (size
 * 0) if it wrote nothing there, or outside such a callback.  Since 0.3.
 */
PMAP_API const char *pmap_item_output(int fd, size_t *size);

/* A pointer of the caller's, kept by the worker for its whole life (set it
 * in worker_init: a database handle, a cache), for its callbacks. */
PMAP_API void pmap_set_worker_state(void *state);
PMAP_API void *pmap_worker_state(void);

/* ------------------------------------------------------------------------ */
/* Internals the macros above expand to.  Not part of the API.              */
/* ------------------------------------------------------------------------ */

enum pmap__kind {
    PMAP__VALUE = 1,        /* sizeof(T) bytes copied as they are */
    PMAP__STRING,           /* const char *: NUL-terminated, borrowed */
    PMAP__STRING_OWNED,     /* char *: as a result, freed by the worker */
    PMAP__BYTES,            /* pmap_bytes_t */
    PMAP__CODEC             /* a value with a PMAP_EXPORT_TYPE (registry.c
                               turns PMAP__VALUE into it) */
};

/* One PMAP_EXPORT_TYPE: built by the macro, linked at load time. */
typedef struct pmap__codec {
    const char *name;       /* the type's spelling */
    size_t size;            /* sizeof the type */
    size_t (*encode)(const void *value, void *buf, size_t size);
    int (*decode)(void *value, const void *data, size_t size);
    void (*release)(void *value);
    struct pmap__codec *next;   /* registry list */
} pmap__codec_t;

typedef struct pmap__type {
    unsigned char kind;     /* enum pmap__kind */
    size_t size;            /* sizeof the C type */
    const char *name;       /* its spelling, #T: how a codec finds it */
    const pmap__codec_t *codec; /* PMAP__CODEC: set by the registry */
} pmap__type_t;

/* One exported function: built by PMAP_EXPORT, linked at load time. */
typedef struct pmap__fn {
    const char *name;
    const char *file;
    int line;
    int nparams;
    int method;             /* params[0] is the object of a method */
    pmap__type_t result;
    pmap__type_t params[PMAP_MAX_ARGS];
    void (*call)(void *result, void *const *argv);
    /* Calls fn on count items, item j's arguments at argv[k] + j *
     * stride[k], its result at result[j]; stores first + j + 1 into *item
     * (a _Atomic uint64_t) before each call, and stops after an item that
     * raised *failed.  Returns the items called. */
    size_t (*run)(void *result, void *const *argv, const size_t *stride,
                  size_t count, uint64_t first, void *item,
                  const volatile unsigned char *failed);
    /* Calls a typed producer, storing the next item into slot[k]. */
    int (*pull)(void (*producer)(void), void *ctx, void *const *slot);
    uint64_t id;            /* set by pmap__register */
    struct pmap__fn *next;  /* registry list */
} pmap__fn_t;

/* One pool_map argument as the caller wrote it. */
typedef struct pmap__arg {
    const void *array;      /* the array, or NULL */
    const void *value;      /* the constant (if is_const) */
    char is_array;
    char is_const;
} pmap__arg_t;

/* How a map was asked for: the macros fill it, pmap__map runs it. */
typedef struct pmap__call {
    const pool_map_options_t *options;
    pmap_job_t **handle;    /* in the background: where its handle goes */
    size_t count;           /* items (arrays) */
    void (*producer)(void); /* items made on demand (then count is 0) */
    void *producer_ctx;
} pmap__call_t;

PMAP_API void pmap__register(pmap__fn_t *fn);
PMAP_API void pmap__unregister(pmap__fn_t *fn);
PMAP_API void pmap__register_type(pmap__codec_t *codec);
PMAP_API void pmap__unregister_type(pmap__codec_t *codec);
PMAP_API int pmap__map(pool_t *pool, const pmap__call_t *call,
                       const pmap__fn_t *fn, void *out, int nargs,
                       const pmap__arg_t *args);

#define PMAP__CAT(a, b) PMAP__CAT_(a, b)
#define PMAP__CAT_(a, b) a##b
#define PMAP__COMMA() ,
#define PMAP__NOTHING()

#ifndef __cplusplus
#define PMAP__KIND(T)                                                         \
    _Generic(*(T *)0, char *: PMAP__STRING_OWNED,                             \
             const char *: PMAP__STRING,                                      \
             pmap_bytes_t: PMAP__BYTES,                                       \
             default: PMAP__VALUE)
#define PMAP__CALL(opts, job, n)                                              \
    (&(pmap__call_t){.options = (opts), .handle = (job), .count = (n)})
#else
/* C++: templates where C has _Generic, compound literals and designated
 * initializers. */
}   /* extern "C" */
template <class T> struct pmap__kind_of {
    static const unsigned char value = PMAP__VALUE;
};
template <> struct pmap__kind_of<char *> {
    static const unsigned char value = PMAP__STRING_OWNED;
};
template <> struct pmap__kind_of<const char *> {
    static const unsigned char value = PMAP__STRING;
};
template <> struct pmap__kind_of<pmap_bytes_t> {
    static const unsigned char value = PMAP__BYTES;
};
/* PMAP_CONST(v): by value, so that an array (a string literal) decays. */
template <class V> struct pmap__const {
    V value;
};
template <class V> inline pmap__const<V> pmap__constant(V v)
{
    pmap__const<V> c = {v};
    return c;
}
inline pmap__call_t pmap__call_of(const pool_map_options_t *options,
                                  pmap_job_t **handle, size_t count)
{
    pmap__call_t c = {options, handle, count, nullptr, nullptr};
    return c;
}
/* The address of a temporary, alive until the end of the full expression
 * (the call it is passed to). */
inline const pmap__call_t *pmap__call_ptr(const pmap__call_t &call)
{
    return &call;
}
extern "C" {
#define PMAP__KIND(T) pmap__kind_of<T>::value
#define PMAP__CALL(opts, job, n)                                              \
    pmap__call_ptr(pmap__call_of((opts), (job), (n)))
#endif

/*
 * PMAP__EACH(m, c, sep, a0, a1, ...) expands to
 * m(c, 0, a0) sep() m(c, 1, a1) sep() ...
 */
#define PMAP__NARGS(...)                                                      \
    PMAP__NARGS_(__VA_ARGS__, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4,   \
                 3, 2, 1, ~)
#define PMAP__NARGS_(a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, \
                     a14, a15, a16, n, ...) n
#define PMAP__EACH(m, c, s, ...)                                              \
    PMAP__CAT(PMAP__EACH_, PMAP__NARGS(__VA_ARGS__))(m, c, s, __VA_ARGS__)
#define PMAP__EACH_1(m, c, s, a) m(c, 0, a)
#define PMAP__EACH_2(m, c, s, a, b) PMAP__EACH_1(m, c, s, a) s() m(c, 1, b)
#define PMAP__EACH_3(m, c, s, a, b, d)                                        \
    PMAP__EACH_2(m, c, s, a, b) s() m(c, 2, d)
#define PMAP__EACH_4(m, c, s, a, b, d, e)                                     \
    PMAP__EACH_3(m, c, s, a, b, d) s() m(c, 3, e)
#define PMAP__EACH_5(m, c, s, a, b, d, e, f)                                  \
    PMAP__EACH_4(m, c, s, a, b, d, e) s() m(c, 4, f)
#define PMAP__EACH_6(m, c, s, a, b, d, e, f, g)                               \
    PMAP__EACH_5(m, c, s, a, b, d, e, f) s() m(c, 5, g)
#define PMAP__EACH_7(m, c, s, a, b, d, e, f, g, h)                            \
    PMAP__EACH_6(m, c, s, a, b, d, e, f, g) s() m(c, 6, h)
#define PMAP__EACH_8(m, c, s, a, b, d, e, f, g, h, i)                         \
    PMAP__EACH_7(m, c, s, a, b, d, e, f, g, h) s() m(c, 7, i)
#define PMAP__EACH_9(m, c, s, a, b, d, e, f, g, h, i, j)                      \
    PMAP__EACH_8(m, c, s, a, b, d, e, f, g, h, i) s() m(c, 8, j)
#define PMAP__EACH_10(m, c, s, a, b, d, e, f, g, h, i, j, k)                  \
    PMAP__EACH_9(m, c, s, a, b, d, e, f, g, h, i, j) s() m(c, 9, k)
#define PMAP__EACH_11(m, c, s, a, b, d, e, f, g, h, i, j, k, l)               \
    PMAP__EACH_10(m, c, s, a, b, d, e, f, g, h, i, j, k) s() m(c, 10, l)
#define PMAP__EACH_12(m, c, s, a, b, d, e, f, g, h, i, j, k, l, o)            \
    PMAP__EACH_11(m, c, s, a, b, d, e, f, g, h, i, j, k, l) s() m(c, 11, o)
#define PMAP__EACH_13(m, c, s, a, b, d, e, f, g, h, i, j, k, l, o, p)         \
    PMAP__EACH_12(m, c, s, a, b, d, e, f, g, h, i, j, k, l, o) s()           \
        m(c, 12, p)
#define PMAP__EACH_14(m, c, s, a, b, d, e, f, g, h, i, j, k, l, o, p, q)      \
    PMAP__EACH_13(m, c, s, a, b, d, e, f, g, h, i, j, k, l, o, p) s()        \
        m(c, 13, q)
#define PMAP__EACH_15(m, c, s, a, b, d, e, f, g, h, i, j, k, l, o, p, q, r)   \
    PMAP__EACH_14(m, c, s, a, b, d, e, f, g, h, i, j, k, l, o, p, q) s()     \
        m(c, 14, r)
#define PMAP__EACH_16(m, c, s, a, b, d, e, f, g, h, i, j, k, l, o, p, q, r,   \
                      t)                                                      \
    PMAP__EACH_15(m, c, s, a, b, d, e, f, g, h, i, j, k, l, o, p, q, r) s()  \
        m(c, 15, t)

/*
 * Per parameter k of fn: its type, and the struct a pool_map argument
 * initializes.  `array` takes a bare array; PMAP_CONST's `.value =` takes a
 * constant.  The leading designator keeps -Wmissing-field-initializers quiet
 * and the trailing 1 lands in is_array or is_const, whichever follows the
 * member that was set, so the two forms can be told apart.  In C++, two
 * constructors tell them apart.
 */
#ifndef __cplusplus
#define PMAP__PARAM_TYPES(fn, k, T)                                           \
    typedef T pmap__t_##fn##_##k;                                             \
    typedef struct {                                                          \
        char pad;                                                             \
        const pmap__t_##fn##_##k *array;                                      \
        char is_array;                                                        \
        pmap__t_##fn##_##k value;                                             \
        char is_const;                                                        \
    } pmap__in_##fn##_##k;
#define PMAP__INPUT(fn, k, a) (pmap__in_##fn##_##k){.pad = 0, a, 1}
#define PMAP__VALUE_INPUT(fn, k, a)                                           \
    (pmap__in_##fn##_##k){.pad = 0, .value = (a), 1}
#else
#define PMAP__PARAM_TYPES(fn, k, T)                                           \
    typedef T pmap__t_##fn##_##k;                                             \
    extern "C++" {                                                            \
    struct pmap__in_##fn##_##k {                                              \
        const pmap__t_##fn##_##k *array;                                      \
        pmap__t_##fn##_##k value;                                             \
        char is_array;                                                        \
        char is_const;                                                        \
        pmap__in_##fn##_##k(const pmap__t_##fn##_##k *a)                      \
            : array(a), value(), is_array(1), is_const(0)                     \
        {                                                                     \
        }                                                                     \
        template <class V>                                                    \
        pmap__in_##fn##_##k(const pmap__const<V> &c)                          \
            : array(nullptr), value(c.value), is_array(0), is_const(1)        \
        {                                                                     \
        }                                                                     \
    };                                                                        \
    }
#define PMAP__INPUT(fn, k, a) pmap__in_##fn##_##k(a)
#define PMAP__VALUE_INPUT(fn, k, a) pmap__in_##fn##_##k(pmap__constant(a))
#endif
#define PMAP__INPUTS(fn, ...)                                                 \
    PMAP__EACH(PMAP__INPUT, fn, PMAP__COMMA, __VA_ARGS__)
#define PMAP__VALUES(fn, ...)                                                 \
    PMAP__EACH(PMAP__VALUE_INPUT, fn, PMAP__COMMA, __VA_ARGS__)
#define PMAP__SLOT_TYPE(fn, k, T) pmap__t_##fn##_##k *
#define PMAP__SLOT(fn, k, T) (pmap__t_##fn##_##k *)slot[k]
#define PMAP__ARG_FROM_INPUT(fn, k, T)                                        \
    {in##k.array, &in##k.value, in##k.is_array, in##k.is_const}
#define PMAP__INPUT_PARAM(fn, k, T) pmap__in_##fn##_##k in##k
#define PMAP__DEREF(fn, k, T) *(pmap__t_##fn##_##k *)argv[k]
#define PMAP__RUN_LOCAL(fn, k, T)                                             \
    char *const pmap__a##k = (char *)pmap__argv[k];                           \
    const size_t pmap__s##k = pmap__stride[k];
#define PMAP__RUN_ARG(fn, k, T)                                               \
    *(pmap__t_##fn##_##k *)(pmap__a##k + pmap__j * pmap__s##k)
#define PMAP__TYPE_DESC(fn, k, T) {PMAP__KIND(T), sizeof(T), #T, 0}

/*
 * PMAP_EXPORT with its types declares and defines at once, all static (two
 * files may export static functions of the same name); with the name alone
 * it defines what a header's PMAP_DECLARE declared.  PMAP__ONE tells the two
 * apart by the number of arguments.
 */
#define PMAP__ONE(...)                                                        \
    PMAP__ONE_(__VA_ARGS__, N, N, N, N, N, N, N, N, N, N, N, N, N, N, N, N,   \
               N, N, 1, ~)
#define PMAP__ONE_(a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13,   \
                   a14, a15, a16, a17, a18, a19, n, ...) n
#define PMAP__EXPORT_1(method, ref0, fn)                                      \
    pmap__fn_t pmap_export__##fn;                                             \
    PMAP__REGISTER(fn)
#define PMAP__EXPORT_N(method, ref0, fn, R, ...)                              \
    PMAP__DECLARE(fn, R, method, ref0, static, __VA_ARGS__);                  \
    PMAP__REGISTER(fn)
#define PMAP__HIDDEN __attribute__((visibility("hidden")))

/*
 * Everything a file needs to map fn: its types, its descriptor's
 * declaration (pmap_export__fn, static or defined by PMAP_EXPORT(fn)), the code that
 * calls it in a worker, and the typed entry points the pool_map macros
 * call.  Its first line makes a full PMAP_EXPORT after a PMAP_DECLARE of
 * the same function in one file fail first with a name saying why.
 */
#define PMAP__DECLARE(fn, R, method, ref0, storage, ...)                      \
    enum { fn##_was_PMAP_DECLAREd__export_it_by_name_alone = 1 };             \
    enum { pmap__nparams_##fn = PMAP__NARGS(__VA_ARGS__) };                   \
    typedef char fn##_is_not_exported__use_PMAP_EXPORT;                       \
    PMAP__EACH(PMAP__PARAM_TYPES, fn, PMAP__NOTHING, __VA_ARGS__)             \
    typedef R pmap__r_##fn;                                                   \
    typedef int (*pmap__producer_##fn)(                                       \
        void *, PMAP__EACH(PMAP__SLOT_TYPE, fn, PMAP__COMMA, __VA_ARGS__));   \
    storage pmap__fn_t pmap_export__##fn;                                     \
    __attribute__((unused)) static void pmap__call_##fn(void *result,         \
                                                        void *const *argv)   \
    {                                                                         \
        *(R *)result =                                                        \
            fn(ref0 PMAP__EACH(PMAP__DEREF, fn, PMAP__COMMA, __VA_ARGS__));   \
    }                                                                         \
    /* A batch in one call: fn inlined in the loop, the arguments' places   \
     * in registers (see pmap__fn_t's run). */                                \
    __attribute__((unused)) static size_t pmap__run_##fn(                    \
        void *pmap__result, void *const *pmap__argv,                          \
        const size_t *pmap__stride, size_t pmap__count, uint64_t pmap__first, \
        void *pmap__item, const volatile unsigned char *pmap__failed)         \
    {                                                                         \
        PMAP__EACH(PMAP__RUN_LOCAL, fn, PMAP__NOTHING, __VA_ARGS__)           \
        pmap__r_##fn *pmap__out = (pmap__r_##fn *)pmap__result;               \
        for (size_t pmap__j = 0; pmap__j < pmap__count; pmap__j++) {          \
            __atomic_store_n((uint64_t *)pmap__item,                          \
                             pmap__first + pmap__j + 1, __ATOMIC_RELEASE);    \
            pmap__out[pmap__j] = fn(                                          \
                ref0 PMAP__EACH(PMAP__RUN_ARG, fn, PMAP__COMMA, __VA_ARGS__)); \
            if (*pmap__failed)                                                \
                return pmap__j + 1;                                           \
        }                                                                     \
        return pmap__count;                                                   \
    }                                                                         \
    __attribute__((unused)) static int pmap__pull_##fn(                       \
        void (*producer)(void), void *ctx, void *const *slot)                 \
    {                                                                         \
        return ((pmap__producer_##fn)producer)(                               \
            ctx, PMAP__EACH(PMAP__SLOT, fn, PMAP__COMMA, __VA_ARGS__));       \
    }                                                                         \
    __attribute__((unused)) static void pmap__describe_##fn(                  \
        pmap__fn_t *f, const char *file, int line)                            \
    {                                                                         \
        const pmap__fn_t d = {                                                \
            #fn, file, line, PMAP__NARGS(__VA_ARGS__), method,                \
            PMAP__TYPE_DESC(fn, r, R),                                        \
            {PMAP__EACH(PMAP__TYPE_DESC, fn, PMAP__COMMA, __VA_ARGS__)},      \
            pmap__call_##fn, pmap__run_##fn, pmap__pull_##fn, 0, 0};          \
        *f = d;                                                               \
    }                                                                         \
    __attribute__((unused)) static inline int pmap__map_##fn(                 \
        pool_t *pool, const pmap__call_t *call, pmap__r_##fn *out,            \
        PMAP__EACH(PMAP__INPUT_PARAM, fn, PMAP__COMMA, __VA_ARGS__))          \
    {                                                                         \
        const pmap__arg_t args[] = {                                          \
            PMAP__EACH(PMAP__ARG_FROM_INPUT, fn, PMAP__COMMA, __VA_ARGS__)};  \
        return pmap__map(pool, call, &pmap_export__##fn, out,                 \
                         PMAP__NARGS(__VA_ARGS__), args);                     \
    }                                                                         \
    __attribute__((unused)) static inline int pmap__stream_##fn(              \
        pool_t *pool, const pmap__call_t *call, pmap__producer_##fn producer, \
        void *ctx)                                                            \
    {                                                                         \
        pmap__call_t c = *call;                                               \
        c.producer = (void (*)(void))producer;                                \
        c.producer_ctx = ctx;                                                 \
        return pmap__map(pool, &c, &pmap_export__##fn, NULL, 0, NULL);        \
    }                                                                         \
    typedef int pmap__declared_##fn /* swallows the caller's ';' */

/* Fills and registers the descriptor while the program loads (file and
 * line are the export's: with the name, they identify fn to the workers). */
#define PMAP__REGISTER(fn)                                                    \
    __attribute__((constructor)) static void pmap__load_##fn(void)            \
    {                                                                         \
        pmap__describe_##fn(&pmap_export__##fn, __FILE__, __LINE__);          \
        pmap__register(&pmap_export__##fn);                                   \
    }                                                                         \
    __attribute__((destructor)) static void pmap__unload_##fn(void)           \
    {                                                                         \
        pmap__unregister(&pmap_export__##fn);                                 \
    }                                                                         \
    typedef int pmap__exported_##fn /* swallows the caller's ';' */

/*
 * PMAP_EXPORT_TYPE's codec: the user's functions called through wrappers of
 * one type (their own types are checked here, and no call goes through a
 * pointer of another type), registered while the program loads.  Names are
 * made unique in the file by the line; T is spelled after expansion, as in
 * PMAP__TYPE_DESC.
 */
#define PMAP__EXPORT_TYPE(T, encode, decode, release, line)                   \
    PMAP__EXPORT_TYPE_(T, encode, decode, release, line)
#define PMAP__EXPORT_TYPE_(T, encode, decode, release, line)                  \
    static size_t pmap__encode_##line(const void *v, void *buf, size_t size)  \
    {                                                                         \
        size_t (*f)(const T *, void *, size_t) = encode;                      \
        return f((const T *)v, buf, size);                                    \
    }                                                                         \
    static int pmap__decode_##line(void *v, const void *data, size_t size)    \
    {                                                                         \
        int (*f)(T *, const void *, size_t) = decode;                         \
        return f((T *)v, data, size);                                         \
    }                                                                         \
    static void pmap__release_##line(void *v)                                 \
    {                                                                         \
        void (*f)(T *) = release;                                             \
        if (f != 0)                                                           \
            f((T *)v);                                                        \
    }                                                                         \
    static pmap__codec_t pmap__codec_##line = {                               \
        #T, sizeof(T), pmap__encode_##line, pmap__decode_##line,              \
        pmap__release_##line, 0};                                             \
    __attribute__((constructor)) static void pmap__load_codec_##line(void)   \
    {                                                                         \
        pmap__register_type(&pmap__codec_##line);                             \
    }                                                                         \
    __attribute__((destructor)) static void pmap__unload_codec_##line(void)  \
    {                                                                         \
        pmap__unregister_type(&pmap__codec_##line);                           \
    }                                                                         \
    typedef int pmap__codec_exported_##line /* swallows the caller's ';' */

/*
 * The body of every pool_map macro: a name the compiler complains about
 * first when fn cannot be mapped here, the count of arguments (nargs)
 * checked, then out and the call (which takes out as pmap__out), with
 * mismatched array, output and argument types made errors (as gcc 14 does
 * by default, whatever the caller's flags: a wrong type is a misread of
 * memory).
 */
#ifndef __cplusplus
#define PMAP__RUN(fn, nargs, out, call)                                       \
    __extension__({                                                           \
        (void)sizeof(fn##_is_not_exported__use_PMAP_EXPORT);                  \
        _Static_assert((nargs) == pmap__nparams_##fn,                         \
                       "pool_map(" #fn ", ...): wrong number of arguments");  \
        _Pragma("GCC diagnostic push")                                        \
        _Pragma("GCC diagnostic error \"-Wincompatible-pointer-types\"")     \
        _Pragma("GCC diagnostic error \"-Wint-conversion\"")                 \
        _Pragma("GCC diagnostic error \"-Wimplicit-function-declaration\"")  \
        pmap__r_##fn *pmap__out = (out);                                      \
        (void)pmap__out;                                                      \
        int pmap__rc = call;                                                  \
        _Pragma("GCC diagnostic pop")                                         \
        pmap__rc;                                                             \
    })
#else
#define PMAP__RUN(fn, nargs, out, call)                                       \
    (static_cast<void>(sizeof(fn##_is_not_exported__use_PMAP_EXPORT)),        \
     [&]() -> int {                                                           \
         static_assert((nargs) == pmap__nparams_##fn,                         \
                       "pool_map(" #fn ", ...): wrong number of arguments");  \
         pmap__r_##fn *pmap__out = (out);                                     \
         (void)pmap__out;                                                     \
         return call;                                                         \
     }())
#endif

#ifdef __cplusplus
}
#endif

#endif /* PMAP_H */
