"""Relay blocks with continuity: on run on the engine's rings in the
worker's snapshot: their connections survive kill -9 of the worker that
holds them, reloads and a binary upgrade, byte-exact, as the transparent
proxy's do - plain TCP, and TLS on either end or both (the record layer's
keys and sequence numbers are in the snapshot; the TLS peers are Python's
ssl, that is OpenSSL).  A signature filter still stops a payload there."""

import hashlib
import os
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

import tls_helpers as th
import xrayd_fixture as xf

MB = int(os.environ.get("XRAYD_TEST_PROXY_MB", "50"))
BLOCK = 1 << 20


def _paced_send(send, stream, rate, t0, hasher=None):
    sent = 0
    for c in stream.chunks():
        if hasher:
            hasher.update(c)
        send(c)
        sent += len(c)
        ahead = sent / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)


def _server(srv, s):
    """D n seed: send that stream (paced); U n: read n bytes, answer
    their SHA-256."""
    kind = xf.recv_exact(s, 1, timeout=30)
    if kind == b"D":
        n, seed, rate = struct.unpack(">QQQ", xf.recv_exact(s, 24, timeout=30))
        _paced_send(s.sendall, xf.Stream(seed, n), rate, time.monotonic())
        s.shutdown(socket.SHUT_WR)
    else:
        (n,) = struct.unpack(">Q", xf.recv_exact(s, 8, timeout=30))
        h = hashlib.sha256()
        got = xf.recv_to_eof(s, h, limit=n)
        s.sendall(h.digest() if got == n else b"short")
        s.shutdown(socket.SHUT_WR)


def _transfer(port, i, n, rate, res):
    try:
        with socket.create_connection(("127.0.0.1", port), 30) as s:
            s.settimeout(120)
            stream = xf.Stream(100 + i, n)
            if i % 2:
                s.sendall(b"U" + struct.pack(">Q", n))
                _paced_send(s.sendall, stream, rate, time.monotonic())
                s.shutdown(socket.SHUT_WR)
                got = xf.recv_exact(s, 32, timeout=120)
                res[i] = got == bytes.fromhex(stream.sha256()) or "server saw %r" % got[:8]
            else:
                s.sendall(b"D" + struct.pack(">QQQ", n, 100 + i, rate))
                h = hashlib.sha256()
                got = xf.recv_to_eof(s, h)
                res[i] = (got == n and h.hexdigest() == stream.sha256()) or "got %d" % got
    except Exception as e:  # noqa: BLE001 - reported by the test
        res[i] = "%s: %s" % (type(e).__name__, e)


def _tls_transfer(ctx, port, i, n, rate, res):
    """_transfer's two kinds through a TLS listener: the client ends its
    upload with close_notify and reads until the relay's close_notify."""
    try:
        b = th.BioClient(port, ctx, timeout=120)
        try:
            b.handshake()
            stream = xf.Stream(100 + i, n)
            if i % 2:
                b.send(b"U" + struct.pack(">Q", n))
                _paced_send(b.send, stream, rate, time.monotonic())
                b.close_notify()
                got, how = b.read_to_end()
                res[i] = got == bytes.fromhex(stream.sha256()) or "server saw %r (%s)" % (
                    got[:8], how)
            else:
                b.send(b"D" + struct.pack(">QQQ", n, 100 + i, rate))
                h = hashlib.sha256()
                got = 0
                while True:
                    d = b.read_some()
                    if not d:
                        break
                    h.update(d)
                    got += len(d)
                res[i] = (got == n and h.hexdigest() == stream.sha256()) or "got %d" % got
        finally:
            b.close()
    except Exception as e:  # noqa: BLE001 - reported by the test
        res[i] = "%s: %s" % (type(e).__name__, e)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return th.Pki(tmp_path_factory.mktemp("pki"))


