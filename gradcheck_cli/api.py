"""The public Python API: load specs, check them, assert in a test.

The command line is built on these three functions (``cli.py`` parses arguments, calls them,
renders and picks the exit code); use them the same way from Python or pytest::

    import gradcheck_cli as xc

    specs = xc.load("specs/cat_dog_bird.yaml")           # list[Spec], located SpecErrors
    report = xc.check("specs/", impl="my_pkg.losses:ce")  # Report
    assert report.passed, report.summary_text()
    xc.assert_passes("specs/", impl="my_pkg.losses:ce", dtype="float32")

Layering: ``api`` sits on the engine and the renderers (``Report.to_json`` and the failure
summaries are theirs); nothing below imports it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradcheck_cli import guard
from gradcheck_cli.engine import RunOptions, run_spec
from gradcheck_cli.errors import CannotCheck, SpecError, XentcheckError
from gradcheck_cli.impl import Implementation, wrap
from gradcheck_cli.impl import load as load_impl
from gradcheck_cli.model import Check, DType, Spec, SpecResult, error_result, skipped_result

if TYPE_CHECKING:
    from gradcheck_cli.isolation import ImplRef, Worker

__all__ = ["Report", "assert_passes", "check", "load", "run_paths"]

#: Anything :func:`check` accepts as specs.
SpecsLike = Spec | Sequence[Spec] | str | os.PathLike[str] | Mapping[str, Any]
#: Anything :func:`check` accepts as an implementation: a target string (``pkg.mod:fn``,
#: ``path/file.py:fn``, ``torch``), a callable following the protocol, or a loaded one.
ImplLike = str | Callable[..., Any] | Implementation


@dataclass(frozen=True)
class Report:
    """The results of one :func:`check`, in input order."""

    results: tuple[SpecResult, ...]

    @property
    def summary(self) -> dict[str, int]:
        """``{"total", "passed", "failed", "errors", "inconclusive"}`` (as in the JSON report)."""
        from gradcheck_cli.report.json import summary

        return summary(self.results)

    @property
    def passed(self) -> bool:
        """True iff no spec failed or was invalid and at least one passed (skipped specs,
        whose inputs do not fit the dtype, neither pass nor fail)."""
        statuses = {r.status for r in self.results}
        return "pass" in statuses and statuses <= {"pass", "skip"}

    @property
    def exit_code(self) -> int:
        """The command line's exit code: 2 if any spec is invalid, else 1 if any failed, else 0."""
        if any(r.status == "error" for r in self.results):
            return 2
        return 1 if any(r.status == "fail" for r in self.results) else 0

    def to_json(self) -> str:
        """The JSON report (README "JSON report"), as ``xentcheck run --format json`` writes it."""
        from gradcheck_cli.report.json import render

        return render(self.results)

    def summary_text(self) -> str:
        """A short human summary: one line per failed or invalid spec with what failed and its
        worst element, then the counts."""
        from gradcheck_cli.report.short import failure_summary

        return failure_summary(self.results)

    def __repr__(self) -> str:
        from gradcheck_cli.report.short import counts

        return f"Report({len(self.results)} specs: {counts(self.results)})"


def load(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    max_elements: int | None = None,
    max_array_bytes: int | None = None,
) -> list[Spec]:
    """Every spec (case) of a file, of YAML text, or of a mapping with the spec keys.

    A ``str`` that names an existing file, or ends in ``.yaml``/``.yml``, is a path; any other
    ``str`` is YAML text. Raises the first :class:`~gradcheck_cli.errors.SpecError` (located:
    file, line, column, field), exactly as the command line reports it.
    """
    from gradcheck_cli.spec import load_file, load_text

    if isinstance(source, Mapping):
        import yaml

        text = yaml.safe_dump(_plain(source), sort_keys=False)
        items = load_text(
            text, "<mapping>", max_elements=max_elements, max_array_bytes=max_array_bytes
        )
    elif _is_path(source):
        path = Path(source)
        items = load_file(
            path, str(path), max_elements=max_elements, max_array_bytes=max_array_bytes
        )
    else:
        items = load_text(
            str(source), "<text>", max_elements=max_elements, max_array_bytes=max_array_bytes
        )
    for item in items:
        if isinstance(item, SpecError):
            raise item
    return [item for item in items if isinstance(item, Spec)]


