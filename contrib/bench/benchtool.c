/*
 * benchtool.c - load generator and echo server for contrib/bench/run.sh,
 * tls.sh and proxy_bench.sh.  The address is 127.0.0.1, or BENCH_ADDR from the
 * environment, which must be in 127.0.0.0/8 or 198.18.0.0/15 (the bench
 * namespaces' range); anything else is refused.  Every mode has a hard time limit.
 *
 *   benchtool echo PORT MAX_SECS
 *       epoll echo server on ADDR:PORT; exits after MAX_SECS or on SIGTERM.
 *   benchtool load PORT CONCURRENCY SECS
 *       short connections for SECS seconds, CONCURRENCY in flight; each one is
 *       connect + send 32 B + read the 32 B echo + close. Prints
 *       "conns: N", "fails: N", "secs: S", "conn_per_s: X", "lat_p50_ms", "lat_p99_ms".
 *   benchtool idle PORT N READYFILE MAX_SECS [PARALLEL=100]
 *       opens N connections (at most PARALLEL being set up at once), each sends
 *       32 B and waits for the echo; then writes the number that succeeded to
 *       READYFILE (atomically) and holds them until SIGTERM or MAX_SECS.
 *   benchtool seq PORT N
 *       N sequential connections (connect + send 32 B + read the 32 B echo +
 *       close), each bounded by 5 s, the whole by 150 s. Prints "ok: N",
 *       "fails: N", "median_ms", "p99_ms", "mean_ms", "max_ms".
 *   benchtool burst PORT N
 *       N such connections started at once (non-blocking); prints "total_ms"
 *       (first connect() to the last echo), "ok", "fails", "median_ms", "p99_ms".
 *   benchtool ping PORT N INTERVAL_MS WARM_SECS POST_SECS READYFILE KILLFILE CONNFILE
 *       live connections for proxy_bench.sh's resumption test: opens N connections
 *       (100 being set up at once), each sends a 32-byte ping every INTERVAL_MS
 *       (phases spread evenly; a slot missed by more than one interval is dropped,
 *       counted as late, not caught up) carrying its connection index, sequence number and
 *       a pattern, and checks that the echoed stream is exactly the sent stream:
 *       32 echoed bytes that are not the next 32 of the sent stream are looked up
 *       within +-2048 bytes of it (found ahead: bytes lost; behind: duplicated;
 *       nowhere: corrupt), and the first 20 such anomalies are printed on stderr
 *       with the bytes got and wanted.  When every connection has had its first echo it writes
 *       "OK FAILS" to READYFILE; WARM_SECS later it marks a reference instant,
 *       one second after that it reads a PID from KILLFILE (waiting up to 30 s for
 *       the file; "-" = no kill) and sends it SIGKILL, pings on for POST_SECS,
 *       stops sending and waits (<= 5 s) for the outstanding echoes.  Per
 *       connection (CONNFILE, one line each): index, local port, the gap between
 *       the last echo before and the first echo after the reference instant and
 *       the kill, kill -> first echo, the longest ping round trip after the kill (ms;
 *       -1: none), pings sent, pings echoed, bytes lost, duplicated, corrupt, closed
 *       (1: the far side closed it), and the pause: the longest any ping waited on
 *       the kill, its echo less the later of its send and the kill (ms; -1: no echo
 *       after the kill; a ping sent before the kill waited from the kill on, so for a
 *       connection that pings soon after the kill this is the resumption itself,
 *       whatever PING_MS is), and the probe: right after the kill every connection
 *       sends one ping more, and its round trip is that connection's stall (ms; -1:
 *       never echoed) - on the killed worker's connections the resumption, on the
 *       others what the burst and the machine's load cost without one.  Totals on
 *       stdout as "name: value" lines.
 *
 * Build: cc -O2 -o benchtool benchtool.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MSG_LEN 32
#define CONN_TIMEOUT 5.0 /* seconds, per connection in load/idle */

static volatile sig_atomic_t stop_flag;
static void on_stop(int sig) { (void)sig; stop_flag = 1; }

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *m)
{
    perror(m);
    exit(2);
}

/* 127.0.0.1:port, or BENCH_ADDR:port when BENCH_ADDR is in 127/8 or 198.18/15 */
static struct sockaddr_in loop_addr(int port)
{
    struct sockaddr_in a;
    const char *env = getenv("BENCH_ADDR");
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (env && *env) {
        uint32_t h;
        if (inet_pton(AF_INET, env, &a.sin_addr) != 1) {
            fprintf(stderr, "BENCH_ADDR %s: not an IPv4 address\n", env);
            exit(2);
        }
        h = ntohl(a.sin_addr.s_addr);
        if ((h >> 24) != 127 && (h >> 17) != (0xC612u >> 1)) { /* 127/8, 198.18/15 */
            fprintf(stderr, "BENCH_ADDR %s: only 127.0.0.0/8 and 198.18.0.0/15 are allowed\n", env);
            exit(2);
        }
    }
    return a;
}

