#!/usr/bin/env python3
"""bnns-py vs PyTorch CPU convolution, side by side in one process, as ratios.

Cases are those of the shared peer harness (ResNet-50 layers, dilated, depthwise, transposed, tiny)
at batch 1 and 8. For each case both libraries run on the same inputs with the same thread count;
the table reports GFLOP/s of each, the ratio bnns/torch and bnns's share of the machine's FMA peak
(measured with a sgemm of 4096, or given with --peak). Median of --runs sweeps; each measurement is
the median of several timed samples after warm-up. Writes JSON and, with matplotlib, a PNG chart.

Run:  python benchmarks/bench_conv.py [--threads 2] [--runs 3] [--quick] [--only dw_] [--backward]
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys

_ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
_ap.add_argument("--threads", type=int, default=2)
_ap.add_argument("--runs", type=int, default=3)
_ap.add_argument("--quick", action="store_true", help="shorter samples")
_ap.add_argument("--only", default="", help="run cases whose name contains this text")
_ap.add_argument("--backward", action="store_true", help="also time forward + all gradients")
_ap.add_argument("--peak", type=float, default=None, help="FMA peak in GFLOP/s (default: measured sgemm)")
_ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_conv.json"))
_ap.add_argument("--default-malloc", action="store_true")
ARGS = _ap.parse_args()

# Same steady-state malloc mode as the peer harness: large freed blocks stay in the heap, so
# per-call allocations (torch's outputs) do not page-fault. Read by glibc at start: re-exec.
if not ARGS.default_malloc and sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(32 * 1024 * 1024)
    os.environ["MALLOC_TRIM_THRESHOLD_"] = str(16 * 1024 ** 3)
    os.execv(sys.executable, [sys.executable] + sys.argv)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)

import numpy as np  # noqa: E402

import bnns_py  # noqa: E402

try:
    import torch  # noqa: E402
    import torch.nn.functional as F  # noqa: E402
    torch.set_num_threads(ARGS.threads)
except ImportError:
    torch = None

from bnns_py.bench import arrays, bnns_module, flops, full_cases, out_hw, time_call  # noqa: E402

TIMING = dict(samples=5, target=0.03) if ARGS.quick else dict(samples=7, target=0.06)


def bench(fn, **overrides):
    return time_call(fn, **dict(TIMING, **overrides))


def cases():
    return [c for c in full_cases() if ARGS.only in c["name"]]


def bench_bnns(c):
    x, w, b = arrays(c)
    module = bnns_module(c, w, b)
    out = np.empty((c["N"], c["Cout"]) + out_hw(c), np.float32)
    layer = module._layer(c["H"], c["W"])
    result = {"fwd_s": bench(lambda: layer.apply(c["N"], x, out))}
    if ARGS.backward:
        dy = np.random.default_rng(1).standard_normal(out.shape, dtype=np.float32)

        def step():
            y = module.forward(x, out=out)
            module.backward(x, y, dy)

        result["fwd_bwd_s"] = bench(step)
    module.close()
    return result


def torch_call(c, x, w, b):
    op = F.conv_transpose2d if c["transposed"] else F.conv2d
    return op(x, w, b, stride=c["stride"], padding=c["pad"], dilation=c["dil"], groups=c["groups"])


def bench_torch(c):
    x, w, b = (torch.from_numpy(a) for a in arrays(c))
    with torch.no_grad():
        result = {"fwd_s": bench(lambda: torch_call(c, x, w, b))}
    if ARGS.backward:
        for t in (x, w, b):
            t.requires_grad_(True)
        gy = torch.randn((c["N"], c["Cout"]) + out_hw(c))

        def step():
            x.grad = w.grad = b.grad = None
            torch_call(c, x, w, b).backward(gy)

        result["fwd_bwd_s"] = bench(step)
    return result


def measured_peak():
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    c = np.empty_like(a)
    return 2.0 * n ** 3 / bench(lambda: np.matmul(a, a, out=c), samples=5, target=0.2) / 1e9


def main():
    info = bnns_py.backend_info()
    peak = ARGS.peak or measured_peak()
    print(f"bnns-py {bnns_py.__version__} {info['backend']} ({info.get('blas', '')})  torch "
          f"{torch.__version__ if torch else 'absent'}  threads {ARGS.threads}  malloc "
          f"{os.environ.get('MALLOC_MMAP_THRESHOLD_', 'default')}  peak {peak:.1f} GFLOP/s "
          f"({'given' if ARGS.peak else 'numpy sgemm 2048'})", flush=True)
    runs = []
    for run in range(ARGS.runs):
        rows = []
        for c in cases():
            row = dict(c, gflop=flops(c) / 1e9, bnns=bench_bnns(c), torch=bench_torch(c) if torch else None)
            rows.append(row)
            print(f"  run {run + 1} {c['name']:28s} N={c['N']} bnns {row['gflop'] / row['bnns']['fwd_s']:7.1f} GF/s"
                  + (f"  torch {row['gflop'] / row['torch']['fwd_s']:7.1f} GF/s" if torch else ""), flush=True)
        runs.append(rows)
    summary = []
    for per_case in zip(*runs):
        c = per_case[0]
        entry = {k: c[k] for k in ("name", "N", "gflop")}
        for lib in ("bnns", "torch"):
            for key, mult in (("fwd_s", 1), ("fwd_bwd_s", 3)):
                vals = [r[lib][key] for r in per_case if r[lib] and key in r[lib]]
                if vals:
                    entry[f"{lib}_{key}"] = statistics.median(vals)
                    entry[f"{lib}_{key.replace('_s', '')}_gflops"] = mult * c["gflop"] / entry[f"{lib}_{key}"]
        for key in ("fwd", "fwd_bwd"):
            if f"torch_{key}_s" in entry and f"bnns_{key}_s" in entry:
                entry[f"{key}_ratio"] = entry[f"torch_{key}_s"] / entry[f"bnns_{key}_s"]
        entry["bnns_fwd_pct_peak"] = 100 * entry["bnns_fwd_gflops"] / peak
        summary.append(entry)
    header = f"{'case':28s} {'N':>2s} | {'bnns GF/s':>9s} {'torch GF/s':>10s} {'ratio':>6s} {'%peak':>6s}"
    if ARGS.backward:
        header += f" | {'f+b bnns':>8s} {'f+b torch':>9s} {'ratio':>6s}"
    print("\n" + header)
    for e in summary:
        line = (f"{e['name']:28s} {e['N']:2d} | {e['bnns_fwd_gflops']:9.1f} {e.get('torch_fwd_gflops', float('nan')):10.1f} "
                f"{e.get('fwd_ratio', float('nan')):6.2f} {e['bnns_fwd_pct_peak']:6.1f}")
        if ARGS.backward:
            line += (f" | {e.get('bnns_fwd_bwd_gflops', float('nan')):8.1f} {e.get('torch_fwd_bwd_gflops', float('nan')):9.1f} "
                     f"{e.get('fwd_bwd_ratio', float('nan')):6.2f}")
        print(line)
    ratios = [e["fwd_ratio"] for e in summary if "fwd_ratio" in e]
    if ratios:
        print(f"geometric mean forward ratio (bnns speed / torch speed): "
              f"{math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f} over {len(ratios)} cases")
    os.makedirs(os.path.dirname(ARGS.out), exist_ok=True)
    with open(ARGS.out, "w") as handle:
        json.dump({"meta": {"threads": ARGS.threads, "peak_gflops": peak, "backend": info,
                            "torch": torch.__version__ if torch else None, "platform": platform.platform(),
                            "malloc": os.environ.get("MALLOC_MMAP_THRESHOLD_")},
                   "summary": summary, "runs": runs}, handle, indent=1)
    print(f"wrote {ARGS.out}")


if __name__ == "__main__":
    main()
