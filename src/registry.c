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
 * The list is written under a mutex.  A worker reads it without the mutex:
 * it is single-threaded, and another thread of the caller may have held the
 * mutex when the worker was forked; each link is written in one store, so
 * the list is whole at every instant.
 */
#include "pmap_internal.h"

#include <pthread.h>
#include <string.h>

static pmap__fn_t *registry;
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;

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
    }
    return h;
}

void pmap__register(pmap__fn_t *fn)
{
    fn->id = identify(fn);
    pthread_mutex_lock(&registry_lock);
    fn->next = registry;
    registry = fn;
    pthread_mutex_unlock(&registry_lock);
}

void pmap__unregister(pmap__fn_t *fn)
{
    pthread_mutex_lock(&registry_lock);
    for (pmap__fn_t **p = &registry; *p != NULL; p = &(*p)->next) {
        if (*p == fn) {
            *p = fn->next;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
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
    pthread_mutex_lock(&registry_lock);
    int rc = pmap__registry_find(fn->id, &found);
    pthread_mutex_unlock(&registry_lock);
    if (rc == 0 && found != fn)
        rc = PMAP_EAMBIGUOUS;
    return rc;
}
