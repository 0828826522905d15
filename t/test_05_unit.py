"""C unit tests and the fuzz corpus, run as ordinary tests (STYLE 19, 21).

Every objs/t/unit/test_* binary (built by `make` from t/unit/test_*.c) is
one test here: it must exit 0 and print a complete TAP plan with every
line "ok".  Then fuzz/corpus/conf/ is replayed through
objs/fuzz/fuzz_conf_replay, the fuzz target linked with a plain driver, so
an input that once crashed the configuration loader stays fixed; and
fuzz/corpus/record/, fuzz/corpus/gcm/, fuzz/corpus/proto/,
fuzz/corpus/http/ and fuzz/corpus/stage/ through fuzz/fuzz_record.c,
fuzz/fuzz_gcm.c, fuzz/fuzz_proto.c, fuzz/fuzz_http.c and
fuzz/fuzz_stage.c, which this file compiles itself with the Makefile's
flags until the Makefile builds them.

Binaries are taken from $XRAYD_OBJS (default: <repo>/objs).
"""

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OBJS = Path(os.environ.get("XRAYD_OBJS") or REPO / "objs").resolve()
UNIT_DIR = OBJS / "t" / "unit"
CORPUS = REPO / "fuzz" / "corpus" / "conf"
REPLAY = OBJS / "fuzz" / "fuzz_conf_replay"
RECORD_CORPUS = REPO / "fuzz" / "corpus" / "record"
GCM_CORPUS = REPO / "fuzz" / "corpus" / "gcm"
PROTO_CORPUS = REPO / "fuzz" / "corpus" / "proto"
HTTP_CORPUS = REPO / "fuzz" / "corpus" / "http"
STAGE_CORPUS = REPO / "fuzz" / "corpus" / "stage"
CLIENT_CORPUS = REPO / "fuzz" / "corpus" / "client"

TIMEOUT = 600


def _unit_binaries():
    srcs = sorted((REPO / "t" / "unit").glob("test_*.c"))
    return [s.stem for s in srcs]


def _check_tap(out):
    """Parse TAP output; return (planned, results, problems)."""
    problems = []
    plan = re.search(r"^1\.\.(\d+)$", out, re.M)
    if plan is None:
        return 0, [], ["no TAP plan line"]
    planned = int(plan.group(1))
    results = re.findall(r"^(ok|not ok) (\d+) - (\S+)", out, re.M)
    if len(results) != planned:
        problems.append("plan says %d tests, %d ran" % (planned, len(results)))
    for i, (status, num, name) in enumerate(results, 1):
        if int(num) != i:
            problems.append("test %s numbered out of order" % num)
        if status != "ok":
            problems.append("not ok: " + name)
    return planned, results, problems


# The record layer runs once more on libsodium's AES-GCM, the fallback for
# CPUs without VAES, so both implementations stay proved against mbedTLS.
UNIT_RUNS = [(n, None) for n in _unit_binaries()] + [("test_record", "sodium")]


@pytest.mark.parametrize("name,aes", UNIT_RUNS,
                         ids=[n + ("-aes-" + a if a else "") for n, a in UNIT_RUNS])
def test_unit(name, aes):
    exe = UNIT_DIR / name
    if not exe.exists():
        pytest.fail("%s is not built (run make)" % exe)
    env = dict(os.environ, XRAYD_OBJS=str(OBJS))
    if aes:
        env["XRAYD_AES"] = aes
    p = subprocess.run([str(exe)], cwd=str(REPO), env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=TIMEOUT, text=True,
                       errors="replace")
    planned, results, problems = _check_tap(p.stdout)
    report = "%s exited %d\n--- stdout\n%s--- stderr\n%s" % (
        name, p.returncode, p.stdout, p.stderr[-4000:])
    assert p.returncode == 0, report
    assert planned > 0, report
    assert not problems, "\n".join(problems) + "\n" + report


def test_every_unit_source_is_built():
    """A t/unit/test_*.c that the Makefile did not build is a lost test."""
    missing = [n for n in _unit_binaries() if not (UNIT_DIR / n).exists()]
    assert not missing, "not built: %s" % missing


def test_fuzz_corpus_replays():
    files = sorted(p for p in CORPUS.iterdir() if p.is_file())
    assert files, "empty corpus: %s" % CORPUS
    if not REPLAY.exists():
        pytest.fail("%s is not built (run make)" % REPLAY)
    failed = _replay_each(REPLAY, files)
    assert not failed, "\n".join(failed)


def _make_vars():
    """CC, CFLAGS, LDFLAGS and LIBS as ./configure wrote them."""
    makefile = REPO / "Makefile"
    if not makefile.exists():
        pytest.fail("%s is missing (run ./configure)" % makefile)
    found = {}
    for line in makefile.read_text().splitlines():
        m = re.match(r"^(CC|CFLAGS|LDFLAGS|LIBS)\s*=(.*)$", line)
        if m and m.group(1) not in found:
            found[m.group(1)] = m.group(2).strip()
    missing = {"CC", "CFLAGS", "LDFLAGS", "LIBS"} - set(found)
    assert not missing, "Makefile lacks %s" % sorted(missing)
    return found


def _replay_each(replay, files):
    """Run a replay binary once per file, so a crash names its input."""
    failed = []
    for f in files:
        p = subprocess.run([str(replay), str(f)], cwd=str(REPO),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=60, text=True, errors="replace")
        if p.returncode != 0 or "replayed 1 inputs" not in p.stdout:
            failed.append("%s: exit %d\n%s%s" % (f.name, p.returncode, p.stdout,
                                                 p.stderr[-2000:]))
    return failed


