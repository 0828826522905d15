"""xrayd_fixture: the integration tests' view of the daemon.

`Xrayd` owns one daemon: it renders a YAML configuration from a template
into the test's private directory, picks free loopback ports, starts
`objs/xrayd -c FILE` in its own process group, waits until the listening
sockets exist and every worker has said it started, and offers reload(),
stop(), kill_worker(), worker_pids(), rss_kib() and open_fds().  Its
check() (run by conftest.py after every test) stops the daemon and returns
the problems found in the logs: any `[alert]`, `[crit]` or `[emerg]` line
that the test did not allow, and any sanitizer report.

The backends (EchoServer, HandlerServer, Blackhole) are plain Python, fast
enough for a GiB per direction: big send/recv buffers, hashing on the fly.
Everything binds to loopback only, and every wait is bounded in time.
"""

import errno
import hashlib
import json
import os
import random
import re
import selectors
import signal
import socket
import string
import struct
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _bin_path(env, default):
    p = Path(os.environ.get(env, default))
    if not p.is_absolute():
        p = REPO / p
    return p


XRAYD_BIN = _bin_path("XRAYD_BIN", "objs/xrayd")
OBJS = XRAYD_BIN.parent
SIGNATURE_SO = OBJS / "modules" / "signature.so"
ABI_MISMATCH_SO = OBJS / "t" / "abi_mismatch.so"

# Generous on a loaded 2-core machine (and more so under sanitizers).
START_TIMEOUT = float(os.environ.get("XRAYD_TEST_START_TIMEOUT", "30"))
STOP_TIMEOUT = 20.0

SANITIZER_RE = re.compile(
    r"ERROR: AddressSanitizer|runtime error:|LeakSanitizer|"
    r"ERROR: ThreadSanitizer|WARNING: ThreadSanitizer|ERROR: MemorySanitizer")
BAD_LEVEL_RE = re.compile(r"\[(alert|crit|emerg)\]")


def run_xrayd(*args, timeout=30, env=None):
    """Run the binary once (e.g. -t, -V, -s) and return CompletedProcess
    with text stdout/stderr."""
    return subprocess.run([str(XRAYD_BIN), *map(str, args)],
                          stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, errors="replace", timeout=timeout,
                          env=env)


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until it returns a truthy value or timeout seconds pass;
    returns the value or raises AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout, what))
        time.sleep(interval)


# ---- ports ---------------------------------------------------------------

_used_ports = set()
_port_lock = threading.Lock()


