"""Every call into an implementation under test goes through :func:`calling`.

It does three things around the outermost call (nested calls only rename what is running):

* **What is running.** A listener (set by the isolated worker, ``gradcheck_cli.isolation``) is
  told when a call starts, what it is (``call``, ``self-consistency probe``, ``forward``,
  ``backward``, ...) and when it ends, so the parent can enforce ``--timeout`` per call and
  name the call it killed.
* **Process-wide state.** NumPy's error state, torch's default dtype and grad mode, JAX's
  ``jax_enable_x64``, the warnings filters, and the global random generators (NumPy's legacy
  one, Python's ``random``, torch's) are read before and compared after; a change is restored
  and recorded (:func:`drain_changes`) so the spec that caused it reports it and later specs
  are not affected. A draw from a global random generator is noted, not failed, and the
  generators are put back only when the spec ends (:func:`drain_changes`): within a spec the
  implementation sees its generator advance, so a nondeterministic kernel still shows as one.
  torch and JAX are looked at only when already imported.
* **Output.** With :data:`CAPTURE` on (the in-process default), what the implementation
  prints is captured: Python's ``sys.stdout`` and ``sys.stderr``, and file descriptor 1 (C
  code's stdout), so a report on stdout (``--format json``) stays valid. File descriptor 2 is
  left alone in-process (the progress bar writes there); the isolated worker captures both of
  its descriptors whole.

No framework imports here: the state of a framework that is not imported cannot have changed.
"""

from __future__ import annotations

import io
import os
import random
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from gradcheck_cli.model import Captured

#: Told ``("start", label)`` when an outermost call starts, ``("label", "outer › inner")``
#: when a nested one starts or ends, and ``("end", label)`` when the outermost ends.
Listener = Callable[[str, str], None]

listener: Listener | None = None
"""Set by the isolated worker; None in-process."""

CAPTURE = True
"""Capture the implementation's output around each call (the isolated worker turns it off:
its descriptors go to files the parent reads)."""

#: Kept of a spec's captured output: the first and the last lines, with a count of the rest.
HEAD_LINES = 20
TAIL_LINES = 30
#: Longest line kept (longer lines are cut, with a mark).
LINE_CHARS = 400

MEMORY_LIMIT: int | None = None
"""The isolated worker's address-space limit (bytes), for :func:`memory_hint`."""

_stack: list[str] = []
_changes: list[tuple[bool, str, str]] = []
_spec_rngs: dict[str, Any] | None = None
"""The global generators' states when the spec's first call started (put back by
:func:`drain_changes`)."""
_output: list[str] = []
_fd_file: Any = None


class ExitCalled(Exception):
    """The implementation called ``sys.exit`` (raised as an ordinary error, so that the
    implementation's call fails, not the run)."""


def truncate(text: str) -> Captured | None:
    """``text`` as :class:`Captured`: its first :data:`HEAD_LINES` and last :data:`TAIL_LINES`
    lines, each cut to :data:`LINE_CHARS`, and a line counting the rest; None when empty."""
    lines = text.splitlines()
    if len(lines) <= HEAD_LINES + TAIL_LINES:
        return summarise(lines, [], len(lines))
    return summarise(lines[:HEAD_LINES], lines[-TAIL_LINES:], len(lines))


def summarise(head: list[str], tail: list[str], total: int) -> Captured | None:
    """:class:`Captured` of ``total`` lines of which ``head`` are the first and ``tail`` the
    last (the rest dropped and counted); None when there are none."""
    if total == 0:
        return None

    def cut(ln: str) -> str:
        return ln if len(ln) <= LINE_CHARS else ln[:LINE_CHARS] + " [...]"

    dropped = max(0, total - len(head) - len(tail))
    kept = [cut(ln) for ln in head]
    if dropped:
        kept.append(f"[... {dropped:,} lines dropped ...]")
    kept += [cut(ln) for ln in tail]
    return Captured("\n".join(kept), total, dropped)


def memory_hint(exc: BaseException) -> str:
    """`` (over the worker's --max-memory of 23.4 GiB)`` for an allocation failure under a
    limit, else empty."""
    text = str(exc)
    failed = isinstance(exc, MemoryError) or "can't allocate memory" in text
    if MEMORY_LIMIT is None or not failed:
        return ""
    return f" (over the worker's --max-memory of {MEMORY_LIMIT / 2**30:.1f} GiB)"


