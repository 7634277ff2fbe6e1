#!/usr/bin/env python3
"""bnns-py vs PyTorch and ONNX Runtime CPU convolution, side by side in one process, as ratios.

A benchmark, not a test. Cases are those of the shared peer harness (ResNet-50 layers, dilated,
depthwise, transposed, tiny) at batch 1 and 8 (bnns_py/bench.py). Each thread count of --threads
(e.g. 2 1) is measured in turn in this process; for each case all libraries run on the same inputs
with the same thread count (torch.set_num_threads, ONNX Runtime's intra-op threads and the bnns
filter's FilterParameters.n_threads) and the table reports:

  forward: GFLOP/s of bnns, PyTorch (F.conv2d / F.conv_transpose2d under no_grad) and ONNX Runtime
  (one Conv / ConvTranspose session per case, run_with_iobinding on bound numpy buffers), the
  ratios bnns/torch and bnns/ORT (>1: bnns faster), bnns's share of the FMA peak; bnns's layers
  read their weights from the caller at each call (Flags.use_client_pointer); with --weights both
  (or copied) also (or only) layers that copied them at creation (BNNS's default flags: bnns-py
  packs and transforms them once, as ONNX Runtime does at session creation), their ratio to ONNX
  Runtime in its own column "cp/ORT";
  forward + all gradients (input, weight, bias): bnns against torch autograd;
  for the dense cases at more than 1 thread, bnns forward at T threads over 1 thread (scaling),
  next to the machine's ceiling for it (T independent 1-thread calls made at the same time) and
  the backend's efficiency, scaling / ceiling. The three are timed in alternating bursts.

Both peers' worker threads spin after a call (ONNX Runtime ~50 ms by default, PyTorch's OpenMP
pool too): before every timed burst the script waits until the process's threads are idle
(benchmarks/_timing.py wait_until_idle), so no library is timed against another's spinning pool.

Every number is the median over --runs sweeps; each measurement within a sweep is itself the
median of several timed loops after warm-up. The FMA peak is measured: an AVX2 FMA-loop probe
compiled at run time when a C compiler is present (as in the peer harness), else the best sgemm
(numpy / torch.mm, a lower bound); the nominal cores x MHz x 32 is printed alongside. The tiny case
also gets per-call microseconds of layer.apply, bnns_py.conv2d, torch F.conv2d and ONNX Runtime.

Writes JSON (benchmarks/results/bench_conv.json) and, with matplotlib, a PNG chart of the ratios,
one panel per thread count (benchmarks/results/bench_conv.png; also docs/bench_conv.png with
--update-docs).

Run:  python benchmarks/bench_conv.py [--threads 2 1] [--runs 3] [--quick] [--forward-only]
                                      [--only dw_] [--no-onnx] [--weights client|copied|both] [--update-docs]
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

_ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
_ap.add_argument("--threads", type=int, nargs="+", default=[2],
                 help="thread counts for every library, each measured in turn (default 2; e.g. --threads 2 1)")
_ap.add_argument("--runs", type=int, default=3, help="sweeps; every number is the median over them (default 3)")
_ap.add_argument("--quick", action="store_true", help="a few batch-1 cases, shorter samples, 3 sweeps")
_ap.add_argument("--only", default="", help="run cases whose name contains this text")
_bw = _ap.add_mutually_exclusive_group()
_bw.add_argument("--forward-only", action="store_true", help="skip forward + gradients")
_bw.add_argument("--backward", action="store_true", help="(default, kept for compatibility) also time forward + all gradients")
_ap.add_argument("--weights", choices=("client", "copied", "both"), default="client",
                 help="bnns forward layers reading the caller's weights at each call (default), copying them at "
                      "creation (BNNS's default flags), or both (the copied ones in the column cp/ORT)")
_ap.add_argument("--no-scaling", action="store_true", help="skip the thread-scaling runs (1 thread, concurrent) of the dense cases")
_ap.add_argument("--no-torch", action="store_true", help="no PyTorch column (also when torch is not installed)")
_ap.add_argument("--no-onnx", action="store_true", help="no ONNX Runtime column (also when onnxruntime is not installed)")
_ap.add_argument("--onnx-spinning", choices=("best", "on", "off"), default="best",
                 help="session.intra_op.allow_spinning of the ONNX Runtime sessions: on (ORT's default), off, "
                      "or best (default): both timed, the faster kept for each case and sweep")
_ap.add_argument("--peak", type=float, default=None, help="FMA peak in GFLOP/s per thread (default: measured)")
_ap.add_argument("--no-peak-probe", action="store_true", help="do not compile the FMA-loop probe; use sgemm")
_ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_conv.json"))
_ap.add_argument("--png", default=None, help="chart path (default: next to --out, .png)")
_ap.add_argument("--update-docs", action="store_true", help="also copy the chart to docs/bench_conv.png")
_ap.add_argument("--default-malloc", action="store_true", help="keep glibc's default malloc thresholds")
ARGS = _ap.parse_args()
THREADS = list(dict.fromkeys(ARGS.threads))  # in the given order, each once
T0 = time.perf_counter()

# Same steady-state malloc mode as the peer harness: large freed blocks stay in the heap, so
# per-call allocations (torch's outputs, gradients) do not page-fault. Read by glibc at start: re-exec.
MALLOC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
if not ARGS.default_malloc and sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(32 * 1024 * 1024)
    os.environ["MALLOC_TRIM_THRESHOLD_"] = str(16 * 1024 ** 3)
    os.execv(sys.executable, [sys.executable] + sys.argv)
MALLOC = {v: os.environ[v] for v in MALLOC_VARS if v in os.environ}
MALLOC_TEXT = ("steady-state (" + ", ".join(f"{k}={v}" for k, v in MALLOC.items()) + ")") if MALLOC else "glibc default"
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(max(THREADS))  # pools sized for the most threads; torch.set_num_threads per count

import numpy as np  # noqa: E402

import bnns_py  # noqa: E402

torch = None
if not ARGS.no_torch:
    try:
        import torch  # noqa: E402
        import torch.nn.functional as F  # noqa: E402
    except ImportError:
        pass

from bnns_py.bench import (CATEGORIES, arrays, bench_bnns_forward, bench_bnns_forward_backward,  # noqa: E402
                           bench_bnns_thread_scaling, bench_onnx_forward, bench_torch_forward,
                           bench_torch_forward_backward, bnns_module, category, dense, flops, full_cases, geomean,
                           onnx_forward, out_hw, quick_cases, ratio_summary, time_call)

from _timing import IdleWaits, machine_cpu_seconds  # noqa: E402

ONNX = None
if not ARGS.no_onnx:
    try:
        import onnx  # noqa: E402,F401 -- builds the sessions' graphs (bnns_py.bench.onnx_forward)
        import onnxruntime as ONNX  # noqa: E402
    except ImportError:
        pass
# the spinning settings timed; the peer's time is the fastest of them
ONNX_SPINNING = {"best": {"spinning": True, "no_spinning": False}, "on": {"spinning": True},
                 "off": {"no_spinning": False}}[ARGS.onnx_spinning]
PEERS = {"torch": "PyTorch", "onnx": "ONNX Runtime"}
ACTIVE_PEERS = [p for p, module in (("torch", torch), ("onnx", ONNX)) if module is not None]
# before each timed burst: the process's CPU time advances by < 5 % of a core over 20 ms (at most 2 s)
IDLE = IdleWaits(window=0.02, busy_fraction=0.05, max_wait=2.0)

BACKWARD = not ARGS.forward_only
TIMING = dict(samples=5, target=0.03, max_total=2.0) if ARGS.quick else dict(samples=5, target=0.04, max_total=3.0)
NAN = float("nan")
# the layers of issue 21's FMA-peak target (>= 90 % per thread on the direct engine)
PEAK_TARGET_CASES = ("r50_stem_7x7s2_3-64_224", "r50_c5_3x3_512-512_7")


def cases():
    chosen = quick_cases() if ARGS.quick else full_cases()
    return [c for c in chosen if ARGS.only in c["name"]]


# --------------------------------------------------------------------------- peak
FMA_C = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
/* 12 independent FMA chains per thread: enough to cover latency x 2 FMA pipes. With AVX-512
   (built -march=native) 16-lane FMAs: machines with two 512-bit FMA units double their peak. */
#if defined(__AVX512F__)
#define VEC __m512
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps
#define LANES 16
#else
#define VEC __m256
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STORE _mm256_storeu_ps
#define LANES 8
#endif
int main(int argc, char **argv) {
    int threads = atoi(argv[1]);
    long iters = atol(argv[2]);
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = omp_get_wtime();
        float sink = 0;
        #pragma omp parallel num_threads(threads) reduction(+:sink)
        {
            VEC a[12];
            VEC m = SET1(0.999999f), c = SET1(1e-7f);
            for (int k = 0; k < 12; k++) a[k] = SET1((float)k);
            for (long i = 0; i < iters; i++) {
                #pragma GCC unroll 12
                for (int k = 0; k < 12; k++) a[k] = FMA(a[k], m, c);
            }
            VEC s = a[0];
            for (int k = 1; k < 12; k++) s = ADD(s, a[k]);
            float v[LANES];
            STORE(v, s);
            sink += v[0];
        }
        double dt = omp_get_wtime() - t0;
        double gf = (double)threads * iters * 12 * LANES * 2 / dt / 1e9;
        if (gf > best) best = gf;
        if (sink == 12345.f) printf("#");
    }
    printf("%f\n", best);
    return 0;
}
"""


