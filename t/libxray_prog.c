/*
 * libxray_prog.c: a program written against the XRAY socket API
 * (xray.h), for t/test_68_libxray.py.  Built by the test with the
 * installed-style flags: -I src/lib, objs/libxray.a.
 *
 *   libxray_prog server ADDR PORT
 *       bind and xray_listen; print "official ADDR:PORT" at start and at
 *       every change (xray_getsockname); serve each connection in a
 *       forked child (the accepted socket crosses fork): its first line
 *       back is "peer ADDR" (xray_getpeername), then an echo.
 *   libxray_prog client ADDR PORT
 *       blocking connect, getpeername, echo; dup2 and the copy; fork with
 *       the connected socket inherited; "ok ..." for each.
 *   libxray_prog burst ADDR PORT N
 *       N non-blocking connects at once: every one must say EINPROGRESS
 *       before any is waited for; half complete through poll, half
 *       through select; each echoes a line.  "burst K of N".
 *   libxray_prog pending ADDR PORT MS
 *       a non-blocking connect must stay unwritable for MS (the far side
 *       is stopped by the test), print "pending", then complete within
 *       60 s: "connected" (SO_ERROR 0) and an echo, or "failed ERRNO".
 */
#include "xray.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what)
{
    fprintf(stderr, "libxray_prog: %s: %s\n", what, xray_strerror(errno));
    exit(1);
}

static struct sockaddr_in addr_of(const char *ip, const char *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t) atoi(port))};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        fprintf(stderr, "libxray_prog: bad address %s\n", ip);
        exit(2);
    }
    return a;
}

static const char *fmt(const struct sockaddr_in *a, char *buf, size_t n)
{
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
    snprintf(buf, n, "%s:%u", ip, ntohs(a->sin_port));
    return buf;
}

/* Write a line and read it back (the server echoes). */
static int echo(int fd, const char *line)
{
    char buf[256];
    size_t n = strlen(line), have = 0;
    if (xray_write(fd, line, n) != (ssize_t) n)
        return -1;
    while (have < n) {
        ssize_t r = xray_read(fd, buf + have, n - have);
        if (r <= 0)
            return -1;
        have += (size_t) r;
    }
    return memcmp(buf, line, n) == 0 ? 0 : -1;
}

/* The server's first line: "peer ADDR\n". */
static int read_peer_line(int fd, char *out, size_t n)
{
    size_t have = 0;
    while (have + 1 < n) {
        if (xray_read(fd, out + have, 1) != 1)
            return -1;
        if (out[have++] == '\n')
            break;
    }
    out[have] = '\0';
    return 0;
}

static int server(const char *ip, const char *port)
{
    struct sockaddr_in a = addr_of(ip, port), o;
    char s[64], last[64] = "";
    int one = 1, lfd = xray_socket(AF_INET, SOCK_STREAM, 0);
    xray_setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (lfd < 0 || xray_bind(lfd, (struct sockaddr *) &a, sizeof(a)) != 0 ||
        xray_listen(lfd, 512) != 0)
        die("listen");
    signal(SIGCHLD, SIG_IGN);
    for (;;) {
        socklen_t ol = sizeof(o);
        if (xray_getsockname(lfd, (struct sockaddr *) &o, &ol) == 0 &&
            strcmp(fmt(&o, s, sizeof(s)), last) != 0) {
            printf("official %s\n", s);
            fflush(stdout);
            strcpy(last, s);
        }
        struct pollfd p = {lfd, POLLIN, 0};
        if (xray_poll(&p, 1, 200) <= 0)
            continue;
        struct sockaddr_in peer;
        socklen_t pl = sizeof(peer);
        int c = xray_accept(lfd, (struct sockaddr *) &peer, &pl);
        if (c < 0)
            continue;
        pid_t pid = xray_fork();
        if (pid == 0) {
            char line[128], buf[16384];
            struct sockaddr_in gp;
            socklen_t gl = sizeof(gp);
            xray_close(lfd);
            if (xray_getpeername(c, (struct sockaddr *) &gp, &gl) != 0 ||
                gp.sin_addr.s_addr != peer.sin_addr.s_addr)
                _exit(3);
            int n = snprintf(line, sizeof(line), "peer %s\n", fmt(&gp, s, sizeof(s)));
            xray_write(c, line, (size_t) n);
            ssize_t r;
            while ((r = xray_read(c, buf, sizeof(buf))) > 0)
                if (xray_write(c, buf, (size_t) r) != r)
                    break;
            _exit(0);
        }
        xray_close(c);
    }
}

static int connect_to(const struct sockaddr_in *a, char *peer_line, size_t n)
{
    int fd = xray_socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || xray_connect(fd, (const struct sockaddr *) a, sizeof(*a)) != 0)
        die("connect");
    if (read_peer_line(fd, peer_line, n) != 0)
        die("the server's first line");
    return fd;
}

