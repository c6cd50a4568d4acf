/* SPDX-License-Identifier: MIT */
/*
 * grep.c - print the lines of FILE (or standard input) that match an
 * extended regular expression, like `grep -E PATTERN FILE`, with the
 * matching done by the pool's workers.
 *
 * The file is streamed: a producer reads one line at a time, at most a
 * window of lines is ever in memory, and results come back in input order,
 * so the file may be far larger than memory.  Each worker compiles the
 * pattern once, in worker_init, and keeps it as its worker state.
 *
 *     usage: grep PATTERN [FILE]      exit: 0 a line matched, 1 none, 2 error
 */
#include <pmap.h>

#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int compile(int worker, void *pattern)
{
    (void)worker;
    regex_t *re = malloc(sizeof *re);
    if (re == NULL || regcomp(re, pattern, REG_EXTENDED | REG_NOSUB) != 0)
        return -1;
    pmap_set_worker_state(re);
    return 0;
}

static void release(int worker, void *arg)
{
    (void)worker;
    (void)arg;
    regex_t *re = pmap_worker_state();
    regfree(re);
    free(re);
}

/* The line itself if it matches (the caller prints it), else NULL. */
static char *match(char *line)
{
    regex_t *re = pmap_worker_state();
    return regexec(re, line, 0, NULL, 0) == 0 ? strdup(line) : NULL;
}
PMAP_EXPORT(match, char *, char *);

struct reader {
    FILE *in;
    char *line;
    size_t size;
};

static int next_line(void *ctx, char **line)
{
    struct reader *r = ctx;
    ssize_t n = getline(&r->line, &r->size, r->in);
    if (n < 0)
        return ferror(r->in) ? -EIO : 0;
    if (n > 0 && r->line[n - 1] == '\n')
        r->line[n - 1] = '\0';
    *line = r->line;    /* the pool copies it before the next call */
    return 1;
}

static int print(void *ctx, size_t index, void *result,
                 const pmap_failure_t *failure)
{
    (void)index;
    if (failure != NULL) {
        fprintf(stderr, "grep: line %zu: %s\n", index + 1,
                pmap_strerror(failure->error));
        return 0;
    }
    char *line = *(char **)result;
    if (line != NULL) {
        puts(line);
        free(line);
        ++*(size_t *)ctx;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s PATTERN [FILE]\n", argv[0]);
        return 2;
    }
    regex_t check;
    if (regcomp(&check, argv[1], REG_EXTENDED | REG_NOSUB) != 0) {
        fprintf(stderr, "grep: invalid pattern: %s\n", argv[1]);
        return 2;
    }
    regfree(&check);
    struct reader r = {argc == 3 ? fopen(argv[2], "r") : stdin, NULL, 0};
    if (r.in == NULL) {
        perror(argv[2]);
        return 2;
    }

    pool_options_t po = {.worker_init = compile, .worker_exit = release,
                         .worker_arg = argv[1]};
    pool_t *pool;
    int rc = pool_create_with(&pool, &po);
    size_t matched = 0;
    pool_map_options_t mo = {.on_result = print, .ctx = &matched,
                             .window = 4096};
    if (rc == 0)
        rc = pool_map_stream(pool, &mo, match, next_line, &r);
    if (rc < 0)
        fprintf(stderr, "grep: %s\n", pmap_strerror(rc));
    pool_destroy(pool);
    free(r.line);
    if (r.in != stdin)
        fclose(r.in);
    return rc != 0 ? 2 : matched > 0 ? 0 : 1;
}
