#!/usr/bin/env python3
"""Whole networks: every convolution and fully-connected layer of ResNet-18 and MobileNetV2, in
order, with their fused activations, in bnns-py against PyTorch eager and ONNX Runtime.

A benchmark, not a test. The layers' shapes are those of the torchvision models on 224x224 images
(listed below; ``--list`` prints them). Weights and inputs are random; each layer gets an input of
its own shape (pooling, residual additions and the classifier's flatten are not part of the
convolution and FC stacks timed here). Activations are fused as each network has them: ReLU after
every ResNet-18 convolution but the downsampling 1x1s (the ReLU that follows a residual addition is
fused into the block's second convolution), ReLU6 after MobileNetV2's expansion, depthwise, stem and
last convolutions, none after its projections and the classifiers.

- bnns-py: one ``bnns_py.Conv2d`` / ``bnns_py.Linear`` module per layer, called with a preallocated
  output (``module(x, out=out)``): the fastest way through the package (filters kept by the module,
  no per-call filter creation or cache lookup). ``--weights client`` (default): the modules read
  their weights in place at every call, as in training; ``--weights copied``: ``copy_weights=True``,
  each filter copies (packs, transforms) them once at creation, as ONNX Runtime does when it makes a
  session.
- PyTorch eager (optional): ``F.conv2d`` / ``F.linear`` then the in-place activation, as torchvision's
  modules run them, under ``torch.no_grad()``.
- ONNX Runtime (optional): one session per layer (Conv or Gemm, then Relu or Clip(0, 6), which ORT
  fuses), run with ``run_with_iobinding`` on bound numpy buffers, the thread count as intra-op
  threads; ``--onnx-spinning best`` (default) times sessions with and without
  ``session.intra_op.allow_spinning`` and keeps each layer's faster time.

Each thread count of ``--threads`` (e.g. 2 1) is measured in turn in this process, every library
with that many threads (torch.set_num_threads, the filters' n_threads, ORT's intra-op threads;
OMP/OPENBLAS/MKL_NUM_THREADS are set to the largest); glibc gets the peer harness's malloc
thresholds, as in bench_conv.py (``--default-malloc``: not). Each layer's time is the fastest of
several timed loops, the median over ``--runs`` sweeps; the network's time is the sum over its
layers, and also measured "in sequence": every layer once, back to back, the fastest of several
loops (the median over the sweeps), which adds what lies between the layers (Python per call,
caches the previous layer filled, thread pools waking up). Before each layer (and each sequence) is
timed the script waits until the process's threads are idle (benchmarks/_timing.py
wait_until_idle): no library is timed while another's pool spins. A burst of timed loops during
which other processes took more than a quarter of a core is measured again (``--retries``, the
fastest kept; benchmarks/_timing.py Contention): on a 2-core machine a 2-thread layer then runs at
its 1-thread speed. Ratios are peer time / bnns-py time (above 1: bnns-py is faster).

Writes JSON (benchmarks/results/bench_networks.json) and, with matplotlib, a chart of the
whole-network ratios (benchmarks/results/bench_networks.png).

Run:  python benchmarks/bench_networks.py [--threads 2 1] [--runs 3] [--batch 1 8] [--network mobilenet]
                                          [--weights client|copied] [--layers] [--list]
"""
import argparse
import json
import os
import statistics
import sys
import time

_ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
_ap.add_argument("--threads", type=int, nargs="+", default=[2],
                 help="thread counts for every library, each measured in turn (default 2; e.g. --threads 2 1)")
_ap.add_argument("--runs", type=int, default=3, help="sweeps; each layer's time is the median (default 3)")
_ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
_ap.add_argument("--network", default="", help="networks whose name contains this text")
_ap.add_argument("--layers", action="store_true", help="print the time of every layer")
_ap.add_argument("--weights", choices=("client", "copied"), default="client",
                 help="bnns-py modules reading their weights at every call (default) or copying them at creation "
                      "(copy_weights=True)")