static int client(const char *ip, const char *port)
{
    struct sockaddr_in a = addr_of(ip, port), g;
    char line[128], s[64];
    int fd = connect_to(&a, line, sizeof(line));
    socklen_t gl = sizeof(g);
    if (xray_getpeername(fd, (struct sockaddr *) &g, &gl) != 0 ||
        g.sin_addr.s_addr != a.sin_addr.s_addr || g.sin_port != a.sin_port)
        die("getpeername is not the official address");
    if (echo(fd, "blocking connect\n") != 0)
        die("echo");
    printf("ok blocking %s %s", fmt(&g, s, sizeof(s)), line);
    /* dup2: the copy is the connection, with its addresses */
    if (xray_dup2(fd, 100) != 100 || xray_close(fd) != 0)
        die("dup2");
    gl = sizeof(g);
    if (xray_getpeername(100, (struct sockaddr *) &g, &gl) != 0 ||
        g.sin_addr.s_addr != a.sin_addr.s_addr || echo(100, "after dup2\n") != 0)
        die("the dup2 copy");
    printf("ok dup2\n");
    /* fork: the child talks on the inherited socket, then the parent */
    fflush(stdout);
    pid_t pid = xray_fork();
    if (pid == 0)
        _exit(echo(100, "from the child\n") == 0 ? 0 : 1);
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        die("the child's echo");
    if (echo(100, "from the parent\n") != 0)
        die("the parent's echo after fork");
    printf("ok fork\n");
    xray_close(100);
    return 0;
}

static int burst(const char *ip, const char *port, int n)
{
    struct sockaddr_in a = addr_of(ip, port);
    int *fds = calloc((size_t) n, sizeof(int)), *done = calloc((size_t) n, sizeof(int));
    int inprogress = 0, ok = 0;
    for (int i = 0; i < n; i++) {
        fds[i] = xray_socket(AF_INET, SOCK_STREAM, 0);
        xray_fcntl(fds[i], F_SETFL, xray_fcntl(fds[i], F_GETFL) | O_NONBLOCK);
        if (xray_connect(fds[i], (struct sockaddr *) &a, sizeof(a)) == 0)
            done[i] = 1;
        else if (errno == EINPROGRESS)
            inprogress++;
        else
            done[i] = -1;
    }
    printf("in progress %d of %d\n", inprogress, n);
    for (int round = 0; round < 600; round++) { /* 60 s */
        int left = 0;
        struct pollfd *p = calloc((size_t) n, sizeof(*p));
        fd_set w;
        FD_ZERO(&w);
        int maxfd = -1;
        for (int i = 0; i < n; i++) {
            p[i].fd = -1;
            if (done[i] != 0)
                continue;
            left++;
            if (i % 2 == 0) {
                p[i].fd = fds[i];
                p[i].events = POLLOUT;
            } else if (fds[i] < FD_SETSIZE) {
                FD_SET(fds[i], &w);
                if (fds[i] > maxfd)
                    maxfd = fds[i];
            } else {
                p[i].fd = fds[i];
                p[i].events = POLLOUT;
            }
        }
        if (left == 0) {
            free(p);
            break;
        }
        struct timeval tv = {0, 0};
        if (maxfd >= 0)
            xray_select(maxfd + 1, NULL, &w, NULL, &tv);
        xray_poll(p, (nfds_t) n, 100);
        for (int i = 0; i < n; i++) {
            int ready = (p[i].fd >= 0 && p[i].revents) || (p[i].fd < 0 && done[i] == 0 &&
                                                           fds[i] < FD_SETSIZE && FD_ISSET(fds[i], &w));
            if (!ready)
                continue;
            int err = 0;
            socklen_t el = sizeof(err);
            xray_getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &err, &el);
            done[i] = err == 0 ? 1 : -1;
            if (err != 0)
                fprintf(stderr, "connect %d: %s\n", i, xray_strerror(err));
        }
        free(p);
    }
    for (int i = 0; i < n; i++) {
        char line[128], msg[64];
        if (done[i] != 1)
            continue;
        xray_fcntl(fds[i], F_SETFL, xray_fcntl(fds[i], F_GETFL) & ~O_NONBLOCK);
        snprintf(msg, sizeof(msg), "connection %d\n", i);
        if (read_peer_line(fds[i], line, sizeof(line)) == 0 && echo(fds[i], msg) == 0)
            ok++;
        xray_close(fds[i]);
    }
    printf("burst %d of %d\n", ok, n);
    return ok == n ? 0 : 1;
}

static int pending(const char *ip, const char *port, int ms)
{
    struct sockaddr_in a = addr_of(ip, port);
    int fd = xray_socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (xray_connect(fd, (struct sockaddr *) &a, sizeof(a)) == 0 || errno != EINPROGRESS)
        die("a non-blocking connect that is not in progress");
    struct pollfd p = {fd, POLLOUT, 0};
    if (xray_poll(&p, 1, ms) != 0) {
        fprintf(stderr, "libxray_prog: writable before the far side answered (revents %#x)\n",
                p.revents);
        return 1;
    }
    printf("pending\n");
    fflush(stdout);
    if (xray_poll(&p, 1, 60000) != 1)
        die("never completed");
    int err = 0;
    socklen_t el = sizeof(err);
    xray_getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err != 0) {
        printf("failed %d %s\n", err, xray_strerror(err));
        return 1;
    }
    char line[128];
    xray_fcntl(fd, F_SETFL, 0);
    if (read_peer_line(fd, line, sizeof(line)) != 0 || echo(fd, "late\n") != 0)
        die("echo after a late completion");
    printf("connected %s", line);
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && strcmp(argv[1], "server") == 0)
        return server(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "client") == 0)
        return client(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "burst") == 0)
        return burst(argv[2], argv[3], atoi(argv[4]));
    if (argc == 5 && strcmp(argv[1], "pending") == 0)
        return pending(argv[2], argv[3], atoi(argv[4]));
    fprintf(stderr, "usage: libxray_prog server|client|burst|pending ...\n");
    return 2;
}
