"""TLS ends: interoperability with real peers and refusals.

xrayd's TLS listener against `openssl s_client` (and Python's ssl), its
TLS upstream against `openssl s_server`: both AEADs (AES-256-GCM and
ChaCha20-Poly1305), mutual authentication with the peer identity in the
access log, resumption by ticket and by session id, close_notify both
ways, BIG_MB MiB each way with SHA-256 compared, and a 3-link TLS
re-encryption chain.  Then the refusals: each one fails the client, logs
its reason, and leaves the worker serving the next connection.

Certificates come from `objs/xray pki` (tls_helpers.Pki).
"""

import hashlib
import os
import re
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

import tls_helpers as th
import xrayd_fixture as xf

BIG_MB = int(os.environ.get("XRAYD_TEST_BIG_MB", "1024"))

pytestmark = pytest.mark.skipif(not os.path.exists(th.OPENSSL),
                                reason="no openssl command")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return th.Pki(tmp_path_factory.mktemp("pki"))


# ---- configuration -------------------------------------------------------------

# Every test here runs twice: with the block's continuity off (the TLS ends
# relay on pooled buffers) and on (after the handshakes the connection goes
# on in the ring engine, its record layer in the snapshot).  TLS must
# behave the same on both.
CONTINUITY = {"on": False}


@pytest.fixture(autouse=True, params=["cont-off", "cont-on"])
def continuity_mode(request):
    CONTINUITY["on"] = request.param == "cont-on"
    yield CONTINUITY["on"]
    CONTINUITY["on"] = False


def _continuity(x, continuity):
    """The main section's state_dir and the block's continuity line."""
    if continuity is None:
        continuity = CONTINUITY["on"]
    if not continuity:
        return "", ""
    state = x.tmp / "state"
    state.mkdir(exist_ok=True)
    return "state_dir: %s\n" % state, "    continuity: on\n"


def with_continuity(x, body):
    """body with every relay block's continuity as this run says."""
    main, block = _continuity(x, None)
    if not main:
        return body
    return main + re.sub(r"(?m)^(  - name: .*\n)", lambda m: m.group(1) + block, body)


def tls_listener_conf(x, pki, upstream_port, ciphers=None, allow=("CN=app-*",),
                      verify="required", extra_tls="", extra_relay="", workers=2,
                      log=True, continuity=None):
    """One relay block: TLS in (mutual auth against ca1), plain out; with
    continuity, its connections go on in the ring engine after the
    handshake."""
    p = x.listen_port()
    main, block = _continuity(x, continuity)
    extra_relay += block
    tls = ("    tls:\n"
           "      certificate: %s\n"
           "      key: %s\n" % (pki.crt("localhost"), pki.key("localhost")))
    if verify != "off":
        tls += "      client_ca: %s\n      verify_client: %s\n" % (pki.ca, verify)
    if allow:
        tls += "      allow: [%s]\n" % ", ".join('"%s"' % a for a in allow)
    if ciphers:
        tls += "      ciphers: [%s]\n" % ", ".join(ciphers)
    tls += extra_tls
    body = main + """
relay:
  - name: tls-in
    listen: 127.0.0.1:${p}
    upstream: 127.0.0.1:${u}
    connect_timeout: 2s
""" + extra_relay + tls
    if log:
        body += "    filters:\n      - log:\n          path: ${tmp}/access.log\n"
    x.write_conf(body, p=p, u=upstream_port, workers=workers)
    return p


def tls_upstream_conf(x, pki, upstream_port, ciphers=None, cert="app-1",
                      extra_tls="", workers=2, log=True, continuity=None):
    """One relay block: plain in, TLS out (verifying localhost against ca1,
    presenting `cert`)."""
    p = x.listen_port()
    main, block = _continuity(x, continuity)
    tls = ("    upstream_tls:\n"
           "      ca: %s\n"
           "      server_name: localhost\n" % pki.ca)
    if cert:
        tls += "      certificate: %s\n      key: %s\n" % (pki.crt(cert), pki.key(cert))
    if ciphers:
        tls += "      ciphers: [%s]\n" % ", ".join(ciphers)
    tls += extra_tls
    body = main + """
relay:
  - name: tls-out
    listen: 127.0.0.1:${p}
    upstream: 127.0.0.1:${u}
""" + block + tls
    if log:
        body += "    filters:\n      - log:\n          path: ${tmp}/access.log\n"
    x.write_conf(body, p=p, u=upstream_port, workers=workers)
    return p


def identity_re(pki, name, ca=1):
    """The identity xrayd logs for pki leaf `name`."""
    return r"CN=%s sha256:%s\b" % (re.escape(name), pki.sha256(name, ca)[:16])


def line_server():
    """A backend that reads one line and answers with its SHA-256, then
    closes."""
    def handler(srv, s):
        buf = b""
        while not buf.endswith(b"\n"):
            d = s.recv(4096)
            if not d:
                break
            buf += d
        s.sendall(b"sha256:" + hashlib.sha256(buf).hexdigest().encode() + b"\n")
        with srv.lock:
            srv.results.append(buf)
    return xf.HandlerServer(handler)


