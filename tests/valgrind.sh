#!/bin/sh
# memcheck over the examples and every test, as `make check-valgrind` does:
# no error and no definite or indirect leak in the caller's process.  Each
# test runs alone (runner --inline) so that memcheck sees it as the main
# program; workers are forked copies that leave by _exit with the caller's
# heap, so their exit is not checked for leaks (--child-silent-after-fork),
# but their errors would still kill the items they ran.  $1: build folder.
set -u
build=$1
if ! command -v valgrind >/dev/null 2>&1; then
    echo "check-valgrind: SKIPPED: valgrind is not installed (apt-get install valgrind)"
    exit 0
fi
vg="valgrind -q --error-exitcode=99 --leak-check=full \
    --errors-for-leak-kinds=definite,indirect \
    --show-leak-kinds=definite,indirect --child-silent-after-fork=yes"
log=$(mktemp)
failed=0 passed=0

check() {   # check NAME COMMAND...: runs COMMAND under memcheck
    name=$1
    shift
    start=$(date +%s)
    timeout 600 $vg "$@" >"$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    if [ $rc -eq 0 ] || [ $rc -eq 77 ]; then
        passed=$((passed + 1))
        echo "ok - valgrind $name (${took} s)"
    else
        failed=$((failed + 1))
        echo "not ok - valgrind $name (status $rc)"
        sed 's/^/    /' "$log" | tail -n 40
    fi
}

for example in add partial method; do
    check "examples/$example" "$build/examples/$example"
done
check "examples/wc" "$build/examples/wc" include/pmap.h src/job.c
skipped=0
for test in $("$build/tests/runner" --list); do
    case $test in
    types_* | install_*)
        # Compilers and build systems at work: nothing of ours runs there.
        skipped=$((skipped + 1))
        echo "ok - valgrind $test # SKIP a compile or packaging check"
        continue ;;
    esac
    PMAP_TEST_VALGRIND=1 check "$test" "$build/tests/runner" --inline "$test"
done
rm -f "$log"
echo "$passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ]
