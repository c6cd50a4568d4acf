/* SPDX-License-Identifier: MIT */
/*
 * test.h - libpmap's test harness: assertions and test declarations.
 *
 * A test is `TEST(name) { ... }` in a tests/test_<area>.c file, listed once
 * in tests/test_list.h.  The runner (runner.c) runs each test in its own
 * process and process group, with a timeout, and fails it if it leaves a
 * file descriptor open or a child process behind.  An ASSERT that fails
 * prints where and why and ends the test's process.
 */
#ifndef PMAP_TEST_H
#define PMAP_TEST_H

#include "pmap.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEST(name)                                                            \
    void test_##name(void);                                                   \
    void test_##name(void)

void test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
void test_skip(const char *why) __attribute__((noreturn));
extern int test_skip_pipe;  /* where test_skip writes (workers inherit it) */

#define ASSERT(cond)                                                          \
    do {                                                                      \
        if (!(cond))                                                          \
            test_fail(__FILE__, __LINE__, "%s", #cond);                       \
    } while (0)

#define ASSERT_EQ(a, b)                                                       \
    do {                                                                      \
        long long a_ = (long long)(a), b_ = (long long)(b);                   \
        if (a_ != b_)                                                         \
            test_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b,   \
                      a_, b_);                                                \
    } while (0)

#define ASSERT_STR_EQ(a, b)                                                   \
    do {                                                                      \
        const char *a_ = (a), *b_ = (b);                                      \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0)                  \
            test_fail(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", #a,   \
                      #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");            \
    } while (0)

/* pool_map and friends return 0 on success; say which code otherwise. */
#define ASSERT_OK(expr)                                                       \
    do {                                                                      \
        long long rc_ = (long long)(expr);                                    \
        if (rc_ != 0)                                                         \
            test_fail(__FILE__, __LINE__, "%s: %lld", #expr, rc_);            \
    } while (0)

#define SKIP(why) test_skip(why)

/* In a test of map semantics that needs worker processes (a crash, pids,
 * several workers, finishing out of order): skips it in the in-process
 * mode (runner --in-process). */
#define NEEDS_PROCESSES(why)                                                  \
    do {                                                                      \
        if (test_in_process())                                                \
            SKIP("needs worker processes: " why);                            \
    } while (0)

/* AddressSanitizer keeps freed memory aside: resident size means nothing
 * then, and LeakSanitizer checks each test instead (runner.c). */
#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifndef TEST_ASAN
#define TEST_ASAN 0
#endif

/* Helpers shared by tests (runner.c). */
const char *test_build_dir(void);
int test_under_valgrind(void);
double test_slack(void);
void test_arm(unsigned seconds);
size_t test_scaled(size_t n);
int test_run(const char *command, char *output, size_t size);
size_t test_read_all(int fd, char *text, size_t size);
int test_open_fds(void);
int test_children(void);
long long test_shared_maps(const char *containing, bool bytes);
long long test_spare_arenas(bool bytes);
int test_in_process(void);
pool_t *test_pool(pool_options_t options);
void test_pool_end(pool_t *pool, int start);

#endif
