#!/usr/bin/env bash
# contrib/bench/tls.sh - xrayd's TLS ends against HAProxy and stunnel, side by side in
# one run, all on 127.0.0.1 (run.sh calls it last; it also runs on its own):
#   hop1  TLS relay, one hop: iperf3 -c -> client node (plain in, TLS out) -> TLS ->
#         server node (TLS in, plain out) -> iperf3 -s; Gbit/s and CPU-s/GB of all
#         proxy processes of the path
#   link3 3-link re-encryption chain: C1 -TLS-> S1+C2 -TLS-> S2+C3 -TLS-> S3 -> iperf3 -s
#   lat   connect + first 32 B echo through the 3-link chain, sessions resumed between
#         the nodes: median/p99 of N_SEQ sequential connections, total time of N_CONC
#         concurrent ones (and, with TLS_NORESUME=1, the same with resumption off)
#   idle  N_IDLE idle connections through a 1-link pair (each echoed 32 B first);
#         KiB per connection of the client node and of the server node (RSS deltas)
# xrayd_cont is xrayd (workers: 2) with continuity: on on every node's relay block (after
# the handshakes a connection goes on in the ring engine, its record layer in the
# snapshot); each node's state_dir is a fresh directory under /dev/shm, removed when the
# node stops. It is measured against xrayd (continuity off): the cost of continuity.
# TLS 1.2, ECDHE-ECDSA, P-256 certificates from one private CA; clients verify the chain
# and the name bench.local. xrayd runs with its default suites (AES-256-GCM); the peers
# are pinned to ECDHE-ECDSA-AES256-GCM-SHA384 and P-256 (the *_a128 variants: their
# bench-peers suite ECDHE-ECDSA-AES128-GCM-SHA256, for reference).
# Each measurement is repeated RUNS times, the proxies interleaved and rotated; medians
# and per-run ratios are printed by tls_summarize.py. Installs nothing; a missing peer
# is NA. Ports 16301-16399.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
source "$HERE/lib.sh"

BENCH_SECS=${BENCH_SECS:-5}
N_IDLE=${N_IDLE:-2000}
N_SEQ=${N_SEQ:-500}
N_CONC=${N_CONC:-200}
RUNS=${RUNS:-3}
XRAYD_BIN=${XRAYD_BIN:-$ROOT/objs/xrayd}
XRAY_BIN=${XRAY_BIN:-$ROOT/objs/xray}
XRAYD_BUFFER_SIZE=${XRAYD_BUFFER_SIZE:-64k}
TLS_TESTS=${TLS_TESTS:-hop1 link3 lat idle}
TLS_TPUT_VARIANTS=${TLS_TPUT_VARIANTS:-xrayd xrayd_cont xrayd_w1 haproxy stunnel haproxy_a128 stunnel_a128}
TLS_VARIANTS=${TLS_VARIANTS:-xrayd xrayd_cont haproxy stunnel}   # lat and idle
TLS_NORESUME=${TLS_NORESUME:-1}
PY=${PY:-python3}

CIPHER_256=ECDHE-ECDSA-AES256-GCM-SHA384
CIPHER_128=ECDHE-ECDSA-AES128-GCM-SHA256

P_IPERF=16301
P_ECHO=16302
P_PROBE=16303
# chain base ports: a chain of N links uses BASE..BASE+N (stunnel: BASE..BASE+2N-1)
declare -A BASE=([xrayd]=16310 [xrayd_w1]=16320 [haproxy]=16330 [stunnel]=16340
                 [haproxy_a128]=16350 [stunnel_a128]=16360 [check]=16370 [xrayd_cont]=16380)

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${BENCH_OUT:-/tmp/xrayd-bench-tls.$STAMP}
mkdir -p "$OUT/logs" || exit 1
RUN=$(mktemp -d /tmp/xrayd-bench-tls-run.XXXXXX) || exit 1
RAW="$OUT/raw.txt"
: >"$RAW"
# xrayd_cont: every node's state_dir is a fresh directory under $SHM (made at the
# node's start, removed when the chain stops); $SHM itself is removed on exit
SHM=""
CHAIN_STATES=()
if [[ " $TLS_TPUT_VARIANTS $TLS_VARIANTS " == *" xrayd_cont "* ]]; then
  SHM=$(mktemp -d /dev/shm/xrayd-bench-tls.XXXXXX) || SHM=""
