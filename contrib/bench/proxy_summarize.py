#!/usr/bin/env python3
"""proxy_summarize.py RAW ENV LOGDIR - tables for contrib/bench/proxy_bench.sh.

RAW has one measurement per line: "RUN VARIANT METRIC VALUE" (VALUE may be NA).
Values are medians over the runs, (N%) the spread (max-min)/median; ratios are the
median of the per-run ratios. The resumption figures are medians too, with the worst
run beside them; counts (survivors, bytes lost or duplicated) are summed or taken at
their worst over the runs. LOGDIR holds the logs; xrayd's error logs are digested."""
import collections, glob, os, re, sys

from benchstats import Stats, fmt, read_raw

raw_path, env_path, log_dir = sys.argv[1:4]
data, _ = read_raw(raw_path)
st = Stats(data)
med, cell, ratio, vals = st.med, st.cell, st.ratio, st.vals
runs = st.runs


def has(v, m):
    return bool(vals(v, m))


def worst(v, m, hi=True):
    x = vals(v, m)
    return (max(x) if hi else min(x)) if x else None


def verdict(ok):
    if ok == "info":
        return ""
    return "NA" if ok is None else ("PASS" if ok else "FAIL")


LABEL = {
    "direct": "direct (no REDIRECT)",
    "xrayd_http": "xrayd mode http",
    "xrayd_http_nocont": "xrayd http, continuity off",
    "xrayd_circuit": "xrayd mode circuit",
    "haproxy_http": "haproxy mode http, orig dst",
    "haproxy_tcp": "haproxy mode tcp, orig dst",
    "tinyproxy": "tinyproxy transparent",
    "socat": "socat, fixed target (ref)",
}

out = []
w = out.append
w("=" * 108)
w("xrayd transparent proxy benchmark - medians over %d run(s); (N%%) = spread (max-min)/median" % len(runs))
if os.path.exists(env_path):
    for line in open(env_path):
        w("  " + line.rstrip())
w("")

# ---------------------------------------------------------------- 1. HTTP
hv = [v for v in LABEL if has(v, "rps") or (v, "rps") in data]
hap_ref = None
if hv:
    w("1. HTTP through REDIRECT: wrk, 1 KiB static file from nginx (req/s higher = better)")
    w("%-29s %16s %8s %8s %7s %8s %10s %8s %7s %6s" % (
        "case", "req/s", "p50 ms", "p99 ms", "errors", "read err", "CPU-us/req", "/direct", "check", "reuse"))
    for v in hv:
        chk, reuse = vals(v, "http_check"), vals(v, "http_reuse")
        ce = sum(vals(v, "errors")) if has(v, "errors") else None
        cr = sum(vals(v, "read_errors")) if has(v, "read_errors") else None
        w("%-29s %16s %8s %8s %7s %8s %10s %8s %7s %6s" % (
            LABEL[v], cell(v, "rps", 0), fmt(med(v, "p50_ms")), fmt(med(v, "p99_ms")),
            "NA" if ce is None else int(ce), "NA" if cr is None else int(cr),
            "-" if v == "direct" else fmt(med(v, "cpu_us_per_req"), 1),
            "-" if v == "direct" else fmt(ratio(v, "direct", "rps")),
            "NA" if not chk else "%d/%d" % (sum(chk), len(chk)),
            "NA" if not reuse else "%d/%d" % (sum(reuse), len(reuse))))
    w("  errors = wrk connect/write/timeout errors + non-2xx responses, summed over runs; read err = the")
    w("  proxy or server closed a connection wrk was using (tinyproxy does after every response: no client")
    w("  keep-alive). check = runs in which curl got 200 + the file's exact bytes twice on one connection;")
    w("  reuse = runs in which the second request went on the first connection. CPU-us/req = utime+stime")
    w("  of the proxy's process tree during the wrk run / requests. /direct = req/s ratio to direct.")
    ok_http = [x for x in vals("haproxy_http", "http_check")]
    if ok_http and all(ok_http):
        hap_ref = "haproxy_http"
        w("  haproxy mode http forwards to the original destination (server 0.0.0.0:0): yes, so it is the")
        w("  reference for xrayd mode http; haproxy mode tcp is shown as well.")
    elif has("haproxy_tcp", "rps"):
        hap_ref = "haproxy_tcp"
        w("  haproxy mode http failed its check: the reference for xrayd is haproxy mode tcp.")
    w("")
    pairs = [(a, b) for a in ("xrayd_http", "xrayd_http_nocont", "xrayd_circuit")
             for b in ("haproxy_http", "haproxy_tcp", "tinyproxy", "socat") if has(a, "rps") and has(b, "rps")]
    if pairs:
        w("%-38s %10s %10s %12s" % ("ratio (median per run)", "req/s", "p99", "CPU-us/req"))
        for a, b in pairs:
            w("%-38s %10s %10s %12s" % ("%s / %s" % (a, b), fmt(ratio(a, b, "rps")), fmt(ratio(a, b, "p99_ms")),
                                         fmt(ratio(a, b, "cpu_us_per_req"))))
        w("  (req/s: higher is better for xrayd; p99 and CPU-us/req: lower is better)")
        w("")