def drain_changes() -> list[tuple[bool, str]]:
    """The state changes recorded since the last drain (call it when a spec ends), as (fails
    the spec, sentence), one sentence per kind of change naming the calls that made it. Each
    failing change was restored after its call; the random generators are put back now."""
    global _spec_rngs
    if _spec_rngs is not None:
        _set_rngs(_spec_rngs)
        _spec_rngs = None
    calls: dict[tuple[bool, str], list[str]] = {}
    for fails, what, label in _changes:
        calls.setdefault((fails, what), []).append(label)
    _changes.clear()
    out = []
    for (fails, what), labels in calls.items():
        named = ", ".join(
            label if (n := labels.count(label)) == 1 else f"{label} ×{n}"
            for label in dict.fromkeys(labels)
        )
        then = "; restored" if fails else ""
        if what.startswith("drew from"):
            then = "; restored when the spec ended"
        out.append((fails, f"the implementation {what} (in its {named}){then}"))
    return out


def drain_output() -> str:
    """What implementations printed (captured in-process) since the last drain."""
    out = "".join(_output)
    _output.clear()
    return out


@contextmanager
def calling(label: str) -> Iterator[None]:
    """Guard one call into the implementation (see the module docstring)."""
    if _stack:  # nested: only the name of what is running changes
        _stack.append(label)
        _tell("label", " › ".join(_stack))
        try:
            yield
        finally:
            _stack.pop()
            _tell("label", " › ".join(_stack))
        return
    global _spec_rngs
    _stack.append(label)
    before = _state()
    rngs = _rngs()
    if _spec_rngs is None:
        _spec_rngs = rngs
    _tell("start", label)
    try:
        with _captured():
            yield
    except SystemExit as exc:  # a call must not end the run: an error like any other
        raise ExitCalled(f"sys.exit({exc.code!r}) was called").with_traceback(
            exc.__traceback__
        ) from None
    finally:
        _stack.clear()
        _tell("end", label)
        _restore(before, label)
        _note_draws(rngs, label)


def _tell(event: str, label: str) -> None:
    if listener is not None:
        listener(event, label)


# --- output -------------------------------------------------------------------------------


@contextmanager
def _captured() -> Iterator[None]:
    if not CAPTURE:
        yield
        return
    global _fd_file
    out, err = sys.stdout, sys.stderr
    for stream in (out, err):
        _flush(stream)
    text = io.StringIO()
    saved = None
    try:
        if _fd_file is None:
            _fd_file = tempfile.TemporaryFile()  # noqa: SIM115 (kept for the process)
        saved = os.dup(1)
        os.dup2(_fd_file.fileno(), 1)
    except OSError:  # no descriptor 1 to redirect
        saved = None
    sys.stdout = sys.stderr = text
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
        if saved is not None:
            _flush_c()
            os.dup2(saved, 1)
            os.close(saved)
            _fd_file.seek(0)
            raw = _fd_file.read()
            _fd_file.seek(0)
            _fd_file.truncate()
            if raw:
                _output.append(raw.decode("utf-8", errors="replace"))
        _output.append(text.getvalue())


def _flush(stream: Any) -> None:
    with suppress(AttributeError, OSError, ValueError):
        stream.flush()


_libc: Any = None


def _flush_c() -> None:
    """Flush C's stdio buffers (a kernel's ``printf``), when libc is at hand."""
    global _libc
    try:
        if _libc is None:
            import ctypes

            _libc = ctypes.CDLL(None)
        _libc.fflush(None)
    except (OSError, AttributeError):
        pass


# --- process-wide state ---------------------------------------------------------------------


def _state() -> dict[str, Any]:
    import numpy as np

    state: dict[str, Any] = {
        "numpy_err": np.geterr(),
        "warnings": list(warnings.filters),
        "modules": len(sys.modules),
    }
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_default_dtype"):
        state["torch_dtype"] = torch.get_default_dtype()
        state["torch_grad"] = torch.is_grad_enabled()
    jax = sys.modules.get("jax")
    if jax is not None and hasattr(jax, "config"):
        state["jax_x64"] = bool(jax.config.jax_enable_x64)
    return state


