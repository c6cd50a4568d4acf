/* SPDX-License-Identifier: MIT */
/*
 * test_cgroup.c - pool_create(0) honours a CPU quota set by a container
 * runtime, through cgroup v1 (cpu.cfs_quota_us) or v2 (cpu.max): a process
 * is moved into a new cgroup with half a CPU and must get one worker.  It
 * needs root and a writable cgroup hierarchy with the cpu controller;
 * elsewhere the test says why it skips.
 */
#include "test.h"

#include "pmap.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Where the hierarchy with the cpu controller is mounted: v2 (cgroup2, cpu
 * in its cgroup.controllers) or v1 (cgroup with the cpu option). */
static int cpu_mount(int v2, char *mount, size_t size)
{
    FILE *f = fopen("/proc/self/mountinfo", "r");
    char line[1024];
    int found = 0;
    while (f != NULL && !found && fgets(line, sizeof line, f) != NULL) {
        char m[512], type[64], super[256];
        const char *dash = strstr(line, " - ");
        if (dash == NULL || sscanf(line, "%*s %*s %*s %*s %511s", m) != 1 ||
            sscanf(dash, " - %63s %*s %255s", type, super) != 2)
            continue;
        if (v2)
            found = strcmp(type, "cgroup2") == 0;
        else
            found = strcmp(type, "cgroup") == 0 &&
                    (strncmp(super, "rw,cpu,", 7) == 0 ||
                     strcmp(super, "rw,cpu") == 0 ||
                     strstr(super, ",cpu,") != NULL);
        if (found)
            snprintf(mount, size, "%s", m);
    }
    if (f != NULL)
        fclose(f);
    return found;
}

static int write_file(const char *dir, const char *name, const char *text)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* pool_size(pool_create(0)) in a child moved into group dir. */
static int size_in_group(const char *dir)
{
    int go[2];
    ASSERT(pipe(go) == 0);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        char c;
        close(go[1]);
        if (read(go[0], &c, 1) != 1)
            _exit(100);
        pool_t *pool = pool_create(0);
        int n = pool ? pool_size(pool) : 101;
        pool_destroy(pool);
        _exit(n);
    }
    close(go[0]);
    char text[32];
    snprintf(text, sizeof text, "%ld\n", (long)pid);
    int moved = write_file(dir, "cgroup.procs", text);
    ASSERT(write(go[1], "g", 1) == 1);
    close(go[1]);
    int status;
    ASSERT(waitpid(pid, &status, 0) == pid);
    ASSERT(WIFEXITED(status));
    return moved == 0 ? WEXITSTATUS(status) : -1;
}

/* Makes group dir under mount, or says why not. */
static void make_group(const char *mount, char *dir, size_t size)
{
    if (geteuid() != 0)
        SKIP("needs root to create a cgroup");
    snprintf(dir, size, "%s/pmap-test-%ld", mount, (long)getpid());
    if (mkdir(dir, 0755) != 0) {
        char why[256];
        snprintf(why, sizeof why, "cannot create a cgroup in %s: %s", mount,
                 strerror(errno));
        SKIP(why);
    }
}

TEST(cgroup_v1_cpu_quota_caps_the_default_size)
{
    char mount[512], dir[1024];
    if (!cpu_mount(0, mount, sizeof mount))
        SKIP("no cgroup v1 hierarchy with the cpu controller here");
    make_group(mount, dir, sizeof dir);
    int half = write_file(dir, "cpu.cfs_period_us", "100000") == 0 &&
                       write_file(dir, "cpu.cfs_quota_us", "50000") == 0
                   ? size_in_group(dir)
                   : -2;
    int none = write_file(dir, "cpu.cfs_quota_us", "-1") == 0
                   ? size_in_group(dir)
                   : -2;
    rmdir(dir);
    ASSERT_EQ(half, 1);     /* half a CPU: one worker */
    ASSERT(none >= 1);
}

TEST(cgroup_v2_cpu_max_caps_the_default_size)
{
    char mount[512], dir[1024], controllers[256] = "";
    if (!cpu_mount(1, mount, sizeof mount))
        SKIP("no cgroup v2 hierarchy here");
    snprintf(dir, sizeof dir, "%s/cgroup.controllers", mount);
    FILE *f = fopen(dir, "r");
    if (f != NULL) {
        if (fgets(controllers, sizeof controllers, f) == NULL)
            controllers[0] = '\0';
        fclose(f);
    }
    if (strstr(controllers, "cpu ") == NULL &&
        strcmp(controllers, "cpu\n") != 0 &&
        strstr(controllers, " cpu\n") == NULL)
        SKIP("the cgroup v2 hierarchy has no cpu controller here (it is "
             "bound to v1)");
    write_file(mount, "cgroup.subtree_control", "+cpu");
    make_group(mount, dir, sizeof dir);
    int half = write_file(dir, "cpu.max", "50000 100000") == 0
                   ? size_in_group(dir)
                   : -2;
    rmdir(dir);
    if (half == -2)
        SKIP("cannot set cpu.max here");
    ASSERT_EQ(half, 1);
}
