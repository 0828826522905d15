"""A small XRAY protocol client for the tests, written from
html-docs/protocol.html (not from the C code), so the tests also check that
the page is enough to write one."""

import hashlib
import ipaddress
import os
import socket
import struct
import time

import tls_helpers as th

HELLO, HELLO_OK = 0x01, 0x02
REGISTER, REGISTERED = 0x10, 0x11
REFRESH, REFRESHED = 0x12, 0x13
UNREGISTER, UNREGISTERED = 0x14, 0x15
CONNECT, CONNECT_OK = 0x20, 0x21
INCOMING, INCOMING_OK = 0x30, 0x31
LINK, LINK_OK, ACK = 0x40, 0x41, 0x42
ERROR = 0x7F

ERRORS = {1: "NOT_AUTHORIZED", 2: "NO_SUCH_ADDRESS", 3: "UNREACHABLE", 4: "TIMEOUT",
          5: "OVER_LIMIT", 6: "PROTOCOL", 7: "VERSION", 8: "BAD_TOKEN", 9: "INTERNAL"}


def frame(ftype, body, flags=0):
    return struct.pack(">BBH", ftype, flags, len(body)) + body


def pstr(s):
    b = s.encode() if isinstance(s, str) else s
    return bytes([len(b)]) + b


def addr(a=None):
    """(host, port) -> the 19-byte addr field; None -> family 0."""
    if a is None:
        return bytes(19)
    ip = ipaddress.ip_address(a[0])
    raw = ip.packed + bytes(16 - len(ip.packed))
    return struct.pack(">BH", ip.version, a[1]) + raw


def parse_addr(b):
    fam, port = struct.unpack(">BH", b[:3])
    if fam == 0:
        return None
    ip = ipaddress.ip_address(b[3:7] if fam == 4 else b[3:19])
    return (str(ip), port)


def _der(b, i):
    """(tag, content start, content end) of the DER element at b[i]."""
    tag, n = b[i], b[i + 1]
    j = i + 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(b[j:j + k], "big")
        j += k
    return tag, j, j + n


def spki_sha256(der):
    """SHA-256 of a certificate's DER SubjectPublicKeyInfo (the protocol's keyhash)."""
    _, c, _ = _der(der, 0)
    _, p, end = _der(der, c)
    fields = []
    while p < end and len(fields) < 7:
        tag, _, e = _der(der, p)
        fields.append((tag, p, e))
        p = e
    if fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    _, s, e = fields[5]
    return hashlib.sha256(der[s:e]).digest()


class AgentError(Exception):
    def __init__(self, code, rid, message):
        super().__init__("%s (%d): %s" % (ERRORS.get(code, "?"), code, message))
        self.code, self.name, self.id, self.message = code, ERRORS.get(code), rid, message


