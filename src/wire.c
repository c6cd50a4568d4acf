/* SPDX-License-Identifier: MIT */
/*
 * wire.c - the frame format spoken on a worker's channel, in one place:
 * headers, the column encoding of argument tuples and results, a builder
 * for outgoing frames and a reader for incoming ones.  Nothing here calls
 * the system except pmap__reader_fill (through fdio.c), so the decoders can
 * be fuzzed alone.
 *
 * A frame is a 32-byte header and a payload padded to 16 bytes:
 *
 *   header   u32 magic "PMA1" | u8 type | 3 bytes 0 | u32 map | u32 0
 *            | u64 payload length | u64 0
 *
 * Both ends are the same program on the same machine, so integers are in
 * host byte order.  Every length read from a frame is checked against the
 * bytes actually present before it is used; a frame that fails a check is
 * PMAP_EPROTO, never an overflow.
 *
 * A column holds one argument (or the result) of `count` consecutive items:
 *
 *   value     count * sizeof(T) bytes, as in the caller's array
 *   string    count u64 lengths (PMAP__NULL_LENGTH for NULL), then each
 *             string with its NUL, each padded to 16
 *   bytes     count u64 sizes (PMAP__NULL_LENGTH for NULL data), then each
 *             buffer padded to 16
 *   codec     as bytes: each value as its encoder wrote it
 *             (PMAP__NULL_LENGTH: it could not be encoded)
 *
 * and is itself padded to 16, so that every value is aligned in the
 * receiver's buffer and can be passed to the callback in place.  A string
 * or buffer of 64 KiB or more may instead travel through the worker's
 * shared memory: its length is flagged and its data replaced by its offset
 * there; one in a block of pmap_alloc, by its place in the heap that every
 * worker reads (see pmap__column_encode).
 */
#include "pmap_internal.h"

#include <stdlib.h>
#include <string.h>

/* Largest payload accepted: far beyond any real frame, below overflow. */
#define FRAME_MAX ((uint64_t)SIZE_MAX / 4)

/* Memory of at least this size is referenced by a frame, not copied. */
#define REFERENCE_MIN 4096

size_t pmap__pad(size_t n)
{
    return (n + PMAP__ALIGN - 1) & ~(size_t)(PMAP__ALIGN - 1);
}

uint64_t pmap__get_u64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    memcpy(p, &v, sizeof v);
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* ---- headers ----------------------------------------------------------- */

void pmap__header_encode(unsigned char *out, const pmap__header_t *h)
{
    memset(out, 0, PMAP__HEADER_SIZE);
    put_u32(out, PMAP__MAGIC);
    out[4] = h->type;
    put_u32(out + 8, h->map);
    memcpy(out + 16, &h->length, sizeof h->length);
}

int pmap__header_decode(const unsigned char *in, pmap__header_t *h)
{
    static const unsigned char zero[8];
    if (get_u32(in) != PMAP__MAGIC || memcmp(in + 5, zero, 3) != 0 ||
        memcmp(in + 12, zero, 4) != 0 || memcmp(in + 24, zero, 8) != 0)
        return PMAP_EPROTO;
    h->type = in[4];
    h->map = get_u32(in + 8);
    h->length = pmap__get_u64(in + 16);
    if (h->type < PMAP__READY || h->type > PMAP__LEAVE ||
        h->length % PMAP__ALIGN != 0 || h->length > FRAME_MAX)
        return PMAP_EPROTO;
    return 0;
}

/* ---- outgoing frames --------------------------------------------------- */

/* Makes room for more segments (8 at first, then twice as many), out of
 * lent room into memory of the queue's own.  Returns false without
 * memory, the segments intact. */
static bool grow_segments(pmap__outq_t *q)
{
    size_t cap = q->cap;
    pmap__segment_t *segs =
        q->segs_lent ? pmap__grow(NULL, &cap, sizeof *segs)
                     : pmap__grow(q->segs, &cap, sizeof *segs);
    if (segs == NULL)
        return false;
    if (q->segs_lent)
        memcpy(segs, q->segs, q->nsegs * sizeof *segs);
    q->segs = segs;
    q->cap = cap;
    q->segs_lent = false;
    return true;
}

static pmap__segment_t *outq_segment(pmap__outq_t *q)
{
    if (q->nsegs == q->cap && !grow_segments(q)) {
        q->error = PMAP_ENOMEM;
        return NULL;
    }
    return &q->segs[q->nsegs++];
}

/* Gives an empty queue room (PMAP__OUTQ_ROOM bytes, aligned for
 * pointers) for its first frames and segments, which it never frees. */
