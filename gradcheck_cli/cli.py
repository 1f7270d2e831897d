"""The ``xentcheck`` command line: parse, load, compute, render, exit code. Nothing else.

Exit codes: 0 every spec passed; 1 some comparison, check or expectation failed; 2 some spec was
invalid or the command was misused (2 wins over 1). Reports go to stdout or ``--output``; messages
go to stderr. Heavy modules (NumPy, Rich, YAML) are imported inside the commands so that
``xentcheck --help`` stays quick.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from gradcheck_cli import limits
from gradcheck_cli._version import __version__
from gradcheck_cli.errors import SpecError, UsageError, XentcheckError
from gradcheck_cli.report import Format

if TYPE_CHECKING:
    from rich.console import Console


EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2

app = typer.Typer(
    name="xentcheck",
    help="Verify softmax cross-entropy losses and their gradients.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class MethodName(str, Enum):
    analytic = "analytic"
    jacobian = "jacobian"
    finite_difference = "finite_difference"
    complex_step = "complex_step"
    exact = "exact"


class ToleranceModel(str, Enum):
    rounded = "rounded"
    baseline = "baseline"
    fixed = "fixed"


class DTypeName(str, Enum):
    float64 = "float64"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"xentcheck {__version__}")
        raise typer.Exit()


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM, raised by our handler (Click would turn KeyboardInterrupt into exit
    1); ``signum`` gives the exit code, 128 + signum."""

    def __init__(self, signum: int = 2) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass(frozen=True)
class CliState:
    """What the root options set for every command (kept on the Click context, not globally)."""

    debug: bool = False


def _state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, CliState) else CliState()


_report_out: Any = None
"""Where a report on stdout goes when ``sys.stdout`` no longer is stdout
(:func:`_stdout_on_stderr`); None: ``sys.stdout``."""


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an internal error.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Verify softmax cross-entropy losses and their gradients."""
    global _report_out
    _report_out = None  # a report of an earlier command in this process went elsewhere
    ctx.obj = CliState(debug=debug)


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _out() -> Any:
    return _report_out if _report_out is not None else sys.stdout


def _stdout() -> Console:
    from rich.console import Console

    width = None if _out().isatty() or os.environ.get("COLUMNS") else 120
    return Console(highlight=False, width=width, file=_out())


def _fail(message: str) -> NoReturn:
    _stderr().print(f"error: {message}", markup=False)
    raise typer.Exit(EXIT_ERROR)


class DelayedProgress:
    """A Rich progress bar on stderr that appears only once a run has taken a second, only on a
    terminal, and disappears when done (``--quiet`` turns it off)."""

    DELAY = 1.0

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.perf_counter()
        self._progress: Any = None
        self._task: Any = None

    def update(self, done: int, total: int, label: str) -> None:
        if not self.enabled or time.perf_counter() - self.started < self.DELAY:
            return
        if self._progress is None:
            from rich.progress import Progress

            self._progress = Progress(console=_stderr(), transient=True)
            self._progress.start()
            self._task = self._progress.add_task(label, total=total)
        self._progress.update(self._task, completed=done, total=total, description=label)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def bundled_specs_dir() -> Path:
    """The example specs shipped in the wheel."""
    from gradcheck_cli.api import bundled_specs_dir as shipped

    return shipped()


def _write(text: str, output: Path | None) -> None:
    """Write the report to stdout, or atomically to ``output`` (temporary file, then rename)."""
    if output is None:
        _out().write(text)
        _out().flush()  # (sys.stdout may no longer be this stream: no one else flushes it)
        return
    import tempfile

    target = output.resolve()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(tmp, _file_mode())  # mkstemp's file is 0600; a report is an ordinary file
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise UsageError(f"cannot write --output {output}: {exc.strerror or exc}") from None


def _file_mode() -> int:
    """The mode ``open()`` would give a new file: 0666 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@app.command()
