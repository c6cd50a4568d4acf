/* SPDX-License-Identifier: MIT */
/*
 * mandelbrot.c - render the Mandelbrot set as a PGM image, one row per
 * item, with a progress bar (rate and time left) on stderr; then render it
 * again with one worker and print the speedup.
 *
 *     usage: mandelbrot [WIDTH HEIGHT [OUTPUT.pgm]]
 *            (default 1200 900 mandelbrot.pgm)
 *
 * Across machines, unchanged: built with -DPMAP_WITH_MPI against
 * libpmap-mpi (make mpi: build/mpi/mandelbrot), and started as
 *     PMAP_START=mpi mpirun -n 3 build/mpi/mandelbrot
 * its pools run on the other ranks' workers (README, "Across machines").
 */
#include <pmap.h>
#ifdef PMAP_WITH_MPI
#include <pmap_mpi.h>
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct view {
    int width, height, iterations;
    double x0, y0, scale;
};

/* Row y of the image: one byte of grey per pixel. */
static pmap_bytes_t render_row(int y, struct view v)
{
    pmap_bytes_t row = {malloc((size_t)v.width), (size_t)v.width};
    unsigned char *px = row.data;
    for (int x = 0; x < v.width && px != NULL; x++) {
        double cr = v.x0 + x * v.scale, ci = v.y0 + y * v.scale;
        double zr = 0, zi = 0;
        int i = 0;
        while (i < v.iterations && zr * zr + zi * zi < 4) {
            double t = zr * zr - zi * zi + cr;
            zi = 2 * zr * zi + ci;
            zr = t;
            i++;
        }
        px[x] = (unsigned char)(i == v.iterations ? 0 : 255 - i % 200);
    }
    return row;
}
PMAP_EXPORT(render_row, pmap_bytes_t, int, struct view);

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int bar(void *ctx, const pmap_progress_t *p)
{
    const char *label = ctx;
    int width = 30, filled = p->total ? (int)(width * p->done / p->total) : 0;
    double rate = p->elapsed > 0 ? (double)p->done / p->elapsed : 0;
    double left = rate > 0 ? (double)(p->total - p->done) / rate : 0;
    fprintf(stderr, "\r%-10s [%.*s%*s] %3d%%  %6.0f rows/s  ETA %4.1f s",
            label, filled, "##############################", width - filled,
            "", p->total ? (int)(100 * p->done / p->total) : 0, rate, left);
    if (p->done == p->total)
        fputc('\n', stderr);
    return 0;
}

/* Renders the image with `workers` workers (0: one per CPU; the number
 * used goes back there); returns seconds, or -1. */
static double render(int *workers, struct view v, pmap_bytes_t *rows,
                     const char *label)
{
    int *ys = malloc((size_t)v.height * sizeof *ys);
    for (int y = 0; y < v.height; y++)
        ys[y] = y;
    pool_t *pool = pool_create(*workers);
    *workers = pool_size(pool);
    pool_map_options_t o = {.on_progress = bar, .ctx = (void *)label,
                            .progress_interval = 0.05};
    double t = now();
    int rc = pool ? pool_map_with(pool, &o, render_row, (size_t)v.height,
                                  rows, ys, PMAP_CONST(v))
                  : PMAP_ESTART;
    t = now() - t;
    pool_destroy(pool);
    free(ys);
    if (rc != 0) {
        fprintf(stderr, "mandelbrot: %s\n", pmap_strerror(rc));
        return -1;
    }
    return t;
}

int main(int argc, char **argv)
{
#ifdef PMAP_WITH_MPI
    if (pmap_mpi_init(&argc, &argv) < 0) {    /* ranks > 0 stay there */
        fprintf(stderr, "mandelbrot: %s\n", pmap_mpi_message());
        return 1;
    }
#endif
    int width = argc > 2 ? atoi(argv[1]) : 1200;
    int height = argc > 2 ? atoi(argv[2]) : 900;
    const char *path = argc > 3 ? argv[3] : "mandelbrot.pgm";
    if (width <= 0 || height <= 0) {
        fprintf(stderr, "usage: %s [WIDTH HEIGHT [OUTPUT.pgm]]\n", argv[0]);
        return 2;
    }
    struct view v = {width, height, 2000, -2.2, -1.2 * height / width,
                     3.2 / width};
    pmap_bytes_t *rows = calloc((size_t)height, sizeof *rows);
    pmap_bytes_t *again = calloc((size_t)height, sizeof *again);
    int n = 0, single = 1;
    double many = render(&n, v, rows, "workers");
    double one = render(&single, v, again, "1 worker");
    if (many < 0 || one < 0)
        return 1;

    FILE *out = fopen(path, "wb");
    if (out == NULL) {
        perror(path);
        return 1;
    }
    fprintf(out, "P5\n%d %d\n255\n", width, height);
    int same = 1;
    for (int y = 0; y < height; y++) {
        fwrite(rows[y].data, 1, rows[y].size, out);
        same &= memcmp(rows[y].data, again[y].data, rows[y].size) == 0;
        free(rows[y].data);
        free(again[y].data);
    }
    fclose(out);
    free(rows);
    free(again);
    printf("wrote %s (%dx%d); %s images\n", path, width, height,
           same ? "identical" : "DIFFERENT");
    printf("%d workers: %.3f s; 1 worker: %.3f s; speedup %.2f\n", n, many,
           one, one / many);
    return same ? 0 : 1;
}
