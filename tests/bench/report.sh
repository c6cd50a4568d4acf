#!/bin/sh
# SPDX-License-Identifier: MIT
#
# report.sh OUT MARK COMMAND [ARG...] - `make bench` and `make bench-scale`:
# runs COMMAND (the benchmark), showing its output as it comes, then writes
# OUT: a header saying where and when it ran, and the output verbatim in a
# code block; and puts OUT's content into README.md between the lines
# `<!-- MARK:begin -->` and `<!-- MARK:end -->`, so that the README shows
# the figures of the last run and nothing else.  If COMMAND fails, neither
# file changes.  CC (the compiler) and PMAP_VERSION come from make.
# POSIX sh and awk only.
set -u

if [ $# -lt 3 ]; then
    echo "usage: report.sh OUT MARK COMMAND [ARG...]" >&2
    exit 2
fi
out=$1 mark=$2
shift 2
readme=README.md
begin="<!-- $mark:begin -->"
end="<!-- $mark:end -->"

for m in "$begin" "$end"; do
    if ! grep -qxF "$m" "$readme"; then
        echo "report.sh: $readme has no line '$m'" >&2
        exit 1
    fi
done

tmp=$(mktemp "${TMPDIR:-/tmp}/pmap-bench.XXXXXX") || exit 1
trap 'rm -f "$tmp" "$tmp.rc" "$tmp.md" "$tmp.readme"' EXIT
trap 'exit 130' INT TERM

# The header first: a figure means little without the machine it ran on.
cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo \
      2>/dev/null | head -n 1)
[ -n "$cpu" ] || cpu=$(uname -m)
cpus=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo '?')
memory=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' \
         /proc/meminfo 2>/dev/null)
compiler=$(${CC:-cc} --version 2>/dev/null | head -n 1)
python=$(python3 --version 2>/dev/null || echo "none (its peers are skipped)")
# Soft limits on processes and open files (dash's ulimit has no -u).
limits=$(awk '/^Max processes/ { p = $3 } /^Max open files/ { f = $4 }
              END { if (p != "") printf "%s processes, %s open files", p, f }' \
         /proc/self/limits 2>/dev/null)
[ -n "$limits" ] || limits="?"
target=bench
[ "$mark" = bench ] || target=bench-$mark
commit=$(git rev-parse --short HEAD 2>/dev/null)
if [ -n "$commit" ] && ! git diff --quiet HEAD -- src include 2>/dev/null
then
    commit="$commit, with local changes to src/ or include/"
fi
{
    echo "<!-- Written by \`make $target\` (tests/bench/report.sh):" \
         "do not edit. -->"
    echo
    echo "| run | |"
    echo "| --- | --- |"
    echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
    echo "| libpmap | ${PMAP_VERSION:-?}${commit:+ ($commit)} |"
    echo "| command | \`$*\` |"
    echo "| CPU | $cpu |"
    echo "| CPUs (nproc) | $cpus |"
    echo "| memory | ${memory:-?} |"
    echo "| limits (soft) | $limits |"
    echo "| kernel | $(uname -sr) |"
    echo "| compiler | $compiler |"
    echo "| Python | $python |"
    echo
    echo "Timing decides nothing here and the machine may be busy with other"
    echo "work: compare ratios within one run, not figures across runs."
    echo
    echo '```text'
} >"$tmp.md"
sed -n -e '/^| run |/d' -e '/^| --- |/d' \
    -e 's/^| \([^|]*\) | \(.*\) |$/\1: \2/p' "$tmp.md"
echo

{ "$@"; echo $? >"$tmp.rc"; } 2>&1 | tee "$tmp"
rc=$(cat "$tmp.rc" 2>/dev/null || echo 1)
if [ "$rc" != 0 ]; then
    echo "report.sh: $1 failed (exit $rc): $out and $readme left as they were" >&2
    exit 1
fi

{ cat "$tmp"; echo '```'; } >>"$tmp.md"
mkdir -p "$(dirname "$out")" && cat "$tmp.md" >"$out" || exit 1

# README.md: the lines between the markers replaced by OUT.
awk -v begin="$begin" -v end="$end" -v src="$out" '
    $0 == begin {
        print
        while ((getline line < src) > 0)
            print line
        close(src)
        skip = 1
        next
    }
    $0 == end { skip = 0 }
    !skip
' "$readme" >"$tmp.readme" && cat "$tmp.readme" >"$readme" || exit 1
echo
echo "report.sh: wrote $out and put it into $readme"
