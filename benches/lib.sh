# shellcheck shell=bash
# shellcheck disable=SC2154 # keep, stop_grace_secs, plexus_ready_secs, plexus, duration, concurrency and bench_slack_secs come from the sourcing script
# Shared by the benchmark scripts (benches/*/run.sh); sourced, not run.
#
# The sourcing script sets `keep` (1: keep the temp dir), `stop_grace_secs` and
# `plexus_ready_secs` first, then calls `bench_init NAME`, which makes `$tmp` and installs the
# EXIT/INT/TERM traps that stop every process group in `pids` (and the client in `fg_pid`).

log() { echo "[run.sh] $*" >&2; }

bench_init() { # name: makes $tmp, starts tracking processes, installs the traps
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/plexus-$1-bench.XXXXXX")"
    pids=()     # process-group leaders we started (each via setsid)
    fg_pid=""   # the benchmark client now running, if any
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

bounded() { # secs outfile cmd...: runs cmd with a deadline, stdout to outfile
    # In the background and waited for, so that INT/TERM reach our trap at once
    # instead of after the command (bash defers traps during a foreground child).
    local secs="$1" out="$2" rc=0
    shift 2
    timeout "$secs" "$@" >"$out" &
    fg_pid=$!
    wait "$fg_pid" || rc=$?
    fg_pid=""
    return "$rc"
}

stop_group() { # pid: SIGTERM its group, wait up to stop_grace_secs, then SIGKILL
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < stop_grace_secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not stop in ${stop_grace_secs}s; killing its group"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    # Children (plexus nodes) may outlive their parent; the group is ours alone.
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

stop_all() { # stops every process group in `pids`
    local pid
    for pid in "${pids[@]}"; do stop_group "$pid"; done
    pids=()
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$fg_pid" ]]; then kill -TERM "$fg_pid" 2>/dev/null || true; wait "$fg_pid" 2>/dev/null || true; fi
    stop_all
    if [[ ($keep -eq 1 || $rc -ne 0) && -n "$(ls -A "$tmp")" ]]; then
        log "logs and data kept in $tmp"
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_tcp_ports() { # count start: prints `count` ports at or above start with no listener
    local n="$1" p="$2" out=()
    while [[ ${#out[@]} -lt $n ]]; do
        ((p < 65000)) || { echo "run.sh: no free TCP ports" >&2; return 1; }
        port_in_use "$p" || out+=("$p")
        p=$((p + 1))
    done
    echo "${out[@]}"
}

json_field() { # json key: the number after "key": in a one-line JSON object
    sed -n "s/.*\"$2\":\([-0-9.eE+]*\).*/\1/p" <<<"$1"
}

apt_updated=0
apt_install() { # packages...: installs Debian packages (one apt-get update per run)
    if [[ $apt_updated -eq 0 ]]; then apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

plexus_binary() { # root: sets `plexus` to $PLEXUS_BIN, or builds target/release/plexus under root
    if [[ -n "${PLEXUS_BIN:-}" ]]; then
        plexus="$PLEXUS_BIN"
    else
        log "building plexus (cargo build --release -p plexus)"
        ( cd "$1" && unset CARGO_TARGET_DIR && cargo build --release --quiet -p plexus )
        plexus="$1/target/release/plexus"
    fi
    [[ -x "$plexus" ]] || { echo "run.sh: plexus binary not found or not executable: $plexus" >&2; exit 1; }
}

start_plexus() { # dir log: `plexus up --nodes 3` in dir, waits for `ready`; sets up_pid
    local dir="$1" uplog="$2"
    # plexus nodes listen on UDP (QUIC); `up` itself skips ports already taken.
    local base_port=$((27400 + RANDOM % 2000))
    log "plexus: starting 3 nodes (base port $base_port)"
    setsid "$plexus" up --nodes 3 --dir "$dir" --base-port "$base_port" >"$uplog" 2>&1 </dev/null &
    up_pid=$!
    pids+=("$up_pid")
    await_ready "plexus up" "$up_pid" "$plexus_ready_secs" "$uplog" 0.3 plexus_up_ready "$uplog"
}

plexus_up_ready() { # uplog: whether `plexus up` has printed its ready line
    grep -sv "not ready" "$1" | grep -q ready  # -s: the log may not exist yet
}

await_ready() { # what pid secs logfile pause check...: runs check every pause seconds until it
    # succeeds; exits with the log's tail if pid dies first or secs pass
    local what="$1" pid="$2" secs="$3" logfile="$4" pause="$5"
    shift 5
    local deadline=$((SECONDS + secs))
    until "$@"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$what exited before it was ready"; tail -n 20 "$logfile" >&2; exit 1
        fi
        if ((SECONDS >= deadline)); then
            log "$what not ready after ${secs}s"; tail -n 20 "$logfile" >&2; exit 1
        fi
        sleep "$pause"
    done
}

plexus_bench() { # round workload args...: `plexus bench` against round's cluster, bounded;
    # sets and prints plexus_json
    local r="$1" workload="$2"
    shift 2
    bounded "$((duration + bench_slack_secs))" "$tmp/plexus-r$r.json" "$plexus" bench \
        --config "$tmp/plexus-r$r/client.toml" --workload "$workload" --concurrency "$concurrency" \
        --duration "$duration" --json "$@"
    plexus_json="$(cat "$tmp/plexus-r$r.json")"
    echo "plexus: $plexus_json"
}
