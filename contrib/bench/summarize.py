#!/usr/bin/env python3
"""summarize.py RAW ENV LOGDIR - tables for contrib/bench/run.sh.

RAW has one measurement per line: "RUN RELAY METRIC VALUE" (VALUE may be NA).
Values are medians over the runs; ratios are the median of the per-run ratios
(each run measures every relay back to back, so a per-run ratio cancels drift).
LOGDIR holds the relays' logs; xrayd's error logs are scanned for problems."""
import collections, glob, os, re, sys

from benchstats import Stats, fmt, read_raw

raw_path, env_path, log_dir = sys.argv[1:4]
data, _ = read_raw(raw_path)  # (relay, metric) -> {run: value}
runs = sorted({r for d in data.values() for r in d})


stats = Stats(data)
vals, med, spread, ratio, total, cell = (stats.vals, stats.med, stats.spread, stats.ratio,
                                         stats.total, stats.cell)


LABEL = {"direct": "direct (no relay)", "xrayd": "xrayd workers:2", "xrayd_w1": "xrayd workers:1",
         "xrayd_cont": "xrayd continuity:on",
         "haproxy": "haproxy mode tcp", "nginx": "nginx stream", "socat": "socat -b 131072"}
relays = [r for r in LABEL if any(k[0] == r for k in data)]

out = []
w = out.append
w("=" * 100)
w("xrayd relay benchmark - medians over %d run(s); (N%%) = spread (max-min)/median" % len(runs))
if os.path.exists(env_path):
    for line in open(env_path):
        w("  " + line.rstrip())
w("")
w("%-20s %15s %13s %16s %15s %12s %8s %8s %9s" % (
    "relay", "iperf3 Gbit/s", "CPU-s/GB", "KiB/idle conn", "conn/s", "CPU-us/conn", "p50 ms", "p99 ms", "fails i/c"))
for r in relays:
    kib = cell(r, "idle_kib_per_conn")
    if r == "socat" and med(r, "idle_kib_per_conn") is not None:
        kib += " PSS"
    fi, fc = total(r, "idle_fails"), total(r, "cps_fails")
    w("%-20s %15s %13s %16s %15s %12s %8s %8s %9s" % (
        LABEL[r], cell(r, "gbps"), "-" if r == "direct" else cell(r, "cpu_s_per_gb", 3),
        "-" if r == "direct" else kib, cell(r, "cps", 0),
        "-" if r == "direct" else cell(r, "cps_cpu_us_per_conn", 1),
        fmt(med(r, "cps_p50_ms"), 3), fmt(med(r, "cps_p99_ms"), 3),
        "%s/%s" % ("-" if fi is None else fi, "NA" if fc is None else fc)))
w("  KiB/idle conn = RSS delta of the relay process tree (master + workers) / connections held")
w("  (socat forks per connection, so its figure is the PSS delta). 'fails i/c' = connections that")
w("  failed, summed over runs: idle test / conn/s test. CPU-s/GB and CPU-us/conn = utime+stime of")
w("  the relay tree during the iperf3 run / the conn/s run; p50/p99 = latency of one short connection.")
w("")

# ratios xrayd / peers
pairs = [(a, b) for a in ("xrayd", "xrayd_w1", "xrayd_cont") for b in ("haproxy", "nginx", "socat")
         if a in relays and b in relays]
if pairs:
    w("%-24s %12s %12s %14s %12s %12s" % ("ratio (median per run)", "Gbit/s", "CPU-s/GB", "KiB/idle conn",
                                          "conn/s", "CPU-us/conn"))
    for a, b in pairs:
        w("%-24s %12s %12s %14s %12s %12s" % (
            f"{a} / {b}", fmt(ratio(a, b, "gbps")), fmt(ratio(a, b, "cpu_s_per_gb")),
            fmt(ratio(a, b, "idle_kib_per_conn")), fmt(ratio(a, b, "cps")),
            fmt(ratio(a, b, "cps_cpu_us_per_conn"))))
    w("  (Gbit/s and conn/s: higher is better; CPU-s/GB, KiB and CPU-us/conn: lower is better)")
    w("")