def run(
    ctx: typer.Context,
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            help="Spec files, directories (searched recursively for *.yaml, *.yml) or globs. "
            "Default: the bundled example specs.",
            show_default=False,
        ),
    ] = None,
    format: Annotated[
        Format | None,
        typer.Option(
            "--format",
            "-f",
            help="Report format (default: table; github when GITHUB_ACTIONS=true and stdout "
            "is not a terminal).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write the report to this file (atomically).", dir_okay=False
        ),
    ] = None,
    method: Annotated[
        list[MethodName] | None,
        typer.Option("--method", "-m", help="Run only this gradient method (repeatable)."),
    ] = None,
    rtol: Annotated[
        float | None, typer.Option(help="Relative tolerance for every comparison.", min=0.0)
    ] = None,
    atol: Annotated[
        float | None, typer.Option(help="Absolute tolerance for every comparison.", min=0.0)
    ] = None,
    dtype: Annotated[
        DTypeName | None,
        typer.Option(help="Run the methods under test in this precision (reference: float64)."),
    ] = None,
    fast: Annotated[
        bool,
        typer.Option(
            "--fast", help="Directional checks along random directions, rows streamed in chunks."
        ),
    ] = False,
    full: Annotated[
        bool,
        typer.Option(
            "--full", help="Element-wise checks of every element even for very large specs."
        ),
    ] = False,
    sample: Annotated[
        int | None,
        typer.Option(
            help="Finite differences and complex steps at each row's label and 4 largest "
            "logits and M seeded random classes instead of every class (default: chosen "
            "automatically for large vocabularies, with M = 64).",
            min=1,
            show_default=False,
        ),
    ] = None,
    directions: Annotated[
        int, typer.Option(help="Random directions of the fast mode's checks.", min=1, max=64)
    ] = 2,
    max_elements: Annotated[
        int, typer.Option(help="Most elements an inline YAML array may hold.", min=1)
    ] = limits.MAX_ELEMENTS,
    max_array_mb: Annotated[
        int, typer.Option(help="Largest array (MiB) a spec may load from a .npy/.npz file.", min=1)
    ] = limits.MAX_ARRAY_BYTES // 2**20,
    impl: Annotated[
        str | None,
        typer.Option(
            help="Check an implementation: package.module:function, path/to/file.py:function, "
            "or torch (the protocol: python -m pydoc gradcheck_cli.impl).",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the report and errors.")
    ] = False,
    device: Annotated[
        str,
        typer.Option(
            help="Where a torch:... or jax:... implementation runs: cpu, cuda, cuda:N, mps "
            "(torch), gpu, tpu (JAX)."
        ),
    ] = "cpu",
    allow_inplace: Annotated[
        bool,
        typer.Option(
            "--allow-inplace",
            help="A torch:... implementation may return a gradient in the logits' storage.",
        ),
    ] = False,
    nondeterministic_tol: Annotated[
        float,
        typer.Option(
            help="Largest difference allowed between two identical calls of a torch:... "
            "implementation (atomics).",
            min=0.0,
        ),
    ] = 0.0,
    tolerance_model: Annotated[
        ToleranceModel | None,
        typer.Option(
            help="How low-precision implementation checks set their allowance: rounded (k "
            "ulps of the truth + a floor; default for float16/bfloat16), baseline (k times "
            "the naive same-dtype computation's error + a floor), fixed (the measured tables; "
            "default for float32).",
            show_default=False,
        ),
    ] = None,
    model_k: Annotated[
        float,
        typer.Option(help="k of the rounded (ulps) and baseline (factor) models.", min=0.0),
    ] = 4.0,
    model_floor: Annotated[
        float,
        typer.Option(help="The models' floor, in ulps of the output's largest magnitude.", min=0.0),
    ] = 2.0,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Also check torch.compile(function) of a torch implementation, against the "
            "reference on its own.",
        ),
    ] = False,
    compile_backend: Annotated[
        str,
        typer.Option(
            help="The torch.compile backend of --compile (aot_eager: the compiled graph "
            "without code generation)."
        ),
    ] = "inductor",
    chunks: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated chunk counts (e.g. 1,4,7): on linear specs the fused kernel "
            "is called once per count, each call held to the reference.",
            show_default=False,
        ),
    ] = None,
    chunk_option: Annotated[
        str | None,
        typer.Option(
            help="The kernel's chunk-count parameter for --chunks (default: chunks, "
            "num_chunks, n_chunks or chunk_count, whichever it takes).",
            show_default=False,
        ),
    ] = None,
    tensor_parallel: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated process-group sizes (e.g. 1,2,4): run the torch:... "
            "implementation vocabulary-parallel on that many ranks (gloo on the CPU), each "
            "rank's loss and gradient slice held to the reference.",
            show_default=False,
        ),
    ] = None,
    isolate: Annotated[
        bool | None,
        typer.Option(
            "--isolate/--no-isolate",
            help="Run the implementation in a worker process: a crash, a hang past --timeout "
            "or an allocation past --max-memory fails only its spec, and what it prints is "
            "shown under its spec. Default: on for torch/jax/optax implementations.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            help="Seconds one call into an isolated implementation (or a --tensor-parallel "
            "launch) may take before it is killed.",
            min=0.1,
        ),
    ] = 300.0,
    max_memory: Annotated[
        str | None,
        typer.Option(
            help="Address-space limit of the isolated worker (512M, 16G, none). Default: this "
            "machine's RAM; none on a GPU device.",
            show_default=False,
        ),
    ] = None,
    vocab_chunks: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated vocabulary chunk counts (e.g. 1,3,8): the implementation is "
            "checked once per count, passed as its chunk parameter (vocab_chunks, chunks, ... "
            "or --chunk-option).",
            show_default=False,
        ),
    ] = None,
    views: Annotated[
        bool,
        typer.Option(
            "--views",
            help="Also call a torch:... implementation on a non-contiguous logits view and "
            "offset labels, and require the same result.",
        ),
    ] = False,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            help="Leave files matching this glob out of directory searches (repeatable; hidden "
            "directories and virtual environments are always skipped).",
        ),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Full tables for every spec (default: only for failures)."
        ),
    ] = False,
    save_baseline: Annotated[
        Path | None,
        typer.Option(
            help="Record every comparison's max error in this JSON file (for --baseline).",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="Fail a spec whose comparison's error grew past --fail-on-growth since this "
            "--save-baseline file, even inside its tolerance.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    fail_on_growth: Annotated[
        str | None,
        typer.Option(
            help="The growth that fails with --baseline: a factor (2x), ulps (+1ulp) or an "
            "absolute amount (1e-9); comma-separated, the most lenient wins. Default 2x.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check the loss and gradient of every spec; exit 0 pass, 1 fail, 2 invalid input.

    With several specs the table shows one line per spec and the full report of each that
    failed; -v shows every report."""
    # (long only by its option declarations: Typer reads the options from this signature)
    from gradcheck_cli import baseline as baseline_module
    from gradcheck_cli import settings
    from gradcheck_cli.engine import RunOptions
    from gradcheck_cli.impl import NativeChecks
    from gradcheck_cli.report import renderer
    from gradcheck_cli.tolerance_models import Settings

    try:
        given = {
            "specs": paths, "exclude": exclude, "impl": impl, "rtol": rtol, "atol": atol,
            "dtype": dtype.value if dtype else None, "format": format.value if format else None,
            "tolerance_model": tolerance_model.value if tolerance_model else None,
            "baseline": str(baseline) if baseline else None, "fail_on_growth": fail_on_growth,
        }  # fmt: skip
        chosen = {k: e.value for k, e in settings.effective(settings.load(), given).items()}
        paths, exclude, impl = chosen["specs"], chosen["exclude"], chosen["impl"]
        rtol, atol, baseline_file = chosen["rtol"], chosen["atol"], chosen["baseline"]
        dtype = DTypeName(chosen["dtype"]) if chosen["dtype"] else None
        model = chosen["tolerance_model"]
        tolerance_model = ToleranceModel(model) if model else None
        format = _run_format(Format(chosen["format"]) if chosen["format"] else None, output)
        growth = baseline_module.parse_growth(chosen["fail_on_growth"] or "2x")
        recorded = baseline_module.load(Path(baseline_file)) if baseline_file else None
        if save_baseline is not None and not save_baseline.resolve().parent.is_dir():
            raise UsageError(f"--save-baseline {save_baseline}: the directory does not exist")
    except XentcheckError as exc:
        _fail(str(exc))
    try:
        renderer("run", format)  # an unsupported format fails before any spec runs
        isolated = _isolated(isolate, impl, tensor_parallel)
        if fast and full:
            raise UsageError("--fast and --full exclude each other")
        _check_output(output)
        options = RunOptions(
            methods=tuple(m.value for m in method) if method else None,
            rtol=rtol,
            atol=atol,
            dtype=dtype.value if dtype else None,
            impl=_load_impl(impl, device, isolated=isolated),
            compiled=_load_impl(impl, device, compile_backend, isolated) if compile else None,
            isolation=_isolation(isolated, timeout, max_memory, device),
            tolerance_model=Settings(
                tolerance_model.value if tolerance_model else None, model_k, model_floor
            ),
            fast=fast,
            full=full,
            directions=directions,
            native=NativeChecks(allow_inplace, nondeterministic_tol, views),
            chunks=_counts("--chunks", chunks),
            chunk_option=chunk_option,
            tensor_parallel=_counts("--tensor-parallel", tensor_parallel),
            timeout=timeout,
            vocab_chunks=_counts("--vocab-chunks", vocab_chunks),
            sample=sample,
        )
        if sample is not None and (full or fast):
            raise UsageError("--sample excludes --full and --fast")
        if options.vocab_chunks and options.impl is None:
            raise UsageError("--vocab-chunks needs --impl")
        if options.tensor_parallel and options.impl is None:
            raise UsageError("--tensor-parallel needs --impl torch:module:function")
    except XentcheckError as exc:
        _fail(str(exc))
    limits = {"max_elements": max_elements, "max_array_bytes": max_array_mb * 2**20}
    options = replace(options, announce=_announce if full and not quiet else None)
    report = _run_report(
        paths, options, limits, quiet=quiet, debug=_state(ctx).debug, exclude=exclude or []
    )
    from gradcheck_cli.api import Report

    try:
        if save_baseline is not None:
            _write(baseline_module.document(report.results), save_baseline)
        rows = None
        if recorded is not None:
            results, rows = baseline_module.compare(report.results, recorded, growth)
            report = Report(tuple(results))
        _emit("run", format, report.results, output, verbose=verbose)
        if rows is not None:
            _baseline_table(rows, format, quiet, verbose)
        if format is Format.github:
            _step_summary(report.results)
        elif format is not Format.table and not quiet:
            from gradcheck_cli.report.table import summary_line

            _stderr().print(summary_line(report.results), markup=False)
    except XentcheckError as exc:
        _fail(str(exc))
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def _baseline_table(rows: Any, fmt: Format, quiet: bool, everything: bool) -> None:
    """The before/after table of ``--baseline``: on stdout under a table report, else on
    stderr (unless --quiet); the grown, new and gone comparisons (``everything``: all)."""
    from gradcheck_cli import baseline as baseline_module

    if quiet and fmt is not Format.table:
        return
    cells = baseline_module.table_rows(rows, everything)
    console = _stdout() if fmt is Format.table and not quiet else _stderr()
    grew = sum(r.status == "grew" for r in rows)
    title = f"baseline: {grew} of {len(rows)} comparisons grew past --fail-on-growth"
    console.print()
    if not cells:
        console.print(f"{title}; none new or gone", markup=False)
        return
    from gradcheck_cli.report._fit import Column, Fitted

    columns = [
        Column("", "left"),
        Column("comparison", "left"),
        Column("before"),
        Column("after"),
        Column("ratio", drop=2),
        Column("fails at", drop=1),
    ]
    console.print(Fitted(columns, cells, title=title))


def _run_format(given: Format | None, output: Path | None) -> Format:
    """The report format: as given; else ``github`` inside GitHub Actions when the report goes
    to a pipe (not a terminal, not a file); else ``table``."""
    if given is not None:
        return given
    in_actions = os.environ.get("GITHUB_ACTIONS") == "true"
    if in_actions and output is None and not sys.stdout.isatty():
        return Format.github
    return Format.table


def _step_summary(results: Any) -> None:
    """Append the Markdown job summary to ``$GITHUB_STEP_SUMMARY`` when it is set."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    from gradcheck_cli.report.github import step_summary

    try:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(step_summary(results))
    except OSError as exc:
        raise UsageError(f"cannot write $GITHUB_STEP_SUMMARY {target}: {exc.strerror}") from None


def _check_output(output: Path | None) -> None:
    """``--output``'s directory must exist (checked before any work)."""
    if output is not None and not output.resolve().parent.is_dir():
        raise UsageError(
            f"--output {output}: the directory {output.resolve().parent} does not exist"
        )


def _counts(option: str, text: str | None) -> tuple[int, ...] | None:
    """``OPTION 1,4,7`` as positive integers."""
    if text is None:
        return None
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if not counts or any(c < 1 for c in counts):
        raise UsageError(f"{option} {text}: expected positive integers separated by commas")
    return counts


def _announce(spec_name: str, operations: float) -> None:
    """``RunOptions.announce``: a spec forced element-wise above the fast-mode budget."""
    _warn_cost(operations, f"the element-wise check of {spec_name}", force=True)


def _load_impl(
    target: str | None,
    device: str = "cpu",
    compile_backend: str | None = None,
    isolated: bool = False,
) -> Any:
    """The ``--impl`` implementation (under torch.compile with ``compile_backend``), or None;
    ImplError (a XentcheckError) if it won't load. ``isolated``: only a reference to it (the
    worker imports it, this process never does)."""
    if target is None:
        if device != "cpu":
            raise UsageError("--device applies to --impl torch:... and jax:... only")
        if compile_backend is not None:
            raise UsageError("--compile needs --impl torch or --impl torch:module:function")
        return None
    from gradcheck_cli.impl import load, reference

    if isolated:
        return reference(target, device, compile_backend)
    return load(target, device, compile_backend)


def _isolated(given: bool | None, target: str | None, tensor_parallel: str | None) -> bool:
    """Whether the implementation runs in a worker: as ``--isolate``/``--no-isolate`` say,
    else for a framework-native one; never for ``--tensor-parallel`` (its ranks are workers
    already) or without ``--impl``."""
    if target is None or tensor_parallel:
        return False
    if given is not None:
        return given
    from gradcheck_cli.impl import is_native_target

    return is_native_target(target)


def _isolation(isolated: bool, timeout: float, max_memory: str | None, device: str) -> Any:
    """``RunOptions.isolation`` for an isolated run (None otherwise); ``--max-memory``
    defaults to the machine's RAM on the CPU and to no limit on a GPU (CUDA reserves far more
    address space than it uses)."""
    if not isolated:
        return None
    from gradcheck_cli import isolation

    if max_memory is None:
        limit = isolation.physical_memory() if device == "cpu" else None
    else:
        try:
            limit = isolation.parse_memory(max_memory)
        except ValueError:
            raise UsageError(
                f"--max-memory {max_memory}: expected a size such as 512M, 16G or 2.5G, or none"
            ) from None
    return isolation.Isolation(timeout=timeout, max_memory=limit)


def _run_report(
    paths: list[str] | None,
    options: Any,
    limits: dict[str, int],
    *,
    quiet: bool,
    debug: bool,
    exclude: list[str],
) -> Any:
    """Run the specs (the bundled ones without paths) with a progress bar on a terminal, and
    print each invalid spec's message once, on stderr."""
    from gradcheck_cli.api import Report, run_paths

    err = _stderr()
    if not paths:
        paths = [str(bundled_specs_dir())]
        if not quiet:
            err.print(
                "No paths given: running the bundled example specs (specs/ of the installed "
                "package; xentcheck run DIR or FILE checks your own)",
                markup=False,
            )
    progress = DelayedProgress(enabled=not quiet and sys.stderr.isatty())
    try:
        with _stdout_on_stderr(options.impl is not None and options.isolation is None):
            found = run_paths(
                paths,
                options,
                limits=limits,
                progress=progress.update,
                debug=debug,
                exclude=exclude,
            )
    except XentcheckError as exc:  # an isolated implementation that will not load
        progress.close()
        _fail(str(exc))
    finally:
        progress.close()
    for r in found:
        if r.status == "error" and r.message:
            for line in r.message.splitlines():
                err.print(f"error: {line}", markup=False)
        if r.sampled is not None and not quiet:
            m, k = r.sampled
            err.print(
                f"note: {r.name}: finite differences and complex steps sampled at {m} of {k} "
                "classes (each row's label and largest logits among them); --full checks every "
                "element",
                markup=False,
            )
    return Report(tuple(found))


@contextmanager
def _stdout_on_stderr(active: bool) -> Iterator[None]:
    """While an in-process implementation may run, file descriptor 1 and ``sys.stdout`` point
    at stderr: what its background threads print between its calls (the calls themselves are
    captured by ``guard``) cannot reach the report on stdout. Afterwards descriptor 1 is back,
    but ``sys.stdout`` stays on stderr for threads that outlive the run; the report is written
    to the real stdout (``_report_out``)."""
    global _report_out
    _report_out = None
    if not active:
        yield
        return
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no descriptors to move
        yield
        return
    out, sys.stdout = sys.stdout, sys.stderr
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)
        _report_out = out


def _emit(
    command: str, fmt: Format, document: Any, output: Path | None = None, **options: Any
) -> None:
    """Render ``document`` with the command's renderer for ``fmt`` (with ``options``) and write
    it to stdout, or atomically to ``output``; a format the command does not have is a usage
    error (exit 2)."""
    from gradcheck_cli.report import renderer

    rendered = renderer(command, fmt)(document, **options)
    if isinstance(rendered, str):
        _write(rendered, output)
    elif output is None:
        _stdout().print(rendered)
    else:
        from rich.console import Console

        buf = Console(record=True, width=120, file=open(os.devnull, "w"))  # noqa: SIM115
        buf.print(rendered)
        _write(buf.export_text(), output)


def _parse_logits(text: str) -> list[float]:
    import math

    values = []
    for i, part in enumerate(text.split(",")):
        part = part.strip()
        try:
            x = float(part)
        except ValueError:
            raise UsageError(
                f"--logits: expected comma-separated numbers, found {part!r} at position {i + 1}"
            ) from None
        if not math.isfinite(x):
            raise UsageError(
                f"--logits: expected finite numbers, found {part!r} at position {i + 1}"
            )
        values.append(x)
    return values


def _parse_label(text: str, classes: list[str] | None, k: int) -> int:
    if classes is not None and text in classes:
        return classes.index(text)
    try:
        index = int(text)
    except ValueError:
        known = f" (classes: {', '.join(classes)})" if classes else " (no --classes given)"
        raise UsageError(
            f"--label: {text!r} is neither a class index nor a class name{known}"
        ) from None
    if not 0 <= index < k:
        raise UsageError(f"--label: class index {index} out of range: expected 0 to {k - 1}")
    return index


@app.command()
def jacobian(
    logits: Annotated[str, typer.Option(help="Comma-separated logits, e.g. 1,2,0.5.")],
    label: Annotated[
        str | None, typer.Option(help="True class (index or name): also show the chain rule.")
    ] = None,
    classes: Annotated[str | None, typer.Option(help="Comma-separated class names.")] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """Show the softmax Jacobian of one sample and, with a label, the chain rule through it."""
    try:
        values = _parse_logits(logits)
        names = [c.strip() for c in classes.split(",")] if classes is not None else None
        if names is not None and len(names) != len(values):
            raise UsageError(
                f"--classes: expected {len(values)} names (one per logit), found {len(names)}"
            )
        if names is not None and len(set(names)) != len(names):
            raise UsageError("--classes: class names must be unique")
        index = _parse_label(label, names, len(values)) if label is not None else None
    except UsageError as exc:
        _fail(str(exc))

    import numpy as np

    from gradcheck_cli.engine import jacobian_view

    try:
        from gradcheck_cli.report import renderer

        renderer("jacobian", format)  # an unsupported format fails before any work
        view = jacobian_view(
            np.array(values, dtype=np.float64), index, tuple(names) if names else None
        )
        _emit("jacobian", format, view)
    except XentcheckError as exc:
        _fail(str(exc))


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="A spec file.", show_default=False)],
    case: Annotated[
        str | None, typer.Option(help="Which case of a cases file (default: the first).")
    ] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    full: Annotated[
        bool, typer.Option("--full", help="Element by element even for large specs.")
    ] = False,
    fast: Annotated[
        bool, typer.Option("--fast", help="Along seeded random directions even for small specs.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write the report to this file (atomically).", dir_okay=False
        ),
    ] = None,
) -> None:
    """Sweep the step h from 1e-1 to 1e-16 for every differencing method and run a Taylor test.

    Large specs are swept along seeded random directions (the same budget as run's fast mode);
    --full forces the element-wise sweep."""
    from gradcheck_cli.engine import build_problem
    from gradcheck_cli.report import renderer
    from gradcheck_cli.sweep import elementwise_cost
    from gradcheck_cli.sweep import sweep as run_sweep

    try:
        renderer("sweep", format)  # an unsupported format fails before the sweep runs
        if fast and full:
            raise UsageError("--fast and --full exclude each other")
        _check_output(output)
        chosen = _pick_spec(spec, case)
        problem = build_problem(chosen)
        directional = True if fast else False if full else None
        if directional is not True:
            _warn_cost(elementwise_cost(problem), "the element-wise sweep", force=full)
        progress = DelayedProgress(enabled=sys.stderr.isatty())
        try:
            result = run_sweep(
                problem,
                chosen.name,
                chosen.file,
                directional=directional,
                progress=lambda done, total: progress.update(done, total, "sweep"),
            )
        finally:
            progress.close()
        _emit("sweep", format, result, output)
    except XentcheckError as exc:
        _fail(str(exc))


