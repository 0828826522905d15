/*
 * api.c: the XRAY socket API (xray.h) - libxray, and compiled again with
 * XR_PRELOAD as the body of libxray-preload.so (preload.c).
 *
 * The application's descriptors stay kernel descriptors.  A connection
 * the agent relays becomes one end of a socket pair, put in place of the
 * application's socket with dup3; the helper process (`xray helper`,
 * started here on first use) holds the other end and the link.  So the
 * library needs to know only what the kernel cannot say: a relayed
 * connection's addresses, whether its non-blocking connect has
 * completed, and a server socket's official address.  That is a small
 * table by descriptor, checked against the descriptor's inode before use
 * (an application may close descriptors behind the library's back:
 * close_range, an exec).
 *
 * Only libc here (and libdl for the shim): no TLS, no threads of our own,
 * nothing that could disturb the application's process.
 */
#include "common/sockaddr.h"
#include "lib/xray.h"
#include "lib/helper_msg.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef XR_PRELOAD
#include <dlfcn.h>
#endif

extern char **environ;

/* The installed `xray` (the Makefile says where). */
#ifndef XR_HELPER_BIN
#define XR_HELPER_BIN "/usr/local/bin/xray"
#endif

/* ---- the C library's own calls ------------------------------------------ */

/* In the shim the application's calls of these names come here, so the
 * library reaches libc's through pointers (dlsym RTLD_NEXT). */
static struct {
    int (*connect)(int, const struct sockaddr *, socklen_t);
    int (*bind)(int, const struct sockaddr *, socklen_t);
    int (*listen)(int, int);
    int (*accept4)(int, struct sockaddr *, socklen_t *, int);
    int (*getsockname)(int, struct sockaddr *, socklen_t *);
    int (*getpeername)(int, struct sockaddr *, socklen_t *);
    int (*getsockopt)(int, int, int, void *, socklen_t *);
    int (*setsockopt)(int, int, int, const void *, socklen_t);
    int (*close)(int);
    int (*dup)(int);
    int (*dup3)(int, int, int);
    int (*fcntl)(int, int, ...);
    ssize_t (*sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
    ssize_t (*sendmsg)(int, const struct msghdr *, int);
    ssize_t (*recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
    ssize_t (*recvmsg)(int, struct msghdr *, int);
    int (*getaddrinfo)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
} xr_libc;

static pthread_once_t xr_libc_once = PTHREAD_ONCE_INIT;

static void xr_libc_init(void)
{
#ifdef XR_PRELOAD
#define XR_LIBC(f) *(void **) &xr_libc.f = dlsym(RTLD_NEXT, #f)
#else
#define XR_LIBC(f) xr_libc.f = f
#endif
    XR_LIBC(connect);
    XR_LIBC(bind);
    XR_LIBC(listen);
    XR_LIBC(accept4);
    XR_LIBC(getsockname);
    XR_LIBC(getpeername);
    XR_LIBC(getsockopt);
    XR_LIBC(setsockopt);
    XR_LIBC(close);
    XR_LIBC(dup);
    XR_LIBC(dup3);
    XR_LIBC(fcntl);
    XR_LIBC(sendto);
    XR_LIBC(sendmsg);
    XR_LIBC(recvfrom);
    XR_LIBC(recvmsg);
    XR_LIBC(getaddrinfo);
#undef XR_LIBC
}

#define LIBC(f) (pthread_once(&xr_libc_once, xr_libc_init), xr_libc.f)

/* ---- errors and debugging ----------------------------------------------- */

static __thread int xr_last_errno;
static __thread char xr_last_text[XR_HMSG_TEXT + 64];

static void xr_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void xr_debug(const char *fmt, ...)
{
    const char *d = getenv("XRAY_DEBUG");
    if (d == NULL || d[0] == '\0' || strcmp(d, "0") == 0)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t) n > sizeof(line) - 2)
        n = (int) sizeof(line) - 2;
    line[n++] = '\n';
    char out[600];
    int m = snprintf(out, sizeof(out), "libxray[%d]: %.*s", (int) getpid(), n, line);
    if (m > 0 && write(2, out, (size_t) m < sizeof(out) ? (size_t) m : sizeof(out) - 1) < 0)
        return;
}

static int xr_fail(int err, const char *text)
{
    xr_last_errno = err;
    if (text != xr_last_text)
        snprintf(xr_last_text, sizeof(xr_last_text), "%s", text);
    errno = err;
    return -1;
}

const char *xray_strerror(int errnum)
{
    if (errnum != 0 && errnum == xr_last_errno && xr_last_text[0] != '\0')
        return xr_last_text;
    return strerror(errnum);
}

static const char *xr_fmt(const struct sockaddr_storage *ss, char *buf, size_t n)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const void *) ss;
        inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
        port = ntohs(s->sin_port);
        snprintf(buf, n, "%s:%u", ip, port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const void *) ss;
        inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
        port = ntohs(s->sin6_port);
        snprintf(buf, n, "[%s]:%u", ip, port);
    } else {
        snprintf(buf, n, "(family %d)", ss->ss_family);
    }
    return buf;
}

static socklen_t xr_sa_len(int family)
{
    return family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
}

static void xr_sa_copy(const struct sockaddr_storage *ss, struct sockaddr *addr, socklen_t *len)
{
    socklen_t n = xr_sa_len(ss->ss_family);
    if (addr != NULL && len != NULL) {
        memcpy(addr, ss, *len < n ? *len : n);
        *len = n;
    }
}

static int xr_is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *) ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *) ss)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return 0;
}

/* ---- the helper ---------------------------------------------------------- */

static int64_t xr_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One helper per user and client configuration: the socket's name is a
 * hash of the settings that choose the agent and the certificate. */
static int xr_helper_path(char *path, size_t n)
{
    const char *over = getenv("XRAY_HELPER_SOCKET");
    const char *rt = getenv("XDG_RUNTIME_DIR");
    char dir[256];
    if (over != NULL && over[0] == '/') {
        snprintf(path, n, "%s", over);
        return 0;
    }
    static const char *const vars[] = {
        "XRAY_CONFIG", "XRAY_AGENT", "XRAY_AGENT_NAME", "XRAY_CERT", "XRAY_KEY", "XRAY_CA", "HOME"};
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        const char *v = getenv(vars[i]);
        for (const char *p = v ? v : ""; *p; p++)
            h = (h ^ (unsigned char) *p) * 1099511628211ULL;
        h = (h ^ 0xff) * 1099511628211ULL;
    }
    /* A socket's path has 107 bytes at most: a runtime directory too deep
     * for one gives way to /tmp. */
    int w = rt != NULL && rt[0] == '/' ? snprintf(dir, sizeof(dir), "%s/xray", rt) : -1;
    if (w < 0 || (size_t) w + 28 >= sizeof(((struct sockaddr_un *) 0)->sun_path))
        snprintf(dir, sizeof(dir), "/tmp/xray-%u", (unsigned) geteuid());
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return -1;
    struct stat st;
    if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() ||
        (st.st_mode & 077) != 0) {
        xr_debug("%s is not a directory of this user's alone: no helper", dir);
        errno = EPERM;
        return -1;
    }
    w = snprintf(path, n, "%s/helper-%016llx.sock", dir, (unsigned long long) h);
    if (w < 0 || (size_t) w >= n) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

