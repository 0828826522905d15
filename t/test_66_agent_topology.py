"""The agent in the XRAY §8 topology (t/netns.py): xrayd runs as the agent
on NAT box B, the server host in private network B registers with it over
the LAN and gets an official address from the public side's pool; the
agent's worker is killed and the server's library, registering again with
its address as `prior`, gets the same one.

Needs root and `ip netns`; skips otherwise."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import netns
import tls_helpers as th
import xrayd_fixture as xf

topology = netns.topology

_why = netns.unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))

HERE = Path(__file__).resolve().parent
CLIENT = str(HERE / "agent_client.py")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return th.Pki(tmp_path_factory.mktemp("pki"))


def _wait(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def _register(t, pki, agent, local, prior=None, role="b"):
    argv = [sys.executable, CLIENT, agent, pki.ca, pki.crt("app-1"), pki.key("app-1"), local]
    if prior:
        argv.append(prior)
    r = t.run(role, argv, timeout=30, env=dict(os.environ, PYTHONPATH=str(HERE)))
    assert r.stdout.strip(), r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("topology", [{"b2": True}], indirect=True)
def test_server_in_b_registers_with_the_agent_on_natb(topology, pki, tmp_path):
    t = topology
    log = tmp_path / "error.log"
    pub = t.pub_addr("natb")
    conf = _agent_conf(tmp_path, pki, pub, lease="30s")
    master = t.popen("natb", [str(xf.XRAYD_BIN), "-c", str(conf)])
    _wait(lambda: log.exists() and "agent: serving on 0.0.0.0:7000" in log.read_text(), 20,
          "the agent on natb")

    agent = "%s:7000" % t.addr("natb")  # the LAN side of NAT box B
    got = _register(t, pki, agent, "198.18.2.2:8080")
    assert got == {"official": "%s:20000" % pub, "lease_ms": 30000}, got
    # the agent's own public address is not reachable from network A
    assert t.connect("a", pub, 7000, timeout=2).status == "timeout"

    # kill -9 the agent's worker: its replacement keeps the address for b
    line = [l for l in log.read_text().splitlines() if "serving the agent" in l][-1]
    pid = int(re.search(r"\] (\d+): worker process started", line).group(1))
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: "1 lease(s) from" in log.read_text(), 20, "the replacement agent")
    other = _register(t, pki, agent, "198.18.2.3:8080", role="b2")  # another server
    assert other["official"] == "%s:20001" % pub, other
    back = _register(t, pki, agent, "198.18.2.2:8080", prior="%s:20000" % pub)
    assert back["official"] == "%s:20000" % pub, back

    master.send_signal(signal.SIGTERM)
    master.wait(timeout=20)
    text = log.read_text()
    bad = [l for l in text.splitlines()
           if re.search(r"\[(alert|crit|emerg)\]", l) and "exited on signal 9" not in l]
    assert not bad, text


@pytest.mark.timeout(120)
def test_a_server_registers_only_its_own_address(topology, pki, tmp_path):
    """The agent dials a registered address for relayed connections: b may
    register its own address, not another host's in its network or on the
    public segment, nor the agent's (natb's LAN and public addresses),
    loopback or the unspecified address.  Trusted, such a REGISTER let a
    client make the agent open TCP and send a ClientHello wherever b
    pointed it, around the checks CONNECT makes."""
    t = topology
    log = tmp_path / "error.log"
    pub = t.pub_addr("natb")
    conf = _agent_conf(tmp_path, pki, pub, lease="30s")
    master = t.popen("natb", [str(xf.XRAYD_BIN), "-c", str(conf)])
    _wait(lambda: log.exists() and "agent: serving on 0.0.0.0:7000" in log.read_text(), 20,
          "the agent on natb")
    agent = "%s:7000" % t.addr("natb")
    for local, why in (("198.18.2.3:22", "is not the address it connects from (198.18.2.2)"),
                       ("198.19.0.254:80", "is not the address it connects from (198.18.2.2)"),
                       ("198.18.2.1:7000", "is one of the agent's own addresses"),
                       ("%s:20000" % pub, "is one of the agent's own addresses"),
                       ("127.0.0.1:7000", "is a loopback address"),
                       ("0.0.0.0:80", "is an unspecified address")):
        got = _register(t, pki, agent, local)
        assert "NOT_AUTHORIZED" in got.get("error", "") and why in got["error"], (local, got)
    _wait(lambda: re.search(r"\[notice\] .*agent: REGISTER 198\.18\.2\.3:22 by CN=app-1 "
                            r"sha256:\w+ from 198\.18\.2\.2:\d+ refused: application \"server\": "
                            r"198\.18\.2\.3:22 is not the address it connects from "
                            r"\(198\.18\.2\.2\) and no servers rule allows it", log.read_text()),
          10, "the refusal's log line")
    got = _register(t, pki, agent, "198.18.2.2:8080")
    assert got == {"official": "%s:20000" % pub, "lease_ms": 30000}, got
    master.send_signal(signal.SIGTERM)
    master.wait(timeout=20)


def _agent_conf(tmp, pki, pub, lease="3s"):
    conf = tmp / "agent.yaml"
    conf.write_text("""
