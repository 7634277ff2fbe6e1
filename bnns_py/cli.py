"""Command line: ``python -m bnns_py info | verify`` (also installed as ``bnns-py``)."""
import argparse
import importlib.util
import json
import platform
import sys

import numpy as np

from . import __version__, reference
from .activation import ActivationFunction as AF
from .backend import available_backends, backend_info, get_backend
from .errors import LibraryNotFoundError


def _info(args):
    import cffi
    facts = {"bnns_py": __version__, "python": sys.version.split()[0], "numpy": np.__version__,
             "cffi": cffi.__version__, "os": platform.platform(), "cpu": platform.processor() or platform.machine()}
    try:
        facts.update(backend_info(args.backend))
    except LibraryNotFoundError as error:
        facts["backend_error"] = str(error)
    if "isa" in facts:
        facts["isa"] = f"{facts['isa']} (available: {facts.pop('isa_available')})"
    facts["available_backends"] = available_backends()
    for key, value in facts.items():
        print(f"{key:20s} {value}")
    return 0


def _cases():
    """(name, function, kwargs) forward cases covering the feature set, on small shapes."""
    rng = np.random.default_rng(12345)

    def rand(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    cases = []
    base = dict(x=rand(2, 4, 9, 8), weight=rand(6, 4, 3, 3), bias=rand(6))
    cases.append(("standard", "conv2d", dict(base)))
    cases.append(("strided", "conv2d", dict(base, stride=(2, 3))))
    cases.append(("dilated", "conv2d", dict(base, dilation=2, padding=2)))
    cases.append(("padded_symmetric", "conv2d", dict(base, padding=(1, 2))))
    cases.append(("padded_asymmetric", "conv2d", dict(base, padding=(2, 0, 1, 3))))
    cases.append(("grouped", "conv2d", dict(x=base["x"], weight=rand(6, 2, 3, 3), groups=2)))
    cases.append(("depthwise", "conv2d", dict(x=base["x"], weight=rand(4, 1, 3, 3), bias=rand(4), groups=4, padding=1)))
    cases.append(("transposed", "conv_transpose2d", dict(x=base["x"], weight=rand(4, 3, 2, 3), bias=rand(3), stride=2)))
    cases.append(("transposed_padded", "conv_transpose2d",
                  dict(x=base["x"], weight=rand(4, 3, 3, 3), stride=2, padding=1, output_padding=1)))
    cases.append(("fully_connected", "linear", dict(x=rand(5, 37), weight=rand(19, 37), bias=rand(19),
                                                     activation=AF.rectified_linear)))
    for activation in (AF.rectified_linear, AF.leaky_rectified_linear(0.1), AF.sigmoid, AF.tanh, AF.linear(0.5),
                       AF.clamp((-0.5, 0.5)), AF.elu(1.0), AF.silu, AF.gelu, AF.hard_swish(), AF.softplus(1, 1)):
        cases.append((f"activation_{activation.name}", "conv2d", dict(base, padding=1, activation=activation)))
    return cases


def _forward_rows(backend, other=None):
    import bnns_py
    from .functional import normalize_padding
    rows = []
    for name, function, kwargs in _cases():
        expected = getattr(reference, function)(**{k: (normalize_padding(v) if k == "padding" else v)
                                                   for k, v in kwargs.items()})
        actual = _bnns_call(bnns_py, function, kwargs, backend)
        rows.append(_row(name, actual, expected, "reference"))
        torch_expected = _torch_forward(function, kwargs)
        if torch_expected is not None:
            rows.append(_row(name, actual, torch_expected, "torch"))
        if other is not None:
            rows.append(_row(name, actual, _bnns_call(bnns_py, function, kwargs, other), other))
    rows.append(_legacy_row(backend))
    return rows


def _bnns_call(bnns_py, function, kwargs, backend):
    """A case's bnns_py call: the reference's ``x`` is the functional API's ``input``."""
    arguments = {("input" if k == "x" else k): v for k, v in kwargs.items()}
    return getattr(bnns_py, function)(backend=backend, **arguments)


def _torch_forward(function, kwargs):
    """PyTorch's result for a forward case (float64; the fused activation applied by the
    reference), or None without torch."""
    if not _has_torch():
        return None
    import torch
    import torch.nn.functional as F
    from .functional import normalize_padding
    t = {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in kwargs.items()
         if k in ("x", "weight", "bias") and v is not None}
    if function == "linear":
        y = F.linear(t["x"], t["weight"], t.get("bias"))
    else:
        left, right, top, bottom = normalize_padding(kwargs.get("padding", 0))
        common = dict(stride=kwargs.get("stride", 1), dilation=kwargs.get("dilation", 1), groups=kwargs.get("groups", 1))
        if function == "conv2d":
            y = F.conv2d(F.pad(t["x"], (left, right, top, bottom)), t["weight"], t.get("bias"), **common)
        else:  # conv_transpose2d: symmetric padding in these cases
            y = F.conv_transpose2d(t["x"], t["weight"], t.get("bias"), padding=(top, left),
                                   output_padding=kwargs.get("output_padding", 0), **common)
    activation = kwargs.get("activation")
    y = y.numpy()
    if activation is None:
        return y
    activation = AF.coerce(activation)
    return reference.apply_activation(y, activation.function, activation.alpha, activation.beta)


def _legacy_row(backend):
    """The deprecated image-stack convolution, on row- and image-padded buffers."""
    from .legacy import ImageStackDescriptor, LegacyConvolutionLayer
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 9)).astype(np.float32)  # stored with padded rows and images
    weights = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    storage = np.zeros((2, 3, 7 * 10 + 5), np.float32)
    storage[:, :, :70].reshape(2, 3, 7, 10)[..., :9] = x
    layer = LegacyConvolutionLayer(ImageStackDescriptor(9, 7, 3, row_stride=10, image_stride=75),
                                   ImageStackDescriptor(9, 7, 4), weights, bias, x_padding=1, y_padding=1,
                                   backend=backend)
    with layer:
        out = np.empty((2, 4, 7, 9), np.float32)
        layer.apply(2, storage, out)
    return _row("legacy_convolution", out, reference.conv2d(x, weights, bias, padding=1), "reference")


