"""netns: the XRAY paper's section 8 test topology, out of Linux network
namespaces (see DESIGN.md, "Testing in a real topology").

    a --LAN A-- nata ==public== natb --LAN B-- b   (and b2, if asked)

Five namespaces (six with b2), named PREFIX + ROLE where PREFIX is "xr" plus
six random hex digits, unique per Topology (e.g. "xr3fa01cnata"):

  role  what                         addresses (only 198.18.0.0/15)
  a     client host in network A     198.18.1.2/24 on eth0, default via .1
  nata  NAT box of A                 198.18.1.1/24 on bridge "lan",
                                     198.19.0.1/24 on "pub"
  pub   the public segment: a bridge 198.19.0.254/24 on bridge "br0"
        joining nata and natb        (a public host, if a test wants one)
  natb  NAT box of B                 198.18.2.1/24 on bridge "lan",
                                     198.19.0.2/24 on "pub"
  b     server host in network B     198.18.2.2/24 on eth0, default via .1
  b2    second host in B (b2=True)   198.18.2.3/24 on eth0, default via .1

Every link is a veth pair created directly between two of these namespaces
(never in, or bridged to, the host's namespace); `lo` is up everywhere;
IPv6 is disabled on every interface except lo.  Each NAT box bridges its
LAN ports into "lan", has ip_forward=1, a route to the other LAN via the
other NAT box's public address (so the public segment would carry the
traffic: only the firewalls stop a direct connection, silently, rather
than a missing route answering "unreachable" at once), and this nftables
ruleset:

  table ip nat      postrouting: oifname "pub" masquerade
  table inet filter forward, policy drop: accepts ONLY bridged LAN-to-LAN
                    traffic (iifname "lan" oifname "lan"), because
                    bridge-nf-call-iptables is 1 so b <-> b2 frames cross
                    this hook too.  No established/related accept: the
                    box forwards nothing between LAN and public, either way,
                    except connections marked ct mark 0x5852 - the one rule
                    an administrator adds for xrayd's openings (CODO), and
                    nothing carries that mark unless xrayd's own table
                    (inet xrayd) set it.

The NAT boxes themselves talk freely (no input/output filter): to their LAN
hosts and to each other over the public segment, where the agents will be.

API
  Topology(prefix=None, b2=False)     .up() -> self, .down() (idempotent),
                                      `with Topology() as t:` (up/down)
  t.ns(role) -> namespace name        t.names -> all namespace names
  t.roles -> roles of this topology
  t.addr(role) -> primary IPv4: the LAN address of hosts and NAT boxes,
                  198.19.0.254 for pub
  t.pub_addr(role) -> public address of 'nata' / 'natb'
  t.run(role, argv, timeout=30, check=False, **kw) -> CompletedProcess
                  (`ip netns exec`, text output captured by default)
  t.popen(role, argv, **kw) -> Popen, own session; killed by down()
  t.listen(role, host, port, timeout=10) -> Popen of a TCP listener that
                  answers every connection with the peer's IP and a
                  newline, returned once it is listening
  t.connect(role, host, port, timeout=2.0) -> Probe(status, detail):
                  ("ok", peer-IP-the-listener-saw), ("timeout", ""),
                  or ("error", "ECONNREFUSED"/...)
  sweep_stale() -> names deleted: namespaces matching xr??????ROLE whose
                  creating process is gone (killed run)
  unavailable() -> None, or why namespaces cannot be used here
  topology        pytest fixture: an up Topology, always torn down; skips if
                  unavailable().  Parametrize indirectly for options:
                  @pytest.mark.parametrize("topology", [{"b2": True}],
                                           indirect=True)
                  Make it visible in a test module with
                  `topology = netns.topology` (or import it).

Ownership: before creating any namespace, up() writes MARKER_DIR/PREFIX
holding "pid starttime" of this process; sweep_stale() deletes only
namespaces whose marker is missing or names a process that no longer
exists, so concurrent runs on one machine leave each other alone.  down()
also runs at interpreter exit (atexit) for topologies still up; a run killed
by a signal is cleaned by the next run's sweep_stale() (the fixture calls
it first).  Every subprocess and wait here is bounded in time.
"""

import atexit
import collections
import os
import re
import secrets
import selectors
import signal
import subprocess
import time

import pytest

IP = "/usr/sbin/ip"
NFT = "/usr/sbin/nft"
SYSCTL = "/usr/sbin/sysctl"
PYTHON = "/usr/bin/python3"
MARKER_DIR = "/run/xrayd-netns"