workers: 2
daemon: off
pid: %(tmp)s/xrayd.pid
error_log: %(tmp)s/error.log
log_level: info
agent:
  listen: 0.0.0.0:7000
  tls:
    certificate: %(crt)s
    key: %(key)s
    client_ca: %(ca)s
  networks: [198.18.2.0/24]
  official_pool: ["%(pub)s:20000-20009"]
  state_file: %(tmp)s/agent.state
  lease_time: %(lease)s
applications:
  - name: server
    match: ["CN=app-*"]
    inbound: on
""" % dict(tmp=tmp, crt=pki.crt("localhost"), key=pki.key("localhost"), ca=pki.ca, pub=pub,
           lease=lease))
    return conf


class _Lines:
    """Lines of a process's stderr (or stdout), read by a thread (never
    blocks a test)."""

    def __init__(self, proc, stream="stderr"):
        import threading
        self.lines = []
        self.t = threading.Thread(target=self._run, args=(getattr(proc, stream),), daemon=True)
        self.t.start()

    def _run(self, stream):
        for line in stream:
            self.lines.append(line)

    def wait(self, regex, timeout=20, start=0):
        def found():
            for i, line in enumerate(self.lines[start:], start):
                if re.search(regex, line):
                    return (i, line)
            return None
        return _wait(found, timeout, "%r in %s" % (regex, "".join(self.lines)))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("topology", [{"b2": True}], indirect=True)
def test_xray_listen_in_b_half_bound_and_back(topology, pki, tmp_path):
    """XRAY §5.1 and §6 with the real tool: `xray listen` in b is fully
    bound through the agent on natb; b2 reaches it directly (same network,
    no agent needed); the agent goes away: the socket is half bound, keeps
    its official address and still serves b2; the agent comes back (state
    file): the socket is fully bound again with the same official address."""
    t = topology
    pub = t.pub_addr("natb")
    log = tmp_path / "error.log"
    conf = _agent_conf(tmp_path, pki, pub)
    master = t.popen("natb", [str(xf.XRAYD_BIN), "-c", str(conf)])
    _wait(lambda: log.exists() and "agent: serving on" in log.read_text(), 20, "the agent")

    listener = t.popen("b", [str(th.XRAY), "listen", "8080", "--agent",
                             "%s:7000" % t.addr("natb"), "--agent-name", "localhost",
                             "--cert", pki.crt("app-1"), "--key", pki.key("app-1"),
                             "--ca", pki.ca, "--private", "198.18.2.0/24", "--exec", "cat"],
                       stderr=subprocess.PIPE, text=True)
    out = _Lines(listener)
    i, line = out.wait(r"fully bound: official")
    assert "official %s:20000 (local 198.18.2.2:8080)" % pub in line, line

    def echo_from_b2(payload):
        code = ("import socket,sys; c=socket.create_connection(('198.18.2.2',8080),5);"
                "c.sendall(sys.argv[1].encode()); c.shutdown(socket.SHUT_WR); d=b''\n"
                "while True:\n b=c.recv(4096)\n if not b: break\n d+=b\n"
                "print(d.decode())")
        r = t.run("b2", [sys.executable, "-c", code, payload], timeout=20)
        return r.stdout.strip()

    assert echo_from_b2("intra-network") == "intra-network"

    master.send_signal(signal.SIGTERM)
    master.wait(timeout=20)
    i, line = out.wait(r"half bound", start=i + 1)
    assert "official %s:20000" % pub in line, line
    assert echo_from_b2("still serving") == "still serving"

    master = t.popen("natb", [str(xf.XRAYD_BIN), "-c", str(conf)])
    i, line = out.wait(r"fully bound again", start=i + 1, timeout=30)
    assert "official %s:20000" % pub in line, line
    listener.send_signal(signal.SIGTERM)
    out.wait(r"unregistered", start=i + 1)
    assert listener.wait(timeout=10) == 0
    master.send_signal(signal.SIGTERM)
    master.wait(timeout=20)


# ---- connection setup across the two firewalls (XRAY §5.2) -----------------------

def _two_agents(t, pki, tmp, server_filters="", b_extra="", continuity=False, main_extra="",
                a_extra="", apps=None):
    """Agent A on nata, agent B on natb, each the other's peer; b_extra
    and a_extra: more lines for agent B's or A's agent block; main_extra:
    more top-level lines for both; apps: {"a": ..., "b": ...} applications
    entries instead of the usual ones; continuity: both agents keep their
    relay points across a worker's crash."""
    for name in ("agent-a", "agent-b"):
        if not os.path.exists(pki.crt(name)):
            pki._issue(pki.ca1, name, "--both", "--san", "DNS:" + name)
    confs = {}
    for me, other, lan, my_pub, other_pub, my_apps in (
            ("a", "b", "198.18.1.0/24", t.pub_addr("nata"), t.pub_addr("natb"), """
  - name: client
    match: ["CN=app-1"]
    outbound: ["%s/32:20000-20009"]
""" % t.pub_addr("natb")),
            ("b", "a", "198.18.2.0/24", t.pub_addr("natb"), t.pub_addr("nata"), """
  - name: server
    match: ["CN=relay-b"]
    inbound: on
""" + server_filters + """  - name: local-client
    match: ["CN=relay-a"]
    outbound: ["%s/32:20000-20009"]
""" % t.pub_addr("natb"))):
        d = tmp / ("agent-" + me)
        d.mkdir()
        main = extra = ""
        if continuity:
            (d / "state").mkdir()
            main, extra = "state_dir: %s\n" % (d / "state"), "  continuity: on\n"
        extra += b_extra if me == "b" else a_extra
        if apps is not None:
            my_apps = apps[me]
        conf = d / "agent.yaml"
        conf.write_text(main + main_extra + """
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
                                   other=other, apps=my_apps, extra=extra))
        confs[me] = d
        t.popen("nat" + me, [str(xf.XRAYD_BIN), "-c", str(conf)])
    for me, d in confs.items():
        _wait(lambda: (d / "error.log").exists() and
              "agent: serving on" in (d / "error.log").read_text(), 20, "agent " + me)
    return confs


def _serve_in_b(t, pki, *extra):
    """t/agent_client.py serve in b: registers 198.18.2.2:8080 with agent B
    and echoes every relayed connection; its first stdout line is JSON
    with the official address."""
    return t.popen("b", [sys.executable, CLIENT, "serve", "%s:7000" % t.addr("natb"), pki.ca,
                         pki.crt("relay-b"), pki.key("relay-b"), "198.18.2.2:8080", *extra],
                   env=dict(os.environ, PYTHONPATH=str(HERE)), stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, text=True)


def _xray_listen_in_b(t, pki):
    """xray listen 8080 --exec cat in b, bound through agent B."""
    return t.popen("b", [str(th.XRAY), "listen", "8080", "--agent", "%s:7000" % t.addr("natb"),
                         "--agent-name", "agent-b", "--cert", pki.crt("relay-b"),
                         "--key", pki.key("relay-b"), "--ca", pki.ca, "--private",
                         "198.18.2.0/24", "--exec", "cat"],
                   stderr=subprocess.PIPE, text=True)


def _client(t, role, *args, timeout=120):
    r = t.run(role, [sys.executable, CLIENT, *args], timeout=timeout,
              env=dict(os.environ, PYTHONPATH=str(HERE)))
    assert r.stdout.strip(), r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _status(t, role, d):
    r = t.run(role, [str(th.XRAY), "status", "--socket", str(d / "agent.sock"), "--json"])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("topology", [{"b2": True}], indirect=True)
def test_connection_across_two_firewalls(topology, pki, tmp_path):
    """A client in A reaches a server registered in B through agent A and
    agent B (three overlay links, end-to-end ACK), 100 MB echoed byte-exact,
    while direct A -> B connections are dropped; a client in B reaches it
    directly; refusals come with their error code."""
    t = topology
    confs = _two_agents(t, pki, tmp_path)
    server = _serve_in_b(t, pki)
    first = server.stdout.readline()
    assert first, server.stderr.read() if server.poll() is not None else "no output"
    official = json.loads(first)["official"]
    assert official == "%s:20000" % t.pub_addr("natb")
    agent_a = "%s:7000" % t.addr("nata")
    creds = (pki.ca, pki.crt("app-1"), pki.key("app-1"))

    got = _client(t, "a", "connect", agent_a, *creds, official, str(100 << 20))
    assert got["mode"] == 2 and got["equal"] and got["received"] == 100 << 20, got
    log_a = (confs["a"] / "error.log").read_text()
    log_b = (confs["b"] / "error.log").read_text()
    assert re.search(r"relay point \d+ linked: client \(CN=app-1", log_a), log_a
    assert re.search(r"relay point \d+ linked: .*CN=app-1.* via CN=agent-a .* to %s \(server\)"
                     % re.escape(official), log_b), log_b

    # a second connection resumes the TLS sessions between the agents
    got = _client(t, "a", "connect", agent_a, *creds, official, "1000")
    assert got["equal"], got
    assert _status(t, "nata", confs["a"])["counters"]["relayed"] == 2

    # the same server from its own network: direct, no relay point
    creds_b2 = (pki.ca, pki.crt("app-1"), pki.key("app-1"))
    # (app-1 is not an application of agent B: refused there)
    got = _client(t, "b2", "connect", "%s:7000" % t.addr("natb"), *creds_b2, official, "10")
    assert got.get("code") == "NOT_AUTHORIZED", got

    # outbound the policy does not allow
    got = _client(t, "a", "connect", agent_a, *creds, "%s:30000" % t.pub_addr("natb"), "10")
    assert got.get("code") == "NOT_AUTHORIZED", got
    # nobody holds that official address
    got = _client(t, "a", "connect", agent_a, *creds, "%s:20005" % t.pub_addr("natb"), "10")
    assert got.get("code") == "NO_SUCH_ADDRESS", got
    # a certificate agent A does not know
    got = _client(t, "a", "connect", agent_a, pki.ca, pki.crt("intruder"),
                  pki.key("intruder"), official, "10")
    assert got.get("code") == "NOT_AUTHORIZED", got
    server.kill()


@pytest.mark.timeout(240)
def test_server_filter_stops_a_forbidden_payload(topology, pki, tmp_path):
    """The server application's signature filter runs at agent B's relay
    point: a payload carrying the pattern never reaches the server, the
    connection is closed, and agent B logs which signature matched."""
    t = topology
    confs = _two_agents(t, pki, tmp_path, server_filters="""    filters:
      - signature:
          patterns: ["FORBIDDEN"]
""")
    server = _serve_in_b(t, pki)
    official = json.loads(server.stdout.readline())["official"]
    agent_a = "%s:7000" % t.addr("nata")
    creds = (pki.ca, pki.crt("app-1"), pki.key("app-1"))
    got = _client(t, "a", "connect", agent_a, *creds, official, "0", "harmless bytes")
    assert got.get("equal"), got
    got = _client(t, "a", "connect", agent_a, *creds, official, "0",
                  "some bytes FORBIDDEN more bytes")
    assert not got.get("equal") and got.get("received", 0) == 0, got
    log_b = confs["b"] / "error.log"
    _wait(lambda: 'signature "FORBIDDEN" matched in the client-to-upstream direction' in log_b.read_text(), 10,
          "the signature log line")
    server.kill()


@pytest.mark.timeout(300)
def test_200_concurrent_connects(topology, pki, tmp_path):
    """200 clients connect through both agents at once (resuming the TLS
    sessions of a first connection, as repeat parties do); every one is
    linked end to end and echoes its bytes; no relay point is left
    behind."""
    t = topology
    confs = _two_agents(t, pki, tmp_path)
    server = _serve_in_b(t, pki)
    official = json.loads(server.stdout.readline())["official"]
    got = _client(t, "a", "connect-many", "%s:7000" % t.addr("nata"), pki.ca, pki.crt("app-1"),
                  pki.key("app-1"), official, "200", timeout=240)
    assert got["ok"] == 200 and got["failed"] == 0, got
    print("200 concurrent connects:", got["seconds"], "s")
    _wait(lambda: _status(t, "nata", confs["a"])["relay_points"] == [] and
          _status(t, "natb", confs["b"])["relay_points"] == [], 30, "relay points to be gone")
    st = _status(t, "nata", confs["a"])
    assert st["counters"]["relayed"] == 201, st  # with the first one, whose sessions resume
    assert st["counters"]["resumed_handshakes"] >= 400, st
    server.kill()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("continuity", [False, True], ids=["cont-off", "cont-on"])
def test_reload_keeps_established_relays(topology, pki, tmp_path, continuity):
    """SIGHUP of both agents (a new policy generation) while a relayed
    connection is moving bytes: it finishes byte-exact on the old workers
    (with continuity, on the ring engine), and a new connection works
    through the new ones."""
    t = topology
    confs = _two_agents(t, pki, tmp_path, continuity=continuity)
    server = _serve_in_b(t, pki)
    official = json.loads(server.stdout.readline())["official"]
    agent_a = "%s:7000" % t.addr("nata")
    creds = (pki.ca, pki.crt("app-1"), pki.key("app-1"))
    # 64 blocks of 64 KB, 50 ms apart: about 3 s of traffic
    slow = t.popen("a", [sys.executable, CLIENT, "connect", agent_a, *creds, official,
                         str(64 << 16)],
                   env=dict(os.environ, PYTHONPATH=str(HERE), XRAY_PACE="0.05"),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait(lambda: "relay point 1 linked" in (confs["a"] / "error.log").read_text(), 20,
          "the slow connection")
    for me in ("a", "b"):
        pid = int((confs[me] / "xrayd.pid").read_text())
        os.kill(pid, signal.SIGHUP)
    for me in ("a", "b"):
        _wait(lambda: (confs[me] / "error.log").read_text().count("serving the agent") >= 2, 20,
              "agent %s's new generation" % me)
    out, err = slow.communicate(timeout=60)
    got = json.loads(out.strip().splitlines()[-1])
    assert got.get("equal") and got["received"] == 64 << 16, (got, err)
    # the server's library lost its control session with the old agent:
    # register again (a library would retry) and connect through the new ones
    server.kill()
    server = _serve_in_b(t, pki)
    json.loads(server.stdout.readline())
    got = _client(t, "a", "connect", agent_a, *creds, official, "100000")
    assert got.get("equal"), got
    server.kill()


@pytest.mark.timeout(240)
def test_xray_connect_to_xray_listen_across_two_firewalls(topology, pki, tmp_path):
    """The tools end to end: `xray listen --exec cat` in b, fully bound
    through agent B; `xray connect OFFICIAL` in a through agent A; 100 MB
    from a file come back byte-exact through the three links."""
    t = topology
    confs = _two_agents(t, pki, tmp_path)
    listener = _xray_listen_in_b(t, pki)
    out = _Lines(listener)
    i, line = out.wait(r"fully bound: official")
    official = re.search(r"official (\S+)", line).group(1)
    data = tmp_path / "data"
    data.write_bytes(os.urandom(100 << 20))
    with open(data, "rb") as f:
        r = t.run("a", [str(th.XRAY), "connect", official, "--agent", "%s:7000" % t.addr("nata"),
                        "--agent-name", "agent-a", "--cert", pki.crt("app-1"),
                        "--key", pki.key("app-1"), "--ca", pki.ca],
                  stdin=f, timeout=120, text=False, errors=None)
    assert r.returncode == 0, r.stderr
    assert b"relayed through the agents" in r.stderr, r.stderr
    assert r.stdout == data.read_bytes(), "echo differs (%d of %d bytes): %s %s" % (
        len(r.stdout), 100 << 20, r.stderr, "".join(out.lines))
    out.wait(r"relayed connection from CN=app-1", start=i + 1)
    # agent B dialed xray listen's socket (INCOMING mode 1)
    assert _status(t, "natb", confs["b"])["counters"]["servers_dialed"] == 1
    # refused: an official address nobody holds
    r = t.run("a", [str(th.XRAY), "connect", "%s:20009" % t.pub_addr("natb"), "--agent",
                    "%s:7000" % t.addr("nata"), "--agent-name", "agent-a",
                    "--cert", pki.crt("app-1"), "--key", pki.key("app-1"), "--ca", pki.ca],
              stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 1 and "NO_SUCH_ADDRESS" in r.stderr, r.stderr
    listener.send_signal(signal.SIGTERM)
    listener.wait(timeout=20)


@pytest.mark.timeout(240)
def test_agent_b_killed_and_back(topology, pki, tmp_path):
    """XRAY §6: kill -9 of agent B's worker while a relay through A-B is
    idle.  Its replacement comes up, `xray listen` in b registers again
    and gets the same official address back (half -> fully bound), and a
    new connection from a works."""
    t = topology
    confs = _two_agents(t, pki, tmp_path)
    listener = _xray_listen_in_b(t, pki)
    out = _Lines(listener)
    i, line = out.wait(r"fully bound: official")
    official = re.search(r"official (\S+)", line).group(1)
    connect = [str(th.XRAY), "connect", official, "--agent", "%s:7000" % t.addr("nata"),
               "--agent-name", "agent-a", "--cert", pki.crt("app-1"), "--key", pki.key("app-1"),
               "--ca", pki.ca]
    # an idle relay: a client that sends nothing and waits
    idle = t.popen("a", connect, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE)
    _wait(lambda: "relay point 1 linked" in (confs["b"] / "error.log").read_text(), 20,
          "the idle relay")
    log_b = confs["b"] / "error.log"
    line = [l for l in log_b.read_text().splitlines() if "serving the agent" in l][-1]
    pid = int(re.search(r"\] (\d+): worker process started", line).group(1))
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: log_b.read_text().count("serving the agent") >= 2, 20, "agent B's replacement")
    i, line = out.wait(r"fully bound again", start=i + 1, timeout=30)
    assert "official %s" % official in line, line
    r = t.run("a", connect, input="after the crash\n", timeout=60)
    assert r.returncode == 0 and r.stdout == "after the crash\n", (r.stdout, r.stderr)
    idle.kill()
    listener.send_signal(signal.SIGTERM)
    listener.wait(timeout=20)


def _workers(log):
    """Pids of the workers a daemon's error log says it started."""
    return [int(m) for m in re.findall(r"\] (\d+): worker process started", log.read_text())]


AGENT_MB = int(os.environ.get("XRAYD_TEST_AGENT_MB", "16"))


def _paced_echoes(t, pki, tmp_path):
    """Both agents with continuity: on, the server in b, and 20 clients in
    a each echoing AGENT_MB MiB through both agents' relay points (paced
    to last about 8 s), all linked.  Returns (confs, server, clients)."""
    confs = _two_agents(t, pki, tmp_path, continuity=True)
    server = _serve_in_b(t, pki)
    first = server.stdout.readline()
    assert first, server.stderr.read() if server.poll() is not None else "no output"
    official = json.loads(first)["official"]
    agent_a = "%s:7000" % t.addr("nata")
    creds = (pki.ca, pki.crt("app-1"), pki.key("app-1"))
    env = dict(os.environ, PYTHONPATH=str(HERE), XRAY_PACE="%.4f" % (8.0 / (AGENT_MB * 16)))
    clients = [t.popen("a", [sys.executable, CLIENT, "connect", agent_a, *creds, official,
                             str(AGENT_MB << 20)], env=env, stdout=subprocess.PIPE, text=True)
               for _ in range(20)]
    log_a = confs["a"] / "error.log"
    _wait(lambda: log_a.read_text().count("linked: client") >= 20, 30, "20 relay points")
    time.sleep(1.0)
    return confs, server, clients


def _echoes_exact(clients):
    """Every echo completed byte-exact."""
    results = []
    for c in clients:
        out, _ = c.communicate(timeout=120)
        results.append(json.loads(out.strip().splitlines()[-1]) if out.strip() else {})
    bad = [r for r in results if not (r.get("equal") and r.get("received") == AGENT_MB << 20)]
    assert not bad, bad


@pytest.mark.timeout(300)
def test_relay_points_survive_kill_9(topology, pki, tmp_path):
    """Both agents with continuity: on; 20 clients in a each echo MB MiB
    through agent A's and agent B's relay points to the server in b (so
    bytes flow both ways at once); agent A's busiest worker is killed
    three times: every echo completes byte-exact, and the replacements
    took the relay points over (TLS record layers and all)."""
    confs, server, clients = _paced_echoes(topology, pki, tmp_path)
    log_a = confs["a"] / "error.log"
    for k in range(3):
        live = [p for p in _workers(log_a) if os.path.exists("/proc/%d" % p)]
        victim = max(live, key=lambda p: len(os.listdir("/proc/%d/fd" % p)))
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: "taking over worker %d" % victim in log_a.read_text(), 10,
              "the takeover of worker %d" % victim)
        time.sleep(1.0)
    _echoes_exact(clients)
    text = log_a.read_text()
    took = [int(n) for n in re.findall(r"took over (\d+) connection", text)]
    assert len(took) == 3 and sum(took) >= 10, took
    assert "cannot resume" not in text and "resume failed" not in text, text[-3000:]
    server.kill()


