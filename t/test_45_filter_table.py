"""One table of filter cases, run on every front door that runs data filters:
a filter behaves the same wherever bytes enter (html-docs/internals.html,
"Filters").

The filter is t/modules/casefilter.c (objs/t/casefilter.so, loaded with
load_module:), whose data hook does one configured thing: pass, modify
(same length), grow (within the chunk's cap), hold (until a newline),
drop, close (a reset) or answer (the answer, then a FIN).  Each case of
CASES says what the client and the upstream send, in order, and what each
must have received at the end and how its connection ended: "eof" (a FIN;
on a TLS end, close_notify and then the FIN) or "rst".  The same row must
hold on every front door:

  relay         a relay: block, plain TCP both sides
  relay_tls     a relay: block with a TLS listener (the client is Python ssl)
  upstream_tls  a relay: block with upstream_tls (the upstream is Python ssl)
  agent         the XRAY agent's relay point: two agents in the section 8
                topology (t/netns.py); the filter is the client
                application's on agent A; client and server are libraries
                driven here (t/agent_client.py's frames), over TLS links
  proxy         a transparent circuit proxy (proxy: mode: circuit) behind
                nftables REDIRECT on nata, as in t/test_75_proxy.py

A proxy in mode: http runs data filters before its HTTP stage; its bytes
must be HTTP, so it is not a front door of this table: t/test_75_proxy.py
runs signature (close and answer) on it, and its kill -9 test a
pass-through data filter.

Every end of a connection here (client or upstream, plain or TLS, in this
network namespace or another) is a Peer: one thread that reads everything,
writes what the test queued, and records how the stream ended.  Sockets in
the topology's namespaces are made from this process by switching the
calling thread's network namespace (setns) around socket creation."""

import contextlib
import ctypes
import hashlib
import os
import queue
import random
import re
import select
import selectors
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

import agent_client as ac
import netns
import tls_helpers as th
import xrayd_fixture as xf

CASEFILTER_SO = xf.OBJS / "t" / "casefilter.so"

# The same buffer everywhere, so a chunk's cap is comparable between front
# doors (a relay with TLS needs at least 32k).
BUFFER = 32768

BIG_UP = random.Random(45).randbytes(4 * xf.MIB)
BIG_DOWN = random.Random(54).randbytes(4 * xf.MIB + 7)

# grow: each "+" becomes "<plus>"; this line, one chunk on every front
# door, grows 6x to just under buffer_size (its cap is a little more: the
# module logs it), and must arrive whole.
GROW_LINE = b"+" * 5400 + b"\n"
GROWN_LINE = b"<plus>" * 5400 + b"\n"
assert len(GROWN_LINE) <= BUFFER


# ---- the table -------------------------------------------------------------------
#
# Steps, run in order once both ends are connected:
#   ("c", data) / ("u", data)    the client / the upstream sends data
#   ("c_shut",) / ("u_shut",)    ... ends its side (TLS: close_notify, then FIN)
#   ("wait_u", data)             until the upstream has received exactly data
#   ("wait_c", data)             until the client has received exactly data
#   ("wait_u_end",)              until the upstream's side has ended
#   ("log", regex, n)            until the front door's error log has n lines
#                                matching regex written since the case began
#   ("still_u", data)            a moment later, the upstream has still
#                                received exactly data (nothing passed)
# Then both ends must end within a bounded time, and the row's expectations
# hold: what the upstream and the client received, and how each ended.

# The module's log lines, per direction.
UP = r"casefilter: %s in the client-to-upstream direction"
DOWN = r"casefilter: %s in the upstream-to-client direction"

