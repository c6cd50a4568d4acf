/* SPDX-License-Identifier: MIT */
/*
 * fuzz_frames.c - libFuzzer target for everything the caller decodes from
 * a worker: frame headers as the reader takes them from a byte stream,
 * RESULT payloads for each kind of result, their failure records, and
 * argument columns.  Whatever it accepts, it then reads in full (string by
 * string, byte by byte), so that AddressSanitizer sees any read past the
 * input.  Build and run: make fuzz (clang).
 */
#include "pmap_internal.h"

#include <stdlib.h>
#include <string.h>

static const pmap__type_t types[] = {
    {PMAP__VALUE, 4, NULL, NULL}, {PMAP__VALUE, 24, NULL, NULL},
    {PMAP__STRING, sizeof(char *), NULL, NULL},
    {PMAP__BYTES, sizeof(pmap_bytes_t), NULL, NULL}};

static volatile size_t sink;

/* A pretend shared region, so that references into one are decoded too. */
static unsigned char region_bytes[1 << 16];
static const pmap__region_t region = {.base = region_bytes,
                                      .size = sizeof region_bytes};

/* Reads every byte of the values of a decoded column. */
static void touch_column(const pmap__column_t *col, pmap__type_t t,
                         size_t count)
{
    for (size_t i = 0; i < count; i++) {
        const unsigned char *v = col->base + i * col->stride;
        if (t.kind == PMAP__VALUE) {
            for (size_t j = 0; j < t.size; j++)
                sink += v[j];
        } else if (t.kind == PMAP__BYTES) {
            pmap_bytes_t b;
            memcpy(&b, v, sizeof b);
            for (size_t j = 0; j < b.size; j++)
                sink += ((const unsigned char *)b.data)[j];
        } else {
            const char *s;
            memcpy(&s, v, sizeof s);
            sink += s ? strlen(s) : 0;
        }
    }
}

static void fuzz_result(const unsigned char *p, size_t len)
{
    if (len < 16)
        return;
    /* Take first and count from the payload itself, so that decoding goes
     * past its first check; keep count small enough to allocate. */
    uint64_t first = pmap__get_u64(p), count = pmap__get_u64(p + 8);
    if (count == 0 || count > 4096)
        return;
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        void *scratch = malloc(pmap__column_scratch(types[t], count) + 1);
        pmap__result_t r;
        if (pmap__result_decode(p, len, types[t], first, count, false,
                                scratch, &r, &region) == 0) {
            touch_column(&r.column, types[t], (size_t)count);
            const unsigned char *rec = r.failures;
            for (uint64_t i = 0; i < r.nfailed; i++) {
                pmap__failure_record_t f;
                rec = pmap__failure_next(rec, &f);
                for (size_t j = 0; j < f.length; j++)
                    sink += (unsigned char)f.message[j];
            }
        }
        free(scratch);
    }
}

static void fuzz_columns(const unsigned char *p, size_t len)
{
    size_t count = len ? p[0] % 16 + 1 : 1;
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        void *scratch = malloc(pmap__column_scratch(types[t], count) + 1);
        pmap__column_t col;
        size_t used;
        if (pmap__column_decode(p, len, types[t], count, scratch, &col,
                                &used, &region) == 0) {
            if (used > len)
                abort();
            touch_column(&col, types[t], count);
        }
        free(scratch);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy, 16-aligned like the reader's buffer. */
    pmap__reader_t r = {0};
    if (pmap__buf_put(&r.buf, data, size) < 0)
        return 0;
    unsigned char *exact = malloc(size ? size : 1);
    memcpy(exact, data, size);
    fuzz_columns(exact, size);
    free(exact);

    pmap__header_t h;
    const unsigned char *payload;
    while (pmap__reader_next(&r, &h, &payload) == 1) {
        /* The payload again in a buffer of exactly its size. */
        unsigned char *copy = malloc(h.length ? (size_t)h.length : 1);
        memcpy(copy, payload, (size_t)h.length);
        if (h.type == PMAP__RESULT)
            fuzz_result(copy, (size_t)h.length);
        else
            fuzz_columns(copy, (size_t)h.length);
        free(copy);
    }
    pmap__reader_free(&r);
    return 0;
}
