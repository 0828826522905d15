#!/usr/bin/env bash
# contrib/bench/run.sh - xrayd against HAProxy (mode tcp), nginx stream and
# socat (-b 131072), side by side in one run, all on 127.0.0.1; xrayd_cont is xrayd
# (workers: 2) with continuity: on (state_dir a fresh directory in /dev/shm), measured
# against xrayd with continuity off:
#   1. throughput: iperf3, 1 stream, BENCH_SECS s through one relay (Gbit/s) and the
#      CPU seconds per GB burnt by the relay process tree (master + workers)
#   2. memory per idle relayed connection: N_IDLE connections, each echoed 32 B,
#      held idle; KiB/conn = RSS delta of the relay process tree / connections held
#   3. connections per second: BENCH_SECS s of short connections (connect, 32 B
#      echo, close), CONC in flight, through each relay
#   4. resumption after kill -9 (test "resume", xrayd_cont only): N_LIVE pinging
#      connections, kill -9 of the busiest worker; per connection of that worker the
#      pause until its bytes flow again (worst, median), 0 bytes lost
#   5. TLS (test "tls"): contrib/bench/tls.sh, after the plain tests - xrayd's TLS ends
#      against HAProxy and stunnel (one hop, 3-link re-encryption chain, connect latency,
#      memory per idle TLS end); its results go to $OUT/tls
#   6. transparent proxies (test "proxy", root only): contrib/bench/proxy_bench.sh -
#      xrayd's proxy blocks against HAProxy, tinyproxy and socat through REDIRECT in
#      network namespaces (HTTP req/s, circuit throughput, resumption after kill -9);
#      its results go to $OUT/proxy
# Every measurement is repeated RUNS times (relays interleaved within a run) and the
# median is reported. See contrib/bench/README.md. Installs nothing; a missing peer
# is reported as NA.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
source "$HERE/lib.sh"

BENCH_SECS=${BENCH_SECS:-5}
N_IDLE=${N_IDLE:-2000}
RUNS=${RUNS:-3}
CONC=${CONC:-50}
N_LIVE=${N_LIVE:-2000}              # resume: live connections (the victim holds about half)
PING_MS=${PING_MS:-200}             # resume: each connection's ping interval (2000 at 50 ms
                                    # load 2 cores before any kill)
RESUME_WARM=${RESUME_WARM:-2}       # resume: s of pings before the reference instant (kill 1 s later)
RESUME_POST=${RESUME_POST:-3}       # resume: s of pings after the kill
RESUME_LOG_LEVEL=${RESUME_LOG_LEVEL:-notice}   # the replacement's "took over" line is a notice
XRAYD_BIN=${XRAYD_BIN:-$ROOT/objs/xrayd}
XRAYD_BUFFER_SIZE=${XRAYD_BUFFER_SIZE:-64k}
RELAYS=${RELAYS:-xrayd xrayd_w1 xrayd_cont haproxy nginx socat}
TESTS=${TESTS:-tput idle cps resume tls proxy}
PLAIN_TESTS=$(echo " $TESTS " | sed 's/ tls / /g; s/ proxy / /g; s/^ *//; s/ *$//')
PY=${PY:-python3}

# Fixed ports, away from contrib/../bench-peers (15201-15830)
P_IPERF=16201
P_ECHO=16202
declare -A RPORT=([xrayd]=16211 [xrayd_w1]=16212 [haproxy]=16213 [nginx]=16214 [socat]=16215
                  [xrayd_cont]=16216)

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${BENCH_OUT:-/tmp/xrayd-bench.$STAMP}
mkdir -p "$OUT/logs" || exit 1
RUN=$(mktemp -d /tmp/xrayd-bench-run.XXXXXX) || exit 1
RAW="$OUT/raw.txt"
: >"$RAW"
# xrayd_cont's state_dir: a fresh directory under $SHM for every start, removed when
# the relay stops; $SHM itself is removed on exit
SHM=""
STATE=""
if [[ " $RELAYS " == *" xrayd_cont "* ]]; then
  SHM=$(mktemp -d /dev/shm/xrayd-bench.XXXXXX) || SHM=""
