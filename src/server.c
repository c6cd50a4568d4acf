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
 *   caller -> server  SPAWN: the worker's setup, with its side of the
 *                     channel and its arena passed as descriptors
 *                     (SCM_RIGHTS: HANDED of them)
 *   server -> caller  SPAWNED pid | FAILED code, in answer, with the
 *                     request's number; and DIED pid status whenever a
 *                     worker it forked has ended
 *
 * Every wait on the server has a deadline: a stopped server makes
 * pool_create and the replacement of workers fail with PMAP_ESTART, never
 * hang.  An answer that comes after its request was given up is told apart
 * by its number and its worker killed.  A dead server makes them fail the
 * same way until pmap_init starts a new one.
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

#define MAGIC 0x50534d50u   /* "PMSP" */
#define HANDED 3    /* descriptors with a SPAWN: channel in and out, arena */

enum { SPAWN = 1, SPAWNED, FAILED, DIED };

/* caller -> server */
typedef struct request {
    uint32_t magic;
    int32_t index;
    int64_t owner;
    uint64_t number;    /* answered with the same number */
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
    uint64_t number;    /* SPAWNED, FAILED: the request's */
} report_t;

/* The caller's side: the control channel and the reports not claimed. */
/* Locked with pmap__local()->server_lock (shm.c), which no child inherits
 * held. */
static struct {
    int fd;             /* our end of the control channel, or -1 */
    pid_t owner;        /* the process that started the server */
    pid_t server;       /* the server */
    report_t *deaths;   /* DIED reports not claimed yet */
    size_t ndeaths, cap;
    uint64_t requests;  /* SPAWN requests sent */
    bool unanswered;    /* the last one was given up: the server is stuck */
    bool dead;          /* end of file on the control channel */
    pid_t stale[8];     /* workers of requests given up: their DIED
                           reports are nobody's */
    unsigned nstale;
} ctl = {-1, 0, 0, NULL, 0, 0, 0, false, false, {0}, 0};

static pthread_mutex_t *server_lock(void)
{
    return &pmap__local()->server_lock;
}

/* Whether this process has a fork server (a forked child does not). */
bool pmap__server_running(void)
{
    return ctl.fd >= 0 && ctl.owner == pmap__self();
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

static void report(int fd, uint32_t type, pid_t pid, int value,
                   uint64_t number)
{
    report_t r = {MAGIC, type, (int64_t)pid, value, 0, number};
    if (pmap__send_all(fd, &r, sizeof r) < 0)
        _exit(0);   /* the caller is gone */
}

/* Receives a request and its descriptors, each moved above 2 and made
 * close-on-exec (the caller's 0 to 2 may be closed, and so ours: a
 * received descriptor would take their numbers); false at end of file.
 * A descriptor that could not be moved is -errno, closed. */
static bool receive(int fd, request_t *req, int fds[HANDED], int *nfds)
{
    union {
        char buf[CMSG_SPACE(HANDED * sizeof(int))];
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
            if (*nfds > HANDED)
                *nfds = HANDED;
            memcpy(fds, CMSG_DATA(c), (size_t)*nfds * sizeof(int));
        }
    }
    for (int i = 0; i < *nfds; i++)
        fds[i] = pmap__fd_sanitize(fds[i], false);
    return true;
}

/* In the new worker, forked by the server `server`: its arena, then the
 * worker's own life.  The server's pid is the one it had before the fork:
 * asked here, getppid() would name init if the server had been killed
 * meanwhile, and the worker, taking init for its parent, would never die
 * with it. */
static _Noreturn void become_worker(int control, const request_t *req,
                                    const int fds[HANDED], pid_t server)
{
    pmap__close(&child_pipe[0]);
    pmap__close(&child_pipe[1]);
    pmap__close(&control);
    signal(SIGCHLD, SIG_DFL);
    sigset_t none;      /* the server has no other handler */
    sigemptyset(&none);
    pmap__worker_setup_t s = {(pid_t)req->owner, server, req->index,
                              {fds[0], fds[1], -1}, NULL,
                              req->init, req->exit, req->arg, &none};
    s.arena = pmap__shm_attach(fds[2], req->arena_size);
    int arena = fds[2];
    pmap__close(&arena);
    if (s.arena == NULL || req->arena_size != PMAP__ARENA_SIZE)
        _exit(126);
    pmap__worker_main(&s);
}

static void spawn(int control, const request_t *req, int fds[HANDED],
                  int nfds)
{
    int err = nfds == HANDED ? 0 : PMAP_EPROTO;
    for (int i = 0; i < nfds && err == 0; i++)
        err = fds[i] < 0 ? fds[i] : 0;  /* not moved above 2 (receive) */
    pid_t server = pmap__self();
    pid_t pid = err == 0 ? fork() : -1;
    if (pid == 0)
        become_worker(control, req, fds, server);
    if (pid < 0 && err == 0)
        err = -errno;   /* fork's */
    for (int i = 0; i < nfds; i++)
        pmap__close(&fds[i]);
    if (pid < 0)
        report(control, FAILED, 0, err, req->number);
    else
        report(control, SPAWNED, pid, 0, req->number);
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
            report(control, DIED, dead, status, 0);
        if (p[0].revents) {
            request_t req;
            int fds[HANDED], nfds = 0;
            if (!receive(control, &req, fds, &nfds))
                _exit(0);   /* the caller is gone; our workers die with us */
            spawn(control, &req, fds, nfds);
        }
    }
}

