/* SPDX-License-Identifier: MIT */
/*
 * server.c - the fork server: a small process that pmap_init forks early,
 * while the program has no threads and a small heap, and that forks the
 * workers of pools created later (start method PMAP_START_SERVER).  Such a
 * worker is a copy of the program as it was at pmap_init: forking it costs
 * the same whatever the caller's heap is now, and no lock another thread of
 * the caller holds is held in it.
 *
 * The caller and the server talk over one socketpair, the control channel:
 *
 *   caller -> server  SPAWN: the worker's setup, with its channel end and
 *                     its shared memory passed as descriptors (SCM_RIGHTS)
 *   server -> caller  SPAWNED pid | FAILED code, in answer; and DIED pid
 *                     status whenever a worker it forked has ended
 *
 * The server is the workers' parent, so it reaps them and reports their
 * statuses, which the caller needs to say why an item's worker died.  The
 * caller keeps the reports it has not asked for yet.  The server dies with
 * the caller (PR_SET_PDEATHSIG on Linux, and end of file on the control
 * channel everywhere), and its workers with it.
 *
 * Function pointers (worker_init, worker_exit) travel as they are: the
 * server is a fork of the same program, at the same addresses.
 */
#include "pmap_internal.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#define MAGIC 0x50534d50u   /* "PMSP" */

enum { SPAWN = 1, SPAWNED, FAILED, DIED };

/* caller -> server */
typedef struct request {
    uint32_t magic;
    int32_t index;
    int64_t owner;
    uint64_t slots_size;
    uint64_t arena_size;
    int (*init)(int, void *);
    void (*exit)(int, void *);
    void *arg;
} request_t;

/* server -> caller */
typedef struct report {
    uint32_t magic;
    uint32_t type;
    int64_t pid;
    int32_t value;      /* FAILED: code; DIED: wait status */
    int32_t pad;
} report_t;

/* The caller's side: the control channel and the reports not claimed. */
static struct {
    pthread_mutex_t lock;
    int fd;             /* our end of the control channel, or -1 */
    pid_t owner;        /* the process that started the server */
    pid_t server;       /* the server */
    report_t *deaths;   /* DIED reports not claimed yet */
    size_t ndeaths, cap;
} ctl = {PTHREAD_MUTEX_INITIALIZER, -1, 0, 0, NULL, 0, 0};

/* Whether this process has a fork server (a forked child does not). */
bool pmap__server_running(void)
{
    return ctl.fd >= 0 && ctl.owner == getpid();
}

/* ---- the server -------------------------------------------------------- */

static int child_pipe[2] = {-1, -1};

static void on_child(int sig)
{
    (void)sig;
    int saved = errno;
    char c = 0;
    if (write(child_pipe[1], &c, 1) < 0) {
        /* Full: the server will reap everything at its next wake. */
    }
    errno = saved;
}

static void report(int fd, uint32_t type, pid_t pid, int value)
{
    report_t r = {MAGIC, type, (int64_t)pid, value, 0};
    if (pmap__send_all(fd, &r, sizeof r) < 0)
        _exit(0);   /* the caller is gone */
}

