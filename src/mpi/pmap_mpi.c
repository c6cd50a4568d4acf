/* SPDX-License-Identifier: MIT */
/*
 * pmap_mpi.c - libpmap-mpi: the process layer of PMAP_START_MPI (the
 * pmap__remote_t hooks of proc.c) and the relays that carry channels over
 * MPI.  Built only by `make mpi`, with the MPI compiler wrapper.
 *
 * Hierarchical: every rank but 0 forks workers of its own, as many as its
 * CPUs, and rank 0's pool has one slot per remote worker.  The engine is
 * unchanged: each slot has a socketpair channel and an arena in rank 0 as
 * usual, but the other end of the channel is held by the relay, a thread
 * of rank 0 and the only one calling MPI there, which forwards the bytes
 * to the rank running the worker; there the rank's own relay (its main
 * thread) writes them to its local worker's channel, and back.  Frames are
 * not parsed: a channel is a byte stream, and MPI keeps the order of
 * messages between two ranks.
 *
 * Deaths: only the remote rank may waitpid its worker.  It reports the
 * wait status, with the item the worker was running (from the worker's
 * slot there), in a DEATH message; rank 0's relay writes that item into
 * the slot's arena here, then makes the slot's stand-in pidfd (an
 * eventfd) readable, and the loop buries the worker as a local one:
 * PMAP_ECRASH with the signal, PMAP_EEXIT with the status.
 *
 * Timeouts: a worker of a timed map stamps each item's start in its slot
 * there; the remote relay sends the changes (SLOT: item, map, age), which
 * rank 0's relay writes into the slot here, so the loop enforces timeouts
 * as for a local worker, and kills through the KILL message.
 *
 * Nothing spins.  MPI has no descriptor to wait on, and a blocking
 * MPI_Recv busy-polls in Open MPI; so each relay waits in ppoll on its
 * channels (which wakes it at once for everything local) with a timeout
 * of SLEEP_MIN_NS for HOT_NS after any activity (an answer is likely
 * soon), then doubling up to SLEEP_MAX_NS (SLEEP_SEND_NS while a send is
 * in flight, for MPI's progress), and between two waits probes MPI
 * without blocking.  The relay's thread has a timer slack of 1 us, or its
 * short sleeps would last 50 us more.
 */
#define _GNU_SOURCE     /* ppoll */
#include "pmap_internal.h"
#include "pmap_mpi.h"

#include <mpi.h>

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TAG 0x504d              /* every message, on our own communicator */
#define SLEEP_MIN_NS 20000LL
#define HOT_NS 2000000LL        /* after activity, SLEEP_MIN_NS this long */
#define PROBES 8                /* MPI_Improbe calls a round, at most */
#define SLEEP_SEND_NS 50000LL
#define SLEEP_MAX_NS 2000000LL
#define READ_CHUNK (1u << 20)   /* bytes forwarded per message at most */
#define REPORT_NS 100000000LL   /* a worker's end, once its channel closed */
#define KILLED_NS 5000000000LL  /* ...and once it was killed */

enum kind {
    M_HELLO = 1,    /* 0 -> r: build identifier */
    M_WELCOME,      /* r -> 0: its own, its workers, its pid; host name */
    M_EXIT,         /* 0 -> r: leave */
    M_SPAWN,        /* 0 -> r: start a worker for channel (a: its index in
                       the pool; data: its hooks, hooks_t) */
    M_SPAWNED,      /* r -> 0: a: its pid, or a negative code (data: why) */
    M_DATA,         /* both: channel bytes */
    M_EOF,          /* both: the channel's writer closed it */
    M_KILL,         /* 0 -> r: SIGKILL the worker */
    M_DEATH,        /* r -> 0: a: wait status, b: item, c: map */
    M_SLOT          /* r -> 0: a: item, b: map, c: age of its start, ns */
};

typedef struct head {
    uint32_t kind;
    uint32_t chan;
    int64_t a, b, c, d;
} head_t;

/* An address of code or read-only data as every rank can name it: the
 * object holding it (the program, or a shared library), its offset from
 * that object's load address, and the object's GNU build-id. */
typedef struct place {
    uint64_t offset;
    uint32_t set;               /* 0: the address is NULL */
    uint32_t id_len;            /* the build-id's length; 0: none */
    unsigned char id[32];
    char object[256];           /* "": the program; else its file's name */
} place_t;

/* A pool's worker hooks on their way to another rank. */
typedef struct hooks {
    place_t init, exit, arg;
} hooks_t;

/* One worker's channel, as a relay sees it. */
typedef struct chan {
    uint32_t id;
    int rank;                   /* the other side */
    int index;                  /* rank 0: the pool's slot; r: local */
    pmap__channel_t ch;         /* our side of the channel, non-blocking */
    unsigned char *arena;       /* rank 0: the slot's, mirrored; r: the
                                   worker's own; NULL: detached */
    pid_t pid;                  /* the worker's, where it runs */
    int pidfd;                  /* r: the worker's; 0: an eventfd */
    int loopfd;                 /* 0: the loop's copy of pidfd, the key */
    pmap__buf_t out;            /* bytes for ch.out not yet written */
    size_t out_at;
    bool out_grown;             /* ch.out's pipe (pmap__pipe_fit) */
    bool in_eof;                /* ch.in said EOF: not read any more */
    bool shut;                  /* close ch.out once out is written */
    bool death;                 /* 0: DEATH came; signal once out is written */
    /* Rank 0, with the hooks (under relay.lock). */
    enum { SPAWNING, ALIVE, FAILED } state;
    int spawn_rc;
    hooks_t hooks;              /* sent with SPAWN */
    bool spawn_asked, kill_asked;
    bool dead;                  /* its status is known */
    int status;
    bool handed;                /* loopfd belongs to the loop */
    bool forgotten;             /* reaped: freed when dead */
    /* Rank r: what was last said of its slot. */
    int64_t seen_started;
    struct chan *next;
} chan_t;