fi

cleanup() {
  trap - EXIT INT TERM HUP
  stop_all
  rm -rf "$RUN"
  [ -n "$SHM" ] && rm -rf "$SHM"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# 2000 idle connections through a relay need 4000+ fds in the relay: use the hard limit
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

have() { command -v "$1" >/dev/null 2>&1; }
NGINX_STREAM_SO=""
for f in /usr/lib/nginx/modules/ngx_stream_module.so /usr/lib64/nginx/modules/ngx_stream_module.so; do
  [ -f "$f" ] && { NGINX_STREAM_SO=$f; break; }
done

# ----------------------------------------------------------------- preflight
log "output: $OUT (raw.txt, summary.txt, logs/)"
for p in $P_IPERF $P_ECHO "${RPORT[@]}"; do
  if listening "$p"; then log "port $p is already in use; stop whatever listens there"; exit 1; fi
done

BT=""
if have cc && cc -O2 -o "$RUN/benchtool" "$HERE/benchtool.c" 2>"$OUT/logs/benchtool-build.log"; then
  BT="$RUN/benchtool"
else
  log "cannot build contrib/bench/benchtool.c (no cc?): idle memory and conn/s will be NA"
fi

available() { # available RELAY : is the relay's program present?
  case $1 in
    xrayd|xrayd_w1) [ -x "$XRAYD_BIN" ] ;;
    xrayd_cont) [ -x "$XRAYD_BIN" ] && [ -n "$SHM" ] ;;
    haproxy) have haproxy ;;
    nginx) have nginx && { [ -n "$NGINX_STREAM_SO" ] || nginx -V 2>&1 | grep -q -- '--with-stream[^=]'; } ;;
    socat) have socat ;;
    *) return 1 ;;
  esac
}
for r in $RELAYS; do available "$r" || log "$r: not available, reported as NA"; done
have iperf3 || log "iperf3 missing: throughput is NA"

if [ -x "$XRAYD_BIN" ]; then
  # run a private copy: a rebuild of objs/xrayd during the run must not mix two binaries
  XRAYD_ORIG=$XRAYD_BIN
  cp "$XRAYD_BIN" "$RUN/xrayd" && XRAYD_BIN="$RUN/xrayd"
  "$XRAYD_BIN" -V >"$OUT/logs/xrayd-version.txt" 2>&1
  log "xrayd: $XRAYD_ORIG (copied to $XRAYD_BIN; $(head -1 "$OUT/logs/xrayd-version.txt"))"
fi

# ------------------------------------------------------------------ relays
# relay_conf RELAY TARGET_PORT : write the relay's configuration; prints the file
relay_conf() {
  local r=$1 t=$2 port=${RPORT[$1]} f
  case $r in
    xrayd|xrayd_w1|xrayd_cont)
      local w=2 cont=off state="" level=warn
      [ "${CUR_TEST:-}" = resume ] && level=$RESUME_LOG_LEVEL
      [ "$r" = xrayd_w1 ] && w=1
      [ "$r" = xrayd_cont ] && { cont=on; state="state_dir: $STATE"; }
      f="$RUN/$r-$t.yaml"
      cat >"$f" <<YAML
workers: $w
daemon: off
pid: $RUN/$r.pid
error_log: $OUT/logs/$r.${CUR_TEST:-x}.error.log
log_level: $level
buffer_size: $XRAYD_BUFFER_SIZE
connect_timeout: 5s
idle_timeout: 10m
$state
relay:
  - name: bench
    listen: 127.0.0.1:$port
    upstream: 127.0.0.1:$t
    max_connections: 8000
    continuity: $cont
YAML
      ;;
    haproxy)
      f="$RUN/haproxy-$t.cfg"
      cat >"$f" <<CFG
global
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend f
  bind 127.0.0.1:$port
  default_backend b
backend b
  server s 127.0.0.1:$t
