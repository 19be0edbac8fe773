#!/usr/bin/env bash
# The social feed on plexus against the classic Redis design, on this machine in one run
# (see README.md beside this file).
#
#   benches/feed/run.sh [--concurrency C] [--duration SECS] [--users N] [--edges M] [--readers R] [--keep]
#
# The same seeded power-law follow graph, readers and mix (one post per 50 ranked home reads)
# run on a fresh 3-node plexus cluster (replication 3, fsync on) and then on one redis-server
# twice: with the append-only file fsynced on every write (appendfsync always) and once a
# second (everysec). Prints each side's figures and the ratios of home-read throughput.
#
# Environment: PLEXUS_BIN (use this plexus binary instead of building target/release/plexus).
set -euo pipefail

concurrency=64
duration=20
users=100000
edges=5000000
readers=10000
keep=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --concurrency) concurrency="${2:?--concurrency needs a value}"; shift 2 ;;
        --duration) duration="${2:?--duration needs a value}"; shift 2 ;;
        --users) users="${2:?--users needs a value}"; shift 2 ;;
        --edges) edges="${2:?--edges needs a value}"; shift 2 ;;
        --readers) readers="${2:?--readers needs a value}"; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
for v in concurrency duration users edges readers; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --$v must be a positive integer" >&2; exit 2; }
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

redis_ready_secs=20
plexus_ready_secs=150
stop_grace_secs=20
bench_slack_secs=3600     # loading millions of edges comes before the measured seconds

# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$here/../lib.sh"
bench_init feed

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    log "installing redis-server and redis-tools (Debian)"
    apt_install redis-server redis-tools
fi
plexus_binary "$root"

feed_args=(--workload feed --concurrency "$concurrency" --duration "$duration" --users "$users"
    --edges "$edges" --readers "$readers" --json)

# ---- plexus ------------------------------------------------------------------
log "plexus: a fresh 3-node cluster"
start_plexus "$tmp/plexus" "$tmp/plexus-up.log"
bounded "$((duration + bench_slack_secs))" "$tmp/plexus.json" "$plexus" bench \
    --config "$tmp/plexus/client.toml" "${feed_args[@]}"
plexus_json="$(cat "$tmp/plexus.json")"
echo "plexus: $plexus_json"
stop_all

# ---- redis -------------------------------------------------------------------
rcli() { timeout 30 redis-cli -h 127.0.0.1 -p "$redis_port" "$@"; }
redis_answers() { [[ "$(rcli ping 2>/dev/null)" == PONG ]]; }

measure_redis() { # fsync: appendfsync policy; prints and sets redis_json
    local fsync="$1"
    redis_port="$(free_tcp_ports 1 26379)"
    mkdir -p "$tmp/redis-$fsync"
    log "redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p'): appendfsync $fsync on port $redis_port"
    setsid redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly yes \
        --appendfsync "$fsync" --dir "$tmp/redis-$fsync" --logfile "$tmp/redis-$fsync.log" \
        --daemonize no >/dev/null 2>&1 </dev/null &
    pids+=("$!")
    await_ready redis-server "$!" "$redis_ready_secs" "$tmp/redis-$fsync.log" 0.1 redis_answers
    bounded "$((duration + bench_slack_secs))" "$tmp/redis-$fsync.json" "$plexus" bench \
        --redis "127.0.0.1:$redis_port" "${feed_args[@]}"
    redis_json="$(cat "$tmp/redis-$fsync.json")"
    echo "redis ($fsync): $redis_json"
    stop_all
}

measure_redis always
redis_always="$redis_json"
measure_redis everysec
redis_everysec="$redis_json"

# ---- report ------------------------------------------------------------------
ratio() { awk -v a="$(json_field "$1" "$3")" -v b="$(json_field "$2" "$3")" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
echo "home reads/s plexus/redis(always) = $(ratio "$plexus_json" "$redis_always" home_reads_per_sec);" \
    "plexus/redis(everysec) = $(ratio "$plexus_json" "$redis_everysec" home_reads_per_sec)"
echo "home read p99: plexus $(json_field "$plexus_json" home_p99_us) us, redis(always) $(json_field "$redis_always" home_p99_us) us," \
    "redis(everysec) $(json_field "$redis_everysec" home_p99_us) us"
echo "posts/s plexus/redis(always) = $(ratio "$plexus_json" "$redis_always" posts_per_sec);" \
    "fan-out lag p99: plexus $(json_field "$plexus_json" fanout_lag_p99_us) us (lost $(json_field "$plexus_json" fanout_lost))," \
    "redis fans out inside the post request"
