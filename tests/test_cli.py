"""The command line (python -m bnns_py) and the conformance probes behind `verify`."""
import importlib.util
import json
import subprocess
import sys

import pytest

import bnns_py
from bnns_py.cli import main
from bnns_py.probes import run_probes


def test_info_names_the_backend_and_library(capsys, backend):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert backend.name in out and backend.library_path in out and bnns_py.__version__ in out


def test_verify_passes_and_writes_json(tmp_path, capsys, no_filter_leaks):
    report = tmp_path / "verify.json"
    assert main(["verify", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out
    data = json.loads(report.read_text())
    assert data["backend"]["backend"] == bnns_py.get_backend().name
    names = {row["case"] for row in data["cases"]}
    assert {"standard", "grouped", "depthwise", "dilated", "transposed", "backward_standard_dw", "fully_connected",
            "legacy_convolution", "backward_fully_connected_dw", "backward_transposed_dx",
            "backward_accumulate_dw"} <= names
    against = {row["against"] for row in data["cases"]}
    assert against == ({"reference", "torch"} if importlib.util.find_spec("torch") else {"reference"})
    assert all(row["pass"] for row in data["cases"])
    assert {p["name"] for p in data["probes"]} >= {"transposed_weight_layout", "padding_precedence"}


def test_portable_backend_follows_every_documented_decision(backend, no_filter_leaks):
    if not backend.is_portable:
        pytest.skip("on Accelerate the probes report what native BNNS does")
    results = run_probes(backend)
    assert len(results) >= 10
    assert "float16_accumulation" in {p.name for p in results}
    assert [p.name for p in results if not p.agrees] == []


def test_module_entry_point_runs(tmp_path):
    # run outside the checkout so the installed package is the one imported
    done = subprocess.run([sys.executable, "-m", "bnns_py", "info"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "backend" in done.stdout


def test_bench_prints_a_throughput_table(capsys, no_filter_leaks):
    from bnns_py.bench import quick_cases
    assert main(["bench"]) == 0
    out = capsys.readouterr().out
    for case in quick_cases():
        line = next(l for l in out.splitlines() if case["name"] in l)
        assert float(line.split()[2]) > 0  # GFLOP/s of bnns-py
