"""Implementations that misbehave on one spec only: the one whose first logit is exactly
``TRIGGER`` (tests/test_isolation.py runs each between two good specs). Otherwise each is
the correct NumPy softmax cross-entropy of ``impls.correct``."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from impls import correct

TRIGGER = 13.0


def _triggered(logits):  # type: ignore[no-untyped-def]
    first = np.asarray(logits).reshape(-1)[0]
    return not np.iscomplexobj(first) and float(first) == TRIGGER


def aborts(logits, **options):  # type: ignore[no-untyped-def]
    if _triggered(logits):
        print("about to abort", file=sys.stderr, flush=True)
        os.abort()
    return correct(logits, **options)


def segfaults(logits, **options):  # type: ignore[no-untyped-def]
    if _triggered(logits):
        os.kill(os.getpid(), signal.SIGSEGV)
    return correct(logits, **options)


def exits(logits, **options):  # type: ignore[no-untyped-def]
    if _triggered(logits):
        sys.exit(3)
    return correct(logits, **options)


def exits_hard(logits, **options):  # type: ignore[no-untyped-def]
    if _triggered(logits):
        print("leaving", file=sys.stderr, flush=True)
        os._exit(5)  # no exception, no clean-up: the process is gone
    return correct(logits, **options)


def loops(logits, **options):  # type: ignore[no-untyped-def]
    while _triggered(logits):
        pass
    return correct(logits, **options)


def allocates(logits, **options):  # type: ignore[no-untyped-def]
    if _triggered(logits):
        hoard = np.ones(50 * 2**30 // 8)  # 50 GiB
        hoard[::4096] = 2.0
    return correct(logits, **options)


def prints(logits, **options):  # type: ignore[no-untyped-def]
    if _triggered(logits):
        for i in range(10_000):
            print(f"debug line {i}: {{not json")
    return correct(logits, **options)


def prints_later(logits, **options):  # type: ignore[no-untyped-def]
    """Prints from a background thread, after its call has returned (outside the guard)."""
    if _triggered(logits):

        def chatter() -> None:
            for i in range(20):
                time.sleep(0.01)
                print(f"background line {i}: {{not json", flush=True)

        threading.Thread(target=chatter, daemon=True).start()
    return correct(logits, **options)


def sets_errstate(logits, **options):  # type: ignore[no-untyped-def]
    if _triggered(logits):
        np.seterr(all="ignore")
    return correct(logits, **options)


def spawns_and_hangs(logits, **options):  # type: ignore[no-untyped-def]
    if _triggered(logits):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"child {child.pid}", flush=True)
        time.sleep(600)
    return correct(logits, **options)
