/* SPDX-License-Identifier: MIT */
/*
 * registry.c - the functions made callable by PMAP_EXPORT.
 *
 * Each export is a static descriptor linked into one list by a constructor
 * when its object file is loaded (and unlinked when it is unloaded).  A task
 * names its function by a 64-bit identifier hashed from the function's name,
 * file and line: the same in every process of the program whatever the
 * addresses (fork, or a re-executed image), and different for two static
 * functions of one name in two files.  A worker never jumps to an address it
 * received: it looks the identifier up here, and an identifier found zero or
 * two times is an error reported to the caller.
 *
 * Types given a codec by PMAP_EXPORT_TYPE are kept in a second list, keyed
 * by their spelling.  Whichever of a function and a codec loads last links
 * them: each parameter or result of the function that is a plain value
 * spelled as the codec's type (and of its size) becomes PMAP__CODEC, in
 * every process of the program alike, since all load the same objects.
 *
 * The lists are written under a mutex.  A worker reads it without the mutex:
 * it is single-threaded, and another thread of the caller may have held the
 * mutex when the worker was forked; each link is written in one store, so
 * the list is whole at every instant.
 */
#include "pmap_internal.h"

#include <pthread.h>
#include <string.h>

static pmap__fn_t *registry;
static pmap__codec_t *codecs;

/* FNV-1a, 64 bits. */
static uint64_t hash(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3u;
    return h;
}

static uint64_t hash_str(uint64_t h, const char *s)
{
    return hash(h, s, strlen(s) + 1);
}

static uint64_t identify(const pmap__fn_t *fn)
{
    uint64_t h = 0xcbf29ce484222325u;
    h = hash_str(h, fn->name);
    h = hash_str(h, fn->file);
    h = hash(h, &fn->line, sizeof fn->line);
    return h ? h : 1;   /* 0 means "not registered" */
}

/*
 * A hash of everything the wire format depends on, sent with each map so a
 * worker can refuse a function whose identifier matches but whose types do
 * not (a different build of the program).
 */
uint64_t pmap__signature(const pmap__fn_t *fn)
{
    uint64_t h = 0xcbf29ce484222325u;
    h = hash(h, &fn->nparams, sizeof fn->nparams);
    h = hash(h, &fn->method, sizeof fn->method);
    const pmap__type_t *types[PMAP_MAX_ARGS + 1] = {&fn->result};
    for (int i = 0; i < fn->nparams && i < PMAP_MAX_ARGS; i++)
        types[i + 1] = &fn->params[i];
    for (int i = 0; i <= fn->nparams && i <= PMAP_MAX_ARGS; i++) {
        uint64_t size = types[i]->size;
        h = hash(h, &types[i]->kind, sizeof types[i]->kind);
        h = hash(h, &size, sizeof size);
        if (types[i]->kind == PMAP__CODEC)
            h = hash_str(h, types[i]->codec->name);
    }
    return h;
}

/* ---- type spellings ---------------------------------------------------- */

static bool is_word(char c)
{
    return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9');
}

/* Skips blanks, keeping one (as *blank) only where it separates words. */
static const char *next_char(const char *s, bool *blank)
{
    const char *start = s;
    while (*s == ' ' || *s == '\t' || *s == '\n')
        s++;
    *blank = s != start;
    return s;
}

/* Whether two spellings name the same tokens: "struct m*" is "struct m *",
 * "unsigned  int" is "unsigned int", "structm" is not "struct m". */
static bool same_spelling(const char *a, const char *b)
{
    char prev = '\0';
    for (;;) {
        bool blank_a, blank_b;
        a = next_char(a, &blank_a);
        b = next_char(b, &blank_b);
        if (*a != *b)
            return false;
        if (*a == '\0')
            return true;
        /* Between two word characters a blank is a token boundary. */
        if (is_word(prev) && is_word(*a) && blank_a != blank_b)
            return false;
        prev = *a;
        a++;
        b++;
    }
}

/* ---- linking functions and codecs --------------------------------------- */

static bool codec_fits(const pmap__codec_t *c, const pmap__type_t *t)
{
    return t->name != NULL && c->size == t->size &&
           same_spelling(c->name, t->name);
}

/* Makes t a codec's if c fits it, or, with c NULL, plain again if it was
 * gone's. */
static void link_type(pmap__type_t *t, const pmap__codec_t *c,
                      const pmap__codec_t *gone)
{
    if (gone != NULL && t->codec == gone) {
        t->kind = PMAP__VALUE;
        t->codec = NULL;
    } else if (c != NULL && t->kind == PMAP__VALUE && codec_fits(c, t)) {
        t->kind = PMAP__CODEC;
        t->codec = c;
    }
}

