/*
 * xray_load.c - the concurrency client and the two echo servers of
 * contrib/bench/xray_bench.py (XRAY section 8), in C.
 *
 * The paper's concurrency test (Fig. 5) was one client program issuing up to
 * 200 non-blocking connects through its XRAY library, and one library keeps
 * one control session with its agent.  This program is that client: one
 * thread, epoll, non-blocking sockets and mbedTLS 2.28, so that the time it
 * reports is spent in the agents and the network, not in the client (the
 * Python client with one thread per connection used more CPU than the run's
 * wall time).  The servers are here too, so that the servers in b are not
 * the bottleneck either.
 *
 *   xray_load conc --path xray|direct[,...] --k K[,K...] --reps R ...
 *       The client (namespace a).  Per path, a warm-up run of --warmup
 *       connections (TLS sessions cached), then for every repetition and K:
 *       K connections started at once, each connect + a 1 KiB echo, checked.
 *       xray: ONE control session with agent A (TLS + HELLO, opened before
 *       any timing and kept across runs); K CONNECTs written at once, each
 *       with its own id (--ctl-window N: at most N unanswered, the rest as
 *       answers come; 0, the default, is no limit); each CONNECT_OK
 *       (mode 2) -> TCP + TLS (resumed) to
 *       the relay point, the relay point's key checked against peer_key,
 *       LINK(token), LINK_OK, ACK both ways, then the echo.  direct: TCP +
 *       TLS (resumed) to the direct server, then the echo.  One JSON line
 *       per run on stdout: total time until the last echo, ok / failed,
 *       the connect-done times, resumed handshakes, the CPU seconds of this
 *       process and of the process trees named with --cpu NAME=PID.
 *   xray_load xserve --agent HOST:PORT --local HOST:PORT --out FILE ...
 *       The XRAY server (namespace b): a control session to agent B, HELLO,
 *       REGISTER (TCP, --local), REFRESH every heartbeat; INCOMING in both
 *       modes: 2 (connect out to the relay point, TLS client, LINK, LINK_OK,
 *       ACK both ways) and 1 (the agent connects to --local, where this
 *       program listens as a TLS server requiring a client certificate; it
 *       expects LINK naming an INCOMING it was told of, holding a link whose
 *       token it does not know yet for up to 2 s, since the INCOMING may come
 *       after the link; LINK_OK, ACK both ways).  Every INCOMING is answered
 *       INCOMING_OK.  Then the stream protocol below.
 *   xray_load dserve --listen HOST:PORT --out FILE ...
 *       The direct TLS server (namespace b), client certificate required,
 *       the same stream protocol.
 *
 * Stream protocol (xray_bench.py's serve_stream): a 9-byte header, "E" + u64
 * (echo everything until EOF) or "S" + u64 n (read n bytes, answer the u64
 * count received, close).
 *
 * TLS: 1.2 only, ECDHE-ECDSA-AES256-GCM-SHA384, mutual authentication (the
 * CA of --ca, our --crt/--key), resumption: a client keeps the last
 * mbedtls_ssl_session per (kind, destination) and offers it; the servers
 * issue tickets and keep a session cache.  Only 127.0.0.0/8 and
 * 198.18.0.0/15 are ever connected to (the bench topology's range).  Every
 * mode has a hard time limit (--max-secs, SIGALRM), every connection a
 * timeout; SIGTERM makes the servers write their final stats and exit.
 * Servers write JSON lines to --out: {"ready"|"official": ...} once, and
 * {"stats": ..., "errors": [...], "final": true} at exit.
 *
 * Build: cc -std=c11 -D_GNU_SOURCE -O2 -Isrc -o xray_load
 *            contrib/bench/xray_load.c src/common/proto.c
 *            -lmbedtls -lmbedx509 -lmbedcrypto
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/sha256.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_cache.h>
#include <mbedtls/ssl_internal.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509_crt.h>

#include "common/proto.h"

#define MAX_K           2000 /* connections in one run: CONNECTs must fit the control buffer */
#define MAX_PATHS       4
#define MAX_KS          16
#define MAX_CPU         8
#define MAX_SAVED       16
#define MAX_INCOMING    4096 /* mode-1 INCOMINGs waiting for their link */
#define SRV_BUF         (64 * 1024)
#define CLI_BUF         (8 * 1024)
#define CTL_BUF         (MAX_K * 32 + 4 * XR_PROTO_MAX_FRAME)
#define HOLD_SECS       2.0  /* a mode-1 link may come before its INCOMING */
#define INCOMING_SECS   30.0 /* how long a mode-1 INCOMING waits for its link */
#define SERVER_IDLE     60.0 /* a served connection with no progress for this long is dropped */
#define CLOSE_SECS      5.0  /* time to flush the last bytes of a connection */
#define MAX_ERRORS_KEPT 20

/* ---- time, logs, signals ------------------------------------------------------- */

static double g_now;
static volatile sig_atomic_t g_stop;
static const char *g_cmd = "xray_load";

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static double cpu_self(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "# xray_load %s: ", g_cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "xray_load %s: ", g_cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void on_stop(int sig)
{
    (void) sig;
    g_stop = 1;
}

/* The hard bound: whatever state the program is in, it ends here. */
static void on_alarm(int sig)
{
    (void) sig;
    static const char msg[] = "xray_load: --max-secs reached, exiting\n";
    ssize_t r = write(2, msg, sizeof(msg) - 1);
    (void) r;
    _exit(124);
}

/* ---- options ------------------------------------------------------------------- */

static struct {
    const char *ca, *crt, *key;
    const char *agent, *agent_name;
    const char *official;
    const char *direct, *direct_name;
    const char *local;  /* xserve: registered and listened on */
    const char *listen; /* dserve */
    const char *out;
    const char *paths[MAX_PATHS];
    int npaths;
    int ks[MAX_KS];
    int nks;
    int reps;
    int warmup;
    int msg_size;
    int check_key;
    int ctl_window; /* CONNECTs outstanding on the control session at most; 0: all K at once */
    double conn_timeout, run_timeout, gap, phase_secs, max_secs;
    struct {
        char name[32];
        int pid;
    } cpu[MAX_CPU];
    int ncpu;
} o = {.agent_name = "agent-a",
       .direct_name = "localhost",
       .reps = 3,
       .warmup = 2,
       .msg_size = 1024,
       .check_key = 1,
       .conn_timeout = 60,
       .run_timeout = 150,
       .gap = 0.5,
       .phase_secs = 600,
       .max_secs = 900};

static void usage(void)
{
    fprintf(stderr,
            "usage: xray_load conc --path xray|direct[,..] --k K[,K..] [--reps R] [--warmup K]\n"
            "                      --ca F --crt F --key F [--agent H:P --agent-name N --official "
            "H:P]\n"
            "                      [--direct H:P --direct-name N] [--cpu NAME=PID]... "
            "[--no-check-key] [--ctl-window N]\n"
            "                      [--msg-size B] [--conn-timeout S] [--run-timeout S] [--gap S]\n"
            "                      [--phase-secs S] [--max-secs S]\n"
            "       xray_load xserve --ca F --crt F --key F --agent H:P --agent-name N --local "
            "H:P\n"
            "                        --out FILE [--max-secs S]\n"
            "       xray_load dserve --ca F --crt F --key F --listen H:P --out FILE [--max-secs "
            "S]\n");
    exit(2);
}

/* Split "a,b,c" into at most max pieces (the string is modified). */
static int split(char *s, const char **out, int max)
{
    int n = 0;
    for (char *t = strtok(s, ","); t != NULL && n < max; t = strtok(NULL, ","))
        out[n++] = t;
    return n;
}

static void parse_opts(int argc, char **argv)
{
    enum {
        OPT_CA = 1,
        OPT_CRT,
        OPT_KEY,
        OPT_AGENT,
        OPT_AGENT_NAME,
        OPT_OFFICIAL,
        OPT_DIRECT,
        OPT_DIRECT_NAME,
        OPT_LOCAL,
        OPT_LISTEN,
        OPT_OUT,
        OPT_PATH,
        OPT_K,
        OPT_REPS,
        OPT_WARMUP,
        OPT_MSG,
        OPT_NOCHECK,
        OPT_CONN_TO,
        OPT_RUN_TO,
        OPT_GAP,
        OPT_PHASE,
        OPT_MAX,
        OPT_CPU,
        OPT_WINDOW
    };
    static const struct option lo[] = {{"ca", 1, 0, OPT_CA},
                                       {"crt", 1, 0, OPT_CRT},
                                       {"key", 1, 0, OPT_KEY},
                                       {"agent", 1, 0, OPT_AGENT},
                                       {"agent-name", 1, 0, OPT_AGENT_NAME},
                                       {"official", 1, 0, OPT_OFFICIAL},
                                       {"direct", 1, 0, OPT_DIRECT},
                                       {"direct-name", 1, 0, OPT_DIRECT_NAME},
                                       {"local", 1, 0, OPT_LOCAL},
                                       {"listen", 1, 0, OPT_LISTEN},
                                       {"out", 1, 0, OPT_OUT},
                                       {"path", 1, 0, OPT_PATH},
                                       {"k", 1, 0, OPT_K},
                                       {"reps", 1, 0, OPT_REPS},
                                       {"warmup", 1, 0, OPT_WARMUP},
                                       {"msg-size", 1, 0, OPT_MSG},
                                       {"no-check-key", 0, 0, OPT_NOCHECK},
                                       {"conn-timeout", 1, 0, OPT_CONN_TO},
                                       {"run-timeout", 1, 0, OPT_RUN_TO},
                                       {"gap", 1, 0, OPT_GAP},
                                       {"phase-secs", 1, 0, OPT_PHASE},
                                       {"max-secs", 1, 0, OPT_MAX},
                                       {"cpu", 1, 0, OPT_CPU},
                                       {"ctl-window", 1, 0, OPT_WINDOW},
                                       {0, 0, 0, 0}};
    int c;
    const char *ks[MAX_KS];
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case OPT_CA: o.ca = optarg; break;
        case OPT_CRT: o.crt = optarg; break;
        case OPT_KEY: o.key = optarg; break;
        case OPT_AGENT: o.agent = optarg; break;
        case OPT_AGENT_NAME: o.agent_name = optarg; break;
        case OPT_OFFICIAL: o.official = optarg; break;
        case OPT_DIRECT: o.direct = optarg; break;
        case OPT_DIRECT_NAME: o.direct_name = optarg; break;
        case OPT_LOCAL: o.local = optarg; break;
        case OPT_LISTEN: o.listen = optarg; break;
        case OPT_OUT: o.out = optarg; break;
        case OPT_PATH: o.npaths = split(optarg, o.paths, MAX_PATHS); break;
        case OPT_K:
            o.nks = split(optarg, ks, MAX_KS);
            for (int i = 0; i < o.nks; i++) {
                o.ks[i] = atoi(ks[i]);
                if (o.ks[i] < 1 || o.ks[i] > MAX_K)
                    die("--k: %s is not in 1..%d", ks[i], MAX_K);
            }
            break;
        case OPT_REPS: o.reps = atoi(optarg); break;
        case OPT_WARMUP: o.warmup = atoi(optarg); break;
        case OPT_MSG: o.msg_size = atoi(optarg); break;
        case OPT_NOCHECK: o.check_key = 0; break;
        case OPT_CONN_TO: o.conn_timeout = atof(optarg); break;
        case OPT_RUN_TO: o.run_timeout = atof(optarg); break;
        case OPT_GAP: o.gap = atof(optarg); break;
        case OPT_PHASE: o.phase_secs = atof(optarg); break;
        case OPT_MAX: o.max_secs = atof(optarg); break;
        case OPT_WINDOW: o.ctl_window = atoi(optarg); break;
        case OPT_CPU: {
            const char *eq = strchr(optarg, '=');
            if (eq == NULL || o.ncpu == MAX_CPU || eq - optarg >= (long) sizeof(o.cpu[0].name))
                die("--cpu wants NAME=PID (at most %d)", MAX_CPU);
            memcpy(o.cpu[o.ncpu].name, optarg, (size_t) (eq - optarg));
            o.cpu[o.ncpu].name[eq - optarg] = '\0';
            o.cpu[o.ncpu++].pid = atoi(eq + 1);
            break;
        }
        default: usage();
        }
    }
    if (o.ca == NULL || o.crt == NULL || o.key == NULL)
        die("--ca, --crt and --key are required");
    if (o.reps < 0 || o.reps > 1000 || o.warmup < 0 || o.warmup > MAX_K)
        die("--reps in 0..1000, --warmup in 0..%d", MAX_K);
    if (o.ctl_window < 0)
        die("--ctl-window: 0 (no limit) or more");
    if (o.msg_size < 1 || o.msg_size > CLI_BUF - 64)
        die("--msg-size in 1..%d", CLI_BUF - 64);
    if (o.max_secs <= 0 || o.conn_timeout <= 0 || o.run_timeout <= 0)
        die("time bounds must be positive");
}