/* Receives a request and its descriptors; false at end of file. */
static bool receive(int fd, request_t *req, int fds[3], int *nfds)
{
    union {
        char buf[CMSG_SPACE(3 * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {req, sizeof *req};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    ssize_t n;
    do
        n = recvmsg(fd, &msg, MSG_WAITALL);
    while (n < 0 && errno == EINTR);
    if (n != sizeof *req || req->magic != MAGIC)
        return false;
    *nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            *nfds = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            if (*nfds > 3)
                *nfds = 3;
            memcpy(fds, CMSG_DATA(c), (size_t)*nfds * sizeof(int));
        }
    }
    return true;
}

/* In the new worker: its memory, then the worker's own life. */
static _Noreturn void become_worker(int control, const request_t *req,
                                    const int fds[3], int nfds)
{
    pmap__close(&child_pipe[0]);
    pmap__close(&child_pipe[1]);
    pmap__close(&control);
    signal(SIGCHLD, SIG_DFL);
    pmap__worker_setup_t s = {(pid_t)req->owner, getppid(), req->index,
                              fds[0], NULL, NULL, req->init, req->exit,
                              req->arg};
    unsigned char *slots = nfds > 1 ? pmap__shm_attach(fds[1],
                                                      req->slots_size)
                                    : NULL;
    if (slots == NULL)
        _exit(126);
    s.slot = (pmap__slot_t *)slots + req->index;
    if (nfds > 2)
        s.arena = pmap__shm_attach(fds[2], req->arena_size);
    for (int i = 1; i < nfds; i++) {
        int fd = fds[i];
        pmap__close(&fd);
    }
    pmap__worker_main(&s);
}

static void spawn(int control, const request_t *req, int fds[3], int nfds)
{
    pid_t pid = nfds >= 2 ? fork() : -1;
    if (pid == 0)
        become_worker(control, req, fds, nfds);
    int err = errno;
    for (int i = 0; i < nfds; i++)
        pmap__close(&fds[i]);
    if (pid < 0)
        report(control, FAILED, 0, nfds >= 2 ? -err : PMAP_EPROTO);
    else
        report(control, SPAWNED, pid, 0);
}

/* The server's loop: serve spawn requests, report deaths, leave with the
 * caller (killing what is left of its workers). */
static _Noreturn void serve(int control)
{
    for (;;) {
        struct pollfd p[2] = {{control, POLLIN, 0}, {child_pipe[0], POLLIN, 0}};
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            _exit(1);
        if (p[1].revents) {
            char sink[64];
            while (read(child_pipe[0], sink, sizeof sink) > 0)
                ;
        }
        int status;
        pid_t dead;
        /* The server forked every child it has: it may reap them all. */
        while ((dead = waitpid(-1, &status, WNOHANG)) > 0)
            report(control, DIED, dead, status);
        if (p[0].revents) {
            request_t req;
            int fds[3], nfds = 0;
            if (!receive(control, &req, fds, &nfds))
                _exit(0);   /* the caller is gone; our workers die with us */
            spawn(control, &req, fds, nfds);
        }
    }
}

static _Noreturn void server_main(int control, pid_t owner)
{
    pmap__in_worker = true;     /* no pools in here */
    struct sigaction sa = {0};
    sigemptyset(&sa.sa_mask);
    for (int sig = 1; sig <= SIGRTMAX; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP && sigaction(sig, NULL, &sa) == 0 &&
            ((sa.sa_flags & SA_SIGINFO) || sa.sa_handler != SIG_IGN)) {
            sa.sa_handler = SIG_DFL;
            sa.sa_flags = 0;
            sigaction(sig, &sa, NULL);
        }
    }
    sa.sa_handler = SIG_IGN;    /* Ctrl-C is the caller's to handle */
    sigaction(SIGINT, &sa, NULL);
    if (pipe(child_pipe) < 0 || pmap__set_nonblocking(child_pipe[0]) < 0 ||
        pmap__set_nonblocking(child_pipe[1]) < 0)
        _exit(1);
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
#ifdef __linux__
    prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
    if (getppid() != owner)
        _exit(0);
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
    serve(control);
}

int pmap_init(void)
{
    if (pmap__in_worker)
        return PMAP_ENESTED;
    pthread_mutex_lock(&ctl.lock);
    int rc = 0;
    if (ctl.fd < 0) {
        int fds[2];
        rc = pmap__channel(fds);
        if (rc == 0) {
            fflush(NULL);
            sigset_t all, old;
            sigfillset(&all);
            pthread_sigmask(SIG_SETMASK, &all, &old);
            pid_t owner = getpid(), pid = fork();
            ctl.owner = owner;
            if (pid == 0) {
                pmap__close(&fds[0]);
                server_main(fds[1], owner);
            }
            rc = pid < 0 ? -errno : 0;
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            pmap__close(&fds[1]);
            if (pid < 0) {
                pmap__close(&fds[0]);
            } else {
                ctl.fd = fds[0];
                ctl.server = pid;
            }
        }
    }
    pthread_mutex_unlock(&ctl.lock);
    return rc;
}

