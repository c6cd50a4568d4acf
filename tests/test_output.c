/* SPDX-License-Identifier: MIT */
/*
 * test_output.c - per-item output, crash reports and memory caps (README,
 * "Policies"): output written with stdio, write(2) and by child processes
 * is grouped in input order or captured per item, in every form of map and
 * with both start methods; a crashed item's message names its signal, the
 * faulting address, a backtrace and its stderr; a leaky worker is recycled
 * under a soft memory cap, and an item allocating past the hard cap fails
 * alone with PMAP_ENOMEM.
 */
#include "test.h"

#include "pmap.h"

#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Writes to stdout with stdio, to stderr with write(2), and, for every
 * third item, to stdout from a child process (the shell's echo). */
static int talk(int x)
{
    printf("out %d\n", x);
    char line[32];
    int n = snprintf(line, sizeof line, "err %d\n", x);
    if (write(2, line, (size_t)n) != n)
        return -1;
    if (x % 3 == 0) {
        char cmd[32];
        snprintf(cmd, sizeof cmd, "echo child %d", x);
        fflush(stdout);
        if (system(cmd) != 0)
            return -1;
    }
    if (x % 5 == 4)
        pmap_fail(x, "four mod five");
    return x * 2;
}
PMAP_EXPORT(talk, int, int);

/* What talk(x) writes to fd 1 and to fd 2. */
static void expected(int x, char *out, size_t size, char *err, size_t esize)
{
    int n = snprintf(out, size, "out %d\n", x);
    if (x % 3 == 0)
        snprintf(out + n, size - (size_t)n, "child %d\n", x);
    snprintf(err, esize, "err %d\n", x);
}

#define ITEMS 40

typedef struct seen {
    int handed;
    int failed;
} seen_t;

/* on_result: each item's captured output is what it wrote. */
static int check_captured(void *ctx, size_t index, void *result,
                          const pmap_failure_t *f)
{
    seen_t *s = ctx;
    char out[64], err[64];
    expected((int)index, out, sizeof out, err, sizeof err);
    size_t n1, n2;
    const char *o = pmap_item_output(1, &n1), *e = pmap_item_output(2, &n2);
    ASSERT_STR_EQ(o, out);
    ASSERT_EQ(n1, strlen(out));
    ASSERT_STR_EQ(e, err);
    ASSERT_EQ(n2, strlen(err));
    if (f != NULL) {
        ASSERT_EQ(index % 5, 4);
        ASSERT_STR_EQ(f->captured_stdout, out);
        ASSERT_STR_EQ(f->captured_stderr, err);
        s->failed++;
    } else {
        ASSERT_EQ(*(int *)result, (int)index * 2);
    }
    s->handed++;
    return 0;
}

static int next_x(void *ctx, int *x)
{
    int *i = ctx;
    if (*i >= ITEMS)
        return 0;
    *x = (*i)++;
    return 1;
}

static pool_t *make_pool(int start, int output)
{
    return test_pool(
        (pool_options_t){.workers = 2, .start = start, .output = output});
}

/* Captured output in a map of arrays (failure records), to a callback, of
 * a stream, in the background and of a single call. */
static void capture_every_form(int start)
{
    pool_t *pool = make_pool(start, 0);
    int xs[ITEMS], out[ITEMS];
    for (int i = 0; i < ITEMS; i++)
        xs[i] = i;
    pool_map_options_t mo = {.chunk = 3, .output = PMAP_OUTPUT_CAPTURE};
    ASSERT_EQ(pool_map_with(pool, &mo, talk, ITEMS, out, xs), ITEMS / 5);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), ITEMS / 5);
    for (int i = 0; i < ITEMS / 5; i++) {
        char o[64], e[64];
        expected((int)f[i].index, o, sizeof o, e, sizeof e);
        ASSERT_EQ(f[i].error, PMAP_EFAIL);
        ASSERT_STR_EQ(f[i].captured_stdout, o);
        ASSERT_EQ(f[i].captured_stdout_size, strlen(o));
        ASSERT_STR_EQ(f[i].captured_stderr, e);
    }

    seen_t s = {0, 0};
    mo.on_result = check_captured;
    mo.ctx = &s;
    ASSERT_EQ(pool_map_with(pool, &mo, talk, ITEMS, NULL, xs), ITEMS / 5);
    ASSERT_EQ(s.handed, ITEMS);
    ASSERT_EQ(s.failed, ITEMS / 5);

    s = (seen_t){0, 0};
    mo.unordered = 1;
    int i = 0;
    ASSERT_EQ(pool_map_stream(pool, &mo, talk, next_x, &i), ITEMS / 5);
    ASSERT_EQ(s.handed, ITEMS);

    s = (seen_t){0, 0};
    pmap_job_t *job;
    ASSERT_OK(pool_map_async(pool, &mo, &job, talk, ITEMS, NULL, xs));
    ASSERT_EQ(pmap_job_wait(job, -1), ITEMS / 5);
    pmap_job_free(job);
    ASSERT_EQ(s.handed, ITEMS);

    /* A single call: item 0 of a map of one, given x = 3. */
    pool_map_options_t one = {.output = PMAP_OUTPUT_CAPTURE};
    int r = 0;
    ASSERT_OK(pool_call_async(pool, &one, &job, talk, &r, 4));
    ASSERT_EQ(pmap_job_wait(job, -1), 1);
    ASSERT_EQ(pmap_job_failures(job, &f), 1);
    ASSERT_STR_EQ(f[0].captured_stdout, "out 4\n");
    ASSERT_STR_EQ(f[0].captured_stderr, "err 4\n");
    pmap_job_free(job);

    /* Passed through again: nothing captured. */
    xs[0] = 4;
    ASSERT_EQ(pool_map(pool, talk, 1, out, xs), 1);
    ASSERT_EQ(pool_failures(pool, &f), 1);
    ASSERT(f[0].captured_stdout == NULL && f[0].captured_stderr == NULL);
    test_pool_end(pool, start);
}

