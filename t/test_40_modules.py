"""Filter modules: signature (built-in and as a loaded .so), access log,
and the loader's ABI check."""

import hashlib
import random
import re
import socket
import threading
import time

import pytest

import xrayd_fixture as xf

PATTERNS = """\
          patterns:
            - "/etc/passwd"
            - hex: "de ad be ef 00 ff"
            - {literal: "EVIL-PAYLOAD", name: "evil"}
"""


def record_echo(srv, s):
    """Echo everything and remember what arrived on this connection."""
    got = bytearray()
    rec = {"data": got, "done": False}
    with srv.lock:
        srv.results.append(rec)
    while True:
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            break
        if not d:
            break
        got += d
        try:
            s.sendall(d)
        except OSError:
            break
    rec["done"] = True


def sig_daemon(xrayd, cleanup, direction=None, load_so=False, extra=""):
    srv = xf.HandlerServer(record_echo)
    cleanup.append(srv)
    x = xrayd()
    p = x.listen_port()
    lm = "load_module: %s\n" % xf.SIGNATURE_SO if load_so else ""
    d = "          direction: %s\n" % direction if direction else ""
    x.write_conf(lm + """
relay:
  - name: sig
    listen: 127.0.0.1:${p}
    upstream: 127.0.0.1:${u}
    filters:
      - signature:
""" + PATTERNS + d + """\
      - log:
          path: ${tmp}/access.log
""" + extra, p=p, u=srv.port)
    x.start()
    return x, p, srv


def clean_payload(n, seed=1):
    """Random bytes that contain none of the patterns."""
    data = bytearray(random.Random(seed).randbytes(n))
    for bad in (b"/etc/passwd", bytes.fromhex("deadbeef00ff"), b"EVIL-PAYLOAD"):
        assert bad not in data
    return bytes(data)


def assert_blocked(x, s, srv, pattern, label, timeout=10, label_re=None):
    """The client's connection is closed, the upstream never saw the whole
    pattern, and the error log names the label at [warn]."""
    how = xf.closed_by_peer(s, timeout)
    assert how in ("eof", "rst"), "relay not closed after %r" % pattern
    s.close()
    xf.wait_until(lambda: srv.results and all(r["done"] for r in srv.results),
                  10, what="upstream side to close")
    for r in srv.results:
        assert pattern not in r["data"], "upstream received the pattern"
    lines = x.wait_log(r'signature "%s" matched' % (label_re or re.escape(label)))
    assert any("[warn]" in l for l in lines), lines


def test_signature_clean_stream_passes(xrayd, cleanup):
    x, p, srv = sig_daemon(xrayd, cleanup)
    data = clean_payload(8 * xf.MIB)
    with xf.connect(p, timeout=30) as s:
        t = threading.Thread(target=s.sendall, args=(data,))
        t.start()
        got = xf.recv_exact(s, len(data), timeout=60)
        t.join(30)
        s.shutdown(socket.SHUT_WR)
        assert xf.recv_all(s) == b""
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    recs = xf.read_json_lines(x.tmp / "access.log", 1)
    assert recs[0]["bytes_up"] == len(data)
    assert recs[0]["bytes_down"] == len(data)
    assert not x.log_lines(r"signature .* matched")


@pytest.mark.parametrize("pattern,label", [
    (b"/etc/passwd", "/etc/passwd"),
    (b"EVIL-PAYLOAD", "evil"),
])
def test_signature_blocks_one_send(xrayd, cleanup, pattern, label):
    x, p, srv = sig_daemon(xrayd, cleanup)
    s = xf.connect(p)
    s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
    assert xf.recv_exact(s, 28) == b"GET /index.html HTTP/1.0\r\n\r\n"
    s.sendall(b"GET " + pattern + b" HTTP/1.0\r\n\r\n")
    assert_blocked(x, s, srv, pattern, label)
    recs = xf.read_json_lines(x.tmp / "access.log", 1)
    assert recs[0]["reason"] == 'signature "%s" matched' % label, recs


def test_signature_split_across_sends(xrayd, cleanup):
    x, p, srv = sig_daemon(xrayd, cleanup)
    s = xf.connect(p)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"cat /etc/pa")
    time.sleep(0.5)
    s.sendall(b"sswd please")
    assert_blocked(x, s, srv, b"/etc/passwd", "/etc/passwd")