def fma_probe(thread_counts):
    """{threads: GFLOP/s} of an FMA loop (AVX-512 where the machine has it, else AVX2), or
    {"error": ...} / None when it cannot run."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if ARGS.no_peak_probe or not cc or platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        with tempfile.TemporaryDirectory() as td:
            src, exe = os.path.join(td, "fma_peak.c"), os.path.join(td, "fma_peak")
            with open(src, "w") as handle:
                handle.write(FMA_C)
            subprocess.run([cc, "-O2", "-march=native", "-mavx2", "-mfma", "-fopenmp", src, "-o", exe], check=True,
                           capture_output=True, timeout=60)
            return {t: float(subprocess.run([exe, str(t), "20000000"], check=True, capture_output=True, text=True,
                                            timeout=60).stdout.split()[-1]) for t in sorted(set(thread_counts))}
    except Exception as error:  # noqa: BLE001 - the probe is optional
        return {"error": repr(error)}


def sgemm_gflops(threads, n=2048):
    """Best 2048^3 sgemm GFLOP/s: torch.mm at ``threads`` threads, and numpy's (its BLAS pool has
    max(--threads) threads) when ``threads`` is that count."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    c = np.empty((n, n), np.float32)
    fl = 2.0 * n ** 3 / 1e9
    out = {"n": n}
    if threads == max(THREADS):
        out["numpy"] = fl / time_call(lambda: np.matmul(a, b, out=c), samples=5, target=0.15, max_total=3)
    if torch is not None:
        torch.set_num_threads(threads)
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        out["torch_mm"] = fl / time_call(lambda: torch.mm(ta, tb, out=tc), samples=5, target=0.15, max_total=3)
    return out


