/* SPDX-License-Identifier: MIT */
/*
 * capture.c - what a worker process does for its map's policies, around
 * the calls (README, "Policies"):
 *
 *  - per-item output: for a map that groups or captures it, the worker's
 *    fds 1 and 2 point, for the length of a batch, at two files of its own
 *    (memfd, or an unlinked temporary file), drained after every item into
 *    the OUTPUT frame that precedes the batch's RESULT.  Whatever writes
 *    there is caught: stdio, write(2), the child processes a callback runs;
 *  - crash reports: a handler on the worker's own alternate stack, for the
 *    signals of a fault, writes the signal's name, the faulting address,
 *    the tail of the item's captured stderr and a backtrace (stack.c) into
 *    the worker's arena (async-signal-safe: no malloc, no stdio, numbers
 *    formatted by hand), then lets the signal kill the worker as it would
 *    have: the caller still sees the real signal, and reads the report
 *    before it unmaps the arena (loop.c).  Only ever installed in a worker
 *    process: never in the caller, never in process;
 *  - memory: the hard limit (RLIMIT_AS) set when the worker starts, and its
 *    resident size noted in its slot after a batch, for the soft cap.
 */
/* sigaltstack, SA_ONSTACK and memfd_create are XSI or Linux, beyond
 * POSIX.1-2008's base: asked for in this file only. */
#define _GNU_SOURCE
#include "pmap_internal.h"

#include <stdatomic.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* glibc's backtrace_symbols_fd, where there is one (not on every POSIX
 * libc): it names each frame's object and function without allocating. */
#if defined(__GLIBC__) && defined(__has_include)
#if __has_include(<execinfo.h>)
#include <execinfo.h>
#define HAVE_BACKTRACE_SYMBOLS 1
#endif
#endif
#ifndef HAVE_BACKTRACE_SYMBOLS
#define HAVE_BACKTRACE_SYMBOLS 0
#endif

#if defined(__GLIBC__)
#include <stdio_ext.h>      /* __fpending */
#endif

#define BACKTRACE_FRAMES 48
#define STDERR_TAIL 2048    /* bytes of captured stderr in a crash report */

static struct {
    unsigned char *arena;   /* the worker's: where a report goes */
    pid_t pid;              /* the worker (not a child a callback forked) */
    uint64_t limit;         /* its memory limit, or 0 */
    int files[2];           /* where fds 1 and 2 go while capturing */
    int saved[2];           /* fds 1 and 2 of before, while capturing */
    volatile sig_atomic_t capturing;
    atomic_int reporting;   /* the signal being reported, or 0 */
} cap = {NULL, 0, 0, {-1, -1}, {-1, -1}, 0, 0};

/* ---- crash reports ------------------------------------------------------ */

static const int fatal_signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE,
                                    SIGABRT, SIGTRAP, SIGSYS};

/* Text being written into the report, never past its end. */
typedef struct text {
    char *p;
    size_t left;
} text_t;

static void put(text_t *t, const char *s, size_t n)
{
    if (n > t->left)
        n = t->left;
    memcpy(t->p, s, n);
    t->p += n;
    t->left -= n;
}

static void put_str(text_t *t, const char *s)
{
    put(t, s, strlen(s));
}

static void put_num(text_t *t, uint64_t v, unsigned base)
{
    char buf[24];
    size_t i = sizeof buf;
    do {
        buf[--i] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v != 0);
    if (base == 16)
        put_str(t, "0x");
    put(t, buf + i, sizeof buf - i);
}

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGSEGV: return "SIGSEGV (segmentation fault";
    case SIGBUS: return "SIGBUS (bus error";
    case SIGILL: return "SIGILL (illegal instruction";
    case SIGFPE: return "SIGFPE (arithmetic exception";
    case SIGABRT: return "SIGABRT (aborted";
    case SIGTRAP: return "SIGTRAP (trace trap";
    case SIGSYS: return "SIGSYS (bad system call";
    default: return "signal (";
    }
}

