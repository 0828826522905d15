"""proxy_peers: the servers and clients of the transparent proxy tests
(t/test_75_proxy.py), run as their own processes inside the test's network
namespaces:

  origin HOST PORT LOG    an HTTP/1.1 origin (threads, keep-alive): GET /blob
                          ?n=N&seed=S[&chunked=1] sends N bytes of stream S;
                          POST /sink reads a body (Content-Length or chunked)
                          and answers {"n":..,"sha256":..}; GET /headers answers
                          the request's headers as JSON; every request line is
                          appended to LOG with the client's port
  tcp HOST PORT           a TCP server: "E" echo until EOF; "D" u64 n u64 seed
                          sends n bytes of stream seed; "U" u64 n reads n bytes
                          and answers their SHA-256
  load HOST JSON          K transfers at once (JSON: a list of {"kind":
                          "cup"|"cdown"|"hup"|"hdown", "port": .., "n": ..,
                          "rate": bytes/s}), each checked by SHA-256; prints
                          one JSON line: a result per transfer

Stream S of n bytes: 64 KiB blocks, block j = u64 j + the first 65528 bytes
of random.Random(S).randbytes(65536), cut at n.  A lost, repeated or moved
block changes the hash.  Standard library only; every wait is bounded."""

import hashlib
import http.client
import json
import random
import socket
import struct
import sys
import threading
import time
import urllib.parse

BLOCK = 65536


def stream(seed, n):
    base = random.Random(seed).randbytes(BLOCK)
    j = 0
    while n > 0:
        b = struct.pack(">Q", j) + base[8:]
        yield b[:min(n, BLOCK)]
        n -= len(b[:min(n, BLOCK)])
        j += 1


def stream_sha(seed, n):
    h = hashlib.sha256()
    for b in stream(seed, n):
        h.update(b)
    return h.hexdigest()


# ---- servers ------------------------------------------------------------------

def origin(host, port, logpath):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    lock = threading.Lock()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def log_error(self, fmt, *args):
            # a request the origin could not parse: what came is evidence
            with lock, open(logpath, "a") as f:
                f.write("%d ERROR %s %r\n" % (self.client_address[1], fmt % args,
                                             getattr(self, "raw_requestline", b"")[:200]))

        def _log(self):
            with lock, open(logpath, "a") as f:
                f.write("%d %s\n" % (self.client_address[1], self.requestline))

        def _send(self, code, body, ctype="application/json"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._log()
            u = urllib.parse.urlparse(self.path)
            q = dict(urllib.parse.parse_qsl(u.query))
            if u.path == "/headers":
                self._send(200, json.dumps([[k, v] for k, v in self.headers.items()]).encode())
            elif u.path == "/blob":
                n, seed = int(q.get("n", "0")), int(q.get("seed", "0"))
                rate = float(q.get("rate", "0"))
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                chunked = q.get("chunked") == "1"
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(n))
                self.end_headers()
                t0 = time.monotonic()
                sent = 0
                for b in stream(seed, n):
                    if chunked:
                        self.wfile.write(b"%x\r\n" % len(b) + b + b"\r\n")
                    else:
                        self.wfile.write(b)
                    sent += len(b)
                    if rate:
                        ahead = sent / rate - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            else:
                self._send(404, b"{}")

        def do_HEAD(self):
            self._log()
            self.send_response(200)
            self.send_header("Content-Length", "1234")
            self.end_headers()

        def do_POST(self):
            self._log()
            h = hashlib.sha256()
            n = 0
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    left = size
                    while left:
                        b = self.rfile.read(min(left, BLOCK))
                        if not b:
                            raise ConnectionError("body cut short")
                        h.update(b)
                        n += len(b)
                        left -= len(b)
                    self.rfile.readline()
            else:
                left = int(self.headers.get("Content-Length", "0"))
                while left:
                    b = self.rfile.read(min(left, BLOCK))
                    if not b:
                        raise ConnectionError("body cut short")
                    h.update(b)
                    n += len(b)
                    left -= len(b)
            self._send(200, json.dumps({"n": n, "sha256": h.hexdigest()}).encode())

        do_DELETE = do_GET
        do_PUT = do_POST

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    # socketserver's default backlog of 5 overflows when the tests open 25
    # connections at once on a busy machine; the dropped handshakes end as
    # resets that would look like the proxy's doing.
    ThreadingHTTPServer.request_queue_size = 256
    ThreadingHTTPServer((host, port), H).serve_forever()


