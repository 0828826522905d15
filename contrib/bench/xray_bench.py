#!/usr/bin/env python3
"""contrib/bench/xray_bench.py - XRAY section 8 (performance), reproduced in one run,
side by side with a direct TLS connection through firewalls opened by hand.

Topology: t/netns.py (a behind NAT box nata, b behind natb, a public bridge between
the NAT boxes; nftables forwards nothing between LAN and public).  Agent A (xrayd)
runs on nata, agent B on natb, configured as t/test_66_agent_topology.py's
_two_agents() does.  In b run two echo servers:

  xserve  the XRAY server: registers 198.18.2.2:8080 with agent B, takes every
          INCOMING, links out to agent B's relay point (mode 2: LINK, LINK_OK,
          end-to-end ACK) or, in mode 1, accepts the agent's link on 198.18.2.2:8080,
          and serves the link; REFRESHes its registration every heartbeat
  dserve  the baseline: a TLS server on 198.18.2.2:9443 (certificate relay-b,
          client certificate required), reached from a only after this script has
          added forward-accept rules for that port to both NAT boxes
With CONC_CLIENT=c (the default) both are contrib/bench/xray_load.c (C, one thread,
epoll, mbedTLS), built with cc at start, and phase 2's client is `xray_load conc`;
CONC_CLIENT=py keeps the Python ones (subcommands of this file) for both.

Every application stream starts with a 9-byte header: b"E" + u64 (echo everything
until EOF) or b"S" + u64 n (sink n bytes, then answer the u64 count).

Phases, all clients in namespace a, all bounded in count and time:
  1. workload (the paper's Fig. 4): N_CONN connections per path, XRAY and direct
     interleaved; before each one a random delay drawn from an exponential
     distribution (Poisson process, mean MEAN_GAP_MS, seed SEED; the same delays
     for both paths).  Each connection: connect (XRAY: TLS to agent A, HELLO,
     CONNECT, TLS link to the relay point, LINK/LINK_OK, ACK both ways; direct:
     TCP + TLS handshake), then MSGS messages of MSG_SIZE bytes sent back to back
     while the echoes are read (one thread, non-blocking), all echoes checked
     (SHA-256), then close.  WARMUP connections per path first, not counted.
  2. concurrency (Fig. 5): K connections at once, each connect + 1 KiB echo, for
     K in CONC_KS, CONC_REPS times; total time until the last echo, ratio to K=1.
     Both paths.  CONC_CLIENT=c: one C process (xray_load conc), one thread, K
     non-blocking connections, XRAY through ONE control session with agent A (K
     CONNECTs pipelined), as the paper's one client with its one library;
     CONC_CLIENT=py: K Python threads, each with its own control session.
  3. agent CPU: CPU_BYTES one way (client -> server sink) over one connection;
     utime+stime(+cutime+cstime) of each agent's process tree (master + workers)
     before and after: CPU-s per GB relayed.  The same transfer direct, for the
     throughput comparison.
  4. xray forward: `xray forward` runs in a (the agent and app-1's certificate
     given as flags); N_FWD connections through it, one at a time and
     interleaved with direct ones: connect, a 1 KiB echo, close, timed whole,
     as curl through it would see it.  Its connections resume its TLS sessions
     with agent A (the first connection's).
TLS session resumption: every client (the bench clients in a, the server's links in
b) keeps the session of its last connection to each address and offers it (Python:
wrap_socket(session=...), xray_load: mbedtls_ssl_set_session); the agents resume
among themselves on their own.

Results: a summary table (also summary.txt) and raw JSON in BENCH_OUT (default
/tmp/xrayd-bench-xray.STAMP).  Needs root and `ip netns`; Python's stdlib only (plus
the project's t/netns.py, t/tls_helpers.py, t/agent_client.py), and cc with
libmbedtls-dev for xray_load.c.  See README.md.
"""

import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TDIR = ROOT / "t"
sys.path.insert(0, str(TDIR))

THIS = str(Path(__file__).resolve())
PY = "/usr/bin/python3"

SERVER_IP = "198.18.2.2"
XR_LOCAL_PORT = 8080     # what the XRAY server registers (nothing listens: GCB mode 2)
DIRECT_PORT = 9443
AGENT_PORT = 7000
LOAD_SRC = HERE / "xray_load.c"
CIPHERS = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305"


def env_int(name, default):
    return int(os.environ.get(name, default))


def env_float(name, default):
    return float(os.environ.get(name, default))


def log(*a):
    print("#", *a, file=sys.stderr, flush=True)


# ---- TLS helpers shared by clients and servers ---------------------------------------

def client_ctx(ca, crt, key, check_hostname):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.minimum_version = c.maximum_version = ssl.TLSVersion.TLSv1_2
    c.set_ciphers(CIPHERS)
    c.check_hostname = check_hostname
    c.load_verify_locations(ca)
    c.load_cert_chain(crt, key)
    return c


def nodelay(s):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class SessionCache:
    """The last ssl.SSLSession per (kind, address): offered on the next connection."""

    def __init__(self):
        self.d = {}
        self.lock = threading.Lock()

    def wrap(self, ctx, raw, key, server_hostname):
        with self.lock:
            sess = self.d.get(key)
        s = ctx.wrap_socket(raw, server_hostname=server_hostname, session=sess)
        with self.lock:
            if s.session is not None:
                self.d[key] = s.session
        return s


def spki_sha256(der):
    """SHA-256 of a certificate's SubjectPublicKeyInfo (the protocol's keyhash)."""
    import agent_client
    return agent_client.spki_sha256(der)


def hp(a):
    h, p = a.rsplit(":", 1)
    return (h, int(p))


# ---- the application protocol on top of a ready stream ------------------------------

def serve_stream(c):
    """Server side: header, then echo until EOF or sink n bytes and answer n."""
    hdr = b""
    while len(hdr) < 9:
        d = c.recv(9 - len(hdr))
        if not d:
            return 0
        hdr += d
    mode, n = hdr[:1], struct.unpack(">Q", hdr[1:])[0]
    total = 0
    if mode == b"E":
        while True:
            d = c.recv(262144)
            if not d:
                break
            c.sendall(d)
            total += len(d)
    elif mode == b"S":
        buf = bytearray(262144)
        while total < n:
            k = c.recv_into(buf, min(len(buf), n - total))
            if not k:
                break
            total += k
        c.sendall(struct.pack(">Q", total))
    return total


def pump_echo(s, blocks, total, deadline):
    """Send blocks back to back while reading the `total` echoed bytes, one thread,
    non-blocking (an SSL socket must not be read and written at once from two
    threads).  Returns the SHA-256 of what came back."""
    s.setblocking(False)
    got = 0
    h = hashlib.sha256()
    i = 0
    try:
        while got < total:
            while i < len(blocks):
                try:
                    s.send(blocks[i])  # no partial writes: all or SSLWantWrite
                    i += 1
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    break
            while True:
                try:
                    d = s.recv(262144)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    break
                if not d:
                    raise EOFError("stream closed after %d of %d echoed bytes" % (got, total))
                got += len(d)
                h.update(d)
            if got >= total:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("echo: %d of %d bytes back" % (got, total))
            select.select([s], [s] if i < len(blocks) else [], [], min(left, 1.0))
    finally:
        s.setblocking(True)
    return h.digest()


# ---- clients (run in namespace a) ---------------------------------------------------