static struct {
    MPI_Comm comm;
    int rank, size, level;
    int init_rc;
    bool initialized, finalized;
    pid_t owner;                /* rank 0's process (not its workers) */
    char message[1024];
    /* rank 0 */
    int nslots;
    int *slot_rank;             /* the rank serving each slot (0: here) */
    int here;                   /* workers rank 0 serves itself */
    struct here *heres;         /* ...those running (under lock) */
    pthread_t thread;
    bool running, stop;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int wake;                   /* eventfd: the hooks wake the relay */
    uint32_t next_id;
    /* both */
    chan_t *chans;
    MPI_Request *reqs;
    void **bufs;
    int nsend, sendcap;
    struct pollfd *pfd;
    chan_t **pchan;
    size_t pcap;
    bool refused;               /* rank r: not the same program */
    bool exiting;
} relay = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = -1};

/* ---- identity ------------------------------------------------------------ */

typedef struct build {
    uint64_t registry;
    uint64_t version;
    uint64_t abi;               /* pointer size, byte order */
} build_t;

static build_t build_id(void)
{
    uint32_t one = 1;
    unsigned char little;
    memcpy(&little, &one, 1);
    build_t b = {pmap__registry_hash(),
                 (uint64_t)PMAP_VERSION_MAJOR << 32 |
                     (uint64_t)PMAP_VERSION_MINOR << 16 | PMAP_VERSION_PATCH,
                 (uint64_t)sizeof(void *) << 8 | little};
    return b;
}

/* ---- worker hooks across ranks ----------------------------------------------
 *
 * The ranks run the same program, but not at the same addresses (PIE,
 * ASLR): a hook travels as its place (object, offset, build-id), found
 * among the loaded objects with dl_iterate_phdr, and is looked up there
 * in the same way.  Code must be in an executable segment; worker_arg in
 * a read-only one (a string literal, a const object), whose bytes are
 * then the same on every rank. */

enum want { CODE, CONST_DATA };

typedef struct look {
    uintptr_t addr;             /* locate: the address; resolve: found */
    enum want want;
    const place_t *place;       /* resolve: what to find */
    place_t *out;               /* locate: what was found */
    int found;                  /* 1: yes; -1: the object, not the spot */
    bool first;
    bool id_differs;
} look_t;

/* The object's GNU build-id into id (cap bytes); its length or 0. */
static uint32_t object_id(const struct dl_phdr_info *info, unsigned char *id,
                          size_t cap)
{
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_NOTE)
            continue;
        const unsigned char *p =
            (const unsigned char *)(info->dlpi_addr + ph->p_vaddr);
        const unsigned char *end = p + ph->p_memsz;
        while (p + sizeof(ElfW(Nhdr)) <= end) {
            ElfW(Nhdr) nh;
            memcpy(&nh, p, sizeof nh);
            const unsigned char *name = p + sizeof nh;
            const unsigned char *desc = name + ((nh.n_namesz + 3) & ~3u);
            p = desc + ((nh.n_descsz + 3) & ~3u);
            if (p > end)
                break;
            if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 &&
                memcmp(name, "GNU", 4) == 0 && nh.n_descsz <= cap) {
                memcpy(id, desc, nh.n_descsz);
                return nh.n_descsz;
            }
        }
    }
    return 0;
}

/* Whether addr lies in a loadable segment of info as want says. */
static bool in_segment(const struct dl_phdr_info *info, uintptr_t addr,
                       enum want want)
{
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type != PT_LOAD || addr < start ||
            addr - start >= ph->p_memsz)
            continue;
        return want == CODE ? (ph->p_flags & PF_X) != 0
                            : (ph->p_flags & PF_W) == 0;
    }
    return false;
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static int locate_one(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    look_t *l = arg;
    bool first = l->first;
    l->first = false;
    if (!in_segment(info, l->addr, l->want))
        return 0;
    place_t *p = l->out;
    p->set = 1;
    p->offset = (uint64_t)(l->addr - info->dlpi_addr);
    p->id_len = object_id(info, p->id, sizeof p->id);
    snprintf(p->object, sizeof p->object, "%s",
             first ? "" : info->dlpi_name);
    l->found = 1;
    return 1;
}

static int resolve_one(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    look_t *l = arg;
    bool first = l->first;
    l->first = false;
    const place_t *p = l->place;
    if (p->object[0] == '\0' ? !first
                             : first || strcmp(base_name(info->dlpi_name),
                                               base_name(p->object)) != 0)
        return 0;
    unsigned char id[sizeof p->id];
    uint32_t n = object_id(info, id, sizeof id);
    if (p->id_len != 0 && (n != p->id_len || memcmp(id, p->id, n) != 0)) {
        l->id_differs = true;
        return 1;
    }
    l->addr = info->dlpi_addr + (uintptr_t)p->offset;
    l->found = in_segment(info, l->addr, l->want) ? 1 : -1;
    return 1;
}

/* The place of addr (NULL: an empty place); false if it is in no loaded
 * object's segment of that kind. */
static bool locate(const void *addr, enum want want, place_t *out)
{
    memset(out, 0, sizeof *out);
    if (addr == NULL)
        return true;
    look_t l = {(uintptr_t)addr, want, NULL, out, 0, true, false};
    dl_iterate_phdr(locate_one, &l);
    return l.found == 1;
}

/* The address a place names here, or NULL with why set. */
static uintptr_t resolve(const place_t *p, enum want want, const char *what,
                         char *why, size_t cap)
{
    if (!p->set)
        return 0;
    look_t l = {0, want, p, NULL, 0, true, false};
    dl_iterate_phdr(resolve_one, &l);
    const char *object = p->object[0] ? p->object : "the program";
    if (l.found == 1)
        return l.addr;
    char host[64] = "?";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    snprintf(why, cap,
             "rank %d (host %s) cannot find the pool's %s: %s %s", relay.rank,
             host, what, object,
             l.id_differs ? "is another build there (its build-id differs)"
             : l.found    ? "has no such code or read-only data there"
                          : "is not loaded there");
    return 0;
}

/* ---- sending --------------------------------------------------------------- */

/* Completes the sends MPI has finished with; returns whether any did. */
static bool sends_done(void)
{
    bool any = false;
    for (int i = 0; i < relay.nsend;) {
        int flag = 0;
        MPI_Test(&relay.reqs[i], &flag, MPI_STATUS_IGNORE);
        if (!flag) {
            i++;
            continue;
        }
        free(relay.bufs[i]);
        relay.nsend--;
        relay.reqs[i] = relay.reqs[relay.nsend];
        relay.bufs[i] = relay.bufs[relay.nsend];
        any = true;
    }
    return any;
}

