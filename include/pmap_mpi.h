/* SPDX-License-Identifier: MIT */
/*
 * pmap_mpi.h - libpmap across machines: the same pool_map program started
 * by mpirun (or srun) on K ranks, whose pools run their callbacks on the
 * other ranks' own forked workers (README, "Across machines").
 *
 *     int main(int argc, char **argv)
 *     {
 *         if (pmap_mpi_init(&argc, &argv) < 0)    // ranks > 0 never return
 *             return 1;
 *         pool_t *pool;
 *         pool_options_t o = {.start = PMAP_START_MPI};
 *         pool_create_with(&pool, &o);            // or PMAP_START=mpi
 *         ... every pool_map form, unchanged ...
 *         pool_destroy(pool);
 *         return 0;                               // the other ranks leave
 *     }
 *
 * Worker hooks travel: a pool's worker_init and worker_exit run in every
 * worker, remote or not, with pmap_worker_index() its index in the pool.
 * The ranks run the same program but not at the same addresses (PIE,
 * ASLR), so each hook is sent as its place, the loaded object holding it
 * (the program or a shared library, found with dl_iterate_phdr), its
 * offset there and the object's GNU build-id, and looked up on the other
 * rank.  worker_arg is a pointer to rank 0's memory: rank 0's own workers
 * (pmap_mpi_options_t.workers) get it as it is; other ranks get it only
 * if it points into read-only data of the program or a shared library (a
 * string literal, a const object: the same bytes there), translated the
 * same way, else pool_create_with refuses the pool.  What cannot travel:
 *  - a hook not in any loaded object's code (made at run time), or a
 *    worker_arg pointing elsewhere (the stack, the heap, writable
 *    globals): pool_create_with returns PMAP_EINVAL, and pmap_mpi_message
 *    says which and why;
 *  - an object that another rank has not loaded, or has in another build
 *    (its build-id differs): pool_create_with returns PMAP_EPROTO,
 *    pmap_mpi_message naming the rank, its host and the object.
 * A worker_init returning nonzero on any rank fails pool_create_with with
 * PMAP_ESTART, as locally.
 *
 * A lost rank is not survived.  Measured with Open MPI 4.1.4: a serving
 * rank killed (SIGKILL) during a map makes mpirun end the whole job at
 * once (rank 0 included, within about a second here), print "mpirun
 * noticed that process rank N with PID ... exited on signal 9 (Killed)"
 * and exit with status 137; the same with MPI_ERRORS_RETURN set on
 * MPI_COMM_WORLD before pmap_mpi_init (the library's communicator is a
 * duplicate and inherits it): the runtime aborts the job before any MPI
 * call sees an error.  With mpirun --enable-recovery the job is not
 * aborted but the map waits forever for the lost rank's items: do not
 * use it with this library.  tests/mpi/lost_rank.sh checks the abort.
 *
 * Built only where an MPI compiler wrapper is found (make mpi); linked as
 * libpmap-mpi (pkg-config pmap-mpi), which contains libpmap itself: link
 * it instead of libpmap, not beside it.
 */
#ifndef PMAP_MPI_H
#define PMAP_MPI_H

#include "pmap.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * First thing in main, before threads, pools or MPI calls of the program's
 * own.  Calls MPI_Init_thread asking for MPI_THREAD_MULTIPLE and requires
 * at least MPI_THREAD_SERIALIZED on rank 0 (a thread of the library there
 * is the only one that calls MPI between this call and pmap_mpi_exit; the
 * program may call MPI itself only if pmap_mpi_thread_level() is
 * MPI_THREAD_MULTIPLE, on a communicator of its own).
 *
 * On every rank but 0 it never returns: the rank serves the pools of rank
 * 0 with workers of its own (as many as its CPUs, as pool_create(0), or
 * its environment's PMAP_WORKERS), and when rank 0 calls pmap_mpi_exit (or
 * exits: it is registered with atexit) it stops them, calls MPI_Finalize
 * and exits with status 0.
 *
 * On rank 0 it checks that every rank runs the same build of the program
 * (the functions PMAP_EXPORT'ed and their types, libpmap's version, byte
 * order and pointer size) and returns 0; PMAP_EPROTO if a rank differs,
 * PMAP_ENOSYS if the MPI library lacks the thread level, PMAP_ESTART if
 * MPI cannot start (pmap_mpi_message says which, and why).  Then pools
 * with the start method PMAP_START_MPI cannot be made, and the other ranks
 * wait for pmap_mpi_exit.  Calling it again returns the first outcome.
 */
PMAP_API int pmap_mpi_init(int *argc, char ***argv);

/* Options of pmap_mpi_init_with (rank 0's; other ranks ignore theirs); a
 * zeroed struct means every default. */
typedef struct pmap_mpi_options {
    /* Workers rank 0 runs itself in every pool over MPI, beside the other
     * ranks': 0 (the default) none, rank 0 only drives; n > 0: n;
     * PMAP_MPI_NODE: as many as a serving rank runs (its environment's
     * PMAP_WORKERS, or its CPUs).  They are forked from rank 0 as a
     * PMAP_START_FORK pool's are, and share memory with it; in the slots of
     * a pool they come first in each round (a pool with workers = 1 runs
     * on rank 0).  PMAP_EINVAL if out of range. */
    int workers;
} pmap_mpi_options_t;

#define PMAP_MPI_NODE (-1)

/* pmap_mpi_init with options (NULL: the defaults, as pmap_mpi_init). */
PMAP_API int pmap_mpi_init_with(int *argc, char ***argv,
                                const pmap_mpi_options_t *options);

/*
 * Stops serving: destroy the pools over MPI first.  Tells the other ranks
 * to leave and calls MPI_Finalize (the program must not call it itself).
 * Called by atexit if the program does not; later calls do nothing.
 * Returns 0.
 */
PMAP_API int pmap_mpi_exit(void);

/* This process's rank and the number of ranks (after pmap_mpi_init). */
PMAP_API int pmap_mpi_rank(void);
PMAP_API int pmap_mpi_size(void);

/* Workers serving PMAP_START_MPI pools, the other ranks' and rank 0's own
 * (pmap_mpi_options_t.workers): such a pool's size. */
PMAP_API int pmap_mpi_workers(void);

/* The thread level MPI_Init_thread provided. */
PMAP_API int pmap_mpi_thread_level(void);

/* Why pmap_mpi_init failed, or "" (never NULL). */
PMAP_API const char *pmap_mpi_message(void);

#ifdef __cplusplus
}
#endif

#endif /* PMAP_MPI_H */