CFG
      ;;
    nginx)
      f="$RUN/nginx-$t.conf"
      { [ -n "$NGINX_STREAM_SO" ] && echo "load_module $NGINX_STREAM_SO;"
        cat <<CFG
daemon off;
master_process on;
worker_processes auto;
pid $RUN/nginx.pid;
error_log $OUT/logs/nginx.error.log warn;
events { worker_connections 8192; }
stream {
  server { listen 127.0.0.1:$port; proxy_pass 127.0.0.1:$t; proxy_timeout 300s; }
}
CFG
      } >"$f"
      ;;
  esac
  echo "$f"
}

# relay_start RELAY TARGET_PORT : start it; sets RPID; returns 1 if not possible
relay_start() {
  local r=$1 t=$2 port=${RPORT[$1]} cfg
  RPID=""
  available "$r" || return 1
  wait_port_free "$port" || return 1
  case $r in
    xrayd|xrayd_w1|xrayd_cont)
      if [ "$r" = xrayd_cont ]; then
        STATE=$(mktemp -d "$SHM/state.XXXXXX") || { log "$r: cannot make a state_dir in $SHM"; return 1; }
      fi
      cfg=$(relay_conf "$r" "$t")
      if ! "$XRAYD_BIN" -t -c "$cfg" >"$RUN/xrayd-t.out" 2>&1; then
        log "$r: config test failed: $(head -3 "$RUN/xrayd-t.out")"; relay_stop; return 1
      fi
      bg_start "$OUT/logs/$r.${CUR_TEST:-x}.stderr.log" "$XRAYD_BIN" -c "$cfg" ;;
    haproxy)
      cfg=$(relay_conf "$r" "$t")
      bg_start "$OUT/logs/haproxy.stderr.log" haproxy -db -f "$cfg" ;;
    nginx)
      cfg=$(relay_conf "$r" "$t")
      bg_start "$OUT/logs/nginx.stderr.log" nginx -e "$OUT/logs/nginx.error.log" -p "$RUN" -c "$cfg" ;;
    socat)
      bg_start "$OUT/logs/socat.stderr.log" socat -b 131072 \
        TCP-LISTEN:"$port",bind=127.0.0.1,reuseaddr,fork,backlog=1024 TCP:127.0.0.1:"$t" ;;
  esac
  RPID=$LASTPID
  if ! wait_port "$port" "$RPID"; then
    log "$r did not start; see $OUT/logs/$r*"
    relay_stop; return 1
  fi
  # let a master spawn its workers before anything is measured
  local want=1
  case $r in xrayd|xrayd_cont) want=3 ;; xrayd_w1) want=2 ;; nginx) want=$(( $(nproc) + 1 )) ;; esac
  for _ in $(seq 1 30); do [ "$(nproc_tree "$RPID")" -ge "$want" ] && break; sleep 0.1; done
  sleep 0.3
  return 0
}

relay_stop() {
  [ -n "${RPID:-}" ] && stop_pid "$RPID"
  RPID=""
  [ -n "$STATE" ] && rm -rf "$STATE"
  STATE=""
}

rec() { echo "$1 $2 $3 $4" >>"$RAW"; }  # rec RUN RELAY METRIC VALUE

# ------------------------------------------------------------ 1. throughput
# iperf PORT TAG : 1 stream for BENCH_SECS s; prints "GBPS BYTES" or fails
iperf() {
  local port=$1 tag=$2 try
  for try in 1 2; do
    if timeout $((BENCH_SECS + 20)) iperf3 -c 127.0.0.1 -p "$port" -t "$BENCH_SECS" -P 1 -J \
         >"$RUN/$tag.json" 2>"$RUN/$tag.err"; then
      "$PY" -c 'import json,sys; e=json.load(open(sys.argv[1]))["end"]["sum_received"]
print("%.3f %d" % (e["bits_per_second"]/1e9, e["bytes"]))' "$RUN/$tag.json" && return 0
    fi
    log "iperf3 $tag failed (try $try): $(head -c 300 "$RUN/$tag.err"; grep -m1 '"error"' "$RUN/$tag.json")"
    sleep 1
  done
  return 1
}

