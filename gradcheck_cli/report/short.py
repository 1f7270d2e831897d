"""Short human summaries of results: what failed, where, by how much (no tables).

Used by ``assert_passes`` for its assertion message, and wherever one line per spec is enough.
"""

from __future__ import annotations

from collections.abc import Sequence

from gradcheck_cli.compare import Comparison
from gradcheck_cli.model import SpecResult


def comparison_name(c: Comparison) -> str:
    """The method, with the quantity when it is a layer's parameter (``analytic (weights)``)."""
    return c.method if c.quantity in ("logits", "loss") else f"{c.method} ({c.quantity})"


def comparison_failure(c: Comparison) -> str:
    """One failed comparison: what against what, how many elements, and its worst element."""
    what = comparison_name(c)
    count = f"{c.failed_elements} element{'s' if c.failed_elements != 1 else ''}"
    where = " [" + ", ".join(str(i) for i in c.worst_index) + "]" if c.worst_index else ""
    return (
        f"{what} vs {c.reference}: {count} outside rtol {c.rtol:g} / atol {c.atol:g}; worst"
        f"{where}: {c.value:.10g} vs {c.reference_value:.10g} "
        f"(|Δ| {c.max_abs_error:.3g}, rel {c.max_rel_error:.3g})"
    )


def spec_failures(r: SpecResult) -> list[str]:
    """The lines saying why one spec failed or is invalid (empty when it passed)."""
    if r.status == "error":
        return [f"ERROR {r.name} ({r.file}): {r.message}"]
    if r.status != "fail":
        return []
    lines = [f"FAIL {r.name} ({r.file})"]
    for c in r.comparisons:
        if not c.passed:
            lines.append(f"  {comparison_failure(c)}")
            if c.diagnosis:
                lines.append(f"    diagnosis: {c.diagnosis}")
    lines += [f"  {c.name}: {c.detail}" for c in r.checks if not c.passed]
    return lines


def counts(results: Sequence[SpecResult]) -> str:
    """``"n passed, n failed, n errors"`` (``1 error``: the plain closing line CI tools read)."""
    passed = sum(r.status == "pass" for r in results)
    failed = sum(r.status == "fail" for r in results)
    errors = sum(r.status == "error" for r in results)
    skipped = sum(r.status == "skip" for r in results)
    line = f"{passed} passed, {failed} failed, {errors} error{'' if errors == 1 else 's'}"
    return line + (f", {skipped} skipped" if skipped else "")


def failure_summary(results: Sequence[SpecResult]) -> str:
    """Every failed or invalid spec's lines, then the counts."""
    lines = [line for r in results for line in spec_failures(r)]
    if not results:
        lines.append("no specs were checked")
    return "\n".join([*lines, counts(results)])
