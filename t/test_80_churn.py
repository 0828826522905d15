"""Churn: for XRAYD_TEST_CHURN_SECS (default 60) seconds, many clients
open, transfer and close relays; some abort half-way with RST, some go
idle until idle_timeout, some are reset by the upstream or stopped by the
signature filter.  Every normal transfer must be exact, and afterwards the
workers' open fds and RSS are back near where they started."""

import os
import random
import socket
import threading
import time

import pytest

import xrayd_fixture as xf

CHURN_SECS = float(os.environ.get("XRAYD_TEST_CHURN_SECS", "60"))
THREADS = 12
IDLE = 2.0


class Churn:
    def __init__(self, port):
        self.port = port
        self.lock = threading.Lock()
        self.counts = {}
        self.failures = []

    def note(self, kind, ok, detail=""):
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if not ok:
                self.failures.append("%s: %s" % (kind, detail))

    def one(self, rng):
        r = rng.random()
        s = socket.create_connection(("127.0.0.1", self.port), 10)
        s.settimeout(15)
        try:
            if r < 0.60:
                n = rng.choice([1, 100, 4096, 65536, 65537, 200000, 262144])
                data = rng.randbytes(n)
                if data.startswith(b"RSTNOW"):
                    data = b"x" + data[1:]
                data = data.replace(b"/etc/passwd", b"/etc/passwX")
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                got = xf.recv_all(s, 15)
                self.note("transfer", got == data,
                          "sent %d, got %d back%s" % (
                              n, len(got), "" if got[:len(data)] == data[:len(got)]
                              else " (corrupt)"))
            elif r < 0.75:
                data = rng.randbytes(rng.choice([1000, 65536, 300000]))
                cut = rng.randint(1, len(data) - 1)
                s.sendall(data[:cut])
                if rng.random() < 0.5:
                    try:
                        s.recv(rng.randint(1, 4096))
                    except OSError:
                        pass
                xf.set_rst_on_close(s)
                self.note("client-rst", True)
            elif r < 0.85:
                s.sendall(b"idle")
                ok = xf.recv_exact(s, 4) == b"idle"
                t0 = time.monotonic()
                how = xf.closed_by_peer(s, IDLE + 8)
                dt = time.monotonic() - t0
                self.note("idle", ok and how != "open" and dt >= IDLE * 0.75,
                          "closed=%s after %.2fs" % (how, dt))
            elif r < 0.90:
                s.sendall(b"RSTNOW please")
                how = xf.closed_by_peer(s, 10)
                self.note("upstream-rst", how != "open", how)
            elif r < 0.95:
                s.sendall(b"GET /etc/passwd")
                how = xf.closed_by_peer(s, 10)
                self.note("signature", how != "open", how)
            else:
                self.note("close-at-once", True)
        except (OSError, EOFError) as e:
            self.note("error", False, repr(e))
        finally:
            s.close()

    def run(self, secs, seed):
        deadline = time.monotonic() + secs

        def worker(i):
            rng = random.Random(seed * 1000 + i)
            while time.monotonic() < deadline:
                self.one(rng)
        ts = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(secs + 60)
        assert not any(t.is_alive() for t in ts), "churn threads hung"


def settle(x, echo, fds0, timeout=30):
    """Wait for all relays to be gone: upstream has no connections and the
    workers' fd counts are back at their start values (+2)."""
    def done():
        if echo.active:
            return False
        return all(xf.open_fds(w) <= fds0[w] + 2 for w in fds0)
    try:
        xf.wait_until(done, timeout, interval=0.25, what="relays to settle")
    except AssertionError:
        raise AssertionError(
            "not settled after %ds: upstream has %d connections; worker fds %s "
            "(start %s)" % (timeout, echo.active,
                            {w: xf.open_fds(w) for w in fds0}, fds0))


@pytest.mark.timeout(int(CHURN_SECS) * 2 + 240)
def test_churn(xrayd, cleanup):
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = x.listen_port()
    x.write_conf("""
idle_timeout: ${idle}
relay:
  - name: churn
    listen: 127.0.0.1:${p}
    upstream: 127.0.0.1:${u}
    filters:
      - signature:
          patterns: ["/etc/passwd"]
      - log:
          path: ${tmp}/access.log
""", p=p, u=echo.port, idle="%dms" % int(IDLE * 1000), log_level="notice")
    x.start()
    time.sleep(1)
    workers = x.worker_pids()
    fds0 = {w: xf.open_fds(w) for w in workers}
    rss_start = {w: xf.rss_kib(w) for w in workers}

    warm = Churn(p)
    warm.run(min(8.0, CHURN_SECS), seed=1)
    settle(x, echo, fds0)
    rss_warm = {w: xf.rss_kib(w) for w in workers}

    c = Churn(p)
    c.run(CHURN_SECS, seed=2)
    assert not c.failures, "%d failures (of %s): %s" % (
        len(c.failures), c.counts, c.failures[:10])
    for kind in ("transfer", "client-rst", "idle", "upstream-rst", "signature"):
        assert c.counts.get(kind, 0) > 0, "no %s case ran: %s" % (kind, c.counts)
    settle(x, echo, fds0)
    assert x.worker_pids() == workers, "workers changed during churn"
    rss_end = {w: xf.rss_kib(w) for w in workers}
    for w in workers:
        assert rss_end[w] - rss_warm[w] <= 4096, \
            "worker %d RSS %d KiB after warm-up, %d KiB after churn" % (
                w, rss_warm[w], rss_end[w])
        assert rss_end[w] - rss_start[w] <= 8192, \
            "worker %d RSS %d KiB at start, %d KiB after churn" % (
                w, rss_start[w], rss_end[w])
    print("churn counts:", c.counts, "fds", fds0, "rss", rss_start, rss_warm,
          rss_end)
    # The daemon still works.
    with xf.connect(p) as s:
        s.sendall(b"alive")
        s.shutdown(socket.SHUT_WR)
        assert xf.recv_all(s) == b"alive"
