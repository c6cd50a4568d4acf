# SPDX-License-Identifier: MIT
"""Python multiprocessing peers of libpmap's benchmark (bench.c runs this).

Prints one line per figure: NAME UNIT VALUE VALUE ... (one value per run).
Uses multiprocessing.Pool with 2 workers and the default start method."""
import multiprocessing as mp
import statistics
import sys
import time
import zlib

REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 5


def add(x, y):
    return x + y


def add1(x):
    return x + 1


def spin(x, n):
    h = x
    for _ in range(n):
        h = (h * 1103515245 + 12345) & 0xFFFFFFFF
    return h


def crc(b):
    return zlib.crc32(b)


def emit(name, unit, values):
    print(name, unit, " ".join("%.6g" % v for v in values), flush=True)


def w1(pool):
    xs = list(range(1000000))
    pairs = list(zip(xs, xs))
    best = None
    for chunk in (None, 1000, 10000, 125000):
        rates = []
        for _ in range(REPS):
            t = time.perf_counter()
            out = pool.starmap(add, pairs, chunksize=chunk)
            rates.append(len(out) / (time.perf_counter() - t))
        name = "W1.mp.starmap.chunksize=%s" % (chunk or "default")
        emit(name, "items/s", rates)
        if best is None or statistics.median(rates) > statistics.median(best[1]):
            best = (name, rates)
    emit("W1.mp.best", "items/s", best[1])


def w2(pool):
    n = 1000   # iterations of spin: about 1 ms of Python
    t = time.perf_counter()
    spin(1, n * 100)
    per_call = (time.perf_counter() - t) / 100
    n = max(1, int(n * 0.001 / per_call))
    args = [(i, n) for i in range(2000)]
    serial, parallel = [], []
    for _ in range(REPS):
        t = time.perf_counter()
        for a in args:
            spin(*a)
        serial.append(time.perf_counter() - t)
        t = time.perf_counter()
        pool.starmap(spin, args)
        parallel.append(time.perf_counter() - t)
    emit("W2.python.serial", "s", serial)
    emit("W2.mp.starmap", "s", parallel)


def w3(pool):
    bufs = [bytes([i % 256]) * (1 << 20) for i in range(256)]
    rates = []
    for _ in range(REPS):
        t = time.perf_counter()
        pool.map(crc, bufs, chunksize=1)
        rates.append(256 * (1 << 20) / (time.perf_counter() - t) / 1e6)
    emit("W3.mp.map", "MB/s", rates)


def w4(pool):
    medians = []
    for _ in range(REPS):
        times = []
        for _ in range(2000):
            t = time.perf_counter()
            pool.apply(add1, (1,))
            times.append(time.perf_counter() - t)
        medians.append(statistics.median(times) * 1e6)
    emit("W4.mp.apply", "us", medians)


def w5():
    times = []
    for _ in range(REPS):
        t = time.perf_counter()
        p = mp.Pool(2)
        p.map(add1, [1])
        p.close()
        p.join()
        times.append((time.perf_counter() - t) * 1e6)
    emit("W5.mp.Pool", "us", times)


if __name__ == "__main__":
    with mp.Pool(2) as pool:
        w1(pool)
        w2(pool)
        w3(pool)
        w4(pool)
    w5()
