#!/usr/bin/env bash
# contrib/bench/proxy_bench.sh - xrayd's transparent proxies (proxy: blocks) against
# HAProxy (original destination: `server 0.0.0.0:0`), tinyproxy (transparent) and socat
# (fixed target, reference only), side by side in one run, through iptables/nftables
# REDIRECT in network namespaces this script makes and removes. run.sh calls it (test
# "proxy"); it also runs on its own, as root.
#
# Topology (198.18.0.0/15 only, one set of namespaces per run, named xpb-PID-*):
#   xpb-PID-c  client  198.18.0.1  (wrk, iperf3 -c, benchtool ping)
#        | veth
#   xpb-PID-r  router  198.18.0.2 / 198.19.0.1: forwards; every proxy runs here; the
#        | veth        nat PREROUTING rule "iif from the client, tcp dport D -> REDIRECT
#        |             :PROXY_PORT" is the only rule, set for the case being measured
#   xpb-PID-s  server  198.19.0.2  (nginx :80 serving a 1 KiB file, iperf3 -s :5201,
#                                   benchtool echo :7000)
# The client always talks to 198.19.0.2; every case, direct included, takes the same
# two veth hops through the router, and the proxies' own connections leave the router
# from its OUTPUT path, which the PREROUTING rule never sees: no uid tricks.
#
#   http    wrk -t WRK_THREADS -c WRK_CONNS -d WRK_SECS --latency against the 1 KiB file:
#           direct, xrayd mode http (continuity on, and off), xrayd mode circuit,
#           haproxy mode http and mode tcp, tinyproxy, socat. req/s, p50, p99, errors,
#           proxy CPU-us per request; a curl check first (2 requests on one connection:
#           status, body, connection reuse)
#   tput    iperf3 -c, 1 stream, IPERF_SECS: direct, xrayd circuit, haproxy tcp, socat;
#           Gbit/s and CPU-s per GB of the proxy's process tree (utime+stime, master and
#           workers, from /proc)
#   resume  N_LIVE connections through xrayd circuit to the echo server, each pinging
#           every PING_MS with a checked sequence; kill -9 of the worker holding the most
#           connections; per-connection gap across the kill, survivors, bytes lost or
#           duplicated, and the replacement's "took over K connection(s) in X ms" line; the
#           same load without a kill through RESUME_REFS (direct, xrayd, haproxy tcp) first
# Each test is repeated RUNS times (cases rotated); proxy_summarize.py prints medians and
# per-run ratios. Installs nothing: a missing tool is NA. Everything is bounded in time,
# and the namespaces, processes and state files go on exit, error or signal.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
source "$HERE/lib.sh"

RUNS=${RUNS:-3}
WRK_SECS=${WRK_SECS:-10}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-50}
IPERF_SECS=${IPERF_SECS:-5}
N_LIVE=${N_LIVE:-1000}
PING_MS=${PING_MS:-50}
RESUME_WARM=${RESUME_WARM:-2}   # s of pings before the reference instant (kill 1 s later)
RESUME_POST=${RESUME_POST:-3}   # s of pings after the kill
RESUME_REFS=${RESUME_REFS-direct xrayd_circuit haproxy_tcp}   # the same load without a kill
XRAYD_BIN=${XRAYD_BIN:-$ROOT/objs/xrayd}
XRAYD_BUFFER_SIZE=${XRAYD_BUFFER_SIZE:-64k}
PROXY_TESTS=${PROXY_TESTS:-http tput resume}
HTTP_VARIANTS=${HTTP_VARIANTS:-xrayd_http xrayd_http_nocont xrayd_circuit haproxy_http haproxy_tcp tinyproxy socat}
TPUT_VARIANTS=${TPUT_VARIANTS:-xrayd_circuit haproxy_tcp socat}
PY=${PY:-python3}