def _restore(before: dict[str, Any], label: str) -> None:
    """Compare the state with ``before``; restore and record what changed."""
    import numpy as np

    def record(fails: bool, what: str) -> None:
        _changes.append((fails, what, label))

    err: dict[str, Any] = {**np.geterr()}
    old: dict[str, Any] = {**before["numpy_err"]}
    if err != old:
        moved = ", ".join(f"{k}: {old[k]} -> {err[k]}" for k in sorted(err) if err[k] != old[k])
        record(True, f"changed NumPy's error state ({moved})")
        np.seterr(**before["numpy_err"])
    imported = len(sys.modules) > before["modules"]  # a library's import-time filters are its own
    if list(warnings.filters) != before["warnings"] and imported:
        new = len(sys.modules) - before["modules"]
        modules = f"{new} new module{'s' if new != 1 else ''}"
        what = f"changed the warnings filters while importing ({modules}; not restored:"
        _changes.append((False, f"{what} they may be those modules' own)", label))
    elif list(warnings.filters) != before["warnings"]:
        added = [f for f in warnings.filters if f not in before["warnings"]]
        what = f"{added[0][0]!r} for {_category(added[0][2])}" if added else "a removal"
        record(True, f"changed the warnings filters ({len(added)} added, first {what})")
        warnings.filters[:] = before["warnings"]  # type: ignore[index]
        warnings._filters_mutated()  # type: ignore[attr-defined]
    torch = sys.modules.get("torch")
    if "torch_dtype" in before and torch is not None:
        if torch.get_default_dtype() != before["torch_dtype"]:
            now = str(torch.get_default_dtype()).removeprefix("torch.")
            was = str(before["torch_dtype"]).removeprefix("torch.")
            record(True, f"changed torch's default dtype to {now} (was {was})")
            torch.set_default_dtype(before["torch_dtype"])
        if torch.is_grad_enabled() != before["torch_grad"]:
            turned = "on" if torch.is_grad_enabled() else "off"
            record(True, f"turned torch's grad mode {turned} globally")
            torch.set_grad_enabled(before["torch_grad"])
    jax = sys.modules.get("jax")
    if (
        "jax_x64" in before
        and jax is not None
        and bool(jax.config.jax_enable_x64) != before["jax_x64"]
    ):
        now_x64 = bool(jax.config.jax_enable_x64)
        record(True, f"set JAX's jax_enable_x64 to {now_x64} (its default dtypes changed)")
        jax.config.update("jax_enable_x64", before["jax_x64"])


def _category(category: Any) -> str:
    if isinstance(category, tuple):
        return ", ".join(c.__name__ for c in category)
    return str(category.__name__)


def _rngs() -> dict[str, Any]:
    """The global random generators' states: NumPy's legacy one, Python's, torch's (when
    imported)."""
    import numpy as np

    states: dict[str, Any] = {"NumPy's": np.random.get_state(), "Python's": random.getstate()}
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "random"):
        states["torch's"] = torch.random.get_rng_state()
    return states


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and a and a[0] == "MT19937":  # NumPy's: (name, keys, pos, ...)
        import numpy as np

        return bool(a[2] == b[2] and np.array_equal(a[1], b[1]))
    if hasattr(a, "equal"):  # a torch tensor
        return bool(a.equal(b))
    return bool(a == b)


def _note_draws(before: dict[str, Any], label: str) -> None:
    """Record (as a note) each global generator the call drew from. Nothing in xentcheck draws
    from them; they are put back when the spec ends, so that a later spec of the same
    implementation sees the state the first one saw."""
    now = _rngs()
    for name, state in before.items():
        if not _same(state, now[name]):
            _changes.append((False, f"drew from {name} global random generator", label))


def _set_rngs(states: dict[str, Any]) -> None:
    import numpy as np

    np.random.set_state(states["NumPy's"])
    random.setstate(states["Python's"])
    torch = sys.modules.get("torch")
    if "torch's" in states and torch is not None:
        torch.random.set_rng_state(states["torch's"])
