"""Process-wide concerns shared by the collector, the UI and the command line.

- `gc_held()`: the cyclic GC off for one tick's burst of short-lived objects.
- `on_exit_signals()`: the one SIGTERM/SIGHUP installer (cli, app, lab, benchmarks).
- The forced exit: when an exit cannot unwind (Textual blocked on a terminal that is gone),
  a watchdog thread runs the registered clean-ups (detach probes, remove lab netns) and
  leaves with os._exit. Normal exits unwind and never reach it.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_cleanups: list[Callable[[], object]] = []
_deadline = float("inf")
_lock = threading.Lock()


@contextmanager
def gc_held() -> Iterator[None]:
    was_enabled = gc.isenabled()
    if was_enabled:
        gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # kill, and the ssh session dropping


def on_exit_signals(action: Callable[[int], object] | None = None, *, grace: float | None = None) -> bool:
    """SIGTERM and SIGHUP end the process with exit code 128+signal.

    action(code) runs in the main thread when one arrives; without one the signal raises
    SystemExit(code) there, so every finally block (BPF detach, netns removal) and atexit runs.
    grace: also arm the forced exit (`arm_force_exit`) for when unwinding blocks.
    Returns False (nothing installed) when called off the main thread."""

    def handler(signum: int, _frame: object) -> None:
        code = 128 + signum
        if grace is not None:
            arm_force_exit(code, grace)
        if action is None:
            raise SystemExit(code)
        action(code)

    try:
        for sig in EXIT_SIGNALS:
            signal.signal(sig, handler)
    except ValueError:  # not the main thread
        return False
    return True


def on_forced_exit(fn: Callable[[], object]) -> None:
    """Run fn (idempotent, thread-safe) before a forced exit."""
    with _lock:
        if fn not in _cleanups:
            _cleanups.append(fn)


def arm_force_exit(code: int, delay: float) -> None:
    """Leave with `code` after `delay` s unless the process has ended by then. Arming again
    with an earlier deadline brings it forward; a later one changes nothing."""
    global _deadline
    with _lock:
        deadline = time.monotonic() + delay
        if deadline >= _deadline:
            return
        _deadline = deadline
    timer = threading.Timer(delay, _force_exit, args=(code,))
    timer.daemon = True
    timer.start()


def _force_exit(code: int) -> None:
    try:
        for fn in list(_cleanups):
            try:
                fn()
            except Exception:
                pass
        from .lab.netns import cleanup_all

        cleanup_all()
        sys.stdout.flush()
    finally:
        os._exit(code)
