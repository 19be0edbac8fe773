#!/usr/bin/env bash
# CPU aggregation bench for plexus-kernels, side by side with scipy's CSR x dense product on the same
# graph and the machine's STREAM copy bandwidth, printed as one table with ratios (DESIGN.md: figures are
# compared on the same machine in one run). Usage: benches/kernels/run.sh [ITERS]
#   env: CARGO_TARGET_DIR (default: target), KBENCH_BACKEND (default: the auto-selected one),
#        KBENCH_GRAPHS (default: "200000:4000000 50000:1000000"), KBENCH_DIMS (default: "64 128 256").
set -euo pipefail
cd "$(dirname "$0")/../.."
ITERS=${1:-10}
TARGET=${CARGO_TARGET_DIR:-target}
GRAPHS=${KBENCH_GRAPHS:-"200000:4000000 50000:1000000"}
DIMS=${KBENCH_DIMS:-"64 128 256"}
BACKEND_ARGS=()
if [[ -n "${KBENCH_BACKEND:-}" ]]; then BACKEND_ARGS=(--backend "$KBENCH_BACKEND"); fi

cargo build --release -p plexus-kernels --example kbench
KB="$TARGET/release/examples/kbench"
python3 -c "import scipy, numpy" 2>/dev/null || python3 -m pip install --quiet scipy numpy

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
RESULTS="$WORK/results.jsonl"
"$KB" --info | sed 's/^/{"info":/; s/$/}/' >>"$RESULTS"
echo "backend: $("$KB" --info)"
echo "STREAM copy (512 MiB arrays)..."
"$KB" --stream-bytes $((512 << 20)) >>"$RESULTS"
for g in $GRAPHS; do
  v=${g%%:*}; e=${g##*:}
  edges="$WORK/g_${v}_${e}.txt"
  "$KB" --vertices "$v" --edges "$e" --write-edges "$edges"
  echo "graph ${v} vertices / ${e} edges: scipy..."
  python3 benches/kernels/scipy_spmm.py "$edges" --dims "$(echo "$DIMS" | tr ' ' ',')" --iters "$ITERS" >>"$RESULTS"
  for k in $DIMS; do
    echo "graph ${v}/${e} K=${k}: plexus-kernels..."
    for dtype in f32 bf16; do
      "$KB" --vertices "$v" --edges "$e" --dim "$k" --dtype "$dtype" --op sum --iters "$ITERS" "${BACKEND_ARGS[@]}" >>"$RESULTS"
      if [[ "$dtype" == f32 ]]; then
        "$KB" --vertices "$v" --edges "$e" --dim "$k" --dtype f32 --op sum --iters "$ITERS" --threads 1 "${BACKEND_ARGS[@]}" >>"$RESULTS"
      fi
    done
  done
done

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
stream = next(r["gbps"] for r in rows if "stream_copy_bytes" in r)
scipy = {(r["vertices"], r["dim"]): r for r in rows if r.get("backend") == "scipy"}
print(f"\nSTREAM copy: {stream:.1f} GB/s")
hdr = f"{'graph':>14} {'K':>4} {'dtype':>5} {'backend':>8} {'thr':>3} {'ms':>8} {'Medges/s':>9} {'GB/s':>6} {'%STREAM':>7} {'scipy ms':>9} {'x scipy':>7}"
print(hdr)
print("-" * len(hdr))
for r in rows:
    if r.get("backend") in (None, "scipy") or "info" in r:
        continue
    s = scipy.get((r["vertices"], r["dim"]))
    sm = s["ms"] if s else float("nan")
    print(f"{r['vertices']//1000:>5}k/{r['edges']/1e6:>4.1f}M {r['dim']:>4} {r['dtype']:>5} {r['backend']:>8} {r['threads']:>3} "
          f"{r['ms']:>8.2f} {r['edges_per_sec']/1e6:>9.1f} {r['gbps']:>6.1f} {100*r['gbps']/stream:>6.0f}% {sm:>9.2f} {sm/r['ms']:>7.2f}")
print("\nscipy rows (single-threaded CSR @ dense, float32):")
for (v, k), s in sorted(scipy.items()):
    print(f"  {v//1000}k K={k}: {s['ms']:.2f} ms, {s['gbps']:.1f} GB/s, {s['edges_per_sec']/1e6:.1f} Medges/s (scipy {s['scipy']})")
PY
