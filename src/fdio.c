/* SPDX-License-Identifier: MIT */
/*
 * fdio.c - the wrappers through which libpmap creates channels, reads,
 * writes, polls and waits, so that the rules hold everywhere:
 *
 *  - EINTR is retried (the caller may run a signal-driven timer without
 *    SA_RESTART); poll recomputes its timeout from CLOCK_MONOTONIC.  close
 *    is never retried: the descriptor may already be reused.
 *  - Descriptors are close-on-exec and never 0, 1 or 2, so that a stray
 *    printf in a callback, with stdout closed, cannot write into a channel.
 *  - Writes use MSG_NOSIGNAL: writing to a dead worker returns EPIPE instead
 *    of raising SIGPIPE in the caller, whose signal handling we never touch.
 *  - waitpid names one pid: we reap only the children we forked.
 *  - A process is watched through its pidfd where there is one.
 *
 * A worker's channel is a pipe each way rather than a Unix socketpair: a
 * round trip through pipes costs about two thirds of one through a socket
 * here (make bench, "Machine limits"), and a call to a worker is little
 * more than that round trip.  Pipes have no MSG_NOSIGNAL, so the caller's
 * side keeps the read end of the pipe it writes to (pmap__channel_open).
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE     /* SOCK_CLOEXEC */
#endif

#include "pmap_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#ifdef __linux__
#include <sys/eventfd.h>
#include <sys/prctl.h>
#endif
#ifdef __linux__
#include <sys/syscall.h>
#endif
#include <time.h>
#include <unistd.h>

/* Moves fd, just made, to 3 or above, close-on-exec (already so if
 * cloexec): the new number, or -errno with fd closed.  Given a failed
 * call's -1, returns -errno. */
int pmap__fd_sanitize(int fd, bool cloexec)
{
    if (fd < 0)
        return -errno;
    if (fd > STDERR_FILENO) {
        if (!cloexec && fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
            int err = errno;
            close(fd);
            return -err;
        }
        return fd;
    }
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
    int err = errno;
    close(fd);
    return moved < 0 ? -err : moved;
}

/* Sanitizes both of fds (pmap__fd_sanitize): 0, or -errno with both
 * closed. */
static int pair_sanitize(int fds[2], bool cloexec)
{
    for (int i = 0; i < 2; i++) {
        int fd = pmap__fd_sanitize(fds[i], cloexec);
        if (fd < 0) {
            close(fds[1 - i]);
            return fd;
        }
        fds[i] = fd;
    }
    return 0;
}

/* Makes a descriptor just made non-blocking: it has no file status flag
 * to keep yet (F_SETFL ignores the access mode), so one call does. */
static int fresh_nonblocking(int fd)
{
    return fcntl(fd, F_SETFL, O_NONBLOCK) < 0 ? -errno : 0;
}

/*
 * Creates a connected pair of stream sockets, both close-on-exec and above
 * stderr, and non-blocking if asked (the fork server's control channel, a
 * pool's wake pipe).  Returns 0 or a negative code.
 */
int pmap__socket_pair(int fds[2], bool nonblocking)
{
    int type = SOCK_STREAM;
#ifdef SOCK_CLOEXEC
    type |= SOCK_CLOEXEC;
#endif
    bool cloexec = type != SOCK_STREAM;
#ifdef SOCK_NONBLOCK
    if (nonblocking)
        type |= SOCK_NONBLOCK;
    nonblocking = false;    /* done, where asked */
#endif
    if (socketpair(AF_UNIX, type, 0, fds) < 0)
        return -errno;
    int rc = pair_sanitize(fds, cloexec);
    if (rc == 0 && nonblocking &&
        ((rc = fresh_nonblocking(fds[0])) < 0 ||
         (rc = fresh_nonblocking(fds[1])) < 0)) {
        close(fds[0]);
        close(fds[1]);
    }
    return rc;
}

/*
 * A pool's wake: pmap__wake_send makes wake[0] readable until
 * pmap__wake_drain.  An eventfd where there is one (wake[1] is then -1):
 * one descriptor, made in every pool_create in a third of a socketpair's
 * time here (2.8 us against 8.7).  Else a non-blocking socketpair, sent to
 * with MSG_NOSIGNAL.  Returns 0, or a negative code with both -1.
 */