# server ports (what the client asks for) and the proxies' ports in the router
A_CLI=198.18.0.1 A_RTR=198.18.0.2 A_RTR2=198.19.0.1 A_SRV=198.19.0.2
D_HTTP=80 D_IPERF=5201 D_ECHO=7000
declare -A PPORT=([xrayd_http]=3128 [xrayd_http_nocont]=3127 [xrayd_circuit]=3129
                  [haproxy_http]=3130 [haproxy_tcp]=3131 [tinyproxy]=3132 [socat]=3133)

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${BENCH_OUT:-/tmp/xrayd-bench-proxy.$STAMP}
mkdir -p "$OUT/logs" || exit 1
RUN=$(mktemp -d /tmp/xrayd-bench-proxy-run.XXXXXX) || exit 1
chmod 755 "$RUN"   # nginx's and tinyproxy's workers run as nobody
RAW="$OUT/raw.txt"
: >"$RAW"
NSP=xpb-$$
NS_C=$NSP-c NS_R=$NSP-r NS_S=$NSP-s
STATE=""
NS_MADE=0

cleanup() {
  trap - EXIT INT TERM HUP
  stop_all
  if [ "$NS_MADE" = 1 ]; then
    local n; for n in $NS_C $NS_R $NS_S; do ip netns del "$n" 2>/dev/null; done
  fi
  [ -n "$STATE" ] && rm -rf "$STATE"
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# 1000 live connections: ~1000 fds in the client and the echo server, ~4000 in xrayd
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ $((N_LIVE * 2 + 200)) -gt "$(ulimit -n)" ]; then
  N_LIVE=$(( ($(ulimit -n) - 200) / 2 )); log "N_LIVE lowered to $N_LIVE (fd limit $(ulimit -n))"
fi

have() { command -v "$1" >/dev/null 2>&1; }
rec() { echo "$1 $2 $3 $4" >>"$RAW"; }  # rec RUN VARIANT METRIC VALUE
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# ----------------------------------------------------------------- preflight
log "proxy output: $OUT (raw.txt, summary.txt, logs/)"
{ echo "date: $(date -u '+%F %T') UTC"
  echo "host: $(nproc) cpus, kernel $(uname -r)"
  echo "settings: RUNS=$RUNS WRK=${WRK_THREADS}t/${WRK_CONNS}c/${WRK_SECS}s IPERF_SECS=$IPERF_SECS N_LIVE=$N_LIVE PING_MS=$PING_MS XRAYD_BUFFER_SIZE=$XRAYD_BUFFER_SIZE"
} >"$OUT/env.txt"
summarize() {
  "$PY" "$HERE/proxy_summarize.py" "$RAW" "$OUT/env.txt" "$OUT/logs" | tee "$OUT/summary.txt"
}
if [ "$(id -u)" != 0 ] || ! have ip; then
  log "proxy bench needs root and ip(8) (network namespaces): everything is NA"
  echo "skipped: needs root and ip netns" >>"$OUT/env.txt"; summarize; exit 0
fi
NAT=""
if have nft; then NAT=nft; elif have iptables; then NAT=iptables; fi
if [ -z "$NAT" ]; then
  log "neither nft nor iptables: no REDIRECT, everything is NA"
  echo "skipped: no nft/iptables" >>"$OUT/env.txt"; summarize; exit 0
fi

BT=""
if have cc && cc -O2 -o "$RUN/benchtool" "$HERE/benchtool.c" 2>"$OUT/logs/benchtool-build.log"; then
  BT="$RUN/benchtool"
else
  log "cannot build contrib/bench/benchtool.c: the resumption test is NA"
fi
if [ -x "$XRAYD_BIN" ]; then
  XRAYD_ORIG=$XRAYD_BIN
  cp "$XRAYD_BIN" "$RUN/xrayd" && XRAYD_BIN="$RUN/xrayd"   # a rebuild cannot mix binaries
  "$XRAYD_BIN" -V >"$OUT/logs/xrayd-version.txt" 2>&1
  STATE=$(mktemp -d /dev/shm/xrayd-proxy-bench.XXXXXX) || STATE=""
else
  log "no xrayd binary at $XRAYD_BIN: xrayd is NA"
fi

available() { # available VARIANT
  case $1 in
    direct) return 0 ;;
    xrayd_*) [ -x "$XRAYD_BIN" ] && [ -n "$STATE" ] ;;
    haproxy_*) have haproxy ;;
    tinyproxy) have tinyproxy ;;
    socat) have socat ;;
    *) return 1 ;;
  esac
}