test_tput() { # test_tput RUN RELAY
  local n=$1 r=$2 c0 c1 res gbps bytes
  if [ "$r" = direct ]; then
    res=$(iperf $P_IPERF "raw.$n") && rec "$n" direct gbps "${res% *}" || rec "$n" direct gbps NA
    return
  fi
  if ! relay_start "$r" $P_IPERF; then rec "$n" "$r" gbps NA; rec "$n" "$r" cpu_s_per_gb NA; return; fi
  rec "$n" "$r" procs "$(nproc_tree "$RPID")"
  c0=$(cpu_ticks "$RPID")
  if res=$(iperf "${RPORT[$r]}" "$r.$n"); then
    c1=$(cpu_ticks "$RPID")
    gbps=${res% *}; bytes=${res#* }
    rec "$n" "$r" gbps "$gbps"
    rec "$n" "$r" cpu_s_per_gb "$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" -v by="$bytes" \
      'BEGIN { if (by > 0) printf "%.3f", (b - a) / hz / (by / 1e9); else print "NA" }')"
  else
    rec "$n" "$r" gbps NA; rec "$n" "$r" cpu_s_per_gb NA
  fi
  relay_stop
}

# ------------------------------------------------------- 2. idle memory
test_idle() { # test_idle RUN RELAY
  local n=$1 r=$2 field=VmRSS b a bp ap sb sa held hpid ready="$RUN/ready.$2.$1"
  if [ -z "$BT" ] || ! relay_start "$r" $P_ECHO; then
    rec "$n" "$r" idle_kib_per_conn NA; return
  fi
  [ "$r" = socat ] && field=Pss   # one process per connection: RSS would count shared pages N times
  # warm-up: 20 connections opened, echoed and closed, so lazy one-time setup is not counted
  timeout 30 "$BT" idle "${RPORT[$r]}" 20 "$RUN/warm.$r.$n" 0 20 2>/dev/null
  sleep 0.5
  b=$(mem_kib "$field" "$RPID"); bp=$(mem_kib Pss "$RPID")
  [ -n "$STATE" ] && sb=$(du -sk "$STATE" | cut -f1)   # xrayd_cont: snapshot pages in tmpfs
  rm -f "$ready"
  bg_start "$RUN/idle.$r.$n.log" "$BT" idle "${RPORT[$r]}" "$N_IDLE" "$ready" 150 100
  hpid=$LASTPID
  for _ in $(seq 1 1200); do [ -f "$ready" ] && break; kill -0 "$hpid" 2>/dev/null || break; sleep 0.1; done
  sleep 1
  held=$(cat "$ready" 2>/dev/null || echo 0)
  a=$(mem_kib "$field" "$RPID")
  if [ "$field" = Pss ]; then ap=$a; else ap=$(mem_kib Pss "$RPID"); fi
  [ -n "$STATE" ] && sa=$(du -sk "$STATE" | cut -f1)
  rec "$n" "$r" idle_conns "$held"
  rec "$n" "$r" idle_fails $((N_IDLE - held))
  rec "$n" "$r" idle_kib_before "$b"
  rec "$n" "$r" idle_kib_after "$a"
  rec "$n" "$r" idle_kib_per_conn "$(awk -v a="$a" -v b="$b" -v n="$held" 'BEGIN { if (n > 0) printf "%.3f", (a - b) / n; else print "NA" }')"
  rec "$n" "$r" idle_pss_kib_per_conn "$(awk -v a="$ap" -v b="$bp" -v n="$held" 'BEGIN { if (n > 0) printf "%.3f", (a - b) / n; else print "NA" }')"
  # the state_dir's growth (tmpfs pages of the snapshot; mapped, so already in the RSS delta)
  [ -n "$STATE" ] && rec "$n" "$r" idle_state_kib_per_conn "$(awk -v a="$sa" -v b="$sb" -v n="$held" 'BEGIN { if (n > 0) printf "%.3f", (a - b) / n; else print "NA" }')"
  stop_pid "$hpid"
  grep -v '^idle: [0-9]* held' "$RUN/idle.$r.$n.log" | sed "s/^/# $r idle run $n: /" >&2
  sleep 2   # let the relay tear the connections down before it is stopped
  relay_stop
}

