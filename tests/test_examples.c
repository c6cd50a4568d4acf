/* SPDX-License-Identifier: MIT */
/*
 * test_examples.c - the example programs print exactly the essay's outputs,
 * and the wc example prints what wc prints.
 */
#include "test.h"

#include <unistd.h>

static void expect_output(const char *example, const char *args,
                          const char *want, int want_status)
{
    char cmd[1024], out[8192];
    snprintf(cmd, sizeof cmd, "%s/examples/%s %s 2>/dev/null",
             test_build_dir(), example, args);
    ASSERT_EQ(test_run(cmd, out, sizeof out), want_status);
    ASSERT_STR_EQ(out, want);
}

TEST(example_add)
{
    expect_output("add", "", "[0, 2, 4, 6, 8, 10, 12, 14, 16, 18]\n", 0);
}

TEST(example_partial)
{
    expect_output("partial", "", "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n", 0);
}

TEST(example_method)
{
    expect_output("method", "", "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]\n", 0);
}

TEST(example_wc_matches_wc)
{
    if (test_run("command -v wc >/dev/null", NULL, 0) != 0)
        SKIP("no wc to compare with");
    /* Text, binary, empty, a non-regular file and a missing one. */
    const char *files = "include/pmap.h src/job.c tests/test.h Makefile "
                        "build/libpmap.a /dev/null no-such-file";
    char cmd[1024], want[8192];
    snprintf(cmd, sizeof cmd, "LC_ALL=C wc %s 2>/dev/null", files);
    ASSERT_EQ(test_run(cmd, want, sizeof want), 1);
    expect_output("wc", files, want, 1);
    snprintf(cmd, sizeof cmd, "LC_ALL=C wc include/pmap.h");
    ASSERT_EQ(test_run(cmd, want, sizeof want), 0);
    expect_output("wc", "include/pmap.h", want, 0);
}

TEST(example_grep_matches_grep)
{
    if (test_run("command -v grep >/dev/null", NULL, 0) != 0)
        SKIP("no grep to compare with");
    const char *cases[][2] = {{"'pool_(map|call)'", "include/pmap.h"},
                              {"'^[a-z_ ]+\\('", "src/job.c"},
                              {"'x{3}|PMAP_E[A-Z]+'", "README.md"}};
    for (int i = 0; i < 3; i++) {
        char cmd[1024], want[65536];
        snprintf(cmd, sizeof cmd, "LC_ALL=C grep -E %s %s", cases[i][0],
                 cases[i][1]);
        ASSERT_EQ(test_run(cmd, want, sizeof want), 0);
        char args[512];
        snprintf(args, sizeof args, "%s %s", cases[i][0], cases[i][1]);
        expect_output("grep", args, want, 0);
    }
    expect_output("grep", "'no such text anywhere' Makefile", "", 1);
}

TEST(example_mandelbrot_renders_the_same_image_with_one_worker)
{
    char cmd[1024], out[1024];
    snprintf(cmd, sizeof cmd,
             "%s/examples/mandelbrot 160 120 %s/tests/m.pgm 2>/dev/null",
             test_build_dir(), test_build_dir());
    ASSERT_EQ(test_run(cmd, out, sizeof out), 0);
    ASSERT(strstr(out, "identical images") != NULL);
    snprintf(cmd, sizeof cmd, "head -c 15 %s/tests/m.pgm",
             test_build_dir());
    ASSERT_EQ(test_run(cmd, out, sizeof out), 0);
    ASSERT_STR_EQ(out, "P5\n160 120\n255\n");
}

TEST(example_async_poll)
{
    expect_output("async_poll", "",
                  "primes below 4000000: 283146\n"
                  "longest Collatz chain from 1..1000000: 524 steps, "
                  "from 837799\n"
                  "sum of the last three digits of the cubes of 0..99999: "
                  "45000000\n",
                  0);
}

TEST(example_prices_failure_stays_in_its_item)
{
    expect_output("prices", "",
                  "tea=250 2.50\ncake=420 4.20\nscone=180 1.80\n"
                  "jam    failed: ECRASH (signal 11)\nmilk=90 0.90\n", 0);
}

/* README, "Debugging callbacks": in process, gdb stops on the faulting
 * line of the callback. */
TEST(example_prices_under_gdb_in_process)
{
    if (test_run("command -v gdb >/dev/null", NULL, 0) != 0)
        SKIP("no gdb (apt-get install gdb)");
    char cmd[1024], out[65536];
    snprintf(cmd, sizeof cmd,
             "PMAP_START=inline gdb -nx -batch -ex run -ex bt "
             "%s/examples/prices 2>&1", test_build_dir());
    ASSERT_EQ(test_run(cmd, out, sizeof out), 0);
    if (strstr(out, "ptrace: Operation not permitted") != NULL)
        SKIP("gdb may not trace here");
    ASSERT(strstr(out, "SIGSEGV") != NULL);
    ASSERT(strstr(out, "in cents (") != NULL);
    ASSERT(strstr(out, "examples/prices.c:22") != NULL);
}
