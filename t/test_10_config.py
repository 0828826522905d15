"""Configuration: `xrayd -t` accepts good files and rejects broken ones with
one `FILE:LINE:COL: "directive": reason` line, pointing at the offending
node (the key for unknown/misplaced keys, the value for bad values, the
block mapping for a missing required directive)."""

import os
import re
import socket

import pytest

import xrayd_fixture as xf

# A relay block that is valid on its own, for cases that break something
# else.  Lines 1-4 of every case below are this header unless noted.
GOOD_RELAY = """\
relay:
  - name: a
    listen: 127.0.0.1:18001
    upstream: 127.0.0.1:18002
"""

# (id, files {name: text}, main file, (file, line, col), directive or None,
#  regex the reason must match)
CASES = [
    ("unknown-key-did-you-mean",
     {"x.yaml": "workers: 1\nbuffer_sise: 64k\n" + GOOD_RELAY},
     "x.yaml", ("x.yaml", 2, 1), "buffer_sise",
     r'unknown directive.*did you mean "buffer_size"'),
    ("unknown-key-in-relay",
     {"x.yaml": GOOD_RELAY + "    upstrem_tries: 2\n"},
     "x.yaml", ("x.yaml", 5, 5), "upstrem_tries",
     r'did you mean "upstream_tries"'),
    ("wrong-type-sequence-for-int",
     {"x.yaml": "workers: [1]\n" + GOOD_RELAY},
     "x.yaml", ("x.yaml", 1, 10), "workers", r"(?i)expected|sequence|number"),
    ("size-out-of-range",
     {"x.yaml": "buffer_size: 1\n" + GOOD_RELAY},
     "x.yaml", ("x.yaml", 1, 14), "buffer_size", r"(?i)out of range|too small"),
    ("bad-duration",
     {"x.yaml": "log_level: info\nidle_timeout: 5 parsecs\n" + GOOD_RELAY},
     "x.yaml", ("x.yaml", 2, 15), "idle_timeout", r"(?i)invalid duration"),
    ("bad-duration-in-relay",
     {"x.yaml": GOOD_RELAY + "    connect_timeout: soon\n"},
     "x.yaml", ("x.yaml", 5, 22), "connect_timeout", r"(?i)invalid duration"),
    ("bad-size-unit",
     {"x.yaml": "buffer_size: 64q\n" + GOOD_RELAY},
     "x.yaml", ("x.yaml", 1, 14), "buffer_size", r"(?i)invalid size"),
    ("bad-port",
     {"x.yaml": "relay:\n  - name: a\n    listen: 127.0.0.1:70000\n"
                "    upstream: 127.0.0.1:18002\n"},
     "x.yaml", ("x.yaml", 3, 13), "listen", r"(?i)port"),
    ("bad-address-in-list",
     {"x.yaml": "relay:\n  - name: a\n    listen: 127.0.0.1:18001\n"
                "    upstream:\n      - 127.0.0.1:18002\n"
                "      - 127.0.0.1:0\n"},
     "x.yaml", ("x.yaml", 6, 9), "upstream", r"(?i)port"),
    ("missing-upstream",
     {"x.yaml": "workers: 1\nrelay:\n  - name: a\n    listen: 127.0.0.1:18001\n"},
     "x.yaml", ("x.yaml", 3, 5), None, r'(?i)missing required directive "upstream"'),
    ("duplicate-listen-across-relays",
     {"x.yaml": GOOD_RELAY + "  - name: b\n    listen: 127.0.0.1:18001\n"
                "    upstream: 127.0.0.1:18003\n"},
     "x.yaml", ("x.yaml", 6, 13), "listen", r"(?i)duplicate|already|twice"),
    ("duplicate-key",
     {"x.yaml": "workers: 1\nworkers: 2\n" + GOOD_RELAY},
     "x.yaml", ("x.yaml", 2, 1), "workers", r"(?i)duplicate.*x\.yaml:1:1"),
    ("missing-include",
     {"x.yaml": "include: nosuch.yaml\n" + GOOD_RELAY},
     "x.yaml", ("x.yaml", 1, 10), "include", r"nosuch\.yaml.*(?i:no such file|not found|cannot)"),
    ("error-inside-included-file",
     {"x.yaml": "workers: 1\ninclude: inc.yaml\n" + GOOD_RELAY,
      "inc.yaml": "# included\nconnect_timeout: 1s\nidle_timeout: forever\n"},
     "x.yaml", ("inc.yaml", 3, 15), "idle_timeout", r"(?i)invalid duration"),
    ("yaml-syntax-tab",
     {"x.yaml": "workers: 1\n\tbuffer_size: 64k\n" + GOOD_RELAY},
     "x.yaml", ("x.yaml", 2, 1), None, r"(?i)syntax|cannot start any token"),
    ("yaml-syntax-unclosed-flow",
     {"x.yaml": "workers: 1\nrelay: [\n  {name: a\n"},
     "x.yaml", ("x.yaml", 4, 1), None, r"(?i)syntax"),
    ("unknown-filter-module",
     {"x.yaml": GOOD_RELAY + "    filters:\n      - nosuch\n"},
     "x.yaml", ("x.yaml", 6, 9), None, r'(?i)nosuch.*(unknown|module|filter)|(unknown|module|filter).*nosuch'),
    ("unknown-filter-directive",
     {"x.yaml": GOOD_RELAY + "    filters:\n      - log:\n          path: a.log\n"
                "          format: json\n"},
     "x.yaml", ("x.yaml", 8, 11), "format", r"(?i)unknown directive"),
    ("log-filter-missing-path",
     {"x.yaml": GOOD_RELAY + "    filters:\n      - log: {}\n"},
     "x.yaml", None, None, r'(?i)missing required directive "path"'),
    ("log-path-unwritable",
     {"x.yaml": GOOD_RELAY + "    filters:\n      - log:\n"
                "          path: /nonexistent/dir/a.log\n"},
     "x.yaml", ("x.yaml", 7, 17), "path", r"/nonexistent/dir/a\.log"),
    ("signature-bad-hex",
     {"x.yaml": GOOD_RELAY + "    filters:\n      - signature:\n"
                "          patterns:\n            - hex: \"zz11\"\n"},
     "x.yaml", ("x.yaml", 8, 20), None, r"(?i)hex"),
    ("load-module-missing-file",
     {"x.yaml": "load_module: /nonexistent/x.so\n" + GOOD_RELAY},
     "x.yaml", ("x.yaml", 1, 14), "load_module", r"/nonexistent/x\.so"),
    ("listen-at-top-level",
     {"x.yaml": "workers: 1\nlisten: 127.0.0.1:18009\n" + GOOD_RELAY},
     "x.yaml", ("x.yaml", 2, 1), "listen", r"(?i)not allowed.*relay"),
    ("name-at-top-level",
     {"x.yaml": "name: top\n" + GOOD_RELAY},
     "x.yaml", ("x.yaml", 1, 1), "name", r"(?i)not allowed"),
    ("workers-in-relay",
     {"x.yaml": GOOD_RELAY + "    workers: 2\n"},
     "x.yaml", ("x.yaml", 5, 5), "workers", r"(?i)not allowed"),
    ("bad-enum",
     {"x.yaml": GOOD_RELAY + "    balance: round_robbin\n"},
     "x.yaml", ("x.yaml", 5, 14), "balance", r"(?i)not one of.*round_robin"),
    ("bad-flag",
     {"x.yaml": "tcp_nodelay: maybe\n" + GOOD_RELAY},
     "x.yaml", ("x.yaml", 1, 14), "tcp_nodelay", r"(?i)on or off"),
    ("relay-not-a-sequence",
     {"x.yaml": "relay: 5\n"},
     "x.yaml", ("x.yaml", 1, 8), "relay", r"(?i)expected"),
]