# namespaces left by a run that was killed (its PID is gone)
for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^xpb-[0-9]+-[crs]$'); do
  p=${n#xpb-}; p=${p%-*}
  kill -0 "$p" 2>/dev/null || { log "removing stale namespace $n"; ip netns del "$n" 2>/dev/null; }
done

# ------------------------------------------------------------------ topology
topo_up() {
  NS_MADE=1
  ip netns add $NS_C && ip netns add $NS_R && ip netns add $NS_S || return 1
  ip link add xc0 netns $NS_C type veth peer name xr0 netns $NS_R || return 1
  ip link add xs0 netns $NS_S type veth peer name xr1 netns $NS_R || return 1
  ip -n $NS_C addr add $A_CLI/24 dev xc0 && ip -n $NS_R addr add $A_RTR/24 dev xr0 &&
    ip -n $NS_R addr add $A_RTR2/24 dev xr1 && ip -n $NS_S addr add $A_SRV/24 dev xs0 || return 1
  local n; for n in $NS_C $NS_R $NS_S; do ip -n "$n" link set lo up || return 1; done
  ip -n $NS_C link set xc0 up && ip -n $NS_R link set xr0 up && ip -n $NS_R link set xr1 up &&
    ip -n $NS_S link set xs0 up || return 1
  ip -n $NS_C route add default via $A_RTR && ip -n $NS_S route add default via $A_RTR2 || return 1
  nsx $NS_R sysctl -qw net.ipv4.ip_forward=1 || return 1
  # wrk's connections end in TIME_WAIT on the client; tinyproxy's in the router
  for n in $NS_C $NS_R; do nsx "$n" sysctl -qw net.ipv4.tcp_tw_reuse=1 2>/dev/null; done
  if [ $NAT = nft ]; then
    nsx $NS_R nft -f - <<'NFT' || return 1
table ip xpb {
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
  }
}
NFT
  fi
  return 0
}

# redirect DPORT PROXYPORT | redirect off : the one REDIRECT rule of the router
redirect() {
  if [ $NAT = nft ]; then
    nsx $NS_R nft flush chain ip xpb pre || return 1
    [ "$1" = off ] || nsx $NS_R nft add rule ip xpb pre iifname xr0 tcp dport "$1" redirect to :"$2"
  else
    nsx $NS_R iptables -t nat -F PREROUTING || return 1
    [ "$1" = off ] || nsx $NS_R iptables -t nat -A PREROUTING -i xr0 -p tcp --dport "$1" -j REDIRECT --to-ports "$2"
  fi
}

ns_listening() { nsx "$1" ss -Hltn "sport = :$2" 2>/dev/null | grep -q .; }
# ns_wait_port NS PORT [PID] : <= 10 s
ns_wait_port() {
  local ns=$1 port=$2 pid=${3:-}
  for _ in $(seq 1 100); do
    ns_listening "$ns" "$port" && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then log "process $pid exited before port $port opened"; return 1; fi
    sleep 0.1
  done
  log "port $port did not open in $ns"; return 1
}
ns_wait_free() { for _ in $(seq 1 100); do ns_listening "$1" "$2" || return 0; sleep 0.1; done; return 1; }

# ------------------------------------------------------------------ servers
servers_up() {
  mkdir -p "$RUN/www" "$RUN/ngx"
  head -c 1024 /dev/zero | tr '\0' 'a' >"$RUN/www/s.html"
  chmod -R a+rX "$RUN/www"
  cat >"$RUN/nginx.conf" <<CFG
daemon off;
master_process on;
worker_processes auto;
pid $RUN/nginx.pid;
error_log $OUT/logs/nginx.error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $RUN/ngx/cb; proxy_temp_path $RUN/ngx/p; fastcgi_temp_path $RUN/ngx/f;
  uwsgi_temp_path $RUN/ngx/u; scgi_temp_path $RUN/ngx/s;
  keepalive_requests 1000000; keepalive_timeout 65;
  server { listen $A_SRV:$D_HTTP; root $RUN/www; }
}
CFG
  HAVE_NGINX=0
  if have nginx && have wrk && have curl; then
    bg_start "$OUT/logs/nginx.stderr.log" ip netns exec $NS_S nginx -e "$OUT/logs/nginx.error.log" -p "$RUN" -c "$RUN/nginx.conf"
    ns_wait_port $NS_S $D_HTTP "$LASTPID" && HAVE_NGINX=1
  else
    log "nginx, wrk or curl missing: the HTTP test is NA"
  fi
  HAVE_IPERF=0
  if have iperf3; then
    bg_start "$OUT/logs/iperf3-server.log" ip netns exec $NS_S iperf3 -s -B $A_SRV -p $D_IPERF
    ns_wait_port $NS_S $D_IPERF "$LASTPID" && HAVE_IPERF=1
  else
    log "iperf3 missing: throughput is NA"
  fi
  HAVE_ECHO=0
  if [ -n "$BT" ]; then
    bg_start "$OUT/logs/echo.log" ip netns exec $NS_S env BENCH_ADDR=$A_SRV "$BT" echo $D_ECHO 7200
    ns_wait_port $NS_S $D_ECHO "$LASTPID" && HAVE_ECHO=1
  fi
}