/* What the kernel says of a fault, where it says something useful. */
static const char *fault_kind(int sig, int code)
{
    if (sig == SIGSEGV && code == SEGV_MAPERR)
        return ": address not mapped";
    if (sig == SIGSEGV && code == SEGV_ACCERR)
        return ": access not permitted";
    if (sig == SIGBUS && code == BUS_ADRALN)
        return ": misaligned address";
    if (sig == SIGBUS && code == BUS_ADRERR)
        return ": no such physical address (a file mapped past its end?)";
    if (sig == SIGFPE && code == FPE_INTDIV)
        return ": integer divide by zero";
    if (code <= 0)
        return ": sent by a process";
    return "";
}

static bool has_address(int sig, int code)
{
    return code > 0 && (sig == SIGSEGV || sig == SIGBUS || sig == SIGILL ||
                        sig == SIGFPE);
}

/* The stack (stack.c), each frame as backtrace_symbols_fd writes it where
 * there is one (glibc: "object(symbol+offset) [address]"), to a pipe made
 * now (not when the worker starts: two system calls less for every new
 * worker; pipe and fcntl may be called from a signal handler),
 * non-blocking so that what does not fit is dropped; elsewhere its
 * address. */
static void put_backtrace(text_t *t)
{
    void *frames[BACKTRACE_FRAMES];
    int n = pmap__stack_walk(frames, BACKTRACE_FRAMES);
    if (n == 0)
        return;
    put_str(t, "backtrace:\n");
#if HAVE_BACKTRACE_SYMBOLS
    int fds[2];
    if (pmap__pipe_open(fds) < 0)
        return;
    backtrace_symbols_fd(frames, n, fds[1]);
    ssize_t got;
    while (t->left > 0 && (got = read(fds[0], t->p, t->left)) > 0) {
        t->p += got;
        t->left -= (size_t)got;
    }
    close(fds[0]);
    close(fds[1]);
#else
    for (int i = 0; i < n; i++) {
        put_str(t, "[");
        put_num(t, (uint64_t)(uintptr_t)frames[i], 16);
        put_str(t, "]\n");
    }
#endif
}

/* The tail of what the running item wrote to its captured stderr. */
static void put_stderr_tail(text_t *t)
{
    struct stat st;
    int fd = cap.files[1];
    if (!cap.capturing || fd < 0 || fstat(fd, &st) != 0 || st.st_size <= 0)
        return;
    size_t n = (size_t)st.st_size < STDERR_TAIL ? (size_t)st.st_size
                                                 : STDERR_TAIL;
    n = n < t->left ? n : t->left;
    put_str(t, "stderr (last ");
    put_num(t, n, 10);
    put_str(t, " bytes):\n");
    n = n < t->left ? n : t->left;
    ssize_t got = pread(fd, t->p, n, st.st_size - (off_t)n);
    if (got > 0) {
        t->p += got;
        t->left -= (size_t)got;
    }
}

/* Makes what t holds so far the report the caller reads: each part is
 * published as it is done, so that a fault in the next (the unwinder
 * reading a stack the callback wrecked), which kills the worker at once,
 * loses only that part. */
static void publish(pmap__report_t *r, text_t *t)
{
    *t->p = '\0';
    atomic_store_explicit(&r->length, (uint32_t)(t->p - r->text),
                          memory_order_release);
}

static void write_report(int sig, const siginfo_t *info, int err)
{
    pmap__report_t *r = (pmap__report_t *)(void *)(cap.arena +
                                                   PMAP__REPORT_AT);
    if (atomic_load_explicit(&r->length, memory_order_relaxed) != 0)
        return;     /* a fault while reporting: only the first counts */
    text_t t = {r->text, PMAP__ARENA_HEAD - PMAP__REPORT_AT - sizeof *r - 1};
    bool oom = cap.limit != 0 && err == ENOMEM;
    if (oom) {
        put_str(&t, "memory limit of ");
        put_num(&t, cap.limit, 10);
        put_str(&t, " bytes reached (an allocation failed), then ");
    }
    put_str(&t, signal_name(sig));
    put_str(&t, fault_kind(sig, info->si_code));
    put_str(&t, ")");
    if (has_address(sig, info->si_code)) {
        put_str(&t, " at address ");
        put_num(&t, (uint64_t)(uintptr_t)info->si_addr, 16);
    }
    put_str(&t, "\n");
    r->out_of_memory = oom;
    r->signal = (uint32_t)sig;
    publish(r, &t);
    put_stderr_tail(&t);
    publish(r, &t);
    put_backtrace(&t);
    publish(r, &t);
}