def cpu_mhz():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1])
    except OSError:
        pass
    return None


def measure_peak(threads, probe):
    """The peak used for %pk at ``threads`` threads and how it was found."""
    mhz = cpu_mhz()
    info = {"cpu_mhz": mhz, "nominal_gflops": mhz / 1e3 * 32 * threads if mhz else None,
            "nominal_formula": f"{threads} cores x {mhz} MHz x 32 flop/cycle (2 AVX2 FMA pipes x 8 lanes x 2)",
            "fma_probe_gflops": probe, "sgemm_gflops": sgemm_gflops(threads)}
    sgemm = [v for k, v in info["sgemm_gflops"].items() if k != "n"]
    if ARGS.peak:
        info["used_gflops"], info["source"] = ARGS.peak * threads, "given (--peak per thread)"
    elif probe and threads in probe:
        info["used_gflops"], info["source"] = probe[threads], "FMA-loop probe"
    elif sgemm:
        info["used_gflops"], info["source"] = max(sgemm), "best sgemm 2048 (lower bound of the peak)"
    else:  # one thread count of several, without torch and the probe: numpy's pool has another size
        info["used_gflops"], info["source"] = NAN, "unknown (no probe, no torch)"
    return info


def print_peak(info, threads):
    probe, nominal = info["fma_probe_gflops"], info["nominal_gflops"]
    print(f"peak at {threads} thread{'s' * (threads > 1)}: nominal {nominal:.1f} GFLOP/s ({info['nominal_formula']})"
          if nominal else "peak: nominal unknown")
    if probe and "error" not in probe:
        print("peak: FMA-loop probe " + ", ".join(f"{v:.1f} GFLOP/s at {t} thread{'s' * (t > 1)}" for t, v in probe.items()))
    else:
        print(f"peak: FMA-loop probe unavailable ({(probe or {}).get('error', 'no compiler or disabled')})")
    print("peak: sgemm 2048 " + ", ".join(f"{k} {v:.1f}" for k, v in info["sgemm_gflops"].items() if k != "n")
          + " GFLOP/s")
    print(f"peak used for %pk: {info['used_gflops']:.1f} GFLOP/s ({info['source']})"
          + (f"  [other load {info['other_load_pct']:.0f}%: peak underestimated, rerun]"
             if disturbed(info["other_load_pct"]) else ""), flush=True)


# --------------------------------------------------------------------------- measurements
def cpu_snapshot():
    """(busy seconds of the whole machine, CPU seconds of this process, wall seconds) for other_load()."""
    busy = machine_cpu_seconds()
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system, time.perf_counter()  # + the probe


def other_load(before, after):
    """Percent of the machine's CPUs busy with other processes (or VM steal) between two snapshots:
    a large value means the numbers of that interval are disturbed."""
    if before[0] is None or after[0] is None:
        return None
    wall = after[2] - before[2]
    foreign = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, 100.0 * foreign / (wall * (os.cpu_count() or 1)))


DISTURBED_PCT = 15.0