# ------------------------------------------------------------------ proxies
# proxy_start VARIANT DPORT TAG : start it in the router (DPORT: socat's fixed target);
# sets PPID_ (the tracked PID); returns 1 if it cannot run
proxy_start() {
  local v=$1 dport=$2 tag=$3 port=${PPORT[$1]} cfg
  PPID_=""
  available "$v" || return 1
  ns_wait_free $NS_R "$port" || { log "port $port busy in the router"; return 1; }
  case $v in
    xrayd_*)
      local mode=circuit cont=on level=warn
      case $v in xrayd_http) mode=http ;; xrayd_http_nocont) mode=http cont=off ;; esac
      [ "$tag" = resume ] && level=notice   # the takeover lines are notices
      cfg="$RUN/$v.$tag.yaml"
      cat >"$cfg" <<YAML
workers: 2
daemon: off
pid: $RUN/$v.pid
error_log: $OUT/logs/$v.$tag.error.log
log_level: $level
state_dir: $STATE
proxy:
  - name: $v
    listen: 0.0.0.0:$port
    mode: $mode
    intercept: redirect
    continuity: $cont
    buffer_size: $XRAYD_BUFFER_SIZE
YAML
      if ! "$XRAYD_BIN" -t -c "$cfg" >"$RUN/xrayd-t.out" 2>&1; then
        log "$v: config test failed: $(head -3 "$RUN/xrayd-t.out")"; return 1
      fi
      bg_start "$OUT/logs/$v.$tag.stderr.log" ip netns exec $NS_R "$XRAYD_BIN" -c "$cfg" ;;
    haproxy_*)
      local mode=tcp; [ "$v" = haproxy_http ] && mode=http
      cfg="$RUN/$v.cfg"
      cat >"$cfg" <<CFG
global
  maxconn 4000
defaults
  mode $mode
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend f
  bind 0.0.0.0:$port
  default_backend b
backend b
  server orig 0.0.0.0:0
CFG
      bg_start "$OUT/logs/$v.stderr.log" ip netns exec $NS_R haproxy -db -f "$cfg" ;;
    tinyproxy)
      cfg="$RUN/tinyproxy.conf"
      touch "$OUT/logs/tinyproxy.log"; chown nobody "$OUT/logs/tinyproxy.log" 2>/dev/null
      chmod a+x "$OUT" "$OUT/logs" 2>/dev/null
      cat >"$cfg" <<CFG
User nobody
Group nogroup
Port $port
Listen 0.0.0.0
Timeout 60
MaxClients 200
LogFile "$OUT/logs/tinyproxy.log"
LogLevel Error
Allow 198.18.0.0/15
DisableViaHeader Yes
XTinyproxy No
CFG
      bg_start "$OUT/logs/tinyproxy.stderr.log" ip netns exec $NS_R tinyproxy -d -c "$cfg" ;;
    socat)
      bg_start "$OUT/logs/socat.stderr.log" ip netns exec $NS_R socat -b 131072 \
        TCP-LISTEN:"$port",bind=0.0.0.0,reuseaddr,fork,backlog=1024 TCP:$A_SRV:"$dport" ;;
  esac
  PPID_=$LASTPID
  if ! ns_wait_port $NS_R "$port" "$PPID_"; then
    log "$v did not start; see $OUT/logs/$v*"; stop_pid "$PPID_"; PPID_=""; return 1
  fi
  case $v in xrayd_*) for _ in $(seq 1 30); do [ "$(nproc_tree "$PPID_")" -ge 3 ] && break; sleep 0.1; done ;; esac
  sleep 0.3
  return 0
}
proxy_stop() { [ -n "${PPID_:-}" ] && stop_pid "$PPID_"; PPID_=""; redirect off; }

