#!/usr/bin/env bash
# Timeline-read throughput of plexus against Redis LRANGE, measured on this machine in
# one run, printed as a ratio (see README.md beside this file).
#
#   benches/redis/run.sh [--concurrency C] [--duration SECS] [--rounds N] [--keep]
#
# Both sides hold the same data: 1000 lists (timelines) of 50 items of 64 bytes each,
# what `plexus bench --workload read` fills. Redis (one redis-server, in memory, not
# replicated, no persistence) serves `LRANGE list:<key> 0 49` over random keys to
# redis-benchmark with C connections and no pipelining; a 3-node plexus cluster serves
# linearizable reads of 50 entries over random owners to `plexus bench` with C in
# flight. Each side runs for about SECS seconds, then is stopped before the other
# starts. With --rounds N (default 1) the pair is measured N times, alternating which
# goes first, each time on fresh servers, and the median of the N ratios is reported.
#
# Environment: PLEXUS_BIN (use this plexus binary instead of building target/release/plexus).
set -euo pipefail

concurrency=64
duration=10
rounds=1
keep=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --concurrency) concurrency="${2:?--concurrency needs a value}"; shift 2 ;;
        --duration) duration="${2:?--duration needs a value}"; shift 2 ;;
        --rounds) rounds="${2:?--rounds needs a value}"; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
