"""The worker process of ``run --isolate`` (``python -m gradcheck_cli.isolation_worker FD
LIMIT``): it loads the implementations, checks each spec the parent sends with
``api._run_one`` and sends the result back (``gradcheck_cli.isolation`` is the parent's half
and the transport both use)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from gradcheck_cli.isolation import ImplRef, dump, load_blob, spec_arrays
from gradcheck_cli.model import error_result


def serve(fd: int, max_memory: int | None, folder: Path, parent: int) -> None:
    """The worker's loop: answer the parent's requests on the socket ``fd`` until it closes
    or says ``quit``; its shared files go to ``folder`` (the parent removes it). The worker
    dies with its parent (process ``parent``), even one killed outright."""
    from gradcheck_cli import guard

    _die_with(parent)
    if max_memory is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (max_memory, max_memory))
        guard.MEMORY_LIMIT = max_memory
    conn = Connection(fd)
    guard.CAPTURE = False  # our descriptors already go to the parent's file

    def tell(event: str, label: str) -> None:
        conn.send(("call", event, label))

    guard.listener = tell
    loaded: dict[ImplRef, Any] = {}
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            if message[0] == "quit":
                return
            if message[0] == "path":
                sys.path[:] = message[1]
                continue
            if message[0] == "load":
                conn.send(("done", _load_all(message[1], loaded)))
                continue
            conn.send(("done", _serve_run(message[1], loaded, conn, folder)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _load_all(refs: dict[str, ImplRef], loaded: dict[ImplRef, Any]) -> str | None:
    """Load each implementation (cached); the first error's message, or None."""
    from gradcheck_cli.errors import XentcheckError
    from gradcheck_cli.impl import bind, load

    for ref in refs.values():
        if ref in loaded:
            continue
        try:
            impl = load(ref.target, ref.device, ref.compile_backend)
        except XentcheckError as exc:
            return str(exc)
        for key, value in ref.bound:
            impl = bind(impl, key, value)
        loaded[ref] = impl
    return None


def _serve_run(blob: bytes, loaded: dict[ImplRef, Any], conn: Connection, folder: Path) -> bytes:
    from gradcheck_cli import api

    (spec, options, refs, flags, display, debug), _ = load_blob(blob)
    started = time.perf_counter()
    failure = _load_all(refs, loaded)
    if failure is not None:
        result = error_result(spec.name, display, f"{display}: {failure}", spec.locations)
    else:
        progress: Callable[..., None] | None = None
        if flags[0]:

            def progress(done: int, total: int) -> None:
                conn.send(("progress", done, total))

        announce: Callable[..., None] | None = None
        if flags[1]:

            def announce(name: str, operations: float) -> None:
                conn.send(("announce", name, operations))

        options = replace(
            options,
            impl=loaded[refs["impl"]] if "impl" in refs else None,
            compiled=loaded[refs["compiled"]] if "compiled" in refs else None,
            progress=progress,
            announce=announce,
        )
        result = api._run_one(spec, options, display, debug)
    result = replace(result, seconds=time.perf_counter() - started)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        return dump(result, folder, {id(v): i for i, v in enumerate(spec_arrays(spec))})
    except Exception as exc:  # something in the result does not pickle
        failed = error_result(
            spec.name,
            display,
            f"{display}: the worker could not send the result back ({type(exc).__name__}: {exc})",
            spec.locations,
        )
        return dump(failed, folder)


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux ``PR_SET_PDEATHSIG``),
    so that a parent killed by SIGKILL or a second Ctrl-C leaves no worker running a hung
    call; elsewhere a thread watches the parent."""
    import signal

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):
        import threading

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # gone before the kernel was told
        os._exit(1)


def main(argv: list[str]) -> None:
    fd, limit, folder, parent = int(argv[0]), argv[1], Path(argv[2]), int(argv[3])
    serve(fd, None if limit == "none" else int(limit), folder, parent)


if __name__ == "__main__":
    main(sys.argv[1:])
