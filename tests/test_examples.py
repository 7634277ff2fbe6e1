"""The examples' command lines: bad arguments are refused in one line, short runs report sensibly."""
import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _train(*args):
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, "train_tiny_cnn.py"), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_train_tiny_cnn_refuses_fewer_than_one_step(steps):
    done = _train("--steps", steps)
    assert done.returncode == 2
    assert f"argument --steps: must be an integer >= 1, got {int(steps)}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("steps, summary", [
    ("1", "one step: loss "),
    ("3", "mean loss of the first 1 steps "),
])
def test_train_tiny_cnn_short_runs_report_without_judging(steps, summary):
    done = _train("--steps", steps, "--batch", "4")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum(line.startswith("step ") for line in lines) == int(steps)
    assert any(line.startswith(summary) for line in lines)
    assert "nan" not in done.stdout
