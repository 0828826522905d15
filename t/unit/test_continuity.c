/*
 * test_continuity.c: the master's table of held connections, fed through
 * a real worker channel by a forked worker: holds, drops, and churn that
 * never lets the table empty (the index must not fill with tombstones),
 * and the order that hands a dead worker's sockets to the standby.
 */
#include "core/xrayd.h"
#include "core/continuity.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "unit.h"

/* Fork a worker that holds one long-lived connection (id 1) and then
 * opens and ends `churn` short ones, each end held once; the parent
 * plays master until the worker is gone.  Returns the worker's pid. */
static pid_t run_worker(int churn, int keep_last)
{
    int child_end;
    int master_end = xr_cont_channel(&child_end);
    ASSERT_GE(master_end, 0);
    int sp[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        xr_cont_child_init(child_end, 0);
        int ok = xr_cont_hold(1, 0, sp[0]) == XR_OK;
        for (int i = 0; ok && i < churn; i++) {
            /* ids as the proxy makes them: worker-unique, spread out */
            uint64_t id = ((uint64_t) 7 << 40) + (uint64_t) i * 2654435761u;
            ok = xr_cont_hold(id, 0, sp[0]) == XR_OK && xr_cont_hold(id, 1, sp[1]) == XR_OK;
            if (ok && !(keep_last && i == churn - 1))
                xr_cont_drop(id);
        }
        _exit(ok ? 0 : 3);
    }
    close(child_end);
    xr_cont_attach(master_end, pid);
    int status = 0;
    for (;;) {
        struct pollfd pf = {master_end, POLLIN, 0};
        if (poll(&pf, 1, 100) > 0)
            xr_cont_master_read(master_end);
        if (waitpid(pid, &status, WNOHANG) == pid)
            break;
    }
    xr_cont_master_read(master_end); /* what it said before it went */
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), 0);
    close(sp[0]);
    close(sp[1]);
    return pid;
}

TEST(hold_and_drop)
{
    pid_t pid = run_worker(10, 1);
    /* the long-lived one and the last, which was never dropped */
    ASSERT_EQ(xr_cont_count(), 2);
    ASSERT_EQ(xr_cont_count_of(pid), 2);
    const xr_cont_entry_t *e;
    size_t n = xr_cont_entries(&e);
    ASSERT_EQ(n, 2);
    for (size_t i = 0; i < n; i++) {
        ASSERT_EQ(e[i].owner, pid);
        ASSERT_GE(e[i].fd[0], 0);
        if (e[i].id != 1)
            ASSERT_GE(e[i].fd[1], 0);
    }
    xr_cont_reap(pid);
    xr_cont_forget(pid);
    ASSERT_EQ(xr_cont_count(), 0);
}

/* Before the index counted its tombstones, steady churn under one
 * long-lived connection filled it with them and the next lookup of a
 * new id probed forever (the test then dies by its alarm). */
TEST(churn_never_fills_the_index)
{
    pid_t pid = run_worker(50000, 0);
    ASSERT_EQ(xr_cont_count(), 1);
    ASSERT_EQ(xr_cont_count_of(pid), 1);
    xr_cont_reap(pid);
    xr_cont_forget(pid);
    ASSERT_EQ(xr_cont_count(), 0);
}

/* Fork a standby on a new channel: 0 in the child (which holds none of
 * the table, as a standby at its start), its pid in the parent, with
 * *master_end the master's end. */
static pid_t fork_standby(int *master_end)
{
    int child_end;
    *master_end = xr_cont_channel(&child_end);
    ASSERT_GE(*master_end, 0);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        close(*master_end);
        xr_cont_child_init(child_end, 0);
        return 0;
    }
    close(child_end);
    xr_cont_attach(*master_end, pid);
    return pid;
}

/* The order to a standby carries every connection of the dead worker,
 * more than one message's worth, with the ends it has (one connection
 * has no upstream socket yet) and none of another worker's: the standby
 * takes each as the very socket the master holds. */
TEST(standby_order_carries_the_dead_workers_sockets)
{
    enum { N = 300 };
    int sp[N][2];
    pid_t dead = 4242, other = 4343;
    for (int i = 0; i < N; i++) {
        ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sp[i]), 0);
        int fd[XR_CONT_ENDS] = {dup(sp[i][0]), i == 7 ? -1 : dup(sp[i][1])};
        xr_cont_add(1000 + (uint64_t) i, i % 10 == 9 ? other : dead, fd);
    }
    int master_end;
    pid_t pid = fork_standby(&master_end);
    if (pid == 0) {
        xr_cont_order_t o;
        if (xr_cont_wait_order(10, &o) != 0)
            _exit(1); /* nothing sent yet */
        if (xr_cont_wait_order(5000, &o) != 1 || o.dead != dead || o.slot != 3 || o.n != 270 ||
            strcmp(o.dir, "/run/xrayd-test") != 0 || xr_cont_adopting() != dead)
            _exit(2);
        for (int i = 0; i < N; i++) {
            int fd[XR_CONT_ENDS];
            int held = xr_cont_take(1000 + (uint64_t) i, fd);
            if (i % 10 == 9) {
                if (held)
                    _exit(3); /* another worker's */
                continue;
            }
            struct stat a, b;
            if (!held || fstat(fd[0], &a) != 0 || fstat(sp[i][0], &b) != 0 || a.st_ino != b.st_ino)
                _exit(4);
            if (i == 7
                    ? fd[1] != -1
                    : (fstat(fd[1], &a) != 0 || fstat(sp[i][1], &b) != 0 || a.st_ino != b.st_ino))
                _exit(5);
        }
        _exit(0);
    }
    usleep(50 * 1000);
    xr_cont_order_t o = {.dead = dead, .slot = 3, .singles = 0};
    snprintf(o.dir, sizeof(o.dir), "%s", "/run/xrayd-test");
    ASSERT_EQ(xr_cont_send_order(master_end, &o), XR_OK);
    ASSERT_EQ(o.n, 270);
    ASSERT_CHILD_OK(pid);
}

/* A master gone before the order (its end closed) leaves the standby
 * nothing to wait for. */
TEST(standby_sees_the_master_go)
{
    int master_end;
    pid_t pid = fork_standby(&master_end);
    if (pid == 0) {
        xr_cont_order_t o;
        _exit(xr_cont_wait_order(5000, &o) == -1 ? 0 : 1);
    }
    close(master_end);
    ASSERT_CHILD_OK(pid);
}
