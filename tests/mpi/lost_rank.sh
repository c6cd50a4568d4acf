#!/bin/sh
# SPDX-License-Identifier: MIT
# lost_rank.sh - make mpi-test: a serving rank killed (SIGKILL) during a map
# ends the whole job, promptly and saying so, rather than hanging: what
# Open MPI's mpirun does (README, "Across machines"; measured with Open MPI
# 4.1, the default error handler or MPI_ERRORS_RETURN alike).  Run as
#   tests/mpi/lost_rank.sh MPIRUN-COMMAND... -n 3 build/mpi/test_mpi
# (test_mpi --lose is appended).  Prints "N passed, N failed".
out=$(mktemp)
start=$(date +%s)
timeout 60 "$@" --lose >"$out" 2>&1
rc=$?
took=$(($(date +%s) - start))
passed=0
failed=0
check() {   # check WHAT CONDITION...
    what=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL lost_rank.sh: $what"
    fi
}
check "the job ended (not killed by timeout 60: rc $rc)" [ "$rc" -ne 124 ]
check "the job failed (rc $rc)" [ "$rc" -ne 0 ]
check "within 30 s ($took s)" [ "$took" -le 30 ]
check "mpirun named the rank and its signal" \
    grep -q "exited on signal 9" "$out"
check "the map did not return" sh -c "! grep -q 'the job survived' '$out'"
[ "$failed" -eq 0 ] || cat "$out"
echo "mpi-test lost rank: mpirun exited with status $rc after $took s:" \
     "$(grep -o 'process rank [0-9]* .*exited on signal [0-9]* ([A-Za-z]*)' "$out" | head -1)"
echo "mpi-test lost rank: $passed passed, $failed failed"
rm -f "$out"
[ "$failed" -eq 0 ]