/* Dies of sig, by its default action, now. */
static _Noreturn void die_of(int sig)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    raise(sig);     /* pending: blocked in its own handler */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);   /* delivered here */
    _exit(128 + sig);   /* not reached */
}

/*
 * One report a worker: a fault while it is written (its backtrace, walking
 * a wrecked stack) runs this handler again for another signal, as does a
 * fatal signal of another of the callback's threads meanwhile, and the
 * worker then dies at once of the signal being reported, the one its
 * report names; what the report published so far stands.  (A fault of the
 * same signal kills it at once without a handler: that one is blocked.)
 */
static void on_fatal(int sig, siginfo_t *info, void *context)
{
    (void)context;
    int err = errno;
    int reported = atomic_exchange(&cap.reporting, sig);
    if (reported != 0)
        die_of(reported);
    if (getpid() == cap.pid)    /* not a child forked by a callback */
        write_report(sig, info, err);
    die_of(sig);
}

/* In the process that forks workers (the caller, the fork server), before
 * it does: every worker forked later has the unwinder of its crash report
 * ready (stack.c). */
void pmap__crash_prepare(void)
{
    pmap__stack_prepare();
}

/* Installs the crash handler in this worker process, on its own stack (a
 * stack overflow is reported too). */
void pmap__crash_arm(unsigned char *arena)
{
    cap.arena = arena;
    cap.pid = pmap__self();
    pmap__crash_prepare();  /* already done, unless forked otherwise */
    /* Its stack is in the worker's arena, mapped already: an mmap of its
     * own was a system call more for every new worker (and 64 KiB of
     * .bss would put other variables a page further, a fault more). */
    int on_stack = 0;
    if (arena != NULL) {
        stack_t ss;
        memset(&ss, 0, sizeof ss);
        ss.ss_sp = arena + PMAP__ALTSTACK_AT;
        ss.ss_size = PMAP__ALTSTACK_SIZE;
        on_stack = sigaltstack(&ss, NULL) == 0 ? SA_ONSTACK : 0;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fatal;
    sa.sa_flags = SA_SIGINFO | on_stack;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof fatal_signals / sizeof *fatal_signals; i++)
        sigaction(fatal_signals[i], &sa, NULL);
}

/* ---- memory ------------------------------------------------------------- */

/* Sets the worker's hard memory limit, if the caller gave one: its
 * address space, so that an allocation past it fails here (malloc returns
 * NULL) instead of the system running out. */
void pmap__memory_limit_apply(const unsigned char *arena)
{
    const pmap__slot_t *slot = (const pmap__slot_t *)(const void *)arena;
    cap.limit = slot->memory_limit;
    struct rlimit rl;
    if (cap.limit == 0 || getrlimit(RLIMIT_AS, &rl) != 0)
        return;
    rlim_t want = (rlim_t)cap.limit;
    if (rl.rlim_max != RLIM_INFINITY && want > rl.rlim_max)
        want = rl.rlim_max;
    rl.rlim_cur = want;
    setrlimit(RLIMIT_AS, &rl);
}

/* This process's resident bytes now (Linux), or at most so far. */
static uint64_t resident_bytes(void)
{
#ifdef __linux__
    char buf[128];
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n > 0) {
            buf[n] = '\0';
            char *p = strchr(buf, ' ');
            if (p != NULL)
                return strtoull(p + 1, NULL, 10) *
                       (uint64_t)sysconf(_SC_PAGESIZE);
        }
    }
#endif
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (uint64_t)ru.ru_maxrss * 1024;   /* KiB on Linux and the BSDs */
}

/* Notes the resident size in the slot, for the caller's soft cap. */
void pmap__memory_note(unsigned char *arena)
{
    pmap__slot_t *slot = pmap__arena_state(arena);
    atomic_store_explicit(&slot->rss, resident_bytes(), memory_order_relaxed);
}

/* ---- per-item output ---------------------------------------------------- */

