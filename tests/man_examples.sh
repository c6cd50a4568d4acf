#!/bin/sh
# SPDX-License-Identifier: MIT
#
# man_examples.sh - check the manual pages in man/.
#
#     usage: sh tests/man_examples.sh BUILD_DIR
#
# For every man/*.3 and man/*.7 page: extracts the program of its EXAMPLES
# section (the first `.Bd -literal' ... `.Ed' block after `.Sh EXAMPLES'),
# turns its roff escapes back into C, compiles it against
# BUILD_DIR/libpmap.a with ${CC:-cc} and the flags below, and runs it (20 s
# at most): it must exit with status 0.  If mandoc is installed, the page
# must also pass `mandoc -Tlint -W warning' without a message.
#
# Prints `ok - man PAGE' or `not ok - man PAGE (why)' per page (details
# follow as `#' lines), then `N passed, N failed'.  Exit status: 0 when
# every page passed, 1 when one failed, 2 on a usage error.

CFLAGS_MAN='-std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -Iinclude'
RUN_TIMEOUT=20

if [ $# -ne 1 ]; then
    echo "usage: $0 BUILD_DIR" >&2
    exit 2
fi
case $1 in
/*) build=$1 ;;
*) build=$(pwd)/$1 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd) || exit 2
if [ ! -f "$build/libpmap.a" ]; then
    echo "$0: $build/libpmap.a not found (run make first)" >&2
    exit 2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/man_examples.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT TERM

if command -v mandoc >/dev/null 2>&1; then
    have_mandoc=1
else
    have_mandoc=0
fi
if command -v timeout >/dev/null 2>&1; then
    have_timeout=1
else
    have_timeout=0
fi

# The program of the EXAMPLES section of page $1, as roff text.
extract() {
    awk '
        /^\.Sh[ \t]/ {
            title = $0
            sub(/^\.Sh[ \t]+/, "", title)
            sub(/[ \t]+$/, "", title)
            in_examples = (title == "EXAMPLES")
            next
        }
        in_examples && !done && !in_block && /^\.Bd[ \t]+-literal/ {
            in_block = 1
            next
        }
        in_block && /^\.Ed([ \t]|$)/ {
            in_block = 0
            done = 1
            next
        }
        in_block && /^\.\\"/ { next }       # a roff comment
        in_block { print }
    ' "$1"
}

# roff text on stdin to C on stdout: \e, \&, \-, \(xx, \[xx], \\ and
# \<space>; any other escape is kept as it is (and breaks the compile).
unescape() {
    awk '
        BEGIN {
            named["aq"] = "\047"; named["dq"] = "\""; named["rs"] = "\\"
            named["ti"] = "~"; named["ha"] = "^"; named["cq"] = "\047"
            named["lq"] = "\""; named["rq"] = "\""; named["mi"] = "-"
            named["hy"] = "-"; named["en"] = "-"; named["em"] = "-"
        }
        {
            out = ""
            n = length($0)
            for (i = 1; i <= n; i++) {
                c = substr($0, i, 1)
                if (c != "\\" || i == n) {
                    out = out c
                    continue
                }
                d = substr($0, i + 1, 1)
                if (d == "e" || d == "\\") {
                    out = out "\\"; i++
                } else if (d == "&") {
                    i++
                } else if (d == "-" || d == "." || d == "\047") {
                    out = out d; i++
                } else if (d == " ") {
                    out = out " "; i++
                } else if (d == "(" && substr($0, i + 2, 2) in named) {
                    out = out named[substr($0, i + 2, 2)]; i += 3
                } else if (d == "[" && substr($0, i + 4, 1) == "]" &&
                           substr($0, i + 2, 2) in named) {
                    out = out named[substr($0, i + 2, 2)]; i += 4
                } else {
                    out = out c
                }
            }
            print out
        }
    '
}

# Runs $1 in the current directory with a time limit; its output goes to
# $2.  Returns its exit status, 124 if it ran out of time.
run_limited() {
    if [ $have_timeout = 1 ]; then
        timeout "$RUN_TIMEOUT" "$1" >"$2" 2>&1
        return $?
    fi
    "$1" >"$2" 2>&1 &
    pid=$!
    (sleep "$RUN_TIMEOUT" && kill -9 "$pid" 2>/dev/null && \
        : >"$tmp/timed_out") >/dev/null 2>&1 &
    watchdog=$!
    wait "$pid"
    status=$?
    kill "$watchdog" 2>/dev/null
    wait "$watchdog" 2>/dev/null
    if [ -f "$tmp/timed_out" ]; then
        rm -f "$tmp/timed_out"
        return 124
    fi
    return $status
}

# Prints the first lines of file $1 as `#' comments.
details() {
    sed -n '1,25s/^/#   /p' "$1"
}

passed=0
failed=0
pages=0
if [ $have_mandoc = 0 ]; then
    echo "skip - mandoc lint (mandoc is not installed)"
fi

for page in "$root"/man/*.[37]; do
    [ -f "$page" ] || continue
    pages=$((pages + 1))
    name=$(basename "$page")
    dir=$tmp/$name
    mkdir "$dir"
    why=
    : >"$dir/log"

    extract "$page" >"$dir/prog.roff"
    unescape <"$dir/prog.roff" >"$dir/prog.c"
    if [ ! -s "$dir/prog.c" ]; then
        why="no program in its EXAMPLES section"
    elif ! grep -q '^#include <pmap\.h>' "$dir/prog.c"; then
        why="its example does not include <pmap.h>"
    elif ! (cd "$root" && ${CC:-cc} $CFLAGS_MAN -o "$dir/prog" \
                "$dir/prog.c" "$build/libpmap.a" -pthread) \
                >"$dir/log" 2>&1; then
        why="its example does not compile"
    else
        (cd "$dir" && run_limited ./prog "$dir/log") 2>/dev/null
        status=$?
        if [ $status = 124 ]; then
            why="its example ran over ${RUN_TIMEOUT} s"
        elif [ $status != 0 ]; then
            why="its example exited with status $status"
        else
            : >"$dir/log"       # its output is of interest only on failure
        fi
    fi

    if [ $have_mandoc = 1 ]; then
        mandoc -Tlint -W warning "$page" >"$dir/lint" 2>&1
        if [ -s "$dir/lint" ]; then
            lint="mandoc lint: $(wc -l <"$dir/lint" | tr -d ' ') messages"
            why=${why:+$why; }$lint
            cat "$dir/lint" >>"$dir/log"
        fi
    fi

    if [ -z "$why" ]; then
        echo "ok - man $name"
        passed=$((passed + 1))
    else
        echo "not ok - man $name ($why)"
        details "$dir/log"
        failed=$((failed + 1))
    fi
done

if [ $pages = 0 ]; then
    echo "not ok - man (no pages in $root/man)"
    failed=$((failed + 1))
fi
echo "$passed passed, $failed failed"
[ $failed = 0 ]