# ------------------------------------------------------------------ 1. HTTP
URL=http://$A_SRV/s.html
# http_check RUN VARIANT : two requests on one connection with curl; records
# http_check (1: both 200 with the file's bytes) and http_reuse (1: one connection)
http_check() {
  local n=$1 v=$2 out ok=1 reuse
  rm -f "$RUN/b1" "$RUN/b2"
  out=$(nsx $NS_C timeout 10 curl -s -m 5 -o "$RUN/b1" -o "$RUN/b2" -w '%{http_code} %{num_connects}\n' "$URL" "$URL" 2>/dev/null)
  echo "$v run $n: $(echo $out)" >>"$OUT/logs/http-check.txt"
  [ "$(echo "$out" | awk '{print $1}' | tr '\n' ' ')" = "200 200 " ] || ok=0
  cmp -s "$RUN/b1" "$RUN/www/s.html" && cmp -s "$RUN/b2" "$RUN/www/s.html" || ok=0
  reuse=$(echo "$out" | awk 'NR == 2 { print ($2 == 0) ? 1 : 0 }')
  rec "$n" "$v" http_check "$ok"; rec "$n" "$v" http_reuse "${reuse:-0}"
  [ $ok = 1 ] || log "  $v: curl check failed: $(echo $out); bodies: $(wc -c <"$RUN/b1" 2>/dev/null)/$(wc -c <"$RUN/b2" 2>/dev/null) B"
}

# parse_wrk FILE : "rps p50_ms p99_ms errors read_errors requests"
parse_wrk() {
  awk 'function ms(v) { if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
                        if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
                        if (v ~ /m$/) { sub(/m$/, "", v); return v * 60000 }
                        if (v ~ /s$/) { sub(/s$/, "", v); return v * 1000 } return "NA" }
       /^Requests\/sec:/ { rps = $2 }
       /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) }
       / requests in / { reqs = $1 }
       /Socket errors/ { gsub(/,/, ""); err += $4 + $8 + $10; rd += $6 }
       /Non-2xx/ { err += $NF }
       END { printf "%s %s %s %d %d %s\n", rps == "" ? "NA" : rps, p50 == "" ? "NA" : p50,
             p99 == "" ? "NA" : p99, err, rd, reqs == "" ? 0 : reqs }' "$1"
}

test_http() { # test_http RUN VARIANT
  local n=$1 v=$2 f="$OUT/logs/wrk.$2.$1.txt" c0 c1 res
  if [ "$v" != direct ]; then
    if ! proxy_start "$v" $D_HTTP http; then rec "$n" "$v" rps NA; return; fi
    redirect $D_HTTP "${PPORT[$v]}" || { log "cannot set the REDIRECT rule"; proxy_stop; rec "$n" "$v" rps NA; return; }
  fi
  http_check "$n" "$v"
  [ "$v" = direct ] || c0=$(cpu_ticks "$PPID_")
  nsx $NS_C timeout $((WRK_SECS + 30)) wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${WRK_SECS}s" --latency "$URL" >"$f" 2>&1
  [ "$v" = direct ] || c1=$(cpu_ticks "$PPID_")
  res=$(parse_wrk "$f")
  set -- $res
  rec "$n" "$v" rps "$1"; rec "$n" "$v" p50_ms "$2"; rec "$n" "$v" p99_ms "$3"
  rec "$n" "$v" errors "$4"; rec "$n" "$v" read_errors "$5"
  if [ "$v" != direct ]; then
    rec "$n" "$v" cpu_us_per_req "$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" -v r="$6" \
      'BEGIN { if (r > 0) printf "%.2f", (b - a) / hz / r * 1e6; else print "NA" }')"
    rec "$n" "$v" procs_alive "$(nproc_tree "$PPID_")"
    proxy_stop
  fi
  sleep 1   # TIME_WAIT churn and the proxy's exit settle
}

