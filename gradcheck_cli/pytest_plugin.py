"""The pytest plugin: spec files as test items, a ``xentcheck`` fixture and marker.

Installed with the wheel (entry point ``pytest11``, name ``xentcheck``: ``-p no:xentcheck``
turns it off) and inactive unless asked for: without configured spec paths it collects
nothing, and nothing of xentcheck beyond this module is imported until a hook needs it.

* **Spec items.** The spec paths given by ``--xentcheck-specs PATH`` (repeatable), else by the
  ini option ``xentcheck_specs`` (files, directories searched as ``xentcheck run`` searches
  them, globs; relative to the ini file), are collected: one item per spec or case, named
  as the reports name it (``specs/cat_dog_bird.yaml::cat-dog-bird``, ``file.yaml::stem[i]``
  for an unnamed case), marked ``xentcheck``. An item passes iff ``xentcheck run`` would pass
  the spec, is skipped when the spec cannot be checked in the chosen dtype, and fails with the
  short summary (``file:line:col:`` of the quantity that failed, its worst element, both
  values, the tolerance, the diagnosis) -- no traceback. An invalid spec (or case) is one
  failing item with the located message. Each comparison's metrics are recorded as
  ``user_properties`` (``--junitxml`` writes them as ``<property>``).
* **Options.** ``--xentcheck-impl TARGET`` checks an implementation against every spec,
  ``--xentcheck-dtype`` overrides each spec's dtype. What the command line does not give comes
  from ``[tool.xentcheck]`` of the nearest ``pyproject.toml`` (impl, dtype, rtol, atol,
  exclude); spec paths come from pytest's configuration only, so a project's settings for
  ``xentcheck run`` never make pytest collect. :func:`configured` is the one place that
  decides.
* **Fixture and marker.** ``xentcheck`` is the public API (:mod:`gradcheck_cli.api`) bound to
  those options; ``@pytest.mark.xentcheck(impl=..., specs=..., dtype=...)`` on a test gives
  the fixture its defaults for that test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

if TYPE_CHECKING:
    from gradcheck_cli.api import ImplLike, Report, SpecsLike
    from gradcheck_cli.errors import SpecError
    from gradcheck_cli.impl import Implementation
    from gradcheck_cli.model import Spec, SpecResult

DTYPES = ("float64", "float32", "float16", "bfloat16")
#: The options of :func:`gradcheck_cli.api.check` that the marker and the fixture take.
CHECK_OPTIONS = ("impl", "methods", "dtype", "rtol", "atol", "fast", "full", "directions")
#: The marker's keywords: the spec paths, then every option of ``check``.
MARKER_KEYS = ("specs", *CHECK_OPTIONS)
#: The metrics recorded as a property for each comparison (``--junitxml``).
METRICS = ("max_abs_error", "max_rel_error", "failed_elements", "rtol", "atol")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("xentcheck", "xentcheck: softmax/sigmoid cross-entropy gradients")
    group.addoption(
        "--xentcheck-specs",
        action="append",
        default=[],
        metavar="PATH",
        help="Collect the specs of PATH (a file, a directory or a glob) as test items; "
        "repeatable; overrides the ini option xentcheck_specs.",
    )
    group.addoption(
        "--xentcheck-impl",
        metavar="TARGET",
        help="Check this implementation against every spec (what `xentcheck run --impl` "
        "takes: package.module:function, path/file.py:function, torch, ...).",
    )
    group.addoption(
        "--xentcheck-dtype",
        choices=DTYPES,
        help="Run the methods under test in this precision instead of each spec's dtype.",
    )
    parser.addini(
        "xentcheck_specs",
        "Spec files, directories or globs to collect as test items (relative to the ini "
        "file); none: the xentcheck plugin collects nothing.",
        type="paths",
        default=[],
    )


@dataclass(frozen=True)
class Settings:
    """What the plugin runs: the spec paths and the options of every check."""

    specs: tuple[str, ...] = ()
    """Spec files, directories or globs, absolute (empty: collect nothing)."""
    exclude: tuple[str, ...] = ()
    """Globs left out of directory searches."""
    impl: str | None = None
    """The implementation target checked against every spec (None: none)."""
    dtype: str | None = None
    rtol: float | None = None
    atol: float | None = None

    def check_options(self) -> dict[str, Any]:
        """The keywords of :func:`gradcheck_cli.api.check` these settings give."""
        given = {"impl": self.impl, "dtype": self.dtype, "rtol": self.rtol, "atol": self.atol}
        return {k: v for k, v in given.items() if v is not None}


def configured(config: pytest.Config) -> Settings:
    """The session's settings: pytest's command line, then its ini file, then
    ``[tool.xentcheck]`` of the nearest ``pyproject.toml`` above the rootdir (every key but
    ``specs``, which only pytest's own configuration gives). The one place that decides."""
    from gradcheck_cli import settings as project_settings

    invoked = config.invocation_params.dir
    given = [str(invoked / p) for p in config.getoption("xentcheck_specs")]
    specs = given or [str(p) for p in config.getini("xentcheck_specs")]
    try:
        project = project_settings.load(config.rootpath)
    except project_settings.SettingsError as exc:
        raise pytest.UsageError(str(exc)) from None
    return Settings(
        specs=tuple(specs),
        exclude=tuple(project.get("exclude") or ()),
        impl=config.getoption("xentcheck_impl") or project.get("impl"),
        dtype=config.getoption("xentcheck_dtype") or project.get("dtype"),
        rtol=project.get("rtol"),
        atol=project.get("atol"),
    )


@dataclass
class _State:
    """The plugin's state in one pytest process (controller or xdist worker)."""

    settings: Settings
    files: frozenset[Path] = frozenset()
    """The spec files to collect, resolved."""
    implementation: Implementation | None = None
    impl_error: Exception | None = None
    loaded: bool = False

    def impl(self) -> Implementation | None:
        """The configured implementation, loaded once; its ImplError, every time, when it
        does not load."""
        if not self.loaded and self.settings.impl is not None:
            from gradcheck_cli.errors import XentcheckError
            from gradcheck_cli.impl import load

            try:
                self.implementation = load(self.settings.impl)
            except XentcheckError as exc:
                self.impl_error = exc
        self.loaded = True
        if self.impl_error is not None:
            raise self.impl_error
        return self.implementation


_STATE = pytest.StashKey[_State]()


def _state(config: pytest.Config) -> _State:
    if _STATE not in config.stash:
        config.stash[_STATE] = _State(configured(config))
    return config.stash[_STATE]


def _wants_specs(config: pytest.Config) -> bool:
    return bool(config.getoption("xentcheck_specs") or config.getini("xentcheck_specs"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "xentcheck(impl=None, specs=None, dtype=None, ...): defaults of the xentcheck fixture "
        "for this test (the keywords of gradcheck_cli.check, and the specs it checks); spec "
        "items collected by the xentcheck plugin carry this marker too.",
    )
    if not _wants_specs(config):
        return
    state = _state(config)
    from gradcheck_cli.spec import discover

    files = []
    for found in discover(state.settings.specs, state.settings.exclude):
        if isinstance(found, tuple):
            files.append(found[0].resolve())
        else:
            raise pytest.UsageError(f"xentcheck_specs: {found}")
    state.files = frozenset(files)
    _add_to_collection(config, state.settings.specs, state.files)


def _add_to_collection(config: pytest.Config, specs: Sequence[str], files: frozenset[Path]) -> None:
    """Spec paths outside what pytest collects anyway join its arguments (as testpaths do):
    always when given by ``--xentcheck-specs``, and for the ini option when pytest was given no
    paths of its own. Only paths not already inside an argument are added (no item twice)."""
    if config.args_source is pytest.Config.ArgsSource.ARGS and not config.getoption(
        "xentcheck_specs"
    ):
        return
    invoked = config.invocation_params.dir
    covered = [(invoked / arg.split("::", 1)[0]).resolve() for arg in config.args]
    given = [Path(raw).resolve() for raw in specs if Path(raw).exists()]
    for path in [*given, *sorted(files)]:  # a glob's files are in files only
        if not any(path == c or c in path.parents for c in covered):
            config.args.append(str(path))
            covered.append(path)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> SpecFile | None:
    state = parent.config.stash.get(_STATE, None)
    if state is None or file_path.suffix not in (".yaml", ".yml"):
        return None
    if file_path.resolve() not in state.files:
        return None
    return SpecFile.from_parent(parent, path=file_path)


class SpecFile(pytest.File):
    """A spec file: one item per spec or case (an invalid case is an item that fails)."""

    def collect(self) -> Iterator[SpecItem]:
        from gradcheck_cli.api import display_path
        from gradcheck_cli.errors import SpecError
        from gradcheck_cli.spec import load_file

        display = display_path(self.path, self.nodeid.split("::", 1)[0])
        seen: set[str] = set()
        for item in load_file(self.path, display):
            if isinstance(item, SpecError):
                name, spec, error = _error_name(item, self.path), None, item
            else:
                name, spec, error = item.name, item, None
            unique, n = name, 1
            while unique in seen:  # two cases of one name: the second is name#2
                n += 1
                unique = f"{name}#{n}"
            seen.add(unique)
            yield SpecItem.from_parent(self, name=unique, spec=spec, error=error, display=display)


def _error_name(error: SpecError, path: Path) -> str:
    """An invalid case's name, as ``xentcheck run`` reports it: the file's stem, with ``[i]``
    for the i-th entry of ``cases``."""
    field = error.field or ""
    if field.startswith("cases["):
        return f"{path.stem}{field[5 : field.index(']') + 1]}"
    return path.stem


class SpecItem(pytest.Item):
    """One spec (or case) of a file, checked as ``xentcheck run`` checks it."""

    def __init__(
        self,
        *,
        spec: Spec | None,
        error: SpecError | None,
        display: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.error = error
        self.display = display
        self.add_marker("xentcheck")

    def runtest(self) -> None:
        from gradcheck_cli.api import check
        from gradcheck_cli.errors import XentcheckError
        from gradcheck_cli.model import error_result

        if self.error is not None:
            raise SpecFailed(
                error_result(self.name, self.display, "\n".join(self.error.all_messages()))
            )
        assert self.spec is not None
        state = _state(self.config)
        options = state.settings.check_options()
        try:
            options["impl"] = state.impl()
        except XentcheckError as exc:
            message = str(exc).replace("--impl ", "--xentcheck-impl ", 1)
            raise SpecFailed(error_result(self.name, self.display, message)) from None
        (result,) = check(self.spec, **options).results
        self.user_properties.extend(properties(result))
        if result.status == "skip":
            pytest.skip(result.message or "cannot be checked in this dtype")
        if result.status != "pass":
            raise SpecFailed(result)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> Any:
        if isinstance(excinfo.value, SpecFailed):
            return "\n".join(failure_lines(excinfo.value.result))
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[os.PathLike[str] | str, int | None, str]:
        where = self.spec.locations.get("case") if self.spec is not None else None
        line = where[0] if where else (self.error.line if self.error is not None else None)
        return self.path, (line - 1 if line else 0), f"xentcheck spec {self.name}"


class SpecFailed(Exception):
    """A spec item's result that is not a pass (a failure, or an invalid spec)."""

    def __init__(self, result: SpecResult) -> None:
        super().__init__(result.name)
        self.result = result


def failure_lines(r: SpecResult) -> list[str]:
    """Why a spec failed, a place at a time: ``file:line:col:`` of the quantity that failed
    (as ``--format github`` annotates it), then what failed there (the comparison's worst
    element, both values and the tolerance, with its diagnosis; or the check's detail). An
    invalid spec: its located messages."""
    from gradcheck_cli.report.github import spec_annotations

    if r.status == "error":
        return (r.message or "invalid spec").splitlines()
    lines = []
    for a in spec_annotations(r):
        where = ":".join(str(x) for x in (a.file, a.line, a.column) if x is not None)
        first, *rest = a.message.splitlines()
        lines.append(f"{where}: {first}")
        lines += [f"    {line}" for line in rest]
    return lines


def properties(r: SpecResult) -> list[tuple[str, object]]:
    """Each comparison's metrics (:data:`METRICS`) as ``(name, value)``, named
    ``quantity::method::metric`` (``logits::analytic::max_abs_error``; an implementation is
    ``impl``, a repeated comparison ``#2``, as in baseline files)."""
    from gradcheck_cli.baseline import comparison_key

    out: list[tuple[str, object]] = []
    seen: set[str] = set()
    prefix = f"{r.file}::{r.name}::"
    for c in r.comparisons:
        key = comparison_key(r, c).removeprefix(prefix)
        unique, n = key, 1
        while unique in seen:
            n += 1
            unique = f"{key}#{n}"
        seen.add(unique)
        out += [(f"{unique}::{metric}", getattr(c, metric)) for metric in METRICS]
    return out


class Xentcheck:
    """The public API (:mod:`gradcheck_cli.api`) with this session's options as defaults, and
    the test's ``@pytest.mark.xentcheck(...)`` over them; each call's own keywords win."""

    def __init__(self, defaults: Mapping[str, Any], state: _State) -> None:
        self.defaults = dict(defaults)
        """The keywords every call starts from: ``specs`` and the options of ``check``."""
        self._state = state

    @property
    def impl(self) -> ImplLike | None:
        """The implementation checked by default (None: xentcheck's own methods only)."""
        return self.defaults.get("impl")

    def load(self, source: str | os.PathLike[str] | Mapping[str, Any]) -> list[Spec]:
        """:func:`gradcheck_cli.api.load`."""
        from gradcheck_cli.api import load

        return load(source)

    def check(self, specs: SpecsLike | Sequence[str] | None = None, **options: Any) -> Report:
        """:func:`gradcheck_cli.api.check` of ``specs`` (default: the marker's ``specs``, else
        the session's spec paths; a list of paths checks each), with the defaults."""
        from gradcheck_cli.api import Report, check

        chosen = {**self.defaults, **options}
        given = chosen.pop("specs", None) if specs is None else specs
        chosen.pop("specs", None)
        if given is None or (isinstance(given, (list, tuple)) and not given):
            raise ValueError(
                "xentcheck: no specs to check: pass them, give the test "
                "@pytest.mark.xentcheck(specs=...), or configure xentcheck_specs"
            )
        session_impl = self._state.settings.impl
        if session_impl is not None and chosen.get("impl") == session_impl:
            chosen["impl"] = self._state.impl()  # loaded once per session
        if isinstance(given, (list, tuple)) and all(isinstance(s, (str, Path)) for s in given):
            return Report(tuple(r for s in given for r in check(s, **chosen).results))
        return check(cast("SpecsLike", given), **chosen)

    def assert_passes(
        self, specs: SpecsLike | Sequence[str] | None = None, **options: Any
    ) -> Report:
        """:meth:`check`, then ``AssertionError`` with the short summary unless every spec
        passed (:func:`gradcheck_cli.api.assert_passes`)."""
        __tracebackhide__ = True
        report = self.check(specs, **options)
        if not report.passed:
            raise AssertionError(report.summary_text())
        return report


@pytest.fixture
def xentcheck(request: pytest.FixtureRequest) -> Xentcheck:
    """The xentcheck API bound to this session's options (``--xentcheck-impl``,
    ``--xentcheck-dtype``, ``[tool.xentcheck]``) and to the test's
    ``@pytest.mark.xentcheck(...)``: ``xentcheck.check(specs, **kw)``,
    ``xentcheck.assert_passes(specs, **kw)``, ``xentcheck.load(path)``."""
    state = _state(request.config)
    defaults: dict[str, Any] = dict(state.settings.check_options())
    if state.settings.specs:
        defaults["specs"] = list(state.settings.specs)
    marker = request.node.get_closest_marker("xentcheck")
    if marker is not None:
        if marker.args:
            pytest.fail(
                "@pytest.mark.xentcheck takes keywords only: "
                f"{', '.join(MARKER_KEYS)} (found {len(marker.args)} positional)",
                pytrace=False,
            )
        unknown = sorted(set(marker.kwargs) - set(MARKER_KEYS))
        if unknown:
            pytest.fail(
                f"@pytest.mark.xentcheck: unknown keyword {', '.join(unknown)} "
                f"(known: {', '.join(MARKER_KEYS)})",
                pytrace=False,
            )
        marked = dict(marker.kwargs)
        if "specs" in marked:
            marked["specs"] = _rooted(request.config.rootpath, marked["specs"])
        defaults.update(marked)
    return Xentcheck(defaults, state)


def _rooted(root: Path, specs: Any) -> Any:
    """The marker's spec paths taken relative to the rootdir, and named relative to the
    working directory when they lie under it (as reports name files); YAML text, mappings and
    specs as they are."""

    def one(s: Any) -> Any:
        if not isinstance(s, (str, os.PathLike)) or os.path.isabs(s) or "\n" in str(s):
            return s
        path = root / s
        if not (path.exists() or str(s).endswith((".yaml", ".yml")) or "*" in str(s)):
            return s  # YAML text
        try:
            return path.relative_to(Path.cwd()).as_posix()
        except ValueError:
            return str(path)

    if isinstance(specs, (list, tuple)):
        return [one(s) for s in specs]
    return one(specs)
