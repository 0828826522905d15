#!/usr/bin/env python3
"""Write fuzz/corpus/stage/'s hand-made seeds (see fuzz/fuzz_stage.c for
the input format): a configuration byte, pending cleartext, operations.

    python3 fuzz/stage_seeds.py fuzz/corpus/stage
"""
import sys
from pathlib import Path

NONE, PASS, HOLD = 0, 1, 2


def cfg(filt=NONE, gcm=False, buf=0, bigseq=False, pending=(None, None)):
    b = filt | (4 if gcm else 0) | (buf << 3) | (32 if bigseq else 0)
    out = b""
    for d, p in enumerate(pending):
        if p is not None:
            data, raw = p
            b |= 64 << d
            out += bytes([len(data), raw]) + data
    return bytes([b]) + out


def n2(n):
    return bytes([n >> 8 & 255, n & 255])


def _send(op, data, rs=0, quiet=False):
    return bytes([op | (128 if quiet else 0)]) + n2(len(data)) + bytes([rs]) + data


def C(data, rs=0, quiet=False):  # the client seals data as records of size(rs)
    return _send(0, data, rs, quiet)


def U(data, rs=0, quiet=False):
    return _send(1, data, rs, quiet)


def CG(data):  # raw garbage from the client
    return bytes([2]) + n2(len(data)) + data


def UG(data):
    return bytes([3]) + n2(len(data)) + data


def CT(data, at):  # a record with one bit flipped (bit at%8 of byte at/8)
    return bytes([4]) + n2(len(data)) + n2(at) + data


def UT(data, at):
    return bytes([5]) + n2(len(data)) + n2(at) + data


CLOSE_NOTIFY, FATAL, HANDSHAKE, WARNING = 0, 1, 2, 3


def CC(k):
    return bytes([6, k])


def UC(k):
    return bytes([7, k])


def CR(n=65535):  # the client reads up to n bytes
    return bytes([8]) + n2(n)


def UR(n=65535):
    return bytes([9]) + n2(n)


CF, UF, CRASH, TORN, EC, EU = (bytes([x]) for x in (10, 11, 12, 13, 14, 15))