TEST(output_captured_per_item_in_every_form_fork)
{
    NEEDS_PROCESSES("output is redirected in worker processes");
    fflush(stdout);
    capture_every_form(PMAP_START_FORK);
}

TEST(output_captured_per_item_in_every_form_server)
{
    NEEDS_PROCESSES("output is redirected in worker processes");
    fflush(stdout);
    capture_every_form(PMAP_START_SERVER);
}

static int shout(int n)
{
    for (int i = 0; i < n; i++)
        putchar('a' + i % 26);
    return n;
}
PMAP_EXPORT(shout, int, int);

/* on_result: the item wrote n letters; the last 10 are kept. */
static int check_tail(void *ctx, size_t index, void *result,
                      const pmap_failure_t *f)
{
    (void)index;
    ASSERT(f == NULL);
    int n = *(int *)result;
    char want[11];
    for (int i = 0; i < 10; i++)
        want[i] = (char)('a' + (n - 10 + i) % 26);
    want[10] = '\0';
    size_t size;
    ASSERT_STR_EQ(pmap_item_output(1, &size), want);
    ASSERT_EQ(size, 10);
    ASSERT(pmap_item_output(2, &size) == NULL && size == 0);
    ++*(int *)ctx;
    return 0;
}

/* The tail of each item's output is kept, output_cap bytes. */
TEST(output_capture_keeps_the_tail)
{
    NEEDS_PROCESSES("output is redirected in worker processes");
    pool_t *pool = pool_create(1);
    int calls = 0;
    pool_map_options_t mo = {.output = PMAP_OUTPUT_CAPTURE, .output_cap = 10,
                             .on_result = check_tail, .ctx = &calls};
    pmap_job_t *job;
    ASSERT_OK(pool_call_async(pool, &mo, &job, shout, NULL, 100));
    ASSERT_OK(pmap_job_wait(job, -1));
    pmap_job_free(job);
    int ns[3] = {30, 1000000, 11};
    ASSERT_OK(pool_map_with(pool, &mo, shout, 3, NULL, ns));
    ASSERT_EQ(calls, 4);
    pool_destroy(pool);
}

static int slow_talk(int x)
{
    /* Items of high x (sent first) take longer, so they finish after
     * later ones; the order written never depends on it. */
    struct timespec ts = {0, (long)x * 200000};
    nanosleep(&ts, NULL);
    return talk(x);
}
PMAP_EXPORT(slow_talk, int, int);