def disturbed(load):
    return load is not None and load > DISTURBED_PCT


def timed(measure, *args, **kwargs):
    """``measure(*args, **kwargs)`` once every library's threads are idle."""
    IDLE()
    return measure(*args, **kwargs)


def bench_bnns_forward_copied(c, threads, **timing):
    """bench_bnns_forward with a layer that copied its weights at creation (Flags.none)."""
    x, w, b = arrays(c)
    with bnns_module(c, w, b, None, threads) as module:
        layer = module.spec.make_layer(c["H"], c["W"], module._bnns_weight, module.bias, None, client_pointer=False,
                                       n_threads=threads, weight_strides=module._weight_strides)
        with layer:
            out = np.empty((c["N"], c["Cout"]) + out_hw(c), np.float32)
            return time_call(lambda: layer.apply(c["N"], x, out), **timing)


def measure_case(c, threads):
    """One sweep's seconds for a case at ``threads`` threads: bnns, torch and ONNX Runtime forward,
    bnns and torch forward+backward; for dense cases at more than 1 thread bnns forward at 1
    thread, at ``threads`` and ``threads`` 1-thread calls at once, in alternating bursts."""
    before = cpu_snapshot()
    row = {}
    if ARGS.weights != "copied":
        row["bnns_fwd_s"] = timed(bench_bnns_forward, c, None, threads, **TIMING)
    if ARGS.weights != "client":
        row["bnns_fwd_copied_s"] = timed(bench_bnns_forward_copied, c, threads, **TIMING)
    if torch is not None:
        row["torch_fwd_s"] = timed(bench_torch_forward, c, **TIMING)
    if ONNX is not None:
        for setting, spinning in ONNX_SPINNING.items():
            row[f"onnx_fwd_{setting}_s"] = timed(bench_onnx_forward, c, threads, spinning, **TIMING)
        row["onnx_fwd_s"] = min(row[f"onnx_fwd_{setting}_s"] for setting in ONNX_SPINNING)
    if BACKWARD:
        row["bnns_fwd_bwd_s"] = timed(bench_bnns_forward_backward, c, None, threads, **TIMING)
        if torch is not None:
            row["torch_fwd_bwd_s"] = timed(bench_torch_forward_backward, c, **TIMING)
    if dense(c) and not ARGS.no_scaling and threads != 1:
        scaling = timed(bench_bnns_thread_scaling, c, threads, None, **TIMING)
        row["bnns_fwd_1t_s"] = scaling["one"]
        row["bnns_fwd_nt_s"] = scaling["many"]  # beside the 1-thread bursts; bnns_fwd_s is for the peer ratios
        row["bnns_fwd_concurrent_1t_s"] = scaling["concurrent"]
    row["other_load_pct"] = other_load(before, cpu_snapshot())
    return row


def tiny_overhead(threads):
    """Per-call microseconds on the tiny case at ``threads`` threads."""
    c = next(c for c in full_cases() if c["name"].startswith("tiny"))
    x, w, b = arrays(c)
    timing = dict(samples=9, target=0.05, max_total=2.0)
    r = {}
    with bnns_module(c, w, b, None, threads) as module:
        out = np.empty((c["N"], c["Cout"]) + out_hw(c), np.float32)
        layer = module._layer(c["H"], c["W"])
        r["bnns_layer_apply_us"] = timed(time_call, lambda: layer.apply(c["N"], x, out), **timing) * 1e6
        r["bnns_module_forward_us"] = timed(time_call, lambda: module.forward(x, out=out), **timing) * 1e6
    r["bnns_conv2d_us"] = timed(time_call, lambda: bnns_py.conv2d(x, w, b, padding=c["pad"]), **timing) * 1e6
    if torch is not None:
        tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))
        with torch.no_grad():
            r["torch_conv2d_no_grad_us"] = timed(time_call, lambda: F.conv2d(tx, tw, tb, padding=c["pad"]),
                                                 **timing) * 1e6
        with torch.inference_mode():
            ix, iw, ib = tx.clone(), tw.clone(), tb.clone()
            r["torch_conv2d_inference_mode_us"] = timed(time_call, lambda: F.conv2d(ix, iw, ib, padding=c["pad"]),
                                                        **timing) * 1e6
    for setting, spinning in ONNX_SPINNING.items() if ONNX is not None else ():
        r[f"onnx_{setting}_us"] = timed(time_call, onnx_forward(c, threads, spinning)[0], **timing) * 1e6
    return r


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(c, samples, peak, threads):
    e = {k: c[k] for k in ("name", "N", "Cin", "Cout", "H", "W", "k", "stride", "pad", "dil", "groups", "transposed")}
    e["category"] = category(c)
    e["gflop"] = flops(c) / 1e9
    for key in samples[0]:
        e[key] = median_or_none([s[key] for s in samples])
    loads = [s["other_load_pct"] for s in samples if s.get("other_load_pct") is not None]
    e["other_load_pct_max"] = max(loads) if loads else None
    for lib in ("bnns", "torch", "onnx"):
        for key, mult in (("fwd", 1), ("fwd_bwd", 3)):  # forward + dL/dx + dL/dW: 3x the forward FLOPs
            if e.get(f"{lib}_{key}_s"):
                e[f"{lib}_{key}_gflops"] = mult * e["gflop"] / e[f"{lib}_{key}_s"]
                e[f"{lib}_{key}_pct_peak"] = 100 * e[f"{lib}_{key}_gflops"] / peak
    for peer in PEERS:
        for key, peer_key in (("fwd", "fwd"), ("fwd_copied", "fwd"), ("fwd_bwd", "fwd_bwd")):
            if e.get(f"{peer}_{peer_key}_s") and e.get(f"bnns_{key}_s"):
                e[f"{key}_ratio_{peer}"] = e[f"{peer}_{peer_key}_s"] / e[f"bnns_{key}_s"]  # bnns speed / peer speed
    if e.get("bnns_fwd_1t_s") and e.get("bnns_fwd_nt_s"):
        # ratios within a sweep (whose bursts alternate), then their median: a slow phase of the
        # machine moves both sides of a ratio together
        e["bnns_fwd_1t_gflops"] = e["gflop"] / e["bnns_fwd_1t_s"]
        e["bnns_thread_scaling"] = statistics.median(s["bnns_fwd_1t_s"] / s["bnns_fwd_nt_s"] for s in samples)
        e["machine_thread_ceiling"] = statistics.median(threads * s["bnns_fwd_1t_s"] / s["bnns_fwd_concurrent_1t_s"]
                                                        for s in samples)
        e["thread_efficiency"] = statistics.median(s["bnns_fwd_concurrent_1t_s"] / (threads * s["bnns_fwd_nt_s"])
                                                   for s in samples)
    return e


