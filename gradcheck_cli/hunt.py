"""``xentcheck hunt``: search an implementation's input space for a failing input, shrink it,
and write it as a spec file.

Hypothesis is the engine (generation, the example database, shrinking); this module says what
to draw and how to judge it:

* **What is drawn** (:func:`candidates`): the dtype, the batch size N, the vocabulary size K
  (small integers, which shrink towards 1, or from :data:`LARGE_CLASSES`: primes, non-powers of
  two, a block boundary), a logit regime (:data:`REGIMES`: normal, confident, large spread,
  huge magnitudes, -inf padding lanes, ties, uniform rows), the labels' seed, ignored rows (none,
  some, all; ``ignore_index`` -100 or a valid class), the reduction, every loss option the
  implementation's signature accepts (each drawn or not, so shrinking drops the irrelevant
  ones), and for a framework-native implementation the upstream gradient (``grad_output``).
  Hypothesis shrinks every choice towards the first of its alternatives, so a shrunk input is
  small, float64-first, normal-first and option-free wherever the failure allows.
* **How it is judged** (:func:`judge`): the candidate is written as spec text, loaded by the
  spec loader and run with ``run --impl``'s checks (``engine.run_spec``): loss and gradient
  against the float64 reference under the dtype's tolerance model, self-consistency,
  finiteness, the framework-native side-effect checks. Only the implementation's own rows
  count: a candidate on which xentcheck's own checks fail (a reference loss that is not
  finite is *expected* in the written spec instead, so that the fixed implementation passes
  it) is rejected, never reported.
* **The budget** bounds wall time: once it is spent, a search that has found nothing stops,
  and one that is shrinking keeps its best input (later shrink attempts are answered "passes"
  without running, and every input already run keeps its verdict, so Hypothesis's final replay
  is consistent).

Pure computation on top of the engine: no printing (a ``progress`` callback reports), no
command-line parsing. Hypothesis is imported only when :func:`hunt` runs.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradcheck_cli import regimes
from gradcheck_cli.core import lowp
from gradcheck_cli.impl import Implementation
from gradcheck_cli.model import DTYPES, SpecResult

#: The logit regimes, simplest first (shrinking moves towards the front).
REGIMES = ("normal", "confident", "spread", "huge", "masked", "tied", "uniform")
#: Each regime's level: its parameter's alternatives, simplest first.
LEVELS: dict[str, tuple[float, ...]] = {
    "normal": (1.0, 3.0),  # standard deviation
    "confident": (0.99, 0.999, 0.9, 0.9999),  # p_y
    "spread": (30.0, 100.0, 1000.0),  # standard deviation (exp underflows between lanes)
    "huge": (100.0, -100.0, 1000.0, 30000.0),  # offset added to every logit
    "masked": (0.5, 0.1, 0.9),  # fraction of -inf lanes at the end of every row
    "tied": (0.0,),
    "uniform": (0.0,),
}
#: Vocabulary sizes past the small integers: primes, non-powers of two, 2**k + 1 and a
#: Triton-style block boundary (a kernel's last tile), and a power of two.
LARGE_CLASSES = (17, 31, 97, 100, 127, 257, 1000, 1024, 4097, 4099)
#: Ignored rows: none, some, every row.
IGNORED = ("none", "some", "all")
REDUCTIONS = ("mean", "sum", "none")
#: Each softmax option's alternatives, simplest first (a framework's option names; arrays are
#: drawn per candidate).
OPTION_VALUES: dict[str, tuple[Any, ...]] = {
    "label_smoothing": (0.1, 0.5, 1.0, 0.01),
    "z_loss": (1e-4, 0.1, 1.0),
    "softcap": (30.0, 5.0, 1.0),
    "empty_mean": ("zero", "nan"),
}
#: Options drawn as arrays or counts rather than from a list.
ARRAY_OPTIONS = ("weight", "loss_mask", "num_items_in_batch")
#: The options a search draws, in this order.
SEARCHED = ("weight", "label_smoothing", "z_loss", "softcap", "loss_mask", "num_items_in_batch",
            "empty_mean")  # fmt: skip
#: The methods a candidate spec runs: the reference is the float64 closed form; the other
#: methods check xentcheck, not the implementation.
METHODS = ("analytic",)
#: The largest magnitude a logit may have in each dtype (a margin below the largest finite).
MAGNITUDE = {"float64": 1e300, "float32": 1e37, "float16": 6e4, "bfloat16": 1e37}


@dataclass(frozen=True)
class Space:
    """What a search may draw."""

    dtypes: tuple[str, ...] = DTYPES
    max_rows: int = 8
    max_classes: int = 4099
    options: tuple[str, ...] = SEARCHED
    """The loss options the implementation accepts (``ignore_index`` is drawn as ignored
    rows)."""
    ignore: bool = True
    """Whether the implementation accepts ``ignore_index``."""
    reductions: tuple[str, ...] = REDUCTIONS
    upstream: bool = False
    """Draw ``grad_output`` (framework-native implementations back-propagate one)."""


def space_for(
    impl: Implementation,
    dtypes: Sequence[str] = DTYPES,
    max_rows: int = 8,
    max_classes: int = 4099,
) -> Space:
    """The search space of ``impl``: the options its signature accepts (every one when it
    takes ``**options``), its reductions, and an upstream gradient when it is native."""
    accepts = impl.accepts

    def takes(name: str) -> bool:
        return accepts is None or name in accepts

    return Space(
        dtypes=tuple(dtypes),
        max_rows=max_rows,
        max_classes=max_classes,
        options=tuple(o for o in SEARCHED if takes(o)),
        ignore=takes("ignore_index"),
        reductions=REDUCTIONS if takes("reduction") else ("mean",),
        upstream=impl.native is not None,
    )


@dataclass(frozen=True)
class Candidate:
    """One drawn input: everything :meth:`spec_text` needs to write the spec."""

    dtype: str
    rows: int
    classes: int
    regime: str
    level: float
    seed: int
    reduction: str
    ignored: str = "none"
    ignore_index: int | None = None
    options: tuple[tuple[str, Any], ...] = ()
    grad_output: float | tuple[float, ...] | None = None

    @property
    def size(self) -> int:
        """N x K: what shrinking minimises first."""
        return self.rows * self.classes

    def describe(self) -> str:
        """One line: the regime, dtype, shape, reduction and options."""
        regime = self.regime if self.regime in ("tied", "uniform") else f"{self.regime} "
        level = {
            "normal": "σ = {:g}",
            "confident": "p_y = {:g}",
            "spread": "σ = {:g}",
            "huge": "offset {:g}",
            "masked": "{:.0%} -inf lanes",
        }.get(self.regime, "").format(self.level)
        parts = [
            f"regime {regime}{level}".rstrip(),
            self.dtype,
            f"N = {self.rows}, K = {self.classes}",
            f"reduction {self.reduction}",
        ]
        if self.ignored != "none":
            parts.append(f"{self.ignored} rows ignored (ignore_index {self.ignore_index})")
        parts += [f"{k} = {_short(v)}" for k, v in self.options]
        if self.grad_output is not None:
            parts.append(f"grad_output {_short(self.grad_output)}")
        return ", ".join(parts)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The logits (N, K) as float64 values representable in the dtype, and the labels."""
        n, k = self.rows, self.classes
        rng = np.random.default_rng([self.seed, 7])
        index = self.ignore_index if self.ignored != "none" else None
        if k == 1 or self.regime in ("normal", "huge"):
            scale = self.level if self.regime == "normal" else 1.0
            logits = np.round(rng.normal(0.0, scale, size=(n, k)), 3)
            if self.regime == "huge":
                logits = logits + self.level
            labels = rng.integers(0, k, size=n)
            if index is not None and 0 <= index < k and k > 1:
                labels = np.where(labels == index, (labels + 1) % k, labels)
        else:
            kind = {"normal": "large-gap", "spread": "large-gap"}.get(self.regime, self.regime)
            regime = regimes.Regime(
                kind=kind,
                rows=n,
                num_classes=k,
                seed=self.seed,
                p=self.level if self.regime == "confident" else None,
                scale=self.level if kind == "large-gap" else None,
                pad=_pad(k, self.level) if self.regime == "masked" else None,
            )
            made, labels = regimes.generate(regime, self.dtype, index)
            logits = made.astype(np.float64)
        logits = _representable(logits, self.dtype)
        labels = labels.astype(np.int64)
        if index is not None:
            ignored = np.ones(n, dtype=bool) if self.ignored == "all" else _some(rng, n)
            labels = np.where(ignored, index, labels)
        return logits, labels

    def spec_mapping(self) -> dict[str, Any]:
        """The spec as a mapping (inline arrays; every float written as the shortest decimal
        that rounds to the same value in the dtype)."""
        logits, labels = self.arrays()
        spec: dict[str, Any] = {
            "name": "hunt-failing-input",
            "description": f"found by xentcheck hunt: {self.describe()} (logits seed {self.seed})",
            "dtype": self.dtype,
            "methods": list(METHODS),
            "logits": [[_decimal(v, self.dtype) for v in row] for row in logits],
            "label": [int(v) for v in labels],
            "reduction": self.reduction,
        }
        if self.ignored != "none":
            spec["ignore_index"] = self.ignore_index
        for name, value in self.options:
            spec[name] = list(value) if isinstance(value, tuple) else value
        if self.grad_output is not None:
            go = self.grad_output
            spec["grad_output"] = list(go) if isinstance(go, tuple) else go
        return spec


