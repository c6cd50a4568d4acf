# SPDX-License-Identifier: MIT
# libpmap - the whole build.  `make` builds the libraries and the examples,
# `make demo` runs the examples, `make test` runs the tests.  Override any
# variable on the command line (CC=clang, CFLAGS=..., PREFIX=...).

# The version is pmap.h's (PMAP_VERSION_*), read once here.
version = $(shell sed -n 's/^.define PMAP_VERSION_$(1) \([0-9]*\)$$/\1/p' \
                      include/pmap.h)
VERSION_MAJOR := $(call version,MAJOR)
VERSION_MINOR := $(call version,MINOR)
VERSION_PATCH := $(call version,PATCH)
VERSION = $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
CMAKEDIR ?= $(LIBDIR)/cmake/pmap
MANDIR ?= $(PREFIX)/share/man
INSTALL ?= install

CFLAGS ?= -O2 -g
WARN = -Wall -Wextra -Wpedantic -Werror -Wshadow -Wstrict-prototypes \
       -Wmissing-prototypes -Wwrite-strings -Wformat=2 -Wundef
ALL_CFLAGS = -std=c11 -D_POSIX_C_SOURCE=200809L $(WARN) -Iinclude -pthread \
             $(CPPFLAGS) $(CFLAGS)
ALL_LDLIBS = -pthread $(LDLIBS)

B ?= build

