#!/usr/bin/env bash
# Replicated-write throughput of plexus against etcd, measured on this machine in
# one run, printed as a ratio (see README.md beside this file).
#
#   benches/etcd/run.sh [--concurrency C[,C...]] [--duration SECS] [--rounds N]
#                       [--client-threads T] [--etcd-only] [--keep]
#
# Both systems run 3 members on 127.0.0.1 with fsync on: etcd fsyncs its WAL on
# every commit by default and this script does not pass --unsafe-no-fsync; plexus
# nodes fsync their Raft logs. Each side gets C concurrent writers of 64-byte
# values for SECS seconds, then is stopped before the other starts. With --rounds N
# (default 1) the pair is measured N times, alternating, each time on fresh
# clusters, and the median of the N ratios is reported (shared machines are noisy).
# A list of concurrencies (--concurrency 64,256,1024, at most 8) repeats all of that for
# each C in turn and ends with one median line per C: the latency-bound and the
# throughput-bound regimes side by side.
# Both load generators run on T runtime threads (default 1: one thread, like
# redis-benchmark; see README.md for the figures with 2).
#
# Environment: CARGO_TARGET_DIR (driver build dir only; default benches/etcd/driver/target),
# PLEXUS_BIN (use this plexus binary instead of building target/release/plexus).
set -euo pipefail

concurrency=64
duration=10
rounds=1
client_threads=1
etcd_only=0
keep=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --concurrency) concurrency="${2:?--concurrency needs a value}"; shift 2 ;;
        --duration) duration="${2:?--duration needs a value}"; shift 2 ;;
        --rounds) rounds="${2:?--rounds needs a value}"; shift 2 ;;
        --client-threads) client_threads="${2:?--client-threads needs a value}"; shift 2 ;;
        --etcd-only) etcd_only=1; shift ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
[[ "$concurrency" =~ ^[1-9][0-9]*(,[1-9][0-9]*){0,7}$ ]] || {
    echo "run.sh: --concurrency must be a positive integer or a comma-separated list of at most 8" >&2; exit 2; }
IFS=, read -r -a concurrencies <<<"$concurrency"
for c in "${concurrencies[@]}"; do
    ((c <= 100000)) || { echo "run.sh: --concurrency $c is over 100000" >&2; exit 2; }