def good_connection(port, pki, what="a following good connection"):
    """A well-behaved mutual-auth client still gets through (echo
    backend)."""
    payload = b"still alive " * 100
    data, _ = th.tls_echo(port, th.client_ctx(pki, "app-1"), payload)
    assert data == payload, "%s failed: got %r" % (what, data[:80])


def wait_reason(x, regex, count=1, timeout=15):
    return x.wait_log(regex, count=count, timeout=timeout)


# ---- interoperability: the listener against openssl s_client ----------------------

@pytest.mark.parametrize("cipher", th.SUITES)
def test_listener_s_client_mutual_auth(xrayd, cleanup, pki, cipher):
    """s_client with a client certificate, one suite at a time: the suite
    is the one asked for, the data goes through, the record layer is
    xrayd's own ("tls", not "tls-mbedtls"), and the identity is in the
    error and access logs."""
    srv = line_server()
    cleanup.append(srv)
    x = xrayd()
    p = tls_listener_conf(x, pki, srv.port, ciphers=th.SUITES)
    x.start()
    line = b"hello through %s\n" % cipher.encode()
    r = th.s_client(p, pki, cipher=cipher, cert="app-1", extra=["-ign_eof"], stdin=line)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    assert "Cipher is %s" % cipher in out, out
    assert "Verify return code: 0 (ok)" in out, out
    assert "sha256:" + hashlib.sha256(line).hexdigest() in out, out
    ident = identity_re(pki, "app-1")
    x.wait_log(r"TLS with the client established \(tls, full handshake\), peer " + ident)
    rec = xf.read_json_lines(x.tmp / "access.log", 1)[0]
    assert re.fullmatch(ident, rec["identity"]), rec
    assert rec["reason"] == "done", rec
    assert rec["bytes_up"] == len(line), rec


@pytest.mark.parametrize("cipher", th.SUITES)
def test_listener_python_client_suites(xrayd, cleanup, pki, cipher):
    """The server's preference is honoured against a client offering only
    one suite: whichever the client can do is chosen."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = tls_listener_conf(x, pki, echo.port, log=False)
    x.start()
    payload = os.urandom(48 * 1024)
    data, got = th.tls_echo(p, th.client_ctx(pki, "app-1", cipher=cipher), payload)
    assert got == cipher
    assert data == payload


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_listener_client_writes_before_reading(xrayd, cleanup, pki, tls):
    """A client that writes 1 MiB before it reads anything (a pipelining
    request/response client) behind an echo server: xrayd must keep
    reading the client while the replies wait (the echo server buffers up
    to 4 MiB), as the plain relay does.  Then the client reads it all."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    if tls:
        p = tls_listener_conf(x, pki, echo.port, workers=1)
    else:
        p = x.listen_port()
        x.write_conf("relay:\n  - name: plain\n    listen: 127.0.0.1:${p}\n"
                     "    upstream: 127.0.0.1:${u}\n", p=p, u=echo.port, workers=1)
    x.start()
    n = xf.MIB
    payload = os.urandom(n)
    if tls:
        b = th.BioClient(p, th.client_ctx(pki, "app-1"), timeout=10)
        b.handshake()
        sealed = b.seal(payload)
        sock = b.sock
    else:
        sock = xf.connect(p)
        sealed = payload
    t = threading.Thread(target=sock.sendall, args=(sealed,), daemon=True)
    t.start()
    try:
        xf.wait_until(lambda: echo.bytes >= n, 10, what="the upstream to get all %d "
                      "bytes (it has %%d)" % n)
    except AssertionError as e:
        raise AssertionError("%s; the upstream got %d of %d bytes" % (e, echo.bytes, n))
    finally:
        t.join(10)
        sock.close()


# ---- interoperability: the upstream end against openssl s_server --------------------

@pytest.mark.parametrize("cipher", th.SUITES)
def test_upstream_s_server_mutual_auth(xrayd, cleanup, pki, tmp_path, cipher):
    """xrayd speaks TLS to s_server (-www), which demands a client
    certificate: the page it serves names the suite and xrayd's
    certificate; xrayd logs the server's identity."""
    srv = th.SServer(pki, cipher=cipher, verify_ca=pki.ca, extra=["-www"],
                     stdout=subprocess.DEVNULL, tmp=tmp_path)
    cleanup.append(srv)
    x = xrayd()
    p = tls_upstream_conf(x, pki, srv.port, ciphers=th.SUITES)
    x.start()
    with xf.connect(p, timeout=15) as c:
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        page = xf.recv_all(c, 15).decode(errors="replace")
    assert "200 ok" in page, page[:2000] + srv.stderr()
    assert "Cipher is %s" % cipher in page, page[:2000]
    assert "New, TLSv1.2" in page, page[:2000]
    assert re.search(r"Subject: CN ?= ?app-1", page), page
    ident = identity_re(pki, "localhost")
    x.wait_log(r"TLS with the upstream established \(tls, full handshake\), peer " + ident)
    rec = xf.read_json_lines(x.tmp / "access.log", 1)[0]
    assert rec["reason"] == "done", rec


