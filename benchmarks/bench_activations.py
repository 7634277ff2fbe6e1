#!/usr/bin/env python3
"""The cost of a fused activation in bnns-py against PyTorch's own activation, side by side.

A benchmark, not a test. For each layer (the depthwise 3x3 layer of issue 22 and a dense 3x3 layer),
each thread count (1 and 2 by default) and each activation, it times bnns_py.conv2d (cached filter)
with the activation fused and with none; the difference is the activation's extra time. Next to it:
PyTorch's activation alone, applied to the layer's output tensor (the layer computed once by torch),
timed right after in the same round. The budget of issue 22 is extra <= 1.5x torch.

Both libraries run with the same thread count (torch.set_num_threads and the bnns filters'
FilterParameters.n_threads). The identity and the fused layer are timed in alternating loops, the
fastest loop of each kept; one library's threads are left to go idle before the other's are timed.
Every round gives one ratio per activation; the table shows the range (min-max) over --runs rounds
of the extra time, of PyTorch's time and of the ratio, and the median ratio.

Run:  python benchmarks/bench_activations.py [--threads 1,2] [--runs 5] [--loops 31] [--only gelu] [--layers dense]
"""
import argparse
import statistics
import time

import numpy as np

import bnns_py
from bnns_py import ActivationFunction as AF

from _timing import best_times, wait_until_idle

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = None

LAYERS = {  # name: (batch, in_channels, out_channels, size, groups)
    "depthwise 3x3 144ch 56x56 b2": (2, 144, 144, 56, 144),
    "dense 3x3 64ch 56x56 b1": (1, 64, 64, 56, 1),
}

# (name, bnns activation, torch function of the output tensor)
ACTIVATIONS = [
    ("relu", AF.rectified_linear, lambda y: F.relu(y)),
    ("relu6", AF.relu6, lambda y: F.relu6(y)),
    ("clamp(-1, 1)", AF.clamp((-1.0, 1.0)), lambda y: torch.clamp(y, -1.0, 1.0)),
    ("leaky 0.1", AF.leaky_rectified_linear(0.1), lambda y: F.leaky_relu(y, 0.1)),
    ("hard sigmoid", AF.hard_sigmoid(1.0 / 6.0, 0.5), lambda y: F.hardsigmoid(y)),
    ("hard swish", AF.hard_swish(), lambda y: F.hardswish(y)),
    ("soft shrink 0.5", AF.soft_shrink(0.5), lambda y: F.softshrink(y, 0.5)),
    ("sigmoid", AF.sigmoid, lambda y: torch.sigmoid(y)),
    ("tanh", AF.tanh, lambda y: torch.tanh(y)),
    ("silu", AF.silu, lambda y: F.silu(y)),
    ("gelu", AF.gelu, lambda y: F.gelu(y)),
    ("gelu tanh", AF.gelu_approximation(0.7978845608028654, 0.044715), lambda y: F.gelu(y, approximate="tanh")),
    ("elu", AF.elu(1.0), lambda y: F.elu(y)),
    ("selu", AF.selu, lambda y: F.selu(y)),
    ("celu 1.5", AF.celu(1.5), lambda y: F.celu(y, 1.5)),
    ("softplus", AF.softplus(1.0, 1.0), lambda y: F.softplus(y)),
    ("log sigmoid", AF.log_sigmoid, lambda y: F.logsigmoid(y)),
    ("softsign", AF.softsign, lambda y: F.softsign(y)),
    ("tanh shrink", AF.tanh_shrink, lambda y: F.tanhshrink(y)),
    ("erf", AF.erf, lambda y: torch.erf(y)),
]


def measure(layer_shape, chosen, threads, runs, loops):
    """{activation name: [(extra seconds, torch seconds)] per round} and the identity's median time."""
    batch, cin, cout, size, groups = layer_shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, cin, size, size)).astype(np.float32)
    w = (rng.standard_normal((cout, cin // groups, 3, 3)) / np.sqrt(9 * cin / groups)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    out = np.empty((batch, cout, size, size), np.float32)
    modules, layers = [], []

    def bnns_call(act):
        module = bnns_py.Conv2d(w, b, padding=1, groups=groups, activation=act)
        layer = module.spec.make_layer(size, size, module._bnns_weight, module.bias, None, n_threads=threads)
        modules.append(module)
        layers.append(layer)
        return lambda: layer.apply(batch, x, out)

    plain = bnns_call(None)
    fused_calls = {name: bnns_call(act) for name, act, _ in chosen}
    y = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), padding=1, groups=groups)
    rounds = {name: [] for name, _, _ in chosen}
    identity = []
    # one thread runs in the calling thread (both libraries): its CPU time does not count the time
    # other processes hold the cores; more threads need the wall clock
    clock = time.thread_time if threads == 1 else time.perf_counter
    try:
        for _ in range(runs):
            extra = {}
            for name in rounds:
                ident, fused = best_times([plain, fused_calls[name]], loops=loops, clock=clock)
                identity.append(ident)
                extra[name] = fused - ident
            # each library's worker threads spin a while after a call: the other library is timed
            # only after they have gone idle
            wait_until_idle()
            for name, _, torch_fn in chosen:
                rounds[name].append((extra[name], best_times([lambda: torch_fn(y)], loops=loops, clock=clock)[0]))
            wait_until_idle()
    finally:
        for layer in layers:
            layer.close()
        for module in modules:
            module.close()
    return rounds, statistics.median(identity)


def span(values, scale=1.0, digits=3):
    return f"{min(values) * scale:.{digits}f}–{max(values) * scale:.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--loops", type=int, default=31, help="timed loops per function and round (the fastest counts)")
    ap.add_argument("--only", default="", help="activations whose name contains this text")
    ap.add_argument("--layers", default="", help="layers whose name contains this text")
    args = ap.parse_args()
    if torch is None:
        raise SystemExit("bench_activations needs PyTorch (pip install torch==2.13.0)")
    chosen = [a for a in ACTIVATIONS if args.only in a[0]]
    over = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for layer, shape in LAYERS.items():
            if args.layers not in layer:
                continue
            rounds, base = measure(shape, chosen, threads, args.runs, args.loops)
            print(f"\n{layer}, {threads} thread(s): identity {base * 1e3:.3f} ms; ranges over {args.runs} rounds")
            print("| activation | extra time fused in bnns-py (ms) | PyTorch's activation alone (ms) "
                  "| ratio (range) | ratio (median) |")
            print("|---|---|---|---|---|")
            for name, _, _ in chosen:
                ratios = [extra / alone for extra, alone in rounds[name]]
                median = statistics.median(ratios)
                print(f"| {name} | {span([r[0] for r in rounds[name]], 1e3)} | {span([r[1] for r in rounds[name]], 1e3)} "
                      f"| {span(ratios, digits=2)} | {median:.2f} |")
                if median > 1.5:
                    over.append(f"{name} ({layer}, {threads} thread(s)): median ratio {median:.2f}")
    print("\nover the 1.5x budget (median ratio):", "; ".join(over) if over else "none")


if __name__ == "__main__":
    main()