/* ---- addresses ------------------------------------------------------------------- */

/* The bench only ever talks to its own namespaces (198.18.0.0/15) or, when
 * tried by hand, to loopback: refuse anything else, wherever it came from
 * (an option or an agent's answer). */
static int addr_allowed(const struct sockaddr_in *a)
{
    uint32_t h = ntohl(a->sin_addr.s_addr);
    return (h >> 24) == 127 || (h >> 17) == (0xC612u >> 1); /* 127/8, 198.18/15 */
}

static void parse_hp(const char *s, struct sockaddr_in *a, const char *what)
{
    char host[64];
    const char *colon = s != NULL ? strrchr(s, ':') : NULL;
    if (colon == NULL || colon - s >= (long) sizeof(host))
        die("%s: want IPv4:PORT, got %s", what, s ? s : "(nothing)");
    memcpy(host, s, (size_t) (colon - s));
    host[colon - s] = '\0';
    memset(a, 0, sizeof(*a));
    a->sin_family = AF_INET;
    int port = atoi(colon + 1);
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1 || port < 1 || port > 65535)
        die("%s: want IPv4:PORT, got %s", what, s);
    a->sin_port = htons((uint16_t) port);
    if (!addr_allowed(a))
        die("%s: %s is outside 198.18.0.0/15 and 127.0.0.0/8", what, s);
}

static const char *hp_str(const struct sockaddr_in *a, char *buf, size_t n)
{
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
    snprintf(buf, n, "%s:%u", ip, ntohs(a->sin_port));
    return buf;
}

/* A wire address (IPv4 only here) as a sockaddr; 0 when it is not one. */
static int paddr_in(const xr_paddr_t *p, struct sockaddr_in *a)
{
    struct sockaddr_storage ss;
    if (xr_paddr_to_sockaddr(p, &ss) == 0 || ss.ss_family != AF_INET)
        return 0;
    memcpy(a, &ss, sizeof(*a));
    return 1;
}

/* ---- JSON output --------------------------------------------------------------- */

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char) *s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

/* ---- TLS ------------------------------------------------------------------------- */

static mbedtls_entropy_context g_entropy;
static mbedtls_ctr_drbg_context g_drbg;
static mbedtls_x509_crt g_ca, g_crt;
static mbedtls_pk_context g_pk;
static mbedtls_ssl_config g_cli, g_srv;
static mbedtls_ssl_ticket_context g_ticket;
static mbedtls_ssl_cache_context g_cache;
static const int g_suites[] = {MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, 0};
/* The agents' choice (xrayd's tls_conf.c): mbedTLS 2.28's default list starts
 * with the slow P-521. */
static const mbedtls_ecp_group_id g_curves[] = {MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1,
                                                MBEDTLS_ECP_DP_SECP384R1, MBEDTLS_ECP_DP_NONE};

static const char *tls_err(int rc)
{
    static char buf[160];
    mbedtls_strerror(rc, buf, sizeof(buf));
    return buf;
}

