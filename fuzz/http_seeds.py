#!/usr/bin/env python3
"""Write fuzz/corpus/http/'s hand-made seeds (see fuzz/fuzz_http.c for the
format): a configuration byte, then operations '0'..'7', the sending and
reading ones followed by a two-byte big-endian length.

    python3 fuzz/http_seeds.py fuzz/corpus/http

Seeds are named for what they exercise: valid-* go through, refused-*
are answered by the proxy, bad-* end the connection, eof-* close it,
resume-* and torn-* resume it after the worker died.  Files this script
does not write (crash-*, inputs the fuzzer found that broke a check) are
left alone.
"""

import os
import struct
import sys


def C(data):
    """The client sends data."""
    data = data.encode() if isinstance(data, str) else data
    return b"0" + struct.pack(">H", len(data)) + data


def S(data):
    """The server sends data."""
    data = data.encode() if isinstance(data, str) else data
    return b"1" + struct.pack(">H", len(data)) + data


def RC(n=0xFFFF):
    """The client reads up to n bytes."""
    return b"2" + struct.pack(">H", n)


def RS(n=0xFFFF):
    """The server reads up to n bytes."""
    return b"3" + struct.pack(">H", n)


EC, ES, CRASH, TORN = b"4", b"5", b"6", b"7"

RING8, RING12, RING16, RING20, PARENT = b"\x00", b"\x01", b"\x02", b"\x03", b"\x04"

GET = "GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"
GET_KA10 = "GET /a HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n"
OK5 = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
OK0 = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
CHUNKED_RESP = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
POST_CHUNKED = ("POST /up HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
                "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")


