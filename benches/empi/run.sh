#!/usr/bin/env bash
# Identity matching on a fresh 3-node plexus cluster (see README.md beside this file).
#
#   benches/empi/run.sh [--records N] [--match-records M] [--duration SECS] [--batch B] [--no-ablation] [--keep]
#
# Bulk-links N synthetic person records with ground truth (replication 3, fsync on), scores the
# identities the cluster forms (pairwise precision, recall, F1; blocking pair completeness),
# times one-record matches from 16 clients with M records held, and runs the ablation (full,
# without the graph signal, without term-frequency adjustment) on plexus-empi's batch pipeline.
# There is no reference system here: the reference figures are the batch pipeline's, printed
# in the same run.
#
# Environment: PLEXUS_BIN (use this plexus binary instead of building target/release/plexus).
set -euo pipefail

records=500000
match_records=1000000
duration=20
batch=10000
keep=0
ablation=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --records) records="${2:?--records needs a value}"; shift 2 ;;
        --match-records) match_records="${2:?--match-records needs a value}"; shift 2 ;;
        --duration) duration="${2:?--duration needs a value}"; shift 2 ;;
        --batch) batch="${2:?--batch needs a value}"; shift 2 ;;
        --no-ablation) ablation=(--no-ablation); shift ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
for v in records duration batch; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --$v must be a positive integer" >&2; exit 2; }
done
[[ "$match_records" =~ ^[0-9]+$ ]] || { echo "run.sh: --match-records must be a number" >&2; exit 2; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

plexus_ready_secs=150
stop_grace_secs=60
bench_slack_secs=7200     # linking a million records comes before the measured seconds

# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$here/../lib.sh"
bench_init empi
plexus_binary "$root"

log "plexus: a fresh 3-node cluster"
start_plexus "$tmp/plexus" "$tmp/plexus-up.log"
bounded "$((duration + bench_slack_secs))" "$tmp/empi.json" "$plexus" bench \
    --config "$tmp/plexus/client.toml" --workload empi --records "$records" \
    --match-records "$match_records" --duration "$duration" --batch "$batch" "${ablation[@]}" --json
echo "plexus: $(cat "$tmp/empi.json")"
stop_all
