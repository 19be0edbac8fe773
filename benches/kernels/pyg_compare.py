#!/usr/bin/env python3
"""GPU baseline for the plexus CUDA aggregation kernels: PyTorch Geometric / PyTorch on the same graph.

Reads the text edge list `kbench --write-edges` writes (`src dst` per line; aggregation gathers src -> dst)
and times, on one CUDA device, for each K and op:
  * torch_geometric.utils.scatter(x[src], dst, reduce=op)   (PyG's message-passing path: gather + scatter)
  * torch.sparse.mm(A_csr, x, reduce=...) where supported (sum/mean/max via torch.sparse.mm on CSR)
with CUDA events, median of --iters, and prints JSON lines with ms, edges/s and GB/s using the same byte
formula as the Rust bench (edges*K*bytes + 4*edges + N*K*4 + 4*(N+1)). Run the Rust side with
`cargo run --release -p plexus-kernels --example kbench -- --backend cuda --graph EDGES --dim K --op OP`.

Usage: pyg_compare.py EDGES_PATH [--dims 64,128,256] [--ops sum,mean,max] [--dtype f32|bf16] [--iters 20]
"""
import argparse
import json
import statistics

import torch


def load_edges(path):
    import numpy as np
    with open(path, "rb") as f:
        data = np.array(f.read().split(), dtype=np.int64).reshape(-1, 2)
    return torch.from_numpy(data[:, 0].copy()), torch.from_numpy(data[:, 1].copy())


def time_cuda(fn, iters):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("edges")
    ap.add_argument("--dims", default="64,128,256")
    ap.add_argument("--ops", default="sum,mean,max")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    dev = torch.device("cuda")
    src, dst = load_edges(args.edges)
    n = int(max(src.max(), dst.max())) + 1
    e = src.numel()
    src, dst = src.to(dev), dst.to(dev)
    order = torch.argsort(dst, stable=True)
    crow = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    crow[1:] = torch.cumsum(torch.bincount(dst, minlength=n), 0)
    dtype = torch.float32 if args.dtype == "f32" else torch.bfloat16
    bpv = 4 if args.dtype == "f32" else 2
    try:
        from torch_geometric.utils import scatter
    except ImportError:
        scatter = None
    for k in (int(d) for d in args.dims.split(",")):
        x = torch.rand(n, k, device=dev, dtype=dtype) * 2 - 1
        a = torch.sparse_csr_tensor(crow, src[order], torch.ones(e, device=dev, dtype=dtype), size=(n, n))
        nbytes = e * k * bpv + 4 * e + n * k * 4 + 4 * (n + 1)
        for op in args.ops.split(","):
            runs = {}
            if scatter is not None:
                runs["pyg_scatter"] = lambda: scatter(x[src], dst, dim=0, dim_size=n, reduce=op)
            red = {"sum": "sum", "mean": "mean", "max": "amax"}[op]
            if op == "sum":
                runs["torch_sparse_mm"] = lambda: a @ x
            else:  # reduce= may be CPU-only in some torch versions; a RuntimeError is reported, not fatal
                runs["torch_sparse_mm"] = lambda: torch.sparse.mm(a, x, reduce=red)
            for name, fn in runs.items():
                try:
                    ms = time_cuda(fn, args.iters)
                except RuntimeError as err:
                    print(json.dumps({"backend": name, "dim": k, "op": op, "error": str(err)[:200]}))
                    continue
                print(json.dumps({"backend": name, "device": torch.cuda.get_device_name(), "vertices": n,
                                  "edges": e, "dim": k, "op": op, "dtype": args.dtype, "ms": ms,
                                  "edges_per_sec": e / (ms / 1e3), "gbps": nbytes / (ms / 1e3) / 1e9}))


if __name__ == "__main__":
    main()