def _backward_rows(backend):
    from .modules import Conv2d, ConvTranspose2d
    rng = np.random.default_rng(7)
    rows = []
    rows += _linear_backward_rows(backend)
    rows += _accumulate_rows(backend)
    for name, cls, weight_shape, kwargs in (
            ("backward_standard", Conv2d, (6, 4, 3, 3), dict(padding=1, stride=2)),
            ("backward_grouped", Conv2d, (6, 2, 3, 3), dict(groups=2)),
            ("backward_relu", Conv2d, (6, 4, 3, 3), dict(activation="relu", dilation=2)),
            ("backward_transposed", ConvTranspose2d, (4, 3, 3, 3), dict(stride=2, padding=1))):
        x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
        weight = rng.standard_normal(weight_shape).astype(np.float32)
        bias = rng.standard_normal(weight_shape[1] if cls is ConvTranspose2d else weight_shape[0]).astype(np.float32)
        with cls(weight, bias, backend=backend, **kwargs) as module:
            y = module(x)
            dy = rng.standard_normal(y.shape).astype(np.float32)
            grads = module.backward(x, y, dy)
        ref = reference.conv_transpose2d_backward if cls is ConvTranspose2d else reference.conv2d_backward
        from .functional import normalize_padding
        kw = dict(kwargs, padding=normalize_padding(kwargs.get("padding", 0)))
        if "activation" in kw:
            kw["activation"] = AF.coerce(kw["activation"])
        dx, dw, db = ref(x, weight, dy, output=y, bias=True, **kw)
        for part, actual, expected in (("dx", grads.input, dx), ("dw", grads.weight, dw), ("db", grads.bias, db)):
            rows.append(_row(f"{name}_{part}", actual, expected, "reference"))
    return rows


def _accumulate_rows(backend):
    """apply_backward with BNNSNDArrayFlagBackpropAccumulate: gradients add to what is there."""
    from . import (ConvolutionLayer, ConvolutionType, DataType, FilterParameters, Flags, NDArrayDescriptor,
                   NDArrayFlags, Shape)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    weights = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    with ConvolutionLayer(ConvolutionType.standard,
                          NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(7, 6, 3)),
                          NDArrayDescriptor(weights, Shape.convolution_weights_oihw(3, 3, 3, 4)),
                          NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(5, 4, 4)),
                          NDArrayDescriptor(bias, Shape.vector(4)),
                          filter_parameters=FilterParameters(flags=Flags.use_client_pointer), backend=backend) as layer:
        y = np.empty((2, 4, 4, 5), np.float32)
        layer.apply(2, x, y)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        start = [rng.standard_normal(a.shape).astype(np.float32) for a in (x, weights, bias)]
        grads = [NDArrayDescriptor(start[0].copy().reshape(-1), layer.input_descriptor.shape, batch_size=2,
                                   flags=NDArrayFlags.backprop_accumulate),
                 NDArrayDescriptor(start[1].copy().reshape(-1), layer.weights.shape, flags=NDArrayFlags.backprop_accumulate),
                 NDArrayDescriptor(start[2].copy(), layer.bias.shape, flags=NDArrayFlags.backprop_accumulate)]
        layer.apply_backward(2, x, y, dy, *grads)
    expected = reference.conv2d_backward(x, weights, dy, bias=True)
    return [_row(f"backward_accumulate_{part}", g.data.reshape(e.shape), e + s0, "reference")
            for part, g, e, s0 in zip(("dx", "dw", "db"), grads, expected, start)]