@pytest.mark.timeout(600)
def test_relay_points_survive_binary_upgrade(topology, pki, tmp_path, monkeypatch):
    """Both agents with continuity: on; 20 paced echoes through both
    agents' relay points while agent A's master is sent SIGUSR2 with a
    build of another version in place: the new binary's workers take the
    relay points over from the old binary's snapshots and every echo
    completes byte-exact."""
    from test_75_proxy import _second_binary

    exe = tmp_path / "xrayd"
    exe.write_bytes(xf.XRAYD_BIN.read_bytes())
    exe.chmod(0o755)
    new = _second_binary(tmp_path, "9.9.7-agent")
    monkeypatch.setattr(xf, "XRAYD_BIN", exe)
    confs, server, clients = _paced_echoes(topology, pki, tmp_path)
    log_a = confs["a"] / "error.log"
    old_pid = int((confs["a"] / "xrayd.pid").read_text())
    os.replace(str(new), str(exe))
    os.kill(old_pid, signal.SIGUSR2)
    _wait(lambda: re.search(r"xrayd/9\.9\.7-agent started \(binary upgrade from pid %d\)"
                            % old_pid, log_a.read_text()), 60, "the new binary")
    _echoes_exact(clients)
    text = log_a.read_text()
    assert re.search(r"took over [1-9]\d* connection", text), text[-3000:]
    assert "cannot resume" not in text and "resume failed" not in text, text[-3000:]
    server.kill()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("topology", [{"b2": True}], indirect=True)
