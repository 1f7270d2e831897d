"""The JSON report: strict RFC 8259 JSON (no NaN or Infinity tokens).

Non-finite numbers are written as the strings ``"inf"``, ``"-inf"`` and ``"nan"``; arrays keep the
logits' shape ((K,) for a single sample, (N, K) for a batch). ``schema_version`` changes only when
a field changes meaning or disappears; new fields may be added within a version.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gradcheck_cli._version import __version__
from gradcheck_cli.compare import Comparison
from gradcheck_cli.model import Check, SpecResult

SCHEMA_VERSION = 1


def jsonable(value: Any) -> Any:
    """Plain JSON values from floats, NumPy arrays, tuples and dicts; non-finite -> strings."""
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        x = float(value)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def comparison_dict(c: Comparison) -> dict[str, Any]:
    return {
        "quantity": c.quantity,
        "method": c.method,
        "reference": c.reference,
        "max_abs_error": c.max_abs_error,
        "max_rel_error": c.max_rel_error,
        "worst_index": list(c.worst_index),
        "value": c.value,
        "reference_value": c.reference_value,
        "rtol": c.rtol,
        "atol": c.atol,
        "failed_elements": c.failed_elements,
        "passed": c.passed,
        "dtype": c.dtype,
        "predicted": c.predicted,
        "inconclusive": c.inconclusive,
        "diagnosis": c.diagnosis,
        "loose": list(c.loose),
        "precision": None if c.precision is None else precision_dict(c),
    }


def precision_dict(c: Comparison) -> dict[str, Any]:
    """A low-precision comparison's model and ulp statistics (``tolerance_models``)."""
    p = c.precision
    assert p is not None
    return {
        "model": p.model,
        "k": p.k,
        "floor_ulps": p.floor_ulps,
        "ulps_worst": p.ulps_worst,
        "ulps_median": p.ulps_median,
        "ulps_p99": p.ulps_p99,
        "rounded_ulps": p.rounded_ulps,
        "baseline_ulps": p.baseline_ulps,
        "baseline_ratio": p.baseline_ratio,
    }


def check_dict(c: Check) -> dict[str, Any]:
    return {"name": c.name, "passed": c.passed, "detail": c.detail}


def result_dict(r: SpecResult) -> dict[str, Any]:
    """One entry of ``results``: the fields of the documented schema, in order."""
    return {
        "name": r.name,
        "file": r.file,
        "status": r.status,
        "message": r.message,
        "shape": list(r.shape) if r.shape is not None else None,
        "classes": list(r.classes) if r.classes is not None else None,
        "reduction": r.reduction,
        "loss_kind": r.loss_kind,
        "options": dict(r.options),
        "loss": r.loss,
        "loss_note": r.loss_note,
        "probs": r.probs,
        "reference": r.reference,
        "gradients": dict(r.gradients),
        "parameter_gradients": {q: dict(m) for q, m in r.parameter_gradients.items()},
        "not_computable": dict(r.not_computable),
        "method_notes": dict(r.method_notes),
        "comparisons": [comparison_dict(c) for c in r.comparisons],
        "checks": [check_dict(c) for c in r.checks],
        "parallel": [jsonable(dataclasses.asdict(run)) for run in r.parallel],
        "output": output_dict(r),
    }


def output_dict(r: SpecResult) -> dict[str, Any] | None:
    """What the implementation printed under this spec (kept lines, total, dropped), or None."""
    if r.output is None:
        return None
    return {"text": r.output.text, "lines": r.output.lines, "dropped": r.output.dropped}


def summary(results: Sequence[SpecResult]) -> dict[str, int]:
    return {
        "total": len(results),
        "passed": sum(r.status == "pass" for r in results),
        "failed": sum(r.status == "fail" for r in results),
        "errors": sum(r.status == "error" for r in results),
        "skipped": sum(r.status == "skip" for r in results),
        "inconclusive": sum(
            r.status == "pass" and any(c.inconclusive is not None for c in r.comparisons)
            for r in results
        ),
    }


def render(results: Sequence[SpecResult], verbose: bool = False) -> str:
    """The whole report as a JSON document (ends with a newline); ``verbose`` changes nothing
    (every field is always there)."""
    doc = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "xentcheck", "version": __version__},
        "summary": summary(results),
        "results": [result_dict(r) for r in results],
    }
    return encode(jsonable(doc)) + "\n"


def encode(value: Any, indent: int = 0) -> str:
    """Indented JSON whose numeric vectors sit on one line each (matrices one row per line).

    ``json.dumps(indent=2)`` puts every number of an array on its own line, which makes a
    (32, 1000) gradient 32,000 lines long; this keeps the structure readable and the file small.
    """
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {encode(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return json.dumps(value, allow_nan=False, separators=(", ", ": "))
        items = [inner + encode(v, indent + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value, allow_nan=False)


def dumps(doc: Any) -> str:
    """Any other document (``xentcheck jacobian``) with the same number conventions."""
    return encode(jsonable(doc)) + "\n"
