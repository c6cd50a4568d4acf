/* SPDX-License-Identifier: MIT */
/*
 * runner.c - runs the tests listed in test_list.h (all, or those named on
 * the command line) and prints one line each, then
 * "N passed, N failed, N skipped"; exits 1 if any failed.
 *
 * Each test runs in a child process of its own, in its own process group so
 * that a test that leaves workers behind is cleaned up by killing the
 * group.  It fails on a failed ASSERT, a crash, a timeout (60 s, times
 * PMAP_TEST_TIMEOUT_MULTIPLIER), or if it ends with more open descriptors
 * than it started with, with a child process not reaped, or (under
 * AddressSanitizer) with leaked memory.
 *
 * A name ending in '*' selects the tests it begins.
 *
 * `runner --inline NAME` runs one test in the runner's own process, for
 * valgrind, which then sees the test as its main program; `runner --list`
 * lists the tests.  `runner --in-process [NAME...]` runs the tests of map
 * semantics (map_*, stream_*, or those named) again with PMAP_START=inline:
 * the same results with the callbacks run in the caller.
 */
#include "test.h"

#include "pmap_internal.h"      /* test_spare_arenas */

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#if TEST_ASAN
#include <sanitizer/lsan_interface.h>
#endif

#define X(name) void test_##name(void);
#include "test_list.h"
#undef X

static const struct {
    const char *name;
    void (*run)(void);
} tests[] = {
#define X(name) {#name, test_##name},
#include "test_list.h"
#undef X
};

enum { PASS = 0, FAIL = 1, SKIPPED = 77 };

static char skip_reason[256];
int test_skip_pipe = -1;

void test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "    %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    fflush(NULL);
    _exit(FAIL);
}

void test_skip(const char *why)
{
    if (test_skip_pipe >= 0 && write(test_skip_pipe, why, strlen(why)) < 0)
        _exit(FAIL);
    fflush(NULL);
    _exit(SKIPPED);
}

const char *test_build_dir(void)
{
    const char *b = getenv("PMAP_BUILD");
    return b ? b : "build";
}

/* Set by tests/valgrind.sh: the program runs some 50 times slower. */
int test_under_valgrind(void)
{
    return getenv("PMAP_TEST_VALGRIND") != NULL;
}

/* How much slower than usual this run may be: valgrind, sanitizers, or
 * the runner's PMAP_TEST_TIMEOUT_MULTIPLIER.  Scales hang detectors and
 * generous bounds, never the work. */
double test_slack(void)
{
    const char *m = getenv("PMAP_TEST_TIMEOUT_MULTIPLIER");
    double f = m != NULL && atof(m) > 1 ? atof(m) : 1;
    if (TEST_ASAN)
        f *= 2;
    if (test_under_valgrind())
        f *= 20;
    return f;
}

/* Ends the test (SIGALRM's default action) if it is still running after
 * `seconds` (times test_slack): a hang is reported long before the
 * runner's own timeout. */
void test_arm(unsigned seconds)
{
    alarm((unsigned)((double)seconds * test_slack()));
}

/* A work size for a test: n, or a twentieth of it under valgrind.  The
 * checks stay the same; only the amount of work shrinks. */
size_t test_scaled(size_t n)
{
    return test_under_valgrind() && n >= 40 ? n / 20 : n;
}

/* Runs a shell command, capturing at most size - 1 bytes of its standard
 * output; returns its exit status (or -1). */
int test_run(const char *command, char *output, size_t size)
{
    FILE *p = popen(command, "r");
    if (p == NULL)
        return -1;
    size_t got = 0;
    if (output != NULL && size > 0) {
        got = fread(output, 1, size - 1, p);
        output[got] = '\0';
    }
    char sink[4096];
    while (fread(sink, 1, sizeof sink, p) > 0)
        ;
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Reads fd until its end or size - 1 bytes into text, NUL-terminated;
 * returns the bytes read.  fd is left open. */
size_t test_read_all(int fd, char *text, size_t size)
{
    size_t got = 0;
    ssize_t n;
    while (got < size - 1 && (n = read(fd, text + got, size - 1 - got)) > 0)
        got += (size_t)n;
    text[got] = '\0';
    return got;
}

/* Open descriptors of this process. */
int test_open_fds(void)
{
    int n = 0;
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536)
        max = 65536;
    for (int fd = 0; fd < max; fd++)
        n += fcntl(fd, F_GETFD) >= 0;
    return n;
}

/* The writable shared mappings of this process (valgrind's own for vgdb
 * aside), those whose line contains `containing` if not NULL: their
 * number, or with `bytes` their size; -1 without /proc. */
long long test_shared_maps(const char *containing, bool bytes)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (f == NULL)
        return -1;
    char line[4096], perms[8];
    unsigned long long lo, hi;
    long long total = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        if (sscanf(line, "%llx-%llx %7s", &lo, &hi, perms) == 3 &&
            strcmp(perms, "rw-s") == 0 && strstr(line, "vgdb") == NULL &&
            (containing == NULL || strstr(line, containing) != NULL))
            total += bytes ? (long long)(hi - lo) : 1;
    }
    fclose(f);
    return total;
}

/* The arenas this process keeps for later workers (shm.c, spare
 * arenas), and with `bytes` what they may hold. */
