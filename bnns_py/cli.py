"""Command line: ``python -m bnns_py info | verify | bench`` (also installed as ``bnns-py``).

A user error (an unknown backend, a backend that does not load, an unwritable file) is one line
on stderr and exit status 2, never a traceback.
"""
import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
from types import ModuleType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import numpy as np

from . import __version__, reference
from ._arrays import Array
from .activation import ActivationFunction as AF
from .backend import Backend, backend_info, default_backend_name, get_backend, layer_api_notice
from .errors import BNNSError, LibraryNotFoundError
from .modules import Conv2d, ConvTranspose2d, Linear

BACKEND_NAMES = ("accelerate", "portable")
Row = Dict[str, Any]  # one compared case of verify: case, against, errors, tolerance, pass, error
Case = Tuple[str, str, Dict[str, Any]]  # (name, bnns_py function, its keyword arguments)


class UsageError(Exception):
    """A mistake in how the command was called or set up: reported in one line, exit status 2."""


def _one_line(error: BaseException) -> str:
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip())


def _load_backend(name: Optional[str]) -> Backend:
    """The backend ``name`` (None: the default), or ``UsageError`` saying why it cannot be used."""
    try:
        return get_backend(default_backend_name() if name is None else name)
    except LibraryNotFoundError as error:
        raise UsageError(_library_error_line(error)) from None
    except ValueError as error:
        raise UsageError(_one_line(error)) from None


def _gist(why: str) -> str:
    """The useful end of a loader's message: a missing symbol's name, or the system's reason."""
    symbol = re.search(r"function/symbol '(\w+)' not found", why)
    if symbol:
        return f"does not export the symbol {symbol.group(1)}"
    return why.split("  Additionally")[0].rsplit(": ", 1)[-1].rstrip(".")


def _library_error_line(error: LibraryNotFoundError) -> str:
    """``LibraryNotFoundError`` in one line: each path tried with the gist of why it failed."""
    tried = "; ".join(f"{path} ({_gist(why)})" for path, why in error.attempts)
    system = all(path.startswith("/System/") for path, _ in error.attempts)  # not a BNNS_PY_LIBRARY file
    if system and sys.platform != "darwin":
        hint = "Accelerate exists only on macOS"
    elif system and any("symbol" in why for _, why in error.attempts):
        hint = ("this macOS does not export the BNNS layer API (deprecated since macOS 15): use the portable "
                "backend, BNNS_PY_BACKEND=portable")
    else:
        hint = "set BNNS_PY_LIBRARY=/path/to/library or BNNS_PY_BACKEND, or reinstall bnns-py"
    return f"could not load the {error.backend!r} BNNS backend: {hint}; tried {tried}"


def chip_name() -> str:
    """The processor's marketing name, best effort.

    Read from ``sysctl machdep.cpu.brand_string`` on macOS, else from ``/proc/cpuinfo``, else
    from the ``platform`` module. ``info`` prints it and ``verify --report`` records it.

    Returns
    -------
    str
        E.g. ``"Apple M2"`` or ``"AMD EPYC 9R14"``; the machine type (``"x86_64"``) when nothing
        better is known.

    Examples
    --------
    >>> from bnns_py.cli import chip_name
    >>> name = chip_name()
    >>> isinstance(name, str) and name != ""
    True
    """
    if sys.platform == "darwin":
        try:
            done = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=10)
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _symbol_lines(backend: Backend) -> Tuple[List[str], List[str]]:
    status = backend.symbol_status()
    missing = [name for name, found in status.items() if not found]
    lines = [f"{name:44s} {'resolves' if found else 'MISSING'}" for name, found in status.items()]
    if missing:
        lines.append(f"{len(missing)} BNNS function(s) missing from {backend.library_path}: the calls that need "
                     "them fail with AttributeError; use the portable backend (BNNS_PY_BACKEND=portable)")
    return lines, missing


def _info(args: argparse.Namespace) -> int:
    import cffi
    facts: Dict[str, Any] = {"bnns_py": __version__, "python": sys.version.split()[0], "numpy": np.__version__,
             "cffi": cffi.__version__, "os": platform.platform(), "cpu": chip_name()}
    try:
        backend = _load_backend(args.backend)
    except UsageError as error:
        for key, value in facts.items():
            print(f"{key:20s} {value}")
        print(f"bnns-py: error: {error}", file=sys.stderr)
        return 1
    facts.update(backend_info(backend.name))
    if "isa" in facts:
        facts["isa"] = f"{facts['isa']} (available: {facts.pop('isa_available')})"
    notice = layer_api_notice(facts.get("macos_version"))
    if notice:
        facts["layer_api"] = notice
    for key, value in facts.items():
        print(f"{key:20s} {value}")
    lines, missing = _symbol_lines(backend)
    print("symbols")
    for line in lines:
        print(f"  {line}")
    return 1 if missing else 0