int pmap__wake_open(int wake[2])
{
    wake[0] = wake[1] = -1;
#if defined(__linux__) && defined(EFD_CLOEXEC)
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd >= 0) {
        fd = pmap__fd_sanitize(fd, true);
        wake[0] = fd < 0 ? -1 : fd;
        return fd < 0 ? fd : 0;
    }
#endif
    int rc = pmap__socket_pair(wake, true);
    if (rc < 0)
        wake[0] = wake[1] = -1;
    return rc;
}

/* Async-signal-safe.  A failure is a full wake: awake already. */
void pmap__wake_send(const int wake[2])
{
    int saved = errno;
    char c = 0;
    uint64_t one = 1;
    ssize_t rc = wake[1] >= 0   ? send(wake[1], &c, 1, MSG_NOSIGNAL)
                 : wake[0] >= 0 ? write(wake[0], &one, sizeof one)
                                : 0;
    (void)rc;
    errno = saved;
}

void pmap__wake_drain(const int wake[2])
{
    uint64_t sink[8];
    while (wake[0] >= 0 && pmap__read(wake[0], sink, sizeof sink) > 0)
        ;
}

/* A pipe, both ends close-on-exec and above stderr. */
static int make_pipe(int fds[2])
{
#ifdef __linux__
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    return pair_sanitize(fds, true);
#else
    if (pipe(fds) < 0)
        return -errno;
    return pair_sanitize(fds, false);
#endif
}

/* A non-blocking pipe, both ends close-on-exec and above stderr (a
 * process whose descriptors 0-2 are closed would get them, and lose them
 * to the first dup2 onto its standard output).  0 or a negative code. */
int pmap__pipe_open(int fds[2])
{
    int rc = make_pipe(fds);
    if (rc < 0)
        return rc;      /* nothing was made */
    if ((rc = fresh_nonblocking(fds[0])) < 0 ||
        (rc = fresh_nonblocking(fds[1])) < 0) {
        close(fds[0]);
        close(fds[1]);
    }
    return rc;
}

/*
 * Creates a worker's channel: a pipe each way.  ours is the caller's side,
 * theirs the worker's, to be handed to it.  ours->keep is theirs->in, the
 * read end of the pipe we write to, which we keep open and never read: a
 * pipe with a reader never raises SIGPIPE (the caller's signals are not
 * ours to touch), so a write to a worker that died fills the pipe and then
 * says EAGAIN, and the death is seen where it always is, by its pidfd or
 * its wait status.  Returns 0 or a negative code.
 */
int pmap__channel_open(pmap__channel_t *ours, pmap__channel_t *theirs)
{
    int down[2], up[2];
    int rc = make_pipe(down);
    if (rc < 0)
        return rc;
    rc = make_pipe(up);
    if (rc < 0) {
        close(down[0]);
        close(down[1]);
        return rc;
    }
    /* Our side never blocks (loop.c); the worker's does.  Each side grows
     * the pipe it writes to when it first needs to (pmap__pipe_fit). */
    if ((rc = fresh_nonblocking(up[0])) < 0 ||
        (rc = fresh_nonblocking(down[1])) < 0) {
        int fds[4] = {down[0], down[1], up[0], up[1]};
        for (int i = 0; i < 4; i++)
            close(fds[i]);
        return rc;
    }
    *ours = (pmap__channel_t){up[0], down[1], down[0]};
    *theirs = (pmap__channel_t){down[0], up[1], -1};
    return 0;
}

/*
 * Before a write of iov[0, n) to the pipe fd: the first time it is more
 * than a new pipe holds (64 KiB), grows it to PMAP__PIPE_BUFFER, room
 * for a large batch in flight (a pipe's 64 KiB halved the rate of tiny
 * items), and sets *grown.  When first needed rather than when the channel
 * is made: that was two fcntl calls a worker in every pool_create, and
 * pipe quota (the user's pipe-user-pages-soft) spent on pools that never
 * send that much.  The system may cap or refuse it, which is fine.
 */
void pmap__pipe_fit(int fd, const struct iovec *iov, int n, bool *grown)
{
    size_t pending = 0;     /* counted only until it is grown: every
                               write of a map comes here */
    for (int i = 0; !*grown && i < n && pending <= PMAP__PIPE_NEW; i++)
        pending += iov[i].iov_len;
    if (*grown || pending <= PMAP__PIPE_NEW)
        return;
    *grown = true;
#ifdef F_SETPIPE_SZ
    fcntl(fd, F_SETPIPE_SZ, PMAP__PIPE_BUFFER);
#else
    (void)fd;
#endif
}