fi

cleanup() {
  trap - EXIT INT TERM HUP
  stop_all
  rm -rf "$RUN"
  [ -n "$SHM" ] && rm -rf "$SHM"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# N_IDLE connections through a pair: 2*N_IDLE fds per node; the hard limit (20,000 in
# the container) is the ceiling
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ $((N_IDLE * 2 + 200)) -gt "$(ulimit -n)" ]; then
  log "N_IDLE=$N_IDLE needs $((N_IDLE * 2 + 200)) fds per node, the limit is $(ulimit -n)"
  N_IDLE=$(( ($(ulimit -n) - 200) / 2 )); log "N_IDLE lowered to $N_IDLE"
fi

have() { command -v "$1" >/dev/null 2>&1; }
rec() { echo "$1 $2 $3 $4" >>"$RAW"; }  # rec RUN VARIANT METRIC VALUE

# ----------------------------------------------------------------- preflight
log "TLS output: $OUT (raw.txt, summary.txt, logs/)"
for p in $(seq 16301 16399); do
  if listening "$p"; then log "port $p is already in use; stop whatever listens there"; exit 1; fi
done
BT=""
if have cc && cc -O2 -o "$RUN/benchtool" "$HERE/benchtool.c" 2>"$OUT/logs/benchtool-build.log"; then
  BT="$RUN/benchtool"
else
  log "cannot build contrib/bench/benchtool.c: latency and idle memory are NA"
fi
HAPROXY_SSL=0
have haproxy && haproxy -vv 2>/dev/null | grep -q 'USE_OPENSSL=1' && HAPROXY_SSL=1
STUNNEL=""
for s in stunnel stunnel4; do have "$s" && { STUNNEL=$s; break; }; done

available() {
  case $1 in
    xrayd|xrayd_w1) [ -x "$XRAYD_BIN" ] ;;
    xrayd_cont) [ -x "$XRAYD_BIN" ] && [ -n "$SHM" ] ;;
    haproxy|haproxy_a128) [ "$HAPROXY_SSL" = 1 ] ;;
    stunnel|stunnel_a128) [ -n "$STUNNEL" ] ;;
    *) return 1 ;;
  esac
}
for v in $TLS_TPUT_VARIANTS $TLS_VARIANTS; do available "$v" || log "$v: not available, reported as NA"; done
have iperf3 || log "iperf3 missing: throughput is NA"

if [ -x "$XRAYD_BIN" ]; then
  XRAYD_ORIG=$XRAYD_BIN
  cp "$XRAYD_BIN" "$RUN/xrayd" && XRAYD_BIN="$RUN/xrayd"
  "$XRAYD_BIN" -V >"$OUT/logs/xrayd-version.txt" 2>&1
  log "xrayd: $XRAYD_ORIG (copied to $XRAYD_BIN; $(head -1 "$OUT/logs/xrayd-version.txt"))"
fi