# ---- verify: cases ------------------------------------------------------------------------------

def _cases() -> List[Case]:
    """(name, function, kwargs) forward cases covering the feature set, on small shapes."""
    rng = np.random.default_rng(12345)

    def rand(*shape: int) -> Array:
        return rng.standard_normal(shape).astype(np.float32)

    cases: List[Case] = []
    base: Dict[str, Any] = dict(x=rand(2, 4, 9, 8), weight=rand(6, 4, 3, 3), bias=rand(6))
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


def _guarded(name: str, step: Callable[[], List[Row]]) -> List[Row]:
    """``step()``'s rows, or one failed row carrying the exception when it raises."""
    try:
        return step()
    except Exception as error:  # noqa: BLE001 - a case that raises is a failed case
        return [{"case": name, "against": "-", "max_abs_error": None, "max_rel_error": None, "tolerance": None,
                 "pass": False, "error": f"{type(error).__name__}: {_one_line(error)}"}]


def _forward_rows(backend: str, other: Optional[str] = None) -> List[Row]:
    rows: List[Row] = []
    for name, function, kwargs in _cases():
        rows += _guarded(name, lambda: _forward_case(name, function, kwargs, backend, other))
    rows += _guarded("legacy_convolution", lambda: [_legacy_row(backend)])
    return rows


def _forward_case(name: str, function: str, kwargs: Dict[str, Any], backend: str, other: Optional[str]) -> List[Row]:
    import bnns_py
    from .functional import normalize_padding
    expected = getattr(reference, function)(**{k: (normalize_padding(v) if k == "padding" else v)
                                               for k, v in kwargs.items()})
    actual = _bnns_call(bnns_py, function, kwargs, backend)
    rows = [_row(name, actual, expected, "reference")]
    torch_expected = _torch_forward(function, kwargs)
    if torch_expected is not None:
        rows.append(_row(name, actual, torch_expected, "torch"))
    if other is not None:
        rows.append(_row(name, actual, _bnns_call(bnns_py, function, kwargs, other), other))
    return rows


def _bnns_call(bnns_py: ModuleType, function: str, kwargs: Dict[str, Any], backend: str) -> Array:
    """A case's bnns_py call: the reference's ``x`` is the functional API's ``input``."""
    arguments = {("input" if k == "x" else k): v for k, v in kwargs.items()}
    result: Array = getattr(bnns_py, function)(backend=backend, **arguments)
    return result


def _torch_forward(function: str, kwargs: Dict[str, Any]) -> Optional[Array]:
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
    values: Array = y.numpy()
    if kwargs.get("activation") is None:
        return values
    activation = AF.coerce(kwargs["activation"])
    return reference.apply_activation(values, activation.function, activation.alpha, activation.beta)


def _legacy_row(backend: str) -> Row:
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


# Data types other than float32: (case, input, weights, output, bias), as the portable backend and
# BNNS's documentation allow for a standard convolution's forward pass.
DTYPE_CASES = (("float16", "float16", "float16", "float16", "float16"),
               ("bfloat16", "bfloat16", "bfloat16", "bfloat16", "bfloat16"),
               ("int8_input_and_weights", "int8", "int8", "float32", "float32"))