CASES = {
    "pass": dict(
        filter='{case: pass}',
        steps=[("c", BIG_UP), ("u", BIG_DOWN), ("c_shut",), ("u_shut",)],
        upstream_gets=BIG_UP, client_gets=BIG_DOWN, client_end="eof", upstream_end="eof"),
    "modify": dict(
        filter='{case: modify, token: "secret"}',
        steps=[("c", b"my secret is secret\n"), ("wait_u", b"my SECRET is SECRET\n"),
               ("u", b"the secret back\n"), ("wait_c", b"the SECRET back\n"),
               ("c_shut",), ("wait_u_end",), ("u_shut",)],
        upstream_gets=b"my SECRET is SECRET\n", client_gets=b"the SECRET back\n",
        client_end="eof", upstream_end="eof"),
    "grow": dict(
        filter='{case: grow, token: "+", replacement: "<plus>"}',
        steps=[("c", b"1+1\n"), ("wait_u", b"1<plus>1\n"),
               ("c", GROW_LINE), ("wait_u", b"1<plus>1\n" + GROWN_LINE),
               ("u", b"2+2\n"), ("wait_c", b"2<plus>2\n"),
               ("c_shut",), ("wait_u_end",), ("u_shut",)],
        upstream_gets=b"1<plus>1\n" + GROWN_LINE, client_gets=b"2<plus>2\n",
        client_end="eof", upstream_end="eof"),
    "hold": dict(
        filter='{case: hold}',
        steps=[("c", b"hel"), ("log", UP % "holding 3 bytes", 1),
               ("c", b"lo wor"), ("log", UP % "holding 9 bytes", 1),
               ("still_u", b""),
               ("c", b"ld\n"), ("wait_u", b"hello world\n"),
               ("u", b"do"), ("log", DOWN % "holding 2 bytes", 1),
               ("u", b"wn\n"), ("wait_c", b"down\n"),
               # a line without its newline at the end is discarded
               ("c", b"no newline"), ("log", UP % "holding 10 bytes", 1),
               ("c_shut",), ("wait_u_end",), ("u_shut",)],
        upstream_gets=b"hello world\n", client_gets=b"down\n",
        client_end="eof", upstream_end="eof"),
    "drop": dict(
        filter='{case: drop, token: "DROP"}',
        steps=[("c", b"keep 1\n"), ("wait_u", b"keep 1\n"),
               ("c", b"DROP this\n"), ("log", UP % "dropped 10 bytes", 1),
               ("c", b"keep 2\n"), ("wait_u", b"keep 1\nkeep 2\n"),
               ("u", b"DROP down\n"), ("log", DOWN % "dropped 10 bytes", 1),
               ("u", b"down kept\n"), ("wait_c", b"down kept\n"),
               ("c_shut",), ("wait_u_end",), ("u_shut",)],
        upstream_gets=b"keep 1\nkeep 2\n", client_gets=b"down kept\n",
        client_end="eof", upstream_end="eof"),
    "close": dict(
        filter='{case: close, token: "BAD"}',
        steps=[("c", b"fine\n"), ("wait_u", b"fine\n"), ("u", b"ok\n"), ("wait_c", b"ok\n"),
               ("c", b"this is BAD\n")],
        upstream_gets=b"fine\n", client_gets=b"ok\n", client_end="rst", upstream_end="rst"),
    "answer": dict(
        filter='{case: answer, token: "BAD", answer: "ANSWERED\\n"}',
        steps=[("c", b"fine\n"), ("wait_u", b"fine\n"), ("u", b"ok\n"), ("wait_c", b"ok\n"),
               ("c", b"this is BAD\n")],
        upstream_gets=b"fine\n", client_gets=b"ok\nANSWERED\n",
        client_end="eof", upstream_end="eof"),
    "close_down": dict(
        filter='{case: close, token: "BAD"}',
        steps=[("c", b"fine\n"), ("wait_u", b"fine\n"), ("u", b"ok\n"), ("wait_c", b"ok\n"),
               ("u", b"this is BAD\n")],
        upstream_gets=b"fine\n", client_gets=b"ok\n", client_end="rst", upstream_end="rst"),
    "answer_down": dict(
        filter='{case: answer, token: "BAD", answer: "ANSWERED\\n"}',
        steps=[("c", b"fine\n"), ("wait_u", b"fine\n"), ("u", b"ok\n"), ("wait_c", b"ok\n"),
               ("u", b"this is BAD\n")],
        upstream_gets=b"fine\nANSWERED\n", client_gets=b"ok\n",
        client_end="eof", upstream_end="eof"),
}

# A door name ending in "+cont" is the same door with continuity: on (its
# connections in the ring engine and the snapshot, TLS record layers too).
DOORS = ["relay", "relay+cont", "relay_tls", "relay_tls+cont", "upstream_tls",
         "upstream_tls+cont", "agent", "agent+cont", "proxy"]

# Front door, case -> why it does not behave as the table says: a bug to
# fix.  That parametrization runs as xfail(strict=True), so a fix shows up.
KNOWN = {}


# ---- network namespaces ---------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(name):
    """Run the block with this thread in network namespace `name` (sockets
    made meanwhile stay there); None: stay where we are."""
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        fd = os.open("/run/netns/" + name, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, "setns(%s): %s" % (name, os.strerror(e)))
        finally:
            os.close(fd)
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)


# ---- the ends of a connection -------------------------------------------------------