# ------------------------------------------------------------ 2. throughput
test_tput() { # test_tput RUN VARIANT
  local n=$1 v=$2 c0 c1 try res=""
  if [ "$v" != direct ]; then
    if ! proxy_start "$v" $D_IPERF tput; then rec "$n" "$v" gbps NA; rec "$n" "$v" cpu_s_per_gb NA; return; fi
    redirect $D_IPERF "${PPORT[$v]}" || { proxy_stop; rec "$n" "$v" gbps NA; return; }
  fi
  for try in 1 2; do
    [ "$v" = direct ] || c0=$(cpu_ticks "$PPID_")
    if nsx $NS_C timeout $((IPERF_SECS + 20)) iperf3 -c $A_SRV -p $D_IPERF -t "$IPERF_SECS" -P 1 -J \
         >"$RUN/iperf.$v.$n.json" 2>"$RUN/iperf.err"; then
      [ "$v" = direct ] || c1=$(cpu_ticks "$PPID_")
      res=$("$PY" -c 'import json,sys; e=json.load(open(sys.argv[1]))["end"]["sum_received"]
print("%.3f %d" % (e["bits_per_second"]/1e9, e["bytes"]))' "$RUN/iperf.$v.$n.json") && break
    fi
    log "iperf3 through $v failed (try $try): $(head -c 300 "$RUN/iperf.err"; grep -m1 '"error"' "$RUN/iperf.$v.$n.json")"
    res=""; sleep 1
  done
  if [ -n "$res" ]; then
    rec "$n" "$v" gbps "${res% *}"
    [ "$v" = direct ] || rec "$n" "$v" cpu_s_per_gb "$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" -v by="${res#* }" \
      'BEGIN { if (by > 0) printf "%.3f", (b - a) / hz / (by / 1e9); else print "NA" }')"
  else
    rec "$n" "$v" gbps NA; rec "$n" "$v" cpu_s_per_gb NA
  fi
  [ "$v" = direct ] || proxy_stop
}

