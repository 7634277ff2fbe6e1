"""The portable library's vector tiers side by side, in one process: a -Dnative=true build
(optional) and each tier of a dispatch build, every case of bench_conv.py timed in alternating
bursts, per case the fastest call (the least disturbed on a shared machine).

A benchmark, not a test. Each library is loaded from its own copy of the file, so each instance
selects its own tier (BNNS_PY_ISA is read when a library loads).

Run:  python benchmarks/bench_tiers.py --dispatch build/cp311/bnns_py/_portable/_bnns_portable*.so \
          [--native /tmp/native/bnns_py/_portable/_bnns_portable*.so] [--threads 1] [--rounds 7]
Build a native library beside it with:  meson setup /tmp/native -Dnative=true && ninja -C /tmp/native
"""
import argparse
import math
import os
import shutil
import tempfile
import time

import numpy as np

from bnns_py import bench
from bnns_py._ffi import ffi
from bnns_py.backend import Backend


def load(label, path, isa, folder):
    copy = os.path.join(folder, f"{label}.so")
    shutil.copy(path, copy)
    os.environ["BNNS_PY_ISA"] = isa
    try:
        lib = ffi.dlopen(copy)
    finally:
        os.environ.pop("BNNS_PY_ISA", None)
    if ffi.string(lib.bnns_portable_isa_error()):
        return None
    return Backend("portable", copy, lib)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dispatch", required=True, help="the dispatch build's library")
    parser.add_argument("--native", help="a -Dnative=true build's library (the reference of the ratios)")
    parser.add_argument("--threads", type=int, default=1, help="FilterParameters.n_threads (default 1)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating bursts per case (default 7)")
    parser.add_argument("--only", help="cases whose name contains this text")
    args = parser.parse_args()

    folder = tempfile.mkdtemp()
    backends = {}
    if args.native:
        backends["native"] = load("native", args.native, "", folder)
    probe = load("probe", args.dispatch, "", folder)
    for isa in ffi.string(probe.lib.bnns_portable_isa_available()).decode().split():
        backends[isa] = load(isa, args.dispatch, isa, folder)
    reference = "native" if args.native else list(backends)[-1]
    cases = [c for c in bench.full_cases() if not args.only or args.only in c["name"]]
    print(f"{args.threads} thread(s), {args.rounds} rounds; ms per call (fastest), speed relative to {reference}")
    print(f"{'case':30s} {'N':>2s} " + " ".join(f"{name:>9s}" for name in backends))
    results = []
    for c in cases:
        x, w, b = bench.arrays(c)
        out = np.empty((c["N"], c["Cout"]) + bench.out_hw(c), np.float32)
        modules = {name: bench.bnns_module(c, w, b, backend, args.threads) for name, backend in backends.items()}
        layers = {name: module._layer(c["H"], c["W"]) for name, module in modules.items()}
        best = {name: math.inf for name in backends}
        for _ in range(args.rounds):
            for name, layer in layers.items():
                layer.apply(c["N"], x, out)
                calls, start = 0, time.perf_counter()
                while calls < 3 or time.perf_counter() - start < 0.05:
                    t = time.perf_counter()
                    layer.apply(c["N"], x, out)
                    best[name] = min(best[name], time.perf_counter() - t)
                    calls += 1
        for module in modules.values():
            module.close()
        results.append(best)
        print(f"{c['name']:30s} {c['N']:2d} " + " ".join(f"{best[name] * 1e3:9.3f}" for name in backends), flush=True)
    print()
    for name in backends:
        speed = math.exp(sum(math.log(r[reference] / r[name]) for r in results) / len(results))
        print(f"geometric mean speed of {name} relative to {reference}: {speed:.4f}")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