def error_line(text, path):
    """Find the `PATH:LINE:COL: rest` line for path in xrayd's output."""
    m = re.search(r"(?m)^(?:.*?\s)?" + re.escape(str(path)) + r":(\d+):(\d+): (.*)$",
                  text)
    return m


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_config_error(case, tmp_path):
    _id, files, main, where, directive, reason = case
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    main_path = tmp_path / main
    r = xf.run_xrayd("-t", "-c", main_path)
    out = r.stderr + r.stdout
    assert r.returncode == 1, "exit %d, output:\n%s" % (r.returncode, out)
    assert "configuration ok" not in out
    if where is None:
        m = error_line(out, main_path)
        assert m, "no %s:LINE:COL: line in:\n%s" % (main_path, out)
    else:
        m = error_line(out, tmp_path / where[0])
        assert m, "no %s:LINE:COL: line in:\n%s" % (tmp_path / where[0], out)
        assert (int(m.group(1)), int(m.group(2))) == where[1:], \
            "position %s:%s, want %d:%d; output:\n%s" % (
                m.group(1), m.group(2), where[1], where[2], out)
    rest = m.group(3)
    if directive:
        assert rest.startswith('"%s": ' % directive), \
            "want the directive %r named first: %r" % (directive, rest)
    assert re.search(reason, rest), "reason %r does not match %r" % (rest, reason)
    # One error, one line: no second FILE:LINE:COL line.
    assert len(re.findall(r":\d+:\d+: ", out)) == 1, out