_ap.add_argument("--list", action="store_true", help="print the layers and exit")
_ap.add_argument("--loops", type=int, default=7, help="timed loops per layer and sweep (default 7)")
_ap.add_argument("--min-seconds", type=float, default=0.005, help="length of a timed loop (default 0.005)")
_ap.add_argument("--retries", type=int, default=2,
                 help="re-measurements of a burst other processes contended (default 2)")
_ap.add_argument("--no-torch", action="store_true")
_ap.add_argument("--no-onnx", action="store_true")
_ap.add_argument("--onnx-spinning", choices=("best", "on", "off"), default="best",
                 help="session.intra_op.allow_spinning: on, off, or best (default): both timed, each layer's faster kept")
_ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                               "bench_networks.json"))
_ap.add_argument("--png", default=None, help="chart path (default: next to --out, .png)")
_ap.add_argument("--default-malloc", action="store_true", help="keep glibc's default malloc thresholds")
ARGS = _ap.parse_args()
THREADS = list(dict.fromkeys(ARGS.threads))  # in the given order, each once

# As bench_conv.py and the peer harness: large freed blocks stay in the heap, so that per-call
# allocations (PyTorch's outputs) do not page-fault; glibc reads these at start, hence the re-exec.
if not ARGS.default_malloc and sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(32 * 1024 * 1024)
    os.environ["MALLOC_TRIM_THRESHOLD_"] = str(16 * 1024 ** 3)
    os.execv(sys.executable, [sys.executable] + sys.argv)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # the BLAS of every library
    os.environ[_var] = str(max(THREADS))  # pools sized for the most threads; torch.set_num_threads per count

import numpy as np  # noqa: E402

import bnns_py  # noqa: E402
from bnns_py import ActivationFunction as AF  # noqa: E402

from _timing import Contention, IdleWaits, best_times  # noqa: E402

try:
    import torch  # noqa: E402
    import torch.nn.functional as F  # noqa: E402
except ImportError:  # pragma: no cover
    torch = None
try:
    import onnx  # noqa: E402,F401
    import onnxruntime as ort  # noqa: E402
    from onnx import TensorProto, helper  # noqa: E402
except ImportError:  # pragma: no cover
    ort = None

# A layer: (name, kind, in_channels, out_channels, size (input height = width), kernel, stride,
# groups, activation); kind "conv" (padding kernel // 2) or "fc" (size 1).
RESNET18 = [
    ("conv1", "conv", 3, 64, 224, 7, 2, 1, "relu"),
    ("layer1.0.conv1", "conv", 64, 64, 56, 3, 1, 1, "relu"),
    ("layer1.0.conv2", "conv", 64, 64, 56, 3, 1, 1, "relu"),
    ("layer1.1.conv1", "conv", 64, 64, 56, 3, 1, 1, "relu"),
    ("layer1.1.conv2", "conv", 64, 64, 56, 3, 1, 1, "relu"),
    ("layer2.0.conv1", "conv", 64, 128, 56, 3, 2, 1, "relu"),
    ("layer2.0.conv2", "conv", 128, 128, 28, 3, 1, 1, "relu"),
    ("layer2.0.downsample", "conv", 64, 128, 56, 1, 2, 1, None),
    ("layer2.1.conv1", "conv", 128, 128, 28, 3, 1, 1, "relu"),
    ("layer2.1.conv2", "conv", 128, 128, 28, 3, 1, 1, "relu"),
    ("layer3.0.conv1", "conv", 128, 256, 28, 3, 2, 1, "relu"),
    ("layer3.0.conv2", "conv", 256, 256, 14, 3, 1, 1, "relu"),
    ("layer3.0.downsample", "conv", 128, 256, 28, 1, 2, 1, None),
    ("layer3.1.conv1", "conv", 256, 256, 14, 3, 1, 1, "relu"),
    ("layer3.1.conv2", "conv", 256, 256, 14, 3, 1, 1, "relu"),
    ("layer4.0.conv1", "conv", 256, 512, 14, 3, 2, 1, "relu"),
    ("layer4.0.conv2", "conv", 512, 512, 7, 3, 1, 1, "relu"),
    ("layer4.0.downsample", "conv", 256, 512, 14, 1, 2, 1, None),
    ("layer4.1.conv1", "conv", 512, 512, 7, 3, 1, 1, "relu"),
    ("layer4.1.conv2", "conv", 512, 512, 7, 3, 1, 1, "relu"),
    ("fc", "fc", 512, 1000, 1, 1, 1, 1, None),
]