@app.command()
def hunt(
    impl: Annotated[
        str,
        typer.Option(
            help="The implementation to search: package.module:function, path/file.py:function, "
            "torch, torch:..., optax or jax:... (as run --impl).",
            show_default=False,
        ),
    ],
    budget: Annotated[
        str, typer.Option(help="Wall-time budget: seconds, or with a unit (90s, 2m, 1h).")
    ] = "60s",
    seed: Annotated[int, typer.Option(help="The search's seed (same seed, same inputs).")] = 0,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Where to write the failing spec.", dir_okay=False),
    ] = Path("failing.yaml"),
    dtype: Annotated[
        str,
        typer.Option(help="Comma-separated dtypes to search (float64,float32,float16,bfloat16)."),
    ] = "float64,float32,float16,bfloat16",
    max_rows: Annotated[int, typer.Option(help="Largest batch size N drawn.", min=1)] = 8,
    max_classes: Annotated[int, typer.Option(help="Largest vocabulary K drawn.", min=1)] = 4099,
    tolerance_model: Annotated[
        ToleranceModel | None,
        typer.Option(
            help="The low-precision tolerance model (as run --tolerance-model; default: "
            "rounded for float16/bfloat16, fixed above).",
            show_default=False,
        ),
    ] = None,
    database: Annotated[
        Path,
        typer.Option(help="Directory of the example database (failures found are tried first)."),
    ] = Path(".xentcheck"),
    no_database: Annotated[
        bool, typer.Option("--no-database", help="Neither read nor write the example database.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Search an implementation for an input that fails run --impl's checks; shrink it and write
    it as a spec file. Exit 1 with the reproducer written, 0 when nothing failed within the
    budget (with what was covered), 2 on bad arguments."""
    from gradcheck_cli import hunt as search
    from gradcheck_cli.engine import RunOptions
    from gradcheck_cli.tolerance_models import Settings

    try:
        seconds = _budget(budget)
        dtypes = _dtypes(dtype)
        implementation = _load_impl(impl)
        if not out.resolve().parent.is_dir():
            raise UsageError(f"--out {out}: the directory {out.resolve().parent} does not exist")
    except XentcheckError as exc:
        _fail(str(exc))
    options = RunOptions(
        tolerance_model=Settings(tolerance_model.value if tolerance_model else None)
    )
    space = search.space_for(implementation, dtypes, max_rows, max_classes)
    where = None if no_database else search.database_dir(database, implementation, space)
    err = _stderr()
    live = not quiet and sys.stderr.isatty()
    last = [0.0]

    def progress(coverage: Any, elapsed: float) -> None:
        if quiet or (elapsed - last[0] < (0.2 if live else 10.0)):
            return
        last[0] = elapsed
        line = f"hunt: {coverage.inputs} inputs, {elapsed:.0f}/{seconds:.0f} s" + (
            f", {sum(coverage.rejected.values())} rejected" if coverage.rejected else ""
        )
        if live:
            sys.stderr.write("\r" + line.ljust(60))
            sys.stderr.flush()
        else:
            err.print(line, markup=False)

    if not quiet:
        err.print(
            f"hunt: searching {implementation.name} for {seconds:g} s (seed {seed}; "
            f"dtypes {', '.join(dtypes)}; options {', '.join(space.options) or 'none'}"
            + ("" if where is None else f"; database {where}")
            + ")",
            markup=False,
        )
    result = search.hunt(
        implementation, options, space=space, budget=seconds, seed=seed, database=where,
        progress=progress,
    )  # fmt: skip
    if live:
        sys.stderr.write("\r" + " " * 60 + "\r")
    out_console = _stdout()
    if result.finding is None:
        out_console.print(
            f"hunt: no failing input for {implementation.name} in {result.seconds:.1f} s "
            f"({result.coverage.inputs} inputs judged). Covered:",
            markup=False,
        )
        for line in search.coverage_text(result.coverage):
            out_console.print(f"  {line}", markup=False)
        return
    views = " --views" if implementation.native is not None else ""  # as the hunt judged it
    command = f"xentcheck run --impl {implementation.name}{views} {out}"
    _write(search.reproducer(result, command), out)
    out_console.print(search.diagnosis(result), markup=False, soft_wrap=True)
    out_console.print(
        f"Wrote the shrunk input to {out} ({result.finding.candidate.size} logits); reproduce "
        f"with: {command}" + (" (replayed from the example database)" if result.replayed else ""),
        markup=False,
        soft_wrap=True,
    )
    raise typer.Exit(EXIT_FAIL)


def _budget(text: str) -> float:
    """``--budget``: 60, 60s, 2m, 1h as seconds (> 0)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise UsageError(f"--budget {text}: expected a positive duration such as 60s, 2m or 90")
    return value


def _dtypes(text: str) -> tuple[str, ...]:
    """``--dtype float32,bfloat16`` as dtype names."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    bad = [n for n in names if n not in DTypeName.__members__]
    if not names or bad:
        raise UsageError(
            f"--dtype {text}: expected dtypes from float64, float32, float16, bfloat16 "
            "separated by commas"
        )
    return names


#: Element operations per second of an element-wise check on this kind of machine (measured:
#: 32 x 1000 central differences, 3.2e7 element operations, in about 0.5 s): for estimates only.
ELEMENT_OPS_PER_SECOND = 6e7
#: Say the estimated cost on stderr before work above this many element operations.
ANNOUNCE_ABOVE = 5e8


def _warn_cost(operations: float, what: str, *, force: bool) -> None:
    """On stderr, before a long computation: its size and a rough time."""
    from gradcheck_cli.sweep import SWEEP_BUDGET

    if operations <= ANNOUNCE_ABOVE or (not force and operations > SWEEP_BUDGET):
        return
    seconds = operations / ELEMENT_OPS_PER_SECOND
    _stderr().print(
        f"note: {what} costs about {operations:.2g} element operations (roughly "
        f"{_duration(seconds)} here); Ctrl-C stops it",
        markup=False,
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@app.command()
def explain(
    spec: Annotated[
        Path | None,
        typer.Argument(
            help="A spec file (default: the bundled cat/dog/bird example).", show_default=False
        ),
    ] = None,
    logits: Annotated[
        str | None, typer.Option(help="Comma-separated logits instead of a spec, e.g. 1,2,0.5.")
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="True class (index or name) with --logits.")
    ] = None,
    classes: Annotated[str | None, typer.Option(help="Comma-separated class names.")] = None,
    sample: Annotated[
        int | None,
        typer.Option(
            help="Which row of a batch to explain (default: the first row that counts).",
            min=0,
            show_default=False,
        ),
    ] = None,
    case: Annotated[str | None, typer.Option(help="Which case of a cases file.")] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """Walk through the derivation of d(loss)/d(logits) with a spec's own numbers."""
    import numpy as np

    from gradcheck_cli.explain import walkthrough
    from gradcheck_cli.model import Spec
    from gradcheck_cli.report import renderer

    try:
        if logits is not None:
            if spec is not None:
                raise UsageError("give a spec file or --logits, not both")
            values = _parse_logits(logits)
            names = [c.strip() for c in classes.split(",")] if classes is not None else None
            if names is not None and len(names) != len(values):
                raise UsageError(
                    f"--classes: expected {len(values)} names (one per logit), found {len(names)}"
                )
            if label is None:
                raise UsageError("--logits needs --label (the true class)")
            index = _parse_label(label, names, len(values))
            chosen = Spec(
                name="logits",
                file="(command line)",
                logits=np.array([values]),
                single=True,
                labels=np.array([index]),
                classes=tuple(names) if names else None,
            )
        else:
            path = spec or bundled_specs_dir() / "cat_dog_bird.yaml"
            chosen = _pick_spec(path, case)
        renderer("explain", format)  # an unsupported format fails before any work
        _emit("explain", format, walkthrough(chosen, sample))
    except XentcheckError as exc:
        _fail(str(exc))


def _pick_spec(path: Path, case: str | None) -> Any:
    """One spec of a file (the first, or the case named ``case``); errors as UsageError."""
    from gradcheck_cli.model import Spec
    from gradcheck_cli.spec import load_file

    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    items = load_file(path, str(path))
    for item in items:
        if isinstance(item, SpecError):
            raise UsageError(str(item))
    specs = [s for s in items if isinstance(s, Spec)]
    chosen = specs[0] if case is None else next((s for s in specs if s.name == case), None)
    if chosen is None:
        names = ", ".join(s.name for s in specs)
        raise UsageError(f"--case: no case named {case!r} in {path} (cases: {names})")
    return chosen


@app.command()
def mutate(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            help="Spec files, directories or globs (default: the bundled example specs).",
            show_default=False,
        ),
    ] = None,
    impl: Annotated[
        str | None,
        typer.Option(
            help="Plant the mutants in this implementation's outputs (as for run --impl) "
            "instead of the reference's.",
            show_default=False,
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(
            help="Exit 1 when the mutation score (killed / applicable) is below this, in [0, 1].",
            min=0.0,
            max=1.0,
            show_default=False,
        ),
    ] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Report format.")] = Format.table,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write the report to this file (atomically).", dir_okay=False
        ),
    ] = None,
    rtol: Annotated[
        float | None,
        typer.Option(help="Relative tolerance for every implementation check.", min=0.0),
    ] = None,
    atol: Annotated[
        float | None,
        typer.Option(help="Absolute tolerance for every implementation check.", min=0.0),
    ] = None,
    every_spec: Annotated[
        bool,
        typer.Option(
            "--every-spec",
            help="Run each mutant on every spec it applies to and list every killer "
            "(default: stop at the first).",
        ),
    ] = False,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", help="Leave files matching this glob out of directory searches."),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the report and errors.")
    ] = False,
) -> None:
    """Run the specs against built-in mutants of the reference (or of --impl's outputs) and
    report which spec kills each; exit 1 when a mutant the specs cover survives or the score is
    below --min-score, 2 on invalid input."""
    from gradcheck_cli.mutate import mutate as run_mutants
    from gradcheck_cli.report import renderer

    try:
        renderer("mutate", format)
        _check_output(output)
        target = _load_impl(impl)
        if not paths:
            paths = [str(bundled_specs_dir())]
            if not quiet:
                _stderr().print(
                    "No paths given: mutating against the bundled example specs", markup=False
                )
        report = run_mutants(
            paths,
            target,
            rtol=rtol,
            atol=atol,
            min_score=min_score,
            every_spec=every_spec,
            exclude=exclude or [],
        )
        _emit("mutate", format, report, output)
    except XentcheckError as exc:
        *first, last = str(exc).splitlines() or [""]
        for line in first:  # one located message per invalid spec
            _stderr().print(f"error: {line}", markup=False)
        _fail(last)
    if format is not Format.table and not quiet:
        from gradcheck_cli.report.mutate import score_line

        _stderr().print(score_line(report), markup=False)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