def test_shipped_config_ok():
    r = xf.run_xrayd("-t", "-c", xf.REPO / "conf" / "xrayd.yaml")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "configuration ok" in r.stderr


def test_t_does_not_bind(tmp_path):
    """-t is a dry run: a port in use does not make it fail, and it does not
    start a daemon or write the pid file."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        conf = tmp_path / "x.yaml"
        conf.write_text("pid: %s/x.pid\nrelay:\n  - name: a\n    listen: 127.0.0.1:%d\n"
                        "    upstream: 127.0.0.1:18002\n" % (tmp_path, port))
        r = xf.run_xrayd("-t", "-c", conf)
        assert r.returncode == 0, r.stderr
        assert "configuration ok" in r.stderr
        assert not (tmp_path / "x.pid").exists()
    finally:
        busy.close()


def test_include_merges_relays(xrayd, cleanup):
    """include: with a glob; included files add relays (appended) and
    top-level directives; relative paths resolve against the including
    file's directory; the included relay really relays."""
    echo = xf.EchoServer()
    cleanup.append(echo)
    x = xrayd()
    p1 = x.listen_port()
    p2 = x.listen_port()
    sub = x.tmp / "conf.d"
    sub.mkdir()
    (sub / "b.yaml").write_text(
        "relay:\n  - name: from_include\n    listen: 127.0.0.1:%d\n"
        "    upstream: 127.0.0.1:%d\n    filters:\n"
        "      - log:\n          path: logs/b.log\n" % (p2, echo.port))
    (sub / "logs").mkdir()
    (sub / "c.yaml").write_text("connect_timeout: 3s\n")
    x.write_conf("""
include: conf.d/*.yaml
relay:
  - name: main
    listen: 127.0.0.1:${p1}
    upstream: 127.0.0.1:${u}
""", p1=p1, u=echo.port)
    r = xf.run_xrayd("-t", "-c", x.conf)
    assert r.returncode == 0 and "configuration ok" in r.stderr, r.stderr
    x.start()
    for port in (p1, p2):
        with xf.connect(port) as s:
            s.sendall(b"hello %d" % port)
            s.shutdown(socket.SHUT_WR)
            assert xf.recv_all(s) == b"hello %d" % port
    recs = xf.read_json_lines(sub / "logs" / "b.log", 1)
    assert recs[0]["listener"] == "from_include"


def test_include_missing_glob_is_ok(tmp_path):
    """A glob that matches nothing in an existing directory is not an error
    (an empty conf.d/; only a plain missing path is)."""
    (tmp_path / "nothing-here").mkdir()
    conf = tmp_path / "x.yaml"
    conf.write_text("include: nothing-here/*.yaml\n" + GOOD_RELAY)
    r = xf.run_xrayd("-t", "-c", conf)
    assert r.returncode == 0, r.stderr


