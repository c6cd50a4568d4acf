/* SPDX-License-Identifier: MIT */
/*
 * shm.c - memory shared between the caller and its workers.  It is mapped
 * before the workers are forked, so every worker, replacements included,
 * inherits it at the same address.
 */
#if !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE     /* MAP_ANONYMOUS, POSIX only since 2024 */
#endif

#include "pmap_internal.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

/* Maps size bytes of zeroed shared memory; NULL on failure. */
void *pmap__shm_map(size_t size)
{
#ifdef MAP_ANONYMOUS
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
#else
    int fd = open("/dev/zero", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
#endif
    return p == MAP_FAILED ? NULL : p;
}

void pmap__shm_unmap(void *p, size_t size)
{
    if (p != NULL)
        munmap(p, size);
}