void pmap__outq_lend(pmap__outq_t *q, unsigned char *room)
{
    if (q->segs != NULL || room == NULL)
        return;
    pmap__buf_lend(&q->scratch, room, PMAP__FIRST_FRAMES);
    q->segs = (pmap__segment_t *)(void *)(room + PMAP__FIRST_FRAMES);
    q->cap = 8;
    q->segs_lent = true;
}

/*
 * Returns n bytes of scratch at the end of the queue, to be filled before
 * the next call, or NULL (and q->error) without memory.
 */
void *pmap__outq_alloc(pmap__outq_t *q, size_t n)
{
    if (q->error != 0)
        return NULL;
    size_t offset = q->scratch.len;
    unsigned char *p = pmap__buf_append(&q->scratch, n);
    if (p == NULL) {
        q->error = PMAP_ENOMEM;
        return NULL;
    }
    pmap__segment_t *last = q->nsegs > q->head ? &q->segs[q->nsegs - 1] : NULL;
    if (last != NULL && last->ptr == NULL &&
        last->offset + last->len == offset) {
        last->len += n;     /* contiguous with the last scratch segment */
    } else {
        pmap__segment_t *s = outq_segment(q);
        if (s == NULL)
            return NULL;
        *s = (pmap__segment_t){NULL, offset, n};
    }
    q->total += n;
    return p;
}

void pmap__outq_copy(pmap__outq_t *q, const void *data, size_t n)
{
    if (n == 0)
        return;
    void *p = pmap__outq_alloc(q, n);
    if (p != NULL)
        memcpy(p, data, n);
}

/* Queues n bytes at data: referenced if large (data must then stay valid
 * until the queue is written), copied otherwise or if the queue owns all
 * its bytes. */
void pmap__outq_add(pmap__outq_t *q, const void *data, size_t n)
{
    if (n < REFERENCE_MIN || q->owns) {
        pmap__outq_copy(q, data, n);
        return;
    }
    if (q->error != 0)
        return;
    pmap__segment_t *s = outq_segment(q);
    if (s != NULL) {
        *s = (pmap__segment_t){data, 0, n};
        q->total += n;
    }
}

/* Gives back the last n bytes pmap__outq_alloc handed out. */
void pmap__outq_trim(pmap__outq_t *q, size_t n)
{
    if (q->error != 0 || n == 0)
        return;
    pmap__segment_t *last = &q->segs[q->nsegs - 1];
    last->len -= n;
    if (last->len == 0)
        q->nsegs--;
    q->scratch.len -= n;
    q->total -= n;
}

void pmap__outq_u64(pmap__outq_t *q, uint64_t v)
{
    pmap__outq_copy(q, &v, sizeof v);
}

/* Queues a u64 that pmap__outq_set fills in later; returns its place. */
size_t pmap__outq_u64_later(pmap__outq_t *q)
{
    size_t at = q->scratch.len;
    pmap__outq_u64(q, 0);
    return at;
}

void pmap__outq_set(pmap__outq_t *q, size_t at, uint64_t v)
{
    if (q->error == 0)
        memcpy(q->scratch.data + at, &v, sizeof v);
}

/* Pads the queue with zeros to a multiple of PMAP__ALIGN. */
void pmap__outq_pad(pmap__outq_t *q)
{
    size_t n = (size_t)(pmap__pad((size_t)q->total) - q->total);
    if (n > 0) {
        void *p = pmap__outq_alloc(q, n);
        if (p != NULL)
            memset(p, 0, n);
    }
}

/*
 * Starts a frame (the queue must be padded) and returns a handle for
 * pmap__outq_end, which fills in the payload length.
 */
size_t pmap__outq_begin(pmap__outq_t *q, uint8_t type, uint32_t map)
{
    size_t frame = q->scratch.len;
    unsigned char *h = pmap__outq_alloc(q, PMAP__HEADER_SIZE);
    if (h != NULL)
        pmap__header_encode(h, &(pmap__header_t){type, map, 0});
    /* Remember where the payload starts, in the header's length field. */
    if (h != NULL)
        memcpy(h + 16, &q->total, sizeof q->total);
    return frame;
}

void pmap__outq_end(pmap__outq_t *q, size_t frame)
{
    pmap__outq_pad(q);
    if (q->error != 0)
        return;
    unsigned char *h = q->scratch.data + frame;
    uint64_t length = q->total - pmap__get_u64(h + 16);
    memcpy(h + 16, &length, sizeof length);
}