def test_same_network_is_direct_and_links_are_checked(topology, pki, tmp_path):
    """A client in B asking agent B for the server in B is answered with
    the server's local address (mode 1, no relay point: status shows
    none); and a relay point refuses a link with a wrong token or from the
    wrong certificate, with BAD_TOKEN and a log line, while the right one
    still works."""
    t = topology
    confs = _two_agents(t, pki, tmp_path)
    listener = _xray_listen_in_b(t, pki)
    out = _Lines(listener)
    i, line = out.wait(r"fully bound: official")
    official = re.search(r"official (\S+)", line).group(1)
    got = _client(t, "b2", "connect", "%s:7000" % t.addr("natb"), pki.ca, pki.crt("relay-a"),
                  pki.key("relay-a"), official, "0", "same network")
    assert got["mode"] == 1 and got["relay"] == "198.18.2.2:8080" and got["equal"], got
    st = _status(t, "natb", confs["b"])
    assert st["counters"]["direct"] == 1 and st["counters"]["relayed"] == 0, st
    assert st["relay_points"] == [] and st["relays"] == 0, st

    got = _client(t, "a", "badlink", "%s:7000" % t.addr("nata"), pki.ca, pki.crt("app-1"),
                  pki.key("app-1"), official, pki.crt("intruder"), pki.key("intruder"))
    assert got == {"random_token": "BAD_TOKEN", "wrong_certificate": "BAD_TOKEN"}, got
    text = (confs["a"] / "error.log").read_text()
    assert "refused: no relay point has that token" in text, text
    assert "refused: not the certificate the relay point expects" in text, text
    listener.send_signal(signal.SIGTERM)
    listener.wait(timeout=20)


