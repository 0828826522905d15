"""Command line: -V, --list-directives, -s reload|stop|quit|reopen."""

import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

import xrayd_fixture as xf


def pkg_version(name):
    if not shutil.which("pkg-config"):
        return None
    r = subprocess.run(["pkg-config", "--modversion", name],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def test_version():
    r = xf.run_xrayd("-V")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    version = (xf.REPO / "VERSION").read_text().strip()
    assert version in out, out
    low = out.lower()
    for lib in ("libuv", "mbedtls", "libyaml", "libsodium"):
        assert lib in low, "%s missing from -V:\n%s" % (lib, out)
    assert "configure" in low, "configure arguments missing:\n%s" % out
    # The versions printed are the real ones (compile or run time).
    for pc, lib in (("libuv", "libuv"), ("yaml-0.1", "libyaml"),
                    ("libsodium", "libsodium")):
        v = pkg_version(pc)
        if v:
            line = [l for l in out.splitlines() if lib in l.lower()]
            assert line and any(v in l for l in line), \
                "%s version %s not shown:\n%s" % (lib, v, out)


def directives():
    r = xf.run_xrayd("--list-directives")
    assert r.returncode == 0, r.stderr
    rows = [l.split("\t") for l in r.stdout.splitlines() if l]
    return r.stdout, rows


def test_list_directives_format():
    out, rows = directives()
    assert rows, "no output"
    ctx_re = re.compile(r"^(main|relay|proxy|http|tls|upstream_tls|agent|application|peer|firewall|filter:[a-z_][a-z0-9_]*)$")
    seen = set()
    for row in rows:
        assert len(row) == 5, "not 5 TAB-separated fields: %r" % row
        name, ctxs, typ, default, doc = row
        assert re.match(r"^[a-z_][a-z0-9_]*$", name), row
        for c in ctxs.split(","):
            assert ctx_re.match(c), "bad context %r in %r" % (c, row)
        assert typ, row
        assert default, row
        assert doc.strip(), "undocumented: %r" % row
        assert (name, ctxs) not in seen, "duplicate row %r" % row
        seen.add((name, ctxs))
    by = {}
    for name, ctxs, typ, default, doc in rows:
        by.setdefault(name, []).append((set(ctxs.split(",")), typ, default))

    def has(name, ctx, default=None):
        assert name in by, "directive %s not listed" % name
        ok = [r for r in by[name] if ctx <= r[0]]
        assert ok, "%s not in contexts %s: %r" % (name, ctx, by[name])
        if default is not None:
            assert ok[0][2] == default, "%s default %r, want %r" % (
                name, ok[0][2], default)

    has("workers", {"main"})
    has("daemon", {"main"})
    has("pid", {"main"})
    has("error_log", {"main"})
    has("log_level", {"main"})
    has("drain_timeout", {"main"}, "1m")
    has("load_module", {"main"})
    has("include", {"main"})
    has("relay", {"main"})
    has("buffer_size", {"main", "relay"}, "64k")
    has("connect_timeout", {"main", "relay"}, "5s")
    has("idle_timeout", {"main", "relay"}, "10m")
    has("max_connections", {"main", "relay"})
    has("tcp_nodelay", {"main", "relay"}, "on")
    has("name", {"relay"})
    has("listen", {"relay"}, "-")
    has("upstream", {"relay"}, "-")
    has("balance", {"relay"}, "round_robin")
    has("upstream_tries", {"relay"})
    has("upstream_max_fails", {"relay"}, "1")
    has("upstream_fail_timeout", {"relay"}, "10s")
    has("backlog", {"relay"}, "511")
    has("filters", {"relay"})
    has("path", {"filter:log"})
    has("patterns", {"filter:signature"})
    has("direction", {"filter:signature"}, "both")
    # Top-level-only directives are not offered in relay blocks.
    assert not any("relay" in r[0] for r in by["workers"])
    assert not any("main" in r[0] for r in by["listen"])


def start_simple(x, echo):
    p = x.listen_port()
    x.write_conf("""
relay:
  - name: a
    listen: 127.0.0.1:${p}
    upstream: 127.0.0.1:${u}
    filters:
      - log:
          path: ${tmp}/access.log
""", p=p, u=echo.port)
    x.start()
    return p


def echo_once(port, payload=b"ping"):
    with xf.connect(port) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return xf.recv_all(s)


def test_pid_file_and_signal_reload(xrayd, cleanup):
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = start_simple(x, echo)
    assert int(x.pid_file.read_text().strip()) == x.pid
    old = set(x.worker_pids())
    r = xf.run_xrayd("-s", "reload", "-c", x.conf)
    assert r.returncode == 0, r.stderr
    xf.wait_until(lambda: len(set(x.worker_pids()) - old) >= x.workers, 30,
                  what="new workers after -s reload")
    x.wait_workers_exit(old, 30)
    assert x.alive()
    assert echo_once(p) == b"ping"


@pytest.mark.parametrize("how", ["stop", "quit"])
def test_signal_stop_quit(xrayd, cleanup, how):
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = start_simple(x, echo)
    assert echo_once(p) == b"ping"
    workers = x.worker_pids()
    r = xf.run_xrayd("-s", how, "-c", x.conf)
    assert r.returncode == 0, r.stderr
    rc = x.proc.wait(20)
    assert rc == 0
    for w in workers:
        assert not xf.pid_alive(w), "worker %d survived -s %s" % (w, how)
    assert p not in xf.listening_ports()
    assert not x.pid_file.exists(), "pid file left behind after -s %s" % how


def test_quit_waits_for_connections(xrayd, cleanup):
    """-s quit is graceful: an open relay keeps working until it ends."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = start_simple(x, echo)
    s = xf.connect(p)
    s.sendall(b"one")
    assert xf.recv_exact(s, 3) == b"one"
    r = xf.run_xrayd("-s", "quit", "-c", x.conf)
    assert r.returncode == 0, r.stderr
    time.sleep(1.0)
    assert x.alive(), "master exited while a relay was open"
    # New connections are no longer accepted ...
    xf.wait_until(lambda: p not in xf.listening_ports(), 10,
                  what="listener to close")
    # ... but the old one still relays.
    s.sendall(b"two")
    assert xf.recv_exact(s, 3) == b"two"
    s.close()
    assert x.proc.wait(20) == 0


def test_signal_reopen(xrayd, cleanup):
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = start_simple(x, echo)
    assert echo_once(p) == b"ping"
    acc = x.tmp / "access.log"
    xf.read_json_lines(acc, 1)
    os.rename(acc, x.tmp / "access.log.1")
    os.rename(x.error_log, x.tmp / "error.log.1")
    r = xf.run_xrayd("-s", "reopen", "-c", x.conf)
    assert r.returncode == 0, r.stderr
    xf.wait_until(lambda: acc.exists() and x.error_log.exists(), 10,
                  what="logs to be reopened")
    assert echo_once(p, b"after") == b"after"
    recs = xf.read_json_lines(acc, 1)
    assert recs[-1]["bytes_up"] == 5


def test_signal_without_daemon_fails(tmp_path):
    conf = tmp_path / "x.yaml"
    conf.write_text("pid: %s/none.pid\nrelay:\n  - name: a\n"
                    "    listen: 127.0.0.1:18001\n    upstream: 127.0.0.1:18002\n"
                    % tmp_path)
    r = xf.run_xrayd("-s", "reload", "-c", conf)
    assert r.returncode != 0
    assert "none.pid" in r.stderr, r.stderr


def test_bad_option(tmp_path):
    r = xf.run_xrayd("--no-such-option")
    assert r.returncode != 0
    assert r.stderr.strip()
    conf = tmp_path / "x.yaml"
    conf.write_text("pid: %s/x.pid\nrelay:\n  - name: a\n"
                    "    listen: 127.0.0.1:18001\n    upstream: 127.0.0.1:18002\n"
                    % tmp_path)
    r = xf.run_xrayd("-s", "explode", "-c", conf)
    assert r.returncode != 0
    assert "explode" in r.stderr


def test_daemon_mode(xrayd, cleanup):
    """daemon: on: the launching process exits 0, the daemon writes its pid
    file, serves, and stops on -s stop."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p = x.listen_port()
    x.write_conf("""\
workers: 2
daemon: on
pid: ${tmp}/xrayd.pid
error_log: ${tmp}/error.log
log_level: info
relay:
  - name: a
    listen: 127.0.0.1:${p}
    upstream: 127.0.0.1:${u}
""", header=False, p=p, u=echo.port)
    x.start(wait=False)
    master = None
    try:
        assert x.proc.wait(20) == 0, x.log_text()
        master = int(xf.wait_until(lambda: x.pid_file.exists() and
                                   x.pid_file.read_text().strip(), 10,
                                   what="pid file"))
        x.seen_pids.add(master)
        assert master != x.proc.pid and xf.pid_alive(master)
        xf.wait_until(lambda: p in xf.listening_ports() and
                      len(xf.children_of(master)) == 2, 20,
                      what="daemon to listen")
        workers = xf.children_of(master)
        x.seen_pids.update(workers)
        assert os.getsid(master) == master, "daemon is not a session leader"
        assert echo_once(p, b"daemon") == b"daemon"
        r = xf.run_xrayd("-s", "stop", "-c", x.conf)
        assert r.returncode == 0, r.stderr
        xf.wait_until(lambda: not xf.pid_alive(master) and
                      not any(xf.pid_alive(w) for w in workers), 20,
                      what="daemon to exit")
    finally:
        if master and xf.pid_alive(master):
            for pid in [master] + xf.children_of(master):
                os.kill(pid, signal.SIGKILL)


def test_relative_paths_resolve_against_yaml_dir(xrayd, cleanup):
    """pid, error_log and the access log path, written relative, land
    beside the YAML file whatever the working directory."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    cdir = x.tmp / "conf"
    (cdir / "run").mkdir(parents=True)
    (cdir / "logs").mkdir()
    p = x.listen_port()
    x.conf = cdir / "x.yaml"
    x.error_log = cdir / "logs" / "error.log"
    x.pid_file = cdir / "run" / "x.pid"
    x.write_conf("""\
workers: 2
daemon: off
pid: run/x.pid
error_log: logs/error.log
relay:
  - name: a
    listen: 127.0.0.1:${p}
    upstream: 127.0.0.1:${u}
    filters:
      - log:
          path: logs/access.log
""", header=False, p=p, u=echo.port)
    x.start()   # cwd is x.tmp, not the YAML's directory
    assert int(x.pid_file.read_text()) == x.pid
    assert echo_once(p) == b"ping"
    xf.read_json_lines(cdir / "logs" / "access.log", 1)
    r = subprocess.run([str(xf.XRAYD_BIN), "-s", "stop", "-c", "x.yaml"],
                       cwd=str(cdir), capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert x.proc.wait(20) == 0