# ------------------------------------------------------------ 3. resumption
# ping_run RUN VARIANT KILL : N_LIVE pinging connections through VARIANT (direct: no
# proxy) to the echo server; with KILL=1, kill -9 of the xrayd worker holding the most
# connections. Records under "resume" (the kill run) or "ping_VARIANT" (no kill).
ping_run() {
  local n=$1 v=$2 kill=$3 tag=ping_$2 ready="$RUN/ping.ready" killf="$RUN/ping.kill"
  [ "$kill" = 1 ] && tag=resume
  local conns="$OUT/logs/$tag.conns.$n.txt" ports="$OUT/logs/$tag.victim-ports.$n.txt"
  local out="$OUT/logs/$tag.ping.$n.txt" log_f="$OUT/logs/$v.resume.error.log" tpid w best=0 victim="" fds c0 c1
  if [ "$v" != direct ]; then
    if ! proxy_start "$v" $D_ECHO resume; then rec "$n" "$tag" survived NA; return; fi
    redirect $D_ECHO "${PPORT[$v]}" || { proxy_stop; rec "$n" "$tag" survived NA; return; }
  fi
  local log_lines0; log_lines0=$( { wc -l <"$log_f"; } 2>/dev/null || echo 0)
  rm -f "$ready" "$killf"
  [ "$kill" = 1 ] || echo - >"$killf"   # no kill: the tool marks the instant only
  bg_start "$out" ip netns exec $NS_C env BENCH_ADDR=$A_SRV "$BT" ping $D_ECHO "$N_LIVE" "$PING_MS" \
    "$RESUME_WARM" "$RESUME_POST" "$ready" "$([ "$kill" = 1 ] && echo "$killf" || echo -)" "$conns"
  tpid=$LASTPID
  for _ in $(seq 1 900); do [ -f "$ready" ] && break; kill -0 "$tpid" 2>/dev/null || break; sleep 0.1; done
  if [ ! -f "$ready" ]; then
    log "$tag: the ping client did not get its connections up"; stop_pid "$tpid"
    [ "$v" = direct ] || proxy_stop
    rec "$n" "$tag" survived NA; return
  fi
  [ "$v" = direct ] || c0=$(cpu_ticks "$PPID_")
  if [ "$kill" = 1 ]; then
    # the victim: the worker holding the most descriptors (2 per connection)
    for w in $(descendants "$PPID_"); do
      fds=$(ls /proc/"$w"/fd 2>/dev/null | wc -l)
      echo "worker $w ($(cat /proc/"$w"/comm 2>/dev/null)): $fds fds" >>"$OUT/logs/resume.workers.$n.txt"
      [ "$fds" -gt "$best" ] && { best=$fds; victim=$w; }
    done
    echo "master $PPID_: $(ls /proc/"$PPID_"/fd 2>/dev/null | wc -l) fds; victim $victim" >>"$OUT/logs/resume.workers.$n.txt"
    # the victim's client connections by the client's port (the master holds a duplicate
    # of every socket: match the worker's pid)
    nsx $NS_R ss -Htnp state established "( sport = :${PPORT[$v]} )" 2>/dev/null |
      grep "pid=$victim," | awk '{ split($4, a, ":"); print a[length(a)] }' | sort -n >"$ports"
    rec "$n" "$tag" victim_conns "$(wc -l <"$ports")"
    echo "${victim:-0}" >"$killf.tmp" && mv "$killf.tmp" "$killf"
  fi
  for _ in $(seq 1 $(( (RESUME_WARM + RESUME_POST + 50) * 10 ))); do kill -0 "$tpid" 2>/dev/null || break; sleep 0.1; done
  [ "$v" = direct ] || c1=$(cpu_ticks "$PPID_")
  stop_pid "$tpid"
  awk -F': ' -v n="$n" -v t="$tag" '/^[a-z_0-9]+: [^ ]+$/ && !/^ping: /{ print n, t, $1, $2 }' "$out" >>"$RAW"
  local echoed; echoed=$(awk -F': ' '/^pings_echoed:/{print $2}' "$out")
  [ "$v" = direct ] || rec "$n" "$tag" cpu_us_per_ping "$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" -v p="${echoed:-0}" \
      'BEGIN { if (p > 0) printf "%.2f", (b - a) / hz / p * 1e6; else print "NA" }')"
  if [ "$kill" = 1 ]; then
    # the replacement's own figure
    local took=""
    for _ in $(seq 1 50); do
      took=$(tail -n +$((log_lines0 + 1)) "$log_f" 2>/dev/null | grep -m1 "took over .* of worker $victim in")
      [ -n "$took" ] && break; sleep 0.1
    done
    if [ -n "$took" ]; then
      rec "$n" "$tag" takeover_conns "$(echo "$took" | sed -n 's/.*took over \([0-9]*\) connection.*/\1/p')"
      rec "$n" "$tag" takeover_ms "$(echo "$took" | sed -n 's/.* in \([0-9.]*\) ms.*/\1/p')"
    else
      rec "$n" "$tag" takeover_conns NA; rec "$n" "$tag" takeover_ms NA
      log "resume: no 'took over ... of worker $victim' line in $log_f"
    fi
    # the gaps of the victim's connections
    "$PY" - "$conns" "$ports" "$n" "$tag" >>"$RAW" <<'PYEOF'
import sys
conns, ports, run, tag = sys.argv[1:5]
vp = {int(l) for l in open(ports) if l.strip()}
rows = [l.split() for l in open(conns) if l.strip()]
def q(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    return xs[max(0, int(p * len(xs) + 0.999999) - 1)]
v = [r for r in rows if int(r[1]) in vp]
o = [r for r in rows if int(r[1]) not in vp]   # the other worker's: a stall there is not the kill's
out = {"victim_matched": len(v)}
for name, col in (("gap_kill", 3), ("kill_first", 4), ("rtt_post", 5), ("gap_ref", 2)):
    xs = [float(r[col]) for r in v if float(r[col]) >= 0]
    out["v_%s_p99_ms" % name] = q(xs, 0.99)
    out["v_%s_max_ms" % name] = q(xs, 1.0)
xs = [float(r[3]) for r in o if float(r[3]) >= 0]
out["o_gap_kill_p99_ms"] = q(xs, 0.99)
out["o_gap_kill_max_ms"] = q(xs, 1.0)
out["v_no_echo_after_kill"] = sum(1 for r in v if float(r[4]) < 0)
out["v_closed"] = sum(int(r[11]) for r in v)
for k, x in out.items():
    print(run, tag, k, "NA" if x is None else x)
PYEOF
  fi
  sleep 1
  [ "$v" = direct ] || proxy_stop
}