static _Noreturn void server_main(int control, pid_t owner)
{
    pmap__in_worker = true;     /* no pools in here */
    pmap__signals_reset(NULL);  /* no child yet: SIGCHLD may come unblocked */
    if (pmap__pipe_open(child_pipe) < 0)
        _exit(1);
    struct sigaction sa = {0};
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    if (!pmap__die_with_parent(owner, 0))
        _exit(0);
    serve(control);
}

/* Waits for our child pid until deadline, then kills it and waits. */
static void end_child(pid_t pid, int64_t deadline)
{
    int status, fd = pmap__pidfd_open(pid);
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid || (r < 0 && errno != EINTR))
            break;
        if (r == 0 && pmap__now_ns() >= deadline) {
            kill(pid, SIGKILL);
            pmap__reap(pid, &status);
            break;
        }
        struct pollfd p = {fd, POLLIN, 0};
        int64_t tick = pmap__now_ns() + PMAP__TICK_NS;
        pmap__poll(&p, fd >= 0, fd >= 0 && deadline < tick ? deadline : tick);
    }
    pmap__close(&fd);
}

/* Reaps our server if it has ended (ctl.server is then 0: a pid waited
 * for may be reused at once, and must never be waited for again).
 * Locked. */
static void reap_server(void)
{
    if (ctl.server > 0 && ctl.owner == pmap__self() &&
        waitpid(ctl.server, &(int){0}, WNOHANG) == ctl.server) {
        ctl.server = 0;
        ctl.dead = true;
    }
}

/* Forgets the server: stops it (end of file, then SIGKILL after a second)
 * if it is ours, or only drops our copy of its channel in a forked child
 * of its owner.  Locked. */
static void forget_server(void)
{
    if (ctl.fd >= 0 && ctl.owner == pmap__self()) {
        /* shutdown, because a forked child of ours may hold a copy of
         * this descriptor. */
        shutdown(ctl.fd, SHUT_RDWR);
        pmap__close(&ctl.fd);
        if (ctl.server > 0)
            end_child(ctl.server, pmap__now_ns() + 1000000000LL);
        pmap__heap_drop();      /* held since start_server */
    }
    ctl.server = 0;
    pmap__close(&ctl.fd);
    free(ctl.deaths);
    ctl.deaths = NULL;
    ctl.ndeaths = ctl.cap = 0;
    ctl.dead = ctl.unanswered = false;
}

static int start_server(void)
{
    int fds[2];
    int rc = pmap__socket_pair(fds, false);
    if (rc < 0)
        return rc;
    sigset_t old;
    pmap__fork_prepare(&old, true);
    pmap__forks_own();
    pid_t owner = pmap__self(), pid = fork();
    if (pid == 0) {
        pmap__close(&fds[0]);
        pmap__server_child_init();      /* its lock was held: usable again */
        /* no pool's memory or descriptor */
        pmap__pools_child_init(NULL, false);
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
        ctl.owner = owner;
    }
    return rc;
}

/*
 * Starts the server unless this process has one that is alive.  A server
 * that died is replaced (the pools that used it start workers again), and
 * a forked child of the server's owner gets a server of its own.
 */
int pmap_init(void)
{
    if (pmap__in_worker)
        return PMAP_ENESTED;
    pmap__pools_lock();     /* before the server's, as pmap__proc_spawn */
    pthread_mutex_lock(server_lock());
    reap_server();
    if (ctl.fd >= 0 && (ctl.owner != pmap__self() || ctl.dead))
        forget_server();
    pmap__crash_prepare();      /* inherited by the server and its workers */
    int rc = 0;
    if (ctl.fd < 0) {   /* pmap_alloc's heap first: its workers read it */
        pmap__heap_hold();
        if ((rc = start_server()) < 0)
            pmap__heap_drop();
    }
    pthread_mutex_unlock(server_lock());
    pmap__pools_unlock();
    return rc;
}

void pmap_exit(void)
{
    if (pmap__in_worker)
        return;     /* the server is the program's, not a worker's */
    pthread_mutex_lock(server_lock());
    if (ctl.fd >= 0)
        forget_server();
    pthread_mutex_unlock(server_lock());
}

/* In a worker forked by the caller: the server's channel is not its own. */
void pmap__server_child_init(void)
{
    pmap__close(&ctl.fd);
    if (!pmap__local_wiped())
        pthread_mutex_init(server_lock(), NULL);
}

/* ---- the caller's side ------------------------------------------------- */

/* Drops the DIED reports kept for pid: an old process's, since pid now
 * names a new worker.  Locked. */