def free_port(host="127.0.0.1"):
    """A loopback port nothing listens on now, never handed out before in
    this test run (so two roles in one test never collide)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        with _port_lock:
            if port in _used_ports:
                continue
            _used_ports.add(port)
        return port
    raise RuntimeError("no free port")


def have_ipv6():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def listening_ports():
    """Set of local TCP ports in LISTEN state (IPv4 and IPv6)."""
    ports = set()
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(f) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if parts[3] == "0A":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            pass
    return ports


# ---- /proc helpers ---------------------------------------------------------

def _stat_fields(pid):
    with open("/proc/%d/stat" % pid) as f:
        data = f.read()
    # comm may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rindex(")") + 2:].split()
    return rest  # rest[0] = state, rest[1] = ppid


def children_of(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return sorted(int(x) for x in f.read().split())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            st = _stat_fields(int(d))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        if int(st[1]) == pid and st[0] != "Z":
            out.append(int(d))
    return sorted(out)


def pid_alive(pid):
    try:
        return _stat_fields(pid)[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


# ---- the daemon ------------------------------------------------------------

HEADER = """\
# written by t/xrayd_fixture.py
workers: ${workers}
daemon: off
pid: ${tmp}/xrayd.pid
error_log: ${tmp}/error.log
log_level: ${log_level}
"""


class Xrayd:
    """One daemon under test, living in directory `tmp`."""

    def __init__(self, tmp, name="xrayd"):
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.conf = self.tmp / "xrayd.yaml"
        self.error_log = self.tmp / "error.log"
        self.stderr_path = self.tmp / "stderr.log"
        self.pid_file = self.tmp / "xrayd.pid"
        self.proc = None
        self.workers = 2
        self.listen = []          # ports that must be LISTENing when ready
        self.allow = []           # regexes of allowed [alert]/[crit] lines
        self.seen_pids = set()
        self.rc = None
        self._stderr_fh = None
        self.checked = False

    # -- configuration --

    def port(self):
        return free_port()

    def listen_port(self, host="127.0.0.1"):
        p = free_port(host)
        self.listen.append(p)
        return p

    def allow_log(self, regex):
        """Allow [alert]/[crit] lines matching regex in this test."""
        self.allow.append(re.compile(regex))

    def render(self, body, workers=2, log_level="info", header=True, **subs):
        self.workers = workers
        text = (HEADER if header else "") + body
        values = dict(tmp=str(self.tmp), repo=str(REPO), objs=str(OBJS),
                      workers=workers, log_level=log_level)
        values.update(subs)
        return string.Template(text).substitute(values)

    def write_conf(self, body, path=None, **kw):
        """Render the template (header + body, `${name}` placeholders) and
        write it; returns the path."""
        path = Path(path) if path else self.conf
        path.write_text(self.render(body, **kw))
        return path

    # -- process control --

    def start(self, wait=True, extra_args=()):
        assert self.proc is None, "already started"
        assert XRAYD_BIN.exists(), "no binary at %s" % XRAYD_BIN
        self._stderr_fh = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [str(XRAYD_BIN), "-c", str(self.conf), *extra_args],
            stdin=subprocess.DEVNULL, stdout=self._stderr_fh,
            stderr=self._stderr_fh, start_new_session=True, cwd=str(self.tmp))
        self.seen_pids.add(self.proc.pid)
        if wait:
            self.wait_ready()
        return self

    @property
    def pid(self):
        return self.proc.pid

    def log_text(self):
        out = []
        for p in (self.error_log, self.stderr_path):
            try:
                out.append(p.read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "\n".join(out)

    def log_lines(self, regex):
        r = re.compile(regex)
        return [l for l in self.log_text().splitlines() if r.search(l)]

    def wait_log(self, regex, count=1, timeout=15):
        return wait_until(lambda: len(self.log_lines(regex)) >= count and
                          self.log_lines(regex), timeout,
                          what="%d log line(s) matching %r" % (count, regex))

    def worker_pids(self):
        """The master's workers, not its standby worker (which serves
        nothing until a worker dies)."""
        pids = children_of(self.proc.pid)
        self.seen_pids.update(pids)
        standby = set(self.standby_pids(pids))
        return [p for p in pids if p not in standby]

    def standby_pids(self, pids=None):
        """The standby worker, forked ahead of a worker's death when a
        block has continuity (a list: empty, or one pid).  By its title,
        and by the master's log: a standby just forked still has the
        master's title for a moment, and a test that took it for a worker
        killed it instead of one."""
        text = self.log_text()
        started = {int(m) for m in re.findall(r"start standby worker process (\d+)", text)}
        promoted = {int(m) for m in re.findall(r"standby worker process (\d+) is the new worker",
                                               text)}
        out = []
        for p in children_of(self.proc.pid) if pids is None else pids:
            if p in started and p not in promoted:
                out.append(p)
                continue
            try:
                with open("/proc/%d/cmdline" % p, "rb") as f:
                    title = f.read()
                if title.startswith(b"xrayd: standby") or title.startswith(b"xrayd: master"):
                    out.append(p)
            except (FileNotFoundError, ProcessLookupError):
                pass
        return out

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(
                "xrayd exited with %s during start-up; log:\n%s"
                % (self.proc.returncode, self.log_text()[-3000:]))
        if not set(self.listen) <= listening_ports():
            return False
        if len(self.worker_pids()) < self.workers:
            return False
        return len(self.log_lines(r"worker process started")) >= self.workers

    def wait_ready(self, timeout=START_TIMEOUT):
        # No probe connections: they would show up in access logs and in
        # the backends' counters.  LISTEN sockets plus every worker's
        # "worker process started" line mean ready.
        wait_until(self._ready, timeout, what="xrayd to listen on %s with %d "
                   "started workers" % (self.listen, self.workers))
        return self

    def send_signal(self, sig):
        os.kill(self.proc.pid, sig)

    def reload(self, expect_ok=True, timeout=START_TIMEOUT):
        """SIGHUP; with expect_ok, wait until a full set of new workers is
        up and return their pids; otherwise wait for the failure line and
        return it."""
        old = set(self.worker_pids())
        n_started = len(self.log_lines(r"worker process started"))
        n_failed = len(self.log_lines(r"reload failed"))
        self.send_signal(signal.SIGHUP)
        if not expect_ok:
            return self.wait_log(r"reload failed", count=n_failed + 1,
                                 timeout=timeout)[-1]

        def new_workers():
            assert self.proc.poll() is None, "master exited during reload"
            new = set(self.worker_pids()) - old
            started = len(self.log_lines(r"worker process started"))
            if len(new) >= self.workers and started >= n_started + self.workers:
                return sorted(new)
            return None
        return wait_until(new_workers, timeout, what="new workers after reload")

    def kill_worker(self, pid=None, sig=signal.SIGKILL):
        pid = pid or self.worker_pids()[0]
        os.kill(pid, sig)
        return pid

    def wait_workers_exit(self, pids, timeout=30):
        wait_until(lambda: not any(pid_alive(p) and p in self.worker_pids()
                                   for p in pids),
                   timeout, what="workers %s to exit" % sorted(pids))

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Signal the master, wait for it; return its exit status (None if
        it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.worker_pids()
                self.proc.send_signal(sig)
                self.rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.rc = None
        else:
            self.rc = self.proc.returncode
        return self.rc

    def kill_all(self):
        """Last resort: SIGKILL the process group and every pid seen."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for p in list(self.seen_pids):
            if pid_alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self._stderr_fh:
            self._stderr_fh.close()
            self._stderr_fh = None

    def check(self):
        """Stop the daemon and return a list of problems (strings)."""
        problems = []
        if self.proc is None or self.checked:
            return problems
        self.checked = True
        was_running = self.proc.poll() is None
        rc = self.stop()
        if was_running and rc is None:
            problems.append("%s: master %d did not exit within %ds of SIGTERM"
                            % (self.name, self.proc.pid, STOP_TIMEOUT))
        elif was_running and rc != 0:
            problems.append("%s: master exited with status %s after SIGTERM"
                            % (self.name, rc))
        # Workers must be gone once the master is.
        time.sleep(0.1)
        left = [p for p in self.seen_pids if p != self.proc.pid and pid_alive(p)
                and _pgid(p) == self.proc.pid]
        if left and rc is not None:
            problems.append("%s: worker(s) %s still alive after the master "
                            "exited" % (self.name, left))
        self.kill_all()
        for line in self.log_text().splitlines():
            if SANITIZER_RE.search(line):
                problems.append("%s: sanitizer: %s" % (self.name, line))
            elif BAD_LEVEL_RE.search(line) and not any(
                    a.search(line) for a in self.allow):
                problems.append("%s: log: %s" % (self.name, line))
        return problems


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


