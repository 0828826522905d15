#!/usr/bin/env python3
"""contrib/bench/libxray_bench.py - the libxray preload shim and the `xray forward` /
`xray socks` tools, side by side in one run with what a user would do instead:
connect directly, through firewalls opened by hand.

Topology: t/netns.py with b2 (a behind NAT box nata; b and b2 behind natb; a public
bridge between the NAT boxes; nftables forwards nothing between LAN and public).
Agent A (xrayd) runs on nata, agent B on natb, configured as contrib/bench/
xray_bench.py does (t/test_66_agent_topology.py's _two_agents()), plus one application
on agent B for the client in b2: CN=app-1, outbound 198.18.2.0/24.

In b:
  the echo server   this file's `serve` under LD_PRELOAD=objs/libxray-preload.so (its
                    listen() registers it with agent B: it has an official address,
                    which getsockname() gives after listen) on 198.18.2.2:ECHO_PORT, its
                    real address, which a reaches directly once the firewalls forward
                    that port.  Every request opens with 9 bytes: b"E" + u64 n (echo n
                    bytes) or b"S" + u64 n (sink n bytes, answer the u64 count).
  http.server       python3 -m http.server on 0.0.0.0:8000 (plain), published by
                    `xray listen 8080 --to 127.0.0.1:8000` (relay-b, agent B)
The client (this file's `client`: the same file, the same code, on both paths)
connects with socket.create_connection(timeout=30), as an unmodified program would.

Measurements, each path interleaved with its baseline, bounded in count and time:
  1. a -> b: the client in a under the preload to the echo server's official address
     (relayed by the agents) vs the same client without it to 198.18.2.2:ECHO_PORT,
     with forward-accept rules for that port on both NAT boxes.  Per connection:
     connect() alone, and connect + a 1 KiB echo; then BYTES one way over one
     connection.  REPS rounds, each one process per path (WARMUP connections first,
     not counted), the order alternating; N_CONN connections per path in all.
  2. inside network B (CODO table 1, "Intra"): the same client in b2 with and without
     the preload to 198.18.2.2:ECHO_PORT (b's local address; the helper learns from
     agent B that nothing relays it and connects directly).  The same figures.
  3. curl: N_CURL sequential fetches of a FILE_BYTES file per path, the paths
     interleaved fetch by fetch (order rotating): `curl http://127.0.0.1:9000/f`
     through `xray forward 9000 OFFICIAL`, `curl --socks5 127.0.0.1:1080
     http://OFFICIAL/f` through `xray socks`, curl under the preload to
     http://OFFICIAL/f, and curl to http://198.18.2.2:8000/f with the firewalls opened
     for 8000.  curl's own time_total per fetch.

Results: a table (also summary.txt) and raw.json in BENCH_OUT (default
/tmp/xrayd-bench-libxray.STAMP), with the helpers' and agents' logs in logs/.
Needs root and `ip netns`, curl; Python's stdlib only (plus t/netns.py,
t/tls_helpers.py).  See README.md.
"""

import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TDIR = ROOT / "t"
sys.path.insert(0, str(TDIR))
sys.path.insert(0, str(HERE))
from xray_bench import (run_bench, agent_conf, cpu_seconds, env_int, fmt, hp, json_lines,  # noqa: E402
                        log, log_digest, pct, ratio, wait_for)

THIS = str(Path(__file__).resolve())
PY = "/usr/bin/python3"
NFT = "/usr/sbin/nft"

SERVER_IP = "198.18.2.2"
ECHO_PORT = 5001
HTTP_PORT = 8000
LISTEN_PORT = 8080
FWD_PORT = 9000
SOCKS_PORT = 1080
AGENT_PORT = 7000
# on agent B, besides xray_bench.py's applications: b2's client (CN=app-1) may connect
# inside network B
INTRA_APP_B = """  - name: intra
    match: ["CN=app-1"]
    outbound: ["198.18.2.0/24"]
"""


# ---- the echo server (b, under the preload) ------------------------------------------

def read_exact(c, n):
    buf = bytearray()
    while len(buf) < n:
        d = c.recv(min(262144, n - len(buf)))
        if not d:
            return None
        buf += d
    return bytes(buf)


def cmd_serve(cfg):
    """Echo / sink server.  Under the preload, listen() registers the socket and
    getsockname() is then its official address; direct clients reach the same
    socket at its real address."""
    peers = {}
    errors = []
    lock = threading.Lock()
    out = cfg["out"]

    def note(line):
        with open(out, "a") as f:
            f.write(json.dumps(line) + "\n")

    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((cfg["host"], cfg["port"]))
    ls.listen(1024)
    note({"listening": "%s:%d" % ls.getsockname()[:2]})

    def stop(*_a):
        with lock:
            note({"stats": {"peers": peers, "errors": errors[:20], "n_errors": len(errors)}})
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)

    def conn(c, peer):
        try:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.settimeout(120)
            with lock:
                peers[peer[0]] = peers.get(peer[0], 0) + 1
            buf = bytearray(262144)
            while True:
                hdr = read_exact(c, 9)
                if hdr is None:
                    break
                mode, n = hdr[:1], struct.unpack(">Q", hdr[1:])[0]
                if mode == b"E":
                    left = n
                    while left > 0:
                        k = c.recv_into(buf, min(len(buf), left))
                        if not k:
                            raise EOFError("echo: closed with %d bytes to go" % left)
                        c.sendall(memoryview(buf)[:k])
                        left -= k
                elif mode == b"S":
                    got = 0
                    while got < n:
                        k = c.recv_into(buf, min(len(buf), n - got))
                        if not k:
                            break
                        got += k
                    c.sendall(struct.pack(">Q", got))
                else:
                    raise ValueError("bad request header %r" % hdr)
        except Exception as e:  # noqa: BLE001 - counted, reported
            with lock:
                errors.append("%s from %s: %s" % (type(e).__name__, peer[0], e))
        finally:
            c.close()

    while True:
        c, peer = ls.accept()
        threading.Thread(target=conn, args=(c, peer), daemon=True).start()