/* Runs map(pool) with the caller's fds 1 and 2 sent to two files, and
 * returns what landed in each (malloc'ed). */
static void grouped(pool_t *pool, int form, char **out, char **err)
{
    char path[2][32] = {"/tmp/pmap-group-1-XXXXXX", "/tmp/pmap-group-2-XXXXXX"};
    int files[2], saved[2];
    fflush(stdout);
    fflush(stderr);
    for (int i = 0; i < 2; i++) {
        files[i] = mkstemp(path[i]);
        ASSERT(files[i] >= 0);
        unlink(path[i]);
        saved[i] = dup(i + 1);
        dup2(files[i], i + 1);
    }
    int xs[ITEMS], res[ITEMS];
    for (int i = 0; i < ITEMS; i++)
        xs[i] = ITEMS - 1 - i;  /* the slow ones first: they finish late */
    pool_map_options_t mo = {.chunk = 2, .output = PMAP_OUTPUT_GROUP};
    int rc;
    if (form == 0) {
        rc = pool_map_with(pool, &mo, slow_talk, ITEMS, res, xs);
    } else {
        pmap_job_t *job = NULL;
        rc = pool_map_async(pool, &mo, &job, slow_talk, ITEMS, res, xs);
        if (rc == 0)
            rc = pmap_job_wait(job, -1);
        pmap_job_free(job);
    }
    for (int i = 0; i < 2; i++) {
        dup2(saved[i], i + 1);
        close(saved[i]);
        off_t size = lseek(files[i], 0, SEEK_END);
        char *text = calloc(1, (size_t)size + 1);
        ASSERT(pread(files[i], text, (size_t)size, 0) == size);
        close(files[i]);
        *(i == 0 ? out : err) = text;
    }
    if (rc != ITEMS / 5) {
        const pmap_failure_t *f;
        size_t nf = pool_failures(pool, &f);
        test_fail(__FILE__, __LINE__, "%d failed: %zu: %s (%d) %s", rc,
                  nf ? f[0].index : 0, nf ? pmap_err_name(f[0].error) : "",
                  nf ? f[0].code : 0, nf ? f[0].message : "");
    }
}


/* Grouped output: each item's output whole, in input order, on the
 * caller's own fds 1 and 2. */
static void group_in_order(int start)
{
    pool_t *pool = make_pool(start, PMAP_OUTPUT_GROUP);
    for (int form = 0; form < 2; form++) {
        char *out = NULL, *err = NULL;
        grouped(pool, form, &out, &err);
        char want_out[64 * ITEMS] = "", want_err[64 * ITEMS] = "";
        for (int i = 0; i < ITEMS; i++) {
            char o[64], e[64];
            expected(ITEMS - 1 - i, o, sizeof o, e, sizeof e);
            strcat(want_out, o);
            strcat(want_err, e);
        }
        ASSERT_STR_EQ(out, want_out);
        ASSERT_STR_EQ(err, want_err);
        free(out);
        free(err);
    }
    test_pool_end(pool, start);
}

TEST(output_grouped_in_input_order_fork)
{
    NEEDS_PROCESSES("output is redirected in worker processes");
    group_in_order(PMAP_START_FORK);
}

TEST(output_grouped_in_input_order_server)
{
    NEEDS_PROCESSES("output is redirected in worker processes");
    group_in_order(PMAP_START_SERVER);
}

/* ---- crash reports ------------------------------------------------------ */

__attribute__((no_sanitize("undefined"))) static void poke(uintptr_t at)
{
    int *volatile p = (int *)at;    /* volatile: the compiler may not see */
    *p = 1;
}

static int crash_at(int x)
{
    if (x == 7) {
        fprintf(stderr, "about to fall over\n");
        poke(0x10);
    }
    return x;
}
PMAP_EXPORT(crash_at, int, int);

/* Inputs 0, 1, ... n - 1. */
static void iota(int *xs, int n)
{
    for (int i = 0; i < n; i++)
        xs[i] = i;
}

/* After a map of n items i -> i (out): its only failure is item `index`,
 * killed by signal `sig`, and every other item has its result.  Returns
 * the crash's report. */