MOBILENET_V2 = [
    ("features.0", "conv", 3, 32, 224, 3, 2, 1, "relu6"),
    # block 1 (expansion 1): depthwise, projection
    ("features.1.dw", "conv", 32, 32, 112, 3, 1, 32, "relu6"),
    ("features.1.project", "conv", 32, 16, 112, 1, 1, 1, None),
    # blocks 2-3 (expansion 6, 24 channels, first stride 2)
    ("features.2.expand", "conv", 16, 96, 112, 1, 1, 1, "relu6"),
    ("features.2.dw", "conv", 96, 96, 112, 3, 2, 96, "relu6"),
    ("features.2.project", "conv", 96, 24, 56, 1, 1, 1, None),
    ("features.3.expand", "conv", 24, 144, 56, 1, 1, 1, "relu6"),
    ("features.3.dw", "conv", 144, 144, 56, 3, 1, 144, "relu6"),
    ("features.3.project", "conv", 144, 24, 56, 1, 1, 1, None),
    # blocks 4-6 (32 channels, first stride 2)
    ("features.4.expand", "conv", 24, 144, 56, 1, 1, 1, "relu6"),
    ("features.4.dw", "conv", 144, 144, 56, 3, 2, 144, "relu6"),
    ("features.4.project", "conv", 144, 32, 28, 1, 1, 1, None),
    ("features.5.expand", "conv", 32, 192, 28, 1, 1, 1, "relu6"),
    ("features.5.dw", "conv", 192, 192, 28, 3, 1, 192, "relu6"),
    ("features.5.project", "conv", 192, 32, 28, 1, 1, 1, None),
    ("features.6.expand", "conv", 32, 192, 28, 1, 1, 1, "relu6"),
    ("features.6.dw", "conv", 192, 192, 28, 3, 1, 192, "relu6"),
    ("features.6.project", "conv", 192, 32, 28, 1, 1, 1, None),
    # blocks 7-10 (64 channels, first stride 2)
    ("features.7.expand", "conv", 32, 192, 28, 1, 1, 1, "relu6"),
    ("features.7.dw", "conv", 192, 192, 28, 3, 2, 192, "relu6"),
    ("features.7.project", "conv", 192, 64, 14, 1, 1, 1, None),
    ("features.8.expand", "conv", 64, 384, 14, 1, 1, 1, "relu6"),
    ("features.8.dw", "conv", 384, 384, 14, 3, 1, 384, "relu6"),
    ("features.8.project", "conv", 384, 64, 14, 1, 1, 1, None),
    ("features.9.expand", "conv", 64, 384, 14, 1, 1, 1, "relu6"),
    ("features.9.dw", "conv", 384, 384, 14, 3, 1, 384, "relu6"),
    ("features.9.project", "conv", 384, 64, 14, 1, 1, 1, None),
    ("features.10.expand", "conv", 64, 384, 14, 1, 1, 1, "relu6"),
    ("features.10.dw", "conv", 384, 384, 14, 3, 1, 384, "relu6"),
    ("features.10.project", "conv", 384, 64, 14, 1, 1, 1, None),
    # blocks 11-13 (96 channels)
    ("features.11.expand", "conv", 64, 384, 14, 1, 1, 1, "relu6"),
    ("features.11.dw", "conv", 384, 384, 14, 3, 1, 384, "relu6"),
    ("features.11.project", "conv", 384, 96, 14, 1, 1, 1, None),
    ("features.12.expand", "conv", 96, 576, 14, 1, 1, 1, "relu6"),
    ("features.12.dw", "conv", 576, 576, 14, 3, 1, 576, "relu6"),
    ("features.12.project", "conv", 576, 96, 14, 1, 1, 1, None),
    ("features.13.expand", "conv", 96, 576, 14, 1, 1, 1, "relu6"),
    ("features.13.dw", "conv", 576, 576, 14, 3, 1, 576, "relu6"),
    ("features.13.project", "conv", 576, 96, 14, 1, 1, 1, None),
    # blocks 14-16 (160 channels, first stride 2)
    ("features.14.expand", "conv", 96, 576, 14, 1, 1, 1, "relu6"),
    ("features.14.dw", "conv", 576, 576, 14, 3, 2, 576, "relu6"),
    ("features.14.project", "conv", 576, 160, 7, 1, 1, 1, None),
    ("features.15.expand", "conv", 160, 960, 7, 1, 1, 1, "relu6"),
    ("features.15.dw", "conv", 960, 960, 7, 3, 1, 960, "relu6"),
    ("features.15.project", "conv", 960, 160, 7, 1, 1, 1, None),
    ("features.16.expand", "conv", 160, 960, 7, 1, 1, 1, "relu6"),
    ("features.16.dw", "conv", 960, 960, 7, 3, 1, 960, "relu6"),
    ("features.16.project", "conv", 960, 160, 7, 1, 1, 1, None),
    # block 17 (320 channels)
    ("features.17.expand", "conv", 160, 960, 7, 1, 1, 1, "relu6"),
    ("features.17.dw", "conv", 960, 960, 7, 3, 1, 960, "relu6"),
    ("features.17.project", "conv", 960, 320, 7, 1, 1, 1, None),
    ("features.18", "conv", 320, 1280, 7, 1, 1, 1, "relu6"),
    ("classifier", "fc", 1280, 1000, 1, 1, 1, 1, None),
]