# ---- data ------------------------------------------------------------------

MIB = 1 << 20


class Stream:
    """A deterministic pseudo-random byte stream: a random 1 MiB block with
    the chunk counter written into its first 8 bytes (so a reordered,
    duplicated or dropped chunk changes the hash)."""

    def __init__(self, seed, total):
        self.base = bytearray(random.Random(seed).randbytes(MIB))
        self.total = total

    def chunks(self):
        sent, i = 0, 0
        while sent < self.total:
            struct.pack_into("<Q", self.base, 0, i)
            n = min(MIB, self.total - sent)
            yield memoryview(self.base)[:n]
            sent += n
            i += 1

    def sha256(self):
        h = hashlib.sha256()
        for c in self.chunks():
            h.update(c)
        return h.hexdigest()


def send_stream(sock, stream, hasher=None, counter=None):
    for c in stream.chunks():
        if hasher:
            hasher.update(c)
        sock.sendall(c)
        if counter is not None:
            counter[0] += len(c)


def recv_to_eof(sock, hasher=None, limit=None, bufsize=MIB, counter=None):
    """Read until EOF; returns total bytes (hashing them if asked)."""
    buf = bytearray(bufsize)
    mv = memoryview(buf)
    total = 0
    while True:
        n = sock.recv_into(buf)
        if n == 0:
            return total
        if hasher:
            hasher.update(mv[:n])
        total += n
        if counter is not None:
            counter[0] = total
        if limit is not None and total > limit:
            raise AssertionError("received more than %d bytes" % limit)


def recv_all(sock, timeout=10):
    """Read to EOF into bytes (small payloads)."""
    sock.settimeout(timeout)
    out = bytearray()
    while True:
        d = sock.recv(65536)
        if not d:
            return bytes(out)
        out += d


def recv_exact(sock, n, timeout=10):
    sock.settimeout(timeout)
    out = bytearray()
    while len(out) < n:
        d = sock.recv(min(65536, n - len(out)))
        if not d:
            raise EOFError("EOF after %d of %d bytes" % (len(out), n))
        out += d
    return bytes(out)


def connect(port, host="127.0.0.1", timeout=10):
    s = socket.create_connection((host, port), timeout)
    s.settimeout(timeout)
    return s