static void tls_conf(mbedtls_ssl_config *c, int endpoint)
{
    int rc = mbedtls_ssl_config_defaults(c, endpoint, MBEDTLS_SSL_TRANSPORT_STREAM,
                                         MBEDTLS_SSL_PRESET_DEFAULT);
    if (rc != 0)
        die("mbedtls_ssl_config_defaults: %s", tls_err(rc));
    mbedtls_ssl_conf_rng(c, mbedtls_ctr_drbg_random, &g_drbg);
    mbedtls_ssl_conf_min_version(c, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_max_version(c, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_ciphersuites(c, g_suites);
    mbedtls_ssl_conf_curves(c, g_curves);
    mbedtls_ssl_conf_authmode(c, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(c, &g_ca, NULL);
    if ((rc = mbedtls_ssl_conf_own_cert(c, &g_crt, &g_pk)) != 0)
        die("own certificate: %s", tls_err(rc));
#if defined(MBEDTLS_SSL_RENEGOTIATION)
    mbedtls_ssl_conf_renegotiation(c, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
#endif
}

static void tls_init(void)
{
    int rc;
    mbedtls_entropy_init(&g_entropy);
    mbedtls_ctr_drbg_init(&g_drbg);
    static const unsigned char pers[] = "xray_load";
    if ((rc = mbedtls_ctr_drbg_seed(&g_drbg, mbedtls_entropy_func, &g_entropy, pers,
                                    sizeof(pers) - 1)) != 0)
        die("ctr_drbg_seed: %s", tls_err(rc));
    mbedtls_x509_crt_init(&g_ca);
    mbedtls_x509_crt_init(&g_crt);
    mbedtls_pk_init(&g_pk);
    if ((rc = mbedtls_x509_crt_parse_file(&g_ca, o.ca)) != 0)
        die("--ca %s: %s", o.ca, tls_err(rc));
    if ((rc = mbedtls_x509_crt_parse_file(&g_crt, o.crt)) != 0)
        die("--crt %s: %s", o.crt, tls_err(rc));
    if ((rc = mbedtls_pk_parse_keyfile(&g_pk, o.key, NULL)) != 0)
        die("--key %s: %s", o.key, tls_err(rc));
    mbedtls_ssl_config_init(&g_cli);
    tls_conf(&g_cli, MBEDTLS_SSL_IS_CLIENT);
    mbedtls_ssl_conf_session_tickets(&g_cli, MBEDTLS_SSL_SESSION_TICKETS_ENABLED);
    mbedtls_ssl_config_init(&g_srv);
    tls_conf(&g_srv, MBEDTLS_SSL_IS_SERVER);
    /* Resumption both ways a client may ask for it: tickets (what Python's
     * clients and xrayd's offer) and session ids. */
    mbedtls_ssl_ticket_init(&g_ticket);
    if ((rc = mbedtls_ssl_ticket_setup(&g_ticket, mbedtls_ctr_drbg_random, &g_drbg,
                                       MBEDTLS_CIPHER_AES_256_GCM, 86400)) != 0)
        die("ssl_ticket_setup: %s", tls_err(rc));
    mbedtls_ssl_conf_session_tickets_cb(&g_srv, mbedtls_ssl_ticket_write, mbedtls_ssl_ticket_parse,
                                        &g_ticket);
    mbedtls_ssl_cache_init(&g_cache);
    mbedtls_ssl_cache_set_max_entries(&g_cache, 4096);
    mbedtls_ssl_conf_session_cache(&g_srv, &g_cache, mbedtls_ssl_cache_get, mbedtls_ssl_cache_set);
}

/* SHA-256 of a certificate's DER SubjectPublicKeyInfo: the protocol's keyhash. */
static int peer_keyhash(const mbedtls_ssl_context *ssl, uint8_t out[32])
{
    const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(ssl);
    if (crt == NULL || crt->pk_raw.p == NULL)
        return -1;
    return mbedtls_sha256_ret(crt->pk_raw.p, crt->pk_raw.len, out, 0) == 0 ? 0 : -1;
}

/* The last session per (kind, destination), offered on the next connection. */
typedef struct {
    char key[80];
    mbedtls_ssl_session s;
    int have;
    int saved; /* how many times it was replaced, for the report */
} saved_t;
static saved_t g_saved[MAX_SAVED];
static int g_nsaved;

static saved_t *saved_for(const char *kind, const struct sockaddr_in *a)
{
    char k[80], hp[40];
    snprintf(k, sizeof(k), "%s %s", kind, hp_str(a, hp, sizeof(hp)));
    for (int i = 0; i < g_nsaved; i++)
        if (strcmp(g_saved[i].key, k) == 0)
            return &g_saved[i];
    if (g_nsaved == MAX_SAVED)
        return NULL;
    saved_t *s = &g_saved[g_nsaved++];
    snprintf(s->key, sizeof(s->key), "%s", k);
    mbedtls_ssl_session_init(&s->s);
    return s;
}

/* ---- connections --------------------------------------------------------------- */

enum role {
    R_CTL,          /* control session to an agent (conc: A, xserve: B) */
    R_CLI_LINK,     /* conc: overlay link to agent A's relay point */
    R_CLI_DIRECT,   /* conc: TLS to the direct server */
    R_SRV_LINK_OUT, /* xserve: INCOMING mode 2, link out to agent B's relay point */
    R_SRV_LINK_IN,  /* xserve: INCOMING mode 1, agent B connected to us */
    R_SRV_DIRECT,   /* dserve: a client of the direct server */
    R_LISTEN
};

enum state {
    S_TCP,         /* non-blocking connect() in progress */
    S_TLS,         /* handshake */
    S_HELLO,       /* control: HELLO sent, waiting for HELLO_OK */
    S_CTL,         /* control: ready, frames either way */
    S_LINK_OK,     /* LINK sent, waiting for LINK_OK */
    S_LINK_WAIT,   /* mode-1 link: waiting for LINK */
    S_HELD,        /* mode-1 link: LINK with a token no INCOMING named yet */
    S_ACK,         /* our ACK sent, waiting for the peer's */
    S_ECHO,        /* conc: echo request sent, reading the echo */
    S_SERVE_HDR,   /* server: reading the 9-byte header */
    S_SERVE_ECHO,  /* server: echoing until EOF */
    S_SERVE_SINK,  /* server: counting n bytes */
    S_FLUSH_CLOSE, /* writing what is left, then closing */
};

static const char *state_name[] = {
    "TCP connect", "TLS handshake", "HELLO",         "control",      "LINK_OK", "LINK",   "held",
    "ACK",         "echo",          "stream header", "serving echo", "sink",    "closing"};

typedef struct conn {
    struct conn *prev, *next;
    int fd, role, state;
    int dead;
    uint32_t ev; /* the epoll interest registered */
    int ssl_ready;
    mbedtls_ssl_context ssl;
    int write_blocked; /* the socket said EAGAIN to the last send */
    size_t bytes_in;   /* raw bytes read, to tell a TCP probe from a TLS client */
    int resumed;
    saved_t *sv;
    struct sockaddr_in dst;
    double deadline;
    double idle; /* > 0: every step forward moves the deadline this far ahead */
    uint8_t *in;
    size_t inlen, incap;
    uint8_t *out;
    size_t outoff, outlen, outcap, wpend;
    int eof;
    int again; /* yielded with work left: run it again on the next loop pass */
    int slot;  /* conc: the run's slot, or -1 */
    uint8_t token[XR_PROTO_TOKEN];
    uint8_t peer_key[XR_PROTO_KEYHASH];
    uint64_t n, got; /* serving: sink length and bytes served */
    char why[400];   /* the error, when it failed */
} conn_t;

static int g_ep = -1;
static conn_t g_conns = {.prev = &g_conns, .next = &g_conns};
static conn_t *g_dead[4096];
static int g_ndead;
static int g_again; /* connections with again set */

static void conn_run(conn_t *c, uint32_t events);

static void set_interest(conn_t *c)
{
    uint32_t ev = 0;
    if (c->role == R_LISTEN)
        ev = EPOLLIN;
    else if (c->state == S_TCP)
        ev = EPOLLOUT;
    else {
        if (c->write_blocked || c->outoff < c->outlen)
            ev |= EPOLLOUT;
        /* Read whenever there is room: also to see a peer close while we wait. */
        if (!c->eof && (c->inlen < c->incap || c->state == S_TLS))
            ev |= EPOLLIN;
    }
    if (ev == c->ev)
        return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(g_ep,
                  c->ev == 0 && ev != 0 ? EPOLL_CTL_ADD
                  : ev == 0             ? EPOLL_CTL_DEL
                                        : EPOLL_CTL_MOD,
                  c->fd, &e) != 0)
        die("epoll_ctl: %s", strerror(errno));
    c->ev = ev;
}

static int bio_send(void *ctx, const unsigned char *b, size_t n)
{
    conn_t *c = ctx;
    ssize_t r = send(c->fd, b, n, MSG_NOSIGNAL);
    if (r >= 0) {
        c->write_blocked = 0;
        return (int) r;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        c->write_blocked = 1;
        return MBEDTLS_ERR_SSL_WANT_WRITE;
    }
    return errno == EPIPE || errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET
                                                 : MBEDTLS_ERR_NET_SEND_FAILED;
}

static int bio_recv(void *ctx, unsigned char *b, size_t n)
{
    conn_t *c = ctx;
    ssize_t r = recv(c->fd, b, n, 0);
    if (r >= 0) {
        c->bytes_in += (size_t) r;
        return (int) r;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return MBEDTLS_ERR_SSL_WANT_READ;
    return errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_RECV_FAILED;
}

static conn_t *conn_new(int fd, int role, size_t incap, size_t outcap)
{
    conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL || (c->in = malloc(incap)) == NULL || (c->out = malloc(outcap)) == NULL)
        die("out of memory");
    c->fd = fd;
    c->role = role;
    c->incap = incap;
    c->outcap = outcap;
    c->slot = -1;
    c->next = &g_conns;
    c->prev = g_conns.prev;
    g_conns.prev->next = c;
    g_conns.prev = c;
    return c;
}

/* Close at once, free after the current batch of events (one may still
 * name it). */
static void conn_kill(conn_t *c)
{
    if (c->dead)
        return;
    c->dead = 1;
    if (c->again) {
        c->again = 0;
        g_again--;
    }
    if (c->ev != 0)
        epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
    c->ev = 0;
    close(c->fd);
    c->prev->next = c->next;
    c->next->prev = c->prev;
    if (g_ndead < (int) (sizeof(g_dead) / sizeof(g_dead[0])))
        g_dead[g_ndead++] = c;
    else
        die("too many connections closed in one batch");
}

static void reap(void)
{
    for (int i = 0; i < g_ndead; i++) {
        conn_t *c = g_dead[i];
        if (c->ssl_ready)
            mbedtls_ssl_free(&c->ssl);
        free(c->in);
        free(c->out);
        free(c);
    }
    g_ndead = 0;
}

static int tls_start(conn_t *c, const mbedtls_ssl_config *conf, const char *hostname)
{
    mbedtls_ssl_init(&c->ssl);
    c->ssl_ready = 1;
    int rc = mbedtls_ssl_setup(&c->ssl, conf);
    if (rc == 0 && hostname != NULL)
        rc = mbedtls_ssl_set_hostname(&c->ssl, hostname);
    if (rc == 0 && c->sv != NULL && c->sv->have)
        rc = mbedtls_ssl_set_session(&c->ssl, &c->sv->s);
    if (rc != 0) {
        snprintf(c->why, sizeof(c->why), "TLS setup: %s", tls_err(rc));
        return -1;
    }
    mbedtls_ssl_set_bio(&c->ssl, c, bio_send, bio_recv, NULL);
    c->state = S_TLS;
    return 0;
}

/* A non-blocking TCP connection to dst. */
static conn_t *dial(const struct sockaddr_in *dst, int role, size_t incap, size_t outcap)
{
    if (!addr_allowed(dst)) {
        char hp[40];
        logmsg("refusing to connect to %s (outside the bench's range)", hp_str(dst, hp, 40));
        return NULL;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        logmsg("socket: %s", strerror(errno));
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    conn_t *c = conn_new(fd, role, incap, outcap);
    c->dst = *dst;
    c->state = S_TCP;
    if (connect(fd, (const struct sockaddr *) dst, sizeof(*dst)) != 0 && errno != EINPROGRESS) {
        snprintf(c->why, sizeof(c->why), "connect: %s", strerror(errno));
        c->eof = 1; /* conn_run() reports it on its first pass. */
    }
    set_interest(c);
    return c;
}

/* Queue bytes for sending; -1 if they do not fit (the callers size things
 * so that only a peer that never reads gets there). */
static int out_put(conn_t *c, const void *p, size_t n)
{
    if (c->outoff == c->outlen && c->wpend == 0)
        c->outoff = c->outlen = 0;
    if (c->outlen + n > c->outcap && c->wpend == 0 && c->outoff > 0) {
        memmove(c->out, c->out + c->outoff, c->outlen - c->outoff);
        c->outlen -= c->outoff;
        c->outoff = 0;
    }
    if (c->outlen + n > c->outcap)
        return -1;
    memcpy(c->out + c->outlen, p, n);
    c->outlen += n;
    return 0;
}

/* How much out_put() takes now. */
static size_t out_room(const conn_t *c)
{
    return c->outcap - c->outlen + (c->wpend == 0 ? c->outoff : 0);
}

static int send_msg(conn_t *c, const xr_msg_t *m)
{
    uint8_t buf[XR_PROTO_MAX_FRAME];
    size_t n = xr_proto_encode(m, buf, sizeof(buf));
    if (n == 0)
        return -1;
    return out_put(c, buf, n);
}

static void send_error(conn_t *c, int code, uint32_t id, const char *msg)
{
    xr_msg_t m = {.type = XR_MSG_ERROR};
    m.u.error.code = (uint16_t) code;
    m.u.error.id = id;
    xr_pstr_set(&m.u.error.message, msg);
    send_msg(c, &m);
}

/* Write what is queued.  1: something went, 0: nothing could, -1: error.
 * mbedtls_ssl_write() that said WANT_WRITE must be called again with the
 * same length (it has already taken those bytes into a record), hence wpend. */
static int out_flush(conn_t *c)
{
    int any = 0;
    while (c->outoff < c->outlen) {
        size_t n = c->wpend ? c->wpend : c->outlen - c->outoff;
        int r = mbedtls_ssl_write(&c->ssl, c->out + c->outoff, n);
        if (r == MBEDTLS_ERR_SSL_WANT_WRITE || r == MBEDTLS_ERR_SSL_WANT_READ) {
            c->wpend = n;
            return any;
        }
        if (r < 0) {
            snprintf(c->why, sizeof(c->why), "TLS write: %s", tls_err(r));
            return -1;
        }
        c->wpend = 0;
        c->outoff += (size_t) r;
        any = 1;
    }
    c->outoff = c->outlen = 0;
    return any;
}

static void consume(conn_t *c, size_t n)
{
    memmove(c->in, c->in + n, c->inlen - n);
    c->inlen -= n;
}

/* The next frame in the input: 1 with *m set, 0 when more bytes are
 * needed, -1 on an invalid frame (c->why says why). */
static int next_frame(conn_t *c, xr_msg_t *m)
{
    size_t used;
    const char *why;
    xr_proto_status_t st = xr_proto_decode(c->in, c->inlen, m, &used, &why);
    if (st == XR_PROTO_AGAIN)
        return 0;
    if (st != XR_PROTO_OK) {
        snprintf(c->why, sizeof(c->why), "invalid frame from the peer (%s)", why ? why : "?");
        return -1;
    }
    consume(c, used);
    return 1;
}

static const char *err_text(const xr_msg_t *m, char *buf, size_t n)
{
    snprintf(buf, n, "ERROR %s: %s", xr_proto_err_name(m->u.error.code), m->u.error.message.s);
    return buf;
}

/* ---- what each program does with its connections -------------------------------- */

/* Set by the program: called when a connection fails (before it is killed),
 * when its handshake completes, and to consume its input. */
static void (*on_fail)(conn_t *c);
static int (*on_ready)(conn_t *c); /* -1: failed (c->why set) */
static int (*on_data)(conn_t *c);  /* 1: progress, 0: none, -1: failed */

static void conn_fail(conn_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void conn_fail(conn_t *c, const char *fmt, ...)
{
    if (c->dead)
        return;
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->why, sizeof(c->why), fmt, ap);
        va_end(ap);
    }
    if (on_fail != NULL)
        on_fail(c);
    conn_kill(c);
}

/* Done with it: a close_notify if it fits the socket, then close. */
static void conn_close(conn_t *c)
{
    if (c->ssl_ready && c->state != S_TLS && c->state != S_TCP)
        mbedtls_ssl_close_notify(&c->ssl);
    conn_kill(c);
}

/* Drive one connection as far as it goes without blocking.  Any event (or
 * a program's nudge) runs the whole thing: handshake, flush, read, consume;
 * again while anything moved, because mbedTLS may hold decrypted bytes that
 * no epoll event will announce. */
static void conn_run(conn_t *c, uint32_t events)
{
    if (c->dead)
        return;
    if (c->state == S_TCP) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (c->eof) {
            conn_fail(c, NULL);
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err != 0) {
            conn_fail(c, "connect: %s", strerror(err));
            return;
        }
        if (on_ready(c) < 0) { /* The program starts TLS here. */
            conn_fail(c, NULL);
            return;
        }
    }
    if (c->again) {
        c->again = 0;
        g_again--;
    }
    for (int round = 0; !c->dead; round++) {
        int progress = 0;
        if (round == 64) {
            /* Fair to the others: a bulk stream yields here.  Its socket may
             * be empty with bytes left inside mbedTLS, which no epoll event
             * would announce, hence the explicit second run. */
            c->again = 1;
            g_again++;
            break;
        }
        if (c->state == S_TLS) {
            int rc = 0;
            while (c->ssl.state != MBEDTLS_SSL_HANDSHAKE_OVER) {
                /* mbedTLS 2.28 tells whether it resumed only while the
                 * handshake runs, so look before every step. */
                if (c->ssl.handshake != NULL && c->ssl.handshake->resume)
                    c->resumed = 1;
                if ((rc = mbedtls_ssl_handshake_step(&c->ssl)) != 0)
                    break;
            }
            if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
                break;
            if (rc != 0) {
                conn_fail(c, "TLS handshake: %s", tls_err(rc));
                return;
            }
            if (c->sv != NULL) {
                /* Keep the last session per destination and offer it
                 * next time, as a library would. */
                mbedtls_ssl_session_free(&c->sv->s);
                mbedtls_ssl_session_init(&c->sv->s);
                c->sv->have = mbedtls_ssl_get_session(&c->ssl, &c->sv->s) == 0;
                c->sv->saved++;
            }
            if (on_ready(c) < 0) {
                conn_fail(c, NULL);
                return;
            }
            progress = 1;
        }
        if (c->outoff < c->outlen) {
            int r = out_flush(c);
            if (r < 0) {
                conn_fail(c, NULL);
                return;
            }
            progress |= r;
        }
        if (c->state == S_FLUSH_CLOSE && c->outoff == c->outlen) {
            conn_close(c);
            return;
        }
        if (!c->eof && c->inlen < c->incap) {
            int r = mbedtls_ssl_read(&c->ssl, c->in + c->inlen, c->incap - c->inlen);
            if (r > 0) {
                c->inlen += (size_t) r;
                progress = 1;
            } else if (r == 0 || r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY ||
                       r == MBEDTLS_ERR_SSL_CONN_EOF || r == MBEDTLS_ERR_NET_CONN_RESET) {
                c->eof = 1;
                progress = 1;
            } else if (r != MBEDTLS_ERR_SSL_WANT_READ && r != MBEDTLS_ERR_SSL_WANT_WRITE) {
                conn_fail(c, "TLS read: %s", tls_err(r));
                return;
            }
        }
        if (c->state != S_FLUSH_CLOSE) {
            int r = on_data(c);
            if (r < 0) {
                conn_fail(c, NULL);
                return;
            }
            if (c->dead)
                return;
            progress |= r;
        }
        if (!progress)
            break;
        if (c->idle > 0)
            c->deadline = g_now + c->idle;
    }
    if (!c->dead)
        set_interest(c);
}

/* Let the loop's timeout scan end a connection that sits too long. */
static void (*on_timeout)(conn_t *c);

static void scan_timeouts(void)
{
    for (conn_t *c = g_conns.next, *n; c != &g_conns; c = n) {
        n = c->next;
        if (c->dead)
            continue;
        if (c->role != R_LISTEN && c->deadline > 0 && g_now > c->deadline) {
            if (on_timeout != NULL)
                on_timeout(c);
            else
                conn_fail(c, "timed out in %s", state_name[c->state]);
        }
    }
}

static void do_accept(conn_t *l);

/* One round of the event loop: at most max_wait seconds. */
static void loop_once(double max_wait)
{
    static double next_scan;
    struct epoll_event ev[512];
    int ms = max_wait <= 0 || g_again > 0 ? 0 : max_wait >= 0.1 ? 100 : (int) (max_wait * 1000) + 1;
    int n = epoll_wait(g_ep, ev, 512, ms);
    g_now = now();
    for (int i = 0; i < n; i++) {
        conn_t *c = ev[i].data.ptr;
        if (c->dead)
            continue;
        if (c->role == R_LISTEN)
            do_accept(c);
        else
            conn_run(c, ev[i].events);
    }
    for (conn_t *c = g_conns.next, *nx; g_again > 0 && c != &g_conns; c = nx) {
        nx = c->next;
        if (c->again && !c->dead)
            conn_run(c, 0);
    }
    if (g_now >= next_scan) {
        scan_timeouts();
        next_scan = g_now + 0.05;
    }
    reap();
}

/* ---- /proc: CPU seconds of a process tree ------------------------------------------ */

typedef struct {
    int pid, ppid;
    double cpu;
} proc_t;

/* utime+stime+cutime+cstime of every process, with its parent. */
static int proc_scan(proc_t **out)
{
    DIR *d = opendir("/proc");
    int n = 0, cap = 0;
    proc_t *p = NULL;
    double hz = (double) sysconf(_SC_CLK_TCK);
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[300], buf[1024];
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        size_t len = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[len] = '\0';
        char *rp = strrchr(buf, ')');
        if (rp == NULL)
            continue;
        /* after ") ": state ppid ... field 14-17 (1-based) are utime stime cutime cstime */
        char st;
        int ppid;
        unsigned long long v[4];
        if (sscanf(rp + 2, "%c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %llu %llu", &st,
                   &ppid, &v[0], &v[1], &v[2], &v[3]) != 6)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 512;
            proc_t *q = realloc(p, (size_t) cap * sizeof(*p));
            if (q == NULL)
                break;
            p = q;
        }
        p[n].pid = atoi(e->d_name);
        p[n].ppid = ppid;
        p[n].cpu = (double) (v[0] + v[1] + v[2] + v[3]) / hz;
        n++;
    }
    if (d != NULL)
        closedir(d);
    *out = p;
    return n;
}