NETWORKS = {"resnet18": RESNET18, "mobilenet_v2": MOBILENET_V2}
# before each layer's timing: the process's CPU time advances by < 5 % of a core over 20 ms (at most 2 s)
IDLE = IdleWaits(window=0.02, busy_fraction=0.05, max_wait=2.0)
CONTENTION = Contention(threshold=0.25)
ONNX_SPINNING = {"best": {"spinning": True, "no spinning": False}, "on": {"spinning": True},
                 "off": {"no spinning": False}}[ARGS.onnx_spinning]
BNNS_ACTIVATIONS = {None: None, "relu": AF.rectified_linear, "relu6": AF.relu6}


def out_size(layer):
    _, kind, _, _, size, k, stride, _, _ = layer
    return 1 if kind == "fc" else (size + 2 * (k // 2) - k) // stride + 1


def layer_arrays(layer, batch, rng):
    name, kind, cin, cout, size, k, stride, groups, act = layer
    if kind == "fc":
        x = rng.standard_normal((batch, cin)).astype(np.float32)
        w = (rng.standard_normal((cout, cin)) / np.sqrt(cin)).astype(np.float32)
        out = np.empty((batch, cout), np.float32)
    else:
        x = rng.standard_normal((batch, cin, size, size)).astype(np.float32)
        fan_in = cin // groups * k * k
        w = (rng.standard_normal((cout, cin // groups, k, k)) / np.sqrt(fan_in)).astype(np.float32)
        o = out_size(layer)
        out = np.empty((batch, cout, o, o), np.float32)
    b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    return x, w, b, out


# ---- one callable per layer and library ----------------------------------------------------------

def bnns_layer(layer, x, w, b, out, threads):
    name, kind, cin, cout, size, k, stride, groups, act = layer
    if kind == "fc":
        module = bnns_py.Linear(w, b, activation=BNNS_ACTIVATIONS[act], n_threads=threads or 0,
                                copy_weights=ARGS.weights == "copied")
    else:
        module = bnns_py.Conv2d(w, b, stride=stride, padding=k // 2, groups=groups, activation=BNNS_ACTIVATIONS[act],
                                n_threads=threads or 0, copy_weights=ARGS.weights == "copied")
    return module, lambda: module(x, out=out)


def torch_layer(layer, x, w, b):
    name, kind, cin, cout, size, k, stride, groups, act = layer
    tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
    activate = {None: lambda y: y, "relu": lambda y: F.relu(y, inplace=True),
                "relu6": lambda y: F.relu6(y, inplace=True)}[act]
    if kind == "fc":
        return lambda: activate(F.linear(tx, tw, tb))
    return lambda: activate(F.conv2d(tx, tw, tb, stride=stride, padding=k // 2, groups=groups))


def onnx_layer(layer, x, w, b, out, threads, spinning):
    name, kind, cin, cout, size, k, stride, groups, act = layer
    weights = [helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.ravel().tolist()),
               helper.make_tensor("B", TensorProto.FLOAT, b.shape, b.tolist())]
    result = "Y" if act is None else "Z"
    if kind == "fc":
        nodes = [helper.make_node("Gemm", ["X", "W", "B"], [result], transB=1)]
    else:
        p = k // 2
        nodes = [helper.make_node("Conv", ["X", "W", "B"], [result], kernel_shape=[k, k], strides=[stride, stride],
                                  pads=[p, p, p, p], group=groups)]
    if act == "relu":
        nodes.append(helper.make_node("Relu", ["Z"], ["Y"]))
    elif act == "relu6":
        weights += [helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0]),
                    helper.make_tensor("hi", TensorProto.FLOAT, [], [6.0])]
        nodes.append(helper.make_node("Clip", ["Z", "lo", "hi"], ["Y"]))
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("X", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out.shape)], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    # the bound buffers are the caller's arrays, which outlive the sessions
    binding.bind_input("X", "cpu", 0, np.float32, list(x.shape), x.ctypes.data)
    binding.bind_output("Y", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
    return lambda: session.run_with_iobinding(binding)


# ---- the run -------------------------------------------------------------------------------------

def time_network(layers, batch, threads, args, rng):
    """({library: [seconds per layer]}, {library: seconds of the layers in sequence}): medians over
    the sweeps of the best loops, at ``threads`` threads; ONNX Runtime's times are its fastest
    spinning setting's."""
    arrays = [layer_arrays(layer, batch, rng) for layer in layers]
    modules, calls = [], {"bnns-py": []}
    for layer, (x, w, b, out) in zip(layers, arrays):
        module, call = bnns_layer(layer, x, w, b, out, threads)
        modules.append(module)
        calls["bnns-py"].append(call)
    if torch is not None and not args.no_torch:
        torch.set_num_threads(threads)
        calls["PyTorch"] = [torch_layer(layer, x, w, b) for layer, (x, w, b, _) in zip(layers, arrays)]
    if ort is not None and not args.no_onnx:
        for setting, spinning in ONNX_SPINNING.items():
            calls[f"ONNX Runtime ({setting})"] = [onnx_layer(layer, x, w, b, out, threads, spinning)
                                                  for layer, (x, w, b, out) in zip(layers, arrays)]
    samples = {lib: [[] for _ in layers] for lib in calls}
    in_sequence = {lib: [] for lib in calls}

    def timed(fn):
        IDLE()
        return CONTENTION.best_of(lambda: best_times([fn], min_seconds=args.min_seconds, loops=args.loops)[0],
                                  args.retries)

    try:
        for _ in range(args.runs):
            for lib, fns in calls.items():
                context = torch.no_grad() if lib == "PyTorch" else _nothing()
                with context:
                    for i, fn in enumerate(fns):
                        samples[lib][i].append(timed(fn))
                    in_sequence[lib].append(timed(lambda: [fn() for fn in fns]))
    finally:
        for module in modules:
            module.close()
    times = {lib: [statistics.median(s) for s in per_layer] for lib, per_layer in samples.items()}
    sequence = {lib: statistics.median(s) for lib, s in in_sequence.items()}
    settings = [f"ONNX Runtime ({setting})" for setting in ONNX_SPINNING if f"ONNX Runtime ({setting})" in times]
    if settings:
        times["ONNX Runtime"] = [min(per_setting) for per_setting in zip(*(times.pop(s) for s in settings))]
        sequence["ONNX Runtime"] = min(sequence.pop(s) for s in settings)
    return times, sequence


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def describe(layer):
    name, kind, cin, cout, size, k, stride, groups, act = layer
    if kind == "fc":
        return f"FC {cin}->{cout}"
    dw = " dw" if groups > 1 else ""
    return f"{k}x{k}/{stride}{dw} {cin}->{cout} {size}x{size}" + (f" {act}" if act else "")


def plot(summary, meta, path):
    """Bars of the whole-network ratios: a group per network and batch, a bar per peer and thread count."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib not installed: no chart")
        return None
    groups = list(dict.fromkeys((e["network"], e["batch"]) for e in summary))
    bars = list(dict.fromkeys((peer, e["threads"]) for e in summary for peer in e["ratio"]))
    if not bars:
        return None
    colors = {"PyTorch": ("#08519c", "#6baed6"), "ONNX Runtime": ("#006d2c", "#74c476")}
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(2.2 * len(groups) + 2, 4))
    for i, (peer, threads) in enumerate(bars):
        xs, ys = [], []
        for j, group in enumerate(groups):
            e = next((e for e in summary if (e["network"], e["batch"]) == group and e["threads"] == threads), None)
            if e and peer in e["ratio"]:
                xs.append(j - 0.4 + (i + 0.5) * width)
                ys.append(e["ratio"][peer])
        shade = colors.get(peer, ("#636363", "#bdbdbd"))[THREADS.index(threads) % 2]
        ax.bar(xs, ys, width=width, color=shade, label=f"vs {peer}, {threads} thread{'s' * (threads > 1)}")
        for x, y in zip(xs, ys):
            ax.text(x, y, f"{y:.2f}", ha="center", va="bottom", fontsize=6)
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{name}\nbatch {batch}" for name, batch in groups], fontsize=8)
    ax.set_ylabel("peer time / bnns-py time (>1: bnns-py faster)", fontsize=8)
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_title(f"Whole networks (conv + FC stacks), bnns-py {meta['bnns_py']}\nvs torch {meta['torch']} and "
                 f"onnxruntime {meta['onnxruntime']}; median of {meta['runs']} sweeps", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_layers(name, batch, threads, layers, times):
    peers = [lib for lib in times if lib != "bnns-py"]
    print(f"\n{name}, batch {batch}, {threads} thread{'s' * (threads > 1)} (ms per layer; ratio = peer / bnns-py)")
    print("| layer | shape | bnns-py |" + "".join(f" {p} | ratio |" for p in peers))
    print("|---|---|---|" + "---|---|" * len(peers))
    for i, layer in enumerate(layers):
        cells = "".join(f" {times[p][i] * 1e3:.3f} | {times[p][i] / times['bnns-py'][i]:.2f} |" for p in peers)
        print(f"| {layer[0]} | {describe(layer)} | {times['bnns-py'][i] * 1e3:.3f} |{cells}")


def print_totals(title, summary, peers, times_key, ratio_key, between=False):
    print(f"\n{title}")
    print("| network | batch | threads | bnns-py |" + "".join(f" {p} | ratio |" for p in peers)
          + (" between layers |" if between else ""))
    print("|---|---|---|---|" + "---|---|" * len(peers) + ("---|" if between else ""))
    for e in summary:
        times = e[times_key]
        cells = "".join(f" {times[p] * 1e3:.2f} | {e[ratio_key][p]:.2f} |" for p in peers)
        if between:
            cells += f" {(times['bnns-py'] - e['total_s']['bnns-py']) * 1e3:+.2f} |"
        print(f"| {e['network']} | {e['batch']} | {e['threads']} | {times['bnns-py'] * 1e3:.2f} |{cells}")


def main():
    args = ARGS
    networks = {name: layers for name, layers in NETWORKS.items() if args.network in name}
    if args.list:
        for name, layers in networks.items():
            print(f"{name}: {len(layers)} layers")
            for layer in layers:
                print(f"  {layer[0]:24s} {describe(layer)}")
        return
    if torch is None:
        print("PyTorch not installed: skipped (pip install torch==2.13.0)")
    if ort is None:
        print("ONNX Runtime not installed: skipped (pip install onnxruntime onnx)")
    rng = np.random.default_rng(0)
    info = bnns_py.backend_info()
    print(f"bnns-py {info['backend']} ({info.get('simd')}, {info.get('blas')}), "
          f"{' then '.join(map(str, THREADS))} threads, {args.runs} sweeps, weights {args.weights}"
          + (f", torch {torch.__version__}" if torch is not None else "")
          + (f", onnxruntime {ort.__version__} (spinning: {args.onnx_spinning})" if ort is not None else ""), flush=True)
    summary = []
    for threads in THREADS:
        for name, layers in networks.items():
            for batch in args.batch:
                times, sequence = time_network(layers, batch, threads, args, rng)
                if args.layers:
                    print_layers(name, batch, threads, layers, times)
                total = {lib: sum(t) for lib, t in times.items()}
                summary.append({"network": name, "batch": batch, "threads": threads,
                                "total_s": total, "ratio": {lib: total[lib] / total["bnns-py"] for lib in total
                                                            if lib != "bnns-py"},
                                "sequence_s": sequence,
                                "sequence_ratio": {lib: sequence[lib] / sequence["bnns-py"] for lib in sequence
                                                   if lib != "bnns-py"},
                                "layers_s": {lib: dict(zip((layer[0] for layer in layers), t))
                                             for lib, t in times.items()}})
                print(f"  {name} batch {batch} {threads} thread{'s' * (threads > 1)}: bnns-py "
                      f"{total['bnns-py'] * 1e3:.2f} ms (in sequence {sequence['bnns-py'] * 1e3:.2f})"
                      + "".join(f", {p} {r:.2f}x ({summary[-1]['sequence_ratio'][p]:.2f}x)"
                                for p, r in summary[-1]["ratio"].items()), flush=True)
    peers = list(summary[0]["ratio"]) if summary else []
    print_totals("Whole network, inference (sum of its layers, ms; ratio = peer time / bnns-py time, above 1: "
                 "bnns-py faster)", summary, peers, "total_s", "ratio")
    print_totals("Whole network, inference, the layers in sequence (each once, back to back; ms; the last column: "
                 "bnns-py's time minus the sum of its layers, what lies between them)", summary, peers, "sequence_s",
                 "sequence_ratio", between=True)
    print(IDLE.report())
    print(CONTENTION.report())
    meta = {"bnns_py": bnns_py.__version__, "backend": info, "torch": torch.__version__ if torch is not None else None,
            "onnxruntime": ort.__version__ if ort is not None else None, "onnx_spinning": args.onnx_spinning,
            "weights": args.weights,
            "threads": THREADS, "runs": args.runs, "loops": args.loops, "min_seconds": args.min_seconds,
            "idle_wait": dict(IDLE.options, waits=IDLE.calls, unsettled=IDLE.unsettled, seconds=IDLE.seconds),
            "contention": {"threshold_cores": CONTENTION.threshold, "retries": args.retries,
                           "bursts": CONTENTION.bursts, "contended_bursts": CONTENTION.contended_bursts},
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump({"meta": meta, "summary": summary}, handle, indent=1)
    print(f"wrote {args.out}")
    png = plot(summary, meta, args.png or os.path.splitext(args.out)[0] + ".png")
    if png:
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