/* ------------------------------------------------------------------ echo */
struct econn {
    int fd;
    int len, off; /* pending bytes to write back */
    int out;      /* registered for EPOLLOUT (else EPOLLIN) */
    char buf[4096];
};

static int run_echo(int port, double max_secs)
{
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in a = loop_addr(port);
    if (ls < 0) die("socket");
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(ls, 4096) < 0) die("listen");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    double deadline = now() + max_secs;
    struct epoll_event evs[256];

    while (!stop_flag && now() < deadline) {
        int n = epoll_wait(ep, evs, 256, 500);
        for (int i = 0; i < n; i++) {
            struct econn *c = evs[i].data.ptr;
            if (c == NULL) {
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    if (!c) { close(fd); continue; }
                    c->fd = fd;
                    struct epoll_event e2 = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e2);
                }
                continue;
            }
            int dead = 0;
            if (c->len > c->off) { /* flush pending */
                ssize_t w = write(c->fd, c->buf + c->off, c->len - c->off);
                if (w < 0 && errno != EAGAIN) dead = 1;
                else if (w > 0) c->off += w;
            }
            while (!dead && c->len <= c->off) {
                ssize_t r = read(c->fd, c->buf, sizeof c->buf);
                if (r == 0) { dead = 1; break; }
                if (r < 0) { if (errno != EAGAIN) dead = 1; break; }
                c->len = r; c->off = 0;
                ssize_t w = write(c->fd, c->buf, r);
                if (w < 0 && errno != EAGAIN) { dead = 1; break; }
                if (w > 0) c->off = w;
                if (r < (ssize_t)sizeof c->buf) break; /* drained; level-triggered: no read for EAGAIN */
            }
            if (!dead) {
                /* re-register only on a change: one epoll_ctl per echo costs as
                 * much as the echo itself */
                int out = c->len > c->off;
                if (out != c->out) {
                    struct epoll_event e2 = {.data.ptr = c};
                    e2.events = out ? EPOLLOUT : EPOLLIN | EPOLLRDHUP;
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e2);
                    c->out = out;
                }
            } else {
                close(c->fd);
                free(c);
            }
        }
    }
    return 0;
}

/* ------------------------------------------------- client connections */
enum { ST_FREE, ST_CONNECTING, ST_READING, ST_IDLE };
struct cconn {
    int fd, state, got;
    double t0;
};

static int start_conn(int ep, struct cconn *c, struct sockaddr_in *a)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0) return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd; c->got = 0; c->t0 = now();
    if (connect(fd, (struct sockaddr *)a, sizeof *a) < 0 && errno != EINPROGRESS) {
        close(fd); c->fd = -1;
        return -1;
    }
    c->state = ST_CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

/* advance c on an event; returns 1 when the echo is complete, -1 on failure, 0 otherwise */
static int step_conn(int ep, struct cconn *c)
{
    static const char msg[MSG_LEN] = "0123456789abcdef0123456789abcdef";
    char buf[MSG_LEN];
    if (c->state == ST_CONNECTING) {
        int err = 0; socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) return -1;
        if (write(c->fd, msg, MSG_LEN) != MSG_LEN) return -1;
        c->state = ST_READING;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        return 0;
    }
    if (c->state == ST_READING) {
        for (;;) {
            ssize_t r = read(c->fd, buf, MSG_LEN - c->got);
            if (r == 0) return -1;
            if (r < 0) return errno == EAGAIN ? 0 : -1;
            c->got += r;
            if (c->got >= MSG_LEN) return 1;
        }
    }
    return -1; /* event on an idle connection: peer closed it or error */
}

