"""xray pki: init, issue, show.

The certificates are checked with OpenSSL, an implementation independent of
the mbedTLS that made them: `openssl verify` must accept them, `openssl x509
-text` must show the extensions asked for, a real TLS handshake (s_server
and s_client, mutual authentication) must succeed with them, and the public
key hash `xray pki show` prints must be OpenSSL's.

The binary is $XRAY_BIN, or objs/xray in the repository.  Stdlib only.
"""

import hashlib
import os
import re
import shutil
import socket
import stat
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 60


def xray_bin():
    path = os.path.abspath(os.environ.get("XRAY_BIN") or os.path.join(REPO, "objs", "xray"))
    if not os.access(path, os.X_OK):
        pytest.fail("no xray binary at %s: build it first (see src/cli/xray.c) or set XRAY_BIN"
                    % path)
    return path


def xray(*args, umask=None, input=None, cwd=None):
    """Run xray; returns CompletedProcess with text stdout/stderr."""
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([xray_bin()] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=TIMEOUT, preexec_fn=pre, input=input, cwd=cwd)


def ok(*args, **kw):
    r = xray(*args, **kw)
    assert r.returncode == 0, "xray %s: rc %d\n%s%s" % (" ".join(map(str, args)), r.returncode,
                                                        r.stdout, r.stderr)
    return r


def openssl(*args, input=None, check=True):
    if not shutil.which("openssl"):
        pytest.skip("openssl(1) is not installed")
    r = subprocess.run(["openssl"] + [str(a) for a in args], capture_output=True,
                       timeout=TIMEOUT, input=input)
    if check:
        assert r.returncode == 0, "openssl %s: %s" % (" ".join(map(str, args)),
                                                     r.stderr.decode(errors="replace"))
    return r