def _server_lines(server, n, timeout=30):
    """The next n JSON lines the serve process prints."""
    got = []
    end = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        line = server.stdout.readline()
        if not line:
            break
        got.append(json.loads(line))
    return got


@pytest.mark.timeout(240)
def test_server_agent_dials_the_server_or_has_it_connect_out(topology, pki, tmp_path):
    """XRAY §5.2 step 6 and the GCB technique: agent B dials the server's
    local address (INCOMING mode 1) when it can; a server that does not
    listen there gets INCOMING mode 2 (connect out) after the dial fails,
    and the connection works either way.  The agents talk over one
    standing session however many connections they set up."""
    t = topology
    confs = _two_agents(t, pki, tmp_path)
    server = _serve_in_b(t, pki)
    official = json.loads(server.stdout.readline())["official"]
    agent_a = "%s:7000" % t.addr("nata")
    creds = (pki.ca, pki.crt("app-1"), pki.key("app-1"))
    for n in range(5):
        got = _client(t, "a", "connect", agent_a, *creds, official, str(1000 + n))
        assert got.get("equal"), got
    assert [x.get("mode") for x in _server_lines(server, 5)] == [1] * 5
    st_a, st_b = _status(t, "nata", confs["a"]), _status(t, "natb", confs["b"])
    assert st_b["counters"]["servers_dialed"] == 5, st_b
    assert st_b["counters"]["servers_connected_out"] == 0, st_b
    assert st_a["counters"]["peer_sessions_opened"] == 1, st_a
    assert st_a["peers"] == [{"agent": "%s:7000" % t.pub_addr("natb"), "session": "up"}], st_a
    server.kill()
    server.wait()

    # a server that cannot be dialed (the old lease stays reserved for its
    # holder until it expires, so this one gets the next address)
    server = _serve_in_b(t, pki, "--connect-out-only")
    official = json.loads(server.stdout.readline())["official"]
    got = _client(t, "a", "connect", agent_a, *creds, official, "4321")
    assert got.get("equal"), got
    assert [x.get("mode") for x in _server_lines(server, 1)] == [2]
    st_b = _status(t, "natb", confs["b"])
    assert st_b["counters"]["servers_connected_out"] == 1, st_b
    assert re.search(r"cannot dial the server \(.*\); asking it to connect out",
                     (confs["b"] / "error.log").read_text())
    server.kill()


