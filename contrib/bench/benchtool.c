/*
 * benchtool.c - load generator and echo server for contrib/bench/run.sh.
 * Loopback only (127.0.0.1). Every mode has a hard time limit.
 *
 *   benchtool echo PORT MAX_SECS
 *       epoll echo server on 127.0.0.1:PORT; exits after MAX_SECS or on SIGTERM.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MSG_LEN 32
#define CONN_TIMEOUT 5.0 /* seconds, per connection in load/idle */

static volatile sig_atomic_t stop_flag;
static void on_stop(int sig) { (void)sig; stop_flag = 1; }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct sockaddr_in loop_addr(int port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static void die(const char *m)
{
    perror(m);
    exit(2);
}

/* ------------------------------------------------------------------ echo */
struct econn {
    int fd;
    int len, off; /* pending bytes to write back */
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
            }
            if (!dead) {
                struct epoll_event e2 = {.data.ptr = c};
                e2.events = c->len > c->off ? EPOLLOUT : EPOLLIN | EPOLLRDHUP;
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e2);
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
    fprintf(stderr, "usage: benchtool echo PORT MAX_SECS | load PORT CONC SECS | "
                    "idle PORT N READYFILE MAX_SECS [PARALLEL] | seq PORT N | burst PORT N\n");
    return 2;
}