static void forget_deaths(pid_t pid)
{
    for (size_t i = 0; i < ctl.ndeaths;) {
        if (ctl.deaths[i].pid == pid)
            ctl.deaths[i] = ctl.deaths[--ctl.ndeaths];
        else
            i++;
    }
}

static int keep_death(const report_t *r)
{
    for (unsigned i = 0; i < ctl.nstale && i < 8; i++) {
        if (ctl.stale[i] == (pid_t)r->pid) {
            ctl.stale[i] = 0;   /* a worker nobody waits for */
            return 0;
        }
    }
    if (ctl.ndeaths == ctl.cap) {
        report_t *d = pmap__grow(ctl.deaths, &ctl.cap, sizeof *d);
        if (d == NULL)
            return PMAP_ENOMEM;
        ctl.deaths = d;
    }
    ctl.deaths[ctl.ndeaths++] = *r;
    return 0;
}

/* Reads one report, keeping deaths and dropping the late answer to a
 * request given up (its worker, if any, is killed); returns it in *r.
 * Locked. */
static int read_report(report_t *r, int64_t deadline)
{
    if (ctl.dead || ctl.fd < 0)
        return PMAP_ESTART;
    struct pollfd p = {ctl.fd, POLLIN, 0};
    int ready = pmap__poll(&p, 1, deadline);
    if (ready == 0)
        return PMAP_ETIMEDOUT;
    if (ready < 0)
        return ready;
    size_t got = 0;
    while (got < sizeof *r) {
        ssize_t n = pmap__read(ctl.fd, (char *)r + got, sizeof *r - got);
        if (n <= 0) {
            ctl.dead = true;        /* the server is gone */
            reap_server();
            return PMAP_ESTART;
        }
        got += (size_t)n;
    }
    if (r->magic != MAGIC)
        return PMAP_EPROTO;
    if (r->type == DIED)
        return keep_death(r);
    if (ctl.unanswered && r->number == ctl.requests) {
        /* Its channel was closed when it was given up: the worker leaves
         * at end of file, and its DIED report is dropped. */
        ctl.unanswered = false;
        if (r->type == SPAWNED)
            ctl.stale[ctl.nstale++ % 8] = (pid_t)r->pid;
        r->type = 0;    /* nothing the caller waits for */
    }
    return 0;
}

/*
 * Asks the server for a worker with this setup: channel is the worker's side
 * of its channel, arena_fd its arena.  Stores its pid.  Returns 0, or a
 * negative code: PMAP_ESTART if the server is gone, or has not answered by
 * deadline (or has not answered an earlier request).
 */
int pmap__server_spawn(const pmap__worker_setup_t *setup,
                       const pmap__channel_t *channel,
                       int arena_fd, int64_t deadline, pid_t *pid)
{
    request_t req = {MAGIC,       setup->index, (int64_t)setup->owner,
                     0,           PMAP__ARENA_SIZE, setup->init,
                     setup->exit, setup->arg};
    int fds[HANDED] = {channel->in, channel->out, arena_fd};
    union {
        char buf[CMSG_SPACE(HANDED * sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct iovec iov = {&req, sizeof req};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);

    pthread_mutex_lock(server_lock());
    report_t r;
    int rc = ctl.fd >= 0 ? 0 : PMAP_ESTART;
    /* The last request was given up: its answer may be on its way (the
     * server was stopped and continued), or the server is still stuck:
     * wait for it briefly only, so that refilling every slot of a pool
     * does not take one deadline each. */
    int64_t brief = pmap__now_ns() + PMAP__REPORT_NS;
    while (rc == 0 && ctl.unanswered)
        rc = read_report(&r, deadline < brief ? deadline : brief);
    if (rc == 0) {
        req.number = ++ctl.requests;
        ssize_t n;
        do
            n = sendmsg(ctl.fd, &msg, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        rc = n == sizeof req ? 0 : PMAP_ESTART;
    }
    while (rc == 0) {
        rc = read_report(&r, deadline);
        if (rc == PMAP_ETIMEDOUT)
            ctl.unanswered = true;
        if (rc < 0 || (r.type != SPAWNED && r.type != FAILED) ||
            r.number != ctl.requests)
            continue;
        if (r.type == SPAWNED) {
            *pid = (pid_t)r.pid;
            forget_deaths(*pid);
        }
        else
            rc = r.value < 0 ? r.value : PMAP_ESTART;
        break;
    }
    pthread_mutex_unlock(server_lock());
    return rc < 0 && rc != PMAP_ENOMEM ? PMAP_ESTART : rc;
}

/*
 * Waits, until deadline, for the server's report that worker pid has died,
 * and stores its wait status.  Returns 0, PMAP_ETIMEDOUT, or PMAP_ELOST if
 * the server is gone.
 */
int pmap__server_reap(pid_t pid, int *status, int64_t deadline)
{
    pthread_mutex_lock(server_lock());
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
    pthread_mutex_unlock(server_lock());
    return rc;
}