/* Sends buf (head, then len bytes; malloc'ed, ours now) to rank. */
static void post_buf(int rank, void *buf, size_t len)
{
    if (relay.nsend == relay.sendcap) {
        int cap = relay.sendcap ? 2 * relay.sendcap : 64;
        MPI_Request *r = realloc(relay.reqs, (size_t)cap * sizeof *r);
        if (r != NULL)
            relay.reqs = r;
        void **b = realloc(relay.bufs, (size_t)cap * sizeof *b);
        if (b != NULL)
            relay.bufs = b;
        if (r == NULL || b == NULL) {   /* no memory: send it blocking */
            MPI_Send(buf, (int)len, MPI_BYTE, rank, TAG, relay.comm);
            free(buf);
            return;
        }
        relay.sendcap = cap;
    }
    MPI_Isend(buf, (int)len, MPI_BYTE, rank, TAG, relay.comm,
              &relay.reqs[relay.nsend]);
    relay.bufs[relay.nsend++] = buf;
}

static void post(int rank, uint32_t kind, uint32_t chan, int64_t a, int64_t b,
                 int64_t c, const void *data, size_t len)
{
    unsigned char *buf = malloc(sizeof(head_t) + len);
    if (buf == NULL)
        return;
    head_t h = {kind, chan, a, b, c, 0};
    memcpy(buf, &h, sizeof h);
    if (len > 0)
        memcpy(buf + sizeof h, data, len);
    post_buf(rank, buf, sizeof h + len);
}

/* ---- channels -------------------------------------------------------------- */

static chan_t *find(uint32_t id)
{
    for (chan_t *c = relay.chans; c != NULL; c = c->next) {
        if (c->id == id)
            return c;
    }
    return NULL;
}

