"""Transparent proxies (thesis ch. 7) in a real topology: the client host a,
the router nata whose nftables REDIRECT sends a's connections to ports 80
and 5000 into xrayd, and the server host pub (198.19.0.254) with an HTTP
origin on 80 and a TCP echo/sink/source server on 5000 (t/proxy_peers.py).
nata's firewall forwards nothing from a: every byte that reaches pub went
through xrayd.

HTTP: curl and Python clients with keep-alive and pipelining, chunked
bodies both ways, Via and hop-by-hop headers, refusals with error pages in
their turn, malformed requests refused before anything reaches the origin.
Continuity: 50 concurrent transfers (circuit and HTTP, up and down) keep
going, byte-exact, through three kill -9 of workers, through reloads, and
through a binary upgrade."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import netns
import xrayd_fixture as xf

topology = netns.topology

_why = netns.unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))

HERE = Path(__file__).resolve().parent
PEERS = str(HERE / "proxy_peers.py")
ORIGIN = "198.19.0.254"
BIG_MB = int(os.environ.get("XRAYD_TEST_PROXY_MB", "50"))

REDIRECT = """
table ip xrproxy {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "lan" tcp dport { 80, 8081 } redirect to :3128
        iifname "lan" tcp dport 5000 redirect to :3129
    }
}
"""


def _wait(pred, timeout, what):
    return xf.wait_until(pred, timeout, what=what)


def _serving(t, role, host, port):
    """Wait until a server of ours listens at host:port in role."""
    code = ("import socket, sys\n"
            "try:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()\n"
            "except OSError:\n sys.exit(1)")
    _wait(lambda: t.run(role, [sys.executable, "-c", code, host, str(port)]).returncode == 0,
          20, "a server at %s port %d" % (host, port))


class Rig:
    """xrayd on nata as the REDIRECT target, the servers on pub."""

    def __init__(self, t, tmp, http_extra="", workers=2, tcp_extra="", web_filters=""):
        self.t, self.d = t, tmp
        self.state = Path("/dev/shm") / ("xrayd-test-" + tmp.name)
        self.state.mkdir(exist_ok=True)
        self.conf = tmp / "xrayd.yaml"
        self.origin_log = tmp / "origin.log"
        self.origin_log.write_text("")
        self.web_filters = web_filters
        self.write_conf(http_extra, workers, tcp_extra)
        r = t.run("nata", ["/usr/sbin/nft", "-f", "-"], input=REDIRECT)
        assert r.returncode == 0, r.stderr
        t.popen("pub", [sys.executable, PEERS, "origin", ORIGIN, "80", str(self.origin_log)])
        t.popen("pub", [sys.executable, PEERS, "tcp", ORIGIN, "5000"])
        _serving(t, "pub", ORIGIN, 5000)
        self.master = None

    def write_conf(self, http_extra="", workers=2, tcp_extra=""):
        self.conf.write_text("""
workers: %(w)d
daemon: off
pid: %(d)s/xrayd.pid
error_log: %(d)s/error.log
log_level: info
state_dir: %(s)s
admin_socket: %(d)s/admin.sock
proxy:
  - name: web
    listen: 0.0.0.0:3128
    mode: http
    http:
      methods: [GET, HEAD, POST, PUT]
      hosts_deny: [forbidden.example, "*.blocked.example"]
      deny_headers: [X-Evil]
%(extra)s    filters:
      - log: {path: %(d)s/access.log}
%(web_filters)s  - name: tcp
    listen: 0.0.0.0:3129
    mode: circuit