/* Queues everything src holds (complete frames), referencing its large
 * segments: src must outlive the writing of q and stay unchanged. */
void pmap__outq_append(pmap__outq_t *q, const pmap__outq_t *src)
{
    for (size_t i = 0; i < src->nsegs; i++) {
        const pmap__segment_t *s = &src->segs[i];
        pmap__outq_add(q, s->ptr ? s->ptr : src->scratch.data + s->offset,
                       s->len);
    }
}

bool pmap__outq_empty(const pmap__outq_t *q)
{
    return q->head == q->nsegs;
}

/* Whether nothing of what q holds has been written yet: what went before
 * ended with a whole frame, so another may go out ahead of q's. */
bool pmap__outq_between_frames(const pmap__outq_t *q)
{
    return q->head == 0 && q->head_done == 0;
}

/* Fills at most max iovecs with what is left to write; returns how many. */
int pmap__outq_iov(const pmap__outq_t *q, struct iovec *iov, int max)
{
    int n = 0;
    for (size_t i = q->head; i < q->nsegs && n < max; i++, n++) {
        const pmap__segment_t *s = &q->segs[i];
        const unsigned char *p = s->ptr ? s->ptr : q->scratch.data + s->offset;
        size_t skip = i == q->head ? q->head_done : 0;
        iov[n].iov_base = (void *)(p + skip);
        iov[n].iov_len = s->len - skip;
    }
    return n;
}

/* Marks n more bytes as written; an emptied queue forgets its scratch. */
void pmap__outq_advance(pmap__outq_t *q, size_t n)
{
    while (n > 0 && q->head < q->nsegs) {
        size_t left = q->segs[q->head].len - q->head_done;
        if (n < left) {
            q->head_done += n;
            return;
        }
        n -= left;
        q->head++;
        q->head_done = 0;
    }
    if (pmap__outq_empty(q))
        pmap__outq_reset(q);
}

/* Appends everything queued to *to (a transport without a descriptor:
 * inline.c) and resets the queue.  Returns 0 or PMAP_ENOMEM. */
int pmap__outq_drain(pmap__outq_t *q, pmap__buf_t *to)
{
    struct iovec iov[PMAP__IOV];
    int rc = q->error;
    while (rc == 0 && !pmap__outq_empty(q)) {
        int n = pmap__outq_iov(q, iov, PMAP__IOV);
        size_t moved = 0;
        for (int i = 0; i < n && rc == 0; i++) {
            rc = pmap__buf_put(to, iov[i].iov_base, iov[i].iov_len);
            moved += iov[i].iov_len;
        }
        pmap__outq_advance(q, moved);
    }
    pmap__outq_reset(q);
    return rc < 0 ? PMAP_ENOMEM : 0;
}

/* Makes room for frames of n bytes in all, in a few segments, so that
 * queueing them allocates nothing.  Returns 0 or PMAP_ENOMEM. */
int pmap__outq_reserve(pmap__outq_t *q, size_t n)
{
    if (q->cap == 0 && !grow_segments(q))
        return PMAP_ENOMEM;
    return pmap__buf_reserve(&q->scratch, n);
}

void pmap__outq_reset(pmap__outq_t *q)
{
    q->scratch.len = 0;
    q->nsegs = q->head = q->head_done = 0;
    q->total = 0;
    q->error = 0;
}

void pmap__outq_free(pmap__outq_t *q)
{
    pmap__buf_free(&q->scratch);
    if (!q->segs_lent)
        free(q->segs);
    *q = (pmap__outq_t){0};
}

/* ---- columns ----------------------------------------------------------- */

static bool kind_is_variable(int kind)
{
    return kind == PMAP__STRING || kind == PMAP__STRING_OWNED ||
           kind == PMAP__BYTES || kind == PMAP__CODEC;
}

/* Whether the items of kind travel as buffers (no NUL; decoded into
 * pmap_bytes_t). */
static bool kind_is_buffer(int kind)
{
    return kind == PMAP__BYTES || kind == PMAP__CODEC;
}

/* The bytes of a string or buffer item, NULL for a NULL one; its length
 * (without the NUL) in *len, PMAP__NULL_LENGTH for NULL, if len is set. */
static const void *item_data(int kind, const unsigned char *item,
                             uint64_t *len)
{
    if (kind == PMAP__BYTES) {
        pmap_bytes_t b;
        memcpy(&b, item, sizeof b);
        if (len != NULL)
            *len = b.data ? b.size : PMAP__NULL_LENGTH;
        return b.data;
    }
    const char *s;
    memcpy(&s, item, sizeof s);
    if (len != NULL)
        *len = s ? strlen(s) : PMAP__NULL_LENGTH;
    return s;
}