def test_signature_split_many_pieces(xrayd, cleanup):
    """The pattern arrives one byte per send, behind 100 KiB of clean data."""
    x, p, srv = sig_daemon(xrayd, cleanup)
    s = xf.connect(p)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lead = clean_payload(100 * 1024, seed=7)
    s.sendall(lead)
    assert xf.recv_exact(s, len(lead)) == lead
    for b in b"EVIL-PAYLOAD":
        try:
            s.sendall(bytes([b]))
        except OSError:
            break
        time.sleep(0.05)
    assert_blocked(x, s, srv, b"EVIL-PAYLOAD", "evil")


def test_signature_hex_split(xrayd, cleanup):
    x, p, srv = sig_daemon(xrayd, cleanup)
    s = xf.connect(p)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pat = bytes.fromhex("deadbeef00ff")
    s.sendall(b"\x01\x02" + pat[:3])
    time.sleep(0.3)
    s.sendall(pat[3:] + b"\x03")
    assert_blocked(x, s, srv, pat, None, label_re=r"hex:[^\"]+")


def test_signature_near_miss_passes(xrayd, cleanup):
    """Prefixes of patterns, split the same way, are not matches."""
    x, p, srv = sig_daemon(xrayd, cleanup)
    s = xf.connect(p)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sent = b""
    for piece in (b"cat /etc/pa", b"ss /etc/passw", b"x? EVIL-PAYLOA", b"d",
                  bytes.fromhex("deadbeef00"), b"\xfe"):
        s.sendall(piece)
        sent += piece
        time.sleep(0.2)
    s.shutdown(socket.SHUT_WR)
    assert xf.recv_all(s) == sent
    s.close()
    assert not x.log_lines(r"signature .* matched")


def test_signature_downstream(xrayd, cleanup):
    """direction: both (default) also inspects upstream -> client."""
    def evil_server(srv, s):
        s.sendall(b"hello\n")
        time.sleep(0.3)
        s.sendall(b"root:x:0:0 EVIL-PAY")
        time.sleep(0.3)
        try:
            s.sendall(b"LOAD and more\n")
            time.sleep(5)
        except OSError:
            pass
    srv = xf.HandlerServer(evil_server)
    cleanup.append(srv)
    x = xrayd()
    p = x.listen_port()
    x.write_conf("""
relay:
  - name: sig
    listen: 127.0.0.1:${p}
    upstream: 127.0.0.1:${u}
    filters:
      - signature:
""" + PATTERNS, p=p, u=srv.port)
    x.start()
    s = xf.connect(p)
    got = bytearray()
    s.settimeout(10)
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += d
    except ConnectionResetError:
        pass
    assert got.startswith(b"hello\n")
    assert b"EVIL-PAYLOAD" not in got
    x.wait_log(r'signature "evil" matched')


def test_signature_direction_up_ignores_down(xrayd, cleanup):
    def server(srv, s):
        s.sendall(b"/etc/passwd is fine going down\n")
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass
    srv = xf.HandlerServer(server)
    cleanup.append(srv)
    x = xrayd()
    p = x.listen_port()
    x.write_conf("""
relay:
  - name: sig
    listen: 127.0.0.1:${p}
    upstream: 127.0.0.1:${u}
    filters:
      - signature:
          direction: up
""" + PATTERNS, p=p, u=srv.port)
    x.start()
    with xf.connect(p) as s:
        s.shutdown(socket.SHUT_WR)
        assert xf.recv_all(s) == b"/etc/passwd is fine going down\n"
    assert not x.log_lines(r"signature .* matched")


def test_access_log_record(xrayd, cleanup):
    """One JSON line per relay, with exact byte counts and the reason."""
    up_n, down_n = 123457, 654321

    def server(srv, s):
        n = xf.recv_to_eof(s)
        with srv.lock:
            srv.results.append(n)
        s.sendall(b"d" * down_n)
    srv = xf.HandlerServer(server)
    cleanup.append(srv)
    x = xrayd()
    p = x.listen_port()
    x.write_conf("""
relay:
  - name: web
    listen: 127.0.0.1:${p}
    upstream: 127.0.0.1:${u}
    filters:
      - log:
          path: ${tmp}/access.log
""", p=p, u=srv.port)
    x.start()
    t0 = time.time()
    s = xf.connect(p)
    client_port = s.getsockname()[1]
    s.sendall(b"u" * up_n)
    s.shutdown(socket.SHUT_WR)
    got = xf.recv_all(s, timeout=20)
    s.close()
    assert len(got) == down_n
    assert srv.results == [up_n]
    rec = xf.read_json_lines(x.tmp / "access.log", 1)[0]
    assert rec["listener"] == "web"
    assert rec["client"] == "127.0.0.1:%d" % client_port
    assert rec["local"] == "127.0.0.1:%d" % p
    assert rec["upstream"] == "127.0.0.1:%d" % srv.port
    assert rec["identity"] is None
    assert rec["bytes_up"] == up_n
    assert rec["bytes_down"] == down_n
    assert rec["reason"] == "done", rec
    assert 0 <= rec["duration_ms"] <= (time.time() - t0) * 1000 + 1000
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", rec["time"]), rec
    raw = (x.tmp / "access.log").read_text()
    assert raw.count("\n") == 1 and raw.endswith("}\n")