# aims from the issue: xrayd (workers: 2) against haproxy
def verdict(ok):
    if ok == "info":
        return ""
    return "NA" if ok is None else ("PASS" if ok else "FAIL")


aims = []
r_t = ratio("xrayd", "haproxy", "gbps")
aims.append(("throughput Gbit/s", med("xrayd", "gbps"), med("haproxy", "gbps"), r_t,
             ">= 1.2x haproxy", None if r_t is None else r_t >= 1.2))
r_c = ratio("xrayd", "haproxy", "cpu_s_per_gb")
aims.append(("relay CPU-s per GB", med("xrayd", "cpu_s_per_gb"), med("haproxy", "cpu_s_per_gb"), r_c,
             "<= haproxy's (0.84 ref)", None if r_c is None else r_c <= 1.0))
k = med("xrayd", "idle_kib_per_conn")
aims.append(("KiB per idle conn", k, med("haproxy", "idle_kib_per_conn"),
             ratio("xrayd", "haproxy", "idle_kib_per_conn"), "<= 3 KiB", None if k is None else k <= 3.0))
r_s = ratio("xrayd", "haproxy", "cps")
aims.append(("conn/s", med("xrayd", "cps"), med("haproxy", "cps"), r_s,
             "> haproxy", None if r_s is None else r_s > 1.0))
r_u = ratio("xrayd", "haproxy", "cps_cpu_us_per_conn")
aims.append(("(info) CPU-us/conn", med("xrayd", "cps_cpu_us_per_conn"), med("haproxy", "cps_cpu_us_per_conn"),
             r_u, "(no aim; lower=better)", "info"))
# continuity on against off: xrayd_cont / xrayd (both workers: 2, same settings)
r_ct = ratio("xrayd_cont", "xrayd", "gbps")
if "xrayd_cont" in relays and "xrayd" in relays:
    aims.append(("cont/off Gbit/s", med("xrayd_cont", "gbps"), med("xrayd", "gbps"), r_ct,
                 ">= 0.95x continuity off", None if r_ct is None else r_ct >= 0.95))

# resumption after kill -9 (test resume): the worst run's worst pause
def worst(r, m):
    xs = vals(r, m)
    return max(xs) if xs else None


has_resume = any(k == ("xrayd_cont", "resume_pause_max_ms") and any(
    v is not None for v in d.values()) for k, d in data.items())
if has_resume:
    pz = worst("xrayd_cont", "resume_pause_max_ms")
    aims.append(("resume pause, worst", pz, None, None, "< 100 ms", None if pz is None else pz < 100))
    lost = [total("xrayd_cont", m) for m in ("resume_lost_bytes", "resume_dup_bytes", "resume_corrupt_bytes")]
    bad = None if None in lost else sum(lost)
    aims.append(("resume bytes l/d/c", bad, None, None, "0", None if bad is None else bad == 0))

w("AIMS (xrayd workers:2 vs haproxy; cont/off: xrayd_cont in the xrayd column, xrayd in the other)")
w("%-20s %12s %12s %10s   %-24s %s" % ("metric", "xrayd", "haproxy", "ratio", "aim", "result"))
for name, x, h, rr, aim, ok in aims:
    w("%-20s %12s %12s %10s   %-24s %s" % (name, fmt(x, 3), fmt(h, 3), fmt(rr), aim, verdict(ok)))
w("")