def get_page(p):
    """GET / from s_server -www through xrayd, read up to the page's end
    (not to EOF: see test_upstream_s_server_mutual_auth for that)."""
    with xf.connect(p, timeout=15) as c:
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        page = b""
        while b"</HTML>" not in page:
            d = c.recv(65536)
            if not d:
                break
            page += d
    return page.decode(errors="replace")


# ---- resumption -------------------------------------------------------------------

def _reconnect(p, pki, extra):
    r = th.s_client(p, pki, cert="app-1", extra=["-reconnect", *extra], timeout=60)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    return out


@pytest.mark.parametrize("how", ["ticket", "session_id"])
def test_listener_resumption_reconnect(xrayd, cleanup, pki, how):
    """s_client -reconnect: one full handshake then five resumed ones, by
    ticket (two workers: ticket keys are shared) or by session id (ONE
    worker: the session-id cache is per worker process, so with two a
    reconnect may land on the worker that never saw the session).  A
    resumed session keeps its peer identity (and passes allow)."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    workers = 2 if how == "ticket" else 1
    extra_tls = "      session_tickets: off\n" if how == "session_id" else ""
    p = tls_listener_conf(x, pki, echo.port, workers=workers, extra_tls=extra_tls)
    x.start()
    out = _reconnect(p, pki, ["-no_ticket"] if how == "session_id" else [])
    assert out.count("Reused, TLSv1.2") == 5, out
    full = x.wait_log(r"TLS with the client established \(tls, full handshake\)")
    resumed = x.wait_log(r"TLS with the client established \(tls, resumed\)", count=5)
    assert len(full) == 1 and len(resumed) == 5, full + resumed
    ident = identity_re(pki, "app-1")
    recs = xf.read_json_lines(x.tmp / "access.log", 6)
    assert all(re.fullmatch(ident, r["identity"] or "") for r in recs), recs
    assert all(r["reason"] == "done" for r in recs), [r["reason"] for r in recs]
    assert not x.log_lines("denied")


@pytest.mark.parametrize("how", ["ticket", "session_id"])
def test_listener_resumption_sess_in(xrayd, cleanup, pki, tmp_path, how):
    """A session saved by one s_client (-sess_out) resumes in later,
    separate processes (-sess_in).  Tickets: 2 workers, four later
    connections (so both workers see one).  Session id: 1 worker (the
    cache is per worker)."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    workers = 2 if how == "ticket" else 1
    p = tls_listener_conf(x, pki, echo.port, workers=workers)
    x.start()
    sess = tmp_path / "sess.pem"
    opt = ["-no_ticket"] if how == "session_id" else []
    r = th.s_client(p, pki, cert="app-1", extra=["-sess_out", str(sess), *opt])
    assert r.returncode == 0, r.stderr
    assert b"New, TLSv1.2" in r.stdout
    for i in range(4):
        r = th.s_client(p, pki, cert="app-1", extra=["-sess_in", str(sess), *opt])
        assert r.returncode == 0, r.stderr
        assert b"Reused, TLSv1.2" in r.stdout, "connection %d not resumed:\n%s" % (
            i, r.stdout.decode(errors="replace"))
    x.wait_log(r"TLS with the client established \(tls, resumed\)", count=4)
    if how == "ticket" and x.workers == 2:
        pids = {l.split("]")[1].split(":")[0].strip()
                for l in x.log_lines(r"established \(tls, resumed\)")}
        print("resumed on workers", pids)


def _resume(p, pki, sess):
    r = th.s_client(p, pki, cert="app-1", extra=["-sess_in", str(sess)])
    assert r.returncode == 0, r.stderr
    return b"Reused, TLSv1.2" in r.stdout


def test_listener_ticket_across_rotation(xrayd, cleanup, pki, tmp_path):
    """Ticket keys are derived per period from one secret, so a ticket
    minted late in one period still resumes in the next, on every worker
    (two workers, six connections), until session_timeout has passed since
    the session began.  The first wait lets a rotation happen first: with
    independently rotating keys per worker this used to fall back to full
    handshakes."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    life = 4
    p = tls_listener_conf(x, pki, echo.port, workers=2,
                          extra_tls="      session_timeout: %ds\n" % life)
    x.start()
    time.sleep(life + 0.2)
    while not (life - 1.2 <= time.time() % life < life - 0.8):  # late in a period
        time.sleep(0.05)
    sess = tmp_path / "sess.pem"
    r = th.s_client(p, pki, cert="app-1", extra=["-sess_out", str(sess)])
    assert r.returncode == 0 and b"New, TLSv1.2" in r.stdout, r.stderr
    minted = time.time()
    while int(time.time()) // life == int(minted) // life:  # into the next period
        time.sleep(0.05)
    for i in range(6):
        assert time.time() - minted < life - 0.5, "too slow to prove anything"
        assert _resume(p, pki, sess), "connection %d after rotation not resumed" % i
    x.wait_log(r"TLS with the client established \(tls, resumed\)", count=6)
    time.sleep(max(0.0, minted + life + 1.1 - time.time()))
    assert not _resume(p, pki, sess), "a ticket older than session_timeout resumed"


def test_listener_ticket_survives_reload_not_trust_change(xrayd, cleanup, pki, tmp_path):
    """Tickets outlive a SIGHUP that keeps the listener's trust settings
    (new workers derive the same keys), and die with one that changes them
    (here: an allow list with one more pattern)."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = tls_listener_conf(x, pki, echo.port, workers=2)
    x.start()
    sess = tmp_path / "sess.pem"
    r = th.s_client(p, pki, cert="app-1", extra=["-sess_out", str(sess)])
    assert r.returncode == 0 and b"New, TLSv1.2" in r.stdout, r.stderr
    x.reload()
    assert _resume(p, pki, sess), "a ticket did not survive an unchanged reload"
    # (the helper moves the listener to a new port; the port is not part
    # of what a ticket is bound to, the allow list is)
    p2 = tls_listener_conf(x, pki, echo.port, workers=2, allow=("CN=app-*", "CN=ops-*"))
    x.reload()
    assert not _resume(p2, pki, sess), "a ticket resumed after the allow list changed"
    x.wait_log(r"TLS with the client established \(tls, full handshake\)", count=2)