def tls_handshake(sock, ctx, server_side, server_hostname=None):
    """A TLS handshake over a blocking socket with an SSLObject on memory
    BIOs (so one thread can later read and write it)."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_side=server_side, server_hostname=server_hostname)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            d = out.read()
            if d:
                sock.sendall(d)
            d = sock.recv(65536)
            if not d:
                raise ConnectionError("EOF during the TLS handshake")
            inc.write(d)
    d = out.read()
    if d:
        sock.sendall(d)
    return obj, inc, out


class Tls:
    """An SSLObject with its BIOs, and blocking frame I/O for the XRAY link
    set-up before the Peer takes over."""

    def __init__(self, sock, ctx, server_side=False, server_hostname=None):
        self.sock = sock
        self.obj, self.inc, self.out = tls_handshake(sock, ctx, server_side, server_hostname)

    def write(self, data):
        self.obj.write(data)
        self.sock.sendall(self.out.read())

    def read_exact(self, n):
        buf = b""
        while len(buf) < n:
            try:
                buf += self.obj.read(n - len(buf))
            except ssl.SSLWantReadError:
                d = self.sock.recv(65536)
                if not d:
                    raise EOFError("EOF after %d of %d bytes" % (len(buf), n))
                self.inc.write(d)
        return buf

    def frame(self):
        t, flags, n = struct.unpack(">BBH", self.read_exact(4))
        body = self.read_exact(n)
        if t == ac.ERROR:
            code, rid = struct.unpack(">HI", body[:6])
            raise ac.AgentError(code, rid, body[7:7 + body[6]].decode())
        return t, body


class Peer:
    """One end of a relayed connection, pumped by its own thread: reads
    everything into .got, writes what send() queued, shutdown() ends its
    side after the queued bytes (close_notify first on TLS).  .end is None
    while the other side has not ended this stream, then "eof" (a FIN; on
    TLS a close_notify), "eof without close_notify" (TLS: a bare FIN), "rst"
    or "error: ..."."""

    LIFETIME = 120.0

    def __init__(self, sock, tls=None, name="peer"):
        self.sock, self.tls, self.name = sock, tls, name
        self.got = bytearray()
        self.end = None
        self.send_error = None
        self.cmds = queue.Queue()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._pending = bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    # -- the test's side --

    def send(self, data):
        self.cmds.put(("send", bytes(data)))

    def shutdown(self):
        self.cmds.put(("shut",))

    def received(self):
        with self.lock:
            return bytes(self.got)

    def close(self):
        self._stop.set()
        self.thread.join(10)
        try:
            self.sock.close()
        except OSError:
            pass

    # -- the pump --

    def _finish(self, how):
        if self.end is None:
            self.end = how

    def _tls_drain(self, tcp_eof=False):
        obj = self.tls.obj
        while self.end is None:
            try:
                d = obj.read(262144)
            except ssl.SSLWantReadError:
                if tcp_eof:
                    self._finish("eof without close_notify")
                return
            except ssl.SSLZeroReturnError:
                self._finish("eof")
                return
            except ssl.SSLEOFError:
                self._finish("eof without close_notify")
                return
            except ssl.SSLError as e:
                self._finish("error: TLS %s" % (e.reason or e))
                return
            if not d:
                # CPython reads a close_notify as b"" unless we sent ours
                # (then it raises SSLZeroReturnError); the BIO's EOF, which
                # comes in a call of its own, reads as b"" (OpenSSL 3
                # ignoring unexpected EOFs) or raises SSLEOFError.
                self._finish("eof without close_notify" if tcp_eof else "eof")
                return
            with self.lock:
                self.got += d
        self._pending += self.tls.out.read()

    def _read(self):
        try:
            d = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionResetError:
            self._finish("rst")
            return
        except OSError as e:
            self._finish("error: %s" % e)
            return
        if self.tls is None:
            if d:
                with self.lock:
                    self.got += d
            else:
                self._finish("eof")
            return
        if d:
            self.tls.inc.write(d)
        else:
            self.tls.inc.write_eof()
        self._tls_drain(tcp_eof=not d)

    def _command(self, cmd, state):
        if cmd[0] == "send":
            if state["shut"]:
                self.send_error = self.send_error or "send after shutdown"
            elif self.tls is not None:
                self.tls.obj.write(cmd[1])
                self._pending += self.tls.out.read()
            else:
                self._pending += cmd[1]
        elif cmd[0] == "shut" and not state["shut"]:
            if self.tls is not None:
                try:
                    self.tls.obj.unwrap()
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    pass
                except ssl.SSLError as e:
                    self.send_error = self.send_error or "close_notify: %s" % e
                self._pending += self.tls.out.read()
            state["shut"] = state["shut_due"] = True

    def _run(self):
        self.sock.setblocking(False)
        state = {"shut": False, "shut_due": False}
        deadline = time.monotonic() + self.LIFETIME
        if self.tls is not None:
            self._tls_drain()  # what came with the set-up's last record
        while not self._stop.is_set() and time.monotonic() < deadline:
            while True:
                try:
                    self._command(self.cmds.get_nowait(), state)
                except queue.Empty:
                    break
            if state["shut_due"] and not self._pending:
                state["shut_due"] = False
                try:
                    self.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            rl = [self.sock] if self.end is None else []
            wl = [self.sock] if self._pending else []
            if not rl and not wl:
                time.sleep(0.01)
                continue
            try:
                r, w, _ = select.select(rl, wl, [], 0.02)
            except (OSError, ValueError):
                return
            if w and self._pending:
                try:
                    n = self.sock.send(self._pending)
                    del self._pending[:n]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    self.send_error = self.send_error or repr(e)
                    self._pending.clear()
            if r:
                self._read()


class Acceptor:
    """Listening sockets (made in namespace ns) whose connections become
    Peers on one queue; tls: a server context to handshake with first."""

    def __init__(self, addrs, ns=None, tls=None, name="upstream"):
        self.tls, self.name = tls, name
        self.q = queue.Queue()
        self.sel = selectors.DefaultSelector()
        self.lsocks = []
        self.ports = []
        with in_netns(ns):
            for host, port in addrs:
                ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                ls.bind((host, port))
                ls.listen(64)
                ls.setblocking(False)
                self.sel.register(ls, selectors.EVENT_READ)
                self.lsocks.append(ls)
                self.ports.append(ls.getsockname()[1])
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self._stop.is_set():
            for key, _ in self.sel.select(0.1):
                try:
                    s, _ = key.fileobj.accept()
                except OSError:
                    continue
                threading.Thread(target=self._take, args=(s,), daemon=True).start()

    def _take(self, s):
        try:
            s.setblocking(True)
            s.settimeout(10)
            t = Tls(s, self.tls, server_side=True) if self.tls else None
            self.q.put(Peer(s, t, self.name))
        except (OSError, ssl.SSLError) as e:
            self.q.put(e)
            s.close()

    def drain(self):
        while True:
            try:
                p = self.q.get_nowait()
            except queue.Empty:
                return
            if isinstance(p, Peer):
                p.close()

    def next(self, timeout=15):
        try:
            p = self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no upstream connection within %ds" % timeout)
        if not isinstance(p, Peer):
            raise AssertionError("upstream connection failed: %r" % p)
        return p

    def close(self):
        self._stop.set()
        self.thread.join(5)
        for ls in self.lsocks:
            ls.close()
        self.sel.close()
        self.drain()


# ---- front doors ----------------------------------------------------------------------

BAD_LINE = re.compile(r"\[(alert|crit|emerg)\]")


class Door:
    """What a test needs of a front door: open(case) -> (client, upstream)
    Peers, connected end to end; the error log written since mark().
    close() undoes the set-up (also a set-up that failed half way) and
    returns the problems the daemons' logs and exits show."""

    log_path = None
    stderr_path = None

    def __init__(self):
        self._undo = []  # callables, run last first; each may return problems

    def on_close(self, fn):
        self._undo.append(fn)

    @contextlib.contextmanager
    def building(self):
        try:
            yield
        except BaseException:
            self.close()
            raise

    def close(self):
        problems = []
        while self._undo:
            try:
                problems += self._undo.pop()() or []
            except Exception as e:  # noqa: BLE001 - go on undoing
                problems.append("while closing: %r" % e)
        return problems

    def mark(self):
        self._mark = self._size(self.log_path)
        self._mark_err = self._size(self.stderr_path)

    @staticmethod
    def _size(p):
        try:
            return p.stat().st_size
        except (FileNotFoundError, AttributeError):
            return 0

    @staticmethod
    def _tail(p, off):
        try:
            with open(p, "rb") as f:
                f.seek(off)
                return f.read().decode(errors="replace")
        except (FileNotFoundError, TypeError):
            return ""

    def log_since_mark(self):
        return self._tail(self.log_path, self._mark)

    def problems_since_mark(self):
        out = [l for l in self.log_since_mark().splitlines() if BAD_LINE.search(l)]
        out += [l for l in self._tail(self.stderr_path, self._mark_err).splitlines()
                if xf.SANITIZER_RE.search(l)]
        return out