done
[[ "$duration" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --duration must be a positive integer" >&2; exit 2; }
[[ "$rounds" =~ ^[1-9][0-9]*$ && "$rounds" -le 20 ]] || { echo "run.sh: --rounds must be an integer from 1 to 20" >&2; exit 2; }
[[ "$client_threads" =~ ^[1-9][0-9]*$ && "$client_threads" -le 64 ]] || { echo "run.sh: --client-threads must be an integer from 1 to 64" >&2; exit 2; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

# Bounded waits, in seconds.
etcd_ready_secs=30        # 3 fresh etcd members electing a leader takes ~1-3 s here
plexus_ready_secs=150     # `plexus up` gives up by itself after 120 s
stop_grace_secs=20        # SIGTERM, then SIGKILL of the whole process group
bench_slack_secs=120      # a driver may run this long past --duration (connect, warm-up, drain)

# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$here/../lib.sh"
bench_init etcd

# ---- prerequisites -----------------------------------------------------------
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    log "installing etcd-server and etcd-client (Debian)"
    apt_install etcd-server etcd-client
fi
if ! command -v protoc >/dev/null && [[ -z "${PROTOC:-}" ]]; then
    # etcd-client generates its gRPC stubs with prost-build, which needs protoc.
    log "installing protobuf-compiler (Debian) for the driver build"
    apt_install protobuf-compiler
fi

# Build everything before any server starts, so compiling never overlaps a measurement.
driver_target="${CARGO_TARGET_DIR:-$here/driver/target}"
log "building the etcd driver (target dir $driver_target)"
CARGO_TARGET_DIR="$driver_target" cargo build --release --quiet --manifest-path "$here/driver/Cargo.toml"
driver="$driver_target/release/etcd-bench-driver"

plexus=""
if [[ $etcd_only -eq 0 ]]; then plexus_binary "$root"; fi

# ---- etcd: 3 members on loopback ---------------------------------------------
ports_line="$(free_tcp_ports 6 23790)"
read -r -a ports <<<"$ports_line"
client_ports=("${ports[@]:0:3}")
peer_ports=("${ports[@]:3:3}")
initial_cluster=""
endpoints=""
for i in 0 1 2; do
    initial_cluster+="${initial_cluster:+,}m$i=http://127.0.0.1:${peer_ports[$i]}"
    endpoints+="${endpoints:+,}http://127.0.0.1:${client_ports[$i]}"
done

measure_etcd() { # round: a fresh 3-member etcd, one measurement; sets etcd_json
    local r="$1" i
    log "round $r: etcd $(etcd --version | sed -n 's/^etcd Version: //p'): starting 3 members, clients on ${client_ports[*]}"
    for i in 0 1 2; do
        # No --unsafe-no-fsync: every committed entry is fsynced to each member's WAL.
        setsid etcd --name "m$i" --data-dir "$tmp/etcd-r$r/m$i" \
            --listen-client-urls "http://127.0.0.1:${client_ports[$i]}" \
            --advertise-client-urls "http://127.0.0.1:${client_ports[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
            --initial-cluster "$initial_cluster" --initial-cluster-state new \
            --initial-cluster-token "plexus-bench-$$-$r" \
            --logger zap --log-level warn \
            >"$tmp/etcd-r$r-m$i.log" 2>&1 </dev/null &
        pids+=("$!")
    done
    local deadline=$((SECONDS + etcd_ready_secs))
    until ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --command-timeout=2s endpoint health >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "etcd not healthy after ${etcd_ready_secs}s"; tail -n 20 "$tmp"/etcd-r"$r"-m*.log >&2; exit 1
        fi
        sleep 0.3
    done
    log "etcd healthy; measuring writes: concurrency $concurrency, ${duration}s"
    bounded "$((duration + bench_slack_secs))" "$tmp/etcd-r$r.json" "$driver" --endpoints "$endpoints" \
        --concurrency "$concurrency" --duration "$duration" --threads "$client_threads"
    etcd_json="$(cat "$tmp/etcd-r$r.json")"
    echo "etcd:   $etcd_json"
    stop_all
}

# ---- plexus: 3 nodes on loopback ---------------------------------------------
measure_plexus() { # round: a fresh 3-node plexus cluster, one measurement; sets plexus_json
    local r="$1"
    log "round $r: starting plexus"
    start_plexus "$tmp/plexus-r$r" "$tmp/plexus-r$r-up.log"
    log "plexus ready; measuring writes: concurrency $concurrency, ${duration}s"
    plexus_bench "$r" write --client-threads "$client_threads"
    stop_all
}

etcd_json=""
plexus_json=""
summary=() # one median line per concurrency

measure_concurrency() { # the rounds at one concurrency ($concurrency); appends to summary
    local r id ratio q pp ep perr eerr line median ratios=()
    for ((r = 1; r <= rounds; r++)); do
        # Data dirs and logs are per round and per concurrency, so a sweep's rounds never meet.
        if ((${#concurrencies[@]} > 1)); then id="c$concurrency-$r"; else id="$r"; fi
        # Even rounds measure plexus first, so a machine that speeds up or slows down over the
        # run favours neither side.
        if [[ $etcd_only -eq 0 && $((r % 2)) -eq 0 ]]; then measure_plexus "$id"; fi
        measure_etcd "$id"
        if [[ $etcd_only -eq 1 ]]; then
            echo "etcd write throughput $(printf '%.0f' "$(json_field "$etcd_json" ops_per_sec)") ops/s;" \
                "p99 $(json_field "$etcd_json" p99_us) us at concurrency $concurrency (plexus half skipped: --etcd-only)"
            continue
        fi
        if [[ $((r % 2)) -eq 1 ]]; then measure_plexus "$id"; fi
        ratio="$(awk -v p="$(json_field "$plexus_json" ops_per_sec)" -v e="$(json_field "$etcd_json" ops_per_sec)" \
            -v pp="$(json_field "$plexus_json" p99_us)" -v ep="$(json_field "$etcd_json" p99_us)" \
            -v perr="$(json_field "$plexus_json" errors)" -v eerr="$(json_field "$etcd_json" errors)" \
            'BEGIN { if (e + 0 <= 0) { print "etcd measured no successful writes" > "/dev/stderr"; exit 1 }
                     printf "%.2f %d %d %d %d", p / e, pp, ep, perr, eerr }')"
        ratios+=("$ratio")
        read -r q pp ep perr eerr <<<"$ratio"
        line="round $id: write throughput ratio plexus/etcd = $q; p99 plexus $pp us vs etcd $ep us"
        if ((perr + eerr > 0)); then line+="; errors plexus $perr, etcd $eerr"; fi
        echo "$line"
    done
    if [[ $etcd_only -eq 1 ]]; then return 0; fi
    # The median round by ratio (the lower middle one for an even count), with its p99s.
    median="$(printf '%s\n' "${ratios[@]}" | sort -n -k1,1 | sed -n "$(((${#ratios[@]} + 1) / 2))p")"
    read -r q pp ep perr eerr <<<"$median"
    line="write throughput ratio plexus/etcd = $q; p99 plexus $pp us vs etcd $ep us"
    if ((rounds > 1)); then
        line+=" (median of $rounds rounds: $(printf '%s\n' "${ratios[@]}" | awk '{print $1}' | paste -sd' '))"
    fi
    if ((perr + eerr > 0)); then line+="; errors plexus $perr, etcd $eerr"; fi
    if ((${#concurrencies[@]} > 1)); then line="concurrency $concurrency: $line"; fi
    summary+=("$line")
}

for concurrency in "${concurrencies[@]}"; do measure_concurrency; done

# ---- report ------------------------------------------------------------------
if ((${#summary[@]} > 0)); then printf '%s\n' "${summary[@]}"; fi
