/* SPDX-License-Identifier: MIT */
/*
 * buf.c - growable byte buffers, used to build and receive frames.
 *
 * A buffer only grows (doubling), so code that keeps offsets into it stays
 * valid while pointers may not: hold offsets across appends.
 */
#include "pmap_internal.h"

#include <stdlib.h>
#include <string.h>

/* Makes room for extra more bytes after len. */
int pmap__buf_reserve(pmap__buf_t *b, size_t extra)
{
    if (b->data != NULL && extra <= b->cap - b->len)
        return 0;
    if (extra > SIZE_MAX - b->len)
        return PMAP_ENOMEM;
    size_t need = b->len + extra;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    unsigned char *data = b->lent ? malloc(cap) : realloc(b->data, cap);
    if (data == NULL)
        return PMAP_ENOMEM;
    if (b->lent && b->len > 0)
        memcpy(data, b->data, b->len);
    b->data = data;
    b->cap = cap;
    b->lent = false;
    return 0;
}

/* Gives an empty buffer size bytes at room, which it never frees: it
 * outgrows them into memory of its own. */
void pmap__buf_lend(pmap__buf_t *b, void *room, size_t size)
{
    if (b->data == NULL && room != NULL)
        *b = (pmap__buf_t){room, 0, size, true};
}

/* Appends n uninitialized bytes and returns them, or NULL without memory. */
void *pmap__buf_append(pmap__buf_t *b, size_t n)
{
    if (pmap__buf_reserve(b, n) < 0)
        return NULL;
    void *p = b->data + b->len;
    b->len += n;
    return p;
}

int pmap__buf_put(pmap__buf_t *b, const void *data, size_t n)
{
    void *p = pmap__buf_append(b, n);
    if (p == NULL)
        return PMAP_ENOMEM;
    if (n > 0)
        memcpy(p, data, n);
    return 0;
}

/* Appends zero bytes until len is a multiple of align. */
int pmap__buf_pad(pmap__buf_t *b, size_t align)
{
    size_t n = (align - b->len % align) % align;
    void *p = pmap__buf_append(b, n);
    if (p == NULL)
        return PMAP_ENOMEM;
    memset(p, 0, n);
    return 0;
}

/* Drops the first n bytes. */
void pmap__buf_consume(pmap__buf_t *b, size_t n)
{
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

void pmap__buf_free(pmap__buf_t *b)
{
    if (!b->lent)
        free(b->data);
    *b = (pmap__buf_t){0};
}

/*
 * Makes room for at least one more element in array, of *cap elements of
 * size bytes, by doubling it (8 at first).  Returns the array, perhaps
 * moved, with *cap updated; or NULL without memory, the array then intact.
 */
void *pmap__grow(void *array, size_t *cap, size_t size)
{
    size_t n = *cap ? *cap : 4;
    if (n > SIZE_MAX / 2 / size)
        return NULL;
    void *p = realloc(array, 2 * n * size);
    if (p != NULL)
        *cap = 2 * n;
    return p;
}
