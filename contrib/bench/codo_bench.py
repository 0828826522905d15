#!/usr/bin/env python3
"""contrib/bench/codo_bench.py - CODO (traversal: open), the paper's section 7 table 1
reproduced in one run: a connection through openings the agents make in both NAT
boxes' firewalls, side by side with a plain connection through firewalls opened by
hand, with medians and ratios.

Topology: t/netns.py with b2 (a behind NAT box nata; b and b2 behind natb; a public
bridge between the NAT boxes).  Each NAT box's forward chain (netns.NAT_RULES) drops
everything between LAN and public except connections whose conntrack entry carries
the mark 0x5852.

The open path (as t/test_72_codo.py sets it up):
  agent A (xrayd) on nata: `firewall: {table: xrayd, opening_timeout: OPENING_TIMEOUT}`,
      open_pool 198.19.0.1:OPEN_POOL, application `client` (CN=app-1) with
      outbound 198.19.0.2/32:20000-20009 and `traversal: open`;
  agent B on natb: the same firewall block, application `server` (CN=relay-b,
      inbound, `traversal: open`), and `intra` (CN=app-1, outbound 198.18.2.0/24)
      for the client in b2 (part 3).
  A connect() of the client in a under LD_PRELOAD=objs/libxray-preload.so to the
  server's official address 198.19.0.2:200xx: the library binds the socket, hands it
  to its helper, the helper sends OPEN to agent A, A reserves the next port C2 of
  open_pool, sends PEER_OPEN to agent B and, while B works, adds (C1 -> official) with
  SNAT to C2 to its table inet xrayd (one libnftables transaction); B adds the
  5-tuple (C2 -> official) with a DNAT to the server socket's own address (the
  `direct` address its helper registered) and answers OPENED; A answers the helper,
  the library connects its own socket, and the packets cross both boxes marked by
  xrayd's forward chain, straight to the server socket: nothing of XRAY's is in the
  data path.

The by-hand path (no XRAY anywhere): the same client without the preload connects to
the echo server's real address 198.18.2.2:ECHO_PORT.  This script adds to BOTH NAT
boxes a table of its own,
    table inet xrbench {
      chain forward { type filter hook forward priority filter - 20; policy accept;
        ip daddr 198.18.2.2 tcp dport ECHO_PORT ct mark set ct mark | 0x00005852
        ip saddr 198.18.2.2 tcp sport ECHO_PORT ct mark set ct mark | 0x00005852 } }
so the administrator's `ct mark & 0x5852 == 0x5852 accept` passes that port both ways
(nata masquerades a's address on the way out, as for any connection); checked closed
before, open with the table, closed again after it is deleted.  The packets of both
paths cross the same chains (xrayd's forward chain looks each up in its set on both).

In b: one echo server (libxray_bench.py's `serve`, Python, a thread per connection)
under the preload on 198.18.2.2:ECHO_PORT: its listen() registers it with agent B
(getsockname() then gives the official address).  It serves both paths: the open
path through its helper's hand-over, the by-hand path and b2's clients at its real
address directly.  Requests: b"E" + u64 n (echo n bytes) or b"S" + u64 n (sink n,
answer the u64 count).

Clients: this file's `client`, one persistent Python process per path and host (so
Python's start-up is never timed), each making many connections on the orders of this
script (JSON lines on stdin/stdout); socket.create_connection(addr, 30) as an
unmodified program would.  Every client process first makes WARMUP connections, not
counted (the preload's first one starts its helper and its TLS session with the
agent).

Measurements, the paths interleaved, all bounded in count and time (PHASE_SECS each):
  1. inter, a -> b: N_CONN connections per path in blocks of BLOCK, the paths
     alternating block by block (ABBA order): connect() returning, and connect + a
     1 KiB echo; the open path against its official address, the by-hand path
     against 198.18.2.2:ECHO_PORT.  Per block the difference of the medians; the
     table gives the median of the blocks' differences (min..max).
  2. data: DATA_REPS connections per path (alternating), each 100 sequential round
     trips of 10,000 bytes (the paper's 100 x 10 KB echo; DATA_ROUNDS x DATA_SIZE),
     timed from the first send to the last byte back, the connect not included; then
     BULK_REPS transfers of BULK_BYTES one way (sink, timed to its answer).
  3. intra (CODO table 1 "Intra"): the same client in b2 (network B), with and
     without the preload, to b's local address 198.18.2.2:ECHO_PORT (the helper learns
     from agent B that it is direct, the library caches that for 10 s); as part 1.
  4. concurrency (CODO fig. 7): two client processes in a per path, CONC connections
     each at once (threads waiting on one start instant, shared through
     CLOCK_MONOTONIC), each connect + 1 KiB echo, held open until all of the
     process's are done; the time from the start instant until the last of the 2 x
     CONC echoes, CONC_REPS times per path, alternating, after one uncounted round per
     path.  Both preloaded processes share a's one helper, as any two programs of one
     user with one client configuration do.
  5. where an opening's time goes: per open connection of part 1, the client's
     wall-clock start and end of connect() against the agents' info log lines
     ("opened ... in table inet xrayd", ms stamps): B's opening, A's opening (matched
     by a's port and the public port A reserved); the same for every connection of
     the open concurrency runs, from the start instant; the CPU the agents and
     helpers used per open connection of part 1 (/proc, whole ticks); and
     libnftables itself, timed in nata through ctypes on a scratch table of the same
     shape (no chains): NFT_K "add element" transactions of the agent's client-side
     form (open4 + snat4), into an empty set and into one holding NFT_FILL elements,
     and the `nft` command line doing the same (process start included).

Each open connection makes set elements that live OPENING_TIMEOUT and takes the next
port of OPEN_POOL in turn; the pool must outnumber the run's open connections (the
script checks), or a port would come round while conntrack still holds its TIME_WAIT.

Results: a table (also summary.txt) and raw.json in BENCH_OUT (default
/tmp/xrayd-bench-codo.STAMP), the agents' configurations and logs, the helpers' logs
and every process's stderr in logs/.  Needs root, `ip netns`, nft, libnftables.so.1;
Python's stdlib only (plus t/netns.py, t/tls_helpers.py).  See README.md.
"""

import ctypes
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TDIR = ROOT / "t"
sys.path.insert(0, str(TDIR))
sys.path.insert(0, str(HERE))
import xray_bench  # noqa: E402
from xray_bench import (run_bench, cpu_seconds, env_int, fmt, hp, json_lines,  # noqa: E402
                        log, log_digest, pct, ratio, wait_for)
import libxray_bench  # noqa: E402
from libxray_bench import cmd_serve, median, pids_by_cmdline, read_exact  # noqa: E402

THIS = str(Path(__file__).resolve())
PY = "/usr/bin/python3"
NFT = "/usr/sbin/nft"

SERVER_IP = "198.18.2.2"
ECHO_PORT = 5001
AGENT_PORT = 7000
MARK = 0x5852
BENCH_TABLE = "xrbench"
PROBE_TABLE = "xrbench_probe"
PAPER_CONN = (27.3, 0.54)   # CODO §7 table 1: ms per connection, CODO vs direct
ECHO_BYTES = 1024


# ---- the client (a or b2; a persistent process, the same code on every path) ------------