static void drop_conn(int ep, struct cconn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = ST_FREE;
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int run_load(int port, int conc, double secs)
{
    struct sockaddr_in a = loop_addr(port);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct cconn *cs = calloc(conc, sizeof *cs);
    size_t lat_cap = 4u << 20, nlat = 0;
    double *lat = malloc(lat_cap * sizeof *lat);
    long done = 0, fails = 0;
    struct epoll_event evs[256];
    if (!cs || !lat) die("malloc");
    double t_start = now(), t_end = t_start + secs, last_check = t_start;

    for (int i = 0; i < conc; i++) {
        cs[i].fd = -1;
        if (start_conn(ep, &cs[i], &a) < 0) fails++;
    }
    while (!stop_flag) {
        double t = now();
        int active = 0;
        if (t >= t_end) {
            for (int i = 0; i < conc; i++) if (cs[i].state != ST_FREE) active++;
            if (!active || t >= t_end + CONN_TIMEOUT) break; /* let in-flight ones finish */
        }
        int n = epoll_wait(ep, evs, 256, 100);
        t = now();
        for (int i = 0; i < n; i++) {
            struct cconn *c = evs[i].data.ptr;
            int r = step_conn(ep, c);
            if (r == 0) continue;
            if (r > 0) {
                done++;
                if (nlat < lat_cap) lat[nlat++] = (t - c->t0) * 1000.0;
            } else fails++;
            drop_conn(ep, c);
            if (t < t_end && start_conn(ep, c, &a) < 0) fails++;
        }
        if (t - last_check > 0.2) { /* per-connection timeouts; refill failed slots */
            last_check = t;
            for (int i = 0; i < conc; i++) {
                struct cconn *c = &cs[i];
                if (c->state != ST_FREE && t - c->t0 > CONN_TIMEOUT) { fails++; drop_conn(ep, c); }
                if (c->state == ST_FREE && t < t_end && start_conn(ep, c, &a) < 0) fails++;
            }
        }
    }
    double el = now() - t_start;
    for (int i = 0; i < conc; i++) if (cs[i].state != ST_FREE) { fails++; drop_conn(ep, &cs[i]); }
    qsort(lat, nlat, sizeof *lat, cmpd);
    printf("conns: %ld\nfails: %ld\nsecs: %.3f\nconn_per_s: %.1f\n", done, fails, el, done / el);
    if (nlat) printf("lat_p50_ms: %.3f\nlat_p99_ms: %.3f\n", lat[nlat / 2], lat[(size_t)(nlat * 0.99)]);
    else printf("lat_p50_ms: NA\nlat_p99_ms: NA\n");
    return 0;
}

static int run_idle(int port, int n, const char *ready, double max_secs, int par)
{
    struct sockaddr_in a = loop_addr(port);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct cconn *cs = calloc(n, sizeof *cs);
    struct epoll_event evs[256];
    int next = 0, inflight = 0, ok = 0, fails = 0;
    double t_start = now(), setup_deadline = t_start + 110;
    if (!cs) die("calloc");
    for (int i = 0; i < n; i++) cs[i].fd = -1;

    while (!stop_flag && (next < n || inflight > 0) && now() < setup_deadline) {
        while (next < n && inflight < par) {
            if (start_conn(ep, &cs[next], &a) < 0) fails++;
            else inflight++;
            next++;
        }
        int k = epoll_wait(ep, evs, 256, 100);
        double t = now();
        for (int i = 0; i < k; i++) {
            struct cconn *c = evs[i].data.ptr;
            int r = step_conn(ep, c);
            if (r == 0) continue;
            inflight--;
            if (r > 0) {
                ok++;
                c->state = ST_IDLE; /* keep watching: a close by the relay is a failure */
                struct epoll_event ev = {.events = EPOLLRDHUP, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            } else { fails++; drop_conn(ep, c); }
        }
        for (int i = 0; i < next; i++) {
            struct cconn *c = &cs[i];
            if ((c->state == ST_CONNECTING || c->state == ST_READING) && t - c->t0 > CONN_TIMEOUT) {
                fails++; inflight--; drop_conn(ep, c);
            }
        }
    }
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", ready);
    FILE *f = fopen(tmp, "w");
    if (!f) die("fopen");
    fprintf(f, "%d\n", ok);
    fclose(f);
    rename(tmp, ready);
    fprintf(stderr, "idle: %d held, %d failed, setup %.2f s\n", ok, fails, now() - t_start);

    double deadline = t_start + max_secs;
    int lost = 0;
    while (!stop_flag && now() < deadline) {
        int k = epoll_wait(ep, evs, 256, 200);
        for (int i = 0; i < k; i++) {
            struct cconn *c = evs[i].data.ptr;
            if (c->state == ST_IDLE) { lost++; drop_conn(ep, c); }
        }
    }
    if (lost) fprintf(stderr, "idle: %d held connections were closed by the peer\n", lost);
    for (int i = 0; i < n; i++) if (cs[i].fd >= 0) close(cs[i].fd);
    return 0;
}

/* ---------------------------------------------------- latency: seq, burst */
static void print_lat(double *lat, int n, int fails)
{
    double sum = 0;
    qsort(lat, n, sizeof *lat, cmpd);
    for (int i = 0; i < n; i++) sum += lat[i];
    printf("ok: %d\nfails: %d\n", n, fails);
    if (n) {
        /* nearest rank: p99 of 500 is the 495th smallest */
        int k99 = (int)(0.99 * n + 0.999999) - 1;
        if (k99 < 0) k99 = 0;
        printf("median_ms: %.3f\np99_ms: %.3f\nmean_ms: %.3f\nmax_ms: %.3f\n",
               n % 2 ? lat[n / 2] : (lat[n / 2 - 1] + lat[n / 2]) / 2, lat[k99], sum / n, lat[n - 1]);
    } else
        printf("median_ms: NA\np99_ms: NA\nmean_ms: NA\nmax_ms: NA\n");
}

/* run connections [0, n) of cs until all finished or timed out; latencies in lat */
static int drive(int ep, struct cconn *cs, int n, double *lat, int *nlat, double t_ref)
{
    struct epoll_event evs[256];
    int left = n, fails = 0;
    while (left > 0 && !stop_flag) {
        int k = epoll_wait(ep, evs, 256, 100);
        double t = now();
        for (int i = 0; i < k; i++) {
            struct cconn *c = evs[i].data.ptr;
            int r = step_conn(ep, c);
            if (r == 0) continue;
            if (r > 0) lat[(*nlat)++] = (t - (t_ref > 0 ? t_ref : c->t0)) * 1000.0;
            else fails++;
            drop_conn(ep, c);
            left--;
        }
        for (int i = 0; i < n; i++) {
            struct cconn *c = &cs[i];
            if (c->state != ST_FREE && t - c->t0 > CONN_TIMEOUT) { fails++; drop_conn(ep, c); left--; }
        }
    }
    for (int i = 0; i < n; i++) if (cs[i].state != ST_FREE) { fails++; drop_conn(ep, &cs[i]); }
    return fails;
}

static int run_seq(int port, int n)
{
    struct sockaddr_in a = loop_addr(port);
    int ep = epoll_create1(EPOLL_CLOEXEC), nlat = 0, fails = 0;
    double *lat = calloc(n > 0 ? n : 1, sizeof *lat), deadline = now() + 150;
    struct cconn c;
    if (!lat) die("calloc");
    for (int i = 0; i < n && !stop_flag; i++) {
        if (now() > deadline) { fails += n - i; break; }
        c.fd = -1;
        if (start_conn(ep, &c, &a) < 0) { fails++; continue; }
        fails += drive(ep, &c, 1, lat, &nlat, 0);
    }
    print_lat(lat, nlat, fails);
    return 0;
}

static int run_burst(int port, int n)
{
    struct sockaddr_in a = loop_addr(port);
    int ep = epoll_create1(EPOLL_CLOEXEC), nlat = 0, fails = 0, started = 0;
    struct cconn *cs = calloc(n, sizeof *cs);
    double *lat = calloc(n > 0 ? n : 1, sizeof *lat);
    if (!cs || !lat) die("calloc");
    double t0 = now();
    for (int i = 0; i < n; i++) {
        cs[i].fd = -1;
        if (start_conn(ep, &cs[i], &a) < 0) { fails++; cs[i].state = ST_FREE; }
        else started++;
    }
    fails += drive(ep, cs, n, lat, &nlat, t0);
    printf("total_ms: %.3f\n", (now() - t0) * 1000.0);
    print_lat(lat, nlat, fails);
    return 0;
}

/* ------------------------------------------------------------------ ping */
#define PING_LEN 32
#define PING_MAGIC 0x58504231u /* "XPB1" */
#define PING_WIN 64            /* pings unanswered per connection at most */

enum { PS_FREE, PS_CONNECTING, PS_UP, PS_CLOSED };

struct pconn {
    int fd, state, port, out;
    uint32_t idx;
    uint64_t sent;          /* pings sent */
    uint64_t rpos;          /* bytes of the sent stream the echo has matched so far */
    uint64_t lost, dup, corrupt; /* bytes */
    uint64_t skipped, late;
    int olen, rlen;
    unsigned char obuf[PING_WIN * PING_LEN];
    unsigned char rbuf[PING_LEN];
    double sendt[PING_WIN];
    double t0, last_echo;
    double before_ref, after_ref, before_kill, after_kill, max_rtt_post;
    double pause; /* the longest a ping waited on the kill: echo - max(sent, kill) */
    uint64_t probe;   /* the ping sent on it right after the kill, + 1 (0: none) */
    double probe_rtt; /* its round trip: this connection's stall, the kill's or the load's */
};

static int ping_anomalies; /* reported on stderr, the first 20 */

/* ping seq of connection idx: magic, idx, seq, 16 bytes derived from both */
static void ping_msg(unsigned char *m, uint32_t idx, uint64_t seq)
{
    uint32_t mg = PING_MAGIC;
    uint64_t x = (seq + 1) * 0x9E3779B97F4A7C15ull ^ (((uint64_t)idx << 32) | idx);
    memcpy(m, &mg, 4);
    memcpy(m + 4, &idx, 4);
    memcpy(m + 8, &seq, 8);
    for (int i = 16; i < PING_LEN; i++) {
        x ^= x >> 29;
        x *= 0xBF58476D1CE4E5B9ull;
        m[i] = (unsigned char)(x >> 56);
    }
}

/* bytes [off, off + n) of connection idx's sent stream */
static void ping_stream(uint32_t idx, uint64_t off, unsigned char *out, size_t n)
{
    unsigned char m[PING_LEN];
    uint64_t have = UINT64_MAX;
    for (size_t i = 0; i < n; i++) {
        uint64_t q = (off + i) / PING_LEN;
        if (q != have) { ping_msg(m, idx, q); have = q; }
        out[i] = m[(off + i) % PING_LEN];
    }
}

static int ping_flush(int ep, struct pconn *c)
{
    while (c->olen > 0) {
        ssize_t w = write(c->fd, c->obuf, c->olen);
        if (w < 0) {
            if (errno == EAGAIN) break;
            return -1;
        }
        memmove(c->obuf, c->obuf + w, c->olen - w);
        c->olen -= (int)w;
    }
    if ((c->olen > 0) != c->out) { /* re-register only on a change */
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (c->olen ? EPOLLOUT : 0), .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->out = c->olen > 0;
    }
    return 0;
}

static void ping_close(int ep, struct pconn *c, int *nclosed)
{
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    if (c->state == PS_UP) (*nclosed)++;
    c->state = c->state == PS_UP ? PS_CLOSED : PS_FREE;
}

static int ping_send(int ep, struct pconn *c, double t)
{
    if (c->sent - c->rpos / PING_LEN >= PING_WIN - 1 || c->olen + PING_LEN > (int)sizeof c->obuf) {
        c->skipped++;
        return 0;
    }
    ping_msg(c->obuf + c->olen, c->idx, c->sent);
    c->olen += PING_LEN;
    c->sendt[c->sent % PING_WIN] = t;
    c->sent++;
    return ping_flush(ep, c);
}

static void hex(char *out, const unsigned char *p, int n)
{
    for (int i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", p[i]);
}

/* 32 echoed bytes came back on c at time t: they should be the sent stream at rpos.
 * If not, find where in the sent stream they are (within +-PING_WIN pings): a shift
 * forward means bytes were lost, backward that bytes came twice; nowhere: corrupt. */
static void ping_frame(struct pconn *c, double t, double t_kill)
{
    unsigned char want[PING_LEN];
    uint64_t limit = c->sent * PING_LEN;
    long shift = 0;
    int found = 0;
    ping_stream(c->idx, c->rpos, want, PING_LEN);
    if (c->rpos + PING_LEN <= limit && memcmp(want, c->rbuf, PING_LEN) == 0) {
        found = 1;
    } else {
        for (long d = 1; d <= PING_WIN * PING_LEN && !found; d++) {
            for (int sg = 1; sg >= -1 && !found; sg -= 2) {
                long s = sg * d;
                if ((s < 0 && (uint64_t)(-s) > c->rpos) || c->rpos + s + PING_LEN > limit) continue;
                ping_stream(c->idx, c->rpos + s, want, PING_LEN);
                if (memcmp(want, c->rbuf, PING_LEN) == 0) { found = 1; shift = s; }
            }
        }
        if (ping_anomalies++ < 20) {
            char g[2 * PING_LEN + 1], e[2 * PING_LEN + 1];
            unsigned char w0[PING_LEN];
            ping_stream(c->idx, c->rpos, w0, PING_LEN);
            hex(g, c->rbuf, PING_LEN);
            hex(e, w0, PING_LEN);
            char what[64];
            if (!found) snprintf(what, sizeof what, "no match within +-%d bytes", PING_WIN * PING_LEN);
            else snprintf(what, sizeof what, "%s %ld bytes", shift > 0 ? "lost" : "duplicated", shift > 0 ? shift : -shift);
            fprintf(stderr, "ping: conn %u (port %d) at echoed byte %llu of %llu sent%s: %s; got %s want %s\n",
                    c->idx, c->port, (unsigned long long)c->rpos, (unsigned long long)limit,
                    t_kill > 0 ? " (after the kill)" : "", what, g, e);
        }
    }
    if (!found) { /* assume the bytes are in place but wrong */
        c->corrupt += PING_LEN;
        c->rpos += PING_LEN;
        return;
    }
    if (shift > 0) c->lost += (uint64_t)shift;
    if (shift < 0) c->dup += (uint64_t)(-shift);
    c->rpos += PING_LEN + shift;
    if (t_kill > 0 && shift == 0 && c->rpos % PING_LEN == 0) {
        double sent_at = c->sendt[(c->rpos / PING_LEN - 1) % PING_WIN];
        double rtt = t - sent_at;
        if (rtt > c->max_rtt_post) c->max_rtt_post = rtt;
        /* a ping sent before the kill waited from the kill on, not from its send */
        double waited = t - (sent_at > t_kill ? sent_at : t_kill);
        if (waited > c->pause) c->pause = waited;
    }
    if (c->probe && c->probe_rtt == 0 && shift == 0 && c->rpos >= c->probe * PING_LEN)
        c->probe_rtt = t - t_kill;
    c->last_echo = t;
    if (c->after_ref == 0 && c->before_ref > 0) c->after_ref = t;
    if (c->after_kill == 0 && c->before_kill > 0) c->after_kill = t;
}

static int ping_read(struct pconn *c, double t, double t_kill)
{
    unsigned char buf[4096];
    for (;;) {
        ssize_t r = read(c->fd, buf, sizeof buf);
        if (r == 0) return -1;
        if (r < 0) return errno == EAGAIN ? 0 : -1;
        for (ssize_t i = 0; i < r;) {
            int k = PING_LEN - c->rlen;
            if (k > r - i) k = (int)(r - i);
            memcpy(c->rbuf + c->rlen, buf + i, k);
            c->rlen += k;
            i += k;
            if (c->rlen == PING_LEN) {
                ping_frame(c, t, t_kill);
                c->rlen = 0;
            }
        }
        if (r < (ssize_t)sizeof buf) return 0; /* drained (level-triggered) */
    }
}

static int cmpd_desc_p99(double *v, int n, double *p99, double *mx)
{
    if (n == 0) return 0;
    qsort(v, n, sizeof *v, cmpd);
    int k = (int)(0.99 * n + 0.999999) - 1;
    *p99 = v[k < 0 ? 0 : k];
    *mx = v[n - 1];
    return n;
}

static int run_ping(int port, int n, double interval_ms, double warm, double post,
                    const char *ready, const char *killfile, const char *connfile)
{
    struct sockaddr_in a = loop_addr(port);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct pconn *cs = calloc(n > 0 ? n : 1, sizeof *cs);
    struct epoll_event evs[256];
    double P = interval_ms / 1000.0;
    int next = 0, inflight = 0, up = 0, fails = 0, echoed_once = 0, nclosed = 0;
    double t_start = now(), t_ready = 0, t_ref = 0, t_kill = 0, t_kill_at = 0, t_post_end = 0;
    double t_kill_wall = 0;
    double t_drain_end = 0, hard_end = t_start + 60 + warm + 1 + 30 + post + 10;
    long kill_pid = 0;
    int kill_err = 0, no_kill = 0;
    long sched_i = 0, sched_round = 0;
    if (!cs || ep < 0) die("ping setup");
    for (int i = 0; i < n; i++) { cs[i].fd = -1; cs[i].idx = (uint32_t)i; }

    while (!stop_flag && now() < hard_end) {
        double t = now();
        /* setup: at most 100 connections being opened at once */
        while (!t_ready && next < n && inflight < 100) {
            struct pconn *c = &cs[next++];
            int one = 1;
            c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (c->fd < 0) { fails++; continue; }
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            c->t0 = t;
            if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
                close(c->fd); c->fd = -1; fails++; continue;
            }
            c->state = PS_CONNECTING;
            struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
            inflight++;
        }
        if (!t_ready && ((next >= n && inflight == 0 && echoed_once + fails >= n) ||
                         t - t_start > 60)) {
            char tmp[4096];
            t_ready = t;
            t_ref = t + warm;
            t_kill_at = t_ref + 1.0;
            snprintf(tmp, sizeof tmp, "%s.tmp", ready);
            FILE *f = fopen(tmp, "w");
            if (!f) die("fopen");
            fprintf(f, "%d %d\n", echoed_once, n - echoed_once);
            fclose(f);
            rename(tmp, ready);
            fprintf(stderr, "ping: %d connections up (%d failed) in %.2f s\n", echoed_once,
                    n - echoed_once, t - t_start);
        }
        /* the schedule: connection i pings at t_ready + round*P + i*P/n */
        if (t_ready && !t_drain_end) {
            for (;;) {
                double due = t_ready + sched_round * P + sched_i * P / n;
                if (due > t) break;
                struct pconn *c = &cs[sched_i];
                /* a slot more than one interval late is dropped, not caught up: after
                 * a stall the load stays what it was instead of coming as a burst */
                if (t - due > P) c->late++;
                else if (c->state == PS_UP && ping_send(ep, c, t) < 0) ping_close(ep, c, &nclosed);
                if (++sched_i == n) { sched_i = 0; sched_round++; }
            }
        }
        if (t_ref && t >= t_ref && cs[0].before_ref == 0 && !t_kill) {
            for (int i = 0; i < n; i++) cs[i].before_ref = cs[i].last_echo > 0 ? cs[i].last_echo : -1;
        }
        if (t_kill_at && !t_kill && t >= t_kill_at) {
            FILE *f = fopen(killfile, "r");
            if (!strcmp(killfile, "-") || (!f && t > t_kill_at + 30)) {
                no_kill = 1;
                t_kill = t;
            } else if (f) {
                if (fscanf(f, "%ld", &kill_pid) != 1) kill_pid = 0;
                t_kill = now();
                t_kill_wall = wall_now();
                if (kill_pid > 1 && kill((pid_t)kill_pid, SIGKILL) < 0) kill_err = errno;
                if (kill_pid <= 1) { no_kill = 1; kill_err = EINVAL; }
            }
            if (f) fclose(f);
            if (t_kill) {
                for (int i = 0; i < n; i++) cs[i].before_kill = cs[i].last_echo > 0 ? cs[i].last_echo : -1;
                /* the probe: one ping on every connection at the kill, so that each has
                 * bytes waiting through the whole resumption, whatever its phase */
                for (int i = 0; i < n; i++) {
                    struct pconn *c = &cs[i];
                    if (c->state != PS_UP) continue;
                    uint64_t seq = c->sent;
                    if (ping_send(ep, c, t_kill) < 0) ping_close(ep, c, &nclosed);
                    else if (c->sent > seq) c->probe = c->sent;
                }
                t_post_end = t_kill + post;
            }
        }
        if (t_post_end && !t_drain_end && t >= t_post_end) {
            t_drain_end = t + 5; /* stop pinging; wait for what is in flight */
        }
        if (t_drain_end) {
            int waiting = 0;
            for (int i = 0; i < n; i++)
                if (cs[i].state == PS_UP && cs[i].rpos < cs[i].sent * PING_LEN) waiting++;
            if (!waiting || t >= t_drain_end) break;
        }
        int tmo = 5;
        if (t_ready && !t_drain_end) {
            double due = t_ready + sched_round * P + sched_i * P / n;
            double ms = (due - now()) * 1000.0;
            tmo = ms <= 0 ? 0 : ms < 5 ? (int)ms + 1 : 5;
        }
        int k = epoll_wait(ep, evs, 256, tmo);
        for (int i = 0; i < k; i++) {
            struct pconn *c = evs[i].data.ptr;
            t = now(); /* per event: a batch of 256 can take a while on a busy machine */
            if (c->state == PS_CONNECTING) {
                int err = 0;
                socklen_t l = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
                inflight--;
                if (err || (evs[i].events & (EPOLLERR | EPOLLHUP))) {
                    fails++; ping_close(ep, c, &nclosed); continue;
                }
                struct sockaddr_in la;
                socklen_t ll = sizeof la;
                getsockname(c->fd, (struct sockaddr *)&la, &ll);
                c->port = ntohs(la.sin_port);
                c->state = PS_UP;
                up++;
                struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                c->out = 0;
                if (ping_send(ep, c, t) < 0) { fails++; ping_close(ep, c, &nclosed); }
                continue;
            }
            if (c->state != PS_UP) continue;
            int had = c->rpos > 0;
            if ((evs[i].events & EPOLLOUT) && ping_flush(ep, c) < 0) { ping_close(ep, c, &nclosed); continue; }
            if ((evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) &&
                ping_read(c, t, t_kill) < 0) {
                ping_close(ep, c, &nclosed);
                continue;
            }
            if (!had && c->rpos > 0) echoed_once++;
        }
        if (!t_ready) { /* setup bound: 5 s per connection */
            for (int i = 0; i < next; i++) {
                struct pconn *c = &cs[i];
                if (c->state == PS_CONNECTING && t - c->t0 > CONN_TIMEOUT) {
                    inflight--; fails++; ping_close(ep, c, &nclosed);
                } else if (c->state == PS_UP && c->rpos == 0 && t - c->t0 > CONN_TIMEOUT) {
                    fails++; ping_close(ep, c, &nclosed); nclosed--;
                }
            }
        }
    }

    /* report */
    FILE *cf = fopen(connfile, "w");
    double *gk = calloc(n + 1, sizeof *gk), *gr = calloc(n + 1, sizeof *gr);
    double *kf = calloc(n + 1, sizeof *kf), *rt = calloc(n + 1, sizeof *rt);
    double *pz = calloc(n + 1, sizeof *pz);
    int ngk = 0, ngr = 0, nkf = 0, nrt = 0, npz = 0, survived = 0;
    uint64_t sent = 0, recvd = 0, lost = 0, dup = 0, corrupt = 0, missing = 0, skipped = 0, late = 0;
    if (!cf || !gk || !gr || !kf || !rt || !pz) die("report");
    for (int i = 0; i < n; i++) {
        struct pconn *c = &cs[i];
        if (c->port == 0) continue;
        double g_ref = c->after_ref > 0 && c->before_ref > 0 ? (c->after_ref - c->before_ref) * 1e3 : -1;
        double g_kill = c->after_kill > 0 && c->before_kill > 0 ? (c->after_kill - c->before_kill) * 1e3 : -1;
        double k_first = c->after_kill > 0 && t_kill > 0 ? (c->after_kill - t_kill) * 1e3 : -1;
        uint64_t miss = c->rpos < c->sent * PING_LEN ? c->sent * PING_LEN - c->rpos : 0;
        if (c->rlen > 0) { /* a last partial frame: its bytes came, if they are the right ones */
            unsigned char w[PING_LEN];
            ping_stream(c->idx, c->rpos, w, (size_t)c->rlen);
            if (memcmp(w, c->rbuf, (size_t)c->rlen) == 0) miss -= miss < (uint64_t)c->rlen ? miss : (uint64_t)c->rlen;
            else c->corrupt += (uint64_t)c->rlen;
        }
        double pause = t_kill > 0 && c->after_kill > 0 ? c->pause * 1e3 : -1;
        double probe = c->probe_rtt > 0 ? c->probe_rtt * 1e3 : -1;
        fprintf(cf, "%d %d %.3f %.3f %.3f %.3f %llu %llu %llu %llu %llu %d %.3f %.3f\n", i, c->port, g_ref,
                g_kill, k_first, c->max_rtt_post * 1e3, (unsigned long long)c->sent,
                (unsigned long long)(c->rpos / PING_LEN), (unsigned long long)(c->lost + miss),
                (unsigned long long)c->dup, (unsigned long long)c->corrupt, c->state == PS_CLOSED,
                pause, probe);
        sent += c->sent; recvd += c->rpos / PING_LEN; lost += c->lost; dup += c->dup;
        corrupt += c->corrupt; missing += miss; skipped += c->skipped; late += c->late;
        if (g_ref >= 0) gr[ngr++] = g_ref;
        if (g_kill >= 0) gk[ngk++] = g_kill;
        if (k_first >= 0) kf[nkf++] = k_first;
        if (t_kill > 0 && c->after_kill > 0) rt[nrt++] = c->max_rtt_post * 1e3;
        if (pause >= 0) pz[npz++] = pause;
        if (c->state == PS_UP && c->after_kill > 0 && miss == 0 && c->lost == 0 && c->dup == 0 &&
            c->corrupt == 0)
            survived++;
    }
    fclose(cf);
    double p99, mx;
    printf("conns: %d\nsetup_fails: %d\n", echoed_once, n - echoed_once);
    printf("kill_pid: %ld\nkill_errno: %d\nkilled: %d\n", kill_pid, kill_err, !no_kill && kill_pid > 1 && !kill_err);
    if (t_kill > 0) /* on the wall clock, to set beside the relay's log */
        printf("kill_wall: %.6f\n", t_kill_wall);
    printf("survived: %d\nclosed: %d\n", survived, nclosed);
    printf("pings_sent: %llu\npings_echoed: %llu\npings_skipped: %llu\npings_late: %llu\n",
           (unsigned long long)sent, (unsigned long long)recvd, (unsigned long long)skipped,
           (unsigned long long)late);
    printf("lost_bytes: %llu\ndup_bytes: %llu\ncorrupt_bytes: %llu\nanomalies: %d\n",
           (unsigned long long)(lost + missing), (unsigned long long)dup, (unsigned long long)corrupt,
           ping_anomalies);
    if (cmpd_desc_p99(gr, ngr, &p99, &mx)) printf("gap_ref_p99_ms: %.3f\ngap_ref_max_ms: %.3f\n", p99, mx);
    if (cmpd_desc_p99(gk, ngk, &p99, &mx)) printf("gap_kill_p99_ms: %.3f\ngap_kill_max_ms: %.3f\n", p99, mx);
    if (cmpd_desc_p99(kf, nkf, &p99, &mx)) printf("kill_first_p99_ms: %.3f\nkill_first_max_ms: %.3f\n", p99, mx);
    if (cmpd_desc_p99(rt, nrt, &p99, &mx)) printf("rtt_post_p99_ms: %.3f\nrtt_post_max_ms: %.3f\n", p99, mx);
    if (npz) {
        qsort(pz, npz, sizeof *pz, cmpd);
        printf("pause_p50_ms: %.3f\n", pz[(npz - 1) / 2]);
    }
    if (cmpd_desc_p99(pz, npz, &p99, &mx)) printf("pause_p99_ms: %.3f\npause_max_ms: %.3f\n", p99, mx);
    printf("no_echo_after_kill: %d\n", echoed_once - nkf);
    for (int i = 0; i < n; i++) if (cs[i].fd >= 0) close(cs[i].fd);
    return 0;
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 4 && !strcmp(argv[1], "echo"))
        return run_echo(atoi(argv[2]), atof(argv[3]));
    if (argc >= 5 && !strcmp(argv[1], "load"))
        return run_load(atoi(argv[2]), atoi(argv[3]), atof(argv[4]));
    if (argc >= 6 && !strcmp(argv[1], "idle"))
        return run_idle(atoi(argv[2]), atoi(argv[3]), argv[4], atof(argv[5]),
                        argc > 6 ? atoi(argv[6]) : 100);
    if (argc >= 4 && !strcmp(argv[1], "seq"))
        return run_seq(atoi(argv[2]), atoi(argv[3]));
    if (argc >= 4 && !strcmp(argv[1], "burst"))
        return run_burst(atoi(argv[2]), atoi(argv[3]));
    if (argc >= 10 && !strcmp(argv[1], "ping"))
        return run_ping(atoi(argv[2]), atoi(argv[3]), atof(argv[4]), atof(argv[5]), atof(argv[6]),
                        argv[7], argv[8], argv[9]);
    fprintf(stderr, "usage: benchtool echo PORT MAX_SECS | load PORT CONC SECS | "
                    "idle PORT N READYFILE MAX_SECS [PARALLEL] | seq PORT N | burst PORT N | "
                    "ping PORT N INTERVAL_MS WARM_SECS POST_SECS READYFILE KILLFILE CONNFILE\n");
    return 2;
}
