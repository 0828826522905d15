# shellcheck shell=bash
# lib.sh - helpers for contrib/bench/run.sh (sourced, not run).
# Process tracking: every background process is recorded by PID and stopped by
# PID together with its descendants (found through /proc parent links, never by
# name), on success, failure or interrupt.

BENCH_PIDS=()
HZ=$(getconf CLK_TCK)   # used by run.sh
export HZ

log() { echo "# $*" >&2; }

# descendants PID... : every descendant PID of the given PIDs
descendants() {
  ps -eo pid=,ppid= | awk -v roots="$*" '
    { par[$1] = $2; all[NR] = $1 }
    END {
      n = split(roots, r, " "); for (i = 1; i <= n; i++) in_tree[r[i]] = 1
      do { changed = 0
        for (k in all) { p = all[k]
          if (!(p in in_tree) && (par[p] in in_tree)) { in_tree[p] = 1; out[p] = 1; changed = 1 } }
      } while (changed)
      for (p in out) print p }'
}

# alive_pids PID... : those of the PIDs that still run (zombies count as gone)
alive_pids() {
  local q
  for q in "$@"; do
    kill -0 "$q" 2>/dev/null && ! grep -q '^State:.*Z' /proc/"$q"/status 2>/dev/null && echo "$q"
  done
}

# kill_tree PID : TERM the PID (a master stops its own workers), wait up to 3 s for
# the whole tree; TERM what is left, wait up to 2 s more; then KILL leftovers.
kill_tree() {
  local p=$1 all left
  [ -n "$p" ] || return 0
  all="$p $(descendants "$p")"
  kill -TERM "$p" 2>/dev/null
  for _ in $(seq 1 30); do
    left=$(alive_pids $all); [ -z "$left" ] && break; sleep 0.1
  done
  left=$(alive_pids $all)
  if [ -n "$left" ]; then
    kill -TERM $left 2>/dev/null
    for _ in $(seq 1 20); do
      left=$(alive_pids $all); [ -z "$left" ] && break; sleep 0.1
    done
    left=$(alive_pids $all)
    [ -n "$left" ] && { log "killing leftover processes: $left"; kill -KILL $left 2>/dev/null; }
  fi
  wait "$p" 2>/dev/null
  return 0
}

# bg_start LOGFILE cmd... : start in the background, track it; PID in $LASTPID
bg_start() {
  local logf=$1; shift
  "$@" >>"$logf" 2>&1 &
  LASTPID=$!
  BENCH_PIDS+=("$LASTPID")
}

# stop_pid PID : stop one tracked process tree now and forget it
stop_pid() {
  local p=$1 q keep=()
  kill_tree "$p"
  for q in "${BENCH_PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
  BENCH_PIDS=("${keep[@]}")
}

stop_all() {
  local i
  for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do kill_tree "${BENCH_PIDS[$i]}"; done
  BENCH_PIDS=()
}

listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# wait_port PORT [PID] : wait (<= 10 s) until 127.0.0.1:PORT listens; fail early if PID died
wait_port() {
  local port=$1 pid=${2:-}
  for _ in $(seq 1 100); do
    listening "$port" && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then log "process $pid exited before port $port opened"; return 1; fi
    sleep 0.1
  done
  log "port $port did not open"
  return 1
}

# wait_port_free PORT : wait (<= 10 s) until nothing listens on PORT
wait_port_free() {
  for _ in $(seq 1 100); do listening "$1" || return 0; sleep 0.1; done
  log "port $1 still in use"
  return 1
}

# cpu_ticks PID... : utime+stime+cutime+cstime summed over the process trees
cpu_ticks() {
  local total=0 p f
  for p in "$@" $(descendants "$@"); do
    f=$(cat /proc/"$p"/stat 2>/dev/null) || continue
    f=${f##*) }
    set -- $f
    total=$((total + ${12} + ${13} + ${14} + ${15}))
  done
  echo "$total"
}

# mem_kib FIELD PID... : VmRSS (from status) or Pss (from smaps_rollup) summed over the trees
mem_kib() {
  local field=$1 p v total=0; shift
  for p in "$@" $(descendants "$@"); do
    if [ "$field" = Pss ]; then v=$(awk '/^Pss:/{print $2}' /proc/"$p"/smaps_rollup 2>/dev/null)
    else v=$(awk '/^VmRSS:/{print $2}' /proc/"$p"/status 2>/dev/null); fi
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

nproc_tree() { echo $(( $(descendants "$@" | wc -l) + $# )); }
