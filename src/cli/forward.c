/*
 * forward.c: `xray forward [ADDR:]PORT OFFICIAL:PORT` - a local port whose
 * every connection goes on to a server's official address through the
 * XRAY agents, like `ssh -L`: for programs that cannot take libxray
 * (static binaries, setuid programs) and for one-off use with curl or a
 * browser.  A thread per connection, not a process: each opens its own
 * control session and link, as `xray connect` does but resuming the TLS
 * sessions of the connection before, and copies bytes both ways until
 * both directions have ended.
 */
#include "core/xrayd.h"
#include "agent/policy.h"
#include "cli/forward.h"
#include "lib/client.h"

#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define XR_FORWARD_MAX_DEFAULT 256

static void xr_forward_usage(FILE *out)
{
    fprintf(out, "usage: xray forward [ADDR:]PORT OFFICIAL:PORT [--max N] [--agent HOST:PORT]\n"
                 "                    [--agent-name NAME] [--cert FILE --key FILE --ca FILE]\n"
                 "\n"
                 "Listen on ADDR:PORT (ADDR 127.0.0.1 unless given) and carry every connection\n"
                 "to the server at OFFICIAL:PORT through the XRAY agent, like ssh -L.  Each\n"
                 "connection has a thread, its own control session and its own link; --max\n"
                 "(256) connections at once, more are refused.  Agent and certificates as for\n"
                 "'xray connect' (flags, $XRAY_*, the client file).\n");
}

/* What every connection's thread shares (read only, but the count). */
typedef struct {
    xr_client_conf_t cf;
    xr_paddr_t dst;
    const char *dst_s;
    int max;
    atomic_int active;
    /* The last connection's TLS sessions with the agent: the next one
     * resumes them instead of two full handshakes. */
    pthread_mutex_t lock;
    unsigned char sessions[8192];
    size_t nsessions;
} xr_forward_t;

typedef struct {
    xr_forward_t *f;
    int fd;
    char peer[80];
} xr_forward_conn_t;

static void *xr_forward_conn(void *arg)
{
    xr_forward_conn_t *fc = arg;
    xr_forward_t *f = fc->f;
    char err[400];
    int perr = 0, sock = -1;
    xr_link_t *link = NULL;
    xr_client_t *c = xr_client_new(&f->cf, err, sizeof(err));
    if (c != NULL) {
        pthread_mutex_lock(&f->lock);
        xr_client_sessions_load(c, f->sessions, f->nsessions);
        pthread_mutex_unlock(&f->lock);
    }
    if (c == NULL || xr_client_open(c, &perr, err, sizeof(err)) < 0 ||
        xr_client_dial(c, &f->dst, &link, &sock, &perr, err, sizeof(err)) < 0) {
        fprintf(stderr, "xray forward: %s: cannot reach %s: %s\n", fc->peer, f->dst_s, err);
    } else {
        fprintf(stderr, "xray forward: %s: connected to %s (%s)\n", fc->peer, f->dst_s,
                link ? "relayed through the agents" : "directly, same network");
        unsigned char sessions[sizeof(f->sessions)];
        size_t n = xr_client_sessions_save(c, sessions, sizeof(sessions));
        if (n > 0) {
            pthread_mutex_lock(&f->lock);
            memcpy(f->sessions, sessions, n);
            f->nsessions = n;
            pthread_mutex_unlock(&f->lock);
        }
        xr_client_close(c); /* the control session is not needed any more */
        if (xr_link_pump(link, sock, fc->fd, fc->fd, 1, NULL, NULL) < 0)
            fprintf(stderr, "xray forward: %s: ended on an error: %s\n", fc->peer, strerror(errno));
    }
    if (link != NULL)
        xr_link_close(link);
    if (sock >= 0)
        close(sock);
    if (c != NULL)
        xr_client_free(c);
    close(fc->fd);
    free(fc);
    atomic_fetch_sub(&f->active, 1);
    return NULL;
}

/* [ADDR:]PORT into a listening socket; -1 with err. */
static int xr_forward_listen(const char *spec, char *err, size_t errlen)
{
    char host[256] = "127.0.0.1";
    const char *port = spec, *colon = strrchr(spec, ':');
    if (colon != NULL) {
        size_t n = (size_t) (colon - spec);
        if (n >= sizeof(host)) {
            snprintf(err, errlen, "address too long: %s", spec);
            return -1;
        }
        memcpy(host, spec, n);
        host[n] = '\0';
        if (host[0] == '[' && n >= 2 && host[n - 1] == ']') {
            memmove(host, host + 1, n - 2);
            host[n - 2] = '\0';
        }
        port = colon + 1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                    *ai = NULL;
    int rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", spec, gai_strerror(rc));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 511) != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", spec, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}

int xr_forward_main(int argc, char **argv)
{
    static xr_forward_t f = {.cf = {.timeout_ms = 10000},
                             .max = XR_FORWARD_MAX_DEFAULT,
                             .lock = PTHREAD_MUTEX_INITIALIZER};
    const char *local_s = NULL, *max_s = NULL;
    char err[400];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = strcmp(a, "--agent") == 0        ? &f.cf.agent
                            : strcmp(a, "--agent-name") == 0 ? &f.cf.agent_name
                            : strcmp(a, "--cert") == 0       ? &f.cf.cert
                            : strcmp(a, "--key") == 0        ? &f.cf.key
                            : strcmp(a, "--ca") == 0         ? &f.cf.ca
                            : strcmp(a, "--max") == 0        ? &max_s
                                                             : NULL;
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
    /* Certificates that do not load fail now, not at the first client. */
    xr_client_t *probe = xr_client_new(&f.cf, err, sizeof(err));
    if (probe == NULL) {
        fprintf(stderr, "xray forward: %s\n", err);
        return 1;
    }
    /* The sessions an earlier `xray connect` or forward left. */
    char path[4096];
    if (xr_client_sessions_path(&f.cf, path, sizeof(path)) == 0) {
        xr_client_sessions_read(probe, path);
        f.nsessions = xr_client_sessions_save(probe, f.sessions, sizeof(f.sessions));
    }
    xr_client_free(probe);
    int lfd = xr_forward_listen(local_s, err, sizeof(err));
    if (lfd < 0) {
        fprintf(stderr, "xray forward: %s\n", err);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    fprintf(stderr, "xray forward: listening on %s for %s\n", local_s, f.dst_s);
    fflush(stderr);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(lfd, (struct sockaddr *) &ss, &sl, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE) {
                fprintf(stderr, "xray forward: accept(): %s; waiting\n", strerror(errno));
                usleep(100 * 1000);
                continue;
            }
            fprintf(stderr, "xray forward: accept(): %s\n", strerror(errno));
            return 1;
        }
        xr_forward_conn_t *fc = xr_calloc(1, sizeof(*fc));
        fc->f = &f;
        fc->fd = fd;
        xr_addr_format(&ss, fc->peer, sizeof(fc->peer));
        if (atomic_fetch_add(&f.active, 1) >= f.max) {
            fprintf(stderr, "xray forward: %s: refused, %d connections already (--max)\n", fc->peer,
                    f.max);
            atomic_fetch_sub(&f.active, 1);
            close(fd);
            free(fc);
            continue;
        }
        pthread_t th;
        if (pthread_create(&th, &attr, xr_forward_conn, fc) != 0) {
            fprintf(stderr, "xray forward: %s: no thread for it: %s\n", fc->peer, strerror(errno));
            atomic_fetch_sub(&f.active, 1);
            close(fd);
            free(fc);
        }
    }
}