def _short(value: Any) -> str:
    if isinstance(value, tuple):
        shown = ", ".join(f"{v:g}" for v in value[:4])
        return f"[{shown}{', ...' if len(value) > 4 else ''}]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _pad(k: int, fraction: float) -> int:
    return min(k - 1, max(1, round(fraction * k)))


def _some(rng: np.random.Generator, n: int) -> np.ndarray:
    """A non-empty proper subset of the rows when N > 1 (one row for N = 1)."""
    if n == 1:
        return np.ones(1, dtype=bool)
    count = int(rng.integers(1, n))
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, count, replace=False)] = True
    return mask


def _representable(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded to ``dtype`` and widened back to float64 (exactly)."""
    if dtype == "float64":
        return x.astype(np.float64)
    lowp.register(dtype)
    return x.astype(regimes.storage_dtype(dtype)).astype(np.float64)


def _decimal(value: float, dtype: str) -> float:
    """The float64 nearest to the shortest decimal that rounds to ``value`` in ``dtype`` (so
    YAML shows 0.3, not 0.30000001192092896, and the loader rounds it back to ``value``)."""
    value = float(value)
    if not math.isfinite(value) or dtype == "float64":
        return value
    store = regimes.storage_dtype(dtype)
    if dtype in ("float32", "float16"):  # NumPy prints the shortest round-tripping digits
        short = float(np.format_float_positional(store.type(value), unique=True))
        if float(np.asarray(short).astype(store)) == value:
            return short
    for digits in range(1, 18):
        short = float(f"{value:.{digits}g}")
        if float(np.asarray(short).astype(store).astype(np.float64)) == value:
            return short
    return value


# --- judging ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What one candidate's run said."""

    outcome: str
    """``fail`` (the implementation failed a check), ``pass``, or ``reject`` (the input
    cannot be judged: xentcheck's own checks do not pass, or the dtype cannot hold it)."""
    text: str
    """The spec text that was run (what a reproducer file holds)."""
    result: SpecResult | None = None
    reason: str = ""
    """For a rejection: why."""


def judge(candidate: Candidate, impl: Implementation, options: Any) -> Verdict:
    """Run ``candidate`` as a spec with ``run --impl``'s checks (``options``: the run's
    ``engine.RunOptions`` without the implementation)."""
    from dataclasses import replace

    from gradcheck_cli.api import load
    from gradcheck_cli.engine import run_spec
    from gradcheck_cli.errors import CannotCheck, XentcheckError
    from gradcheck_cli.impl import NativeChecks

    try:
        mapping = candidate.spec_mapping()
    except regimes.RegimeError as exc:  # e.g. a spread that overflows the dtype
        return Verdict("reject", "", reason=f"the dtype cannot hold it: {exc}")
    run_options = replace(options, impl=impl)
    if impl.native is not None and options.native is None:
        # a framework tensor can arrive as a view: the labels offset in their storage
        # (flash-attn's offset-label bug) and the logits non-contiguous (run --views)
        run_options = replace(run_options, native=NativeChecks(views=True))
    for _attempt in range(2):
        text = spec_text(mapping)
        try:
            spec = load(text)[0]
        except XentcheckError as exc:
            return Verdict("reject", text, reason=f"not a valid spec: {exc}")
        try:
            with warnings.catch_warnings():  # the implementation's overflow warnings and such
                warnings.simplefilter("ignore")
                result = run_spec(spec, run_options)
        except CannotCheck as exc:
            return Verdict("reject", text, reason=str(exc))
        except XentcheckError as exc:  # the implementation raised or returned garbage
            return Verdict("fail", text, _raised(spec, str(exc)))
        own = _own_failures(result)
        if own == ["loss_is_finite"] and "expect" not in mapping:
            # the reference loss is nan or inf (every row ignored, say): the spec expects it,
            # so that a correct implementation passes the written file
            mapping["expect"] = {"loss": _plain_loss(result.loss)}
            continue
        if own:
            return Verdict("reject", text, result, f"xentcheck's own check {own[0]} fails")
        if result.status == "fail":
            return Verdict("fail", text, result)
        return Verdict("pass", text, result)
    return Verdict("reject", text, result, "the expected loss does not reproduce")


def _raised(spec: Any, message: str) -> SpecResult:
    from gradcheck_cli.model import error_result

    return error_result(spec.name, spec.file, message)


def _own_failures(result: SpecResult) -> list[str]:
    """The failed comparisons and checks that are xentcheck's, not the implementation's."""
    bad = [c.method for c in result.comparisons if not c.passed and not c.method.startswith("impl")]
    return bad + [c.name for c in result.checks if not c.passed and not c.name.startswith("impl")]


def _plain_loss(loss: Any) -> Any:
    arr = np.asarray(loss, dtype=np.float64)
    return float(arr) if arr.ndim == 0 else [float(v) for v in arr]


def spec_text(mapping: dict[str, Any]) -> str:
    """YAML for a spec mapping: block style at the top, one flow-style row per line."""
    import yaml

    def dump(value: Any) -> str:  # a flow-style list around the value, then without it
        text = yaml.safe_dump([value], default_flow_style=True, width=10**9, allow_unicode=True)
        return text.strip()[1:-1]

    lines = []
    for key, value in mapping.items():
        if key == "logits":  # the bulk: formatted here, PyYAML's emitter takes 40 µs a number
            lines.append("logits:")
            lines += [f"  - [{', '.join(_yaml_float(v) for v in row)}]" for row in value]
        elif isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {dump(v)}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {dump(value)}")
    return "\n".join(lines) + "\n"


def _yaml_float(value: float) -> str:
    """A float as a YAML 1.1 scalar that PyYAML reads back as the same float (its own rule:
    ``.inf``, ``.nan``, and a mantissa with a point before any exponent)."""
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(float(value))
    if "." not in text and "e" in text:
        text = text.replace("e", ".0e", 1)
    return text


# --- the search ------------------------------------------------------------------------------


@dataclass
class Coverage:
    """What a search ran: counts per regime, dtype, option, reduction and ignored rows."""

    inputs: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    regimes: Counter[str] = field(default_factory=Counter)
    dtypes: Counter[str] = field(default_factory=Counter)
    options: Counter[str] = field(default_factory=Counter)
    reductions: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)
    classes: Counter[str] = field(default_factory=Counter)

    def add(self, c: Candidate) -> None:
        self.inputs += 1
        self.regimes[c.regime] += 1
        self.dtypes[c.dtype] += 1
        self.reductions[c.reduction] += 1
        self.ignored[c.ignored] += 1
        self.classes[_class_band(c.classes)] += 1
        for name, _ in c.options:
            self.options[name] += 1
        if c.grad_output is not None:
            self.options["grad_output"] += 1