# Half an ulp of each output type, relative: the rounding of a float32 sum to it.
_HALF_ULP = {"float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}


def _typed(values: Array, data_type: str, scale: float) -> Tuple[Array, Array]:
    """(array holding ``values`` in ``data_type``, the float64 values BNNS reads from it)."""
    from .enums import bfloat16_bits_to_float32, float32_to_bfloat16_bits
    if data_type == "bfloat16":
        bits = float32_to_bfloat16_bits(values.astype(np.float32))
        return bits, bfloat16_bits_to_float32(bits).astype(np.float64)
    if data_type == "int8":
        array = np.clip(np.rint(values / scale), -128, 127).astype(np.int8)
        return array, scale * array.astype(np.float64)
    array = values.astype(np.dtype(data_type))
    return array, array.astype(np.float64)


def _dtype_rows(backend: str) -> List[Row]:
    """Forward convolution cases in float16, bfloat16 and int8 (``DTYPE_CASES``). A layer the
    backend refuses to create (or bnns-py refuses on this backend) is reported as unsupported,
    not failed."""
    rows: List[Row] = []
    for name, in_type, w_type, out_type, bias_type in DTYPE_CASES:
        rows += _guarded(f"dtype_{name}", lambda: [_dtype_row(backend, name, in_type, w_type, out_type, bias_type)])
    return rows


def _dtype_row(backend: str, name: str, in_type: str, w_type: str, out_type: str, bias_type: str) -> Row:
    from . import ConvolutionLayer, ConvolutionPadding, ConvolutionType, DataType, NDArrayDescriptor, Shape
    from .enums import bfloat16_bits_to_float32
    rng = np.random.default_rng(17)
    n, c, h, w, o = 2, 8, 7, 6, 5
    x_scale, w_scale = 0.05, 0.01
    x, x64 = _typed(rng.standard_normal((n, c, h, w)) * 2, in_type, x_scale)
    weights, w64 = _typed(rng.standard_normal((o, c, 3, 3)) * 0.5, w_type, w_scale)
    bias, b64 = _typed(rng.standard_normal(o), bias_type, 1.0)
    scaled = ("int8",)  # integer data is read as data_scale * value
    try:
        layer = ConvolutionLayer(
            ConvolutionType.standard,
            NDArrayDescriptor(data_type=DataType[in_type], shape=Shape.image_chw(w, h, c),
                              data_scale=x_scale if in_type in scaled else 1.0),
            NDArrayDescriptor(weights.reshape(-1), Shape.convolution_weights_oihw(3, 3, c, o), DataType[w_type],
                              data_scale=w_scale if w_type in scaled else 1.0),
            NDArrayDescriptor(data_type=DataType[out_type], shape=Shape.image_chw(w, h, o)),
            NDArrayDescriptor(bias, Shape.vector(o), DataType[bias_type]),
            ConvolutionPadding.symmetric(1, 1), backend=backend)
    except (BNNSError, TypeError) as error:  # BNNS refused it, or bnns-py refuses the type on this backend
        if isinstance(error, BNNSError) and error.kind != "unable_to_create_layer":
            raise
        return {"case": f"dtype_{name}", "against": "reference", "max_abs_error": None, "max_rel_error": None,
                "tolerance": None, "pass": None, "error": f"unsupported: {_one_line(error)}"}
    with layer:
        out = np.full((n, o, h, w), 0xFFFF if out_type == "bfloat16" else np.nan,
                      np.uint16 if out_type == "bfloat16" else np.dtype(out_type))
        layer.apply(n, x, out)
    actual = bfloat16_bits_to_float32(out) if out_type == "bfloat16" else out
    expected = reference.conv2d(x64, w64, b64, padding=1)
    scale = max(1.0, float(np.abs(expected).max()))
    return _row(f"dtype_{name}", actual, expected, "reference", tolerance=(_HALF_ULP[out_type] + 1e-4) * scale)


def _backward_rows(backend: str) -> List[Row]:
    rows = _guarded("backward_fully_connected", lambda: _linear_backward_rows(backend))
    rows += _guarded("backward_accumulate", lambda: _accumulate_rows(backend))
    for name, cls, weight_shape, kwargs in (
            ("backward_standard", Conv2d, (6, 4, 3, 3), dict(padding=1, stride=2)),
            ("backward_grouped", Conv2d, (6, 2, 3, 3), dict(groups=2)),
            ("backward_relu", Conv2d, (6, 4, 3, 3), dict(activation="relu", dilation=2)),
            ("backward_transposed", ConvTranspose2d, (4, 3, 3, 3), dict(stride=2, padding=1))):
        rows += _guarded(name, lambda: _module_backward_rows(backend, name, cls, weight_shape, kwargs))
    return rows


def _module_backward_rows(backend: str, name: str, cls: Union[Type[Conv2d], Type[ConvTranspose2d]],
                          weight_shape: Tuple[int, int, int, int], kwargs: Dict[str, Any]) -> List[Row]:
    from .functional import normalize_padding
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    weight = rng.standard_normal(weight_shape).astype(np.float32)
    bias = rng.standard_normal(weight_shape[1] if cls is ConvTranspose2d else weight_shape[0]).astype(np.float32)
    with cls(weight, bias, backend=backend, **kwargs) as module:
        y = module(x)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        grads = module.backward(x, y, dy)
    ref = reference.conv_transpose2d_backward if cls is ConvTranspose2d else reference.conv2d_backward
    kw = dict(kwargs, padding=normalize_padding(kwargs.get("padding", 0)))
    if "activation" in kw:
        kw["activation"] = AF.coerce(kw["activation"])
    dx, dw, db = ref(x, weight, dy, output=y, bias=True, **kw)
    return [_row(f"{name}_{part}", actual, expected, "reference")
            for part, actual, expected in (("dx", grads.input, dx), ("dw", grads.weight, dw), ("db", grads.bias, db))]


def _accumulate_rows(backend: str) -> List[Row]:
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
        accumulated = [a.copy() for a in start]  # BNNS adds the gradients to these, in place
        grads = [NDArrayDescriptor(accumulated[0].reshape(-1), layer.input_descriptor.shape, batch_size=2,
                                   flags=NDArrayFlags.backprop_accumulate),
                 NDArrayDescriptor(accumulated[1].reshape(-1), layer.weights.shape,
                                   flags=NDArrayFlags.backprop_accumulate),
                 NDArrayDescriptor(accumulated[2], Shape.vector(4), flags=NDArrayFlags.backprop_accumulate)]
        layer.apply_backward(2, x, y, dy, *grads)
    expected = [e for e in reference.conv2d_backward(x, weights, dy, bias=True) if e is not None]  # all three
    return [_row(f"backward_accumulate_{part}", a, e + s0, "reference")
            for part, a, e, s0 in zip(("dx", "dw", "db"), accumulated, expected, start)]


def _linear_backward_rows(backend: str) -> List[Row]:
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


def _row(name: str, actual: Any, expected: Any, against: str, tolerance: Optional[float] = None) -> Row:
    """One compared case: errors, tolerance (``1e-4 * max(1, max|expected|)`` unless given) and
    the worst element."""
    from .compare import compare
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.abs(expected).max(initial=0)))
    tolerance = 1e-4 * scale if tolerance is None else float(tolerance)
    comparison = compare(np.asarray(actual, np.float64), expected, rtol=0.0, atol=tolerance)
    row = {"case": name, "against": against, "max_abs_error": comparison.max_abs_error,
           "max_rel_error": comparison.max_rel_error, "tolerance": tolerance, "pass": comparison.ok}
    if not comparison.ok:
        row["error"] = (f"{comparison.mismatches} of {comparison.size} values outside the tolerance; worst "
                        f"{comparison.worst_text()}" if comparison.shape_ok else
                        f"shape {comparison.actual_shape}, expected {comparison.expected_shape}")
    return row