class Kind:
    """A relay block with continuity: plain, or TLS towards the client
    (tls-in), the upstream (tls-out) or both, with its peers."""

    def __init__(self, name, pki):
        self.name = name
        self.pki = pki
        self.tls_in = name in ("tls-in", "tls-both")
        self.tls_out = name in ("tls-out", "tls-both")

    def block(self):
        out = ""
        if self.tls_in:
            out += ("    tls:\n      certificate: %s\n      key: %s\n"
                    % (self.pki.crt("localhost"), self.pki.key("localhost")))
        if self.tls_out:
            out += ("    upstream_tls:\n      ca: %s\n      server_name: localhost\n"
                    % self.pki.ca)
        return out

    def server(self):
        if not self.tls_out:
            return xf.HandlerServer(_server)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.pki.crt("localhost"), self.pki.key("localhost"))
        return xf.HandlerServer(lambda srv, s: _server(srv, ctx.wrap_socket(s, server_side=True)))

    def transfer(self):
        if not self.tls_in:
            return _transfer
        ctx = th.client_ctx(self.pki)
        return lambda *a: _tls_transfer(ctx, *a)


@pytest.fixture(params=["plain", "tls-in", "tls-out", "tls-both"])
def kind(request, pki):
    """Which relay block a test runs on (parametrized; a test may narrow
    the list with indirect parametrization)."""
    return Kind(request.param, pki)