@pytest.mark.parametrize("how", ["ticket", "session_id"])
def test_upstream_resumption(xrayd, cleanup, pki, tmp_path, how):
    """xrayd resumes its session with s_server: ticket, or session id
    (s_server -no_ticket).  ONE worker: the client session xrayd keeps
    for an upstream is per worker process."""
    extra = ["-www"] + (["-no_ticket"] if how == "session_id" else [])
    srv = th.SServer(pki, verify_ca=pki.ca, extra=extra, stdout=subprocess.DEVNULL,
                     tmp=tmp_path)
    cleanup.append(srv)
    x = xrayd()
    p = tls_upstream_conf(x, pki, srv.port, workers=1)
    x.start()
    pages = []
    for i in range(4):
        pages.append(get_page(p))
    assert "New, TLSv1.2" in pages[0], pages[0][:1500]
    for pg in pages[1:]:
        assert "Reused, TLSv1.2" in pg, pg[:1500]
    x.wait_log(r"TLS with the upstream established \(tls, full handshake\)")
    x.wait_log(r"TLS with the upstream established \(tls, resumed\)", count=3)


def test_upstream_session_reuse_off(xrayd, cleanup, pki, tmp_path):
    srv = th.SServer(pki, extra=["-www"], stdout=subprocess.DEVNULL, tmp=tmp_path)
    cleanup.append(srv)
    x = xrayd()
    p = tls_upstream_conf(x, pki, srv.port, cert=None, workers=1,
                          extra_tls="      session_reuse: off\n")
    x.start()
    for i in range(3):
        page = get_page(p)
        assert "New, TLSv1.2" in page, page[:1500]
    assert not x.log_lines(r"established \(tls, resumed\)")


# ---- close_notify -------------------------------------------------------------------

def test_listener_close_notify_both_ways(xrayd, cleanup, pki):
    """Client close_notify (then FIN) becomes a FIN to the backend, which
    can still answer (half-close); the backend's FIN becomes xrayd's
    close_notify to the client."""
    def handler(srv, s):
        h = hashlib.sha256()
        n = xf.recv_to_eof(s, h)   # ends on the client's close_notify
        time.sleep(0.3)
        s.sendall(b"after eof: %d %s\n" % (n, h.hexdigest().encode()))
        s.shutdown(socket.SHUT_WR)
        with srv.lock:
            srv.results.append(n)
    srv = xf.HandlerServer(handler)
    cleanup.append(srv)
    x = xrayd()
    p = tls_listener_conf(x, pki, srv.port)
    x.start()
    payload = os.urandom(100000)
    b = th.BioClient(p, th.client_ctx(pki, "app-1"))
    try:
        b.handshake()
        b.send(payload)
        b.close_notify()          # no FIN yet: close_notify alone ends the stream
        data, how = b.read_to_end()
    finally:
        b.close()
    assert how == "close_notify", how
    assert data == b"after eof: %d %s\n" % (len(payload),
                                            hashlib.sha256(payload).hexdigest().encode())
    xf.wait_until(lambda: srv.results, 10, what="the backend to finish")
    assert srv.results == [len(payload)]
    rec = xf.read_json_lines(x.tmp / "access.log", 1)[0]
    assert rec["reason"] == "done", rec


def test_listener_close_notify_with_last_record(xrayd, cleanup, pki):
    """The client's last data record and its close_notify arrive in ONE
    segment, and the client keeps the TCP connection open (waiting for
    the answer, as s_server -www and many clients do): xrayd must act on
    the close_notify (FIN to the backend) without a further socket event."""
    def handler(srv, s):
        n = xf.recv_to_eof(s)
        s.sendall(b"got %d\n" % n)
        s.shutdown(socket.SHUT_WR)
    srv = xf.HandlerServer(handler)
    cleanup.append(srv)
    x = xrayd()
    p = tls_listener_conf(x, pki, srv.port)
    x.start()
    b = th.BioClient(p, th.client_ctx(pki, "app-1"), timeout=10)
    try:
        b.handshake()
        time.sleep(0.5)               # the relay is up and idle
        wire = b.seal(b"last words\n")
        try:
            b.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        wire += b.out.read()
        b.sock.sendall(wire)          # data record + close_notify together
        data, how = b.read_to_end()
    finally:
        b.close()
    assert data == b"got 11\n", (data, how)
    assert how == "close_notify", how