def _class_band(k: int) -> str:
    if k <= 2:
        return f"K={k}"
    if k <= 16:
        return "K=3-16"
    return "K=17-256" if k <= 256 else "K>256"


@dataclass(frozen=True)
class Finding:
    """The shrunk failing input."""

    candidate: Candidate
    verdict: Verdict
    seconds_to_first: float
    """Wall time from the start of the search to the first failing input."""
    first_size: int
    """N x K of the first failing input (before shrinking)."""


@dataclass(frozen=True)
class HuntResult:
    """What :func:`hunt` found and covered."""

    impl: str
    seed: int
    budget: float
    seconds: float
    coverage: Coverage
    finding: Finding | None
    replayed: bool = False
    """True when the failure came from the example database (a rerun tries it first)."""


class _Failed(Exception):
    """Raised inside the Hypothesis test for a failing candidate (one raise site: one
    distinct failure for Hypothesis to shrink)."""

    def __init__(self, candidate: Candidate) -> None:
        super().__init__(candidate.describe())
        self.candidate = candidate


class _OutOfBudget(BaseException):
    """Stops a search that has found nothing when the budget is spent (a BaseException, so
    Hypothesis does not take it for a failure of the test)."""


def candidates(space: Space) -> Any:
    """The Hypothesis strategy of :class:`Candidate` over ``space``."""
    from hypothesis import strategies as st

    @st.composite
    def draw_candidate(draw: Any) -> Candidate:
        dtype = draw(st.sampled_from(space.dtypes))
        rows = draw(st.integers(1, space.max_rows))
        small = st.integers(1, min(16, space.max_classes))
        large = [k for k in LARGE_CLASSES if k <= space.max_classes]
        k = draw(st.one_of(small, st.sampled_from(large)) if large else small)
        regime = draw(st.sampled_from(REGIMES if k >= 2 else ("normal", "huge", "uniform")))
        level = draw(st.sampled_from(LEVELS[regime]))
        if regime == "huge":
            level = math.copysign(min(abs(level), MAGNITUDE[dtype]), level)
        seed = draw(st.integers(0, 2**16))
        reduction = draw(st.sampled_from(space.reductions))
        ignored, ignore_index = "none", None
        if space.ignore:
            ignored = draw(st.sampled_from(IGNORED))
            if ignored != "none":
                positive = k >= 2 and draw(st.booleans())
                ignore_index = draw(st.integers(0, k - 1)) if positive else -100
                if regime in ("masked", "tied") and ignore_index is not None and ignore_index >= 0:
                    ignore_index = -100  # the regime draws labels from the live lanes
        options: list[tuple[str, Any]] = []
        for name in space.options:
            if name in ("num_items_in_batch", "empty_mean") and reduction != "mean":
                continue
            if not draw(st.booleans()):
                continue
            if name == "weight":
                values = draw(st.lists(st.sampled_from((1.0, 0.5, 2.0, 0.0)), min_size=k,
                                       max_size=k))  # fmt: skip
                if not any(values):
                    values[0] = 1.0
                options.append((name, tuple(values)))
            elif name == "loss_mask":
                mask = draw(st.lists(st.sampled_from((1.0, 0.0, 0.5)), min_size=rows,
                                     max_size=rows))  # fmt: skip
                options.append((name, tuple(mask)))
            elif name == "num_items_in_batch":
                options.append((name, float(draw(st.integers(1, 2 * rows)))))
            else:
                options.append((name, draw(st.sampled_from(OPTION_VALUES[name]))))
        grad_output: float | tuple[float, ...] | None = None
        if space.upstream and draw(st.booleans()):
            values = st.sampled_from((1.0, 0.5, 2.0, -1.0, 0.0, 3.0))
            if reduction == "none":
                grad_output = tuple(draw(st.lists(values, min_size=rows, max_size=rows)))
            else:
                grad_output = draw(values)
        return Candidate(dtype, rows, k, regime, float(level), seed, reduction, ignored,
                         ignore_index, tuple(options), grad_output)  # fmt: skip

    return draw_candidate()