def _cell(v, spec):
    return format(v, spec) if v is not None else format("-", ">" + spec.split(".")[0])


def print_table(summary, threads):
    f = _cell
    onnx = ONNX is not None
    head = f"{'case':28s} {'N':>2s} | {'bnns':>7s} {'torch':>7s} {'ratio':>6s}"
    head += f" {'ORT':>7s} {'ratio':>6s}" if onnx else ""
    copied = onnx and ARGS.weights != "client"
    head += f" {'cp/ORT':>6s}" if copied else ""
    head += f" {'%pk':>4s}"
    width = 31 + 15 * onnx + 7 * copied
    if BACKWARD:
        head += f" | {'bnns':>7s} {'torch':>7s} {'ratio':>6s} {'%pk':>4s}"
    scaling = threads != 1 and not ARGS.no_scaling
    if scaling:
        head += f" | {'1thr':>6s} {f'{threads}/1thr':>7s} {'ceil':>5s} {'eff':>4s}"
    top = f"{'':28s} {'':2s} | {'forward GFLOP/s':^{width}s}" + (f" | {'forward + all gradients GFLOP/s':^31s}"
                                                                    if BACKWARD else "")
    print(f"\n{threads} thread{'s' * (threads > 1)} (every library)")
    print(top + (f" | {'bnns fwd scaling':^25s}" if scaling else ""))
    print(head)
    for e in summary:
        line = (f"{e['name']:28s} {e['N']:2d} | {f(e.get('bnns_fwd_gflops'), '7.1f')} {f(e.get('torch_fwd_gflops'), '7.1f')} "
                f"{f(e.get('fwd_ratio_torch'), '6.2f')}")
        if onnx:
            line += f" {f(e.get('onnx_fwd_gflops'), '7.1f')} {f(e.get('fwd_ratio_onnx'), '6.2f')}"
        if copied:
            line += f" {f(e.get('fwd_copied_ratio_onnx'), '6.2f')}"
        line += f" {f(e.get('bnns_fwd_pct_peak'), '4.0f')}"
        if BACKWARD:
            line += (f" | {f(e.get('bnns_fwd_bwd_gflops'), '7.1f')} {f(e.get('torch_fwd_bwd_gflops'), '7.1f')} "
                     f"{f(e.get('fwd_bwd_ratio_torch'), '6.2f')} {f(e.get('bnns_fwd_bwd_pct_peak'), '4.0f')}")
        if scaling:
            line += f" | {f(e.get('bnns_fwd_1t_gflops'), '6.1f')} {f(e.get('bnns_thread_scaling'), '6.2f')}x"
            line += f" {f(e.get('machine_thread_ceiling'), '4.2f')}x {f(e.get('thread_efficiency'), '4.2f')}"
            line = line.replace(" -x", "  ")
        print(line + ("  *" if disturbed(e.get("other_load_pct")) else ""))
    if any(disturbed(e.get("other_load_pct")) for e in summary):
        print(f"* median other load above {DISTURBED_PCT:.0f}% of the CPUs during this case's sweeps: numbers "
              "disturbed by other processes (PyTorch suffers most); rerun on a quiet machine")


