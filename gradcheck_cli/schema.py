"""The JSON Schema (draft 2020-12) of the spec format, for editors (``xentcheck schema``).

It is generated from the loader's own tables: the keys and their descriptions come from
``spec.CASE_KEYS`` (and the nested key tuples), the loss options' types from the option table
(``core.options``), the choices from the same constants the loader checks against (reductions,
loss kinds, methods, schemes, dtypes), so a key the loader learns appears here too. The schema
describes shapes and types; the loader still checks what a schema cannot (lengths against the
logits, label ranges, sums of targets), with located messages.
"""

from __future__ import annotations

from typing import Any

from gradcheck_cli.core.options import LOSS_KINDS, OPTIONS, Kind, Option
from gradcheck_cli.core.softmax_ce import REDUCTIONS
from gradcheck_cli.methods import METHODS, SCHEMES
from gradcheck_cli.model import DTYPES
from gradcheck_cli.regimes import COMMON, DESCRIPTIONS, PARAMETERS
from gradcheck_cli.spec import (
    CASE_KEYS,
    DEFAULTS,
    EXPECT_KEYS,
    FILE_KEYS,
    LAYER_KEYS,
    LINEAR_KEYS,
    TOLERANCE_KEYS,
)

NUMBER: dict[str, Any] = {"type": "number"}
NONNEGATIVE: dict[str, Any] = {"type": "number", "minimum": 0}
FILE_REF: dict[str, Any] = {
    "type": "object",
    "description": "an array stored in a .npy file, or under `key` in an .npz file "
    "(the path is relative to the spec file)",
    "properties": {"file": {"type": "string"}, "key": {"type": "string"}},
    "required": ["file"],
    "additionalProperties": False,
}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    """A list of numbers, a list of such lists, or a file reference."""
    vector = {"type": "array", "items": items, "minItems": 1}
    return {"oneOf": [vector, {"type": "array", "items": vector, "minItems": 1}, FILE_REF]}


def _closed(properties: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": False,
    }


def _tolerance_pair() -> dict[str, Any]:
    return _closed({k: NONNEGATIVE for k in TOLERANCE_KEYS}, "{rtol, atol}")


#: The schema alternatives each kind of the option table accepts, in the order they are listed.
_ALTERNATIVES: dict[str, dict[str, Any]] = {
    "integer": {"type": "integer"},
    "unit": {"type": "number", "minimum": 0, "maximum": 1},
    "positive": {"type": "number", "exclusiveMinimum": 0},
    "nonnegative": NONNEGATIVE,
    "nonnegative_array": _array(NONNEGATIVE),
    "nonnegative_vector": {
        "oneOf": [{"type": "array", "items": NONNEGATIVE, "minItems": 1}, FILE_REF]
    },
}
_KIND_ALTERNATIVES: dict[Kind, tuple[str, ...]] = {
    "int64": ("integer",),
    "unit": ("unit",),
    "positive": ("positive",),
    "nonnegative": ("nonnegative",),
    "class_array": ("nonnegative_array",),
    "broadcast_array": ("nonnegative", "nonnegative_array"),
    "row_array": ("nonnegative", "nonnegative_vector"),
    "choice": (),  # an enum of the option's own choices
}


def regime_schema() -> dict[str, Any]:
    """``regime``: one alternative per kind, with that kind's own parameters."""
    types: dict[str, dict[str, Any]] = {
        "rows": {"type": "integer", "minimum": 1},
        "num_classes": {"type": "integer", "minimum": 2},
        "seed": {"type": "integer", "minimum": 0},
        "ignored": {"type": "number", "minimum": 0, "maximum": 1},
        "p": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "scale": {"type": "number", "exclusiveMinimum": 0},
        "pad": {"type": "integer", "minimum": 1},
    }
    assert set(types) | {"kind"} == set(DESCRIPTIONS)
    kinds = []
    for kind, (required, optional) in PARAMETERS.items():
        keys = [k for k in (*COMMON, *required, *optional) if k != "kind"]
        properties = {"kind": {"const": kind}} | {
            k: types[k] | {"description": DESCRIPTIONS[k]} for k in keys
        }
        closed = _closed(properties, f"regime {kind}")
        kinds.append(closed | {"required": ["kind", "rows", "num_classes", *required]})
    return {"oneOf": kinds}