@app.command()
def config(
    format: Annotated[
        Format, typer.Option("--format", "-f", help="Output format (table or json).")
    ] = Format.table,
) -> None:
    """Print the effective settings of `xentcheck run` here and where each comes from: the
    [tool.xentcheck] table of the nearest pyproject.toml, or the default (the command line
    overrides each)."""
    from gradcheck_cli import settings

    try:
        if format not in (Format.table, Format.json):
            raise UsageError(f"config has no --format {format.value}: use table or json")
        project = settings.load()
        chosen = settings.effective(project, {})
    except XentcheckError as exc:
        _fail(str(exc))
    if format is Format.json:
        import json

        doc = {
            "file": None if project.file is None else str(project.file),
            "settings": {k: {"value": e.value, "source": e.source} for k, e in chosen.items()},
        }
        _write(json.dumps(doc, indent=1) + "\n", None)
        return
    from gradcheck_cli.report._fit import Column, Fitted

    where = project.file or "no pyproject.toml with [tool.xentcheck] here or above"
    rows = [
        [key.replace("_", "-"), "" if e.value is None else _setting_text(e.value), e.source]
        for key, e in chosen.items()
    ]
    columns = [Column("setting", "left"), Column("value", "left"), Column("from", "left")]
    _stdout().print(Fitted(columns, rows, title=f"xentcheck settings ({where})"))


