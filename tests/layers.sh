#!/bin/sh
# SPDX-License-Identifier: MIT
#
# tests/layers.sh OBJDIR [PLUGIN.o FILE] - checks that each of the
# library's source files calls only the files below it, in the order
# src/pmap_internal.h lists them (its first comment, top first): no cycle,
# and a new transport or start method is a file of its own, not edits
# across the loop.  Read from the object files, so it sees every function
# and variable that one file takes from another.  PLUGIN.o, built apart
# (libpmap-mpi), is checked as if it sat just above FILE: it may use FILE
# and what is below it.
#
# Prints each call that goes up or sideways and exits 1 if there is one.

objdir=${1:-build/obj}
plugin=$2
beside=$3
header=src/pmap_internal.h

# The files in order, top first: the lines "<name>.c  ..." of the header's
# first comment.
order=$(sed -n '1,/\*\//p' "$header" |
        sed -n 's/^ \*   \([a-z_]*\)\.c .*/\1/p')
if [ -z "$order" ]; then
    echo "layers: no file list in $header" >&2
    exit 1
fi

rank=0
ranks=
for f in $order; do
    if [ ! -f "$objdir/$f.o" ]; then
        echo "layers: $objdir/$f.o missing (make first)" >&2
        exit 1
    fi
    rank=$((rank + 1))
    ranks="$ranks $f=$rank"
done
for o in "$objdir"/*.o; do
    f=$(basename "$o" .o)
    case " $ranks " in
    *" $f="*) ;;
    *) echo "layers: src/$f.c is not in the list of $header"; exit 1 ;;
    esac
done

# "file symbol" for every symbol a file defines, then every one it uses.
defined=$(for f in $order; do
              nm --defined-only -g "$objdir/$f.o" |
                  awk -v f="$f" 'NF == 3 { print f, $3 }'
          done)
used=$(for f in $order; do
           nm -u "$objdir/$f.o" | awk -v f="$f" '{ print f, $NF }'
       done)
if [ -n "$plugin" ]; then
    case " $ranks " in
    *" $beside="*) ;;
    *) echo "layers: $beside.c is not in the list of $header"; exit 1 ;;
    esac
    # Ranked as FILE, and allowed FILE itself: "plugin" is never a file.
    ranks="$ranks plugin=$(printf '%s\n' $ranks | sed -n "s/^$beside=//p")"
    used="$used
$(nm -u "$plugin" | awk '{ print "plugin", $NF }')"
fi

printf '%s\n' "$ranks" | tr ' ' '\n' | sed '/^$/d' | tr '=' ' ' >/tmp/layers.$$
trap 'rm -f /tmp/layers.$$' EXIT

printf '%s\n--\n%s\n' "$defined" "$used" |
awk -v ranks=/tmp/layers.$$ -v plugin="$plugin" '
    BEGIN { while ((getline line < ranks) > 0) { split(line, a, " "); r[a[1]] = a[2] } }
    $0 == "--" { using = 1; next }
    !using { owner[$2] = $1; next }
    ($2 in owner) {
        to = owner[$2]
        if (r[to] < r[$1] || (r[to] == r[$1] && $1 != "plugin")) {
            printf "layers: %s uses %s of %s.c, which is not below it\n", \
                   ($1 == "plugin" ? plugin : $1 ".c"), $2, to
            bad++
        }
    }
    END {
        if (bad) exit 1
        printf "layers: %d files, each calls only files below it%s\n", \
               length(r) - (plugin != ""), \
               plugin != "" ? " (and " plugin ")" : ""
    }'
