"""tls_helpers: certificates and TLS peers for t/test_55_tls.py.

Pki builds a small PKI with `objs/xray pki` (and nothing else: every
certificate the tests need is something the tool can make).  The peers
are OpenSSL in two forms: the `openssl s_client` / `s_server` commands
(a real, independent TLS stack) and Python's ssl module, whose MemoryBIO
+ SSLObject give byte-level control over what goes on the wire, so a
test can flip a bit in a sealed record or forge a record header.
"""

import hashlib
import os
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import xrayd_fixture as xf

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
XRAY = xf.OBJS / "xray"

AES = "ECDHE-ECDSA-AES256-GCM-SHA384"
CHACHA = "ECDHE-ECDSA-CHACHA20-POLY1305"
SUITES = [AES, CHACHA]


# ---- certificates -------------------------------------------------------------

class Pki:
    """Two CAs and the leaves the tests use, in directory d.

    ca1 (the one xrayd trusts):
      localhost     serverAuth, SANs localhost and 127.0.0.1 (xrayd's and
                    s_server's certificate)
      relay-b       serverAuth+clientAuth (the chain's middle hop)
      relay-a       clientAuth (the chain's first hop, as a client)
      app-1         clientAuth, in `allow` (CN=app-*)
      intruder      clientAuth, valid, but not in allow
      app-expired   clientAuth, expired in 2021
      app-server    serverAuth only: no clientAuth key usage
    ca2 (another CA, same names):
      app-1         clientAuth, CN=app-1 like the good one
    """

    def __init__(self, d):
        self.dir = Path(d)
        self.ca1 = self.dir / "ca1"
        self.ca2 = self.dir / "ca2"
        self._xray("init", "--dir", self.ca1, "--name", "xrayd test CA")
        self._xray("init", "--dir", self.ca2, "--name", "other CA")
        self._issue(self.ca1, "localhost", "--server", "--san",
                    "DNS:localhost,IP:127.0.0.1")
        self._issue(self.ca1, "relay-b", "--both", "--san", "DNS:localhost,IP:127.0.0.1")
        self._issue(self.ca1, "relay-a", "--client")
        self._issue(self.ca1, "app-1", "--client")
        self._issue(self.ca1, "intruder", "--client")
        self._issue(self.ca1, "app-expired", "--client",
                    "--not-before", "2020-01-01", "--not-after", "2021-01-01")
        self._issue(self.ca1, "app-server", "--server")
        self._issue(self.ca2, "app-1", "--client")
        self.pubkey = {}

    def _xray(self, *args):
        r = subprocess.run([str(XRAY), "pki", *map(str, args)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, "xray pki %s: %s%s" % (args, r.stdout, r.stderr)
        return r.stdout

    def _issue(self, ca, name, *args):
        self._xray("issue", name, "--dir", ca, *args)

    @property
    def ca(self):
        return str(self.ca1 / "ca.crt")

    @property
    def other_ca(self):
        return str(self.ca2 / "ca.crt")

    def crt(self, name, ca=1):
        return str((self.ca1 if ca == 1 else self.ca2) / (name + ".crt"))

    def key(self, name, ca=1):
        return str((self.ca1 if ca == 1 else self.ca2) / (name + ".key"))

    def sha256(self, name, ca=1):
        """The certificate's public key hash as `xray pki show` prints it
        (and xrayd logs its first 16 digits)."""
        out = self._xray("show", self.crt(name, ca))
        for line in out.splitlines():
            if line.startswith("sha256 pubkey:"):
                return line.split(":", 1)[1].strip()
        raise AssertionError("no sha256 pubkey in %r" % out)


# ---- Python ssl contexts ----------------------------------------------------------

def client_ctx(pki, cert=None, ca=1, cipher=None, tickets=True):
    """A TLS 1.2 client context trusting ca1, presenting pki leaf `cert`
    (a name) if given."""
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.minimum_version = ssl.TLSVersion.TLSv1_2
    c.maximum_version = ssl.TLSVersion.TLSv1_2
    c.load_verify_locations(pki.ca)
    c.check_hostname = True
    if cipher:
        c.set_ciphers(cipher)
    if cert:
        c.load_cert_chain(pki.crt(cert, ca), pki.key(cert, ca))
    if not tickets:
        c.options |= ssl.OP_NO_TICKET
    return c


def tls_connect(port, ctx, timeout=15):
    raw = socket.create_connection(("127.0.0.1", port), timeout)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    s.settimeout(timeout)
    return s


def tls_echo(port, ctx, payload, timeout=15):
    """One request through a TLS listener in front of an echo server:
    send payload, close_notify + FIN, read to the end.  Returns (reply,
    cipher name)."""
    b = BioClient(port, ctx, timeout=timeout)
    try:
        b.handshake()
        cipher = b.obj.cipher()[0]
        b.send(payload)
        b.close_notify()
        b.sock.shutdown(socket.SHUT_WR)
        data, how = b.read_to_end()
        assert how == "close_notify", "stream ended by %s, not close_notify" % how
        return data, cipher
    finally:
        b.close()


class BioClient:
    """A TLS client driven by hand: SSLObject + MemoryBIO over a blocking
    socket, so the caller sees (and may alter) every byte on the wire."""

    def __init__(self, port, ctx, timeout=15):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout)
        self.sock.settimeout(timeout)
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        self.tcp_eof = False

    def flush(self):
        d = self.out.read()
        if d:
            self.sock.sendall(d)

    def _fill(self):
        """Read what the socket has into the incoming BIO; False on EOF."""
        try:
            d = self.sock.recv(262144)
        except ConnectionResetError:
            d = b""
        if not d:
            self.tcp_eof = True
            self.inc.write_eof()
            return False
        self.inc.write(d)
        return True

    def handshake(self):
        while True:
            try:
                self.obj.do_handshake()
                self.flush()
                return
            except ssl.SSLWantReadError:
                self.flush()
                if not self._fill():
                    # let OpenSSL say what it makes of the EOF
                    try:
                        self.obj.do_handshake()
                    except ssl.SSLWantReadError:
                        raise ConnectionAbortedError("EOF during the handshake")
                    self.flush()
                    return

    def seal(self, data):
        """The records carrying data, not sent."""
        self.obj.write(data)
        return self.out.read()

    def send(self, data):
        self.obj.write(data)
        self.flush()

    def close_notify(self):
        try:
            self.obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        self.flush()

    def read_some(self):
        """Cleartext bytes, or b"" at the end; raises ssl.SSLError for an
        alert or a broken stream."""
        while True:
            try:
                return self.obj.read(262144)
            except ssl.SSLWantReadError:
                self._fill()
            except ssl.SSLZeroReturnError:
                return b""

    def read_to_end(self):
        """Everything until the stream ends.  Returns (bytes, how) with how
        'close_notify', 'eof' (TCP FIN without close_notify) or
        'alert: ...' / 'error: ...'."""
        out = bytearray()
        while True:
            try:
                d = self.obj.read(262144)
            except ssl.SSLWantReadError:
                if self.tcp_eof:
                    return bytes(out), "eof"
                self._fill()
                continue
            except ssl.SSLZeroReturnError:
                return bytes(out), "close_notify"
            except ssl.SSLEOFError:
                return bytes(out), "eof"
            except ssl.SSLError as e:
                return bytes(out), "alert: %s" % e
            except OSError as e:
                return bytes(out), "error: %s" % e
            if not d:
                # OpenSSL 3 with OP_IGNORE_UNEXPECTED_EOF: a FIN without
                # close_notify reads as b"" (a close_notify raises above)
                return bytes(out), "eof"
            out += d

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---- openssl s_client / s_server ------------------------------------------------

def s_client_args(port, pki, cipher=None, cert=None, ca=1, extra=()):
    a = [OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port, "-tls1_2",
         "-servername", "localhost", "-CAfile", pki.ca, "-verify_return_error"]
    if cipher:
        a += ["-cipher", cipher]
    if cert:
        a += ["-cert", pki.crt(cert, ca), "-key", pki.key(cert, ca)]
    return a + list(extra)


def s_client(port, pki, cipher=None, cert=None, ca=1, extra=(), stdin=b"",
             timeout=30):
    """Run s_client to completion; returns CompletedProcess (bytes)."""
    return subprocess.run(s_client_args(port, pki, cipher, cert, ca, extra),
                          input=stdin, capture_output=True, timeout=timeout)


class SServer:
    """`openssl s_server` on a free loopback port.  Its stdin is a pipe
    (s_server ends the connection at stdin EOF), stdout what it received
    (with -quiet) or its log."""

    def __init__(self, pki, cipher=None, verify_ca=None, extra=(), cert="localhost",
                 stdout=subprocess.PIPE, tmp=None):
        self.port = xf.free_port()
        args = [OPENSSL, "s_server", "-accept", "127.0.0.1:%d" % self.port, "-tls1_2",
                "-cert", pki.crt(cert), "-key", pki.key(cert)]
        if cipher:
            args += ["-cipher", cipher]
        if verify_ca:
            args += ["-Verify", "2", "-CAfile", verify_ca, "-verify_return_error"]
        args += list(extra)
        self.errfile = open(tmp / ("s_server-%d.err" % self.port), "w+b") if tmp else None
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=stdout,
                                     stderr=self.errfile or subprocess.DEVNULL,
                                     start_new_session=True)
        xf.wait_until(lambda: self.proc.poll() is not None or
                      self.port in xf.listening_ports(), 15,
                      what="s_server to listen")
        assert self.proc.poll() is None, "s_server exited: %s" % self.stderr()

    def stderr(self):
        if not self.errfile:
            return ""
        self.errfile.seek(0)
        return self.errfile.read().decode(errors="replace")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f:
                    f.close()
            except OSError:
                pass
        if self.errfile:
            self.errfile.close()