# C++ programs use the same header (C++17); built where a C++ compiler is.
CXXWARN = -Wall -Wextra -Wpedantic -Werror
HAVE_CXX := $(shell command -v $(CXX) >/dev/null 2>&1 && echo yes)
# The compiler and flags a build folder was made with: when they change,
# everything in it is rebuilt (a check never reuses objects its tool
# cannot read, whatever was built there before).
FLAGS = $(B)/flags
# The soname names the ABI (README, "Versions"): libpmap.so.MAJOR, but
# while MAJOR is 0 every minor version may change it: libpmap.so.0.MINOR.
SOVERSION = $(if $(filter 0,$(VERSION_MAJOR)),0.$(VERSION_MINOR),$(VERSION_MAJOR))
SONAME = libpmap.so.$(SOVERSION)
LIB_SRC = $(wildcard src/*.c)
LIB_OBJ = $(LIB_SRC:src/%.c=$(B)/obj/%.o)
EXAMPLES = $(patsubst examples/%.c,$(B)/examples/%,$(wildcard examples/*.c)) \
    $(B)/examples/multi $(if $(HAVE_CXX),$(B)/examples/pathos_cpp)
TEST_SRC = $(filter-out tests/soak.c,$(wildcard tests/*.c))
TEST_OBJ = $(TEST_SRC:tests/%.c=$(B)/tests/%.o)

.PHONY: all demo test check check-asan check-inline check-man check-tick \
        check-valgrind valgrind-run \
        fuzz bench bench-scale soak install uninstall clean FORCE
.DELETE_ON_ERROR:

all: $(B)/libpmap.a $(B)/libpmap.so $(EXAMPLES)

$(FLAGS): FORCE
	@mkdir -p $(@D)
	@printf '%s\n' '$(CC) $(CXX) $(ALL_CFLAGS) $(NO_PLT) $(LDFLAGS)' | cmp -s - $@ || \
	    printf '%s\n' '$(CC) $(CXX) $(ALL_CFLAGS) $(NO_PLT) $(LDFLAGS)' > $@

# The library's calls into libc go through the GOT, bound when the program
# loads, not through lazily bound PLT entries: a worker runs functions the
# caller never called (prctl, sigaltstack, getppid...), and each new worker
# would bind them again in its copy, the dynamic linker's pages and the
# written GOT costing it about 8 page faults (W5, a third of its CPU time).
NO_PLT := $(shell $(CC) -fno-plt -Werror -x c -c -o /dev/null /dev/null \
                  2>/dev/null && echo -fno-plt)

$(B)/obj/%.o: src/%.c $(FLAGS)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -fPIC $(NO_PLT) -fvisibility=hidden -MMD -MP -c -o $@ $<

# The crash reports' unwinder (src/stack.c) is libgcc's, linked into
# stack.o from libgcc_eh.a with every symbol but stack.c's own made local:
# no program then loads libgcc_s for it, nor clashes with its copy.  Where
# the compiler has no libgcc_eh.a (or there is no objcopy), stack.o is
# stack.c alone and a program's link takes the unwinder from libgcc_s.
OBJCOPY ?= objcopy
LIBGCC_EH := $(shell p=`$(CC) -print-file-name=libgcc_eh.a 2>/dev/null`; \
    [ -f "$$p" ] && command -v $(OBJCOPY) >/dev/null && echo "$$p")
STACK_SYMBOLS = pmap__stack_walk pmap__stack_prepare

$(B)/obj/stack.o: src/stack.c $(FLAGS)
	@mkdir -p $(@D) $(B)/unwind
	$(CC) $(ALL_CFLAGS) -fPIC $(NO_PLT) -fvisibility=hidden -MMD -MP \
	    -MF $(B)/obj/stack.d -MT $@ -c -o $(B)/unwind/stack.o $<
	$(if $(LIBGCC_EH),$(CC) -r -nostdlib -o $@ $(B)/unwind/stack.o \
	    $(LIBGCC_EH) && $(OBJCOPY) $(STACK_SYMBOLS:%=-G %) $@, \
	    cp $(B)/unwind/stack.o $@)

$(B)/libpmap.a: $(LIB_OBJ)
	rm -f $@
	$(AR) rcs $@ $^

$(B)/libpmap.so.$(VERSION): $(LIB_OBJ) src/libpmap.map
	$(CC) -shared -Wl,-soname,$(SONAME) \
	    -Wl,--version-script=src/libpmap.map $(LDFLAGS) -o $@ $(LIB_OBJ) \
	    $(ALL_LDLIBS)

$(B)/libpmap.so: $(B)/libpmap.so.$(VERSION)
	ln -sf libpmap.so.$(VERSION) $(B)/$(SONAME)
	ln -sf $(SONAME) $@

$(B)/examples/%: examples/%.c $(B)/libpmap.a $(FLAGS)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -MMD -MP $(LDFLAGS) -o $@ $< $(B)/libpmap.a $(ALL_LDLIBS)

# A program of several files: PMAP_DECLARE in a header, PMAP_EXPORT in one.
$(B)/examples/multi: $(wildcard examples/multi/*) $(B)/libpmap.a $(FLAGS)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ examples/multi/main.c \
	    examples/multi/stats.c $(B)/libpmap.a $(ALL_LDLIBS)

$(B)/examples/pathos_cpp: examples/cpp/pathos.cc $(B)/libpmap.a $(FLAGS)
	@mkdir -p $(@D)
	$(CXX) -std=c++17 $(CXXWARN) -Iinclude $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) \
	    -o $@ $< $(B)/libpmap.a $(ALL_LDLIBS)

$(B)/tests/%.o: tests/%.c $(FLAGS)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -Isrc -MMD -MP -c -o $@ $<

$(B)/tests/runner: $(TEST_OBJ) $(B)/libpmap.a
	$(CC) $(LDFLAGS) -o $@ $(TEST_OBJ) $(B)/libpmap.a $(ALL_LDLIBS)

demo: all
	@sh examples/demo.sh $(B)/examples

# The layers first (tests/layers.sh: each source file calls only the files
# below it), then the tests.
test: all $(B)/tests/runner
	@sh tests/layers.sh $(B)/obj
	@PMAP_BUILD=$(B) PMAP_CC="$(CC)" PMAP_CFLAGS="$(ALL_CFLAGS)" \
	    PMAP_LIB="$(B)/libpmap.a $(ALL_LDLIBS)" \
	    PMAP_CXX="$(if $(HAVE_CXX),$(CXX))" \
	    PMAP_USER_FLAGS="$(CFLAGS) $(LDFLAGS)" $(B)/tests/runner $(TESTS)

check: test

# The tests again with AddressSanitizer, UndefinedBehaviorSanitizer and
# LeakSanitizer; workers must die of their real signals, not ASan's reports.
SANITIZE = -fsanitize=address,undefined -fno-sanitize-recover=all
check-asan:
	ASAN_OPTIONS=handle_segv=0:handle_abort=0:detect_leaks=1 \
	UBSAN_OPTIONS=print_stacktrace=1 \
	$(MAKE) --no-print-directory B=$(B)/asan \
	    CFLAGS="-O1 -g -fno-omit-frame-pointer $(SANITIZE)" \
	    LDFLAGS="$(SANITIZE)" test

# Every man page's EXAMPLES program compiled and run, and the pages linted
# (mandoc -Tlint) when mandoc is installed.
check-man: $(B)/libpmap.a
	@CC="$(CC)" sh tests/man_examples.sh $(B)

# The tests of map semantics again with the callbacks run in process.
check-inline: all $(B)/tests/runner
	@PMAP_BUILD=$(B) $(B)/tests/runner --in-process

# The tests again with the portable way of watching workers (a waitpid
# look every 50 ms) instead of Linux's pidfds.
# Only the tests where workers die, stop or are replaced: the rest do not
# depend on how a death is noticed.
TICK_TESTS = 'liveness_*' 'fault_*' 'stream_*' 'start_*' 'threads_*' \
             'output_*' 'policy_*' 'codec_*'
check-tick:
	@$(MAKE) --no-print-directory B=$(B)/tick CPPFLAGS=-DPMAP_NO_PIDFD \
	    TESTS="$(TICK_TESTS)" test

# The frame decoders under libFuzzer (clang only), for FUZZ_SECONDS.
FUZZ_SECONDS ?= 30
FUZZ_CC ?= clang
FUZZ_SRC = src/wire.c src/buf.c src/fdio.c
fuzz:
	@if ! echo 'int LLVMFuzzerTestOneInput(const char *d, long n);' \
	      'int LLVMFuzzerTestOneInput(const char *d, long n)' \
	      '{ return d && n < 0; }' | $(FUZZ_CC) -x c -fsanitize=fuzzer \
	      -o /dev/null - >/dev/null 2>&1; then \
	    echo "fuzz: SKIPPED: $(FUZZ_CC) cannot build a libFuzzer target" \
	         "(apt-get install clang libclang-rt-dev)"; \
	else \
	    mkdir -p $(B)/fuzz/corpus && \
	    $(CC) $(ALL_CFLAGS) -Isrc -o $(B)/fuzz/seeds tests/fuzz/seeds.c \
	        $(FUZZ_SRC) $(ALL_LDLIBS) && $(B)/fuzz/seeds $(B)/fuzz/corpus && \
	    $(FUZZ_CC) $(ALL_CFLAGS) -O1 -Isrc \
	        -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	        -o $(B)/fuzz/fuzz_frames tests/fuzz/fuzz_frames.c $(FUZZ_SRC) \
	        $(ALL_LDLIBS) && \
	    { $(B)/fuzz/fuzz_frames -max_total_time=$(FUZZ_SECONDS) \
	        $(B)/fuzz/corpus >$(B)/fuzz/log 2>&1 || \
	      { tail -n 60 $(B)/fuzz/log; exit 1; }; } && \
	    grep -h '^Done' $(B)/fuzz/log; \
	fi

# W1-W6 for libpmap and its peers (README, "Performance"), then the cost by
# the number of workers.  BENCH_REPS runs of each figure; OpenMP peers need
# -fopenmp, Python's need python3.  The output is written to BENCH_OUT with
# a header (date, CPU, kernel, compiler) and shown in README.md between its
# bench:begin and bench:end markers (tests/bench/report.sh).
# OpenMP threads must not spin between regions: they would take the CPUs
# from the worker processes measured next.
BENCH_REPS ?= 5
BENCH_OUT ?= tests/bench/RESULTS.md
BENCH_SCALE_OUT ?= tests/bench/SCALE.md
BENCH_SRC = tests/bench/bench.c tests/bench/omp.c tests/bench/workloads.h
$(B)/bench/bench: $(BENCH_SRC) $(B)/libpmap.a $(FLAGS)
	@mkdir -p $(@D)
	@if echo 'int main(void) { return 0; }' | \
	    $(CC) -fopenmp -x c -o /dev/null - >/dev/null 2>&1; then \
	    omp=-fopenmp; \
	else \
	    omp=-Wno-unknown-pragmas; echo "bench: $(CC) has no OpenMP"; \
	fi; \
	echo "$(CC) ... -o $@ tests/bench/bench.c tests/bench/omp.c $$omp"; \
	$(CC) $(ALL_CFLAGS) $$omp -c -o $(B)/bench/omp.o tests/bench/omp.c && \
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ tests/bench/bench.c \
	    $(B)/bench/omp.o $(B)/libpmap.a $$omp $(ALL_LDLIBS)

BENCH_RUN = OMP_WAIT_POLICY=passive CC="$(CC)" PMAP_VERSION=$(VERSION) \
    sh tests/bench/report.sh
bench: $(B)/bench/bench
	@$(BENCH_RUN) $(BENCH_OUT) bench $(B)/bench/bench $(BENCH_REPS)

# W2, W3 and W6a at 1, 2, 4, ... nproc workers next to OpenMP at as many
# threads, written to BENCH_SCALE_OUT and shown in README.md between its
# scale:begin and scale:end markers.
bench-scale: $(B)/bench/bench
	@$(BENCH_RUN) $(BENCH_SCALE_OUT) scale $(B)/bench/bench $(BENCH_REPS) \
	    scale

# Random maps of every form under random faults for SOAK_SECONDS; a run is
# replayed with SOAK_SEED=N (printed first), SOAK_FAULTS=0 runs it clean.
SOAK_SECONDS ?= 60
SOAK_FAULTS ?= 1
$(B)/soak/soak: tests/soak.c $(B)/libpmap.a $(FLAGS)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ tests/soak.c $(B)/libpmap.a \
	    $(ALL_LDLIBS)

soak: $(B)/soak/soak
	SOAK_FAULTS=$(SOAK_FAULTS) $(B)/soak/soak $(SOAK_SECONDS) $(SOAK_SEED)

# memcheck in a build folder of its own, with DWARF 4 debug information,
# which every valgrind reads (clang 14 writes DWARF 5 by default).
check-valgrind:
	@$(MAKE) --no-print-directory B=$(B)/valgrind \
	    CFLAGS="-O1 -g -gdwarf-4" valgrind-run

valgrind-run: all $(B)/tests/runner
	@PMAP_BUILD=$(B) PMAP_CC="$(CC)" PMAP_CFLAGS="$(ALL_CFLAGS)" \
	    PMAP_USER_FLAGS="$(CFLAGS) $(LDFLAGS)" sh tests/valgrind.sh $(B)

# Fills a template: the version, the soname and the install folders.
SUBST = sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' \
    -e 's|@VERSION_MAJOR@|$(VERSION_MAJOR)|' \
    -e 's|@VERSION_MINOR@|$(VERSION_MINOR)|' -e 's|@SONAME@|$(SONAME)|' \
    -e "s|@INCLUDE_FROM_LIB@|$$(realpath -m --relative-to=$(LIBDIR) \
        $(INCLUDEDIR))|"
MAN3 = $(wildcard man/*.3)
MAN7 = $(wildcard man/*.7)
# The names a page documents (its NAME section's .Nm lines): each gets a
# link to the page, so that `man pool_map_async` finds pool_map(3).
MAN_NAMES = sed -n '/^\.Sh NAME/,/^\.Nd/s/^\.Nm \([A-Za-z_0-9]*\).*/\1/p'

install: $(B)/libpmap.a $(B)/libpmap.so
	$(INSTALL) -d $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR) \
	    $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(CMAKEDIR) \
	    $(DESTDIR)$(MANDIR)/man3 $(DESTDIR)$(MANDIR)/man7
	$(INSTALL) -m 644 include/pmap.h $(DESTDIR)$(INCLUDEDIR)/pmap.h
	$(INSTALL) -m 644 $(B)/libpmap.a $(DESTDIR)$(LIBDIR)/libpmap.a
	$(INSTALL) -m 755 $(B)/libpmap.so.$(VERSION) \
	    $(DESTDIR)$(LIBDIR)/libpmap.so.$(VERSION)
	ln -sf libpmap.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libpmap.so
	$(SUBST) src/pmap.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/pmap.pc
	$(SUBST) src/pmap-config.cmake.in > $(DESTDIR)$(CMAKEDIR)/pmap-config.cmake
	$(SUBST) src/pmap-config-version.cmake.in \
	    > $(DESTDIR)$(CMAKEDIR)/pmap-config-version.cmake
	chmod 644 $(DESTDIR)$(PKGCONFIGDIR)/pmap.pc $(DESTDIR)$(CMAKEDIR)/*.cmake
	$(INSTALL) -m 644 $(MAN3) $(DESTDIR)$(MANDIR)/man3
	$(INSTALL) -m 644 $(MAN7) $(DESTDIR)$(MANDIR)/man7
	@for page in $(MAN3); do \
	    for name in $$($(MAN_NAMES) $$page); do \
	        [ "$$name.3" = "$${page##*/}" ] || \
	        ln -sf $${page##*/} $(DESTDIR)$(MANDIR)/man3/$$name.3; \
	    done; \
	done

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/pmap.h $(DESTDIR)$(LIBDIR)/libpmap.a \
	    $(DESTDIR)$(LIBDIR)/libpmap.so.$(VERSION) \
	    $(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/libpmap.so \
	    $(DESTDIR)$(PKGCONFIGDIR)/pmap.pc \
	    $(DESTDIR)$(CMAKEDIR)/pmap-config.cmake \
	    $(DESTDIR)$(CMAKEDIR)/pmap-config-version.cmake \
	    $(MAN3:man/%=$(DESTDIR)$(MANDIR)/man3/%) \
	    $(MAN7:man/%=$(DESTDIR)$(MANDIR)/man7/%) \
	    $(foreach page,$(MAN3),$(patsubst %,$(DESTDIR)$(MANDIR)/man3/%.3,\
	        $(shell $(MAN_NAMES) $(page))))

clean:
	rm -rf $(B)

-include $(LIB_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(EXAMPLES:=.d)

# libpmap-mpi: make mpi, mpi-test, bench-mpi (README, "Across machines").
include src/mpi/mpi.mk
