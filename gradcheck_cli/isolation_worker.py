"""The worker process of ``run --isolate`` (``python -m gradcheck_cli.isolation_worker FD
LIMIT``): it loads the implementations, checks each spec the parent sends with
``api._run_one`` and sends the result back (``gradcheck_cli.isolation`` is the parent's half
and the transport both use)."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from gradcheck_cli.isolation import ImplRef, dump, load_blob, shared_dir, spec_arrays
from gradcheck_cli.model import error_result


def serve(fd: int, max_memory: int | None) -> None:
    """The worker's loop: answer the parent's requests on the socket ``fd`` until it closes
    or says ``quit``."""
    from gradcheck_cli import guard

    if max_memory is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (max_memory, max_memory))
        guard.MEMORY_LIMIT = max_memory
    conn = Connection(fd)
    guard.CAPTURE = False  # our descriptors already go to the parent's file

    def tell(event: str, label: str) -> None:
        conn.send(("call", event, label))

    guard.listener = tell
    folder = shared_dir()
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


def main(argv: list[str]) -> None:
    fd, limit = int(argv[0]), argv[1]
    serve(fd, None if limit == "none" else int(limit))


if __name__ == "__main__":
    main(sys.argv[1:])
