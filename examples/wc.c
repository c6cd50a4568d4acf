/* SPDX-License-Identifier: MIT */
/*
 * wc.c - count the lines, words and bytes of the files named on the command
 * line, one file per item, in parallel; prints what `LC_ALL=C wc FILE...`
 * prints.  A file that cannot be read is reported by its worker with
 * pmap_fail and does not stop the others.
 *
 *     usage: wc FILE...
 */
#include <pmap.h>

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct counts {
    unsigned long long lines, words, bytes;
};

/* Counts like wc in the C locale: white space ends a word, a printable
 * character is part of one, other bytes are neither. */
static struct counts count_file(const char *path)
{
    struct counts c = {0, 0, 0};
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        pmap_fail(errno, "%s: %s", path, strerror(errno));
        return c;
    }
    static unsigned char buf[1 << 16];
    bool in_word = false;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            pmap_fail(errno, "%s: read error: %s", path, strerror(errno));
            break;
        }
        if (n == 0)
            break;
        c.bytes += (unsigned long long)n;
        for (ssize_t i = 0; i < n; i++) {
            unsigned char ch = buf[i];
            if (ch == '\n')
                c.lines++;
            if (ch == ' ' || (ch >= '\t' && ch <= '\r')) {
                c.words += in_word;
                in_word = false;
            } else if (ch > ' ' && ch < 0x7f) {
                in_word = true;
            }
        }
    }
    c.words += in_word;
    close(fd);
    return c;
}
/* char * (not const char *) so that argv itself can be passed. */
PMAP_EXPORT(count_file, struct counts, char *);

/* wc's column width: the digits of the regular files' total size, and at
 * least 7 if some input is not a regular file. */
static int column_width(int n, char **paths)
{
    unsigned long long total = 0;
    int width = 1, minimum = 1;
    for (int i = 0; i < n; i++) {
        struct stat st;
        if (stat(paths[i], &st) != 0)
            continue;
        if (S_ISREG(st.st_mode))
            total += (unsigned long long)st.st_size;
        else
            minimum = 7;
    }
    for (; total >= 10; total /= 10)
        width++;
    return width < minimum ? minimum : width;
}

static void print_counts(int width, const struct counts *c, const char *name)
{
    printf("%*llu %*llu %*llu %s\n", width, c->lines, width, c->words, width,
           c->bytes, name);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE...\n", argv[0]);
        return 2;
    }
    size_t n = (size_t)argc - 1;
    struct counts *counts = calloc(n, sizeof *counts);
    bool *failed = calloc(n, sizeof *failed);
    pool_t *pool = pool_create(0);
    if (counts == NULL || failed == NULL || pool == NULL) {
        fprintf(stderr, "wc: out of memory or processes\n");
        return 1;
    }

    int rc = pool_map(pool, count_file, n, counts, argv + 1);
    if (rc < 0) {
        fprintf(stderr, "wc: %s\n", pmap_strerror(rc));
        return 1;
    }
    const pmap_failure_t *f;
    size_t nfailed = pool_failures(pool, &f);
    for (size_t i = 0; i < nfailed; i++) {
        failed[f[i].index] = true;
        fprintf(stderr, "wc: %s\n", f[i].error == PMAP_EFAIL
                                        ? f[i].message
                                        : pmap_strerror(f[i].error));
    }

    int width = column_width(argc - 1, argv + 1);
    struct counts total = {0, 0, 0};
    for (size_t i = 0; i < n; i++) {
        if (failed[i])
            continue;
        print_counts(width, &counts[i], argv[i + 1]);
        total.lines += counts[i].lines;
        total.words += counts[i].words;
        total.bytes += counts[i].bytes;
    }
    if (n > 1)
        print_counts(width, &total, "total");

    pool_destroy(pool);
    free(counts);
    free(failed);
    return nfailed > 0;
}
