"""Convolution throughput cases and timing, shared by ``python -m bnns_py bench`` and
``benchmarks/bench_conv.py``.

The case list follows the peer harness: ResNet-50 layers, a dilated layer, depthwise layers, a
transposed layer and a tiny layer. FLOPs count multiply-adds twice:
forward = 2*N*Cout*Hout*Wout*(Cin/groups)*k*k (transposed: 2*N*Cin*H*W*(Cout/groups)*k*k).

The peers, both optional: PyTorch (``torch.nn.functional``) and ONNX Runtime (one session per case,
built with ``onnx.helper``, run with ``run_with_iobinding`` on bound numpy buffers).
"""
import contextlib
import importlib
import math
import statistics
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

Case = Dict[str, Any]
"""A case: name, N, Cin, Cout, H, W, k, stride, pad, dil, groups, transposed."""
Array = npt.NDArray[np.float32]

CATEGORIES = ("dense", "depthwise", "dilated", "transposed", "tiny")


def case(name: str, n: int, cin: int, cout: int, h: int, w: int, k: int, stride: int = 1, pad: int = 0,
         dil: int = 1, groups: int = 1, transposed: bool = False) -> Case:
    """A benchmark case: a square ``k`` x ``k`` convolution (or transposed convolution).

    Parameters
    ----------
    name : str
        Name printed in the tables.
    n, cin, cout, h, w : int
        Batch size, input and output channels, input height and width.
    k, stride, pad, dil, groups : int
        Kernel size, stride, padding on every side, dilation and groups (the same on both axes).
    transposed : bool
        A transposed convolution (weights ``(cin, cout / groups, k, k)``, as PyTorch).

    Returns
    -------
    Case
        The parameters as a dict, keys N, Cin, Cout, H, W and the others by name.
    """
    return dict(name=name, N=n, Cin=cin, Cout=cout, H=h, W=w, k=k, stride=stride, pad=pad, dil=dil,
                groups=groups, transposed=transposed)


def full_cases() -> List[Case]:
    """Every case of the peer harness, at batch 1 and 8, plus the tiny one.

    Returns
    -------
    list of Case
        ResNet-50 layers, a dilated, two depthwise and a transposed layer at batch 1 then 8, and
        the tiny 8-channel 8x8 layer.
    """
    out: List[Case] = []
    for n in (1, 8):
        out += [
            case("r50_stem_7x7s2_3-64_224", n, 3, 64, 224, 224, 7, stride=2, pad=3),
            case("r50_c2_3x3_64-64_56", n, 64, 64, 56, 56, 3, pad=1),
            case("r50_c2_1x1_256-64_56", n, 256, 64, 56, 56, 1),
            case("r50_c3_3x3_128-128_28", n, 128, 128, 28, 28, 3, pad=1),
            case("r50_c4_3x3_256-256_14", n, 256, 256, 14, 14, 3, pad=1),
            case("r50_c5_3x3_512-512_7", n, 512, 512, 7, 7, 3, pad=1),
            case("dilated_3x3d2_256-256_28", n, 256, 256, 28, 28, 3, pad=2, dil=2),
            case("dw_3x3_32_112", n, 32, 32, 112, 112, 3, pad=1, groups=32),
            case("dw_3x3_512_14", n, 512, 512, 14, 14, 3, pad=1, groups=512),
            case("convT_4x4s2_256-128_16to32", n, 256, 128, 16, 16, 4, stride=2, pad=1, transposed=True),
        ]
    out.append(case("tiny_3x3_8-8_8", 1, 8, 8, 8, 8, 3, pad=1))
    return out


def quick_cases() -> List[Case]:
    """A few representative batch-1 cases for a fast look.

    Returns
    -------
    list of Case
        A dense 3x3, a depthwise, the transposed and the tiny case.
    """
    names = {"r50_c3_3x3_128-128_28", "dw_3x3_32_112", "convT_4x4s2_256-128_16to32", "tiny_3x3_8-8_8"}
    return [c for c in full_cases() if c["name"] in names and c["N"] == 1]