class Client:
    """Connection setup for both paths, with TLS session resumption."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.ctl_ctx = client_ctx(cfg["ca"], cfg["crt"], cfg["key"], True)
        self.link_ctx = client_ctx(cfg["ca"], cfg["crt"], cfg["key"], False)
        self.direct_ctx = client_ctx(cfg["ca"], cfg["crt"], cfg["key"], True)
        self.cache = SessionCache()
        self.agent = hp(cfg["agent"])
        self.official = hp(cfg["official"])
        self.direct = hp(cfg["direct"])
        self.check_key = cfg.get("check_key", True)
        # A library keeps one control session with its agent (XRAY_CTL=
        # persistent, the default); per-connection opens one each time.
        self.persistent = cfg.get("persistent_ctl", False)
        self.early_link = os.environ.get("XRAY_EARLY_LINK", "1") != "0"
        self.kept = None

    def xray(self, timeout=30):
        """-> (link socket, control session, info): the connection is usable (the
        end-to-end ACK has come back)."""
        import agent_client as ac
        info = {}
        t0 = time.monotonic()
        raw = None
        ctl = self.kept if self.persistent else None
        try:
            if ctl is None:
                raw = socket.create_connection(self.agent, timeout)
                nodelay(raw)
                s = self.cache.wrap(self.ctl_ctx, raw, ("ctl",) + self.agent,
                                    self.cfg["agent_name"])
                s.settimeout(timeout)
                info["ctl_resumed"] = s.session_reused
                ctl = ac.Session.__new__(ac.Session)
                ctl.s, ctl.next_id = s, 1
                ctl.hello()
                if self.persistent:
                    self.kept = ctl
            else:
                info["ctl_resumed"] = True
            info["ctl_tls_ms"] = (time.monotonic() - t0) * 1e3
            info["hello_ms"] = (time.monotonic() - t0) * 1e3
            # The link to the agent's relay point comes up while the agent
            # answers CONNECT (protocol.html: a library may open it early):
            # the relay points of an agent are at the address its control
            # session reaches (XRAY_EARLY_LINK=0 waits for CONNECT_OK).
            rid = ctl.connect_start(self.official)
            early = self.early_link
            if early:
                rp = self.agent
                raw2 = socket.create_connection(rp, timeout)
                nodelay(raw2)
                c = self.cache.wrap(self.link_ctx, raw2, ("link",) + rp, None)
                info["link_tls_ms"] = (time.monotonic() - t0) * 1e3
            mode, rp_ok, token, peer_key = ctl.connect_finish(rid)
            info["connect_ok_ms"] = (time.monotonic() - t0) * 1e3
            if mode != 2:
                raise RuntimeError("CONNECT_OK mode %d, expected 2 (relay)" % mode)
            if not early or rp_ok != rp:
                if early:
                    c.close()
                rp = rp_ok
                raw2 = socket.create_connection(rp, timeout)
                nodelay(raw2)
                c = self.cache.wrap(self.link_ctx, raw2, ("link",) + rp, None)
                info["link_tls_ms"] = (time.monotonic() - t0) * 1e3
            try:
                c.settimeout(timeout)
                info["link_resumed"] = c.session_reused
                if self.check_key and spki_sha256(c.getpeercert(True)) != peer_key:
                    raise RuntimeError("relay point's key does not hash to CONNECT_OK's peer_key")
                link = ac.Session.__new__(ac.Session)
                link.s = c
                c.sendall(ac.frame(ac.LINK, token))
                link.expect(ac.LINK_OK)
                info["link_ok_ms"] = (time.monotonic() - t0) * 1e3
                c.sendall(ac.frame(ac.ACK, b""))
                link.expect(ac.ACK)
            except BaseException:
                raw2.close()
                raise
            info["cipher"] = c.cipher()[0]
            info["relay_point"] = "%s:%d" % rp
            return c, (None if self.persistent else ctl), info
        except BaseException:
            if ctl is not None:
                ctl.close()
            if self.kept is ctl:
                self.kept = None
            if raw is not None:
                raw.close()
            raise

    def direct_conn(self, timeout=30):
        info = {}
        raw = socket.create_connection(self.direct, timeout)
        nodelay(raw)
        try:
            s = self.cache.wrap(self.direct_ctx, raw, ("direct",) + self.direct, "localhost")
        except BaseException:
            raw.close()
            raise
        s.settimeout(timeout)
        info["resumed"] = s.session_reused
        info["cipher"] = s.cipher()[0]
        return s, None, info

    def forward_conn(self, timeout=30):
        """A plain TCP connection to `xray forward` in this namespace, which
        carries it to the official address through the agents."""
        s = socket.create_connection(hp(self.cfg["forward"]), timeout)
        nodelay(s)
        s.settimeout(timeout)
        return s, None, {}

    def open(self, path, timeout=30):
        if path == "forward":
            return self.forward_conn(timeout)
        return self.xray(timeout) if path == "xray" else self.direct_conn(timeout)


def _close(c, ctl):
    for x in (c, ctl):
        if x is None:
            continue
        try:
            x.close()
        except OSError:
            pass


def cmd_workload(cfg):
    """Phase 1: the paper's workload, XRAY and direct interleaved."""
    cl = Client(cfg)
    n, warm = cfg["n_conn"], cfg["warmup"]
    msgs, size = cfg["msgs"], cfg["msg_size"]
    data = random.Random(cfg["seed"]).randbytes(msgs * size)
    hdr = b"E" + struct.pack(">Q", len(data))
    blocks = [hdr] + [data[i * size:(i + 1) * size] for i in range(msgs)]
    want = hashlib.sha256(data).digest()  # the header is not echoed
    rng = random.Random(cfg["seed"])
    gaps = [rng.expovariate(1.0 / (cfg["mean_gap_ms"] / 1e3)) for _ in range(n + warm)]
    deadline = time.monotonic() + cfg["phase_secs"]
    recs, fails = [], 0
    t_phase = time.monotonic()
    for j in range(n + warm):
        order = ("xray", "direct") if j % 2 == 0 else ("direct", "xray")
        for path in order:
            time.sleep(gaps[j])
            rec = {"i": j - warm, "path": path, "warmup": j < warm, "gap_ms": gaps[j] * 1e3,
                   "start_s": time.monotonic() - t_phase}
            c = ctl = None
            try:
                t0 = time.monotonic()
                c, ctl, info = cl.open(path)
                t1 = time.monotonic()
                got = pump_echo(c, blocks, len(data), t1 + 60)
                t2 = time.monotonic()
                rec.update(info)
                rec["conn_ms"] = (t1 - t0) * 1e3
                rec["xfer_ms"] = (t2 - t1) * 1e3
                rec["ok"] = got == want
                if not rec["ok"]:
                    rec["error"] = "echo differs from what was sent"
            except Exception as e:  # noqa: BLE001 - recorded, reported
                rec["ok"] = False
                rec["error"] = "%s: %s" % (type(e).__name__, e)
            finally:
                _close(c, ctl)
            if not rec["ok"]:
                fails += 1
                log("workload %s #%d failed: %s" % (path, rec["i"], rec.get("error")))
            recs.append(rec)
        if (j - warm + 1) % 25 == 0 and j >= warm:
            log("workload: %d/%d connections per path" % (j - warm + 1, n))
        if fails > max(10, n // 5):
            log("workload: too many failures (%d), stopping" % fails)
            break
        if time.monotonic() > deadline:
            log("workload: phase time bound (%ds) reached, stopping" % cfg["phase_secs"])
            break
    return {"records": recs, "seconds": time.monotonic() - t_phase}


def cmd_seq(cfg):
    """Phase 4: n connections per path, one at a time and interleaved (forward,
    direct, forward, ...): connect, a 1 KiB echo, close.  Each record is the
    whole time, as curl through `xray forward` would see it."""
    cl = Client(cfg)
    recs = []
    deadline = time.monotonic() + cfg["phase_secs"]
    block = os.urandom(1024)
    for i in range(cfg["warmup"] + cfg["n"]):
        for path in ("forward", "direct"):
            t0 = time.monotonic()
            rec = {"path": path, "warmup": i < cfg["warmup"], "ok": False}
            c = ctl = None
            try:
                c, ctl, _ = cl.open(path)
                c.sendall(b"E" + struct.pack(">Q", len(block)) + block)
                got = b""
                while len(got) < len(block):
                    d = c.recv(len(block) - len(got))
                    if not d:
                        raise EOFError("closed after %d of %d echoed bytes" % (len(got),
                                                                               len(block)))
                    got += d
                rec["ok"] = got == block
                rec["ms"] = (time.monotonic() - t0) * 1e3
            except (OSError, EOFError, ssl.SSLError, RuntimeError) as e:
                rec["error"] = "%s: %s" % (type(e).__name__, e)
            finally:
                _close(c, ctl)
            recs.append(rec)
        if time.monotonic() > deadline:
            log("seq: phase time bound (%ds) reached, stopping" % cfg["phase_secs"])
            break
    return {"records": recs}


def cmd_concurrency(cfg):
    """Phase 2: K connections at once, each connect + 1 KiB echo (each with
    its own control session: K clients, not one)."""
    cl = Client(dict(cfg, persistent_ctl=False))
    res = []
    msg = os.urandom(1024)
    pids = cfg.get("pids", {})  # /proc is shared: the agents' and servers' CPU, per run
    deadline = time.monotonic() + cfg["phase_secs"]

    def one_run(path, k):
        start = threading.Event()
        out = [None] * k

        def one(i):
            start.wait()
            t_issue = time.monotonic()
            c = ctl = None
            r = {"ok": False}
            try:
                c, ctl, info = cl.open(path, timeout=60)
                t_conn = time.monotonic()
                c.sendall(b"E" + struct.pack(">Q", len(msg)) + msg)
                got = b""
                while len(got) < len(msg):
                    d = c.recv(65536)
                    if not d:
                        break
                    got += d
                r = {"ok": got == msg, "issue": t_issue, "conn": t_conn,
                     "done": time.monotonic(),
                     "resumed": info.get("resumed", info.get("ctl_resumed"))}
                if got != msg:
                    r["error"] = "short or wrong echo (%d bytes)" % len(got)
            except Exception as e:  # noqa: BLE001
                r = {"ok": False, "issue": t_issue, "done": time.monotonic(),
                     "error": "%s: %s" % (type(e).__name__, e)}
            finally:
                _close(c, ctl)
            out[i] = r

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(k)]
        for t in threads:
            t.start()
        cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
        me0 = time.process_time()
        t0 = time.monotonic()
        start.set()
        for t in threads:
            t.join(max(1.0, 150 - (time.monotonic() - t0)))
        cpu = {n: cpu_seconds(p) - cpu0[n] for n, p in pids.items()}
        cpu["client"] = time.process_time() - me0
        done = [r for r in out if r is not None]
        ok = [r for r in done if r["ok"]]
        errs = [r.get("error", "?") for r in done if not r["ok"]] + \
            ["not finished within 150 s"] * (k - len(done))
        total = (max(r["done"] for r in ok) - t0) if ok and len(ok) == k else None
        return {"path": path, "k": k, "ok": len(ok), "failed": k - len(ok), "cpu_s": cpu,
                "wall_s": time.monotonic() - t0,
                "errors": sorted(set(errs))[:5], "total_s": total,
                "conn_s": sorted(r["conn"] - t0 for r in ok),
                "resumed": sum(1 for r in ok if r.get("resumed"))}

    for path in cfg["paths"]:
        one_run(path, 2)  # warm-up: sessions cached, threads and paths exercised
    for rep in range(cfg["reps"]):
        for k in cfg["ks"]:
            for path in cfg["paths"]:
                if time.monotonic() > deadline:
                    log("concurrency: phase time bound reached, stopping")
                    return {"runs": res}
                r = one_run(path, k)
                r["rep"] = rep
                res.append(r)
                log("concurrency rep %d %s K=%d: %s s, %d failed%s" % (
                    rep + 1, path, k, "%.3f" % r["total_s"] if r["total_s"] is not None
                    else "NA", r["failed"], (" " + "; ".join(r["errors"])) if r["errors"] else ""))
                time.sleep(0.5)
    return {"runs": res}