static const char *only_crash(pool_t *pool, const int *out, int n,
                              long index, int sig)
{
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), 1);
    ASSERT_EQ(f[0].index, index);
    ASSERT_EQ(f[0].error, PMAP_ECRASH);
    ASSERT_EQ(f[0].code, sig);
    for (int i = 0; i < n; i++)
        ASSERT_EQ(out[i], i == index ? 0 : i);
    return f[0].message != NULL ? f[0].message : "";
}

static void crash_report(int start)
{
    pool_t *pool = make_pool(start, PMAP_OUTPUT_CAPTURE);
    int xs[20], out[20];
    iota(xs, 20);
    ASSERT_EQ(pool_map(pool, crash_at, 20, out, xs), 1);
    const char *m = only_crash(pool, out, 20, 7, SIGSEGV);
    if (strstr(m, "SIGSEGV (segmentation fault: address not mapped) at "
                  "address 0x10\n") == NULL ||
        strstr(m, "about to fall over\n") == NULL)
        test_fail(__FILE__, __LINE__, "crash report: %s", m);
#if defined(__GLIBC__)
    if (strstr(m, "backtrace:\n") == NULL)
        test_fail(__FILE__, __LINE__, "no backtrace: %s", m);
#endif
    /* Without capture: the report, without stderr. */
    pool_map_options_t mo = {.output = PMAP_OUTPUT_PASS};
    ASSERT_EQ(pool_map_with(pool, &mo, crash_at, 20, out, xs), 1);
    m = only_crash(pool, out, 20, 7, SIGSEGV);
    ASSERT(strstr(m, "at address 0x10") != NULL);
    ASSERT(strstr(m, "about to fall over") == NULL);
    test_pool_end(pool, start);
}

TEST(output_crash_report_names_signal_address_backtrace_stderr_fork)
{
    NEEDS_PROCESSES("a crash");
    crash_report(PMAP_START_FORK);
}

TEST(output_crash_report_names_signal_address_backtrace_stderr_server)
{
    NEEDS_PROCESSES("a crash");
    crash_report(PMAP_START_SERVER);
}

static int deeper(int n)
{
    volatile char frame[4096];
    frame[0] = (char)n;
    return n > 0 ? deeper(n - 1) + frame[0] : 0;
}

static int overflow_at(int x)
{
    return x == 3 ? deeper(1 << 30) : x;
}
PMAP_EXPORT(overflow_at, int, int);

/* A callback that overflows its stack still gets a report: the handler
 * runs on a stack of its own (in the worker's arena). */
TEST(output_crash_report_of_a_stack_overflow)
{
    NEEDS_PROCESSES("a crash");
    if (TEST_ASAN || test_under_valgrind())
        SKIP("the sanitizer or valgrind handles the overflow itself");
    pool_t *pool = make_pool(PMAP_START_FORK, PMAP_OUTPUT_CAPTURE);
    int xs[8], out[8];
    iota(xs, 8);
    ASSERT_EQ(pool_map(pool, overflow_at, 8, out, xs), 1);
    const char *m = only_crash(pool, out, 8, 3, SIGSEGV);
    if (strstr(m, "SIGSEGV") == NULL)
        test_fail(__FILE__, __LINE__, "no report: %s", m);
    test_pool_end(pool, PMAP_START_FORK);
}

/* Overwrites the size of its own heap block, then frees it: glibc's
 * free() finds the heap corrupted and aborts, from inside the allocator. */
static volatile ptrdiff_t header = -(ptrdiff_t)sizeof(size_t);

static int smash_heap_at(int x)
{
    if (x == 5) {
        char *p = malloc(24);
        /* a size below the smallest block (volatile: a store into memory
         * about to be freed is otherwise dropped) */
        *(volatile size_t *)(void *)(p + header) = 0x11;
        free(p);
    }
    return x;
}
PMAP_EXPORT(smash_heap_at, int, int);

/* A callback that corrupts malloc's heap dies inside the allocator: its
 * worker still writes the report, backtrace and glibc's last words
 * included, without allocating, and the other items and the next map are
 * unharmed. */