def test_error_in_included_relay_names_included_file(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "relay:\n  - name: inc\n    listen: 127.0.0.1:18011\n"
        "    upstream: 127.0.0.1:18012\n    backlog: lots\n")
    conf = tmp_path / "x.yaml"
    conf.write_text("include: r.yaml\n" + GOOD_RELAY)
    r = xf.run_xrayd("-t", "-c", conf)
    assert r.returncode == 1
    m = error_line(r.stderr, tmp_path / "r.yaml")
    assert m and (int(m.group(1)), int(m.group(2))) == (5, 14), r.stderr
    assert m.group(3).startswith('"backlog": '), r.stderr


def test_start_with_broken_config_fails(xrayd):
    """Start-up uses the same error sentence as -t and exits non-zero."""
    x = xrayd()
    x.write_conf("buffer_sise: 64k\n" + GOOD_RELAY)
    x.start(wait=False)
    rc = x.proc.wait(20)
    assert rc != 0
    text = x.log_text()
    m = error_line(text, x.conf)
    assert m, text
    # Line 7: the fixture's header takes lines 1-6.
    assert (int(m.group(1)), int(m.group(2))) == (7, 1), text
    assert 'did you mean "buffer_size"' in m.group(3)
    x.allow_log(r"buffer_sise")


# A proxy block whose connections have continuity (the default).
PROXY = "proxy:\n  - name: p\n    listen: 127.0.0.1:18021\n"


@pytest.mark.parametrize("state_dir,where,reason", [
    ("missing", (1, 12), r'"state_dir": ".*/missing" does not exist.*proxy "p"'),
    ("x.yaml", (1, 12), r'"state_dir": ".*/x\.yaml" is not a directory'),
], ids=["missing", "not-a-directory"])
def test_state_dir_must_exist_for_continuity(tmp_path, state_dir, where, reason):
    """Every worker makes its snapshot store in state_dir at start and
    exits if it cannot, so -t refuses a state_dir a proxy with continuity
    could not use, at the directive's position."""
    conf = tmp_path / "x.yaml"
    conf.write_text("state_dir: %s\n%s" % (state_dir, PROXY))
    r = xf.run_xrayd("-t", "-c", conf)
    assert r.returncode == 1, r.stderr
    m = error_line(r.stderr, conf)
    assert m and (int(m.group(1)), int(m.group(2))) == where, r.stderr
    assert re.search(reason, m.group(3)), r.stderr
    assert len(re.findall(r":\d+:\d+: ", r.stderr)) == 1, r.stderr


def test_state_dir_defaulted_is_checked_at_the_proxy(tmp_path):
    """With state_dir left at its default, the error names the proxy block
    that needs it (there is no state_dir line to point at)."""
    if os.path.isdir("/run/xrayd"):
        pytest.skip("/run/xrayd exists here: the default is usable")
    conf = tmp_path / "x.yaml"
    conf.write_text("workers: 1\n" + PROXY)
    r = xf.run_xrayd("-t", "-c", conf)
    assert r.returncode == 1, r.stderr
    m = error_line(r.stderr, conf)
    assert m and (int(m.group(1)), int(m.group(2))) == (3, 5), r.stderr
    assert re.search(r'state_dir "/run/xrayd" \(the default\) does not exist', m.group(3)), \
        r.stderr


def test_state_dir_not_needed_without_continuity(tmp_path):
    """Only continuity needs the directory: a proxy with continuity: off,
    or relays alone, pass -t with none; an existing one passes too."""
    (tmp_path / "state").mkdir()
    for body in ("state_dir: missing\n" + PROXY + "    continuity: off\n",
                 "state_dir: missing\n" + GOOD_RELAY,
                 "state_dir: state\n" + PROXY):
        conf = tmp_path / "x.yaml"
        conf.write_text(body)
        r = xf.run_xrayd("-t", "-c", conf)
        assert r.returncode == 0 and "configuration ok" in r.stderr, (body, r.stderr)