def _linear_backward_rows(backend):
    from .modules import Linear
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 37)).astype(np.float32)
    weight, bias = rng.standard_normal((19, 37)).astype(np.float32), rng.standard_normal(19).astype(np.float32)
    with Linear(weight, bias, activation="sigmoid", backend=backend) as module:
        y = module(x)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        grads = module.backward(x, y, dy)
    dx, dw, db = reference.linear_backward(x, weight, dy, output=y, bias=True, activation=AF.sigmoid)
    return [_row(f"backward_fully_connected_{part}", actual, expected, "reference")
            for part, actual, expected in (("dx", grads.input, dx), ("dw", grads.weight, dw), ("db", grads.bias, db))]


def _row(name, actual, expected, against):
    expected = np.asarray(expected, np.float64)
    error = np.abs(np.asarray(actual, np.float64) - expected)
    scale = max(1.0, float(np.abs(expected).max(initial=0)))
    tolerance = 1e-4 * scale
    max_abs = float(error.max(initial=0))
    max_rel = float((error / np.maximum(np.abs(expected), 1e-6)).max(initial=0))
    return {"case": name, "against": against, "max_abs_error": max_abs, "max_rel_error": max_rel,
            "tolerance": tolerance, "pass": bool(actual is not None and max_abs <= tolerance)}


def _verify(args):
    from .probes import run_probes
    backend = get_backend(args.backend)
    other = args.against
    if other is not None and other == backend.name:
        print("--against names the backend under test", file=sys.stderr)
        return 2
    print(f"verifying the {backend.name} backend ({backend.library_path})", flush=True)
    rows = []
    for label, step in (("forward", lambda: _forward_rows(backend.name, other)),
                        ("backward", lambda: _backward_rows(backend.name))):
        print(f"  {label} cases ...", flush=True)
        rows += step()
    print(f"  {'case':34s} {'against':10s} {'max abs':>10s} {'max rel':>10s} {'tolerance':>10s}  result")
    for row in rows:
        print(f"  {row['case']:34s} {row['against']:10s} {row['max_abs_error']:10.2e} {row['max_rel_error']:10.2e} "
              f"{row['tolerance']:10.2e}  {'pass' if row['pass'] else 'FAIL'}")
    if backend.is_portable:
        print("  data types: the portable backend computes float32 only (float16/int8 are refused before any "
              "C call); on Accelerate this run covers float32", flush=True)
    print("  conformance probes (the README's macOS-conformance table):", flush=True)
    probes = run_probes(backend)
    for probe in probes:
        print(f"  {probe.name:34s} {'as decided' if probe.agrees else 'DIFFERS':11s} {probe.observed}")
    failed = [r["case"] for r in rows if not r["pass"]]
    differs = [p.name for p in probes if not p.agrees]
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"backend": backend_info(backend.name), "cases": rows,
                       "probes": [vars(p) for p in probes]}, handle, indent=1)
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed; {len(probes) - len(differs)} probes as "
          f"decided, {len(differs)} differ")
    if backend.is_portable and differs:
        return 1  # the portable backend must follow its own documented decisions
    return 1 if failed else 0


def _bench(args):
    from . import bench
    cases = bench.full_cases() if args.all else bench.quick_cases()
    timing = dict(samples=5, target=0.03) if not args.all else {}
    backend = get_backend(args.backend)
    print(f"forward throughput on the {backend.name} backend (median of timed loops; GFLOP/s)")
    print(f"  {'case':30s} {'N':>2s} {'bnns-py':>9s} {'torch':>9s} {'ratio':>6s}")
    for c in cases:
        gflop = bench.flops(c) / 1e9
        ours = bench.bench_bnns_forward(c, backend.name, **timing)
        theirs = bench.bench_torch_forward(c, **timing)
        line = f"  {c['name']:30s} {c['N']:2d} {gflop / ours:9.1f}"
        line += f" {gflop / theirs:9.1f} {theirs / ours:6.2f}" if theirs else f" {'-':>9s} {'-':>6s}"
        print(line, flush=True)
    if not _has_torch():
        print("  (install torch to compare with PyTorch)")
    return 0


def _has_torch():
    return importlib.util.find_spec("torch") is not None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bnns-py", description="bnns-py: BNNS convolution from numpy")
    parser.add_argument("--backend", choices=("accelerate", "portable"), default=None)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, backend, library file, platform")
    verify = commands.add_parser("verify", help="check the backend against the reference and run the Mac probes")
    verify.add_argument("--against", choices=("accelerate", "portable"), default=None,
                        help="also compare with this backend in the same process")
    verify.add_argument("--json", metavar="FILE", help="write the results as JSON")
    bench = commands.add_parser("bench", help="quick forward throughput table, against PyTorch when installed")
    bench.add_argument("--all", action="store_true", help="every case of benchmarks/bench_conv.py (slower)")
    args = parser.parse_args(argv)
    return {"info": _info, "verify": _verify, "bench": _bench}[args.command](args)