def comparisons():
    """(key, peer, label) of every ratio column: forward against each peer, forward + gradients
    against torch autograd."""
    out = [("fwd", peer, f"forward vs {PEERS[peer]}") for peer in ACTIVE_PEERS]
    if ARGS.weights != "client" and ONNX is not None:
        out.append(("fwd_copied", "onnx", "forward, weights copied at creation, vs ONNX Runtime"))
    if BACKWARD and torch is not None:
        out.append(("fwd_bwd", "torch", "forward + gradients vs PyTorch autograd"))
    return out


def totals_for(summary, threads, probe):
    """Per-peer ratio summaries, the FMA-peak shares of the target layers, thread scaling."""
    chosen = [{k: e[k] for k in ("name", "N", "groups", "transposed", "dil")} for e in summary]
    totals = {"ratios": {f"{key}_{peer}": ratio_summary(chosen, [e.get(f"{key}_ratio_{peer}") for e in summary])
                         for key, peer, _ in comparisons()},
              "bnns_fwd_pct_peak": {f"{e['name']}/{e['N']}": e.get("bnns_fwd_pct_peak") for e in summary
                                    if e["name"] in PEAK_TARGET_CASES}}
    scaling = [e["bnns_thread_scaling"] for e in summary if e.get("bnns_thread_scaling")]
    ceilings = [e["machine_thread_ceiling"] for e in summary if e.get("machine_thread_ceiling")]
    efficiency = [e["thread_efficiency"] for e in summary if e.get("thread_efficiency")]
    if scaling:
        totals["min_dense_thread_scaling"] = min(scaling)
        totals["geomean_dense_thread_scaling"] = geomean(scaling)
        totals["dense_cases_scaling_at_1_8"] = sum(s >= 1.8 for s in scaling)
    if probe and 1 in probe and threads in probe and threads != 1:
        totals["fma_probe_thread_scaling"] = probe[threads] / probe[1]
    if ceilings:
        totals["geomean_machine_thread_ceiling"] = geomean(ceilings)
        totals["dense_cases_ceiling_at_1_8"] = sum(s >= 1.8 for s in ceilings)
        totals["geomean_thread_efficiency"] = geomean(efficiency)
        totals["min_thread_efficiency"] = min(efficiency)
    return totals


def print_totals(totals, threads):
    label = f"{threads} thread{'s' * (threads > 1)}"
    print()
    for key, peer, text in comparisons():
        r = totals["ratios"][f"{key}_{peer}"]
        if not r["cases"]:
            continue
        means = "  ".join(f"{cat} {r['geomean'][cat]:.2f}" for cat in CATEGORIES + ("all",) if cat in r["geomean"])
        below = f"{len(r['below_1'])}/{r['cases']} below 1.0x" + (f" ({', '.join(r['below_1'])})" if r["below_1"] else "")
        print(f"{label}, {text}: geometric means {means}; {below}")
    shares = {k: v for k, v in totals["bnns_fwd_pct_peak"].items() if v is not None}
    if shares:
        print(f"{label}, bnns forward share of the FMA peak (issue 21 target >= 90 %): "
              + ", ".join(f"{k} {v:.0f} %" for k, v in shares.items()))
    if "min_dense_thread_scaling" in totals:
        print(f"bnns forward {threads} threads / 1 thread on the dense cases: worst "
              f"{totals['min_dense_thread_scaling']:.2f}x, geometric mean {totals['geomean_dense_thread_scaling']:.2f}x")
    if "geomean_machine_thread_ceiling" in totals:
        print(f"machine ceiling ({threads} independent 1-thread calls at once): geometric mean "
              f"{totals['geomean_machine_thread_ceiling']:.2f}x; bnns efficiency (scaling / ceiling): geometric "
              f"mean {totals['geomean_thread_efficiency']:.2f}, worst {totals['min_thread_efficiency']:.2f}")
    if "fma_probe_thread_scaling" in totals:
        print(f"FMA-loop probe (registers only, no memory) {threads} threads / 1 thread: "
              f"{totals['fma_probe_thread_scaling']:.2f}x")