static void unlink_chan(chan_t *c)
{
    for (chan_t **p = &relay.chans; *p != NULL; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
}

static void free_chan(chan_t *c)
{
    unlink_chan(c);
    pmap__channel_close(&c->ch);
    pmap__close(&c->pidfd);
    if (!c->handed)
        pmap__close(&c->loopfd);
    if (relay.rank != 0 && c->arena != NULL)
        pmap__shm_unmap(c->arena, PMAP__ARENA_SIZE);
    pmap__buf_free(&c->out);
    free(c);
}

/* Queues bytes for c's channel. */
static void queue(chan_t *c, const unsigned char *p, size_t n)
{
    if (c->ch.out >= 0 && n > 0)
        pmap__buf_put(&c->out, p, n);
}

/* Writes what is queued for c as far as its channel takes it; then the
 * end of file and the death signal that waited for those bytes.  A write
 * error drops the bytes: the reader is gone (rank 0's relay thread blocks
 * SIGPIPE; a rank's own channels keep a reader: fdio.c). */
static bool flush(chan_t *c)
{
    bool any = false;
    while (c->ch.out >= 0 && c->out_at < c->out.len) {
        struct iovec left = {c->out.data + c->out_at, c->out.len - c->out_at};
        pmap__pipe_fit(c->ch.out, &left, 1, &c->out_grown);
        ssize_t w = write(c->ch.out, c->out.data + c->out_at,
                          c->out.len - c->out_at);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return any;
        if (w < 0) {
            c->out_at = c->out.len;
            break;
        }
        c->out_at += (size_t)w;
        any = true;
    }
    c->out.len = c->out_at = 0;
    if (c->shut && c->ch.out >= 0) {
        pmap__close(&c->ch.out);
        pmap__close(&c->ch.keep);
        c->shut = false;
        any = true;
    }
    if (c->death) {     /* rank 0: the loop may bury it now */
        c->death = false;
        c->dead = true;
        uint64_t one = 1;
        if (write(c->pidfd, &one, sizeof one) < 0) {
            /* an eventfd cannot be full after one write */
        }
        pthread_cond_broadcast(&relay.cond);
        any = true;
    }
    return any;
}

/* Reads what c's fd has and forwards it; EOF is forwarded too. */
static bool forward(chan_t *c)
{
    bool any = false;
    for (int i = 0; i < 8 && !c->in_eof; i++) {
        unsigned char *buf = malloc(sizeof(head_t) + READ_CHUNK);
        if (buf == NULL)
            return any;
        ssize_t n = pmap__read(c->ch.in, buf + sizeof(head_t), READ_CHUNK);
        if (n == -EAGAIN || n == -EWOULDBLOCK) {
            free(buf);
            return any;
        }
        any = true;
        if (n <= 0) {
            free(buf);
            c->in_eof = true;
            post(c->rank, M_EOF, c->id, 0, 0, 0, NULL, 0);
            return any;
        }
        head_t h = {M_DATA, c->id, 0, 0, 0, 0};
        memcpy(buf, &h, sizeof h);
        unsigned char *small = realloc(buf, sizeof h + (size_t)n);
        post_buf(c->rank, small ? small : buf, sizeof h + (size_t)n);
        if ((size_t)n < READ_CHUNK)
            return any;
    }
    return any;
}

/* ---- rank r: the workers ------------------------------------------------- */

/* The hooks of a worker for this rank, from SPAWN's data; false and why
 * if one cannot be found here. */
static bool hooks_here(const unsigned char *data, size_t n,
                       pmap__worker_setup_t *setup, char *why, size_t cap)
{
    hooks_t h;
    if (n < sizeof h) {
        memset(&h, 0, sizeof h);
    } else {
        memcpy(&h, data, sizeof h);
        h.init.object[sizeof h.init.object - 1] = '\0';
        h.exit.object[sizeof h.exit.object - 1] = '\0';
        h.arg.object[sizeof h.arg.object - 1] = '\0';
    }
    why[0] = '\0';
    uintptr_t init = resolve(&h.init, CODE, "worker_init", why, cap);
    uintptr_t exit_ = resolve(&h.exit, CODE, "worker_exit", why, cap);
    uintptr_t arg = resolve(&h.arg, CONST_DATA, "worker_arg", why, cap);
    if (why[0] != '\0')
        return false;
    /* A data pointer to a function pointer: ISO C has no conversion, so
     * through memcpy (POSIX requires the representations to agree). */
    void *pi = (void *)init, *pe = (void *)exit_;
    memcpy(&setup->init, &pi, sizeof setup->init);
    memcpy(&setup->exit, &pe, sizeof setup->exit);
    setup->arg = (void *)arg;
    return true;
}

/* Forks a worker for channel id, index in its pool, with the hooks in
 * data; answers SPAWNED. */
static void spawn_local(uint32_t id, int index, const unsigned char *data,
                        size_t n)
{
    pmap__worker_setup_t setup = {getpid(), getpid(), index,
                                  PMAP__NO_CHANNEL, NULL, NULL, NULL, NULL,
                                  NULL};
    char why[512];
    if (relay.refused) {
        post(0, M_SPAWNED, id, PMAP_EPROTO, 0, 0, NULL, 0);
        return;
    }
    if (!hooks_here(data, n, &setup, why, sizeof why)) {
        post(0, M_SPAWNED, id, PMAP_EPROTO, 0, 0, why, strlen(why) + 1);
        return;
    }
    chan_t *c = calloc(1, sizeof *c);
    pmap__channel_t ours = PMAP__NO_CHANNEL, theirs = PMAP__NO_CHANNEL;
    int rc = c == NULL ? PMAP_ENOMEM : pmap__channel_open(&ours, &theirs);
    unsigned char *arena = NULL;
    if (rc == 0) {  /* kept from the rank's other workers */
        arena = pmap__arenas_map(PMAP__ARENA_SIZE, NULL, NULL);
        rc = arena == NULL ? PMAP_ENOMEM : 0;
    }
    pid_t pid = -1;
    if (rc == 0) {
        pmap__arena_state(arena)->private = 1;
        setup.ch = theirs;
        setup.arena = arena;
        sigset_t old;
        pmap__pools_lock();     /* one fork of a worker at a time */
        pmap__fork_prepare(&old, false);
        pid = pmap__proc_fork_with_arena(arena);
        if (pid == 0) {
            /* Only its own channel: the others' ends must reach EOF; and
             * only its own arena, where they could not be kept from it. */
            for (chan_t *o = relay.chans; o != NULL; o = o->next) {
                pmap__channel_close(&o->ch);
                pmap__close(&o->pidfd);
                pmap__arena_forget(o->arena);
            }
            pmap__close(&ours.in);
            pmap__close(&ours.out);     /* ours.keep is theirs.in */
            pmap__worker_main(&setup);
        }
        rc = pid < 0 ? -errno : 0;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pmap__pools_unlock();
    }
    pmap__close(&theirs.out);
    if (rc < 0) {
        pmap__channel_close(&ours);
        if (arena != NULL)
            pmap__shm_unmap(arena, PMAP__ARENA_SIZE);
        free(c);
        post(0, M_SPAWNED, id, rc, 0, 0, NULL, 0);
        return;
    }
    c->id = id;
    c->rank = 0;
    c->index = index;
    c->ch = ours;
    c->arena = arena;
    c->pid = pid;
    c->loopfd = -1;
    c->handed = true;
    c->pidfd = pmap__pidfd_open(pid);
    pmap__set_nonblocking(c->ch.in);
    pmap__set_nonblocking(c->ch.out);
    c->next = relay.chans;
    relay.chans = c;
    post(0, M_SPAWNED, id, pid, 0, 0, NULL, 0);
}

/* c's worker has ended: forwards what it wrote, reaps it and reports. */
static void bury_local(chan_t *c)
{
    while (!c->in_eof && forward(c))
        ;
    int status = 0;
    pid_t r;
    do
        r = waitpid(c->pid, &status, 0);
    while (r < 0 && errno == EINTR);
    pmap__slot_t *slot = pmap__arena_state(c->arena);
    uint64_t item = atomic_load(&slot->item);
    uint32_t map = atomic_load(&slot->map);
    post(0, M_DEATH, c->id, r == c->pid ? status : -1, (int64_t)item, map,
         NULL, 0);
    free_chan(c);
}

/* Timed maps: reports each new item start of each worker (rank 0 keeps
 * the timeouts). */
static bool watch_slots(void)
{
    bool any = false;
    int64_t now = pmap__now_ns();
    for (chan_t *c = relay.chans; c != NULL; c = c->next) {
        pmap__slot_t *slot = pmap__arena_state(c->arena);
        int64_t started = atomic_load(&slot->started_ns);
        if (started == c->seen_started)
            continue;
        c->seen_started = started;
        post(0, M_SLOT, c->id, (int64_t)atomic_load(&slot->item),
             atomic_load(&slot->map), now - started, NULL, 0);
        any = true;
    }
    return any;
}

/* ---- rank 0: mirrors ------------------------------------------------------- */

static void mirror(chan_t *c, uint64_t item, uint32_t map, int64_t started)
{
    if (c->arena == NULL)
        return;
    pmap__slot_t *slot = pmap__arena_state(c->arena);
    atomic_store(&slot->map, map);
    if (started != 0)
        atomic_store(&slot->started_ns, started);
    atomic_store_explicit(&slot->item, item, memory_order_release);
}

/* ---- messages -------------------------------------------------------------- */

/* The workers a serving rank runs: its PMAP_WORKERS, or its CPUs. */
static int node_workers(void)
{
    const char *env = getenv("PMAP_WORKERS");
    long workers = env ? strtol(env, NULL, 10) : 0;
    return workers < 1 || workers > PMAP_MAX_WORKERS ? pmap__cpu_count()
                                                     : (int)workers;
}

static void handle(int from, const unsigned char *buf, size_t len)
{
    head_t h;
    if (len < sizeof h)
        return;
    memcpy(&h, buf, sizeof h);
    const unsigned char *data = buf + sizeof h;
    size_t n = len - sizeof h;
    chan_t *c = h.chan ? find(h.chan) : NULL;
    switch (h.kind) {
    case M_HELLO: {     /* rank r */
        build_t mine = build_id(), theirs;
        memcpy(&theirs, data, n < sizeof theirs ? n : sizeof theirs);
        relay.refused = memcmp(&mine, &theirs, sizeof mine) != 0;
        long workers = node_workers();
        char host[256] = "?";
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = '\0';
        unsigned char reply[sizeof mine + sizeof host];
        memcpy(reply, &mine, sizeof mine);
        memcpy(reply + sizeof mine, host, sizeof host);
        post(from, M_WELCOME, 0, relay.refused ? 0 : workers, getpid(), 0,
             reply, sizeof reply);
        break;
    }
    case M_EXIT:
        relay.exiting = true;
        break;
    case M_SPAWN:
        spawn_local(h.chan, (int)h.a, data, n);
        break;
    case M_SPAWNED:
        if (c == NULL)
            break;
        if (h.a > 0) {
            c->pid = (pid_t)h.a;
            c->state = ALIVE;
            if (c->forgotten)   /* given up on meanwhile */
                post(c->rank, M_KILL, c->id, 0, 0, 0, NULL, 0);
        } else {
            c->state = FAILED;
            c->spawn_rc = h.a < 0 ? (int)h.a : PMAP_ESTART;
            if (n > 0)      /* why, as the rank says */
                snprintf(relay.message, sizeof relay.message,
                         "pool_create_with: %.*s", (int)n, (const char *)data);
        }
        pthread_cond_broadcast(&relay.cond);
        break;
    case M_DATA:
        if (c != NULL)
            queue(c, data, n);
        break;
    case M_EOF:
        if (c != NULL)
            c->shut = true;
        break;
    case M_KILL:
        if (c != NULL)
            kill(c->pid, SIGKILL);
        break;
    case M_DEATH:
        if (c == NULL)
            break;
        c->status = (int)h.a;
        if (h.a < 0)
            c->status = 0, c->spawn_rc = PMAP_ELOST;
        mirror(c, (uint64_t)h.b, (uint32_t)h.c, 0);
        c->death = true;
        break;
    case M_SLOT:
        if (c != NULL)
            mirror(c, (uint64_t)h.a, (uint32_t)h.b, pmap__now_ns() - h.c);
        break;
    default:
        break;
    }
}

/* Takes every message MPI has for us now; hot: an answer is likely soon,
 * probe harder. */
static bool receive(bool hot)
{
    static unsigned char *buf;
    static size_t cap;
    bool any = false;
    for (;;) {
        int flag = 0;
        MPI_Message msg;
        MPI_Status st;
        /* Open MPI reads its TCP sockets in one progress call of
         * PROBES: while hot, a message that has arrived is seen within a
         * round (idle, one probe a round costs less). */
        for (int i = 0; i < (hot && !any ? PROBES : 1) && !flag; i++)
            MPI_Improbe(MPI_ANY_SOURCE, TAG, relay.comm, &flag, &msg, &st);
        if (!flag)
            return any;
        int count = 0;
        MPI_Get_count(&st, MPI_BYTE, &count);
        if ((size_t)count > cap) {
            unsigned char *b = realloc(buf, (size_t)count);
            if (b == NULL) {
                MPI_Mrecv(NULL, 0, MPI_BYTE, &msg, MPI_STATUS_IGNORE);
                continue;   /* lost: the channel will fail its frames */
            }
            buf = b;
            cap = (size_t)count;
        }
        MPI_Mrecv(buf, count, MPI_BYTE, &msg, MPI_STATUS_IGNORE);
        handle(st.MPI_SOURCE, buf, (size_t)count);
        any = true;
    }
}

/* ---- the relay's loop ---------------------------------------------------- */

/* Rank 0: what the hooks asked for. */
static bool requests(void)
{
    bool any = false;
    for (chan_t *c = relay.chans; c != NULL;) {
        chan_t *next = c->next;
        if (c->spawn_asked) {
            c->spawn_asked = false;
            post(c->rank, M_SPAWN, c->id, c->index, 0, 0, &c->hooks,
                 sizeof c->hooks);
            any = true;
        }
        if (c->kill_asked && c->state == ALIVE && !c->dead) {
            c->kill_asked = false;
            post(c->rank, M_KILL, c->id, 0, 0, 0, NULL, 0);
            any = true;
        }
        if (c->forgotten && (c->dead || c->state == FAILED))
            free_chan(c);
        c = next;
    }
    return any;
}

static struct pollfd *pollfds(size_t n)
{
    if (n > relay.pcap) {
        struct pollfd *p = realloc(relay.pfd, n * sizeof *p);
        if (p != NULL)
            relay.pfd = p;
        chan_t **q = realloc(relay.pchan, n * sizeof *q);
        if (q != NULL)
            relay.pchan = q;
        if (p == NULL || q == NULL)
            return NULL;
        relay.pcap = n;
    }
    return relay.pfd;
}

/* One round: MPI, then the channels, waiting at most sleep_ns.  Rank 0
 * holds relay.lock except while waiting.  Returns whether anything moved. */
static bool round_trip(int64_t sleep_ns)
{
    bool any = false;
    if (relay.rank == 0)
        any |= requests();
    any |= receive(sleep_ns <= SLEEP_MIN_NS);
    any |= sends_done();
    size_t n = 0;
    for (chan_t *c = relay.chans; c != NULL; c = c->next)
        n += 3;
    struct pollfd *pfd = pollfds(n + 1);
    if (pfd == NULL)
        return true;
    size_t k = 0;
    if (relay.rank == 0)
        pfd[k++] = (struct pollfd){relay.wake, POLLIN, 0};
    for (chan_t *c = relay.chans; c != NULL; c = c->next) {
        any |= flush(c);
        relay.pchan[k] = c;
        pfd[k++] = (struct pollfd){c->in_eof ? -1 : c->ch.in, POLLIN, 0};
        relay.pchan[k] = c;
        pfd[k++] = (struct pollfd){c->out.len > c->out_at ? c->ch.out : -1,
                                   POLLOUT, 0};
        if (relay.rank != 0) {
            relay.pchan[k] = c;
            pfd[k++] = (struct pollfd){c->pidfd, POLLIN, 0};
        }
    }
    if (relay.rank != 0)
        any |= watch_slots();
    struct timespec ts = {0, any ? 0 : (long)sleep_ns};
    if (relay.rank == 0)
        pthread_mutex_unlock(&relay.lock);
    int ready = ppoll(pfd, k, &ts, NULL);
    if (relay.rank == 0)
        pthread_mutex_lock(&relay.lock);
    if (ready <= 0)
        return any;
    size_t i = 0;
    if (relay.rank == 0 && pfd[i++].revents) {
        uint64_t v;
        if (read(relay.wake, &v, sizeof v) < 0) {
            /* EAGAIN: another round read it */
        }
        any = true;
    }
    /* Channels are not freed below but by bury_local, after its pidfd's
     * entry, which comes last for it: entries are taken in order. */
    for (; i < k; i++) {
        chan_t *c = relay.pchan[i];
        if (!pfd[i].revents)
            continue;
        any = true;
        if (relay.rank != 0 && pfd[i].fd == c->pidfd) {
            bury_local(c);
            continue;
        }
        if (pfd[i].fd == c->ch.out)
            flush(c);
        else
            forward(c);
    }
    return any;
}

/* Loops until told to stop: rank 0's thread, or rank r's main. */
static void relay_loop(volatile bool *stop)
{
    int64_t sleep_ns = SLEEP_MIN_NS, active_ns = pmap__now_ns();
    prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);   /* this thread's */
    while (!*stop) {
        bool any = round_trip(sleep_ns);
        int64_t now = pmap__now_ns();
        int64_t max = relay.nsend > 0 ? SLEEP_SEND_NS : SLEEP_MAX_NS;
        if (any)
            active_ns = now;
        sleep_ns = now - active_ns < HOT_NS ? SLEEP_MIN_NS
                   : sleep_ns * 2 > max     ? max
                                            : sleep_ns * 2;
    }
}