# ------------------------------------------------- 3. connections per second
test_cps() { # test_cps RUN RELAY
  local n=$1 r=$2 port out
  if [ -z "$BT" ]; then rec "$n" "$r" cps NA; return; fi
  if [ "$r" = direct ]; then port=$P_ECHO
  else
    relay_start "$r" $P_ECHO || { rec "$n" "$r" cps NA; return; }
    port=${RPORT[$r]}
  fi
  timeout 20 "$BT" load "$port" "$CONC" 0.5 >/dev/null 2>&1   # warm-up
  sleep 0.5
  local c0 c1 conns
  [ "$r" = direct ] || c0=$(cpu_ticks "$RPID")
  out=$(timeout $((BENCH_SECS + 30)) "$BT" load "$port" "$CONC" "$BENCH_SECS" 2>>"$OUT/logs/load.err")
  if [ "$r" != direct ]; then
    c1=$(cpu_ticks "$RPID")
    conns=$(echo "$out" | awk '/^conns:/{print $2}')
    rec "$n" "$r" cps_cpu_us_per_conn "$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" -v c="${conns:-0}" \
      'BEGIN { if (c > 0) printf "%.2f", (b - a) / hz / c * 1e6; else print "NA" }')"
  fi
  rec "$n" "$r" cps "$(echo "$out" | awk '/^conn_per_s:/{print $2}' | grep . || echo NA)"
  rec "$n" "$r" cps_fails "$(echo "$out" | awk '/^fails:/{print $2}' | grep . || echo NA)"
  rec "$n" "$r" cps_p50_ms "$(echo "$out" | awk '/^lat_p50_ms:/{print $2}' | grep . || echo NA)"
  rec "$n" "$r" cps_p99_ms "$(echo "$out" | awk '/^lat_p99_ms:/{print $2}' | grep . || echo NA)"
  [ "$r" = direct ] || relay_stop
  sleep 1   # let TIME_WAIT churn settle between relays
}

# ----------------------------------------------- 4. resumption after kill -9
# test_resume RUN RELAY : N_LIVE connections through the relay to the echo server,
# each pinging every PING_MS with a checked byte stream; kill -9 of the worker holding
# the most of them, and at that instant one more ping (the probe) on every connection.
# A killed-worker connection's pause is its probe's round trip: worst and median are
# the figures; the surviving worker's probes are the reference (what the burst and
# the machine's load cost with no resumption in it). Also bytes lost / duplicated /
# corrupt and the replacement's own "took over K connection(s) ... in X ms" line.
# Only relays with continuity have one.
test_resume() {
  local n=$1 r=$2 ready="$RUN/ping.ready.$2.$1" killf="$RUN/ping.kill.$2.$1" tpid w fds best=0 victim=""
  local out="$OUT/logs/resume.$r.ping.$n.txt" conns="$OUT/logs/resume.$r.conns.$n.txt"
  local ports="$OUT/logs/resume.$r.victim-ports.$n.txt" log_f
  case $r in xrayd_cont) ;; *) rec "$n" "$r" resume_pause_max_ms NA; return ;; esac
  if [ -z "$BT" ] || ! relay_start "$r" $P_ECHO; then rec "$n" "$r" resume_pause_max_ms NA; return; fi
  log_f="$OUT/logs/$r.${CUR_TEST:-x}.error.log"
  rm -f "$ready" "$killf"
  bg_start "$out" "$BT" ping "${RPORT[$r]}" "$N_LIVE" "$PING_MS" "$RESUME_WARM" "$RESUME_POST" \
    "$ready" "$killf" "$conns"
  tpid=$LASTPID
  for _ in $(seq 1 900); do [ -f "$ready" ] && break; kill -0 "$tpid" 2>/dev/null || break; sleep 0.1; done
  if [ ! -f "$ready" ]; then
    log "resume: the ping client did not get its connections up"; stop_pid "$tpid"; relay_stop
    rec "$n" "$r" resume_pause_max_ms NA; return
  fi
  # the victim: the worker holding the most descriptors (2 per connection)
  for w in $(descendants "$RPID"); do
    fds=$(ls /proc/"$w"/fd 2>/dev/null | wc -l)
    [ "$fds" -gt "$best" ] && { best=$fds; victim=$w; }
  done
  # its connections by the client's port (the master holds a duplicate of every
  # socket: match the worker's pid)
  ss -Htnp state established "( sport = :${RPORT[$r]} )" 2>/dev/null |
    grep "pid=$victim," | awk '{ split($4, a, ":"); print a[length(a)] }' | sort -n >"$ports"
  rec "$n" "$r" resume_victim_conns "$(wc -l <"$ports")"
  echo "${victim:-0}" >"$killf.tmp" && mv "$killf.tmp" "$killf"
  for _ in $(seq 1 $(( (RESUME_WARM + RESUME_POST + 50) * 10 ))); do kill -0 "$tpid" 2>/dev/null || break; sleep 0.1; done
  stop_pid "$tpid"
  local k
  for k in killed survived closed lost_bytes dup_bytes corrupt_bytes; do
    rec "$n" "$r" "resume_$k" "$(awk -F': ' -v k="$k" '$1 == k { print $2 }' "$out" | grep . || echo NA)"
  done
  local took
  took=$(grep -m1 "took over .* of worker $victim" "$log_f" 2>/dev/null)
  rec "$n" "$r" resume_takeover_ms "$(echo "$took" | sed -n 's/.* in \([0-9.]*\) ms.*/\1/p' | grep . || echo NA)"
  "$PY" - "$conns" "$ports" "$n" "$r" >>"$RAW" <<'PYEOF'
