"""The XRAY agent's control service through the real binary: server
binding (XRAY §5.1) - HELLO, REGISTER, REFRESH, UNREGISTER - with official
addresses leased from the pool, soft state (expiry, heartbeats), the state
file across a crash of the agent's worker, the policy's refusals, and bad
frames.  The client is t/agent_client.py, written from the protocol page."""

import json
import os
import re
import signal
import socket
import struct
import subprocess
import time

import pytest

import agent_client as ac
import tls_helpers as th
import xrayd_fixture as xf


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return th.Pki(tmp_path_factory.mktemp("pki"))


POOL = "198.19.0.2:20000-20002"


# The tests register from 127.0.0.1 for servers elsewhere: their
# application names those networks (a library otherwise registers only the
# address it connects from).
SERVERS = '["198.18.2.0/24", "198.19.0.0/24"]'


def agent_conf(x, pki, lease="30s", extra_apps="", state=True, workers=2, max_regs=3,
               servers=SERVERS, extra_agent=""):
    p = x.listen_port()
    body = """
agent:
  listen: 127.0.0.1:${p}
  tls:
    certificate: %s
    key: %s
    client_ca: %s
  networks: [198.18.2.0/24]
  official_pool: ["%s"]
  lease_time: %s
  admin_socket: ${tmp}/agent.sock
%s
%s
applications:
  - name: app
    match: ["CN=app-*"]
    inbound: on
    max_registrations: %d
%s
  - name: relay-a
    match: ["CN=relay-a"]
%s""" % (pki.crt("localhost"), pki.key("localhost"), pki.ca, POOL, lease,
         "  state_file: ${tmp}/agent.state" if state else "", extra_agent, max_regs,
         "    servers: %s" % servers if servers else "", extra_apps)
    x.write_conf(body, p=p, workers=workers)
    return p


def test_register_refresh_unregister(xrayd, pki):
    x = xrayd()
    p = agent_conf(x, pki)
    x.start()
    x.wait_log(r"agent: serving on 127\.0\.0\.1:%d \(2 application\(s\), 1 pool range\(s\)\)" % p)
    s = ac.Session(p, pki)
    assert s.version == 1 and s.heartbeat_ms == 10000
    # a private local address gets the first free pool address
    h1, lease, off1 = s.register(("198.18.2.2", 8080))
    assert lease == 30000 and off1 == ("198.19.0.2", 20000)
    h2, _, off2 = s.register(("198.18.2.2", 8081))
    assert off2 == ("198.19.0.2", 20001) and h2 != h1
    # UDP has its own namespace of official addresses
    _, _, off3 = s.register(("198.18.2.2", 8080), proto=17)
    assert off3 == ("198.19.0.2", 20000)
    assert s.refresh(h1) == 30000
    s.unregister(h1)
    with pytest.raises(ac.AgentError) as e:
        s.refresh(h1)
    assert e.value.name == "NO_SUCH_ADDRESS"
    # the freed address is handed out again
    _, _, again = s.register(("198.18.2.3", 9000))
    assert again == ("198.19.0.2", 20000)
    x.wait_log(r"agent: app CN=app-1 sha256:\w+ registered 198\.18\.2\.2:8080/tcp as "
               r"198\.19\.0\.2:20000 \(handle \d+, leased\)")
    x.wait_log(r"agent: app unregistered 198\.19\.0\.2:20000")
    s.close()


def test_public_address_is_its_own_official_address(xrayd, pki):
    x = xrayd()
    p = agent_conf(x, pki)
    x.start()
    s = ac.Session(p, pki)
    _, _, off = s.register(("198.19.0.7", 443))
    assert off == ("198.19.0.7", 443)
    x.wait_log(r"registered 198\.19\.0\.7:443/tcp as 198\.19\.0\.7:443 \(handle \d+, public\)")
    s.close()