/* Closes what c holds of a channel (keep, when it is ours, too). */
void pmap__channel_close(pmap__channel_t *c)
{
    pmap__close(&c->in);
    pmap__close(&c->out);
    pmap__close(&c->keep);
}

int pmap__set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -errno;
    return 0;
}

/* Closes *fd if open and marks it closed, errno unchanged.  EINTR still
 * closed it (POSIX leaves it unspecified, Linux always closes), so it is
 * not retried.  errno is written back only where the close changed it:
 * its page is one more copy-on-write fault while a child shares it. */
void pmap__close(int *fd)
{
    if (*fd >= 0) {
        int saved = errno;
        if (close(*fd) != 0 || errno != saved)
            errno = saved;
        *fd = -1;
    }
}

/* Closes descriptors lo to hi, which are all open. */
static void close_run(int lo, int hi)
{
#if defined(__linux__) && defined(SYS_close_range)
    if (lo < hi && syscall(SYS_close_range, (unsigned)lo, (unsigned)hi, 0) == 0)
        return;
#endif
    for (int fd = lo; fd <= hi; fd++)
        close(fd);
}

/* Adds fd (or nothing, if negative) to the run being gathered, closing
 * that run first when fd does not extend it: every number in a run was
 * added, so no other descriptor is ever closed. */
void pmap__fd_runs_add(pmap__fd_runs_t *r, int fd)
{
    if (fd < 0 || (r->lo >= 0 && fd >= r->lo && fd <= r->hi))
        return;
    if (r->lo >= 0 && fd == r->hi + 1) {
        r->hi = fd;
    } else if (r->lo >= 0 && fd == r->lo - 1) {
        r->lo = fd;
    } else {
        pmap__fd_runs_flush(r);
        r->lo = r->hi = fd;
    }
}

/* Closes the run gathered.  errno is left as the closes leave it: a new
 * child is the only user, and reading errno would cost it one more page
 * of libc's code to fault in. */
void pmap__fd_runs_flush(pmap__fd_runs_t *r)
{
    if (r->lo >= 0)
        close_run(r->lo, r->hi);
    r->lo = r->hi = -1;
}