def _conf(x, port, up, extra=""):
    state = x.tmp / "state"
    state.mkdir(exist_ok=True)
    x.write_conf("""
state_dir: ${state}
relay:
  - name: cont
    listen: 127.0.0.1:${p}
    upstream: 127.0.0.1:${u}
    continuity: on
""" + extra, state=state, p=port, u=up)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("filtered", [False, True], ids=["unfiltered", "filtered"])
def test_relay_connections_survive_kill_9(xrayd, cleanup, kind, filtered):
    """20 concurrent transfers of MB MiB (half up, half down) through a
    relay block with continuity (and, filtered, a signature filter); the
    busiest worker is killed three times: every transfer completes with
    its SHA-256, and the replacements took the connections over."""
    if filtered and kind.name not in ("plain", "tls-both"):
        pytest.skip("filters on one TLS end are covered by tls-both")
    srv = kind.server()
    cleanup.append(srv)
    x = xrayd()
    x.allow_log(r"exited on signal 9")
    p = x.listen_port()
    _conf(x, p, srv.port, kind.block() + (
        "    filters:\n      - signature: {patterns: [FORBIDDEN-PAYLOAD]}\n"
        if filtered else ""))
    x.start()
    n = MB << 20
    rate = max(1 << 20, n // 6)
    res = [None] * 20
    ts = [threading.Thread(target=kind.transfer(), args=(p, i, n, rate, res), daemon=True)
          for i in range(20)]
    for t in ts:
        t.start()
    time.sleep(1.0)
    for k in range(3):
        w = {pid: len(os.listdir("/proc/%d/fd" % pid)) for pid in x.worker_pids()}
        victim = max(w, key=w.get)
        os.kill(victim, signal.SIGKILL)
        x.wait_log(r"taking over worker %d" % victim, timeout=10)
        time.sleep(1.0)
    for t in ts:
        t.join(200)
    bad = [(i, r) for i, r in enumerate(res) if r is not True]
    assert not bad, bad
    took = [int(m) for m in
            (l.split("took over ")[1].split()[0] for l in x.log_lines(r"took over \d+ connection"))]
    assert len(took) == 3 and sum(took) >= 10, took
    assert not x.log_lines(r"cannot resume|resume failed")


def test_relay_continuity_keeps_filters(xrayd, cleanup):
    """A signature filter on a relay block with continuity cuts the
    connection before the pattern reaches the upstream (a reset)."""
    seen = []

    def upstream(srv, s):
        seen.append(xf.read_until_end(s))

    srv = xf.HandlerServer(upstream)
    cleanup.append(srv)
    x = xrayd()
    p = x.listen_port()
    _conf(x, p, srv.port, "    filters:\n      - signature: {patterns: [FORBIDDEN]}\n")
    x.start()
    with xf.connect(p) as c:
        c.sendall(b"fine ")
        time.sleep(0.2)
        c.sendall(b"a FORBIDDEN word")
        assert xf.closed_by_peer(c, 15) == "rst"
    xf.wait_until(lambda: seen, 10, what="the upstream's end")
    assert seen[0][0] == "rst" and b"FORBIDDEN" not in seen[0][1], seen


def test_continuity_on_a_tls_relay_is_accepted(tmp_path):
    conf = tmp_path / "x.yaml"
    conf.write_text("""state_dir: %s
relay:
  - listen: 127.0.0.1:18443
    upstream: 127.0.0.1:18080
    upstream_tls: {verify: off}
    continuity: on
""" % tmp_path)
    r = subprocess.run([str(xf.XRAYD_BIN), "-t", "-c", str(conf)], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stderr


def _start_transfers(port, count, n, transfer=_transfer):
    rate = max(1 << 20, n // 6)
    res = [None] * count
    ts = [threading.Thread(target=transfer, args=(port, i, n, rate, res), daemon=True)
          for i in range(count)]
    for t in ts:
        t.start()
    return ts, res


def _finish(ts, res):
    for t in ts:
        t.join(200)
    bad = [(i, r) for i, r in enumerate(res) if r is not True]
    assert not bad, bad


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["plain", "tls-both"], indirect=True)
def test_relay_connections_survive_reloads(xrayd, cleanup, kind):
    """The same transfers while the configuration is reloaded three times:
    old workers finish their connections; all complete byte-exact."""
    srv = kind.server()
    cleanup.append(srv)
    x = xrayd()
    p = x.listen_port()
    _conf(x, p, srv.port, kind.block())
    x.start()
    ts, res = _start_transfers(p, 20, max(1, MB // 2) << 20, kind.transfer())
    time.sleep(0.5)
    for _ in range(3):
        x.reload()
        time.sleep(0.5)
    _finish(ts, res)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["plain", "tls-both"], indirect=True)
def test_relay_connections_survive_binary_upgrade(xrayd, cleanup, monkeypatch, kind):
    """The same transfers while SIGUSR2 replaces the binary with a build of
    another version: the new master's workers take the relay block's
    connections over from the old binary's snapshots; all complete
    byte-exact."""
    from test_75_proxy import _second_binary

    srv = kind.server()
    cleanup.append(srv)
    x = xrayd()
    new = _second_binary(x.tmp, "9.9.8-relay")
    exe = x.tmp / "xrayd"
    exe.write_bytes(xf.XRAYD_BIN.read_bytes())
    exe.chmod(0o755)
    monkeypatch.setattr(xf, "XRAYD_BIN", exe)
    p = x.listen_port()
    _conf(x, p, srv.port, kind.block())
    x.start()
    old_pid = x.proc.pid
    ts, res = _start_transfers(p, 20, max(1, MB // 2) << 20, kind.transfer())
    time.sleep(1.0)
    os.replace(str(new), str(exe))
    os.kill(old_pid, signal.SIGUSR2)
    try:
        x.wait_log(r"xrayd/9\.9\.8-relay started \(binary upgrade from pid %d\)" % old_pid,
                   timeout=60)
        _finish(ts, res)
        assert x.log_lines(r"handed \d+ connection")
        took = x.log_lines(r"took over [1-9]\d* connection")
        assert took, x.log_text()[-3000:]
        xf.wait_until(lambda: x.proc.poll() is not None, 60, what="the old master to exit")
    finally:
        try:
            new_pid = int((x.tmp / "xrayd.pid").read_text())
            if new_pid != old_pid:
                os.kill(new_pid, signal.SIGTERM)
                xf.wait_until(lambda: not os.path.exists("/proc/%d" % new_pid), 20,
                              what="the new master to exit")
        except (OSError, ValueError):
            pass


@pytest.mark.timeout(120)
def test_idle_connections_give_their_ring_pages_back(xrayd, cleanup):
    """40 connections with continuity each move 256 KiB each way and then
    idle, open: their rings' pages go back (the snapshot file's blocks
    shrink to the slot headers), and bytes flow again afterwards."""
    srv = xf.EchoServer()
    cleanup.append(srv)
    x = xrayd()
    p = x.listen_port()
    _conf(x, p, srv.port)
    x.start()
    blob = os.urandom(256 << 10)
    conns = []
    for _ in range(40):
        c = xf.connect(p)
        c.sendall(blob)
        assert xf.recv_exact(c, len(blob), timeout=20) == blob
        conns.append(c)

    def used():
        return sum(os.stat(f).st_blocks * 512 for f in (x.tmp / "state").glob("conn-*.snap"))

    busy = used()
    assert busy > 40 * (64 << 10), busy   # both 64 KiB rings of each are in the file
    xf.wait_until(lambda: used() < busy // 4, 10, what="the idle rings' pages to go back")
    for c in conns:
        c.sendall(b"again\n")
        assert xf.recv_exact(c, 6, timeout=10) == b"again\n"
        c.close()


def _echo_round(conns, tag):
    """Every connection sends a distinct line and gets it back."""
    for i, c in enumerate(conns):
        c.sendall(b"%s-%d\n" % (tag, i))
    for i, c in enumerate(conns):
        want = b"%s-%d\n" % (tag, i)
        assert xf.recv_exact(c, len(want), timeout=10) == want, (tag, i)


def _chat_until(conns, pred, what, tag, timeout=20):
    """Echo a round on every connection each 0.3 s until pred() holds:
    waiting, the connections must not sit idle."""
    end = time.monotonic() + timeout
    k = 0
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < end, "timed out waiting for %s" % what
        _echo_round(conns, b"%s%d" % (tag, k))
        k += 1
        time.sleep(0.3)


@pytest.mark.timeout(120)
def test_standby_worker_takes_over(xrayd, cleanup):
    """With continuity on, the master keeps a standby worker forked ahead:
    kill -9 of a worker makes that standby (no fork) the replacement,
    which carries on every connection; a new standby follows, and takes
    over the next death too.  Each standby waited longer than idle_timeout
    before its takeover, while the connections kept talking: they are not
    idle for it.  A standby that dies is forked again, and nothing else
    notices."""
    srv = xf.EchoServer()
    cleanup.append(srv)
    x = xrayd()
    x.allow_log(r"exited on signal 9")
    x.allow_log(r"standby worker process \d+ exited on a signal")
    p = x.listen_port()
    _conf(x, p, srv.port, "    idle_timeout: 2s\n")
    x.start()
    conns = [xf.connect(p) for _ in range(30)]
    cleanup.extend(conns)
    standby = _chat_until(conns, x.standby_pids, "a standby worker", b"start")
    for death in range(2):
        assert len(standby) == 1, standby
        # Older than idle_timeout, the standby's event loop.
        t0 = time.monotonic()
        _chat_until(conns, lambda: time.monotonic() - t0 > 2.5, "time", b"wait")
        w = {pid: len(os.listdir("/proc/%d/fd" % pid)) for pid in x.worker_pids()}
        victim = max(w, key=w.get)
        os.kill(victim, signal.SIGKILL)
        x.wait_log(r"standby worker process %d is the new worker, taking over worker %d's "
                   r"[1-9]\d* connection" % (standby[0], victim), timeout=10)
        _echo_round(conns, b"after%d" % death)
        assert standby[0] in x.worker_pids()
        standby = _chat_until(
            conns, lambda: x.standby_pids() if x.standby_pids() not in ([], standby) else None,
            "a new standby worker", b"next%d-" % death)
    assert not x.log_lines(r"idle for \d+ms, closing|cannot resume|resume failed")
    os.kill(standby[0], signal.SIGKILL)
    x.wait_log(r"standby worker process %d exited on a signal" % standby[0])
    _chat_until(conns,
                lambda: x.standby_pids() if x.standby_pids() not in ([], standby) else None,
                "the standby forked again", b"again")
    _echo_round(conns, b"end")