def _setting_text(value: Any) -> str:
    return ", ".join(value) if isinstance(value, list) else str(value)


@app.command()
def schema() -> None:
    """Print the JSON Schema (draft 2020-12) of the spec format, for editors."""
    import json

    from gradcheck_cli.schema import spec_schema

    sys.stdout.write(json.dumps(spec_schema(), indent=2) + "\n")


def _debug_requested(argv: list[str]) -> bool:
    """Whether the root option ``--debug`` was given (it stands before the command's name)."""
    for arg in argv:
        if arg == "--debug":
            return True
        if not arg.startswith("-"):
            return False
    return False


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def main() -> None:
    """Console-script entry point: exit 130 on Ctrl-C and 143 on SIGTERM (no traceback, no
    partial --output, an isolated worker stopped), and one line for an internal error (its
    traceback with --debug)."""
    import signal

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app()
    except Interrupted as stop:
        sys.stderr.write("xentcheck: interrupted\n")
        sys.exit(128 + stop.signum)
    except KeyboardInterrupt:
        sys.stderr.write("xentcheck: interrupted\n")
        sys.exit(130)
    except Exception as exc:  # every expected error is handled inside the commands
        if _debug_requested(sys.argv[1:]):
            raise
        sys.stderr.write(
            f"xentcheck: internal error ({type(exc).__name__}: {exc}); please report it "
            "(run with --debug for the traceback)\n"
        )
        sys.exit(2)
