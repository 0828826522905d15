/*
 * connect.c: `xray connect OFFICIAL:PORT` - stdin to the server, the
 * server to stdout, through the agent: a direct connection when the
 * server is in the agent's own network, else an overlay link to the
 * agent's relay point, whose certificate must be the agent's (the key
 * CONNECT_OK names).  connect returns only after the end-to-end ACK.
 * With --udp each read from stdin is one datagram, and each datagram from
 * the server one write to stdout.
 */
#include "core/xrayd.h"
#include "agent/policy.h"
#include "cli/connect.h"
#include "cli/listen.h"
#include "lib/client.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void xr_connect_usage(FILE *out)
{
    fprintf(out, "usage: xray connect OFFICIAL:PORT [--agent HOST:PORT] [--agent-name NAME]\n"
                 "                    [--cert FILE --key FILE --ca FILE] [--timeout MS]\n"
                 "                    [--udp [--idle MS]]\n"
                 "\n"
                 "Connect to a server's official address through the XRAY agent and copy\n"
                 "stdin to it and its answers to stdout.  What no flag gives comes from\n"
                 "$XRAY_AGENT, $XRAY_AGENT_NAME, $XRAY_CERT, $XRAY_KEY, $XRAY_CA, then from\n"
                 "the client file ($XRAY_CONFIG, else ~/.config/xray/client.yaml, else\n"
                 "/etc/xray/client.yaml), then the agent from /etc/xray/agent.\n"
                 "\n"
                 "  --timeout  how long the agent, the connection and each read of it may\n"
                 "             keep us waiting, in ms (10000)\n"
                 "  --udp   to a UDP server: each read from stdin is a datagram; after the end\n"
                 "          of stdin, wait for answers until none came for --idle ms (1000)\n");
}

static int64_t xr_connect_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Datagrams both ways until stdin has ended and the server has been
 * quiet for idle_ms (or, relayed, the link ended). */
static int xr_connect_udp(xr_link_t *link, int fd, int idle_ms)
{
    static unsigned char buf[XR_UDP_MAX];
    int in_open = 1;
    int64_t quiet_since = xr_connect_now();
    for (;;) {
        struct pollfd p[2] = {{link ? xr_link_fd(link) : fd, POLLIN, 0},
                              {in_open ? 0 : -1, POLLIN, 0}};
        int ready = link != NULL && xr_link_pending(link) > 0;
        int n = ready ? 1 : poll(p, 2, 100);
        if (n < 0 && errno != EINTR)
            return -1;
        if (ready || (n > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR)))) {
            size_t len = 0;
            if (link != NULL) {
                int r = xr_link_recv_dgram(link, buf, sizeof(buf), &len);
                if (r <= 0)
                    return r;
            } else {
                ssize_t r = recv(fd, buf, sizeof(buf), 0);
                if (r < 0 && errno != ECONNREFUSED && errno != EINTR)
                    return -1;
                len = r < 0 ? 0 : (size_t) r;
                if (r < 0)
                    continue; /* nothing listens there (yet): an ICMP error */
            }
            if (write(1, buf, len) != (ssize_t) len)
                return -1;
            quiet_since = xr_connect_now();
        }
        if (in_open && n > 0 && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t r = read(0, buf, sizeof(buf));
            if (r <= 0) {
                in_open = 0;
                quiet_since = xr_connect_now();
            } else if (link != NULL ? xr_link_send_dgram(link, buf, (size_t) r) < 0
                                    : send(fd, buf, (size_t) r, 0) < 0 && errno != ECONNREFUSED) {
                return -1;
            }
        }
        if (!in_open && xr_connect_now() - quiet_since >= idle_ms)
            return 0;
    }
}

int xr_connect_main(int argc, char **argv)
{
    xr_client_conf_t cf = {.timeout_ms = 10000};
    const char *dst_s = NULL, *idle_s = "1000", *timeout_s = "10000";
    int udp = 0;
    char err[400];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = xr_client_conf_flag(&cf, a);
        if (slot == NULL)
            slot = strcmp(a, "--idle") == 0      ? &idle_s
                   : strcmp(a, "--timeout") == 0 ? &timeout_s
                                                 : NULL;
        if (slot != NULL && i + 1 < argc) {
            *slot = argv[++i];
        } else if (strcmp(a, "--udp") == 0 || strcmp(a, "-u") == 0) {
            udp = 1;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            xr_connect_usage(stdout);
            return 0;
        } else if (a[0] != '-' && dst_s == NULL) {
            dst_s = a;
        } else {
            fprintf(stderr, "xray connect: unexpected argument \"%s\"\n", a);
            xr_connect_usage(stderr);
            return 2;
        }
    }
    xr_paddr_t dst;
    if (dst_s == NULL || xr_paddr_parse(dst_s, &dst) < 0) {
        fprintf(stderr, "xray connect: give the server's official ADDRESS:PORT\n");
        return 2;
    }
    char *end;
    long idle_ms = strtol(idle_s, &end, 10);
    if (*end != '\0' || idle_ms < 0 || idle_ms > 3600000) {
        fprintf(stderr, "xray connect: --idle takes milliseconds (0-3600000)\n");
        return 2;
    }
    long timeout_ms = strtol(timeout_s, &end, 10);
    if (*end != '\0' || timeout_ms < 100 || timeout_ms > 3600000) {
        fprintf(stderr, "xray connect: --timeout takes milliseconds (100-3600000)\n");
        return 2;
    }
    cf.timeout_ms = (int) timeout_ms;
    static xr_client_conf_buf_t found;
    if (xr_client_conf_fill(&cf, &found, err, sizeof(err)) < 0) {
        fprintf(stderr, "xray connect: %s\n", err);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    xr_client_t *c = xr_client_new(&cf, err, sizeof(err));
    if (c == NULL) {
        fprintf(stderr, "xray connect: %s\n", err);
        return 1;
    }
    int perr = 0, fd = -1, rc = 1;
    xr_link_t *link = NULL;
    /* The last run's sessions with this agent: this one resumes them. */
    char sessions[4096];
    int keep = xr_client_sessions_path(&cf, sessions, sizeof(sessions)) == 0;
    if (keep)
        xr_client_sessions_read(c, sessions);
    if (xr_client_open(c, &perr, err, sizeof(err)) < 0 ||
        xr_client_dial_proto(c, udp ? XR_PROTO_UDP : XR_PROTO_TCP, &dst, &link, &fd, &perr, err,
                             sizeof(err)) < 0) {
        fprintf(stderr, "xray connect: %s\n", err);
        xr_client_free(c);
        return 1;
    }
    fprintf(stderr, "xray connect: connected to %s (%s)\n", dst_s,
            link ? "relayed through the agents" : "directly, same network");
    if (keep)
        xr_client_sessions_write(c, sessions);
    /* The control session is not needed any more. */
    xr_client_close(c);
    if (udp)
        rc = xr_connect_udp(link, fd, (int) idle_ms) == 0 ? 0 : 1;
    else
        rc = xr_link_pump(link, fd, 0, 1, 0, NULL, NULL) == 0 ? 0 : 1;
    if (rc != 0)
        fprintf(stderr, "xray connect: the connection to %s ended on an error: %s\n", dst_s,
                errno ? strerror(errno) : "a bad record");
    if (link)
        xr_link_close(link);
    if (fd >= 0)
        close(fd);
    xr_client_free(c);
    return rc;
}
