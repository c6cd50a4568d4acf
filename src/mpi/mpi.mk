# SPDX-License-Identifier: MIT
# mpi.mk - libpmap-mpi (README, "Across machines"), included by the
# Makefile.  Built only by these targets, with the MPI compiler wrapper;
# the core library never needs MPI.
#
#   make mpi        libpmap-mpi.a, libpmap-mpi.so, the MPI test and example
#   make mpi-test   the tests over MPI: 3 ranks on TCP loopback
#   make bench-mpi  W2 and W3 over MPI against the local pool and a
#                   hand-written MPI master/worker loop
#   make install-mpi

MPICC ?= mpicc
MPIRUN ?= mpirun
HAVE_MPI := $(shell command -v $(MPICC) >/dev/null 2>&1 && \
                    command -v $(MPIRUN) >/dev/null 2>&1 && echo yes)
MPI_CFLAGS = -std=c11 -D_POSIX_C_SOURCE=200809L $(WARN) -Iinclude -Isrc \
             -pthread $(CPPFLAGS) $(CFLAGS)
# Ranks share nothing but TCP sockets, as separate machines would.
MPI_RUN = env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
          $(MPIRUN) --oversubscribe --allow-run-as-root --mca btl tcp,self
MPI_NOTE = echo "$@: SKIPPED: no MPI compiler wrapper ($(MPICC)) or $(MPIRUN)" \
                "(apt-get install openmpi-bin libopenmpi-dev)"
MPI_SONAME = libpmap-mpi.so.$(SOVERSION)
MPI_LIB = $(B)/mpi/libpmap-mpi.a

.PHONY: mpi mpi-test bench-mpi install-mpi

ifeq ($(HAVE_MPI),yes)
mpi: $(MPI_LIB) $(B)/mpi/libpmap-mpi.so $(B)/mpi/test_mpi \
     $(B)/mpi/mandelbrot $(B)/mpi/test_mpi_other

$(B)/mpi/pmap_mpi.o: src/mpi/pmap_mpi.c include/pmap_mpi.h src/pmap_internal.h \
                     $(FLAGS)
	@mkdir -p $(@D)
	$(MPICC) $(MPI_CFLAGS) -fPIC -fvisibility=hidden -c -o $@ $<

# libpmap-mpi holds libpmap too: a program links it instead of libpmap.
$(MPI_LIB): $(LIB_OBJ) $(B)/mpi/pmap_mpi.o
	rm -f $@
	$(AR) rcs $@ $^

$(B)/mpi/libpmap-mpi.so: $(LIB_OBJ) $(B)/mpi/pmap_mpi.o src/libpmap.map
	$(MPICC) -shared -Wl,-soname,$(MPI_SONAME) \
	    -Wl,--version-script=src/libpmap.map $(LDFLAGS) -o $@.$(VERSION) \
	    $(LIB_OBJ) $(B)/mpi/pmap_mpi.o $(ALL_LDLIBS)
	ln -sf libpmap-mpi.so.$(VERSION) $(B)/mpi/$(MPI_SONAME)
	ln -sf $(MPI_SONAME) $@

$(B)/mpi/test_mpi: tests/mpi/test_mpi.c $(MPI_LIB)
	$(MPICC) $(MPI_CFLAGS) -o $@ $< $(MPI_LIB) $(ALL_LDLIBS)

# Another build of the test: what rank 0 must refuse to work with.
$(B)/mpi/test_mpi_other: tests/mpi/test_mpi.c $(MPI_LIB)
	$(MPICC) $(MPI_CFLAGS) -DOTHER_BUILD -o $@ $< $(MPI_LIB) $(ALL_LDLIBS)

$(B)/mpi/mandelbrot: examples/mandelbrot.c $(MPI_LIB)
	$(MPICC) $(MPI_CFLAGS) -DPMAP_WITH_MPI -o $@ $< $(MPI_LIB) $(ALL_LDLIBS) -lm

$(B)/mpi/bench_mpi: tests/mpi/bench_mpi.c tests/bench/workloads.h $(MPI_LIB)
	$(MPICC) $(MPI_CFLAGS) -O2 -o $@ $< $(MPI_LIB) $(ALL_LDLIBS)

# The MPI layer sits beside proc.c (README, "Design"): it may use proc.c
# and what is below it, nothing above.
mpi-test: mpi
	@sh tests/layers.sh $(B)/obj $(B)/mpi/pmap_mpi.o proc
	@PMAP_WORKERS=1 $(MPI_RUN) -n 3 $(B)/mpi/test_mpi
	@PMAP_WORKERS=1 $(MPI_RUN) -n 2 -x PMAP_WORKERS $(B)/mpi/test_mpi --here
	@PMAP_WORKERS=1 tests/mpi/lost_rank.sh $(MPI_RUN) -n 3 -x PMAP_WORKERS \
	    $(B)/mpi/test_mpi
	@PMAP_WORKERS=1 $(MPI_RUN) -n 1 $(B)/mpi/test_mpi --refused : \
	    -n 1 $(B)/mpi/test_mpi_other

# Written to BENCH_MPI_OUT and shown in README.md between its mpi:begin
# and mpi:end markers (tests/bench/report.sh).
BENCH_MPI_OUT ?= tests/bench/MPI.md
bench-mpi: $(B)/mpi/bench_mpi
	@$(BENCH_RUN) $(BENCH_MPI_OUT) mpi $(MPI_RUN) -n 3 -x PMAP_WORKERS=1 \
	    $(B)/mpi/bench_mpi

install-mpi: mpi install
	$(INSTALL) -m 644 include/pmap_mpi.h $(DESTDIR)$(INCLUDEDIR)/pmap_mpi.h
	$(INSTALL) -m 644 $(MPI_LIB) $(DESTDIR)$(LIBDIR)/libpmap-mpi.a
	$(INSTALL) -m 755 $(B)/mpi/libpmap-mpi.so.$(VERSION) $(DESTDIR)$(LIBDIR)/
	ln -sf libpmap-mpi.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(MPI_SONAME)
	ln -sf $(MPI_SONAME) $(DESTDIR)$(LIBDIR)/libpmap-mpi.so
	$(SUBST) src/mpi/pmap-mpi.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/pmap-mpi.pc
	chmod 644 $(DESTDIR)$(PKGCONFIGDIR)/pmap-mpi.pc
else
mpi mpi-test bench-mpi install-mpi:
	@$(MPI_NOTE)
endif