/* Whether a string or buffer of span bytes goes through shared memory. */
static bool goes_shared(const pmap__region_t *shared, uint64_t span)
{
    return shared != NULL && span >= PMAP__SHARED_MIN &&
           span <= shared->size - shared->used;
}

/* Whether the span bytes at data lie in a block of pmap_alloc that the
 * worker reads in place; if so, their place goes in ref (alloc.c). */
static bool in_heap(const pmap__region_t *shared, const void *data,
                    uint64_t span, uint64_t ref[3])
{
    return shared != NULL && shared->heap_find != NULL &&
           span >= PMAP__HEAP_MIN && span <= SIZE_MAX &&
           shared->heap_find(data, (size_t)span, ref);
}

/* ---- encoded values (PMAP_EXPORT_TYPE) -------------------------------- */

/* Bytes tried first for a value that does not go to shared memory: most
 * fit, and what is not used is given back. */
#define ENCODE_GUESS 4096

/* Whether an encoder's answer is a size the wire can carry. */
static bool encoded_size_ok(size_t n)
{
    return n != PMAP_ENCODE_ERROR && (uint64_t)n < PMAP__SHARED_FLAG;
}

/* Encodes value into the queue, trying `guess` bytes first; returns its
 * length word (PMAP__NULL_LENGTH if it could not be encoded). */
static uint64_t encode_queued(pmap__outq_t *q, const pmap__codec_t *c,
                              const void *value, size_t guess)
{
    unsigned char *p = pmap__outq_alloc(q, guess);
    if (p == NULL)
        return PMAP__NULL_LENGTH;
    size_t n = c->encode(value, p, guess);
    if (encoded_size_ok(n) && n > guess) {   /* snprintf-style: again */
        pmap__outq_trim(q, guess);
        guess = n;
        p = pmap__outq_alloc(q, guess);
        if (p == NULL)
            return PMAP__NULL_LENGTH;
        if (c->encode(value, p, guess) != n)
            n = PMAP_ENCODE_ERROR;      /* it changed its mind */
    }
    if (!encoded_size_ok(n)) {
        pmap__outq_trim(q, guess);
        return PMAP__NULL_LENGTH;
    }
    pmap__outq_trim(q, guess - n);
    pmap__outq_pad(q);
    return n;
}

/*
 * Encodes value: straight into the shared region when it has room for a
 * large one (the frame then carries its offset, as for buffers), else into
 * the queue.  Returns its length word.
 */
static uint64_t encode_value(pmap__outq_t *q, const pmap__codec_t *c,
                             const void *value, pmap__region_t *shared)
{
    size_t room = shared ? shared->size - shared->used : 0;
    if (room < PMAP__SHARED_MIN)
        return encode_queued(q, c, value, ENCODE_GUESS);
    unsigned char *at = shared->base + shared->used;
    size_t n = c->encode(value, at, room);
    if (!encoded_size_ok(n))
        return PMAP__NULL_LENGTH;
    if (n > room)
        return encode_queued(q, c, value, n);
    if (n < PMAP__SHARED_MIN) {     /* small: it travels in the frame */
        pmap__outq_copy(q, at, n);
        pmap__outq_pad(q);
        return n;
    }
    pmap__outq_u64(q, shared->used);
    pmap__outq_u64(q, 0);
    shared->used += pmap__pad(n);
    return n | PMAP__SHARED_FLAG;
}

/* A codec column: the length table, then each value as it is encoded
 * (the table is filled in as they are).  Returns the values that could
 * not be encoded. */
static size_t encode_codec_column(pmap__outq_t *q, pmap__type_t type,
                                  const unsigned char *base, size_t stride,
                                  size_t count, pmap__region_t *shared)
{
    size_t lengths = q->scratch.len, failed = 0;
    if (pmap__outq_alloc(q, count * sizeof(uint64_t)) == NULL)
        return 0;
    pmap__outq_pad(q);
    for (size_t i = 0; i < count && q->error == 0; i++) {
        uint64_t len = encode_value(q, type.codec, base + i * stride, shared);
        failed += len == PMAP__NULL_LENGTH;
        if (q->error == 0)
            memcpy(q->scratch.data + lengths + i * sizeof len, &len,
                   sizeof len);
    }
    return failed;
}