# ----------------------------------------------------------------- certificates
# ECDSA P-256 CA and one leaf (CN and SAN bench.local, 127.0.0.1; server+client use),
# made with `xray pki` when it is built, else with openssl.
CERTS="$RUN/certs"
make_certs() {
  mkdir -p "$CERTS"
  if [ -x "$XRAY_BIN" ] &&
     "$XRAY_BIN" pki init --dir "$CERTS" --name "bench CA" >"$OUT/logs/pki.log" 2>&1 &&
     "$XRAY_BIN" pki issue bench.local --dir "$CERTS" --both --san DNS:bench.local \
        --san IP:127.0.0.1 --out "$CERTS/leaf" >>"$OUT/logs/pki.log" 2>&1; then
    CERT_TOOL="xray pki"
  elif have openssl; then
    rm -f "$CERTS"/*
    openssl ecparam -name prime256v1 -genkey -noout -out "$CERTS/ca.key" 2>>"$OUT/logs/pki.log" &&
    openssl req -x509 -new -key "$CERTS/ca.key" -subj "/CN=bench CA" -days 30 -sha256 \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
      -out "$CERTS/ca.crt" 2>>"$OUT/logs/pki.log" &&
    openssl ecparam -name prime256v1 -genkey -noout -out "$CERTS/leaf.key" 2>>"$OUT/logs/pki.log" &&
    openssl req -new -key "$CERTS/leaf.key" -subj "/CN=bench.local" -out "$CERTS/leaf.csr" 2>>"$OUT/logs/pki.log" &&
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:bench.local,IP:127.0.0.1\n' >"$CERTS/leaf.ext" &&
    openssl x509 -req -in "$CERTS/leaf.csr" -CA "$CERTS/ca.crt" -CAkey "$CERTS/ca.key" -CAcreateserial \
      -days 30 -sha256 -extfile "$CERTS/leaf.ext" -out "$CERTS/leaf.crt" 2>>"$OUT/logs/pki.log" || return 1
    CERT_TOOL="openssl"
  else
    return 1
  fi
  cat "$CERTS/leaf.crt" "$CERTS/leaf.key" >"$CERTS/leaf-combined.pem"   # haproxy: cert+key in one file
}
if ! make_certs; then log "cannot make certificates (see $OUT/logs/pki.log)"; exit 1; fi
log "certificates: ECDSA P-256 CA + leaf by $CERT_TOOL"

# ----------------------------------------------------------------- chain builders
# Every builder: chain_start VARIANT NLINKS TARGET_PORT RESUME(yes|no) [LOGLEVEL]
# starts one process per node: entry (plain in, TLS out), NLINKS-1 middle nodes
# (TLS in, TLS out), exit (TLS in, plain out). Sets CHAIN_PIDS (entry first),
# CHAIN_IN (plain entry port) and CHAIN_TLS1 (the first TLS listener, for probing).
CHAIN_PIDS=()

xrayd_node() { # xrayd_node NAME WORKERS LISTEN UPSTREAM TLS_IN(0|1) TLS_OUT(0|1) RESUME LOGLEVEL [CONT(0|1)]
  local name=$1 w=$2 lp=$3 up=$4 tin=$5 tout=$6 res=$7 ll=$8 cont=${9:-0} f="$RUN/$1.yaml" state=""
  if [ "$cont" = 1 ]; then
    state=$(mktemp -d "$SHM/$name.XXXXXX") || { log "xrayd $name: cannot make a state_dir in $SHM"; return 1; }
    CHAIN_STATES+=("$state")
  fi
  {
    [ -n "$state" ] && echo "state_dir: $state"
    cat <<YAML
workers: $w
daemon: off
pid: $RUN/$name.pid
error_log: $OUT/logs/$name.error.log
log_level: $ll
buffer_size: $XRAYD_BUFFER_SIZE
connect_timeout: 5s
idle_timeout: 10m
relay:
  - name: $name
    listen: 127.0.0.1:$lp
    upstream: 127.0.0.1:$up
    max_connections: 8000
YAML
    [ "$cont" = 1 ] && echo "    continuity: on"
    [ "$tin" = 1 ] && cat <<YAML
    tls:
      certificate: $CERTS/leaf.crt
      key: $CERTS/leaf.key
YAML
    if [ "$tout" = 1 ]; then
      cat <<YAML
    upstream_tls:
      ca: $CERTS/ca.crt
      server_name: bench.local
YAML
      [ "$res" = no ] && echo "      session_reuse: off"
    fi
  } >"$f"
  if ! "$XRAYD_BIN" -t -c "$f" >"$RUN/xrayd-t.out" 2>&1; then
    log "xrayd $name: config test failed: $(head -3 "$RUN/xrayd-t.out")"; return 1
  fi
  bg_start "$OUT/logs/$name.stderr.log" "$XRAYD_BIN" -c "$f"
  CHAIN_PIDS+=("$LASTPID")
}

haproxy_node() { # haproxy_node NAME BIND_LINE SERVER_LINE
  local f="$RUN/$1.cfg"
  cat >"$f" <<CFG
global
  maxconn 4000
  tune.ssl.default-dh-param 2048
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend f
  bind $2
  default_backend b
backend b
  server s $3
CFG
  bg_start "$OUT/logs/$1.log" haproxy -db -f "$f"
  CHAIN_PIDS+=("$LASTPID")
}

st_common() { printf 'sslVersion = TLSv1.2\nciphers = %s\ncurves = prime256v1\n' "$1"; }
st_client_svc() { # SVC ACCEPT CONNECT RESUME CIPHER
  printf '[%s]\nclient = yes\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\n%s\nverifyChain = yes\nCAfile = %s\ncheckHost = bench.local\nsni = bench.local\nsessionResume = %s\n' \
    "$1" "$2" "$3" "$(st_common "$5")" "$CERTS/ca.crt" "$4"
}
st_server_svc() { # SVC ACCEPT CONNECT CIPHER
  printf '[%s]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\n%s\ncert = %s\nkey = %s\n' \
    "$1" "$2" "$3" "$(st_common "$4")" "$CERTS/leaf.crt" "$CERTS/leaf.key"
}
stunnel_node() { # stunnel_node NAME SERVICE_TEXT...
  local name=$1 f="$RUN/$1.conf" b; shift
  { printf 'foreground = yes\npid =\ndebug = 4\noutput = %s\n' "$OUT/logs/$name.log"
    for b in "$@"; do printf '%s\n' "$b"; done; } >"$f"
  bg_start "$OUT/logs/$name.stderr.log" "$STUNNEL" "$f"
  CHAIN_PIDS+=("$LASTPID")
}

chain_start() {
  local v=$1 N=$2 T=$3 R=$4 ll=${5:-warn} B=${BASE[$1]} i kind=${1%%_*} cipher=$CIPHER_256 ports=()
  [[ $v == *_a128 ]] && cipher=$CIPHER_128
  [ "$v" = check ] && kind=xrayd
  CHAIN_PIDS=(); CHAIN_IN=$B; CHAIN_TLS1=$((B + 1))
  available "${v/check/xrayd}" || return 1
  for ((i = 0; i <= 2 * N; i++)); do wait_port_free $((B + i)) || return 1; done
  case $kind in
    xrayd)
      local w=2 cont=0; [ "$v" = xrayd_w1 ] && w=1; [ "$v" = xrayd_cont ] && cont=1
      for ((i = 0; i <= N; i++)); do
        local up=$((B + i + 1)) tin=1 tout=1
        ((i == 0)) && tin=0
        ((i == N)) && { tout=0; up=$T; }
        xrayd_node "$v-L$N-n$i" "$w" $((B + i)) "$up" $tin $tout "$R" "$ll" $cont || return 1
        ports+=($((B + i)))
      done ;;
    haproxy)
      local reuse=""; [ "$R" = no ] && reuse="no-ssl-reuse"
      local sslsrv="ssl verify required ca-file $CERTS/ca.crt sni str(bench.local) verifyhost bench.local ciphers $cipher ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2 $reuse"
      local sslbind="ssl crt $CERTS/leaf-combined.pem ciphers $cipher ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2 curves P-256"
      local bind srv
      for ((i = 0; i <= N; i++)); do
        if ((i == 0)); then bind="127.0.0.1:$B"; else bind="127.0.0.1:$((B + i)) $sslbind"; fi
        if ((i == N)); then srv="127.0.0.1:$T"; else srv="127.0.0.1:$((B + i + 1)) $sslsrv"; fi
        haproxy_node "$v-L$N-n$i" "$bind" "$srv"
        ports+=($((B + i)))
      done ;;
    stunnel)
      # stunnel cannot re-encrypt in one service: a middle node is a server service and
      # a client service in one process, joined by a plain loopback hop
      stunnel_node "$v-L$N-n0" "$(st_client_svc c1 "$B" $((B + 1)) "$R" "$cipher")"
      for ((i = 1; i < N; i++)); do
        stunnel_node "$v-L$N-n$i" "$(st_server_svc s$i $((B + 2 * i - 1)) $((B + 2 * i)) "$cipher")" \
                                  "$(st_client_svc c$((i + 1)) $((B + 2 * i)) $((B + 2 * i + 1)) "$R" "$cipher")"
      done
      stunnel_node "$v-L$N-n$N" "$(st_server_svc s$N $((B + 2 * N - 1)) "$T" "$cipher")"
      for ((i = 0; i < 2 * N; i++)); do ports+=($((B + i))); done ;;
  esac
  local p
  for p in "${ports[@]}"; do
    wait_port "$p" || { log "$v: chain did not start (port $p); see $OUT/logs/$v-L$N-*"; chain_stop; return 1; }
  done
  # let xrayd masters spawn their workers before anything is measured
  if [ "$kind" = xrayd ]; then
    local want
    [ "$v" = xrayd_w1 ] && want=$(( ${#CHAIN_PIDS[@]} * 2 )) || want=$(( ${#CHAIN_PIDS[@]} * 3 ))
    for _ in $(seq 1 30); do [ "$(nproc_tree "${CHAIN_PIDS[@]}")" -ge "$want" ] && break; sleep 0.1; done
  fi
  sleep 0.3
  return 0
}

chain_stop() { # entry node first, so nothing new is sent down a half-stopped chain
  local p
  for p in "${CHAIN_PIDS[@]}"; do stop_pid "$p"; done
  CHAIN_PIDS=()
  for p in "${CHAIN_STATES[@]}"; do rm -rf "$p"; done   # xrayd_cont's state_dirs
  CHAIN_STATES=()
}

# chain_alive VARIANT : did every node survive? (a crash shows up here and in the logs)
chain_alive() {
  local p dead=0
  for p in "${CHAIN_PIDS[@]}"; do kill -0 "$p" 2>/dev/null || { log "$1: node pid $p died"; dead=1; }; done
  return $dead
}

# tls_probe PORT : negotiated protocol/cipher/ECDHE group of a TLS listener (openssl s_client)
tls_probe() {
  have openssl || { echo NA; return; }
  echo | timeout 5 openssl s_client -connect 127.0.0.1:"$1" -servername bench.local \
     -CAfile "$CERTS/ca.crt" 2>/dev/null |
    awk '/^ *Protocol *:/{p=$3} /^ *Cipher *:/{c=$3} /Server Temp Key/{sub(/.*Key: /,""); gsub(/ /,""); g=$0}
         /Verify return code/{v=$4} END{printf "%s/%s/%s/verify=%s\n", p, c, g, v}'
}

# ------------------------------------------------------------ 1+2. throughput
# iperf PORT TAG : 1 stream for BENCH_SECS s; prints "GBPS RECV_BYTES SENT_BYTES" or fails
iperf() {
  local port=$1 tag=$2
  if timeout $((BENCH_SECS + 25)) iperf3 -c 127.0.0.1 -p "$port" -t "$BENCH_SECS" -P 1 -J \
       >"$RUN/$tag.json" 2>"$RUN/$tag.err"; then
    "$PY" -c 'import json,sys; e=json.load(open(sys.argv[1]))["end"]
r, s = e["sum_received"], e["sum_sent"]
print("%.3f %d %d" % (r["bits_per_second"]/1e9, r["bytes"], s["bytes"]))' "$RUN/$tag.json" && return 0
  fi
  log "iperf3 $tag failed: $(head -c 300 "$RUN/$tag.err"; grep -m1 '"error"' "$RUN/$tag.json")"
  cp "$RUN/$tag.json" "$OUT/logs/" 2>/dev/null
  return 1
}

test_tput() { # test_tput RUN VARIANT NLINKS
  local n=$1 v=$2 N=$3 m=hop1 c0 c1 res gbps rb sb
  [ "$N" = 3 ] && m=link3
  if [ "$v" = direct ]; then
    res=$(iperf $P_IPERF "direct.$n") && rec "$n" direct gbps "${res%% *}" || rec "$n" direct gbps NA
    return
  fi
  if ! chain_start "$v" "$N" $P_IPERF yes; then
    rec "$n" "$v" ${m}_gbps NA; rec "$n" "$v" ${m}_cpu_s_per_gb NA; return
  fi
  [ "$N" = 1 ] && [ "$n" = 1 ] && rec 0 "$v" negotiated "$(tls_probe "$CHAIN_TLS1")"
  rec "$n" "$v" ${m}_procs "$(nproc_tree "${CHAIN_PIDS[@]}")"
  c0=$(cpu_ticks "${CHAIN_PIDS[@]}")
  if res=$(iperf "$CHAIN_IN" "$v.$m.$n"); then
    c1=$(cpu_ticks "${CHAIN_PIDS[@]}")
    read -r gbps rb sb <<<"$res"
    rec "$n" "$v" ${m}_gbps "$gbps"
    rec "$n" "$v" ${m}_cpu_s_per_gb "$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" -v by="$rb" \
      'BEGIN { if (by > 1e6) printf "%.3f", (b - a) / hz / (by / 1e9); else print "NA" }')"
    # a relay that stalls lets iperf3 send a few MB that never arrive
    rec "$n" "$v" ${m}_recv_pct "$(awk -v r="$rb" -v s="$sb" 'BEGIN { if (s > 0) printf "%.1f", 100 * r / s; else print "NA" }')"
    awk -v r="$rb" -v s="$sb" 'BEGIN { exit !(s > 0 && r < 0.9 * s) }' &&
      log "$v $m run $n: only $rb of $sb bytes sent by iperf3 arrived (relay stalled?)"
  else
    rec "$n" "$v" ${m}_gbps NA; rec "$n" "$v" ${m}_cpu_s_per_gb NA
  fi
  chain_alive "$v" || rec "$n" "$v" crashed 1
  chain_stop
}

# ------------------------------------------------------------ 3. latency
# lat_rec RUN VARIANT PREFIX OUTPUT : record benchtool seq/burst output
lat_rec() {
  local k
  for k in median_ms p99_ms mean_ms total_ms fails; do
    local val; val=$(echo "$4" | awk -v k="$k:" '$1 == k {print $2}')
    [ -n "$val" ] && rec "$1" "$2" "$3_$k" "$val"
  done
}

test_lat() { # test_lat RUN VARIANT RESUME
  local n=$1 v=$2 R=$3 pre=lat out port
  [ "$R" = no ] && pre=latnr
  if [ -z "$BT" ]; then rec "$n" "$v" ${pre}_seq_median_ms NA; return; fi
  if [ "$v" = direct ]; then port=$P_ECHO
  else
    chain_start "$v" 3 $P_ECHO "$R" || { rec "$n" "$v" ${pre}_seq_median_ms NA; return; }
    port=$CHAIN_IN
  fi
  timeout 60 "$BT" seq "$port" 10 >/dev/null 2>&1   # warm-up: first full handshakes, per worker
  out=$(timeout 200 "$BT" seq "$port" "$N_SEQ" 2>>"$OUT/logs/lat.err")
  lat_rec "$n" "$v" ${pre}_seq "$out"
  sleep 0.3
  out=$(timeout 200 "$BT" burst "$port" "$N_CONC" 2>>"$OUT/logs/lat.err")
  lat_rec "$n" "$v" ${pre}_conc "$out"
  if [ "$v" != direct ]; then
    chain_alive "$v" || rec "$n" "$v" crashed 1
    chain_stop
  fi
  sleep 0.5
}

# ------------------------------------------------------------ 4. idle memory
test_idle() { # test_idle RUN VARIANT
  local n=$1 v=$2 ready="$RUN/ready.$2.$1" hpid held bc bs ac as
  if [ -z "$BT" ] || ! chain_start "$v" 1 $P_ECHO yes; then rec "$n" "$v" idle_total_kib NA; return; fi
  local cn=${CHAIN_PIDS[0]} sn=${CHAIN_PIDS[1]}
  # warm-up: 20 connections opened, echoed and closed (first handshakes, pools, caches)
  timeout 60 "$BT" idle "$CHAIN_IN" 20 "$RUN/warm.$v.$n" 0 20 >/dev/null 2>&1
  sleep 0.5
  bc=$(mem_kib VmRSS "$cn"); bs=$(mem_kib VmRSS "$sn")
  local sb sa   # xrayd_cont: the snapshots' tmpfs pages in both nodes' state_dirs
  [ ${#CHAIN_STATES[@]} -gt 0 ] && sb=$(du -sk "${CHAIN_STATES[@]}" | awk '{ t += $1 } END { print t }')
  rm -f "$ready"
  bg_start "$RUN/idle.$v.$n.log" "$BT" idle "$CHAIN_IN" "$N_IDLE" "$ready" 200 100
  hpid=$LASTPID
  for _ in $(seq 1 1300); do [ -f "$ready" ] && break; kill -0 "$hpid" 2>/dev/null || break; sleep 0.1; done
  sleep 1
  held=$(cat "$ready" 2>/dev/null || echo 0)
  ac=$(mem_kib VmRSS "$cn"); as=$(mem_kib VmRSS "$sn")
  [ ${#CHAIN_STATES[@]} -gt 0 ] && sa=$(du -sk "${CHAIN_STATES[@]}" | awk '{ t += $1 } END { print t }')
  rec "$n" "$v" idle_conns "$held"
  rec "$n" "$v" idle_fails $((N_IDLE - held))
  rec "$n" "$v" idle_rss_client_before_kib "$bc"; rec "$n" "$v" idle_rss_client_after_kib "$ac"
  rec "$n" "$v" idle_rss_server_before_kib "$bs"; rec "$n" "$v" idle_rss_server_after_kib "$as"
  local per='BEGIN { if (n > 0) printf "%.2f", (a - b) / n; else print "NA" }'
  rec "$n" "$v" idle_client_kib "$(awk -v a="$ac" -v b="$bc" -v n="$held" "$per")"
  rec "$n" "$v" idle_server_kib "$(awk -v a="$as" -v b="$bs" -v n="$held" "$per")"
  rec "$n" "$v" idle_total_kib "$(awk -v a="$((ac + as))" -v b="$((bc + bs))" -v n="$held" "$per")"
  rec "$n" "$v" idle_per_end_kib "$(awk -v a="$((ac + as))" -v b="$((bc + bs))" -v n="$held" \
      'BEGIN { if (n > 0) printf "%.2f", (a - b) / n / 2; else print "NA" }')"
  # the state_dirs' growth, both nodes (tmpfs pages, mapped: already in the RSS deltas)
  [ ${#CHAIN_STATES[@]} -gt 0 ] && rec "$n" "$v" idle_state_kib "$(awk -v a="$sa" -v b="$sb" -v n="$held" "$per")"
  stop_pid "$hpid"
  grep -v '^idle: [0-9]* held' "$RUN/idle.$v.$n.log" | sed "s/^/# $v idle run $n: /" >&2
  sleep 2   # let the nodes tear the connections down before they are stopped
  chain_alive "$v" || rec "$n" "$v" crashed 1
  chain_stop
}

# ------------------------------------------------------------ check: resumption
# Once: the xrayd 3-link chain at log_level info, 20 sequential echoes; count full
# handshakes and resumptions per node from its log. And the ECDHE group xrayd's
# client end offers, seen by openssl s_server.
check_xrayd() {
  [ -x "$XRAYD_BIN" ] && [ -n "$BT" ] || return
  if chain_start check 3 $P_ECHO yes info; then
    local out; out=$(timeout 60 "$BT" seq "$CHAIN_IN" 20 2>&1)
    sleep 0.5
    local i f
    for i in 0 1 2 3; do
      f="$OUT/logs/check-L3-n$i.error.log"
      echo "check: xrayd node $i: $(grep -c 'established.*full handshake' "$f") full handshakes, $(grep -c 'established.*resumed' "$f") resumed, $(grep -c 'handshake.*failed' "$f") failed" >>"$OUT/env.txt"
    done
    echo "check: 20 sequential echoes through the xrayd 3-link chain: $(echo "$out" | awk '/^ok:|^fails:/{printf "%s %s ", $1, $2}')" >>"$OUT/env.txt"
    echo "check: xrayd server end, openssl s_client sees: $(tls_probe "$CHAIN_TLS1")" >>"$OUT/env.txt"
    chain_stop
  fi
  if have openssl; then
    # s_server -trace shows the ClientHello of xrayd's client end and the group it got
    bg_start "$RUN/s_server.out" bash -c "sleep 4 | timeout 10 openssl s_server -accept 127.0.0.1:$P_PROBE \
      -naccept 1 -cert '$CERTS/leaf.crt' -key '$CERTS/leaf.key' -tls1_2 -trace"
    local sp=$LASTPID
    if wait_port $P_PROBE "$sp"; then
      CHAIN_PIDS=()
      xrayd_node probe-client 1 16379 $P_PROBE 0 1 yes warn && wait_port 16379 &&
        (exec 3<>/dev/tcp/127.0.0.1/16379; printf 'hello' >&3; sleep 1; exec 3>&-) 2>/dev/null
      sleep 0.5
      echo "check: groups offered by xrayd's client end (openssl s_server -trace): $(grep -m1 '^Supported groups:' "$RUN/s_server.out" | sed 's/^[^:]*: *//')" >>"$OUT/env.txt"
      echo "check: ECDHE group openssl s_server chose for it: $(grep -m1 'named_curve:' "$RUN/s_server.out" | sed 's/^ *named_curve: *//')" >>"$OUT/env.txt"
      chain_stop
    fi
    stop_pid "$sp"
  fi
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
  echo "host: $(nproc) cpus, kernel $(uname -r), fd limit $(ulimit -n)"
  echo "settings: RUNS=$RUNS BENCH_SECS=$BENCH_SECS N_SEQ=$N_SEQ N_CONC=$N_CONC N_IDLE=$N_IDLE XRAYD_BUFFER_SIZE=$XRAYD_BUFFER_SIZE TLS_NORESUME=$TLS_NORESUME"
  echo "xrayd: ${XRAYD_ORIG:-$XRAYD_BIN} $(head -2 "$OUT/logs/xrayd-version.txt" 2>/dev/null | tr '\n' ' ')" \
       "(built $(date -u -r "${XRAYD_ORIG:-$XRAYD_BIN}" '+%F %T' 2>/dev/null) UTC, sha256 $(sha256sum "$XRAYD_BIN" 2>/dev/null | cut -c1-12))"
  echo "certificates: ECDSA P-256 CA + leaf (bench.local) by $CERT_TOOL"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  have haproxy && echo "haproxy: $(haproxy -v 2>&1 | head -1) ($(haproxy -vv 2>&1 | grep -m1 'Running on OpenSSL'))"
  [ -n "$STUNNEL" ] && echo "stunnel: $("$STUNNEL" -version 2>&1 | grep -m1 '^stunnel')"
  have iperf3 && echo "iperf3: $(iperf3 -v 2>&1 | head -1)"
} >"$OUT/env.txt" 2>/dev/null
check_xrayd

