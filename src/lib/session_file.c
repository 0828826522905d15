/*
 * session_file.c: TLS sessions with an agent kept in a file between
 * processes, so that the next `xray connect` resumes instead of doing two
 * full handshakes (see client.h).
 *
 * A session holds the keys of a connection that may be resumed: the file
 * is the user's alone (0600, in a 0700 directory), written whole to a
 * temporary name and renamed, and one that does not parse is ignored.
 */
#include "common/common.h"
#include "lib/client.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define XR_SESSIONS_MAX 8192

int xr_client_sessions_path(const xr_client_conf_t *cf, char *path, size_t n)
{
    const char *cache = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char dir[3000];
    if (cache != NULL && cache[0] == '/')
        snprintf(dir, sizeof(dir), "%s/xray", cache);
    else if (home != NULL && home[0] == '/')
        snprintf(dir, sizeof(dir), "%s/.cache/xray", home);
    else
        return -1;
    if (cf->agent == NULL)
        return -1;
    /* One file per agent and identity: HOST:PORT and the certificate's
     * path, with what a file name cannot hold replaced. */
    char name[600];
    snprintf(name, sizeof(name), "sessions-%s-%s", cf->agent, cf->cert ? cf->cert : "");
    for (char *p = name; *p; p++)
        if (*p == '/' || *p == ':' || *p == ' ' || (unsigned char) *p < 0x20)
            *p = '_';
    int len = snprintf(path, n, "%s/%s", dir, name);
    return len > 0 && (size_t) len < n ? 0 : -1;
}

void xr_client_sessions_read(xr_client_t *c, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return;
    struct stat st;
    unsigned char buf[XR_SESSIONS_MAX];
    ssize_t n = -1;
    /* Someone else's file, or one others may read, is not trusted. */
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
        (st.st_mode & 077) == 0)
        n = read(fd, buf, sizeof(buf));
    close(fd);
    if (n > 0)
        xr_client_sessions_load(c, buf, (size_t) n);
}

void xr_client_sessions_write(const xr_client_t *c, const char *path)
{
    unsigned char buf[XR_SESSIONS_MAX];
    size_t n = xr_client_sessions_save(c, buf, sizeof(buf));
    if (n == 0)
        return;
    char dir[4096], tmp[4200];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        return;
    *slash = '\0';
    /* ~/.cache may not exist yet: make it and ours, private. */
    char *parent = strrchr(dir, '/');
    if (parent != NULL && parent != dir) {
        *parent = '\0';
        mkdir(dir, 0700);
        *parent = '/';
    }
    mkdir(dir, 0700);
    snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int) getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return;
    int ok = write(fd, buf, n) == (ssize_t) n;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp, path) != 0)
        unlink(tmp);
}
