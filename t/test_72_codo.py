"""CODO (traversal: open): the agents on the two NAT boxes open their
firewalls for one connection at a time, and the applications talk
directly, in the namespace topology whose forward chains drop everything
but connections xrayd's own table marked (netns.NAT_RULES).

Applications are unmodified Python programs under the preload; the
firewalls are checked with `nft list` in the NAT boxes' namespaces.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import netns
import tls_helpers as th
import xrayd_fixture as xf
from test_66_agent_topology import _Lines, _status, _two_agents, _wait
from test_68_libxray import _env, _official, _preloaded, _remove_rundirs  # noqa: F401

topology = netns.topology

_why = netns.unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = th.Pki(tmp_path_factory.mktemp("pki"))
    for name in ("agent-a", "agent-b", "app-2", "app-3"):
        if not os.path.exists(p.crt(name)):
            p._issue(p.ca1, name, "--both" if name.startswith("agent") else "--client",
                     *(("--san", "DNS:" + name) if name.startswith("agent") else ()))
    return p


def _agents(t, pki, tmp, opening_timeout="10s"):
    """Agent A on nata and agent B on natb (test_66's _two_agents), each
    with a firewall block.  In A: app-1 crosses by openings, app-2 (same
    agent, same server) by relay, app-3 may connect nowhere.  In B:
    relay-b serves through openings, app-2 serves relayed connections
    only."""
    opub = t.pub_addr("natb")
    confs = _two_agents(
        t, pki, tmp,
        main_extra="firewall:\n  table: xrayd\n  opening_timeout: %s\n" % opening_timeout,
        a_extra='  open_pool: ["%s:21000-21999"]\n' % t.pub_addr("nata"),
        apps={"a": """
  - name: client
    match: ["CN=app-1"]
    outbound: ["%(opub)s/32:20000-20009"]
    traversal: open
  - name: relayed
    match: ["CN=app-2"]
    outbound: ["%(opub)s/32:20000-20009"]
  - name: nowhere
    match: ["CN=app-3"]
""" % {"opub": opub}, "b": """
  - name: server
    match: ["CN=relay-b"]
    inbound: on
    traversal: open
  - name: relay-server
    match: ["CN=app-2"]
    inbound: on
"""})
    for d in confs.values():
        r = subprocess.run([str(xf.XRAYD_BIN), "-t", "-c", str(d / "agent.yaml")],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    return confs


def _start_agent(t, me, d):
    before = (d / "error.log").read_text().count("agent: serving on") \
        if (d / "error.log").exists() else 0
    p = t.popen("nat" + me, [str(xf.XRAYD_BIN), "-c", str(d / "agent.yaml")])
    _wait(lambda: (d / "error.log").exists() and
          (d / "error.log").read_text().count("agent: serving on") > before, 20, "agent " + me)
    return p


def _elements(t, box, table="xrayd", what="open4"):
    """The elements of a set or map of xrayd's table in a NAT box."""
    r = t.run(box, [netns.NFT, "list", "set" if what == "open4" else "map", "inet", table, what])
    assert r.returncode == 0, r.stderr
    m = re.search(r"elements = \{(.*?)\}", r.stdout, re.S)
    return [e.strip() for e in m.group(1).split(",")] if m else []


SERVER = r'''
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(128)
def echo(c):
    with c:
        while True:
            b = c.recv(65536)
            if not b:
                return
            c.sendall(b)
while True:
    c, _ = s.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
'''

CLIENT = r'''
import os, socket, sys, threading, time
host, port, n, idle = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
keepalive = sys.argv[5] == "on"
c = socket.create_connection((host, port), 15)
print("local %s:%d" % c.getsockname(), flush=True)
if not keepalive:
    c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
def exchange(payload):
    t = threading.Thread(target=c.sendall, args=(payload,))
    t.start()
    got = bytearray()
    while len(got) < len(payload):
        b = c.recv(1 << 20)
        if not b:
            break
        got += b
    t.join()
    return bytes(got) == payload
data = os.urandom(n)
print("first %s" % exchange(data), flush=True)
if idle > 0:
    sys.stdin.readline()  # the test says when to go on
    c.settimeout(8)
    try:
        print("after idle %s" % exchange(b"still there " * 1000), flush=True)
    except OSError as e:
        print("after idle failed: %s" % e, flush=True)
'''


def _server_in_b(t, pki, tmp, cert=None, port=8080):
    script = tmp / "server.py"
    script.write_text(SERVER)
    p = t.popen("b", [sys.executable, str(script), t.addr("b"), str(port)],
                env=_preloaded(_env(t, pki, tmp, "b", cert=cert)), stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True)
    official = _official(_Lines(p))
    assert official.startswith(t.pub_addr("natb") + ":"), official
    return p, official


def _client(t, pki, tmp, official, n, idle=0, keepalive="on", cert=None):
    script = tmp / "client.py"
    script.write_text(CLIENT)
    host, port = official.rsplit(":", 1)
    env = _preloaded(_env(t, pki, tmp, "a", cert=cert))
    p = t.popen("a", [sys.executable, str(script), host, port, str(n), str(idle), keepalive],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
    return p, _Lines(p, stream="stdout")


@pytest.mark.timeout(240)
def test_open_connection_crosses_both_firewalls_directly(topology, pki, tmp_path):
    """app-1 in a reaches the server in b through openings on both NAT
    boxes: 100 MB echoed byte-exact, no relay point on either agent, the
    openings logged and shown by `xray status`; app-2, in the same agent,
    still goes through the relay to the same server."""
    t = topology
    confs = _agents(t, pki, tmp_path)
    _srv, official = _server_in_b(t, pki, tmp_path)
    p, lines = _client(t, pki, tmp_path, official, 100 << 20)
    local = lines.wait(r"^local ")[1].split()[1]
    assert lines.wait(r"^first ", timeout=120)[1].strip() == "first True"
    p.wait(timeout=30)
    err = p.stderr.read()
    assert "through openings in the firewalls" in err, err
    sa, sb = _status(t, "nata", confs["a"]), _status(t, "natb", confs["b"])
    assert sa["counters"]["openings_made"] == 1 and sb["counters"]["openings_made"] == 1, (sa, sb)
    assert sa["counters"]["relayed"] == 0 and sb["relays"] == 0, (sa, sb)
    assert sa["firewall"] == "table inet xrayd", sa
    o = sa["openings"][0]
    assert o["opening"].startswith("tcp %s -> %s (as %s:" % (local, official, t.pub_addr("nata"))), o
    assert o["application"] == "client" and "CN=app-1" in o["identity"], o
    assert o["packets"] >= 1, o  # the SYN and what followed while it was open
    ob = sb["openings"][0]
    # to the server's own socket (its helper takes the relayed links only)
    assert ob["opening"].endswith(" -> %s (to %s:8080)" % (official, t.addr("b"))), ob
    log = (confs["a"] / "error.log").read_text()
    assert re.search(r"agent: opened tcp %s -> %s \(as %s:2\d{4}\) in table inet xrayd for client"
                     % (re.escape(local), re.escape(official), re.escape(t.pub_addr("nata"))),
                     log), log
    # Both modes side by side: app-2 is relayed by the same agent.
    p2, lines2 = _client(t, pki, tmp_path, official, 1 << 20, cert="app-2")
    assert lines2.wait(r"^first ", timeout=60)[1].strip() == "first True"
    p2.wait(timeout=30)
    assert "relayed through the agents" in p2.stderr.read()
    assert _status(t, "nata", confs["a"])["counters"]["openings_made"] == 1
    # The tools open too: `xray forward` connects a socket of its own.
    fwd = t.popen("a", [str(th.XRAY), "forward", "9000", official],
                  env=_env(t, pki, tmp_path, "a", debug=False), stderr=subprocess.PIPE, text=True)
    _Lines(fwd).wait(r"listening on 9000")
    p3, lines3 = _client(t, pki, tmp_path, "127.0.0.1:9000", 1 << 20)
    assert lines3.wait(r"^first ", timeout=60)[1].strip() == "first True"
    assert _status(t, "nata", confs["a"])["counters"]["openings_made"] == 2
    assert _status(t, "natb", confs["b"])["counters"]["openings_made"] == 2
    # and `xray connect` (stdin to the server, its answers to stdout)
    r = t.run("a", [str(th.XRAY), "connect", official], env=_env(t, pki, tmp_path, "a", debug=False),
              input="through the openings\n", timeout=30)
    assert r.returncode == 0 and r.stdout == "through the openings\n", r.stderr
    assert _status(t, "nata", confs["a"])["counters"]["openings_made"] == 3


@pytest.mark.timeout(240)
def test_opening_is_the_exact_5_tuple_and_goes_away(topology, pki, tmp_path):
    """While the opening exists it is exactly the connection's 5-tuple in
    both firewalls (nft list), and nothing else gets through: the same
    host from another port, another address of host a; once the opening
    timed out it is gone from nft, and the established connection still
    flows (its conntrack entry carries the mark)."""
    t = topology
    _agents(t, pki, tmp_path, opening_timeout="3s")
    _srv, official = _server_in_b(t, pki, tmp_path)
    host, port = official.rsplit(":", 1)
    p, lines = _client(t, pki, tmp_path, official, 1 << 16, idle=1)
    local = lines.wait(r"^local ")[1].split()[1]
    lip, lport = local.rsplit(":", 1)
    assert lines.wait(r"^first ", timeout=60)[1].strip() == "first True"
    ea = _elements(t, "nata")
    assert len(ea) == 1 and ea[0].startswith("%s . %s . tcp . %s . %s " % (lip, host, lport, port)), ea
    sn = _elements(t, "nata", what="snat4")
    assert len(sn) == 1 and sn[0].startswith("%s . %s . tcp . %s . %s " % (lip, host, lport, port)), sn
    c2 = re.search(r": (\S+) \. (\d+)$", sn[0])
    assert c2.group(1) == t.pub_addr("nata"), sn
    eb = _elements(t, "natb")
    assert len(eb) == 1 and eb[0].startswith("%s . %s . tcp . %s . 8080 " % (
        c2.group(1), t.addr("b"), c2.group(2))), eb
    dn = _elements(t, "natb", what="dnat4")
    assert len(dn) == 1 and dn[0].startswith("%s . %s . tcp . %s . %s " % (
        c2.group(1), host, c2.group(2), port)) and dn[0].endswith(": %s . 8080" % t.addr("b")), dn
    # Nothing but that tuple: plain connections, without the preload, from
    # host a (another port) and from another address of host a.
    t.run("a", [netns.IP, "addr", "add", "198.18.1.3/24", "dev", "eth0"], check=True)
    probe = ("import socket,sys\ns=socket.socket()\nif sys.argv[3]: s.bind((sys.argv[3], 0))\n"
             "s.settimeout(2)\ntry:\n s.connect((sys.argv[1], int(sys.argv[2]))); print('open')\n"
             "except OSError as e: print('blocked', e)\n")
    for src in ("", "198.18.1.3"):
        r = t.run("a", [sys.executable, "-c", probe, host, port, src], timeout=20)
        assert r.stdout.startswith("blocked"), (src, r.stdout, r.stderr)
    _wait(lambda: not _elements(t, "nata") and not _elements(t, "natb"), 15,
          "the openings to time out")
    assert not _elements(t, "natb", what="dnat4") and not _elements(t, "nata", what="snat4")
    p.stdin.write("go\n")
    p.stdin.flush()
    assert lines.wait(r"^after idle", timeout=30)[1].strip() == "after idle True"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("keepalive", ["on", "off"])
def test_heartbeats_keep_the_firewalls_state(topology, pki, tmp_path, keepalive):
    """Both firewalls forget an idle TCP connection after 3 s
    (nf_conntrack_tcp_timeout_established in their namespaces); the agents
    return that, and the library's heartbeats (TCP keepalive set on the
    application's socket) keep the connection through 8 s of silence.  The
    control: the same application turning keepalive off loses it."""
    t = topology
    for box in ("nata", "natb"):
        t.run(box, [netns.SYSCTL, "-q", "-w", "net.netfilter.nf_conntrack_tcp_timeout_established=3"],
              check=True)
    _agents(t, pki, tmp_path, opening_timeout="1s")
    _srv, official = _server_in_b(t, pki, tmp_path)
    p, lines = _client(t, pki, tmp_path, official, 1 << 16, idle=1, keepalive=keepalive)
    assert lines.wait(r"^first ", timeout=60)[1].strip() == "first True"
    time.sleep(8)
    p.stdin.write("go\n")
    p.stdin.flush()
    result = lines.wait(r"^after idle", timeout=30)[1].strip()
    if keepalive == "on":
        assert result == "after idle True", result
    else:
        assert result != "after idle True", result


@pytest.mark.timeout(240)
def test_unauthorized_application_opens_nothing(topology, pki, tmp_path):
    """app-3 may connect nowhere: its connect fails with EACCES (the
    agent's NOT_AUTHORIZED), and no element ever appears in either
    firewall's table."""
    t = topology
    confs = _agents(t, pki, tmp_path)
    _srv, official = _server_in_b(t, pki, tmp_path)
    p, lines = _client(t, pki, tmp_path, official, 1024, cert="app-3")
    p.wait(timeout=60)
    err = p.stderr.read()
    assert p.returncode != 0 and "PermissionError" in err, err
    assert "NOT_AUTHORIZED" in err, err
    for box in ("nata", "natb"):
        for what in ("open4", "snat4", "dnat4"):
            assert _elements(t, box, what=what) == [], (box, what)
    assert _status(t, "nata", confs["a"])["counters"]["openings_made"] == 0
    assert "refused" in (confs["a"] / "error.log").read_text()
    # A server whose application relays refuses an opening: the client
    # gets the refusal, and the side agent A opened meanwhile is taken back.
    _srv2, official2 = _server_in_b(t, pki, tmp_path, cert="app-2", port=8081)
    p2, _l2 = _client(t, pki, tmp_path, official2, 1024)
    p2.wait(timeout=60)
    err = p2.stderr.read()
    assert p2.returncode != 0 and "takes relayed connections only" in err, err
    assert _elements(t, "nata") == [] and _elements(t, "nata", what="snat4") == []
    assert _elements(t, "natb") == []
    logb = (confs["b"] / "error.log").read_text()
    assert "PEER_OPEN %s from CN=agent-a" % official2 in logb, logb


@pytest.mark.timeout(300)
def test_kill_9_then_restart_flushes_only_its_table(topology, pki, tmp_path):
    """A reload keeps the openings in the table.  kill -9 of agent B's
    xrayd with an opening in place: the connection
    it admitted keeps flowing; on restart xrayd's table is made anew
    (empty), the administrator's tables are untouched, and the server's
    registration comes back (soft state), so a new connection opens
    again."""
    t = topology
    confs = _agents(t, pki, tmp_path, opening_timeout="30s")
    _srv, official = _server_in_b(t, pki, tmp_path)
    p, lines = _client(t, pki, tmp_path, official, 1 << 16, idle=1)
    assert lines.wait(r"^first ", timeout=60)[1].strip() == "first True"
    assert len(_elements(t, "natb")) == 1
    # A reload keeps what is in the table (openings in flight survive it).
    os.kill(int((confs["b"] / "xrayd.pid").read_text()), signal.SIGHUP)
    _wait(lambda: "kept across the reload" in (confs["b"] / "error.log").read_text(), 20,
          "the reload")
    assert len(_elements(t, "natb")) == 1
    admin = t.run("natb", [netns.NFT, "list", "table", "inet", "filter"]).stdout + \
        t.run("natb", [netns.NFT, "list", "table", "ip", "nat"]).stdout
    pids = [pid for pid in netns._netns_pids(t.ns("natb"))
            if "xrayd" in open("/proc/%d/cmdline" % pid).read()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    _wait(lambda: not [pid for pid in pids if _alive(pid)], 10, "xrayd gone")
    assert len(_elements(t, "natb")) == 1  # a crash leaves its rules behind
    (confs["b"] / "xrayd.pid").unlink(missing_ok=True)
    _start_agent(t, "b", confs["b"])
    assert _elements(t, "natb") == [] and _elements(t, "natb", what="dnat4") == []
    assert re.search(r"firewall: flushing an opening a previous run left: tcp %s:\d+ -> %s:\d+"
                     % (re.escape(t.pub_addr("nata")), re.escape(t.addr("b"))),
                     (confs["b"] / "error.log").read_text())
    after = t.run("natb", [netns.NFT, "list", "table", "inet", "filter"]).stdout + \
        t.run("natb", [netns.NFT, "list", "table", "ip", "nat"]).stdout
    assert after == admin
    p.stdin.write("go\n")
    p.stdin.flush()
    assert lines.wait(r"^after idle", timeout=30)[1].strip() == "after idle True"
    # The server's library registers again; a new connection opens.
    _wait(lambda: any(r["official"] == official
                      for r in _status(t, "natb", confs["b"])["registrations"]), 60,
          "the server's registration to come back")
    p2, lines2 = _client(t, pki, tmp_path, official, 1 << 20)
    assert lines2.wait(r"^first ", timeout=60)[1].strip() == "first True"
    assert len(_elements(t, "natb")) == 1


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


UDP_SERVER = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(65536)
    s.sendto(data, peer)
'''

UDP_CLIENT = r'''
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
for i in range(50):
    msg = b"datagram %d " % i * 50
    s.sendto(msg, (host, port))
    data, src = s.recvfrom(65536)
    assert data == msg and src == (host, port), (data[:20], src)
print("udp ok", flush=True)
'''


@pytest.mark.timeout(240)
def test_udp_echo_through_openings(topology, pki, tmp_path):
    """UDP sessions (CODO §4.3): a UDP echo server in b under the preload,
    a client in a: 50 datagrams there and back through openings, answered
    from the official address; the openings are udp 5-tuples."""
    t = topology
    _agents(t, pki, tmp_path)
    (tmp_path / "us.py").write_text(UDP_SERVER)
    srv = t.popen("b", [sys.executable, str(tmp_path / "us.py"), t.addr("b"), "9000"],
                  env=_preloaded(_env(t, pki, tmp_path, "b")), stdout=subprocess.DEVNULL,
                  stderr=subprocess.PIPE, text=True)
    official = _official(_Lines(srv))
    host, port = official.rsplit(":", 1)
    (tmp_path / "uc.py").write_text(UDP_CLIENT)
    r = t.run("a", [sys.executable, str(tmp_path / "uc.py"), host, port],
              env=_preloaded(_env(t, pki, tmp_path, "a")), timeout=60)
    assert "udp ok" in r.stdout, r.stdout + r.stderr
    assert "through openings in the firewalls" in r.stderr, r.stderr
    ea, eb = _elements(t, "nata"), _elements(t, "natb")
    assert len(ea) == 1 and " . udp . " in ea[0], ea
    assert len(eb) == 1 and " . udp . " in eb[0] and eb[0].split(" . ")[1] == t.addr("b"), eb


def test_t_refuses_what_cannot_take_effect(tmp_path, pki):
    """`xrayd -t` refuses, with file:line:column, a traversal: open that
    would open nothing (no firewall block), clients in networks without
    open_pool, a bad mark and a bad table name."""
    base = """
daemon: off
pid: %(d)s/x.pid
error_log: %(d)s/e.log
%(fw)sagent:
  listen: 127.0.0.1:7000
  tls: {certificate: %(crt)s, key: %(key)s, client_ca: %(ca)s}
  networks: [198.18.1.0/24]
  official_pool: ["198.19.0.1:20000-20009"]
%(extra)sapplications:
  - name: client
    match: ["CN=app-1"]
    outbound: ["198.19.0.2/32"]
    traversal: open
"""
    cases = [  # (firewall line, agent lines, the line and value the error points at, message)
        ("", '  open_pool: ["198.19.0.1:21000-21999"]\n', "    traversal: open", "open",
         "traversal: open makes openings in this host's firewall: add a firewall block"),
        ("firewall: {}\n", "", "    traversal: open", "open", "add open_pool to the agent"),
        ("firewall: {mark: 0}\n", "", "firewall: {mark: 0}", "0",
         "expected a non-zero 32-bit mark"),
        ("firewall: {table: 'no such'}\n", "", "firewall: {table: 'no such'}", "'no such'",
         "a table name is"),
    ]
    for i, (fw, extra, at, value, want) in enumerate(cases):
        conf = tmp_path / ("c%d.yaml" % i)
        text = base % dict(d=tmp_path, fw=fw, extra=extra, crt=pki.crt("agent-a"),
                           key=pki.key("agent-a"), ca=pki.ca)
        conf.write_text(text)
        line, col = text.split("\n").index(at) + 1, at.index(value) + 1
        r = subprocess.run([str(xf.XRAYD_BIN), "-t", "-c", str(conf)], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode != 0 and "%s:%d:%d: " % (conf, line, col) in r.stderr, (i, r.stderr)
        assert want in r.stderr, (i, r.stderr)
    conf = tmp_path / "ok.yaml"
    conf.write_text(base % dict(d=tmp_path, fw="firewall: {mark: 0x10}\n",
                                extra='  open_pool: ["198.19.0.1:21000-21999"]\n',
                                crt=pki.crt("agent-a"), key=pki.key("agent-a"), ca=pki.ca))
    r = subprocess.run([str(xf.XRAYD_BIN), "-t", "-c", str(conf)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