# ---- verify: running and reporting ----------------------------------------------------------------

def _status(row: Row) -> str:
    return {True: "pass", False: "FAIL", None: "unsupported"}[row["pass"]]


def _number(value: Optional[float]) -> str:
    return f"{value:10.2e}" if value is not None else f"{'-':>10s}"


def _verify(args: argparse.Namespace) -> int:
    from .probes import run_probes
    backend = _load_backend(args.backend)
    other = args.against
    if other is not None:
        if other == backend.name:
            raise UsageError("--against names the backend under test")
        other = _load_backend(other).name
    out = sys.stderr if args.json == "-" else sys.stdout  # stdout carries only the JSON then

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say(f"verifying the {backend.name} backend ({backend.library_path})")
    notice = layer_api_notice(platform.mac_ver()[0])
    if notice:
        say(f"  {notice}")
    _, missing = _symbol_lines(backend)
    if not missing:
        say(f"  symbols: all {len(backend.symbol_status())} BNNS functions bnns-py calls resolve")
    for name in missing:
        say(f"  symbol {name} MISSING: the cases that need it fail below")
    rows: List[Row] = []
    steps: Tuple[Tuple[str, Callable[[], List[Row]]], ...] = (
        ("forward", lambda: _forward_rows(backend.name, other)),
        ("data types", lambda: _dtype_rows(backend.name)),
        ("backward", lambda: _backward_rows(backend.name)))
    for label, step in steps:
        say(f"  {label} cases ...")
        rows += step()
    say(f"  {'case':34s} {'against':10s} {'max abs':>10s} {'max rel':>10s} {'tolerance':>10s}  result")
    for row in rows:
        say(f"  {row['case']:34s} {row['against']:10s} {_number(row['max_abs_error'])} "
            f"{_number(row['max_rel_error'])} {_number(row['tolerance'])}  {_status(row)}")
        if row.get("error"):
            say(f"      {row['error']}")
    say("  conformance probes (docs/conformance.md):")
    probes = run_probes(backend)
    for probe in probes:
        say(f"  {probe.name:44s} {'as decided' if probe.agrees else 'DIFFERS':11s} {probe.observed}")
    failed = [r for r in rows if r["pass"] is False]
    unsupported = [r for r in rows if r["pass"] is None]
    differs = [p for p in probes if not p.agrees]
    summary = (f"{len(rows) - len(failed) - len(unsupported)} passed, {len(failed)} failed, "
               f"{len(unsupported)} unsupported; {len(probes) - len(differs)} probes as decided, {len(differs)} differ")
    result = {"backend": backend_info(backend.name), "system": _system_facts(backend),
              "symbols": backend.symbol_status(), "cases": rows, "probes": [vars(p) for p in probes],
              "summary": summary}
    if args.json == "-":
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif args.json:
        _write(args.json, json.dumps(result, indent=1))
    if args.report:
        _write(args.report, report_markdown(result))
        say(f"  report written to {args.report}")
    say(summary)
    if backend.is_portable and differs:
        return 1  # the portable backend must follow its own documented decisions
    return 1 if failed or missing else 0


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as handle:
            handle.write(text)
    except OSError as error:
        raise UsageError(f"cannot write {path}: {error.strerror or error}") from None


