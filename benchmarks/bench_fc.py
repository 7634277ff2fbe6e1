#!/usr/bin/env python3
"""Fully-connected layers alone: where a call's time goes, against ONNX Runtime's Gemm.

A benchmark, not a test. For ResNet-18's (512 -> 1000) and MobileNetV2's (1280 -> 1000)
classifiers at each batch and thread count, times side by side in one process, interleaved:

- module: ``bnns_py.Linear(w, b)(x, out=out)`` (client-pointer weights, read in place each call),
  as bench_networks.py calls it;
- apply: the same filter through ``FullyConnectedLayer.apply``;
- C: ``BNNSFilterApplyBatch`` through cffi with the pointers bound (the C library's time);
- ONNX Runtime: a one-node Gemm session (weights packed at session creation) on bound numpy
  buffers, with and without spinning threads, the faster kept.

Each time is the fastest of several timed loops (benchmarks/_timing.py best_times), each burst
after the process's threads are idle (ONNX Runtime's spinning threads would otherwise slow the
next burst down), the libraries taking turns in each of ``--runs`` repetitions; the ranges over
the repetitions are printed, and the ratio ONNX Runtime / bnns-py (above 1: bnns-py is faster)
for the module and the C call.

With ``--backward``, training instead, for those classifiers and a 4096 -> 4096 layer at each
``--backward-batch``: the forward and every gradient (input, weight, bias) of

- module: ``bnns_py.Linear(w, b)`` forward then ``backward(x, y, dy)``;
- C: ``BNNSFilterApplyBackwardBatch`` alone through cffi with the pointers bound (the C library's
  backward, without the forward);
- PyTorch: ``torch.nn.Linear`` forward then autograd's backward (``torch.set_num_threads`` the
  same thread count),

and the ratio PyTorch / module (above 1: bnns-py is faster). Single-thread loops are timed in the
calling thread's CPU time.

Run:  python benchmarks/bench_fc.py [--batch 1 8 16 32 64 256] [--threads 2 1] [--runs 3]
      python benchmarks/bench_fc.py --backward [--backward-batch 8 32 64 256] [--threads 2 1] [--runs 3]
"""
import argparse
import itertools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bnns_py  # noqa: E402
from bnns_py import NDArrayDescriptor  # noqa: E402
from bnns_py.bench import bnns_linear_module  # noqa: E402
from bnns_py.functional import pointer  # noqa: E402

from _timing import IdleWaits, best_times  # noqa: E402

import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

SHAPES = [(512, 1000), (1280, 1000)]
BACKWARD_SHAPES = SHAPES + [(4096, 4096)]
IDLE = IdleWaits(window=0.02, busy_fraction=0.05, max_wait=2.0)