class Session:
    """One control connection: TLS with a client certificate, then frames."""

    def __init__(self, port, pki, cert="app-1", hello=True, timeout=10, host="127.0.0.1",
                 ctx=None, session=None):
        ctx = ctx or th.client_ctx(pki, cert=cert)
        raw = socket.create_connection((host, port), timeout)
        self.s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        self.s.settimeout(timeout)
        self.next_id = 1
        if hello:
            self.hello()

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def send_raw(self, data):
        self.s.sendall(data)

    def _read(self, n):
        out = b""
        while len(out) < n:
            d = self.s.recv(n - len(out))
            if not d:
                raise EOFError("agent closed the connection")
            out += d
        return out

    def read(self):
        """One frame: (type, body)."""
        t, flags, n = struct.unpack(">BBH", self._read(4))
        assert flags == 0, "agent sent flags %d" % flags
        return t, self._read(n)

    def expect(self, want):
        t, body = self.read()
        if t == ERROR:
            code, rid = struct.unpack(">HI", body[:6])
            raise AgentError(code, rid, body[7:7 + body[6]].decode())
        assert t == want, "got frame type 0x%02x, want 0x%02x" % (t, want)
        return body

    def hello(self, lo=1, hi=1):
        self.send_raw(frame(HELLO, struct.pack(">HHB", lo, hi, 1) + pstr("xrayd-tests")))
        body = self.expect(HELLO_OK)
        self.version, self.heartbeat_ms = struct.unpack(">HI", body[:6])
        return self.version

    def _id(self):
        self.next_id += 1
        return self.next_id

    def register(self, local, prior=None, proto=6):
        """-> (handle, lease_ms, (official host, port))"""
        rid = self._id()
        body = struct.pack(">IB", rid, proto) + addr(local) + addr(prior) + addr(None)  # direct
        self.send_raw(frame(REGISTER, body))
        body = self.expect(REGISTERED)
        got, handle, lease = struct.unpack(">IQI", body[:16])
        assert got == rid
        return handle, lease, parse_addr(body[16:35])

    def refresh(self, handle):
        rid = self._id()
        self.send_raw(frame(REFRESH, struct.pack(">IQ", rid, handle)))
        got, lease = struct.unpack(">II", self.expect(REFRESHED))
        assert got == rid
        return lease

    def unregister(self, handle):
        rid = self._id()
        self.send_raw(frame(UNREGISTER, struct.pack(">IQ", rid, handle)))
        (got,) = struct.unpack(">I", self.expect(UNREGISTERED))
        assert got == rid

    def connect(self, dst, proto=6):
        """-> (mode, (host, port), token, peer_key); mode 1 direct, 2 relay."""
        return self.connect_finish(self.connect_start(dst, proto))

    def connect_start(self, dst, proto=6):
        """Send CONNECT; -> its id, for connect_finish (a library may open
        its link to the agent meanwhile)."""
        rid = self._id()
        self.send_raw(frame(CONNECT, struct.pack(">IB", rid, proto) + addr(dst)))
        return rid

    def connect_finish(self, rid):
        body = self.expect(CONNECT_OK)
        got, mode = struct.unpack(">IB", body[:5])
        assert got == rid
        return mode, parse_addr(body[5:24]), body[24:56], body[56:88]

    def incoming(self):
        """Wait for INCOMING; answer INCOMING_OK.  -> (mode, relay point,
        token, client address, client subject)."""
        body = self.expect(INCOMING)
        rid, handle, mode = struct.unpack(">IQB", body[:13])
        rp = parse_addr(body[13:32])
        token = body[32:64]
        peer = parse_addr(body[64:83])
        subject = body[84:84 + body[83]].decode()
        self.send_raw(frame(INCOMING_OK, struct.pack(">I", rid)))
        return mode, rp, token, peer, subject


def open_link(ctx, rp, token, timeout=10, session=None):
    """An overlay link to a relay point: TLS, LINK, LINK_OK, then the
    end-to-end ACK both ways (XRAY §5.2 step 7).  Returns the TLS socket,
    ready for the application's bytes."""
    raw = socket.create_connection(rp, timeout)
    s = ctx.wrap_socket(raw, server_hostname=None, session=session)
    s.settimeout(timeout)
    link = Session.__new__(Session)
    link.s = s
    s.sendall(frame(LINK, token))
    link.expect(LINK_OK)
    s.sendall(frame(ACK, b""))
    link.expect(ACK)
    return s


def link_ctx(ca, cert, key):
    """A client context for links: the relay point's chain is verified
    against the CA; its name is not (the library knows its key instead)."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    return ctx


def _ctx(ca, cert, key):
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the chain is checked; agents have their own names
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    return ctx


def _hp(a):
    h, p = a.rsplit(":", 1)
    return (h, int(p))


def _session(agent, ctx, timeout=10, session=None):
    host, port = agent.rsplit(":", 1)
    return Session(int(port), None, host=host, ctx=ctx, timeout=timeout, session=session)


def _register(argv):
    """register AGENT CA CERT KEY LOCAL [PRIOR]: print the official address."""
    import json
    prior = _hp(argv[5]) if len(argv) > 5 else None
    try:
        s = _session(argv[0], _ctx(argv[1], argv[2], argv[3]))
        handle, lease, off = s.register(_hp(argv[4]), prior=prior)
        print(json.dumps({"official": "%s:%d" % off, "lease_ms": lease}))
    except (AgentError, OSError, EOFError) as e:
        print(json.dumps({"error": str(e)}))
        return 1
    return 0


def _echo_stream(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()


def _opens_tls(c, wait=1.0):
    """Does the connection open with a TLS handshake record (the agent's
    link), rather than a direct client's bytes?"""
    import select
    if not select.select([c], [], [], wait)[0]:
        return False
    try:
        return c.recv(1, socket.MSG_PEEK) == b"\x16"
    except OSError:
        return False