/* Passed-through output: what stdio holds of the item is written now, so
 * that it is neither lost nor cut by the next item's. */
void pmap__flush_item(void)
{
#if defined(__GLIBC__)
    if (__fpending(stdout) == 0 && __fpending(stderr) == 0)
        return;     /* the common case, without taking stdio's locks */
#endif
    fflush(stdout);
    fflush(stderr);
}

/* A file of the worker's own, close-on-exec and above 2 (fds 1 and 2
 * are pointed at it): a memfd, or an unlinked temporary file. */
static int capture_file(void)
{
    int fd;
#if defined(__linux__) && defined(MFD_CLOEXEC)
    fd = pmap__fd_sanitize(memfd_create("pmap-output", MFD_CLOEXEC), true);
    if (fd >= 0)
        return fd;
#endif
    const char *dir = getenv("TMPDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/pmap-output-XXXXXX",
             dir != NULL && *dir != '\0' ? dir : "/tmp");
    fd = mkstemp(path);
    if (fd >= 0)
        unlink(path);
    return pmap__fd_sanitize(fd, false);
}

static void empty_file(int fd)
{
    if (ftruncate(fd, 0) != 0) {
        /* a file that cannot shrink: its offset still starts over */
    }
    lseek(fd, 0, SEEK_SET);
}

/*
 * Points fds 1 and 2 at the capture files, for a batch.  Returns 0, or a
 * negative code (the batch then passes its output through).
 */
int pmap__capture_begin(void)
{
    for (int i = 0; i < 2; i++) {
        if (cap.files[i] < 0 && (cap.files[i] = capture_file()) < 0) {
            int rc = cap.files[i];
            cap.files[i] = -1;
            return rc;
        }
    }
    fflush(stdout);
    fflush(stderr);
    for (int i = 0; i < 2; i++) {
        cap.saved[i] = fcntl(i + 1, F_DUPFD_CLOEXEC, 3);   /* -1: closed */
        empty_file(cap.files[i]);
        dup2(cap.files[i], i + 1);
    }
    cap.capturing = 1;
    return 0;
}

/* Reads the last n bytes of capture file i (of size bytes) into dst. */
static void read_tail(int i, size_t size, size_t n, unsigned char *dst)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(cap.files[i], dst + got, n - got,
                          (off_t)(size - n + got));
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    memset(dst + got, 0, n - got);
}

/*
 * After item index: appends what it wrote, if anything, to *into as an
 * OUTPUT record (u64 index | u64 stdout length | u64 stderr length | the
 * bytes of each, padded), the last `keep` bytes of each stream, and empties
 * the files for the next item.  Returns 0 or PMAP_ENOMEM.
 */
int pmap__capture_take(size_t keep, uint64_t index, pmap__buf_t *into)
{
    fflush(stdout);
    fflush(stderr);
    size_t size[2], n[2];
    for (int i = 0; i < 2; i++) {
        struct stat st;
        size[i] = fstat(cap.files[i], &st) == 0 && st.st_size > 0
                      ? (size_t)st.st_size : 0;
        n[i] = size[i] < keep ? size[i] : keep;
    }
    if (size[0] == 0 && size[1] == 0)
        return 0;
    uint64_t head[3] = {index, n[0], n[1]};
    if (pmap__buf_put(into, head, sizeof head) < 0)
        return PMAP_ENOMEM;
    for (int i = 0; i < 2; i++) {
        unsigned char *dst = pmap__buf_append(into, pmap__pad(n[i]));
        if (dst == NULL)
            return PMAP_ENOMEM;
        read_tail(i, size[i], n[i], dst);
        memset(dst + n[i], 0, pmap__pad(n[i]) - n[i]);
        empty_file(cap.files[i]);
    }
    return 0;
}

/* Gives fds 1 and 2 back, after a batch. */
void pmap__capture_end(void)
{
    fflush(stdout);
    fflush(stderr);
    cap.capturing = 0;
    for (int i = 0; i < 2; i++) {
        if (cap.saved[i] >= 0) {
            dup2(cap.saved[i], i + 1);
            close(cap.saved[i]);
        } else {
            close(i + 1);
        }
        cap.saved[i] = -1;
    }
}