def gemm_session(x, w, b, out, threads, spinning):
    """A call of ONNX Runtime's Gemm (Y = X W^T + B) writing ``out``; the arrays outlive it."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["X", "W", "B"], ["Y"], transB=1)], "fc",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out.shape)],
        [helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.ravel().tolist()),
         helper.make_tensor("B", TensorProto.FLOAT, b.shape, b.tolist())])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    binding.bind_input("X", "cpu", 0, np.float32, list(x.shape), x.ctypes.data)
    binding.bind_output("Y", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
    return lambda: session.run_with_iobinding(binding)


def span(values, scale=1.0, digits=2):
    return f"{min(values) * scale:.{digits}f}-{max(values) * scale:.{digits}f}"


def measure(cin, cout, batch, threads, runs, rng):
    x = rng.standard_normal((batch, cin)).astype(np.float32)
    w = (rng.standard_normal((cout, cin)) / np.sqrt(cin)).astype(np.float32)
    b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    outs = [np.empty((batch, cout), np.float32) for _ in range(5)]
    module, layer = bnns_linear_module(w, b, n_threads=threads)
    apply_batch, handle = layer.backend.lib.BNNSFilterApplyBatch, layer.bnns_filter
    x_ptr, y_ptr = pointer(x), pointer(outs[2])
    calls = {"module": lambda: module(x, out=outs[0]),
             "apply": lambda: layer.apply(batch, x, outs[1]),
             "C": lambda: apply_batch(handle, batch, x_ptr, cin, y_ptr, cout),
             "ORT spinning": gemm_session(x, w, b, outs[3], threads, True),
             "ORT": gemm_session(x, w, b, outs[4], threads, False)}
    times = {name: [] for name in calls}
    try:
        for _ in range(runs):
            for name, call in calls.items():
                IDLE()
                times[name].append(best_times([call], min_seconds=0.003, loops=9)[0])
    finally:
        module.close()
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], rtol=1e-4, atol=1e-4)
    onnx = [min(pair) for pair in zip(times.pop("ORT spinning"), times.pop("ORT"))]
    ratios = {name: [o / t for o, t in zip(onnx, times[name])] for name in ("module", "C")}
    print(f"{threads} thr {cin:5d}->{cout} batch {batch:2d} (us): " +
          " ".join(f"{name} {span(t, 1e6, 1)}" for name, t in times.items()) +
          f" ONNX Runtime {span(onnx, 1e6, 1)} | ORT / module {span(ratios['module'])}, ORT / C {span(ratios['C'])}",
          flush=True)


def measure_backward(cin, cout, batch, threads, runs, rng):
    import time

    import torch
    torch.set_num_threads(threads)
    x = rng.standard_normal((batch, cin)).astype(np.float32)
    w = (rng.standard_normal((cout, cin)) / np.sqrt(cin)).astype(np.float32)
    b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    dy = rng.standard_normal((batch, cout)).astype(np.float32)
    y = np.empty((batch, cout), np.float32)
    module, layer = bnns_linear_module(w, b, n_threads=threads)
    ffi, lib = bnns_py.ffi, layer.backend.lib
    dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(b)

    def vector(array, n):
        d = ffi.new("BNNSNDArrayDescriptor *")
        d.layout, d.data_type, d.data, d.size[0] = 0x10000, 0x10020, ffi.from_buffer(array), n
        return d

    dw_desc = NDArrayDescriptor(dw.reshape(-1), layer.weights.shape)  # the weights' creation layout
    descriptors = (vector(dx, cin), vector(dy, cout), dw_desc.c_descriptor, vector(db, cout))
    handle, x_ptr, y_ptr = layer.bnns_filter, pointer(x), pointer(y)
    tx = torch.from_numpy(x).requires_grad_()
    tl = torch.nn.Linear(cin, cout)
    with torch.no_grad():
        tl.weight.copy_(torch.from_numpy(w))
        tl.bias.copy_(torch.from_numpy(b))
    tdy = torch.from_numpy(dy)

    def bnns_step():
        module.backward(x, module(x, out=y), dy)

    def c_backward():
        return lib.BNNSFilterApplyBackwardBatch(handle, batch, x_ptr, cin, descriptors[0], cin, y_ptr, cout, descriptors[1],
                                         cout, descriptors[2], descriptors[3])

    def torch_step():
        tx.grad = tl.weight.grad = tl.bias.grad = None
        tl(tx).backward(tdy)

    calls = {"module": bnns_step, "C backward": c_backward, "PyTorch": torch_step}
    clock = time.thread_time if threads == 1 else time.perf_counter
    times = {name: [] for name in calls}
    try:
        bnns_step()
        assert c_backward() == 0, layer.backend.last_error()
        for _ in range(runs):
            for name, call in calls.items():
                IDLE()
                times[name].append(best_times([call], min_seconds=0.003, loops=9, clock=clock)[0])
    finally:
        module.close()
    np.testing.assert_allclose(dw, tl.weight.grad.numpy(), rtol=1e-3, atol=1e-3 * np.sqrt(batch))
    ratios = [t / m for t, m in zip(times["PyTorch"], times["module"])]
    print(f"{threads} thr {cin:5d}->{cout} batch {batch:3d} forward + backward (us): " +
          " ".join(f"{name} {span(t, 1e6, 1)}" for name, t in times.items()) +
          f" | PyTorch / module {span(ratios)}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16, 32, 64, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backward", action="store_true", help="time training (forward + gradients) against PyTorch")
    parser.add_argument("--backward-batch", type=int, nargs="+", default=[8, 32, 64, 256])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.backward:
        print(f"bnns-py {bnns_py.__version__} ({bnns_py.backend_info()['isa']}), training against PyTorch")
        for threads, (cin, cout), batch in itertools.product(args.threads, BACKWARD_SHAPES, args.backward_batch):
            measure_backward(cin, cout, batch, threads, args.runs, rng)
        print(IDLE.report())
        return
    print(f"bnns-py {bnns_py.__version__} ({bnns_py.backend_info()['isa']}), onnxruntime {ort.__version__}")
    for threads in args.threads:
        for cin, cout in SHAPES:
            for batch in args.batch:
                measure(cin, cout, batch, threads, args.runs, rng)
    print(IDLE.report())


if __name__ == "__main__":
    main()