static double tree_cpu(const proc_t *p, int n, int root, int depth)
{
    double t = 0;
    if (depth > 16)
        return 0;
    for (int i = 0; i < n; i++) {
        if (p[i].pid == root)
            t += p[i].cpu;
        else if (p[i].ppid == root)
            t += tree_cpu(p, n, p[i].pid, depth + 1);
    }
    return t;
}

static void cpu_trees(double *out)
{
    proc_t *p;
    int n = proc_scan(&p);
    for (int i = 0; i < o.ncpu; i++)
        out[i] = tree_cpu(p, n, o.cpu[i].pid, 0);
    free(p);
}

/* ================================================================================= */
/* conc: the client                                                                  */
/* ================================================================================= */

typedef struct {
    int done, ok, resumed;
    double t_cok, t_tls, t_lok, t_conn, t_done; /* since the run's start */
    char err[460];
    conn_t *c;
} slot_t;

static struct {
    slot_t *slots;
    int k, left;
    int xray;
    int sent, answered; /* CONNECTs written, and answered (CONNECT_OK or ERROR) */
    uint32_t id_base;   /* CONNECT ids of this run: id_base .. id_base + k - 1 */
    double t0;
    uint8_t *msgs; /* k messages of msg_size bytes, each different */
} R;

static conn_t *g_ctl;
static int g_ctl_ready, g_ctl_opened, g_ctl_resumed_n;
static uint32_t g_next_id = 1;
static struct sockaddr_in g_agent, g_official, g_direct;
static saved_t *g_sv_ctl;
static int g_stale_answers;