# ---- the client (a or b2; the same code with and without the preload) -----------------

def cmd_client(cfg):
    """warmup + n sequential connections: connect() alone, then a 1 KiB echo; then
    `xfers` transfers of `bytes` one way, each over a connection of its own."""
    addr = hp(cfg["to"])
    timeout = cfg.get("timeout", 30)
    deadline = time.monotonic() + cfg["secs"]
    block = os.urandom(1024)
    req = b"E" + struct.pack(">Q", len(block)) + block
    res = {"conn_ms": [], "echo_ms": [], "warm_conn_ms": [], "warm_echo_ms": [],
           "xfer_s": [], "errors": [], "attempted": 0, "ok": 0}
    for i in range(cfg["warmup"] + cfg["n"]):
        if time.monotonic() > deadline:
            res["errors"].append("time bound (%ds) reached after %d connections"
                                 % (cfg["secs"], i))
            break
        warm = i < cfg["warmup"]
        if not warm:
            res["attempted"] += 1
        s = None
        try:
            t0 = time.perf_counter()
            s = socket.create_connection(addr, timeout)
            t1 = time.perf_counter()
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(req)
            got = read_exact(s, len(block))
            t2 = time.perf_counter()
            if got != block:
                raise RuntimeError("echo differs (%s bytes back)"
                                   % (None if got is None else len(got)))
            pre = "warm_" if warm else ""
            res[pre + "conn_ms"].append((t1 - t0) * 1e3)
            res[pre + "echo_ms"].append((t2 - t0) * 1e3)
            if not warm:
                res["ok"] += 1
        except Exception as e:  # noqa: BLE001 - recorded
            res["errors"].append("connection %d: %s: %s" % (i, type(e).__name__, e))
        finally:
            if s is not None:
                s.close()
    chunk = memoryview(os.urandom(256 * 1024))
    n = cfg["bytes"]
    res["xfer_cpu_s"] = []
    for _ in range(cfg["xfers"]):
        s = None
        try:
            s = socket.create_connection(addr, timeout)
            s.settimeout(max(60, cfg["secs"]))
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
            got = None if ans is None else struct.unpack(">Q", ans)[0]
            if got != n:
                raise RuntimeError("the sink got %s of %d bytes" % (got, n))
            res["xfer_s"].append(secs)
            res["xfer_cpu_s"].append(time.process_time() - c0)
        except Exception as e:  # noqa: BLE001
            res["errors"].append("transfer: %s: %s" % (type(e).__name__, e))
        finally:
            if s is not None:
                s.close()
    return res


# ---- the curl driver (a) --------------------------------------------------------------

def cmd_curls(cfg):
    """Sequential curl fetches, the paths interleaved fetch by fetch (order rotating).
    Each path: argv and extra environment (the preload's)."""
    paths = cfg["paths"]
    names = list(paths)
    fmt = "%{http_code} %{time_connect} %{time_total} %{size_download}"
    res = {p: {"total_ms": [], "connect_ms": [], "warm_total_ms": [], "errors": [],
               "attempted": 0, "ok": 0} for p in names}
    deadline = time.monotonic() + cfg["secs"]
    for i in range(cfg["warmup"] + cfg["n"]):
        if time.monotonic() > deadline:
            for p in names:
                res[p]["errors"].append("time bound (%ds) reached" % cfg["secs"])
            break
        warm = i < cfg["warmup"]
        k = i % len(names)
        for p in names[k:] + names[:k]:
            spec = paths[p]
            env = dict(os.environ, **spec.get("env", {}))
            argv = ["curl", "-sS", "--max-time", "30", "-o", "/dev/null", "-w", fmt,
                    *spec["args"]]
            if not warm:
                res[p]["attempted"] += 1
            try:
                r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
                f = r.stdout.split()
                if r.returncode != 0 or len(f) != 4 or f[0] != "200" or \
                        int(f[3]) != cfg["size"]:
                    raise RuntimeError("rc %d, %r %s" % (r.returncode, r.stdout,
                                                         r.stderr.strip()[:200]))
                if warm:
                    res[p]["warm_total_ms"].append(float(f[2]) * 1e3)
                else:
                    res[p]["total_ms"].append(float(f[2]) * 1e3)
                    res[p]["connect_ms"].append(float(f[1]) * 1e3)
                    res[p]["ok"] += 1
            except Exception as e:  # noqa: BLE001
                res[p]["errors"].append("fetch %d: %s: %s" % (i, type(e).__name__, e))
    return res


# ---- the orchestrator (host namespace, root) ------------------------------------------

def pids_by_cmdline(needle):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"helper" in argv and any(needle.encode() in a for a in argv):
            out.append(int(d))
    return out


def median(xs):
    return statistics.median(xs) if xs else None


