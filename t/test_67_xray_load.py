"""contrib/bench/xray_load.c (the bench's C client and servers) against a fake
agent written here from html-docs/protocol.html, on loopback.

The real agents relay with INCOMING mode 2 only, so xray_bench.py cannot show
that xray_load's server takes mode 1 (the agent connects to the registered
local address); this does: a mode-1 link whose INCOMING came first, one that
came before its INCOMING (held), one no INCOMING names (ERROR BAD_TOKEN after
the 2 s hold), one from a certificate that is not the agent's, and a mode-2
link, each carrying the bench's stream protocol.  The client side: `conc` with
its CONNECTs all pipelined and windowed, a wrong peer_key, and the direct path
through `dserve`."""

import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

import agent_client as ac
import tls_helpers as th
import xrayd_fixture as xf

SRC = xf.REPO / "contrib" / "bench" / "xray_load.c"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = th.Pki(tmp_path_factory.mktemp("pki"))
    for name in ("agent-a", "agent-b"):
        p._issue(p.ca1, name, "--both", "--san", "DNS:" + name)
    return p


@pytest.fixture(scope="module")
def load(tmp_path_factory):
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no cc")
    exe = tmp_path_factory.mktemp("bin") / "xray_load"
    r = subprocess.run([cc, "-std=c11", "-D_GNU_SOURCE", "-O2", "-Wall", "-Wextra", "-Werror",
                        "-Wno-unused-parameter", "-I", str(xf.REPO / "src"), "-o", str(exe),
                        str(SRC), str(xf.REPO / "src" / "common" / "proto.c"),
                        "-lmbedtls", "-lmbedx509", "-lmbedcrypto"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return exe


def server_ctx(pki, name):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    c.minimum_version = c.maximum_version = ssl.TLSVersion.TLSv1_2
    c.load_cert_chain(pki.crt(name), pki.key(name))
    c.load_verify_locations(pki.ca)
    c.verify_mode = ssl.CERT_REQUIRED
    return c


def client_ctx(pki, name):
    return ac.link_ctx(pki.ca, pki.crt(name), pki.key(name))


def listener(port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(64)
    ls.settimeout(20)
    return ls


def session(sock):
    s = ac.Session.__new__(ac.Session)
    s.s = sock
    s.next_id = 1
    return s


def tls_accept(ls, ctx):
    raw, _ = ls.accept()
    c = ctx.wrap_socket(raw, server_side=True)
    c.settimeout(10)
    return c


def echo_check(c, data):
    c.sendall(b"E" + struct.pack(">Q", len(data)) + data)
    got = b""
    while len(got) < len(data):
        d = c.recv(65536)
        assert d, "closed after %d of %d echoed bytes" % (len(got), len(data))
        got += d
    assert got == data


def sink_check(c, n):
    c.sendall(b"S" + struct.pack(">Q", n) + os.urandom(n))
    ans = b""
    while len(ans) < 8:
        d = c.recv(8 - len(ans))
        assert d, "no sink count"
        ans += d
    assert struct.unpack(">Q", ans)[0] == n


def incoming(rid, mode, token, rp=None):
    return ac.frame(ac.INCOMING, struct.pack(">IQB", rid, 7, mode) + ac.addr(rp) + token +
                    ac.addr(None) + ac.pstr("CN=app-1"))


def final_stats(path):
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [x for x in lines if "stats" in x][-1]


@pytest.mark.timeout(120)
def test_xserve_both_incoming_modes(load, pki, tmp_path):
    agent_port, rp_port, local_port = xf.free_port(), xf.free_port(), xf.free_port()
    out = tmp_path / "xserve.jsonl"
    als, rpls = listener(agent_port), listener(rp_port)
    p = subprocess.Popen([str(load), "xserve", "--ca", pki.ca, "--crt", pki.crt("relay-b"),
                          "--key", pki.key("relay-b"), "--agent", "127.0.0.1:%d" % agent_port,
                          "--agent-name", "agent-b", "--local", "127.0.0.1:%d" % local_port,
                          "--out", str(out), "--max-secs", "60"],
                         stderr=open(tmp_path / "xserve.stderr", "w"))
    try:
        ctl = session(tls_accept(als, server_ctx(pki, "agent-b")))
        t, body = ctl.read()
        assert t == ac.HELLO
        ctl.send_raw(ac.frame(ac.HELLO_OK, struct.pack(">HI", 1, 200) + ac.pstr("fake")))
        t, body = ctl.read()
        assert t == ac.REGISTER
        rid, proto = struct.unpack(">IB", body[:5])
        assert proto == 6 and ac.parse_addr(body[5:24]) == ("127.0.0.1", local_port)
        ctl.send_raw(ac.frame(ac.REGISTERED, struct.pack(">IQI", rid, 7, 1000) +
                              ac.addr(("127.0.0.1", 20000))))

        refreshed = []

        def tell(rid, mode, token, rp=None):
            """INCOMING, then its INCOMING_OK (REFRESHes answered on the way: one
            thread per SSL socket)."""
            ctl.send_raw(incoming(rid, mode, token, rp))
            while True:
                t, body = ctl.read()
                if t == ac.REFRESH:
                    refreshed.append(1)
                    r, _ = struct.unpack(">IQ", body)
                    ctl.send_raw(ac.frame(ac.REFRESHED, struct.pack(">II", r, 1000)))
                    continue
                assert (t, body) == (ac.INCOMING_OK, struct.pack(">I", rid))
                return

        agent_ctx = client_ctx(pki, "agent-b")

        # mode 2: the server links out to our relay point
        tok = os.urandom(32)
        tell(101, 2, tok, ("127.0.0.1", rp_port))
        lk = session(tls_accept(rpls, server_ctx(pki, "agent-b")))
        assert lk.expect(ac.LINK) == tok
        lk.send_raw(ac.frame(ac.LINK_OK, b""))
        lk.expect(ac.ACK)
        lk.send_raw(ac.frame(ac.ACK, b""))
        echo_check(lk.s, os.urandom(100000))
        lk.s.close()

        def link_in(token, cert="agent-b"):
            raw = socket.create_connection(("127.0.0.1", local_port), 10)
            c = client_ctx(pki, cert).wrap_socket(raw) if cert != "agent-b" else \
                agent_ctx.wrap_socket(raw)
            c.settimeout(10)
            c.sendall(ac.frame(ac.LINK, token))
            return session(c)

        def accepted(s):
            s.expect(ac.LINK_OK)
            s.expect(ac.ACK)
            s.send_raw(ac.frame(ac.ACK, b""))

        # mode 1, INCOMING first
        tok = os.urandom(32)
        tell(102, 1, tok)
        s = link_in(tok)
        accepted(s)
        sink_check(s.s, 300000)
        s.s.close()

        # mode 1, the link first: held until its INCOMING comes
        tok = os.urandom(32)
        s = link_in(tok)
        time.sleep(0.5)
        tell(103, 1, tok)
        accepted(s)
        echo_check(s.s, b"held" * 1000)
        s.s.close()

        # mode 1, a token no INCOMING names: BAD_TOKEN once the hold ends
        t0 = time.monotonic()
        s = link_in(os.urandom(32))
        with pytest.raises(ac.AgentError) as e:
            s.expect(ac.LINK_OK)
        assert e.value.name == "BAD_TOKEN" and 1.5 < time.monotonic() - t0 < 5
        s.s.close()

        # mode 1 from a certificate that is not the agent's: closed
        tok = os.urandom(32)
        tell(104, 1, tok)
        s = link_in(tok, cert="relay-a")
        with pytest.raises((EOFError, OSError)):
            s.expect(ac.LINK_OK)
        s.s.close()

        # the server REFRESHes every heartbeat (200 ms here)
        ctl.s.settimeout(5)
        t, body = ctl.read()
        assert t == ac.REFRESH and struct.unpack(">IQ", body)[1] == 7
        r, _ = struct.unpack(">IQ", body)
        ctl.send_raw(ac.frame(ac.REFRESHED, struct.pack(">II", r, 1000)))
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(10)
        als.close()
        rpls.close()
    j = final_stats(out)
    st = j["stats"]
    assert (st["incoming"], st["mode1"], st["mode2"], st["held"]) == (4, 2, 1, 2), j
    assert st["bytes"] == 100000 + 300000 + 4000, j
    assert j["refresh"]["ok"] >= 1 + len(refreshed)
    assert any("not agent B's" in e for e in j["errors"]), j
    assert any("no INCOMING" in e for e in j["errors"]), j


def fake_agent_a(pki, agent_port, rp_port, peer_key, stop):
    """Agent A as the bench's client sees it: CONNECT -> CONNECT_OK (mode 2, our
    relay point, a fresh token, peer_key); a link with a token we gave gets
    LINK_OK and ACK, then we echo its stream as the server would."""
    als, rpls = listener(agent_port), listener(rp_port)
    tokens = set()
    lock = threading.Lock()
    stats = {"connects": 0, "links": 0}

    def control(c):
        ctl = session(c)
        ctl.expect(ac.HELLO)
        ctl.send_raw(ac.frame(ac.HELLO_OK, struct.pack(">HI", 1, 1000) + ac.pstr("fake")))
        c.settimeout(None)
        while True:
            try:
                t, body = ctl.read()
            except (OSError, EOFError):
                return
            assert t == ac.CONNECT
            rid = struct.unpack(">I", body[:4])[0]
            tok = os.urandom(32)
            with lock:
                tokens.add(tok)
                stats["connects"] += 1
            ctl.send_raw(ac.frame(ac.CONNECT_OK, struct.pack(">IB", rid, 2) +
                                  ac.addr(("127.0.0.1", rp_port)) + tok + peer_key))

    def link(c):
        lk = session(c)
        try:
            tok = lk.expect(ac.LINK)
            with lock:
                ok = tok in tokens
                tokens.discard(tok)
            if not ok:
                lk.send_raw(ac.frame(ac.ERROR, struct.pack(">HI", 8, 0) + ac.pstr("bad token")))
                return
            lk.send_raw(ac.frame(ac.LINK_OK, b""))
            lk.expect(ac.ACK)
            lk.send_raw(ac.frame(ac.ACK, b""))
            with lock:
                stats["links"] += 1
            hdr = b""
            while len(hdr) < 9:
                hdr += c.recv(9 - len(hdr))
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
        except (OSError, EOFError, ssl.SSLError):
            pass
        finally:
            c.close()

    def serve(ls, fn):
        ctx = server_ctx(pki, "agent-a")
        ls.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = ls.accept()
            except OSError:
                continue
            try:
                c = ctx.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):
                raw.close()
                continue
            c.settimeout(20)
            threading.Thread(target=fn, args=(c,), daemon=True).start()
        ls.close()

    for ls, fn in ((als, control), (rpls, link)):
        threading.Thread(target=serve, args=(ls, fn), daemon=True).start()
    return stats


def conc(load, pki, *args):
    r = subprocess.run([str(load), "conc", "--ca", pki.ca, "--crt", pki.crt("app-1"),
                        "--key", pki.key("app-1"), "--gap", "0.1", "--max-secs", "60", *args],
                       capture_output=True, text=True, timeout=90)
    recs = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    return r, [x for x in recs if x["kind"] == "run"], [x for x in recs if x["kind"] == "end"]


@pytest.mark.timeout(120)
def test_conc_xray_and_direct(load, pki, tmp_path):
    key = bytes.fromhex(pki.sha256("agent-a").replace(":", "").lower())
    agent_port, rp_port, direct_port = xf.free_port(), xf.free_port(), xf.free_port()
    stop = threading.Event()
    fake = fake_agent_a(pki, agent_port, rp_port, key, stop)
    out = tmp_path / "dserve.jsonl"
    ds = subprocess.Popen([str(load), "dserve", "--ca", pki.ca, "--crt", pki.crt("relay-b"),
                           "--key", pki.key("relay-b"), "--listen", "127.0.0.1:%d" % direct_port,
                           "--out", str(out), "--max-secs", "60"],
                          stderr=open(tmp_path / "dserve.stderr", "w"))
    try:
        for _ in range(100):
            if out.exists() and "ready" in out.read_text():
                break
            time.sleep(0.05)
        common = ["--agent", "127.0.0.1:%d" % agent_port, "--agent-name", "agent-a",
                  "--official", "198.19.0.2:20000", "--direct", "127.0.0.1:%d" % direct_port,
                  "--cpu", "dserve=%d" % ds.pid]
        r, runs, end = conc(load, pki, "--path", "xray,direct", "--k", "1,20", "--reps", "2",
                            *common)
        assert r.returncode == 0, r.stderr
        assert len(runs) == 8 and end[0]["control_sessions"] == 1, r.stdout
        for x in runs:
            assert x["ok"] == x["k"] and x["failed"] == 0 and x["total_s"] is not None, x
            assert x["resumed"] == x["k"], x  # the warm-up's sessions are offered
            assert len(x["conn_s"]) == x["k"] and "dserve" in x["cpu_s"]
        assert fake["links"] == 2 + 2 * 21

        # windowed: 30 CONNECTs, at most 4 unanswered
        r, runs, end = conc(load, pki, "--path", "xray", "--k", "30", "--reps", "1",
                            "--ctl-window", "4", *common)
        assert r.returncode == 0 and runs[0]["ok"] == 30, r.stdout + r.stderr

        # a relay point whose key is not CONNECT_OK's peer_key is not linked
        fake_key = bytes(32)
        stop.set()
        time.sleep(0.5)
        stop.clear()
        agent_port2, rp_port2 = xf.free_port(), xf.free_port()
        fake_agent_a(pki, agent_port2, rp_port2, fake_key, stop)
        r, runs, end = conc(load, pki, "--path", "xray", "--k", "3", "--reps", "1",
                            "--warmup", "0", "--agent", "127.0.0.1:%d" % agent_port2,
                            "--agent-name", "agent-a", "--official", "198.19.0.2:20000")
        assert runs[0]["failed"] == 3 and "peer_key" in runs[0]["errors"][0], r.stdout
    finally:
        stop.set()
        ds.send_signal(signal.SIGTERM)
        ds.wait(10)
    st = final_stats(out)["stats"]
    assert st["accepted"] == 2 + 2 * 21 and st["errors"] == 0, st
    assert st["bytes"] == 44 * 1024
