"""JUnit XML for CI dashboards: one testcase per spec.

A failing spec gets a ``<failure>`` whose message names the first failing comparison or check
and its worst element (index, both values, absolute and relative error, the tolerance broken);
an invalid spec gets an ``<error>`` with the located message. Everything else about the spec
goes to ``<system-out>`` as plain lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.etree import ElementTree as ET

from gradcheck_cli.compare import Comparison
from gradcheck_cli.model import SpecResult


def comparison_line(c: Comparison) -> str:
    """One line for a comparison, with its worst element."""
    where = "[" + ", ".join(str(i) for i in c.worst_index) + "]"
    quantity = (
        ""
        if c.quantity == "logits"
        else f"d/d{c.quantity} "
        if c.quantity in ("weights", "bias", "inputs", "weight", "hidden")
        else f"{c.quantity} "
    )
    verdict = (
        f"FAIL ({c.failed_elements} element{'s' if c.failed_elements != 1 else ''})"
        if not c.passed
        else "pass"
        if c.inconclusive is None
        else f"inconclusive ({c.inconclusive})"
    )
    diagnosis = f"; diagnosis: {c.diagnosis}" if c.diagnosis else ""
    return (
        f"{quantity}{c.method} vs {c.reference}: {verdict}; worst {where}: {c.value:.17g} vs "
        f"{c.reference_value:.17g}, |Δ| = {c.max_abs_error:.3g}, rel {c.max_rel_error:.3g} "
        f"(rtol {c.rtol:g}, atol {c.atol:g}){diagnosis}"
    )


def render(results: Sequence[SpecResult], verbose: bool = False) -> str:
    """One testcase per spec (``verbose`` changes nothing: everything is in system-out)."""
    failures = sum(r.status == "fail" for r in results)
    errors = sum(r.status == "error" for r in results)
    total_time = sum(r.seconds for r in results)
    suites = ET.Element(
        "testsuites",
        name="xentcheck",
        tests=str(len(results)),
        failures=str(failures),
        errors=str(errors),
        time=f"{total_time:.3f}",
    )
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="xentcheck",
        tests=str(len(results)),
        failures=str(failures),
        errors=str(errors),
        skipped=str(sum(r.status == "skip" for r in results)),
        time=f"{total_time:.3f}",
    )
    for r in results:
        case = ET.SubElement(
            suite, "testcase", classname=r.file, name=r.name, time=f"{r.seconds:.3f}"
        )
        printed = [r.output.heading() + ":", r.output.text] if r.output is not None else []
        if r.status == "error":
            error = ET.SubElement(case, "error", message=r.message or "invalid spec")
            error.text = r.message
            if printed:
                ET.SubElement(case, "system-out").text = "\n".join(printed)
            continue
        if r.status == "skip":
            ET.SubElement(case, "skipped", message=r.message or "skipped")
            continue
        lines = [comparison_line(c) for c in r.comparisons]
        lines += [f"{c.name}: {'pass' if c.passed else 'FAIL'}; {c.detail}" for c in r.checks]
        lines += [f"{m}: not computable: {why}" for m, why in r.not_computable.items()]
        if r.status == "fail":
            first = next(
                (comparison_line(c) for c in r.comparisons if not c.passed),
                next(
                    (f"{c.name}: {c.detail}" for c in r.checks if not c.passed),
                    "failed",
                ),
            )
            failure = ET.SubElement(case, "failure", message=first)
            failure.text = "\n".join(line for line in lines if "FAIL" in line)
        out = ET.SubElement(case, "system-out")
        out.text = "\n".join(lines + printed)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"
