/* SPDX-License-Identifier: MIT */
/*
 * shm.c - memory shared between the caller and its workers: the slots that
 * tell which item each worker runs, and each worker's arena, through which
 * large strings and buffers travel with one copy instead of two (the
 * caller's into the arena; the worker reads them in place).  Memory is
 * mapped before the worker that uses it is forked, so the worker inherits
 * it at the same address.
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

/* Argument or result slot `slot` of a worker's arena; empty without one. */
pmap__region_t pmap__arena_slot(unsigned char *arena, unsigned slot,
                                bool results)
{
    if (arena == NULL)
        return (pmap__region_t){NULL, 0, 0};
    size_t at = ((results ? 2u : 0u) + slot % 2) * (size_t)PMAP__SLOT_SIZE;
    return (pmap__region_t){arena + at, PMAP__SLOT_SIZE, 0};
}
