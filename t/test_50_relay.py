"""Relaying: bulk integrity both ways at once, half-close, back-pressure
(slow reader), timeouts, upstream failover and balancing,
max_connections, IPv6."""

import hashlib
import json
import os
import socket
import subprocess
import threading
import time

import pytest

import xrayd_fixture as xf

BIG_MB = int(os.environ.get("XRAYD_TEST_BIG_MB", "1024"))


def simple_conf(x, upstream, extra_main="", extra_relay="", log=True, **kw):
    p = x.listen_port()
    ups = upstream if isinstance(upstream, list) else [upstream]
    body = extra_main + """
relay:
  - name: r
    listen: 127.0.0.1:${p}
    upstream: [${ups}]
""" + extra_relay
    if log:
        body += "    filters:\n      - log:\n          path: ${tmp}/access.log\n"
    x.write_conf(body, p=p, ups=", ".join("127.0.0.1:%d" % u for u in ups), **kw)
    return p


def echo_ok(port, payload, timeout=15, host="127.0.0.1"):
    with socket.create_connection((host, port), timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return xf.recv_all(s, timeout) == payload


# ---- bulk --------------------------------------------------------------------

@pytest.mark.timeout(900)
def test_bulk_both_directions_sha256(xrayd, cleanup):
    """BIG_MB MiB client->upstream and BIG_MB MiB upstream->client at the
    same time; both arrive intact (SHA-256) and the access log counts
    them."""
    total = BIG_MB * xf.MIB

    def upstream(srv, s):
        res = {}
        def reader():
            h = hashlib.sha256()
            res["n"] = xf.recv_to_eof(s, h)
            res["hash"] = h.hexdigest()
        t = threading.Thread(target=reader)
        t.start()
        h = hashlib.sha256()
        xf.send_stream(s, xf.Stream(2, total), h)
        res["sent_hash"] = h.hexdigest()
        s.shutdown(socket.SHUT_WR)
        t.join(600)
        with srv.lock:
            srv.results.append(res)

    srv = xf.HandlerServer(upstream)
    cleanup.append(srv)
    x = xrayd()
    p = simple_conf(x, srv.port)
    x.start()
    t0 = time.monotonic()
    c = xf.connect(p, timeout=120)
    sent = {}

    def sender():
        h = hashlib.sha256()
        xf.send_stream(c, xf.Stream(1, total), h)
        sent["hash"] = h.hexdigest()
        c.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=sender)
    t.start()
    h = hashlib.sha256()
    n = xf.recv_to_eof(c, h)
    t.join(600)
    c.close()
    elapsed = time.monotonic() - t0
    xf.wait_until(lambda: srv.results, 60, what="upstream to finish")
    assert not srv.errors, srv.errors
    res = srv.results[0]
    assert n == total, "client received %d of %d bytes" % (n, total)
    assert res["n"] == total, "upstream received %d of %d" % (res["n"], total)
    assert h.hexdigest() == res["sent_hash"], "downstream data corrupted"
    assert res["hash"] == sent["hash"], "upstream data corrupted"
    rec = xf.read_json_lines(x.tmp / "access.log", 1)[0]
    assert rec["bytes_up"] == total and rec["bytes_down"] == total, rec
    assert rec["reason"] == "done", rec
    print("bulk: %d MiB each way in %.1fs (%.0f MiB/s per direction)"
          % (BIG_MB, elapsed, BIG_MB / elapsed))


# ---- half-close -----------------------------------------------------------------

def test_half_close_client_first(xrayd, cleanup):
    """Client sends and shuts down its write side; the upstream reads to
    EOF, then replies; the client gets the whole reply."""
    up_n, reply_n = 3 * xf.MIB + 17, 5 * xf.MIB + 3

    def upstream(srv, s):
        h = hashlib.sha256()
        n = xf.recv_to_eof(s, h)
        time.sleep(0.5)  # the client has long shut down its side
        s.sendall(h.hexdigest().encode() + b"\n")
        xf.send_stream(s, xf.Stream(5, reply_n))
        with srv.lock:
            srv.results.append(n)

    srv = xf.HandlerServer(upstream)
    cleanup.append(srv)
    x = xrayd()
    p = simple_conf(x, srv.port)
    x.start()
    data = xf.Stream(4, up_n)
    with xf.connect(p, timeout=30) as c:
        xf.send_stream(c, data)
        c.shutdown(socket.SHUT_WR)
        h = hashlib.sha256()
        got = xf.recv_exact(c, 65, timeout=30)
        n = xf.recv_to_eof(c, h)
    assert got == data.sha256().encode() + b"\n"
    assert n == reply_n
    assert h.hexdigest() == xf.Stream(5, reply_n).sha256()
    assert srv.results == [up_n]
    rec = xf.read_json_lines(x.tmp / "access.log", 1)[0]
    assert (rec["bytes_up"], rec["bytes_down"]) == (up_n, 65 + reply_n), rec