%(tcp)s""" % {"d": self.d, "s": self.state, "w": workers, "extra": http_extra, "tcp": tcp_extra,
              "web_filters": self.web_filters})

    def start(self, binary=None):
        # stderr is where a sanitizer build reports (checked at stop)
        self.stderr = open(self.d / "stderr.log", "a")
        self.master = self.t.popen("nata", [str(binary or xf.XRAYD_BIN), "-c", str(self.conf)],
                                   stderr=self.stderr)
        _wait(lambda: self.log().count("worker process started") >= 2, 20, "xrayd's workers")
        _wait(lambda: self.t.run("a", ["/usr/bin/curl", "-f", "-s", "-o", "/dev/null", "-m", "2",
                                       "http://%s/headers" % ORIGIN]).returncode == 0,
              20, "the origin through the proxy")

    def log(self):
        p = self.d / "error.log"
        return p.read_text() if p.exists() else ""

    def access(self):
        p = self.d / "access.log"
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

    def origin_lines(self):
        return self.origin_log.read_text().splitlines()

    def pid(self):
        return int((self.d / "xrayd.pid").read_text())

    def workers(self):
        """Live worker pids, with how many descriptors each holds."""
        pids = set(int(p) for p in re.findall(r"\] (\d+): worker process started", self.log()))
        out = {}
        for p in pids:
            try:
                out[p] = len(os.listdir("/proc/%d/fd" % p))
            except OSError:
                pass
        return out

    def run(self, argv, **kw):
        return self.t.run("a", argv, **kw)

    def py(self, code, *args, timeout=60):
        r = self.t.run("a", [sys.executable, "-c", code, *args], timeout=timeout)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def stop(self):
        if self.master and self.master.poll() is None:
            self.master.send_signal(signal.SIGTERM)
            try:
                self.master.wait(20)
            except subprocess.TimeoutExpired:
                self.master.kill()
        # a master an upgrade started is nobody's child here: its pid file
        try:
            pid = self.pid()
            if open("/proc/%d/comm" % pid).read().startswith("xrayd"):
                os.kill(pid, signal.SIGTERM)
                _wait(lambda: not os.path.exists("/proc/%d" % pid), 20, "the upgraded master")
        except (OSError, ValueError, AssertionError):
            pass
        subprocess.run(["rm", "-rf", str(self.state)], timeout=20)

    def sanitizer_reports(self):
        p = self.d / "stderr.log"
        text = p.read_text(errors="replace") if p.exists() else ""
        return re.findall(r"ERROR: (?:Address|Leak)Sanitizer.*|runtime error:.*", text)

    def no_alerts(self, allow=()):
        bad = [line for line in self.log().splitlines()
               if re.search(r"\[(alert|crit|emerg)\]", line) and
               not any(re.search(a, line) for a in allow)]
        assert not bad, "\n".join(bad)


@pytest.fixture
def rig(topology, tmp_path):
    r = Rig(topology, tmp_path)
    yield r
    r.stop()
    assert not r.sanitizer_reports(), r.sanitizer_reports()


def _curl(rig, *args):
    r = rig.run(["/usr/bin/curl", "-s", "-S", "-m", "20", *args], timeout=30)
    return r


# ---- HTTP ---------------------------------------------------------------------

RAW = r'''
import socket, sys
s = socket.create_connection((sys.argv[1], 80), 10)
s.sendall(sys.argv[2].encode("latin-1").decode("unicode_escape").encode("latin-1"))
if len(sys.argv) > 3:
    s.shutdown(socket.SHUT_WR)
s.settimeout(10)
out = b""
while True:
    try:
        b = s.recv(65536)
    except OSError as e:
        print("ERROR", e); break
    if not b: break
    out += b
sys.stdout.write(out.decode("latin-1"))
'''


@pytest.mark.timeout(120)
def test_http_through_redirect(rig):
    """curl and Python clients reach the origin through the REDIRECT rule:
    bodies exact (chunked and counted, both ways), keep-alive on one
    connection, pipelined requests answered in order, Via added both ways,
    hop-by-hop headers gone, one access record per request."""
    rig.start()
    r = _curl(rig, "-D", "-", "-o", "/dev/null", "http://%s/blob?n=200000&seed=7" % ORIGIN)
    assert r.returncode == 0 and r.stdout.startswith("HTTP/1.1 200"), r.stderr
    assert re.search(r"(?im)^via: 1\.[01] xrayd\r?$", r.stdout), r.stdout
    code = r'''
import http.client, json, sys, hashlib
sys.path.insert(0, sys.argv[2])
import proxy_peers as pp
c = http.client.HTTPConnection(sys.argv[1], 80, timeout=20)
out = {}
for chunked in ("0", "1"):
    c.request("GET", "/blob?n=300000&seed=3&chunked=" + chunked)
    r = c.getresponse(); b = r.read()
    out["down" + chunked] = r.status == 200 and hashlib.sha256(b).hexdigest() == pp.stream_sha(3, 300000)
body = b"".join(pp.stream(5, 250000))
c.request("POST", "/sink", body=iter([body[:100000], body[100000:]]), encode_chunked=True)
r = c.getresponse(); out["up_chunked"] = json.loads(r.read())["sha256"] == pp.stream_sha(5, 250000)
c.request("POST", "/sink", body=body)
r = c.getresponse(); out["up_counted"] = json.loads(r.read())["sha256"] == pp.stream_sha(5, 250000)
c.request("HEAD", "/anything"); r = c.getresponse(); r.read(); out["head"] = r.status
c.request("GET", "/headers", headers={"Connection": "keep-alive, X-Secret", "X-Secret": "1",
          "Keep-Alive": "timeout=5", "Proxy-Authorization": "Basic eA==", "X-Kept": "yes"})
r = c.getresponse(); out["headers"] = json.loads(r.read()); out["via"] = r.getheader("Via")
print(json.dumps(out))
'''
    got = json.loads(rig.py(code, ORIGIN, str(HERE)))
    assert got["down0"] and got["down1"] and got["up_chunked"] and got["up_counted"], got
    assert got["head"] == 200
    names = {k.lower(): v for k, v in got["headers"]}
    assert names.get("x-kept") == "yes" and "via" in names, names
    for gone in ("x-secret", "keep-alive", "proxy-authorization", "connection"):
        assert gone not in names, (gone, names)
    assert "xrayd" in got["via"]
    # all of those came over one client connection, so one origin connection
    # (the origin's log: the rig's readiness probe, curl, then these six)
    ports = [line.split()[0] for line in rig.origin_lines()]
    assert len(ports) == 8 and len(set(ports[2:])) == 1, rig.origin_lines()

    # pipelining: three requests in one write, three responses in order
    reqs = "".join("GET /blob?n=%d&seed=1 HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n" % (n, ORIGIN)
                   for n in (10, 20, 30)) + \
        "GET /headers HTTP/1.1\\r\\nHost: %s\\r\\nConnection: close\\r\\n\\r\\n" % ORIGIN
    out = rig.py(RAW, ORIGIN, reqs)
    lens = re.findall(r"Content-Length: (\d+)", out)
    assert out.count("HTTP/1.1 200") == 4 and lens[:3] == ["10", "20", "30"], out[:600]
    recs = [a for a in rig.access() if a.get("http")]
    assert len(recs) >= 12, recs
    assert all(a["http"]["status"] == 200 for a in recs), recs
    assert recs[1]["http"]["uri"] == "/blob?n=200000&seed=7" and recs[1]["listener"] == "web"
    rig.no_alerts()


@pytest.mark.timeout(120)
def test_http_refusals_get_error_pages(rig):
    """A method, a host and a header the rules refuse get an HTTP error
    page (405, 403, 403), not a reset; pipelined behind an allowed request,
    the refusal comes after that request's response and then the
    connection ends.  None of them reaches the origin."""
    rig.start()
    r = _curl(rig, "-X", "DELETE", "-D", "-", "http://%s/x" % ORIGIN)
    assert r.stdout.startswith("HTTP/1.1 405"), r.stdout
    assert "method DELETE is not allowed" in r.stdout
    r = _curl(rig, "-D", "-", "-H", "Host: forbidden.example", "http://%s/x" % ORIGIN)
    assert r.stdout.startswith("HTTP/1.1 403") and "forbidden.example is denied" in r.stdout
    r = _curl(rig, "-D", "-", "-H", "Host: a.b.blocked.example:8080", "http://%s/x" % ORIGIN)
    assert r.stdout.startswith("HTTP/1.1 403"), r.stdout
    r = _curl(rig, "-D", "-", "-H", "X-Evil: 1", "http://%s/x" % ORIGIN)
    assert r.stdout.startswith("HTTP/1.1 403") and "X-Evil" in r.stdout
    reqs = ("GET /blob?n=5&seed=1 HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n"
            "DELETE /y HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n"
            "GET /blob?n=6&seed=1 HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n") % (ORIGIN, ORIGIN, ORIGIN)
    out = rig.py(RAW, ORIGIN, reqs)
    first, second = out.find("HTTP/1.1 200"), out.find("HTTP/1.1 405")
    assert 0 <= first < second and out.count("HTTP/1.1") == 2, out
    lines = rig.origin_lines()
    assert not any("DELETE" in line or "/x " in line for line in lines), lines
    assert [line.split(" ", 1)[1] for line in lines][-1] == "GET /blob?n=5&seed=1 HTTP/1.1", lines
    assert "refused with 405: method DELETE is not allowed" in rig.log()
    refused = [a["http"] for a in rig.access() if a.get("http", {}).get("refused")]
    assert sorted(a["status"] for a in refused) == [403, 403, 403, 405, 405], refused
    rig.no_alerts()


@pytest.mark.timeout(120)
def test_http_bad_input_never_reaches_the_origin(rig):
    """Oversized headers (431), a bad chunk size, conflicting
    Content-Length and Transfer-Encoding, two different Content-Lengths,
    a request line that is not HTTP (400): each answered with its status
    and logged, and the origin sees none of them; the proxy keeps serving."""
    rig.start()
    before = rig.origin_lines()
    big = "X-Big: " + "a" * 20000
    cases = [
        ("GET / HTTP/1.1\\r\\nHost: h\\r\\n%s\\r\\n\\r\\n" % big, "431"),
        ("POST /sink HTTP/1.1\\r\\nHost: h\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n"
         "zz\\r\\nhello\\r\\n0\\r\\n\\r\\n", "400"),
        ("POST /sink HTTP/1.1\\r\\nHost: h\\r\\nContent-Length: 5\\r\\n"
         "Transfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\nGET /smuggled HTTP/1.1\\r\\n\\r\\n", "400"),
        ("POST /sink HTTP/1.1\\r\\nHost: h\\r\\nContent-Length: 5\\r\\nContent-Length: 6\\r\\n"
         "\\r\\nhello!", "400"),
        ("FOO\\x01BAR / SPDY/9\\r\\n\\r\\n", "400"),
    ]
    for req, status in cases:
        out = rig.py(RAW, ORIGIN, req)
        assert out.startswith("HTTP/1.1 " + status), (req[:60], out[:300])
    assert rig.origin_lines() == before, rig.origin_lines()
    log = rig.log()
    assert "refused with 431: the request head is larger than 16384 bytes" in log, log
    assert re.search(r"refused with 400: invalid request body: invalid character in chunk size", log)
    assert "refused with 400: invalid request head" in log
    r = _curl(rig, "-o", "/dev/null", "-w", "%{http_code}", "http://%s/headers" % ORIGIN)
    assert r.stdout == "200"
    # nothing listens at the destination: 502, not a reset
    r = _curl(rig, "-D", "-", "-o", "/dev/null", "http://%s:8081/" % ORIGIN)
    assert r.stdout.startswith("HTTP/1.1 502"), (r.stdout, r.stderr)
    # straight to the proxy's port, not redirected: closed, not looped
    out = rig.py("import socket; s = socket.create_connection(('198.18.1.1', 3128), 5)\n"
                 "s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); s.settimeout(5)\n"
                 "try:\n print(repr(s.recv(100)))\nexcept ConnectionResetError:\n print('reset')")
    assert out.strip() in ("b''", "reset"), out
    assert "was not redirected (no original destination), closing" in rig.log()
    rig.no_alerts()


@pytest.mark.timeout(120)
def test_http_access_log_counts_each_response_as_sent(rig):
    """Each request's access record counts what the client really got for
    that request (the response's head as rewritten, plus its body, or the
    proxy's own error page) and what it sent, not the connection's running
    totals when the response was produced.  Three requests on one
    keep-alive connection (a 3,854-byte body, a 404, a 10-byte body), and
    a refusal; curl says what it received and sent."""
    rig.start()
    urls = ["http://%s/blob?n=3854&seed=4" % ORIGIN, "http://%s/nope" % ORIGIN]
    w = "%{http_code} %{size_header} %{size_download} %{size_request} %{num_connects}\\n"
    r = _curl(rig, "-w", w, "-o", "/dev/null", urls[0], "-o", "/dev/null", urls[1],
              "-o", "/dev/null", "http://%s/blob?n=10&seed=1" % ORIGIN)
    lines = [[int(v) for v in line.split()] for line in r.stdout.split("\n") if line]
    assert r.returncode == 0 and [l[0] for l in lines] == [200, 404, 200], (r.stdout, r.stderr)
    assert [l[4] for l in lines] == [1, 0, 0], "want one keep-alive connection: %s" % r.stdout
    r = _curl(rig, "-w", w, "-o", "/dev/null", "-X", "DELETE", "http://%s/x" % ORIGIN)
    lines.append([int(v) for v in r.stdout.split()])
    assert lines[3][0] == 405, r.stdout
    uris = ["/blob?n=3854&seed=4", "/nope", "/blob?n=10&seed=1", "/x"]

    def records():
        by_uri = {a["http"]["uri"]: a for a in rig.access() if a.get("http")}
        return [by_uri.get(u) for u in uris] if all(u in by_uri for u in uris) else None
    recs = _wait(records, 10, "the four access records")
    for (code, head, body, req, _), rec in zip(lines, recs):
        assert rec["http"]["status"] == code, rec
        # what the client got: the head it read and the body
        assert rec["sent_down"] == head + body, (head, body, rec)
        # what it sent, read by the proxy
        assert rec["bytes_up"] == req == rec["http"]["request_bytes"], (req, rec)
    assert lines[0][2] == 3854
    for rec in recs[:3]:
        # forwarded: its (rewritten) head went upstream, and the response came from there
        assert rec["sent_up"] > 0 and rec["bytes_down"] == rec["http"]["response_bytes"] > 0, rec
    assert recs[3]["http"]["refused"] and recs[3]["sent_up"] == 0 == recs[3]["bytes_down"], recs[3]
    rig.no_alerts()


# ---- continuity -------------------------------------------------------------------

def _load_specs(n_mb, count=50, rate=None):
    """Half circuit, half HTTP; half up, half down; paced so the transfers
    last about 6 s."""
    n = n_mb << 20
    rate = rate or max(1 << 20, n // 6)
    kinds = ["cup", "cdown", "hup", "hdown"]
    return [{"kind": kinds[i % 4], "port": 5000 if kinds[i % 4][0] == "c" else 80,
             "n": n, "rate": rate} for i in range(count)]


def _start_load(rig, specs):
    return rig.t.popen("a", [sys.executable, PEERS, "load", ORIGIN, json.dumps(specs)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish_load(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    assert out.strip(), err
    res = json.loads(out.strip().splitlines()[-1])
    bad = [r for r in res if not r["ok"]]
    assert not bad, bad
    return res


# A data filter that passes everything the load sends: the HTTP block's
# connections then run the filters and the HTTP stage chained.
PASS_FILTER = """      - signature: {patterns: ["NEVER-IN-THE-LOAD-7f3a"]}
"""


@pytest.fixture
def passfilter_rig(topology, tmp_path):
    r = Rig(topology, tmp_path, web_filters=PASS_FILTER)
    yield r
    r.stop()
    assert not r.sanitizer_reports(), r.sanitizer_reports()


@pytest.mark.timeout(400)
def test_connections_survive_kill_9(passfilter_rig):
    """50 concurrent transfers of BIG_MB each (circuit and HTTP, uploads and
    downloads; the HTTP block with a pass-through data filter, so its
    connections run the filters, then the HTTP stage); the worker holding
    most of them is killed with SIGKILL three times while they run: every
    transfer completes with its SHA-256, none is reset, and the
    replacements say how many connections they took over, of both
    blocks."""
    rig = passfilter_rig
    rig.start()
    proc = _start_load(rig, _load_specs(BIG_MB))
    _wait(lambda: sum(rig.workers().values()) > 120, 30, "the transfers to start")
    killed = []
    for k in range(3):
        time.sleep(1.0)
        w = rig.workers()
        victim = max(w, key=w.get)
        killed.append((victim, w[victim]))
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: ("taking over worker %d" % victim) in rig.log(), 10, "a replacement")
    _finish_load(proc)
    log = rig.log()
    took = [int(n) for n in re.findall(r"took over (\d+) connection\(s\)", log)]
    assert len(took) == 3 and sum(took) >= 30, (took, killed)
    assert "cannot resume" not in log and "resume failed" not in log, log
    st = _status(rig)
    assert st["resumed"] == sum(took), (st, took)
    blocks = {b["name"]: b for b in st["blocks"]}
    assert blocks["web"]["resumed"] + blocks["tcp"]["resumed"] == sum(took), st
    assert blocks["web"]["resumed"] > 0, st
    assert blocks["tcp"]["bytes_up"] >= 12 * (BIG_MB << 20), st
    rig.no_alerts(allow=[r"exited on signal 9"])


SIGNATURE = """    filters:
      - signature: {patterns: ["FORBIDDEN-PAYLOAD"]}
"""

ECHO = r'''
import socket, sys, time
s = socket.create_connection((sys.argv[1], 5000), 10)
s.settimeout(10)
s.sendall(b"E")
for i, part in enumerate(sys.argv[2:]):
    if i:
        time.sleep(0.3)
    try:
        s.sendall(part.encode())
    except OSError as e:
        print("ERROR", e); break
try:
    s.shutdown(socket.SHUT_WR)
except OSError as e:  # a reset may have come first
    print("ERROR", e)
out = b""
while True:
    try:
        b = s.recv(65536)
    except OSError as e:
        print("ERROR", e); break
    if not b: break
    out += b
print("GOT", out.decode("latin-1"))
'''


@pytest.fixture
def filtered_rig(topology, tmp_path):
    r = Rig(topology, tmp_path, tcp_extra=SIGNATURE)
    yield r
    r.stop()
    assert not r.sanitizer_reports(), r.sanitizer_reports()


@pytest.mark.timeout(120)
def test_signature_stops_a_redirected_circuit(filtered_rig):
    """A signature filter on a REDIRECTed circuit proxy stops the payload
    before it reaches the origin, also when the pattern is split over two
    writes, and logs the match; the client sees a reset, not a clean end;
    clean bytes pass both ways."""
    rig = filtered_rig
    rig.start()
    assert "GOT clean bytes" in rig.py(ECHO, ORIGIN, "clean bytes")
    out = rig.py(ECHO, ORIGIN, "xx FORBIDDEN-PAYLOAD yy")
    assert "FORBIDDEN" not in out, out
    assert "ERROR" in out and "reset" in out, out  # a cut, not a clean end
    out = rig.py(ECHO, ORIGIN, "xx FORBID", "DEN-PAYLOAD yy")
    assert "FORBIDDEN" not in out and "DEN-PAYLOAD" not in out, out
    _wait(lambda: rig.log().count('signature "FORBIDDEN-PAYLOAD" matched in the client-to-upstream') == 2, 10,
          "both matches logged")
    assert "GOT after" in rig.py(ECHO, ORIGIN, "after")
    rig.no_alerts()


@pytest.mark.timeout(120)
def test_signature_answers_on_a_redirected_circuit(topology, tmp_path):
    """signature with answer on a REDIRECTed circuit: the client gets the
    echo of what passed, then the answer, then a clean end (no reset);
    the origin never sees the pattern."""
    rig = Rig(topology, tmp_path, tcp_extra="""    filters:
      - signature: {patterns: ["FORBIDDEN-PAYLOAD"], answer: "DENIED\\n"}
""")
    try:
        rig.start()
        out = rig.py(ECHO, ORIGIN, "hello ", "x FORBIDDEN-PAYLOAD y")
        assert out == "GOT hello DENIED\n\n", repr(out)
        _wait(lambda: "bytes back to the client" in rig.log(), 10,
              "the answer logged")
        rig.no_alerts()
    finally:
        rig.stop()
    assert not rig.sanitizer_reports(), rig.sanitizer_reports()


def test_http_proxy_accepts_data_filters(tmp_path):
    """mode: http runs data filters (before its HTTP stage): -t accepts
    them."""
    conf = tmp_path / "x.yaml"
    conf.write_text("""state_dir: %s
proxy:
  - listen: 127.0.0.1:3128
    mode: http
    filters:
      - signature: {patterns: [x]}
""" % tmp_path)
    r = subprocess.run([str(xf.XRAYD_BIN), "-t", "-c", str(conf)], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 0, r.stderr


HTTP_PARTS = r'''
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80), 10)
s.settimeout(10)
for i, part in enumerate(sys.argv[2:]):
    if i:
        time.sleep(0.3)
    try:
        s.sendall(part.encode("latin-1").decode("unicode_escape").encode("latin-1"))
    except OSError as e:
        print("ERROR", e); break
out = b""
while True:
    try:
        b = s.recv(65536)
    except OSError as e:
        print("ERROR", e); break
    if not b: break
    out += b
print("GOT", out.decode("latin-1"))
'''

WEB_SIGNATURE = """      - signature: {patterns: ["FORBIDDEN-PAYLOAD"]}
"""


@pytest.mark.timeout(120)
def test_signature_stops_a_redirected_http_proxy(topology, tmp_path):
    """A signature filter on a REDIRECTed proxy in mode: http sees the
    client's bytes before the HTTP stage parses them: a request carrying
    the pattern (in its target, in a header, split over two writes, in its
    body) never reaches the origin and the client sees a reset; clean
    requests pass, before and after, with their responses exact."""
    rig = Rig(topology, tmp_path, web_filters=WEB_SIGNATURE)
    try:
        rig.start()
        r = _curl(rig, "-o", "/dev/null", "-w", "%{http_code}", "http://%s/headers" % ORIGIN)
        assert r.stdout == "200", (r.stdout, r.stderr)
        req = "GET %s HTTP/1.1\\r\\nHost: " + ORIGIN + "\\r\\n%s\\r\\n"
        cases = [
            [req % ("/target?q=FORBIDDEN-PAYLOAD", "")],
            [req % ("/in-a-header", "X-A: FORBIDDEN-PAYLOAD\\r\\n")],
            [(req % ("/split", "X-A: FORBID"))[:-4], "DEN-PAYLOAD\\r\\n\\r\\n"],
            ["POST /sink-forbidden HTTP/1.1\\r\\nHost: %s\\r\\nContent-Length: 23\\r\\n\\r\\n"
             % ORIGIN, "xx FORBIDDEN-PAYLOAD yy"],
        ]
        for parts in cases:
            out = rig.py(HTTP_PARTS, ORIGIN, *parts)
            assert "HTTP/1.1 200" not in out and "FORBIDDEN" not in out, (parts, out)
            assert "ERROR" in out and "reset" in out, (parts, out)  # a cut, not a clean end
        _wait(lambda: rig.log().count('signature "FORBIDDEN-PAYLOAD" matched in the '
                                      'client-to-upstream') == 4, 10, "every match logged")
        lines = " ".join(rig.origin_lines())
        assert "FORBIDDEN" not in lines and "/in-a-header" not in lines and "/split" not in lines
        # the POST's head may have gone on, its body never did: the origin
        # answered nothing the client saw, and read no whole body
        r = _curl(rig, "-s", "-d", "clean body", "http://%s/sink" % ORIGIN)
        assert '"n": 10' in r.stdout, (r.stdout, r.stderr)
        rig.no_alerts()
    finally:
        rig.stop()
    assert not rig.sanitizer_reports(), rig.sanitizer_reports()


@pytest.mark.timeout(120)
def test_signature_answers_on_a_redirected_http_proxy(topology, tmp_path):
    """signature with answer on a REDIRECTed proxy in mode: http: the
    client gets the answer (here an HTTP 403 of the filter's own) and a
    clean end, and the origin never sees the request."""
    answer = ("HTTP/1.1 403 Forbidden\\r\\nContent-Length: 7\\r\\n"
              "Connection: close\\r\\n\\r\\nDENIED\\n")
    rig = Rig(topology, tmp_path, web_filters="""      - signature: {patterns: ["FORBIDDEN-PAYLOAD"], answer: "%s"}
""" % answer)
    try:
        rig.start()
        req = "GET /answer?FORBIDDEN-PAYLOAD HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n" % ORIGIN
        out = rig.py(HTTP_PARTS, ORIGIN, req)
        # (the helper's output is read as text: its CRs do not survive)
        assert out == "GOT HTTP/1.1 403 Forbidden\nContent-Length: 7\n" \
                      "Connection: close\n\nDENIED\n\n", repr(out)
        _wait(lambda: "bytes back to the client" in rig.log(), 10, "the answer logged")
        assert "/answer" not in " ".join(rig.origin_lines())
        r = _curl(rig, "-o", "/dev/null", "-w", "%{http_code}", "http://%s/headers" % ORIGIN)
        assert r.stdout == "200", (r.stdout, r.stderr)
        rig.no_alerts()
    finally:
        rig.stop()
    assert not rig.sanitizer_reports(), rig.sanitizer_reports()


@pytest.mark.timeout(400)
def test_filtered_circuits_survive_kill_9(filtered_rig):
    """20 concurrent circuit transfers (half up, half down) through a
    signature filter; the busiest worker is killed three times: each
    transfer completes with its SHA-256, and the replacements resumed
    them (the filter stage's committed state in the snapshot)."""
    rig = filtered_rig
    rig.start()
    n = BIG_MB << 20
    specs = [{"kind": "cup" if i % 2 else "cdown", "port": 5000, "n": n,
              "rate": max(1 << 20, n // 6)} for i in range(20)]
    proc = _start_load(rig, specs)
    _wait(lambda: sum(rig.workers().values()) > 50, 30, "the transfers to start")
    for k in range(3):
        time.sleep(1.0)
        w = rig.workers()
        victim = max(w, key=w.get)
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: ("taking over worker %d" % victim) in rig.log(), 10, "a replacement")
    _finish_load(proc)
    log = rig.log()
    took = [int(x) for x in re.findall(r"took over (\d+) connection\(s\)", log)]
    assert len(took) == 3 and sum(took) >= 10, took
    assert "cannot resume" not in log and "resume failed" not in log, log
    rig.no_alerts(allow=[r"exited on signal 9"])


@pytest.mark.timeout(400)
def test_connections_survive_reloads(rig):
    """The same load while the configuration is reloaded five times: old
    workers keep their connections until they finish; all complete."""
    rig.start()
    proc = _start_load(rig, _load_specs(max(1, BIG_MB // 2)))
    _wait(lambda: sum(rig.workers().values()) > 120, 30, "the transfers to start")
    for k in range(5):
        os.kill(rig.pid(), signal.SIGHUP)
        _wait(lambda: rig.log().count("is live") >= k + 1, 20, "reload %d" % (k + 1))
        time.sleep(0.5)
    _finish_load(proc)
    rig.no_alerts()


def _second_binary(tmp, version):
    """xrayd built again from this tree with another version string."""
    src = tmp / "src2"
    top = HERE.parent
    r = subprocess.run(["git", "ls-files", "-z"], cwd=str(top), capture_output=True, timeout=60)
    if r.returncode == 0:
        files = [f.decode() for f in r.stdout.split(b"\0") if f]
    else:  # a copy of the tree without .git (CI's sanitizer build)
        files = [str(p.relative_to(top)) for p in top.rglob("*")
                 if p.is_file() and p.relative_to(top).parts[0] not in ("objs", ".git")]
    for f in files:
        if f:
            dst = src / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes((top / f).read_bytes())
            os.chmod(dst, os.stat(top / f).st_mode & 0o777)
    (src / "VERSION").write_text(version + "\n")
    r = subprocess.run("sh ./configure >/dev/null && make -j2 objs/xrayd >/dev/null",
                       shell=True, cwd=str(src), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return src / "objs" / "xrayd"


def _status(rig):
    r = rig.t.run("nata", [str(HERE.parent / "objs" / "xray"), "status", "--json", "--socket",
                           str(rig.d / "admin.sock")], timeout=20)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.timeout(600)
def test_connections_survive_binary_upgrade(rig):
    """The same load while SIGUSR2 replaces the binary with one of another
    version: the old master hands its listening sockets and every proxied
    connection (sockets and snapshots) to the new one, whose workers take
    them over; every transfer completes byte-exact, and the serving master
    is the new version (its log, its pid file and xray status say so)."""
    new = _second_binary(rig.d, "9.9.9-upgrade")
    exe = rig.d / "xrayd"
    exe.write_bytes(xf.XRAYD_BIN.read_bytes())
    exe.chmod(0o755)
    rig.start(binary=exe)
    old_pid = rig.pid()
    proc = _start_load(rig, _load_specs(max(1, BIG_MB // 2)))
    _wait(lambda: sum(rig.workers().values()) > 120, 30, "the transfers to start")
    os.replace(str(new), str(exe))  # what an operator's package upgrade does
    os.kill(old_pid, signal.SIGUSR2)
    _wait(lambda: "xrayd/9.9.9-upgrade started (binary upgrade from pid %d)" % old_pid
          in rig.log(), 60, "the new master")
    _wait(lambda: rig.pid() != old_pid, 20, "the new pid file")
    _finish_load(proc)
    log = rig.log()
    assert re.search(r"handed \d+ connection", log), log
    st = _status(rig)
    assert st["version"] == "9.9.9-upgrade" and st["upgraded_from"] == old_pid, st
    assert st["resumed"] > 0, st
    _wait(lambda: rig.master.poll() is not None, 60, "the old master to exit")
    # the new master serves new connections too
    r = _curl(rig, "-o", "/dev/null", "-w", "%{http_code}", "http://%s/headers" % ORIGIN)
    assert r.stdout == "200"
    os.kill(rig.pid(), signal.SIGTERM)
    rig.no_alerts()


@pytest.mark.timeout(120)
def test_tproxy_and_ipv6(topology, tmp_path):
    """intercept: tproxy on nata (policy routing, nftables tproxy, an
    IP_TRANSPARENT listener) reaches pub with the original destination; and
    IPv6 REDIRECT in pub's own output hook (the client runs as nobody, the
    proxy's own connections are left alone) reaches [::1] through the
    circuit proxy, IP6T_SO_ORIGINAL_DST giving the destination."""
    t = topology
    # nata bridges its LAN; TPROXY'd packets are not delivered when the
    # bridge hands its frames to netfilter (br_netfilter), so this test
    # turns that off in nata (see html-docs/proxy.html).
    for cmd in (["/usr/sbin/sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"],
                ["/usr/sbin/ip", "rule", "add", "fwmark", "1", "lookup", "100"],
                ["/usr/sbin/ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"]):
        r = t.run("nata", cmd)
        assert r.returncode == 0, r.stderr
    r = t.run("nata", ["/usr/sbin/nft", "-f", "-"], input="""
table ip xrtp {
    chain pre {
        type filter hook prerouting priority mangle; policy accept;
        iifname "lan" tcp dport 6000 tproxy to :3130 meta mark set 1 accept
    }
}
""")
    assert r.returncode == 0, r.stderr
    r = t.run("pub", ["/usr/sbin/nft", "-f", "-"], input="""
table ip6 xrv6 {
    chain out {
        type nat hook output priority -100; policy accept;
        meta skuid 65534 tcp dport 5000 redirect to :3131
    }
}
""")
    assert r.returncode == 0, r.stderr
    state = Path("/dev/shm") / ("xrayd-test-" + tmp_path.name)
    state.mkdir()
    try:
        for role, listen, intercept in (("nata", "0.0.0.0:3130", "tproxy"),
                                        ("pub", "\"[::]:3131\"", "redirect")):
            d = tmp_path / role
            d.mkdir()
            (d / "x.yaml").write_text("""
workers: 1
daemon: off
pid: %(d)s/xrayd.pid
error_log: %(d)s/error.log
state_dir: %(s)s
proxy:
  - name: p
    listen: %(l)s
    intercept: %(i)s
""" % {"d": d, "s": state, "l": listen, "i": intercept})
            t.popen(role, [str(xf.XRAYD_BIN), "-c", str(d / "x.yaml")])
        t.popen("pub", [sys.executable, PEERS, "tcp", ORIGIN, "6000"])
        t.popen("pub", [sys.executable, PEERS, "tcp", "::1", "5000"])
        _serving(t, "pub", ORIGIN, 6000)
        _serving(t, "pub", "::1", 5000)
        for role in ("nata", "pub"):
            _wait(lambda: (tmp_path / role / "error.log").exists() and
                  "worker process started" in (tmp_path / role / "error.log").read_text(),
                  20, "xrayd in " + role)
        spec = json.dumps([{"kind": "cdown", "port": 6000, "n": 3 << 20},
                           {"kind": "cup", "port": 6000, "n": 3 << 20}])
        r = t.run("a", [sys.executable, PEERS, "load", ORIGIN, spec], timeout=60)
        assert all(x["ok"] for x in json.loads(r.stdout)), r.stdout + r.stderr
        spec = json.dumps([{"kind": "cdown", "port": 5000, "n": 2 << 20},
                           {"kind": "cup", "port": 5000, "n": 2 << 20}])
        # nobody may not reach the tree (CI's copy is in a 0700 directory)
        peers = state / "proxy_peers.py"
        peers.write_bytes(Path(PEERS).read_bytes())
        peers.chmod(0o644)
        state.chmod(0o755)
        r = t.run("pub", ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, str(peers), "load", "::1", spec], timeout=60)
        assert r.returncode == 0, r.stderr
        assert all(x["ok"] for x in json.loads(r.stdout)), r.stdout + r.stderr
        assert "client: 198.18.1.2" in (tmp_path / "nata" / "error.log").read_text()
        assert "upstream: [::1]:5000" in (tmp_path / "pub" / "error.log").read_text()
    finally:
        subprocess.run(["rm", "-rf", str(state)], timeout=20)


@pytest.mark.timeout(300)
def test_failed_upgrade_leaves_the_old_binary_serving(rig):
    """A new binary that cannot start (here: one that exits at once) ends
    the upgrade: the old master logs it, takes its pid file back and goes
    on serving, and the transfers running meanwhile complete."""
    exe = rig.d / "xrayd"
    exe.write_bytes(xf.XRAYD_BIN.read_bytes())
    exe.chmod(0o755)
    rig.start(binary=exe)
    pid = rig.pid()
    proc = _start_load(rig, _load_specs(max(1, BIG_MB // 5), count=8))
    broken = rig.d / "broken"
    broken.write_text("#!/bin/sh\necho 'the new binary refuses to start' >&2\nexit 1\n")
    broken.chmod(0o755)
    os.replace(str(broken), str(exe))
    os.kill(pid, signal.SIGUSR2)
    _wait(lambda: "binary upgrade failed" in rig.log(), 20, "the failure")
    _wait(lambda: os.path.exists(rig.d / "xrayd.pid"), 10, "the pid file back")
    assert rig.pid() == pid and rig.master.poll() is None
    _finish_load(proc)
    r = _curl(rig, "-o", "/dev/null", "-w", "%{http_code}", "http://%s/headers" % ORIGIN)
    assert r.stdout == "200"
    assert _status(rig)["pid"] == pid
    rig.no_alerts(allow=[r"binary upgrade failed"])


def test_http_remove_headers_cannot_remove_host(tmp_path):
    """remove_headers naming Host (or the framing headers) would send the
    server another request than the one the rules checked: -t refuses it
    at its position."""
    conf = tmp_path / "x.yaml"
    conf.write_text("""proxy:
  - listen: 127.0.0.1:3128
    mode: http
    http:
      remove_headers: [X-Internal, Host]
""")
    r = subprocess.run([str(xf.XRAYD_BIN), "-t", "-c", str(conf)], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode != 0
    assert re.search(r'x\.yaml:5:23: "remove_headers": "Host" cannot be removed', r.stderr), \
        r.stderr
