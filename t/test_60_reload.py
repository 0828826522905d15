"""Reload (SIGHUP): a whole new generation or nothing; in-flight relays
are not disturbed; a broken configuration keeps the old one serving."""

import os
import random
import re
import signal
import socket
import time

import pytest

import xrayd_fixture as xf

RELAY = """
drain_timeout: ${drain}
relay:
  - name: r
    listen: 127.0.0.1:${p}
    upstream: 127.0.0.1:${u}
    filters:
      - log:
          path: ${tmp}/access.log
"""


def echo_ok(port, payload, timeout=15):
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return xf.recv_all(s, timeout) == payload


@pytest.mark.timeout(420)
def test_reload_under_load(xrayd, cleanup):
    """560 concurrent echo relays, each trickling data for ~4 s, plus a new
    connection every 25 ms, while SIGHUP is sent five times: every
    connection gets back exactly what it sent, none refused or reset."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = x.listen_port()
    x.write_conf(RELAY, p=p, u=echo.port, drain="1m", log_level="notice")
    x.start()
    gen0 = set(x.worker_pids())
    rng = random.Random(60)
    load = xf.EchoLoad()
    n_long, n_new = 560, 320
    for i in range(n_long):
        chunks = [rng.randbytes(rng.randint(64, 2048)) for _ in range(25)]
        load.add(p, chunks, 0.15, start_at=i * 0.003)
    for j in range(n_new):
        chunks = [rng.randbytes(rng.randint(16, 512)) for _ in range(3)]
        load.add(p, chunks, 0.1, start_at=0.3 + j * 0.025)
    hups = [1.0, 2.5, 4.0, 5.5, 7.0]
    sent_hups = []

    def tick(now):
        if hups and now >= hups[0]:
            hups.pop(0)
            os.kill(x.pid, signal.SIGHUP)
            sent_hups.append(now)

    res = load.run(180, on_tick=tick)
    assert len(sent_hups) == 5, "load ended before all reloads were sent"
    bad = {}
    for r in res:
        if r != "ok":
            k = re.sub(r"\d+", "N", r)
            bad[k] = bad.get(k, 0) + 1
    assert not bad, "%d of %d connections failed: %s" % (
        sum(bad.values()), len(res), bad)
    assert echo.max_active >= 500, "only %d relays were in flight at once" \
        % echo.max_active
    assert x.alive()
    # Every generation but the last retires once its relays are done.
    xf.wait_until(lambda: len(x.worker_pids()) == x.workers and
                  not (set(x.worker_pids()) & gen0), 60,
                  what="old generations to exit")
    assert len(x.log_lines(r"worker process started")) >= 6 * x.workers
    assert not x.log_lines(r"reload failed")
    assert echo_ok(p, b"after the storm")


def test_reload_applies_new_config(xrayd, cleanup):
    """A reload switches upstream, adds a listener and removes one; a relay
    opened before the reload keeps its old upstream until it ends."""
    a, b = xf.EchoServer(), xf.EchoServer()
    cleanup += [a, b]
    x = xrayd()
    p1 = x.listen_port()
    p2 = xf.free_port()
    x.write_conf(RELAY, p=p1, u=a.port, drain="1m")
    x.start()
    held = xf.connect(p1)
    held.sendall(b"old")
    assert xf.recv_exact(held, 3) == b"old"
    assert a.accepted == 1
    old = x.worker_pids()
    x.write_conf(RELAY, p=p2, u=b.port, drain="1m")
    x.listen = [p2]
    x.reload()
    xf.wait_until(lambda: p2 in xf.listening_ports(), 10, what="new listener")
    xf.wait_until(lambda: p1 not in xf.listening_ports(), 10,
                  what="removed listener to close")
    assert echo_ok(p2, b"new")
    assert b.accepted == 1 and a.accepted == 1
    # The held relay still works through the old worker to the old upstream.
    held.sendall(b"still")
    assert xf.recv_exact(held, 5) == b"still"
    held.close()
    x.wait_workers_exit(old, 30)


def test_reload_broken_config_keeps_serving(xrayd, cleanup):
    a, b = xf.EchoServer(), xf.EchoServer()
    cleanup += [a, b]
    x = xrayd()
    p = x.listen_port()
    x.write_conf(RELAY, p=p, u=a.port, drain="1m")
    x.start()
    workers = x.worker_pids()
    # Broken: buffer_size out of range on line 8 (6 header lines, a blank
    # line, drain_timeout on 8; put the error on the relay's upstream).
    x.write_conf(RELAY.replace("    upstream: 127.0.0.1:${u}\n",
                               "    upstream: 127.0.0.1:${u}\n"
                               "    buffer_size: 1\n"),
                 p=p, u=b.port, drain="1m")
    lines = x.conf.read_text().splitlines()
    ln = [i for i, l in enumerate(lines, 1) if "buffer_size: 1" in l][0]
    line = x.reload(expect_ok=False)
    assert "[error]" in line, line
    m = re.search(r"reload failed, keeping the running configuration: "
                  + re.escape(str(x.conf)) + r":(\d+):(\d+): \"buffer_size\": ", line)
    assert m, line
    assert (int(m.group(1)), int(m.group(2))) == (ln, 18), line
    time.sleep(1)
    assert x.alive()
    assert x.worker_pids() == workers, "workers changed on a failed reload"
    for i in range(5):
        assert echo_ok(p, b"still old %d" % i)
    assert a.accepted == 5 and b.accepted == 0
    # A YAML syntax error is refused the same way.
    x.conf.write_text(x.conf.read_text().replace("relay:", "relay: [", 1))
    line = x.reload(expect_ok=False)
    assert re.search(re.escape(str(x.conf)) + r":\d+:\d+: ", line), line
    assert echo_ok(p, b"still old")
    # Fixed: the next reload takes effect.
    x.write_conf(RELAY, p=p, u=b.port, drain="1m")
    x.reload()
    assert echo_ok(p, b"new")
    assert b.accepted == 1


def test_drain_timeout_closes_old_relays(xrayd, cleanup):
    """After a reload, an old relay is served for drain_timeout, then closed
    ("worker shutdown"), and the old workers exit."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = x.listen_port()
    x.write_conf(RELAY, p=p, u=echo.port, drain="2s")
    x.start()
    s = xf.connect(p)
    s.sendall(b"a")
    assert xf.recv_exact(s, 1) == b"a"
    old = x.worker_pids()
    t0 = time.monotonic()
    x.reload()
    s.sendall(b"b")
    assert xf.recv_exact(s, 1) == b"b"
    how = xf.closed_by_peer(s, 20)
    dt = time.monotonic() - t0
    s.close()
    assert how in ("eof", "rst"), "old relay survived drain_timeout"
    assert 1.5 <= dt <= 10, "closed %.1fs after reload, drain_timeout 2s" % dt
    x.wait_workers_exit(old, 15)
    recs = xf.read_json_lines(x.tmp / "access.log", 1)
    assert recs[0]["reason"] == "worker shutdown", recs[0]
    assert echo_ok(p, b"fresh")


def test_reload_many_times_no_leak(xrayd, cleanup):
    """Twenty reloads in a row: the master's fd count and RSS stay put."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = x.listen_port()
    x.write_conf(RELAY, p=p, u=echo.port, drain="1m")
    x.start()
    x.reload()
    fds0, rss0 = xf.open_fds(x.pid), xf.rss_kib(x.pid)
    for i in range(20):
        old = x.worker_pids()
        x.reload()
        x.wait_workers_exit(old, 30)
    assert echo_ok(p, b"x")
    fds1, rss1 = xf.open_fds(x.pid), xf.rss_kib(x.pid)
    assert fds1 <= fds0, "master fds %d -> %d over 20 reloads" % (fds0, fds1)
    assert rss1 - rss0 <= 2048, "master RSS %d -> %d KiB" % (rss0, rss1)