def test_policy_refusals(xrayd, pki):
    x = xrayd()
    p = agent_conf(x, pki)
    x.start()
    # a certificate no application matches: refused right after TLS
    s = ac.Session(p, pki, cert="intruder", hello=False)
    with pytest.raises(ac.AgentError) as e:
        s.hello()
    assert e.value.name == "NOT_AUTHORIZED"
    s.close()
    x.wait_log(r"agent: 127\.0\.0\.1:\d+ \(CN=intruder sha256:\w+\) refused: no application "
               r"matches its certificate")
    # inbound off
    s = ac.Session(p, pki, cert="relay-a")
    with pytest.raises(ac.AgentError) as e:
        s.register(("198.18.2.2", 80))
    assert e.value.name == "NOT_AUTHORIZED" and "inbound: off" in e.value.message
    x.wait_log(r"REGISTER 198\.18\.2\.2:80 by CN=relay-a .* refused: application \"relay-a\" "
               r"has inbound off")
    # outbound: no rule, no connection, and the log names the application
    with pytest.raises(ac.AgentError) as e:
        s.connect(("198.19.0.2", 20000))
    assert e.value.name == "NOT_AUTHORIZED" and "no outbound rule" in e.value.message
    x.wait_log(r"CONNECT 198\.19\.0\.2:20000 by CN=relay-a .* refused: application "
               r"\"relay-a\": no outbound rule allows 198\.19\.0\.2:20000")
    s.close()
    # max_registrations: 3
    s = ac.Session(p, pki)
    for port in (1, 2, 3):
        s.register(("198.19.0.9", port))
    with pytest.raises(ac.AgentError) as e:
        s.register(("198.19.0.9", 4))
    assert e.value.name == "OVER_LIMIT"
    s.close()


def test_register_takes_only_the_servers_own_address(xrayd, pki):
    """The agent dials a registered local address for relayed connections
    (INCOMING mode 1), so REGISTER may name only the address the library's
    control connection comes from, or one a servers rule allows; loopback,
    unspecified, multicast and broadcast addresses and the agent's own are
    refused as they are for CONNECT, even as the address it comes from.
    Trusted, the address made the agent a port scanner and SSRF proxy."""
    x = xrayd()
    p = agent_conf(x, pki, servers=None)
    x.start()
    s = ac.Session(p, pki)
    refused = [
        (("127.0.0.1", 7000), "127.0.0.1:7000 is a loopback address"),  # where s comes from
        (("::ffff:127.0.0.1", 7000), "is a loopback address"),
        (("::1", 7000), "[::1]:7000 is a loopback address"),
        (("0.0.0.0", 80), "0.0.0.0:80 is an unspecified address"),
        (("224.0.0.1", 5000), "224.0.0.1:5000 is a multicast address"),
        (("255.255.255.255", 9), "is the broadcast address"),
        (("198.19.0.2", 80), "198.19.0.2:80 is one of the agent's own addresses"),  # its pool
        (("198.19.2.20", 22), "198.19.2.20:22 is not the address it connects from (127.0.0.1) "
                              "and no servers rule allows it"),
        (("198.18.2.2", 8080), "is not the address it connects from"),  # in its networks, too
    ]
    for local, why in refused:
        with pytest.raises(ac.AgentError) as e:
            s.register(local)
        assert e.value.name == "NOT_AUTHORIZED" and why in e.value.message, (local, str(e.value))
        assert e.value.message.startswith('application "app": ')
    x.wait_log(r"\[notice\] .*agent: REGISTER 127\.0\.0\.1:7000 by CN=app-1 sha256:\w+ from "
               r"127\.0\.0\.1:\d+ refused: application \"app\": 127\.0\.0\.1:7000 is a loopback "
               r"address, refused unless a servers rule names it")
    x.wait_log(r"\[notice\] .*agent: REGISTER 198\.19\.2\.20:22 by CN=app-1 sha256:\w+ from "
               r"127\.0\.0\.1:\d+ refused: application \"app\": 198\.19\.2\.20:22 is not the "
               r"address it connects from \(127\.0\.0\.1\) and no servers rule allows it")
    # refusals of policy keep the session; nothing was leased
    doc = json.loads(xray_status(x, "--json"))
    assert doc["registrations"] == [] and doc["counters"]["refused"] == len(refused), doc
    s.close()