static void slot_finish(int i, int ok, const char *err)
{
    slot_t *s = &R.slots[i];
    if (s->done)
        return;
    s->done = 1;
    s->ok = ok;
    s->t_done = now() - R.t0;
    if (!ok)
        snprintf(s->err, sizeof(s->err), "%s", err ? err : "?");
    s->c = NULL;
    R.left--;
}

static void conc_fail(conn_t *c)
{
    if (c->role == R_CTL) {
        logmsg("control session to agent A lost: %s", c->why);
        g_ctl = NULL;
        g_ctl_ready = 0;
        /* Every connection still waiting for its CONNECT_OK is lost
         * with the session. */
        for (int i = 0; R.xray && i < R.k; i++)
            if (!R.slots[i].done && R.slots[i].c == NULL)
                slot_finish(i, 0, "control session lost before CONNECT_OK");
        return;
    }
    if (c->slot >= 0) {
        char err[460];
        snprintf(err, sizeof(err), "%s (in %s)", c->why, state_name[c->state]);
        slot_finish(c->slot, 0, err);
    }
}

/* The application's part: "E" + u64 length + the slot's message. */
static int send_echo(conn_t *c)
{
    uint8_t hdr[9] = {'E'};
    for (int i = 0; i < 8; i++)
        hdr[1 + i] = (uint8_t) ((uint64_t) o.msg_size >> (56 - 8 * i));
    c->state = S_ECHO;
    if (out_put(c, hdr, 9) < 0 ||
        out_put(c, R.msgs + (size_t) c->slot * (size_t) o.msg_size, (size_t) o.msg_size) < 0) {
        snprintf(c->why, sizeof(c->why), "echo request does not fit");
        return -1;
    }
    return 1;
}

static int conc_ready(conn_t *c)
{
    if (c->state == S_TCP) {
        const char *name = c->role == R_CTL ? o.agent_name
                           : c->role == R_CLI_DIRECT
                               ? o.direct_name
                               : NULL; /* a link: its key is checked instead */
        return tls_start(c, &g_cli, name);
    }
    if (c->role == R_CTL) {
        xr_msg_t m = {.type = XR_MSG_HELLO};
        m.u.hello.min_version = m.u.hello.max_version = 1;
        m.u.hello.role = XR_ROLE_LIBRARY;
        xr_pstr_set(&m.u.hello.software, "xray_load");
        g_ctl_resumed_n += c->resumed;
        c->state = S_HELLO;
        return send_msg(c, &m);
    }
    slot_t *s = &R.slots[c->slot];
    s->resumed = c->resumed;
    if (c->role == R_CLI_DIRECT) {
        s->t_conn = now() - R.t0; /* usable: TCP + TLS */
        return send_echo(c);
    }
    s->t_tls = now() - R.t0;
    uint8_t kh[32];
    if (o.check_key && (peer_keyhash(&c->ssl, kh) != 0 || memcmp(kh, c->peer_key, 32) != 0)) {
        snprintf(c->why, sizeof(c->why),
                 "relay point's key does not hash to CONNECT_OK's peer_key");
        return -1;
    }
    xr_msg_t m = {.type = XR_MSG_LINK};
    memcpy(m.u.link.token, c->token, XR_PROTO_TOKEN);
    c->state = S_LINK_OK;
    return send_msg(c, &m);
}

static void start_link(int i, const xr_msg_t *m)
{
    struct sockaddr_in rp;
    if (m->u.connect_ok.mode != XR_CONNECT_RELAY) {
        slot_finish(i, 0, "CONNECT_OK mode 1, expected 2 (relay)");
        return;
    }
    if (!paddr_in(&m->u.connect_ok.addr, &rp)) {
        slot_finish(i, 0, "CONNECT_OK names no IPv4 relay point");
        return;
    }
    R.slots[i].t_cok = now() - R.t0;
    conn_t *c = dial(&rp, R_CLI_LINK, CLI_BUF, CLI_BUF);
    if (c == NULL) {
        slot_finish(i, 0, "cannot connect to the relay point");
        return;
    }
    c->slot = i;
    c->sv = saved_for("link", &rp);
    c->deadline = R.t0 + o.conn_timeout;
    memcpy(c->token, m->u.connect_ok.token, XR_PROTO_TOKEN);
    memcpy(c->peer_key, m->u.connect_ok.peer_key, XR_PROTO_KEYHASH);
    R.slots[i].c = c;
}

/* Write the run's CONNECTs: all at once, or as many as --ctl-window lets be
 * unanswered.  (With no window, xrayd's agent closes a session whose answers
 * to one read overflow its 16-frame output buffer: >178 CONNECTs.) */
static void send_connects(void)
{
    while (g_ctl != NULL && R.sent < R.k &&
           (o.ctl_window == 0 || R.sent - R.answered < o.ctl_window)) {
        int i = R.sent++;
        xr_msg_t m = {.type = XR_MSG_CONNECT};
        m.u.connect.id = R.id_base + (uint32_t) i;
        m.u.connect.proto = XR_PROTO_TCP;
        struct sockaddr_storage ss = {0};
        memcpy(&ss, &g_official, sizeof(g_official));
        xr_paddr_from_sockaddr(&m.u.connect.dst, &ss);
        if (send_msg(g_ctl, &m) < 0)
            slot_finish(i, 0, "CONNECT does not fit the control buffer");
    }
}

static int conc_ctl_data(conn_t *c)
{
    xr_msg_t m;
    int r, any = 0;
    char eb[300];
    while ((r = next_frame(c, &m)) > 0) {
        any = 1;
        if (c->state == S_HELLO) {
            if (m.type != XR_MSG_HELLO_OK) {
                snprintf(c->why, sizeof(c->why), "agent A answered HELLO with %s",
                         m.type == XR_MSG_ERROR ? err_text(&m, eb, sizeof(eb))
                                                : xr_proto_type_name(m.type));
                return -1;
            }
            c->state = S_CTL;
            g_ctl_ready = 1;
            continue;
        }
        uint32_t id = m.type == XR_MSG_CONNECT_OK ? m.u.connect_ok.id
                      : m.type == XR_MSG_ERROR    ? m.u.error.id
                                                  : 0;
        if (m.type == XR_MSG_ERROR && id == 0) {
            snprintf(c->why, sizeof(c->why), "agent A: %s", err_text(&m, eb, sizeof(eb)));
            return -1;
        }
        if (m.type != XR_MSG_CONNECT_OK && m.type != XR_MSG_ERROR) {
            snprintf(c->why, sizeof(c->why), "agent A sent %s", xr_proto_type_name(m.type));
            return -1;
        }
        if (R.slots == NULL || !R.xray || id < R.id_base || id >= R.id_base + (uint32_t) R.k ||
            R.slots[id - R.id_base].done || R.slots[id - R.id_base].c != NULL) {
            g_stale_answers++; /* an answer for a run that has ended: its relay point expires */
            continue;
        }
        int i = (int) (id - R.id_base);
        R.answered++;
        if (m.type == XR_MSG_ERROR) {
            char full[320];
            snprintf(full, sizeof(full), "agent A: %s", err_text(&m, eb, sizeof(eb)));
            slot_finish(i, 0, full);
        } else
            start_link(i, &m);
        send_connects();
    }
    if (r < 0)
        return -1;
    if (c->eof) {
        snprintf(c->why, sizeof(c->why), "agent A closed the control session");
        return -1;
    }
    return any;
}

static int conc_data(conn_t *c)
{
    if (c->role == R_CTL)
        return conc_ctl_data(c);
    slot_t *s = &R.slots[c->slot];
    xr_msg_t m;
    char eb[300];
    int r;
    if (c->state == S_LINK_OK || c->state == S_ACK) {
        if ((r = next_frame(c, &m)) < 0)
            return -1;
        if (r == 0) {
            if (c->eof) {
                snprintf(c->why, sizeof(c->why), "relay point closed the link");
                return -1;
            }
            return 0;
        }
        if (m.type == XR_MSG_ERROR) {
            snprintf(c->why, sizeof(c->why), "relay point: %s", err_text(&m, eb, sizeof(eb)));
            return -1;
        }
        if (c->state == S_LINK_OK) {
            if (m.type != XR_MSG_LINK_OK) {
                snprintf(c->why, sizeof(c->why), "got %s, expected LINK_OK",
                         xr_proto_type_name(m.type));
                return -1;
            }
            s->t_lok = now() - R.t0;
            xr_msg_t ack = {.type = XR_MSG_ACK};
            c->state = S_ACK;
            return send_msg(c, &ack) < 0 ? -1 : 1;
        }
        if (m.type != XR_MSG_ACK) {
            snprintf(c->why, sizeof(c->why), "got %s, expected ACK", xr_proto_type_name(m.type));
            return -1;
        }
        s->t_conn = now() - R.t0; /* usable: connect() would return now */
        return send_echo(c);
    }
    if (c->state == S_ECHO) {
        size_t want = (size_t) o.msg_size;
        if (c->inlen >= want) {
            int same =
                memcmp(c->in, R.msgs + (size_t) c->slot * want, want) == 0 && c->inlen == want;
            slot_finish(c->slot, same, same ? NULL : "echo differs from what was sent");
            conn_close(c);
            return 1;
        }
        if (c->eof) {
            snprintf(c->why, sizeof(c->why), "closed after %zu of %zu echoed bytes", c->inlen,
                     want);
            return -1;
        }
    }
    return 0;
}