def test_access_log_upstream_down(xrayd):
    x = xrayd()
    p = x.listen_port()
    dead = xf.free_port()
    x.write_conf("""
relay:
  - name: web
    listen: 127.0.0.1:${p}
    upstream: 127.0.0.1:${d}
    filters:
      - log:
          path: ${tmp}/access.log
""", p=p, d=dead)
    x.start()
    with xf.connect(p) as s:
        s.sendall(b"x")
        assert xf.closed_by_peer(s, 10) in ("eof", "rst")
    rec = xf.read_json_lines(x.tmp / "access.log", 1)[0]
    assert rec["reason"] == "upstream connect failed", rec
    assert rec["bytes_down"] == 0


def test_load_module_so(xrayd, cleanup):
    """load_module: objs/modules/signature.so passes -t, and the loaded
    signature filter works."""
    assert xf.SIGNATURE_SO.exists()
    x, p, srv = sig_daemon(xrayd, cleanup, load_so=True)
    r = xf.run_xrayd("-t", "-c", x.conf)
    assert r.returncode == 0 and "configuration ok" in r.stderr, r.stderr
    s = xf.connect(p)
    s.sendall(b"ok so far ")
    assert xf.recv_exact(s, 10) == b"ok so far "
    s.sendall(b"/etc/passwd")
    assert_blocked(x, s, srv, b"/etc/passwd", "/etc/passwd")


def test_load_module_relative_path(tmp_path):
    """load_module resolves a relative path against the YAML file's
    directory."""
    d = tmp_path / "conf"
    (d / "mods").mkdir(parents=True)
    (d / "mods" / "signature.so").write_bytes(xf.SIGNATURE_SO.read_bytes())
    conf = d / "x.yaml"
    conf.write_text("load_module: mods/signature.so\nrelay:\n  - name: a\n"
                    "    listen: 127.0.0.1:18001\n    upstream: 127.0.0.1:18002\n"
                    "    filters:\n      - signature:\n          patterns: [abc]\n")
    r = xf.run_xrayd("-t", "-c", conf)
    assert r.returncode == 0 and "configuration ok" in r.stderr, r.stderr


def test_load_module_abi_mismatch(tmp_path):
    so = xf.ABI_MISMATCH_SO
    assert so.exists()
    conf = tmp_path / "x.yaml"
    conf.write_text("workers: 1\nload_module: %s\nrelay:\n  - name: a\n"
                    "    listen: 127.0.0.1:18001\n    upstream: 127.0.0.1:18002\n"
                    % so)
    r = xf.run_xrayd("-t", "-c", conf)
    out = r.stderr + r.stdout
    assert r.returncode == 1, out
    m = re.search(re.escape(str(conf)) + r":(\d+):(\d+): (.*)", out)
    assert m, out
    assert (int(m.group(1)), int(m.group(2))) == (2, 14), out
    msg = m.group(3)
    assert msg.startswith('"load_module": '), msg
    assert "abi_mismatch.so" in msg or "abi" in msg.lower(), msg
    # Both ABIs named: this xrayd's, and the module's.
    src = (xf.REPO / "t" / "unit" / "abi_mismatch.c")
    theirs = None
    if src.exists():
        mm = re.search(r"\.abi\s*=\s*(\d+)|^\s*(\d{2,})\s*,", src.read_text(), re.M)
        if mm:
            theirs = mm.group(1) or mm.group(2)
    nums = re.findall(r"\b\d+\b", re.sub(r"\S*/\S*", "", msg))
    hdr = (xf.REPO / "modules" / "xrayd_module.h").read_text()
    ours = re.search(r"#define XR_MODULE_ABI (\d+)", hdr).group(1)
    assert ours in nums, "this xrayd's ABI (%s) not named: %s" % (ours, msg)
    if theirs:
        assert theirs in nums, "module's ABI %s not named: %s" % (theirs, msg)
    else:
        assert len(set(nums)) >= 2, "two ABIs not named: %s" % msg