def cmd_bulk(cfg):
    """Phase 3: n bytes one way over one connection; the sink answers the count."""
    cl = Client(cfg)
    n = cfg["bytes"]
    c = ctl = None
    try:
        c, ctl, info = cl.open(cfg["path"], timeout=60)
        c.settimeout(cfg["phase_secs"])
        chunk = memoryview(os.urandom(256 * 1024))
        t0 = time.monotonic()
        c.sendall(b"S" + struct.pack(">Q", n))
        left = n
        while left > 0:
            k = min(left, len(chunk))
            c.sendall(chunk[:k])
            left -= k
        ans = b""
        while len(ans) < 8:
            d = c.recv(8 - len(ans))
            if not d:
                break
            ans += d
        secs = time.monotonic() - t0
        got = struct.unpack(">Q", ans)[0] if len(ans) == 8 else None
        return {"path": cfg["path"], "bytes": n, "sink_got": got, "seconds": secs,
                "ok": got == n, "gbps": n * 8 / secs / 1e9, **info}
    except Exception as e:  # noqa: BLE001
        return {"path": cfg["path"], "ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    finally:
        _close(c, ctl)


# ---- servers (run in namespace b) ----------------------------------------------------

class Stats:
    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()
        self.n = {"accepted": 0, "resumed": 0, "errors": 0, "bytes": 0, "probes": 0}
        self.errors = []

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                self.n[k] += v

    def err(self, what):
        with self.lock:
            self.n["errors"] += 1
            if len(self.errors) < 20:
                self.errors.append(what)
        print("error:", what, file=sys.stderr, flush=True)

    def write(self, **extra):
        with self.lock:
            line = json.dumps({"stats": self.n, "errors": self.errors, **extra})
        with open(self.out, "a") as f:
            f.write(line + "\n")


def cmd_dserve(cfg):
    """The baseline server: TLS (client certificate required), echo / sink."""
    stats = Stats(cfg["out"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.load_cert_chain(cfg["crt"], cfg["key"])
    ctx.load_verify_locations(cfg["ca"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((SERVER_IP, DIRECT_PORT))
    ls.listen(1024)
    signal.signal(signal.SIGTERM, lambda *a: (stats.write(final=True), os._exit(0)))
    with open(cfg["out"], "a") as f:
        f.write(json.dumps({"ready": "%s:%d" % (SERVER_IP, DIRECT_PORT)}) + "\n")

    def conn(raw):
        try:
            nodelay(raw)
            raw.settimeout(60)
            try:
                c = ctx.wrap_socket(raw, server_side=True)
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
                stats.add(probes=1)  # the orchestrator's TCP reachability probe
                raw.close()
                return
            stats.add(accepted=1, resumed=int(c.session_reused))
            stats.add(bytes=serve_stream(c))
            c.close()
        except Exception as e:  # noqa: BLE001
            stats.err("%s: %s" % (type(e).__name__, e))
            raw.close()

    while True:
        raw, _ = ls.accept()
        threading.Thread(target=conn, args=(raw,), daemon=True).start()


def cmd_xserve(cfg):
    """The XRAY server: REGISTER with agent B, INCOMING -> link out (mode 2) -> serve;
    REFRESH every heartbeat."""
    import agent_client as ac
    stats = Stats(cfg["out"])
    ctl_ctx = client_ctx(cfg["ca"], cfg["crt"], cfg["key"], True)
    link_ctx = client_ctx(cfg["ca"], cfg["crt"], cfg["key"], False)
    cache = SessionCache()
    agent = hp(cfg["agent"])
    raw = socket.create_connection(agent, 10)
    nodelay(raw)
    s = ctl_ctx.wrap_socket(raw, server_hostname=cfg["agent_name"])
    s.settimeout(10)
    ctl = ac.Session.__new__(ac.Session)
    ctl.s, ctl.next_id = s, 1
    ctl.hello()
    handle, lease_ms, official = ctl.register((SERVER_IP, XR_LOCAL_PORT))
    every = max(0.1, ctl.heartbeat_ms / 1e3)
    refresh = {"sent": 0, "ok": 0}
    signal.signal(signal.SIGTERM, lambda *a: (stats.write(final=True, refresh=refresh),
                                             os._exit(0)))
    with open(cfg["out"], "a") as f:
        f.write(json.dumps({"official": "%s:%d" % official, "lease_ms": lease_ms,
                            "heartbeat_ms": ctl.heartbeat_ms}) + "\n")

    def link(rp, token):
        c = None
        try:
            r = socket.create_connection(rp, 30)
            nodelay(r)
            c = cache.wrap(link_ctx, r, rp, None)
            c.settimeout(60)
            stats.add(accepted=1, resumed=int(c.session_reused))
            lk = ac.Session.__new__(ac.Session)
            lk.s = c
            c.sendall(ac.frame(ac.LINK, token))
            lk.expect(ac.LINK_OK)
            c.sendall(ac.frame(ac.ACK, b""))
            lk.expect(ac.ACK)
            stats.add(bytes=serve_stream(c))
        except Exception as e:  # noqa: BLE001
            stats.err("link to %s:%d: %s: %s" % (rp + (type(e).__name__, e)))
        finally:
            if c is not None:
                c.close()

    next_refresh = time.monotonic() + every
    while True:
        left = next_refresh - time.monotonic()
        readable = s.pending() > 0 or select.select([s], [], [], max(0.0, left))[0]
        if readable:
            try:
                t, body = ctl.read()
            except (EOFError, OSError) as e:
                stats.err("control connection to agent B lost: %s" % e)
                stats.write(final=True, refresh=refresh)
                return 1
            if t == ac.INCOMING:
                rid, _, mode = struct.unpack(">IQB", body[:13])
                rp, token = ac.parse_addr(body[13:32]), body[32:64]
                ctl.send_raw(ac.frame(ac.INCOMING_OK, struct.pack(">I", rid)))
                if mode != 2:
                    stats.err("INCOMING mode %d (expected 2)" % mode)
                    continue
                threading.Thread(target=link, args=(rp, token), daemon=True).start()
            elif t == ac.REFRESHED:
                refresh["ok"] += 1
            elif t == ac.ERROR:
                code = struct.unpack(">H", body[:2])[0]
                stats.err("agent B: ERROR %s: %s" % (ac.ERRORS.get(code, code),
                                                     body[7:7 + body[6]].decode(errors="replace")))
            else:
                stats.err("agent B: unexpected frame 0x%02x" % t)
        if time.monotonic() >= next_refresh:
            ctl.send_raw(ac.frame(ac.REFRESH, struct.pack(">IQ", ctl._id(), handle)))
            refresh["sent"] += 1
            next_refresh = time.monotonic() + every


# ---- the orchestrator (host namespace, root) -------------------------------------------

def proc_tree(root_pid):
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [root_pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def cpu_seconds(root_pid):
    """utime+stime+cutime+cstime over the process tree (master + workers)."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in proc_tree(root_pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                st = f.read()
        except OSError:
            continue
        f = st[st.rindex(")") + 2:].split()
        total += sum(int(x) for x in f[11:15])
    return total / hz


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise RuntimeError("timed out (%ds) waiting for %s" % (timeout, what))


def json_lines(path):
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def run_bench(name, script, bench_cls):
    """A benchmark's run in the topology: with the interpreter the tests
    use (t/netns.py needs pytest), and SIGTERM / SIGHUP unwinding through
    the run's finally, so that everything is torn down."""
    try:
        import pytest  # noqa: F401 - t/netns.py needs it
    except ImportError:
        if os.path.realpath(sys.executable) != os.path.realpath(PY) and os.access(PY, os.X_OK):
            os.execv(PY, [PY, script])  # the interpreter the tests run with
        print("%s: t/netns.py needs pytest (%s has none)" % (name, sys.executable),
              file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))
    return bench_cls().run()


def agent_conf(t, pki, d, me, extra_apps_b="", main_extra="", agent_extra="", apps=None):
    """Agent `me` ('a' or 'b') exactly as _two_agents() in
    t/test_66_agent_topology.py configures it; extra_apps_b (YAML list items) is
    appended to agent B's applications (libxray_bench.py adds one); main_extra and
    agent_extra: more top-level and agent-block lines; apps: the applications
    entries instead of the usual ones (codo_bench.py)."""
    other = "b" if me == "a" else "a"
    lan = "198.18.1.0/24" if me == "a" else "198.18.2.0/24"
    my_pub, other_pub = t.pub_addr("nat" + me), t.pub_addr("nat" + other)
    if apps is not None:
        pass
    elif me == "a":
        apps = """
  - name: client
    match: ["CN=app-1"]
    outbound: ["%s/32:20000-20009"]
""" % t.pub_addr("natb")
    else:
        apps = """
  - name: server
    match: ["CN=relay-b"]
    inbound: on
""" + extra_apps_b
    conf = d / "agent.yaml"
    conf.write_text(main_extra + """
workers: 2
daemon: off
pid: %(d)s/xrayd.pid
error_log: %(d)s/error.log
log_level: info
agent:
  listen: 0.0.0.0:7000
  tls:
    certificate: %(crt)s
    key: %(key)s
    client_ca: %(ca)s
  networks: [%(lan)s]
  official_pool: ["%(pub)s:20000-20009"]
  admin_socket: %(d)s/agent.sock
%(extra)s  peers:
    - networks: ["%(opub)s/32"]
      agent: %(opub)s:7000
      match: ["CN=agent-%(other)s"]
      tls:
        ca: %(ca)s
        certificate: %(crt)s
        key: %(key)s
        server_name: agent-%(other)s
applications:%(apps)s""" % dict(d=d, crt=pki.crt("agent-" + me), key=pki.key("agent-" + me),
                                   ca=pki.ca, lan=lan, pub=my_pub, opub=other_pub,
                                   other=other, apps=apps, extra=agent_extra))
    return conf


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def fmt(v, spec="%.2f"):
    return "NA" if v is None else spec % v


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


LEVEL_RE = re.compile(r"\[(debug|info|notice|warn|error|crit|alert|emerg)\]")


def log_digest(path, distinct_levels=("notice", "warn", "error", "crit", "alert", "emerg")):
    """Counts per level and the distinct messages (numbers masked) of distinct_levels
    (default notice-or-worse)."""
    counts, distinct = {}, {}
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return {"missing": True}
    for line in lines:
        m = LEVEL_RE.search(line)
        if not m:
            continue
        lvl = m.group(1)
        counts[lvl] = counts.get(lvl, 0) + 1
        if lvl in distinct_levels:
            msg = re.sub(r"\d+", "N", line[m.end():].strip())
            key = "[%s] %s" % (lvl, msg)
            if key not in distinct:
                distinct[key] = [0, line]
            distinct[key][0] += 1
    return {"counts": counts,
            "distinct": [{"n": v[0], "pattern": k, "example": v[1]}
                         for k, v in sorted(distinct.items(), key=lambda kv: -kv[1][0])]}


class Bench:
    def __init__(self):
        self.t_begin = time.monotonic()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.out = Path(os.environ.get("BENCH_OUT") or "/tmp/xrayd-bench-xray.%s" % stamp)
        self.n_conn = env_int("N_CONN", 100)
        self.n_fwd = env_int("N_FWD", 100)
        self.warmup = env_int("WARMUP", 3)
        self.mean_gap_ms = env_float("MEAN_GAP_MS", 50)
        self.seed = env_int("SEED", 1)
        self.msgs = env_int("MSGS", 100)
        self.msg_size = env_int("MSG_SIZE", 10240)
        self.ks = [int(x) for x in os.environ.get("CONC_KS", "1 50 100 200").split()]
        if 1 not in self.ks:
            self.ks.insert(0, 1)
        self.reps = env_int("CONC_REPS", 3)
        self.cpu_bytes = env_int("CPU_BYTES", 1 << 30)
        self.phase_secs = env_int("PHASE_SECS", 600)
        # c: the servers in b and phase 2's client are xray_load (C); py: Python
        self.conc_client = os.environ.get("CONC_CLIENT", "c")
        self.load = None
        # CONNECTs unanswered on xray_load's one control session at most (0: all K at
        # once).  128 because xrayd's agent closes a control session whose answers to
        # one read overflow its 16-frame output buffer (> 178 pipelined CONNECTs).
        self.ctl_window = env_int("CONC_CTL_WINDOW", 128)
        self.xrayd_orig = Path(os.environ.get("XRAYD_BIN") or ROOT / "objs" / "xrayd")
        self.xray = Path(os.environ.get("XRAY_BIN") or self.xrayd_orig.parent / "xray")
        self.raw = {}
        self.notes = []

    # -- helpers --

    def build_load(self, bindir):
        """cc contrib/bench/xray_load.c (with the daemon's self-contained frame codec,
        src/common/proto.c) into this run's bin/; None, with the compiler's words on
        stderr, if it does not build."""
        exe = bindir / "xray_load"
        cc = shutil.which(os.environ.get("CC", "cc"))
        if cc is None:
            print("xray_bench: no C compiler (cc) to build %s; install build-essential "
                  "and libmbedtls-dev, or run with CONC_CLIENT=py" % LOAD_SRC, file=sys.stderr)
            return None
        cmd = [cc, "-std=c11", "-D_GNU_SOURCE", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
               "-I", str(ROOT / "src"), "-o", str(exe), str(LOAD_SRC),
               str(ROOT / "src" / "common" / "proto.c"), "-lmbedtls", "-lmbedx509", "-lmbedcrypto"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        (self.out / "logs" / "xray_load-build.log").write_text(
            " ".join(cmd) + "\n" + r.stdout + r.stderr)
        if r.returncode != 0:
            print("xray_bench: %s does not build (rc %d; needs libmbedtls-dev 2.28, or run "
                  "with CONC_CLIENT=py):\n%s\n%s" % (LOAD_SRC, r.returncode, " ".join(cmd),
                                                    (r.stderr or r.stdout)[-3000:]),
                  file=sys.stderr)
            return None
        return exe

    def save(self, name, obj):
        self.raw[name] = obj
        (self.out / "raw" / (name + ".json")).write_text(json.dumps(obj, indent=1))

    def client(self, t, cmd, cfg, timeout):
        full = dict(self.ccfg, **cfg)
        p = t.run("a", [PY, THIS, cmd, json.dumps(full)], timeout=timeout,
                  stdout=subprocess.PIPE, stderr=None)
        lines = [l for l in p.stdout.splitlines() if l.strip()]
        if p.returncode != 0 or not lines:
            raise RuntimeError("client %s in a failed (rc %d): %s" % (cmd, p.returncode,
                                                                     p.stdout[-2000:]))
        return json.loads(lines[-1])

    def conc_c(self, t, pids):
        """Phase 2 through `xray_load conc` in a: one process, one thread, one control
        session with agent A for all the XRAY runs.  Its JSON lines become the same
        {"runs": [...]} the Python client returns."""
        cc = self.ccfg
        argv = [str(self.load), "conc", "--path", "xray,direct",
                "--k", ",".join(map(str, self.ks)), "--reps", str(self.reps),
                "--ca", cc["ca"], "--crt", cc["crt"], "--key", cc["key"],
                "--agent", cc["agent"], "--agent-name", cc["agent_name"],
                "--official", cc["official"], "--direct", cc["direct"],
                "--direct-name", "localhost", "--phase-secs", str(self.phase_secs),
                "--ctl-window", str(self.ctl_window),
                "--max-secs", str(self.phase_secs + 180)]
        if not cc["check_key"]:
            argv.append("--no-check-key")
        for name, pid in pids.items():
            argv += ["--cpu", "%s=%d" % (name, pid)]
        p = t.run("a", argv, timeout=self.phase_secs + 200, stdout=subprocess.PIPE, stderr=None)
        recs = []
        for line in p.stdout.splitlines():
            try:
                recs.append(json.loads(line))
            except ValueError:
                pass
        end = next((r for r in recs if r.get("kind") == "end"), None)
        if p.returncode != 0 or end is None:
            raise RuntimeError("xray_load conc in a failed (rc %d): %s" % (
                p.returncode, p.stdout[-2000:]))
        return {"client": "xray_load conc (C, one thread, epoll, mbedTLS)",
                "runs": [r for r in recs if r.get("kind") == "run"],
                "warmup": [r for r in recs if r.get("kind") == "warmup"],
                "end": end, "argv": argv}

    def status(self, t, me):
        p = t.run("nat" + me, [str(self.xray), "status", "--socket",
                               str(self.adir[me] / "agent.sock"), "--json"], timeout=20)
        if p.returncode != 0:
            return {"error": "rc %d: %s %s" % (p.returncode, p.stdout.strip()[:300],
                                               p.stderr.strip()[:300])}
        try:
            return json.loads(p.stdout)
        except ValueError:
            return {"error": "not JSON: %r" % p.stdout[:200]}

    def counters(self, t, when):
        out = {}
        for me in ("a", "b"):
            st = self.status(t, me)
            if "counters" not in st:
                self.notes.append("xray status of agent %s failed %s: %s" % (
                    me.upper(), when, st.get("error", st)))
            out[me] = st.get("counters", {})
        return out

    def agent_cpu(self):
        return {me: cpu_seconds(p.pid) for me, p in self.masters.items()}

    def direct_reachable(self, t):
        code = ("import socket,sys\ntry:\n socket.create_connection(('%s',%d),2).close();"
                "print('open')\nexcept OSError as e: print('closed', e)") % (SERVER_IP, DIRECT_PORT)
        return t.run("a", [PY, "-c", code], timeout=20).stdout.strip()

    def open_firewalls(self, t):
        """Forward-accept rules for the baseline port only, both directions, on both
        NAT boxes (nata masquerades a's address on the way out, which is fine)."""
        handles = {}
        for box in ("nata", "natb"):
            handles[box] = []
            for rule in ("ip daddr %s tcp dport %d accept" % (SERVER_IP, DIRECT_PORT),
                         "ip saddr %s tcp sport %d accept" % (SERVER_IP, DIRECT_PORT)):
                p = t.run(box, ["/usr/sbin/nft", "--echo", "--handle", "insert", "rule", "inet",
                                "filter", "forward", *rule.split()], timeout=20, check=True)
                m = re.search(r"# handle (\d+)", p.stdout)
                if not m:
                    raise RuntimeError("nft gave no handle: %r" % p.stdout)
                handles[box].append(m.group(1))
        return handles

    def close_firewalls(self, t, handles):
        for box, hs in handles.items():
            for h in hs:
                t.run(box, ["/usr/sbin/nft", "delete", "rule", "inet", "filter", "forward",
                            "handle", h], timeout=20)

    # -- the run --

    def run(self):
        import netns
        why = netns.unavailable()
        if why:
            print("xray_bench: cannot run: %s" % why, file=sys.stderr)
            return 2
        for b in (self.xrayd_orig, self.xray):
            if not os.access(b, os.X_OK):
                print("xray_bench: %s not found (build first: make -j2)" % b, file=sys.stderr)
                return 2
        import tls_helpers as th
        (self.out / "raw").mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        log("output: %s" % self.out)
        bindir = self.out / "bin"
        bindir.mkdir(exist_ok=True)
        if self.conc_client not in ("c", "py"):
            print("xray_bench: CONC_CLIENT is c or py, not %r" % self.conc_client, file=sys.stderr)
            return 2
        if self.conc_client == "c":
            log("building %s" % LOAD_SRC.relative_to(ROOT))
            self.load = self.build_load(bindir)
            if self.load is None:
                return 2
        xrayd = bindir / "xrayd"
        shutil.copy2(self.xrayd_orig, xrayd)  # a rebuild during the run changes nothing
        ver = subprocess.run([str(xrayd), "-V"], capture_output=True, text=True, timeout=20)
        self.env = {
            "date": time.strftime("%F %T UTC", time.gmtime()),
            "host": "%d cpus, kernel %s" % (os.cpu_count(), os.uname().release),
            "xrayd": "%s %s (sha256 %s)" % (self.xrayd_orig, (ver.stdout + ver.stderr).strip()
                                           .splitlines()[0] if (ver.stdout + ver.stderr).strip()
                                           else "?",
                                           hashlib.sha256(xrayd.read_bytes()).hexdigest()[:12]),
            "python": "%s, %s" % (sys.version.split()[0], ssl.OPENSSL_VERSION),
            "conc_client": self.conc_client,
            "xray_load": None if self.load is None else "%s (sha256 %s)" % (
                self.load, hashlib.sha256(self.load.read_bytes()).hexdigest()[:12]),
            "load_start": open("/proc/loadavg").read().split()[:3],
            "settings": dict(N_CONN=self.n_conn, WARMUP=self.warmup,
                             MEAN_GAP_MS=self.mean_gap_ms, SEED=self.seed, MSGS=self.msgs,
                             MSG_SIZE=self.msg_size, CONC_KS=self.ks, CONC_REPS=self.reps,
                             CONC_CLIENT=self.conc_client, CONC_CTL_WINDOW=self.ctl_window,
                             CPU_BYTES=self.cpu_bytes, PHASE_SECS=self.phase_secs),
        }
        log("certificates (xray pki)")
        pki = th.Pki(self.out / "pki")
        for name in ("agent-a", "agent-b"):
            pki._issue(pki.ca1, name, "--both", "--san", "DNS:" + name)
        # the peer_key check in the client: our SPKI hash must be the one xray pki shows
        mine = spki_sha256(ssl.PEM_cert_to_DER_cert(Path(pki.crt("agent-a")).read_text()))
        check_key = mine.hex() == pki.sha256("agent-a").replace(":", "").lower()
        if not check_key:
            self.notes.append("peer_key check disabled: SPKI hash differs from xray pki show")

        gone = netns.sweep_stale()
        if gone:
            log("removed stale namespaces of dead runs: %s" % " ".join(gone))
        with netns.Topology() as t:
            log("topology %s up" % t.prefix)
            if os.environ.get("QUICKACK") == "1":
                self.quickack(t)
            return self._run(t, pki, xrayd, check_key)

    def quickack(self, t):
        """Diagnosis only (QUICKACK=1): `quickack 1` on every route of every namespace,
        so no receiver delays its ACKs; with it, stalls caused by Nagle's algorithm on a
        sender without TCP_NODELAY meeting a delayed ACK (about 40 ms) disappear."""
        for role in t.roles:
            for line in t.run(role, ["/usr/sbin/ip", "route", "show"], check=True).stdout.splitlines():
                if line.strip():
                    t.run(role, ["/usr/sbin/ip", "route", "change", *line.split(), "quickack", "1"],
                          check=True)
        self.notes.append("DIAGNOSTIC RUN: QUICKACK=1, every route has `quickack 1` "
                          "(delayed ACKs off); not the normal set-up")
        log("QUICKACK=1: delayed ACKs off on every route (diagnosis)")

    def _run(self, t, pki, xrayd, check_key):
        self.adir, self.masters = {}, {}
        for me in ("a", "b"):
            d = self.out / ("agent-" + me)
            d.mkdir(exist_ok=True)
            self.adir[me] = d
            conf = agent_conf(t, pki, d, me)
            r = subprocess.run([str(xrayd), "-t", "-c", str(conf)], capture_output=True,
                               text=True, timeout=20)
            if r.returncode != 0:
                raise RuntimeError("agent %s: config test failed: %s" % (me, r.stderr or r.stdout))
            self.masters[me] = t.popen("nat" + me, [str(xrayd), "-c", str(conf)],
                                       stderr=open(d / "stderr.log", "w"))
        for me, d in self.adir.items():
            wait_for(lambda: (d / "error.log").exists() and
                     "agent: serving on" in (d / "error.log").read_text(), 30, "agent " + me)
            if self.masters[me].poll() is not None:
                raise RuntimeError("agent %s exited: %s" % (me, (d / "stderr.log").read_text()))
        log("agents up: A on nata (%s:7000), B on natb" % t.addr("nata"))

        xs_out, ds_out = self.out / "logs" / "xserve.jsonl", self.out / "logs" / "dserve.jsonl"
        scfg = {"ca": pki.ca, "crt": pki.crt("relay-b"), "key": pki.key("relay-b"),
                "agent": "%s:%d" % (t.addr("natb"), AGENT_PORT), "agent_name": "agent-b"}
        if self.load is not None:
            # bounded by themselves too: every phase is, plus teardown
            tls = ["--ca", pki.ca, "--crt", pki.crt("relay-b"), "--key", pki.key("relay-b"),
                   "--max-secs", str(4 * self.phase_secs + 600)]
            xs_cmd = [str(self.load), "xserve", *tls, "--agent", scfg["agent"],
                      "--agent-name", scfg["agent_name"],
                      "--local", "%s:%d" % (SERVER_IP, XR_LOCAL_PORT), "--out", str(xs_out)]
            ds_cmd = [str(self.load), "dserve", *tls,
                      "--listen", "%s:%d" % (SERVER_IP, DIRECT_PORT), "--out", str(ds_out)]
        else:
            xs_cmd = [PY, THIS, "xserve", json.dumps(dict(scfg, out=str(xs_out)))]
            ds_cmd = [PY, THIS, "dserve", json.dumps(dict(scfg, out=str(ds_out)))]
        self.xserve = t.popen("b", xs_cmd, stderr=open(self.out / "logs" / "xserve.stderr", "w"))
        self.dserve = t.popen("b", ds_cmd, stderr=open(self.out / "logs" / "dserve.stderr", "w"))

        def first(path, key, proc, what):
            def f():
                if proc.poll() is not None:
                    raise RuntimeError("%s exited: %s" % (what, Path(
                        str(path).replace(".jsonl", ".stderr")).read_text()[-2000:]))
                return next((j[key] for j in json_lines(path) if key in j), None)
            return wait_for(f, 30, what)

        official = first(xs_out, "official", self.xserve, "the XRAY server in b")
        first(ds_out, "ready", self.dserve, "the direct TLS server in b")
        log("XRAY server in b registered: official %s; direct server on %s:%d" % (
            official, SERVER_IP, DIRECT_PORT))

        self.ccfg = {"ca": pki.ca, "crt": pki.crt("app-1"), "key": pki.key("app-1"),
                     "agent": "%s:%d" % (t.addr("nata"), AGENT_PORT), "agent_name": "agent-a",
                     "official": official, "direct": "%s:%d" % (SERVER_IP, DIRECT_PORT),
                     "check_key": check_key, "phase_secs": self.phase_secs, "seed": self.seed,
                     "persistent_ctl": os.environ.get("XRAY_CTL", "persistent") == "persistent"}

        before = self.direct_reachable(t)
        if not before.startswith("closed"):
            raise RuntimeError("direct path a -> b:%d is open before the firewalls were "
                               "touched: %s" % (DIRECT_PORT, before))
        handles = self.open_firewalls(t)
        try:
            opened = self.direct_reachable(t)
            if opened != "open":
                raise RuntimeError("direct path still closed after opening the firewalls: %s"
                                   % opened)
            log("baseline: nftables on nata and natb forward %s:%d (was: %s)" % (
                SERVER_IP, DIRECT_PORT, before))
            self.phases(t)
        finally:
            self.close_firewalls(t, handles)
        after = self.direct_reachable(t)
        self.env["firewall_after"] = after
        if not after.startswith("closed"):
            self.notes.append("direct path still open after the rules were removed: " + after)

        # stop the servers (they write their stats), then the agents
        for p in (self.xserve, self.dserve):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.save("agent_status_end", {me: self.status(t, me) for me in ("a", "b")})
        for me, p in self.masters.items():
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                self.notes.append("agent %s did not stop within 20 s of SIGTERM" % me)
        return self.report()

    def phases(self, t):
        c0, cpu0 = self.counters(t, "before the workload"), self.agent_cpu()
        log("phase 1: workload, %d (+%d warm-up) connections per path, mean gap %g ms, "
            "%d x %d B echoed" % (self.n_conn, self.warmup, self.mean_gap_ms, self.msgs,
                                  self.msg_size))
        w = self.client(t, "workload", {"n_conn": self.n_conn, "warmup": self.warmup,
                                        "mean_gap_ms": self.mean_gap_ms, "msgs": self.msgs,
                                        "msg_size": self.msg_size},
                        timeout=self.phase_secs + 120)
        c1, cpu1 = self.counters(t, "after the workload"), self.agent_cpu()
        w["agent_counters_delta"] = {me: {k: c1[me].get(k, 0) - c0[me].get(k, 0)
                                          for k in c1[me]} for me in c1}
        w["agent_cpu_s"] = {me: cpu1[me] - cpu0[me] for me in cpu0}
        self.save("workload", w)

        log("phase 2: concurrency, K in %s, %d repetitions, both paths, %s client" % (
            self.ks, self.reps, "C (xray_load conc)" if self.load else "Python"))
        pids = {"agent A": self.masters["a"].pid, "agent B": self.masters["b"].pid,
                "xserve": self.xserve.pid, "dserve": self.dserve.pid}
        if self.load is not None:
            c = self.conc_c(t, pids)
        else:
            c = self.client(t, "concurrency", {"ks": self.ks, "reps": self.reps,
                                               "paths": ["xray", "direct"], "pids": pids},
                            timeout=self.phase_secs + 200)
        c2 = self.counters(t, "after the concurrency phase")
        c["agent_counters_delta"] = {me: {k: c2[me].get(k, 0) - c1[me].get(k, 0)
                                          for k in c2[me]} for me in c2}
        self.save("concurrency", c)
        # relay points left behind?
        time.sleep(2)
        st = {me: self.status(t, me) for me in ("a", "b")}
        c["relay_points_after"] = {me: len(st[me].get("relay_points", []) or [])
                                   if isinstance(st[me].get("relay_points"), list)
                                   else st[me].get("relay_points") for me in st}
        self.save("concurrency", c)

        log("phase 3: %d bytes one way through the agents (agent CPU), then direct"
            % self.cpu_bytes)
        bulk = {}
        for path in ("xray", "direct"):
            a0 = self.agent_cpu()
            tw0 = time.monotonic()
            r = self.client(t, "bulk", {"path": path, "bytes": self.cpu_bytes},
                            timeout=self.phase_secs + 60)
            a1 = self.agent_cpu()
            r["wall_s"] = time.monotonic() - tw0
            r["agent_cpu_s"] = {me: a1[me] - a0[me] for me in a0}
            bulk[path] = r
            log("bulk %s: %s" % (path, "%.2f Gbit/s" % r["gbps"] if r.get("ok")
                                 else r.get("error", "sink got %s" % r.get("sink_got"))))
        self.save("bulk", bulk)

        log("phase 4: %d (+%d warm-up) sequential connections through `xray forward` in a, "
            "interleaved with direct ones" % (self.n_fwd, self.warmup))
        fport = 8500
        fwd = t.popen("a", [str(self.xray), "forward", "127.0.0.1:%d" % fport,
                            self.ccfg["official"], "--agent", self.ccfg["agent"],
                            "--agent-name", self.ccfg["agent_name"], "--cert", self.ccfg["crt"],
                            "--key", self.ccfg["key"], "--ca", self.ccfg["ca"]],
                      stderr=open(self.out / "logs" / "forward.stderr", "w"),
                      env=dict(os.environ, HOME=str(self.out)))
        try:
            def listening():
                text = (self.out / "logs" / "forward.stderr").read_text()
                if fwd.poll() is not None:
                    raise RuntimeError("xray forward exited: " + text[-2000:])
                return "listening on" in text
            wait_for(listening, 20, "xray forward")
            seq = self.client(t, "seq", {"n": self.n_fwd, "warmup": self.warmup,
                                         "forward": "127.0.0.1:%d" % fport},
                              timeout=self.phase_secs + 120)
        finally:
            fwd.send_signal(signal.SIGTERM)
            try:
                fwd.wait(10)
            except subprocess.TimeoutExpired:
                fwd.kill()
        self.save("forward", seq)

    # -- the report --

    def report(self):
        w = self.raw.get("workload", {})
        recs = [r for r in w.get("records", []) if not r["warmup"]]
        by = {p: [r for r in recs if r["path"] == p] for p in ("xray", "direct")}
        ok = {p: [r for r in v if r["ok"]] for p, v in by.items()}
        warm = {p: [r for r in w.get("records", []) if r["warmup"] and r["path"] == p and r["ok"]]
                for p in ("xray", "direct")}

        def stat(p, key, f):
            xs = [r[key] for r in ok[p]]
            return f(xs) if xs else None

        med = lambda xs: statistics.median(xs)  # noqa: E731
        p90 = lambda xs: pct(xs, 0.9)  # noqa: E731
        mean = lambda xs: statistics.fmean(xs)  # noqa: E731
        sd = lambda xs: statistics.pstdev(xs)  # noqa: E731

        rows = []

        def row(metric, x, d, rat, aim, spec="%.2f", rspec="%.2fx"):
            rows.append((metric, fmt(x, spec), fmt(d, spec), fmt(rat, rspec), aim))

        def verdict(v, limit):
            return "" if v is None else (" ok" if v <= limit else " MISSED")

        cx, cd = stat("xray", "conn_ms", med), stat("direct", "conn_ms", med)
        rc = ratio(cx, cd)
        row("connection time, median ms", cx, cd, rc, "<= 1.3x%s (paper 1.67x)"
            % verdict(rc, 1.3))
        px, pd = stat("xray", "conn_ms", p90), stat("direct", "conn_ms", p90)
        row("connection time, p90 ms", px, pd, ratio(px, pd), "")
        mx, md = stat("xray", "conn_ms", mean), stat("direct", "conn_ms", mean)
        row("connection time, mean ms (sd)", mx, md, ratio(mx, md),
            "sd %s / %s" % (fmt(stat("xray", "conn_ms", sd)), fmt(stat("direct", "conn_ms", sd))))
        tx, td = stat("xray", "xfer_ms", med), stat("direct", "xfer_ms", med)
        rt = ratio(tx, td)
        row("transfer %dx%d B echo, median ms" % (self.msgs, self.msg_size), tx, td, rt,
            "<= 1.3x%s (paper 1.81x)" % verdict(rt, 1.3))
        px, pd = stat("xray", "xfer_ms", p90), stat("direct", "xfer_ms", p90)
        row("transfer, p90 ms", px, pd, ratio(px, pd), "")
        mx, md = stat("xray", "xfer_ms", mean), stat("direct", "xfer_ms", mean)
        row("transfer, mean ms (sd)", mx, md, ratio(mx, md),
            "sd %s / %s" % (fmt(stat("xray", "xfer_ms", sd)), fmt(stat("direct", "xfer_ms", sd))))
        rows.append(("connections ok / attempted", "%d/%d" % (len(ok["xray"]), len(by["xray"])),
                     "%d/%d" % (len(ok["direct"]), len(by["direct"])), "", "all"))
        if warm["xray"] and warm["direct"]:
            row("first connection (full handshakes), ms", warm["xray"][0]["conn_ms"],
                warm["direct"][0]["conn_ms"], ratio(warm["xray"][0]["conn_ms"],
                                                   warm["direct"][0]["conn_ms"]), "warm-up, not counted")

        # concurrency
        c = self.raw.get("concurrency", {})
        tot = {}
        for r in c.get("runs", []):
            tot.setdefault((r["path"], r["k"]), []).append(r)
        med_tot = {}
        for key, rs in tot.items():
            good = [r["total_s"] for r in rs if r["total_s"] is not None]
            med_tot[key] = statistics.median(good) if good and len(good) == len(rs) else None
        for k in self.ks:
            x, d = med_tot.get(("xray", k)), med_tot.get(("direct", k))
            row("%d concurrent: total ms (median of %d)" % (k, self.reps),
                None if x is None else x * 1e3, None if d is None else d * 1e3,
                ratio(x, d), "")
        first_echo = {}
        for p in ("xray", "direct"):
            xs = [r["total_s"] - r["conn_s"][0] for r in c.get("runs", [])
                  if r["path"] == p and r["k"] == 1 and r["total_s"] is not None and r["conn_s"]]
            first_echo[p] = statistics.median(xs) * 1e3 if xs else None
        row("1 KiB echo right after connect (K=1), ms", first_echo["xray"], first_echo["direct"],
            ratio(first_echo["xray"], first_echo["direct"]), "")
        kmax = max(self.ks)
        for k in self.ks:
            if k == 1:
                continue
            x = ratio(med_tot.get(("xray", k)), med_tot.get(("xray", 1)))
            d = ratio(med_tot.get(("direct", k)), med_tot.get(("direct", 1)))
            aim = ""
            if k == kmax:
                aim = "<= 20x%s (paper: 200 took 78x)" % verdict(x, 20)
            elif k == 50:
                aim = "(paper: 50 took 29x)"
            rows.append(("%d concurrent / 1 connection" % k, fmt(x, "%.1fx"),
                         fmt(d, "%.1fx"), "", aim))
        cfail = {p: sum(r["failed"] for r in c.get("runs", []) if r["path"] == p)
                 for p in ("xray", "direct")}
        cn = {p: sum(r["k"] for r in c.get("runs", []) if r["path"] == p)
              for p in ("xray", "direct")}
        rows.append(("concurrent connections failed", "%d/%d" % (cfail["xray"], cn["xray"]),
                     "%d/%d" % (cfail["direct"], cn["direct"]), "", "0"))

        # xray forward, as curl through it would see it
        fw = [r for r in self.raw.get("forward", {}).get("records", []) if not r["warmup"]]
        fok = {p: [r["ms"] for r in fw if r["path"] == p and r["ok"]]
               for p in ("forward", "direct")}
        fx = statistics.median(fok["forward"]) if fok["forward"] else None
        fd = statistics.median(fok["direct"]) if fok["direct"] else None
        rf = ratio(fx, fd)
        row("xray forward: connect + 1 KiB echo, median ms", fx, fd, rf,
            "<= 2x direct%s (sequential, sessions resumed)" % verdict(rf, 2.0))
        rows.append(("xray forward: connections ok / attempted",
                     "%d/%d" % (len(fok["forward"]), sum(r["path"] == "forward" for r in fw)),
                     "%d/%d" % (len(fok["direct"]), sum(r["path"] == "direct" for r in fw)),
                     "", "all"))

        # CPU and throughput
        b = self.raw.get("bulk", {})
        bx, bd = b.get("xray", {}), b.get("direct", {})
        gb = self.cpu_bytes / 1e9
        if bx.get("ok"):
            cpa, cpb = bx["agent_cpu_s"]["a"] / gb, bx["agent_cpu_s"]["b"] / gb
            rows.append(("agent CPU-s per GB relayed (A + B)", "%.2f" % (cpa + cpb), "-", "",
                         "A %.2f, B %.2f (master+workers)" % (cpa, cpb)))
        else:
            rows.append(("agent CPU-s per GB relayed (A + B)", "NA", "-", "",
                         bx.get("error", "failed")))
        gx, gd = bx.get("gbps") if bx.get("ok") else None, bd.get("gbps") if bd.get("ok") else None
        row("one-way %.2f GiB over one connection, Gbit/s" % (self.cpu_bytes / 2**30), gx, gd,
            ratio(gx, gd), "")
        cpu_w = w.get("agent_cpu_s")
        if cpu_w and ok["xray"]:
            per = (cpu_w["a"] + cpu_w["b"]) / (len(ok["xray"]) + len(warm["xray"])) * 1e3
            rows.append(("agent CPU-ms per workload connection", "%.1f" % per, "-", "",
                         "A+B, setup + %d KB each way" % (self.msgs * self.msg_size // 1000)))

        # resumption
        def frac(p, key):
            xs = [r.get(key) for r in ok[p] if key in r]
            return "%d/%d" % (sum(1 for x in xs if x), len(xs)) if xs else "NA"
        res_line = "client TLS resumed: xray control %s, xray link %s, direct %s" % (
            frac("xray", "ctl_resumed"), frac("xray", "link_resumed"), frac("direct", "resumed"))

        widths = [max(len(str(r[i])) for r in rows + [("metric", "XRAY", "direct", "ratio",
                                                       "aim")]) for i in range(5)]
        lines = []
        lines.append("XRAY section 8 on xrayd: %s" % self.env["xrayd"])
        lines.append("host: %s; python %s; load at start %s, at end %s" % (
            self.env["host"], self.env["python"], " ".join(self.env["load_start"]),
            " ".join(open("/proc/loadavg").read().split()[:3])))
        s = self.env["settings"]
        lines.append("workload: %d connections per path (+%d warm-up), interleaved, "
                     "exponential gaps mean %g ms (seed %d), %d x %d B echoed; "
                     "concurrency K=%s x %d; one-way %d B"
                     % (s["N_CONN"], s["WARMUP"], s["MEAN_GAP_MS"], s["SEED"], s["MSGS"],
                        s["MSG_SIZE"], ",".join(map(str, s["CONC_KS"])), s["CONC_REPS"],
                        s["CPU_BYTES"]))
        lines.append("XRAY client: %s (XRAY_CTL=%s)" % (
            "one control session with agent A kept across the workload's connections, as a "
            "library keeps it" if os.environ.get("XRAY_CTL", "persistent") == "persistent"
            else "a new control session per connection",
            os.environ.get("XRAY_CTL", "persistent")))
        if c.get("end"):
            e = c["end"]
            lines.append("concurrency client: xray_load conc (C, one thread, epoll, mbedTLS), "
                         "%d control session(s) with agent A for all XRAY runs, K CONNECTs "
                         "pipelined (%s), client CPU %.2f s in all" % (
                             e["control_sessions"],
                             "all at once" if not e.get("ctl_window") else
                             "at most %d unanswered, CONC_CTL_WINDOW" % e["ctl_window"],
                             e["client_cpu_s"]))
        else:
            lines.append("concurrency client: Python, K threads, each with its own control "
                         "session (CONC_CLIENT=py)")
        ciph = sorted({r.get("cipher") for r in ok["xray"] + ok["direct"] if r.get("cipher")})
        lines.append("TLS 1.2 everywhere, mutual authentication on both paths, cipher(s): %s; "
                     "%s" % (", ".join(ciph) or "?", res_line))
        lines.append("")
        hdr = ("metric", "XRAY", "direct", "ratio", "aim")
        for r in [hdr, tuple("-" * wd for wd in widths)] + rows:
            lines.append(" | ".join(str(r[i]).ljust(widths[i]) if i == 0 else
                                    str(r[i]).rjust(widths[i]) if i < 4 else str(r[i])
                                    for i in range(5)).rstrip())
        lines.append("")
        # breakdown of the XRAY connection time
        keys = ("ctl_tls_ms", "hello_ms", "connect_ok_ms", "link_tls_ms", "link_ok_ms", "conn_ms")
        bd = ["%s %s" % (k.replace("_ms", ""), fmt(stat("xray", k, med), "%.2f"))
              for k in keys]
        lines.append("XRAY connect, median ms since start: " + ", ".join(bd))
        steps = (("TLS to agent A", None, "ctl_tls_ms"), ("HELLO", "ctl_tls_ms", "hello_ms"),
                 ("CONNECT->CONNECT_OK", "hello_ms", "connect_ok_ms"),
                 ("link TLS", "connect_ok_ms", "link_tls_ms"),
                 ("LINK->LINK_OK", "link_tls_ms", "link_ok_ms"), ("ACK<->ACK", "link_ok_ms", "conn_ms"))
        slow = []
        for name, a, z in steps:
            n = sum(1 for r in ok["xray"] if z in r and (r[z] - (r[a] if a else 0)) >= 35)
            if n:
                slow.append("%s %d/%d" % (name, n, len(ok["xray"])))
        lines.append("XRAY connect steps taking >= 35 ms (a delayed ACK is ~40 ms): %s" % (
            ", ".join(slow) or "none"))
        for me in ("a", "b"):
            dl = w.get("agent_counters_delta", {}).get(me, {})
            dc = c.get("agent_counters_delta", {}).get(me, {})
            lines.append("agent %s during workload: TLS handshakes %d full, %d resumed, relayed %d;"
                         " during concurrency: %d full, %d resumed, relayed %d" % (
                             me.upper(), dl.get("full_handshakes", 0),
                             dl.get("resumed_handshakes", 0), dl.get("relayed", 0),
                             dc.get("full_handshakes", 0), dc.get("resumed_handshakes", 0),
                             dc.get("relayed", 0)))
        kmax = max(self.ks)
        for p in ("xray", "direct"):
            rs = [r for r in c.get("runs", []) if r["path"] == p and r["k"] == kmax and "cpu_s" in r]
            if rs:
                names = [n for n in rs[0]["cpu_s"]
                         if (p == "xray" and n != "dserve") or (p == "direct" and n in ("dserve", "client"))]
                lines.append("%d concurrent %s, CPU-s used (median of %d) over %s s: %s" % (
                    kmax, p, len(rs), fmt(statistics.median(r["wall_s"] for r in rs)),
                    ", ".join("%s %.2f" % (n, statistics.median(r["cpu_s"][n] for r in rs))
                              for n in names)))
        for p in ("xray", "direct"):
            rs = [r for r in c.get("runs", []) if r["path"] == p and r["k"] == kmax
                  and r.get("median_ms")]
            if rs:
                keys = [kk for kk in ("connect_ok", "link_tls", "link_ok", "connect_done",
                                      "echo_after_connect") if kk in rs[0]["median_ms"]]
                vals = []
                for kk in keys:
                    xs = [r["median_ms"][kk] for r in rs if r["median_ms"].get(kk) is not None]
                    vals.append("%s %s" % (kk, fmt(statistics.median(xs) if xs else None)))
                lines.append("%d concurrent %s, per-connection median ms since the start: %s; "
                             "TLS resumed %d/%d" % (
                                 kmax, p, ", ".join(vals), sum(r.get("resumed", 0) for r in rs),
                                 sum(r["ok"] for r in rs)))
        if "relay_points_after" in c:
            lines.append("relay points left 2 s after the concurrency phase: %s" % (
                ", ".join("%s %s" % (k.upper(), v) for k, v in c["relay_points_after"].items())))
        # servers
        for name in ("xserve", "dserve"):
            fin = [j for j in json_lines(self.out / "logs" / (name + ".jsonl")) if "stats" in j]
            if fin:
                j = fin[-1]
                lines.append("%s (b): %s%s%s" % (
                    name, json.dumps(j["stats"]),
                    (" refresh %s" % json.dumps(j["refresh"])) if "refresh" in j else "",
                    ("; errors: " + " | ".join(j["errors"][:5])) if j["errors"] else ""))
            else:
                lines.append("%s (b): no final stats (did it die? see logs/%s.stderr)"
                             % (name, name))
        # failures
        for p in ("xray", "direct"):
            errs = {}
            for r in by[p]:
                if not r["ok"]:
                    errs[r.get("error", "?")] = errs.get(r.get("error", "?"), 0) + 1
            for e, n in errs.items():
                lines.append("workload %s failures: %d x %s" % (p, n, e))
        for r in c.get("runs", []):
            if r["failed"]:
                lines.append("concurrency %s K=%d rep %d: %d failed: %s" % (
                    r["path"], r["k"], r["rep"] + 1, r["failed"], "; ".join(r["errors"])))
        for p in ("xray", "direct"):
            if b.get(p) and not b[p].get("ok"):
                lines.append("bulk %s failed: %s" % (p, json.dumps(b[p])[:400]))
        # agents' logs
        for me in ("a", "b"):
            dg = log_digest(self.adir[me] / "error.log")
            self.raw.setdefault("logs", {})[me] = dg
            lines.append("agent %s error.log: %s" % (me.upper(), ", ".join(
                "%s %d" % kv for kv in sorted(dg.get("counts", {}).items()))))
            for dd in dg.get("distinct", [])[:12]:
                if dd["pattern"].startswith("[notice]") and "relay point" not in dd["pattern"] \
                        and "refus" not in dd["pattern"] and "fail" not in dd["pattern"]:
                    continue
                lines.append("  %5d x %s" % (dd["n"], dd["example"][:200]))
        self.save("logs", self.raw.get("logs", {}))
        for n in self.notes:
            lines.append("note: " + n)
        lines.append("run took %.0f s; raw numbers and logs: %s" % (
            time.monotonic() - self.t_begin, self.out))
        text = "\n".join(lines) + "\n"
        (self.out / "summary.txt").write_text(text)
        (self.out / "env.json").write_text(json.dumps(self.env, indent=1))
        print(text, end="")
        return 0


def main():
    cmds = {"workload": cmd_workload, "concurrency": cmd_concurrency, "bulk": cmd_bulk,
            "seq": cmd_seq,
            "xserve": cmd_xserve, "dserve": cmd_dserve}
    if len(sys.argv) > 2 and sys.argv[1] in cmds:
        res = cmds[sys.argv[1]](json.loads(sys.argv[2]))
        if isinstance(res, dict):
            print(json.dumps(res), flush=True)
            return 0
        return res or 0
    if len(sys.argv) > 1:
        print(__doc__)
        return 2
    return run_bench("xray_bench", THIS, Bench)


if __name__ == "__main__":
    sys.exit(main())