static int ctl_open(void)
{
    g_ctl_ready = 0;
    conn_t *c = dial(&g_agent, R_CTL, SRV_BUF, CTL_BUF);
    if (c == NULL)
        return -1;
    c->sv = g_sv_ctl;
    c->deadline = now() + 15;
    g_ctl = c;
    g_ctl_opened++;
    while (g_ctl != NULL && !g_ctl_ready && !g_stop)
        loop_once(0.1);
    if (g_ctl == NULL)
        return -1;
    g_ctl->deadline = 0; /* kept across runs */
    return 0;
}

static int median_cmp(const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    if (n == 0)
        return -1;
    qsort(v, (size_t) n, sizeof(double), median_cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void print_ms(const char *name, double v, int *first)
{
    printf("%s\"%s\": ", *first ? "" : ", ", name);
    if (v < 0)
        printf("null");
    else
        printf("%.3f", v * 1e3);
    *first = 0;
}

static unsigned long long g_serial;

/* One run: k connections at once over path; prints its JSON line. */
static void run_once(const char *path, int k, int rep, int warm)
{
    int xray = strcmp(path, "xray") == 0;
    if (xray && g_ctl == NULL && ctl_open() < 0) {
        logmsg("cannot open the control session to agent A");
    }
    memset(&R, 0, sizeof(R));
    R.slots = calloc((size_t) k, sizeof(slot_t));
    R.msgs = malloc((size_t) k * (size_t) o.msg_size);
    if (R.slots == NULL || R.msgs == NULL)
        die("out of memory");
    R.k = R.left = k;
    R.xray = xray;
    /* Every connection's message differs, so crossed streams would show. */
    for (int i = 0; i < k; i++) {
        uint64_t x = ++g_serial * 0x9E3779B97F4A7C15ull;
        uint8_t *p = R.msgs + (size_t) i * (size_t) o.msg_size;
        for (int j = 0; j < o.msg_size; j++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            p[j] = (uint8_t) x;
        }
    }
    double cpu0[MAX_CPU], cpu1[MAX_CPU];
    cpu_trees(cpu0);
    double me0 = cpu_self();
    R.t0 = g_now = now();
    if (xray && g_ctl != NULL) {
        R.id_base = g_next_id;
        g_next_id += (uint32_t) k;
        send_connects();
        conn_run(g_ctl, 0);
    } else if (xray) {
        for (int i = 0; i < k; i++)
            slot_finish(i, 0, "no control session with agent A");
    } else {
        for (int i = 0; i < k; i++) {
            conn_t *c = dial(&g_direct, R_CLI_DIRECT, CLI_BUF, CLI_BUF);
            if (c == NULL) {
                slot_finish(i, 0, "cannot connect to the direct server");
                continue;
            }
            c->slot = i;
            c->sv = saved_for("direct", &g_direct);
            c->deadline = R.t0 + o.conn_timeout;
            R.slots[i].c = c;
        }
    }
    reap();
    double end = R.t0 + o.run_timeout;
    while (R.left > 0 && !g_stop && now() < end)
        loop_once(end - now());
    for (int i = 0; i < k; i++) {
        slot_t *s = &R.slots[i];
        if (s->done)
            continue;
        if (s->c != NULL) {
            char err[460];
            snprintf(err, sizeof(err), "not done within %.0f s (in %s)", o.run_timeout,
                     state_name[s->c->state]);
            conn_kill(s->c);
            slot_finish(i, 0, err);
        } else
            slot_finish(i, 0, g_stop ? "stopped" : "no CONNECT_OK within the run's time");
    }
    reap();
    double wall = now() - R.t0;
    double me = cpu_self() - me0;
    cpu_trees(cpu1);

    int ok = 0, resumed = 0;
    double last = 0;
    double *v = malloc(sizeof(double) * (size_t) (k + 1) * 6);
    double *conn = v, *cok = v + k, *tls = v + 2 * k, *lok = v + 3 * k, *echo = v + 4 * k;
    int nok = 0;
    for (int i = 0; i < k; i++) {
        slot_t *s = &R.slots[i];
        if (!s->ok)
            continue;
        ok++;
        resumed += s->resumed;
        if (s->t_done > last)
            last = s->t_done;
        conn[nok] = s->t_conn;
        cok[nok] = s->t_cok;
        tls[nok] = s->t_tls;
        lok[nok] = s->t_lok;
        echo[nok] = s->t_done - s->t_conn;
        nok++;
    }
    printf("{\"kind\": \"%s\", \"path\": \"%s\", \"k\": %d, \"rep\": %d, \"ok\": %d, "
           "\"failed\": %d, \"total_s\": ",
           warm ? "warmup" : "run", path, k, rep, ok, k - ok);
    if (ok == k)
        printf("%.6f, \"total_ms\": %.3f", last, last * 1e3);
    else
        printf("null, \"total_ms\": null");
    printf(", \"wall_s\": %.6f, \"resumed\": %d, \"ctl_window\": %d, \"conn_s\": [", wall, resumed,
           xray ? o.ctl_window : -1);
    qsort(conn, (size_t) nok, sizeof(double), median_cmp);
    for (int i = 0; i < nok; i++)
        printf("%s%.6f", i ? ", " : "", conn[i]);
    printf("], \"median_ms\": {");
    int first = 1;
    print_ms("connect_done", median(conn, nok), &first);
    if (xray) {
        print_ms("connect_ok", median(cok, nok), &first);
        print_ms("link_tls", median(tls, nok), &first);
        print_ms("link_ok", median(lok, nok), &first);
    }
    print_ms("echo_after_connect", median(echo, nok), &first);
    printf("}, \"cpu_s\": {\"client\": %.4f", me);
    for (int i = 0; i < o.ncpu; i++) {
        printf(", ");
        json_str(stdout, o.cpu[i].name);
        printf(": %.4f", cpu1[i] - cpu0[i]);
    }
    printf("}, \"errors\": [");
    /* The distinct errors, at most 5, each with its count. */
    int shown = 0;
    for (int i = 0; i < k && shown < 5; i++) {
        slot_t *s = &R.slots[i];
        if (s->ok)
            continue;
        int seen = 0, count = 0;
        for (int j = 0; j < k; j++)
            if (!R.slots[j].ok && strcmp(R.slots[j].err, s->err) == 0) {
                if (j < i)
                    seen = 1;
                count++;
            }
        if (seen)
            continue;
        char e[480];
        snprintf(e, sizeof(e), "%d x %s", count, s->err);
        printf("%s", shown ? ", " : "");
        json_str(stdout, e);
        shown++;
    }
    printf("]}\n");
    fflush(stdout);
    char tot[32];
    snprintf(tot, sizeof(tot), ok == k ? "%.2f ms" : "NA", last * 1e3);
    logmsg("%s%s K=%d rep %d: %s, %d failed, %d resumed, client CPU %.3f s", warm ? "warm-up " : "",
           path, k, rep + 1, tot, k - ok, resumed, me);
    free(v);
    free(R.slots);
    free(R.msgs);
    memset(&R, 0, sizeof(R));
}

static int cmd_conc(void)
{
    if (o.npaths == 0 || o.nks == 0)
        die("--path and --k are required");
    int need_xray = 0, need_direct = 0;
    for (int i = 0; i < o.npaths; i++) {
        if (strcmp(o.paths[i], "xray") == 0)
            need_xray = 1;
        else if (strcmp(o.paths[i], "direct") == 0)
            need_direct = 1;
        else
            die("--path: xray or direct, not %s", o.paths[i]);
    }
    if (need_xray) {
        parse_hp(o.agent, &g_agent, "--agent");
        parse_hp(o.official, &g_official, "--official");
        g_sv_ctl = saved_for("ctl", &g_agent);
    }
    if (need_direct)
        parse_hp(o.direct, &g_direct, "--direct");
    on_fail = conc_fail;
    on_ready = conc_ready;
    on_data = conc_data;
    double t_begin = now();
    if (need_xray && ctl_open() < 0)
        die("cannot open the control session to agent A (%s)", o.agent);
    if (o.warmup > 0)
        for (int p = 0; p < o.npaths && !g_stop; p++)
            run_once(o.paths[p], o.warmup, -1, 1);
    for (int rep = 0; rep < o.reps && !g_stop; rep++)
        for (int ki = 0; ki < o.nks && !g_stop; ki++)
            for (int p = 0; p < o.npaths && !g_stop; p++) {
                if (now() - t_begin > o.phase_secs) {
                    logmsg("--phase-secs (%.0f) reached, no more runs", o.phase_secs);
                    goto out;
                }
                run_once(o.paths[p], o.ks[ki], rep, 0);
                /* Let the agents tear the last run's relays down before the next
                 * run starts, so runs do not overlap. */
                double until = now() + o.gap;
                while (!g_stop && now() < until)
                    loop_once(until - now());
                reap();
            }
out:
    printf("{\"kind\": \"end\", \"control_sessions\": %d, \"control_resumed\": %d, "
           "\"ctl_window\": %d, \"stale_answers\": %d, \"client_cpu_s\": %.4f, "
           "\"seconds\": %.3f}\n",
           g_ctl_opened, g_ctl_resumed_n, o.ctl_window, g_stale_answers, cpu_self(),
           now() - t_begin);
    fflush(stdout);
    return g_stop ? 1 : 0;
}

/* ================================================================================= */
/* the servers: xserve and dserve                                                    */
/* ================================================================================= */

static struct {
    unsigned long accepted, resumed, errors, bytes, probes;
    unsigned long incoming, mode1, mode2, held, streams;
} S;
static char *g_errors[MAX_ERRORS_KEPT];
static int g_nerrors;
static struct {
    unsigned long sent, ok;
} g_refresh;

static void srv_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void srv_err(const char *fmt, ...)
{
    char buf[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    S.errors++;
    if (g_nerrors < MAX_ERRORS_KEPT)
        g_errors[g_nerrors++] = strdup(buf);
    fprintf(stderr, "error: %s\n", buf);
}

static void out_line(const char *json)
{
    FILE *f = fopen(o.out, "a");
    if (f == NULL)
        die("--out %s: %s", o.out, strerror(errno));
    fprintf(f, "%s\n", json);
    fclose(f);
}

static int g_is_xserve;

static void write_final(void)
{
    FILE *f = fopen(o.out, "a");
    if (f == NULL)
        return;
    fprintf(f,
            "{\"stats\": {\"accepted\": %lu, \"resumed\": %lu, \"errors\": %lu, \"bytes\": %lu, "
            "\"probes\": %lu",
            S.accepted, S.resumed, S.errors, S.bytes, S.probes);
    if (g_is_xserve)
        fprintf(f, ", \"incoming\": %lu, \"mode1\": %lu, \"mode2\": %lu, \"held\": %lu", S.incoming,
                S.mode1, S.mode2, S.held);
    fprintf(f, "}, \"errors\": [");
    for (int i = 0; i < g_nerrors; i++) {
        fprintf(f, "%s", i ? ", " : "");
        json_str(f, g_errors[i]);
    }
    fprintf(f, "], \"final\": true");
    if (g_is_xserve)
        fprintf(f, ", \"refresh\": {\"sent\": %lu, \"ok\": %lu}", g_refresh.sent, g_refresh.ok);
    fprintf(f, ", \"server\": \"xray_load\"}\n");
    fclose(f);
}

/* xserve's state: the control session and what INCOMING said. */
static conn_t *g_bctl;
static int g_registered;
static uint64_t g_handle;
static uint32_t g_heartbeat_ms = 1000;
static uint8_t g_agent_key[32];
static int g_have_agent_key;
static struct sockaddr_in g_local;
static saved_t *g_sv_bctl;
static struct {
    uint8_t token[XR_PROTO_TOKEN];
    double until;
} g_inc[MAX_INCOMING];
static int g_ninc;

static int srv_ready(conn_t *c)
{
    if (c->state == S_TCP) /* a connection we made: control or mode-2 link */
        return tls_start(c, &g_cli, c->role == R_CTL ? o.agent_name : NULL);
    if (c->role == R_CTL) {
        if (peer_keyhash(&c->ssl, g_agent_key) == 0)
            g_have_agent_key = 1;
        xr_msg_t m = {.type = XR_MSG_HELLO};
        m.u.hello.min_version = m.u.hello.max_version = 1;
        m.u.hello.role = XR_ROLE_LIBRARY;
        xr_pstr_set(&m.u.hello.software, "xray_load");
        c->state = S_HELLO;
        return send_msg(c, &m);
    }
    S.accepted++;
    S.resumed += (unsigned long) c->resumed;
    c->idle = SERVER_IDLE;
    if (c->role == R_SRV_DIRECT) {
        c->state = S_SERVE_HDR;
        return 0;
    }
    if (c->role == R_SRV_LINK_IN) {
        /* The agent's link must come from the agent we registered with. */
        uint8_t kh[32];
        if (g_have_agent_key && (peer_keyhash(&c->ssl, kh) != 0 || memcmp(kh, g_agent_key, 32))) {
            snprintf(c->why, sizeof(c->why), "its certificate is not agent B's");
            return -1;
        }
        c->state = S_LINK_WAIT;
        return 0;
    }
    xr_msg_t m = {.type = XR_MSG_LINK};
    memcpy(m.u.link.token, c->token, XR_PROTO_TOKEN);
    c->state = S_LINK_OK;
    return send_msg(c, &m);
}

static void srv_fail(conn_t *c)
{
    char hp[40];
    if (c->role == R_CTL) {
        srv_err("control connection to agent B lost: %s", c->why);
        g_bctl = NULL;
        return;
    }
    if (c->role == R_SRV_DIRECT && c->state == S_TLS && c->bytes_in == 0) {
        S.probes++; /* the orchestrator's TCP reachability probe */
        return;
    }
    if (c->role == R_SRV_LINK_OUT)
        srv_err("link to %s: %s (in %s)", hp_str(&c->dst, hp, sizeof(hp)), c->why,
                state_name[c->state]);
    else
        srv_err("%s: %s (in %s)", c->role == R_SRV_LINK_IN ? "mode-1 link" : "direct client",
                c->why, state_name[c->state]);
}

static int close_after_flush(conn_t *c)
{
    c->state = S_FLUSH_CLOSE;
    c->idle = 0;
    c->deadline = g_now + CLOSE_SECS;
    return 1;
}

static void srv_timeout(conn_t *c)
{
    if (c->state == S_HELD) {
        /* No INCOMING named its token in time. */
        srv_err("mode-1 link: no INCOMING for its token within %.0f s", HOLD_SECS);
        send_error(c, XR_PERR_BAD_TOKEN, 0, "no INCOMING named this token");
        close_after_flush(c);
        conn_run(c, 0);
        return;
    }
    if (c->state == S_FLUSH_CLOSE) {
        conn_kill(c);
        return;
    }
    conn_fail(c, "no progress for %.0f s", SERVER_IDLE);
}

/* Is the token one an INCOMING (mode 1) named?  Each is taken once. */
static int take_incoming(const uint8_t *token)
{
    for (int i = 0; i < g_ninc; i++)
        if (memcmp(g_inc[i].token, token, XR_PROTO_TOKEN) == 0) {
            g_inc[i] = g_inc[--g_ninc];
            return 1;
        }
    return 0;
}

static int link_accept(conn_t *c)
{
    xr_msg_t ok = {.type = XR_MSG_LINK_OK}, ack = {.type = XR_MSG_ACK};
    c->state = S_ACK;
    c->idle = SERVER_IDLE;
    c->deadline = g_now + SERVER_IDLE;
    S.mode1++;
    return send_msg(c, &ok) < 0 || send_msg(c, &ack) < 0 ? -1 : 1;
}

/* The stream protocol, shared by both servers. */
static int serve(conn_t *c)
{
    int any = 0;
    for (int guard = 0; guard < 4; guard++) {
        if (c->state == S_SERVE_HDR) {
            if (c->inlen < 9) {
                if (c->eof) { /* Closed before a header: nothing to serve. */
                    conn_close(c);
                    return 1;
                }
                return any;
            }
            uint64_t n = 0;
            for (int i = 1; i < 9; i++)
                n = n << 8 | c->in[i];
            uint8_t mode = c->in[0];
            consume(c, 9);
            S.streams++;
            if (mode == 'E')
                c->state = S_SERVE_ECHO; /* n is not used: serve_stream echoes until EOF */
            else if (mode == 'S') {
                c->state = S_SERVE_SINK;
                c->n = n;
            } else {
                conn_close(c); /* An unknown stream: nothing served, as serve_stream does. */
                return 1;
            }
            any = 1;
            continue;
        }
        if (c->state == S_SERVE_ECHO) {
            size_t room = out_room(c);
            size_t n = c->inlen < room ? c->inlen : room;
            if (n > 0 && out_put(c, c->in, n) == 0) {
                consume(c, n);
                c->got += n;
                S.bytes += n;
                any = 1;
            }
            if (c->eof && c->inlen == 0)
                return close_after_flush(c);
            return any;
        }
        if (c->state == S_SERVE_SINK) {
            uint64_t left = c->n - c->got;
            size_t n = c->inlen < left ? c->inlen : (size_t) left;
            if (n > 0) {
                c->got += n;
                S.bytes += n;
                c->inlen = 0; /* bytes past n are not the stream's: dropped */
                any = 1;
            }
            if (c->got == c->n || c->eof) {
                uint8_t ans[8];
                for (int i = 0; i < 8; i++)
                    ans[i] = (uint8_t) (c->got >> (56 - 8 * i));
                out_put(c, ans, 8);
                return close_after_flush(c);
            }
            return any;
        }
        return any;
    }
    return any;
}

static int srv_link_data(conn_t *c)
{
    xr_msg_t m;
    char eb[300];
    int r, any = 0;
    while (c->state == S_LINK_OK || c->state == S_ACK || c->state == S_LINK_WAIT) {
        if ((r = next_frame(c, &m)) < 0)
            return -1;
        if (r == 0) {
            if (c->eof) {
                snprintf(c->why, sizeof(c->why), "the agent closed the link");
                return -1;
            }
            return any;
        }
        any = 1;
        if (m.type == XR_MSG_ERROR) {
            snprintf(c->why, sizeof(c->why), "agent B: %s", err_text(&m, eb, sizeof(eb)));
            return -1;
        }
        if (c->state == S_LINK_WAIT) {
            if (m.type != XR_MSG_LINK) {
                snprintf(c->why, sizeof(c->why), "got %s, expected LINK",
                         xr_proto_type_name(m.type));
                return -1;
            }
            memcpy(c->token, m.u.link.token, XR_PROTO_TOKEN);
            if (take_incoming(c->token)) {
                if (link_accept(c) < 0)
                    return -1;
                continue;
            }
            S.held++;
            c->state = S_HELD;
            c->idle = 0; /* the hold is a fixed 2 s */
            c->deadline = g_now + HOLD_SECS;
            return 1;
        }
        if (c->state == S_LINK_OK) {
            if (m.type != XR_MSG_LINK_OK) {
                snprintf(c->why, sizeof(c->why), "got %s, expected LINK_OK",
                         xr_proto_type_name(m.type));
                return -1;
            }
            xr_msg_t ack = {.type = XR_MSG_ACK};
            c->state = S_ACK;
            if (send_msg(c, &ack) < 0)
                return -1;
            continue;
        }
        if (m.type != XR_MSG_ACK) {
            snprintf(c->why, sizeof(c->why), "got %s, expected ACK", xr_proto_type_name(m.type));
            return -1;
        }
        c->state = S_SERVE_HDR;
    }
    return any;
}

static void start_link_out(const xr_msg_t *m)
{
    struct sockaddr_in rp;
    if (!paddr_in(&m->u.incoming.addr, &rp)) {
        srv_err("INCOMING mode 2 names no IPv4 relay point");
        return;
    }
    conn_t *c = dial(&rp, R_SRV_LINK_OUT, SRV_BUF, SRV_BUF);
    if (c == NULL) {
        srv_err("cannot connect to the relay point");
        return;
    }
    c->sv = saved_for("link", &rp);
    c->deadline = g_now + 30;
    memcpy(c->token, m->u.incoming.token, XR_PROTO_TOKEN);
    S.mode2++;
}

static int xs_ctl_data(conn_t *c)
{
    xr_msg_t m;
    char eb[300];
    int r, any = 0;
    while ((r = next_frame(c, &m)) > 0) {
        any = 1;
        if (c->state == S_HELLO) {
            if (m.type != XR_MSG_HELLO_OK) {
                snprintf(c->why, sizeof(c->why), "agent B answered HELLO with %s",
                         m.type == XR_MSG_ERROR ? err_text(&m, eb, sizeof(eb))
                                                : xr_proto_type_name(m.type));
                return -1;
            }
            g_heartbeat_ms = m.u.hello_ok.heartbeat_ms;
            xr_msg_t reg = {.type = XR_MSG_REGISTER};
            reg.u.reg.id = g_next_id++;
            reg.u.reg.proto = XR_PROTO_TCP;
            struct sockaddr_storage ss = {0};
            memcpy(&ss, &g_local, sizeof(g_local));
            xr_paddr_from_sockaddr(&reg.u.reg.local, &ss);
            c->state = S_CTL;
            if (send_msg(c, &reg) < 0)
                return -1;
            continue;
        }
        switch (m.type) {
        case XR_MSG_REGISTERED: {
            struct sockaddr_in off;
            char hp[40], line[200];
            g_handle = m.u.registered.handle;
            paddr_in(&m.u.registered.official, &off);
            snprintf(line, sizeof(line),
                     "{\"official\": \"%s\", \"lease_ms\": %u, \"heartbeat_ms\": %u, \"local\": "
                     "\"%s\"}",
                     hp_str(&off, hp, sizeof(hp)), m.u.registered.lease_ms, g_heartbeat_ms,
                     o.local);
            out_line(line);
            g_registered = 1;
            break;
        }
        case XR_MSG_REFRESHED: g_refresh.ok++; break;
        case XR_MSG_INCOMING: {
            xr_msg_t ok = {.type = XR_MSG_INCOMING_OK};
            ok.u.done.id = m.u.incoming.id;
            if (send_msg(c, &ok) < 0)
                return -1;
            S.incoming++;
            if (m.u.incoming.mode == XR_INCOMING_CONNECT_OUT) {
                start_link_out(&m);
                break;
            }
            /* Mode 1: the agent connects to us, and its link may have come
             * before this INCOMING. */
            for (conn_t *l = g_conns.next; l != &g_conns; l = l->next)
                if (l->role == R_SRV_LINK_IN && l->state == S_HELD &&
                    memcmp(l->token, m.u.incoming.token, XR_PROTO_TOKEN) == 0) {
                    if (link_accept(l) < 0)
                        conn_fail(l, "LINK_OK does not fit");
                    else
                        conn_run(l, 0);
                    goto next;
                }
            if (g_ninc == MAX_INCOMING) {
                srv_err("too many mode-1 INCOMINGs without a link");
                break;
            }
            memcpy(g_inc[g_ninc].token, m.u.incoming.token, XR_PROTO_TOKEN);
            g_inc[g_ninc++].until = g_now + INCOMING_SECS;
            break;
        }
        case XR_MSG_ERROR: srv_err("agent B: %s", err_text(&m, eb, sizeof(eb))); break;
        default: srv_err("agent B: unexpected frame %s", xr_proto_type_name(m.type));
        }
    next:;
    }
    if (r < 0)
        return -1;
    if (c->eof) {
        snprintf(c->why, sizeof(c->why), "agent B closed the control session");
        return -1;
    }
    return any;
}

static int srv_data(conn_t *c)
{
    if (c->role == R_CTL)
        return xs_ctl_data(c);
    if (c->state == S_TLS)
        return 0;
    int any = 0;
    if (c->state == S_LINK_OK || c->state == S_ACK || c->state == S_LINK_WAIT) {
        any = srv_link_data(c);
        if (any < 0 || c->dead)
            return any;
    }
    if (c->state == S_HELD) {
        if (c->eof) {
            snprintf(c->why, sizeof(c->why), "the agent closed a held link");
            return -1;
        }
        return any;
    }
    if (c->state >= S_SERVE_HDR && c->state <= S_SERVE_SINK) {
        int r = serve(c);
        return r < 0 ? -1 : (any | r);
    }
    return any;
}

static int g_listen_role;

static void do_accept(conn_t *l)
{
    for (int i = 0; i < 256; i++) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
                srv_err("accept: %s", strerror(errno));
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conn_t *c = conn_new(fd, g_listen_role, SRV_BUF, SRV_BUF);
        c->deadline = g_now + SERVER_IDLE;
        if (tls_start(c, &g_srv, NULL) < 0) {
            conn_fail(c, NULL);
            continue;
        }
        set_interest(c);
    }
}

static conn_t *listen_on(const struct sockaddr_in *a, int role)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    char hp[40];
    if (fd < 0)
        die("socket: %s", strerror(errno));
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *) a, sizeof(*a)) != 0 || listen(fd, 1024) != 0)
        die("listen on %s: %s", hp_str(a, hp, sizeof(hp)), strerror(errno));
    conn_t *l = conn_new(fd, R_LISTEN, 1, 1);
    g_listen_role = role;
    set_interest(l);
    return l;
}