TEST(output_crash_report_of_a_corrupted_heap)
{
    NEEDS_PROCESSES("a crash");
#if !defined(__GLIBC__)
    SKIP("how a corrupted heap dies is the C library's own");
#endif
    if (TEST_ASAN || test_under_valgrind())
        SKIP("the sanitizer or valgrind catches the corruption itself");
    pool_t *pool = make_pool(PMAP_START_FORK, PMAP_OUTPUT_CAPTURE);
    int xs[12], out[12];
    iota(xs, 12);
    ASSERT_EQ(pool_map(pool, smash_heap_at, 12, out, xs), 1);
    const char *m = only_crash(pool, out, 12, 5, SIGABRT);
    const char *frames = strstr(m, "backtrace:\n");
    if (strncmp(m, "SIGABRT", 7) != 0 || frames == NULL ||
        strstr(frames, "[0x") == NULL || strstr(m, "stderr (last") == NULL)
        test_fail(__FILE__, __LINE__, "crash report: %s", m);
    ASSERT_EQ(pool_map(pool, smash_heap_at, 5, out, xs), 0);
    test_pool_end(pool, PMAP_START_FORK);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* Points its stack and frame pointers at an unmapped page (both: the
 * unwinder of a build with frame pointers walks from the frame pointer)
 * and pushes there. */
static int lose_stack_at(int x)
{
    if (x == 2) {
        fprintf(stderr, "losing my stack\n");
        __asm__ volatile("mov $0x1000, %%rsp\n\t"
                         "mov $0x1000, %%rbp\n\t"
                         "push %%rax" ::: "memory");
    }
    return x;
}
#define CAN_LOSE_STACK 1
#else
static int lose_stack_at(int x)
{
    return x;
}
#define CAN_LOSE_STACK 0
#endif
PMAP_EXPORT(lose_stack_at, int, int);

/* Whether report m of a callback that wrecked its stack starts with head
 * and keeps tail of its stderr, but has no backtrace: its walk faulted. */
static void check_wrecked(const char *m, const char *head, const char *tail)
{
    if (strncmp(m, head, strlen(head)) != 0 || strstr(m, tail) == NULL ||
        strstr(m, "backtrace:") != NULL)
        test_fail(__FILE__, __LINE__, "crash report: %s", m);
}

/* A callback that loses its stack pointer: the handler runs on its own
 * stack, but the unwinder, walking into the callback's frame, reads where
 * that pointer says and faults in turn, which kills the worker at once.
 * What the report said before the walk (the signal, the address, the
 * item's stderr) still reaches the caller. */
TEST(output_crash_report_outlives_a_fault_in_its_backtrace)
{
    NEEDS_PROCESSES("a crash");
    if (!CAN_LOSE_STACK)
        SKIP("losing the stack pointer takes x86-64 assembly");
    pool_t *pool = make_pool(PMAP_START_FORK, PMAP_OUTPUT_CAPTURE);
    int xs[6], out[6];
    iota(xs, 6);
    ASSERT_EQ(pool_map(pool, lose_stack_at, 6, out, xs), 1);
    check_wrecked(only_crash(pool, out, 6, 2, SIGSEGV),
                  "SIGSEGV (segmentation fault: address not mapped) at "
                  "address 0xff8\n",
                  "stderr (last 16 bytes):\nlosing my stack\n");
    ASSERT_EQ(pool_map(pool, lose_stack_at, 2, out, xs), 0);
    test_pool_end(pool, PMAP_START_FORK);
}

#if CAN_LOSE_STACK
/* Loses its stack and frame pointers, then sends itself SIGABRT by a bare
 * system call (nothing that needs a stack). */
static int abort_without_stack_at(int x)
{
    if (x == 3) {
        fprintf(stderr, "aborting without a stack\n");
        __asm__ volatile("mov %0, %%rdi\n\t"
                         "mov $0x1000, %%rsp\n\t"
                         "mov $0x1000, %%rbp\n\t"
                         "mov $6, %%esi\n\t"      /* SIGABRT */
                         "mov $62, %%eax\n\t"     /* kill */
                         "syscall\n"
                         "1:\tjmp 1b" ::"r"((long)getpid())
                         : "rax", "rdi", "rsi", "rcx", "r11", "memory");
    }
    return x;
}
#else
static int abort_without_stack_at(int x)
{
    return x;
}
#endif
PMAP_EXPORT(abort_without_stack_at, int, int);

/* A fault while the report of another signal is written (here in the
 * backtrace, of a callback aborted without a stack) does not change what
 * the worker died of: the report and the failure both say SIGABRT, and
 * what was published before the fault reaches the caller. */
TEST(output_crash_report_and_failure_agree_when_the_report_faults)
{
    NEEDS_PROCESSES("a crash");
    if (!CAN_LOSE_STACK)
        SKIP("losing the stack pointer takes x86-64 assembly");
    pool_t *pool = make_pool(PMAP_START_FORK, PMAP_OUTPUT_CAPTURE);
    int xs[6], out[6];
    iota(xs, 6);
    ASSERT_EQ(pool_map(pool, abort_without_stack_at, 6, out, xs), 1);
    check_wrecked(only_crash(pool, out, 6, 3, SIGABRT), "SIGABRT",
                  "stderr (last 25 bytes):\naborting without a stack\n");
    test_pool_end(pool, PMAP_START_FORK);
}

/* Whether this process has libgcc_s mapped. */
static bool libgcc_s_mapped(void)
{
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    bool found = false;
    while (maps != NULL && fgets(line, sizeof line, maps) != NULL)
        found = found || strstr(line, "/libgcc_s.so") != NULL;
    if (maps != NULL)
        fclose(maps);
    return found;
}

/* The unwinder of crash reports is built into libpmap (src/stack.c):
 * a pool loads no library into the caller for it, where glibc's
 * backtrace() loaded libgcc_s at every process's first pool_create, and
 * the report still has its backtrace. */
TEST(output_crash_report_loads_no_library_into_the_caller)
{
    NEEDS_PROCESSES("a crash");
#if !defined(__linux__)
    SKIP("needs /proc/self/maps");
#endif
    if (libgcc_s_mapped())
        SKIP("libgcc_s was loaded before any pool (a sanitizer's runtime, "
             "or a build that found no libgcc_eh.a)");
    pool_t *pool = make_pool(PMAP_START_FORK, PMAP_OUTPUT_CAPTURE);
    int xs[8], out[8];
    iota(xs, 8);
    ASSERT_EQ(pool_map(pool, crash_at, 8, out, xs), 1);
    const char *m = only_crash(pool, out, 8, 7, SIGSEGV);
    const char *frames = strstr(m, "backtrace:\n");
    if (frames == NULL || strstr(frames, "[0x") == NULL)
        test_fail(__FILE__, __LINE__, "no backtrace: %s", m);
    ASSERT(!libgcc_s_mapped());
    test_pool_end(pool, PMAP_START_FORK);
}

/* A program that runs with its standard descriptors closed (a daemon):
 * the worker's crash pipe must not take 0-2, where capturing the item's
 * output puts its files, or the backtrace goes there instead of into the
 * report.  In a child, which says through a pipe what the report was. */
TEST(output_crash_report_with_stdio_closed_keeps_its_backtrace)
{
    NEEDS_PROCESSES("a crash");
#if !defined(__GLIBC__)
    SKIP("backtraces need glibc");
#endif
    int p[2];
    ASSERT(pipe(p) == 0);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        close(STDIN_FILENO);
        close(STDOUT_FILENO);
        close(STDERR_FILENO);
        pool_options_t o = {.workers = 1, .output = PMAP_OUTPUT_CAPTURE};
        pool_t *pool = NULL;
        int xs[10], out[10];
        for (int i = 0; i < 10; i++)
            xs[i] = i;
        const pmap_failure_t *f = NULL;
        if (pool_create_with(&pool, &o) != 0 ||
            pool_map(pool, crash_at, 10, out, xs) != 1 ||
            pool_failures(pool, &f) != 1)
            _exit(2);
        const char *m = f[0].message;
        if (write(p[1], m, strlen(m)) < 0)
            _exit(3);
        pool_destroy(pool);
        _exit(0);
    }
    close(p[1]);
    char m[16384];
    test_read_all(p[0], m, sizeof m);
    close(p[0]);
    int status;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* A frame is "object(symbol+offset) [address]" */
    const char *frames = strstr(m, "backtrace:\n");
    if (frames == NULL || strstr(frames, "[0x") == NULL)
        test_fail(__FILE__, __LINE__, "no backtrace: %s", m);
}

