"""Hypothesis property tests (tests/property_worker.py), run in a worker process: a crash in the
native library fails this test with the signal, instead of killing pytest."""
import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("hypothesis")

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "property_worker.py")


def _worker_env():
    # The worker imports the bnns_py this test suite tests (the checkout it lives in), not
    # whichever copy is installed in the environment.
    import bnns_py
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(bnns_py.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    return env


def test_properties_hold_in_a_worker_process(tmp_path):
    done = subprocess.run([sys.executable, WORKER, "--examples", "150"], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path, env=_worker_env())
    if done.returncode < 0:
        pytest.fail(f"the worker crashed with {signal.Signals(-done.returncode).name}\n{done.stdout}\n{done.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": ok") == 3, done.stdout
    print(done.stdout)


def test_a_crash_in_the_worker_is_reported_not_fatal(tmp_path):
    # The mechanism itself: a worker that dies by a signal is seen as a failure, pytest survives.
    done = subprocess.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"],
                          capture_output=True, timeout=60, cwd=tmp_path)
    assert done.returncode < 0, done.returncode  # SIGSEGV, or SIGABRT when a sanitizer catches it