static void *relay_thread(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&relay.lock);
    relay_loop(&relay.stop);
    pthread_mutex_unlock(&relay.lock);
    return NULL;
}

/* Waits for every send to complete. */
static void sends_wait(void)
{
    while (relay.nsend > 0) {
        sends_done();
        if (relay.nsend > 0) {
            struct timespec ts = {0, SLEEP_SEND_NS};
            nanosleep(&ts, NULL);
        }
    }
}

/* ---- rank r ------------------------------------------------------------------ */

_Noreturn static void serve(void)
{
    relay_loop(&relay.exiting);
    /* Rank 0 has left: so do the workers, then we. */
    for (chan_t *c = relay.chans; c != NULL; c = c->next)
        kill(c->pid, SIGKILL);
    while (relay.chans != NULL) {
        chan_t *c = relay.chans;
        int status;
        while (waitpid(c->pid, &status, 0) < 0 && errno == EINTR)
            ;
        c->handed = true;
        free_chan(c);
    }
    sends_wait();
    MPI_Finalize();
    exit(0);
}

/* ---- the hooks (rank 0, the loop's thread) --------------------------------- */

static void wake_relay(void)
{
    uint64_t one = 1;
    if (write(relay.wake, &one, sizeof one) < 0) {
        /* full: it is awake anyway */
    }
}

