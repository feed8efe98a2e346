"""Exceptions shared by every layer of sgcore."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A user-supplied setting is invalid; the message names it and the fix."""


class InputError(ValueError):
    """An input dataset or URL cannot be used; the message carries the URL."""


class ModelError(ConfigError):
    """The model fails on its input in a way a retry cannot fix (shapes, dtypes).

    The message is the model's own error, with the input it was given.
    """


class Stopped(KeyboardInterrupt):
    """The job was asked to stop (SIGTERM, as schedulers, ``ray job stop`` and Kubernetes send).

    A ``KeyboardInterrupt``, so that it unwinds like Ctrl-C: no ``except Exception``
    swallows it on the way out.
    """

    # The last stop signal this process received: Ray may turn the end of its own
    # processes (sent the same signal, as a process group is) into a plain
    # KeyboardInterrupt, which still means this stop.
    received: int | None = None

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_on_sigterm() -> Any:
    """SIGTERM stops the work like Ctrl-C (raises :class:`Stopped`); returns the old handler.

    The job and the audit set it, and again after Ray starts, which installs its own (that
    one aborts with a C++ stack dump). Only the main thread may set handlers; elsewhere this
    does nothing and returns None.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, frame: Any) -> None:
        Stopped.received = signum
        raise Stopped(signum)

    return signal.signal(signal.SIGTERM, stop)