/*
 * Queues count values of type read from base + i * stride.  Large values
 * are referenced, not copied: they must outlive the queue's writing.  With
 * a shared region, strings and buffers of PMAP__SHARED_MIN bytes or more
 * are copied there instead while it has room, and the frame carries their
 * offset (length flagged PMAP__SHARED_FLAG, data replaced by a 16-byte
 * record: u64 offset | u64 0).  Where the region has heap_find, strings
 * and buffers of PMAP__HEAP_MIN bytes or more (with the NUL) that lie
 * wholly in a block of pmap_alloc are not copied at all: the length is
 * flagged the same way and the data replaced by a 32-byte record: u64
 * offset in the heap | u64 1 | u64 the block's offset | u64 its size.
 * Values of a codec are encoded on the way.  Returns how many of them
 * could not be (0 for other kinds).
 */
size_t pmap__column_encode(pmap__outq_t *q, pmap__type_t type,
                           const unsigned char *base, size_t stride,
                           size_t count, pmap__region_t *shared)
{
    if (type.kind == PMAP__CODEC)
        return encode_codec_column(q, type, base, stride, count, shared);
    if (!kind_is_variable(type.kind)) {
        if (stride == type.size) {
            pmap__outq_add(q, base, count * type.size);
        } else {
            for (size_t i = 0; i < count; i++)
                pmap__outq_copy(q, base + i * stride, type.size);
        }
        pmap__outq_pad(q);
        return 0;
    }
    /* The lengths go first; keep their offset, scratch may move. */
    size_t lengths = q->scratch.len;
    size_t start = shared ? shared->used : 0;
    /* Scratch need not be aligned here: the table is written by memcpy. */
    unsigned char *table = pmap__outq_alloc(q, count * sizeof(uint64_t));
    if (table == NULL)
        return 0;
    bool nul = type.kind != PMAP__BYTES;    /* strings travel with it */
    for (size_t i = 0; i < count; i++) {
        uint64_t len;
        const void *data = item_data(type.kind, base + i * stride, &len);
        uint64_t ref[3];
        if (len != PMAP__NULL_LENGTH && in_heap(shared, data, len + nul, ref)) {
            len |= PMAP__SHARED_FLAG;
        } else if (len != PMAP__NULL_LENGTH && goes_shared(shared, len + nul)) {
            memcpy(shared->base + shared->used, data, (size_t)len + nul);
            shared->used += pmap__pad((size_t)len + nul);
            len |= PMAP__SHARED_FLAG;
        }
        memcpy(table + i * sizeof len, &len, sizeof len);
    }
    pmap__outq_pad(q);
    for (size_t i = 0; i < count && q->error == 0; i++) {
        uint64_t n = pmap__get_u64(q->scratch.data + lengths + i * sizeof n);
        if (n == PMAP__NULL_LENGTH)
            continue;
        uint64_t ref[3];
        if ((n & PMAP__SHARED_FLAG) &&
            in_heap(shared, item_data(type.kind, base + i * stride, NULL),
                    (n & ~PMAP__SHARED_FLAG) + nul, ref)) {
            pmap__outq_u64(q, ref[0]);
            pmap__outq_u64(q, 1);
            pmap__outq_u64(q, ref[1]);
            pmap__outq_u64(q, ref[2]);
            continue;
        }
        if (n & PMAP__SHARED_FLAG) {
            pmap__outq_u64(q, start);
            pmap__outq_u64(q, 0);
            start += pmap__pad((size_t)(n & ~PMAP__SHARED_FLAG) + nul);
            continue;
        }
        const void *data = item_data(type.kind, base + i * stride, NULL);
        pmap__outq_add(q, data, (size_t)n + nul);
        pmap__outq_pad(q);
    }
    return 0;
}

/* Bytes of scratch pmap__column_decode needs for count values of type. */
size_t pmap__column_scratch(pmap__type_t type, size_t count)
{
    if (!kind_is_variable(type.kind))
        return 0;
    return count * (kind_is_buffer(type.kind) ? sizeof(pmap_bytes_t)
                                              : sizeof(char *));
}

/* Finds the data of variable item with length word raw at p + *off, in the
 * frame or in the shared region; NULL with *bad set if out of bounds. */