# ---------------------------------------------------------------- 2. throughput
tv = [v for v in LABEL if (v, "gbps") in data]
if tv:
    w("2. Circuit throughput through REDIRECT: iperf3, 1 stream")
    w("%-29s %15s %13s %9s %12s %12s" % ("case", "Gbit/s", "CPU-s/GB", "/direct", "/haproxy_tcp", "/socat"))
    for v in tv:
        w("%-29s %15s %13s %9s %12s %12s" % (
            LABEL[v], cell(v, "gbps"), "-" if v == "direct" else cell(v, "cpu_s_per_gb", 3),
            "-" if v == "direct" else fmt(ratio(v, "direct", "gbps")),
            "-" if v in ("direct", "haproxy_tcp") else fmt(ratio(v, "haproxy_tcp", "gbps")),
            "-" if v in ("direct", "socat") else fmt(ratio(v, "socat", "gbps"))))
    if has("xrayd_circuit", "cpu_s_per_gb"):
        w("  CPU-s/GB ratio xrayd/haproxy_tcp: %s, xrayd/socat: %s (lower is better)" % (
            fmt(ratio("xrayd_circuit", "haproxy_tcp", "cpu_s_per_gb")),
            fmt(ratio("xrayd_circuit", "socat", "cpu_s_per_gb"))))
    w("  CPU-s/GB = utime+stime of the proxy's process tree (master + workers) during the run / GB received.")
    w("")

# ---------------------------------------------------------------- 3. resumption
R = "resume"
if (R, "survived") in data or (R, "conns") in data:
    w("3. Resumption: live connections through xrayd mode circuit, kill -9 of the busiest worker")
    def line(name, m, unit="", nd=1, hi=True):
        w("  %-58s %14s %10s %s" % (name, cell(R, m, nd), fmt(worst(R, m, hi), nd), unit))
    w("  %-58s %14s %10s" % ("", "median", "worst run"))
    line("connections up (of N_LIVE)", "conns", nd=0, hi=False)
    line("connections of the killed worker (ss, by pid)", "victim_conns", nd=0, hi=False)
    line("survived (echoing after the kill, stream exact)", "survived", nd=0, hi=False)
    line("closed by the far side", "closed", nd=0)
    line("bytes lost (skipped pings + never echoed)", "lost_bytes", "B", nd=0)
    line("bytes duplicated", "dup_bytes", "B", nd=0)
    line("bytes corrupt", "corrupt_bytes", "B", nd=0)
    line("pings dropped by the client: window full / slot late", "pings_skipped", nd=0)
    line("  (late: the client or the path stalled > PING_MS)", "pings_late", nd=0)
    line("killed worker's conns: gap across the kill, max", "v_gap_kill_max_ms", "ms")
    line("killed worker's conns: gap across the kill, p99", "v_gap_kill_p99_ms", "ms")
    line("killed worker's conns: kill -> first echo, max", "v_kill_first_max_ms", "ms")
    line("killed worker's conns: ping round trip after kill, max", "v_rtt_post_max_ms", "ms")
    line("other worker's conns: gap across the kill, max", "o_gap_kill_max_ms", "ms")
    line("other worker's conns: gap across the kill, p99", "o_gap_kill_p99_ms", "ms")
    line("reference: gap across an instant 1 s before, max", "gap_ref_max_ms", "ms")
    line("reference: gap across an instant 1 s before, p99", "gap_ref_p99_ms", "ms")
    line("replacement's log: connections taken over", "takeover_conns", nd=0, hi=False)
    line("replacement's log: took over in", "takeover_ms", "ms")
    line("xrayd CPU-us per ping (master + workers, whole run)", "cpu_us_per_ping", "us", nd=1)
    w("  The gap of a connection = first echo after the instant - last echo before it; with a ping every")
    w("  PING_MS it is ~PING_MS when nothing stalls (see the reference rows). 'survived' counts connections")
    w("  that echoed after the kill and whose echoed stream equals the sent one byte for byte. The other")
    w("  worker's connections are not touched by the kill: a gap there as large means the machine stalled.")
    w("")
refs = [v for v in ("direct", "xrayd_circuit", "haproxy_tcp") if ("ping_" + v, "conns") in data
        or ("ping_" + v, "survived") in data]