test_resume() { # test_resume RUN : the no-kill references, then the kill run
  local n=$1 v
  if [ -z "$BT" ] || [ "$HAVE_ECHO" != 1 ]; then rec "$n" resume survived NA; return; fi
  for v in $RESUME_REFS; do log "  $v, no kill (reference)"; ping_run "$n" "$v" 0; done
  log "  xrayd_circuit, kill -9 of the busiest worker"
  ping_run "$n" xrayd_circuit 1
}

# -------------------------------------------------------------------- main
if ! topo_up; then
  log "cannot build the namespaces (ip netns / veth / $NAT failed): everything is NA"
  echo "skipped: namespaces could not be built" >>"$OUT/env.txt"; summarize; exit 0
fi
servers_up
# the REDIRECT rule works: with it pointing at a closed port, the connection is refused
redirect $D_HTTP 3999
if [ "$HAVE_NGINX" = 1 ] && ! nsx $NS_C timeout 5 curl -s -m 3 -o /dev/null "$URL"; then
  echo "check: REDIRECT ($NAT, router PREROUTING) diverts the client's connections: yes" >>"$OUT/env.txt"
else
  echo "check: REDIRECT ($NAT) diverts the client's connections: NO (or no nginx)" >>"$OUT/env.txt"
fi
redirect off
{ echo "xrayd: ${XRAYD_ORIG:-$XRAYD_BIN} $(head -1 "$OUT/logs/xrayd-version.txt" 2>/dev/null)" \
       "(built $(date -u -r "${XRAYD_ORIG:-$XRAYD_BIN}" '+%F %T' 2>/dev/null) UTC, sha256 $(sha256sum "$XRAYD_BIN" 2>/dev/null | cut -c1-12))"
  echo "nat: $NAT in the router namespace; state_dir: $STATE"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  have haproxy && echo "haproxy: $(haproxy -v 2>&1 | head -1)"
  have tinyproxy && echo "tinyproxy: $(tinyproxy -v 2>&1 | head -1)"
  have nginx && echo "nginx: $(nginx -v 2>&1 | head -1)"
  have socat && echo "socat: $(socat -V 2>&1 | grep -m1 'socat version')"
  have wrk && echo "wrk: $(wrk -v 2>&1 | head -1 | cut -c1-40)"
  have iperf3 && echo "iperf3: $(iperf3 -v 2>&1 | head -1)"
} >>"$OUT/env.txt" 2>/dev/null

T0=$(date +%s)
read -r -a HV <<<"$HTTP_VARIANTS"
read -r -a TV <<<"$TPUT_VARIANTS"
for ((run = 1; run <= RUNS; run++)); do
  for t in $PROXY_TESTS; do
    case $t in
      http)
        [ "$HAVE_NGINX" = 1 ] || continue
        k=$(( (run - 1) % ${#HV[@]} )); order="direct ${HV[*]:k} ${HV[*]:0:k}"
        log "run $run/$RUNS: http ($order)"
        for v in $order; do log "  $v"; test_http "$run" "$v"; done ;;
      tput)
        [ "$HAVE_IPERF" = 1 ] || continue
        k=$(( (run - 1) % ${#TV[@]} )); order="direct ${TV[*]:k} ${TV[*]:0:k}"
        log "run $run/$RUNS: tput ($order)"
        for v in $order; do log "  $v"; test_tput "$run" "$v"; done ;;
      resume)
        log "run $run/$RUNS: resume ($N_LIVE live connections, kill -9 of a worker)"
        test_resume "$run" ;;
    esac
  done
done
log "measurements took $(( $(date +%s) - T0 )) s"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine adds noise)" >>"$OUT/env.txt"
stop_all
summarize
exit 0