static chan_t *find_loopfd(int fd)
{
    for (chan_t *c = relay.chans; c != NULL; c = c->next) {
        if (c->loopfd == fd && c->handed && !c->forgotten)
            return c;
    }
    return NULL;
}

/* Waits on relay.cond until deadline (CLOCK_MONOTONIC ns). */
static void wait_until(int64_t deadline)
{
    struct timespec ts = {(time_t)(deadline / 1000000000),
                          (long)(deadline % 1000000000)};
    pthread_cond_timedwait(&relay.cond, &relay.lock, &ts);
}

static int hook_workers(void)
{
    return relay.running ? relay.nslots : 0;
}

/* ---- rank 0's own workers (pmap_mpi_options_t.workers) -------------------- */

/* One of them: forked here as by a local pool, its pidfd the loop's. */
typedef struct here {
    int pidfd;
    pid_t pid;
    struct here *next;
} here_t;

static here_t *find_here(int pidfd, bool unlink)
{
    for (here_t **p = &relay.heres; *p != NULL; p = &(*p)->next) {
        here_t *h = *p;
        if (h->pidfd != pidfd)
            continue;
        if (unlink)
            *p = h->next;
        return h;
    }
    return NULL;
}

/* Forks w's worker here, its side of the channel being channel; relay.lock
 * held (the relay's list is read whole in the child). */
static int spawn_here(const pool_t *pool, pmap__worker_t *w,
                      const pmap__channel_t *channel, pid_t *pid,
                      int *deathfd)
{
    here_t *h = calloc(1, sizeof *h);
    if (h == NULL)
        return PMAP_ENOMEM;
    pmap__arena_state(w->arena)->private = 0;  /* memory is shared here */
    pmap__worker_setup_t setup = {
        getpid(),          getpid(),          w->index,
        *channel,          w->arena,          pool->opts.worker_init,
        pool->opts.worker_exit, pool->opts.worker_arg, NULL};
    sigset_t old;
    pmap__fork_prepare(&old, false);
    pid_t child = pmap__proc_fork_with_arena(w->arena);
    if (child == 0) {
        /* The relay's descriptors are not the worker's: a channel's end
         * held here would keep it open. */
        for (chan_t *o = relay.chans; o != NULL; o = o->next) {
            pmap__channel_close(&o->ch);
            pmap__close(&o->pidfd);
            pmap__close(&o->loopfd);
        }
        pmap__close(&relay.wake);
        pmap__proc_become_worker(w, &setup, false);
    }
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (child < 0) {
        free(h);
        return -err;
    }
    h->pid = child;
    h->pidfd = pmap__pidfd_open(child);
    if (h->pidfd < 0) {     /* Linux before 5.3: no way to watch it */
        int status;
        pmap__kill(child, -1);
        pmap__reap(child, &status);
        free(h);
        return PMAP_ENOSYS;
    }
    h->next = relay.heres;
    relay.heres = h;
    *pid = child;
    *deathfd = h->pidfd;
    return 0;
}

/* Its wait status, as proc.c takes a local worker's; the record goes. */
static int reap_here(here_t *h, int *status)
{
    pid_t r;
    do
        r = waitpid(h->pid, status, WNOHANG);
    while (r < 0 && errno == EINTR);
    int rc = r == h->pid ? 0 : r < 0 ? PMAP_ELOST : -1;
    if (rc == -1) {
        pmap__kill(h->pid, h->pidfd);
        rc = pmap__reap(h->pid, status);
    }
    free(h);
    return rc;
}

/* ---- the hooks' places ----------------------------------------------------- */

/* The pool's hooks as another rank can find them; PMAP_EINVAL (and
 * relay.message) if one cannot be named. */