def test_servers_rules_allow_other_local_addresses(xrayd, pki):
    """A servers rule allows addresses besides the library's own; as for
    outbound, a wide rule only covers a loopback or agent's own address, a
    rule must name it."""
    x = xrayd()
    p = agent_conf(x, pki, servers='["198.19.2.0/24:22", "198.19.0.0/24", "127.0.0.1:7000"]')
    x.start()
    s = ac.Session(p, pki)
    assert s.register(("198.19.2.20", 22))[2] == ("198.19.2.20", 22)
    assert s.register(("127.0.0.1", 7000))[2] == ("127.0.0.1", 7000)
    x.wait_log(r"registered 127\.0\.0\.1:7000/tcp as 127\.0\.0\.1:7000 \(handle \d+, public\)")
    for local, why in ((("198.19.2.20", 23), "no servers rule allows it"),
                       (("127.0.0.1", 7001), "is a loopback address"),
                       (("198.19.0.2", 80), "is one of the agent's own addresses")):
        with pytest.raises(ac.AgentError) as e:
            s.register(local)
        assert e.value.name == "NOT_AUTHORIZED" and why in e.value.message, (local, str(e.value))
    s.close()


def test_idle_sessions_are_closed(xrayd, pki):
    """A library's session that holds no registration and waits on no
    answer is closed after idle_session_timeout, with ERROR TIMEOUT and a
    log line; requests restart the time, and a registration keeps the
    session open without any (its heartbeats keep the registration)."""
    x = xrayd()
    p = agent_conf(x, pki, extra_agent="  idle_session_timeout: 1s")
    x.start()
    idle = ac.Session(p, pki)  # HELLO, then nothing
    t0 = time.monotonic()
    busy = ac.Session(p, pki)
    h, _, _ = busy.register(("198.18.2.2", 80))
    with pytest.raises(ac.AgentError) as e:
        idle.expect(ac.REGISTERED)
    assert e.value.name == "TIMEOUT" and e.value.id == 0, str(e.value)
    assert "idle for 1000 ms with no registration and no request" in e.value.message
    with pytest.raises((EOFError, ConnectionError, OSError)):
        idle.read()
    assert 0.9 < time.monotonic() - t0 < 5
    idle.close()
    x.wait_log(r"agent: control session from 127\.0\.0\.1:\d+, CN=app-1 sha256:\w+ closed: "
               r"idle for 1000 ms with no registration and no request")
    # requests, even refused ones, keep a session open
    asking = ac.Session(p, pki)
    for _ in range(4):
        time.sleep(0.5)
        with pytest.raises(ac.AgentError) as e:
            asking.refresh(12345)
        assert e.value.name == "NO_SUCH_ADDRESS"
    # no frame for more than the timeout: the registration keeps it
    time.sleep(2.5)
    busy.refresh(h)
    busy.unregister(h)
    # without it, it goes the way of the others
    for sess in (asking, busy):
        with pytest.raises(ac.AgentError) as e:
            sess.expect(ac.REFRESHED)
        assert e.value.name == "TIMEOUT", str(e.value)
        sess.close()


def test_pool_exhausted(xrayd, pki):
    x = xrayd()
    p = agent_conf(x, pki, max_regs=10)
    x.start()
    s = ac.Session(p, pki)
    got = [s.register(("198.18.2.2", 100 + i))[2] for i in range(3)]
    assert [g[1] for g in got] == [20000, 20001, 20002]
    with pytest.raises(ac.AgentError) as e:
        s.register(("198.18.2.2", 200))
    assert e.value.name == "OVER_LIMIT" and "exhausted" in e.value.message
    s.close()