def tcp_server(host, port):
    def serve(c):
        try:
            kind = c.recv(1)
            if kind == b"E":
                while True:
                    b = c.recv(BLOCK)
                    if not b:
                        break
                    c.sendall(b)
            elif kind == b"D":
                hdr = b""
                while len(hdr) < 16:
                    hdr += c.recv(16 - len(hdr))
                n, seed = struct.unpack(">QQ", hdr)
                for b in stream(seed, n):
                    c.sendall(b)
            elif kind == b"U":
                hdr = b""
                while len(hdr) < 8:
                    hdr += c.recv(8 - len(hdr))
                (n,) = struct.unpack(">Q", hdr)
                h = hashlib.sha256()
                got = 0
                while got < n:
                    b = c.recv(min(BLOCK, n - got))
                    if not b:
                        break
                    h.update(b)
                    got += len(b)
                c.sendall(h.digest() if got == n else b"short")
            c.shutdown(socket.SHUT_WR)
            c.settimeout(30)
            while c.recv(BLOCK):
                pass
        except OSError:
            pass
        finally:
            c.close()

    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    ls = socket.socket(fam)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(512)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


# ---- the load client ------------------------------------------------------------

def _drain(read, rate=0, t0=0.0):
    """Read to the end in BLOCKs (no faster than rate bytes/s from t0 when
    rate is set): (bytes, SHA-256 hex)."""
    h = hashlib.sha256()
    got = 0
    while True:
        b = read(BLOCK)
        if not b:
            break
        h.update(b)
        got += len(b)
        if rate:
            ahead = got / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    return got, h.hexdigest()


def _paced(gen, rate, t0):
    sent = 0
    for b in gen:
        yield b
        sent += len(b)
        if rate:
            ahead = sent / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)


def _one(host, spec, i):
    kind, port, n, rate = spec["kind"], spec["port"], spec["n"], spec.get("rate", 0)
    seed = 1000 + i
    t0 = time.monotonic()
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    if kind in ("cup", "cdown"):
        s = socket.socket(fam)
        s.settimeout(120)
        s.connect((host, port))
        if kind == "cup":
            s.sendall(b"U" + struct.pack(">Q", n))
            for b in _paced(stream(seed, n), rate, t0):
                s.sendall(b)
            got = b""
            while len(got) < 32:
                b = s.recv(32 - len(got))
                if not b:
                    break
                got += b
            s.close()
            ok = got.hex() == stream_sha(seed, n)
            return {"kind": kind, "ok": ok, "n": n, "why": "" if ok else "server saw %r" % got[:8]}
        s.sendall(b"D" + struct.pack(">QQ", n, seed))
        got, sha = _drain(s.recv, rate, t0)
        s.close()
        ok = got == n and sha == stream_sha(seed, n)
        return {"kind": kind, "ok": ok, "n": got, "why": "" if ok else "got %d of %d" % (got, n)}
    c = http.client.HTTPConnection(host, port, timeout=120)
    if kind == "hup":
        c.request("POST", "/sink", body=_paced(stream(seed, n), rate, t0),
                  headers={"Content-Type": "application/octet-stream"}, encode_chunked=True)
        r = c.getresponse()
        body = json.loads(r.read())
        c.close()
        ok = r.status == 200 and body["n"] == n and body["sha256"] == stream_sha(seed, n)
        return {"kind": kind, "ok": ok, "n": body.get("n"), "why": "" if ok else str(body)}
    chunked = "1" if i % 2 else "0"
    c.request("GET", "/blob?n=%d&seed=%d&chunked=%s&rate=%d" % (n, seed, chunked, rate))
    r = c.getresponse()
    got, sha = _drain(r.read)
    c.close()
    ok = r.status == 200 and got == n and sha == stream_sha(seed, n)
    return {"kind": kind, "ok": ok, "n": got, "why": "" if ok else "got %d of %d" % (got, n)}


def load(host, specs):
    res = [None] * len(specs)

    def run(i):
        try:
            res[i] = _one(host, specs[i], i)
        except Exception as e:  # noqa: BLE001 - reported, not raised
            res[i] = {"kind": specs[i]["kind"], "ok": False, "why": "%s: %s" % (type(e).__name__, e)}

    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(specs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    print(json.dumps([r or {"ok": False, "why": "not finished"} for r in res]), flush=True)


def main(argv):
    if argv[0] == "origin":
        origin(argv[1], int(argv[2]), argv[3])
    elif argv[0] == "tcp":
        tcp_server(argv[1], int(argv[2]))
    elif argv[0] == "load":
        load(argv[1], json.loads(argv[2]))
    else:
        raise SystemExit("unknown command " + argv[0])


if __name__ == "__main__":
    main(sys.argv[1:])