ROLES = ("a", "nata", "pub", "natb", "b", "b2")
PREFIX_RE = re.compile(r"^xr[0-9a-f]{6}$")
NAME_RE = re.compile(r"^(xr[0-9a-f]{6})(%s)$" % "|".join(ROLES))

LAN_ADDR = {"a": "198.18.1.2", "nata": "198.18.1.1",
            "natb": "198.18.2.1", "b": "198.18.2.2", "b2": "198.18.2.3",
            "pub": "198.19.0.254"}
PUB_ADDR = {"nata": "198.19.0.1", "natb": "198.19.0.2"}
LAN_NET = {"nata": "198.18.1.0/24", "natb": "198.18.2.0/24"}
OTHER = {"nata": "natb", "natb": "nata"}

CMD_TIMEOUT = 20.0

NAT_RULES = """\
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "pub" masquerade
    }
}
table inet filter {
    chain forward {
        type filter hook forward priority filter; policy drop;
        iifname "lan" oifname "lan" accept
        ct mark & 0x00005852 == 0x00005852 accept
    }
}
"""

Probe = collections.namedtuple("Probe", "status detail")

_LISTENER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    try:
        c.sendall((peer[0] + "\n").encode())
    except OSError:
        pass
    c.close()
"""

_CONNECTOR = r"""
import errno, socket, sys
t = float(sys.argv[3])
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=t)
    c.settimeout(t)
    data = b""
    while not data.endswith(b"\n"):
        d = c.recv(256)
        if not d:
            break
        data += d
    print("ok", data.decode().strip())
except TimeoutError:
    print("timeout")
except OSError as e:
    print("error", errno.errorcode.get(e.errno, str(e)))
"""


# ---- plumbing ----------------------------------------------------------

def _run(argv, timeout=CMD_TIMEOUT, check=True, input=None):
    p = subprocess.run(argv, input=input, capture_output=True, text=True,
                       errors="replace", timeout=timeout,
                       stdin=None if input is not None else subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (
            " ".join(argv), p.returncode, (p.stderr or p.stdout).strip()))
    return p


def list_netns():
    """Names of all named network namespaces on the machine."""
    p = _run([IP, "netns", "list"], check=False)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def _netns_pids(name):
    p = _run([IP, "netns", "pids", name], check=False)
    return [int(x) for x in p.stdout.split() if x.isdigit()]


def _kill_netns_pids(name, timeout=5.0):
    """SIGKILL every process inside namespace `name` (all of them are ours:
    the namespace is) and wait, bounded, until none is left."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in _netns_pids(name) if p != os.getpid()]
        if not pids or time.monotonic() >= deadline:
            return pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _delete_netns(name):
    _kill_netns_pids(name)
    _run([IP, "netns", "delete", name], check=False)


def _start_time(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(")") + 2:].split()[19]


def _owner_alive(prefix):
    try:
        with open(os.path.join(MARKER_DIR, prefix)) as f:
            pid, start = f.read().split()
    except (FileNotFoundError, ValueError):
        return False
    return _start_time(int(pid)) == start


def sweep_stale():
    """Delete namespaces (and markers) of earlier runs that died without
    tearing down; returns the namespace names deleted."""
    gone = []
    for name in list_netns():
        m = NAME_RE.match(name)
        if m and not _owner_alive(m.group(1)):
            _delete_netns(name)
            gone.append(name)
    try:
        markers = os.listdir(MARKER_DIR)
    except FileNotFoundError:
        markers = []
    for prefix in markers:
        if PREFIX_RE.match(prefix) and not _owner_alive(prefix):
            try:
                os.unlink(os.path.join(MARKER_DIR, prefix))
            except FileNotFoundError:
                pass
    return gone


_unavailable = []


def unavailable():
    """None if this process can build topologies, else the reason."""
    if not _unavailable:
        reason = None
        if os.geteuid() != 0:
            reason = "network namespaces need root"
        else:
            for tool in (IP, NFT, SYSCTL, PYTHON):
                if not os.access(tool, os.X_OK):
                    reason = "%s not found" % tool
                    break
        if reason is None:
            try:
                p = _run([IP, "netns", "list"], check=False)
                if p.returncode != 0:
                    reason = "`ip netns` unavailable: %s" % p.stderr.strip()
                else:
                    p = _run(["/usr/bin/unshare", "--net", "/bin/true"],
                             check=False)
                    if p.returncode != 0:
                        reason = "cannot create a network namespace: %s" % (
                            p.stderr.strip())
            except (OSError, subprocess.TimeoutExpired) as e:
                reason = "`ip netns` unavailable: %s" % e
        _unavailable.append(reason)
    return _unavailable[0]


