#!/bin/sh
# memcheck over the examples and every test, as `make check-valgrind` does:
# no error and no definite or indirect leak in the caller's process.  Each
# test runs alone (runner --inline) so that memcheck sees it as the main
# program; workers are forked copies that leave by _exit with the caller's
# heap, so their exit is not checked for leaks (--child-silent-after-fork),
# but their errors would still kill the items they ran.  $1: build folder;
# $2: how many run at once (default: the CPUs, at most 4).
set -u
build=$1
if ! command -v valgrind >/dev/null 2>&1; then
    echo "check-valgrind: SKIPPED: valgrind is not installed (apt-get install valgrind)"
    exit 0
fi
jobs=${2:-$(nproc 2>/dev/null || echo 1)}
[ "$jobs" -le 4 ] || jobs=4
vg="valgrind -q --error-exitcode=99 --leak-check=full \
    --errors-for-leak-kinds=definite,indirect \
    --show-leak-kinds=definite,indirect --child-silent-after-fork=yes"
results=$(mktemp -d)

check() {   # check NAME COMMAND...: runs COMMAND under memcheck
    name=$1
    shift
    log=$results/$(echo "$name" | tr / _).log
    start=$(date +%s)
    timeout 600 $vg "$@" >"$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    if [ $rc -eq 0 ] || [ $rc -eq 77 ]; then
        echo "ok - valgrind $name (${took} s)"
    else
        echo "not ok - valgrind $name (status $rc)"
        sed 's/^/    /' "$log" | tail -n 40
    fi
    rm -f "$log"
}

# What memcheck runs, one per line: examples, then the tests.
list() {
    for example in add partial method; do
        echo "examples/$example $build/examples/$example"
    done
    echo "examples/wc $build/examples/wc include/pmap.h src/job.c"
    for test in $("$build/tests/runner" --list); do
        case $test in
        types_* | install_*)
            # Compilers and build systems at work: nothing of ours runs
            # there.
            echo "SKIP $test" ;;
        size_64_mib_in_one_item_both_ways | \
        map_inputs_and_results_far_larger_than_a_pipe)
            # Hundreds of MiB through the channels, each write and read
            # emulated: two minutes each here, for code that the large-item
            # tests under memcheck and all of them under ASan cover.
            echo "SKIP $test" ;;
        *)  echo "$test $build/tests/runner --inline $test" ;;
        esac
    done
}

# Runs line k, k + jobs, k + 2 jobs... of the list.
share() {
    list | awk -v k="$1" -v n="$jobs" 'NR % n == k' | while read -r name cmd; do
        if [ "$name" = SKIP ]; then
            echo "ok - valgrind $cmd # SKIP a compile check, or data volume only"
        else
            # shellcheck disable=SC2086 # the command's words
            PMAP_TEST_VALGRIND=1 check "$name" $cmd
        fi
    done >"$results/out.$1"
}

k=0
while [ $k -lt "$jobs" ]; do
    share $k &
    k=$((k + 1))
done
wait
cat "$results"/out.*
passed=$(cat "$results"/out.* | grep -c '^ok - valgrind [^#]*$')
skipped=$(cat "$results"/out.* | grep -c '^ok - valgrind .*# SKIP')
failed=$(cat "$results"/out.* | grep -c '^not ok')
rm -rf "$results"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
