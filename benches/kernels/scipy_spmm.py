#!/usr/bin/env python3
"""scipy's CSR x dense product on the same graph as the plexus kernels bench (the CPU baseline).

Reads a text edge list (`src dst` per line, as `kbench --write-edges` writes it), builds the N x N CSR
matrix by destination (row = dst, column = src, value 1.0, float32) and times A @ X for a dense float32
X of N x K, which is the `sum` aggregation. Prints one JSON object per K.

Usage: scipy_spmm.py EDGES_PATH --dims 64,128,256 [--iters 5] [--seed 1]
"""
import argparse
import json
import statistics
import time

import numpy as np
import scipy
import scipy.sparse as sp


def load_edges(path):
    with open(path, "rb") as f:
        data = np.array(f.read().split(), dtype=np.uint32)
    pairs = data.reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("edges")
    ap.add_argument("--dims", default="64,128,256")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    src, dst = load_edges(args.edges)
    n = int(max(src.max(), dst.max())) + 1
    e = len(src)
    # Built from (data, indices, indptr) so that duplicate edges are kept, like the kernels' CSR
    # (building from COO would merge them and give scipy less work).
    order = np.argsort(dst, kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(dst, minlength=n), out=indptr[1:])
    a = sp.csr_matrix((np.ones(e, dtype=np.float32), src[order].astype(np.int32), indptr), shape=(n, n))
    rng = np.random.default_rng(args.seed)
    for k in (int(d) for d in args.dims.split(",")):
        x = rng.uniform(-1.0, 1.0, size=(n, k)).astype(np.float32)
        y = a @ x  # warm-up
        times = []
        for _ in range(args.iters):
            t = time.perf_counter()
            y = a @ x
            times.append((time.perf_counter() - t) * 1e3)
        ms = statistics.median(times)
        nbytes = e * k * 4 + 4 * e + n * k * 4 + 4 * (n + 1)
        print(json.dumps({"backend": "scipy", "scipy": scipy.__version__, "vertices": n, "edges": int(a.nnz),
                          "dim": k, "ms": ms, "ms_min": min(times), "edges_per_sec": e / (ms / 1e3),
                          "gbps": nbytes / (ms / 1e3) / 1e9, "checksum": float(y[:8].sum())}))


if __name__ == "__main__":
    main()
