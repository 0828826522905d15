#!/usr/bin/env python3
"""tls_summarize.py RAW ENV LOGDIR - tables for contrib/bench/tls.sh.

RAW has one measurement per line: "RUN VARIANT METRIC VALUE" (VALUE may be NA; run 0
holds strings such as the negotiated suite). Values are medians over the runs, (N%) is
(max-min)/median, ratios are the median of the per-run ratios. xrayd's error logs in
LOGDIR are digested at the end."""
import collections, glob, os, re, sys

from benchstats import Stats, fmt, read_raw

raw_path, env_path, log_dir = sys.argv[1:4]
data, info = read_raw(raw_path)  # (variant, metric) -> {run: value}; run 0: strings
runs = sorted({r for d in data.values() for r in d})


stats = Stats(data)
vals, med, spread, ratio, total, cell = (stats.vals, stats.med, stats.spread, stats.ratio,
                                         stats.total, stats.cell)


LABEL = {"direct": "direct (no proxy)", "xrayd": "xrayd workers:2",
         "xrayd_cont": "xrayd w:2 continuity", "xrayd_w1": "xrayd workers:1",
         "haproxy": "haproxy AES256", "stunnel": "stunnel AES256",
         "haproxy_a128": "haproxy AES128 (ref)", "stunnel_a128": "stunnel AES128 (ref)"}
present = {k[0] for k in data} | {k[0] for k in info}
variants = [v for v in LABEL if v in present]

out = []
w = out.append
w("=" * 110)
w("xrayd TLS benchmark - medians over %d run(s); (N%%) = spread (max-min)/median" % len(runs))
if os.path.exists(env_path):
    for line in open(env_path):
        w("  " + line.rstrip())
w("")
w("negotiated on the first TLS link (openssl s_client against the server end: protocol/suite/ECDHE key):")
for v in variants:
    if (v, "negotiated") in info:
        w("  %-22s %s" % (LABEL[v], info[(v, "negotiated")]))
w("")

# ---- throughput
w("1+2. THROUGHPUT  iperf3 1 stream; CPU-s/GB = utime+stime of every proxy process of the path / GB received")
w("%-22s %16s %12s %10s %16s %12s %10s %6s" % ("variant", "1 hop Gbit/s", "CPU-s/GB", "recv %",
                                               "3 link Gbit/s", "CPU-s/GB", "recv %", "procs"))
for v in variants:
    if v == "direct":
        if vals(v, "gbps"):
            w("%-22s %16s" % (LABEL[v], cell(v, "gbps")))
        continue
    if not any((v, m) in data for m in ("hop1_gbps", "link3_gbps")):
        continue
    procs = "%s/%s" % (fmt(med(v, "hop1_procs"), 0), fmt(med(v, "link3_procs"), 0))
    w("%-22s %16s %12s %10s %16s %12s %10s %6s" % (
        LABEL[v], cell(v, "hop1_gbps"), cell(v, "hop1_cpu_s_per_gb"), fmt(med(v, "hop1_recv_pct"), 1),
        cell(v, "link3_gbps"), cell(v, "link3_cpu_s_per_gb"), fmt(med(v, "link3_recv_pct"), 1), procs))
w("  recv % = bytes iperf3 -s received / bytes iperf3 -c sent; well below 100 means the path stalled")
w("  (CPU-s/GB is NA when less than 1 MB arrived). procs = processes of the 1-hop / 3-link path.")
w("")

# ---- latency
w("3. CONNECT + FIRST 32 B ECHO through the 3-link chain (ms); seq = sequential, conc = all at once")
w("%-22s %14s %10s %16s %7s   %14s %10s %16s %7s" % (
    "variant", "resumed p50", "p99", "conc total", "fails", "no-resume p50", "p99", "conc total", "fails"))