def database_dir(root: Path, impl: Implementation, space: Space) -> Path:
    """Where a search of ``impl`` over ``space`` keeps its failing examples (one directory per
    implementation and space: a rerun tries that search's failures first)."""
    key = hashlib.sha256(repr((impl.name, space)).encode()).hexdigest()[:16]
    slug = "".join(ch if ch.isalnum() else "-" for ch in impl.name)[-40:].strip("-")
    return root / "hunt" / f"{slug}-{key}"


def hunt(
    impl: Implementation,
    options: Any,
    *,
    space: Space,
    budget: float = 60.0,
    seed: int = 0,
    database: Path | None = None,
    progress: Callable[[Coverage, float], None] | None = None,
    max_examples: int = 1_000_000,
) -> HuntResult:
    """Search ``space`` for an input on which ``impl`` fails ``run --impl``'s checks (run
    with ``options``, an ``engine.RunOptions``), for at most ``budget`` seconds of wall time;
    shrink the first failure to the smallest failing input. Deterministic for a given
    ``seed`` (and database contents: its stored failures are tried first). ``database``: the
    example database's directory (None: no database)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis.database import DirectoryBasedExampleDatabase

    started = time.perf_counter()
    deadline = started + budget
    coverage = Coverage()
    seen: dict[Candidate, Verdict] = {}
    first: list[tuple[float, int]] = []

    def test(candidate: Candidate) -> None:
        verdict = seen.get(candidate)
        if verdict is None:
            now = time.perf_counter()
            if now > deadline:
                if not first:
                    raise _OutOfBudget
                return  # shrinking past the budget: keep the best input found so far
            verdict = judge(candidate, impl, options)
            seen[candidate] = verdict
            coverage.add(candidate)
            if verdict.outcome == "reject":
                coverage.rejected[verdict.reason.split(":")[0]] += 1
            if verdict.outcome == "fail" and not first:
                first.append((time.perf_counter() - started, candidate.size))
            if progress is not None:
                progress(coverage, time.perf_counter() - started)
        if verdict.outcome == "fail":
            raise _Failed(candidate)

    run: Callable[[], None] = settings(
        max_examples=max_examples,
        deadline=None,
        database=None if database is None else DirectoryBasedExampleDatabase(str(database)),
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        print_blob=False,
    )(hypothesis_seed(seed)(given(candidates(space))(test)))  # type: ignore[no-untyped-call]
    found: Candidate | None = None
    try:
        run()
    except _OutOfBudget:
        pass
    except _Failed as exc:
        found = exc.candidate
    except Exception:  # a flaky implementation (Hypothesis's Flaky errors): the smallest seen
        failing = [c for c, v in seen.items() if v.outcome == "fail"]
        found = min(failing, key=lambda c: (c.size, len(c.options))) if failing else None
        if found is None:
            raise
    seconds = time.perf_counter() - started
    if found is None:
        return HuntResult(impl.name, seed, budget, seconds, coverage, None)
    when, size = first[0] if first else (0.0, found.size)
    return HuntResult(
        impl.name,
        seed,
        budget,
        seconds,
        coverage,
        Finding(found, seen[found], when, size),
        replayed=not first or coverage.inputs == 1,
    )


# --- what a finding says -----------------------------------------------------------------


def diagnosis(result: HuntResult) -> str:
    """The one-paragraph diagnosis of a finding: which check, which element, which regime,
    under which tolerance model."""
    finding = result.finding
    assert finding is not None
    r = finding.verdict.result
    c = finding.candidate
    head = (
        f"{result.impl} fails on {c.describe()} "
        f"(N x K = {c.size}, shrunk from {finding.first_size}; first failure after "
        f"{finding.seconds_to_first:.1f} s)."
    )
    if r is None or r.status == "error":
        message = "" if r is None else (r.message or "")
        return f"{head} The implementation could not be checked: {message}"
    parts = [head]
    for row in r.comparisons:
        if row.passed:
            continue
        what = "loss" if row.quantity == "loss" else "gradient"
        if row.quantity == "directions":
            what = "self-consistency (its gradient against its own forward)"
        where = f" at {list(row.worst_index)}" if row.worst_index else ""
        text = (
            f"Check {row.method} {what}: {row.failed_elements} element"
            f"{'s' if row.failed_elements != 1 else ''} outside the allowance; worst{where}: "
            f"{row.value:.10g} vs reference {row.reference_value:.10g} "
            f"(|Δ| {row.max_abs_error:.3g}, rel {row.max_rel_error:.3g})"
        )
        if row.precision is not None:
            text += f", under the {c.dtype} tolerance {row.precision.summary()}"
        else:
            text += f", tolerance rtol {row.rtol:g} / atol {row.atol:.3g} ({c.dtype} defaults)"
        if row.diagnosis:
            text += f"; diagnosis: {row.diagnosis}"
        parts.append(text + _row_probability(r, row) + ".")
    parts += [f"Check {k.name}: {k.detail}." for k in r.checks if not k.passed]
    return " ".join(parts)


def _row_probability(r: SpecResult, row: Any) -> str:
    """The label's probability in the worst element's row (confident rows are where
    half-precision kernels lose the true-class gradient)."""
    if r.probs is None or r.labels is None or not row.worst_index:
        return ""
    probs = np.atleast_2d(r.probs)
    n = row.worst_index[0] if len(row.worst_index) == 2 else 0
    label = int(np.atleast_1d(r.labels)[n])
    if not 0 <= label < probs.shape[1]:
        return f" (row {n} is ignored)"
    return f" (p_y = {float(probs[n, label]):.6g} in row {n})"


def coverage_text(coverage: Coverage) -> list[str]:
    """What a search ran, one line per dimension."""

    def counts(counter: Counter[str]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: -kv[1]))

    lines = [
        f"regimes: {counts(coverage.regimes)}",
        f"dtypes: {counts(coverage.dtypes)}",
        f"vocabulary: {counts(coverage.classes)}",
        f"reductions: {counts(coverage.reductions)}",
        f"ignored rows: {counts(coverage.ignored)}",
        f"options: {counts(coverage.options) or 'none drawn'}",
    ]
    if coverage.rejected:
        lines.append(f"rejected (not judged): {counts(coverage.rejected)}")
    return lines


def reproducer(result: HuntResult, command: str) -> str:
    """The failing spec file: a header saying how it was found and what was observed, then the
    spec itself."""
    finding = result.finding
    assert finding is not None
    observed = diagnosis(result)
    wrapped = _wrap(observed, 96)
    header = [
        f"# Found by: xentcheck hunt --impl {result.impl} --seed {result.seed}",
        f"# Reproduce: {command}",
        "# Observed:",
        *[f"#   {line}" for line in wrapped],
    ]
    return "\n".join(header) + "\n" + finding.verdict.text


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]