static void srv_setup(void)
{
    if (o.out == NULL)
        die("--out is required");
    on_fail = srv_fail;
    on_ready = srv_ready;
    on_data = srv_data;
    on_timeout = srv_timeout;
}

static int cmd_dserve(void)
{
    struct sockaddr_in a;
    parse_hp(o.listen, &a, "--listen");
    srv_setup();
    listen_on(&a, R_SRV_DIRECT);
    char line[120];
    snprintf(line, sizeof(line), "{\"ready\": \"%s\", \"server\": \"xray_load\"}", o.listen);
    out_line(line);
    while (!g_stop)
        loop_once(1.0);
    write_final();
    return 0;
}

static int cmd_xserve(void)
{
    struct sockaddr_in agent;
    parse_hp(o.agent, &agent, "--agent");
    parse_hp(o.local, &g_local, "--local");
    g_is_xserve = 1;
    srv_setup();
    /* In mode 1 the agent connects to the registered local address. */
    listen_on(&g_local, R_SRV_LINK_IN);
    g_sv_bctl = saved_for("ctl", &agent);
    g_bctl = dial(&agent, R_CTL, SRV_BUF, SRV_BUF);
    if (g_bctl == NULL)
        die("cannot connect to agent B at %s", o.agent);
    g_bctl->sv = g_sv_bctl;
    g_bctl->deadline = now() + 15;
    double next_refresh = 0;
    while (!g_stop) {
        loop_once(0.1);
        if (g_bctl == NULL) {
            write_final();
            return 1;
        }
        if (g_registered && next_refresh == 0) {
            g_bctl->deadline = 0; /* the control session lives as long as we do */
            next_refresh = g_now + g_heartbeat_ms / 1e3;
        }
        if (next_refresh > 0 && g_now >= next_refresh) {
            xr_msg_t m = {.type = XR_MSG_REFRESH};
            m.u.refresh.id = g_next_id++;
            m.u.refresh.handle = g_handle;
            if (send_msg(g_bctl, &m) == 0)
                g_refresh.sent++;
            conn_run(g_bctl, 0);
            reap();
            next_refresh = g_now + (g_heartbeat_ms < 100 ? 0.1 : g_heartbeat_ms / 1e3);
        }
        /* Forget mode-1 INCOMINGs whose link never came. */
        for (int i = 0; i < g_ninc; i++)
            if (g_now > g_inc[i].until) {
                srv_err("mode-1 INCOMING: no link within %.0f s", INCOMING_SECS);
                g_inc[i--] = g_inc[--g_ninc];
            }
    }
    write_final();
    return 0;
}

/* ================================================================================= */

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    g_cmd = argv[1];
    parse_opts(argc - 1, argv + 1);
    struct sigaction sa = {.sa_handler = on_stop};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    alarm((unsigned) (o.max_secs + 0.999));
    /* 200 connections and their sockets: more than the default 1024 fds are
     * not needed, but take what is allowed */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if ((g_ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        die("epoll_create1: %s", strerror(errno));
    tls_init();
    g_now = now();
    if (strcmp(g_cmd, "conc") == 0)
        return cmd_conc();
    if (strcmp(g_cmd, "xserve") == 0)
        return cmd_xserve();
    if (strcmp(g_cmd, "dserve") == 0)
        return cmd_dserve();
    usage();
}