def print_overview(results):
    """One markdown table: a row per thread count and comparison, the categories' geometric means."""
    print("\nGeometric means of bnns-py speed / peer speed (above 1: bnns-py faster)")
    print("| threads | comparison | " + " | ".join(CATEGORIES) + " | all | below 1.0x |")
    print("|---|---|" + "---|" * (len(CATEGORIES) + 2))
    for threads, result in results.items():
        for key, peer, text in comparisons():
            r = result["totals"]["ratios"][f"{key}_{peer}"]
            if r["cases"]:
                cells = " | ".join(_cell(r["geomean"].get(cat), ".2f") for cat in CATEGORIES + ("all",))
                print(f"| {threads} | {text} | {cells} | {len(r['below_1'])}/{r['cases']} |")


SERIES = [("fwd", "torch", "forward vs PyTorch", "#3182bd"), ("fwd", "onnx", "forward vs ONNX Runtime", "#31a354"),
          ("fwd_bwd", "torch", "forward + gradients vs PyTorch autograd", "#e6550d")]


def plot(results, meta, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib not installed: no chart")
        return None
    first = next(iter(results.values()))["summary"]
    rows = [(e["name"], e["N"]) for e in first]
    series = [s for s in SERIES if any(e.get(f"{s[0]}_ratio_{s[1]}") for r in results.values() for e in r["summary"])]
    if not series:
        return None
    height = 0.8 / len(series)
    fig, axes = plt.subplots(1, len(results), sharey=True, squeeze=False,
                             figsize=(4.5 * len(results) + 2.5, 0.17 * len(rows) * len(series) + 1.8))
    ratios = [e[f"{k}_ratio_{p}"] for r in results.values() for e in r["summary"] for k, p, _, _ in series
              if e.get(f"{k}_ratio_{p}")]
    for ax, (threads, result) in zip(axes[0], results.items()):
        by_row = {(e["name"], e["N"]): e for e in result["summary"]}
        for i, (key, peer, label, color) in enumerate(series):
            ys, xs = [], []
            for j, row in enumerate(rows):
                value = by_row.get(row, {}).get(f"{key}_ratio_{peer}")
                if value:
                    ys.append(j - 0.4 + (i + 0.5) * height)
                    xs.append(value)
            ax.barh(ys, xs, height=height, color=color, label=label, edgecolor="white", linewidth=0.3)
            for y, x in zip(ys, xs):
                ax.text(x, y, f" {x:.2f}", va="center", fontsize=5)
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xlim(min(min(ratios), 1.0) / 1.5, max(max(ratios), 1.0) * 1.6)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_title(f"{threads} thread{'s' * (threads > 1)}", fontsize=9)
        ax.set_xlabel("bnns-py speed / peer speed (>1: bnns-py faster)", fontsize=8)
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0][0].set_yticks(range(len(rows)))
    axes[0][0].set_yticklabels([f"{name} N={n}" for name, n in rows], fontsize=7)
    axes[0][0].invert_yaxis()
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(series))
    loaded = any(disturbed(e.get("other_load_pct")) for r in results.values() for e in r["summary"])
    fig.suptitle(f"bnns-py {meta['bnns_py']} ({meta['backend'].get('backend')}) vs torch {meta['torch']}, "
                 f"onnxruntime {meta['onnxruntime']}; median of {meta['runs']} sweeps"
                 + ("\n(WARNING: other processes were running: disturbed numbers)" if loaded else ""), fontsize=9)
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_thread_count(threads, chosen, probe):
    """Every sweep at ``threads`` threads: the summary per case, the totals, the raw sweeps."""
    if torch is not None:
        torch.set_num_threads(threads)
    before = cpu_snapshot()
    peak_info = measure_peak(threads, probe)
    peak_info["other_load_pct"] = other_load(before, cpu_snapshot())
    print_peak(peak_info, threads)
    peak = peak_info["used_gflops"]
    runs = []
    for run in range(ARGS.runs):
        t_run = time.perf_counter()
        rows = []
        for c in chosen:
            row = measure_case(c, threads)
            rows.append(row)
            g = flops(c) / 1e9
            msg = f"  {threads}t run {run + 1}/{ARGS.runs} {c['name']:28s} N={c['N']} fwd"
            for key, label in (("bnns_fwd_s", "bnns"), ("bnns_fwd_copied_s", "bnns copied")):
                msg += f" {label} {g / row[key]:6.1f}" if key in row else ""
            for peer in ACTIVE_PEERS:
                msg += f" {peer} {g / row[f'{peer}_fwd_s']:6.1f}"
            if BACKWARD:
                msg += f" | f+b bnns {3 * g / row['bnns_fwd_bwd_s']:6.1f}"
                msg += f" torch {3 * g / row['torch_fwd_bwd_s']:6.1f}" if row.get("torch_fwd_bwd_s") else ""
            if row.get("bnns_fwd_1t_s"):
                msg += (f" | 1thr {g / row['bnns_fwd_1t_s']:6.1f} x{row['bnns_fwd_1t_s'] / row['bnns_fwd_nt_s']:.2f}"
                        f" ceil x{threads * row['bnns_fwd_1t_s'] / row['bnns_fwd_concurrent_1t_s']:.2f}")
            load = row.get("other_load_pct")
            print(msg + " GFLOP/s" + (f" | other load {load:.0f}%" if load is not None else "")
                  + (" (disturbed)" if disturbed(load) else ""), flush=True)
        runs.append(rows)
        print(f"  run {run + 1} took {time.perf_counter() - t_run:.0f} s", flush=True)
    summary = [summarize(c, [r[i] for r in runs], peak, threads) for i, c in enumerate(chosen)]
    print_table(summary, threads)
    tiny = tiny_overhead(threads) if any(c["name"].startswith("tiny") for c in chosen) else None
    if tiny:
        print(f"\ntiny_3x3_8-8_8 per call, {threads} thread{'s' * (threads > 1)}: "
              + "  ".join(f"{k[:-3]} {v:.1f} us" for k, v in tiny.items()))
    totals = totals_for(summary, threads, probe)
    loads = [r.get("other_load_pct") for rows in runs for r in rows]
    totals["disturbed_measurements"] = sum(disturbed(v) for v in loads)
    print_totals(totals, threads)
    if totals["disturbed_measurements"]:
        print(f"WARNING: {totals['disturbed_measurements']} of {len(loads)} case sweeps ran while other processes "
              f"used more than {DISTURBED_PCT:.0f}% of the CPUs; the ratios are unreliable (rerun on a quiet machine)")
    return {"peak": peak_info, "peak_gflops": peak, "totals": totals, "summary": summary, "tiny_overhead_us": tiny,
            "runs": [[dict(name=c["name"], N=c["N"], **r) for c, r in zip(chosen, rows)] for rows in runs]}


