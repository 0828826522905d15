/*
 * test_io_owner.c: a socket that the reactor refuses to watch is closed
 * exactly once, by whoever owns it, on every path that hands one to
 * xr_io_add: a relay's client socket (xr_relay_start), the ends an agent
 * joins into a relay (xr_relay_join) and an agent's new connection
 * (xr_ctl_new).
 *
 * xr_io_add records the descriptor in its xr_io_t before epoll_ctl() can
 * fail, so a caller that closed it by hand and then ran its close path
 * closed it twice; the second close() hit whatever the worker had opened
 * under that number in between (another client's socket).  Here close()
 * is interposed: when the watched descriptor is closed, a sentinel is put
 * under its number at once, standing for that other socket, and the test
 * checks that the sentinel is still open afterwards.
 *
 * The reactor refuses a regular file's descriptor (epoll_ctl says EPERM),
 * which makes the failure certain without touching the epoll set.  The
 * worker, the relay engine and the agent are included whole, so their
 * static state can be set up as a worker would.
 */
#include "core/worker.c"
#include "relay/relay.c"
#include "agent/ctl.c"

#include <fcntl.h>
#include <sys/syscall.h>

#include "unit.h"

static int watched = -1; /* the descriptor under test */
static int closes;       /* times close() was called on it */
static int sentinel_up;  /* a sentinel took its number after the first close */

/* Every close() of this process comes here (the executable's definition
 * wins over libc's, for libuv's calls too). */
int close(int fd)
{
    int rc = (int) syscall(SYS_close, fd);
    if (fd == watched && watched >= 0) {
        closes++;
        if (!sentinel_up) {
            /* Another socket opened now may take this very number. */
            int s = open("/dev/null", O_RDONLY | O_CLOEXEC);
            if (s < 0 || (s != fd && dup3(s, fd, O_CLOEXEC) != fd))
                FAIL("cannot put a sentinel at %d: %s", fd, strerror(errno));
            if (s != fd)
                syscall(SYS_close, s);
            sentinel_up = 1;
        }
    }
    return rc;
}

static uv_loop_t loop;
static char err[1024];

/* A worker's state with one relay block: its runtime in rt. */
static xr_relay_rt_t *setup(void)
{
    static const char yaml[] = "relay:\n"
                               "  - name: a\n"
                               "    listen: 127.0.0.1:18001\n"
                               "    upstream: 127.0.0.1:18002\n";
    xr_gen_t *g = xr_gen_load_buffer((const unsigned char *) yaml, strlen(yaml), err, sizeof(err));
    if (g == NULL)
        FAIL("%s", err);
    ASSERT_EQ(uv_loop_init(&loop), 0);
    ASSERT_EQ(xr_reactor_init(&loop), XR_OK);
    memset(&xr_w, 0, sizeof(xr_w));
    xr_w.gen = g;
    xr_list_init(&xr_w.relays);
    xr_w.rts = xr_calloc(1, sizeof(xr_relay_rt_t));
    xr_relay_rt_init(&xr_w.rts[0], g->relays[0]);
    return &xr_w.rts[0];
}

/* A regular file's descriptor: one epoll refuses. */
static int unwatchable(void)
{
    char path[] = "/tmp/xr-io-owner-XXXXXX";
    int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    unlink(path);
    xr_io_t probe = {.fd = -1};
    ASSERT_EQ(xr_io_add(&probe, fd, NULL), XR_ERROR);
    ASSERT_EQ(errno, EPERM);
    return fd;
}

static void expect_one_close(int fd)
{
    ASSERT_EQ(closes, 1);
    ASSERT_TRUE(sentinel_up);
    /* The sentinel (the other socket that took the number) is open. */
    ASSERT_GE(fcntl(fd, F_GETFD), 0);
}

static void run_loop(void)
{
    /* The closed relay's timer finishes closing, and frees it. */
    uv_run(&loop, UV_RUN_NOWAIT);
}

TEST(relay_start_closes_an_unwatchable_client_once)
{
    xr_relay_rt_t *rt = setup();
    struct sockaddr_storage client = {.ss_family = AF_INET};
    int fd = unwatchable();
    atomic_fetch_add(rt->ctr.active, 1); /* the listener's reservation */
    watched = fd;
    xr_relay_start(&loop, rt, fd, &client, 1);
    expect_one_close(fd);
    ASSERT_EQ(xr_w.nrelays, 0);
    ASSERT_EQ(atomic_load(rt->ctr.active), 0);
    run_loop();
}

TEST(relay_join_closes_an_unwatchable_link_once)
{
    xr_relay_rt_t *rt = setup();
    struct sockaddr_storage client = {.ss_family = AF_INET};
    /* Two links as the agent hands them over: the first is a socket
     * epoll takes, the second a descriptor it refuses. */
    int sp[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp), 0);
    int bad = unwatchable();
    xr_end_t a = {.ops = &xr_end_tcp_ops}, b = {.ops = &xr_end_tcp_ops};
    a.io.fd = sp[0];
    b.io.fd = bad;
    xr_end_t *ends[2] = {&a, &b};
    const unsigned char *pending[2] = {NULL, NULL};
    size_t npending[2] = {0, 0};
    watched = bad;
    const uint32_t raw[2] = {0, 0};
    xr_relay_join(&loop, rt, ends, pending, npending, raw, &client, 2);
    expect_one_close(bad);
    ASSERT_EQ(xr_w.nrelays, 0);
    /* The link epoll took went with the relay. */
    ASSERT_EQ(fcntl(sp[0], F_GETFD), -1);
    ASSERT_EQ(a.io.fd, -1);
    ASSERT_EQ(b.io.fd, -1);
    run_loop();
}

TEST(agent_connection_closes_an_unwatchable_socket_once)
{
    setup();
    xr__ag.loop = &loop;
    xr_list_init(&xr__ag.sessions);
    xr_list_init(&xr__ag.rps);
    int fd = unwatchable();
    watched = fd;
    ASSERT_NULL(xr_ctl_new(fd, XR_KIND_UNKNOWN));
    expect_one_close(fd);
    ASSERT_EQ(xr__ag.nsessions, 0);
    run_loop();
}