def _system_facts(backend: Backend) -> Dict[str, Any]:
    import cffi
    return {"macos_version": platform.mac_ver()[0] or None, "os": platform.platform(), "chip": chip_name(),
            "machine": platform.machine(), "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
            "numpy": np.__version__, "cffi": cffi.__version__, "bnns_py": __version__,
            "backend": backend.name, "library": backend.library_path}


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def report_markdown(result: Mapping[str, Any]) -> str:
    """The Markdown report of a ``verify`` run, as ``verify --report FILE.md`` writes it.

    Parameters
    ----------
    result : mapping
        A ``verify`` run as ``verify --json`` writes it: ``system`` (the facts of
        ``_system_facts``), ``summary``, ``symbols`` (name -> resolves), ``probes`` (each a
        ``ProbeResult`` as a dict) and ``cases`` (rows with ``case``, ``against``,
        ``max_abs_error``, ``max_rel_error``, ``tolerance``, ``pass`` and, when not passed,
        ``error``).

    Returns
    -------
    str
        The report: the system, missing symbols, the conformance probes, the failed cases and a
        table of every case.

    Raises
    ------
    KeyError
        ``result`` lacks one of the keys above.

    Examples
    --------
    >>> from bnns_py.cli import report_markdown
    >>> system = {"macos_version": None, "chip": "AMD EPYC", "machine": "x86_64", "os": "Linux",
    ...           "python": "CPython 3.11.7", "bnns_py": "0.1.0", "numpy": "2.1.0", "cffi": "1.17.1",
    ...           "backend": "portable", "library": "/site-packages/_bnns_portable.so"}
    >>> case = {"case": "standard", "against": "reference", "max_abs_error": 1e-6,
    ...         "max_rel_error": 2e-7, "tolerance": 1e-4, "pass": True}
    >>> text = report_markdown({"system": system, "summary": "1 passed, 0 failed", "probes": [],
    ...                         "symbols": {"BNNSFilterApplyBatch": True}, "cases": [case]})
    >>> print(text.splitlines()[0])
    # bnns-py verify report
    >>> print(text.splitlines()[-1])
    | `standard` | reference | 1.00e-06 | 2.00e-07 | 1.00e-04 | pass |
    """
    system = result["system"]
    lines = ["# bnns-py verify report", "",
             "Made by `python -m bnns_py verify --report`. To report it, open an issue titled "
             "\"verify report: <macOS version>, <chip>\" and paste this file.", "",
             "| | |", "| --- | --- |"]
    lines += [f"| macOS | {_cell(system['macos_version'] or 'not macOS')} |",
              f"| chip | {_cell(system['chip'])} ({_cell(system['machine'])}) |",
              f"| OS | {_cell(system['os'])} |",
              f"| Python | {_cell(system['python'])} |",
              f"| bnns-py, numpy, cffi | {system['bnns_py']}, {system['numpy']}, {system['cffi']} |",
              f"| backend | {system['backend']} |",
              f"| backend file | `{_cell(system['library'])}` |",
              f"| result | {_cell(result['summary'])} |"]
    notice = layer_api_notice(system["macos_version"])
    if notice:
        lines += ["", f"**Layer API:** {notice}"]
    missing = [name for name, found in result["symbols"].items() if not found]
    lines += ["", "## Symbols", "",
              ("Every BNNS function bnns-py uses resolves." if not missing else
               "Missing: " + ", ".join(f"`{name}`" for name in missing) + ".")]
    lines += ["", "## Conformance probes", "",
              "What the backend did for each question of docs/conformance.md; \"as decided\" means it "
              "behaved as the portable backend does.", "",
              "| probe | question | observed | as decided |", "| --- | --- | --- | --- |"]
    lines += [f"| `{p['name']}` | {_cell(p['question'])} | {_cell(p['observed'])} | "
              f"{'yes' if p['agrees'] else '**no**'} |" for p in result["probes"]]
    failed = [row for row in result["cases"] if row["pass"] is False]
    lines += ["", f"## Failed cases ({len(failed)})", ""]
    if not failed:
        lines.append("None.")
    for row in failed:
        errors = (f"max abs error {row['max_abs_error']:.3g}, max rel error {row['max_rel_error']:.3g}, "
                  f"tolerance {row['tolerance']:.3g}; " if row["max_abs_error"] is not None else "")
        lines.append(f"- `{row['case']}` against {row['against']}: {errors}{_cell(row.get('error', ''))}")
    lines += ["", "## All cases", "", "| case | against | max abs error | max rel error | tolerance | result |",
              "| --- | --- | --- | --- | --- | --- |"]
    for row in result["cases"]:
        numbers = " | ".join(f"{row[k]:.2e}" if row[k] is not None else "-"
                             for k in ("max_abs_error", "max_rel_error", "tolerance"))
        note = f" ({_cell(row['error'])})" if row["pass"] is None else ""
        lines.append(f"| `{row['case']}` | {row['against']} | {numbers} | {_status(row)}{note} |")
    return "\n".join(lines) + "\n"