class Bench:
    def __init__(self):
        self.t_begin = time.monotonic()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.out = Path(os.environ.get("BENCH_OUT") or "/tmp/xrayd-bench-libxray.%s" % stamp)
        self.reps = max(1, env_int("REPS", 5))
        self.n_conn = env_int("N_CONN", 200)
        self.n_curl = env_int("N_CURL", 100)
        self.warmup = env_int("WARMUP", 3)
        self.bytes = env_int("BYTES", 100_000_000)
        self.intra_bytes = env_int("INTRA_BYTES", 1_000_000_000)
        self.file_bytes = env_int("FILE_BYTES", 1024)
        self.phase_secs = env_int("PHASE_SECS", 300)
        self.tests = os.environ.get("TESTS", "xray intra curl").split()
        self.xrayd_orig = Path(os.environ.get("XRAYD_BIN") or ROOT / "objs" / "xrayd")
        self.xray = Path(os.environ.get("XRAY_BIN") or self.xrayd_orig.parent / "xray")
        self.preload = Path(os.environ.get("PRELOAD") or self.xrayd_orig.parent /
                            "libxray-preload.so")
        self.raw = {}
        self.notes = []
        self.procs = {}
        self.homes_tmp = None

    # -- helpers --

    def save(self):
        (self.out / "raw.json").write_text(json.dumps(self.raw, indent=1))

    def role_env(self, t, role):
        """The environment of an XRAY application in `role` (t/test_68_libxray.py's
        _env()): a (app-1, agent A), b (relay-b, agent B), b2 (app-1, agent B); a home
        and a 0700 runtime directory of its own, the helper from the build tree."""
        agent = "a" if role == "a" else "b"
        cert = "relay-b" if role == "b" else "app-1"
        home = self.homes / ("home-" + role)
        (home / "run").mkdir(parents=True, exist_ok=True)
        os.chmod(home / "run", 0o700)
        env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(home / "run"),
               "XRAY_AGENT": "%s:%d" % (t.addr("nat" + agent), AGENT_PORT),
               "XRAY_AGENT_NAME": "agent-" + agent,
               "XRAY_CERT": self.pki.crt(cert), "XRAY_KEY": self.pki.key(cert),
               "XRAY_CA": self.pki.ca, "XRAY_HELPER_BIN": str(self.xray)}
        return env

    def full_env(self, extra):
        env = dict(os.environ, **extra)
        for k in ("XRAY_CONFIG", "XRAY_DEBUG", "LD_PRELOAD", "XRAY_HELPER_SOCKET"):
            if k not in extra:
                env.pop(k, None)
        return env

    def start(self, t, role, name, argv, env=None, preload=False):
        """A long-running process in `role`, stderr to logs/NAME.stderr; under the
        preload through env(1), so that `ip netns exec` itself is not preloaded."""
        if preload:
            argv = ["/usr/bin/env", "LD_PRELOAD=%s" % self.preload, *argv]
        errf = self.out / "logs" / (name + ".stderr")
        p = t.popen(role, argv, env=self.full_env(env or {}), stderr=open(errf, "w"))
        self.procs[name] = p
        return p, errf

    def wait_line(self, p, errf, regex, what, timeout=30):
        def f():
            text = errf.read_text(errors="replace")
            m = re.search(regex, text)
            if m:
                return m
            if p.poll() is not None:
                raise RuntimeError("%s exited (rc %s): %s" % (what, p.returncode, text[-2000:]))
            return None
        return wait_for(f, timeout, what)

    def port_state(self, t, role, host, port):
        code = ("import socket,sys\ntry:\n socket.create_connection(('%s',%d),2).close();"
                "print('open')\nexcept OSError as e: print('closed', e)") % (host, port)
        return t.run(role, [PY, "-c", code], timeout=20).stdout.strip()

    def open_firewalls(self, t, ports):
        """Forward-accept rules for these ports of b only, both directions, on both NAT
        boxes (xray_bench.py's open_firewalls); nata masquerades a's address."""
        handles = {}
        for box in ("nata", "natb"):
            handles[box] = []
            for port in ports:
                for rule in ("ip daddr %s tcp dport %d accept" % (SERVER_IP, port),
                             "ip saddr %s tcp sport %d accept" % (SERVER_IP, port)):
                    p = t.run(box, [NFT, "--echo", "--handle", "insert", "rule", "inet",
                                    "filter", "forward", *rule.split()], timeout=20, check=True)
                    m = re.search(r"# handle (\d+)", p.stdout)
                    if not m:
                        raise RuntimeError("nft gave no handle: %r" % p.stdout)
                    handles[box].append(m.group(1))
        return handles

    def close_firewalls(self, t, handles):
        for box, hs in handles.items():
            for h in hs:
                t.run(box, [NFT, "delete", "rule", "inet", "filter", "forward", "handle", h],
                      timeout=20)

    def status(self, t, me):
        p = t.run("nat" + me, [str(self.xray), "status", "--socket",
                               str(self.adir[me] / "agent.sock"), "--json"], timeout=20)
        try:
            return json.loads(p.stdout)
        except ValueError:
            return {"error": "rc %d: %s %s" % (p.returncode, p.stdout[:300], p.stderr[:300])}

    def counters(self, t):
        return {me: self.status(t, me).get("counters", {}) for me in ("a", "b")}

    @staticmethod
    def delta(c0, c1):
        keys = ("connects", "relayed", "direct", "refused", "full_handshakes",
                "resumed_handshakes", "servers_dialed", "servers_connected_out")
        return {me: {k: c1[me].get(k, 0) - c0[me].get(k, 0) for k in keys if k in c1[me]}
                for me in c1}

    def sub(self, t, role, cmd, cfg, extra_env=None, preload=False, timeout=None):
        """Run this file's subcommand `cmd` in `role` (under the preload if asked) and
        return its JSON answer."""
        argv = [PY, THIS, cmd, json.dumps(cfg)]
        if preload:
            argv = ["/usr/bin/env", "LD_PRELOAD=%s" % self.preload, *argv]
        p = t.run(role, argv, timeout=timeout or self.phase_secs + 120,
                  env=self.full_env(extra_env or {}))
        lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
        if p.returncode != 0 or not lines:
            raise RuntimeError("%s in %s failed (rc %d): %s %s" % (
                cmd, role, p.returncode, p.stdout[-1000:], p.stderr[-2000:]))
        return json.loads(lines[-1])

    # -- the run --

    def run(self):
        import netns
        why = netns.unavailable()
        if why:
            print("libxray_bench: cannot run: %s" % why, file=sys.stderr)
            return 2
        for b in (self.xrayd_orig, self.xray, self.preload):
            if not os.path.exists(b):
                print("libxray_bench: %s not found (build first: make -j2)" % b, file=sys.stderr)
                return 2
        if "curl" in self.tests and shutil.which("curl") is None:
            print("libxray_bench: no curl (apt-get install curl, or TESTS='xray intra')",
                  file=sys.stderr)
            return 2
        import tls_helpers as th
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        bindir = self.out / "bin"
        bindir.mkdir(exist_ok=True)
        log("output: %s" % self.out)
        # a private copy of every binary: a rebuild during the run changes nothing
        xrayd = bindir / "xrayd"
        for src, dst in ((self.xrayd_orig, xrayd), (self.xray, bindir / "xray"),
                         (self.preload, bindir / "libxray-preload.so")):
            shutil.copy2(src, dst)
        self.xray, self.preload = bindir / "xray", bindir / "libxray-preload.so"
        # the helpers' unix sockets live under $XDG_RUNTIME_DIR: keep the path short
        self.homes = self.out
        if len(str(self.out)) > 60:
            self.homes_tmp = Path(tempfile.mkdtemp(prefix="xlb-", dir="/tmp"))
            self.homes = self.homes_tmp
        ver = subprocess.run([str(xrayd), "-V"], capture_output=True, text=True, timeout=20)
        vtext = (ver.stdout + ver.stderr).strip()
        self.env = {
            "date": time.strftime("%F %T UTC", time.gmtime()),
            "host": "%d cpus, kernel %s" % (os.cpu_count(), os.uname().release),
            "xrayd": "%s %s (sha256 %s)" % (self.xrayd_orig, vtext.splitlines()[0] if vtext
                                           else "?",
                                           hashlib.sha256(xrayd.read_bytes()).hexdigest()[:12]),
            "preload": "%s (sha256 %s), xray sha256 %s" % (
                self.preload, hashlib.sha256(self.preload.read_bytes()).hexdigest()[:12],
                hashlib.sha256(self.xray.read_bytes()).hexdigest()[:12]),
            "python": "%s, %s" % (sys.version.split()[0], ssl.OPENSSL_VERSION),
            "curl": subprocess.run(["curl", "--version"], capture_output=True, text=True,
                                   timeout=10).stdout.split("\n")[0]
            if shutil.which("curl") else None,
            "load_start": open("/proc/loadavg").read().split()[:3],
            "settings": dict(REPS=self.reps, N_CONN=self.n_conn, N_CURL=self.n_curl,
                             WARMUP=self.warmup, BYTES=self.bytes, INTRA_BYTES=self.intra_bytes,
                             FILE_BYTES=self.file_bytes,
                             PHASE_SECS=self.phase_secs, TESTS=self.tests),
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
            self.collect_logs()
            t.down()
            if self.homes_tmp is not None:
                shutil.rmtree(self.homes_tmp, ignore_errors=True)
        return rc

    def collect_logs(self):
        """The helpers' logs (under each home's runtime directory) into logs/."""
        for role in ("a", "b", "b2"):
            d = self.homes / ("home-" + role) / "run" / "xray"
            for f in sorted(d.glob("helper-*.log")) if d.is_dir() else []:
                try:
                    shutil.copy(f, self.out / "logs" / ("helper-%s-%s" % (role, f.name)))
                except OSError:
                    pass

    def _run(self, t, xrayd):
        self.adir, self.masters = {}, {}
        for me in ("a", "b"):
            d = self.out / ("agent-" + me)
            d.mkdir(exist_ok=True)
            self.adir[me] = d
            conf = agent_conf(t, self.pki, d, me, extra_apps_b=INTRA_APP_B)
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
        log("agents up: A on nata, B on natb")
        self.envs = {r: self.role_env(t, r) for r in ("a", "b", "b2")}

        # the echo server in b, under the preload
        srv_out = self.out / "logs" / "serve.jsonl"
        srv, srv_err = self.start(t, "b", "serve", [PY, THIS, "serve", json.dumps(
            {"host": SERVER_IP, "port": ECHO_PORT, "out": str(srv_out)})],
            env=self.envs["b"], preload=True)

        def listening():
            if srv.poll() is not None:
                raise RuntimeError("the echo server in b exited: %s"
                                   % srv_err.read_text()[-2000:])
            return next((j["listening"] for j in json_lines(srv_out) if "listening" in j), None)
        official = wait_for(listening, 40, "the echo server in b")
        if not official.startswith(t.pub_addr("natb") + ":"):
            raise RuntimeError("the echo server in b is not fully bound: getsockname() after "
                               "listen() gave %s, not an official address of agent B (see "
                               "logs/serve.stderr and the helper's log)" % official)
        self.official = official
        log("echo server in b: official %s, real %s:%d" % (official, SERVER_IP, ECHO_PORT))

        # http.server in b (plain, every address) published by `xray listen`
        www = self.out / "www"
        www.mkdir(exist_ok=True)
        (www / "f").write_bytes(os.urandom(self.file_bytes))
        self.http_official = None
        if "curl" in self.tests:
            self.start(t, "b", "http.server", [PY, "-m", "http.server", str(HTTP_PORT),
                                               "--bind", "0.0.0.0", "--directory", str(www)])
            wait_for(lambda: self.port_state(t, "b", "127.0.0.1", HTTP_PORT) == "open", 20,
                     "http.server in b")
            p, errf = self.start(t, "b", "xray-listen", [str(self.xray), "listen",
                                                         str(LISTEN_PORT), "--to",
                                                         "127.0.0.1:%d" % HTTP_PORT],
                                 env=self.envs["b"])
            m = self.wait_line(p, errf, r"fully bound: official (\S+)", "xray listen in b")
            self.http_official = m.group(1)
            p, errf = self.start(t, "a", "xray-forward", [str(self.xray), "forward",
                                                          str(FWD_PORT), self.http_official],
                                 env=self.envs["a"])
            self.wait_line(p, errf, r"listening on", "xray forward in a")
            p, errf = self.start(t, "a", "xray-socks", [str(self.xray), "socks",
                                                        "127.0.0.1:%d" % SOCKS_PORT],
                                 env=self.envs["a"])
            self.wait_line(p, errf, r"listening on", "xray socks in a")
            log("http.server in b on 0.0.0.0:%d, published by xray listen: official %s; "
                "xray forward on 127.0.0.1:%d and xray socks on 127.0.0.1:%d in a"
                % (HTTP_PORT, self.http_official, FWD_PORT, SOCKS_PORT))

        ports = [ECHO_PORT] + ([HTTP_PORT] if "curl" in self.tests else [])
        fw = {"before": {p: self.port_state(t, "a", SERVER_IP, p) for p in ports}}
        for p, st in fw["before"].items():
            if not st.startswith("closed"):
                raise RuntimeError("a -> %s:%d is open before the firewalls were touched: %s"
                                   % (SERVER_IP, p, st))
        handles = self.open_firewalls(t, ports)
        try:
            fw["opened"] = {p: self.port_state(t, "a", SERVER_IP, p) for p in ports}
            for p, st in fw["opened"].items():
                if st != "open":
                    raise RuntimeError("a -> %s:%d still closed with the rules in: %s"
                                       % (SERVER_IP, p, st))
            log("baseline: nata and natb forward %s ports %s (before: closed)"
                % (SERVER_IP, ",".join(map(str, ports))))
            self.phases(t)
        finally:
            self.close_firewalls(t, handles)
            fw["after"] = {p: self.port_state(t, "a", SERVER_IP, p) for p in ports}
            self.raw["firewall"] = fw
        for p, st in fw["after"].items():
            if not st.startswith("closed"):
                self.notes.append("a -> %s:%d still open after the rules were removed: %s"
                                  % (SERVER_IP, p, st))
        # stop what we started (the echo server writes its stats), then the agents
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

    def cpu_snapshot(self):
        """CPU-s so far of the agents (master + workers), the helpers and the echo
        server."""
        snap = {"agent A": cpu_seconds(self.masters["a"].pid),
                "agent B": cpu_seconds(self.masters["b"].pid),
                "server": cpu_seconds(self.procs["serve"].pid)}
        for role in ("a", "b", "b2"):
            pids = pids_by_cmdline(str(self.homes / ("home-" + role) / "run") + "/")
            snap["helper " + role] = sum(cpu_seconds(p) for p in pids)
        return snap

    def sub_safe(self, t, role, cfg, pre, timeout):
        """The client in `role`; a client that dies or hangs is a failed run, recorded,
        not the end of the bench."""
        try:
            return self.sub(t, role, "client", cfg, extra_env=self.envs[role] if pre else None,
                            preload=pre, timeout=timeout)
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
            return {"conn_ms": [], "echo_ms": [], "warm_conn_ms": [], "warm_echo_ms": [],
                    "xfer_s": [], "xfer_cpu_s": [], "attempted": 0, "ok": 0,
                    "errors": ["client process: %s: %s" % (type(e).__name__, str(e)[-600:])]}

    def rounds(self, t, role, key, paths, to, nbytes):
        """REPS rounds; in each, one client process per path for the connections, then
        one per path for the transfer, the order alternating from round to round.
        paths: (name, preload?) pairs, the XRAY one first."""
        per = max(1, math.ceil(self.n_conn / self.reps))
        res = {name: [] for name, _ in paths}
        deadline = time.monotonic() + self.phase_secs
        for r in range(self.reps):
            order = paths if r % 2 == 0 else list(reversed(paths))
            outs = {}
            for name, pre in order:
                left = max(10, int(deadline - time.monotonic()))
                cfg = {"to": to[name], "n": per, "warmup": self.warmup, "bytes": 0,
                       "xfers": 0, "secs": left}
                out = self.sub_safe(t, role, cfg, pre, left + 120)
                out["attempted"] = max(out["attempted"], per)
                out["round"] = r
                outs[name] = out
                res[name].append(out)
            for name, pre in (order if nbytes > 0 else []):
                left = max(10, int(deadline - time.monotonic()))
                cfg = {"to": to[name], "n": 0, "warmup": 0, "bytes": nbytes,
                       "xfers": 1, "secs": left}
                cpu0 = self.cpu_snapshot()
                x = self.sub_safe(t, role, cfg, pre, left + 120)
                cpu1 = self.cpu_snapshot()
                outs[name]["xfer_s"] = x["xfer_s"]
                outs[name]["errors"] += x["errors"]
                cpu = {k: cpu1[k] - cpu0[k] for k in cpu0 if cpu1[k] - cpu0[k] > 0}
                cpu["client"] = sum(x.get("xfer_cpu_s", []))
                outs[name]["xfer_cpu_s"] = cpu
            for name, _pre in order:
                out = outs[name]
                log("%s round %d %s: connect %s ms, +echo %s ms, %d/%d ok, transfer %s s%s" % (
                    key, r + 1, name, fmt(median(out["conn_ms"]), "%.3f"),
                    fmt(median(out["echo_ms"]), "%.3f"), out["ok"], out["attempted"],
                    fmt(median(out["xfer_s"]), "%.3f"),
                    ("; errors: " + " | ".join(out["errors"][:3])) if out["errors"] else ""))
            if time.monotonic() > deadline:
                self.notes.append("%s: time bound (PHASE_SECS=%d) reached after %d round(s)"
                                  % (key, self.phase_secs, r + 1))
                break
        return res

    def phases(self, t):
        if "xray" in self.tests:
            log("1: a -> b, the client under the preload to %s vs direct to %s:%d; "
                "%d rounds, %d connections per path, %d B one way" % (
                    self.official, SERVER_IP, ECHO_PORT, self.reps, self.n_conn, self.bytes))
            c0 = self.counters(t)
            r = self.rounds(t, "a", "xray", [("preload", True), ("direct", False)],
                            {"preload": self.official, "direct": "%s:%d" % (SERVER_IP,
                                                                            ECHO_PORT)},
                            self.bytes)
            r["bytes"] = self.bytes
            r["agent_counters_delta"] = self.delta(c0, self.counters(t))
            self.raw["xray"] = r
            self.save()
        if "intra" in self.tests:
            log("2: inside network B, the client in b2 with and without the preload to "
                "%s:%d" % (SERVER_IP, ECHO_PORT))
            c0 = self.counters(t)
            to = "%s:%d" % (SERVER_IP, ECHO_PORT)
            r = self.rounds(t, "b2", "intra", [("preload", True), ("plain", False)],
                            {"preload": to, "plain": to}, self.intra_bytes)
            r["bytes"] = self.intra_bytes
            r["agent_counters_delta"] = self.delta(c0, self.counters(t))
            self.raw["intra"] = r
            self.save()
        if "curl" in self.tests:
            log("3: curl, %d sequential fetches of %d B per path, interleaved" % (
                self.n_curl, self.file_bytes))
            pre = dict(self.envs["a"], LD_PRELOAD=str(self.preload))
            paths = {
                "forward": {"args": ["http://127.0.0.1:%d/f" % FWD_PORT]},
                "socks": {"args": ["--socks5", "127.0.0.1:%d" % SOCKS_PORT,
                                   "http://%s/f" % self.http_official]},
                "preload": {"args": ["http://%s/f" % self.http_official], "env": pre},
                "direct": {"args": ["http://%s:%d/f" % (SERVER_IP, HTTP_PORT)]},
            }
            c0 = self.counters(t)
            r = self.sub(t, "a", "curls", {"paths": paths, "n": self.n_curl,
                                           "warmup": self.warmup, "size": self.file_bytes,
                                           "secs": self.phase_secs})
            r["agent_counters_delta"] = self.delta(c0, self.counters(t))
            for p in ("forward", "socks", "preload", "direct"):
                log("curl %s: median %s ms, %d/%d ok%s" % (
                    p, fmt(median(r[p]["total_ms"]), "%.2f"), r[p]["ok"], r[p]["attempted"],
                    ("; errors: " + " | ".join(r[p]["errors"][:3])) if r[p]["errors"] else ""))
            self.raw["curl"] = r
            self.save()

    # -- the report --

    def report(self):
        rows = []

        def verdict(ok):
            return "" if ok is None else ("met" if ok else "MISSED")

        def spread(vals, spec):
            vals = [v for v in vals if v is not None]
            if len(vals) < 2:
                return ""
            return " (%s..%s)" % (spec % min(vals), spec % max(vals))

        def pooled(runs, key):
            return [x for run in runs for x in run[key]]

        def mid(vals):
            return median([v for v in vals if v is not None])

        def two_path(sec, x, base, label_x, conn_aim, xfer_aim, diff_mode):
            """Medians over all rounds; ratio (difference) = the median of the per-round
            ratios (differences), with their range."""
            d = self.raw.get(sec)
            if not d:
                return
            rx, rb = d[x], d[base]
            nbytes = d.get("bytes", 0)
            for key, what in (("conn_ms", "connect() alone, median ms"),
                              ("echo_ms", "connect + 1 KiB echo, median ms")):
                mx, mb = median(pooled(rx, key)), median(pooled(rb, key))
                if diff_mode:
                    per = [None if median(a[key]) is None or median(b[key]) is None
                           else median(a[key]) - median(b[key]) for a, b in zip(rx, rb)]
                    dv = mid(per)
                    cell = "NA" if dv is None else "%+.3f ms%s" % (dv, spread(per, "%+.3f"))
                    aim = "<= +%g ms" % conn_aim
                    ok = None if dv is None else dv <= conn_aim
                else:
                    per = [ratio(median(a[key]), median(b[key])) for a, b in zip(rx, rb)]
                    rr = mid(per)
                    cell = "NA" if rr is None else "%.2fx%s" % (rr, spread(per, "%.2f"))
                    aim = "<= %gx" % conn_aim
                    ok = None if rr is None else rr <= conn_aim
                rows.append(("%s: %s" % (label_x, what), fmt(mx, "%.3f"), fmt(mb, "%.3f"),
                             cell, aim, verdict(ok)))
                px, pb = pct(pooled(rx, key), 0.9), pct(pooled(rb, key), 0.9)
                rows.append(("%s: %s p90" % (label_x, what.split(",")[0]), fmt(px, "%.3f"),
                             fmt(pb, "%.3f"), "NA" if ratio(px, pb) is None else
                             ("%+.3f ms" % (px - pb) if diff_mode else "%.2fx" % ratio(px, pb)),
                             "(all rounds)", ""))
            if nbytes > 0:
                sx, sb = median(pooled(rx, "xfer_s")), median(pooled(rb, "xfer_s"))
                mbx = None if sx is None else nbytes / sx / 1e6
                mbb = None if sb is None else nbytes / sb / 1e6
                per = [ratio(median(a["xfer_s"]), median(b["xfer_s"])) for a, b in zip(rx, rb)]
                if xfer_aim[0] == "time":
                    rr = mid(per)
                    rows.append(("%s: %d B one way, median s" % (label_x, nbytes),
                                 fmt(sx, "%.3f"), fmt(sb, "%.3f"),
                                 "NA" if rr is None else "%.2fx%s" % (rr, spread(per, "%.2f")),
                                 "<= %gx" % xfer_aim[1],
                                 verdict(None if rr is None else rr <= xfer_aim[1])))
                    rows.append(("%s: one way, MB/s" % label_x, fmt(mbx, "%.1f"),
                                 fmt(mbb, "%.1f"), fmt(ratio(mbx, mbb), "%.3fx"),
                                 "(all rounds)", ""))
                else:
                    per = [None if v is None else 1 / v for v in per]
                    rr = mid(per)
                    rows.append(("%s: %d B one way, MB/s" % (label_x, nbytes),
                                 fmt(mbx, "%.1f"), fmt(mbb, "%.1f"),
                                 "NA" if rr is None else "%.3fx%s" % (rr, spread(per, "%.3f")),
                                 ">= %gx (<= 3%% loss)" % xfer_aim[1],
                                 verdict(None if rr is None else rr >= xfer_aim[1])))
            okx = sum(r["ok"] for r in rx)
            okb = sum(r["ok"] for r in rb)
            rows.append(("%s: connections ok / attempted" % label_x,
                         "%d/%d" % (okx, sum(r["attempted"] for r in rx)),
                         "%d/%d" % (okb, sum(r["attempted"] for r in rb)), "", "all",
                         verdict(okx == sum(r["attempted"] for r in rx) and
                                 okb == sum(r["attempted"] for r in rb))))
            nx = sum(len(r["xfer_s"]) for r in rx)
            nb = sum(len(r["xfer_s"]) for r in rb)
            if nbytes > 0:
                rows.append(("%s: transfers ok / attempted" % label_x,
                             "%d/%d" % (nx, len(rx)), "%d/%d" % (nb, len(rb)), "", "all",
                             verdict(nx == len(rx) and nb == len(rb))))

        two_path("xray", "preload", "direct", "1 a->b preload vs direct",
                 1.2, ("time", 1.1), False)
        two_path("intra", "preload", "plain", "2 b2->b (intra) preload vs plain",
                 0.2, ("tput", 0.97), True)
        cu = self.raw.get("curl")
        if cu:
            d = cu["direct"]["total_ms"]
            md = median(d)
            for p, label in (("forward", "xray forward"), ("socks", "xray socks"),
                             ("preload", "under the preload")):
                xs = cu[p]["total_ms"]
                mx = median(xs)
                # per-block ratios: the fetches cut into REPS consecutive blocks
                k = max(1, len(xs) // self.reps)
                per = [ratio(median(xs[i:i + k]), median(d[i:i + k]))
                       for i in range(0, min(len(xs), len(d)), k)
                       if len(xs[i:i + k]) == k and len(d[i:i + k]) == k] or [ratio(mx, md)]
                rr = mid(per)
                rows.append(("3 curl %s vs direct: time_total, median ms" % label,
                             fmt(mx, "%.3f"), fmt(md, "%.3f"),
                             "NA" if rr is None else "%.2fx%s" % (rr, spread(per, "%.2f")),
                             "<= 2x", verdict(None if rr is None else rr <= 2.0)))
            for p in ("forward", "socks", "preload"):
                px, pd = pct(cu[p]["total_ms"], 0.9), pct(d, 0.9)
                rows.append(("3 curl %s: time_total p90 ms" % p, fmt(px, "%.3f"),
                             fmt(pd, "%.3f"), fmt(ratio(px, pd), "%.2fx"), "", ""))
            okall = all(cu[p]["ok"] == cu[p]["attempted"] for p in
                        ("forward", "socks", "preload", "direct"))
            rows.append(("3 curl fetches ok: forward / socks / preload",
                         " / ".join("%d/%d" % (cu[p]["ok"], cu[p]["attempted"])
                                    for p in ("forward", "socks", "preload")),
                         "%d/%d" % (cu["direct"]["ok"], cu["direct"]["attempted"]), "",
                         "all", verdict(okall)))

        hdr = ("metric", "xray path", "baseline", "ratio: median of rounds (min..max)",
               "aim", "")
        widths = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(6)]
        lines = []
        lines.append("libxray preload and xray forward/socks vs direct (firewalls opened)")
        lines.append("xrayd: %s; preload: %s" % (self.env["xrayd"], self.env["preload"]))
        lines.append("host: %s; python %s; %s; load at start %s, at end %s" % (
            self.env["host"], self.env["python"], self.env["curl"] or "no curl",
            " ".join(self.env["load_start"]),
            " ".join(open("/proc/loadavg").read().split()[:3])))
        s = self.env["settings"]
        lines.append("settings: REPS=%d rounds (order alternating), N_CONN=%d connections per "
                     "path (+%d warm-up per round), one way per round BYTES=%d (1) and "
                     "INTRA_BYTES=%d (2), N_CURL=%d fetches per path of FILE_BYTES=%d, "
                     "tests %s" % (s["REPS"], s["N_CONN"], s["WARMUP"], s["BYTES"],
                                   s["INTRA_BYTES"], s["N_CURL"], s["FILE_BYTES"],
                                   " ".join(s["TESTS"])))
        lines.append("xray path: 1 and 3 relayed by agents A and B (official %s, http %s); "
                     "2 the helper's direct answer. baseline: 1, 3 direct to %s with nft "
                     "forward rules on both NAT boxes; 2 the same client without LD_PRELOAD"
                     % (self.official, self.http_official or "-", SERVER_IP))
        lines.append("")
        for r in [hdr, tuple("-" * w for w in widths)] + rows:
            lines.append(" | ".join(str(r[i]).ljust(widths[i]) if i in (0, 4, 5) else
                                    str(r[i]).rjust(widths[i]) for i in range(6)).rstrip())
        lines.append("")
        # evidence: who carried what
        for sec in ("xray", "intra", "curl"):
            d = self.raw.get(sec, {}).get("agent_counters_delta")
            if d:
                lines.append("agent counters during %s: %s" % (sec, "; ".join(
                    "%s %s" % (me.upper(), ", ".join("%s +%d" % kv for kv in v.items() if kv[1]))
                    for me, v in d.items())))
        st = self.raw.get("serve_stats")
        if st:
            lines.append("echo server in b, connections by peer (as accept() gave it): %s%s" % (
                ", ".join("%s %d" % kv for kv in sorted(st["peers"].items())),
                ("; %d error(s): %s" % (st["n_errors"], " | ".join(st["errors"][:5])))
                if st["n_errors"] else ""))
        else:
            lines.append("echo server in b: no final stats (see logs/serve.stderr)")
        for sec, names in (("xray", ("preload", "direct")), ("intra", ("preload", "plain"))):
            d = self.raw.get(sec)
            if not d:
                continue
            first = d[names[0]][0]["warm_echo_ms"][:1] if d[names[0]] else []
            if first:
                lines.append("%s: first preload connection of the run (+echo; %s) %.1f ms" % (
                    sec, "starts a's helper, full TLS handshakes" if sec == "xray"
                    else "starts b2's helper, asks agent B", first[0]))
            if d.get("bytes", 0) > 0:
                for n in names:
                    tot = {}
                    for r in d[n]:
                        for k, v in (r.get("xfer_cpu_s") or {}).items():
                            tot[k] = tot.get(k, 0) + v
                    gb = d["bytes"] * sum(len(r["xfer_s"]) for r in d[n]) / 1e9
                    if tot and gb:
                        lines.append("%s %s one-way transfers: CPU-s per GB: %s (all %.2f)" % (
                            sec, n, ", ".join("%s %.2f" % (k, v / gb) for k, v in
                                              sorted(tot.items(), key=lambda kv: -kv[1])),
                            sum(tot.values()) / gb))
            for n in names:
                errs = [e for r in d[n] for e in r["errors"]]
                if errs:
                    lines.append("%s %s errors (%d): %s" % (sec, n, len(errs),
                                                            " | ".join(errs[:5])))
        cu = self.raw.get("curl")
        if cu:
            for p in ("forward", "socks", "preload", "direct"):
                if cu[p]["errors"]:
                    lines.append("curl %s errors (%d): %s" % (p, len(cu[p]["errors"]),
                                                             " | ".join(cu[p]["errors"][:5])))
            lines.append("curl time_connect median ms: %s" % ", ".join(
                "%s %s" % (p, fmt(median(cu[p]["connect_ms"]), "%.3f"))
                for p in ("forward", "socks", "preload", "direct")))
        fw = self.raw.get("firewall", {})
        if fw:
            lines.append("firewall check a -> %s: before %s; opened %s; after %s" % (
                SERVER_IP, *(", ".join("%s %s" % (p, v.split()[0]) for p, v in
                                       fw.get(k, {}).items()) for k in
                             ("before", "opened", "after"))))
        for me in ("a", "b"):
            dg = log_digest(self.adir[me] / "error.log",
                            distinct_levels=("warn", "error", "crit", "alert", "emerg"))
            self.raw.setdefault("agent_logs", {})[me] = dg
            lines.append("agent %s error.log: %s" % (me.upper(), ", ".join(
                "%s %d" % kv for kv in sorted(dg.get("counts", {}).items()))))
            for dd in dg.get("distinct", [])[:8]:
                lines.append("  %5d x %s" % (dd["n"], dd["example"][:200]))
        for f in sorted((self.out / "logs").glob("helper-*.log")):
            text = f.read_text(errors="replace").splitlines()
            bad = [ln for ln in text if re.search(r"fail|error|refused|cannot|lost", ln)]
            lines.append("%s: %d lines, %d with fail/error/refused/cannot/lost%s" % (
                f.name, len(text), len(bad), (": " + bad[0][:200]) if bad else ""))
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
    cmds = {"serve": cmd_serve, "client": cmd_client, "curls": cmd_curls}
    if len(sys.argv) > 2 and sys.argv[1] in cmds:
        res = cmds[sys.argv[1]](json.loads(sys.argv[2]))
        print(json.dumps(res), flush=True)
        return 0
    if len(sys.argv) > 1:
        print(__doc__)
        return 2
    return run_bench("libxray_bench", THIS, Bench)


if __name__ == "__main__":
    sys.exit(main())