for v in variants:
    if not any((v, m) in data for m in ("lat_seq_median_ms", "latnr_seq_median_ms")):
        continue
    f1 = [total(v, "lat_seq_fails"), total(v, "lat_conc_fails")]
    f2 = [total(v, "latnr_seq_fails"), total(v, "latnr_conc_fails")]
    fs = lambda f: "NA" if f[0] is None and f[1] is None else "%s/%s" % tuple("-" if x is None else x for x in f)
    w("%-22s %14s %10s %16s %7s   %14s %10s %16s %7s" % (
        LABEL[v], cell(v, "lat_seq_median_ms", 3), fmt(med(v, "lat_seq_p99_ms"), 3),
        cell(v, "lat_conc_total_ms", 1), fs(f1),
        cell(v, "latnr_seq_median_ms", 3) if (v, "latnr_seq_median_ms") in data else "-",
        fmt(med(v, "latnr_seq_p99_ms"), 3) if (v, "latnr_seq_p99_ms") in data else "-",
        cell(v, "latnr_conc_total_ms", 1) if (v, "latnr_conc_total_ms") in data else "-",
        fs(f2) if (v, "latnr_seq_median_ms") in data else "-"))
w("  fails = failed connections summed over runs, seq/conc. Client and echo server: benchtool (C, epoll).")
w("")

# ---- idle memory
w("4. MEMORY PER IDLE TLS CONNECTION through a 1-link pair (RSS delta / connections held, KiB)")
w("%-22s %8s %16s %16s %16s %14s %7s" % ("variant", "held", "client node", "server node", "pair total",
                                          "per TLS end", "fails"))
for v in variants:
    if (v, "idle_total_kib") not in data:
        continue
    w("%-22s %8s %16s %16s %16s %14s %7s" % (
        LABEL[v], fmt(med(v, "idle_conns"), 0), cell(v, "idle_client_kib"), cell(v, "idle_server_kib"),
        cell(v, "idle_total_kib"), cell(v, "idle_per_end_kib"),
        "NA" if total(v, "idle_fails") is None else total(v, "idle_fails")))
w("  RSS = VmRSS summed over the node's processes (xrayd: master + workers). per TLS end = pair total / 2")
w("  (each connection has one TLS end in each node).")
if (("xrayd_cont", "idle_state_kib")) in data:
    w("  xrayd continuity: of the pair total, the snapshots in both state_dirs (tmpfs, mapped: inside the RSS")
    w("  figures): %s KiB/conn" % cell("xrayd_cont", "idle_state_kib"))
w("")

# ---- ratios
metrics = [("hop1_gbps", "1hop Gbit/s"), ("hop1_cpu_s_per_gb", "1hop CPU/GB"), ("link3_gbps", "3link Gbit/s"),
           ("link3_cpu_s_per_gb", "3link CPU/GB"), ("lat_seq_median_ms", "lat p50"),
           ("lat_seq_p99_ms", "lat p99"), ("lat_conc_total_ms", "conc total"),
           ("latnr_seq_median_ms", "noresume p50"), ("idle_client_kib", "idle cli KiB"),
           ("idle_server_kib", "idle srv KiB")]
pairs = [(a, b) for a in ("xrayd", "xrayd_cont", "xrayd_w1") for b in ("haproxy", "stunnel", "haproxy_a128", "stunnel_a128")
         if a in variants and b in variants]
if pairs:
    w("RATIOS (median of per-run ratios; Gbit/s: higher is better for xrayd, the rest: lower is better)")
    w("%-22s" % "ratio" + "".join("%13s" % h for _, h in metrics))
    for a, b in pairs:
        w("%-22s" % f"{a} / {b}" + "".join("%13s" % fmt(ratio(a, b, m)) for m, _ in metrics))
    w("")


def verdict(ok):
    return "NA" if ok is None else ("PASS" if ok else "FAIL")


# ---- continuity on against off (both xrayd workers:2, same settings)
has_cont = "xrayd_cont" in variants and "xrayd" in variants
if has_cont:
    w("CONTINUITY (xrayd_cont = xrayd workers:2 with continuity: on on every node, against xrayd, continuity off;")
    w("median of per-run ratios xrayd_cont / xrayd; Gbit/s: higher is better, the rest: lower is better)")
    w("%-22s" % "ratio" + "".join("%13s" % h for _, h in metrics))
    w("%-22s" % "xrayd_cont / xrayd" + "".join("%13s" % fmt(ratio("xrayd_cont", "xrayd", m)) for m, _ in metrics))
    w("  (aim: 1 hop Gbit/s >= 0.95x continuity off; the rest reported, no aim)")
    w("")