def test_half_close_upstream_first(xrayd, cleanup):
    """The upstream sends a greeting and shuts down its write side; the
    client sees EOF, and can still send; the upstream gets all of it."""
    def upstream(srv, s):
        s.sendall(b"greeting\n")
        s.shutdown(socket.SHUT_WR)
        h = hashlib.sha256()
        n = xf.recv_to_eof(s, h)
        with srv.lock:
            srv.results.append((n, h.hexdigest()))

    srv = xf.HandlerServer(upstream)
    cleanup.append(srv)
    x = xrayd()
    p = simple_conf(x, srv.port)
    x.start()
    data = xf.Stream(6, 2 * xf.MIB + 5)
    with xf.connect(p, timeout=30) as c:
        assert xf.recv_all(c, 10) == b"greeting\n"
        time.sleep(0.3)
        xf.send_stream(c, data)
        c.shutdown(socket.SHUT_WR)
        assert xf.recv_all(c, 10) == b""
    xf.wait_until(lambda: srv.results, 15, what="upstream to read to EOF")
    assert srv.results == [(2 * xf.MIB + 5, data.sha256())]


# ---- back-pressure -----------------------------------------------------------------

@pytest.mark.timeout(300)
@pytest.mark.parametrize("direction", ["down", "up"])
def test_slow_reader_backpressure(xrayd, cleanup, direction):
    """One side sends 256 MiB as fast as it can, the other reads ~300 KiB/s.
    The sender must be throttled (what it got rid of stays within kernel
    buffers of what was read), and the worker's RSS must not grow by more
    than 8 MiB; then the rest drains intact."""
    total = 256 * xf.MIB
    sent = [0]
    stream = xf.Stream(8, total)

    def fast_send(s):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
        try:
            for c in stream.chunks():
                for off in range(0, len(c), 256 * 1024):
                    s.sendall(c[off:off + 256 * 1024])
                    sent[0] += len(c[off:off + 256 * 1024])
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    up_sock = []

    def upstream(srv, s):
        if direction == "down":
            fast_send(s)
            time.sleep(1)
        else:
            up_sock.append(s)
            # The test drives this socket; keep it open until closed.
            xf.wait_until(lambda: srv._stop.is_set() or len(up_sock) > 1,
                          280, interval=0.2, what="test end")

    srv = xf.HandlerServer(upstream)
    cleanup.append(srv)
    x = xrayd()
    p = simple_conf(x, srv.port, log=False)
    x.start()
    time.sleep(0.5)
    base = {w: xf.rss_kib(w) for w in x.worker_pids()}

    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    c.settimeout(60)
    c.connect(("127.0.0.1", p))
    if direction == "down":
        slow = c
    else:
        t = threading.Thread(target=fast_send, args=(c,), daemon=True)
        t.start()
        xf.wait_until(lambda: up_sock, 15, what="upstream connection")
        slow = up_sock[0]
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    slow.settimeout(60)

    received = 0
    samples = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 8:
        d = slow.recv(16384)
        assert d, "EOF while reading slowly"
        received += len(d)
        samples.append((time.monotonic() - t0, sent[0], received))
        time.sleep(0.05)
    peak = {w: xf.rss_kib(w) for w in base if xf.pid_alive(w)}
    pending = sent[0] - received
    print("slow reader (%s): sent %d KiB, read %d KiB, RSS growth %s KiB"
          % (direction, sent[0] // 1024, received // 1024,
             {w: peak[w] - base[w] for w in peak}))
    # Kernel buffers on the way: xrayd's receive buffer (tcp_rmem max 32
    # MiB), its send buffer (tcp_wmem max 4 MiB), ours (<1 MiB), plus one
    # buffer_size in xrayd: anything much beyond ~40 MiB means xrayd is
    # buffering in user space.
    assert pending < 64 * xf.MIB, \
        "sender not throttled: %d MiB sent, %d KiB read" % (
            sent[0] // xf.MIB, received // 1024)
    # Steady state: over the last 3 s the sender advanced no faster than
    # the reader (plus a little).
    s_then = [s for s in samples if s[0] >= 5.0][0]
    s_now = samples[-1]
    assert (s_now[1] - s_then[1]) <= (s_now[2] - s_then[2]) + 2 * xf.MIB, \
        "sender kept going: sent +%d KiB while reader +%d KiB" % (
            (s_now[1] - s_then[1]) // 1024, (s_now[2] - s_then[2]) // 1024)
    for w, r in peak.items():
        assert r - base[w] <= 8 * 1024, \
            "worker %d RSS grew %d KiB with a slow reader" % (w, r - base[w])

    # Now drain at full speed: everything arrives intact.
    # Compare the rest with the stream's bytes from offset `received`.
    h = hashlib.sha256()
    rest = xf.recv_to_eof(slow, h)
    assert received + rest == total, "%d + %d != %d" % (received, rest, total)
    expect = hashlib.sha256()
    skip = received
    for ch in xf.Stream(8, total).chunks():
        if skip >= len(ch):
            skip -= len(ch)
            continue
        expect.update(ch[skip:])
        skip = 0
    assert h.hexdigest() == expect.hexdigest(), "data corrupted after drain"
    c.close()
    if up_sock:
        up_sock.append(None)


# ---- timeouts --------------------------------------------------------------------

def test_idle_timeout(xrayd, cleanup):
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = simple_conf(x, echo.port, extra_main="idle_timeout: 1s\n")
    x.start()
    # An active connection (traffic every 0.3 s for 3 s) survives.
    with xf.connect(p) as a:
        for i in range(10):
            a.sendall(b"k%d" % i)
            assert xf.recv_exact(a, 2) == b"k%d" % i
            time.sleep(0.3)
    # An idle one is closed after about 1 s.
    s = xf.connect(p)
    s.sendall(b"x")
    assert xf.recv_exact(s, 1) == b"x"
    t0 = time.monotonic()
    how = xf.closed_by_peer(s, 10)
    dt = time.monotonic() - t0
    s.close()
    assert how in ("eof", "rst"), "idle connection still open after 10 s"
    assert 0.8 <= dt <= 6, "closed after %.2fs with idle_timeout 1s" % dt
    recs = xf.read_json_lines(x.tmp / "access.log", 2)
    assert recs[0]["reason"] == "done", recs[0]
    assert recs[1]["reason"] == "idle timeout", recs[1]


def test_idle_timeout_per_relay_overrides_main(xrayd, cleanup):
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = simple_conf(x, echo.port, extra_main="idle_timeout: 1h\n",
                    extra_relay="    idle_timeout: 1s\n", log=False)
    x.start()
    s = xf.connect(p)
    t0 = time.monotonic()
    assert xf.closed_by_peer(s, 10) in ("eof", "rst")
    assert time.monotonic() - t0 <= 6
    s.close()


def test_connect_timeout(xrayd, cleanup):
    hole = xf.Blackhole()
    cleanup.append(hole)
    x = xrayd()
    p = simple_conf(x, hole.port, extra_relay="    connect_timeout: 1s\n")
    x.start()
    s = xf.connect(p)
    s.sendall(b"hello")
    t0 = time.monotonic()
    how = xf.closed_by_peer(s, 20)
    dt = time.monotonic() - t0
    s.close()
    assert how in ("eof", "rst"), "still waiting for a hung upstream after 20 s"
    assert 0.8 <= dt <= 8, "closed after %.2fs with connect_timeout 1s" % dt
    rec = xf.read_json_lines(x.tmp / "access.log", 1)[0]
    assert rec["reason"].startswith("upstream connect"), rec


# ---- upstreams -------------------------------------------------------------------

def test_failover_dead_upstream(xrayd, cleanup):
    """Two upstreams, the first dead (refuses): every connection succeeds,
    sequentially and concurrently."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    dead = xf.free_port()
    x = xrayd()
    p = simple_conf(x, [dead, echo.port], extra_relay="    balance: round_robin\n")
    x.start()
    fails = [i for i in range(40) if not echo_ok(p, b"seq %d" % i)]
    assert not fails, "sequential connections failed: %s" % fails
    load = xf.EchoLoad()
    for i in range(100):
        load.add(p, [b"c%03d-" % i * 20, b"tail"], 0.05, start_at=i * 0.01)
    res = load.run(60)
    bad = [r for r in res if r != "ok"]
    assert not bad, "%d of %d concurrent failed: %s" % (len(bad), len(res), bad[:5])
    recs = xf.read_json_lines(x.tmp / "access.log", 140)
    assert all(r["upstream"] == "127.0.0.1:%d" % echo.port for r in recs)


def test_failover_dead_upstream_is_marked_down(xrayd, cleanup):
    """With upstream_max_fails 1 / fail_timeout 30s, the dead server is
    skipped after its failure: 40 connections cause at most a few failed
    attempts (one per worker, plus slack), visible as error-log lines
    naming it."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    dead = xf.free_port()
    x = xrayd()
    p = simple_conf(x, [dead, echo.port], log=False,
                    extra_relay="    upstream_max_fails: 1\n"
                                "    upstream_fail_timeout: 30s\n")
    x.start()
    for i in range(40):
        assert echo_ok(p, b"m%d" % i)
    attempts = x.log_lines(r"127\.0\.0\.1:%d\b.*" % dead)
    assert len(attempts) <= 2 * x.workers, \
        "dead upstream tried %d times:\n%s" % (len(attempts), "\n".join(attempts[:10]))


def test_all_upstreams_dead(xrayd):
    x = xrayd()
    d1, d2 = xf.free_port(), xf.free_port()
    p = simple_conf(x, [d1, d2])
    x.start()
    for _ in range(3):
        with xf.connect(p) as s:
            s.sendall(b"anyone?")
            assert xf.closed_by_peer(s, 15) in ("eof", "rst")
    recs = xf.read_json_lines(x.tmp / "access.log", 3)
    assert all(r["reason"] == "upstream connect failed" for r in recs), recs


def test_round_robin_spreads(xrayd, cleanup):
    a, b = xf.EchoServer(), xf.EchoServer()
    cleanup += [a, b]
    x = xrayd()
    p = simple_conf(x, [a.port, b.port], log=False, workers=1,
                    extra_relay="    balance: round_robin\n")
    x.start()
    for i in range(20):
        assert echo_ok(p, b"rr%d" % i)
    assert (a.accepted, b.accepted) == (10, 10)


def test_source_hash_is_sticky(xrayd, cleanup):
    a, b = xf.EchoServer(), xf.EchoServer()
    cleanup += [a, b]
    x = xrayd()
    p = simple_conf(x, [a.port, b.port], log=False,
                    extra_relay="    balance: source_hash\n")
    x.start()
    for i in range(20):
        assert echo_ok(p, b"sh%d" % i)
    assert sorted((a.accepted, b.accepted)) == [0, 20]


@pytest.mark.parametrize("continuity", [False, True], ids=["buffers", "continuity"])
def test_least_conn(xrayd, cleanup, continuity):
    """least_conn counts live connections per server, also those of a block
    with continuity (which run on the engine's rings)."""
    a, b = xf.EchoServer(), xf.EchoServer()
    cleanup += [a, b]
    x = xrayd()
    main = ""
    if continuity:
        (x.tmp / "state").mkdir()
        main = "state_dir: %s\n" % (x.tmp / "state")
    p = simple_conf(x, [a.port, b.port], log=False, workers=1, extra_main=main,
                    extra_relay="    balance: least_conn\n" +
                    ("    continuity: on\n" if continuity else ""))
    x.start()
    held = xf.connect(p)
    held.sendall(b"hold")
    assert xf.recv_exact(held, 4) == b"hold"
    busy = a if a.active else b
    idle = b if busy is a else a
    for i in range(5):
        assert echo_ok(p, b"lc%d" % i)
        time.sleep(0.1)
    assert idle.accepted == 5 and busy.accepted == 1
    held.close()


# ---- max_connections ----------------------------------------------------------

def test_max_connections_waits(xrayd, cleanup):
    """max_connections: 2 across two workers: of 5 clients, 2 are relayed,
    3 wait (not refused, not closed) and are served as slots free."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = simple_conf(x, echo.port, extra_relay="    max_connections: 2\n",
                    log=False)
    x.start()
    clients = []
    for i in range(5):
        s = xf.connect(p)
        s.sendall(b"c%d" % i)
        clients.append(s)
        time.sleep(0.1)

    def served(s, n=2, timeout=0.5):
        s.settimeout(timeout)
        try:
            d = s.recv(16)
        except socket.timeout:
            return None
        return d

    time.sleep(1.5)
    done = [i for i, s in enumerate(clients) if served(s) is not None]
    assert len(done) == 2, "served %s, want exactly 2 of 5" % done
    assert echo.max_active <= 2
    waiting = [i for i in range(5) if i not in done]
    for i in done:
        clients[i].close()
    # The waiting ones are served as slots free, two at a time.
    for _round in range(2):
        got = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not got:
            for i in waiting:
                d = served(clients[i], timeout=0.1)
                if d is not None:
                    assert d == b"c%d" % i, "client %d got %r" % (i, d)
                    got.append(i)
        assert got, "no waiting client was served after slots freed"
        for i in got:
            waiting.remove(i)
            clients[i].close()
        time.sleep(0.3)
        assert echo.max_active <= 2, "upstream saw %d at once" % echo.max_active
        if not waiting:
            break
    # Whatever is left is served too.
    for i in waiting:
        d = served(clients[i], timeout=10)
        assert d == b"c%d" % i, "client %d: %r" % (i, d)
        clients[i].close()
    assert echo.accepted == 5
    assert echo.max_active <= 2


# ---- IPv6 -----------------------------------------------------------------------

@pytest.mark.skipif(not xf.have_ipv6(), reason="no IPv6 loopback")
def test_ipv6_listen_and_upstream(xrayd, cleanup):
    echo = xf.EchoServer(host="::1")
    cleanup.append(echo)
    x = xrayd()
    p4 = x.listen_port()
    p6 = x.listen_port("::1")
    x.write_conf("""
relay:
  - name: six
    listen: [127.0.0.1:${p4}, "[::1]:${p6}"]
    upstream: "[::1]:${u}"
    filters:
      - log:
          path: ${tmp}/access.log
""", p4=p4, p6=p6, u=echo.port)
    x.start()
    assert echo_ok(p4, b"via four")
    assert echo_ok(p6, b"via six", host="::1")
    recs = xf.read_json_lines(x.tmp / "access.log", 2)
    assert {r["local"] for r in recs} == {"127.0.0.1:%d" % p4, "[::1]:%d" % p6}
    assert all(r["upstream"] == "[::1]:%d" % echo.port for r in recs)


def test_failed_upstream_retried_after_fail_timeout(xrayd, cleanup):
    """A server marked down is tried again after upstream_fail_timeout and
    gets traffic once it is back."""
    b = xf.EchoServer()
    cleanup.append(b)
    dead = xf.free_port()
    x = xrayd()
    p = simple_conf(x, [dead, b.port], log=False, workers=1,
                    extra_relay="    upstream_max_fails: 1\n"
                                "    upstream_fail_timeout: 1s\n")
    x.start()
    for i in range(6):
        assert echo_ok(p, b"a%d" % i)
    a = xf.EchoServer(port=dead)
    cleanup.append(a)
    time.sleep(1.5)
    for i in range(10):
        assert echo_ok(p, b"b%d" % i)
    assert a.accepted >= 3, "revived upstream got %d of 10" % a.accepted


def test_max_connections_waiter_gives_up(xrayd, cleanup):
    """A waiting client that goes away does not use up a slot: with
    max_connections 1, after the waiter leaves and the holder closes, the
    next client is served."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = simple_conf(x, echo.port, extra_relay="    max_connections: 1\n",
                    log=False)
    x.start()
    a = xf.connect(p)
    a.sendall(b"a")
    assert xf.recv_exact(a, 1) == b"a"
    for i in range(3):
        w = xf.connect(p)
        w.sendall(b"w")
        time.sleep(0.3)
        if i % 2:
            xf.set_rst_on_close(w)
        w.close()
    time.sleep(0.5)
    assert echo.max_active <= 1  # no waiter was served while a held the slot
    a.close()
    # The waiters that left still sit in the listen queue: xrayd now serves
    # them one after another, and frees each slot as soon as it has closed
    # that upstream socket, which the echo server may count a moment later.
    # So the echo server's concurrency says nothing from here on; what
    # matters is that each next client is served.
    for i in range(3):
        assert echo_ok(p, b"next %d" % i, timeout=10)


# ---- a cut is a reset ---------------------------------------------------------

def test_upstream_reset_reaches_the_client_as_a_reset(xrayd, cleanup):
    """The upstream resets mid-stream: the client gets a reset too, not a
    FIN it could take for a normal end of the stream; a normal end still
    arrives as a FIN."""
    import struct

    def upstream(srv, s):
        first = s.recv(16)
        s.sendall(b"partial answer")
        time.sleep(0.3)
        if first.startswith(b"cut"):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    srv = xf.HandlerServer(upstream)
    cleanup.append(srv)
    x = xrayd()
    p = simple_conf(x, srv.port)
    x.start()
    with xf.connect(p) as c:
        c.sendall(b"cut please")
        assert xf.closed_by_peer(c, 15) == "rst"
    with xf.connect(p) as c:
        c.sendall(b"end normally")
        assert xf.closed_by_peer(c, 15) == "eof"
    recs = xf.read_json_lines(x.tmp / "access.log", 2)
    assert any("reset" in r["reason"] for r in recs), recs


def test_filter_close_is_a_reset(xrayd, cleanup):
    """A signature match cuts the connection: both the client and the
    upstream get a reset, and the upstream never sees the pattern."""
    seen = []

    def upstream(srv, s):
        seen.append(xf.read_until_end(s))

    srv = xf.HandlerServer(upstream)
    cleanup.append(srv)
    x = xrayd()
    p = simple_conf(x, srv.port, log=False,
                    extra_relay="    filters:\n      - signature: {patterns: [FORBIDDEN]}\n")
    x.start()
    with xf.connect(p) as c:
        c.sendall(b"hello ")
        time.sleep(0.2)
        c.sendall(b"a FORBIDDEN word")
        assert xf.closed_by_peer(c, 15) == "rst"
    xf.wait_until(lambda: seen, 10, what="the upstream's end")
    assert seen[0][0] == "rst" and b"FORBIDDEN" not in seen[0][1], seen


def test_filter_answer_then_close(xrayd, cleanup):
    """A filter that answers (signature with answer): the client gets what
    the upstream sent before, then the answer, then a FIN; the upstream
    gets what passed before the match and a FIN, never the pattern."""
    seen = []

    def upstream(srv, s):
        s.sendall(b"welcome\n")
        seen.append(xf.read_until_end(s))

    srv = xf.HandlerServer(upstream)
    cleanup.append(srv)
    x = xrayd()
    p = simple_conf(x, srv.port, log=False, extra_relay=(
        "    filters:\n      - signature:\n          patterns: [\"/etc/passwd\"]\n"
        "          answer: 'HTTP/1.0 403 Forbidden\\r\\n\\r\\n'\n"))
    x.start()
    with xf.connect(p) as c:
        assert xf.recv_exact(c, 8, timeout=10) == b"welcome\n"
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        time.sleep(0.2)
        c.sendall(b"GET /etc/passwd HTTP/1.0\r\n\r\n")
        c.settimeout(10)
        rest = b""
        while True:
            b = c.recv(65536)  # a reset would raise here
            if not b:
                break
            rest += b
        assert rest == b"HTTP/1.0 403 Forbidden\r\n\r\n", rest
    xf.wait_until(lambda: seen, 10, what="the upstream's end")
    assert seen[0] == ("eof", b"GET / HTTP/1.0\r\n\r\n"), seen


# ---- xray status ---------------------------------------------------------------

def _block_status(x, name):
    r = subprocess.run([str(xf.OBJS / "xray"), "status", "--json", "--socket",
                        str(x.tmp / "admin.sock")], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stderr
    return next(b for b in json.loads(r.stdout)["blocks"] if b["name"] == name)


def test_status_counts_relay_bytes_live_and_once(xrayd, cleanup):
    """`xray status` counts a relay block's bytes as they move: what a
    connection that is still open moved each way shows up before it
    closes, and once it has closed the totals are exact (the bytes counted
    while it lived are not added again at close)."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = simple_conf(x, echo.port, extra_main="admin_socket: ${tmp}/admin.sock\n", log=False)
    x.start()
    n = 300000
    data = os.urandom(n)
    with xf.connect(p) as s:
        s.sendall(data)
        assert xf.recv_exact(s, n) == data
        # The count follows each pump, a moment after the bytes went on.
        live = xf.wait_until(
            lambda: (lambda b: b if b["bytes_up"] >= n and b["bytes_down"] >= n else None)(
                _block_status(x, "r")), 10, what="the live connection's bytes in xray status")
        assert live["live"] == 1, live
        assert live["bytes_up"] == n and live["bytes_down"] == n, live
        s.sendall(b"tail")
        assert xf.recv_exact(s, 4) == b"tail"
        s.shutdown(socket.SHUT_WR)
        assert xf.recv_all(s) == b""
    done = xf.wait_until(lambda: (lambda b: b if b["live"] == 0 else None)(
        _block_status(x, "r")), 10, what="the relay to close")
    assert (done["bytes_up"], done["bytes_down"]) == (n + 4, n + 4), done
