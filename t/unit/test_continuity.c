/*
 * test_continuity.c: the master's table of held connections, fed through
 * a real worker channel by a forked worker: holds, drops, and churn that
 * never lets the table empty (the index must not fill with tombstones).
 */
#include "core/xrayd.h"
#include "core/continuity.h"

#include <poll.h>
#include <sys/socket.h>

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
