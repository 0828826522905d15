/*
 * connect.c: `xray connect OFFICIAL:PORT` - stdin to the server, the
 * server to stdout, through the agent: a direct connection when the
 * server is in the agent's own network, else an overlay link to the
 * agent's relay point, whose certificate must be the agent's (the key
 * CONNECT_OK names).  connect returns only after the end-to-end ACK.
 */
#include "core/xrayd.h"
#include "agent/policy.h"
#include "cli/connect.h"
#include "cli/listen.h"
#include "lib/client.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void xr_connect_usage(FILE *out)
{
    fprintf(out, "usage: xray connect OFFICIAL:PORT [--agent HOST:PORT] [--agent-name NAME]\n"
                 "                    --cert FILE --key FILE --ca FILE\n"
                 "\n"
                 "Connect to a server's official address through the XRAY agent and copy\n"
                 "stdin to it and its answers to stdout.  The agent is --agent, else\n"
                 "$XRAY_AGENT, else the first line of /etc/xray/agent.\n");
}

int xr_connect_main(int argc, char **argv)
{
    xr_client_conf_t cf = {.timeout_ms = 10000};
    const char *dst_s = NULL;
    char agent_buf[256], err[400];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = strcmp(a, "--agent") == 0        ? &cf.agent
                            : strcmp(a, "--agent-name") == 0 ? &cf.agent_name
                            : strcmp(a, "--cert") == 0       ? &cf.cert
                            : strcmp(a, "--key") == 0        ? &cf.key
                            : strcmp(a, "--ca") == 0         ? &cf.ca
                                                             : NULL;
        if (slot != NULL && i + 1 < argc) {
            *slot = argv[++i];
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
    if (cf.agent == NULL)
        cf.agent = xr_listen_default_agent(agent_buf, sizeof(agent_buf));
    if (cf.agent == NULL || cf.cert == NULL || cf.key == NULL || cf.ca == NULL) {
        fprintf(stderr, "xray connect: needs --cert, --key, --ca and an agent (--agent, "
                        "$XRAY_AGENT or /etc/xray/agent)\n");
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
    if (xr_client_open(c, &perr, err, sizeof(err)) < 0 ||
        xr_client_dial(c, &dst, &link, &fd, &perr, err, sizeof(err)) < 0) {
        fprintf(stderr, "xray connect: %s\n", err);
        xr_client_free(c);
        return 1;
    }
    fprintf(stderr, "xray connect: connected to %s (%s)\n", dst_s,
            link ? "relayed through the agents" : "directly, same network");
    /* The control session is not needed any more. */
    xr_client_close(c);
    rc = xr_link_pump(link, fd, 0, 1, 0, NULL, NULL) == 0 ? 0 : 1;
    if (link)
        xr_link_close(link);
    if (fd >= 0)
        close(fd);
    xr_client_free(c);
    return rc;
}