def out_hw(c: Case) -> Tuple[int, int]:
    """Output height and width of a case.

    Parameters
    ----------
    c : Case
        The case.

    Returns
    -------
    tuple of int
        ``(height, width)`` of the output image.
    """
    k_eff = c["dil"] * (c["k"] - 1) + 1
    if c["transposed"]:
        return tuple((s - 1) * c["stride"] - 2 * c["pad"] + k_eff for s in (c["H"], c["W"]))
    return tuple((s + 2 * c["pad"] - k_eff) // c["stride"] + 1 for s in (c["H"], c["W"]))


def flops(c: Case) -> int:
    """Floating-point operations of one forward call (a multiply-add counts 2).

    Parameters
    ----------
    c : Case
        The case.

    Returns
    -------
    int
        ``2*N*Cout*Hout*Wout*(Cin/groups)*k*k`` (transposed: ``2*N*Cin*H*W*(Cout/groups)*k*k``).
    """
    ho, wo = out_hw(c)
    if c["transposed"]:
        return int(2 * c["N"] * c["Cin"] * c["H"] * c["W"] * (c["Cout"] // c["groups"]) * c["k"] ** 2)
    return int(2 * c["N"] * c["Cout"] * ho * wo * (c["Cin"] // c["groups"]) * c["k"] ** 2)


def arrays(c: Case, seed: int = 0) -> Tuple[Array, Array, Array]:
    """Random input, weight and bias of a case.

    Parameters
    ----------
    c : Case
        The case.
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    tuple of numpy.ndarray
        ``x`` (N, Cin, H, W), the weight in PyTorch's layout and the bias (Cout,), float32.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((c["N"], c["Cin"], c["H"], c["W"]), dtype=np.float32)
    wshape = ((c["Cin"], c["Cout"] // c["groups"]) if c["transposed"] else (c["Cout"], c["Cin"] // c["groups"]))
    w = (rng.standard_normal(wshape + (c["k"], c["k"]), dtype=np.float32) * 0.05).astype(np.float32)
    b = rng.standard_normal((c["Cout"],), dtype=np.float32)
    return x, w, b


def time_call(fn: Callable[[], Any], samples: int = 7, target: float = 0.06, max_total: float = 6.0) -> float:
    """Median seconds per call of ``fn``.

    Parameters
    ----------
    fn : callable
        Called with no arguments.
    samples : int
        Timed loops (at least 3; fewer when they would take longer than ``max_total``).
    target : float
        Seconds per timed loop, roughly: the loop's call count comes from one timed call.
    max_total : float
        Seconds the timed loops may take together, roughly.

    Returns
    -------
    float
        The median over the loops of a loop's seconds per call, after a warm-up call.
    """
    fn()
    t0 = time.perf_counter()
    fn()
    estimate = time.perf_counter() - t0
    inner = max(1, int(math.ceil(target / max(estimate, 1e-9))))
    samples = max(3, min(samples, int(max_total / max(estimate * inner, 1e-9))))
    per_call = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        per_call.append((time.perf_counter() - t0) / inner)
    return statistics.median(per_call)


def dense(c: Case) -> bool:
    """Whether thread scaling is meaningful for a case.

    Parameters
    ----------
    c : Case
        The case.

    Returns
    -------
    bool
        True for groups 1 and at least 0.1 GFLOP (dilated and transposed cases included).
    """
    return c["groups"] == 1 and flops(c) >= 1e8


def category(c: Case) -> str:
    """The category a case's ratios are summarized in.

    Parameters
    ----------
    c : Case
        The case.

    Returns
    -------
    str
        One of ``CATEGORIES``: "tiny" (the tiny case), "transposed", "depthwise" (groups > 1),
        "dilated", else "dense".
    """
    if c["name"].startswith("tiny"):
        return "tiny"
    if c["transposed"]:
        return "transposed"
    if c["groups"] > 1:
        return "depthwise"
    return "dilated" if c["dil"] > 1 else "dense"


def geomean(values: Iterable[Optional[float]]) -> Optional[float]:
    """Geometric mean of the values that are not None.

    Parameters
    ----------
    values : iterable of float or None
        Positive numbers; None entries (a peer that did not run) are left out.

    Returns
    -------
    float or None
        The geometric mean, or None when no value is left.
    """
    kept = [v for v in values if v is not None]
    return math.exp(sum(map(math.log, kept)) / len(kept)) if kept else None


def ratio_summary(cases: Iterable[Case], ratios: Iterable[Optional[float]]) -> Dict[str, Any]:
    """Summary of one peer's speed ratios (peer time / bnns-py time: above 1 bnns-py is faster).

    Parameters
    ----------
    cases : iterable of Case
        The cases, in the order of ``ratios``.
    ratios : iterable of float or None
        Each case's ratio; None where the peer did not run.

    Returns
    -------
    dict
        ``geomean``: {category: geometric mean} for the categories that have ratios, and "all";
        ``below_1``: names of the cases under 1.0 (with their batch, ``name/N``);
        ``cases``: how many ratios there are; ``worst``: ``(name/N, ratio)`` or None.
    """
    pairs = [(c, r) for c, r in zip(cases, ratios) if r is not None]
    by_category = {cat: geomean(r for c, r in pairs if category(c) == cat) for cat in CATEGORIES}
    overall = geomean(r for _, r in pairs)
    means = {cat: g for cat, g in list(by_category.items()) + [("all", overall)] if g is not None}
    worst = min(pairs, key=lambda p: p[1], default=None)
    return {"geomean": means, "below_1": [f"{c['name']}/{c['N']}" for c, r in pairs if r < 1.0],
            "cases": len(pairs), "worst": (f"{worst[0]['name']}/{worst[0]['N']}", worst[1]) if worst else None}


def bnns_module(c: Case, w: Array, b: Array, backend: Optional[str] = None, n_threads: Optional[int] = None) -> Any:
    """A bnns_py ``Conv2d`` / ``ConvTranspose2d`` for a case (imported lazily: no cycle at import time).

    Parameters
    ----------
    c : Case
        The case.
    w, b : numpy.ndarray
        Weight (PyTorch layout) and bias.
    backend : str, optional
        Backend name (default: the default backend).
    n_threads : int, optional
        The module's ``n_threads`` (without it: the modules' default, 0 = all CPUs).

    Returns
    -------
    Conv2d or ConvTranspose2d
        The module; close it (or use it as a context manager).
    """
    from .modules import Conv2d, ConvTranspose2d
    cls = ConvTranspose2d if c["transposed"] else Conv2d
    return cls(w, b, stride=c["stride"], padding=c["pad"], dilation=c["dil"], groups=c["groups"], backend=backend,
               n_threads=n_threads or 0)


def bnns_linear_module(w: Array, b: Optional[Array], n_threads: Optional[int] = None) -> Tuple[Any, Any]:
    """A bnns_py ``Linear`` over ``w`` (PyTorch's ``(out, in)`` layout) and ``b``, and its filter,
    made with ``n_threads`` threads (without it: the modules' default, 0 = all CPUs).

    Returns
    -------
    (Linear, FullyConnectedLayer)
        The module and the layer its calls run on (for timing ``layer.apply`` and the bare C call
        beside the module's); close the module (or use it as a context manager), which closes the
        layer.
    """
    from .modules import Linear
    module = Linear(w, b, n_threads=n_threads or 0)
    return module, module._layer()


def bench_bnns_forward(c: Case, backend: Optional[str] = None, n_threads: Optional[int] = None,
                       **timing: Any) -> float:
    """Seconds per forward call of a kept layer on preallocated arrays (what a model would do).

    Parameters
    ----------
    c : Case
        The case.
    backend : str, optional
        Backend name.
    n_threads : int, optional
        ``FilterParameters.n_threads`` (default: all CPUs).
    **timing
        ``samples``, ``target``, ``max_total`` of ``time_call``.

    Returns
    -------
    float
        Median seconds per ``layer.apply`` call.
    """
    x, w, b = arrays(c)
    with bnns_module(c, w, b, backend, n_threads) as module:
        out = np.empty((c["N"], c["Cout"]) + out_hw(c), np.float32)
        layer = module._layer(c["H"], c["W"])
        return time_call(lambda: layer.apply(c["N"], x, out), **timing)


def bench_bnns_thread_scaling(c: Case, threads: int = 2, backend: Optional[str] = None, samples: int = 7,
                              target: float = 0.06, max_total: float = 9.0) -> Dict[str, float]:
    """Seconds per forward call at 1 thread and at ``threads``, and of ``threads`` independent
    1-thread calls made at the same time.

    The three are timed in alternating bursts (one of each per sample, medians reported), so a
    slow phase of a shared machine slows all three alike instead of skewing their ratio.

    ``concurrent`` is the machine's ceiling: ``threads`` Python threads each call their own
    1-thread filter on their own arrays (``layer.apply`` releases the GIL), so they share nothing
    but the hardware (caches, memory bandwidth, clock) and ``threads * one / concurrent`` is the
    most extra threads can give. ``(one / many)`` divided by it is the backend's own parallel
    efficiency.

    Parameters
    ----------
    c : Case
        The case.
    threads : int
        The thread count compared with 1 thread.
    backend : str, optional
        Backend name.
    samples, target, max_total
        As ``time_call``; each sample times one burst of each of the three.

    Returns
    -------
    dict
        ``{"one": s, "many": s, "concurrent": s}``: medians of seconds per call.
    """
    x, w, b = arrays(c)
    n = int(threads)
    shape = (c["N"], c["Cout"]) + out_hw(c)
    with contextlib.ExitStack() as stack:
        singles = [stack.enter_context(bnns_module(c, w, b, backend, 1)) for _ in range(n)]
        many = stack.enter_context(bnns_module(c, w, b, backend, n))
        jobs = [(m._layer(c["H"], c["W"]), x if i == 0 else x.copy(), np.empty(shape, np.float32))
                for i, m in enumerate(singles + [many])]
        for layer, xi, out in jobs:
            layer.apply(c["N"], xi, out)
        t0 = time.perf_counter()
        jobs[0][0].apply(c["N"], x, jobs[0][2])
        estimate = time.perf_counter() - t0
        inner = max(2, int(math.ceil(target / max(estimate, 1e-9))))
        samples = max(3, min(samples, int(max_total / max(3 * estimate * inner, 1e-9))))

        def burst(job: Tuple[Any, Array, Array]) -> float:
            layer, xi, out = job
            t0 = time.perf_counter()
            for _ in range(inner):
                layer.apply(c["N"], xi, out)
            return (time.perf_counter() - t0) / inner

        gate = threading.Barrier(n + 1)
        failures: List[BaseException] = []

        def concurrent_worker(job: Tuple[Any, Array, Array]) -> None:
            try:
                for _ in range(samples):
                    gate.wait()
                    burst(job)
                    gate.wait()
            except threading.BrokenBarrierError:
                pass
            except BaseException as error:  # noqa: B902 -- handed to the calling thread
                failures.append(error)
                gate.abort()

        helpers = [threading.Thread(target=concurrent_worker, args=(job,), daemon=True) for job in jobs[:n]]
        for t in helpers:
            t.start()
        one: List[float] = []
        many_s: List[float] = []
        together: List[float] = []
        try:
            for _ in range(samples):
                # read before the gate opens: a helper released by it may finish a call before
                # this thread runs again
                t0 = time.perf_counter()
                gate.wait()
                gate.wait()
                together.append((time.perf_counter() - t0) / inner)
                one.append(burst(jobs[0]))
                many_s.append(burst(jobs[n]))
        except BaseException:
            gate.abort()  # no helper may be left waiting
            raise
        finally:
            for t in helpers:
                t.join()
            if failures:
                raise failures[0]
    return {"one": statistics.median(one), "many": statistics.median(many_s),
            "concurrent": statistics.median(together)}


def bench_bnns_forward_backward(c: Case, backend: Optional[str] = None, n_threads: Optional[int] = None,
                                **timing: Any) -> float:
    """Seconds per forward + all gradients (input, weight, bias) through ``Conv2d``/``ConvTranspose2d``
    ``forward`` and ``backward`` (gradient arrays allocated per call, as torch's autograd does).

    Parameters
    ----------
    c : Case
        The case.
    backend : str, optional
        Backend name.
    n_threads : int, optional
        ``FilterParameters.n_threads`` (default: all CPUs).
    **timing
        ``samples``, ``target``, ``max_total`` of ``time_call``.

    Returns
    -------
    float
        Median seconds per forward + backward step.
    """
    x, w, b = arrays(c)
    dy = np.random.default_rng(1).standard_normal((c["N"], c["Cout"]) + out_hw(c), dtype=np.float32)
    with bnns_module(c, w, b, backend, n_threads) as module:
        out = np.empty_like(dy)

        def step() -> None:
            y = module.forward(x, out=out)
            module.backward(x, y, dy)

        return time_call(step, **timing)


def _torch_op(c: Case) -> Callable[[Any, Any, Any], Any]:
    import torch.nn.functional as F
    op = F.conv_transpose2d if c["transposed"] else F.conv2d
    return lambda x, w, b: op(x, w, b, stride=c["stride"], padding=c["pad"], dilation=c["dil"], groups=c["groups"])


def bench_torch_forward(c: Case, **timing: Any) -> Optional[float]:
    """Seconds per ``torch.nn.functional`` forward call under ``torch.no_grad()``.

    Parameters
    ----------
    c : Case
        The case (PyTorch runs with its current ``torch.get_num_threads()``).
    **timing
        ``samples``, ``target``, ``max_total`` of ``time_call``.

    Returns
    -------
    float or None
        Median seconds per call; None without torch.
    """
    try:
        import torch
    except ImportError:
        return None
    x, w, b = (torch.from_numpy(a) for a in arrays(c))
    op = _torch_op(c)
    with torch.no_grad():
        return time_call(lambda: op(x, w, b), **timing)


def bench_torch_forward_backward(c: Case, **timing: Any) -> Optional[float]:
    """Seconds per forward + ``out.backward(grad)`` with input, weight and bias requiring grad.

    Parameters
    ----------
    c : Case
        The case.
    **timing
        ``samples``, ``target``, ``max_total`` of ``time_call``.

    Returns
    -------
    float or None
        Median seconds per step; None without torch.
    """
    try:
        import torch
    except ImportError:
        return None
    x, w, b = (torch.from_numpy(a).requires_grad_(True) for a in arrays(c))
    gy = torch.from_numpy(np.random.default_rng(1).standard_normal((c["N"], c["Cout"]) + out_hw(c), dtype=np.float32))
    op = _torch_op(c)

    def step() -> None:
        x.grad = w.grad = b.grad = None
        op(x, w, b).backward(gy)

    return time_call(step, **timing)


def _onnx_modules() -> Optional[Tuple[Any, Any]]:
    """``(onnx, onnxruntime)``, or None when either is missing (both untyped: imported by name)."""
    try:
        return importlib.import_module("onnx"), importlib.import_module("onnxruntime")
    except ImportError:
        return None


def onnx_forward(c: Case, n_threads: int, spinning: bool = True) -> Optional[Tuple[Callable[[], None], Array]]:
    """An ONNX Runtime session computing a case's forward pass, bound to the case's arrays.

    The graph is one Conv or ConvTranspose node (weights and bias as initializers), built with
    ``onnx.helper``; the session runs on the CPU execution provider with ``n_threads`` intra-op
    threads (``inter_op_num_threads`` 1), its input and output bound to numpy buffers, and each
    call is ``session.run_with_iobinding`` (no per-call allocation or copy, like ``layer.apply``).

    Parameters
    ----------
    c : Case
        The case (its input from ``arrays(c)``).
    n_threads : int
        ``SessionOptions.intra_op_num_threads``.
    spinning : bool
        ``session.intra_op.allow_spinning``: whether the pool's threads spin after a call (ONNX
        Runtime's default, its fastest for back-to-back calls) or sleep at once.

    Returns
    -------
    tuple or None
        ``(call, out)``: the call (no arguments) and the output array it fills; None without
        onnx and onnxruntime.
    """
    modules = _onnx_modules()
    if modules is None:
        return None
    onnx, ort = modules
    helper, numpy_helper, tensor = onnx.helper, onnx.numpy_helper, onnx.TensorProto
    x, w, b = arrays(c)
    out = np.empty((c["N"], c["Cout"]) + out_hw(c), np.float32)
    node = helper.make_node("ConvTranspose" if c["transposed"] else "Conv", ["X", "W", "B"], ["Y"],
                            kernel_shape=[c["k"]] * 2, strides=[c["stride"]] * 2, pads=[c["pad"]] * 4,
                            dilations=[c["dil"]] * 2, group=c["groups"])
    graph = helper.make_graph([node], c["name"], [helper.make_tensor_value_info("X", tensor.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("Y", tensor.FLOAT, out.shape)],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(n_threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    call = _BoundSession(session, x, out)
    return call, out


class _BoundSession:
    """An ONNX Runtime session whose input X and output Y are bound to numpy arrays it keeps alive."""

    def __init__(self, session: Any, x: Array, out: Array) -> None:
        self.session, self.x, self.out = session, x, out
        self.binding = session.io_binding()
        self.binding.bind_input("X", "cpu", 0, np.float32, list(x.shape), x.ctypes.data)
        self.binding.bind_output("Y", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)

    def __call__(self) -> None:
        self.session.run_with_iobinding(self.binding)


def bench_onnx_forward(c: Case, n_threads: int, spinning: bool = True, **timing: Any) -> Optional[float]:
    """Seconds per ONNX Runtime forward call (``onnx_forward``).

    Parameters
    ----------
    c : Case
        The case.
    n_threads : int
        Intra-op threads.
    spinning : bool
        ``session.intra_op.allow_spinning``.
    **timing
        ``samples``, ``target``, ``max_total`` of ``time_call``.

    Returns
    -------
    float or None
        Median seconds per call; None without onnx and onnxruntime.
    """
    forward = onnx_forward(c, n_threads, spinning)
    return None if forward is None else time_call(forward[0], **timing)