/* Start `xray helper` for path: it detaches itself, so the application
 * has no child of ours to reap beyond this moment. */
static int xr_helper_spawn(const char *path)
{
    const char *bin = getenv("XRAY_HELPER_BIN");
    if (bin == NULL || bin[0] == '\0')
        bin = XR_HELPER_BIN;
    char log[4200];
    snprintf(log, sizeof(log), "%.*s.log", (int) (strlen(path) - 5), path);
    /* Its environment is ours without the shim (it must not load it). */
    size_t ne = 0;
    while (environ[ne] != NULL)
        ne++;
    char **envp = calloc(ne + 1, sizeof(char *));
    if (envp == NULL)
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < ne; i++)
        if (strncmp(environ[i], "LD_PRELOAD=", 11) != 0)
            envp[k++] = environ[i];
    char *argv[] = {"xray", "helper", "--detach", "--socket", (char *) path, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawnattr_init(&at);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSID);
    pid_t pid;
    int rc = posix_spawn(&pid, bin, &fa, &at, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    free(envp);
    if (rc != 0) {
        xr_debug("cannot start the helper %s: %s", bin, strerror(rc));
        return -1;
    }
    /* It checks its configuration before it detaches: a failure shows
     * here, with the reason in its log. */
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        static int told;
        if (!told++)
            fprintf(stderr,
                    "libxray: the XRAY helper (%s) did not start, see %s; connecting "
                    "directly\n",
                    bin, log);
        return -1;
    }
    xr_debug("started the helper %s (log %s)", bin, log);
    return 0;
}