@pytest.mark.parametrize("bad,why", [
    (ac.frame(0x66, b""), "type"),
    (ac.frame(ac.HELLO, struct.pack(">HHB", 1, 1, 1) + ac.pstr("x"), flags=1), "flags"),
    (struct.pack(">BBH", ac.HELLO, 0, 5000), "length"),
    (ac.frame(ac.HELLO, struct.pack(">HHB", 1, 1, 9) + ac.pstr("x")), "role"),
    (ac.frame(ac.HELLO, struct.pack(">HHB", 1, 1, 1) + ac.pstr("a\x01b")), "software"),
])
def test_bad_frames_are_refused_and_logged(xrayd, pki, bad, why):
    x = xrayd()
    p = agent_conf(x, pki)
    x.start()
    s = ac.Session(p, pki, hello=False)
    s.send_raw(bad)
    with pytest.raises(ac.AgentError) as e:
        s.expect(ac.HELLO_OK)
    assert e.value.name == "PROTOCOL" and why in e.value.message
    with pytest.raises((EOFError, ConnectionError, OSError)):
        s.read()
    s.close()
    x.wait_log(r"agent: invalid frame from 127\.0\.0\.1:\d+, CN=app-1 .*: bad %s" % why)
    # nothing else disturbed
    t = ac.Session(p, pki)
    t.register(("198.18.2.2", 1))
    t.close()


def test_frames_before_hello_and_versions(xrayd, pki):
    x = xrayd()
    p = agent_conf(x, pki)
    x.start()
    s = ac.Session(p, pki, hello=False)
    s.send_raw(ac.frame(ac.REFRESH, struct.pack(">IQ", 1, 1)))
    with pytest.raises(ac.AgentError) as e:
        s.expect(ac.REFRESHED)
    assert e.value.name == "PROTOCOL" and "expected HELLO" in e.value.message
    s.close()
    s = ac.Session(p, pki, hello=False)
    with pytest.raises(ac.AgentError) as e:
        s.hello(lo=2, hi=3)
    assert e.value.name == "VERSION"
    s.close()
    # a library offering 1..5 gets 1
    s = ac.Session(p, pki, hello=False)
    assert s.hello(lo=1, hi=5) == 1
    s.close()


def test_plain_tcp_and_silence_are_dropped(xrayd, pki):
    x = xrayd()
    p = agent_conf(x, pki)
    x.write_conf(x.conf.read_text().replace("lease_time: 30s",
                                            "lease_time: 30s\n  handshake_timeout: 500ms"),
                 header=False)
    x.start()
    c = socket.create_connection(("127.0.0.1", p), 5)
    c.sendall(b"GET / HTTP/1.0\r\n\r\n")
    c.settimeout(5)
    try:
        c.recv(100)  # an alert, EOF or a reset: what matters is the log line
    except OSError:
        pass
    c.close()
    x.wait_log(r"agent: TLS handshake with 127\.0\.0\.1:\d+ failed")
    silent = socket.create_connection(("127.0.0.1", p), 5)
    x.wait_log(r"did not finish TLS and HELLO within 500 ms", timeout=10)
    silent.close()


def test_lease_expires_without_heartbeat(xrayd, pki):
    x = xrayd()
    p = agent_conf(x, pki, lease="1s")
    x.start()
    s = ac.Session(p, pki)
    h, lease, off = s.register(("198.18.2.2", 80))
    assert lease == 1000
    # heartbeats keep it alive
    for _ in range(3):
        time.sleep(0.5)
        s.refresh(h)
    time.sleep(2.6)
    x.wait_log(r"agent: lease of 198\.19\.0\.2:20000 \(app\) expired without a heartbeat")
    with pytest.raises(ac.AgentError):
        s.refresh(h)
    s.close()


