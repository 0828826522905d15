/*
 * socks_static.c: a program built static by t/test_68_libxray.py (as a
 * Go program would be: no dynamic loader, so no LD_PRELOAD) that speaks
 * SOCKS5 itself: CONNECT through PROXY_IP:PROXY_PORT to IP:PORT, send
 * stdin, then copy the answer to stdout.
 *
 *   socks_static PROXY_IP PROXY_PORT IP PORT
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void die(const char *what)
{
    fprintf(stderr, "socks_static: %s\n", what);
    exit(1);
}

static void get(int fd, unsigned char *b, size_t n)
{
    for (size_t have = 0; have < n;) {
        ssize_t r = read(fd, b + have, n - have);
        if (r <= 0)
            die("the proxy closed");
        have += (size_t) r;
    }
}

int main(int argc, char **argv)
{
    if (argc != 5)
        die("usage: socks_static PROXY_IP PROXY_PORT IP PORT");
    struct sockaddr_in p = {.sin_family = AF_INET, .sin_port = htons((uint16_t) atoi(argv[2]))};
    unsigned char req[10] = {5, 1, 0, 1}, b[10];
    uint16_t port = htons((uint16_t) atoi(argv[4]));
    if (inet_pton(AF_INET, argv[1], &p.sin_addr) != 1 || inet_pton(AF_INET, argv[3], req + 4) != 1)
        die("bad address");
    memcpy(req + 8, &port, 2);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *) &p, sizeof(p)) != 0)
        die("cannot reach the proxy");
    if (write(fd, "\x05\x01\x00", 3) != 3)
        die("write");
    get(fd, b, 2);
    if (b[0] != 5 || b[1] != 0)
        die("the proxy wants authentication");
    if (write(fd, req, sizeof(req)) != (ssize_t) sizeof(req))
        die("write");
    get(fd, b, 10);
    if (b[1] != 0) {
        fprintf(stderr, "socks_static: the proxy refused: reply %d\n", b[1]);
        return 1;
    }
    char buf[65536];
    ssize_t n;
    while ((n = read(0, buf, sizeof(buf))) > 0)
        if (write(fd, buf, (size_t) n) != n)
            die("write");
    shutdown(fd, SHUT_WR);
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        if (write(1, buf, (size_t) n) != n)
            die("write");
    return 0;
}