def option_schema(option: Option) -> dict[str, Any]:
    """What a loss option accepts in any family (the loader checks the family's own rule)."""
    if option.choices:
        return {"enum": list(option.choices)}
    used = {alt for kind in option.kinds.values() for alt in _KIND_ALTERNATIVES[kind]}
    alternatives = [schema for alt, schema in _ALTERNATIVES.items() if alt in used]
    return alternatives[0] if len(alternatives) == 1 else {"oneOf": alternatives}


def case_properties() -> dict[str, Any]:
    """The schema of every key a case may have."""
    label_item = {"oneOf": [{"type": "integer"}, {"type": "string"}]}
    types: dict[str, dict[str, Any]] = {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "classes": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "num_classes": {"type": "integer", "minimum": 1},
        "loss": {"enum": list(LOSS_KINDS)},
        "logits": _array(NUMBER),
        "layer": _closed(
            {
                "inputs": _array(NUMBER),
                "weights": _array(NUMBER),
                "bias": _array(NUMBER),
            },
            "logits = inputs @ weights + bias",
        )
        | {"required": ["inputs", "weights"]},
        "linear": _closed(
            {
                "hidden": _array(NUMBER),
                "weight": _array(NUMBER),
                "bias": _array(NUMBER),
                "weight_layout": {"enum": ["vd", "dv"]},
                "seed": {"type": "integer", "minimum": 0},
                "rows": {"type": "integer", "minimum": 1},
                "hidden_size": {"type": "integer", "minimum": 1},
                "vocab_size": {"type": "integer", "minimum": 1},
                "margin": NUMBER,
                "with_bias": {"type": "boolean"},
            },
            "logits = hidden @ weight^T + bias (weight (V, D)), given or generated from a seed",
        ),
        "label": {
            "oneOf": [label_item, {"type": "array", "items": label_item, "minItems": 1}, FILE_REF]
        },
        "target": _array({"type": "number", "minimum": 0, "maximum": 1}),
        "regime": regime_schema(),
        "reduction": {"enum": list(REDUCTIONS)},
        "defaults": {"enum": list(DEFAULTS)},
        **{option.name: option_schema(option) for option in OPTIONS},
        "methods": {
            "type": "array",
            "items": {"enum": list(METHODS)},
            "minItems": 1,
            "uniqueItems": True,
        },
        "tolerance": _closed(
            {k: NONNEGATIVE for k in TOLERANCE_KEYS} | {m: _tolerance_pair() for m in METHODS},
            "{rtol, atol} for every comparison, or per method",
        ),
        "finite_difference": _closed(
            {
                "scheme": {"enum": list(SCHEMES)},
                "step": {
                    "oneOf": [
                        {"const": "auto"},
                        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                    ]
                },
            },
            "finite-difference scheme and relative step",
        ),
        "dtype": {"enum": list(DTYPES)},
        "expect": _closed(
            {
                k: (NONNEGATIVE if k in TOLERANCE_KEYS else {"oneOf": [NUMBER, _array(NUMBER)]})
                for k in EXPECT_KEYS
            },
            "golden values",
        ),
        "microbatches": {"type": "integer", "minimum": 2},
        "grad_output": {"oneOf": [NUMBER, _array(NUMBER)]},
    }
    assert set(types) == set(CASE_KEYS), "every loader key needs a schema entry"
    assert set(LAYER_KEYS) == set(types["layer"]["properties"])
    assert set(LINEAR_KEYS) == set(types["linear"]["properties"])
    return {key: types[key] | {"description": CASE_KEYS[key]} for key in CASE_KEYS}


def spec_schema() -> dict[str, Any]:
    """The whole schema: one case, or shared defaults plus a ``cases`` list."""
    props = case_properties()
    case = {"type": "object", "properties": props, "additionalProperties": False}
    assert FILE_KEYS == ("cases",)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://xentcheck.invalid/spec.schema.json",
        "title": "xentcheck spec",
        "description": "A softmax / sigmoid cross-entropy case to verify, or several under "
        "'cases' (other top-level keys are then defaults for every case). Numbers follow "
        "YAML 1.2: 1e-9 and .inf are numbers.",
        "type": "object",
        "properties": props
        | {"cases": {"type": "array", "items": {"$ref": "#/$defs/case"}, "minItems": 1}},
        "additionalProperties": False,
        "$defs": {"case": case},
    }