def check(
    specs: SpecsLike,
    *,
    impl: ImplLike | None = None,
    methods: Sequence[str] | None = None,
    dtype: DType | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    fast: bool = False,
    full: bool = False,
    directions: int = 2,
) -> Report:
    """Check specs (a :class:`Spec`, a list of them, a path, a directory, a glob, YAML text or a
    mapping) and return the :class:`Report`. Invalid specs and implementation errors become
    error results (never exceptions), as in ``xentcheck run``; an unloadable ``impl`` target
    raises :class:`~gradcheck_cli.impl.ImplError`.

    ``impl`` checks an implementation (docs/impl.md); ``methods``, ``dtype``, ``rtol``,
    ``atol``, ``fast``, ``full`` and ``directions`` mean what the command-line options do.
    """
    options = RunOptions(
        methods=tuple(methods) if methods else None,
        rtol=rtol,
        atol=atol,
        dtype=dtype,
        impl=_implementation(impl),
        fast=fast,
        full=full,
        directions=directions,
    )
    if isinstance(specs, Spec) or (
        isinstance(specs, Sequence) and not isinstance(specs, str) and _all_specs(specs)
    ):
        given = [specs] if isinstance(specs, Spec) else list(specs)
        return Report(tuple(_run_one(s, options, s.file) for s in given))
    if isinstance(specs, Mapping) or (isinstance(specs, str) and not _is_path(specs)):
        try:
            loaded = load(specs)
        except SpecError as exc:
            return Report((error_result(exc.file, exc.file, str(exc)),))
        return Report(tuple(_run_one(s, options, s.file) for s in loaded))
    return Report(tuple(run_paths([os.fspath(specs)], options)))  # type: ignore[arg-type]


def assert_passes(specs: SpecsLike, **options: Any) -> Report:
    """:func:`check`, then ``AssertionError`` unless every spec passed. The message is the short
    summary (:meth:`Report.summary_text`): which spec, which comparison or check, its worst
    element with value and reference, and the tolerance; never a dataclass dump."""
    report = check(specs, **options)
    if not report.passed:
        raise AssertionError(report.summary_text())
    return report


def run_paths(
    paths: Iterable[str],
    options: RunOptions,
    *,
    limits: Mapping[str, int] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    debug: bool = False,
    exclude: Iterable[str] = (),
) -> list[SpecResult]:
    """Load and run every spec named by ``paths`` (files, directories, globs), in order.

    Every failure becomes an error result for its spec, and the run goes on. ``progress`` is
    called with (done, total, label) as specs and fast-mode row chunks finish; ``debug``
    re-raises internal errors instead of reporting them; ``exclude`` globs leave files out of
    directory searches (see ``spec.discover``).
    """
    from gradcheck_cli.spec import discover

    worker, refs = _worker(options)
    try:
        return _run_found(discover(paths, exclude), options, limits, progress, debug, worker, refs)
    finally:
        if worker is not None:
            worker.close()


def _worker(options: RunOptions) -> tuple[Worker | None, dict[str, ImplRef] | None]:
    """The isolated worker (started, with the implementations loaded in it) and the refs it
    loads them by, when ``options.isolation`` asks for one; (None, None) otherwise. A
    tensor-parallel run is not isolated again: its ranks are worker processes already."""
    if options.isolation is None or options.impl is None or options.tensor_parallel:
        return None, None
    from gradcheck_cli import isolation

    refs = isolation.implementation_refs(options)
    worker = isolation.Worker(options.isolation)
    try:
        worker.start()
        worker.load(refs)
    except BaseException:
        worker.close()
        raise
    return worker, refs


def _run_found(
    found_items: Iterable[Any],
    options: RunOptions,
    limits: Mapping[str, int] | None,
    progress: Callable[[int, int, str], None] | None,
    debug: bool,
    worker: Worker | None,
    refs: dict[str, ImplRef] | None,
) -> list[SpecResult]:
    """The results of the specs ``discover`` found, in order (through ``worker`` when set)."""
    from gradcheck_cli.spec import load_file

    results: list[SpecResult] = []
    for found in found_items:
        if isinstance(found, SpecError):
            results.append(error_result(found.file, found.file, str(found), _where(found)))
            continue
        path, display = found
        display = display_path(path, display)
        for item in load_file(path, display, **(limits or {})):
            if isinstance(item, SpecError):
                message = "\n".join(item.all_messages())
                results.append(
                    error_result(_error_name(item, path), display, message, _where(item))
                )
                continue
            run_options = options
            if progress is not None:
                progress(len(results), len(results) + 1, item.name)
                run_options = replace(options, progress=_chunk_progress(progress, item.name))
            if worker is not None and refs is not None:
                results.append(worker.run(item, run_options, refs, display, debug))
            else:
                results.append(_run_one(item, run_options, display, debug))
    return results


def bundled_specs_dir() -> Path:
    """The example specs shipped in the wheel (``gradcheck_cli/specs``; the package is
    installed as files, so no ``importlib.resources`` is needed, nor its import time)."""
    return Path(__file__).resolve().parent / "specs"