static int hooks_out(const pool_options_t *o, hooks_t *h)
{
    void *init, *exit_;
    memcpy(&init, &o->worker_init, sizeof init);
    memcpy(&exit_, &o->worker_exit, sizeof exit_);
    const char *bad = !locate(init, CODE, &h->init)    ? "worker_init"
                      : !locate(exit_, CODE, &h->exit) ? "worker_exit"
                                                       : NULL;
    if (bad != NULL) {
        snprintf(relay.message, sizeof relay.message,
                 "pool_create_with: the pool's %s is not in the code of the "
                 "program or of a shared library (made at run time?), so "
                 "other ranks cannot find it", bad);
        return PMAP_EINVAL;
    }
    if (!locate(o->worker_arg, CONST_DATA, &h->arg)) {
        snprintf(relay.message, sizeof relay.message,
                 "pool_create_with: the pool's worker_arg (%p) does not point "
                 "into read-only data of the program or of a shared library "
                 "(a string literal, a const object), the only memory that "
                 "is the same on other ranks; pass NULL there (worker_init "
                 "may read the environment: mpirun -x NAME)",
                 o->worker_arg);
        return PMAP_EINVAL;
    }
    return 0;
}

static int hook_spawn(const pool_t *pool, pmap__worker_t *w,
                      const pmap__channel_t *channel, int64_t deadline,
                      pid_t *pid, int *deathfd)
{
    int index = w->index;
    pthread_mutex_lock(&relay.lock);
    int rc = 0;
    chan_t *c = NULL;
    if (!relay.running || index < 0 || index >= relay.nslots)
        rc = PMAP_ESTART;
    else if (relay.slot_rank[index] == 0)
        rc = spawn_here(pool, w, channel, pid, deathfd);
    else if ((c = calloc(1, sizeof *c)) == NULL)
        rc = PMAP_ENOMEM;
    else if ((rc = hooks_out(&pool->opts, &c->hooks)) < 0)
        free(c);
    if (rc < 0 || c == NULL) {
        pthread_mutex_unlock(&relay.lock);
        return rc;
    }
    c->id = ++relay.next_id ? relay.next_id : ++relay.next_id;
    c->rank = relay.slot_rank[index];
    c->index = index;
    c->ch = (pmap__channel_t){fcntl(channel->in, F_DUPFD_CLOEXEC, 3),
                              fcntl(channel->out, F_DUPFD_CLOEXEC, 3), -1};
    c->pidfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    c->loopfd = c->pidfd >= 0 ? fcntl(c->pidfd, F_DUPFD_CLOEXEC, 3) : -1;
    c->arena = w->arena;
    c->state = SPAWNING;
    c->next = relay.chans;
    relay.chans = c;
    if (c->ch.in < 0 || c->ch.out < 0 || c->loopfd < 0 ||
        pmap__set_nonblocking(c->ch.in) < 0 ||
        pmap__set_nonblocking(c->ch.out) < 0) {
        c->state = FAILED;
        c->forgotten = true;
        pthread_mutex_unlock(&relay.lock);
        return PMAP_ESTART;
    }
    c->spawn_asked = true;
    wake_relay();
    while (c->state == SPAWNING && pmap__now_ns() < deadline)
        wait_until(deadline);
    if (c->state != ALIVE) {
        rc = c->state == FAILED ? c->spawn_rc : PMAP_ESTART;
        c->forgotten = true;
        c->arena = NULL;
        wake_relay();
        pthread_mutex_unlock(&relay.lock);
        return rc;
    }
    c->handed = true;
    *pid = c->pid;
    *deathfd = c->loopfd;
    pthread_mutex_unlock(&relay.lock);
    return 0;
}

static void hook_kill(int deathfd)
{
    pthread_mutex_lock(&relay.lock);
    chan_t *c = find_loopfd(deathfd);
    here_t *h = c == NULL ? find_here(deathfd, false) : NULL;
    if (h != NULL)
        pmap__kill(h->pid, h->pidfd);
    if (c != NULL && !c->dead) {
        c->kill_asked = true;
        wake_relay();
    }
    pthread_mutex_unlock(&relay.lock);
}

static int hook_reap(int deathfd, int *status)
{
    pthread_mutex_lock(&relay.lock);
    here_t *h = find_here(deathfd, true);
    pthread_mutex_unlock(&relay.lock);
    if (h != NULL)
        return reap_here(h, status);
    pthread_mutex_lock(&relay.lock);
    chan_t *c = find_loopfd(deathfd);
    if (c == NULL || !relay.running) {
        pthread_mutex_unlock(&relay.lock);
        return PMAP_ELOST;
    }
    int64_t deadline = pmap__now_ns() + REPORT_NS;
    while (!c->dead && pmap__now_ns() < deadline)
        wait_until(deadline);
    if (!c->dead) {
        c->kill_asked = true;
        wake_relay();
        deadline = pmap__now_ns() + KILLED_NS;
        while (!c->dead && pmap__now_ns() < deadline)
            wait_until(deadline);
    }
    int rc = c->dead && c->spawn_rc != PMAP_ELOST ? 0 : PMAP_ELOST;
    *status = c->status;
    c->forgotten = true;
    c->arena = NULL;
    wake_relay();
    pthread_mutex_unlock(&relay.lock);
    return rc;
}

static void hook_detach(int deathfd)
{
    pthread_mutex_lock(&relay.lock);
    chan_t *c = find_loopfd(deathfd);
    if (c != NULL)
        c->arena = NULL;
    pthread_mutex_unlock(&relay.lock);
}

static const pmap__remote_t hooks = {hook_workers, hook_spawn, hook_kill,
                                     hook_reap, hook_detach};

/* ---- rank 0: connecting ---------------------------------------------------- */

static const char *differs(const build_t *a, const build_t *b)
{
    if (a->abi != b->abi)
        return "byte order or pointer size";
    if (a->version != b->version)
        return "libpmap version";
    return "exported functions (PMAP_EXPORT) or their types";
}