static pthread_mutex_t *registry_lock(void)
{
    return &pmap__local()->registry_lock;
}

static void link_fn(pmap__fn_t *fn, const pmap__codec_t *c,
                    const pmap__codec_t *gone)
{
    link_type(&fn->result, c, gone);
    for (int k = 0; k < fn->nparams && k < PMAP_MAX_ARGS; k++)
        link_type(&fn->params[k], c, gone);
}

void pmap__register(pmap__fn_t *fn)
{
    fn->id = identify(fn);
    pthread_mutex_lock(registry_lock());
    for (const pmap__codec_t *c = codecs; c != NULL; c = c->next)
        link_fn(fn, c, NULL);
    fn->next = registry;
    registry = fn;
    pthread_mutex_unlock(registry_lock());
}

void pmap__unregister(pmap__fn_t *fn)
{
    pthread_mutex_lock(registry_lock());
    for (pmap__fn_t **p = &registry; *p != NULL; p = &(*p)->next) {
        if (*p == fn) {
            *p = fn->next;
            break;
        }
    }
    pthread_mutex_unlock(registry_lock());
}

void pmap__register_type(pmap__codec_t *codec)
{
    pthread_mutex_lock(registry_lock());
    for (pmap__fn_t *fn = registry; fn != NULL; fn = fn->next)
        link_fn(fn, codec, NULL);
    codec->next = codecs;
    codecs = codec;
    pthread_mutex_unlock(registry_lock());
}

void pmap__unregister_type(pmap__codec_t *codec)
{
    pthread_mutex_lock(registry_lock());
    for (pmap__codec_t **p = &codecs; *p != NULL; p = &(*p)->next) {
        if (*p == codec) {
            *p = codec->next;
            break;
        }
    }
    for (pmap__fn_t *fn = registry; fn != NULL; fn = fn->next) {
        link_fn(fn, NULL, codec);
        for (const pmap__codec_t *c = codecs; c != NULL; c = c->next)
            link_fn(fn, c, NULL);   /* another codec of the same type */
    }
    pthread_mutex_unlock(registry_lock());
}

/* Whether one of fn's types has two codecs (PMAP_EXPORT_TYPE twice). */
static bool codec_twice(const pmap__fn_t *fn)
{
    for (int k = -1; k < fn->nparams && k < PMAP_MAX_ARGS; k++) {
        const pmap__type_t *t = k < 0 ? &fn->result : &fn->params[k];
        if (t->kind != PMAP__CODEC)
            continue;
        int fits = 0;
        for (const pmap__codec_t *c = codecs; c != NULL; c = c->next)
            fits += codec_fits(c, t);
        if (fits > 1)
            return true;
    }
    return false;
}

/* Finds the one function with identifier id.  Returns 0, PMAP_ENOFUNC or
 * PMAP_EAMBIGUOUS.  Lock-free: see the file's comment. */
int pmap__registry_find(uint64_t id, const pmap__fn_t **found)
{
    int matches = 0;
    for (const pmap__fn_t *fn = registry; fn != NULL; fn = fn->next) {
        if (fn->id == id) {
            *found = fn;
            matches++;
        }
    }
    return matches == 1 ? 0 : matches == 0 ? PMAP_ENOFUNC : PMAP_EAMBIGUOUS;
}

/* Checks, before a map, that a worker will resolve fn's identifier to fn. */
int pmap__registry_check(const pmap__fn_t *fn)
{
    if (fn->id == 0)
        return PMAP_ENOFUNC;
    const pmap__fn_t *found = NULL;
    pthread_mutex_lock(registry_lock());
    int rc = pmap__registry_find(fn->id, &found);
    if (rc == 0 && (found != fn || codec_twice(fn)))
        rc = PMAP_EAMBIGUOUS;
    pthread_mutex_unlock(registry_lock());
    return rc;
}

/*
 * A hash of every function registered (identifier and signature), whatever
 * their order: two processes with the same hash run the same program, as
 * far as maps can tell (libpmap-mpi compares it across ranks).
 */
uint64_t pmap__registry_hash(void)
{
    uint64_t sum = 0;
    pthread_mutex_lock(registry_lock());
    for (const pmap__fn_t *fn = registry; fn != NULL; fn = fn->next) {
        uint64_t pair[2] = {fn->id, pmap__signature(fn)};
        sum += hash(0xcbf29ce484222325u, pair, sizeof pair);
    }
    pthread_mutex_unlock(registry_lock());
    return sum;
}