static const unsigned char *item_at(const unsigned char *p, size_t avail,
                                    size_t *off, uint64_t raw, bool nul,
                                    const pmap__region_t *shared, bool *bad)
{
    uint64_t len = raw & ~PMAP__SHARED_FLAG;
    const unsigned char *data;
    if (raw & PMAP__SHARED_FLAG) {
        if (shared == NULL || avail - *off < 16)
            return *bad = true, NULL;
        uint64_t at = pmap__get_u64(p + *off);
        uint64_t tag = pmap__get_u64(p + *off + 8);
        if (tag == 1) {     /* in a block of pmap_alloc */
            if (shared->heap_view == NULL || avail - *off < 32)
                return *bad = true, NULL;
            uint64_t block = pmap__get_u64(p + *off + 16);
            uint64_t size = pmap__get_u64(p + *off + 24);
            if (at < block || at - block > size ||
                len + nul > size - (at - block))
                return *bad = true, NULL;
            const unsigned char *view = shared->heap_view(block, size);
            if (view == NULL)
                return *bad = true, NULL;
            data = view + (at - block);
            *off += 32;
        } else {
            if (tag != 0 || at > shared->size || len + nul > shared->size - at)
                return *bad = true, NULL;
            data = shared->base + at;
            *off += 16;
        }
    } else {
        if (len >= avail || len + nul > avail - *off)
            return *bad = true, NULL;
        data = p + *off;
        *off += pmap__pad((size_t)(len + nul));
        if (*off > avail)
            return *bad = true, NULL;
    }
    if (nul && data[len] != '\0')
        return *bad = true, NULL;
    return data;
}

static int decode_items(const unsigned char *p, size_t avail,
                        pmap__type_t type, size_t count, void *scratch,
                        size_t *used, const pmap__region_t *shared)
{
    size_t off = pmap__pad(count * sizeof(uint64_t));
    if (count > avail / sizeof(uint64_t) || off > avail)
        return PMAP_EPROTO;
    bool bad = false, nul = !kind_is_buffer(type.kind);
    for (size_t i = 0; i < count; i++) {
        uint64_t raw = pmap__get_u64(p + i * sizeof(uint64_t));
        const unsigned char *data = NULL;
        if (raw != PMAP__NULL_LENGTH) {
            data = item_at(p, avail, &off, raw, nul, shared, &bad);
            if (bad)
                return PMAP_EPROTO;
        }
        if (kind_is_buffer(type.kind)) {
            size_t size = data ? (size_t)(raw & ~PMAP__SHARED_FLAG) : 0;
            pmap_bytes_t b = {(void *)data, size};
            memcpy((pmap_bytes_t *)scratch + i, &b, sizeof b);
        } else {
            ((const unsigned char **)scratch)[i] = data;
        }
    }
    *used = off;
    return 0;
}

/* The length of variable item i of a decoded column (not its NUL): read
 * from the frame, which only we hold, never from shared memory. */
size_t pmap__column_length(const pmap__column_t *col, size_t i)
{
    return (size_t)(pmap__get_u64(col->lengths + i * sizeof(uint64_t)) &
                    ~PMAP__SHARED_FLAG);
}

/*
 * Decodes a column of count values of type at p (avail bytes, 16-aligned)
 * into col, reading variable values through scratch (see
 * pmap__column_scratch) and shared (may be NULL: then no value may be
 * there).  Stores the bytes consumed in *used.  Returns 0 or PMAP_EPROTO.
 */
int pmap__column_decode(const unsigned char *p, size_t avail,
                        pmap__type_t type, size_t count, void *scratch,
                        pmap__column_t *col, size_t *used,
                        const pmap__region_t *shared)
{
    if (!kind_is_variable(type.kind)) {
        if (type.size != 0 && count > avail / type.size)
            return PMAP_EPROTO;
        size_t n = pmap__pad(count * type.size);
        if (n > avail)
            return PMAP_EPROTO;
        *col = (pmap__column_t){p, type.size, NULL};
        *used = n;
        return 0;
    }
    int rc = decode_items(p, avail, type, count, scratch, used, shared);
    if (rc < 0)
        return rc;
    *col = (pmap__column_t){scratch,
                            kind_is_buffer(type.kind) ? sizeof(pmap_bytes_t)
                                                      : sizeof(char *),
                            p};
    return 0;
}

/*
 * Whether count values of type go into what is left of the shared region
 * rather than into the frame: values of a fixed size, at least
 * PMAP__VALUES_SHARED_MIN bytes of them (*bytes), that fit.  The one rule
 * for the caller's arguments and the worker's results.
 */
bool pmap__values_shared(const pmap__region_t *shared, pmap__type_t type,
                         size_t count, size_t *bytes)
{
    if (kind_is_variable(type.kind) || type.size == 0 ||
        count > SIZE_MAX / type.size || shared == NULL)
        return false;
    *bytes = count * type.size;
    return *bytes >= PMAP__VALUES_SHARED_MIN &&
           *bytes <= shared->size - shared->used;
}

