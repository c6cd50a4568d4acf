/* SPDX-License-Identifier: MIT */
/*
 * cpu.c - how many CPUs this process may really use, the default number of
 * workers: the CPUs of its affinity mask (taskset, cpusets), capped by a
 * CPU quota on the way from its cgroup to the root: cgroup v2's cpu.max, or
 * v1's cpu.cfs_quota_us (the JVM and Go runtimes read both).  Counting
 * online CPUs alone oversubscribes containers (cpython #80235).
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE     /* sched_getaffinity, CPU_COUNT */
#endif

#include "pmap_internal.h"

#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Reads a small text file into buf (NUL-terminated); false on failure. */
static bool read_text(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    size_t got = 0;
    while (got + 1 < size) {
        ssize_t r = pmap__read(fd, buf + got, size - 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    pmap__close(&fd);
    buf[got] = '\0';
    return got > 0;
}

/* CPUs granted by a quota of `quota` in each `period`; LONG_MAX for
 * none (v2's "max", v1's -1). */
static long quota_cpus(long long quota, long long period)
{
    if (quota <= 0 || period <= 0)
        return LONG_MAX;
    return (long)((quota + period - 1) / period);
}

/* Reads file `name` of directory dir, as read_text. */
static bool read_in(const char *dir, const char *name, char *buf, size_t size)
{
    char path[PATH_MAX];
    int n = snprintf(path, sizeof path, "%s/%s", dir, name);
    return n > 0 && (size_t)n < sizeof path && read_text(path, buf, size);
}

/* The quota of one cgroup directory, v2 (cpu.max: "quota period" or
 * "max period") or v1 (cpu.cfs_quota_us, cpu.cfs_period_us). */
static long dir_cpus(const char *dir, bool v2)
{
    char text[64], text2[64];
    long long quota, period;
    if (v2)
        return read_in(dir, "cpu.max", text, sizeof text) &&
                       sscanf(text, "%lld %lld", &quota, &period) == 2
                   ? quota_cpus(quota, period)
                   : LONG_MAX;  /* "max", absent or unreadable: no limit */
    return read_in(dir, "cpu.cfs_quota_us", text, sizeof text) &&
                   read_in(dir, "cpu.cfs_period_us", text2, sizeof text2) &&
                   sscanf(text, "%lld", &quota) == 1 &&
                   sscanf(text2, "%lld", &period) == 1
               ? quota_cpus(quota, period)
               : LONG_MAX;
}

/* Whether the comma-separated list names the cpu controller. */
static bool lists_cpu(char *list)
{
    char *t;
    for (char *c = strtok_r(list, ",", &t); c; c = strtok_r(NULL, ",", &t)) {
        if (strcmp(c, "cpu") == 0)
            return true;
    }
    return false;
}

/*
 * Where a hierarchy is mounted (v2: fstype cgroup2; v1: fstype cgroup with
 * the cpu controller among its options), and the cgroup path its root
 * shows (not "/" in a container that mounts its own cgroup only).  From
 * /proc/self/mountinfo: "id parent dev root mountpoint opts - fstype src
 * superopts".  False if it is not mounted.
 */
static bool find_mount(bool v2, char *mount, char *root, size_t size)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (f == NULL)
        return false;
    char line[1024];
    bool found = false;
    while (!found && fgets(line, sizeof line, f) != NULL) {
        char r[512], m[512], type[64], super[256];
        const char *dash = strstr(line, " - ");
        if (dash == NULL ||
            sscanf(line, "%*s %*s %*s %511s %511s", r, m) != 2 ||
            sscanf(dash, " - %63s %*s %255s", type, super) != 2)
            continue;
        found = v2 ? strcmp(type, "cgroup2") == 0
                   : strcmp(type, "cgroup") == 0 && lists_cpu(super);
        found = found && strlen(m) < size && strlen(r) < size;
        if (found) {
            strcpy(mount, m);
            strcpy(root, r);
        }
    }
    fclose(f);
    return found;
}

/* This process's cgroup in a hierarchy, from /proc/self/cgroup ("0::path"
 * for v2, "n:controllers:path" with cpu among the controllers for v1). */
static bool own_group(bool v2, char *group, size_t size)
{
    FILE *f = fopen("/proc/self/cgroup", "re");
    if (f == NULL)
        return false;
    char line[1024];
    bool found = false;
    while (!found && fgets(line, sizeof line, f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        char *controllers = strchr(line, ':'), *path;
        if (controllers == NULL || (path = strchr(++controllers, ':')) == NULL)
            continue;
        *path++ = '\0';
        found = v2 ? strncmp(line, "0:", 2) == 0 && *controllers == '\0'
                   : lists_cpu(controllers);
        found = found && strlen(path) < size;
        if (found)
            strcpy(group, path);
    }
    fclose(f);
    return found;
}

/* The smallest CPU quota from this process's cgroup up to the root of the
 * hierarchy (v2 or v1), as far as the hierarchy is mounted here. */
static long hierarchy_cpus(bool v2)
{
    char mount[512], root[512], group[512], dir[PATH_MAX];
    if (!find_mount(v2, mount, root, sizeof mount) ||
        !own_group(v2, group, sizeof group))
        return LONG_MAX;
    /* The part of our path below the mount's root. */
    size_t rootlen = strcmp(root, "/") == 0 ? 0 : strlen(root);
    const char *below = strncmp(group, root, rootlen) == 0 ? group + rootlen
                                                           : "";
    int n = snprintf(dir, sizeof dir, "%s%s", mount,
                     strcmp(below, "/") == 0 ? "" : below);
    if (n < 0 || (size_t)n >= sizeof dir)
        return LONG_MAX;
    long best = LONG_MAX;
    size_t top = strlen(mount);
    for (;;) {
        long cpus = dir_cpus(dir, v2);
        best = cpus < best ? cpus : best;
        char *slash = strrchr(dir, '/');
        if (slash == NULL || (size_t)(slash - dir) < top)
            break;
        *slash = '\0';
    }
    return best;
}

/* The smallest CPU quota of this process: cgroup v2 (cpu.max, as set by
 * container runtimes) and v1 (cpu.cfs_quota_us, as on Docker hosts with
 * the cpu controller on v1), whichever is mounted. */
static long cgroup_cpus(void)
{
    long v2 = hierarchy_cpus(true), v1 = hierarchy_cpus(false);
    return v2 < v1 ? v2 : v1;
}

/* The default number of workers: at least 1. */
int pmap__cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        n = CPU_COUNT(&set);
#endif
    long quota = cgroup_cpus();
    if (quota < n)
        n = quota;
    if (n > PMAP_MAX_WORKERS)
        n = PMAP_MAX_WORKERS;
    return n < 1 ? 1 : (int)n;
}