def _filters(case):
    return "    filters:\n      - casefilter: %s\n" % CASES[case]["filter"]


def _state_dir(tmp, cont):
    """The main section's state_dir line when continuity is on."""
    if not cont:
        return ""
    (tmp / "state").mkdir(exist_ok=True)
    return "state_dir: %s\n" % (tmp / "state")


class RelayDoor(Door):
    """One daemon, one relay: block per case; tls: "in" (a TLS listener),
    "out" (upstream_tls) or None; cont: continuity on."""

    def __init__(self, tmp, pki, tls, cont=False):
        super().__init__()
        self.cont = cont
        with self.building():
            self._build(tmp, pki, tls)

    def _build(self, tmp, pki, tls):
        uctx = None
        if tls == "out":
            uctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            uctx.minimum_version = uctx.maximum_version = ssl.TLSVersion.TLSv1_2
            uctx.load_cert_chain(pki.crt("localhost"), pki.key("localhost"))
        self.up = Acceptor([("127.0.0.1", 0)], tls=uctx)
        self.on_close(self.up.close)
        self.x = xf.Xrayd(tmp)
        self.on_close(self.x.kill_all)
        self.on_close(self.x.check)
        self.ports = {}
        body = "load_module: %s\nbuffer_size: %d\n%srelay:\n" % (
            CASEFILTER_SO, BUFFER, _state_dir(tmp, self.cont))
        for case in CASES:
            self.ports[case] = self.x.listen_port()
            body += ("  - name: fc-%s\n    listen: 127.0.0.1:%d\n    upstream: 127.0.0.1:%d\n"
                     % (case, self.ports[case], self.up.ports[0]))
            if self.cont:
                body += "    continuity: on\n"
            if tls == "in":
                body += "    tls:\n      certificate: %s\n      key: %s\n" % (
                    pki.crt("localhost"), pki.key("localhost"))
            elif tls == "out":
                body += "    upstream_tls:\n      ca: %s\n      server_name: localhost\n" % pki.ca
            body += _filters(case)
        self.x.write_conf(body, workers=2)
        self.x.start()
        self.log_path, self.stderr_path = self.x.error_log, self.x.stderr_path
        self.cctx = th.client_ctx(pki) if tls == "in" else None

    def open(self, case):
        self.up.drain()
        s = socket.create_connection(("127.0.0.1", self.ports[case]), 10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = Tls(s, self.cctx, server_hostname="localhost") if self.cctx else None
        client = Peer(s, t, "client")
        return client, self.up.next()


class NsDaemon:
    """xrayd in a namespace of the topology, with its own directory."""

    def __init__(self, t, role, d, conf_text):
        self.d = d
        d.mkdir(parents=True, exist_ok=True)
        self.conf = d / "xrayd.yaml"
        self.conf.write_text(conf_text)
        self.log = d / "error.log"
        self.stderr = d / "stderr.log"
        self._err = open(self.stderr, "ab")
        self.proc = t.popen(role, [str(xf.XRAYD_BIN), "-c", str(self.conf)], stderr=self._err)

    def text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, needle, count=1, timeout=20):
        xf.wait_until(lambda: self.proc.poll() is None and self.text().count(needle) >= count
                      or self.proc.poll() is not None,
                      timeout, what="%r in %s" % (needle, self.log))
        assert self.proc.poll() is None, "xrayd exited: %s%s" % (
            self.text()[-2000:], self.stderr.read_text(errors="replace")[-2000:])

    def stop(self):
        """SIGTERM; returns problems (exit status, bad log lines)."""
        out = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(20)
                if rc != 0:
                    out.append("%s: master exited with %s" % (self.d.name, rc))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out.append("%s: master did not exit within 20 s of SIGTERM" % self.d.name)
        self._err.close()
        out += ["%s: %s" % (self.d.name, l) for l in self.text().splitlines()
                if BAD_LINE.search(l)]
        out += ["%s: %s" % (self.d.name, l) for l in
                self.stderr.read_text(errors="replace").splitlines() if xf.SANITIZER_RE.search(l)]
        return out