/* Reads at most n bytes: their count, 0 at end of file, or -errno. */
ssize_t pmap__read(int fd, void *data, size_t n)
{
    ssize_t r;
    do
        r = read(fd, data, n);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

/* Writes what fits now of iov to a pipe: the count written, or -errno
 * (-EAGAIN). */
ssize_t pmap__writev(int fd, const struct iovec *iov, int iovcnt)
{
    ssize_t r;
    do
        r = writev(fd, iov, iovcnt);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

/* Writes all n bytes to a blocking socket: 0 or -errno. */
int pmap__send_all(int fd, const void *data, size_t n)
{
    const unsigned char *p = data;
    while (n > 0) {
        ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Writes all of data to a descriptor of the caller's (a job log), which
 * may be a file or a pipe: 0 or a negative errno. */
int pmap__write_all(int fd, const void *data, size_t n)
{
    const unsigned char *p = data;
    while (n > 0) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r < 0 ? -errno : PMAP_ESYSTEM;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

int64_t pmap__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/*
 * poll until deadline_ns (CLOCK_MONOTONIC; negative: no deadline).  Returns
 * the number of ready descriptors, 0 at the deadline, or -errno.
 */
int pmap__poll(struct pollfd *fds, size_t nfds, int64_t deadline_ns)
{
    for (;;) {
        int timeout = -1;
        if (deadline_ns >= 0) {
            int64_t left = deadline_ns - pmap__now_ns();
            if (left < 0)
                left = 0;
            /* Round up, so that we never wake just before the deadline. */
            int64_t ms = (left + 999999) / 1000000;
            timeout = ms > INT_MAX ? INT_MAX : (int)ms;
        }
        int r = poll(fds, (nfds_t)nfds, timeout);
        if (r >= 0)
            return r;
        if (errno != EINTR)
            return -errno;
    }
}

/*
 * Waits for our child pid and stores its wait status.  Returns 0, or
 * PMAP_ELOST when the status is gone: the caller's SIGCHLD handler reaped
 * it first, or SIGCHLD is ignored (then the kernel reaps children itself).
 */
int pmap__reap(pid_t pid, int *status)
{
    for (;;) {
        if (waitpid(pid, status, 0) == pid)
            return 0;
        if (errno != EINTR)
            return PMAP_ELOST;
    }
}

/*
 * A descriptor that becomes readable when process pid has ended (Linux's
 * pidfd, close-on-exec), so that the loop learns of a death from the
 * process itself and not only from its channel, which a process the worker
 * forked may still hold open.  Returns it, -ESRCH if pid is gone already,
 * or another negative code where there are no pidfds (then the caller looks
 * with waitpid(WNOHANG) from time to time; PMAP_NO_PIDFD builds that way
 * on Linux too, for make check-tick).
 */
int pmap__pidfd_open(pid_t pid)
{
#if defined(__linux__) && defined(SYS_pidfd_open) && !defined(PMAP_NO_PIDFD)
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    return pmap__fd_sanitize(fd, true);    /* always close-on-exec */
#else
    (void)pid;
    return -ENOSYS;
#endif
}

/*
 * Kills process pid with SIGKILL, through its pidfd when there is one: a
 * process another process reaps (the fork server's workers) may be gone
 * and its pid reused by then, but a pidfd names that process only.
 */
void pmap__kill(pid_t pid, int pidfd)
{
#if defined(__linux__) && defined(SYS_pidfd_send_signal) && \
    !defined(PMAP_NO_PIDFD)
    if (pidfd >= 0 &&
        syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0) == 0)
        return;
    if (pidfd >= 0 && errno == ESRCH)
        return;     /* it has ended */
#else
    (void)pidfd;
#endif
    kill(pid, SIGKILL);
}

/* Most iovecs one sendmsg may take here, up to PMAP__IOV (POSIX
 * guarantees 16).  Asked for every frame sent: from <limits.h> where it
 * says, rather than by sysconf each time. */
int pmap__iov_max(void)
{
#if defined(IOV_MAX) && IOV_MAX >= PMAP__IOV
    return PMAP__IOV;
#else
    long v = sysconf(_SC_IOV_MAX);
    return v >= PMAP__IOV ? PMAP__IOV : v >= 16 ? (int)v : 16;
#endif
}

/* ---- a child's parent ---------------------------------------------------- */

static pid_t watched_parent;
static int orphan_status;

#ifdef __linux__
/* Linux sends the parent-death signal when the *thread* that forked us
 * ends: the process may live on in its other threads, one of which is our
 * parent now (the signal comes again when that one ends). */
static void on_parent_death(int sig)
{
    (void)sig;
    if (getppid() != watched_parent)
        _exit(orphan_status);
}
#endif

/*
 * In a child just forked (a worker, the fork server): makes it end with
 * `status` when its parent process ends, even while busy in a callback, so
 * that none is left behind; where the system cannot say, it ends at the end
 * of file on its channel.  Returns false if the parent has ended already.
 */
bool pmap__die_with_parent(pid_t parent, int status)
{
    watched_parent = parent;
    orphan_status = status;
#ifdef __linux__
    struct sigaction sa = {0};
    sa.sa_handler = on_parent_death;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(PMAP__PARENT_DEATH_SIGNAL, &sa, NULL);
    prctl(PR_SET_PDEATHSIG, PMAP__PARENT_DEATH_SIGNAL);
#endif
    return getppid() == parent;
}

/*
 * Before a fork (a worker, the fork server): flushes stdio, so that the
 * child does not write the caller's buffered output again, and blocks every
 * signal but the synchronous faults, so that none of the caller's handlers
 * runs in the child before it resets them; *old is the mask to restore in
 * the parent after the fork.  With faults too when `all`: the server's
 * child has no handler of its own to begin with.
 */
void pmap__fork_prepare(sigset_t *old, bool all)
{
    static const int faults[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE,
                                 SIGABRT, SIGTRAP, SIGSYS};
    fflush(NULL);
    sigset_t mask;
    sigfillset(&mask);
    for (size_t i = 0; !all && i < sizeof faults / sizeof faults[0]; i++)
        sigdelset(&mask, faults[i]);
    pthread_sigmask(SIG_SETMASK, &mask, old);
}