def _conns(addr, req, timeout):
    """n sequential connections: connect() alone, then a 1 KiB echo, close."""
    block = os.urandom(ECHO_BYTES)
    msg = b"E" + struct.pack(">Q", len(block)) + block
    res = {"conn_ms": [], "echo_ms": [], "wall0": [], "wall1": [], "lport": [], "errors": [],
           "attempted": 0, "ok": 0}
    deadline = time.monotonic() + req["secs"]
    for i in range(req["n"]):
        if time.monotonic() > deadline:
            res["errors"].append("time bound (%ds) after %d connections" % (req["secs"], i))
            break
        res["attempted"] += 1
        s = None
        try:
            w0 = time.time()
            t0 = time.perf_counter()
            s = socket.create_connection(addr, timeout)
            t1 = time.perf_counter()
            w1 = time.time()
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(msg)
            got = read_exact(s, len(block))
            t2 = time.perf_counter()
            if got != block:
                raise RuntimeError("echo differs (%s bytes back)" % (None if got is None
                                                                     else len(got)))
            res["conn_ms"].append((t1 - t0) * 1e3)
            res["echo_ms"].append((t2 - t0) * 1e3)
            res["wall0"].append(w0)
            res["wall1"].append(w1)
            res["lport"].append(s.getsockname()[1])
            res["ok"] += 1
        except Exception as e:  # noqa: BLE001 - recorded
            res["errors"].append("connection %d: %s: %s" % (i, type(e).__name__, e))
        finally:
            if s is not None:
                s.close()
    return res


def _data(addr, req, timeout):
    """One connection: `rounds` sequential echoes of `size` bytes, timed from the first
    send to the last byte back (the connect is not timed)."""
    size, rounds = req["size"], req["rounds"]
    block = os.urandom(size)
    msg = b"E" + struct.pack(">Q", size) + block
    s = socket.create_connection(addr, timeout)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(max(30, req["secs"]))
        rt = []
        bad = 0
        t0 = time.perf_counter()
        for _ in range(rounds):
            a = time.perf_counter()
            s.sendall(msg)
            got = read_exact(s, size)
            rt.append((time.perf_counter() - a) * 1e3)
            if got != block:
                bad += 1
                if got is None:
                    break
        total = (time.perf_counter() - t0) * 1e3
    finally:
        s.close()
    if bad:
        raise RuntimeError("%d of %d echoes differ" % (bad, rounds))
    return {"total_ms": total, "rt_ms": rt}


def _bulk(addr, req, timeout):
    """`bytes` one way to the sink, timed to its answer."""
    n = req["bytes"]
    chunk = memoryview(os.urandom(256 * 1024))
    s = socket.create_connection(addr, timeout)
    try:
        s.settimeout(max(60, req["secs"]))
        c0 = time.process_time()
        t0 = time.perf_counter()
        s.sendall(b"S" + struct.pack(">Q", n))
        left = n
        while left > 0:
            k = min(left, len(chunk))
            s.sendall(chunk[:k])
            left -= k
        ans = read_exact(s, 8)
        secs = time.perf_counter() - t0
    finally:
        s.close()
    got = None if ans is None else struct.unpack(">Q", ans)[0]
    if got != n:
        raise RuntimeError("the sink got %s of %d bytes" % (got, n))
    return {"secs": secs, "cpu_s": time.process_time() - c0}


def _conc(addr, req, timeout):
    """k connections at once: k threads wait for the instant go_at (CLOCK_MONOTONIC, the
    same in every process of the machine), then each connects and echoes 1 KiB; all are
    held open until the last is done."""
    k, go_at = req["k"], req["go_at"]
    block = os.urandom(ECHO_BYTES)
    msg = b"E" + struct.pack(">Q", len(block)) + block
    start = threading.Event()
    done = threading.Event()
    lock = threading.Lock()
    res = {"conn_at": [], "done_at": [], "lport": [], "errors": [], "ok": 0, "attempted": k}
    socks = []
    left = [k]

    def one(i):
        s = None
        try:
            start.wait()
            s = socket.create_connection(addr, timeout)
            tc = time.monotonic()
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(msg)
            got = read_exact(s, len(block))
            te = time.monotonic()
            if got != block:
                raise RuntimeError("echo differs")
            with lock:
                res["conn_at"].append((tc - go_at) * 1e3)
                res["done_at"].append((te - go_at) * 1e3)
                res["lport"].append(s.getsockname()[1])
                res["ok"] += 1
                socks.append(s)
                s = None
        except Exception as e:  # noqa: BLE001
            with lock:
                res["errors"].append("connection %d: %s: %s" % (i, type(e).__name__, e))
        finally:
            if s is not None:
                s.close()
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    done.set()
            done.wait(timeout + 10)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(k)]
    for th in threads:
        th.start()
    wait = go_at - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    res["late_ms"] = (time.monotonic() - go_at) * 1e3
    res["go_wall"] = time.time() - res["late_ms"] / 1e3   # go_at on the wall clock
    start.set()
    done.wait(timeout + 30)
    for th in threads:
        th.join(5)
    for s in socks:
        s.close()
    if left[0] > 0:
        res["errors"].append("%d connection(s) still pending at the time bound" % left[0])
    return res


def cmd_client(cfg):
    """A persistent client: one JSON request per stdin line ({"op": conns | data | bulk |
    conc | quit, ...}), one JSON answer per stdout line."""
    addr = hp(cfg["to"])
    timeout = cfg.get("timeout", 30)
    ops = {"conns": _conns, "data": _data, "bulk": _bulk, "conc": _conc}
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req["op"] == "quit":
            break
        try:
            out = ops[req["op"]](addr, req, timeout)
        except Exception as e:  # noqa: BLE001 - the orchestrator records it
            out = {"fatal": "%s: %s" % (type(e).__name__, e)}
        print(json.dumps(out), flush=True)
    return None


# ---- libnftables timing (in a NAT box's namespace) ----------------------------------------

def cmd_nfttime(cfg):
    """Time libnftables transactions of the agent's form (fw_nft.c: one context, output
    and errors buffered, the client side's open4 + snat4 elements with a timeout in
    one buffer) on a scratch table of the same set and map types, without chains; then
    the nft command line doing the same (a process per command)."""
    lib = ctypes.CDLL("libnftables.so.1")
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    ctx = lib.nft_ctx_new(0)
    lib.nft_ctx_buffer_output(ctx)
    lib.nft_ctx_buffer_error(ctx)
    tbl = cfg["table"]
    key = "ipv4_addr . ipv4_addr . inet_proto . inet_service . inet_service"

    def run(cmd):
        if lib.nft_run_cmd_from_buffer(ctx, cmd.encode()) != 0:
            raise RuntimeError("nft: %s: %s" % (cmd.strip()[:120],
                                                (lib.nft_ctx_get_error_buffer(ctx) or b"")
                                                .decode(errors="replace").strip()[:300]))

    def elem(i, tmo):
        a, b = divmod(i, 60000)
        k = "198.18.1.2 . 198.19.0.2 . tcp . %d . %d" % (1024 + b, 20000 + a % 10)
        return ("add element inet %s open4 { %s timeout %s }\n"
                "add element inet %s snat4 { %s timeout %s : 198.19.0.1 . %d }\n"
                % (tbl, k, tmo, tbl, k, tmo, 21000 + i % 4000))

    out = {"k": cfg["k"], "fill": cfg["fill"]}
    run("add table inet %s\ndelete table inet %s\ntable inet %s {\n"
        " set open4 { type %s; flags timeout; counter; }\n"
        " map dnat4 { type %s : ipv4_addr . inet_service; flags timeout; }\n"
        " map snat4 { type %s : ipv4_addr . inet_service; flags timeout; }\n}\n"
        % (tbl, tbl, tbl, key, key, key))
    try:
        def series(first, k):
            ts = []
            for i in range(first, first + k):
                t0 = time.perf_counter()
                run(elem(i, cfg["timeout"]))
                ts.append((time.perf_counter() - t0) * 1e3)
            return ts
        out["lib_empty_ms"] = series(0, cfg["k"])
        run("flush set inet %s open4\nflush map inet %s snat4\n" % (tbl, tbl))
        # fill: long-lived elements, many per transaction
        n, step = 0, 500
        while n < cfg["fill"]:
            run("".join(elem(100000 + j, "600s") for j in range(n, min(cfg["fill"], n + step))))
            n += step
        out["lib_full_ms"] = series(0, cfg["k"])
        # the command line: a process and a context per command
        cli = []
        for i in range(cfg["cli_k"]):
            e = elem(200000 + i, cfg["timeout"]).splitlines()[0].split()
            t0 = time.perf_counter()
            r = subprocess.run([NFT, *e], capture_output=True, text=True, timeout=20)
            cli.append((time.perf_counter() - t0) * 1e3)
            if r.returncode != 0:
                raise RuntimeError("nft %s: %s" % (" ".join(e), r.stderr.strip()[:300]))
        out["cli_ms"] = cli
        t0 = time.perf_counter()
        r = subprocess.run([NFT, "list", "tables"], capture_output=True, text=True, timeout=20)
        out["cli_list_tables_ms"] = (time.perf_counter() - t0) * 1e3
    finally:
        run("delete table inet %s\n" % tbl)
        lib.nft_ctx_free(ctx)
    return out


