"""Probes that settle the rows of the conformance table (docs/conformance.md).

Each probe builds a filter through the raw C API (``bnns_py.ffi``) with one specific
configuration, runs it, and compares the result with each candidate interpretation computed by
``bnns_py.reference``. On a Mac this reports what native BNNS does; on the portable backend it
confirms the implementation follows the decision recorded in the table. A probe that raises
(a missing symbol, say) is reported as such and the others still run.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import reference
from ._arrays import Array
from ._ffi import ffi
from .backend import Backend, get_backend

FLOAT32, IMAGE_CHW, OIHW, VECTOR = 0x10020, 0x30000, 0x40000, 0x10000


@dataclass
class ProbeResult:
    name: str
    question: str
    decision: str               # what the portable backend does (the README's decision)
    created: bool = False
    observed: str = ""          # which interpretation matched, or why not
    agrees: bool = False        # does the backend behave as decided?
    details: Dict[str, float] = field(default_factory=dict)


# What a probe's filter run gives: the output, None when the filter was not created, or why apply failed.
RunResult = Union[Array, str, None]
Size3 = Tuple[int, int, int]


def _params(in_whc: Size3, out_whc: Size3, weights: Array, bias: Optional[Array] = None, **fields: Any) -> Any:
    """A ``BNNSLayerParametersConvolution *`` for float32 CHW images and OIHW weights (``fields``:
    other members to set)."""
    params = ffi.new("BNNSLayerParametersConvolution *")
    for desc, (w, h, c) in ((params.i_desc, in_whc), (params.o_desc, out_whc)):
        desc.layout, desc.data_type = IMAGE_CHW, FLOAT32
        desc.size[0:3] = [w, h, c]
    o, i, kh, kw = weights.shape
    params.w_desc.layout, params.w_desc.data_type = OIHW, FLOAT32
    params.w_desc.size[0:4] = [kw, kh, i, o]
    params.w_desc.data = ffi.from_buffer(weights)
    if bias is not None:
        params.bias.layout, params.bias.data_type = VECTOR, FLOAT32
        params.bias.size[0] = bias.size
        params.bias.data = ffi.from_buffer(bias)
    for name, value in fields.items():
        setattr(params, name, value)
    return params


def _run(backend: Backend, params: Any, x: Array, out_shape: Tuple[int, ...], transposed: bool = False,
         flags: int = 0, batch_strides: Optional[Tuple[int, int]] = None) -> RunResult:
    lib = backend.lib
    filter_params = ffi.new("BNNSFilterParameters *", {"flags": flags})
    create = lib.BNNSFilterCreateLayerTransposedConvolution if transposed else lib.BNNSFilterCreateLayerConvolution
    handle = create(params, filter_params)
    if handle == ffi.NULL:
        return None
    try:
        out = np.full(out_shape, np.nan, np.float32)
        in_stride, out_stride = batch_strides or (x[0].size, out[0].size)
        status = lib.BNNSFilterApplyBatch(handle, x.shape[0], ffi.from_buffer(x), in_stride,
                                          ffi.from_buffer(out), out_stride)
        return out if status == 0 else "apply returned -1"
    finally:
        lib.BNNSFilterDestroy(handle)


def _match(result: RunResult, candidates: Mapping[str, Optional[Array]]) -> str:
    """Name of the first candidate the result equals (to float32 tolerance), else a summary."""
    if result is None:
        return "create returned NULL"
    if isinstance(result, str):
        return result
    for name, expected in candidates.items():
        if expected is not None and expected.shape == result.shape and np.allclose(result, expected, rtol=1e-4, atol=1e-4):
            return name
    return "matches none of: " + ", ".join(candidates)


def _probe(name: str, question: str, decision: str, result: RunResult, candidates: Mapping[str, Optional[Array]],
           expected_name: str) -> ProbeResult:
    observed = _match(result, candidates)
    return ProbeResult(name, question, decision, created=result is not None, observed=observed,
                       agrees=observed == expected_name)


def run_probes(backend: Union[str, Backend, None] = None, seed: int = 0) -> List[ProbeResult]:
    """Run every probe on ``backend`` and return a list of ``ProbeResult``."""
    backend = get_backend(backend)
    rng = np.random.default_rng(seed)
    results: List[ProbeResult] = []
    for probe in PROBES:
        outcome: Union[ProbeResult, List[ProbeResult]]
        try:
            outcome = probe(backend, rng)
        except Exception as error:  # noqa: BLE001 - a probe's failure is its result
            outcome = ProbeResult(probe.__name__.lstrip("_").replace("_probe", ""), "", "",
                                  observed=f"raised {type(error).__name__}: {error}")
        results += outcome if isinstance(outcome, list) else [outcome]
    return results


def _rand(rng: np.random.Generator, *shape: int) -> Array:
    return rng.standard_normal(shape).astype(np.float32)


def _output_size_probe(backend: Backend, rng: np.random.Generator) -> ProbeResult:
    x, w = _rand(rng, 2, 2, 7, 7), _rand(rng, 3, 2, 3, 3)
    return _probe(
        "output_smaller_than_max", "Is an output smaller than the largest that fits accepted (macOS 14 rule)?",
        "accepted; it is the top-left part of the full output",
        _run(backend, _params((7, 7, 2), (4, 3, 3), w), x, (2, 3, 3, 4)),
        {"top-left crop": reference.conv2d(x, w)[:, :, :3, :4]}, "top-left crop")


def _groups_probes(backend: Backend, rng: np.random.Generator) -> List[ProbeResult]:
    results = []
    for groups, in_c, out_c in ((2, 4, 6), (4, 4, 4), (4, 4, 8)):
        xg, wg, bg = _rand(rng, 2, in_c, 6, 6), _rand(rng, out_c, in_c // groups, 3, 3), _rand(rng, out_c)
        result = _run(backend, _params((6, 6, in_c), (4, 4, out_c), wg, bg, groups=groups), xg, (2, out_c, 4, 4))
        kind = "depthwise" if groups == in_c else "grouped"
        results.append(_probe(
            f"groups_{kind}_{in_c}_{out_c}_g{groups}", f"Is {kind} convolution (groups={groups}) supported?",
            "supported, OIHW {kW, kH, in/groups, out}",
            result, {"grouped reference": reference.conv2d(xg, wg, bg, groups=groups)}, "grouped reference"))
    return results


def _field_probes(backend: Backend, rng: np.random.Generator) -> List[ProbeResult]:
    """bias.data NULL, zero stride/dilation/groups, batch stride 0, unknown flags, padding precedence."""
    x, w = _rand(rng, 2, 2, 7, 7), _rand(rng, 3, 2, 3, 3)
    full = reference.conv2d(x, w)
    params = _params((7, 7, 2), (5, 5, 3), w, _rand(rng, 3))
    params.bias.data = ffi.NULL
    return [
        _probe("bias_data_null", "Does bias.data == NULL (layout and size set) mean no bias?", "no bias",
               _run(backend, params, x, (2, 3, 5, 5)), {"no bias": full}, "no bias"),
        _probe("zero_stride_dilation_groups", "Are stride 0, dilation 0 and groups 0 read as 1?", "read as 1",
               _run(backend, _params((7, 7, 2), (5, 5, 3), w, x_stride=0, y_stride=0, x_dilation_stride=0,
                                     y_dilation_stride=0, groups=0), x, (2, 3, 5, 5)),
               {"as 1": full}, "as 1"),
        _probe("apply_batch_stride_zero", "Does an ApplyBatch stride of 0 mean one packed item?", "packed item",
               _run(backend, _params((7, 7, 2), (5, 5, 3), w), x, (2, 3, 5, 5), batch_strides=(0, 0)),
               {"packed item": full}, "packed item"),
        _probe("unknown_filter_flags", "Are undefined BNNSFilterParameters.flags bits ignored?", "ignored",
               _run(backend, _params((7, 7, 2), (5, 5, 3), w), x, (2, 3, 5, 5), flags=0x2),
               {"ignored": full}, "ignored"),
        _probe("padding_precedence", "With x/y_padding > 0, is pad[] ignored?", "pad[] ignored",
               _run(backend, _params((7, 7, 2), (7, 7, 3), w, x_padding=1, y_padding=1, pad=[2, 0, 0, 2]),
                    x, (2, 3, 7, 7)),
               {"pad[] ignored": reference.conv2d(x, w, padding=1),
                "pad[] used": reference.conv2d(x, w, padding=(2, 0, 0, 2))}, "pad[] ignored"),
    ]


def _transposed_probes(backend: Backend, rng: np.random.Generator) -> List[ProbeResult]:
    # Transposed convolution: weights [out][in][kH][kW] in an OIHW descriptor {kW, kH, in, out}.
    xt = _rand(rng, 2, 3, 4, 5)
    bnns_w = _rand(rng, 2, 3, 2, 3)                # out=2, in=3, kH=2, kW=3
    torch_w = bnns_w.transpose(1, 0, 2, 3).copy()  # PyTorch (in, out, kH, kW)
    results = [_probe(
        "transposed_weight_layout", "Which weight layout does a transposed filter read?",
        "OIHW {kW, kH, in, out}, memory [out][in][kH][kW], not flipped",
        _run(backend, _params((5, 4, 3), (11, 8, 2), bnns_w, x_stride=2, y_stride=2), xt, (2, 2, 8, 11),
             transposed=True),
        {"OIHW [out][in] unflipped (decided)": reference.conv_transpose2d(xt, torch_w, stride=2),
         "OIHW [out][in] flipped": reference.conv_transpose2d(xt, torch_w[:, :, ::-1, ::-1].copy(), stride=2)},
        "OIHW [out][in] unflipped (decided)")]

    results.append(_probe(
        "transposed_output_padding", "Is a transposed output one larger than the exact size accepted "
        "(PyTorch's output_padding)?", "accepted; the extra row/column gets bias only",
        _run(backend, _params((5, 4, 3), (12, 9, 2), bnns_w, x_stride=2, y_stride=2), xt, (2, 2, 9, 12),
             transposed=True),
        {"output_padding=1": reference.conv_transpose2d(xt, torch_w, stride=2, output_padding=1)},
        "output_padding=1"))

    # The same transposed weights as PyTorch holds them, (in, out, kH, kW), described as OIHW
    # {kW, kH, in, out} with strides: does BNNS follow the strides (bnns-py's in-place modules)?
    params = _params((5, 4, 3), (11, 8, 2), bnns_w, x_stride=2, y_stride=2)
    params.w_desc.data = ffi.from_buffer(torch_w)
    params.w_desc.stride[0:4] = [1, 3, 2 * 2 * 3, 2 * 3]
    results.append(_probe(
        "transposed_weight_strides", "Does a transposed filter read its weights through the descriptor's strides "
        "(channel strides not in axis order)?", "yes; bnns-py then reads a PyTorch-layout weight in place",
        _run(backend, params, xt, (2, 2, 8, 11), transposed=True),
        {"strides followed": reference.conv_transpose2d(xt, torch_w, stride=2),
         "strides ignored (packed OIHW read)": reference.conv_transpose2d(
             xt, torch_w.reshape(2, 3, 2, 3).transpose(1, 0, 2, 3).copy(), stride=2)},
        "strides followed"))

    xg = _rand(rng, 2, 4, 3, 3)
    wg_bnns = _rand(rng, 6, 2, 2, 2)  # out=6, in/groups=2, groups=2
    wg_torch = wg_bnns.reshape(2, 3, 2, 2, 2).transpose(0, 2, 1, 3, 4).reshape(4, 3, 2, 2).copy()
    results.append(_probe(
        "transposed_groups", "Is a grouped transposed convolution (groups=2) supported forward?",
        "supported", _run(backend, _params((3, 3, 4), (4, 4, 6), wg_bnns, groups=2), xg, (2, 6, 4, 4), transposed=True),
        {"grouped reference": reference.conv_transpose2d(xg, wg_torch, groups=2)}, "grouped reference"))
    return results


FLOAT16 = 0x10010


def _float16_accumulation_probe(backend: Backend, rng: np.random.Generator) -> ProbeResult:
    """Float16 input, weights and output: are the products summed in float32 and rounded once?

    576 terms per output; a float16 accumulator would drift by many float16 ulps, one rounding of a
    float32 sum stays within one."""
    x = rng.standard_normal((1, 64, 6, 6)).astype(np.float16)
    w = (rng.standard_normal((8, 64, 3, 3)) * 0.2).astype(np.float16)
    params = _params((6, 6, 64), (4, 4, 8), w.astype(np.float32))
    for desc in (params.i_desc, params.w_desc, params.o_desc):
        desc.data_type = FLOAT16
    params.w_desc.data = ffi.from_buffer(w)
    lib = backend.lib
    handle = lib.BNNSFilterCreateLayerConvolution(params, ffi.new("BNNSFilterParameters *"))
    question = "Does a Float16 convolution accumulate in float32 and round the output once?"
    decision = "float32 accumulation, one rounding to float16"
    if handle == ffi.NULL:
        return ProbeResult("float16_accumulation", question, decision, observed="create returned NULL")
    try:
        out = np.full((1, 8, 4, 4), np.nan, np.float16)
        status = lib.BNNSFilterApplyBatch(handle, 1, ffi.from_buffer(x), 0, ffi.from_buffer(out), 0)
    finally:
        lib.BNNSFilterDestroy(handle)
    if status != 0:
        return ProbeResult("float16_accumulation", question, decision, created=True, observed="apply returned -1")
    exact = reference.conv2d(x.astype(np.float64), w.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64)
    worst = float(np.max(np.abs(out.astype(np.float64) - exact) / ulp))
    if worst <= 1.0:
        observed = decision
    elif worst <= 64.0:
        observed = f"lower-precision accumulation (up to {worst:.1f} float16 ulps off)"
    else:
        observed = f"matches neither ({worst:.3g} float16 ulps off)"
    return ProbeResult("float16_accumulation", question, decision, created=True, observed=observed,
                       agrees=observed == decision, details={"worst_ulps": worst})


def _image_strides_probe(backend: Backend, rng: np.random.Generator) -> ProbeResult:
    """Input and output image descriptors with padded rows and channel strides (and batch strides
    beyond the last channel): does BNNS read and write through them?"""
    n, c, h, w, o = 2, 3, 5, 6, 4
    in_row, in_channel, in_image = 8, 5 * 8 + 3, 3 * (5 * 8 + 3) + 1
    out_row, out_channel, out_image = 7, 5 * 7 + 2, 4 * (5 * 7 + 2) + 2
    x_storage = (rng.standard_normal(n * in_image) * 10).astype(np.float32)  # the gaps hold other values
    x = np.lib.stride_tricks.as_strided(x_storage, (n, c, h, w), tuple(4 * s for s in (in_image, in_channel, in_row, 1)))
    weights, bias = _rand(rng, o, c, 3, 3), _rand(rng, o)
    params = _params((w, h, c), (w, h, o), weights, bias, x_padding=1, y_padding=1)
    params.i_desc.stride[0:3] = [1, in_row, in_channel]
    params.o_desc.stride[0:3] = [1, out_row, out_channel]
    out_storage = np.full(n * out_image, np.nan, np.float32)
    lib = backend.lib
    handle = lib.BNNSFilterCreateLayerConvolution(params, ffi.new("BNNSFilterParameters *"))
    question = ("Do input and output image descriptors with padded rows and channel strides read and write "
                "through those strides?")
    decision = "followed; on Accelerate bnns-py copies strided views to packed arrays until this is settled"
    if handle == ffi.NULL:
        return ProbeResult("image_strides", question, decision, observed="create returned NULL")
    try:
        status = lib.BNNSFilterApplyBatch(handle, n, ffi.from_buffer(x_storage), in_image,
                                          ffi.from_buffer(out_storage), out_image)
    finally:
        lib.BNNSFilterDestroy(handle)
    if status != 0:
        return ProbeResult("image_strides", question, decision, created=True, observed="apply returned -1")
    out_strided = np.lib.stride_tricks.as_strided(out_storage, (n, o, h, w),
                                                  tuple(4 * s for s in (out_image, out_channel, out_row, 1)))
    out_packed = out_storage.reshape(n, out_image)[:, :o * h * w].reshape(n, o, h, w)
    x_packed = x_storage.reshape(n, in_image)[:, :c * h * w].reshape(n, c, h, w)
    by_strides, by_packed = (reference.conv2d(v, weights, bias, padding=1) for v in (np.array(x), x_packed))
    candidates = (("strides followed", out_strided, by_strides),
                  ("strides ignored (both read as packed)", out_packed, by_packed),
                  ("input strides followed, output written packed", out_packed, by_strides),
                  ("input read packed, output strides followed", out_strided, by_packed))
    observed = next((name for name, actual, expected in candidates
                     if np.allclose(actual, expected, rtol=1e-4, atol=1e-4)),
                    "matches none of: " + ", ".join(name for name, _, _ in candidates))
    return ProbeResult("image_strides", question, decision, created=True, observed=observed,
                       agrees=observed == "strides followed")


def _backward_without_client_ptr_probes(backend: Backend, rng: np.random.Generator,
                                        flags: int = 0) -> List[ProbeResult]:
    """A convolution and a fully-connected filter created without BNNSFlagsUseClientPtr (the
    header says backward needs it): what does BNNSFilterApplyBackwardBatch do? (``flags`` other
    than 0 is for testing the probe itself.)"""
    question = "Does apply_backward work on a {} filter created without UseClientPtr?"
    decision = "returns 0 with the gradients (as hardware did for fully-connected on macOS 15)"
    results = []
    x, weights, bias = _rand(rng, 2, 2, 6, 6), _rand(rng, 3, 2, 3, 3), _rand(rng, 3)
    params = _params((6, 6, 2), (4, 4, 3), weights, bias)
    dy = _rand(rng, 2, 3, 4, 4)
    expected = reference.conv2d_backward(x, weights, dy, bias=True)
    descriptors = [_descriptor(IMAGE_CHW, (6, 6, 2)), _descriptor(IMAGE_CHW, (4, 4, 3)),
                   _descriptor(OIHW, (3, 3, 2, 3)), _descriptor(VECTOR, (3,))]
    results.append(_backward_probe(backend, "convolution", backend.lib.BNNSFilterCreateLayerConvolution, params,
                                   x, dy, descriptors, expected, question.format("convolution"), decision, flags))

    xf, wf, bf = _rand(rng, 2, 5), _rand(rng, 3, 5), _rand(rng, 3)
    fc = ffi.new("BNNSLayerParametersFullyConnected *")
    for desc, size in ((fc.i_desc, 5), (fc.o_desc, 3), (fc.bias, 3)):
        desc.layout, desc.data_type, desc.size[0] = VECTOR, FLOAT32, size
    fc.w_desc.layout, fc.w_desc.data_type = ROW_MAJOR_MATRIX, FLOAT32
    fc.w_desc.size[0:2] = [5, 3]   # {in, out}: W(o, i) at i + o * in, the (out, in) array
    fc.w_desc.data, fc.bias.data = ffi.from_buffer(wf), ffi.from_buffer(bf)
    dyf = _rand(rng, 2, 3)
    expected = reference.linear_backward(xf, wf, dyf, bias=True)
    descriptors = [_descriptor(VECTOR, (5,)), _descriptor(VECTOR, (3,)), _descriptor(ROW_MAJOR_MATRIX, (5, 3)),
                   _descriptor(VECTOR, (3,))]
    results.append(_backward_probe(backend, "fully_connected", backend.lib.BNNSFilterCreateLayerFullyConnected, fc,
                                   xf, dyf, descriptors, expected, question.format("fully-connected"), decision, flags))
    return results


def _descriptor(layout: int, size: Sequence[int]) -> Any:
    """A new float32 ``BNNSNDArrayDescriptor *`` of ``layout`` and ``size``, without data."""
    desc = ffi.new("BNNSNDArrayDescriptor *")
    desc.layout, desc.data_type = layout, FLOAT32
    desc.size[0:len(size)] = list(size)
    return desc


def _backward_probe(backend: Backend, kind: str, create: Callable[[Any, Any], Any], params: Any, x: Array, dy: Array,
                    descriptors: Sequence[Any], expected: reference.Gradients3, question: str, decision: str,
                    flags: int) -> ProbeResult:
    name = f"backward_without_client_ptr_{kind}"
    lib = backend.lib
    handle = create(params, ffi.new("BNNSFilterParameters *", {"flags": flags}))  # 0: weights copied
    if handle == ffi.NULL:
        return ProbeResult(name, question, decision, observed="create returned NULL")
    in_delta, out_delta, weights_delta, bias_delta = descriptors
    wanted = [e for e in expected if e is not None]  # all three: the probes ask for the bias gradient
    gradients = [np.zeros(e.shape, np.float32) for e in wanted]   # set mode (flags 0) into zeros
    for desc, array in zip((in_delta, weights_delta, bias_delta), gradients):
        desc.data = ffi.from_buffer(array)
    out_delta.data = ffi.from_buffer(dy)
    try:
        y = np.empty(dy.shape, np.float32)
        in_stride, out_stride = x[0].size, y[0].size
        status = lib.BNNSFilterApplyBatch(handle, x.shape[0], ffi.from_buffer(x), in_stride, ffi.from_buffer(y),
                                          out_stride)
        if status == 0:
            status = lib.BNNSFilterApplyBackwardBatch(handle, x.shape[0], ffi.from_buffer(x), in_stride, in_delta,
                                                      in_stride, ffi.from_buffer(y), out_stride, out_delta,
                                                      out_stride, weights_delta, bias_delta)
    finally:
        lib.BNNSFilterDestroy(handle)
    if status != 0:
        observed = "backward returned -1"
    elif all(np.allclose(g, e, rtol=1e-4, atol=1e-4) for g, e in zip(gradients, wanted)):
        observed = decision
    else:
        wrong = [part for part, g, e in zip(("dx", "dW", "db"), gradients, wanted)
                 if not np.allclose(g, e, rtol=1e-4, atol=1e-4)]
        observed = "returns 0, but " + ", ".join(wrong) + " differ from the reference"
    return ProbeResult(name, question, decision, created=True, observed=observed, agrees=observed == decision)


ROW_MAJOR_MATRIX = 0x20000

Probe = Callable[[Backend, np.random.Generator], Union[ProbeResult, List[ProbeResult]]]
PROBES: Tuple[Probe, ...] = (_output_size_probe, _field_probes, _groups_probes, _transposed_probes, _float16_accumulation_probe,
          _image_strides_probe, _backward_without_client_ptr_probes)
