"""Convolution throughput cases and timing, shared by ``python -m bnns_py bench`` and
``benchmarks/bench_conv.py``.

The case list follows the peer harness: ResNet-50 layers, a dilated layer, depthwise layers, a
transposed layer and a tiny layer. FLOPs count multiply-adds twice:
forward = 2*N*Cout*Hout*Wout*(Cin/groups)*k*k (transposed: 2*N*Cin*H*W*(Cout/groups)*k*k).
"""
import contextlib
import math
import statistics
import threading
import time

import numpy as np


def case(name, n, cin, cout, h, w, k, stride=1, pad=0, dil=1, groups=1, transposed=False):
    return dict(name=name, N=n, Cin=cin, Cout=cout, H=h, W=w, k=k, stride=stride, pad=pad, dil=dil,
                groups=groups, transposed=transposed)


def full_cases():
    """Every case of the peer harness, at batch 1 and 8, plus the tiny one."""
    out = []
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


def quick_cases():
    """A few representative cases for a fast look."""
    names = {"r50_c3_3x3_128-128_28", "dw_3x3_32_112", "convT_4x4s2_256-128_16to32", "tiny_3x3_8-8_8"}
    return [c for c in full_cases() if c["name"] in names and c["N"] == 1]


def out_hw(c):
    k_eff = c["dil"] * (c["k"] - 1) + 1
    if c["transposed"]:
        return tuple((s - 1) * c["stride"] - 2 * c["pad"] + k_eff for s in (c["H"], c["W"]))
    return tuple((s + 2 * c["pad"] - k_eff) // c["stride"] + 1 for s in (c["H"], c["W"]))


def flops(c):
    ho, wo = out_hw(c)
    if c["transposed"]:
        return 2 * c["N"] * c["Cin"] * c["H"] * c["W"] * (c["Cout"] // c["groups"]) * c["k"] ** 2
    return 2 * c["N"] * c["Cout"] * ho * wo * (c["Cin"] // c["groups"]) * c["k"] ** 2


def arrays(c, seed=0):
    """x, weight (PyTorch layout) and bias for a case, float32."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((c["N"], c["Cin"], c["H"], c["W"]), dtype=np.float32)
    wshape = ((c["Cin"], c["Cout"] // c["groups"]) if c["transposed"] else (c["Cout"], c["Cin"] // c["groups"]))
    w = (rng.standard_normal(wshape + (c["k"], c["k"]), dtype=np.float32) * 0.05).astype(np.float32)
    b = rng.standard_normal(c["Cout"], dtype=np.float32)
    return x, w, b


def time_call(fn, samples=7, target=0.06, max_total=6.0):
    """Median seconds per call: a warm-up call, then ``samples`` timed loops of ~``target`` seconds."""
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


def dense(c):
    """True for the dense (groups 1, not tiny) cases, where thread scaling is meaningful."""
    return c["groups"] == 1 and flops(c) >= 1e8


def bnns_module(c, w, b, backend=None, n_threads=None):
    """A bnns_py Conv2d / ConvTranspose2d for a case (imported lazily: no cycle at import time).

    With ``n_threads`` the module's filter for the case's input size is created with that
    ``FilterParameters.n_threads`` (the modules themselves use the default, 0 = all CPUs), so
    ``forward``/``backward`` and ``module._layer(H, W)`` run with that many threads.
    """
    from .modules import Conv2d, ConvTranspose2d
    cls = ConvTranspose2d if c["transposed"] else Conv2d
    module = cls(w, b, stride=c["stride"], padding=c["pad"], dilation=c["dil"], groups=c["groups"], backend=backend)
    if n_threads is not None:
        module._layers[(c["H"], c["W"])] = module.spec.make_layer(c["H"], c["W"], module._bnns_weight, module.bias,
                                                                  backend, n_threads=int(n_threads),
                                                                  weight_strides=module._weight_strides)
    return module


def bench_bnns_forward(c, backend=None, n_threads=None, **timing):
    """Seconds per forward call of a kept layer on preallocated arrays (what a model would do)."""
    x, w, b = arrays(c)
    with bnns_module(c, w, b, backend, n_threads) as module:
        out = np.empty((c["N"], c["Cout"]) + out_hw(c), np.float32)
        layer = module._layer(c["H"], c["W"])
        return time_call(lambda: layer.apply(c["N"], x, out), **timing)


def bench_bnns_thread_scaling(c, threads=2, backend=None, samples=7, target=0.06, max_total=9.0):
    """Seconds per forward call at 1 thread and at ``threads``, and of ``threads`` independent
    1-thread calls made at the same time, as ``{"one": s, "many": s, "concurrent": s}``.

    The three are timed in alternating bursts (one of each per sample, medians reported), so a
    slow phase of a shared machine slows all three alike instead of skewing their ratio.

    ``concurrent`` is the machine's ceiling: ``threads`` Python threads each call their own
    1-thread filter on their own arrays (``layer.apply`` releases the GIL), so they share nothing
    but the hardware (caches, memory bandwidth, clock) and ``threads * one / concurrent`` is the
    most extra threads can give. ``(one / many)`` divided by it is the backend's own parallel
    efficiency.
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

        def burst(job):
            layer, xi, out = job
            t0 = time.perf_counter()
            for _ in range(inner):
                layer.apply(c["N"], xi, out)
            return (time.perf_counter() - t0) / inner

        gate = threading.Barrier(n + 1)
        failures = []

        def concurrent_worker(job):
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
        one, many_s, together = [], [], []
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


def bench_bnns_forward_backward(c, backend=None, n_threads=None, **timing):
    """Seconds per forward + all gradients (input, weight, bias) through ``Conv2d``/``ConvTranspose2d``
    ``forward`` and ``backward`` (gradient arrays allocated per call, as torch's autograd does)."""
    x, w, b = arrays(c)
    dy = np.random.default_rng(1).standard_normal((c["N"], c["Cout"]) + out_hw(c), dtype=np.float32)
    with bnns_module(c, w, b, backend, n_threads) as module:
        out = np.empty_like(dy)

        def step():
            y = module.forward(x, out=out)
            module.backward(x, y, dy)

        return time_call(step, **timing)


def _torch_op(c):
    import torch.nn.functional as F
    op = F.conv_transpose2d if c["transposed"] else F.conv2d
    return lambda x, w, b: op(x, w, b, stride=c["stride"], padding=c["pad"], dilation=c["dil"], groups=c["groups"])


def bench_torch_forward(c, **timing):
    """Seconds per torch.nn.functional forward call, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    x, w, b = (torch.from_numpy(a) for a in arrays(c))
    op = _torch_op(c)
    with torch.no_grad():
        return time_call(lambda: op(x, w, b), **timing)


def bench_torch_forward_backward(c, **timing):
    """Seconds per forward + ``out.backward(grad)`` with every input requiring grad, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    x, w, b = (torch.from_numpy(a).requires_grad_(True) for a in arrays(c))
    gy = torch.from_numpy(np.random.default_rng(1).standard_normal((c["N"], c["Cout"]) + out_hw(c), dtype=np.float32))
    op = _torch_op(c)

    def step():
        x.grad = w.grad = b.grad = None
        op(x, w, b).backward(gy)

    return time_call(step, **timing)