/* A connection to the helper (started if need be), or -1. */
static int xr_helper_open(void)
{
    char path[4200];
    if (xr_helper_path(path, sizeof(path)) < 0)
        return -1;
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sun.sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    /* A helper that could not start is not tried again for a while:
     * every connect would wait for it. */
    static int64_t down_until;
    if (xr_now_ms() < down_until) {
        errno = ECONNREFUSED;
        return -1;
    }
    int started = 0;
    for (int tries = 0; tries < 600; tries++) { /* 3 s for a helper to come up */
        int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (s < 0)
            return -1;
        if (LIBC(connect)(s, (struct sockaddr *) &sun, sizeof(sun)) == 0)
            return s;
        int e = errno;
        LIBC(close)(s);
        if (e != ENOENT && e != ECONNREFUSED && e != EAGAIN)
            return -1;
        if (!started && getenv("XRAY_HELPER_SOCKET") == NULL) {
            started = 1;
            if (xr_helper_spawn(path) < 0) {
                down_until = xr_now_ms() + 10000;
                errno = ECONNREFUSED;
                return -1;
            }
        }
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    xr_debug("the helper did not come up at %s", path);
    down_until = xr_now_ms() + 10000;
    return -1;
}

/* One answer, waiting at most timeout_ms (-1: as long as it takes). */
static int xr_helper_wait(int h, xr_hmsg_t *m, int *fd, int timeout_ms)
{
    struct pollfd p = {h, POLLIN, 0};
    int n;
    while ((n = poll(&p, 1, timeout_ms)) < 0 && errno == EINTR)
        ;
    if (n == 0) {
        errno = ETIMEDOUT;
        return -1;
    }
    int got = n < 0 ? -1 : xr_hmsg_recv(h, m, fd);
    if (got == 0)
        errno = ECONNRESET; /* the helper went away */
    return got == 1 ? 0 : -1;
}

/* ---- the table of the library's descriptors ----------------------------- */

typedef enum { XR_SK_RELAYED = 1, XR_SK_DIRECT, XR_SK_SERVER, XR_SK_ACCEPTED } xr_sk_kind_t;

typedef struct {
    int refs; /* descriptors that share it (dup) */
    int kind;
    dev_t dev;
    ino_t ino;
    int domain;
    int pending;  /* a relayed connect's request, awaiting STATUS; or -1 */
    int status;   /* a relayed connect: -1 pending, else its errno (0: connected) */
    int reported; /* its error went out through SO_ERROR */
    int reg;      /* a server socket's LISTEN connection, or -1 */
    int bound;    /* xr_bound_state_t */
    struct sockaddr_storage peer, official;
} xr_sock_t;

static xr_sock_t **xr_socks;
static size_t xr_nsocks;
static pthread_mutex_t xr_socks_lock = PTHREAD_MUTEX_INITIALIZER;

static void xr_sock_unref(xr_sock_t *s)
{
    if (s == NULL || --s->refs > 0)
        return;
    if (s->pending >= 0)
        LIBC(close)(s->pending);
    if (s->reg >= 0)
        LIBC(close)(s->reg);
    free(s);
}

static int xr_same_file(int fd, const xr_sock_t *s)
{
    struct stat st;
    return fstat(fd, &st) == 0 && st.st_dev == s->dev && st.st_ino == s->ino;
}

/* The entry of fd, with a reference the caller drops (xr_sock_put). */
static xr_sock_t *xr_sock_get(int fd)
{
    xr_sock_t *s = NULL;
    if (fd < 0)
        return NULL;
    pthread_mutex_lock(&xr_socks_lock);
    if ((size_t) fd < xr_nsocks && (s = xr_socks[fd]) != NULL) {
        if (xr_same_file(fd, s)) {
            s->refs++;
        } else { /* closed behind our back and the number reused */
            xr_socks[fd] = NULL;
            xr_sock_unref(s);
            s = NULL;
        }
    }
    pthread_mutex_unlock(&xr_socks_lock);
    return s;
}

static void xr_sock_put(xr_sock_t *s)
{
    pthread_mutex_lock(&xr_socks_lock);
    xr_sock_unref(s);
    pthread_mutex_unlock(&xr_socks_lock);
}

/* Put s at fd (taking one reference of the caller's), dropping what was
 * there. */
static void xr_sock_set(int fd, xr_sock_t *s)
{
    pthread_mutex_lock(&xr_socks_lock);
    if ((size_t) fd >= xr_nsocks) {
        size_t n = xr_nsocks ? xr_nsocks : 64;
        while (n <= (size_t) fd)
            n *= 2;
        xr_sock_t **t = realloc(xr_socks, n * sizeof(*t));
        if (t == NULL) {
            xr_sock_unref(s);
            pthread_mutex_unlock(&xr_socks_lock);
            return;
        }
        memset(t + xr_nsocks, 0, (n - xr_nsocks) * sizeof(*t));
        xr_socks = t;
        xr_nsocks = n;
    }
    xr_sock_unref(xr_socks[fd]);
    xr_socks[fd] = s;
    pthread_mutex_unlock(&xr_socks_lock);
}

static void xr_sock_forget(int fd)
{
    pthread_mutex_lock(&xr_socks_lock);
    if (fd >= 0 && (size_t) fd < xr_nsocks) {
        xr_sock_unref(xr_socks[fd]);
        xr_socks[fd] = NULL;
    }
    pthread_mutex_unlock(&xr_socks_lock);
}

static xr_sock_t *xr_sock_new(int fd, int kind, int domain)
{
    xr_sock_t *s = calloc(1, sizeof(*s));
    struct stat st;
    if (s == NULL || fstat(fd, &st) != 0) {
        free(s);
        return NULL;
    }
    s->refs = 1;
    s->kind = kind;
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    s->domain = domain;
    s->pending = s->reg = -1;
    s->status = 0;
    return s;
}

/* A fork's child must not inherit the lock held by another thread. */
static void xr_fork_prepare(void)
{
    pthread_mutex_lock(&xr_socks_lock);
}

static void xr_fork_after(void)
{
    pthread_mutex_unlock(&xr_socks_lock);
}

__attribute__((constructor)) static void xr_api_init(void)
{
    pthread_atfork(xr_fork_prepare, xr_fork_after, xr_fork_after);
}

/* A relayed connect's outcome, if it has come (under no lock: the entry
 * is the caller's reference). */
static void xr_sock_settle(xr_sock_t *s)
{
    if (s->pending < 0)
        return;
    xr_hmsg_t m;
    if (xr_helper_wait(s->pending, &m, NULL, 0) < 0) {
        if (errno == ETIMEDOUT)
            return; /* not yet */
        m.type = XR_HMSG_STATUS;
        m.code = ECONNRESET;
    }
    pthread_mutex_lock(&xr_socks_lock);
    if (s->pending >= 0) {
        s->status = m.type == XR_HMSG_STATUS ? m.code : ECONNREFUSED;
        LIBC(close)(s->pending);
        s->pending = -1;
    }
    pthread_mutex_unlock(&xr_socks_lock);
    if (s->status != 0) {
        xr_last_errno = s->status;
        snprintf(xr_last_text, sizeof(xr_last_text), "%s", m.text);
    }
}

/* The type of an IPv4 or IPv6 socket (SOCK_STREAM, SOCK_DGRAM), else 0. */
static int xr_inet_type(int fd, int *domain)
{
    int type = 0;
    socklen_t l = sizeof(*domain);
    if (LIBC(getsockopt)(fd, SOL_SOCKET, SO_DOMAIN, domain, &l) != 0 ||
        (*domain != AF_INET && *domain != AF_INET6))
        return 0;
    l = sizeof(type);
    return LIBC(getsockopt)(fd, SOL_SOCKET, SO_TYPE, &type, &l) == 0 ? type : 0;
}

/* Is fd a TCP socket of the library's kind (IPv4 or IPv6)? */
static int xr_is_tcp(int fd, int *domain)
{
    return xr_inet_type(fd, domain) == SOCK_STREAM;
}

/* ---- UDP: the mapping table (CODO §4.3) ------------------------------------

 * A datagram to an official address goes to where the helper says: the
 * server's local address (same network), the address itself (no agent
 * serves it), or a helper socket on loopback that carries it over a link
 * (a mapping).  The table remembers the answer per socket and
 * destination, refreshed by each datagram, until the mapping idles out
 * (the helper's time less a margin, so that the library asks again
 * before the helper forgets); a connected socket's mapping lives as long
 * as the socket (its request stays open).  Answers from a mapping are
 * presented as coming from the official address. */
typedef struct xr_map_s {
    struct xr_map_s *next;
    dev_t dev;
    ino_t ino;
    struct sockaddr_storage official, via;
    int64_t used, idle_ms;
    int hold; /* a connected socket's request, or -1 */
} xr_map_t;

static xr_map_t *xr_maps;
static pthread_mutex_t xr_maps_lock = PTHREAD_MUTEX_INITIALIZER;

#define XR_MAP_MARGIN_MS 2000

/* An IPv4 address as the socket's family wants it (v4-mapped for IPv6). */
static void xr_sa_for(int domain, struct sockaddr_storage *a)
{
    if (domain != AF_INET6 || a->ss_family != AF_INET)
        return;
    struct sockaddr_in v4 = *(struct sockaddr_in *) a;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *) a;
    memset(a, 0, sizeof(*a));
    v6->sin6_family = AF_INET6;
    v6->sin6_port = v4.sin_port;
    v6->sin6_addr.s6_addr[10] = v6->sin6_addr.s6_addr[11] = 0xff;
    memcpy(&v6->sin6_addr.s6_addr[12], &v4.sin_addr, 4);
}

/* Drop the mappings of a socket (dev/ino), or the stale ones (dev 0). */
static void xr_maps_drop(dev_t dev, ino_t ino, int64_t now)
{
    pthread_mutex_lock(&xr_maps_lock);
    for (xr_map_t **pp = &xr_maps; *pp != NULL;) {
        xr_map_t *m = *pp;
        int64_t margin = m->idle_ms / 4 < XR_MAP_MARGIN_MS ? m->idle_ms / 4 : XR_MAP_MARGIN_MS;
        int stale = m->hold < 0 && now - m->used >= m->idle_ms - margin;
        if ((dev != 0 && m->dev == dev && m->ino == ino) || (dev == 0 && stale)) {
            *pp = m->next;
            if (m->hold >= 0)
                LIBC(close)(m->hold);
            free(m);
        } else {
            pp = &m->next;
        }
    }
    pthread_mutex_unlock(&xr_maps_lock);
}

/* Give fd a port of its own if it has none (the kernel would at
 * connect or the first datagram): the helper sends its address with the
 * request, and where the application's traversal is open, the agents
 * open the firewalls for exactly this port.  fd to send, or -1. */
static int xr_bound(int fd, int domain)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (LIBC(getsockname)(fd, (struct sockaddr *) &ss, &len) != 0)
        return -1;
    int port = ss.ss_family == AF_INET    ? ((struct sockaddr_in *) &ss)->sin_port
               : ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &ss)->sin6_port
                                          : -1;
    if (port < 0)
        return -1;
    if (port == 0) {
        memset(&ss, 0, sizeof(ss));
        ss.ss_family = (sa_family_t) domain;
        if (LIBC(bind)(fd, (struct sockaddr *) &ss, xr_sa_len(domain)) != 0)
            return -1;
    }
    return fd;
}