import sys
conns, ports, run, relay = sys.argv[1:5]
vp = {int(l) for l in open(ports) if l.strip()}
rows = [l.split() for l in open(conns) if l.strip()]
v = [r for r in rows if int(r[1]) in vp]
def q(xs, p):
    xs = sorted(xs)
    return "NA" if not xs else xs[max(0, int(p * len(xs) + 0.999999) - 1)]
o = [r for r in rows if int(r[1]) not in vp]   # the surviving worker's: the reference
pause = [float(r[13]) for r in v if float(r[13]) >= 0]
ref = [float(r[13]) for r in o if float(r[13]) >= 0]
wait = [float(r[12]) for r in v if float(r[12]) >= 0]
first = [float(r[4]) for r in v if float(r[4]) >= 0]
out = {"resume_matched": len(v), "resume_pause_max_ms": q(pause, 1.0),
       "resume_pause_min_ms": min(pause) if pause else "NA",
       "resume_pause_p50_ms": q(pause, 0.5), "resume_pause_p99_ms": q(pause, 0.99),
       "resume_ref_max_ms": q(ref, 1.0), "resume_ref_p50_ms": q(ref, 0.5),
       "resume_wait_max_ms": q(wait, 1.0), "resume_kill_first_max_ms": q(first, 1.0),
       "resume_no_echo": sum(1 for r in v if float(r[13]) < 0)}
for k, x in out.items():
    print(run, relay, k, x)
PYEOF
  sleep 1
  relay_stop
}

# -------------------------------------------------------------------- main
if have iperf3; then
  bg_start "$OUT/logs/iperf3-server.log" iperf3 -s -B 127.0.0.1 -p $P_IPERF
  wait_port $P_IPERF "$LASTPID" || log "iperf3 server did not start"
fi
if [ -n "$BT" ]; then
  bg_start "$OUT/logs/echo.log" "$BT" echo $P_ECHO 7200
  wait_port $P_ECHO "$LASTPID" || { log "echo server did not start"; BT=""; }
fi