def test_leases_survive_a_crash_of_the_agent(xrayd, pki):
    """kill -9 of the agent's worker: the replacement loads the state file,
    keeps the official address reserved for its holder (another app asking
    gets another address), and the holder re-registering with `prior` gets
    its address back."""
    x = xrayd()
    p = agent_conf(x, pki)
    x.start()
    s = ac.Session(p, pki, cert="app-1")
    _, _, off = s.register(("198.18.2.2", 80))
    assert off == ("198.19.0.2", 20000)
    time.sleep(1.5)  # the state file is written on the next 1 s tick
    state = (x.tmp / "agent.state").read_text()
    assert state.startswith("xrayd-leases 1\n") and "198.19.0.2:20000" in state, state
    assert oct((x.tmp / "agent.state").stat().st_mode & 0o777) == "0o600"
    line = x.wait_log(r"worker process started.*serving the agent")[-1]
    pid = int(re.search(r"\] (\d+): worker process started", line).group(1))
    assert pid in x.worker_pids()
    x.allow_log(r"exited on signal 9\b")
    os.kill(pid, signal.SIGKILL)
    x.wait_log(r"agent: 1 lease\(s\) from .*agent\.state held for their holders", timeout=20)
    s.close()
    # a server that does not name the reserved address gets another one
    o = ac.Session(p, pki, cert="app-1")
    _, _, other = o.register(("198.18.2.3", 80))
    assert other == ("198.19.0.2", 20001)
    # the holder comes back naming its address
    _, _, back = o.register(("198.18.2.2", 80), prior=("198.19.0.2", 20000))
    assert back == ("198.19.0.2", 20000)
    o.close()


def test_config_errors(pki, tmp_path):
    cases = [
        ("agent:\n  listen: 127.0.0.1:1\n  tls:\n    certificate: %s\n    key: %s\n"
         % (pki.crt("localhost"), pki.key("localhost")),
         r"needs client_ca and verify_client: required"),
        ("applications:\n  - name: a\n    match: x\nrelay:\n  - listen: 127.0.0.1:1\n"
         "    upstream: 127.0.0.1:2\n", r":2:3: \"applications\": .*add an agent block"),
        ("agent:\n  listen: 127.0.0.1:1\n  tls:\n    certificate: %s\n    key: %s\n"
         "    client_ca: %s\n  networks: [198.18.2.0/24]\n"
         % (pki.crt("localhost"), pki.key("localhost"), pki.ca), r"add official_pool"),
        ("agent:\n  listen: 127.0.0.1:1\n  tls:\n    certificate: %s\n    key: %s\n"
         "    client_ca: %s\n  official_pool: [\"198.19.0.2\"]\n"
         % (pki.crt("localhost"), pki.key("localhost"), pki.ca), r"ADDR:PORT-PORT"),
    ]
    for body, want in cases:
        f = tmp_path / "c.yaml"
        f.write_text(body)
        r = xf.run_xrayd("-t", "-c", f)
        assert r.returncode != 0 and re.search(want, r.stderr), (body, r.stderr)