def test_upstream_close_notify_both_ways(xrayd, cleanup, pki, tmp_path):
    """The client's FIN becomes xrayd's close_notify to s_server (which
    reports a clean shutdown, not an unexpected EOF); s_server's
    close_notify (at its stdin EOF) becomes a FIN to the client after the
    data."""
    srv = th.SServer(pki, extra=["-naccept", "1"], stdout=subprocess.PIPE, tmp=tmp_path)
    cleanup.append(srv)
    x = xrayd()
    p = tls_upstream_conf(x, pki, srv.port, cert=None)
    x.start()
    c = xf.connect(p, timeout=15)
    c.sendall(b"client data\n")
    c.shutdown(socket.SHUT_WR)
    srv.proc.stdin.write(b"server data\n")
    srv.proc.stdin.flush()
    time.sleep(0.5)
    srv.proc.stdin.close()
    got = xf.recv_all(c, 15)
    c.close()
    assert got == b"server data\n", got
    srv.proc.wait(15)
    out = srv.proc.stdout.read().decode(errors="replace")
    assert "client data" in out, out
    assert "DONE" in out, out                      # close_notify seen
    assert "unexpected eof" not in (out + srv.stderr()).lower(), out + srv.stderr()
    rec = xf.read_json_lines(x.tmp / "access.log", 1)[0]
    assert rec["reason"] == "done", rec
    assert rec["bytes_up"] == 12 and rec["bytes_down"] == 12, rec


# ---- bulk ---------------------------------------------------------------------------

