"""Running the implementation under test in a worker process (``run --isolate``).

Someone else's kernel may crash the process (a segfault in an extension, ``os.abort()`` in a
C++ assertion), hang (a deadlocked collective, an endless autotune loop), print, allocate
without bound or change process-wide state. Isolated, each spec is checked in one worker
process (``python -m gradcheck_cli.isolation_worker``), started once and reused across specs:

* **Crashes.** A signal or an exit of the worker makes that spec an error naming the signal
  or the exit code, the call it was in and the worker's last lines of output; the next spec
  starts a fresh worker.
* **Time-outs.** The worker tells the parent when each call into the implementation starts
  and ends (``guard.listener``); a call running past ``timeout`` seconds is killed with the
  worker's whole session (so children the implementation started go too) and reported with
  the spec and the call (``call``, ``forward``, ``backward``, ``self-consistency probe``, ...).
* **Memory.** The worker's address space is limited (``RLIMIT_AS``, ``max_memory`` bytes): an
  allocation past it fails in the implementation, which becomes that spec's error.
* **Output.** The worker's stdout and stderr go to one file, which the parent reads after each
  spec: what the implementation printed is shown under its spec (``SpecResult.output``), and
  the report on the parent's stdout stays valid JSON.
* **Process-wide state** is guarded inside the worker as in-process (``guard``).

Data: arrays of at least :data:`SHARED_BYTES` cross by files in ``/dev/shm`` (memory-mapped
by the receiver, one copy on the sender's side), the rest by pickle over a socket. An array
the worker got from the parent is sent back as a reference, not copied.

The parent half is :class:`Worker`; the worker's loop is ``isolation_worker.serve`` (a
module of its own: it runs ``api``, which runs this module's :class:`Worker`).
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, fields, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from gradcheck_cli.errors import XentcheckError
from gradcheck_cli.model import Spec, SpecResult, error_result

#: Seconds a call into the implementation may take by default (``--timeout``).
DEFAULT_TIMEOUT = 300.0
#: Arrays at least this large cross by shared-memory files instead of the socket.
SHARED_BYTES = 1 << 20
#: Lines of the worker's output quoted in a crash's error.
TAIL_LINES = 8
#: Bytes of a long log read from each end (the rest is only counted).
LOG_WINDOW = 1 << 16
#: Seconds the worker gets to exit after being asked to, before its session is killed.
QUIT_GRACE = 2.0


class IsolationError(XentcheckError):
    """The worker could not be started or failed outside a spec."""


@dataclass(frozen=True)
class Isolation:
    """How an isolated run limits the implementation (``--timeout``, ``--max-memory``)."""

    timeout: float = DEFAULT_TIMEOUT
    """Seconds one call into the implementation may take."""
    max_memory: int | None = None
    """The worker's address-space limit in bytes (None: no limit)."""


@dataclass(frozen=True)
class ImplRef:
    """What the worker needs to load an implementation itself (``impl.load``'s arguments)."""

    target: str
    device: str
    compile_backend: str | None
    bound: tuple[tuple[str, Any], ...]


def physical_memory() -> int | None:
    """Bytes of RAM this machine has (``--max-memory``'s default), None when unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def parse_memory(text: str) -> int | None:
    """``--max-memory``: ``none``, or a size with an optional binary suffix (``512M``,
    ``16G``, ``1.5T``; plain numbers are bytes). Raises ValueError."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    if value in ("NONE", "OFF", "UNLIMITED"):
        return None
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(value[-1:], 1)
    number = float(value[:-1] if scale > 1 else value)
    if not number > 0 or not np.isfinite(number):
        raise ValueError(text)
    return int(number * scale)