@pytest.mark.timeout(240)
def test_incoming_connect_out_never_dials(topology, pki, tmp_path):
    """`incoming: connect_out` (an agent outside the server's network):
    servers always connect out to the relay point (mode 2)."""
    t = topology
    confs = _two_agents(t, pki, tmp_path, b_extra="  incoming: connect_out\n")
    server = _serve_in_b(t, pki)
    official = json.loads(server.stdout.readline())["official"]
    got = _client(t, "a", "connect", "%s:7000" % t.addr("nata"), pki.ca, pki.crt("app-1"),
                  pki.key("app-1"), official, "2000")
    assert got.get("equal"), got
    assert [x.get("mode") for x in _server_lines(server, 1)] == [2]
    st_b = _status(t, "natb", confs["b"])
    assert st_b["counters"]["servers_dialed"] == 0 and \
        st_b["counters"]["servers_connected_out"] == 1, st_b
    server.kill()


def _udp_exchange(proc, datagrams, timeout=20):
    """Write each datagram to `xray connect --udp`'s stdin and read its echo
    back from stdout before the next one (each write is one datagram)."""
    import select
    got = []
    for d in datagrams:
        os.write(proc.stdin.fileno(), d)
        buf = b""
        end = time.monotonic() + timeout
        while len(buf) < len(d) and time.monotonic() < end:
            if select.select([proc.stdout], [], [], 0.5)[0]:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
        got.append(buf)
    return got