# ---- the orchestrator (host namespace, root) ----------------------------------------------

def agent_conf(t, pki, d, me, opening_timeout, pool):
    """Agent `me` as t/test_72_codo.py's _agents() writes it (the firewall block, app-1
    crossing by openings, relay-b serving through openings), plus `intra` on agent B
    for the client in b2, and open_pool `pool` on agent A."""
    other = "b" if me == "a" else "a"
    lan = "198.18.1.0/24" if me == "a" else "198.18.2.0/24"
    my_pub, other_pub = t.pub_addr("nat" + me), t.pub_addr("nat" + other)
    if me == "a":
        extra = '  open_pool: ["%s:%s"]\n' % (my_pub, pool)
        apps = """
  - name: client
    match: ["CN=app-1"]
    outbound: ["%s/32:20000-20009"]
    traversal: open
""" % other_pub
    else:
        extra = ""
        apps = """
  - name: server
    match: ["CN=relay-b"]
    inbound: on
    traversal: open
  - name: intra
    match: ["CN=app-1"]
    outbound: ["198.18.2.0/24"]
"""
    return xray_bench.agent_conf(
        t, pki, d, me, apps=apps, agent_extra=extra,
        main_extra="firewall:\n  table: xrayd\n  opening_timeout: %s\n" % opening_timeout)


def pool_size(pool):
    lo, hi = (int(x) for x in pool.split("-"))
    if not 1024 <= lo <= hi <= 65535:
        raise ValueError("OPEN_POOL: expected LO-HI, 1024 <= LO <= HI <= 65535: %r" % pool)
    return hi - lo + 1


def duration_ms(s):
    m = re.fullmatch(r"(\d+)(ms|s|m)", s.strip())
    if not m:
        raise ValueError("OPENING_TIMEOUT: expected e.g. 5s or 500ms: %r" % s)
    return int(m.group(1)) * {"ms": 1, "s": 1000, "m": 60000}[m.group(2)]


def bounded(name, default, lo, hi):
    v = env_int(name, default)
    if not lo <= v <= hi:
        raise ValueError("%s=%d: expected %d..%d" % (name, v, lo, hi))
    return v


class Client:
    """A persistent `client` process in a namespace, driven by JSON lines."""

    def __init__(self, bench, t, role, name, to, env, preload):
        self.name, self.role, self.preload = name, role, preload
        argv = [PY, THIS, "client", json.dumps({"to": to, "timeout": 30})]
        self.p, self.errf = bench.start(t, role, name, argv, env=env, preload=preload,
                                        pipes=True)
        self.buf = b""
        hello = self.recv(60)
        if "ready" not in hello:
            raise RuntimeError("client %s did not start: %s" % (name, hello))

    def send(self, req):
        self.p.stdin.write((json.dumps(req) + "\n").encode())
        self.p.stdin.flush()

    def recv(self, timeout):
        deadline = time.monotonic() + timeout
        fd = self.p.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("client %s: no answer within %.0f s" % (self.name, timeout))
            r, _w, _x = select.select([fd], [], [], left)
            if r:
                d = os.read(fd, 65536)
                if not d:
                    raise RuntimeError("client %s exited (rc %s): %s" % (
                        self.name, self.p.poll(), self.errf.read_text(errors="replace")[-1500:]))
                self.buf += d
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, req, timeout):
        self.send(req)
        return self.recv(timeout)

    def quit(self):
        try:
            self.send({"op": "quit"})
            self.p.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass


class Bench(libxray_bench.Bench):
    """The orchestrator; its plumbing (status, counters, CPU, logs) is libxray_bench's."""

    def __init__(self):
        self.t_begin = time.monotonic()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.out = Path(os.environ.get("BENCH_OUT") or "/tmp/xrayd-bench-codo.%s" % stamp)
        self.n_conn = bounded("N_CONN", 200, 2, 2000)
        self.block = bounded("BLOCK", 10, 1, 200)
        self.warmup = bounded("WARMUP", 5, 1, 50)
        self.data_reps = bounded("DATA_REPS", 5, 0, 100)
        self.data_rounds = bounded("DATA_ROUNDS", 100, 1, 10000)
        self.data_size = bounded("DATA_SIZE", 10000, 1, 1 << 20)
        self.bulk_bytes = bounded("BULK_BYTES", 50_000_000, 0, 2_000_000_000)
        self.bulk_reps = bounded("BULK_REPS", 3, 0, 20)
        self.conc = bounded("CONC", 100, 1, 500)
        self.conc_reps = bounded("CONC_REPS", 3, 0, 20)
        self.nft_k = bounded("NFT_K", 200, 0, 5000)
        self.nft_fill = bounded("NFT_FILL", 2000, 0, 20000)
        self.phase_secs = bounded("PHASE_SECS", 180, 10, 3600)
        self.opening_timeout = os.environ.get("OPENING_TIMEOUT", "5s")
        self.open_pool = os.environ.get("OPEN_POOL", "21000-24999")
        self.tests = os.environ.get("TESTS", "inter data intra conc nft").split()
        unknown = set(self.tests) - {"inter", "data", "intra", "conc", "nft"}
        if unknown:
            raise ValueError("TESTS: unknown %s (inter data intra conc nft)" % " ".join(unknown))
        self.xrayd_orig = Path(os.environ.get("XRAYD_BIN") or ROOT / "objs" / "xrayd")
        self.xray = Path(os.environ.get("XRAY_BIN") or self.xrayd_orig.parent / "xray")
        self.preload = Path(os.environ.get("PRELOAD") or self.xrayd_orig.parent /
                            "libxray-preload.so")
        self.raw = {}
        self.notes = []
        self.procs = {}
        self.clients = {}
        self.homes_tmp = None
        duration_ms(self.opening_timeout)
        # every open connection takes the next port of open_pool: the run's must not
        # come round (a port's TIME_WAIT lives 120 s in conntrack)
        self.planned_open = (2 * self.warmup + self.n_conn * ("inter" in self.tests)
                             + (self.data_reps + self.bulk_reps) * ("data" in self.tests)
                             + 2 * self.conc * (self.conc_reps + 1) * ("conc" in self.tests))
        if self.planned_open > pool_size(self.open_pool) - 50:
            raise ValueError("%d open connections planned, OPEN_POOL=%s has %d ports: give "
                             "it more or lower N_CONN / CONC / CONC_REPS"
                             % (self.planned_open, self.open_pool, pool_size(self.open_pool)))

    # -- helpers --

    def role_env(self, t, role):
        """The environment of an XRAY application in `role` (t/test_68_libxray.py's
        _env()): a (app-1, agent A), b (relay-b, agent B), b2 (app-1, agent B)."""
        agent = "a" if role == "a" else "b"
        cert = "relay-b" if role == "b" else "app-1"
        home = self.homes / ("home-" + role)
        (home / "run").mkdir(parents=True, exist_ok=True)
        os.chmod(home / "run", 0o700)
        return {"HOME": str(home), "XDG_RUNTIME_DIR": str(home / "run"),
                "XRAY_AGENT": "%s:%d" % (t.addr("nat" + agent), AGENT_PORT),
                "XRAY_AGENT_NAME": "agent-" + agent,
                "XRAY_CERT": self.pki.crt(cert), "XRAY_KEY": self.pki.key(cert),
                "XRAY_CA": self.pki.ca, "XRAY_HELPER_BIN": str(self.xray)}

    def start(self, t, role, name, argv, env=None, preload=False, pipes=False):
        """A long-running process in `role`, stderr to logs/NAME.stderr; under the
        preload through env(1), so that `ip netns exec` itself is not preloaded."""
        if preload:
            argv = ["/usr/bin/env", "LD_PRELOAD=%s" % self.preload, *argv]
        errf = self.out / "logs" / (name + ".stderr")
        kw = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE} if pipes else {}
        p = t.popen(role, argv, env=self.full_env(env or {}), stderr=open(errf, "w"), **kw)
        self.procs[name] = p
        return p, errf

    def open_by_hand(self, t):
        rules = ("table inet %s {\n chain forward { type filter hook forward priority "
                 "filter - 20; policy accept;\n"
                 "  ip daddr %s tcp dport %d ct mark set ct mark | 0x%08x\n"
                 "  ip saddr %s tcp sport %d ct mark set ct mark | 0x%08x\n }\n}\n"
                 % (BENCH_TABLE, SERVER_IP, ECHO_PORT, MARK, SERVER_IP, ECHO_PORT, MARK))
        self.raw["by_hand_rules"] = rules
        for box in ("nata", "natb"):
            t.run(box, [NFT, "-f", "-"], input=rules, check=True, timeout=20)

    def close_by_hand(self, t):
        for box in ("nata", "natb"):
            t.run(box, [NFT, "delete", "table", "inet", BENCH_TABLE], timeout=20)

    @staticmethod
    def delta(c0, c1):
        keys = ("connects", "direct", "relayed", "openings_made", "openings_failed", "refused",
                "full_handshakes", "resumed_handshakes")
        return {me: {k: c1[me].get(k, 0) - c0[me].get(k, 0) for k in keys if k in c1[me]}
                for me in c1}

    def call(self, c, req, what):
        """A client's answer; a failed or silent client is recorded, not the end."""
        try:
            out = c.call(req, req.get("secs", 60) + 60)
        except (RuntimeError, ValueError, OSError) as e:
            out = {"fatal": "%s: %s" % (type(e).__name__, e)}
        if "fatal" in out:
            self.notes.append("%s (%s): %s" % (what, c.name, out["fatal"][:300]))
        return out

    # -- the run --

    def run(self):
        import netns
        why = netns.unavailable()
        if why:
            print("codo_bench: cannot run: %s" % why, file=sys.stderr)
            return 2
        for b in (self.xrayd_orig, self.xray, self.preload):
            if not os.path.exists(b):
                print("codo_bench: %s not found (build first: make -j2)" % b, file=sys.stderr)
                return 2
        import tls_helpers as th
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        bindir = self.out / "bin"
        bindir.mkdir(exist_ok=True)
        log("output: %s" % self.out)
        xrayd = bindir / "xrayd"
        for src, dst in ((self.xrayd_orig, xrayd), (self.xray, bindir / "xray"),
                         (self.preload, bindir / "libxray-preload.so")):
            shutil.copy2(src, dst)
        self.xray, self.preload = bindir / "xray", bindir / "libxray-preload.so"
        self.homes = self.out
        if len(str(self.out)) > 60:   # the helpers' unix sockets live under the homes
            self.homes_tmp = Path(tempfile.mkdtemp(prefix="xcb-", dir="/tmp"))
            self.homes = self.homes_tmp
        ver = subprocess.run([str(xrayd), "-V"], capture_output=True, text=True, timeout=20)
        vtext = (ver.stdout + ver.stderr).strip()
        self.env = {
            "date": time.strftime("%F %T UTC", time.gmtime()),
            "host": "%d cpus, kernel %s" % (os.cpu_count(), os.uname().release),
            "xrayd": "%s %s (sha256 %s)" % (self.xrayd_orig, vtext.splitlines()[0] if vtext
                                           else "?",
                                           hashlib.sha256(xrayd.read_bytes()).hexdigest()[:12]),
            "preload": "sha256 %s, xray sha256 %s" % (
                hashlib.sha256(self.preload.read_bytes()).hexdigest()[:12],
                hashlib.sha256(self.xray.read_bytes()).hexdigest()[:12]),
            "python": "%s, %s" % (sys.version.split()[0], ssl.OPENSSL_VERSION),
            "nft": subprocess.run([NFT, "--version"], capture_output=True, text=True,
                                  timeout=10).stdout.strip(),
            "load_start": open("/proc/loadavg").read().split()[:3],
            "settings": dict(N_CONN=self.n_conn, BLOCK=self.block, WARMUP=self.warmup,
                             DATA_REPS=self.data_reps, DATA_ROUNDS=self.data_rounds,
                             DATA_SIZE=self.data_size, BULK_BYTES=self.bulk_bytes,
                             BULK_REPS=self.bulk_reps, CONC=self.conc,
                             CONC_REPS=self.conc_reps, NFT_K=self.nft_k,
                             NFT_FILL=self.nft_fill, PHASE_SECS=self.phase_secs,
                             OPENING_TIMEOUT=self.opening_timeout, OPEN_POOL=self.open_pool,
                             TESTS=self.tests, planned_open=self.planned_open),
        }
        self.raw["env"] = self.env
        log("certificates (xray pki)")
        self.pki = th.Pki(self.out / "pki")
        for name in ("agent-a", "agent-b"):
            self.pki._issue(self.pki.ca1, name, "--both", "--san", "DNS:" + name)
        gone = netns.sweep_stale()
        if gone:
            log("removed stale namespaces of dead runs: %s" % " ".join(gone))
        t = netns.Topology(b2=True)
        try:
            t.up()
            log("topology %s up (with b2)" % t.prefix)
            rc = self._run(t, xrayd)
        finally:
            for c in self.clients.values():
                if c.p.poll() is None:
                    c.p.kill()
            self.collect_logs()
            t.down()
            if self.homes_tmp is not None:
                shutil.rmtree(self.homes_tmp, ignore_errors=True)
        return rc

    def _run(self, t, xrayd):
        self.adir, self.masters = {}, {}
        for me in ("a", "b"):
            d = self.out / ("agent-" + me)
            d.mkdir(exist_ok=True)
            self.adir[me] = d
            conf = agent_conf(t, self.pki, d, me, self.opening_timeout, self.open_pool)
            r = subprocess.run([str(xrayd), "-t", "-c", str(conf)], capture_output=True,
                               text=True, timeout=20)
            if r.returncode != 0:
                raise RuntimeError("agent %s: config test failed: %s" % (me, r.stderr or r.stdout))
            self.masters[me] = t.popen("nat" + me, [str(xrayd), "-c", str(conf)],
                                       stderr=open(d / "stderr.log", "w"))
        for me, d in self.adir.items():
            def up():
                if self.masters[me].poll() is not None:
                    raise RuntimeError("agent %s exited: %s" % (me, (d / "stderr.log").read_text()))
                text = (d / "error.log").read_text() if (d / "error.log").exists() else ""
                return "agent: serving on" in text and "table inet xrayd made anew" in text
            wait_for(up, 30, "agent %s (serving, its firewall table made)" % me)
        log("agents up: A on nata, B on natb, each with table inet xrayd "
            "(opening_timeout %s, open_pool %s)" % (self.opening_timeout, self.open_pool))
        self.envs = {r: self.role_env(t, r) for r in ("a", "b", "b2")}

        srv_out = self.out / "logs" / "serve.jsonl"
        srv, srv_err = self.start(t, "b", "serve", [PY, THIS, "serve", json.dumps(
            {"host": SERVER_IP, "port": ECHO_PORT, "out": str(srv_out)})],
            env=self.envs["b"], preload=True)

        def listening():
            if srv.poll() is not None:
                raise RuntimeError("the echo server in b exited: %s" % srv_err.read_text()[-2000:])
            return next((j["listening"] for j in json_lines(srv_out) if "listening" in j), None)
        official = wait_for(listening, 40, "the echo server in b")
        if not official.startswith(t.pub_addr("natb") + ":"):
            raise RuntimeError("the echo server in b is not fully bound: getsockname() after "
                               "listen() gave %s, not an official address of agent B" % official)
        self.official = official
        self.real = "%s:%d" % (SERVER_IP, ECHO_PORT)
        log("echo server in b: official %s, real %s" % (official, self.real))

        fw = {"before": self.port_state(t, "a", SERVER_IP, ECHO_PORT)}
        if not fw["before"].startswith("closed"):
            raise RuntimeError("a -> %s is open before the firewalls were touched: %s"
                               % (self.real, fw["before"]))
        try:
            self.open_by_hand(t)
            fw["opened"] = self.port_state(t, "a", SERVER_IP, ECHO_PORT)
            if fw["opened"] != "open":
                raise RuntimeError("a -> %s still closed with table inet %s in: %s"
                                   % (self.real, BENCH_TABLE, fw["opened"]))
            log("by hand: table inet %s on nata and natb marks %s both ways (before: closed)"
                % (BENCH_TABLE, self.real))
            self.phases(t)
        finally:
            self.close_by_hand(t)
            fw["after"] = self.port_state(t, "a", SERVER_IP, ECHO_PORT)
            self.raw["firewall_by_hand"] = fw
        if not fw["after"].startswith("closed"):
            self.notes.append("a -> %s still open after table inet %s was deleted: %s"
                              % (self.real, BENCH_TABLE, fw["after"]))
        if "nft" in self.tests and self.nft_k > 0:
            self.nft_timing(t)
        for c in self.clients.values():
            c.quit()
        for name, p in self.procs.items():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in self.procs.items():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                self.notes.append("%s did not stop within 10 s of SIGTERM" % name)
        self.raw["serve_stats"] = next((j["stats"] for j in json_lines(srv_out)
                                        if "stats" in j), None)
        self.raw["agent_status_end"] = {me: self.status(t, me) for me in ("a", "b")}
        for me, p in self.masters.items():
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                self.notes.append("agent %s did not stop within 20 s of SIGTERM" % me)
        self.collect_logs()
        self.save()
        return self.report()

    def client(self, t, key, role, to, preload):
        """Start (once) the persistent client `key` and warm it up."""
        if key in self.clients:
            return self.clients[key]
        env = self.envs[role] if preload else None
        c = Client(self, t, role, key, to, env, preload)
        self.clients[key] = c
        w = self.call(c, {"op": "conns", "n": self.warmup, "secs": 60}, "warm-up")
        self.raw.setdefault("warmup", {})[key] = w
        if w.get("ok", 0) < 1:
            raise RuntimeError("client %s: no warm-up connection got through: %s" % (
                key, "; ".join(w.get("errors", [])[:3]) or w.get("fatal")))
        log("client %s in %s (%s) to %s: warm-up %s ms (first %s)" % (
            key, role, "preload" if preload else "plain", to,
            fmt(median(w["echo_ms"]), "%.2f"), fmt((w["echo_ms"] or [None])[0], "%.1f")))
        return c

    def blocks(self, key, pair):
        """N_CONN connections per path, in blocks of BLOCK, the paths ABBA."""
        res = {name: [] for name, _c in pair}
        deadline = time.monotonic() + self.phase_secs
        nblocks = -(-self.n_conn // self.block)
        for i in range(nblocks):
            n = min(self.block, self.n_conn - i * self.block)
            order = pair if i % 2 == 0 else list(reversed(pair))
            left = int(deadline - time.monotonic())
            if left <= 0:
                self.notes.append("%s: time bound (PHASE_SECS=%d) after %d block(s)"
                                  % (key, self.phase_secs, i))
                break
            for name, c in order:
                out = self.call(c, {"op": "conns", "n": n, "secs": max(5, left)}, key)
                out["block"] = i
                res[name].append(out)
        for name, _c in pair:
            rs = res[name]
            log("%s %s: connect %s ms, +echo %s ms (medians), %d/%d ok" % (
                key, name, fmt(median([x for r in rs for x in r.get("conn_ms", [])]), "%.3f"),
                fmt(median([x for r in rs for x in r.get("echo_ms", [])]), "%.3f"),
                sum(r.get("ok", 0) for r in rs), sum(r.get("attempted", 0) for r in rs)))
        return res

    def phases(self, t):
        a_open = self.client(t, "a-open", "a", self.official, True)
        a_hand = self.client(t, "a-hand", "a", self.real, False)
        pair = [("open", a_open), ("by_hand", a_hand)]
        if "inter" in self.tests:
            log("1: a -> b, %d connections per path, blocks of %d, interleaved"
                % (self.n_conn, self.block))
            c0, cpu0 = self.counters(t), self.cpu_snapshot()
            r = self.blocks("inter", pair)
            cpu1, c1 = self.cpu_snapshot(), self.counters(t)
            r["agent_counters_delta"] = self.delta(c0, c1)
            r["cpu_s"] = {k: cpu1[k] - cpu0[k] for k in cpu0}
            self.raw["inter"] = r
            self.save()
        if "data" in self.tests:
            log("2: data, %d x (%d round trips of %d B) per path, then %d x %d B one way" % (
                self.data_reps, self.data_rounds, self.data_size, self.bulk_reps,
                self.bulk_bytes))
            r = {"open": [], "by_hand": [], "bulk_open": [], "bulk_by_hand": []}
            deadline = time.monotonic() + self.phase_secs
            for i in range(self.data_reps):
                for name, c in (pair if i % 2 == 0 else list(reversed(pair))):
                    left = max(10, int(deadline - time.monotonic()))
                    out = self.call(c, {"op": "data", "rounds": self.data_rounds,
                                        "size": self.data_size, "secs": left}, "data")
                    out["rep"] = i
                    r[name].append(out)
            cpu0 = self.cpu_snapshot()
            cpu = {"open": {}, "by_hand": {}}
            for i in range(self.bulk_reps if self.bulk_bytes > 0 else 0):
                for name, c in (pair if i % 2 == 0 else list(reversed(pair))):
                    left = max(20, int(deadline - time.monotonic()))
                    s0 = self.cpu_snapshot()
                    out = self.call(c, {"op": "bulk", "bytes": self.bulk_bytes, "secs": left},
                                    "bulk")
                    s1 = self.cpu_snapshot()
                    for k in s0:
                        cpu[name][k] = cpu[name].get(k, 0) + s1[k] - s0[k]
                    cpu[name]["client"] = cpu[name].get("client", 0) + out.get("cpu_s", 0)
                    out["rep"] = i
                    r["bulk_" + name].append(out)
            del cpu0
            r["bulk_cpu_s"] = cpu
            for name in ("open", "by_hand"):
                log("data %s: %d x %d B echo %s ms; %d B one way %s s (medians)" % (
                    name, self.data_rounds, self.data_size,
                    fmt(median([x["total_ms"] for x in r[name] if "total_ms" in x]), "%.1f"),
                    self.bulk_bytes,
                    fmt(median([x["secs"] for x in r["bulk_" + name] if "secs" in x]), "%.3f")))
            self.raw["data"] = r
            self.save()
        if "intra" in self.tests:
            log("3: intra, b2 -> b %s with and without the preload" % self.real)
            b2_pre = self.client(t, "b2-preload", "b2", self.real, True)
            b2_plain = self.client(t, "b2-plain", "b2", self.real, False)
            c0 = self.counters(t)
            r = self.blocks("intra", [("preload", b2_pre), ("plain", b2_plain)])
            r["agent_counters_delta"] = self.delta(c0, self.counters(t))
            self.raw["intra"] = r
            self.save()
        if "conc" in self.tests and self.conc_reps > 0:
            log("4: concurrency, 2 processes x %d connections at once per path, %d reps" % (
                self.conc, self.conc_reps))
            procs = {"open": [a_open, self.client(t, "a-open-2", "a", self.official, True)],
                     "by_hand": [a_hand, self.client(t, "a-hand-2", "a", self.real, False)]}
            c0 = self.counters(t)
            r = {"open": [], "by_hand": [], "warm": {}}
            deadline = time.monotonic() + self.phase_secs
            # one uncounted round per path: the helper's threads, the server's, conntrack
            for i in range(-1, self.conc_reps):
                if time.monotonic() > deadline:
                    self.notes.append("conc: time bound (PHASE_SECS=%d) after %d rep(s)"
                                      % (self.phase_secs, i))
                    break
                order = ["open", "by_hand"] if i % 2 == 0 else ["by_hand", "open"]
                for name in order:
                    run = self.conc_run(procs[name], name)
                    if i < 0:
                        r["warm"][name] = run
                    else:
                        run["rep"] = i
                        r[name].append(run)
                    time.sleep(0.5)
            r["agent_counters_delta"] = self.delta(c0, self.counters(t))
            for name in ("open", "by_hand"):
                log("conc %s: all %d done in %s ms (median of %d), %s" % (
                    name, 2 * self.conc, fmt(median([x["total_ms"] for x in r[name]
                                                     if x["total_ms"] is not None]), "%.1f"),
                    len(r[name]), ", ".join("%d/%d ok" % (x["ok"], x["attempted"])
                                            for x in r[name])))
            self.raw["conc"] = r
            self.save()

    def conc_run(self, procs, name):
        go_at = time.monotonic() + 0.3 + 0.002 * self.conc
        secs = 60
        for c in procs:
            c.send({"op": "conc", "k": self.conc, "go_at": go_at, "secs": secs})
        outs = []
        for c in procs:
            try:
                outs.append(c.recv(secs + 90))
            except (RuntimeError, ValueError, OSError) as e:
                outs.append({"fatal": "%s: %s" % (type(e).__name__, e)})
        run = {"conn_at": [], "done_at": [], "lport": [], "errors": [], "ok": 0,
               "attempted": 2 * self.conc, "late_ms": [], "go_wall": []}
        for o in outs:
            if "fatal" in o:
                run["errors"].append(o["fatal"])
                continue
            for k in ("conn_at", "done_at", "lport", "errors"):
                run[k] += o[k]
            run["ok"] += o["ok"]
            run["late_ms"].append(o["late_ms"])
            run["go_wall"].append(o["go_wall"])
        run["total_ms"] = max(run["done_at"]) if run["ok"] == run["attempted"] else None
        if run["errors"]:
            self.notes.append("conc %s: %d error(s): %s" % (name, len(run["errors"]),
                                                           " | ".join(run["errors"][:3])))
        return run

    def nft_timing(self, t):
        log("5: libnftables in nata: %d add-element transactions, empty and with %d elements"
            % (self.nft_k, self.nft_fill))
        cfg = {"table": PROBE_TABLE, "k": self.nft_k, "fill": self.nft_fill,
               "timeout": "%dms" % duration_ms(self.opening_timeout),
               "cli_k": min(20, self.nft_k)}
        p = t.run("nata", [PY, THIS, "nfttime", json.dumps(cfg)], timeout=300)
        lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
        try:
            self.raw["nft"] = json.loads(lines[-1])
        except (IndexError, ValueError):
            self.notes.append("nft timing failed (rc %d): %s" % (p.returncode, p.stderr[-600:]))
        t.run("nata", [NFT, "delete", "table", "inet", PROBE_TABLE], timeout=20)  # if left
        self.save()

    # -- where an open connection's time goes (the agents' logs) --

    def agent_opens(self):
        """Agent A's and B's "opened" log lines: A's by the client's address, B's by the
        public address A reserved (C2); wall-clock seconds (ms stamps)."""
        pat = re.compile(r"^(\S+)Z \[info\] \d+: (?:\*\d+ )?agent: opened tcp (\S+) -> (\S+) "
                         r"\((as|to) (\S+)\) in table")
        out = {}
        for me in ("a", "b"):
            p = self.adir[me] / "error.log"
            byk = {}
            for ln in p.read_text(errors="replace").splitlines() if p.exists() else []:
                m = pat.match(ln)
                if m:
                    ts = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f")
                    ts = (ts - datetime(1970, 1, 1)).total_seconds()
                    byk.setdefault(m.group(2), []).append((ts, m.group(5)))
            out[me] = byk
        return out

    @staticmethod
    def match_open(opens, lport, w0, w1):
        """(A's stamp, B's stamp) of the open connection from a's port lport whose
        connect() ran from w0 to w1 (wall clock), or None."""
        a = [x for x in opens["a"].get("198.18.1.2:%d" % lport, [])
             if w0 - 0.002 <= x[0] <= w1 + 0.002]
        if not a:
            return None
        ta, c2 = a[0]
        b = [x[0] for x in opens["b"].get(c2, []) if w0 - 0.002 <= x[0] <= ta + 0.002]
        return (ta, b[-1]) if b else None

    def timeline(self, opens):
        """Each open connection of part 1: the client's wall clock at connect() start and
        return against agent B's and agent A's "opened" lines."""
        rows = []
        for blk in (self.raw.get("inter") or {}).get("open", []):
            for w0, w1, lport in zip(blk.get("wall0", []), blk.get("wall1", []),
                                     blk.get("lport", [])):
                m = self.match_open(opens, lport, w0, w1)
                if m:
                    ta, tb = m
                    rows.append({"to_B_opened": (tb - w0) * 1e3, "B_to_A_opened": (ta - tb) * 1e3,
                                 "A_opened_to_return": (w1 - ta) * 1e3,
                                 "total": (w1 - w0) * 1e3})
        return rows

    def conc_timeline(self, opens):
        """Each open concurrency run: from the start instant, when the last (and the
        median) connection was opened by agent B, by agent A, connected, echoed."""
        runs = []
        for run in (self.raw.get("conc") or {}).get("open", []):
            if not run.get("go_wall"):
                continue
            go = min(run["go_wall"])
            tb, ta = [], []
            for lport, ca in zip(run["lport"], run["conn_at"]):
                m = self.match_open(opens, lport, go - 0.01, go + ca / 1e3 + 0.01)
                if m:
                    ta.append((m[0] - go) * 1e3)
                    tb.append((m[1] - go) * 1e3)
            if not ta:
                continue
            runs.append({"matched": len(ta), "B_opened": tb, "A_opened": ta,
                         "connected": run["conn_at"], "echoed": run["done_at"]})
        return runs

    # -- the report --

    def report(self):
        rows = []

        def verdict(ok):
            return "" if ok is None else ("met" if ok else "MISSED")

        def spread(vals, spec):
            vals = [v for v in vals if v is not None]
            return " (%s..%s)" % (spec % min(vals), spec % max(vals)) if len(vals) > 1 else ""

        def pooled(runs, key):
            return [x for run in runs for x in run.get(key, [])]

        def conn_rows(sec, x, base, label, aim_ms):
            d = self.raw.get(sec)
            if not d:
                return
            rx, rb = d[x], d[base]
            for key, what in (("conn_ms", "connect() returning"),
                              ("echo_ms", "connect + 1 KiB echo")):
                mx, mb = median(pooled(rx, key)), median(pooled(rb, key))
                per = [None if median(a.get(key, [])) is None or median(b.get(key, [])) is None
                       else median(a[key]) - median(b[key]) for a, b in zip(rx, rb)]
                per = [v for v in per if v is not None]
                dv = median(per)
                rr = ratio(mx, mb)
                rows.append(("%s: %s, median ms" % (label, what), fmt(mx, "%.3f"),
                             fmt(mb, "%.3f"),
                             "NA" if dv is None else "%+.3f ms%s" % (dv, spread(per, "%+.3f")),
                             fmt(rr, "%.2fx"), "<= +%g ms" % aim_ms,
                             verdict(None if dv is None else dv <= aim_ms)))
                px, pb = pct(pooled(rx, key), 0.9), pct(pooled(rb, key), 0.9)
                rows.append(("%s: %s, p90 ms" % (label, what), fmt(px, "%.3f"), fmt(pb, "%.3f"),
                             "NA" if px is None or pb is None else "%+.3f ms" % (px - pb),
                             fmt(ratio(px, pb), "%.2fx"), "", ""))
            okx, atx = sum(r.get("ok", 0) for r in rx), sum(r.get("attempted", 0) for r in rx)
            okb, atb = sum(r.get("ok", 0) for r in rb), sum(r.get("attempted", 0) for r in rb)
            rows.append(("%s: connections ok / attempted" % label, "%d/%d" % (okx, atx),
                         "%d/%d" % (okb, atb), "", "", "all",
                         verdict(okx == atx and okb == atb and atx > 0)))

        conn_rows("inter", "open", "by_hand", "1 a->b", 2.0)
        d = self.raw.get("data")
        if d:
            tx = [x["total_ms"] for x in d["open"] if "total_ms" in x]
            tb = [x["total_ms"] for x in d["by_hand"] if "total_ms" in x]
            per = [ratio(a.get("total_ms"), b.get("total_ms")) for a, b in
                   zip(d["open"], d["by_hand"])]
            per = [v for v in per if v is not None]
            rr = median(per)
            rows.append(("2 data: %d x %d B echo, one connection, median ms"
                         % (self.data_rounds, self.data_size), fmt(median(tx), "%.2f"),
                         fmt(median(tb), "%.2f"),
                         "NA" if median(tx) is None or median(tb) is None
                         else "%+.2f ms" % (median(tx) - median(tb)),
                         "NA" if rr is None else "%.3fx%s" % (rr, spread(per, "%.3f")),
                         "<= 1.02x", verdict(None if rr is None else rr <= 1.02)))
            rx, rb = pooled(d["open"], "rt_ms"), pooled(d["by_hand"], "rt_ms")
            rows.append(("2 data: one %d B round trip, median / p99 ms" % self.data_size,
                         "%s / %s" % (fmt(median(rx), "%.3f"), fmt(pct(rx, 0.99), "%.3f")),
                         "%s / %s" % (fmt(median(rb), "%.3f"), fmt(pct(rb, 0.99), "%.3f")),
                         "NA" if median(rx) is None or median(rb) is None
                         else "%+.3f ms" % (median(rx) - median(rb)),
                         fmt(ratio(median(rx), median(rb)), "%.3fx"), "", ""))
            bx = [x["secs"] for x in d["bulk_open"] if "secs" in x]
            bb = [x["secs"] for x in d["bulk_by_hand"] if "secs" in x]
            if bx or bb:
                mbx = None if not bx else self.bulk_bytes / median(bx) / 1e6
                mbb = None if not bb else self.bulk_bytes / median(bb) / 1e6
                per = [ratio(b.get("secs"), a.get("secs")) for a, b in
                       zip(d["bulk_open"], d["bulk_by_hand"])]
                per = [v for v in per if v is not None]
                rr = median(per)
                rows.append(("2 bulk: %d B one way, MB/s" % self.bulk_bytes, fmt(mbx, "%.1f"),
                             fmt(mbb, "%.1f"), "",
                             "NA" if rr is None else "%.3fx%s" % (rr, spread(per, "%.3f")),
                             ">= 0.98x", verdict(None if rr is None else rr >= 0.98)))
            nx = len(tx) + len(bx)
            nb = len(tb) + len(bb)
            want = self.data_reps + (self.bulk_reps if self.bulk_bytes > 0 else 0)
            rows.append(("2 data: sessions ok / attempted", "%d/%d" % (nx, want),
                         "%d/%d" % (nb, want), "", "", "all",
                         verdict(nx == want and nb == want)))
        conn_rows("intra", "preload", "plain", "3 b2->b intra", 0.2)
        c = self.raw.get("conc")
        if c:
            tx = [x["total_ms"] for x in c["open"]]
            tb = [x["total_ms"] for x in c["by_hand"]]
            per = [ratio(a, b) for a, b in zip(tx, tb)]
            per = [v for v in per if v is not None]
            rr = median(per)
            mx, mb = median([v for v in tx if v is not None]), median([v for v in tb
                                                                        if v is not None])
            rows.append(("4 conc: 2 x %d at once, all echoed, median ms" % self.conc,
                         fmt(mx, "%.1f"), fmt(mb, "%.1f"),
                         "NA" if mx is None or mb is None else "%+.1f ms" % (mx - mb),
                         "NA" if rr is None else "%.2fx%s" % (rr, spread(per, "%.2f")), "", ""))
            for key, what in (("conn_at", "connected"), ("done_at", "echoed")):
                px, pb = pooled(c["open"], key), pooled(c["by_hand"], key)
                rows.append(("4 conc: per connection, %s at, p50 / p90 ms" % what,
                             "%s / %s" % (fmt(pct(px, 0.5), "%.1f"), fmt(pct(px, 0.9), "%.1f")),
                             "%s / %s" % (fmt(pct(pb, 0.5), "%.1f"), fmt(pct(pb, 0.9), "%.1f")),
                             "", "", "", ""))
            rows.append(("4 conc: connections ok / attempted",
                         "%d/%d" % (sum(x["ok"] for x in c["open"]),
                                    sum(x["attempted"] for x in c["open"])),
                         "%d/%d" % (sum(x["ok"] for x in c["by_hand"]),
                                    sum(x["attempted"] for x in c["by_hand"])), "", "", "all",
                         verdict(all(x["ok"] == x["attempted"] for x in c["open"] + c["by_hand"]))))

        hdr = ("metric", "open path", "by hand", "difference (min..max)", "ratio", "aim", "")
        widths = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(7)]
        lines = ["CODO traversal: open vs firewalls opened by hand (t/netns.py topology)",
                 "xrayd: %s; preload %s" % (self.env["xrayd"], self.env["preload"]),
                 "host: %s; python %s; %s; load at start %s, at end %s" % (
                     self.env["host"], self.env["python"], self.env["nft"],
                     " ".join(self.env["load_start"]),
                     " ".join(open("/proc/loadavg").read().split()[:3])),
                 "settings: " + " ".join("%s=%s" % (k, " ".join(v) if isinstance(v, list) else v)
                                         for k, v in self.env["settings"].items()),
                 "open path: a (preload, app-1, traversal open) -> official %s -> openings on "
                 "nata (SNAT, open_pool) and natb (DNAT to the server's helper) -> echo server "
                 "%s; by hand: the same client without the preload -> %s through table inet "
                 "%s (ct mark for that port) on both NAT boxes" % (
                     self.official, self.real, self.real, BENCH_TABLE),
                 "CODO paper §7 table 1, per connection: %.1f ms (CODO) vs %.2f ms (direct), "
                 "%.0fx; part 3 is b2 -> b with and without the preload" % (
                     PAPER_CONN[0], PAPER_CONN[1], PAPER_CONN[0] / PAPER_CONN[1]),
                 ""]
        for r in [hdr, tuple("-" * w for w in widths)] + rows:
            lines.append(" | ".join(str(r[i]).ljust(widths[i]) if i in (0, 5, 6) else
                                    str(r[i]).rjust(widths[i]) for i in range(7)).rstrip())
        lines.append("")
        lines.append("difference: part 1 and 3 the median of the per-block differences of "
                     "medians (blocks of %d, ABBA), part 2 and 4 of the medians; ratio: open / by "
                     "hand (data, conc: the median of per-rep ratios; bulk: throughput)"
                     % self.block)
        # where the time goes
        opens = self.agent_opens()
        tl = self.timeline(opens)
        self.raw["timeline"] = tl
        if tl:
            def stat(k):
                v = [r[k] for r in tl]
                return "median %.2f, mean %.2f" % (median(v), sum(v) / len(v))
            lines.append("open connect() by the agents' log stamps (ms, %d connections matched; "
                         "stamps are whole ms, so means are the better estimate):" % len(tl))
            lines.append("  client connect() start -> agent B opened (lib, helper, agent A, "
                         "PEER_OPEN, B's nft): %s" % stat("to_B_opened"))
            lines.append("  agent B opened -> agent A opened (A opens while B does: about 0): %s"
                         % stat("B_to_A_opened"))
            lines.append("  agent A opened -> connect() returned (OPENED to the helper, to the "
                         "library, TCP handshake): %s" % stat("A_opened_to_return"))
        ct = self.conc_timeline(opens)
        self.raw["conc_timeline"] = ct
        if ct:
            def last_mid(k):
                return "%s / %s" % (fmt(median([max(r[k]) for r in ct]), "%.1f"),
                                    fmt(median([median(r[k]) for r in ct]), "%.1f"))
            lines.append("open concurrency runs, ms from the start instant, last / median "
                         "connection (median over %d runs, %s of %d connections matched in the "
                         "logs): agent B opened %s, agent A opened %s, connect() returned %s, "
                         "echoed %s" % (len(ct), "/".join(str(r["matched"]) for r in ct),
                                        2 * self.conc, last_mid("B_opened"),
                                        last_mid("A_opened"), last_mid("connected"),
                                        last_mid("echoed")))
        dn = sorted({to for v in opens["b"].values() for _ts, to in v})
        if dn:
            lines.append("agent B's openings DNAT to %s (the echo server itself listens on %s: "
                         "%s)" % (", ".join(dn), self.real,
                                  "the same socket" if dn == [self.real] else
                                  "another socket, the server's helper, which accepts and "
                                  "copies the bytes to the server over a connection of its "
                                  "own"))
        nf = self.raw.get("nft")
        if nf:
            lines.append("libnftables in nata (ctypes, one context, agent's client-side "
                         "transaction open4 + snat4): empty set median %s ms (p90 %s), with %d "
                         "elements median %s ms (p90 %s); the nft command line, same element: "
                         "median %s ms (process start included; `nft list tables` %.1f ms)" % (
                             fmt(median(nf["lib_empty_ms"]), "%.3f"),
                             fmt(pct(nf["lib_empty_ms"], 0.9), "%.3f"), nf["fill"],
                             fmt(median(nf["lib_full_ms"]), "%.3f"),
                             fmt(pct(nf["lib_full_ms"], 0.9), "%.3f"),
                             fmt(median(nf["cli_ms"]), "%.2f"), nf["cli_list_tables_ms"]))
        ir = self.raw.get("inter")
        if ir:
            n_open = sum(r.get("ok", 0) for r in ir["open"])
            cpu = ir.get("cpu_s", {})
            if n_open:
                lines.append("CPU per open connection during part 1 (ms; the by-hand path "
                             "uses none of these): %s" % ", ".join(
                                 "%s %.2f" % (k, v * 1e3 / n_open) for k, v in cpu.items()
                                 if k != "server"))
        for sec in ("inter", "intra", "conc"):
            dd = (self.raw.get(sec) or {}).get("agent_counters_delta")
            if dd:
                lines.append("agent counters during %s: %s" % (sec, "; ".join(
                    "%s %s" % (me.upper(), ", ".join("%s +%d" % kv for kv in v.items() if kv[1])
                               or "-") for me, v in dd.items())))
        bc = (self.raw.get("data") or {}).get("bulk_cpu_s")
        if bc and self.bulk_reps and self.bulk_bytes:
            gb = self.bulk_bytes * self.bulk_reps / 1e9
            for name in ("open", "by_hand"):
                lines.append("bulk %s: CPU-s per GB: %s" % (name, ", ".join(
                    "%s %.2f" % (k, v / gb) for k, v in sorted(bc[name].items(),
                                                               key=lambda kv: -kv[1]) if v > 0)))
        for key, w in (self.raw.get("warmup") or {}).items():
            if w.get("echo_ms"):
                lines.append("warm-up %s: first connection + echo %.1f ms%s" % (
                    key, w["echo_ms"][0], " (starts the helper of its host)"
                    if key in ("a-open", "b2-preload") else ""))
        fw = self.raw.get("firewall_by_hand", {})
        if fw:
            lines.append("by-hand table check a -> %s: before %s; with it %s; after %s" % (
                self.real, *(fw.get(k, "?").split()[0] for k in ("before", "opened", "after"))))
        st = self.raw.get("serve_stats")
        if st:
            lines.append("echo server in b, connections by peer: %s%s" % (
                ", ".join("%s %d" % kv for kv in sorted(st["peers"].items())),
                ("; %d error(s): %s" % (st["n_errors"], " | ".join(st["errors"][:3])))
                if st["n_errors"] else ""))
        for me in ("a", "b"):
            dg = log_digest(self.adir[me] / "error.log",
                            distinct_levels=("warn", "error", "crit", "alert", "emerg"))
            self.raw.setdefault("agent_logs", {})[me] = dg
            lines.append("agent %s error.log: %s" % (me.upper(), ", ".join(
                "%s %d" % kv for kv in sorted(dg.get("counts", {}).items()))))
            for x in dg.get("distinct", [])[:5]:
                lines.append("  %5d x %s" % (x["n"], x["example"][:200]))
        for sec in ("inter", "intra"):
            for name, runs in (self.raw.get(sec) or {}).items():
                if isinstance(runs, list):
                    errs = [e for r in runs for e in r.get("errors", [])]
                    if errs:
                        lines.append("%s %s errors (%d): %s" % (sec, name, len(errs),
                                                                " | ".join(errs[:3])))
        for n in self.notes:
            lines.append("note: " + n)
        lines.append("run took %.0f s; raw numbers and logs: %s" % (
            time.monotonic() - self.t_begin, self.out))
        self.save()
        text = "\n".join(lines) + "\n"
        (self.out / "summary.txt").write_text(text)
        print(text, end="")
        return 0


def main():
    cmds = {"serve": cmd_serve, "client": cmd_client, "nfttime": cmd_nfttime}
    if len(sys.argv) > 2 and sys.argv[1] in cmds:
        res = cmds[sys.argv[1]](json.loads(sys.argv[2]))
        if res is not None:
            print(json.dumps(res), flush=True)
        return 0
    if len(sys.argv) > 1:
        print(__doc__)
        return 2
    try:
        return run_bench("codo_bench", THIS, Bench)
    except ValueError as e:   # a bad knob
        print("codo_bench: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