def describe_bytes(size: int) -> str:
    """``23.4 GiB``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:,} bytes"


# --- arrays across the boundary --------------------------------------------------------------


def shared_dir() -> Path:
    """Where shared-memory files go: ``/dev/shm`` when it exists and has room, else the
    temporary directory."""
    shm = Path("/dev/shm")
    try:
        stats = os.statvfs(shm)
        if stats.f_bavail * stats.f_frsize > 2**30:
            return Path(tempfile.mkdtemp(prefix="xentcheck-iso-", dir=shm))
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="xentcheck-iso-"))


class _Pickler(pickle.Pickler):
    """Large arrays go to files in ``folder``; arrays in ``known`` (by id) go as references."""

    def __init__(self, file: io.BytesIO, folder: Path, known: dict[int, int]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.folder = folder
        self.known = known

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, np.ndarray) or obj.dtype.hasobject:
            return None
        if id(obj) in self.known:
            return ("known", self.known[id(obj)])
        repeated = [step == 0 and n > 1 for step, n in zip(obj.strides, obj.shape, strict=True)]
        if any(repeated):  # a broadcast view (a linear spec's logits): its distinct values
            kept = tuple(slice(0, 1) if r else slice(None) for r in repeated)
            return ("broadcast", obj[kept].copy(), obj.shape)
        mapped = _file_region(obj)
        if mapped is not None:
            return ("mapped", *mapped, obj.dtype.str, obj.shape)
        if obj.nbytes < SHARED_BYTES:
            return None
        path = self.folder / f"{uuid.uuid4().hex}.bin"
        with open(path, "wb") as fh:
            np.ascontiguousarray(obj).tofile(fh)
        return ("file", str(path), obj.dtype.str, obj.shape)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, known: dict[int, np.ndarray]) -> None:
        super().__init__(file)
        self.known = known
        self.mapped: list[np.ndarray] = []

    def persistent_load(self, pid: Any) -> Any:
        if pid[0] == "known":
            return self.known[pid[1]]
        if pid[0] == "broadcast":
            return np.broadcast_to(pid[1], pid[2])
        if pid[0] == "mapped":  # the same file the parent maps (a spec's .npy)
            _, path, offset, dtype, shape = pid
            mapping = np.memmap(path, np.dtype(dtype), mode="r", offset=offset, shape=shape)
            self.mapped.append(mapping)
            return mapping
        _, path, dtype, shape = pid
        array: np.ndarray = np.memmap(path, dtype=np.dtype(dtype), mode="r", shape=tuple(shape))
        os.unlink(path)  # the mapping keeps the pages; nothing is left behind
        self.mapped.append(array)
        return array


def _file_region(array: np.ndarray) -> tuple[str, int] | None:
    """(file, byte offset) of a C-contiguous read-only array that is a memory map of a file
    (a spec's ``.npy``, loaded with ``mmap_mode="r"``), so that the worker maps the same pages
    instead of receiving a copy; None for any other array."""
    mapping: Any = array if isinstance(array, np.memmap) else None
    if mapping is None or mapping.filename is None or mapping.mode != "r" or array.size == 0:
        return None
    root: Any = array.base
    while isinstance(root, np.ndarray):
        root = root.base
    if not isinstance(root, mmap.mmap) or not array.flags.c_contiguous:
        return None
    start = mapping.offset - mapping.offset % mmap.ALLOCATIONGRANULARITY
    here = array.__array_interface__["data"][0]
    begins = np.frombuffer(root, np.uint8).__array_interface__["data"][0]
    return str(mapping.filename), start + here - begins


def dump(obj: Any, folder: Path, known: dict[int, int] | None = None) -> bytes:
    """``obj`` pickled, its large arrays written to files in ``folder`` (or named by their own
    file, or by their index in ``known``: id -> index); see :func:`load_blob`."""
    buffer = io.BytesIO()
    _Pickler(buffer, folder, known or {}).dump(obj)
    return buffer.getvalue()


def load_blob(data: bytes, known: dict[int, np.ndarray] | None = None) -> tuple[Any, list[Any]]:
    """What :func:`dump` wrote (its files mapped, then unlinked; ``known``: index -> the
    array the sender named by that index), and the memory maps made."""
    unpickler = _Unpickler(io.BytesIO(data), known or {})
    return unpickler.load(), unpickler.mapped


# --- the parent's half -------------------------------------------------------------------------


def implementation_refs(options: Any) -> dict[str, ImplRef]:
    """The run's implementations (``RunOptions.impl`` and ``.compiled``) by field, as refs;
    IsolationError for one given as a Python callable (a worker cannot import it)."""
    out = {}
    for name in ("impl", "compiled"):
        impl = getattr(options, name)
        if impl is None:
            continue
        if impl.target is None:
            raise IsolationError(
                f"--isolate: implementation {impl.name} is a Python object, not a target the "
                "worker can import (module:function, path/file.py:function, torch:..., jax:...)"
            )
        out[name] = ImplRef(impl.target, impl.device, impl.compile_backend, impl.bound)
    return out


class Worker:
    """The parent's handle on the worker process: :meth:`run` checks one spec in it."""

    def __init__(self, isolation: Isolation) -> None:
        self.isolation = isolation
        self.folder = shared_dir()
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: Connection | None = None
        # the worker's stdout and stderr: on disk (not in /dev/shm, which is memory), unnamed
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.read_to = 0

    # life cycle

    def start(self) -> None:
        """Start a fresh worker (the previous one, if any, is gone)."""
        parent, child = socket.socketpair()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
        limit = "none" if self.isolation.max_memory is None else str(self.isolation.max_memory)
        (self.folder / "worker").mkdir(exist_ok=True)  # its files: removed with ours
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-P",  # the current directory cannot shadow the worker's own imports
                    "-m",
                    "gradcheck_cli.isolation_worker",
                    str(child.fileno()),
                    limit,
                    str(self.folder / "worker"),
                    str(os.getpid()),
                ],
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=self.log,
                pass_fds=(child.fileno(),),
                start_new_session=True,  # Ctrl-C reaches us, and we kill its whole session
                env=env,
            )
        except OSError as exc:
            raise IsolationError(f"--isolate: cannot start the worker ({exc})") from None
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self.conn.send(("path", list(sys.path)))

    def close(self) -> None:
        """Ask the worker to exit, then kill its session (children it left behind too), and
        remove the shared files."""
        try:
            if self.proc is not None and self.proc.poll() is None and self.conn is not None:
                try:
                    self.conn.send(("quit",))
                    self.proc.wait(QUIT_GRACE)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        finally:  # even when a second Ctrl-C interrupts the wait
            self._kill()
            self.log.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            if proc.poll() is None:
                proc.kill()
        proc.wait()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # requests

    def load(self, refs: dict[str, ImplRef]) -> None:
        """Load the implementations in the worker now, so that one that cannot be imported
        fails the run before any spec (ImplError with the worker's message)."""
        from gradcheck_cli.impl import ImplError

        outcome = self._request(("load", refs), "import", None)
        if isinstance(outcome, _Died):
            raise ImplError(f"--isolate: the worker {outcome.how}{outcome.tail}")
        if outcome is not None:
            raise ImplError(outcome)

    def run(
        self,
        spec: Spec,
        options: Any,
        refs: dict[str, ImplRef],
        display: str,
        debug: bool = False,
    ) -> SpecResult:
        """Check ``spec`` in the worker (``api._run_one`` there) and return its result: an
        error result when the worker died, was killed or timed out."""
        started = time.perf_counter()
        stripped = replace(
            options,
            impl=None,
            compiled=None,
            progress=None,
            announce=None,
            isolation=None,
        )
        flags = (options.progress is not None, options.announce is not None)
        try:
            blob = dump((spec, stripped, refs, flags, display, debug), self.folder)
        except OSError as exc:  # no room for the shared files
            message = f"{display}: --isolate: cannot pass the spec's arrays to the worker ({exc})"
            return error_result(spec.name, display, message, spec.locations)
        outcome = self._request(("run", blob), None, options)
        printed = self._read_output()
        if isinstance(outcome, _Died):
            result = error_result(
                spec.name,
                display,
                f"{display}: the implementation's worker {outcome.how}{outcome.tail}",
                spec.locations,
            )
            return replace(result, output=printed, seconds=time.perf_counter() - started)
        done: SpecResult = load_blob(outcome, dict(enumerate(spec_arrays(spec))))[0]
        return replace(done, output=done.output or printed)

    def _request(self, message: tuple[Any, ...], label: str | None, options: Any) -> Any:
        """Send ``message`` and serve the worker's reports until its answer (returned), or a
        :class:`_Died` when it dies or outlives a call's time-out (then it is killed)."""
        if self.proc is None or self.proc.poll() is not None:
            self._kill()
            self.start()
        assert self.conn is not None and self.proc is not None
        self.read_to = self.log.seek(0, io.SEEK_END)
        try:
            self.conn.send(message)
        except OSError:
            return self._died(label)
        running: str | None = label
        since = time.monotonic()
        timeout = self.isolation.timeout
        while True:
            wait = 0.1
            if running is not None:
                wait = max(0.0, min(wait, since + timeout - time.monotonic()))
            try:
                ready = self.conn.poll(wait)
                reply = self.conn.recv() if ready else None
            except (EOFError, OSError):
                return self._died(running)
            if reply is None:
                if running is not None and time.monotonic() - since >= timeout:
                    self._kill()
                    return _Died(
                        f"was killed: its {running} did not finish within --timeout {timeout:g} s",
                        self._tail(),
                    )
                if self.proc.poll() is not None:
                    return self._died(running)
                continue
            kind = reply[0]
            if kind == "call":
                event, what = reply[1], reply[2]
                if event == "start":
                    running, since = what, time.monotonic()
                elif event == "label":
                    running = what or running
                else:
                    running = None
            elif kind == "progress" and options is not None and options.progress is not None:
                options.progress(*reply[1:])
            elif kind == "announce" and options is not None and options.announce is not None:
                options.announce(*reply[1:])
            elif kind == "done":
                return reply[1]

    def _died(self, running: str | None) -> _Died:
        assert self.proc is not None
        try:
            code = self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            code = None
        self._kill()
        where = (
            f" during its {running}" if running else " (outside any call into the implementation)"
        )
        if code is None:
            how = "stopped answering"
        elif code < 0:
            name = _signal_name(-code)
            how = f"was killed by {name} (signal {-code})"
            if -code == signal.SIGKILL:
                how += ": out of memory?"
        else:
            how = f"exited with code {code}"
        return _Died(how + where, self._tail())

    def _tail(self) -> str:
        """What the worker printed last (for a crash's message): from the end of the log."""
        head, tail, _ = self._log_since(self.read_to)
        lines = last_words(head + tail)
        if not lines:
            return ""
        return "; its last output:\n" + "\n".join("  " + ln for ln in lines)

    def _read_output(self) -> Any:
        """What the worker printed for this spec, truncated (``guard.summarise``)."""
        from gradcheck_cli import guard

        head, tail, total = self._log_since(self.read_to)
        self.read_to = self.log.seek(0, io.SEEK_END)
        if not tail:
            return guard.truncate(head)
        return guard.summarise(
            head.splitlines()[: guard.HEAD_LINES], tail.splitlines()[1:][-guard.TAIL_LINES :], total
        )

    def _log_since(self, start: int) -> tuple[str, str, int]:
        """The log from ``start``: (all of it, "", lines) when short; else (its first
        :data:`LOG_WINDOW` bytes, its last, its line count), never the whole of a long log in
        memory."""
        self.log.flush()
        end = self.log.seek(0, io.SEEK_END)
        self.log.seek(start)
        if end - start <= 2 * LOG_WINDOW:
            data = self.log.read(end - start)
            return data.decode("utf-8", errors="replace"), "", data.count(b"\n")
        head = self.log.read(LOG_WINDOW)
        lines, last = head.count(b"\n"), head[-1:]
        while chunk := self.log.read(1 << 20):
            lines, last = lines + chunk.count(b"\n"), chunk[-1:]
        self.log.seek(end - LOG_WINDOW)
        tail = self.log.read(LOG_WINDOW)
        lines += last != b"\n"
        return (
            head.decode("utf-8", errors="replace"),
            tail.decode("utf-8", errors="replace"),
            lines,
        )


def last_words(text: str) -> list[str]:
    """The lines of a dead worker's output worth quoting: with a fault handler's dump (``Fatal
    Python error``), the lines printed just before it, its first line and the innermost frames
    (the user's code is there; the outermost are xentcheck's); else the last
    :data:`TAIL_LINES` lines."""
    lines = [ln.rstrip() for ln in text.strip().splitlines() if ln.strip()]
    fatal = next((i for i, ln in enumerate(lines) if ln.startswith("Fatal Python error")), None)
    if fatal is None:
        return lines[-TAIL_LINES:]
    frames = [ln.strip() for ln in lines[fatal + 1 :] if ln.lstrip().startswith("File ")]
    return [*lines[max(0, fatal - 3) : fatal], lines[fatal], *frames[:4]]


@dataclass(frozen=True)
class _Died:
    how: str
    tail: str


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def spec_arrays(spec: Spec) -> list[np.ndarray]:
    """The spec's own arrays (the worker sends them back by reference)."""
    return [v for f in fields(spec) if isinstance(v := getattr(spec, f.name), np.ndarray)]