long long test_spare_arenas(bool bytes)
{
    pmap__pools_lock();
    long long n = bytes ? (long long)pmap__local()->spare_arena_bytes
                        : pmap__arenas_spare();
    pmap__pools_unlock();
    return n;
}

/* Children of this process not yet reaped (0 when there are none). */
int test_children(void)
{
    return waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD ? 0 : 1;
}

/* A pool with these options, the fork server started first when they
 * ask for it; test_pool_end destroys it, and stops the server again. */
pool_t *test_pool(pool_options_t options)
{
    if (options.start == PMAP_START_SERVER)
        ASSERT_OK(pmap_init());
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &options));
    return pool;
}

void test_pool_end(pool_t *pool, int start)
{
    pool_destroy(pool);
    if (start == PMAP_START_SERVER)
        pmap_exit();
}

/* Whether pools start in process (PMAP_START=inline, runner --in-process). */
int test_in_process(void)
{
    const char *v = getenv("PMAP_START");
    return v != NULL && strcmp(v, "inline") == 0;
}

/* Runs test i and checks what it left behind; returns PASS or FAIL. */
static int run_checked(int i)
{
    int fds = test_open_fds();
    tests[i].run();
    fflush(NULL);
    int after = test_open_fds();
    if (after != fds) {
        fprintf(stderr, "    leaked file descriptors: %d before, %d after\n",
                fds, after);
        return FAIL;
    }
    if (test_children() != 0) {
        fprintf(stderr, "    left a child process behind\n");
        return FAIL;
    }
#if TEST_ASAN
    if (__lsan_do_recoverable_leak_check() != 0)
        return FAIL;
#endif
    return PASS;
}

static _Noreturn void run_child(int i, int skip_fd)
{
    test_skip_pipe = skip_fd;
    setpgid(0, 0);
    _exit(run_checked(i));
}

static double timeout_seconds(void)
{
    const char *m = getenv("PMAP_TEST_TIMEOUT_MULTIPLIER");
    double mult = m ? atof(m) : 1.0;
    return 60.0 * (mult > 0 ? mult : 1.0);
}

static double monotonic_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Waits for the test's process until the timeout, by the clock (on a
 * loaded machine a 2 ms sleep takes longer: counting them, a 60 s limit
 * ran for minutes); returns its outcome. */
static int wait_test(pid_t pid, char *why, size_t size)
{
    struct timespec tick = {0, 2000000};
    double start = monotonic_s(), limit = timeout_seconds();
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (monotonic_s() - start > limit) {
            kill(-pid, SIGKILL);
            waitpid(pid, &status, 0);
            snprintf(why, size, "timed out after %.0f s", limit);
            return FAIL;
        }
        nanosleep(&tick, NULL);
    }
    kill(-pid, SIGKILL);    /* whatever it left behind in its group */
    if (WIFSIGNALED(status)) {
        snprintf(why, size, "killed by signal %d", WTERMSIG(status));
        return FAIL;
    }
    int code = WEXITSTATUS(status);
    return code == PASS || code == SKIPPED ? code : FAIL;
}

static int run_test(int i, char *why, size_t size)
{
    int p[2];
    if (pipe(p) < 0)
        return FAIL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return FAIL;
    if (pid == 0) {
        close(p[0]);
        run_child(i, p[1]);
    }
    close(p[1]);
    setpgid(pid, pid);
    int outcome = wait_test(pid, why, size);
    ssize_t n = read(p[0], skip_reason, sizeof skip_reason - 1);
    skip_reason[n > 0 ? n : 0] = '\0';
    close(p[0]);
    return outcome;
}

static int selected(int argc, char **argv, const char *name)
{
    if (argc < 2 && test_in_process())
        return strncmp(name, "map_", 4) == 0 || strncmp(name, "stream_", 7) == 0;
    if (argc < 2)
        return 1;
    for (int i = 1; i < argc; i++) {
        size_t n = strlen(argv[i]);
        if (strcmp(argv[i], name) == 0 ||
            (n > 0 && argv[i][n - 1] == '*' &&
             strncmp(argv[i], name, n - 1) == 0))
            return 1;   /* the name, or a prefix ending in '*' */
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
            printf("%s\n", tests[i].name);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "--inline") == 0) {
        for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
            if (strcmp(tests[i].name, argv[2]) == 0)
                return run_checked((int)i);
        }
        fprintf(stderr, "no test named %s\n", argv[2]);
        return FAIL;
    }
    if (argc >= 2 && strcmp(argv[1], "--in-process") == 0) {
        setenv("PMAP_START", "inline", 1);
        argv[1] = argv[0];
        argc--;
        argv++;
    }
    int passed = 0, failed = 0, skipped = 0, number = 0;
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        if (!selected(argc, argv, tests[i].name))
            continue;
        char why[128] = "";
        int outcome = run_test((int)i, why, sizeof why);
        number++;
        if (outcome == PASS) {
            printf("ok %d - %s\n", number, tests[i].name);
            passed++;
        } else if (outcome == SKIPPED) {
            printf("ok %d - %s # SKIP %s\n", number, tests[i].name,
                   skip_reason);
            skipped++;
        } else {
            printf("not ok %d - %s%s%s\n", number, tests[i].name,
                   why[0] ? ": " : "", why);
            failed++;
        }
        fflush(stdout);
    }
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed > 0;
}