def set_rst_on_close(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def read_until_end(sock):
    """Read a socket to its end: ("eof", bytes) for a FIN, ("rst", bytes)
    for a reset."""
    got = b""
    try:
        while True:
            b = sock.recv(65536)
            if not b:
                return "eof", got
            got += b
    except ConnectionResetError:
        return "rst", got


def closed_by_peer(sock, timeout):
    """Wait up to timeout for EOF or RST; returns 'eof', 'rst', or
    'open' (still open after timeout).  Discards data."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "open"
        sock.settimeout(left)
        try:
            d = sock.recv(65536)
        except socket.timeout:
            return "open"
        except ConnectionResetError:
            return "rst"
        if not d:
            return "eof"


# ---- backends --------------------------------------------------------------

class HandlerServer:
    """A threaded TCP server: each accepted connection runs handler(sock)
    in its own thread.  Records handler exceptions and what each connection
    received if the handler stores it in `self.results`."""

    def __init__(self, handler, host="127.0.0.1", port=0, backlog=1024):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.lsock = socket.socket(fam, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(backlog)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.handler = handler
        self.errors = []
        self.results = []
        self.accepted = 0
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.conns = []
        self.threads = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self._stop.is_set():
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            s.settimeout(None)
            with self.lock:
                self.accepted += 1
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                self.conns.append(s)
            t = threading.Thread(target=self._run, args=(s,), daemon=True)
            self.threads.append(t)
            t.start()

    def _run(self, s):
        try:
            self.handler(self, s)
        except Exception as e:  # noqa: BLE001 - recorded for the test
            with self.lock:
                self.errors.append(repr(e))
        finally:
            try:
                s.close()
            except OSError:
                pass
            with self.lock:
                self.active -= 1

    def close(self):
        self._stop.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        self.thread.join(5)
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(5)


class EchoServer:
    """A single-threaded selector echo server for many connections.
    A connection whose first bytes are b"RSTNOW" is reset at once (to test
    upstream aborts).  Keeps counts of accepted/active/max_active."""

    def __init__(self, host="127.0.0.1", port=0, backlog=4096):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.lsock = socket.socket(fam, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(backlog)
        self.lsock.setblocking(False)
        self.port = self.lsock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.lsock, selectors.EVENT_READ, None)
        self.accepted = 0
        self.active = 0
        self.max_active = 0
        self.bytes = 0
        self.conns = {}
        self.lock = threading.Lock()
        self._stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self._stop:
            for key, ev in self.sel.select(0.1):
                if key.data is None:
                    self._accept()
                else:
                    self._io(key.fileobj, key.data, ev)

    def _accept(self):
        for _ in range(64):
            try:
                s, _ = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            s.setblocking(False)
            st = {"out": bytearray(), "first": True, "eof": False}
            self.conns[s] = st
            self.sel.register(s, selectors.EVENT_READ, st)
            with self.lock:
                self.accepted += 1
                self.active += 1
                self.max_active = max(self.max_active, self.active)

    def _close(self, s, rst=False):
        self.sel.unregister(s)
        del self.conns[s]
        if rst:
            set_rst_on_close(s)
        s.close()
        with self.lock:
            self.active -= 1

    def _io(self, s, st, ev):
        if ev & selectors.EVENT_READ:
            try:
                d = s.recv(262144)
            except (ConnectionResetError, OSError):
                return self._close(s)
            if not d:
                st["eof"] = True
            else:
                if st["first"] and d.startswith(b"RSTNOW"):
                    return self._close(s, rst=True)
                st["first"] = False
                st["out"] += d
                self.bytes += len(d)
        if st["out"]:
            try:
                n = s.send(st["out"])
                del st["out"][:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return self._close(s)
        if st["eof"] and not st["out"]:
            return self._close(s)
        want = 0
        if len(st["out"]) < 4 * MIB and not st["eof"]:
            want |= selectors.EVENT_READ
        if st["out"]:
            want |= selectors.EVENT_WRITE
        self.sel.modify(s, want or selectors.EVENT_READ, st)

    def close(self):
        self._stop = True
        self.thread.join(5)
        for s in list(self.conns):
            try:
                s.close()
            except OSError:
                pass
        self.lsock.close()
        self.sel.close()


class Blackhole:
    """A listener whose accept queue is full, so further connects hang in
    SYN-SENT (for connect_timeout tests)."""

    def __init__(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(0)
        self.port = self.lsock.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(c)
        time.sleep(0.2)

    def close(self):
        for c in self.fillers:
            c.close()
        self.lsock.close()


# ---- load client -----------------------------------------------------------

class EchoLoad:
    """Drives many echo connections from one selector loop.

    add(port, chunks, interval, start_at) schedules a connection that
    sends `chunks` (list of bytes) one every `interval` seconds starting at
    `start_at` (seconds after run() begins), and expects the same bytes back.
    run(deadline) returns when all are finished or failed, or at the
    deadline.  Each connection ends as 'ok', or a failure string."""

    def __init__(self):
        self.conns = []

    def add(self, port, chunks, interval, start_at=0.0, host="127.0.0.1"):
        self.conns.append({
            "port": port, "host": host, "chunks": list(chunks),
            "interval": interval, "start_at": start_at, "sock": None,
            "next": 0, "sent": bytearray(), "recv": bytearray(),
            "result": None, "state": "new", "expect": b"".join(chunks)})

    def _finish(self, c, result):
        c["result"] = result
        s = c["sock"]
        if s is not None:
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
            c["sock"] = None

    def run(self, timeout, on_tick=None):
        self.sel = selectors.DefaultSelector()
        t0 = time.monotonic()
        deadline = t0 + timeout
        pending = sorted(self.conns, key=lambda c: c["start_at"])
        pi = 0
        live = set()
        try:
            while time.monotonic() < deadline:
                now = time.monotonic() - t0
                # Start connections that are due.
                while pi < len(pending) and pending[pi]["start_at"] <= now:
                    c = pending[pi]
                    pi += 1
                    fam = socket.AF_INET6 if ":" in c["host"] else socket.AF_INET
                    s = socket.socket(fam, socket.SOCK_STREAM)
                    s.setblocking(False)
                    rc = s.connect_ex((c["host"], c["port"]))
                    c["sock"] = s
                    if rc not in (0, errno.EINPROGRESS):
                        self._finish(c, "connect: %s" % os.strerror(rc))
                        continue
                    c["state"] = "connecting"
                    c["t_next"] = now
                    self.sel.register(s, selectors.EVENT_WRITE, c)
                    live.add(id(c))
                # Send chunks that are due.
                for c in self.conns:
                    if c["state"] == "up" and c["next"] < len(c["chunks"]) \
                            and c["t_next"] <= now:
                        d = c["chunks"][c["next"]]
                        try:
                            n = c["sock"].send(d)
                        except BlockingIOError:
                            n = 0
                        except OSError as e:
                            self._finish(c, "send: %s" % e)
                            live.discard(id(c))
                            continue
                        c["sent"] += d[:n]
                        if n == len(d):
                            c["next"] += 1
                            c["t_next"] = now + c["interval"]
                        else:
                            c["chunks"][c["next"]] = d[n:]
                if on_tick:
                    on_tick(now)
                if not live and pi >= len(pending):
                    break
                for key, ev in self.sel.select(0.01):
                    c = key.data
                    s = c["sock"]
                    if c["state"] == "connecting":
                        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            self._finish(c, "connect: %s" % os.strerror(err))
                            live.discard(id(c))
                            continue
                        c["state"] = "up"
                        self.sel.modify(s, selectors.EVENT_READ, c)
                        continue
                    try:
                        d = s.recv(65536)
                    except ConnectionResetError:
                        self._finish(c, "reset after %d/%d bytes echoed"
                                     % (len(c["recv"]), len(c["expect"])))
                        live.discard(id(c))
                        continue
                    except BlockingIOError:
                        continue
                    if not d:
                        self._finish(c, "EOF after %d/%d bytes echoed"
                                     % (len(c["recv"]), len(c["expect"])))
                        live.discard(id(c))
                        continue
                    c["recv"] += d
                    if not c["sent"].startswith(c["recv"]):
                        self._finish(c, "echo mismatch")
                        live.discard(id(c))
                    elif len(c["recv"]) == len(c["expect"]):
                        self._finish(c, "ok" if c["recv"] == c["expect"]
                                     else "echo mismatch")
                        live.discard(id(c))
        finally:
            for c in self.conns:
                if c["result"] is None:
                    self._finish(c, "timeout in state %s after %d/%d bytes"
                                 % (c["state"], len(c["recv"]),
                                    len(c["expect"])))
            self.sel.close()
        return [c["result"] for c in self.conns]


def read_json_lines(path, count, timeout=15):
    """Wait until the file holds at least count JSON lines; return them."""
    def get():
        try:
            lines = [l for l in Path(path).read_text().splitlines() if l.strip()]
        except FileNotFoundError:
            return None
        return lines if len(lines) >= count else None
    lines = wait_until(get, timeout, what="%d line(s) in %s" % (count, path))
    return [json.loads(l) for l in lines]