if refs:
    w("   the same load without a kill (reference; gap across an instant, medians over runs)")
    w("   %-27s %7s %9s %12s %12s %14s %12s" % ("path", "conns", "survived", "gap p99 ms", "gap max ms",
                                             "RTT max ms", "CPU-us/ping"))
    for v in refs:
        t = "ping_" + v
        w("   %-27s %7s %9s %12s %12s %14s %12s" % (
            LABEL[v], fmt(med(t, "conns"), 0), fmt(med(t, "survived"), 0), cell(t, "gap_ref_p99_ms", 1),
            cell(t, "gap_ref_max_ms", 1), cell(t, "rtt_post_max_ms", 1),
            "-" if v == "direct" else fmt(med(t, "cpu_us_per_ping"), 1)))
    w("   RTT max = the longest ping round trip in the last RESUME_POST s; CPU-us/ping = the proxy tree's")
    w("   utime+stime over the run / pings echoed (each ping crosses the proxy twice).")
    w("")

# ---------------------------------------------------------------- aims
aims = []
if hv:
    ref = hap_ref or "haproxy_http"
    r = ratio("xrayd_http", ref, "rps")
    p = ratio("xrayd_http", ref, "p99_ms")
    chk = vals("xrayd_http", "http_check")
    aims.append(("HTTP req/s xrayd http / %s" % ref, med("xrayd_http", "rps"), med(ref, "rps"), r,
                 ">= 1.2x", None if r is None else r >= 1.2))
    aims.append(("HTTP p99 xrayd http / %s" % ref, med("xrayd_http", "p99_ms"), med(ref, "p99_ms"), p,
                 "<= 1.0x", None if p is None else p <= 1.0))
    aims.append(("HTTP check (exact bytes, reuse)", None, None, None, "every run",
                 None if not chk else all(chk) and all(vals("xrayd_http", "http_reuse"))))
if tv:
    r = ratio("xrayd_circuit", "haproxy_tcp", "gbps")
    aims.append(("circuit Gbit/s xrayd / haproxy tcp", med("xrayd_circuit", "gbps"), med("haproxy_tcp", "gbps"),
                 r, ">= 1.0x", None if r is None else r >= 1.0))
if (R, "survived") in data:
    g = worst(R, "v_gap_kill_max_ms")
    aims.append(("resume: max gap, killed worker's conns", g, None, None, "< 100 ms",
                 None if g is None else g < 100))
    kf = worst(R, "v_kill_first_max_ms")
    aims.append(("(info) resume: kill -> first echo, max", kf, None, None, "(>= ~PING_MS)", "info"))
    s, c = worst(R, "survived", hi=False), worst(R, "conns", hi=False)
    aims.append(("resume: connections survived", s, c, None, "all",
                 None if s is None or c is None else (s == c and c > 0)))
    lb, db, cb = worst(R, "lost_bytes"), worst(R, "dup_bytes"), worst(R, "corrupt_bytes")
    aims.append(("resume: bytes lost/dup/corrupt", None if lb is None else lb + (db or 0) + (cb or 0), None,
                 None, "0", None if lb is None else (lb == 0 and db == 0 and cb == 0)))
if aims:
    w("AIMS")
    w("%-42s %12s %12s %8s   %-10s %s" % ("metric", "xrayd", "reference", "ratio", "aim", "result"))
    for name, x, h, rr, aim, ok in aims:
        w("%-42s %12s %12s %8s   %-10s %s" % (name, fmt(x), fmt(h), fmt(rr), aim, verdict(ok)))
    w("  (resume rows: the worst run; the gap includes up to one PING_MS of ordinary silence, kill -> first")
    w("  echo is the takeover's stall once that is longer than PING_MS)")
    w("")

# ---------------------------------------------------------------- logs
for f in sorted(glob.glob(os.path.join(log_dir, "xrayd*.error.log"))) + sorted(
        glob.glob(os.path.join(log_dir, "xrayd*.stderr.log"))):
    lines = [l.rstrip("\n") for l in open(f, errors="replace")]
    if not lines and f.endswith(".stderr.log"):
        continue
    levels, bad = collections.Counter(), collections.Counter()
    for l in lines:
        m = re.search(r"\[(debug|info|notice|warn|error|crit|alert|emerg)\]", l)
        if m:
            levels[m.group(1)] += 1
        if not m or m.group(1) in ("warn", "error", "crit", "alert", "emerg"):
            norm = re.sub(r"^\S+Z ", "", l)
            norm = re.sub(r"\] \d+: ", "] PID: ", norm)
            norm = re.sub(r"\*\d+", "*CID", norm)
            norm = re.sub(r"(198\.1[89]\.\d+\.\d+):\d+", r"\1:P", norm)
            norm = re.sub(r"connection \d+", "connection N", norm)
            if norm.strip():
                bad[norm] += 1
    w("log %s: %d lines; %s" % (os.path.basename(f), len(lines),
                                ", ".join("%s=%d" % kv for kv in sorted(levels.items())) or "no levelled lines"))
    for msg, k in bad.most_common(8):
        w("   %5dx %s" % (k, msg[:170]))
w("=" * 108)
print("\n".join(out))