def xray_status(x, *args):
    r = subprocess.run([str(th.XRAY), "status", "--socket", str(x.tmp / "agent.sock"),
                        *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_xray_status(xrayd, pki):
    """`xray status` reads the agent's admin socket (0600): registrations
    with their holders, sessions, handshakes and counters, as text and as
    JSON; a reload's new agent takes the socket over."""
    x = xrayd()
    p = agent_conf(x, pki)
    x.start()
    sock = x.tmp / "agent.sock"
    xf.wait_until(sock.exists, 10, what="the admin socket")
    assert oct(sock.stat().st_mode & 0o777) == "0o600"
    s = ac.Session(p, pki)
    s.register(("198.18.2.2", 8080))
    s.register(("198.19.0.7", 443))
    bad = ac.Session(p, pki, cert="intruder", hello=False)
    with pytest.raises(ac.AgentError):
        bad.hello()
    bad.close()
    text = xray_status(x)
    assert re.search(r"^agent 127\.0\.0\.1:%d  pid \d+  generation 1" % p, text, re.M), text
    assert "official pool: 3 addresses, 1 leased" in text, text
    assert re.search(r"198\.19\.0\.2:20000 +198\.18\.2\.2:8080 +tcp +app +connected", text), text
    assert re.search(r"198\.19\.0\.7:443 +198\.19\.0\.7:443 +tcp +app +connected", text), text
    assert "registered 2" in text and "refused 1" in text, text
    doc = json.loads(xray_status(x, "--json"))
    assert doc["pool"] == {"size": 3, "leased": 1}
    assert doc["counters"]["registered"] == 2 and doc["counters"]["refused"] == 1
    assert doc["counters"]["full_handshakes"] + doc["counters"]["resumed_handshakes"] == 2
    assert {r["official"] for r in doc["registrations"]} == {"198.19.0.2:20000", "198.19.0.7:443"}
    assert all(r["holder"] == "connected" for r in doc["registrations"])
    s.close()
    # the session is gone: its registrations stay, reserved, until they expire
    xf.wait_until(lambda: all(r["holder"] == "reserved" for r in
                              json.loads(xray_status(x, "--json"))["registrations"]),
                  10, what="registrations to be orphaned")
    x.reload()
    xf.wait_until(lambda: json.loads(xray_status(x, "--json"))["generation"] == 2, 15,
                  what="the new agent on the admin socket")
    r = subprocess.run([str(th.XRAY), "status"], capture_output=True, text=True,
                       env=dict(os.environ, XRAY_ADMIN_SOCKET=""), timeout=30)
    assert r.returncode == 2 and "--socket" in r.stderr


class _Reaper:
    """For the cleanup fixture: kill a process that is still running."""

    def __init__(self, proc):
        self.proc = proc

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _xray_listen(x, pki, agent_port, port, cert="app-1", extra=()):
    return subprocess.Popen(
        [str(th.XRAY), "listen", str(port), "--bind", "127.0.0.1", "--agent",
         "127.0.0.1:%d" % agent_port, "--agent-name", "localhost", "--cert", pki.crt(cert),
         "--key", pki.key(cert), "--ca", pki.ca, *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _stderr_until(proc, regex, timeout=15):
    lines = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if re.search(regex, line):
            return line
    raise AssertionError("no %r in xray listen's output:\n%s" % (regex, "".join(lines)))


def test_xray_listen_binds_through_the_agent(xrayd, pki, cleanup):
    """`xray listen` registers its socket (a public local address is its own
    official address), serves connections with --exec, keeps the lease
    alive with heartbeats, and unregisters on SIGTERM."""
    x = xrayd()
    # it binds loopback, where the agent is: a servers rule must name it
    p = agent_conf(x, pki, lease="1500ms", servers='["127.0.0.1/32"]')
    x.start()
    port = xf.free_port()
    proc = _xray_listen(x, pki, p, port, extra=["--exec", "cat"])
    cleanup.append(_Reaper(proc))
    line = _stderr_until(proc, r"fully bound")
    assert "official 127.0.0.1:%d (local 127.0.0.1:%d)" % (port, port) in line, line
    with socket.create_connection(("127.0.0.1", port), 5) as c:
        c.sendall(b"hello through xray listen\n")
        c.shutdown(socket.SHUT_WR)
        assert xf.recv_all(c) == b"hello through xray listen\n"
    time.sleep(2.5)  # longer than the lease: only heartbeats keep it
    regs = json.loads(xray_status(x, "--json"))["registrations"]
    assert [(r["official"], r["holder"]) for r in regs] == [("127.0.0.1:%d" % port, "connected")]
    assert json.loads(xray_status(x, "--json"))["counters"]["refreshed"] >= 2
    proc.send_signal(signal.SIGTERM)
    _stderr_until(proc, r"unregistered")
    assert proc.wait(10) == 0
    assert json.loads(xray_status(x, "--json"))["registrations"] == []


def test_xray_listen_refused(xrayd, pki):
    x = xrayd()
    p = agent_conf(x, pki)
    x.start()
    proc = _xray_listen(x, pki, p, xf.free_port(), cert="relay-a")
    out = proc.communicate(timeout=20)[1]
    assert proc.returncode == 1 and "refused: NOT_AUTHORIZED" in out and "inbound: off" in out, out


def _client_env(home, **kw):
    """The environment of an xray tool that finds everything itself:
    none of the XRAY_ settings of the test's own environment, HOME set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRAY_")}
    env["HOME"] = str(home)
    env.update(kw)
    return env


def _cat_server(home, cleanup):
    """`xray listen --exec cat` on a free loopback port, its agent and
    certificates from the client file under home: (port, process)."""
    port = xf.free_port()
    proc = subprocess.Popen([str(th.XRAY), "listen", str(port), "--bind", "127.0.0.1",
                             "--exec", "cat"], env=_client_env(home),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    cleanup.append(_Reaper(proc))
    line = _stderr_until(proc, r"fully bound")
    assert "official 127.0.0.1:%d" % port in line, line
    return port, proc


def test_tools_find_agent_and_certificates_without_flags(xrayd, pki, cleanup, tmp_path):
    """One client configuration: `xray listen` and `xray connect` with no
    --agent/--cert/--key/--ca: from ~/.config/xray/client.yaml (relative
    paths are the file's directory's), from $XRAY_CONFIG, and from the
    XRAY_* variables, which win over the file; a broken file or a missing
    setting is an error that says where."""
    import shutil
    x = xrayd()
    p = agent_conf(x, pki, servers='["127.0.0.1/32"]\n    outbound: ["127.0.0.1/32"]')
    x.start()
    home = tmp_path / "home"
    conf_dir = home / ".config" / "xray"
    conf_dir.mkdir(parents=True)
    shutil.copy(pki.crt("app-1"), conf_dir / "app.crt")
    shutil.copy(pki.key("app-1"), conf_dir / "app.key")
    (conf_dir / "client.yaml").write_text(
        "agent: 127.0.0.1:%d\nagent_name: localhost\ncert: app.crt\nkey: app.key\n"
        "ca: %s\n" % (p, pki.ca))
    port, proc = _cat_server(home, cleanup)

    def connect(env, payload=b"through the client file\n"):
        return subprocess.run([str(th.XRAY), "connect", "127.0.0.1:%d" % port], env=env,
                              input=payload, capture_output=True, timeout=30)

    r = connect(_client_env(home))
    assert r.returncode == 0 and r.stdout == b"through the client file\n", r.stderr
    # It left its TLS sessions for the next run, the user's alone, and the
    # next run resumes them: no full handshake with the agent.
    cache = list((home / ".cache" / "xray").iterdir())
    assert len(cache) == 1 and (cache[0].stat().st_mode & 0o777) == 0o600, cache
    assert (cache[0].parent.stat().st_mode & 0o777) == 0o700
    before = json.loads(xray_status(x, "--json"))["counters"]
    r = connect(_client_env(home))
    assert r.returncode == 0 and r.stdout == b"through the client file\n", r.stderr
    after = json.loads(xray_status(x, "--json"))["counters"]
    assert after["resumed_handshakes"] > before["resumed_handshakes"], (before, after)
    assert after["full_handshakes"] == before["full_handshakes"], (before, after)
    # A session file others may read is not used.
    cache[0].chmod(0o644)
    r = connect(_client_env(home))
    assert r.returncode == 0, r.stderr
    assert json.loads(xray_status(x, "--json"))["counters"]["full_handshakes"] > \
        after["full_handshakes"]
    # $XRAY_CONFIG names another file; the default one is not read then.
    other = tmp_path / "other.yaml"
    other.write_text("agent: 127.0.0.1:%d\nagent_name: localhost\ncert: %s\nkey: %s\n"
                     "ca: %s\n" % (p, pki.crt("app-1"), pki.key("app-1"), pki.ca))
    r = connect(_client_env(tmp_path / "nohome", XRAY_CONFIG=str(other)))
    assert r.returncode == 0 and r.stdout == b"through the client file\n", r.stderr
    # The environment wins over the file.
    r = connect(_client_env(home, XRAY_CERT=str(tmp_path / "missing.crt")))
    assert r.returncode == 1 and b"missing.crt" in r.stderr, r.stderr
    # A broken file says file:line:column.
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent: 127.0.0.1:%d\ncertificate: x.crt\n" % p)
    r = connect(_client_env(home, XRAY_CONFIG=str(bad)))
    assert r.returncode == 2 and b'bad.yaml:2:1: unknown setting "certificate"' in r.stderr, \
        r.stderr
    r = connect(_client_env(home, XRAY_CONFIG=str(tmp_path / "none.yaml")))
    assert r.returncode == 2 and b"none.yaml, which does not exist" in r.stderr, r.stderr
    # Nothing anywhere: the message says where a setting could come from.
    if not os.path.exists("/etc/xray/client.yaml") and not os.path.exists("/etc/xray/agent"):
        r = connect(_client_env(tmp_path / "nohome"))
        assert r.returncode == 2 and b"no agent: give --agent, set $XRAY_AGENT" in r.stderr, \
            r.stderr
        r = connect(_client_env(tmp_path / "nohome", XRAY_AGENT="127.0.0.1:%d" % p))
        assert r.returncode == 2 and b"no cert: give --cert" in r.stderr, r.stderr
    proc.send_signal(signal.SIGTERM)


def test_xray_forward_carries_concurrent_connections(xrayd, pki, cleanup, tmp_path):
    """`xray forward LOCAL OFFICIAL` (agent and certificates from the
    client file): 10 connections at once to the local port each reach the
    server registered by `xray listen` (directly: the agent's own host is
    its network, so half of them opening with byte 0x16 must not pass for
    the agent's TLS link) and get their own bytes back over
    the first connection's control session; with --max 1
    a second connection is refused while the first is open."""
    import threading
    x = xrayd()
    p = agent_conf(x, pki, servers='["127.0.0.1/32"]\n    outbound: ["127.0.0.1/32"]')
    x.start()
    home = tmp_path / "home"
    (home / ".config" / "xray").mkdir(parents=True)
    (home / ".config" / "xray" / "client.yaml").write_text(
        "agent: 127.0.0.1:%d\nagent_name: localhost\ncert: %s\nkey: %s\nca: %s\n"
        % (p, pki.crt("app-1"), pki.key("app-1"), pki.ca))
    port, server = _cat_server(home, cleanup)

    def forward(*extra):
        local = xf.free_port()
        proc = subprocess.Popen([str(th.XRAY), "forward", str(local), "127.0.0.1:%d" % port,
                                 *extra], env=_client_env(home), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        cleanup.append(_Reaper(proc))
        line = _stderr_until(proc, r"listening on")
        assert "listening on %d for 127.0.0.1:%d" % (local, port) in line, line
        return local

    local = forward()
    res = [None] * 10

    def one(i):
        try:
            # Even ones open with 0x16, a TLS record's first byte: still a
            # direct client of the server, not the agent's link.
            head = b"\x16\x00" if i % 2 == 0 else b""
            payload = head + os.urandom(200000) + b"end %d\n" % i
            with socket.create_connection(("127.0.0.1", local), 10) as c:
                c.settimeout(30)
                t = threading.Thread(target=lambda: (c.sendall(payload),
                                                     c.shutdown(socket.SHUT_WR)))
                t.start()
                got = xf.recv_all(c, timeout=30)
                t.join()
            res[i] = got == payload or "got %d of %d bytes" % (len(got), len(payload))
        except Exception as e:  # noqa: BLE001 - reported below
            res[i] = repr(e)

    one(0)  # the first: full handshakes
    before = json.loads(xray_status(x, "--json"))["counters"]
    ts = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert res == [True] * 10, res
    # The next connections share the first one's control session: no
    # handshake with the agent at all, and the agent's direct answer (the
    # server is in its network) is remembered, so no CONNECT either.
    after = json.loads(xray_status(x, "--json"))["counters"]
    assert after["full_handshakes"] == before["full_handshakes"], (before, after)
    assert after["resumed_handshakes"] == before["resumed_handshakes"], (before, after)
    assert after["connects"] == before["connects"], (before, after)

    local = forward("--max", "1")
    with socket.create_connection(("127.0.0.1", local), 10) as first:
        first.sendall(b"held\n")
        assert xf.recv_exact(first, 5, timeout=15) == b"held\n"
        with socket.create_connection(("127.0.0.1", local), 10) as second:
            assert xf.closed_by_peer(second, 10)
        first.sendall(b"still\n")
        assert xf.recv_exact(first, 6, timeout=15) == b"still\n"
    server.send_signal(signal.SIGTERM)