def test_error_log_line_format(xrayd, cleanup):
    """A relay's log line: `TIME [level] PID: *CID message, client: A,
    relay: NAME, ... while ACTION`, PID being the worker's."""
    x, p, srv = sig_daemon(xrayd, cleanup)
    s = xf.connect(p)
    cport = s.getsockname()[1]
    s.sendall(b"/etc/passwd")
    assert xf.closed_by_peer(s, 10) in ("eof", "rst")
    s.close()
    line = x.wait_log(r'signature "/etc/passwd" matched')[0]
    m = re.match(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[warn\] (\d+): \*(\d+) '
                 r'signature "/etc/passwd" matched.*, client: 127\.0\.0\.1:(\d+), '
                 r'relay: sig\b.*, while \S.*$', line)
    assert m, line
    assert int(m.group(1)) in x.worker_pids()
    assert int(m.group(3)) == cport
    start = x.log_lines(r"xrayd/\S+ started")[0]
    assert re.match(r"^\S+Z \[notice\] %d: xrayd/%s started" % (
        x.pid, re.escape((xf.REPO / "VERSION").read_text().strip())), start), start


def test_signature_direction_down_only(xrayd, cleanup):
    """direction: down ignores the pattern going up, stops it going down."""
    def server(srv, s):
        got = b""
        while not got.endswith(b"\n"):
            d = s.recv(4096)
            if not d:
                return
            got += d
        with srv.lock:
            srv.results.append(got)
        s.sendall(b"ack %02d\n" % len(got))
        time.sleep(0.3)
        s.sendall(b"now EVIL-PAYLOAD\n")
        time.sleep(3)
    srv = xf.HandlerServer(server)
    cleanup.append(srv)
    x = xrayd()
    p = x.listen_port()
    x.write_conf("""
relay:
  - name: sig
    listen: 127.0.0.1:${p}
    upstream: 127.0.0.1:${u}
    filters:
      - signature:
          direction: down
""" + PATTERNS, p=p, u=srv.port)
    x.start()
    s = xf.connect(p)
    s.sendall(b"/etc/passwd\n")
    assert xf.recv_exact(s, 7) == b"ack 12\n"
    got = b""
    try:
        s.settimeout(10)
        while True:
            d = s.recv(4096)
            if not d:
                break
            got += d
    except ConnectionResetError:
        pass
    s.close()
    assert b"EVIL-PAYLOAD" not in got
    assert srv.results == [b"/etc/passwd\n"]
    x.wait_log(r'signature "evil" matched')


@pytest.mark.parametrize("tail", [b"abc /etc/pa", b"xyz EVIL-PAYLOA",
                                  b"\x00" + bytes.fromhex("deadbeef00")])
def test_signature_held_prefix_flushed_at_eof(xrayd, cleanup, tail):
    """A stream that ends in a pattern's prefix: the bytes the filter held
    back are delivered before the half-close is passed on."""
    x, p, srv = sig_daemon(xrayd, cleanup)
    with xf.connect(p) as s:
        s.sendall(b"start " + tail)
        time.sleep(0.3)
        s.shutdown(socket.SHUT_WR)
        got = xf.recv_all(s, 10)
    assert got == b"start " + tail
    xf.wait_until(lambda: srv.results and srv.results[0]["done"], 10,
                  what="upstream EOF")
    assert bytes(srv.results[0]["data"]) == b"start " + tail
    recs = xf.read_json_lines(x.tmp / "access.log", 1)
    assert recs[0]["bytes_up"] == len(tail) + 6
    assert recs[0]["reason"] == "done", recs[0]


@pytest.mark.parametrize("offset", [0, 65536 - 5, 65536, 131072 - 1,
                                    1048576 - 11])
def test_signature_in_bulk_stream(xrayd, cleanup, offset):
    """A pattern anywhere in one large write (straddling buffer
    boundaries) is caught; the upstream never gets it whole."""
    x, p, srv = sig_daemon(xrayd, cleanup)
    data = bytearray(clean_payload(2 * xf.MIB, seed=offset))
    data[offset:offset + 11] = b"/etc/passwd"
    s = xf.connect(p)
    t = threading.Thread(target=lambda: _sendall_quiet(s, bytes(data)))
    t.start()
    assert_blocked(x, s, srv, b"/etc/passwd", "/etc/passwd", timeout=20)
    t.join(20)


def _sendall_quiet(s, data):
    try:
        s.sendall(data)
    except OSError:
        pass
