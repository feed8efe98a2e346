"""A test run's exit status is its tests' outcome, not how the interpreter tears down."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.parametrize("normal_exit, crashed", [("0", False), ("1", True)])
def test_a_crash_at_interpreter_exit_does_not_fail_a_passed_run(normal_exit, crashed):
    env = {**os.environ, "SGCORE_TEST_NORMAL_EXIT": normal_exit}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(HERE / "_exit_probe.py")],
                          cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=120)
    assert "1 passed" in done.stdout, done.stdout + done.stderr
    if crashed:  # the control: without the hook the same run dies at exit
        assert done.returncode != 0
        assert "Fatal Python error" in done.stderr  # faulthandler named it
    else:
        assert done.returncode == 0, done.stdout + done.stderr


def test_a_usage_error_keeps_its_message():
    """pytest prints a usage error after the exit hook runs: the hook must leave such a run alone."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/no_such_file.py"],
                          cwd=HERE.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR
    assert "file or directory not found: tests/no_such_file.py" in done.stdout + done.stderr
