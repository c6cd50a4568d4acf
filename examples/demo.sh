#!/bin/sh
# Runs every example, as `make demo` does: $1 is the folder of the builds.
set -e
bin=$1
for example in add partial method multi; do
    echo "\$ $example"
    "$bin/$example"
done
echo "\$ wc include/pmap.h src/*.c"
"$bin/wc" include/pmap.h src/*.c
echo "\$ grep 'pool_(map|call)' include/pmap.h"
"$bin/grep" 'pool_(map|call)' include/pmap.h
echo "\$ mandelbrot 640 480 $bin/mandelbrot.pgm"
"$bin/mandelbrot" 640 480 "$bin/mandelbrot.pgm"
echo "\$ async_poll"
"$bin/async_poll"
if [ -x "$bin/pathos_cpp" ]; then     # built where a C++ compiler is
    echo "\$ pathos_cpp"
    "$bin/pathos_cpp"
fi
echo "\$ prices"
"$bin/prices"
echo "\$ policies"
"$bin/policies"
