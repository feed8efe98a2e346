"""Run only by tests/test_exit.py: a test that passes in a process that crashes at exit."""

import atexit
import ctypes


def test_passes_then_the_interpreter_crashes_at_exit():
    # What Ray's or torch's threads did to CI: a segfault during finalization.
    atexit.register(lambda: ctypes.string_at(0))
