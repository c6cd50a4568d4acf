/* SPDX-License-Identifier: MIT */
/*
 * test_install.c - `make install` into a staging folder, then an example
 * built against the installed copy through pkg-config, as a user would,
 * with the shared library and with the static one.
 */
#include "test.h"

#include "pmap.h"

#include <unistd.h>

TEST(install_and_link_with_pkg_config)
{
    if (test_run("command -v pkg-config >/dev/null", NULL, 0) != 0)
        SKIP("pkg-config is not installed");
    const char *cc = getenv("PMAP_CC");
    const char *flags = getenv("PMAP_USER_FLAGS");  /* sanitizers, say */
    if (cc == NULL || flags == NULL)
        SKIP("PMAP_CC and PMAP_USER_FLAGS are set by make test");
    char dir[] = "/tmp/pmap-install-XXXXXX";
    ASSERT(mkdtemp(dir) != NULL);
    char cmd[4096], out[256];
    snprintf(cmd, sizeof cmd,
             "make -s install B=%s DESTDIR=%s PREFIX=/usr >/dev/null 2>&1",
             test_build_dir(), dir);
    ASSERT_EQ(test_run(cmd, NULL, 0), 0);

    /* PKG_CONFIG_SYSROOT_DIR maps /usr in pmap.pc into the staging folder. */
    char pkg[512];
    snprintf(pkg, sizeof pkg,
             "PKG_CONFIG_PATH=%s/usr/lib/pkgconfig PKG_CONFIG_SYSROOT_DIR=%s "
             "pkg-config",
             dir, dir);
    snprintf(cmd, sizeof cmd,
             "%s %s -std=c11 -o %s/add examples/add.c $(%s --cflags --libs "
             "pmap) && LD_LIBRARY_PATH=%s/usr/lib %s/add",
             cc, flags, dir, pkg, dir, dir);
    ASSERT_EQ(test_run(cmd, out, sizeof out), 0);
    ASSERT_STR_EQ(out, "[0, 2, 4, 6, 8, 10, 12, 14, 16, 18]\n");

    snprintf(cmd, sizeof cmd,
             "%s %s -std=c11 -o %s/add_static examples/add.c $(%s --cflags "
             "pmap) %s/usr/lib/libpmap.a -pthread && %s/add_static",
             cc, flags, dir, pkg, dir, dir);
    ASSERT_EQ(test_run(cmd, out, sizeof out), 0);
    ASSERT_STR_EQ(out, "[0, 2, 4, 6, 8, 10, 12, 14, 16, 18]\n");

    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    test_run(cmd, NULL, 0);
}

/* The shared library exports the calls pmap.h declares (PMAP_API), and
 * nothing else: the version script keeps the internals local. */
TEST(install_shared_library_exports_exactly_the_header)
{
    if (test_run("command -v nm >/dev/null", NULL, 0) != 0)
        SKIP("nm is not installed (binutils)");
    char cmd[1024], exported[8192], declared[8192];
    snprintf(cmd, sizeof cmd,
             "nm -D --defined-only %s/libpmap.so | awk '$2 ~ /^[TDBRW]$/ "
             "{ sub(/@.*/, \"\", $3); print $3 }' | sort",
             test_build_dir());
    ASSERT_EQ(test_run(cmd, exported, sizeof exported), 0);
    ASSERT_EQ(test_run("grep -v '^#define PMAP_API' include/pmap.h | "
                       "tr '\\n' ' ' | grep -o "
                       "'PMAP_API[^(;]*(' | sed 's/.*[ *]\\([a-z_0-9]*\\) *(/\\1/' "
                       "| sort",
                       declared, sizeof declared),
              0);
    ASSERT(strlen(declared) > 200);     /* the header was read */
    ASSERT_STR_EQ(exported, declared);
}

/* The version compiled against is the version run with. */
TEST(install_version_at_run_time)
{
    ASSERT_EQ(pmap_version(), PMAP_VERSION);
    ASSERT(PMAP_VERSION == PMAP_VERSION_MAJOR * 10000 +
                               PMAP_VERSION_MINOR * 100 + PMAP_VERSION_PATCH);
}
