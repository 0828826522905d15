"""A small XRAY protocol client for the tests, written from
html-docs/protocol.html (not from the C code), so the tests also check that
the page is enough to write one."""

import ipaddress
import socket
import struct

import tls_helpers as th

HELLO, HELLO_OK = 0x01, 0x02
REGISTER, REGISTERED = 0x10, 0x11
REFRESH, REFRESHED = 0x12, 0x13
UNREGISTER, UNREGISTERED = 0x14, 0x15
CONNECT, CONNECT_OK = 0x20, 0x21
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


class AgentError(Exception):
    def __init__(self, code, rid, message):
        super().__init__("%s (%d): %s" % (ERRORS.get(code, "?"), code, message))
        self.code, self.name, self.id, self.message = code, ERRORS.get(code), rid, message


class Session:
    """One control connection: TLS with a client certificate, then frames."""

    def __init__(self, port, pki, cert="app-1", hello=True, timeout=10, host="127.0.0.1",
                 ctx=None):
        ctx = ctx or th.client_ctx(pki, cert=cert)
        raw = socket.create_connection((host, port), timeout)
        self.s = ctx.wrap_socket(raw, server_hostname="localhost")
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
        self.send_raw(frame(REGISTER, struct.pack(">IB", rid, proto) + addr(local) + addr(prior)))
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
        rid = self._id()
        self.send_raw(frame(CONNECT, struct.pack(">IB", rid, proto) + addr(dst)))
        return self.expect(CONNECT_OK)


def _main(argv):
    """Run inside a test namespace: register one server socket and print
    the official address as JSON.
    agent_client.py HOST:PORT CA CERT KEY LOCAL_IP:PORT [PRIOR_IP:PORT]"""
    import json
    import ssl
    host, port = argv[0].rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(argv[1])
    ctx.load_cert_chain(argv[2], argv[3])
    def hp(a):
        h, p = a.rsplit(":", 1)
        return (h, int(p))
    prior = hp(argv[5]) if len(argv) > 5 else None
    try:
        s = Session(int(port), None, host=host, ctx=ctx)
        handle, lease, off = s.register(hp(argv[4]), prior=prior)
        print(json.dumps({"official": "%s:%d" % off, "lease_ms": lease}))
    except (AgentError, OSError, EOFError) as e:
        print(json.dumps({"error": str(e)}))
        return 1
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(_main(sys.argv[1:]))