@pytest.mark.timeout(240)
@pytest.mark.parametrize("topology", [{"b2": True}], indirect=True)
def test_udp_across_two_firewalls(topology, pki, tmp_path):
    """UDP (XRAY §5.2): `xray listen --udp --exec cat` in b registers a UDP
    socket; `xray connect --udp` in a reaches its official address through
    both agents, each datagram (1 byte to 60000 bytes) echoed whole and
    exact; from b2 the agent answers with the local address and datagrams
    go directly, no relay point."""
    t = topology
    confs = _two_agents(t, pki, tmp_path)
    listener = t.popen("b", [str(th.XRAY), "listen", "9000", "--udp", "--agent",
                             "%s:7000" % t.addr("natb"), "--agent-name", "agent-b",
                             "--cert", pki.crt("relay-b"), "--key", pki.key("relay-b"),
                             "--ca", pki.ca, "--private", "198.18.2.0/24", "--exec", "cat"],
                       stderr=subprocess.PIPE, text=True)
    out = _Lines(listener)
    i, line = out.wait(r"fully bound: official")
    official = re.search(r"official (\S+)", line).group(1)
    creds = ["--cert", pki.crt("app-1"), "--key", pki.key("app-1"), "--ca", pki.ca]
    client = t.popen("a", [str(th.XRAY), "connect", "--udp", official, "--agent",
                           "%s:7000" % t.addr("nata"), "--agent-name", "agent-a", *creds],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rnd = random.Random(7)
    sent = [os.urandom(n) for n in [1, 2, 100, 1400, 8192, 60000] +
            [rnd.randint(1, 1500) for _ in range(40)]]
    got = _udp_exchange(client, sent)
    assert [len(g) for g in got] == [len(d) for d in sent]
    assert got == sent
    client.stdin.close()
    assert client.wait(timeout=30) == 0, client.stderr.read()
    assert b"relayed through the agents" in client.stderr.read()
    out.wait(r"relayed association with CN=app-1", start=i + 1)
    log_b = (confs["b"] / "error.log").read_text()
    assert re.search(r"relay point \d+ linked: .*/udp \(server\)", log_b), log_b
    assert _status(t, "natb", confs["b"])["counters"]["servers_connected_out"] == 1

    # the same network: direct datagrams to the local address
    r = t.run("b2", [str(th.XRAY), "connect", "--udp", official, "--agent",
                     "%s:7000" % t.addr("natb"), "--agent-name", "agent-b", "--cert",
                     pki.crt("relay-a"), "--key", pki.key("relay-a"), "--ca", pki.ca,
                     "--idle", "1500"], input="same network\n", timeout=30)
    assert r.returncode == 0 and r.stdout == "same network\n", (r.stdout, r.stderr)
    assert "directly, same network" in r.stderr
    out.wait(r"direct association with 198\.18\.2\.\d+", start=i + 1)
    listener.send_signal(signal.SIGTERM)
    listener.wait(timeout=20)
