/* SPDX-License-Identifier: MIT */
/*
 * seeds.c - writes a few valid frames, made by the real encoder, into the
 * folder given as argument: the starting corpus of fuzz_frames.
 */
#include "pmap_internal.h"

#include <stdio.h>
#include <string.h>

static int save(const char *dir, const char *name, pmap__outq_t *q)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return 1;
    struct iovec iov[64];
    int n = pmap__outq_iov(q, iov, 64);
    for (int i = 0; i < n; i++)
        fwrite(iov[i].iov_base, 1, iov[i].iov_len, f);
    pmap__outq_free(q);
    return fclose(f) != 0;
}

/* A RESULT frame for items [5, 8) with one failure record. */
static void result(pmap__outq_t *q, pmap__type_t t, const void *values)
{
    size_t frame = pmap__outq_begin(q, PMAP__RESULT, 1);
    pmap__outq_u64(q, 5);
    pmap__outq_u64(q, 3);
    pmap__outq_u64(q, 1000);
    pmap__outq_u64(q, 1);
    pmap__outq_u64(q, PMAP__COLUMN_IN_FRAME);
    pmap__outq_u64(q, 0);
    pmap__column_encode(q, t, values, t.size, 3, NULL);
    uint64_t record[3] = {6, (uint64_t)-7, 5};
    pmap__outq_copy(q, record, sizeof record);
    pmap__outq_copy(q, "oops!", 5);
    pmap__outq_pad(q);
    pmap__outq_end(q, frame);
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    pmap__outq_t q = {0};
    int ints[3] = {1, 2, 3};
    result(&q, (pmap__type_t){.kind = PMAP__VALUE, .size = sizeof(int)},
           ints);
    int bad = save(argv[1], "result-int", &q);
    const char *strs[3] = {"a", NULL, "longer string"};
    result(&q, (pmap__type_t){.kind = PMAP__STRING, .size = sizeof(char *)},
           strs);
    bad |= save(argv[1], "result-string", &q);
    char xyz[] = "xyz", empty[] = "";
    pmap_bytes_t bytes[3] = {{xyz, 3}, {NULL, 0}, {empty, 0}};
    result(&q,
           (pmap__type_t){.kind = PMAP__BYTES, .size = sizeof(pmap_bytes_t)},
           bytes);
    bad |= save(argv[1], "result-bytes", &q);
    return bad;
}
