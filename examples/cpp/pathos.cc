// SPDX-License-Identifier: MIT
//
// pathos.cc - the essay's pathos examples in C++17: a function of two
// arguments mapped over two arrays, a method of an object, a constant,
// strings, and objects holding pointers (deep-copied), with the same macros
// as in C.
#include <pmap.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

static long add(long x, long y)
{
    return x + y;
}
PMAP_EXPORT(add, long, long, long);

struct scaler {
    double factor;
};

static double scale(const scaler *self, double x)
{
    return self->factor * x;
}
PMAP_EXPORT_METHOD(scale, double, scaler, double);

static size_t length(const char *s)
{
    return std::string(s).size();
}
PMAP_EXPORT(length, size_t, const char *);

// An object holding a pointer: it travels with an encoder and a decoder.
struct series {
    size_t n;
    double *v;
};

static size_t series_encode(const series *s, void *buf, size_t size)
{
    size_t need = sizeof s->n + s->n * sizeof *s->v;
    if (need <= size) {
        std::memcpy(buf, &s->n, sizeof s->n);
        std::memcpy(static_cast<char *>(buf) + sizeof s->n, s->v,
                    s->n * sizeof *s->v);
    }
    return need;
}

static int series_decode(series *s, const void *data, size_t size)
{
    std::memcpy(&s->n, data, sizeof s->n);
    if (size != sizeof s->n + s->n * sizeof *s->v)
        return -1;
    s->v = new double[s->n];
    std::memcpy(s->v, static_cast<const char *>(data) + sizeof s->n,
                s->n * sizeof *s->v);
    return 0;
}

static void series_release(series *s)
{
    delete[] s->v;
}
PMAP_EXPORT_TYPE(series, series_encode, series_decode, series_release);

static double total(series s)
{
    double sum = 0;
    for (size_t i = 0; i < s.n; i++)
        sum += s.v[i];
    return sum;
}
PMAP_EXPORT(total, double, series);

int main()
{
    pool_t *pool = pool_create(0);
    if (pool == nullptr) {
        std::perror("pool_create");
        return 1;
    }
    std::vector<long> xs = {1, 2, 3, 4}, ys = {10, 20, 30, 40}, sums(4);
    int rc = pool_map(pool, add, xs.size(), sums.data(), xs.data(), ys.data());
    std::printf("add:    ");
    for (long s : sums)
        std::printf(" %ld", s);

    std::vector<double> ds = {1, 2, 3}, scaled(3);
    scaler half = {0.5};
    rc |= pool_map(pool, scale, ds.size(), scaled.data(), &half, ds.data());
    std::printf("\nscale:  ");
    for (double d : scaled)
        std::printf(" %g", d);

    rc |= pool_map(pool, add, xs.size(), sums.data(), xs.data(),
                   PMAP_CONST(100));
    std::printf("\nconst:  ");
    for (long s : sums)
        std::printf(" %ld", s);

    const char *words[] = {"process", "pools", "in", "C++"};
    size_t lengths[4];
    rc |= pool_map(pool, length, 4, lengths, words);
    std::printf("\nlength: ");
    for (size_t n : lengths)
        std::printf(" %zu", n);

    std::vector<double> a = {1, 2, 3}, b(1000, 0.5);   // made after the pool
    series ss[2] = {{a.size(), a.data()}, {b.size(), b.data()}};
    double totals[2];
    rc |= pool_map(pool, total, 2, totals, ss);
    std::printf("\ntotal:   %g %g", totals[0], totals[1]);

    long one = 0;
    rc |= pool_call(pool, add, &one, 2, 40);
    std::printf("\ncall:    %ld\n", one);
    pool_destroy(pool);
    return rc == 0 ? 0 : 1;
}