{ echo "date: $(date -u '+%F %T') UTC"
  echo "host: $(nproc) cpus, kernel $(uname -r)"
  echo "settings: RUNS=$RUNS BENCH_SECS=$BENCH_SECS N_IDLE=$N_IDLE CONC=$CONC XRAYD_BUFFER_SIZE=$XRAYD_BUFFER_SIZE"
  echo "xrayd: ${XRAYD_ORIG:-$XRAYD_BIN} $(head -1 "$OUT/logs/xrayd-version.txt" 2>/dev/null)" \
       "(built $(date -u -r "${XRAYD_ORIG:-$XRAYD_BIN}" '+%F %T' 2>/dev/null) UTC, sha256 $(sha256sum "$XRAYD_BIN" 2>/dev/null | cut -c1-12))"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  [[ " $RELAYS " == *" xrayd_cont "* ]] &&
    echo "xrayd_cont: continuity: on, state_dir a fresh directory under ${SHM:-(none: NA)} per start"
  have haproxy && echo "haproxy: $(haproxy -v 2>&1 | head -1)"
  have nginx && echo "nginx: $(nginx -v 2>&1 | head -1) stream module: ${NGINX_STREAM_SO:-built in?}"
  have socat && echo "socat: $(socat -V 2>&1 | grep -m1 'socat version')"
  have iperf3 && echo "iperf3: $(iperf3 -v 2>&1 | head -1)"
} >"$OUT/env.txt" 2>/dev/null

T0=$(date +%s)
read -r -a RELAY_LIST <<<"$RELAYS"
for ((run = 1; run <= RUNS; run++)); do
  # rotate the relay order every run, so no relay is always measured first or last
  k=$(( (run - 1) % ${#RELAY_LIST[@]} ))
  ORDER="${RELAY_LIST[*]:k} ${RELAY_LIST[*]:0:k}"
  for t in $PLAIN_TESTS; do
    CUR_TEST=$t
    log "run $run/$RUNS: $t"
    case $t in
      tput) have iperf3 || continue
            test_tput "$run" direct
            for r in $ORDER; do log "  $r"; test_tput "$run" "$r"; done ;;
      idle) for r in $ORDER; do log "  $r"; test_idle "$run" "$r"; done ;;
      cps)  test_cps "$run" direct
            for r in $ORDER; do log "  $r"; test_cps "$run" "$r"; done ;;
      resume) for r in $ORDER; do log "  $r"; test_resume "$run" "$r"; done ;;
    esac
  done
done
log "measurements took $(( $(date +%s) - T0 )) s"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine adds noise)" >>"$OUT/env.txt"
stop_all

[ -n "$PLAIN_TESTS" ] &&
  "$PY" "$HERE/summarize.py" "$RAW" "$OUT/env.txt" "$OUT/logs" | tee "$OUT/summary.txt"

if [[ " $TESTS " == *" tls "* ]]; then
  log "TLS part: contrib/bench/tls.sh (output in $OUT/tls)"
  RUNS=$RUNS BENCH_SECS=$BENCH_SECS N_IDLE=$N_IDLE PY=$PY XRAYD_BIN=${XRAYD_ORIG:-$XRAYD_BIN} \
    XRAYD_BUFFER_SIZE=$XRAYD_BUFFER_SIZE BENCH_OUT="$OUT/tls" bash "$HERE/tls.sh"
fi
if [[ " $TESTS " == *" proxy "* ]]; then
  log "transparent proxy part: contrib/bench/proxy_bench.sh (output in $OUT/proxy)"
  RUNS=$RUNS PY=$PY XRAYD_BIN=${XRAYD_ORIG:-$XRAYD_BIN} XRAYD_BUFFER_SIZE=$XRAYD_BUFFER_SIZE \
    BENCH_OUT="$OUT/proxy" bash "$HERE/proxy_bench.sh"
fi
[ "${XRAY_BENCH:-1}" = 0 ] || { log "XRAY §8 part: contrib/bench/xray_bench.py (output in $OUT/xray)"; BENCH_OUT="$OUT/xray" XRAYD_BIN=${XRAYD_ORIG:-$XRAYD_BIN} "$PY" "$HERE/xray_bench.py"; }
exit 0
