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
    const char *files = "include/pmap.h src/map.c tests/test.h Makefile "
                        "build/libpmap.a /dev/null no-such-file";
    char cmd[1024], want[8192];
    snprintf(cmd, sizeof cmd, "LC_ALL=C wc %s 2>/dev/null", files);
    ASSERT_EQ(test_run(cmd, want, sizeof want), 1);
    expect_output("wc", files, want, 1);
    snprintf(cmd, sizeof cmd, "LC_ALL=C wc include/pmap.h");
    ASSERT_EQ(test_run(cmd, want, sizeof want), 0);
    expect_output("wc", "include/pmap.h", want, 0);
}