def main():
    info = bnns_py.backend_info()
    print(f"bnns-py {bnns_py.__version__} {info['backend']} ({info.get('blas', '')})  torch "
          f"{torch.__version__ if torch else 'absent'}  onnxruntime "
          f"{ONNX.__version__ + (' (spinning ' + ARGS.onnx_spinning + ')') if ONNX else 'absent'}  numpy "
          f"{np.__version__}  threads {' then '.join(map(str, THREADS))} (every library)", flush=True)
    print(f"malloc: {MALLOC_TEXT}  {platform.platform()}  {platform.processor() or platform.machine()}", flush=True)
    probe = fma_probe(set(THREADS) | {1})
    chosen = cases()
    results = {threads: run_thread_count(threads, chosen, probe) for threads in THREADS}
    if ACTIVE_PEERS:
        print_overview(results)
    else:
        print("\nno peer to compare with (pip install 'bnns-py[bench]' for PyTorch and ONNX Runtime)")
    print(IDLE.report())
    elapsed = time.perf_counter() - T0
    print(f"total time {elapsed:.0f} s")

    meta = {"bnns_py": bnns_py.__version__, "backend": info, "torch": torch.__version__ if torch else None,
            "onnxruntime": ONNX.__version__ if ONNX else None, "onnx_spinning": ARGS.onnx_spinning,
            "numpy": np.__version__, "platform": platform.platform(), "python": platform.python_version(),
            "threads": THREADS, "thread_pinning": {"torch.set_num_threads": "each thread count",
                                                   "ONNX Runtime intra_op_num_threads": "each thread count",
                                                   "bnns FilterParameters.n_threads": "each thread count",
                                                   "OMP/OPENBLAS/MKL_NUM_THREADS": max(THREADS)},
            "idle_wait": dict(IDLE.options, waits=IDLE.calls, unsettled=IDLE.unsettled, seconds=IDLE.seconds),
            "malloc": MALLOC_TEXT, "malloc_env": MALLOC, "runs": ARGS.runs, "quick": ARGS.quick,
            "backward": BACKWARD, "timing": TIMING,
            "flops_note": "forward = 2*N*Cout*Ho*Wo*Cin/groups*k*k; forward+gradients counted as 3x forward",
            "elapsed_s": elapsed, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.makedirs(os.path.dirname(os.path.abspath(ARGS.out)), exist_ok=True)
    with open(ARGS.out, "w") as handle:
        json.dump({"meta": meta, "by_threads": {str(t): r for t, r in results.items()}}, handle, indent=1)
    print(f"wrote {ARGS.out}")
    png = plot(results, meta, ARGS.png or os.path.splitext(ARGS.out)[0] + ".png")
    if png:
        print(f"wrote {png}")
        if ARGS.update_docs:
            docs = os.path.join(REPO, "docs")
            os.makedirs(docs, exist_ok=True)
            shutil.copyfile(png, os.path.join(docs, "bench_conv.png"))
            print(f"wrote {os.path.join(docs, 'bench_conv.png')}")


if __name__ == "__main__":
    main()