ORIGIN = "198.19.0.254"
PROXY_PORT0, ORIG_PORT0 = 3140, 5100


class ProxyDoor(Door):
    """A circuit proxy block per case on nata; nftables sends a's
    connections to ORIGIN:5100+i to block i; the upstream listens on pub."""

    def __init__(self, tmp, pki):
        super().__init__()
        with self.building():
            self._build(tmp)

    def _build(self, tmp):
        self.t = netns.Topology()
        self.on_close(self.t.down)
        self.t.up()
        self.state = Path(tempfile.mkdtemp(prefix="xrayd-test-fc-", dir="/dev/shm"))
        self.on_close(lambda: shutil.rmtree(self.state, ignore_errors=True))
        self.index = {case: i for i, case in enumerate(CASES)}
        rules = "table ip xrfilters {\n    chain prerouting {\n" \
                "        type nat hook prerouting priority dstnat; policy accept;\n"
        conf = ("workers: 2\ndaemon: off\npid: %s/xrayd.pid\nerror_log: %s/error.log\n"
                "log_level: info\nstate_dir: %s\nload_module: %s\nbuffer_size: %d\nproxy:\n"
                % (tmp, tmp, self.state, CASEFILTER_SO, BUFFER))
        for case, i in self.index.items():
            rules += '        iifname "lan" tcp dport %d redirect to :%d\n' % (
                ORIG_PORT0 + i, PROXY_PORT0 + i)
            conf += ("  - name: fc-%s\n    listen: 0.0.0.0:%d\n    mode: circuit\n"
                     % (case, PROXY_PORT0 + i)) + _filters(case)
        rules += "    }\n}\n"
        r = self.t.run("nata", ["/usr/sbin/nft", "-f", "-"], input=rules)
        assert r.returncode == 0, r.stderr
        self.up = Acceptor([(ORIGIN, ORIG_PORT0 + i) for i in self.index.values()],
                           ns=self.t.ns("pub"))
        self.on_close(self.up.close)
        self.daemon = NsDaemon(self.t, "nata", tmp, conf)
        self.on_close(self.daemon.stop)
        self.daemon.wait("worker process started", 2)
        self.log_path, self.stderr_path = self.daemon.log, self.daemon.stderr

    def open(self, case):
        self.up.drain()
        with in_netns(self.t.ns("a")):
            s = socket.create_connection((ORIGIN, ORIG_PORT0 + self.index[case]), 10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Peer(s, None, "client"), self.up.next()


class AgentDoor(Door):
    """Agent A on nata, agent B on natb (each the other's peer), as in
    t/test_66_agent_topology.py.  A server library in b (relay-b) registers
    198.18.2.2:8080 with agent B, which has servers connect out (mode 2);
    for each case a client library in a with certificate fc-CASE, whose
    application on agent A has the case's filter, connects to the server's
    official address.  Agent A's relay point is the front door under test:
    client link on one side, the link to agent B's relay point on the
    other; the server's link ends at the upstream Peer."""

    def __init__(self, tmp, pki, cont=False):
        super().__init__()
        self.pki = pki
        self.cont = cont
        self.client_sess = None
        with self.building():
            self._build(tmp, pki)

    def _build(self, tmp, pki):
        for name in ("agent-a", "agent-b"):
            if not os.path.exists(pki.crt(name)):
                pki._issue(pki.ca1, name, "--both", "--san", "DNS:" + name)
        for case in CASES:
            if not os.path.exists(pki.crt("fc-" + case)):
                pki._issue(pki.ca1, "fc-" + case, "--client")
        self.t = t = netns.Topology()
        self.on_close(t.down)
        t.up()
        pub_a, pub_b = t.pub_addr("nata"), t.pub_addr("natb")
        apps_a = "".join(
            "  - name: fc-%s\n    match: [\"CN=fc-%s\"]\n    outbound: [\"%s/32:20000-20009\"]\n"
            "    filters:\n      - casefilter: %s\n" % (c, c, pub_b, CASES[c]["filter"])
            for c in CASES)
        apps_b = "  - name: server\n    match: [\"CN=relay-b\"]\n    inbound: on\n"
        self.daemons = {}
        for me, other, lan, pub, opub, apps, extra in (
                ("a", "b", "198.18.1.0/24", pub_a, pub_b, apps_a, ""),
                ("b", "a", "198.18.2.0/24", pub_b, pub_a, apps_b, "  incoming: connect_out\n")):
            d = tmp / ("agent-" + me)
            d.mkdir(parents=True, exist_ok=True)
            if self.cont:
                extra += "  continuity: on\n"
            conf = """workers: 2
daemon: off
pid: %(d)s/xrayd.pid
error_log: %(d)s/error.log
log_level: info
load_module: %(so)s
buffer_size: %(buf)d
%(state)sagent:
  listen: 0.0.0.0:7000
  tls:
    certificate: %(crt)s
    key: %(key)s
    client_ca: %(ca)s
  networks: [%(lan)s]
  official_pool: ["%(pub)s:20000-20009"]
%(extra)s  peers:
    - networks: ["%(opub)s/32"]
      agent: %(opub)s:7000
      match: ["CN=agent-%(other)s"]
      tls:
        ca: %(ca)s
        certificate: %(crt)s
        key: %(key)s
        server_name: agent-%(other)s
applications:
%(apps)s""" % dict(d=d, so=CASEFILTER_SO, buf=BUFFER, crt=pki.crt("agent-" + me),
                   key=pki.key("agent-" + me), ca=pki.ca, lan=lan, pub=pub, opub=opub,
                   other=other, apps=apps, extra=extra, state=_state_dir(d, self.cont))
            self.daemons[me] = NsDaemon(t, "nat" + me, d, conf)
            self.on_close(self.daemons[me].stop)
        for dm in self.daemons.values():
            dm.wait("agent: serving on")
        self.log_path = self.daemons["a"].log
        self.stderr_path = self.daemons["a"].stderr
        self.up = queue.Queue()
        self._server_ready = queue.Queue()
        self.sess = None
        self._server = threading.Thread(target=self._serve, daemon=True)
        self._server.start()
        self.on_close(self._stop_server)
        self.on_close(self._drop_client_session)
        got = self._server_ready.get(timeout=20)
        if isinstance(got, Exception):
            raise got
        self.official = got

    def _link(self, ctx, rp, token):
        """An overlay link (XRAY section 5.2): TLS, LINK, LINK_OK, then the
        end-to-end ACK both ways; a Peer for the application's bytes."""
        s = socket.create_connection(rp, 5)
        try:
            s.settimeout(5)
            tls = Tls(s, ctx)
            tls.write(ac.frame(ac.LINK, token))
            t, _ = tls.frame()
            assert t == ac.LINK_OK, "got frame 0x%02x, not LINK_OK" % t
            tls.write(ac.frame(ac.ACK, b""))
            t, _ = tls.frame()
            assert t == ac.ACK, "got frame 0x%02x, not ACK" % t
        except BaseException:
            s.close()
            raise
        return s, tls

    def _serve(self):
        pki = self.pki
        creds = (pki.ca, pki.crt("relay-b"), pki.key("relay-b"))
        try:
            with in_netns(self.t.ns("b")):
                self.sess = ac.Session(7000, None, host=self.t.addr("natb"), ctx=ac._ctx(*creds))
            _, _, off = self.sess.register(("198.18.2.2", 8080))
        except Exception as e:  # noqa: BLE001 - handed to the fixture
            self._server_ready.put(e)
            return
        self._server_ready.put("%s:%d" % off)
        lctx = ac.link_ctx(*creds)
        self.sess.s.settimeout(None)
        while True:
            try:
                mode, rp, token, _, _ = self.sess.incoming()
            except (EOFError, OSError, ac.AgentError, AssertionError):
                return
            if mode != 2:
                self.up.put(AssertionError("INCOMING mode %d with incoming: connect_out" % mode))
                continue
            threading.Thread(target=self._server_link, args=(lctx, rp, token),
                             daemon=True).start()

    def _server_link(self, lctx, rp, token):
        try:
            with in_netns(self.t.ns("b")):
                s, tls = self._link(lctx, rp, token)
            self.up.put(Peer(s, tls, "upstream"))
        except Exception as e:  # noqa: BLE001 - handed to the test
            self.up.put(e)

    def _drop_client_session(self):
        if self.client_sess is not None:
            self.client_sess.close()
            self.client_sess = None

    def _stop_server(self):
        if self.sess is not None:
            try:
                self.sess.s.shutdown(socket.SHUT_RDWR)  # its incoming() returns
            except OSError:
                pass
        self._server.join(10)
        while not self.up.empty():
            p = self.up.get_nowait()
            if isinstance(p, Peer):
                p.close()

    def open(self, case):
        self._drop_client_session()
        while not self.up.empty():
            p = self.up.get_nowait()
            if isinstance(p, Peer):
                p.close()
        pki = self.pki
        creds = (pki.ca, pki.crt("fc-" + case), pki.key("fc-" + case))
        host, port = self.official.rsplit(":", 1)
        with in_netns(self.t.ns("a")):
            self.client_sess = ac.Session(7000, None, host=self.t.addr("nata"),
                                          ctx=ac._ctx(*creds))
        mode, rp, token, _ = self.client_sess.connect((host, int(port)))
        assert mode == 2, "a relayed connection, not mode %d" % mode
        result = {}

        def link():
            try:
                with in_netns(self.t.ns("a")):
                    result["link"] = self._link(ac.link_ctx(*creds), rp, token)
            except Exception as e:  # noqa: BLE001 - reported below
                result["error"] = e
        lt = threading.Thread(target=link, daemon=True)
        lt.start()
        try:
            up = self.up.get(timeout=15)
        except queue.Empty:
            up = AssertionError("the server got no link within 15 s")
        lt.join(15)
        if "error" in result or "link" not in result:
            if isinstance(up, Peer):
                up.close()
            raise AssertionError("the client's link failed: %r" % result.get("error", "timeout"))
        s, tls = result["link"]
        client = Peer(s, tls, "client")
        if not isinstance(up, Peer):
            client.close()
            raise AssertionError("the server's link failed: %r" % up)
        return client, up


# ---- fixtures ----------------------------------------------------------------------

_ns_why = netns.unavailable()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return th.Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def door(request, pki, tmp_path_factory):
    """The front door under test, set up once for all its cases."""
    name = request.param
    if not CASEFILTER_SO.exists():
        pytest.fail("no %s (build with make)" % CASEFILTER_SO)
    base, cont = name.split("+")[0], name.endswith("+cont")
    if base in ("agent", "proxy") and _ns_why is not None:
        pytest.skip(str(_ns_why))
    tmp = tmp_path_factory.mktemp(name.replace("+", "-"))
    if base in ("agent", "proxy"):
        netns.sweep_stale()
    d = {"relay": lambda: RelayDoor(tmp, pki, None, cont),
         "relay_tls": lambda: RelayDoor(tmp, pki, "in", cont),
         "upstream_tls": lambda: RelayDoor(tmp, pki, "out", cont),
         "agent": lambda: AgentDoor(tmp, pki, cont),
         "proxy": lambda: ProxyDoor(tmp, pki)}[base]()
    yield d
    problems = d.close()
    assert not problems, "%s: xrayd's logs or exit show problems:\n  %s" % (
        name, "\n  ".join(problems[:30]))


# ---- the test -------------------------------------------------------------------------

def _show(b):
    b = bytes(b)
    if len(b) <= 120:
        return b
    return "%d bytes, sha256 %s..." % (len(b), hashlib.sha256(b).hexdigest()[:16])


def _wait_bytes(peer, want, timeout=15):
    end = time.monotonic() + timeout
    while True:
        got = peer.received()
        if got == want:
            return
        if not want.startswith(got) or time.monotonic() > end or peer.end is not None:
            # give late bytes a moment, then say what came
            time.sleep(0.05)
            got = peer.received()
            if got == want:
                return
            raise AssertionError("%s received %r (ended: %s), waiting for %r"
                                 % (peer.name, _show(got), peer.end, _show(want)))
        time.sleep(0.01)


def _wait_log(door, regex, n, timeout=15):
    xf.wait_until(lambda: len(re.findall(regex, door.log_since_mark())) >= n, timeout,
                  what="%d line(s) matching %r in the error log" % (n, regex))


def _run_steps(door, client, up, steps):
    for step in steps:
        op = step[0]
        if op == "c":
            client.send(step[1])
        elif op == "u":
            up.send(step[1])
        elif op == "c_shut":
            client.shutdown()
        elif op == "u_shut":
            up.shutdown()
        elif op == "wait_u":
            _wait_bytes(up, step[1])
        elif op == "wait_c":
            _wait_bytes(client, step[1])
        elif op == "wait_u_end":
            xf.wait_until(lambda: up.end is not None, 15, what="the upstream's side to end")
        elif op == "log":
            _wait_log(door, step[1], step[2])
        elif op == "still_u":
            time.sleep(0.3)
            assert up.received() == step[1], "upstream received %r" % _show(up.received())
        else:
            raise ValueError(op)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("door", DOORS, indirect=True)  # set up once per front door
def test_filter_case(request, door, case):
    why = KNOWN.get((request.node.callspec.params["door"], case))
    if why:
        request.applymarker(pytest.mark.xfail(strict=True, reason=why))
    row = CASES[case]
    door.mark()
    client, up = door.open(case)
    try:
        _run_steps(door, client, up, row["steps"])
        xf.wait_until(lambda: client.end is not None and up.end is not None, 30,
                      what="both ends of the connection to end (client: %s, upstream: %s)"
                      % (client.end, up.end))
        time.sleep(0.05)
        got = {"upstream received": _show(up.received()), "upstream end": up.end,
               "client received": _show(client.received()), "client end": client.end}
        want = {"upstream received": _show(row["upstream_gets"]),
                "upstream end": row["upstream_end"],
                "client received": _show(row["client_gets"]),
                "client end": row["client_end"]}
        assert got == want
    finally:
        client.close()
        up.close()
    problems = door.problems_since_mark()
    assert not problems, "\n".join(problems)