/* Where fd's datagrams to dst go (*via); 0, or -1 with errno. */
static int xr_udp_via(int fd, int domain, const struct sockaddr_storage *dst, int hold,
                      struct sockaddr_storage *via)
{
    struct stat st;
    int64_t now = xr_now_ms();
    char d[80];
    if (fstat(fd, &st) != 0)
        return -1;
    xr_maps_drop(0, 0, now);
    pthread_mutex_lock(&xr_maps_lock);
    for (xr_map_t *m = xr_maps; m != NULL; m = m->next)
        if (m->dev == st.st_dev && m->ino == st.st_ino && xr_sockaddr_same(&m->official, dst) &&
            (!hold || m->hold >= 0)) {
            m->used = now;
            *via = m->via;
            pthread_mutex_unlock(&xr_maps_lock);
            return 0;
        }
    pthread_mutex_unlock(&xr_maps_lock);
    xr_fmt(dst, d, sizeof(d));
    *via = *dst;
    /* A server answers whoever asked: a peer the table does not know
     * came to it directly. */
    xr_sock_t *srv = xr_sock_get(fd);
    int server = srv != NULL && srv->kind == XR_SK_SERVER;
    xr_sock_put(srv);
    if (server)
        return 0;
    int h = xr_helper_open();
    if (h < 0) {
        xr_debug("udp %s: no helper (%s): directly", d, strerror(errno));
        return 0;
    }
    const char *idle_s = getenv("XRAY_UDP_IDLE");
    long idle = idle_s ? strtol(idle_s, NULL, 10) : 0;
    xr_hmsg_t q = {.type = XR_HMSG_CONNECT, .proto = IPPROTO_UDP, .addr = *dst}, a;
    q.code = idle >= 1000 && idle <= 86400000 ? (int32_t) idle : 60000;
    q.flags = hold ? XR_HMSG_HOLD : 0;
    if (xr_hmsg_send(h, &q, xr_bound(fd, domain)) < 0 || xr_helper_wait(h, &a, NULL, 60000) < 0) {
        LIBC(close)(h);
        xr_debug("udp %s: the helper failed: directly", d);
        return 0;
    }
    if (a.type == XR_HMSG_ERROR) {
        LIBC(close)(h);
        xr_debug("udp %s: %s", d, a.text);
        return xr_fail(a.code > 0 ? a.code : ECONNREFUSED, a.text);
    }
    xr_map_t *m = calloc(1, sizeof(*m));
    if (m == NULL ||
        (a.type != XR_HMSG_DIRECT && a.type != XR_HMSG_MAPPED && a.type != XR_HMSG_OPEN)) {
        free(m);
        LIBC(close)(h);
        return xr_fail(EPROTO, "the helper answered out of turn");
    }
    *via = a.addr;
    xr_sa_for(domain, via);
    m->dev = st.st_dev;
    m->ino = st.st_ino;
    m->official = *dst;
    m->via = *via;
    m->used = now;
    /* A direct answer is the helper's for 10 s too; an opening lasts
     * as long as the firewalls keep the session. */
    m->idle_ms = a.type == XR_HMSG_MAPPED || a.type == XR_HMSG_OPEN ? a.code : 10000;
    m->hold = a.type == XR_HMSG_MAPPED && hold ? h : -1;
    if (m->hold < 0)
        LIBC(close)(h);
    pthread_mutex_lock(&xr_maps_lock);
    m->next = xr_maps;
    xr_maps = m;
    pthread_mutex_unlock(&xr_maps_lock);
    char v[80];
    xr_debug("udp %s: %s %s", d,
             a.type == XR_HMSG_MAPPED ? "relayed, mapped at"
             : a.type == XR_HMSG_OPEN ? "through openings in the firewalls to"
                                      : "directly to",
             xr_fmt(via, v, sizeof(v)));
    return 0;
}

/* The official address behind src, a source fd heard from: 1 with
 * *official, -1 when src is known to be itself (a direct peer), 0 when
 * the table does not know it. */
static int xr_udp_official(int fd, const struct sockaddr_storage *src,
                           struct sockaddr_storage *official)
{
    struct stat st;
    int found = 0;
    if (xr_maps == NULL || fstat(fd, &st) != 0)
        return 0;
    pthread_mutex_lock(&xr_maps_lock);
    for (xr_map_t *m = xr_maps; m != NULL && !found; m = m->next)
        if (m->dev == st.st_dev && m->ino == st.st_ino && xr_sockaddr_same(&m->via, src)) {
            m->used = xr_now_ms();
            *official = m->official;
            found = xr_sockaddr_same(&m->via, &m->official) ? -1 : 1;
        }
    pthread_mutex_unlock(&xr_maps_lock);
    return found;
}

/* A UDP destination the library should ask about: IPv4 or IPv6, not
 * loopback, on an IPv4 or IPv6 datagram socket. */
static int xr_udp_dest(int fd, const struct sockaddr *to, socklen_t tolen, int *domain,
                       struct sockaddr_storage *dst)
{
    if (to == NULL || tolen < sizeof(sa_family_t) ||
        (to->sa_family != AF_INET && to->sa_family != AF_INET6) || tolen < xr_sa_len(to->sa_family))
        return 0;
    memset(dst, 0, sizeof(*dst));
    memcpy(dst, to, xr_sa_len(to->sa_family));
    return !xr_is_loopback(dst) && xr_inet_type(fd, domain) == SOCK_DGRAM;
}

static int xr_udp_connect(int fd, int domain, const struct sockaddr *addr, socklen_t len)
{
    struct sockaddr_storage dst, via;
    memset(&dst, 0, sizeof(dst));
    memcpy(&dst, addr, xr_sa_len(addr->sa_family));
    if (xr_is_loopback(&dst))
        return LIBC(connect)(fd, addr, len);
    if (xr_udp_via(fd, domain, &dst, 1, &via) < 0)
        return -1;
    int rc = LIBC(connect)(fd, (struct sockaddr *) &via, xr_sa_len(via.ss_family));
    if (rc == 0 && !xr_sockaddr_same(&via, &dst)) {
        xr_sock_t *n = xr_sock_new(fd, XR_SK_DIRECT, domain);
        if (n != NULL) { /* its peer is the official address */
            n->peer = dst;
            xr_sock_set(fd, n);
        }
    }
    return rc;
}

/* ---- connect ------------------------------------------------------------- */

/* The helper's direct answers, kept in the process as long as the helper
 * keeps them (10 s): within the agent's network a connect then costs no
 * round trip at all. */
#define XR_DIRECT_CACHE    32
#define XR_DIRECT_CACHE_MS 10000

