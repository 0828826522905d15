/*
 * admin.c: admin sockets and their string builder (see admin.h).
 */
#include "core/xrayd.h"
#include "core/admin.h"

#include <stdarg.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

void xr_sb_add(xr_sb_t *b, const char *fmt, ...)
{
    for (int attempt = 0; attempt < 2 && !b->failed; attempt++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if (b->p != NULL && b->len + (size_t) n < b->cap) {
            b->len += (size_t) n;
            return;
        }
        size_t ncap = (b->cap ? b->cap * 2 : 4096) + (size_t) n;
        char *np = realloc(b->p, ncap);
        if (np == NULL) {
            b->failed = 1;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
}

void xr_sb_json(xr_sb_t *b, const char *s)
{
    xr_sb_add(b, "\"");
    for (; *s; s++) {
        unsigned char ch = (unsigned char) *s;
        if (ch == '"' || ch == '\\')
            xr_sb_add(b, "\\%c", ch);
        else if (ch < 0x20)
            xr_sb_add(b, "\\u%04x", ch);
        else
            xr_sb_add(b, "%c", ch);
    }
    xr_sb_add(b, "\"");
}

int xr_admin_open(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    /* A reload's (or an upgrade's) new owner takes the path over. */
    unlink(path);
    mode_t old = umask(0177);
    int rc = bind(fd, (struct sockaddr *) &sa, sizeof(sa));
    umask(old);
    if (rc != 0 || listen(fd, 16) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

void xr_admin_serve(int lfd, void (*status)(xr_sb_t *b, int json))
{
    for (;;) { /* until accept() says EAGAIN (edge-triggered callers) */
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            return;
        struct timeval tv = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        char req[64];
        ssize_t n = recv(fd, req, sizeof(req) - 1, 0);
        req[n > 0 ? n : 0] = '\0';
        req[strcspn(req, "\r\n")] = '\0';
        xr_sb_t b = {0};
        if (strcmp(req, "status") == 0 || strcmp(req, "status json") == 0)
            status(&b, strcmp(req, "status json") == 0);
        else
            xr_sb_add(&b, "error: unknown request \"%.40s\" (try \"status\")\n", req);
        for (size_t off = 0; !b.failed && off < b.len;) {
            ssize_t w = send(fd, b.p + off, b.len - off, MSG_NOSIGNAL);
            if (w <= 0)
                break;
            off += (size_t) w;
        }
        free(b.p);
        close(fd);
    }
}
