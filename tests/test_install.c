/* SPDX-License-Identifier: MIT */
/*
 * test_install.c - `make install` into a staging folder, then an example
 * built against the installed copy through pkg-config, as a user would,
 * with the shared library and with the static one.
 */
#include "test.h"

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