static struct {
    struct sockaddr_storage dst, to;
    int64_t until;
} xr_direct[XR_DIRECT_CACHE];
static unsigned xr_direct_next;
static pthread_mutex_t xr_direct_lock = PTHREAD_MUTEX_INITIALIZER;

static int xr_direct_get(const struct sockaddr_storage *dst, struct sockaddr_storage *to)
{
    int64_t now = xr_now_ms();
    int hit = 0;
    pthread_mutex_lock(&xr_direct_lock);
    for (unsigned i = 0; i < XR_DIRECT_CACHE && !hit; i++)
        if (xr_direct[i].until > now && xr_sockaddr_same(&xr_direct[i].dst, dst)) {
            *to = xr_direct[i].to;
            hit = 1;
        }
    pthread_mutex_unlock(&xr_direct_lock);
    return hit;
}

static void xr_direct_put(const struct sockaddr_storage *dst, const struct sockaddr_storage *to)
{
    pthread_mutex_lock(&xr_direct_lock);
    unsigned i = xr_direct_next++ % XR_DIRECT_CACHE;
    xr_direct[i].dst = *dst;
    xr_direct[i].to = *to;
    xr_direct[i].until = xr_now_ms() + XR_DIRECT_CACHE_MS;
    pthread_mutex_unlock(&xr_direct_lock);
}

/* Connect fd to to itself, for dst (whose address getpeername says). */
static int xr_connect_direct(int fd, int domain, const struct sockaddr_storage *dst,
                             const struct sockaddr_storage *to)
{
    int rc = LIBC(connect)(fd, (const struct sockaddr *) to, xr_sa_len(to->ss_family));
    int e = errno;
    if ((rc == 0 || e == EINPROGRESS) && !xr_sockaddr_same(to, dst)) {
        xr_sock_t *n = xr_sock_new(fd, XR_SK_DIRECT, domain);
        if (n != NULL) { /* its peer is the official address asked for */
            n->peer = *dst;
            xr_sock_set(fd, n);
        }
    }
    errno = e;
    return rc;
}

int xray_connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    xr_sock_t *s = xr_sock_get(fd);
    if (s != NULL && s->kind == XR_SK_RELAYED) { /* connect again: how far it got */
        xr_sock_settle(s);
        int st = s->status, pend = s->pending >= 0;
        xr_sock_put(s);
        if (pend)
            return xr_fail(EALREADY, "the connection is still being made");
        return st == 0 ? xr_fail(EISCONN, "already connected") : xr_fail(st, xr_last_text);
    }
    xr_sock_put(s);
    int domain, type;
    struct sockaddr_storage dst;
    if (addr == NULL || len < sizeof(sa_family_t) ||
        (addr->sa_family != AF_INET && addr->sa_family != AF_INET6) ||
        len < xr_sa_len(addr->sa_family) ||
        ((type = xr_inet_type(fd, &domain)) != SOCK_STREAM && type != SOCK_DGRAM))
        return LIBC(connect)(fd, addr, len);
    if (type == SOCK_DGRAM)
        return xr_udp_connect(fd, domain, addr, len);
    memset(&dst, 0, sizeof(dst));
    memcpy(&dst, addr, xr_sa_len(addr->sa_family));
    char d[80];
    xr_fmt(&dst, d, sizeof(d));
    if (xr_is_loopback(&dst))
        return LIBC(connect)(fd, addr, len);
    struct sockaddr_storage to;
    if (xr_direct_get(&dst, &to))
        return xr_connect_direct(fd, domain, &dst, &to);
    int fl = LIBC(fcntl)(fd, F_GETFL), fdfl = LIBC(fcntl)(fd, F_GETFD);
    int h = xr_helper_open();
    if (h < 0) {
        xr_debug("connect %s: no helper (%s): directly", d, strerror(errno));
        return LIBC(connect)(fd, addr, len);
    }
    xr_hmsg_t q = {.type = XR_HMSG_CONNECT, .proto = IPPROTO_TCP, .addr = dst}, a;
    if (fl >= 0 && (fl & O_NONBLOCK))
        q.flags |= XR_HMSG_NONBLOCK;
    int rfd = -1;
    if (xr_hmsg_send(h, &q, xr_bound(fd, domain)) < 0 || xr_helper_wait(h, &a, &rfd, 60000) < 0) {
        int e = errno;
        LIBC(close)(h);
        xr_debug("connect %s: the helper failed (%s): directly", d, strerror(e));
        return LIBC(connect)(fd, addr, len);
    }
    if (a.type == XR_HMSG_ERROR) {
        LIBC(close)(h);
        xr_debug("connect %s: %s", d, a.text);
        return xr_fail(a.code > 0 ? a.code : ECONNREFUSED, a.text);
    }
    if (a.type == XR_HMSG_OPEN) { /* never cached: an opening is for this socket */
        LIBC(close)(h);
        char t[80];
        xr_debug("connect %s: through openings in the firewalls to %s", d,
                 xr_fmt(&a.addr, t, sizeof(t)));
        return xr_connect_direct(fd, domain, &dst, &a.addr);
    }
    if (a.type == XR_HMSG_DIRECT) {
        LIBC(close)(h);
        char t[80];
        xr_debug("connect %s: directly to %s%s%s", d, xr_fmt(&a.addr, t, sizeof(t)),
                 a.text[0] ? ": " : "", a.text);
        if (a.text[0] == '\0') /* not "the agent cannot be reached" */
            xr_direct_put(&dst, &a.addr);
        return xr_connect_direct(fd, domain, &dst, &a.addr);
    }
    if (a.type != XR_HMSG_RELAY || rfd < 0) {
        if (rfd >= 0)
            LIBC(close)(rfd);
        LIBC(close)(h);
        return xr_fail(EPROTO, "the helper answered out of turn");
    }
    int cloexec = fdfl >= 0 && (fdfl & FD_CLOEXEC) ? O_CLOEXEC : 0;
    if (!(q.flags & XR_HMSG_NONBLOCK)) { /* blocking: wait for the far end */
        xr_hmsg_t st = {0};
        if (xr_helper_wait(h, &st, NULL, -1) < 0 || st.type != XR_HMSG_STATUS || st.code != 0) {
            int e = errno;
            LIBC(close)(rfd);
            LIBC(close)(h);
            if (st.type == XR_HMSG_STATUS || st.type == XR_HMSG_ERROR) {
                xr_debug("connect %s: %s", d, st.text);
                return xr_fail(st.code > 0 ? st.code : ECONNREFUSED, st.text);
            }
            return xr_fail(e, "the helper went away");
        }
        LIBC(close)(h);
        h = -1;
    }
    if (LIBC(dup3)(rfd, fd, cloexec) < 0) {
        int e = errno;
        LIBC(close)(rfd);
        if (h >= 0)
            LIBC(close)(h);
        return xr_fail(e, "cannot put the connection in place");
    }
    LIBC(close)(rfd);
    if (fl >= 0)
        LIBC(fcntl)(fd, F_SETFL, fl);
    xr_sock_t *n = xr_sock_new(fd, XR_SK_RELAYED, domain);
    if (n != NULL) {
        n->peer = dst;
        n->pending = h;
        n->status = h >= 0 ? -1 : 0;
        xr_sock_set(fd, n);
    } else if (h >= 0) {
        LIBC(close)(h);
    }
    xr_debug("connect %s: relayed through the agents%s", d, h >= 0 ? " (in progress)" : "");
    if (h >= 0) {
        errno = EINPROGRESS;
        return -1;
    }
    return 0;
}