@pytest.mark.timeout(1200)
@pytest.mark.parametrize("cipher", th.SUITES)
def test_listener_bulk_s_client(xrayd, cleanup, pki, cipher):
    """BIG_MB MiB each way at once between s_client and a plain backend
    through xrayd's TLS listener; SHA-256 equal both ways."""
    total = BIG_MB * xf.MIB

    def handler(srv, s):
        res = {}

        def reader():
            h = hashlib.sha256()
            n = 0
            buf = bytearray(xf.MIB)
            while n < total:
                k = s.recv_into(buf)
                if not k:
                    break
                h.update(memoryview(buf)[:k])
                n += k
            res["n"], res["hash"] = n, h.hexdigest()
        t = threading.Thread(target=reader)
        t.start()
        h = hashlib.sha256()
        xf.send_stream(s, xf.Stream(12, total), h)
        res["sent"] = h.hexdigest()
        t.join(1100)
        s.shutdown(socket.SHUT_WR)   # -> close_notify -> s_client exits
        with srv.lock:
            srv.results.append(res)
    srv = xf.HandlerServer(handler)
    cleanup.append(srv)
    x = xrayd()
    p = tls_listener_conf(x, pki, srv.port, ciphers=[cipher])
    x.start()
    t0 = time.monotonic()
    proc = subprocess.Popen(th.s_client_args(p, pki, cipher, "app-1", extra=["-quiet"]),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        sent, n, got = th.pump_process(proc, xf.Stream(11, total), 1100)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    dt = time.monotonic() - t0
    xf.wait_until(lambda: srv.results, 60, what="backend to finish")
    res = srv.results[0]
    assert n == total, "client got %d of %d bytes" % (n, total)
    assert res["n"] == total, "backend got %d of %d bytes" % (res["n"], total)
    assert got == res["sent"], "downstream corrupted"
    assert res["hash"] == sent, "upstream corrupted"
    rec = xf.read_json_lines(x.tmp / "access.log", 1)[0]
    assert rec["bytes_up"] == total and rec["bytes_down"] == total, rec
    print("%s: %d MiB each way in %.1fs" % (cipher, BIG_MB, dt))


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("cipher", th.SUITES)
def test_upstream_bulk_s_server(xrayd, cleanup, pki, tmp_path, cipher):
    """BIG_MB MiB each way at once between a plain client and s_server
    through xrayd's TLS upstream end; SHA-256 equal both ways."""
    total = BIG_MB * xf.MIB
    srv = th.SServer(pki, cipher=cipher, verify_ca=pki.ca,
                     extra=["-quiet", "-naccept", "1"], tmp=tmp_path)
    cleanup.append(srv)
    x = xrayd()
    p = tls_upstream_conf(x, pki, srv.port, ciphers=[cipher])
    x.start()
    c = xf.connect(p, timeout=120)
    cres = {}

    def client():
        def sender():
            h = hashlib.sha256()
            xf.send_stream(c, xf.Stream(21, total), h)
            cres["sent"] = h.hexdigest()
        t = threading.Thread(target=sender)
        t.start()
        h = hashlib.sha256()
        cres["n"] = xf.recv_to_eof(c, h)
        cres["hash"] = h.hexdigest()
        t.join(600)
    ct = threading.Thread(target=client)
    ct.start()
    prog = {}
    t0 = time.monotonic()
    sent, n, got = th.pump_process(srv.proc, xf.Stream(22, total), 1100,
                                   close_stdin_when=lambda: prog["n"] >= total,
                                   progress=prog)
    ct.join(300)
    c.close()
    dt = time.monotonic() - t0
    assert n == total, "s_server got %d of %d bytes" % (n, total)
    assert cres.get("n") == total, "client got %s of %d bytes" % (cres.get("n"), total)
    assert got == cres["sent"], "upstream corrupted"
    assert cres["hash"] == sent, "downstream corrupted"
    print("%s: %d MiB each way in %.1fs" % (cipher, BIG_MB, dt))


@pytest.mark.timeout(1800)
def test_three_link_chain_bulk(xrayd, cleanup, pki):
    """client -> A (plain in, TLS out) -> B (TLS in, re-encrypt, TLS out)
    -> C (TLS in, plain out) -> backend: BIG_MB MiB each way at once,
    byte-exact; B and C see their TLS client's identity; A and B each
    verify the next hop.  A-B uses ChaCha20-Poly1305, B-C AES-256-GCM, so
    B re-encrypts from one AEAD into the other."""
    total = BIG_MB * xf.MIB

    def handler(srv, s):
        res = {}

        def reader():
            h = hashlib.sha256()
            res["n"] = xf.recv_to_eof(s, h)
            res["hash"] = h.hexdigest()
        t = threading.Thread(target=reader)
        t.start()
        h = hashlib.sha256()
        xf.send_stream(s, xf.Stream(32, total), h)
        res["sent"] = h.hexdigest()
        s.shutdown(socket.SHUT_WR)
        t.join(1700)
        with srv.lock:
            srv.results.append(res)
    srv = xf.HandlerServer(handler)
    cleanup.append(srv)
    x = xrayd()
    pa, pb, pc = x.listen_port(), x.listen_port(), x.listen_port()
    x.write_conf(with_continuity(x, """
relay:
  - name: A
    listen: 127.0.0.1:${pa}
    upstream: 127.0.0.1:${pb}
    upstream_tls:
      ca: ${ca}
      server_name: localhost
      certificate: ${acrt}
      key: ${akey}
      ciphers: [ECDHE-ECDSA-CHACHA20-POLY1305]
    filters:
      - log:
          path: ${tmp}/access-a.log
  - name: B
    listen: 127.0.0.1:${pb}
    upstream: 127.0.0.1:${pc}
    tls:
      certificate: ${bcrt}
      key: ${bkey}
      client_ca: ${ca}
      allow: ["CN=relay-*"]
      ciphers: [ECDHE-ECDSA-CHACHA20-POLY1305]
    upstream_tls:
      ca: ${ca}
      server_name: localhost
      certificate: ${bcrt}
      key: ${bkey}
      ciphers: [ECDHE-ECDSA-AES256-GCM-SHA384]
    filters:
      - log:
          path: ${tmp}/access-b.log
  - name: C
    listen: 127.0.0.1:${pc}
    upstream: 127.0.0.1:${u}
    tls:
      certificate: ${ccrt}
      key: ${ckey}
      client_ca: ${ca}
      allow: ["CN=relay-b"]
      ciphers: [ECDHE-ECDSA-AES256-GCM-SHA384]
    filters:
      - log:
          path: ${tmp}/access-c.log
"""), pa=pa, pb=pb, pc=pc, u=srv.port, ca=pki.ca,
        acrt=pki.crt("relay-a"), akey=pki.key("relay-a"),
        bcrt=pki.crt("relay-b"), bkey=pki.key("relay-b"),
        ccrt=pki.crt("localhost"), ckey=pki.key("localhost"))
    x.start()
    t0 = time.monotonic()
    c = xf.connect(pa, timeout=300)
    cres = {}

    def sender():
        h = hashlib.sha256()
        xf.send_stream(c, xf.Stream(31, total), h)
        cres["sent"] = h.hexdigest()
        c.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=sender)
    t.start()
    h = hashlib.sha256()
    n = xf.recv_to_eof(c, h)
    t.join(1700)
    c.close()
    dt = time.monotonic() - t0
    xf.wait_until(lambda: srv.results, 120, what="backend to finish")
    res = srv.results[0]
    assert n == total, "client got %d of %d bytes" % (n, total)
    assert res["n"] == total, "backend got %d of %d bytes" % (res["n"], total)
    assert h.hexdigest() == res["sent"], "downstream corrupted"
    assert res["hash"] == cres["sent"], "upstream corrupted"
    a = xf.read_json_lines(x.tmp / "access-a.log", 1)[0]
    b = xf.read_json_lines(x.tmp / "access-b.log", 1)[0]
    cc = xf.read_json_lines(x.tmp / "access-c.log", 1)[0]
    for rec in (a, b, cc):
        assert rec["bytes_up"] == total and rec["bytes_down"] == total, rec
        assert rec["reason"] == "done", rec
    assert a["identity"] is None, a
    assert re.fullmatch(identity_re(pki, "relay-a"), b["identity"] or ""), b
    assert re.fullmatch(identity_re(pki, "relay-b"), cc["identity"] or ""), cc
    x.wait_log(r"TLS with the upstream established \(tls, .*peer " + identity_re(pki, "localhost"))
    print("chain: %d MiB each way in %.1fs" % (BIG_MB, dt))