T0=$(date +%s)
rotate() { # rotate RUN LIST... : the list rotated by RUN-1
  local k=$(( ($1 - 1) % ($# - 1) )); shift
  local a=("$@"); echo "${a[*]:k} ${a[*]:0:k}"
}
for ((run = 1; run <= RUNS; run++)); do
  for t in $TLS_TESTS; do
    log "tls run $run/$RUNS: $t"
    case $t in
      hop1|link3)
        have iperf3 || continue
        [ "$t" = hop1 ] && test_tput "$run" direct 0
        for v in $(rotate "$run" $TLS_TPUT_VARIANTS); do
          log "  $v"; test_tput "$run" "$v" "$([ "$t" = hop1 ] && echo 1 || echo 3)"
        done ;;
      lat)
        test_lat "$run" direct yes
        for v in $(rotate "$run" $TLS_VARIANTS); do log "  $v resumed"; test_lat "$run" "$v" yes; done
        if [ "$TLS_NORESUME" = 1 ]; then
          for v in $(rotate "$run" $TLS_VARIANTS); do log "  $v no resumption"; test_lat "$run" "$v" no; done
        fi ;;
      idle)
        for v in $(rotate "$run" $TLS_VARIANTS); do log "  $v"; test_idle "$run" "$v"; done ;;
      *) log "unknown TLS test $t (hop1 link3 lat idle)" ;;
    esac
  done
done
log "TLS measurements took $(( $(date +%s) - T0 )) s"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine adds noise)" >>"$OUT/env.txt"
stop_all

"$PY" "$HERE/tls_summarize.py" "$RAW" "$OUT/env.txt" "$OUT/logs" | tee "$OUT/summary.txt"
exit 0