/* ---- memory caps -------------------------------------------------------- */

#define MiB ((size_t)1 << 20)

/* Leaks 8 MiB an item, touched (kept where the compiler cannot drop
 * it). */
static char *volatile leaked;

static int leak(int x)
{
    char *p = malloc(8 * MiB);
    if (p == NULL)
        return -1;
    memset(p, x, 8 * MiB);
    leaked = p;
    return x + 1;
}
PMAP_EXPORT(leak, int, int);

static void soft_cap(int start)
{
    pool_t *pool = make_pool(start, 0);
    enum { M = 32 };
    int xs[M], out[M];
    for (int i = 0; i < M; i++)
        xs[i] = i;
    pool_map_options_t mo = {.chunk = 2, .max_worker_memory = 64 * MiB};
    ASSERT_OK(pool_map_with(pool, &mo, leak, M, out, xs));
    for (int i = 0; i < M; i++)
        ASSERT_EQ(out[i], i + 1);
    pmap_stats_t last;
    ASSERT_OK(pool_stats(pool, &last, NULL));
    /* 256 MiB leaked in all by 2 workers: each passed 64 MiB at least
     * once. */
    ASSERT(last.restarts >= 2);
    ASSERT_EQ(pool_size(pool), 2);
    test_pool_end(pool, start);
}

