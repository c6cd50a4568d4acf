/* SPDX-License-Identifier: MIT */
/*
 * test_install.c - `make install` into a staging folder, then an example
 * built against the installed copy as a user would, with the shared
 * library and the static one: through pkg-config, CMake's find_package and
 * Meson's dependency(); and the shared library's exports and version.
 */
#include "test.h"

#include "pmap.h"

#include <unistd.h>

static const char want[] = "[0, 2, 4, 6, 8, 10, 12, 14, 16, 18]\n";

/* Installs into a new staging folder dir (PREFIX=/usr under it), as a
 * package build would; skips unless make test set the compiler. */
static void stage(char dir[], const char **cc, const char **flags)
{
    *cc = getenv("PMAP_CC");
    *flags = getenv("PMAP_USER_FLAGS");     /* sanitizers, say */
    if (*cc == NULL || *flags == NULL)
        SKIP("PMAP_CC and PMAP_USER_FLAGS are set by make test");
    ASSERT(mkdtemp(dir) != NULL);
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "make -s install B=%s DESTDIR=%s PREFIX=/usr >/dev/null 2>&1",
             test_build_dir(), dir);
    ASSERT_EQ(test_run(cmd, NULL, 0), 0);
}

static void unstage(const char *dir)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    test_run(cmd, NULL, 0);
}

/* Runs cmd, which runs the installed add example, and checks its output. */
static void expect_add_output(const char *cmd)
{
    char out[256];
    ASSERT_EQ(test_run(cmd, out, sizeof out), 0);
    ASSERT_STR_EQ(out, want);
}

/* Runs the command that builds a consumer with tool, logging to dir/log;
 * on failure shows the log's end and fails the test. */
static void build_consumer(const char *cmd, const char *dir, const char *tool)
{
    if (test_run(cmd, NULL, 0) == 0)
        return;
    char tail[1024];
    snprintf(tail, sizeof tail, "tail -n 30 %s/log >&2", dir);
    test_run(tail, NULL, 0);
    unstage(dir);
    test_fail(__FILE__, __LINE__, "%s could not build the consumer", tool);
}

TEST(install_and_link_with_pkg_config)
{
    if (test_run("command -v pkg-config >/dev/null", NULL, 0) != 0)
        SKIP("pkg-config is not installed");
    char dir[] = "/tmp/pmap-install-XXXXXX";
    const char *cc, *flags;
    stage(dir, &cc, &flags);
    char cmd[4096];

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
    expect_add_output(cmd);

    snprintf(cmd, sizeof cmd,
             "%s %s -std=c11 -o %s/add_static examples/add.c $(%s --cflags "
             "pmap) %s/usr/lib/libpmap.a -pthread && %s/add_static",
             cc, flags, dir, pkg, dir, dir);
    expect_add_output(cmd);
    unstage(dir);
}

/* find_package(pmap CONFIG) against the installed copy: pmap::pmap and
 * pmap::pmap_static. */
TEST(install_and_build_with_cmake)
{
    if (test_run("command -v cmake >/dev/null", NULL, 0) != 0)
        SKIP("cmake is not installed (apt-get install cmake)");
    char dir[] = "/tmp/pmap-cmake-XXXXXX";
    const char *cc, *flags;
    stage(dir, &cc, &flags);
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s/proj && cp examples/add.c %s/proj/ && "
             "printf '%%s\\n' 'cmake_minimum_required(VERSION 3.13)' "
             "'project(consumer C)' "
             "'find_package(pmap %d.%d CONFIG REQUIRED)' "
             "'add_executable(add_shared add.c)' "
             "'target_link_libraries(add_shared PRIVATE pmap::pmap)' "
             "'add_executable(add_static add.c)' "
             "'target_link_libraries(add_static PRIVATE pmap::pmap_static)' "
             "> %s/proj/CMakeLists.txt && "
             "cmake -S %s/proj -B %s/proj/build -DCMAKE_PREFIX_PATH=%s/usr "
             "-DCMAKE_C_COMPILER=%s -DCMAKE_C_FLAGS='%s' "
             "-DCMAKE_EXE_LINKER_FLAGS='%s' >%s/log 2>&1 && "
             "cmake --build %s/proj/build >>%s/log 2>&1",
             dir, dir, PMAP_VERSION_MAJOR, PMAP_VERSION_MINOR, dir, dir, dir,
             dir, cc, flags, flags, dir, dir, dir);
    build_consumer(cmd, dir, "cmake");
    const char *programs[] = {"add_shared", "add_static"};
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, "%s/proj/build/%s", dir, programs[i]);
        expect_add_output(cmd);
    }
    unstage(dir);
}

/* dependency('pmap') in Meson, through pkg-config. */
TEST(install_and_build_with_meson)
{
    if (test_run("command -v meson >/dev/null && command -v pkg-config "
                 ">/dev/null",
                 NULL, 0) != 0)
        SKIP("meson or pkg-config is not installed (apt-get install meson "
             "pkg-config)");
    char dir[] = "/tmp/pmap-meson-XXXXXX";
    const char *cc, *flags;
    stage(dir, &cc, &flags);
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s/proj && cp examples/add.c %s/proj/ && "
             "printf '%%s\\n' \"project('consumer', 'c', "
             "default_options: ['c_std=c11'])\" "
             "\"executable('add', 'add.c', dependencies: "
             "dependency('pmap'))\" > %s/proj/meson.build && "
             "cd %s/proj && PKG_CONFIG_PATH=%s/usr/lib/pkgconfig "
             "PKG_CONFIG_SYSROOT_DIR=%s CC=%s CFLAGS='%s' LDFLAGS='%s' "
             "meson setup build >%s/log 2>&1 && meson compile -C build "
             ">>%s/log 2>&1",
             dir, dir, dir, dir, dir, dir, cc, flags, flags, dir, dir);
    build_consumer(cmd, dir, "meson");
    snprintf(cmd, sizeof cmd, "LD_LIBRARY_PATH=%s/usr/lib %s/proj/build/add",
             dir, dir);
    expect_add_output(cmd);
    unstage(dir);
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
