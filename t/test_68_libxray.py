"""libxray across the two firewalls of t/netns.py: unmodified programs under
LD_PRELOAD=libxray-preload.so (Python's http.server and curl, OpenBSD nc,
asyncio), a C program on the API itself, and the helper process the library
starts.  Agent A on nata serves the client host a, agent B on natb the
server host b; a and b cannot reach each other but through the agents.

Needs root and `ip netns`; skips otherwise."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

import netns
import tls_helpers as th
import xrayd_fixture as xf
from pathlib import Path

from test_66_agent_topology import _Lines, _status, _two_agents, _wait

topology = netns.topology

_why = netns.unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))

PRELOAD = xf.OBJS / "libxray-preload.so"
_RUNDIRS = []


@pytest.fixture(autouse=True, scope="module")
def _remove_rundirs():
    yield
    for d in _RUNDIRS:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return th.Pki(tmp_path_factory.mktemp("pki"))


def _env(t, pki, tmp, role, debug=True, cert=None):
    """The environment of an XRAY application in a (app-1, agent A) or b
    (relay-b, agent B): the client settings, a home and a runtime
    directory of its own, the helper from the build tree."""
    me = "a" if role == "a" else "b"
    home = tmp / ("home-" + role)
    home.mkdir(parents=True, exist_ok=True)
    # a runtime directory short enough for a socket's path (107 bytes)
    run = home / "run"
    if not run.exists():
        short = tempfile.mkdtemp(prefix="xr-run-")
        _RUNDIRS.append(short)
        run.symlink_to(short)
    env = dict(os.environ,
               HOME=str(home), XDG_RUNTIME_DIR=os.readlink(run),
               XRAY_AGENT="%s:7000" % t.addr("nat" + me),
               XRAY_AGENT_NAME="agent-" + me,
               XRAY_CERT=pki.crt(cert or ("app-1" if me == "a" else "relay-b")),
               XRAY_KEY=pki.key(cert or ("app-1" if me == "a" else "relay-b")),
               XRAY_CA=pki.ca,
               XRAY_HELPER_BIN=str(th.XRAY))
    env.pop("XRAY_CONFIG", None)
    if debug:
        env["XRAY_DEBUG"] = "1"
    return env


def _preloaded(env):
    return dict(env, LD_PRELOAD=str(PRELOAD))


def _official(lines):
    _i, line = lines.wait(r"fully bound, official (\S+)", timeout=30)
    return re.search(r"official (\S+)", line).group(1)


def _http_server_in_b(t, pki, tmp, root):
    """python3 -m http.server in b, under the preload: its listen()
    registers with agent B; the official address is in its stderr."""
    env = _preloaded(_env(t, pki, tmp, "b"))
    p = t.popen("b", [sys.executable, "-m", "http.server", "8080", "--bind", t.addr("b"),
                      "--directory", str(root)], env=env, stderr=subprocess.PIPE, text=True)
    lines = _Lines(p)
    return p, lines, _official(lines)


@pytest.mark.timeout(240)
def test_curl_fetches_from_http_server_through_the_preload(topology, pki, tmp_path):
    """Unmodified curl in a fetches a file from an unmodified http.server
    in b; both sides only have LD_PRELOAD.  The bytes are exact, the
    server logs the client's real address (not the helper's loopback), a
    name from the XRAY hosts file reaches the official address, and what
    the policy does not allow fails."""
    if shutil.which("curl") is None:
        pytest.skip("no curl")
    t = topology
    _two_agents(t, pki, tmp_path)
    root = tmp_path / "www"
    root.mkdir()
    body = os.urandom(3 << 20)
    (root / "blob").write_bytes(body)
    server, lines, official = _http_server_in_b(t, pki, tmp_path, root)
    env = _preloaded(_env(t, pki, tmp_path, "a"))
    for i in range(3):  # the first starts a's helper, the others find it
        r = t.run("a", ["curl", "-sS", "--max-time", "60", "-o", "-", "http://%s/blob" % official],
                  env=env, timeout=90, text=False, errors=None)
        assert r.returncode == 0, r.stderr
        assert r.stdout == body, "fetch %d: %d of %d bytes" % (i, len(r.stdout), len(body))
        assert b"relayed through the agents" in r.stderr, r.stderr
    # http.server's log line names the peer getpeername/accept gave it:
    # the client host (the address the agents report), not the helper's loopback
    lines.wait(r"^%s - - .*GET /blob" % re.escape(t.addr("a")))
    # a name for the official address, from the XRAY hosts file
    host, port = _split(official)
    (tmp_path / "hosts").write_text("# official addresses\n%s web-b.xray web-b\n" % host)
    r = t.run("a", ["curl", "-sS", "--max-time", "60", "-o", "-",
                    "http://web-b.xray:%s/blob" % port], env=dict(env, XRAY_HOSTS=str(tmp_path / "hosts")),
              timeout=90, text=False, errors=None)
    assert r.returncode == 0 and r.stdout == body, r.stderr
    assert b"name web-b.xray: " + host.encode() in r.stderr, r.stderr
    # direct: the agents refuse what the policy does not allow
    r = t.run("a", ["curl", "-sS", "--max-time", "30", "http://%s:20009/" % t.pub_addr("natb")],
              env=env, timeout=60)
    assert r.returncode != 0, r.stdout
    server.terminate()
    server.wait(timeout=20)


@pytest.fixture(scope="module")
def prog(tmp_path_factory):
    """t/libxray_prog.c built as an application would be: xray.h and the
    static library."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no cc")
    exe = tmp_path_factory.mktemp("bin") / "libxray_prog"
    r = subprocess.run([cc, "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-O1",
                        "-I", str(xf.REPO / "src" / "lib"), "-o", str(exe),
                        str(xf.REPO / "t" / "libxray_prog.c"), str(xf.OBJS / "libxray.a"),
                        "-pthread"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return exe


def _prog_server(t, pki, tmp, prog, role="b", env=None):
    env = env or _env(t, pki, tmp, role)
    p = t.popen(role, [str(prog), "server", t.addr(role), "8080"], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return p, _Lines(p, "stdout"), _Lines(p)


def _split(addr):
    host, port = addr.rsplit(":", 1)
    return host, port


@pytest.mark.timeout(240)
def test_the_api_connects_forks_dups_and_bursts(topology, pki, tmp_path, prog):
    """A C program on the API: a server in b whose official address comes
    from xray_getsockname and whose forked children see the peer; in a,
    blocking connect, dup2, fork with the socket inherited, and 200
    non-blocking connects started at once (poll and select), 200 of 200
    echoing."""
    t = topology
    _two_agents(t, pki, tmp_path)
    server, out, _err = _prog_server(t, pki, tmp_path, prog)
    _i, line = out.wait(r"official 198\.19\.0\.2:\d+", timeout=30)
    official = line.split()[1]
    host, port = _split(official)
    env = _env(t, pki, tmp_path, "a", debug=False)
    r = t.run("a", [str(prog), "client", host, port], env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok blocking %s peer %s:" % (official, t.addr("a")) in r.stdout, r.stdout
    assert "ok dup2" in r.stdout and "ok fork" in r.stdout, r.stdout
    r = t.run("a", [str(prog), "burst", host, port, "200"], env=env, timeout=120)
    assert "in progress 200 of 200" in r.stdout, r.stdout + r.stderr
    assert "burst 200 of 200" in r.stdout and r.returncode == 0, r.stdout + r.stderr[-3000:]
    server.terminate()
    server.wait(timeout=20)


def _helper_pid(t, role, tmp):
    run = os.readlink(tmp / ("home-" + role) / "run")
    r = subprocess.run(["pgrep", "-f", "xray helper --detach --socket %s/" % run],
                       capture_output=True, text=True)
    pids = [int(p) for p in r.stdout.split()]
    assert len(pids) == 1, r
    return pids[0]


@pytest.mark.timeout(240)
def test_non_blocking_connect_completes_at_the_end_to_end_ack(topology, pki, tmp_path, prog):
    """While the far side has not answered (b's helper is stopped), a
    non-blocking connect in a stays unwritable for poll; when it comes
    back, the connect completes with SO_ERROR 0 and carries bytes."""
    t = topology
    _two_agents(t, pki, tmp_path)
    server, out, _err = _prog_server(t, pki, tmp_path, prog)
    _i, line = out.wait(r"official 198\.19\.0\.2:\d+", timeout=30)
    host, port = _split(line.split()[1])
    helper = _helper_pid(t, "b", tmp_path)
    os.kill(helper, signal.SIGSTOP)
    try:
        client = t.popen("a", [str(prog), "pending", host, port, "1500"],
                         env=_env(t, pki, tmp_path, "a"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        cout = _Lines(client, "stdout")
        cout.wait(r"^pending$", timeout=30)
    finally:
        os.kill(helper, signal.SIGCONT)
    cout.wait(r"^connected peer %s:" % re.escape(t.addr("a")), timeout=60)
    assert client.wait(timeout=30) == 0
    server.terminate()
    server.wait(timeout=20)


@pytest.mark.timeout(240)
def test_nc_serves_and_connects_through_the_preload(topology, pki, tmp_path):
    """OpenBSD nc, unmodified: `nc -l` in b under the preload is bound
    through agent B; `nc` in a sends a file to its official address and
    the server side writes it out byte-exact."""
    if shutil.which("nc") is None:
        pytest.skip("no nc")
    t = topology
    _two_agents(t, pki, tmp_path)
    got = tmp_path / "got"
    with open(got, "wb") as sink:
        server = t.popen("b", ["nc", "-l", t.addr("b"), "8080"], stdout=sink,
                         stderr=subprocess.PIPE, text=True,
                         env=_preloaded(_env(t, pki, tmp_path, "b")))
        official = _official(_Lines(server))
        data = tmp_path / "data"
        data.write_bytes(os.urandom(8 << 20))
        host, port = _split(official)
        with open(data, "rb") as f:
            r = t.run("a", ["nc", "-N", host, port], stdin=f, timeout=120,
                      env=_preloaded(_env(t, pki, tmp_path, "a")))
        assert r.returncode == 0, r.stderr
        assert server.wait(timeout=60) == 0
    assert got.read_bytes() == data.read_bytes()


ASYNC = r'''
import asyncio, sys

async def client(host, port, n):
    async def one(i):
        r, w = await asyncio.open_connection(host, port)
        peer = await r.readline()
        msg = b"asyncio %d\n" % i
        w.write(msg * 100)
        await w.drain()
        back = await r.readexactly(len(msg) * 100)
        w.close()
        await w.wait_closed()
        return back == msg * 100
    ok = await asyncio.gather(*(one(i) for i in range(n)))
    print("asyncio %d of %d" % (sum(ok), n), flush=True)

async def server(host, port):
    async def serve(r, w):
        peer = w.get_extra_info("peername")
        w.write(b"peer %s:%d\n" % (peer[0].encode(), peer[1]))
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()
    srv = await asyncio.start_server(serve, host, port)
    print("official %s:%d" % srv.sockets[0].getsockname()[:2], flush=True)
    await srv.serve_forever()

if sys.argv[1] == "server":
    asyncio.run(server(sys.argv[2], int(sys.argv[3])))
else:
    asyncio.run(client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
'''


@pytest.mark.timeout(240)
def test_asyncio_client_and_server_through_the_preload(topology, pki, tmp_path):
    """Python asyncio (epoll, non-blocking sockets) on both sides: the
    server's getsockname is its official address, 200 concurrent client
    connections echo exactly."""
    t = topology
    _two_agents(t, pki, tmp_path)
    script = tmp_path / "aio.py"
    script.write_text(ASYNC)
    server = t.popen("b", [sys.executable, str(script), "server", t.addr("b"), "8080"],
                     env=_preloaded(_env(t, pki, tmp_path, "b", debug=False)),
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = _Lines(server, "stdout")
    _i, line = out.wait(r"official 198\.19\.0\.2:\d+", timeout=30)
    host, port = _split(line.split()[1])
    r = t.run("a", [sys.executable, str(script), "client", host, port, "200"],
              env=_preloaded(_env(t, pki, tmp_path, "a", debug=False)), timeout=120)
    assert "asyncio 200 of 200" in r.stdout, r.stdout + r.stderr
    server.terminate()
    server.wait(timeout=20)


@pytest.mark.timeout(240)
def test_agent_down_at_bind_then_up_and_down_at_connect(topology, pki, tmp_path, prog):
    """XRAY §5.1 and §6.  A server started before its agent is locally
    bound (its own address), and fully bound once the agent comes: then
    reachable from a.  A client whose agent is down connects directly:
    that works inside its network and fails, with an error, across."""
    t = topology
    server, out, _err = _prog_server(t, pki, tmp_path, prog)
    out.wait(r"official %s:8080" % re.escape(t.addr("b")), timeout=30)  # locally bound
    _two_agents(t, pki, tmp_path)
    _i, line = out.wait(r"official 198\.19\.0\.2:\d+", timeout=30)
    host, port = _split(line.split()[1])
    r = t.run("a", [str(prog), "client", host, port], timeout=60,
              env=_env(t, pki, tmp_path, "a", debug=False))
    assert r.returncode == 0 and "ok fork" in r.stdout, r.stdout + r.stderr
    # agent A gone: a's connects go direct
    subprocess.run(["pkill", "-f", str(tmp_path / "agent-a")], check=False)
    _wait(lambda: subprocess.run(["pgrep", "-f", str(tmp_path / "agent-a")],
                                 capture_output=True).returncode != 0, 20, "agent A to stop")
    nata = t.listen("nata", t.addr("nata"), 9000)  # answers with the peer's address
    env = _preloaded(_env(t, pki, tmp_path, "a"))
    r = t.run("a", ["nc", "-w", "5", t.addr("nata"), "9000"], env=env, timeout=60)
    assert r.stdout.strip() == t.addr("a"), r.stdout + r.stderr
    assert "directly" in r.stderr, r.stderr
    r = t.run("a", ["nc", "-w", "3", host, port], env=env, timeout=60)
    assert r.returncode != 0, r.stdout + r.stderr
    nata.kill()
    server.terminate()
    server.wait(timeout=20)


ECHO = r'''
import socket, socketserver, sys

class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)

socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.request_queue_size = 512
srv = socketserver.ThreadingTCPServer((sys.argv[1], int(sys.argv[2])), Echo)
srv.daemon_threads = True
print("ready", flush=True)
srv.serve_forever()
'''

BURST = r'''
import socket, sys, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok = [False] * n
go = threading.Barrier(n)

def one(i):
    try:
        go.wait(30)
        with socket.create_connection((host, port), 60) as c:
            c.settimeout(60)
            msg = b"burst %d\n" % i * 50
            c.sendall(msg)
            c.shutdown(socket.SHUT_WR)
            got = b""
            while data := c.recv(65536):
                got += data
            ok[i] = got == msg
    except Exception as e:
        print("connection %d: %r" % (i, e), file=sys.stderr)

ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in ts:
    t.start()
for t in ts:
    t.join(120)
print("burst %d of %d" % (sum(ok), n), flush=True)
'''


def _port_open(t, role, host, port):
    r = t.run(role, [sys.executable, "-c", "import socket,sys; socket.create_connection"
                     "((sys.argv[1], int(sys.argv[2])), 2).close()", host, str(port)])
    return r.returncode == 0


def _xray(t, role, env, *args):
    p = t.popen(role, [str(th.XRAY), *args], env=env, stderr=subprocess.PIPE, text=True)
    return p, _Lines(p)


@pytest.mark.timeout(300)
def test_tools_publish_and_reach_servers(topology, pki, tmp_path):
    """The tools for programs the preload cannot reach.  In b, `xray
    listen 8080 --to` publishes an unmodified http.server and a threaded
    echo server on loopback.  In a: curl --socks5 through `xray socks`, a
    static binary speaking SOCKS5 itself, curl through `xray forward`,
    and 200 connections started at once through `xray forward` to the
    echo server, 200 of 200 exact."""
    if shutil.which("curl") is None or shutil.which("cc") is None:
        pytest.skip("no curl or cc")
    t = topology
    _two_agents(t, pki, tmp_path)
    root = tmp_path / "www"
    root.mkdir()
    body = os.urandom(2 << 20)
    (root / "blob").write_bytes(body)
    t.popen("b", [sys.executable, "-m", "http.server", "8000", "--bind", "127.0.0.1",
                  "--directory", str(root)])
    echo = tmp_path / "echo.py"
    echo.write_text(ECHO)
    t.popen("b", [sys.executable, str(echo), "127.0.0.1", "7001"])
    envb = _env(t, pki, tmp_path, "b", debug=False)
    _l1, web = _xray(t, "b", envb, "listen", "8080", "--to", "127.0.0.1:8000")
    _l2, ech = _xray(t, "b", envb, "listen", "8081", "--to", "127.0.0.1:7001")
    web_o = re.search(r"official (\S+)", web.wait(r"fully bound: official")[1]).group(1)
    echo_o = re.search(r"official (\S+)", ech.wait(r"fully bound: official")[1]).group(1)
    _wait(lambda: _port_open(t, "b", "127.0.0.1", 8000), 20, "http.server")

    enva = _env(t, pki, tmp_path, "a", debug=False)
    _s, socks = _xray(t, "a", enva, "socks")
    socks.wait(r"listening on 127.0.0.1:1080")
    r = t.run("a", ["curl", "-sS", "--max-time", "60", "--socks5", "127.0.0.1:1080",
                    "http://%s/blob" % web_o], timeout=90, text=False, errors=None)
    assert r.returncode == 0 and r.stdout == body, r.stderr
    socks.wait(r"connected to %s \(relayed through the agents\)" % re.escape(web_o))

    exe = tmp_path / "socks_static"
    r = subprocess.run(["cc", "-static", "-O1", "-o", str(exe), str(xf.REPO / "t" / "socks_static.c")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "not a dynamic executable" in subprocess.run(["ldd", str(exe)], capture_output=True,
                                                        text=True).stdout + \
        subprocess.run(["ldd", str(exe)], capture_output=True, text=True).stderr
    host, port = _split(web_o)
    r = t.run("a", [str(exe), "127.0.0.1", "1080", host, port],
              input=b"GET /blob HTTP/1.0\r\n\r\n", timeout=90, text=False, errors=None)
    assert r.returncode == 0 and r.stdout.endswith(body), r.stderr

    _f, fwd = _xray(t, "a", enva, "forward", "9000", web_o)
    fwd.wait(r"listening on 9000")
    for _ in range(3):
        r = t.run("a", ["curl", "-sS", "--max-time", "60", "http://127.0.0.1:9000/blob"],
                  timeout=90, text=False, errors=None)
        assert r.returncode == 0 and r.stdout == body, r.stderr

    _f2, fwd2 = _xray(t, "a", enva, "forward", "9001", echo_o, "--max", "400")
    fwd2.wait(r"listening on 9001")
    burst = tmp_path / "burst.py"
    burst.write_text(BURST)
    r = t.run("a", [sys.executable, str(burst), "127.0.0.1", "9001", "200"], timeout=200)
    assert "burst 200 of 200" in r.stdout, (r.stdout + r.stderr[-1000:] + "".join(fwd2.lines[-30:])
                                            + "".join(ech.lines[-30:]))


CONNECTS = r'''
import subprocess, sys, time
xray, official, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
procs = []
for i in range(n):
    procs.append(subprocess.Popen([xray, "connect", official, "--timeout", "40000"],
                                  stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE))
ok = 0
for i, p in enumerate(procs):
    try:
        out, err = p.communicate(b"connect %d\n" % i, timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    if out == b"connect %d\n" % i:
        ok += 1
    else:
        sys.stderr.write("connect %d: rc %s %r\n" % (i, p.returncode, err[-300:]))
print("connects %d of %d" % (ok, n), flush=True)
'''


@pytest.mark.timeout(300)
@pytest.mark.parametrize("peer", ["running", "stopped"])
def test_200_xray_connects_at_once_to_xray_listen(topology, pki, tmp_path, peer):
    """The burst the tools used to collapse under: 200 `xray connect`
    processes started at the same moment towards one `xray listen --exec
    cat`; 200 of 200 get their line back.  "stopped": agent B is frozen
    (SIGSTOP) while the burst arrives (up to 8 s), so agent A's requests
    wait for the one session to B and leave together once B resumes: more
    than the session's buffer holds, paced by B's reading, none refused."""
    t = topology
    # Agent A's links dialed to the frozen B wait for its TLS beyond the
    # freeze: 200 full handshakes (no session to resume yet) when B wakes;
    # the relay points on both sides live twice that long.
    slow = "  handshake_timeout: 30s\n" if peer == "stopped" else ""
    confs = _two_agents(t, pki, tmp_path, a_extra=slow, b_extra=slow)
    envb = _env(t, pki, tmp_path, "b", debug=False)
    _l, lines = _xray(t, "b", envb, "listen", "8080", "--exec", "cat")
    official = re.search(r"official (\S+)", lines.wait(r"fully bound: official")[1]).group(1)
    script = tmp_path / "connects.py"
    script.write_text(CONNECTS)
    frozen = []
    if peer == "stopped":
        frozen = [pid for pid in netns._netns_pids(t.ns("natb"))
                  if "xrayd" in open("/proc/%d/cmdline" % pid).read()]
        assert frozen
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
    try:
        p = t.popen("a", [sys.executable, str(script), str(th.XRAY), official, "200"],
                    env=_env(t, pki, tmp_path, "a", debug=False), stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
        if frozen:
            # At most 8 s frozen: the clients wait 40 s for their
            # connections (--timeout), agent A 30 s for its handshakes with
            # B, which B does all at once when it wakes: 200 full ones.
            # A fast machine has 150 or more waiting by then (the old
            # buffer held about 145), a slow one (a sanitizer build) fewer.
            deadline = time.monotonic() + 8
            while (time.monotonic() < deadline and
                   _status(t, "nata", confs["a"])["counters"]["connects"] < 200):
                time.sleep(0.1)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    out, err = p.communicate(timeout=280)
    logs = "".join("\n--- agent %s:\n" % k + "".join(
        (confs[k] / "error.log").read_text().splitlines(True)[-15:]) for k in ("a", "b"))
    assert "connects 200 of 200" in out, out + err[-2000:] + logs


UDP = r'''
import socket, sys, time
host, port, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(15)

def exchange(sock, tag, n, connected=False):
    for i in range(n):
        msg = b"%s %d" % (tag, i)
        if connected:
            sock.send(msg)
            data, src = sock.recv(65536), (host, port)
        else:
            sock.sendto(msg, (host, port))
            data, src = sock.recvfrom(65536)
        assert data == msg, (data, msg)
        assert src == (host, port), src

exchange(s, b"first", 20)
print("first ok", flush=True)
time.sleep(pause)  # the mapping idles out
exchange(s, b"again", 20)
print("again ok", flush=True)
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(15)
c.connect((host, port))
assert c.getpeername() == (host, port), c.getpeername()
exchange(c, b"connected", 20, connected=True)
print("connected ok", flush=True)
'''


@pytest.mark.timeout(240)
def test_udp_through_the_preload_maps_expires_and_maps_again(topology, pki, tmp_path):
    """UDP across the firewalls under the preload (CODO §4.3's mapping
    table): an unmodified Python client in a exchanges datagrams with
    `xray listen --udp --exec cat` in b through its official address; the
    answers come from that address; the mapping idles out (XRAY_UDP_IDLE
    1 s), and the next datagram makes a new one; a connected socket works
    too, and getpeername says the official address."""
    t = topology
    _two_agents(t, pki, tmp_path)
    _l, lines = _xray(t, "b", _env(t, pki, tmp_path, "b", debug=False), "listen", "9000", "--udp",
                      "--exec", "cat")
    official = re.search(r"official (\S+)", lines.wait(r"fully bound: official")[1]).group(1)
    host, port = _split(official)
    script = tmp_path / "udp.py"
    script.write_text(UDP)
    env = dict(_preloaded(_env(t, pki, tmp_path, "a")), XRAY_UDP_IDLE="1000")
    r = t.run("a", [sys.executable, str(script), host, port, "2.5"], env=env, timeout=120)
    assert r.returncode == 0 and "connected ok" in r.stdout, r.stdout + r.stderr
    log = "".join(p.read_text() for p in (tmp_path / "home-a" / "run" / "xray").glob("*.log"))
    assert len(re.findall(r"udp %s: mapped at 127\.0\.0\.1:\d+ \(until idle\)" % re.escape(official),
                          log)) == 2, log
    assert re.search(r"udp %s: mapping at 127\.0\.0\.1:\d+ ended: idle" % re.escape(official),
                     log), log
    assert "while the socket is connected" in log, log


@pytest.mark.timeout(240)
def test_ssh_to_sshd_through_the_preload(topology, pki, tmp_path):
    """OpenSSH, unmodified: sshd in b under the preload is bound through
    agent B (its per-connection re-exec inherits the relayed socket), ssh
    in a under the preload logs in with a key at the official address and
    4 MiB go through `cat` and back byte-exact."""
    sshd, ssh = "/usr/sbin/sshd", shutil.which("ssh")
    if not os.path.exists(sshd) or ssh is None or shutil.which("ssh-keygen") is None:
        pytest.skip("no OpenSSH")
    t = topology
    _two_agents(t, pki, tmp_path)
    d = tmp_path / "ssh"
    d.mkdir()
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True, timeout=30)
    (d / "authorized_keys").write_text((d / "user.pub").read_text())
    (d / "sshd_config").write_text("""Port 8022
ListenAddress %s
HostKey %s
PidFile %s
AuthorizedKeysFile %s
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin yes
""" % (t.addr("b"), d / "host", d / "sshd.pid", d / "authorized_keys"))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation directory
    server = t.popen("b", [sshd, "-D", "-e", "-f", str(d / "sshd_config")],
                     env=_preloaded(_env(t, pki, tmp_path, "b")), stderr=subprocess.PIPE, text=True)
    official = _official(_Lines(server))
    host, port = _split(official)
    data = tmp_path / "data"
    data.write_bytes(os.urandom(4 << 20))
    with open(data, "rb") as f:
        r = t.run("a", [ssh, "-F", "/dev/null", "-i", str(d / "user"), "-p", port,
                        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", "root@" + host, "cat"],
                  stdin=f, timeout=120, text=False, errors=None,
                  env=_preloaded(_env(t, pki, tmp_path, "a", debug=False)))
    assert r.returncode == 0, r.stderr
    assert r.stdout == data.read_bytes(), "%d of %d bytes" % (len(r.stdout), 4 << 20)
    server.terminate()
    server.wait(timeout=20)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("topology", [{"b2": True}], indirect=True)
def test_same_network_goes_direct_and_is_remembered(topology, pki, tmp_path):
    """Inside network B, curl under the preload on b2 fetches from the
    http.server of b by its official address: agent B answers direct (no
    relay), and the library remembers the answer, so the next connects ask
    nobody (one decision line for three fetches)."""
    if shutil.which("curl") is None:
        pytest.skip("no curl")
    t = topology
    _two_agents(t, pki, tmp_path)
    root = tmp_path / "www"
    root.mkdir()
    (root / "f").write_bytes(b"same network\n")
    _server, _lines, official = _http_server_in_b(t, pki, tmp_path, root)
    env = _preloaded(_env(t, pki, tmp_path, "b2", cert="relay-a"))
    script = "; ".join(["curl -sS --max-time 30 http://%s/f" % official] * 3)
    r = t.run("b2", ["sh", "-c", script], env=env, timeout=120)
    assert r.returncode == 0 and r.stdout == "same network\n" * 3, r.stdout + r.stderr
    assert r.stderr.count("connect %s: directly to" % official) == 3, r.stderr  # one per process


SOCKS_UDP = r'''
import socket, struct, sys
proxy, host, port = ("127.0.0.1", 1080), sys.argv[1], int(sys.argv[2])
t = socket.create_connection(proxy, 10)
t.sendall(b"\x05\x01\x00")
assert t.recv(2) == b"\x05\x00"
t.sendall(b"\x05\x03\x00\x01" + bytes(4) + bytes(2))  # UDP ASSOCIATE, from anywhere
r = t.recv(10)
assert r[:2] == b"\x05\x00" and r[3] == 1, r
relay = (socket.inet_ntoa(r[4:8]), struct.unpack(">H", r[8:10])[0])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(15)
head = b"\x00\x00\x00\x01" + socket.inet_aton(host) + struct.pack(">H", port)
for i in range(20):
    msg = b"socks datagram %d" % i
    u.sendto(head + msg, relay)
    data, src = u.recvfrom(65536)
    assert src == relay, src
    assert data == head + msg, data
print("socks udp ok", flush=True)
'''


@pytest.mark.timeout(240)
def test_socks_udp_associate_across_the_firewalls(topology, pki, tmp_path):
    """RFC 1928 UDP ASSOCIATE through `xray socks` in a: datagrams with
    the SOCKS header to the official address of `xray listen --udp --exec
    cat` in b come back with the same header (from that address)."""
    t = topology
    _two_agents(t, pki, tmp_path)
    _l, lines = _xray(t, "b", _env(t, pki, tmp_path, "b", debug=False), "listen", "9000", "--udp",
                      "--exec", "cat")
    official = re.search(r"official (\S+)", lines.wait(r"fully bound: official")[1]).group(1)
    _s, socks = _xray(t, "a", _env(t, pki, tmp_path, "a", debug=False), "socks")
    socks.wait(r"listening on 127.0.0.1:1080")
    script = tmp_path / "socks_udp.py"
    script.write_text(SOCKS_UDP)
    host, port = _split(official)
    r = t.run("a", [sys.executable, str(script), host, port], timeout=90)
    assert r.returncode == 0 and "socks udp ok" in r.stdout, r.stdout + r.stderr
    socks.wait(r"udp to %s \(relayed through the agents\)" % re.escape(official))
    socks.wait(r"udp associate ended")


UDP_SERVER = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("official %s:%d" % s.getsockname(), flush=True)
while True:
    data, peer = s.recvfrom(65536)
    s.sendto(b"%s:%d " % (peer[0].encode(), peer[1]) + data, peer)
'''

UDP_CLIENT = r'''
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(15)
peers = set()
for i in range(n):
    msg = b"datagram %d" % i
    s.sendto(msg, (host, port))
    data, src = s.recvfrom(65536)
    assert src == (host, port), src
    who, back = data.split(b" ", 1)
    assert back == msg, data
    peers.add(who)
print("udp server ok, peer %s" % b",".join(sorted(peers)).decode(), flush=True)
'''


@pytest.mark.timeout(240)
def test_udp_server_under_the_preload(topology, pki, tmp_path):
    """An unmodified Python UDP server in b under the preload: its bind()
    registers it (getsockname says the official address); a preloaded
    client in a reaches it across the firewalls, the server sees the
    client's address (as the agents report it) and its answers go back
    through the association."""
    t = topology
    _two_agents(t, pki, tmp_path)
    srv = tmp_path / "udp_server.py"
    srv.write_text(UDP_SERVER)
    cli = tmp_path / "udp_client.py"
    cli.write_text(UDP_CLIENT)
    server = t.popen("b", [sys.executable, str(srv), t.addr("b"), "9001"],
                     env=_preloaded(_env(t, pki, tmp_path, "b")), stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    out = _Lines(server, "stdout")
    _i, line = out.wait(r"official 198\.19\.0\.2:\d+", timeout=30)
    host, port = _split(line.split()[1])
    r = t.run("a", [sys.executable, str(cli), host, port, "20"],
              env=_preloaded(_env(t, pki, tmp_path, "a", debug=False)), timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"udp server ok, peer %s:\d+$" % re.escape(t.addr("a")), r.stdout.strip()), \
        r.stdout
    server.terminate()
    server.wait(timeout=20)


@pytest.mark.timeout(120)
def test_no_client_configuration_says_so_and_connects_directly(topology, tmp_path):
    """LD_PRELOAD with no agent or certificate configured: the helper
    refuses to start (its log says what is missing), the program gets one
    line on stderr saying so, and its connections go directly, without a
    wait per connect."""
    t = topology
    home = tmp_path / "nobody"
    home.mkdir()
    run = tempfile.mkdtemp(prefix="xr-run-")
    _RUNDIRS.append(run)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRAY_")}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=run, XRAY_HELPER_BIN=str(th.XRAY),
               LD_PRELOAD=str(PRELOAD))
    nata = t.listen("nata", t.addr("nata"), 9000)  # answers with the peer's address
    start = time.monotonic()
    script = "; ".join(["nc -w 5 %s 9000" % t.addr("nata")] * 3)
    r = t.run("a", ["sh", "-c", script], env=env, timeout=60)
    took = time.monotonic() - start
    assert r.stdout.split() == [t.addr("a")] * 3, r.stdout + r.stderr
    assert r.stderr.count("did not start") == 3, r.stderr  # once per process
    assert took < 10, took
    log = "".join(p.read_text() for p in Path(run, "xray").glob("*.log"))
    assert "no agent: give --agent, set $XRAY_AGENT" in log, log
    nata.kill()