TEST(output_soft_memory_cap_recycles_a_leaky_worker_fork)
{
    NEEDS_PROCESSES("worker processes to recycle");
    soft_cap(PMAP_START_FORK);
}

TEST(output_soft_memory_cap_recycles_a_leaky_worker_server)
{
    NEEDS_PROCESSES("worker processes to recycle");
    soft_cap(PMAP_START_SERVER);
}

/* Item 3 allocates 1 GiB and touches it. */
static int hog(int x)
{
    size_t n = x == 3 ? 1024 * MiB : MiB;
    char *volatile p = malloc(n);
    memset(p, 1, n);    /* NULL past the limit: the item crashes */
    int r = p[n - 1] + x;
    free(p);
    return r;
}
PMAP_EXPORT(hog, int, int);

static void hard_cap(int start)
{
    if (TEST_ASAN)
        SKIP("AddressSanitizer reserves terabytes of address space");
    if (test_under_valgrind())
        SKIP("valgrind's own address space is in the limit");
    if (start == PMAP_START_SERVER)
        ASSERT_OK(pmap_init());
    pool_options_t po = {.workers = 2, .start = start,
                         .worker_memory_limit = 256 * MiB};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    int xs[8], out[8];
    for (int i = 0; i < 8; i++)
        xs[i] = i;
    ASSERT_EQ(pool_map(pool, hog, 8, out, xs), 1);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), 1);
    ASSERT_EQ(f[0].index, 3);
    ASSERT_EQ(f[0].error, PMAP_ENOMEM);
    ASSERT_EQ(f[0].code, SIGSEGV);
    if (strstr(f[0].message, "memory limit of 268435456 bytes reached") ==
        NULL)
        test_fail(__FILE__, __LINE__, "message: %s", f[0].message);
    for (int i = 0; i < 8; i++)
        ASSERT_EQ(out[i], i == 3 ? 0 : i + 1);
    /* The pool goes on. */
    xs[3] = 4;
    ASSERT_OK(pool_map(pool, hog, 8, out, xs));
    test_pool_end(pool, start);
}

TEST(output_hard_memory_limit_fails_the_item_fork)
{
    NEEDS_PROCESSES("a worker's own memory limit");
    hard_cap(PMAP_START_FORK);
}

TEST(output_hard_memory_limit_fails_the_item_server)
{
    NEEDS_PROCESSES("a worker's own memory limit");
    hard_cap(PMAP_START_SERVER);
}

/* Options out of range are refused. */
TEST(output_invalid_modes_are_refused)
{
    pool_options_t po = {.workers = 1, .output = 9};
    pool_t *pool;
    ASSERT_EQ(pool_create_with(&pool, &po), PMAP_EINVAL);
    pool = pool_create(1);
    pool_map_options_t mo = {.output = -1};
    int xs[1] = {1}, out[1];
    ASSERT_EQ(pool_map_with(pool, &mo, leak, 1, out, xs), PMAP_EINVAL);
    ASSERT(pmap_item_output(1, NULL) == NULL);
    pool_destroy(pool);
}