if "xrayd_cont" in relays and "xrayd" in relays:
    w("CONTINUITY (xrayd_cont = xrayd workers:2 with continuity: on, against xrayd, continuity off)")
    w("%-24s %12s %12s %12s %12s" % ("", "Gbit/s", "CPU-s/GB", "conn/s", "CPU-us/conn"))
    w("%-24s %12s %12s %12s %12s" % (
        "xrayd_cont / xrayd", fmt(ratio("xrayd_cont", "xrayd", "gbps")),
        fmt(ratio("xrayd_cont", "xrayd", "cpu_s_per_gb")), fmt(ratio("xrayd_cont", "xrayd", "cps")),
        fmt(ratio("xrayd_cont", "xrayd", "cps_cpu_us_per_conn"))))
    w("%-24s %12s %12s" % ("KiB per idle conn", "RSS", "PSS"))
    for r in ("xrayd", "xrayd_cont"):
        w("%-24s %12s %12s" % (LABEL[r], cell(r, "idle_kib_per_conn"), cell(r, "idle_pss_kib_per_conn")))
    w("  of which the snapshot in state_dir (tmpfs, mapped: inside the RSS figure): %s KiB/conn"
      % cell("xrayd_cont", "idle_state_kib_per_conn"))
    w("  (aim: continuity on >= 0.95x continuity off's Gbit/s; conn/s and KiB are reported, no aim)")
    w("")

if has_resume:
    w("RESUMPTION after kill -9 (xrayd_cont; the killed worker's connections; per run: "
      + ", ".join(str(n) for n in runs) + ")")
    for label, m in (("connections of the killed worker", "resume_matched"),
                     ("pause, worst (ms)", "resume_pause_max_ms"),
                     ("pause, p99 (ms)", "resume_pause_p99_ms"),
                     ("pause, median (ms)", "resume_pause_p50_ms"),
                     ("pause, shortest: bytes move again (ms)", "resume_pause_min_ms"),
                     ("reference: other worker's, worst (ms)", "resume_ref_max_ms"),
                     ("reference: other worker's, median (ms)", "resume_ref_p50_ms"),
                     ("longest any ping waited (ms)", "resume_wait_max_ms"),
                     ("kill -> first echo, worst (ms)", "resume_kill_first_max_ms"),
                     ("replacement's 'took over ... in X ms'", "resume_takeover_ms"),
                     ("no echo after the kill", "resume_no_echo"),
                     ("connections survived (all workers)", "resume_survived"),
                     ("bytes lost / duplicated / corrupt", None)):
        if m is None:
            per = ["%s/%s/%s" % tuple(fmt(data.get(("xrayd_cont", k), {}).get(n), 0)
                                      for k in ("resume_lost_bytes", "resume_dup_bytes",
                                                "resume_corrupt_bytes")) for n in runs]
        else:
            per = [fmt(data.get(("xrayd_cont", m), {}).get(n), 1) for n in runs]
        w("  %-40s %s" % (label, "  ".join(per)))
    w("  pause = the round trip of the probe, a ping every connection sends right after the kill: on")
    w("  the killed worker's connections the time until the replacement moved their bytes; the same")
    w("  probe on the surviving worker's connections is the reference (the burst and the machine's")
    w("  load, no resumption). kill -> first echo adds up to PING_MS of the connection's silence.")
    w("")

# xrayd's own logs
for f in (sorted(glob.glob(os.path.join(log_dir, "xrayd*.error.log"))) + sorted(
                glob.glob(os.path.join(log_dir, "xrayd*.stderr.log")))):
    lines = [l.rstrip("\n") for l in open(f, errors="replace")]
    if not lines and f.endswith(".stderr.log"):
        continue
    levels = collections.Counter()
    bad = collections.Counter()
    for l in lines:
        m = re.search(r"\[(debug|info|notice|warn|error|crit|alert|emerg)\]", l)
        if m:
            levels[m.group(1)] += 1
        if not m or m.group(1) in ("warn", "error", "crit", "alert", "emerg"):
            norm = re.sub(r"^\S+Z ", "", l)
            norm = re.sub(r"\] \d+: ", "] PID: ", norm)
            norm = re.sub(r"\*\d+", "*CID", norm)
            norm = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:P", norm)
            if norm.strip():
                bad[norm] += 1
    w("log %s: %d lines; %s" % (os.path.basename(f), len(lines),
                                ", ".join(f"{k}={v}" for k, v in sorted(levels.items())) or "no levelled lines"))
    for msg, n in bad.most_common(8):
        w("   %5dx %s" % (n, msg[:160]))
w("=" * 100)
print("\n".join(out))