LINES = b"".join(b"line %d of the stream\n" % i for i in range(400))
BULK = bytes((i * 7 + i // 251) & 255 for i in range(30000))

SEEDS = {
    "valid-echo": cfg() + C(b"hello\n") + UR() + U(b"world\n") + CR(),
    "valid-gcm-bigseq": cfg(PASS, gcm=True, bigseq=True) + C(b"x" * 100, 3) + UR(7) + UR()
    + U(b"y" * 50, 1) + CR(),
    "valid-small-records": cfg(PASS) + C(LINES[:3000], 4) + UR(1000) + UR() + U(LINES[:500], 2)
    + CR(30) + CR(),
    "valid-bulk-ring-full": cfg(NONE, buf=0) + C(BULK) + C(BULK[:20000], 6) + UR(5000) + UR(20000)
    + UR() + UR(),
    "valid-quiet-then-event": cfg(PASS) + C(b"a\n", 0, True) + C(b"b\n", 0, True) + EC + UR(),
    "valid-pending": cfg(PASS, pending=((b"PENDING-UP\n", 4), (b"pending-down\n", 0)))
    + C(b"after\n") + UR() + CR(),
    "valid-hold-lines": cfg(HOLD) + C(b"abc", 0) + UR() + C(b"def\nghi", 1) + UR() + C(b"\n")
    + UR() + U(b"partial") + CR() + U(b" done\n") + CR(),
    "valid-hold-pending": cfg(HOLD, pending=((b"raw-then-held", 4), None)) + C(b" line\n") + UR(),
    "eof-both": cfg(PASS) + C(b"bye\n") + CF + UR() + U(b"ok\n") + UF + CR(),
    "eof-notify": cfg(NONE) + C(b"last words") + CC(CLOSE_NOTIFY) + C(b"never seen") + UR()
    + U(b"reply") + UC(CLOSE_NOTIFY) + CR(),
    "eof-hold-discard": cfg(HOLD) + C(b"whole\nheld tail") + CF + UR(),
    "eof-ring-full": cfg(NONE) + C(BULK) + CF + UR(100) + UR(40000) + UR(),
    "resume-idle": cfg(PASS) + C(b"one\n") + UR() + CRASH + C(b"two\n") + UR() + U(b"back\n")
    + CRASH + CR(),
    "resume-ring-full": cfg(NONE, gcm=True) + C(BULK) + C(BULK[:9000], 5) + UR(3000) + CRASH
    + UR(7000) + CRASH + UR() + UR(),
    "resume-partial-out": cfg(PASS, buf=1) + C(BULK, 7) + C(BULK[:25000], 0) + CRASH + UR(100)
    + CRASH + UR() + UR(),
    "resume-after-eof": cfg(NONE) + C(b"data") + CF + CRASH + UR() + U(b"more") + UF + CRASH
    + CR(),
    # close_notify read while cleartext before it waits for room in OUT:
    # the record says "closed", a replacement skips that cleartext.
    "crash-notify-before-cleartext-out": cfg(NONE) + C(BULK[:20000])
    + C(BULK[:20000], 0, True) + CC(CLOSE_NOTIFY) + CRASH + UR() + UR(),
    # A filter holds cleartext of small records: their ciphertext fills
    # IN (pinned at in_commit) with a partial record at its end, which
    # can never complete; the connection neither goes on nor closes.
    "crash-hold-fills-in-ring": cfg(HOLD) + C(b"x" * 2000, 1) + CF + UR(),
    "resume-hold-refused": cfg(HOLD) + C(b"no newline yet") + CRASH + UR(),
    "resume-hold-ok": cfg(HOLD) + C(b"line\n") + UR() + CRASH + C(b"next\n") + UR(),
    "torn-process": cfg(PASS) + TORN + C(b"torn once\n") + UR() + TORN + U(b"and back\n") + CR(),
    "torn-ring-full": cfg(NONE) + C(BULK) + C(BULK[:20000], 6) + UR(4000) + TORN + UR(9000) + TORN + UR() + UR(),
    "torn-eof": cfg(NONE) + C(b"x") + TORN + CF + UR(),
    "bad-garbage-client": cfg(PASS) + C(b"good\n") + CG(b"GET / HTTP/1.1\r\n\r\n") + C(b"bad\n")
    + UR(),
    "bad-garbage-upstream": cfg(NONE) + U(b"good") + UG(bytes([23, 3, 3, 0, 40]) + b"z" * 40)
    + U(b"never") + CR(),
    "bad-tampered-body": cfg(PASS) + C(b"fine\n") + CT(b"evil payload\n", 8 * 20) + UR(),
    "bad-tampered-header": cfg(NONE, gcm=True) + UT(b"evil", 8 * 3 + 1) + U(b"x" * 100) + CR(),
    "bad-handshake": cfg(NONE) + C(b"before") + CC(HANDSHAKE) + C(b"after") + UR(),
    "bad-fatal-alert": cfg(PASS) + U(b"before\n") + UC(FATAL) + CR(),
    "bad-warning-alert": cfg(NONE) + C(b"a") + CC(WARNING) + UR(),
    "bad-truncated": cfg(NONE) + C(b"whole") + CG(bytes([23, 3, 3, 0, 99]) + b"short") + CF + UR(),
    "bad-oversize": cfg(NONE) + UG(bytes([23, 3, 3, 0x48, 0x01]) + b"...") + CR(),
}


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus/stage")
    out.mkdir(parents=True, exist_ok=True)
    for name, data in SEEDS.items():
        assert len(data) <= 65536, name
        (out / name).write_bytes(data)
    print("wrote %d seeds to %s" % (len(SEEDS), out))


if __name__ == "__main__":
    main()
