/*
 * status.c: `xray status [--socket PATH] [--json]`.
 *
 * The agent answers one request line on its admin socket and closes; the
 * text form is for people, the JSON form (one object) for scripts.
 */
#include "core/xrayd.h"
#include "cli/status.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

static void xr_status_usage(FILE *out)
{
    fprintf(out, "usage: xray status [--socket PATH] [--json]\n"
                 "\n"
                 "Print the state of an xrayd agent: registrations and leases, control\n"
                 "sessions, TLS handshakes (full and resumed) and counters.\n"
                 "\n"
                 "  --socket PATH  the agent's admin_socket (default: $XRAY_ADMIN_SOCKET)\n"
                 "  --json         one JSON object instead of text\n");
}

int xr_status_main(int argc, char **argv)
{
    const char *path = getenv("XRAY_ADMIN_SOCKET");
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc) {
            path = argv[++i];
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            xr_status_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "xray status: unexpected argument \"%s\"\n", argv[i]);
            xr_status_usage(stderr);
            return 2;
        }
    }
    if (path == NULL || path[0] == '\0') {
        fprintf(stderr, "xray status: which agent? give --socket PATH (the agent's "
                        "admin_socket) or set XRAY_ADMIN_SOCKET\n");
        return 2;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "xray status: socket path too long: %s\n", path);
        return 2;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *) &sa, sizeof(sa)) != 0) {
        fprintf(stderr, "xray status: cannot reach the agent at %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return 1;
    }
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    const char *req = json ? "status json\n" : "status\n";
    if (write(fd, req, strlen(req)) < 0) {
        fprintf(stderr, "xray status: %s: %s\n", path, strerror(errno));
        close(fd);
        return 1;
    }
    char buf[65536];
    ssize_t n;
    size_t total = 0;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        fwrite(buf, 1, (size_t) n, stdout);
        total += (size_t) n;
    }
    int err = errno;
    close(fd);
    if (n < 0 || total == 0) {
        fprintf(stderr, "xray status: no answer from %s%s%s\n", path, n < 0 ? ": " : "",
                n < 0 ? strerror(err) : "");
        return 1;
    }
    return 0;
}