def _bench(args: argparse.Namespace) -> int:
    from . import bench
    cases = bench.full_cases() if args.all else bench.quick_cases()
    timing: Dict[str, Any] = dict(samples=5, target=0.03) if not args.all else {}
    backend = _load_backend(args.backend)
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


def _has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnns-py", description="bnns-py: BNNS convolution from numpy")
    parser.add_argument("--version", action="version", version=f"bnns-py {__version__}")
    parser.add_argument("--backend", choices=BACKEND_NAMES, default=None,
                        help="backend to use (default: BNNS_PY_BACKEND, else accelerate on macOS, portable elsewhere)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, backend, library file, platform, which BNNS symbols resolve")
    verify = commands.add_parser("verify", help="check the backend against the reference and run the Mac probes")
    verify.add_argument("--against", choices=BACKEND_NAMES, default=None,
                        help="also compare with this backend in the same process")
    verify.add_argument("--json", metavar="FILE", help="write the results as JSON ('-': to stdout)")
    verify.add_argument("--report", metavar="FILE.md",
                        help="write a Markdown report to send to the maintainers (system, probes, failures)")
    bench = commands.add_parser("bench", help="quick forward throughput table, against PyTorch when installed")
    bench.add_argument("--all", action="store_true", help="every case of benchmarks/bench_conv.py (slower)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line: ``bnns-py`` and ``python -m bnns_py``.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name (default: ``sys.argv[1:]``): ``[--backend NAME]
        info | verify [--against NAME] [--json FILE] [--report FILE.md] | bench [--all]``.

    Returns
    -------
    int
        The exit status: 0 when everything passed; 1 when ``info`` finds missing symbols or
        ``verify`` failed cases (or, on the portable backend, probes that differ from the
        documented decisions); 2 for a user error (reported in one line on stderr); 141 when the
        reader of stdout went away.

    Raises
    ------
    SystemExit
        From argparse: ``--help``, ``--version``, or arguments it cannot parse (status 2).

    Examples
    --------
    >>> from bnns_py.cli import main
    >>> status = main(["info"])  # doctest: +ELLIPSIS
    bnns_py              ...
    python               ...
    ...
    symbols
      BNNSFilterCreateLayerConvolution             resolves
    ...
    >>> status
    0
    """
    args = _parser().parse_args(argv)
    commands: Dict[str, Callable[[argparse.Namespace], int]] = {"info": _info, "verify": _verify, "bench": _bench}
    try:
        return commands[args.command](args)
    except UsageError as error:
        print(f"bnns-py: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`bnns-py verify | head`): stop quietly. stdout is pointed at
        # /dev/null so that the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a process killed by it