def _readline(stream, timeout):
    """One line from a pipe, or None after `timeout` seconds / at EOF."""
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        deadline = time.monotonic() + timeout
        buf = b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return None
            d = os.read(stream.fileno(), 1)
            if not d:
                return None
            buf += d
        return buf.decode(errors="replace").strip()
    finally:
        sel.close()


# ---- the topology ------------------------------------------------------

_live = set()


@atexit.register
def _down_all():
    for t in list(_live):
        try:
            t.down()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


class Topology:
    """a -- nata == pub == natb -- b [, b2]; see the module docstring."""

    def __init__(self, prefix=None, b2=False):
        self.prefix = prefix or "xr" + secrets.token_hex(3)
        if not PREFIX_RE.match(self.prefix):
            raise ValueError("prefix must match %s (so sweep_stale() can "
                             "find leftovers)" % PREFIX_RE.pattern)
        self.roles = tuple(r for r in ROLES if b2 or r != "b2")
        self.procs = []
        self.is_up = False

    # -- names and addresses --

    def ns(self, role):
        if role not in self.roles:
            raise KeyError("no role %r in this topology (roles: %s)"
                           % (role, ", ".join(self.roles)))
        return self.prefix + role

    @property
    def names(self):
        return [self.ns(r) for r in self.roles]

    def addr(self, role):
        """Primary IPv4 address: LAN side for hosts and NAT boxes."""
        self.ns(role)
        return LAN_ADDR[role]

    def pub_addr(self, role):
        """Public-side address of a NAT box ('nata' or 'natb')."""
        if role not in PUB_ADDR:
            raise KeyError("only nata and natb have a public address")
        return PUB_ADDR[role]

    # -- life cycle --

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()
        return False

    def up(self):
        """Build everything; on any failure tear down what exists and
        re-raise."""
        assert not self.is_up, "already up"
        _live.add(self)
        self.is_up = True
        try:
            self._mark()
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _mark(self):
        os.makedirs(MARKER_DIR, exist_ok=True)
        with open(os.path.join(MARKER_DIR, self.prefix), "w") as f:
            f.write("%d %s\n" % (os.getpid(), _start_time(os.getpid())))

    def _ip_batch(self, role, lines):
        _run([IP, "-n", self.ns(role), "-batch", "-"],
             input="".join(l + "\n" for l in lines))

    def _build(self):
        hosts = {"nata": ["a"], "natb": [r for r in ("b", "b2")
                                         if r in self.roles]}
        for role in self.roles:
            _run([IP, "netns", "add", self.ns(role)])
        for role in self.roles:
            # New interfaces inherit `default`: no IPv6 on them (lo keeps ::1).
            sysctls = ["net.ipv6.conf.default.disable_ipv6=1"]
            if role in ("nata", "natb"):
                sysctls.append("net.ipv4.ip_forward=1")
            self.run(role, [SYSCTL, "-q", "-w", *sysctls], check=True)
        # Bridges first, then veth pairs created straight between two
        # namespaces (nothing ever exists in the host's namespace).
        self._ip_batch("pub", ["link add br0 type bridge"])
        for box in ("nata", "natb"):
            self._ip_batch(box, ["link add lan type bridge",
                                 "link add pub type veth peer name p-%s "
                                 "netns %s" % (box, self.ns("pub"))])
            for h in hosts[box]:
                self._ip_batch(h, ["link add eth0 type veth peer name "
                                   "lan-%s netns %s" % (h, self.ns(box))])
        # Addresses, ports, routes.
        self._ip_batch("pub", [
            "link set lo up",
            "link set p-nata master br0", "link set p-natb master br0",
            "addr add %s/24 dev br0" % LAN_ADDR["pub"],
            "link set p-nata up", "link set p-natb up", "link set br0 up"])
        for box in ("nata", "natb"):
            lines = ["link set lo up"]
            for h in hosts[box]:
                lines += ["link set lan-%s master lan" % h,
                          "link set lan-%s up" % h]
            lines += ["addr add %s/24 dev lan" % LAN_ADDR[box],
                      "addr add %s/24 dev pub" % PUB_ADDR[box],
                      "link set lan up", "link set pub up",
                      "route add %s via %s" % (LAN_NET[OTHER[box]],
                                               PUB_ADDR[OTHER[box]])]
            self._ip_batch(box, lines)
            for h in hosts[box]:
                self._ip_batch(h, ["link set lo up",
                                   "addr add %s/24 dev eth0" % LAN_ADDR[h],
                                   "link set eth0 up",
                                   "route add default via %s" % LAN_ADDR[box]])
            self.run(box, [NFT, "-f", "-"], input=NAT_RULES, check=True)
        self._wait_links()

    def _wait_links(self, timeout=10.0):
        """Bounded wait until every interface is operationally up."""
        deadline = time.monotonic() + timeout
        while True:
            down = []
            for role in self.roles:
                p = _run([IP, "-n", self.ns(role), "-o", "link", "show"])
                for line in p.stdout.splitlines():
                    dev = line.split(":")[1].strip().split("@")[0]
                    if dev != "lo" and "state UP" not in line:
                        down.append("%s/%s" % (role, dev))
            if not down:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError("links not up after %.0fs: %s"
                                   % (timeout, down))
            time.sleep(0.05)

    def down(self):
        """Kill every process started here or living in the namespaces,
        delete the namespaces (and with them every link), remove the
        marker.  Idempotent; works after a partial up()."""
        if not self.is_up:
            return
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + 3.0
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()
        self.procs = []
        existing = set(list_netns())
        for name in self.names:
            if name in existing:
                _delete_netns(name)
        left = [n for n in list_netns() if n in self.names]
        try:
            os.unlink(os.path.join(MARKER_DIR, self.prefix))
        except FileNotFoundError:
            pass
        self.is_up = False
        _live.discard(self)
        if left:
            raise RuntimeError("namespaces not deleted: %s" % left)

    # -- running things inside --

    def _argv(self, role, argv):
        return [IP, "netns", "exec", self.ns(role), *map(str, argv)]

    def run(self, role, argv, timeout=30, check=False, **kw):
        """Run argv inside `role`'s namespace to completion (bounded);
        text stdout/stderr captured unless the caller says otherwise."""
        kw.setdefault("text", True)
        kw.setdefault("errors", "replace")
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        if "input" not in kw:
            kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.run(self._argv(role, argv), timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise RuntimeError("in %s: %s failed (%d): %s" % (
                role, " ".join(map(str, argv)), p.returncode,
                (p.stderr or p.stdout or "").strip()))
        return p

    def popen(self, role, argv, **kw):
        """Start a long-running argv inside `role`'s namespace in its own
        session (stdio to /dev/null unless given); down() kills it."""
        assert self.is_up, "topology is not up"
        for k in ("stdin", "stdout", "stderr"):
            kw.setdefault(k, subprocess.DEVNULL)
        p = subprocess.Popen(self._argv(role, argv), start_new_session=True,
                             **kw)
        self.procs.append(p)
        return p

    def listen(self, role, host, port, timeout=10.0):
        """A TCP listener on host:port inside `role` that answers every
        connection with the peer's IP address; returned once listening."""
        p = self.popen(role, [PYTHON, "-u", "-c", _LISTENER, host, port],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = _readline(p.stdout, timeout)
        if line != "ready":
            p.kill()
            p.wait(5)
            raise RuntimeError("listener on %s:%s in %s did not start: %r %s"
                               % (host, port, role, line,
                                  p.stderr.read().decode(errors="replace")))
        return p

    def connect(self, role, host, port, timeout=2.0):
        """Try a TCP connection from `role` to host:port; Probe(status,
        detail) with status "ok" (detail: the peer address the listener
        saw), "timeout", or "error" (detail: errno name)."""
        p = self.run(role, [PYTHON, "-c", _CONNECTOR, host, port, timeout],
                     timeout=3 * timeout + 10)
        out = p.stdout.strip().split(None, 1)
        if p.returncode != 0 or not out:
            raise RuntimeError("connect probe failed in %s: %s"
                               % (role, p.stderr.strip()))
        return Probe(out[0], out[1] if len(out) > 1 else "")


@pytest.fixture
def topology(request):
    """An up Topology (kwargs from indirect parametrization), always torn
    down; skips where namespaces cannot be built."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    sweep_stale()
    t = Topology(**(getattr(request, "param", None) or {}))
    try:
        yield t.up()
    finally:
        t.down()


__all__ = ["Topology", "Probe", "topology", "sweep_stale", "unavailable",
           "list_netns"]