/* ---- servers ------------------------------------------------------------- */

/* The server's state as the helper last told it. */
static void xr_sock_bound(xr_sock_t *s, int wait_ms)
{
    xr_hmsg_t m;
    while (s->reg >= 0 && xr_helper_wait(s->reg, &m, NULL, wait_ms) == 0) {
        if (m.type == XR_HMSG_BOUND) {
            pthread_mutex_lock(&xr_socks_lock);
            s->bound = m.code;
            if (m.addr.ss_family != AF_UNSPEC)
                s->official = m.addr;
            pthread_mutex_unlock(&xr_socks_lock);
            char o[80];
            xr_debug("server socket: %s%s%s",
                     m.code == XR_BOUND_FULL   ? "fully bound, official "
                     : m.code == XR_BOUND_HALF ? "half bound, official "
                                               : "locally bound",
                     m.code != XR_BOUND_LOCAL ? xr_fmt(&s->official, o, sizeof(o)) : "", m.text);
        }
        wait_ms = 0;
    }
}

/* Register fd, a bound server socket (proto IPPROTO_TCP or
 * IPPROTO_UDP), with the agent through the helper. */
static void xr_register(int fd, int domain, int proto)
{
    xr_sock_t *s = xr_sock_get(fd);
    if (s != NULL) { /* listen again: a new backlog, the same registration */
        xr_sock_put(s);
        return;
    }
    struct sockaddr_storage at;
    socklen_t al = sizeof(at);
    if (LIBC(getsockname)(fd, (struct sockaddr *) &at, &al) != 0 || xr_is_loopback(&at))
        return;
    int h = xr_helper_open();
    if (h < 0) {
        xr_debug("listen: no helper (%s): locally bound", strerror(errno));
        return;
    }
    xr_hmsg_t q = {.type = XR_HMSG_LISTEN, .proto = (uint8_t) proto, .addr = at};
    if (xr_hmsg_send(h, &q, -1) < 0) {
        LIBC(close)(h);
        return;
    }
    /* The registration lives as long as the server socket does, in this
     * process or in the children it passes to; and not past an exec the
     * socket does not survive. */
    int fdfl = LIBC(fcntl)(fd, F_GETFD);
    if (fdfl >= 0 && !(fdfl & FD_CLOEXEC))
        LIBC(fcntl)(h, F_SETFD, 0);
    s = xr_sock_new(fd, XR_SK_SERVER, domain);
    if (s == NULL) {
        LIBC(close)(h);
        return;
    }
    s->reg = h;
    s->bound = XR_BOUND_LOCAL;
    /* The first answer comes after one attempt at the agent. */
    xr_sock_bound(s, 15000);
    xr_sock_set(fd, s);
}

int xray_listen(int fd, int backlog)
{
    int rc = LIBC(listen)(fd, backlog);
    int domain;
    if (rc == 0 && xr_is_tcp(fd, &domain))
        xr_register(fd, domain, IPPROTO_TCP);
    return rc;
}

/* The real peer of a connection the helper handed to a server socket. */
static int xr_who(const struct sockaddr_storage *from, struct sockaddr_storage *peer)
{
    int h = xr_helper_open();
    if (h < 0)
        return -1;
    xr_hmsg_t q = {.type = XR_HMSG_WHO, .addr = *from}, a;
    int ok = xr_hmsg_send(h, &q, -1) == 0 && xr_helper_wait(h, &a, NULL, 5000) == 0 &&
             a.type == XR_HMSG_PEER && a.addr.ss_family != AF_UNSPEC;
    LIBC(close)(h);
    if (ok)
        *peer = a.addr;
    return ok ? 0 : -1;
}

int xray_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    struct sockaddr_storage peer;
    socklen_t pl = sizeof(peer);
    int c = LIBC(accept4)(fd, (struct sockaddr *) &peer, &pl, flags);
    if (c < 0)
        return c;
    xr_sock_t *s = xr_sock_get(fd);
    struct sockaddr_storage real;
    /* The helper connects from loopback or from the server's own address. */
    int mine = 0;
    if (s != NULL && s->kind == XR_SK_SERVER &&
        (peer.ss_family == AF_INET || peer.ss_family == AF_INET6)) {
        struct sockaddr_storage me;
        socklen_t ml = sizeof(me);
        int local = xr_is_loopback(&peer);
        if (!local && LIBC(getsockname)(c, (struct sockaddr *) &me, &ml) == 0)
            local = peer.ss_family == AF_INET
                        ? ((struct sockaddr_in *) &peer)->sin_addr.s_addr ==
                              ((struct sockaddr_in *) &me)->sin_addr.s_addr
                        : memcmp(&((struct sockaddr_in6 *) &peer)->sin6_addr,
                                 &((struct sockaddr_in6 *) &me)->sin6_addr, 16) == 0;
        mine = local && xr_who(&peer, &real) == 0;
    }
    if (mine) {
        xr_sock_t *n = xr_sock_new(c, XR_SK_ACCEPTED, peer.ss_family);
        if (n != NULL) {
            n->peer = real;
            xr_sock_set(c, n);
        }
        char p[80];
        xr_debug("accept: a connection from %s", xr_fmt(&real, p, sizeof(p)));
        peer = real;
    } else {
        xr_sock_forget(c);
    }
    xr_sock_put(s);
    if (addr != NULL && len != NULL) {
        socklen_t n = mine ? xr_sa_len(peer.ss_family) : pl;
        memcpy(addr, &peer, *len < n ? *len : n);
        *len = n;
    }
    return c;
}

int xray_accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    return xray_accept4(fd, addr, len, 0);
}

/* ---- addresses and options ----------------------------------------------- */

