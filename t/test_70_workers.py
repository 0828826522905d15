"""Worker processes: count, respawn after a crash, graceful behaviour."""

import os
import re
import signal
import socket
import time


import xrayd_fixture as xf

RELAY = """
relay:
  - name: r
    listen: 127.0.0.1:${p}
    upstream: 127.0.0.1:${u}
"""


def echo_ok(port, payload, timeout=15):
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return xf.recv_all(s, timeout) == payload


def test_workers_count(xrayd, cleanup):
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = x.listen_port()
    x.write_conf(RELAY, p=p, u=echo.port, workers=3)
    x.start()
    time.sleep(0.5)
    assert len(x.worker_pids()) == 3
    x.wait_log(r"\[notice\].*xrayd/%s started" % re.escape(
        (xf.REPO / "VERSION").read_text().strip()))
    assert echo_ok(p, b"three")


def test_workers_auto(xrayd, cleanup):
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = x.listen_port()
    n = len(os.sched_getaffinity(0))
    x.write_conf(RELAY, p=p, u=echo.port, workers="auto")
    x.workers = n
    x.start()
    time.sleep(0.5)
    assert len(x.worker_pids()) == n


def test_worker_killed_is_respawned(xrayd, cleanup):
    sig = signal.SIGKILL
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = x.listen_port()
    x.write_conf(RELAY, p=p, u=echo.port)
    x.allow_log(r"exited on signal %d\b" % sig)
    x.start()
    for round_ in range(3):
        before = x.worker_pids()
        victim = x.kill_worker(before[round_ % len(before)], sig)
        lines = x.wait_log(r"\[alert\].*worker process %d exited on signal %d\b"
                           % (victim, sig))
        assert lines
        new = xf.wait_until(
            lambda: [w for w in x.worker_pids() if w not in before], 15,
            what="a replacement worker")
        assert len(new) == 1
        x.wait_log(r"\[notice\].*start worker process %d\b" % new[0])
        xf.wait_until(lambda: len(x.worker_pids()) == x.workers, 10,
                      what="worker count back to %d" % x.workers)
        assert victim not in x.worker_pids()
    # New connections are served (by both workers: many connections).
    fails = [i for i in range(40) if not echo_ok(p, b"after kill %d" % i)]
    assert not fails
    assert x.alive()


def test_all_workers_killed(xrayd, cleanup):
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = x.listen_port()
    x.write_conf(RELAY, p=p, u=echo.port)
    x.allow_log(r"exited on signal 9\b")
    x.start()
    before = x.worker_pids()
    for w in before:
        os.kill(w, signal.SIGKILL)
    xf.wait_until(lambda: len(set(x.worker_pids()) - set(before)) == 2, 15,
                  what="two replacement workers")
    assert echo_ok(p, b"phoenix")


def test_worker_kill_does_not_disturb_other_worker(xrayd, cleanup):
    """A relay served by the surviving worker continues across the other
    worker's death."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = x.listen_port()
    x.write_conf(RELAY + """\
    filters:
      - log:
          path: ${tmp}/access.log
""", p=p, u=echo.port)
    x.allow_log(r"exited on signal 9\b")
    x.start()
    held = []
    # Open connections until both workers hold at least one (at most 40).
    for i in range(40):
        s = xf.connect(p)
        s.sendall(b"h")
        assert xf.recv_exact(s, 1) == b"h"
        held.append(s)
    workers = x.worker_pids()
    victim = workers[0]
    x.kill_worker(victim)
    x.wait_log(r"worker process %d exited on signal 9" % victim)
    survivors = 0
    for s in held:
        try:
            s.sendall(b"z")
            if xf.recv_exact(s, 1, timeout=3) == b"z":
                survivors += 1
        except (OSError, EOFError):
            pass
        s.close()
    assert survivors > 0, "no relay survived the death of one of two workers"


def test_fast_stop_with_open_relays(xrayd, cleanup):
    """SIGTERM with relays open: master and workers exit promptly."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = x.listen_port()
    x.write_conf(RELAY, p=p, u=echo.port)
    x.start()
    conns = []
    for i in range(20):
        s = xf.connect(p)
        s.sendall(b"o")
        conns.append(s)
    for s in conns:
        assert xf.recv_exact(s, 1) == b"o"
    workers = x.worker_pids()
    t0 = time.monotonic()
    rc = x.stop(signal.SIGTERM, timeout=15)
    assert rc == 0, "exit status %s" % rc
    assert time.monotonic() - t0 < 5
    for w in workers:
        assert not xf.pid_alive(w)
    for s in conns:
        assert xf.closed_by_peer(s, 5) in ("eof", "rst")
        s.close()
