/*
 * forward.c: `xray forward [ADDR:]PORT OFFICIAL:PORT` - a local port whose
 * every connection goes on to a server's official address through the
 * XRAY agents, like `ssh -L`: for programs that cannot take libxray
 * (static binaries, setuid programs) and for one-off use with curl or a
 * browser.  A thread per connection, not a process: the threads share
 * one control connection (carrier.c) and each has its own link, whose TLS
 * resumes; bytes are copied both ways until both directions have ended.
 */
#include "core/xrayd.h"
#include "agent/policy.h"
#include "cli/carrier.h"
#include "cli/forward.h"
#include "lib/client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define XR_FORWARD_MAX_DEFAULT 256

static void xr_forward_usage(FILE *out)
{
    fprintf(out, "usage: xray forward [ADDR:]PORT OFFICIAL:PORT [--max N] [--agent HOST:PORT]\n"
                 "                    [--agent-name NAME] [--cert FILE --key FILE --ca FILE]\n"
                 "\n"
                 "Listen on ADDR:PORT (ADDR 127.0.0.1 unless given) and carry every connection\n"
                 "to the server at OFFICIAL:PORT through the XRAY agent, like ssh -L.  The\n"
                 "connections share one control session; each has its own link.  --max\n"
                 "(256) connections at once, more are refused.  Agent and certificates as for\n"
                 "'xray connect' (flags, $XRAY_*, the client file).\n");
}

/* What every connection's thread reads. */
typedef struct {
    xr_client_conf_t cf;
    xr_paddr_t dst;
    const char *dst_s;
    int max;
} xr_forward_t;

static void xr_forward_conn(int fd, const char *peer, void *arg)
{
    xr_forward_t *f = arg;
    char err[400];
    int eno = 0, sock = -1;
    xr_link_t *link = NULL;
    if (xr_carrier_dial(&f->dst, &link, &sock, &eno, err, sizeof(err)) < 0) {
        fprintf(stderr, "xray forward: %s: cannot reach %s: %s\n", peer, f->dst_s, err);
    } else {
        fprintf(stderr, "xray forward: %s: connected to %s (%s)\n", peer, f->dst_s,
                link ? "relayed through the agents" : "directly");
        if (xr_link_pump(link, sock, fd, fd, 1, NULL, NULL) < 0)
            fprintf(stderr, "xray forward: %s: ended on an error: %s\n", peer, strerror(errno));
    }
    if (link != NULL)
        xr_link_close(link);
    if (sock >= 0)
        close(sock);
}

int xr_forward_main(int argc, char **argv)
{
    static xr_forward_t f = {.cf = {.timeout_ms = 10000}, .max = XR_FORWARD_MAX_DEFAULT};
    const char *local_s = NULL, *max_s = NULL;
    char err[400];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = xr_client_conf_flag(&f.cf, a);
        if (slot == NULL)
            slot = strcmp(a, "--max") == 0 ? &max_s : NULL;
        if (slot != NULL && i + 1 < argc) {
            *slot = argv[++i];
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            xr_forward_usage(stdout);
            return 0;
        } else if (a[0] != '-' && local_s == NULL) {
            local_s = a;
        } else if (a[0] != '-' && f.dst_s == NULL) {
            f.dst_s = a;
        } else {
            fprintf(stderr, "xray forward: unexpected argument \"%s\"\n", a);
            xr_forward_usage(stderr);
            return 2;
        }
    }
    if (local_s == NULL || f.dst_s == NULL || xr_paddr_parse(f.dst_s, &f.dst) < 0) {
        fprintf(stderr, "xray forward: give the local [ADDR:]PORT and the server's official "
                        "ADDRESS:PORT\n");
        return 2;
    }
    if (max_s != NULL) {
        char *end;
        long m = strtol(max_s, &end, 10);
        if (*end != '\0' || m < 1 || m > 10000) {
            fprintf(stderr, "xray forward: --max takes 1-10000 connections\n");
            return 2;
        }
        f.max = (int) m;
    }
    static xr_client_conf_buf_t found;
    if (xr_client_conf_fill(&f.cf, &found, err, sizeof(err)) < 0) {
        fprintf(stderr, "xray forward: %s\n", err);
        return 2;
    }
    /* Certificates that do not load fail now, not at the first client;
     * the sessions an earlier `xray connect` or forward left are resumed. */
    if (xr_carrier_init(&f.cf, err, sizeof(err)) < 0) {
        fprintf(stderr, "xray forward: %s\n", err);
        return 1;
    }
    int lfd = xr_carrier_listen(local_s, err, sizeof(err));
    if (lfd < 0) {
        fprintf(stderr, "xray forward: %s\n", err);
        return 1;
    }
    fprintf(stderr, "xray forward: listening on %s for %s\n", local_s, f.dst_s);
    return xr_carrier_accept_loop(lfd, f.max, "xray forward", xr_forward_conn, &f);
}