int xray_getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
    xr_sock_t *s = xr_sock_get(fd);
    if (s != NULL && s->kind == XR_SK_SERVER) {
        xr_sock_bound(s, 0);
        int have = s->bound != XR_BOUND_LOCAL && s->official.ss_family != AF_UNSPEC;
        struct sockaddr_storage o = s->official;
        xr_sock_put(s);
        if (have) {
            xr_sa_copy(&o, addr, len);
            return 0;
        }
        return LIBC(getsockname)(fd, addr, len);
    }
    if (s != NULL && s->kind == XR_SK_RELAYED) {
        /* The socket is one end of a pair: no address of its own.  Its
         * family's unspecified address, as an unbound socket has. */
        struct sockaddr_storage any;
        memset(&any, 0, sizeof(any));
        any.ss_family = (sa_family_t) s->domain;
        xr_sock_put(s);
        xr_sa_copy(&any, addr, len);
        return 0;
    }
    xr_sock_put(s);
    return LIBC(getsockname)(fd, addr, len);
}

int xray_getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
    xr_sock_t *s = xr_sock_get(fd);
    if (s == NULL || s->kind == XR_SK_SERVER) {
        xr_sock_put(s);
        return LIBC(getpeername)(fd, addr, len);
    }
    if (s->kind == XR_SK_RELAYED)
        xr_sock_settle(s);
    int ok = s->kind != XR_SK_RELAYED || s->status == 0;
    struct sockaddr_storage p = s->peer;
    int direct = s->kind == XR_SK_DIRECT;
    xr_sock_put(s);
    if (!ok)
        return xr_fail(ENOTCONN, "not connected");
    if (direct) { /* connected yet? the kernel knows */
        struct sockaddr_storage k;
        socklen_t kl = sizeof(k);
        if (LIBC(getpeername)(fd, (struct sockaddr *) &k, &kl) != 0)
            return -1;
    }
    xr_sa_copy(&p, addr, len);
    return 0;
}

int xray_getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
    xr_sock_t *s = xr_sock_get(fd);
    if (s == NULL || s->kind != XR_SK_RELAYED) {
        xr_sock_put(s);
        return LIBC(getsockopt)(fd, level, name, val, len);
    }
    int v, have = 1;
    if (level == SOL_SOCKET && name == SO_ERROR) {
        xr_sock_settle(s);
        v = s->status > 0 && !s->reported ? s->status : 0;
        if (v != 0)
            s->reported = 1;
    } else if (level == SOL_SOCKET && name == SO_DOMAIN) {
        v = s->domain;
    } else if (level == SOL_SOCKET && name == SO_PROTOCOL) {
        v = IPPROTO_TCP;
    } else if (level == IPPROTO_TCP && name == TCP_NODELAY) {
        v = 1; /* the link's socket has it; the pair has no delay to speak of */
    } else {
        have = 0;
    }
    xr_sock_put(s);
    if (!have)
        return LIBC(getsockopt)(fd, level, name, val, len);
    if (val == NULL || len == NULL || *len < sizeof(int))
        return xr_fail(EINVAL, "option buffer too small");
    memcpy(val, &v, sizeof(int));
    *len = sizeof(int);
    return 0;
}

int xray_setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
    int rc = LIBC(setsockopt)(fd, level, name, val, len);
    if (rc == 0 || level != IPPROTO_TCP)
        return rc;
    /* TCP's options mean nothing on the pair a relayed connection is;
     * the helper sets what the link needs (no delay). */
    xr_sock_t *s = xr_sock_get(fd);
    int relayed = s != NULL && s->kind == XR_SK_RELAYED;
    xr_sock_put(s);
    return relayed ? 0 : rc;
}

/* ---- descriptors ---------------------------------------------------------- */

int xray_close(int fd)
{
    xr_sock_forget(fd);
    struct stat st;
    /* A socket's mappings go with it (with a copy of the descriptor still
     * open, the next datagram asks the helper again; a connected one
     * would have to connect again). */
    if (xr_maps != NULL && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode))
        xr_maps_drop(st.st_dev, st.st_ino, 0);
    return LIBC(close)(fd);
}

/* After a dup: the new descriptor shares the old one's entry. */
static int xr_dup_done(int from, int to)
{
    if (to < 0 || to == from)
        return to;
    xr_sock_t *s = xr_sock_get(from);
    if (s != NULL)
        xr_sock_set(to, s); /* takes the reference xr_sock_get gave */
    else
        xr_sock_forget(to);
    return to;
}

int xray_dup(int fd)
{
    return xr_dup_done(fd, LIBC(dup)(fd));
}

int xray_dup3(int fd, int to, int flags)
{
    return xr_dup_done(fd, LIBC(dup3)(fd, to, flags));
}

int xray_dup2(int fd, int to)
{
    if (fd == to) /* dup2's own case: fd valid, nothing done */
        return LIBC(fcntl)(fd, F_GETFD) < 0 ? -1 : to;
    return xr_dup_done(fd, LIBC(dup3)(fd, to, 0));
}

int xray_fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *); /* every fcntl argument fits (glibc does the same) */
    va_end(ap);
    int rc = LIBC(fcntl)(fd, cmd, arg);
    if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)
        return xr_dup_done(fd, rc);
    return rc;
}

/* ---- names ----------------------------------------------------------------- */

/* The hosts file that names official addresses: $XRAY_HOSTS, else
 * ~/.config/xray/hosts, else /etc/xray/hosts; lines "ADDRESS NAME...",
 * as /etc/hosts, # comments.  The address for node into addr; 1 if
 * named. */
static int xr_hosts_lookup(const char *node, char *addr, size_t n)
{
    char path[4096];
    const char *env = getenv("XRAY_HOSTS"), *home = getenv("HOME");
    FILE *f = NULL;
    if (env != NULL && env[0] != '\0') {
        f = fopen(env, "re");
    } else {
        if (home != NULL && home[0] == '/') {
            snprintf(path, sizeof(path), "%s/.config/xray/hosts", home);
            f = fopen(path, "re");
        }
        if (f == NULL)
            f = fopen("/etc/xray/hosts", "re");
    }
    if (f == NULL)
        return 0;
    char line[1024];
    int found = 0;
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "#\r\n")] = '\0';
        char *save = NULL, *a = strtok_r(line, " \t", &save), *name;
        while (a != NULL && (name = strtok_r(NULL, " \t", &save)) != NULL)
            if (strcasecmp(name, node) == 0 && strlen(a) < n) {
                memcpy(addr, a, strlen(a) + 1);
                found = 1;
                break;
            }
    }
    fclose(f);
    return found;
}

int xray_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                     struct addrinfo **res)
{
    char addr[INET6_ADDRSTRLEN + 1];
    if (node == NULL || !xr_hosts_lookup(node, addr, sizeof(addr)))
        return LIBC(getaddrinfo)(node, service, hints, res);
    struct addrinfo h;
    memset(&h, 0, sizeof(h));
    if (hints != NULL)
        h = *hints;
    h.ai_flags |= AI_NUMERICHOST;
    h.ai_flags &= ~AI_CANONNAME;
    xr_debug("name %s: %s (the XRAY hosts file)", node, addr);
    return LIBC(getaddrinfo)(addr, service, &h, res);
}