def seeds():
    s = {}
    s["valid-get-keepalive"] = RING8 + C(GET) + RS() + S(OK5) + RC() + C(GET) + RS() + S(OK0) + RC()
    s["valid-get-http10-keepalive"] = RING8 + C(GET_KA10) + RS() + S(
        "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi") + RC()
    s["valid-pipelined"] = RING8 + C(GET + GET.replace("/a", "/b") + GET.replace("/a", "/c")) + RS() + S(
        OK5 + CHUNKED_RESP + OK0) + RC()
    s["valid-pipelined-split"] = RING12 + C(GET[:10]) + C(GET[10:] + GET[:5]) + RS(7) + RS() + C(
        GET[5:]) + RS() + S(OK5[:20]) + RC(3) + S(OK5[20:] + OK0[:4]) + RC() + S(OK0[4:]) + RC()
    s["valid-post-chunked"] = RING8 + C(POST_CHUNKED) + RS() + S(OK0) + RC()
    s["valid-post-chunked-trailer"] = RING8 + C(
        "POST /up HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n") + RS() + S(CHUNKED_RESP) + RC()
    s["valid-post-length-in-pieces"] = RING8 + C(
        "POST /f HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n\r\n01234") + RS() + C(
        "56789") + RS() + S(OK0) + RC()
    s["valid-head-with-response"] = RING8 + C(
        "HEAD /h HTTP/1.1\r\nHost: example.com\r\n\r\n" + GET) + RS() + S(
        "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n" + OK5) + RC()
    s["valid-100-continue"] = RING8 + C(
        "POST /c HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    ) + RS() + S("HTTP/1.1 100 Continue\r\n\r\n") + RC() + C("data") + RS() + S(OK0) + RC()
    s["valid-response-until-eof"] = RING8 + C(GET) + RS() + S(
        "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nthe body runs until the server closes") + ES + RC() + EC
    s["valid-response-http10-eof"] = RING8 + C(
        "GET / HTTP/1.0\r\n\r\n") + RS() + S("HTTP/1.0 200 OK\r\n\r\nold style") + ES + RC()
    s["valid-204-304"] = RING8 + C(GET + GET) + RS() + S(
        "HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n") + RC()
    s["valid-hop-by-hop"] = RING8 + C(
        "GET /x HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
        "Keep-Alive: 5\r\nTE: trailers\r\nUpgrade: websocket\r\nProxy-Authorization: basic x\r\n"
        "X-Internal: secret\r\nX-Kept: yes\r\n\r\n") + RS() + S(
        "HTTP/1.1 200 OK\r\nConnection: X-Resp\r\nX-Resp: 1\r\nKeep-Alive: timeout=5\r\n"
        "Content-Length: 1\r\n\r\n!") + RC()
    s["valid-parent-proxy"] = PARENT + C(GET + "GET http://example.com/abs HTTP/1.1\r\nHost: example.com\r\n\r\n") + RS() + S(
        OK5 + OK0) + RC()
    s["valid-large-body-small-ring"] = RING8 + C(
        "POST /big HTTP/1.1\r\nHost: example.com\r\nContent-Length: 20000\r\n\r\n" + "x" * 9000) + RS(
        3000) + C("y" * 11000) + RS(5000) + RS() + S(
        "HTTP/1.1 200 OK\r\nContent-Length: 12000\r\n\r\n" + "z" * 12000) + RC(100) + RC() + RS()
    s["valid-client-slow-reader"] = RING8 + C(GET + GET) + RS() + S(
        "HTTP/1.1 200 OK\r\nContent-Length: 8000\r\n\r\n" + "a" * 8000 + OK5) + RC(10) + RC(4000) + RC()
    s["refused-method"] = RING8 + C("DELETE /x HTTP/1.1\r\nHost: example.com\r\n\r\n") + RC()
    s["refused-method-after-allowed"] = RING8 + C(
        GET + "PUT /x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc" + GET) + RS() + RC() + S(
        OK5) + RC()
    s["refused-denied-host"] = RING8 + C("GET / HTTP/1.1\r\nHost: denied.example:8080\r\n\r\n") + RC()
    s["refused-denied-subdomain"] = RING8 + C(GET + "GET / HTTP/1.1\r\nHost: WWW.Evil.Example.\r\n\r\n") + RS() + S(
        OK5) + RC()
    s["refused-deny-header"] = RING8 + C(
        "GET / HTTP/1.1\r\nHost: example.com\r\nx-forbidden: 1\r\n\r\n") + RC()
    s["refused-no-host"] = RING8 + C("GET / HTTP/1.1\r\n\r\n") + RC()
    s["refused-cl-and-te"] = RING8 + C(
        "POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        "0\r\n\r\n") + RC()
    s["refused-bad-chunk"] = RING8 + C(
        "POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n") + RC()
    s["refused-oversized-header"] = RING8 + C(
        "GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: " + "v" * 5000 + "\r\n\r\n") + RC()
    s["refused-bad-request-line"] = RING8 + C("GET / HTTP/1.1 junk\r\n\r\n") + RC()
    s["refused-pipelined-deny-header"] = RING8 + C(
        GET + GET + "POST / HTTP/1.1\r\nHost: example.com\r\nX-Forbidden: 1\r\nContent-Length: 2\r\n\r\nab") + RS() + S(
        OK5) + RC() + S(OK0) + RC()
    s["bad-chunk-after-head"] = RING8 + C(
        "POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n") + RS() + C(
        "5\r\nhello\r\nqq\r\n") + RS() + RC()
    s["bad-response-head"] = RING8 + C(GET) + RS() + S("NOT HTTP\r\n\r\n") + RC()
    s["bad-response-oversized"] = RING8 + C(GET) + RS() + S(
        "HTTP/1.1 200 OK\r\nX-Big: " + "w" * 5000 + "\r\n\r\n") + RC()
    s["bad-unsolicited-response"] = RING8 + S(OK0) + RC()
    s["bad-response-chunk"] = RING8 + C(GET) + RS() + S(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nxyz\r\n") + RC()
    s["eof-client-mid-head"] = RING8 + C(GET + "GET /half HTTP/1.1\r\nHo") + EC + RS() + S(OK5) + RC() + ES
    s["eof-server-mid-body"] = RING8 + C(GET) + RS() + S("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc") + ES + RC()
    s["eof-both-clean"] = RING8 + C(GET) + EC + RS() + S(OK5) + ES + RC() + RS()
    s["pipeline-full"] = RING16 + C(GET * 10) + RS() + S(OK0 * 3) + RC() + S(OK0 * 6) + RC() + RS() + S(OK5) + RC()
    s["resume-mid-body"] = RING8 + C(
        "POST /f HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n\r\n0123") + CRASH + RS() + C(
        "456789") + CRASH + RS() + S(OK5[:25]) + CRASH + S(OK5[25:]) + RC() + CRASH
    s["resume-pipelined-refusal"] = RING8 + C(
        GET + "DELETE / HTTP/1.1\r\nHost: example.com\r\n\r\n") + CRASH + RS() + S(OK5[:10]) + CRASH + S(
        OK5[10:]) + CRASH + RC()
    s["resume-after-eof"] = RING8 + C(GET) + RS() + S("HTTP/1.1 200 OK\r\n\r\nuntil close") + ES + CRASH + RC() + EC + CRASH
    s["torn-head"] = RING8 + TORN + C(GET) + RS() + TORN + S(OK5) + RC()
    s["torn-chunked"] = RING12 + TORN + C(POST_CHUNKED[:70]) + TORN + C(POST_CHUNKED[70:]) + RS() + TORN + S(
        CHUNKED_RESP) + TORN + RC()
    s["torn-refusal"] = RING8 + C(GET) + RS() + TORN + C(
        "OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n") + TORN + S(OK5) + RC()
    s["torn-eof"] = RING8 + C(GET) + RS() + S("HTTP/1.1 200 OK\r\n\r\nuntil close") + TORN + ES + RC()
    s["refused-too-many-headers"] = RING8 + C(
        "GET / HTTP/1.1\r\nHost: example.com\r\n" + "a:\r\n" * 130 + "\r\n") + RC()
    s["refused-rewritten-head-too-large"] = PARENT + C(
        "GET /" + "p" * 1900 + " HTTP/1.1\r\nHost: " + "h" * 1900 + "\r\n\r\n") + RC()
    s["valid-head-waits-for-upstream-room"] = RING8 + C(
        "POST /big HTTP/1.1\r\nHost: example.com\r\nContent-Length: 8150\r\n\r\n" + "q" * 8150 + GET) + RS(
        100) + RS(100) + RS() + S(OK0 + OK5) + RC()
    s["valid-host-ipv6"] = RING8 + C("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n") + RS() + S(OK0) + RC()
    # A refusal whose page found the client's ring full is sent once there is room.
    s["refused-after-allowed-full-client"] = RING8 + C(
        GET + "DELETE /x HTTP/1.1\r\nHost: example.com\r\n\r\n") + RS() + S(
        "HTTP/1.1 200 OK\r\nContent-Length: 8100\r\n\r\n" + "b" * 8100) + RC(200) + RC()
    s["bad-response-head-after-full-client"] = RING8 + C(GET + GET) + RS() + S(
        "HTTP/1.1 200 OK\r\nContent-Length: 8100\r\n\r\n" + "c" * 8100 + "garbage\r\n\r\n") + RC(100) + RC()
    # The byte the lenient parser takes for a head's last LF is the head's.
    s["valid-head-ends-cr-x"] = RING8 + C(
        "POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1\r\n\rXY") + RS() + S(OK0) + RC()
    # A head the parser refuses on its last byte is refused.
    s["refused-te-not-chunked"] = RING8 + C(
        "POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip\r\n\r\nabc") + RC()
    # A header name with whitespace is refused.
    s["refused-space-before-colon"] = RING8 + C(
        "POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n") + RC()
    # Host as a server reads it: whitespace off, one of them, a host and port only.
    s["refused-host-trailing-space"] = RING8 + C("GET / HTTP/1.1\r\nHost: denied.example  \r\n\r\n") + RC()
    s["refused-two-hosts"] = RING8 + C(
        "GET / HTTP/1.1\r\nHost: example.com\r\nHost: denied.example\r\n\r\n") + RC()
    s["refused-host-userinfo-parent"] = PARENT + C("GET / HTTP/1.1\r\nHost: ok@denied.example\r\n\r\n") + RC()
    s["refused-host-ipv6-unclosed"] = RING8 + C("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n") + RC()
    # A folded header value is refused.
    s["refused-obs-fold"] = RING8 + C(
        "GET / HTTP/1.1\r\nHost: example.com\r\nX-Long: a\r\n b\r\n\r\n") + RC()
    # The rules match the whole host name, not the log's copy of it.
    s["refused-long-host-subdomain"] = RING8 + C(
        "GET / HTTP/1.1\r\nHost: " + "a" * 60 + ".evil.example\r\n\r\n") + RC()
    # An absolute target names the host the server takes.
    s["refused-absolute-target-denied"] = RING8 + C(
        GET + "GET http://denied.example/ HTTP/1.1\r\nHost: example.com\r\n\r\n") + RS() + S(OK5) + RC()
    s["refused-absolute-target-userinfo"] = PARENT + C(
        "GET http://ok@denied.example/ HTTP/1.1\r\nHost: example.com\r\n\r\n") + RC()
    return s


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "http")
    os.makedirs(out, exist_ok=True)
    for name, data in sorted(seeds().items()):
        with open(os.path.join(out, name), "wb") as fp:
            fp.write(data)
    print("wrote %d seeds to %s" % (len(seeds()), out))


if __name__ == "__main__":
    main()