def _serve(argv):
    """serve AGENT CA CERT KEY LOCAL [--connect-out-only]: register LOCAL,
    print the official address, then take every INCOMING and echo.  Mode 1:
    the agent dials LOCAL (from the address the control connection reaches
    it at); accept as the TLS server, check the agent's key, expect LINK
    with a token an INCOMING named (it may come a moment after the link),
    answer LINK_OK, ACK both ways.  Mode 2: link out to the relay point.
    With --connect-out-only nothing listens on LOCAL, so the agent must fall
    back to mode 2.  Other connections to LOCAL are direct clients: echoed
    without TLS."""
    import json
    import ssl
    import threading
    listen = "--connect-out-only" not in argv
    ctx = _ctx(argv[1], argv[2], argv[3])
    s = _session(argv[0], ctx)
    local = _hp(argv[4])
    agent_key = spki_sha256(s.s.getpeercert(True))
    agent_ip = s.s.getpeername()[0]
    ls = None
    if listen:
        ls = socket.socket(socket.AF_INET6 if ":" in local[0] else socket.AF_INET)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(local)
        ls.listen(128)
    handle, lease, off = s.register(local)
    print(json.dumps({"official": "%s:%d" % off}), flush=True)
    lctx = link_ctx(argv[1], argv[2], argv[3])
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.minimum_version = sctx.maximum_version = ssl.TLSVersion.TLSv1_2
    sctx.verify_mode = ssl.CERT_REQUIRED
    sctx.load_verify_locations(argv[1])
    sctx.load_cert_chain(argv[2], argv[3])
    expected, cond = {}, threading.Condition()

    def echo(mode, rp, token, peer, subject):
        try:
            c = open_link(lctx, rp, token)
            c.settimeout(60)
            print(json.dumps({"accepted": subject, "mode": 2}), flush=True)
            _echo_stream(c)
        except (OSError, EOFError, AgentError) as e:
            print(json.dumps({"link_error": str(e)}), flush=True)

    def inbound(raw):
        try:
            c = sctx.wrap_socket(raw, server_side=True)
            c.settimeout(60)
            if spki_sha256(c.getpeercert(True)) != agent_key:
                raise OSError("the link's certificate is not the agent's")
            link = Session.__new__(Session)
            link.s = c
            token = link.expect(LINK)
            with cond:
                cond.wait_for(lambda: token in expected, 2)
                subject = expected.pop(token, None)
            if subject is None:
                c.sendall(frame(ERROR, struct.pack(">HI", 8, 0) + pstr("no such INCOMING")))
                raise OSError("a link with a token no INCOMING named")
            c.sendall(frame(LINK_OK, b"") + frame(ACK, b""))
            link.expect(ACK)
            print(json.dumps({"accepted": subject, "mode": 1}), flush=True)
            _echo_stream(c)
        except (OSError, EOFError, AgentError, ssl.SSLError) as e:
            print(json.dumps({"link_error": str(e)}), flush=True)
            raw.close()

    def accept_loop():
        while True:
            try:
                c, peer = ls.accept()
            except OSError:
                return
            fn = inbound if peer[0] == agent_ip and _opens_tls(c) else _echo_stream
            t = threading.Thread(target=fn, args=(c,), daemon=True)
            t.start()
            threads.append(t)

    threads = []
    if ls is not None:
        threading.Thread(target=accept_loop, daemon=True).start()
    s.s.settimeout(None)
    while True:  # the tests' leases outlast them: no heartbeats needed
        try:
            got = s.incoming()
        except (EOFError, OSError):
            # the agent went away: connections already linked go on (§6)
            for t in list(threads):
                t.join(120)
            return 0
        mode, token, subject = got[0], got[2], got[4]
        with cond:
            if mode == 1:
                expected[token] = subject
                cond.notify_all()
                continue
            expected.pop(token, None)  # a fall back from mode 1
        t = threading.Thread(target=echo, args=got, daemon=True)
        t.start()
        threads.append(t)