/*
 * Copies the column of count fixed-size values at base into the shared
 * region if pmap__values_shared says so, and queues their place instead of
 * them: u64 offset | u64 bytes.  The worker reads them there in place:
 * through a pipe the kernel copied them twice, and allocated and freed a
 * page of the pipe's for every 4 KiB.  Returns whether it did.
 */
bool pmap__column_share(pmap__outq_t *q, pmap__type_t type,
                        const unsigned char *base, size_t count,
                        pmap__region_t *shared)
{
    size_t bytes;
    if (!pmap__values_shared(shared, type, count, &bytes))
        return false;
    memcpy(shared->base + shared->used, base, bytes);
    pmap__outq_u64(q, shared->used);
    pmap__outq_u64(q, bytes);
    shared->used += pmap__pad(bytes);
    return true;
}

/* Decodes the place pmap__column_share queued, at p (avail bytes), into
 * col: count values of type in the region.  Stores the bytes consumed in
 * *used.  Returns 0 or PMAP_EPROTO. */
int pmap__column_shared_decode(const unsigned char *p, size_t avail,
                               pmap__type_t type, size_t count,
                               const pmap__region_t *shared,
                               pmap__column_t *col, size_t *used)
{
    if (avail < 2 * sizeof(uint64_t) || kind_is_variable(type.kind) ||
        shared == NULL || shared->base == NULL)
        return PMAP_EPROTO;
    uint64_t offset = pmap__get_u64(p), bytes = pmap__get_u64(p + 8);
    if (type.size == 0 || count > SIZE_MAX / type.size ||
        bytes != count * type.size || offset % PMAP__ALIGN != 0 ||
        offset > shared->size || bytes > shared->size - offset)
        return PMAP_EPROTO;
    *col = (pmap__column_t){shared->base + offset, type.size, NULL};
    *used = 2 * sizeof(uint64_t);
    return 0;
}

/* ---- results ----------------------------------------------------------- */

/* Bytes of a failure record: u64 index | i64 code | u64 length | text. */
static size_t record_size(uint64_t msglen)
{
    return pmap__pad(3 * sizeof(uint64_t) + (size_t)msglen);
}

/*
 * Decodes a RESULT payload that must answer items [first, first + count):
 *   u64 first | u64 count | u64 busy ns | u64 failures | u64 where the
 *   column is (PMAP__COLUMN_IN_FRAME, or PMAP__COLUMN_IN_REGION: the first
 *   bytes of the batch's result region, shared) | u64 0 | result column
 *   (none if in the region) | failure records (for items of the batch, in
 *   increasing order, text <= 512 bytes) | for a logged map (timed), u64
 *   start ns, u64 end ns per item.
 * scratch holds pmap__column_scratch(type, count) bytes.  Returns 0, or
 * PMAP_EPROTO if any part is inconsistent or runs past len.
 */
int pmap__result_decode(const unsigned char *p, size_t len,
                        pmap__type_t type, uint64_t first, uint64_t count,
                        bool timed, void *scratch, pmap__result_t *r,
                        const pmap__region_t *shared)
{
    size_t off = PMAP__RESULT_META, used = 0;
    if (len < off || pmap__get_u64(p) != first ||
        pmap__get_u64(p + 8) != count || count > SIZE_MAX ||
        pmap__get_u64(p + 40) != 0)
        return PMAP_EPROTO;
    r->busy_ns = pmap__get_u64(p + 16);
    r->nfailed = pmap__get_u64(p + 24);
    uint64_t where = pmap__get_u64(p + 32);
    if (r->nfailed > count || where > PMAP__COLUMN_IN_REGION)
        return PMAP_EPROTO;
    r->in_region = where == PMAP__COLUMN_IN_REGION;
    size_t bytes;
    if (r->in_region) {
        if (!pmap__values_shared(shared, type, (size_t)count, &bytes))
            return PMAP_EPROTO;
        r->column = (pmap__column_t){shared->base, type.size, NULL};
    } else if (pmap__column_decode(p + off, len - off, type, (size_t)count,
                                   scratch, &r->column, &used, shared) < 0) {
        return PMAP_EPROTO;
    }
    off += used;
    r->failures = p + off;
    uint64_t least = first;     /* records come in item order, once each */
    for (uint64_t i = 0; i < r->nfailed; i++) {
        if (len - off < 3 * sizeof(uint64_t))
            return PMAP_EPROTO;
        uint64_t index = pmap__get_u64(p + off);
        uint64_t msglen = pmap__get_u64(p + off + 16);
        if (index < least || index - first >= count ||
            msglen > PMAP__MESSAGE_MAX || record_size(msglen) > len - off)
            return PMAP_EPROTO;
        least = index + 1;
        off += record_size(msglen);
    }
    r->timing = NULL;
    if (timed) {    /* a logged map's per-item times follow */
        if ((len - off) / (2 * sizeof(uint64_t)) < count)
            return PMAP_EPROTO;
        r->timing = p + off;
    }
    return 0;
}