# ---- refusals ---------------------------------------------------------------------

@pytest.fixture
def refusing(xrayd, cleanup, pki):
    """A TLS listener (mutual auth, allow CN=app-*, connect_timeout 2s)
    in front of an echo server, ONE worker so "unharmed" is one pid."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = tls_listener_conf(x, pki, echo.port, workers=1)
    x.start()
    x.port_ = p
    x.echo = echo
    x.pids_before = x.worker_pids()
    good_connection(p, pki, "the first good connection")
    return x


def unharmed(x, pki):
    """The worker that refused is the one that serves the next client
    (called at the end of each refusal test: the daemon is stopped and
    its log checked for [alert]/[crit] right after the test body)."""
    good_connection(x.port_, pki)
    assert x.worker_pids() == x.pids_before, "the worker was replaced"


def _handshake_fails(p, ctx):
    b = th.BioClient(p, ctx)
    try:
        b.handshake()
    except (ssl.SSLError, OSError) as e:
        return str(e)
    finally:
        b.close()
    return None


def test_refuse_client_not_in_allow(refusing, pki):
    """A valid certificate from the right CA whose name is not in allow:
    the handshake completes, then the connection is closed before any
    byte reaches the upstream; the reason names the identity."""
    x = refusing
    accepted = x.echo.accepted
    b = th.BioClient(x.port_, th.client_ctx(pki, "intruder"))
    try:
        b.handshake()
        try:
            b.send(b"let me in")
        except OSError:
            pass
        data, how = b.read_to_end()
    finally:
        b.close()
    assert data == b"", data
    wait_reason(x, r"connection denied: client " + identity_re(pki, "intruder") +
                r" is not in allow")
    assert x.echo.accepted == accepted, "a denied client reached the upstream"
    rec = [r for r in xf.read_json_lines(x.tmp / "access.log", 2)
           if r["reason"].startswith("denied")]
    assert rec and re.fullmatch(identity_re(pki, "intruder"), rec[0]["identity"]), rec
    unharmed(refusing, pki)


def test_refuse_no_client_certificate(refusing, pki):
    err = _handshake_fails(refusing.port_, th.client_ctx(pki, None))
    # TLS 1.2: the client finishes its part before hearing the refusal,
    # so it may see the alert only on its first read.
    wait_reason(refusing, r"TLS handshake with the client failed: .*")
    assert not refusing.log_lines(r"established \(tls, full handshake\)$"), err
    unharmed(refusing, pki)


def test_refuse_expired_client_certificate(refusing, pki):
    err = _handshake_fails(refusing.port_, th.client_ctx(pki, "app-expired"))
    assert err, "handshake with an expired certificate succeeded"
    wait_reason(refusing, r"TLS handshake with the client failed: peer certificate "
                          r"rejected: .*expired")
    unharmed(refusing, pki)


def test_refuse_client_from_another_ca(refusing, pki):
    err = _handshake_fails(refusing.port_, th.client_ctx(pki, "app-1", ca=2))
    assert err, "handshake with another CA's certificate succeeded"
    wait_reason(refusing, r"TLS handshake with the client failed: peer certificate "
                          r"rejected: .*not correctly signed by the trusted CA")
    unharmed(refusing, pki)


def test_refuse_client_without_client_auth_usage(refusing, pki):
    """A leaf with extendedKeyUsage serverAuth only (xray pki --server)."""
    err = _handshake_fails(refusing.port_, th.client_ctx(pki, "app-server"))
    assert err, "handshake with a serverAuth-only certificate succeeded"
    wait_reason(refusing, r"TLS handshake with the client failed: .*"
                          r"(rejected|[Uu]sage|extendedKeyUsage)")
    lines = refusing.log_lines(r"TLS handshake with the client failed")
    assert any(re.search(r"[Uu]sage", l) for l in lines), \
        "the reason does not say what is wrong with the certificate: %s" % lines
    unharmed(refusing, pki)


def test_refuse_plain_tcp_client(refusing, pki):
    x = refusing
    with xf.connect(x.port_) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        assert xf.closed_by_peer(s, 10) in ("eof", "rst")
    wait_reason(x, r"TLS handshake with the client failed: not a TLS 1\.2 handshake")
    unharmed(refusing, pki)


def _client_hello(pki):
    """The first flight of a real client (a ClientHello record)."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = th.client_ctx(pki, "app-1").wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def test_refuse_truncated_handshake_closed(refusing, pki):
    """Half a ClientHello, then FIN."""
    hello = _client_hello(pki)
    assert hello[0] == 22 and len(hello) > 60
    with xf.connect(refusing.port_) as s:
        s.sendall(hello[:len(hello) // 2])
        time.sleep(0.2)
        s.shutdown(socket.SHUT_WR)
        assert xf.closed_by_peer(s, 10) in ("eof", "rst")
    wait_reason(refusing, r"TLS handshake with the client failed: peer closed the "
                          r"connection during the handshake")
    unharmed(refusing, pki)


def test_refuse_truncated_handshake_stalled(refusing, pki):
    """Half a ClientHello, then silence: closed after connect_timeout
    (2s), with the reason."""
    hello = _client_hello(pki)
    with xf.connect(refusing.port_) as s:
        s.sendall(hello[:len(hello) // 2])
        t0 = time.monotonic()
        assert xf.closed_by_peer(s, 15) in ("eof", "rst")
        dt = time.monotonic() - t0
    assert 1.5 <= dt <= 8, "closed after %.1fs with connect_timeout 2s" % dt
    wait_reason(refusing, r"TLS handshake with the client timed out")
    rec = [r for r in xf.read_json_lines(refusing.tmp / "access.log", 2)
           if r["reason"] != "done"]
    assert rec and rec[0]["reason"] == "TLS handshake timeout", rec
    unharmed(refusing, pki)


@pytest.mark.parametrize("cipher", th.SUITES)
def test_refuse_bad_record_tag(refusing, pki, cipher):
    """One good record, then one with a bit flipped in its tag: the good
    one reaches the upstream, the bad one never does; the client gets a
    bad_record_mac alert."""
    x = refusing
    b = th.BioClient(x.port_, th.client_ctx(pki, "app-1", cipher=cipher))
    try:
        b.handshake()
        b.send(b"good record\n")
        assert b.read_some() == b"good record\n"
        rec = bytearray(b.seal(b"tampered record\n"))
        assert rec[0] == 23 and struct.unpack(">H", rec[3:5])[0] == len(rec) - 5
        rec[-1] ^= 0x01
        b.sock.sendall(bytes(rec))
        data, how = b.read_to_end()
    finally:
        b.close()
    assert data == b"", data
    assert "bad record mac" in how.lower() or "bad_record_mac" in how.lower(), how
    wait_reason(x, r"reading from client failed: bad record MAC")
    assert x.echo.bytes == len(b"still alive " * 100) + len(b"good record\n")
    unharmed(refusing, pki)


def test_refuse_oversize_record(refusing, pki):
    """A record header announcing 2^14 + 2048 + 1 bytes: refused at the
    header (no waiting for the body) with record_overflow."""
    x = refusing
    b = th.BioClient(x.port_, th.client_ctx(pki, "app-1"))
    try:
        b.handshake()
        b.sock.sendall(struct.pack(">BBBH", 23, 3, 3, 16384 + 2048 + 1) + b"\0" * 100)
        t0 = time.monotonic()
        data, how = b.read_to_end()
        dt = time.monotonic() - t0
    finally:
        b.close()
    assert data == b""
    assert "record overflow" in how.lower() or "record_overflow" in how.lower(), how
    assert dt < 5
    wait_reason(x, r"reading from client failed: record longer than 18432 bytes")
    unharmed(refusing, pki)


def test_refuse_record_plaintext_over_limit(refusing, pki):
    """A record within the ciphertext limit whose plaintext would exceed
    2^14 bytes (OpenSSL never sends one: forged header) is also an
    overflow."""
    x = refusing
    b = th.BioClient(x.port_, th.client_ctx(pki, "app-1", cipher=th.AES))
    try:
        b.handshake()
        b.sock.sendall(struct.pack(">BBBH", 23, 3, 3, 16384 + 24 + 100) + b"\0" * 100)
        data, how = b.read_to_end()
    finally:
        b.close()
    assert data == b""
    wait_reason(x, r"reading from client failed: record longer than")
    unharmed(refusing, pki)


def test_refuse_renegotiation(refusing, pki):
    """s_client's interactive "R" asks for renegotiation: xrayd refuses
    (no_renegotiation) and closes, logging why."""
    x = refusing
    proc = subprocess.Popen(th.s_client_args(x.port_, pki, cert="app-1"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        proc.stdin.write(b"before\n")
        proc.stdin.flush()
        time.sleep(1.0)
        proc.stdin.write(b"R\n")
        proc.stdin.flush()
        time.sleep(1.0)
        try:
            proc.stdin.write(b"after\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise AssertionError("s_client still connected after renegotiating:\n%s"
                                 % out.decode(errors="replace"))
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.decode(errors="replace")
    assert "RENEGOTIATING" in text, text
    wait_reason(x, r"reading from client failed: renegotiation refused")
    # "before" was echoed, "after" never reached the upstream.
    assert x.echo.bytes == len(b"still alive " * 100) + len(b"before\n"), text
    unharmed(refusing, pki)


def test_refuse_renegotiation_from_upstream(xrayd, cleanup, pki, tmp_path):
    """s_server's interactive "r" sends HelloRequest: xrayd (the client)
    refuses too."""
    srv = th.SServer(pki, extra=["-naccept", "1"], stdout=subprocess.PIPE, tmp=tmp_path)
    cleanup.append(srv)
    x = xrayd()
    p = tls_upstream_conf(x, pki, srv.port, cert=None, workers=1)
    x.start()
    c = xf.connect(p, timeout=15)
    c.sendall(b"hello\n")
    time.sleep(1.0)
    srv.proc.stdin.write(b"r\n")
    srv.proc.stdin.flush()
    how = xf.closed_by_peer(c, 10)
    c.close()
    assert how in ("eof", "rst"), "relay still open after the upstream renegotiated"
    wait_reason(x, r"reading from upstream failed: renegotiation refused")
    srv.close()