def display_path(path: Path, given: str) -> str:
    """How reports name a spec file: ``specs/<name>`` for a bundled spec (not its site-packages
    path), else as the user named it (a directory's files relative to what they typed)."""
    resolved = path.resolve()
    bundled = bundled_specs_dir().resolve()
    if resolved.is_relative_to(bundled):
        return f"specs/{resolved.relative_to(bundled).as_posix()}"
    return given


def _run_one(spec: Spec, options: RunOptions, display: str, debug: bool = False) -> SpecResult:
    """One spec's result; an error for it (never an exception) when it cannot be run. What the
    implementation changed in process-wide state and what it printed (``guard``) are part of
    the result."""
    started = time.perf_counter()
    return _with_guard(_attempt(spec, options, display, debug), started)


def _with_guard(result: SpecResult, started: float) -> SpecResult:
    """``result`` with its ``seconds`` since ``started`` and what ``guard`` recorded since the
    last spec: a failed ``impl_global_state`` check for each change of process-wide state (a
    note for a draw from a global random generator), and the captured output."""
    changes = guard.drain_changes()
    printed = guard.truncate(guard.drain_output())
    result = replace(result, seconds=time.perf_counter() - started)
    if not changes and printed is None:
        return result
    failing = list(dict.fromkeys(text for fails, text in changes if fails))
    noted = list(dict.fromkeys(text for fails, text in changes if not fails))
    checks, status, message = result.checks, result.status, result.message
    if failing and status == "error":
        message = "\n".join([message or "", *failing]).strip()
    elif failing and status in ("pass", "fail"):
        checks = (*checks, Check("impl_global_state", False, "; ".join(failing)))
        status = "fail"
    else:
        noted += failing
    notes = result.method_notes
    if noted:
        notes = {**notes, "global_state": "; ".join(noted)}
    return replace(
        result,
        checks=checks,
        status=status,
        message=message,
        method_notes=notes,
        output=printed or result.output,
    )


def _attempt(spec: Spec, options: RunOptions, display: str, debug: bool) -> SpecResult:
    try:
        result = run_spec(spec, options)
    except CannotCheck as exc:
        return skipped_result(spec.name, display, str(exc))
    except XentcheckError as exc:
        original = getattr(exc, "original", None)
        if debug and original is not None:  # the implementation's own traceback
            import traceback

            trace = "".join(traceback.format_exception(original)).rstrip()
            message = f"{display}: {exc}\n{trace}"
            return error_result(spec.name, display, message, spec.locations)
        return error_result(spec.name, display, f"{display}: {exc}", spec.locations)
    except Exception as exc:  # one spec must not take the run down
        if debug:
            raise
        return error_result(
            spec.name,
            display,
            f"{display}: internal error ({type(exc).__name__}: {exc}); "
            "please report this with the spec file (--debug shows the traceback)",
            spec.locations,
        )
    return result


def _chunk_progress(
    progress: Callable[[int, int, str], None], name: str
) -> Callable[[int, int], None]:
    def chunks(done: int, total: int) -> None:
        progress(done, total, f"{name}: rows")

    return chunks


def _where(error: SpecError) -> dict[str, tuple[int, int]]:
    """``{"error": (line, column)}`` of the first of a spec error's problems, when located."""
    located = [e for e in (error, *error.others) if e.line is not None]
    if not located:
        return {}
    first = min(located, key=lambda e: (e.line or 0, e.column or 0))
    return {"error": (first.line or 1, first.column or 1)}


def _error_name(error: SpecError, path: Path) -> str:
    field = error.field or ""
    if field.startswith("cases["):
        return f"{path.stem}{field[5 : field.index(']') + 1]}"
    return path.stem


def _implementation(impl: ImplLike | None) -> Implementation | None:
    if impl is None or isinstance(impl, Implementation):
        return impl
    if isinstance(impl, str):
        return load_impl(impl)
    name = getattr(impl, "__qualname__", None) or type(impl).__name__
    return wrap(f"{getattr(impl, '__module__', '?')}:{name}", impl)


def _is_path(source: object) -> bool:
    if isinstance(source, os.PathLike):
        return True
    if not isinstance(source, str) or "\n" in source:
        return False
    return source.endswith((".yaml", ".yml")) or Path(source).exists()


def _all_specs(items: Sequence[object]) -> bool:
    return bool(items) and all(isinstance(s, Spec) for s in items)


def _plain(value: Any) -> Any:
    """NumPy arrays and scalars in a mapping as plain lists and numbers (for YAML)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