def _connect(argv):
    """connect AGENT CA CERT KEY DST NBYTES: connect through the agents,
    send NBYTES while reading the echo; print JSON with both SHA-256s."""
    import hashlib
    import json
    ctx = _ctx(argv[1], argv[2], argv[3])
    n = int(argv[5])
    payload = argv[6].encode() if len(argv) > 6 else None
    t0 = time.monotonic()
    try:
        s = _session(argv[0], ctx)
        mode, rp, token, key = s.connect(_hp(argv[4]))
        if mode == 1:
            c = socket.create_connection(rp, 10)
        else:
            c = open_link(link_ctx(argv[1], argv[2], argv[3]), rp, token)
    except (AgentError, OSError, EOFError) as e:
        print(json.dumps({"error": str(e), "code": getattr(e, "name", None)}))
        return 1
    setup_ms = (time.monotonic() - t0) * 1000
    c.settimeout(60)
    sent, got = hashlib.sha256(), hashlib.sha256()
    received = 0

    def read_some():
        d = c.recv(1 << 16)
        if d:
            got.update(d)
        return len(d)

    # One thread: an SSL socket must not be read and written at once.  At
    # most 1 MB is in flight, so neither side's buffers fill.
    pace = float(os.environ.get("XRAY_PACE", "0"))  # seconds between 64 KB blocks
    try:
        if payload is not None:
            c.sendall(payload)
            sent.update(payload)
            n = len(payload)
            c.settimeout(5)
            while received < n:
                k = read_some()
                if k == 0:
                    break
                received += k
        else:
            block = bytes(range(256)) * 256
            left = n
            while left > 0 or received < n:
                if left > 0:
                    chunk = block[:min(left, len(block))]
                    c.sendall(chunk)
                    sent.update(chunk)
                    left -= len(chunk)
                    if pace:
                        time.sleep(pace)
                while received < n and (left == 0 or n - left - received > (1 << 20)):
                    k = read_some()
                    if k == 0:
                        raise EOFError("the relay closed after %d bytes" % received)
                    received += k
    except (OSError, EOFError) as e:
        print(json.dumps({"mode": mode, "send_error": str(e), "received": received}))
        return 1
    c.close()
    print(json.dumps({"mode": mode, "relay": "%s:%d" % rp, "setup_ms": round(setup_ms, 2),
                      "sent": n, "received": received,
                      "equal": sent.hexdigest() == got.hexdigest()}))
    return 0


def _connect_many(argv):
    """connect-many AGENT CA CERT KEY DST N: N connections at once, each
    through the agents with a 1 KB echo; print successes, failures and the
    time until the last one was echoed."""
    import json
    import threading
    ctx = _ctx(argv[1], argv[2], argv[3])
    lctx = link_ctx(argv[1], argv[2], argv[3])
    n = int(argv[5])
    ok, errors = [0], []
    lock = threading.Lock()
    start = threading.Event()
    # A first connection, whose TLS sessions the others resume: repeat
    # parties skip public-key work (XRAY §8).
    s = _session(argv[0], ctx)
    mode, rp, token, key = s.connect(_hp(argv[4]))
    c = open_link(lctx, rp, token)
    sessions = (s.s.session, c.session)
    c.close()
    s.close()

    def one(i):
        start.wait()
        try:
            s = _session(argv[0], ctx, timeout=60, session=sessions[0])
            mode, rp, token, key = s.connect(_hp(argv[4]))
            c = open_link(lctx, rp, token, timeout=60, session=sessions[1]) if mode == 2 else \
                socket.create_connection(rp, 60)
            msg = (b"%04d" % i) * 256
            c.sendall(msg)
            got = b""
            while len(got) < len(msg):
                d = c.recv(65536)
                if not d:
                    break
                got += d
            c.close()
            s.close()
            with lock:
                if got == msg:
                    ok[0] += 1
                else:
                    errors.append("short echo")
        except (AgentError, OSError, EOFError) as e:
            with lock:
                errors.append(str(e))

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    start.set()
    for t in threads:
        t.join(120)
    print(json.dumps({"ok": ok[0], "failed": len(errors), "errors": errors[:5],
                      "seconds": round(time.monotonic() - t0, 3)}))
    return 0 if not errors else 1


def _badlink(argv):
    """badlink AGENT CA CERT KEY DST OTHER_CERT OTHER_KEY: get a relay
    point with CERT, then present (1) a random token and (2) the real
    token from OTHER_CERT; print what the relay point answered each time."""
    import json
    out = {}
    s = _session(argv[0], _ctx(argv[1], argv[2], argv[3]))
    mode, rp, token, key = s.connect(_hp(argv[4]))
    for name, tok, cert, k in (("random_token", os.urandom(32), argv[2], argv[3]),
                               ("wrong_certificate", token, argv[5], argv[6])):
        try:
            open_link(link_ctx(argv[1], cert, k), rp, tok)
            out[name] = "accepted"
        except AgentError as e:
            out[name] = e.name
        except (OSError, EOFError) as e:
            out[name] = "closed: %s" % e
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    import sys
    cmds = {"register": _register, "serve": _serve, "connect": _connect,
            "connect-many": _connect_many, "badlink": _badlink}
    if len(sys.argv) > 1 and sys.argv[1] in cmds:
        sys.exit(cmds[sys.argv[1]](sys.argv[2:]))
    sys.exit(_register(sys.argv[1:]))