/* Reads the failure record at p (checked by pmap__result_decode) into f;
 * returns the next one. */
const unsigned char *pmap__failure_next(const unsigned char *p,
                                        pmap__failure_record_t *f)
{
    uint64_t why = pmap__get_u64(p + 8);
    f->index = pmap__get_u64(p);
    f->error = (int)(int32_t)(uint32_t)(why >> 32);
    f->code = (int)(int32_t)(uint32_t)why;
    f->length = (size_t)pmap__get_u64(p + 16);
    f->message = (const char *)p + 3 * sizeof(uint64_t);
    return p + record_size(f->length);
}

/* ---- incoming frames --------------------------------------------------- */

/*
 * Reads what is available into r: at least 64 KiB at a time, more for a
 * large frame whose header has arrived, but never more than 16 MiB ahead of
 * the bytes actually received, so a header announcing a huge payload costs
 * nothing until the payload comes.  Returns the bytes read, 0 at end of
 * file, or a negative code (-EAGAIN when nothing is there).
 */
ssize_t pmap__reader_fill(pmap__reader_t *r, int fd)
{
    pmap__buf_t *b = &r->buf;
    if (r->start > 0 && r->start == b->len) {
        b->len = r->start = 0;
    } else if (r->start > 0 && r->start >= b->cap / 2) {
        pmap__buf_consume(b, r->start);     /* keeps 16-byte alignment */
        r->start = 0;
    }
    size_t want = PMAP__READ_SIZE;
    if (b->len - r->start >= PMAP__HEADER_SIZE) {
        pmap__header_t h;
        if (pmap__header_decode(b->data + r->start, &h) == 0) {
            size_t frame = PMAP__HEADER_SIZE + (size_t)h.length;
            size_t have = b->len - r->start;
            if (frame > have)
                want = frame - have;
        }
    }
    if (want < PMAP__READ_SIZE)
        want = PMAP__READ_SIZE;
    if (want > (16u << 20))
        want = 16u << 20;
    if (pmap__buf_reserve(b, want) < 0)
        return PMAP_ENOMEM;
    ssize_t n = pmap__read(fd, b->data + b->len, b->cap - b->len);
    if (n > 0)
        b->len += (size_t)n;
    return n;
}

/*
 * Takes the next complete frame: stores its header and payload (valid until
 * the next fill) and returns 1; returns 0 if none is complete yet, or
 * PMAP_EPROTO for a malformed header.
 */
int pmap__reader_next(pmap__reader_t *r, pmap__header_t *h,
                      const unsigned char **payload)
{
    size_t have = r->buf.len - r->start;
    if (have < PMAP__HEADER_SIZE)
        return 0;
    const unsigned char *p = r->buf.data + r->start;
    if (pmap__header_decode(p, h) < 0)
        return PMAP_EPROTO;
    if (h->length > have - PMAP__HEADER_SIZE)
        return 0;
    *payload = p + PMAP__HEADER_SIZE;
    r->start += PMAP__HEADER_SIZE + (size_t)h->length;
    return 1;
}

/*
 * Reads the header of the next frame, complete or not: 1 if one has
 * arrived, 0 if not yet, PMAP_EPROTO if it is malformed.
 */
int pmap__reader_peek(const pmap__reader_t *r, pmap__header_t *h)
{
    if (r->buf.len - r->start < PMAP__HEADER_SIZE)
        return 0;
    return pmap__header_decode(r->buf.data + r->start, h) < 0 ? PMAP_EPROTO
                                                               : 1;
}

/* The largest RESULT payload a batch of count fixed-size results can
 * produce (each item may fail with a message); UINT64_MAX if unbounded. */
uint64_t pmap__result_bound(pmap__type_t type, uint64_t count)
{
    if (type.kind != PMAP__VALUE || count > SIZE_MAX / 1024 / type.size)
        return UINT64_MAX;
    return PMAP__RESULT_META + pmap__pad((size_t)count * type.size) +
           count * (record_size(PMAP__MESSAGE_MAX) + 2 * sizeof(uint64_t));
}

void pmap__reader_free(pmap__reader_t *r)
{
    pmap__buf_free(&r->buf);
    r->start = 0;
}