def x509_text(path):
    return openssl("x509", "-noout", "-text", "-in", path).stdout.decode()


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def show_fields(text):
    """'name: value' lines of `xray pki show` as a dict."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            out.setdefault(name, value)
    return out


@pytest.fixture
def ca(tmp_path):
    d = tmp_path / "ca"
    ok("pki", "init", "--dir", d)
    return d


# ---- init ----------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_init_modes(tmp_path, umask):
    d = tmp_path / "pki"
    r = ok("pki", "init", "--dir", d, umask=umask)
    assert mode(d / "ca.key") == 0o600
    assert mode(d / "ca.crt") == 0o644
    assert mode(d) == 0o700 & ~umask
    assert "sha256 pubkey:" in r.stdout
    # No temporary files left behind.
    assert sorted(os.listdir(d)) == ["ca.crt", "ca.key"]


def test_init_refuses_overwrite(tmp_path):
    d = tmp_path / "pki"
    ok("pki", "init", "--dir", d)
    key, crt = (d / "ca.key").read_bytes(), (d / "ca.crt").read_bytes()
    r = xray("pki", "init", "--dir", d)
    assert r.returncode == 1
    assert "already exists" in r.stderr and "--force" in r.stderr, r.stderr
    assert (d / "ca.key").read_bytes() == key and (d / "ca.crt").read_bytes() == crt
    # Only the key present still counts as a CA to protect.
    (d / "ca.crt").unlink()
    assert xray("pki", "init", "--dir", d).returncode == 1
    assert (d / "ca.key").read_bytes() == key
    # --force replaces both, keeping the modes.
    ok("pki", "init", "--dir", d, "--force", umask=0)
    assert (d / "ca.key").read_bytes() != key
    assert mode(d / "ca.key") == 0o600 and mode(d / "ca.crt") == 0o644
    assert sorted(os.listdir(d)) == ["ca.crt", "ca.key"]


def test_init_ca_extensions(tmp_path):
    d = tmp_path / "pki"
    ok("pki", "init", "--dir", d, "--name", "Test Root", "--days", "30")
    text = x509_text(d / "ca.crt")
    assert re.search(r"Subject: CN\s*=\s*Test Root", text), text
    assert re.search(r"Issuer: CN\s*=\s*Test Root", text), text
    assert re.search(r"Basic Constraints: critical\s+CA:TRUE, pathlen:1", text), text
    assert re.search(r"Key Usage: critical\s+Certificate Sign, CRL Sign", text), text
    assert "Subject Key Identifier" in text and "Authority Key Identifier" in text
    assert "ecdsa-with-SHA256" in text and ("prime256v1" in text or "P-256" in text)
    serial = openssl("x509", "-noout", "-serial", "-in", d / "ca.crt").stdout.decode()
    assert len(serial.strip().split("=")[1]) == 32, serial  # 16 random bytes
    # Self-signed and acceptable as a trust anchor.
    openssl("verify", "-CAfile", d / "ca.crt", d / "ca.crt")
    # Validity: --days from now (give or take the backdating hour).
    end = openssl("x509", "-noout", "-checkend", str(29 * 86400), "-in", d / "ca.crt",
                  check=False)
    assert end.returncode == 0
    end = openssl("x509", "-noout", "-checkend", str(31 * 86400), "-in", d / "ca.crt",
                  check=False)
    assert end.returncode != 0


def test_init_rsa(tmp_path):
    d = tmp_path / "pki"
    ok("pki", "init", "--dir", d, "--rsa", "2048")
    text = x509_text(d / "ca.crt")
    assert "rsaEncryption" in text and "2048 bit" in text
    assert "sha256WithRSAEncryption" in text


# ---- issue ---------------------------------------------------------------

def test_issue_default(ca):
    r = ok("pki", "issue", "alice", "--dir", ca, "--san", "DNS:alice.example",
           "--san", "IP:192.0.2.7,IP:2001:db8::1", umask=0)
    crt, key = ca / "alice.crt", ca / "alice.key"
    assert mode(crt) == 0o644 and mode(key) == 0o600
    assert "alice.crt" in r.stdout
    v = openssl("verify", "-CAfile", ca / "ca.crt", crt)
    assert b"OK" in v.stdout
    text = x509_text(crt)
    assert re.search(r"Subject: CN\s*=\s*alice", text), text
    assert re.search(r"Issuer: CN\s*=\s*xrayd CA", text), text
    assert "CA:FALSE" in text
    assert re.search(r"Key Usage: critical\s+Digital Signature\n", text), text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "DNS:alice.example" in text
    assert "IP Address:192.0.2.7" in text
    assert re.search(r"IP Address:2001:DB8:0:0:0:0:0:1", text, re.I), text
    assert "prime256v1" in text or "P-256" in text
    assert "ecdsa-with-SHA256" in text
    # Leaf only: one certificate in the file.
    assert crt.read_text().count("BEGIN CERTIFICATE") == 1
    # The key is the certificate's.
    pub_crt = openssl("x509", "-noout", "-pubkey", "-in", crt).stdout
    pub_key = openssl("pkey", "-pubout", "-in", key).stdout
    assert pub_crt == pub_key
    # The leaf's authority key id is the CA's subject key id.
    ca_text = x509_text(ca / "ca.crt")
    ski = re.search(r"Subject Key Identifier:\s*\n\s*(\S+)", ca_text).group(1)
    aki = re.search(r"Authority Key Identifier:\s*\n\s*(?:keyid:)?(\S+)", text).group(1)
    assert ski == aki


def test_issue_name_becomes_san(ca):
    ok("pki", "issue", "agent1.example.net", "--dir", ca)
    assert "DNS:agent1.example.net" in x509_text(ca / "agent1.example.net.crt")
    ok("pki", "issue", "10.0.0.5", "--dir", ca)
    assert "IP Address:10.0.0.5" in x509_text(ca / "10.0.0.5.crt")
    r = ok("pki", "issue", "my app", "--dir", ca)
    assert "no subjectAltName" in r.stderr
    assert "Subject Alternative Name" not in x509_text(ca / "my app.crt")


@pytest.mark.parametrize("flag,server,client", [("--server", True, False),
                                                ("--client", False, True),
                                                ("--both", True, True)])
def test_issue_eku(ca, flag, server, client):
    ok("pki", "issue", "svc", "--dir", ca, flag)
    text = x509_text(ca / "svc.crt")
    assert ("TLS Web Server Authentication" in text) == server, text
    assert ("TLS Web Client Authentication" in text) == client, text
    purpose = openssl("x509", "-noout", "-purpose", "-in", ca / "svc.crt").stdout.decode()
    assert ("SSL server : Yes" in purpose) == server, purpose
    assert ("SSL client : Yes" in purpose) == client, purpose


def test_issue_rsa(ca):
    ok("pki", "issue", "legacy", "--dir", ca, "--rsa", "2048")
    text = x509_text(ca / "legacy.crt")
    assert "rsaEncryption" in text and "Public-Key: (2048 bit)" in text, text
    assert re.search(r"Key Usage: critical\s+Digital Signature, Key Encipherment", text), text
    openssl("verify", "-CAfile", ca / "ca.crt", ca / "legacy.crt")
    assert "RSA PRIVATE KEY" in (ca / "legacy.key").read_text()


def test_issue_from_rsa_ca(tmp_path):
    d = tmp_path / "pki"
    ok("pki", "init", "--dir", d, "--rsa", "2048")
    ok("pki", "issue", "leaf", "--dir", d)
    openssl("verify", "-CAfile", d / "ca.crt", d / "leaf.crt")
    assert "sha256WithRSAEncryption" in x509_text(d / "leaf.crt")


def test_issue_out_chain_and_overwrite(ca, tmp_path):
    prefix = tmp_path / "out" / "web"
    (tmp_path / "out").mkdir()
    ok("pki", "issue", "web", "--dir", ca, "--out", prefix, "--chain")
    crt = tmp_path / "out" / "web.crt"
    chain = tmp_path / "out" / "web-chain.crt"
    assert crt.read_text().count("BEGIN CERTIFICATE") == 1
    assert chain.read_text() == crt.read_text() + (ca / "ca.crt").read_text()
    assert mode(chain) == 0o644 and mode(tmp_path / "out" / "web.key") == 0o600
    before = crt.read_bytes()
    r = xray("pki", "issue", "web", "--dir", ca, "--out", prefix)
    assert r.returncode == 1 and "already exists" in r.stderr, r.stderr
    assert crt.read_bytes() == before
    ok("pki", "issue", "web", "--dir", ca, "--out", prefix, "--force")
    assert crt.read_bytes() != before
    assert sorted(os.listdir(tmp_path / "out")) == ["web-chain.crt", "web.crt", "web.key"]


def test_issue_validity_capped_by_ca(tmp_path):
    d = tmp_path / "pki"
    ok("pki", "init", "--dir", d, "--days", "10")
    r = ok("pki", "issue", "long", "--dir", d, "--days", "365")
    assert "CA's own expiry" in r.stderr
    ca_end = openssl("x509", "-noout", "-enddate", "-in", d / "ca.crt").stdout
    leaf_end = openssl("x509", "-noout", "-enddate", "-in", d / "long.crt").stdout
    assert ca_end == leaf_end


def test_issue_errors(tmp_path, ca):
    r = xray("pki", "issue", "x", "--dir", tmp_path / "nothing")
    assert r.returncode == 1
    assert re.search(r"^xray pki: cannot read .*ca\.crt: No such file", r.stderr, re.M), r.stderr
    # A key that is not the CA's.
    other = tmp_path / "other"
    ok("pki", "init", "--dir", other)
    shutil.copy(other / "ca.key", ca / "ca.key")
    r = xray("pki", "issue", "x", "--dir", ca)
    assert r.returncode == 1 and "does not belong" in r.stderr, r.stderr
    assert not (ca / "x.key").exists() and not (ca / "x.crt").exists()
    # A leaf is not a CA.
    ok("pki", "issue", "leaf", "--dir", other)
    fake = tmp_path / "fake"
    fake.mkdir()
    shutil.copy(other / "leaf.crt", fake / "ca.crt")
    shutil.copy(other / "leaf.key", fake / "ca.key")
    r = xray("pki", "issue", "y", "--dir", fake)
    assert r.returncode == 1 and "not a CA" in r.stderr, r.stderr


# ---- show ----------------------------------------------------------------

def openssl_pubkey_sha256(crt):
    pem = openssl("x509", "-pubkey", "-noout", "-in", crt).stdout
    der = openssl("pkey", "-pubin", "-outform", "DER", input=pem).stdout
    return hashlib.sha256(der).hexdigest()


@pytest.mark.parametrize("rsa", [None, "2048"])
def test_show_identity(ca, rsa):
    args = ["--rsa", rsa] if rsa else []
    ok("pki", "issue", "bob", "--dir", ca, "--san", "DNS:bob.example,IP:10.9.8.7", *args)
    crt = ca / "bob.crt"
    r = ok("pki", "show", crt)
    f = show_fields(r.stdout)
    assert f["subject"] == "CN=bob"
    assert f["issuer"] == "CN=xrayd CA"
    assert f["sans"] == "DNS:bob.example,IP:10.9.8.7"
    assert re.fullmatch(r"[0-9a-f]{64}", f["sha256 pubkey"])
    assert f["sha256 pubkey"] == openssl_pubkey_sha256(crt)
    serial = openssl("x509", "-noout", "-serial", "-in", crt).stdout.decode()
    assert f["serial"] == serial.strip().split("=")[1].lower()
    assert f["key"] == ("RSA 2048" if rsa else "ECDSA P-256")
    assert f["ca"] == "no"
    assert f["extended key usage"] == "serverAuth, clientAuth"
    assert f["key usage"] == ("digitalSignature, keyEncipherment" if rsa else "digitalSignature")
    assert "(expired)" not in r.stdout and "verify:" not in r.stdout
    # The same from standard input, and from DER.
    r2 = ok("pki", "show", "-", input=crt.read_text())
    assert r2.stdout == r.stdout
    der = ca / "bob.der"
    der.write_bytes(openssl("x509", "-outform", "DER", "-in", crt).stdout)
    assert ok("pki", "show", der).stdout == r.stdout


def test_show_ca(ca):
    f = show_fields(ok("pki", "show", ca / "ca.crt").stdout)
    assert f["subject"] == f["issuer"] == "CN=xrayd CA"
    assert f["ca"] == "yes, pathlen 1"
    assert f["key usage"] == "keyCertSign, cRLSign"
    assert f["sha256 pubkey"] == openssl_pubkey_sha256(ca / "ca.crt")


def test_show_rfc4514_names(tmp_path):
    """A certificate made by OpenSSL: names come out as OpenSSL's RFC 2253
    form prints them, and every SAN kind xrayd matches is listed."""
    crt = tmp_path / "ext.crt"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", tmp_path / "ext.key", "-out", crt, "-days", "2",
            "-subj", "/C=US/O=Acme, Inc/OU=Ops/CN=web \"1\"",
            "-addext", "subjectAltName=DNS:a.example,IP:10.1.2.3,URI:spiffe://acme/web,"
                       "email:ops@acme.example")
    f = show_fields(ok("pki", "show", crt).stdout)
    want = openssl("x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", crt)
    assert f["subject"] == want.stdout.decode().strip().split("=", 1)[1]
    assert f["subject"] == r'CN=web \"1\",OU=Ops,O=Acme\, Inc,C=US'
    assert f["sans"] == ("DNS:a.example,IP:10.1.2.3,URI:spiffe://acme/web,"
                         "email:ops@acme.example")


def test_issue_from_foreign_ca(tmp_path):
    """An OpenSSL-made CA with a PrintableString country and a comma in O:
    the issuer name is copied so that OpenSSL chains the leaf to it."""
    d = tmp_path / "foreign"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", d / "ca.key", "-out", d / "ca.crt", "-days", "30",
            "-subj", "/C=US/O=Acme, Inc/CN=Acme Root",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    os.chmod(d / "ca.key", 0o600)
    ok("pki", "issue", "app", "--dir", d)
    openssl("verify", "-CAfile", d / "ca.crt", d / "app.crt")
    f = show_fields(ok("pki", "show", d / "app.crt", "--ca", d / "ca.crt").stdout)
    assert f["issuer"] == r"CN=Acme Root,O=Acme\, Inc,C=US"
    assert f["verify"] == "ok"


def test_show_verify(ca, tmp_path):
    ok("pki", "issue", "carol", "--dir", ca)
    r = ok("pki", "show", ca / "carol.crt", "--ca", ca / "ca.crt")
    assert show_fields(r.stdout)["verify"] == "ok"
    other = tmp_path / "other"
    ok("pki", "init", "--dir", other, "--name", "xrayd CA")
    r = xray("pki", "show", ca / "carol.crt", "--ca", other / "ca.crt")
    assert r.returncode == 1
    v = show_fields(r.stdout)["verify"]
    assert v.startswith("failed: ") and "not correctly signed" in v, r.stdout
    # The identity is still printed in full.
    assert "sha256 pubkey: " in r.stdout


def test_show_chain_file(ca):
    ok("pki", "issue", "dave", "--dir", ca, "--chain")
    r = ok("pki", "show", ca / "dave-chain.crt", "--ca", ca / "ca.crt")
    f = show_fields(r.stdout)
    assert f["subject"] == "CN=dave" and f["verify"] == "ok"
    assert "1 more certificate" in r.stdout
    r = ok("pki", "show", ca / "dave-chain.crt", "--all")
    assert r.stdout.count("sha256 pubkey: ") == 2
    assert "# certificate 2 of 2" in r.stdout


def test_show_expired(ca):
    ok("pki", "issue", "old", "--dir", ca, "--not-before", "2020-01-01",
       "--not-after", "2020-06-01T00:00:00Z")
    crt = ca / "old.crt"
    r = ok("pki", "show", crt)
    f = show_fields(r.stdout)
    assert f["not after"] == "2020-06-01T00:00:00Z (expired)"
    assert f["not before"] == "2020-01-01T00:00:00Z"
    r = xray("pki", "show", crt, "--ca", ca / "ca.crt")
    assert r.returncode == 1
    assert "expired" in show_fields(r.stdout)["verify"], r.stdout
    v = openssl("verify", "-CAfile", ca / "ca.crt", crt, check=False)
    assert v.returncode != 0 and b"expired" in v.stdout + v.stderr


def test_show_errors(tmp_path, ca):
    r = xray("pki", "show", tmp_path / "missing.crt")
    assert r.returncode == 1
    assert re.search(r"^xray pki: cannot read .*missing\.crt: No such file", r.stderr, re.M)
    r = xray("pki", "show", ca / "ca.key")
    assert r.returncode == 1 and "xray pki: no certificate in " in r.stderr, r.stderr
    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    r = xray("pki", "show", junk)
    assert r.returncode == 1 and "xray pki: no certificate in " in r.stderr, r.stderr
    # A truncated certificate: mbedTLS's reason.
    pem = (ca / "ca.crt").read_text().splitlines()
    del pem[3]
    bad = tmp_path / "bad.crt"
    bad.write_text("\n".join(pem) + "\n")
    r = xray("pki", "show", bad)
    assert r.returncode == 1 and "xray pki: cannot parse " in r.stderr, r.stderr


# ---- usage -----------------------------------------------------------------

@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["--bogus"],
    ["pki"],
    ["pki", "frobnicate"],
    ["pki", "init", "--bogus"],
    ["pki", "init", "--days", "0"],
    ["pki", "init", "--days", "ten"],
    ["pki", "init", "--rsa", "1024"],
    ["pki", "init", "extra"],
    ["pki", "init", "--name", ""],
    ["pki", "issue"],
    ["pki", "issue", "a", "b"],
    ["pki", "issue", "a", "--san"],
    ["pki", "issue", "a", "--san", "IP:999.1.1.1"],
    ["pki", "issue", "a", "--san", "DNS:bad name"],
    ["pki", "issue", "a", "--days", "0"],
    ["pki", "issue", "a", "--not-after", "yesterday"],
    ["pki", "issue", "a", "--not-before", "2030-01-01", "--not-after", "2029-01-01"],
    ["pki", "issue", "a", "--days", "3", "--not-after", "2030-01-01"],
    ["pki", "issue", "x" * 65],
    ["pki", "issue", "a/b"],
    ["pki", "show"],
    ["pki", "show", "a", "b"],
    ["pki", "show", "a", "--ca"],
])
def test_usage_errors(tmp_path, args):
    r = xray(*args, cwd=tmp_path)
    assert r.returncode == 2, "xray %s: rc %d, stderr %s" % (args, r.returncode, r.stderr)
    assert r.stderr.startswith(("xray", "usage: xray")), r.stderr
    assert r.stdout == ""
    assert os.listdir(tmp_path) == []


def test_help_and_version():
    for args in (["--help"], ["-h"], ["pki", "--help"], ["pki", "init", "--help"],
                 ["pki", "issue", "--help"], ["pki", "show", "--help"]):
        r = ok(*args)
        assert r.stdout.startswith("usage: xray"), (args, r.stdout)
    assert "pki" in ok("--help").stdout
    for word in ("init", "issue", "show"):
        assert word in ok("pki", "--help").stdout
    r = ok("-V")
    version = open(os.path.join(REPO, "VERSION")).read().strip()
    assert version in r.stdout and "mbedtls" in r.stdout.lower()


# ---- a real TLS handshake ------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@pytest.mark.parametrize("server_rsa", [None, "2048"])
def test_tls_handshake(ca, tmp_path, server_rsa):
    """OpenSSL as both ends, mutual authentication, hostname checked."""
    if not shutil.which("openssl"):
        pytest.skip("openssl(1) is not installed")
    args = ["--rsa", server_rsa] if server_rsa else []
    ok("pki", "issue", "agent", "--dir", ca, "--server", "--san", "DNS:localhost,IP:127.0.0.1",
       *args)
    ok("pki", "issue", "app", "--dir", ca, "--client")
    port = free_port()
    log = open(tmp_path / "s_server.log", "wb")
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", "127.0.0.1:%d" % port, "-www",
         "-cert", ca / "agent.crt", "-key", ca / "agent.key",
         "-CAfile", ca / "ca.crt", "-Verify", "1", "-verify_return_error", "-tls1_2"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_port(port, server), "s_server did not start: %s" % (
            (tmp_path / "s_server.log").read_text(errors="replace"))
        client = subprocess.run(
            ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
             "-CAfile", ca / "ca.crt", "-cert", ca / "app.crt", "-key", ca / "app.key",
             "-verify_return_error", "-verify_hostname", "localhost", "-tls1_2", "-ign_eof"],
            input=b"GET / HTTP/1.0\r\n\r\n", capture_output=True, timeout=30)
        out = client.stdout.decode(errors="replace")
        assert client.returncode == 0, out + client.stderr.decode(errors="replace")
        assert "Verify return code: 0 (ok)" in out, out
        assert "HTTP/1.0 200 ok" in out, out
        # s_server's status page shows the client certificate it verified.
        assert re.search(r"Client certificate.*Subject: CN\s*=\s*app", out, re.S), out
        # A client certificate from another CA is refused.
        ok("pki", "init", "--dir", tmp_path / "other")
        ok("pki", "issue", "intruder", "--dir", tmp_path / "other", "--client")
        bad = subprocess.run(
            ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
             "-CAfile", ca / "ca.crt", "-cert", tmp_path / "other" / "intruder.crt",
             "-key", tmp_path / "other" / "intruder.key", "-tls1_2", "-ign_eof"],
            input=b"GET / HTTP/1.0\r\n\r\n", capture_output=True, timeout=30)
        assert b"HTTP/1.0 200 ok" not in bad.stdout
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
        log.close()


def test_eku_purpose(ca):
    """A --client certificate is good for a client and refused for a server."""
    if not shutil.which("openssl"):
        pytest.skip("openssl(1) is not installed")
    ok("pki", "issue", "localhost", "--dir", ca, "--client")
    v = openssl("verify", "-CAfile", ca / "ca.crt", "-purpose", "sslserver",
                ca / "localhost.crt", check=False)
    assert v.returncode != 0
    v = openssl("verify", "-CAfile", ca / "ca.crt", "-purpose", "sslclient",
                ca / "localhost.crt")
    assert v.returncode == 0