/* Says hello to every rank and learns its workers; 0 or PMAP_EPROTO. */
static int connect_ranks(void)
{
    build_t mine = build_id();
    for (int r = 1; r < relay.size; r++) {
        head_t h = {M_HELLO, 0, 0, 0, 0, 0};
        unsigned char msg[sizeof h + sizeof mine];
        memcpy(msg, &h, sizeof h);
        memcpy(msg + sizeof h, &mine, sizeof mine);
        MPI_Send(msg, (int)sizeof msg, MPI_BYTE, r, TAG, relay.comm);
    }
    relay.slot_rank = malloc((size_t)PMAP_MAX_WORKERS * sizeof(int));
    if (relay.slot_rank == NULL)
        return PMAP_ENOMEM;
    int rc = 0;
    int *count = calloc((size_t)relay.size, sizeof *count);
    if (count == NULL)
        return PMAP_ENOMEM;
    count[0] = relay.here;
    for (int r = 1; r < relay.size; r++) {
        unsigned char reply[sizeof(head_t) + sizeof(build_t) + 256];
        MPI_Recv(reply, (int)sizeof reply, MPI_BYTE, r, TAG, relay.comm,
                 MPI_STATUS_IGNORE);
        head_t h;
        build_t theirs;
        memcpy(&h, reply, sizeof h);
        memcpy(&theirs, reply + sizeof h, sizeof theirs);
        char *host = (char *)reply + sizeof h + sizeof theirs;
        host[255] = '\0';
        if (memcmp(&mine, &theirs, sizeof mine) != 0) {
            if (rc == 0)
                snprintf(relay.message, sizeof relay.message,
                         "pmap_mpi_init: rank %d (host %s, pid %ld) runs another "
                         "build of the program than rank 0 (its %s differ: "
                         "build %016llx/%llx/%llx, rank 0's %016llx/%llx/%llx); "
                         "start the same executable on every rank",
                         r, host, (long)h.b, differs(&mine, &theirs),
                         (unsigned long long)theirs.registry,
                         (unsigned long long)theirs.version,
                         (unsigned long long)theirs.abi,
                         (unsigned long long)mine.registry,
                         (unsigned long long)mine.version,
                         (unsigned long long)mine.abi);
            rc = PMAP_EPROTO;
            continue;
        }
        count[r] = (int)h.a;
    }
    /* Slots go round the ranks (a pool of fewer workers is spread): rank
     * 0's first worker if it serves, rank 1's first, rank 2's first, ...,
     * rank 0's second, ... */
    for (int i = 0, more = 1; more; i++) {
        more = 0;
        for (int r = 0; r < relay.size && relay.nslots < PMAP_MAX_WORKERS;
             r++) {
            if (i >= count[r])
                continue;
            relay.slot_rank[relay.nslots++] = r;
            more = 1;
        }
    }
    free(count);
    return rc;
}

static void at_exit(void)
{
    pmap_mpi_exit();
}

int pmap_mpi_init(int *argc, char ***argv)
{
    return pmap_mpi_init_with(argc, argv, NULL);
}

int pmap_mpi_init_with(int *argc, char ***argv, const pmap_mpi_options_t *o)
{
    if (relay.initialized)
        return relay.init_rc;
    relay.initialized = true;
    int already = 0;
    MPI_Initialized(&already);
    int rc = already ? MPI_Query_thread(&relay.level)
                     : MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE,
                                       &relay.level);
    if (rc != MPI_SUCCESS) {
        snprintf(relay.message, sizeof relay.message,
                 "pmap_mpi_init: MPI_Init_thread failed (%d)", rc);
        return relay.init_rc = PMAP_ESTART;
    }
    MPI_Comm_dup(MPI_COMM_WORLD, &relay.comm);
    MPI_Comm_rank(relay.comm, &relay.rank);
    MPI_Comm_size(relay.comm, &relay.size);
    if (relay.rank != 0)
        serve();
    relay.owner = getpid();
    atexit(at_exit);
    int here = o == NULL ? 0 : o->workers;
    if (here < PMAP_MPI_NODE || here > PMAP_MAX_WORKERS) {
        snprintf(relay.message, sizeof relay.message,
                 "pmap_mpi_init_with: workers is %d: 0, %d (PMAP_MPI_NODE) "
                 "or at most %d", here, PMAP_MPI_NODE, PMAP_MAX_WORKERS);
        return relay.init_rc = PMAP_EINVAL;
    }
    relay.here = here == PMAP_MPI_NODE ? node_workers() : here;
    if (relay.level < MPI_THREAD_SERIALIZED) {
        snprintf(relay.message, sizeof relay.message,
                 "pmap_mpi_init: the MPI library provides thread level %d, "
                 "below MPI_THREAD_SERIALIZED (%d)",
                 relay.level, MPI_THREAD_SERIALIZED);
        return relay.init_rc = PMAP_ENOSYS;
    }
    rc = connect_ranks();
    if (rc < 0)
        return relay.init_rc = rc;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&relay.cond, &ca);
    pthread_condattr_destroy(&ca);
    relay.wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    /* The relay takes no signal of the program's, SIGPIPE included: it
     * writes to pipes whose reader, the loop, may have closed them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int started = relay.wake < 0 ? -1 : pthread_create(&relay.thread, NULL,
                                                        relay_thread, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (started != 0) {
        snprintf(relay.message, sizeof relay.message,
                 "pmap_mpi_init: cannot start the relay thread");
        return relay.init_rc = PMAP_ESTART;
    }
    relay.running = true;
    pmap__remote = &hooks;
    return relay.init_rc = 0;
}

int pmap_mpi_exit(void)
{
    /* A worker forked from rank 0 that calls exit runs its atexit too:
     * MPI and the relay are not its own. */
    if (!relay.initialized || relay.finalized || relay.rank != 0 ||
        getpid() != relay.owner)
        return 0;
    relay.finalized = true;
    if (relay.running) {
        pthread_mutex_lock(&relay.lock);
        relay.stop = true;
        relay.running = false;
        pmap__remote = NULL;
        wake_relay();
        pthread_cond_broadcast(&relay.cond);
        pthread_mutex_unlock(&relay.lock);
        pthread_join(relay.thread, NULL);
    }
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized || relay.comm == MPI_COMM_NULL)
        return 0;
    for (int r = 1; r < relay.size; r++)
        post(r, M_EXIT, 0, 0, 0, 0, NULL, 0);
    sends_wait();
    MPI_Comm_free(&relay.comm);
    MPI_Finalize();
    return 0;
}

int pmap_mpi_rank(void)
{
    return relay.rank;
}

int pmap_mpi_size(void)
{
    return relay.size;
}

int pmap_mpi_workers(void)
{
    return relay.running ? relay.nslots : 0;
}

int pmap_mpi_thread_level(void)
{
    return relay.level;
}

const char *pmap_mpi_message(void)
{
    return relay.message;
}