def pump_process(proc, out_stream, timeout, close_stdin_when=None, progress=None):
    """Feed out_stream (an xf.Stream) into proc's stdin while hashing its
    stdout, both at once.  stdin stays open until close_stdin_when() is
    true (or at once after the data if None); progress["n"] counts the
    bytes read so far.  Returns (sent_sha, got_n, got_sha)."""
    res = {}
    progress = progress if progress is not None else {}
    progress["n"] = 0

    def writer():
        h = hashlib.sha256()
        try:
            for c in out_stream.chunks():
                h.update(c)
                proc.stdin.write(c)
            proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            res["werr"] = repr(e)
        res["sent"] = h.hexdigest()
        if close_stdin_when is not None:
            try:
                xf.wait_until(close_stdin_when, timeout, interval=0.05,
                              what="the far end to finish")
            except AssertionError as e:
                res["werr"] = str(e)
        try:
            proc.stdin.close()
        except OSError:
            pass

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    h = hashlib.sha256()
    n = 0
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out after %d bytes" % n)
        r, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not r:
            continue
        d = os.read(fd, 1 << 20)
        if not d:
            break
        h.update(d)
        n += len(d)
        progress["n"] = n
    t.join(timeout)
    assert "werr" not in res, res.get("werr")
    return res["sent"], n, h.hexdigest()
