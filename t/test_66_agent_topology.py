"""The agent in the XRAY §8 topology (t/netns.py): xrayd runs as the agent
on NAT box B, the server host in private network B registers with it over
the LAN and gets an official address from the public side's pool; the
agent's worker is killed and the server's library, registering again with
its address as `prior`, gets the same one.

Needs root and `ip netns`; skips otherwise."""

import json
import os
import re
import signal
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


def _register(t, pki, agent, local, prior=None):
    argv = [sys.executable, CLIENT, agent, pki.ca, pki.crt("app-1"), pki.key("app-1"), local]
    if prior:
        argv.append(prior)
    r = t.run("b", argv, timeout=30, env=dict(os.environ, PYTHONPATH=str(HERE)))
    assert r.stdout.strip(), r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(120)
def test_server_in_b_registers_with_the_agent_on_natb(topology, pki, tmp_path):
    t = topology
    log = tmp_path / "error.log"
    conf = tmp_path / "agent.yaml"
    pub = t.pub_addr("natb")
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
applications:
  - name: server
    match: ["CN=app-*"]
    inbound: on
""" % dict(tmp=tmp_path, crt=pki.crt("localhost"), key=pki.key("localhost"), ca=pki.ca,
           pub=pub))
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
    other = _register(t, pki, agent, "198.18.2.3:8080")
    assert other["official"] == "%s:20001" % pub, other
    back = _register(t, pki, agent, "198.18.2.2:8080", prior="%s:20000" % pub)
    assert back["official"] == "%s:20000" % pub, back

    master.send_signal(signal.SIGTERM)
    master.wait(timeout=20)
    text = log.read_text()
    bad = [l for l in text.splitlines()
           if re.search(r"\[(alert|crit|emerg)\]", l) and "exited on signal 9" not in l]
    assert not bad, text