[[ "$concurrency" =~ ^[1-9][0-9]*$ && "$concurrency" -le 4096 ]] || { echo "run.sh: --concurrency must be an integer from 1 to 4096" >&2; exit 2; }
[[ "$duration" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --duration must be a positive integer" >&2; exit 2; }
[[ "$rounds" =~ ^[1-9][0-9]*$ && "$rounds" -le 20 ]] || { echo "run.sh: --rounds must be an integer from 1 to 20" >&2; exit 2; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

# The data set: what `plexus bench --workload read` fills with its defaults (src/bench.rs:
# --owners 1000, READ_PAGE = 50 entries per owner, --item-bytes 64). The owners and item
# size are passed to plexus explicitly so both sides stay the same if those defaults change;
# the page of 50 is fixed in plexus.
owners=1000
page=50
item_bytes=64

# Bounded waits, in seconds.
redis_ready_secs=20       # redis-server answers PING within ~0.1 s here
plexus_ready_secs=150     # `plexus up` gives up by itself after 120 s
stop_grace_secs=20        # SIGTERM, then SIGKILL of the whole process group
fill_secs=60              # loading 1000 lists into Redis takes well under a second
calibrate_secs=60         # the short redis-benchmark run that sizes the measured one
bench_slack_secs=300      # a client may run this long past --duration (plexus: connect and
                          # fill 50 000 entries through Raft first; Redis: -n sized from a
                          # calibration on a machine whose speed drifts)

# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$here/../lib.sh"
bench_init redis

now() { date +%s.%N; }

# ---- prerequisites -----------------------------------------------------------
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null || ! command -v redis-benchmark >/dev/null; then
    log "installing redis-server and redis-tools (Debian)"
    apt_install redis-server redis-tools
fi

# Build before any server starts, so compiling never overlaps a measurement.
plexus_binary "$root"

# ---- Redis: one in-memory server on loopback ---------------------------------
# The fill, as RESP for redis-cli --pipe: one RPUSH per list of $page items of $item_bytes
# 'x' bytes each (plexus's bench item), to keys list:<12-digit zero-padded n> for n in
# 0..owners-1, exactly the keys that redis-benchmark -r $owners substitutes for __rand_int__.
item="$(printf "%${item_bytes}s" '' | tr ' ' x)"
awk -v n="$owners" -v per="$page" -v item="$item" 'BEGIN {
    for (k = 0; k < n; k++) {
        key = sprintf("list:%012d", k)
        printf "*%d\r\n$5\r\nRPUSH\r\n$%d\r\n%s\r\n", per + 2, length(key), key
        for (i = 0; i < per; i++) printf "$%d\r\n%s\r\n", length(item), item
    }
}' >"$tmp/redis-fill.resp"

rcli() { timeout 30 redis-cli -h 127.0.0.1 -p "$redis_port" "$@"; }
redis_answers() { [[ "$(rcli ping 2>/dev/null)" == PONG ]]; }

measure_redis() { # round: a fresh redis-server, filled, one measurement; sets redis_result
    local r="$1"
    redis_port="$(free_tcp_ports 1 26379)"
    log "round $r: redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p'): starting on port $redis_port"
    mkdir -p "$tmp/redis-r$r"
    # Reads only: no RDB snapshots (--save '') and no append-only file, so persistence costs
    # Redis nothing during the measurement (and nothing is written when it stops).
    setsid redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
        --dir "$tmp/redis-r$r" --logfile "$tmp/redis-r$r.log" --daemonize no \
        >/dev/null 2>&1 </dev/null &
    local redis_pid=$!
    pids+=("$redis_pid")
    await_ready redis-server "$redis_pid" "$redis_ready_secs" "$tmp/redis-r$r.log" 0.1 redis_answers

    local t0
    t0="$(now)"
    # In the foreground (under a second): a background job's stdin would be /dev/null.
    timeout "$fill_secs" redis-cli -h 127.0.0.1 -p "$redis_port" --pipe <"$tmp/redis-fill.resp" >"$tmp/redis-r$r-fill.out" 2>&1 || true
    grep -q "errors: 0, replies: $owners" "$tmp/redis-r$r-fill.out" \
        || { log "filling Redis failed:"; cat "$tmp/redis-r$r-fill.out" >&2; exit 1; }
    # Check every list: $owners keys, $owners * $page items in all, items of the right size.
    local keys items first
    keys="$(rcli dbsize)"
    # shellcheck disable=SC2016 # a Lua script, not shell
    items="$(rcli eval 'local t = 0 for i = 0, tonumber(ARGV[1]) - 1 do t = t + redis.call("LLEN", string.format("list:%012d", i)) end return t' 0 "$owners")"
    first="$(rcli lindex list:000000000000 0)"
    if [[ "$keys" != "$owners" || "$items" != "$((owners * page))" || ${#first} -ne $item_bytes ]]; then
        log "Redis fill check failed: $keys keys (want $owners), $items items (want $((owners * page))), item of ${#first} bytes (want $item_bytes)"
        exit 1
    fi
    log "redis filled with $owners lists of $page x ${item_bytes}-byte items in $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')s"

    # redis-benchmark runs a request count, not a time: a short run (which also warms up;
    # about 2 s here, so that connecting is a small part of it) gives the rate, and the
    # measured run asks for rate * SECS requests. Its length is printed as wall_secs.
    local bench=(redis-benchmark -h 127.0.0.1 -p "$redis_port" -c "$concurrency" -P 1 -r "$owners" --csv)
    local cmd=(LRANGE "list:__rand_int__" 0 "$((page - 1))")
    local cal_n=$((concurrency * 200 > 100000 ? concurrency * 200 : 100000))
    bounded "$calibrate_secs" "$tmp/redis-r$r-calibrate.csv" "${bench[@]}" -n "$cal_n" "${cmd[@]}"
    local cal_rps n
    cal_rps="$(awk -F'"' '$2 ~ /^LRANGE / { print $4 }' "$tmp/redis-r$r-calibrate.csv")"
    [[ -n "$cal_rps" ]] || { log "redis-benchmark calibration printed no result:"; cat "$tmp/redis-r$r-calibrate.csv" >&2; exit 1; }
    n="$(awk -v rps="$cal_rps" -v d="$duration" -v min="$cal_n" 'BEGIN { n = int(rps * d); print (n < min ? min : n) }')"
    rcli config resetstat >/dev/null
    log "redis ready; measuring LRANGE: concurrency $concurrency, $n requests (~${duration}s at the calibrated $cal_rps/s)"
    local t1 t2
    t1="$(now)"
    bounded "$((duration + bench_slack_secs))" "$tmp/redis-r$r.csv" "${bench[@]}" -n "$n" "${cmd[@]}"
    t2="$(now)"
    # Every LRANGE must have hit a filled list: keyspace_misses counts keys that did not exist.
    local stats hits misses
    stats="$(rcli info stats | tr -d '\r')"
    hits="$(sed -n 's/^keyspace_hits://p' <<<"$stats")"
    misses="$(sed -n 's/^keyspace_misses://p' <<<"$stats")"
    if [[ "$misses" != 0 || "$hits" -lt "$n" ]]; then
        log "redis-benchmark missed keys: keyspace_hits $hits, keyspace_misses $misses for $n requests"; exit 1
    fi
    # CSV: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms",
    # the LRANGE row after the header (anything else it prints, such as warnings, is skipped).
    # redis-benchmark counts no errors; the hit counters above stand in for that, hence "errors":0.
    redis_result="$(awk -F'"' -v n="$n" -v secs="$(awk -v a="$t1" -v b="$t2" 'BEGIN { print b - a }')" '$2 ~ /^LRANGE / {
        printf "{\"ops\":%d,\"wall_secs\":%.2f,\"ops_per_sec\":%s,\"avg_us\":%d,\"p50_us\":%d,\"p95_us\":%d,\"p99_us\":%d,\"max_us\":%d,\"errors\":0}",
            n, secs, $4, $6 * 1000 + 0.5, $10 * 1000 + 0.5, $12 * 1000 + 0.5, $14 * 1000 + 0.5, $16 * 1000 + 0.5
    }' "$tmp/redis-r$r.csv")"
    [[ -n "$redis_result" ]] || { log "redis-benchmark printed no result:"; cat "$tmp/redis-r$r.csv" >&2; exit 1; }
    echo "redis:  $redis_result"
    stop_all
}

# ---- plexus: 3 nodes on loopback ---------------------------------------------
measure_plexus() { # round: a fresh 3-node plexus cluster, one measurement; sets plexus_json
    local r="$1"
    log "round $r: starting plexus"
    start_plexus "$tmp/plexus-r$r" "$tmp/plexus-r$r-up.log"
    # `plexus bench --workload read` first appends $page entries to each of the $owners
    # timelines (replicated writes, not timed), then reads for SECS seconds.
    log "plexus ready; filling $owners timelines with $page entries, then measuring reads: concurrency $concurrency, ${duration}s"
    local t0 t1
    t0="$(now)"
    plexus_bench "$r" read --owners "$owners" --item-bytes "$item_bytes"
    t1="$(now)"
    # The JSON times only the reads; the rest of the client's run is connecting and filling.
    log "plexus bench ran $(awk -v a="$t0" -v b="$t1" -v d="$(json_field "$plexus_json" duration_secs)" \
        'BEGIN { printf "%.1fs, of which about %.1fs connecting and filling", b - a, b - a - d }')"
    stop_all
}

redis_result=""
plexus_json=""
redis_port=""
ratios=()
for ((r = 1; r <= rounds; r++)); do
    # Even rounds measure plexus first, so a machine that speeds up or slows down over the run
    # favours neither side.
    if [[ $((r % 2)) -eq 0 ]]; then measure_plexus "$r"; fi
    measure_redis "$r"
    if [[ $((r % 2)) -eq 1 ]]; then measure_plexus "$r"; fi
    ratio="$(awk -v p="$(json_field "$plexus_json" ops_per_sec)" -v e="$(json_field "$redis_result" ops_per_sec)" \
        -v pp="$(json_field "$plexus_json" p99_us)" -v ep="$(json_field "$redis_result" p99_us)" \
        -v perr="$(json_field "$plexus_json" errors)" \
        'BEGIN { if (e + 0 <= 0) { print "redis measured no successful reads" > "/dev/stderr"; exit 1 }
                 printf "%.2f %d %d %d", p / e, pp, ep, perr }')"
    ratios+=("$ratio")
    read -r q pp ep perr <<<"$ratio"
    line="round $r: read throughput ratio plexus/redis = $q; p99 plexus $pp us vs redis $ep us"
    if ((perr > 0)); then line+="; plexus read errors $perr"; fi
    echo "$line"
done

# ---- report ------------------------------------------------------------------
# The median round by ratio (the lower middle one for an even count), with its p99s.
median="$(printf '%s\n' "${ratios[@]}" | sort -n -k1,1 | sed -n "$(((${#ratios[@]} + 1) / 2))p")"
read -r q pp ep perr <<<"$median"
line="read throughput ratio plexus/redis = $q; p99 plexus $pp us vs redis $ep us"
if ((rounds > 1)); then
    line+=" (median of $rounds rounds: $(printf '%s\n' "${ratios[@]}" | awk '{print $1}' | paste -sd' '))"
fi
if ((perr > 0)); then line+="; plexus read errors $perr"; fi
echo "$line"