void pmap_exit(void)
{
    pthread_mutex_lock(&ctl.lock);
    if (pmap__server_running()) {
        /* End of file: the server leaves (shutdown, because a forked child
         * of ours may hold a copy of this descriptor). */
        shutdown(ctl.fd, SHUT_RDWR);
        pmap__close(&ctl.fd);
        int status;
        while (waitpid(ctl.server, &status, 0) < 0 && errno == EINTR)
            ;
    }
    free(ctl.deaths);
    ctl.deaths = NULL;
    ctl.ndeaths = ctl.cap = 0;
    pthread_mutex_unlock(&ctl.lock);
}

/* In a worker forked by the caller: the server's channel is not its own. */
void pmap__server_child_init(void)
{
    pmap__close(&ctl.fd);
    pthread_mutex_init(&ctl.lock, NULL);
}

/* ---- the caller's side ------------------------------------------------- */

/* Reads one report, keeping deaths; returns it in *r.  Locked. */
static int read_report(report_t *r, int64_t deadline)
{
    struct pollfd p = {ctl.fd, POLLIN, 0};
    int ready = pmap__poll(&p, 1, deadline);
    if (ready == 0)
        return PMAP_ETIMEDOUT;
    if (ready < 0)
        return ready;
    size_t got = 0;
    while (got < sizeof *r) {
        ssize_t n = pmap__read(ctl.fd, (char *)r + got, sizeof *r - got);
        if (n <= 0)
            return PMAP_ESTART;     /* the server is gone */
        got += (size_t)n;
    }
    if (r->magic != MAGIC)
        return PMAP_EPROTO;
    if (r->type == DIED) {
        if (ctl.ndeaths == ctl.cap) {
            size_t cap = ctl.cap ? ctl.cap * 2 : 16;
            report_t *d = realloc(ctl.deaths, cap * sizeof *d);
            if (d == NULL)
                return PMAP_ENOMEM;
            ctl.deaths = d;
            ctl.cap = cap;
        }
        ctl.deaths[ctl.ndeaths++] = *r;
    }
    return 0;
}

/*
 * Asks the server for a worker with this setup: channel is the worker's end
 * of its channel, slots_fd and arena_fd its shared memory (arena_fd may be
 * -1).  Stores its pid.  Returns 0 or a negative code.
 */
int pmap__server_spawn(const pmap__worker_setup_t *setup, int channel,
                       int slots_fd, size_t slots_size, int arena_fd,
                       pid_t *pid)
{
    request_t req = {MAGIC,       setup->index,     (int64_t)setup->owner,
                     slots_size,  PMAP__ARENA_SIZE, setup->init,
                     setup->exit, setup->arg};
    int fds[3] = {channel, slots_fd, arena_fd}, nfds = arena_fd >= 0 ? 3 : 2;
    union {
        char buf[CMSG_SPACE(3 * sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct iovec iov = {&req, sizeof req};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
    memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));

    pthread_mutex_lock(&ctl.lock);
    ssize_t n;
    do
        n = sendmsg(ctl.fd, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    int rc = n == sizeof req ? 0 : PMAP_ESTART;
    while (rc == 0) {
        report_t r;
        rc = read_report(&r, -1);
        if (rc == 0 && r.type == SPAWNED) {
            *pid = (pid_t)r.pid;
            break;
        }
        if (rc == 0 && r.type == FAILED)
            rc = r.value < 0 ? r.value : PMAP_ESTART;
    }
    pthread_mutex_unlock(&ctl.lock);
    return rc;
}

/*
 * Waits, until deadline, for the server's report that worker pid has died,
 * and stores its wait status.  Returns 0, PMAP_ETIMEDOUT, or PMAP_ELOST if
 * the server is gone.
 */
int pmap__server_reap(pid_t pid, int *status, int64_t deadline)
{
    pthread_mutex_lock(&ctl.lock);
    int rc = 0;
    for (;;) {
        size_t i;
        for (i = 0; i < ctl.ndeaths && ctl.deaths[i].pid != pid; i++)
            ;
        if (i < ctl.ndeaths) {
            *status = ctl.deaths[i].value;
            ctl.deaths[i] = ctl.deaths[--ctl.ndeaths];
            break;
        }
        report_t r;
        rc = read_report(&r, deadline);
        if (rc == PMAP_ETIMEDOUT)
            break;
        if (rc < 0) {
            rc = PMAP_ELOST;
            break;
        }
    }
    pthread_mutex_unlock(&ctl.lock);
    return rc;
}
