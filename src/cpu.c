/* SPDX-License-Identifier: MIT */
/*
 * cpu.c - how many CPUs this process may really use, the default number of
 * workers: the CPUs of its affinity mask (taskset, cpusets), capped by a
 * cgroup v2 CPU quota (cpu.max, as set by container runtimes) on the way
 * from its cgroup to the root.  Counting online CPUs alone oversubscribes
 * containers (cpython #80235).
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

/* CPUs granted by one cpu.max file ("max 100000" or "quota period"). */
static long quota_cpus(const char *path)
{
    char text[64];
    long long quota, period;
    if (!read_text(path, text, sizeof text) ||
        sscanf(text, "%lld %lld", &quota, &period) != 2 || quota <= 0 ||
        period <= 0)
        return LONG_MAX;    /* "max", absent, or unreadable: no limit */
    return (long)((quota + period - 1) / period);
}

/* The smallest CPU quota from this process's cgroup (v2) up to the root. */
static long cgroup_cpus(void)
{
    char line[512], path[PATH_MAX];
    if (!read_text("/proc/self/cgroup", line, sizeof line) ||
        strncmp(line, "0::", 3) != 0)
        return LONG_MAX;
    line[strcspn(line, "\n")] = '\0';
    long best = LONG_MAX;
    char *group = line + 3;
    for (;;) {
        int n = snprintf(path, sizeof path, "/sys/fs/cgroup%s/cpu.max",
                         strcmp(group, "/") == 0 ? "" : group);
        if (n > 0 && (size_t)n < sizeof path) {
            long cpus = quota_cpus(path);
            best = cpus < best ? cpus : best;
        }
        char *slash = strrchr(group, '/');
        if (slash == NULL || slash == group)
            break;
        *slash = '\0';
    }
    return best;
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