def _build_replay(target, tmp_path):
    """fuzz/<target>.c + fuzz/replay.c, built as the Makefile builds
    fuzz_conf_replay (same compiler and flags, against objs/libxrayd.a)."""
    lib = OBJS / "libxrayd.a"
    if not lib.exists():
        pytest.fail("%s is not built (run make)" % lib)
    v = _make_vars()
    exe = tmp_path / (target + "_replay")
    # The Makefile's -I paths are relative to the top directory; objs may
    # be elsewhere ($XRAYD_OBJS), so name it explicitly first.
    cmd = (shlex.split(v["CC"]) + ["-I" + str(OBJS)] + shlex.split(v["CFLAGS"])
           + shlex.split(v["LDFLAGS"])
           + ["-o", str(exe), "fuzz/%s.c" % target, "fuzz/replay.c", str(lib)]
           + shlex.split(v["LIBS"]))
    p = subprocess.run(cmd, cwd=str(REPO), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=300, text=True,
                       errors="replace")
    assert p.returncode == 0, "%s\n%s%s" % (" ".join(cmd), p.stdout, p.stderr)
    return exe


def test_fuzz_record_corpus_replays(tmp_path):
    """fuzz/fuzz_record.c must get through every committed record input."""
    files = sorted(p for p in RECORD_CORPUS.iterdir() if p.is_file())
    assert files, "empty corpus: %s" % RECORD_CORPUS
    failed = _replay_each(_build_replay("fuzz_record", tmp_path), files)
    assert not failed, "\n".join(failed)


def test_fuzz_gcm_corpus_replays(tmp_path):
    """fuzz/fuzz_gcm.c: on every committed input the vector AES-256-GCM
    seals as libsodium does, opens what it sealed and refuses a flipped
    bit (a no-op on a CPU without VAES/VPCLMULQDQ)."""
    files = sorted(p for p in GCM_CORPUS.iterdir() if p.is_file())
    assert files, "empty corpus: %s" % GCM_CORPUS
    failed = _replay_each(_build_replay("fuzz_gcm", tmp_path), files)
    assert not failed, "\n".join(failed)


def test_fuzz_proto_corpus_replays(tmp_path):
    """fuzz/fuzz_proto.c: every committed stream decodes the same whole,
    byte by byte and in chunks, and every frame it accepts encodes back to
    exactly its bytes."""
    files = sorted(p for p in PROTO_CORPUS.iterdir() if p.is_file())
    assert files, "empty corpus: %s" % PROTO_CORPUS
    failed = _replay_each(_build_replay("fuzz_proto", tmp_path), files)
    assert not failed, "\n".join(failed)


def test_fuzz_http_corpus_replays(tmp_path):
    """fuzz/fuzz_http.c: the proxy's HTTP handler, driven as the engine
    drives it (sends, reads, closes, crashes and resumptions), keeps every
    invariant on every committed connection: what goes upstream obeys the
    rules and parses, each response reaches the client framed as the
    proxy says, refusals go out in turn, and a resumed step does the
    same again."""
    files = sorted(p for p in HTTP_CORPUS.iterdir() if p.is_file())
    assert files, "empty corpus: %s" % HTTP_CORPUS
    failed = _replay_each(_build_replay("fuzz_http", tmp_path), files)
    assert not failed, "\n".join(failed)


def test_fuzz_stage_corpus_replays(tmp_path):
    """fuzz/fuzz_stage.c: the cleartext stage with TLS on both ends, driven
    as the engine drives it (sends, garbage and tampered records, reads,
    closes, crashes and resumptions), keeps every invariant on every
    committed connection: each peer opens one unbroken TLS stream whose
    cleartext is a prefix of what the other sent before any bad record,
    close_notify comes before a FIN, and a resumption goes on with no gap
    or repeat."""
    files = sorted(p for p in STAGE_CORPUS.iterdir() if p.is_file())
    assert files, "empty corpus: %s" % STAGE_CORPUS
    failed = _replay_each(_build_replay("fuzz_stage", tmp_path), files)
    assert not failed, "\n".join(failed)


def test_fuzz_client_conf_corpus_replays(tmp_path):
    """fuzz/fuzz_client_conf.c: libxray's client file parser takes every
    committed file (good, unknown keys, lists, nested mappings, aliases,
    two documents) without a crash, sets only strings in their buffers,
    and says what is wrong when it refuses."""
    files = sorted(p for p in CLIENT_CORPUS.iterdir() if p.is_file())
    assert files, "empty corpus: %s" % CLIENT_CORPUS
    failed = _replay_each(_build_replay("fuzz_client_conf", tmp_path), files)
    assert not failed, "\n".join(failed)


def test_fuzz_helper_msg_corpus_replays(tmp_path):
    """fuzz/fuzz_helper_msg.c: what libxray reads from its helper (every
    answer, and packets with a bad version, type, family, text length or
    trailing bytes) decodes or is refused without a crash, re-encodes to
    its own bytes, and a refused packet leaves no descriptor open."""
    files = sorted(p for p in (REPO / "fuzz" / "corpus" / "hmsg").iterdir() if p.is_file())
    assert len(files) >= 10, files
    failed = _replay_each(_build_replay("fuzz_helper_msg", tmp_path), files)
    assert not failed, "\n".join(failed)