aims = []
for m, name in (("hop1_gbps", "TLS 1 hop Gbit/s"), ("link3_gbps", "TLS 3-link Gbit/s")):
    r = ratio("xrayd", "haproxy", m)
    aims.append((name, med("xrayd", m), med("haproxy", m), r, ">= 1.3x haproxy", None if r is None else r >= 1.3))
x = med("xrayd", "lat_seq_median_ms")
aims.append(("3-link resumed p50 ms", x, med("haproxy", "lat_seq_median_ms"), ratio("xrayd", "haproxy", "lat_seq_median_ms"),
             "<= 2 ms", None if x is None else x <= 2.0))
x = med("xrayd", "lat_conc_total_ms")
aims.append(("N_CONC at once: total ms", x, med("haproxy", "lat_conc_total_ms"),
             ratio("xrayd", "haproxy", "lat_conc_total_ms"), "<= 250 ms", None if x is None else x <= 250.0))
for m, name in (("idle_client_kib", "KiB/idle end, client"), ("idle_server_kib", "KiB/idle end, server")):
    x = med("xrayd", m)
    aims.append((name, x, med("haproxy", m), ratio("xrayd", "haproxy", m), "<= 6 KiB", None if x is None else x <= 6.0))
if has_cont:
    for m, name in (("hop1_gbps", "TLS 1 hop Gbit/s, cont"), ("link3_gbps", "TLS 3-link Gbit/s, cont")):
        r = ratio("xrayd_cont", "haproxy", m)
        aims.append((name, med("xrayd_cont", m), med("haproxy", m), r, ">= 1.3x haproxy",
                     None if r is None else r >= 1.3))
    r = ratio("xrayd_cont", "xrayd", "hop1_gbps")
    aims.append(("TLS 1 hop cont/off Gbit/s", med("xrayd_cont", "hop1_gbps"), med("xrayd", "hop1_gbps"), r,
                 ">= 0.95x cont off", None if r is None else r >= 0.95))
fails = sum(total("xrayd", m) or 0 for m in ("lat_seq_fails", "lat_conc_fails", "idle_fails"))
w("AIMS (xrayd workers:2; haproxy for reference; \", cont\": xrayd_cont in the xrayd column; cont/off: xrayd_cont")
w("in the xrayd column, xrayd in the haproxy column)")
w("%-26s %12s %12s %10s   %-18s %s" % ("metric", "xrayd", "haproxy", "ratio", "aim", "result"))
for name, x, h, r, aim, ok in aims:
    w("%-26s %12s %12s %10s   %-18s %s" % (name, fmt(x, 3), fmt(h, 3), fmt(r), aim, verdict(ok)))
nrf = sum(total("xrayd", m) or 0 for m in ("latnr_seq_fails", "latnr_conc_fails"))
w("xrayd failed connections, all runs: %d with resumption (latency + idle tests), %d without (latency)" % (fails, nrf))
if has_cont:
    cf = sum(total("xrayd_cont", m) or 0 for m in ("lat_seq_fails", "lat_conc_fails", "idle_fails"))
    cnr = sum(total("xrayd_cont", m) or 0 for m in ("latnr_seq_fails", "latnr_conc_fails"))
    w("xrayd_cont failed connections, all runs: %d with resumption, %d without" % (cf, cnr))
crashed = [v for v in variants if vals(v, "crashed")]
if crashed:
    w("PROCESSES THAT DIED DURING A TEST: " + ", ".join(crashed))
w("")

# ---- xrayd's logs
for f in (sorted(glob.glob(os.path.join(log_dir, "*.error.log"))) +
          sorted(glob.glob(os.path.join(log_dir, "xrayd*.stderr.log")))):
    name = os.path.basename(f)
    if not name.startswith(("xrayd", "check", "probe")):
        continue
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
    if not bad and set(levels) <= {"notice", "info"}:
        continue   # clean logs are not listed one by one
    w("log %s: %d lines; %s" % (name, len(lines),
                                ", ".join(f"{k}={v}" for k, v in sorted(levels.items())) or "no levelled lines"))
    for msg, n in bad.most_common(8):
        w("   %5dx %s" % (n, msg[:160]))
w("(xrayd logs with only notice/info lines are not listed)")
w("=" * 110)
print("\n".join(out))