/* ---- the rest: the kernel's own ------------------------------------------- */

int xray_socket(int domain, int type, int protocol)
{
    return socket(domain, type, protocol);
}

int xray_bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    int rc = LIBC(bind)(fd, addr, len), domain;
    /* A UDP socket bound to a port of its choosing is a server (a client
     * lets the kernel pick): it is bound through the agent. */
    if (rc == 0 && addr != NULL && len >= sizeof(sa_family_t) &&
        (addr->sa_family == AF_INET || addr->sa_family == AF_INET6) &&
        len >= xr_sa_len(addr->sa_family) && ((const struct sockaddr_in *) addr)->sin_port != 0 &&
        xr_inet_type(fd, &domain) == SOCK_DGRAM)
        xr_register(fd, domain, IPPROTO_UDP);
    return rc;
}

int xray_shutdown(int fd, int how)
{
    return shutdown(fd, how);
}

ssize_t xray_send(int fd, const void *buf, size_t n, int flags)
{
    return send(fd, buf, n, flags);
}

ssize_t xray_recv(int fd, void *buf, size_t n, int flags)
{
    return recv(fd, buf, n, flags);
}

ssize_t xray_sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *to,
                    socklen_t tolen)
{
    struct sockaddr_storage dst, via;
    int domain;
    if (!xr_udp_dest(fd, to, tolen, &domain, &dst))
        return LIBC(sendto)(fd, buf, n, flags, to, tolen);
    if (xr_udp_via(fd, domain, &dst, 0, &via) < 0)
        return -1;
    return LIBC(sendto)(fd, buf, n, flags, (struct sockaddr *) &via, xr_sa_len(via.ss_family));
}

ssize_t xray_sendmsg(int fd, const struct msghdr *msg, int flags)
{
    struct sockaddr_storage dst, via;
    int domain;
    if (msg == NULL || !xr_udp_dest(fd, msg->msg_name, msg->msg_namelen, &domain, &dst))
        return LIBC(sendmsg)(fd, msg, flags);
    if (xr_udp_via(fd, domain, &dst, 0, &via) < 0)
        return -1;
    struct msghdr m = *msg;
    m.msg_name = &via;
    m.msg_namelen = xr_sa_len(via.ss_family);
    return LIBC(sendmsg)(fd, &m, flags);
}

/* A datagram on a UDP server socket from one of the helper's sockets
 * (loopback, or the server's own address): a relayed association.  Who
 * it really is (WHO, asked once per association), remembered both ways
 * in the mapping table, so the server's answers to that peer go back to
 * the helper's socket.  1 with *official, else 0. */
static int xr_udp_learn(int fd, const struct sockaddr_storage *src,
                        struct sockaddr_storage *official)
{
    xr_sock_t *s = xr_sock_get(fd);
    int server = s != NULL && s->kind == XR_SK_SERVER;
    xr_sock_put(s);
    struct sockaddr_storage me;
    socklen_t ml = sizeof(me);
    if (!server || LIBC(getsockname)(fd, (struct sockaddr *) &me, &ml) != 0)
        return 0;
    int local = xr_is_loopback(src) || (src->ss_family == AF_INET && me.ss_family == AF_INET &&
                                        ((const struct sockaddr_in *) src)->sin_addr.s_addr ==
                                            ((struct sockaddr_in *) &me)->sin_addr.s_addr);
    struct stat st;
    xr_map_t *m;
    if (!local || fstat(fd, &st) != 0 || (m = calloc(1, sizeof(*m))) == NULL)
        return 0;
    /* A local peer that is not the helper's is remembered as itself, so
     * that its next datagrams ask nobody. */
    int relayed = xr_who(src, official) == 0;
    m->dev = st.st_dev;
    m->ino = st.st_ino;
    m->official = relayed ? *official : *src;
    m->via = *src;
    m->used = xr_now_ms();
    m->idle_ms = relayed ? 60000 : 10000; /* the helper's for an association */
    m->hold = -1;
    pthread_mutex_lock(&xr_maps_lock);
    m->next = xr_maps;
    xr_maps = m;
    pthread_mutex_unlock(&xr_maps_lock);
    char a[80], b[80];
    if (relayed)
        xr_debug("udp: %s is %s", xr_fmt(src, a, sizeof(a)), xr_fmt(official, b, sizeof(b)));
    return relayed;
}

/* A datagram's source (name: *len bytes of it, cap the room), as the
 * application should see it: an official address for a mapping's. */
static void xr_udp_source(int fd, void *name, socklen_t *len, socklen_t cap)
{
    struct sockaddr_storage src, official;
    socklen_t got = *len < cap ? *len : cap;
    if (got < sizeof(sa_family_t) || got > sizeof(src))
        return;
    memset(&src, 0, sizeof(src));
    memcpy(&src, name, got);
    int known = src.ss_family == AF_INET || src.ss_family == AF_INET6
                    ? xr_udp_official(fd, &src, &official)
                    : -1;
    if (known < 0 || (known == 0 && !xr_udp_learn(fd, &src, &official)))
        return;
    xr_sa_for(src.ss_family, &official);
    *len = cap;
    xr_sa_copy(&official, name, len);
}

ssize_t xray_recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *from,
                      socklen_t *fromlen)
{
    socklen_t cap = fromlen ? *fromlen : 0;
    ssize_t r = LIBC(recvfrom)(fd, buf, n, flags, from, fromlen);
    if (r >= 0 && from != NULL && fromlen != NULL)
        xr_udp_source(fd, from, fromlen, cap);
    return r;
}

ssize_t xray_recvmsg(int fd, struct msghdr *msg, int flags)
{
    socklen_t cap = msg ? msg->msg_namelen : 0;
    ssize_t r = LIBC(recvmsg)(fd, msg, flags);
    if (r >= 0 && msg != NULL && msg->msg_name != NULL)
        xr_udp_source(fd, msg->msg_name, &msg->msg_namelen, cap);
    return r;
}

ssize_t xray_read(int fd, void *buf, size_t n)
{
    return read(fd, buf, n);
}

ssize_t xray_write(int fd, const void *buf, size_t n)
{
    return write(fd, buf, n);
}

int xray_poll(struct pollfd *fds, nfds_t n, int timeout_ms)
{
    return poll(fds, n, timeout_ms);
}

int xray_select(int nfds, fd_set *r, fd_set *w, fd_set *e, struct timeval *timeout)
{
    return select(nfds, r, w, e, timeout);
}

pid_t xray_fork(void)
{
    return fork();
}

int xray_execve(const char *path, char *const argv[], char *const envp[])
{
    return execve(path, argv, envp);
}
