"""The command line (python -m bnns_py) and the conformance probes behind `verify`."""
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import bnns_py
from bnns_py import cli, probes
from bnns_py.backend import Backend, bnns_symbols, layer_api_notice
from bnns_py.cli import main
from bnns_py.probes import run_probes

ON_MAC = sys.platform == "darwin"
# the portable library as the default backend (also in the Accelerate-mode stage, which names its own library)
PORTABLE_DEFAULT = {"BNNS_PY_BACKEND": "portable", "BNNS_PY_LIBRARY": None}


def _pending_portable_changes(backend):
    """Probes whose decision the portable C library follows only once the layers branch lands
    (apply_backward without UseClientPtr, which BNNS accepted on hardware): while the library
    still refuses, those probes differ; afterwards this is empty and the tests below tighten."""
    return sorted(p.name for p in run_probes(backend)
                  if p.name.startswith("backward_without_client_ptr_") and p.observed == "backward returned -1")


def _run_cli(*args, env=None, cwd=None):
    """``python -m bnns_py ARGS`` with ``env`` added to the environment (a None value unsets)."""
    environment = dict(os.environ, **(env or {}))
    environment = {key: value for key, value in environment.items() if value is not None}
    # outside the checkout, so the installed package is the one imported
    return subprocess.run([sys.executable, "-m", "bnns_py", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=environment)


def _assert_one_line_error(done):
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnns-py: error: "), done.stderr


# ---- info ------------------------------------------------------------------------------------------

def test_info_names_the_backend_library_and_symbols(capsys, backend):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert backend.name in out and backend.library_path in out and bnns_py.__version__ in out
    for name in bnns_symbols():
        assert f"{name} " in out and "MISSING" not in out


def test_info_reports_a_missing_symbol_and_exits_non_zero(capsys, monkeypatch, backend):
    status = dict.fromkeys(bnns_symbols(), True)
    status["BNNSFilterApplyBackwardBatch"] = False
    monkeypatch.setattr(Backend, "symbol_status", lambda self: status)
    assert main(["info"]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "BNNSFilterApplyBackwardBatch" in line)
    assert "MISSING" in line
    assert "1 BNNS function(s) missing" in out and "BNNS_PY_BACKEND=portable" in out


def test_symbol_list_is_every_prototype_of_the_cdefs_and_each_resolves_here(backend):
    names = bnns_symbols()
    assert len(names) == 9 and len(set(names)) == 9
    assert {"BNNSFilterCreateLayerConvolution", "BNNSFilterApplyBackwardBatch", "BNNSFilterDestroy",
            "BNNSFilterCreateConvolutionLayer"} <= set(names)
    assert not any(name in ("BNNSAlloc", "BNNSFree", "BNNSFilter") for name in names)  # typedefs, not functions
    assert backend.symbol_status() == dict.fromkeys(names, True)


@pytest.mark.parametrize("version,expected", [
    ("15.7.7", "deprecated"), ("26.0", "deprecated"), ("27.1", "deprecated"),
    ("14.6", None), ("11.0", None), ("", None), (None, None), ("10.15.7", "predates")])
def test_layer_api_notice_by_macos_version(version, expected):
    notice = layer_api_notice(version)
    if expected is None:
        assert notice is None
    else:
        assert expected in notice and "BNNS_PY_BACKEND=portable" in notice and version in notice


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"bnns-py {bnns_py.__version__}"


# ---- user errors: one line on stderr, non-zero exit, no traceback -----------------------------------

def test_unknown_backend_in_the_environment_is_one_line(tmp_path):
    done = _run_cli("info", env={"BNNS_PY_BACKEND": "foo"}, cwd=tmp_path)
    _assert_one_line_error(done)
    assert "BNNS_PY_BACKEND='foo'" in done.stderr


def test_a_library_that_does_not_load_is_one_line(tmp_path):
    done = _run_cli("verify", env={"BNNS_PY_LIBRARY": str(tmp_path / "missing.so")}, cwd=tmp_path)
    _assert_one_line_error(done)
    assert "missing.so (no such file)" in done.stderr


@pytest.mark.skipif(ON_MAC, reason="Accelerate loads on macOS")
def test_against_accelerate_off_macos_is_one_line(tmp_path):
    done = _run_cli("verify", "--against", "accelerate", env=PORTABLE_DEFAULT, cwd=tmp_path)
    _assert_one_line_error(done)
    assert "Accelerate exists only on macOS" in done.stderr
    assert done.stdout == ""  # refused before any case ran


@pytest.mark.skipif(ON_MAC, reason="Accelerate loads on macOS")
def test_info_on_a_backend_that_fails_to_load_exits_non_zero(tmp_path):
    done = _run_cli("--backend", "accelerate", "info", env=PORTABLE_DEFAULT, cwd=tmp_path)
    _assert_one_line_error(done)
    assert bnns_py.__version__ in done.stdout  # the facts that do not need a backend are still printed


def test_a_macos_without_the_layer_api_points_to_the_portable_backend(monkeypatch):
    from bnns_py.errors import LibraryNotFoundError
    monkeypatch.setattr(sys, "platform", "darwin")
    why = ("function/symbol 'BNNSFilterCreateLayerConvolution' not found in library '/System/Library/Frameworks/"
           "Accelerate.framework/Accelerate': dlsym(0x1, BNNSFilterCreateLayerConvolution): symbol not found")
    line = cli._library_error_line(LibraryNotFoundError("accelerate", [("/System/Library/A", why)]))
    assert "\n" not in line and "does not export the BNNS layer API" in line and "BNNS_PY_BACKEND=portable" in line


def test_against_the_backend_under_test_is_refused(capsys, backend):
    assert main(["verify", "--against", backend.name]) == 2
    assert capsys.readouterr().err.strip() == "bnns-py: error: --against names the backend under test"


def test_unwritable_output_file_is_one_line(capsys, tmp_path, no_filter_leaks):
    assert main(["verify", "--json", str(tmp_path / "no" / "such" / "dir.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write" in err[0]


def test_a_closed_pipe_stops_verify_quietly(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "bnns_py", "verify"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert process.stdout.readline().startswith("verifying the ")  # printed before any case runs
    process.stdout.close()  # as `| head -1` does
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 141
    assert stderr == ""


# ---- verify -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def verify_run(tmp_path_factory):
    """One `verify --json - --report FILE` run shared by the tests that read its outputs:
    (exit status, stdout, stderr, report text)."""
    report = tmp_path_factory.mktemp("verify") / "report.md"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(["verify", "--json", "-", "--report", str(report)])
    return status, stdout.getvalue(), stderr.getvalue(), report.read_text()


def test_verify_passes_and_writes_json(verify_run, backend):
    status, out, err, _ = verify_run
    pending = _pending_portable_changes(backend) if backend.is_portable else []
    assert status == (1 if pending else 0)
    assert " 0 failed" in err and "symbols: all 9 BNNS functions bnns-py calls resolve" in err
    assert "float32 only" not in err and "refused" not in err  # nothing false about the data types
    data = json.loads(out)  # nothing but the JSON on stdout
    assert data["backend"]["backend"] == backend.name and data["system"]["library"] == backend.library_path
    assert data["summary"] in err
    names = {row["case"] for row in data["cases"]}
    assert {"standard", "grouped", "depthwise", "dilated", "transposed", "backward_standard_dw", "fully_connected",
            "legacy_convolution", "backward_fully_connected_dw", "backward_transposed_dx",
            "backward_accumulate_dw", "dtype_float16", "dtype_bfloat16", "dtype_int8_input_and_weights"} <= names
    against = {row["against"] for row in data["cases"]}
    assert against == ({"reference", "torch"} if importlib.util.find_spec("torch") else {"reference"})
    assert all(row["pass"] is not False for row in data["cases"])
    if backend.is_portable:  # it computes every one of these types
        assert all(row["pass"] is True for row in data["cases"])
    assert {p["name"] for p in data["probes"]} >= {"transposed_weight_layout", "padding_precedence", "image_strides",
                                                    "backward_without_client_ptr_convolution",
                                                    "backward_without_client_ptr_fully_connected"}
    assert data["symbols"] == dict.fromkeys(bnns_symbols(), True)


def test_verify_writes_json_to_a_file(tmp_path, capsys, monkeypatch, no_filter_leaks):
    monkeypatch.setattr(cli, "_cases", list)  # no forward cases: this test is about the file
    path = tmp_path / "v.json"
    main(["verify", "--json", str(path)])
    data = json.loads(path.read_text())
    assert "legacy_convolution" in {row["case"] for row in data["cases"]}
    assert "verifying the" in capsys.readouterr().out


def test_verify_data_type_cases_are_real_comparisons(backend, no_filter_leaks):
    rows = {row["case"]: row for row in cli._dtype_rows(backend.name)}
    assert set(rows) == {"dtype_float16", "dtype_bfloat16", "dtype_int8_input_and_weights"}
    if not backend.is_portable:
        pytest.skip("Accelerate may refuse a type; the portable backend computes all three")
    for row in rows.values():
        assert row["pass"] is True and 0 < row["max_abs_error"] <= row["tolerance"]
    # rounded to float16 / bfloat16, the errors are of those types' size, not float32's
    assert rows["dtype_bfloat16"]["max_rel_error"] > 1e-3 > rows["dtype_float16"]["max_rel_error"] > 1e-5


def test_verify_report_markdown(verify_run, backend):
    text = verify_run[3]
    assert text.startswith("# bnns-py verify report")
    for fact in ("| macOS |", "| chip |", "| Python |", f"`{backend.library_path}`", "## Conformance probes",
                 "## Failed cases (0)", "Every BNNS function bnns-py uses resolves."):
        assert fact in text, fact
    for probe in run_probes(backend):
        line = next(line for line in text.splitlines() if line.startswith(f"| `{probe.name}` |"))
        assert probe.observed in line and line.endswith("| yes |" if probe.agrees else "| **no** |")
    assert "| `dtype_bfloat16` | reference |" in text


def test_a_missing_symbol_and_a_case_that_raises_are_reported(tmp_path, capsys, monkeypatch, no_filter_leaks):
    status = dict.fromkeys(bnns_symbols(), True)
    status["BNNSFilterCreateFullyConnectedLayer"] = False
    monkeypatch.setattr(Backend, "symbol_status", lambda self: status)

    def broken(backend):
        raise RuntimeError("legacy layer exploded\nsecond line")
    monkeypatch.setattr(cli, "_legacy_row", broken)
    report = tmp_path / "report.md"
    assert main(["verify", "--report", str(report)]) == 1
    out = capsys.readouterr().out
    assert "symbol BNNSFilterCreateFullyConnectedLayer MISSING" in out and "symbols: all" not in out
    assert "legacy_convolution" in out and "RuntimeError: legacy layer exploded second line" in out
    assert " 1 failed" in out
    text = report.read_text()
    assert "## Failed cases (1)" in text and "Missing: `BNNSFilterCreateFullyConnectedLayer`." in text
    assert "- `legacy_convolution` against -: RuntimeError: legacy layer exploded second line" in text


def test_a_wrong_result_is_reported_with_its_worst_element(tmp_path):
    row = cli._row("made_up", np.array([1.0, 2.5]), np.array([1.0, 2.0]), "reference")
    assert row["pass"] is False and row["max_abs_error"] == 0.5
    assert "1 of 2 values outside the tolerance; worst [1]: actual 2.5, expected 2" in row["error"]


# ---- probes ----------------------------------------------------------------------------------------

def test_portable_backend_follows_every_documented_decision(backend, no_filter_leaks):
    if not backend.is_portable:
        pytest.skip("on Accelerate the probes report what native BNNS does")
    results = run_probes(backend)
    assert len(results) >= 17
    assert {"float16_accumulation", "image_strides"} <= {p.name for p in results}
    assert [p.name for p in results if not p.agrees] == _pending_portable_changes(backend)


def test_backward_probe_checks_the_gradients(backend, no_filter_leaks):
    # With UseClientPtr every backend computes gradients: the probe must recognise them as correct.
    results = probes._backward_without_client_ptr_probes(backend, np.random.default_rng(1), flags=0x1)
    assert [(p.name, p.agrees) for p in results] == [("backward_without_client_ptr_convolution", True),
                                                     ("backward_without_client_ptr_fully_connected", True)]


class _StridesDropped:
    """A BNNS library that ignores image descriptor strides (of the input, the output or both)."""

    def __init__(self, lib, which):
        self._lib, self._which = lib, which

    def __getattr__(self, name):
        return getattr(self._lib, name)

    def BNNSFilterCreateLayerConvolution(self, params, filter_params):
        for which in self._which:
            getattr(params, which).stride[0:3] = [0, 0, 0]
        return self._lib.BNNSFilterCreateLayerConvolution(params, filter_params)


@pytest.mark.parametrize("which,observed", [
    ((), "strides followed"),
    (("i_desc", "o_desc"), "strides ignored (both read as packed)"),
    (("o_desc",), "input strides followed, output written packed"),
    (("i_desc",), "input read packed, output strides followed")])
def test_image_strides_probe_tells_the_interpretations_apart(backend, which, observed, no_filter_leaks):
    if not backend.is_portable:
        pytest.skip("simulated on the portable library, which follows image strides")
    fake = type("FakeBackend", (), {"lib": _StridesDropped(backend.lib, which)})()
    result = probes._image_strides_probe(fake, np.random.default_rng(2))
    assert result.observed == observed and result.agrees == (observed == "strides followed")


def test_a_probe_that_raises_is_reported_and_the_rest_still_run(monkeypatch, backend, no_filter_leaks):
    def _exploding_probe(backend, rng):
        raise AttributeError("function/symbol 'BNNSFilterApplyBatch' not found in library")
    names = [p.name for p in run_probes(backend)]
    monkeypatch.setattr(probes, "PROBES", (_exploding_probe,) + probes.PROBES)
    results = run_probes(backend)
    assert results[0].name == "exploding" and not results[0].agrees
    assert results[0].observed == "raised AttributeError: function/symbol 'BNNSFilterApplyBatch' not found in library"
    assert [p.name for p in results[1:]] == names


def test_module_entry_point_runs(tmp_path):
    done = _run_cli("info", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "backend" in done.stdout


def test_bench_prints_a_throughput_table(capsys, no_filter_leaks):
    from bnns_py.bench import quick_cases
    assert main(["bench"]) == 0
    out = capsys.readouterr().out
    for case in quick_cases():
        line = next(l for l in out.splitlines() if case["name"] in l)
        assert float(line.split()[2]) > 0  # GFLOP/s of bnns-py


def test_a_library_without_filter_destroy_is_not_loaded_as_a_backend(tmp_path, backend):
    # A library lacking a function every filter needs is refused at load, with the reason, not
    # accepted and then failing on the first layer.
    source = tmp_path / "fake.c"
    source.write_text("void *BNNSFilterCreateLayerConvolution(void *p, void *f) { return 0; }\n")
    library = tmp_path / "libfake.so"
    if subprocess.run(["cc", "-shared", "-fPIC", str(source), "-o", str(library)], capture_output=True).returncode:
        pytest.skip("no C compiler")
    done = _run_cli("info", env={"BNNS_PY_BACKEND": "accelerate", "BNNS_PY_LIBRARY": str(library)}, cwd=tmp_path)
    _assert_one_line_error(done)
    assert "libfake.so (" in done.stderr and "symbol" in done.stderr and "only on macOS" not in done.stderr
