#!/bin/sh
# Runs every example, as `make demo` does: $1 is the folder of the builds.
set -e
bin=$1
for example in add partial method; do
    echo "\$ $example"
    "$bin/$example"
done
echo "\$ wc include/pmap.h src/*.c"
"$bin/wc" include/pmap.h src/*.c
