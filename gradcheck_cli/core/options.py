"""The loss options: one table, read by everything that needs to know which options exist.

Each row of :data:`OPTIONS` names an option, the loss families that accept it with its type and
range in each (:data:`Kind`), what the spec loader expects (its messages and the JSON Schema's
description) and the one-line doc of the README. The spec loader validates the keys from it
(``spec.py``), the JSON Schema is generated from it (``schema.py``), the implementation protocol
passes the options it lists (``impl.options_for``), reports show them (:func:`set_options`) and
a test holds the docs tables (README.md, docs/spec.md) to it. :class:`OptionValues` holds one
value per row, with its default; ``model.Spec`` inherits it.

Adding an option: a row here and a field in :class:`OptionValues`, the option in its family's
module (``softmax_ce.py`` or ``sigmoid_ce.py``) and in ``torch_adapter.py``; see
docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

LossKind = Literal["softmax_cross_entropy", "sigmoid_cross_entropy"]
SOFTMAX: LossKind = "softmax_cross_entropy"
SIGMOID: LossKind = "sigmoid_cross_entropy"
LOSS_KINDS: tuple[LossKind, ...] = (SOFTMAX, SIGMOID)
#: The families' names in the docs tables.
SHORT_NAMES: dict[LossKind, str] = {SOFTMAX: "softmax", SIGMOID: "sigmoid"}

#: An option's type and range in one family. ``class_array``: K finite numbers >= 0;
#: ``broadcast_array``: a finite number >= 0 or an array of them that broadcasts to the logits
#: (stored broadcast to (N, K)); ``int64``: an integer that fits in 64 bits; ``row_array``: N
#: finite numbers >= 0, one per row (one number for a single sample); ``choice``: one of the
#: option's ``choices`` (a string).
Kind = Literal[
    "unit",
    "positive",
    "nonnegative",
    "int64",
    "class_array",
    "broadcast_array",
    "row_array",
    "choice",
]
#: How docs/spec.md spells each kind.
KIND_TEXT: dict[Kind, str] = {
    "unit": "number in [0, 1]",
    "positive": "number > 0",
    "nonnegative": "number ≥ 0",
    "int64": "integer",
    "class_array": "K numbers ≥ 0",
    "broadcast_array": "a number or an array that broadcasts to the logits",
    "row_array": "N numbers ≥ 0",
    "choice": "one of the choices",  # docs_value spells the choices out
}


@dataclass(frozen=True, eq=False)
class Option:
    """One row of the table."""

    name: str
    """The spec key, the problem's field and the implementation protocol's keyword."""
    kinds: Mapping[LossKind, Kind]
    """The families that accept the option, each with its type and range there."""
    expected: str
    """What the loader expects (in its messages and the schema's description)."""
    doc: str
    """The one-line doc of README.md's "Loss options" table."""
    what: str = ""
    """For array kinds: what the K numbers are, in messages ("3 class weights")."""
    rule: str = ""
    """A rule beyond type and range, for docs/spec.md."""
    explained: bool = True
    """``xentcheck explain`` derives the gradient with this option set."""
    choices: tuple[str, ...] = ()
    """For the ``choice`` kind: the values the option accepts, the default first."""

    @property
    def families(self) -> tuple[LossKind, ...]:
        return tuple(self.kinds)

    @property
    def default(self) -> Any:
        return _DEFAULTS[self.name]

    def is_set(self, value: Any) -> bool:
        """True when ``value`` changes the loss (it is not the default)."""
        return value is not None if self.default is None else bool(value != self.default)


OPTIONS: tuple[Option, ...] = (
    Option(
        "weight",
        {SOFTMAX: "class_array", SIGMOID: "broadcast_array"},
        "class weights (K numbers); for sigmoid, element weights broadcast to the logits",
        "class weights (K numbers); `mean` then divides by Σ w_{y_n}, as PyTorch does. For "
        "sigmoid: element weights that broadcast to the logits",
        what="class weights",
        rule="finite",
    ),
    Option(
        "ignore_index",
        {SOFTMAX: "int64"},
        "an integer label value whose samples are ignored",
        "label value whose samples contribute nothing (−100, or a valid class)",
        rule="index labels only; may be a valid class or e.g. −100",
    ),
    Option(
        "label_smoothing",
        {SOFTMAX: "unit"},
        "a number in [0, 1]",
        "a in [0, 1]: (1 − a)·NLL + (a/K)·Σ_c w_c(−log p_c)",
    ),
    Option(
        "softcap",
        {SOFTMAX: "positive"},
        "a number c > 0 (logits pass through c tanh(z / c))",
        "c > 0: logits pass through c·tanh(z/c) (Liger-Kernel); gradients are with respect to "
        "the raw logits",
        explained=False,
    ),
    Option(
        "z_loss",
        {SOFTMAX: "nonnegative"},
        "a number s >= 0 (adds s logsumexp(z)^2 per sample)",
        "s ≥ 0: adds s·logsumexp(z)² per non-ignored sample (Liger-Kernel)",
        explained=False,
    ),
    Option(
        "pos_weight",
        {SIGMOID: "class_array"},
        "weight of the positive term per class (K numbers), sigmoid only",
        "sigmoid only: weight of the positive term per class",
        what="positive-class weights",
    ),
    Option(
        "num_items_in_batch",
        {SOFTMAX: "positive"},
        "a number M > 0 (mean divides the loss sums by M)",
        "M > 0: `mean` divides the sums by M instead of Σ w_{y_n} (HuggingFace's "
        "`num_items_in_batch`, the gradient-accumulation fix of transformers #34191)",
        rule="with reduction mean; z-loss sum divided by M too",
        explained=False,
    ),
    Option(
        "loss_mask",
        {SOFTMAX: "row_array"},
        "per-row weights m (N numbers >= 0, one per row of logits; 0 drops a row)",
        "m_n ≥ 0 per row (SFT prompt masking: 0 for prompt tokens, 1 for completion tokens): "
        "sample n's loss is m_n·l_n, and `mean` divides by Σ m_n·w_{y_n}",
        what="mask values",
        rule="finite; z-loss rows masked too; all zero: an empty mean (`empty_mean`)",
        explained=False,
    ),
    Option(
        "empty_mean",
        {SOFTMAX: "choice"},
        "nan | zero: the mean of a batch with nothing to average (every sample ignored or "
        "masked, or a zero weight sum)",
        "`mean` of a batch with nothing to average (every label ignored, every `loss_mask` or "
        "weight 0): `nan` (PyTorch's 0/0) or `zero` (Keras's 0, gradient 0)",
        rule="with reduction mean",
        choices=("nan", "zero"),
    ),
)
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


@dataclass(frozen=True, eq=False, kw_only=True)
class OptionValues:
    """One value per option of :data:`OPTIONS` (same names, same order), with its default."""

    weight: NDArray[np.float64] | None = None
    """Class weights (K,) for softmax; element weights broadcast to (N, K) for sigmoid."""
    ignore_index: int | None = None
    label_smoothing: float = 0.0
    softcap: float | None = None
    z_loss: float = 0.0
    pos_weight: NDArray[np.float64] | None = None
    """Positive-term weights (K,), sigmoid only."""
    num_items_in_batch: float | None = None
    """The divisor of ``mean`` (HuggingFace's gradient-accumulation normaliser), softmax only."""
    loss_mask: NDArray[np.float64] | None = None
    """Per-row loss weights (N,), softmax only."""
    empty_mean: str = "nan"
    """The ``mean`` of a batch with a zero normaliser: ``"nan"`` or ``"zero"``, softmax only."""


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(OptionValues)}
assert tuple(_DEFAULTS) == tuple(BY_NAME), "OptionValues needs one field per row, in order"


def options_of(loss: LossKind) -> tuple[Option, ...]:
    """The options family ``loss`` accepts, in table order."""
    return tuple(o for o in OPTIONS if loss in o.kinds)


def values_for(record: OptionValues, loss: LossKind) -> dict[str, Any]:
    """Every option family ``loss`` accepts, with its value in ``record`` (defaults included)."""
    return {o.name: getattr(record, o.name) for o in options_of(loss)}


def set_options(record: OptionValues) -> dict[str, Any]:
    """The options ``record`` sets (values other than the default), in table order."""
    values = ((o, getattr(record, o.name)) for o in OPTIONS)
    return {o.name: value for o, value in values if o.is_set(value)}


def docs_value(option: Option) -> str:
    """docs/spec.md's "value" column: the type and range, per family where they differ."""
    if option.choices:
        return " \\| ".join(f"`{c}`" for c in option.choices)
    texts = {KIND_TEXT[kind] for kind in option.kinds.values()}
    if len(texts) == 1:
        return texts.pop()
    return "; ".join(f"{KIND_TEXT[kind]} ({SHORT_NAMES[f]})" for f, kind in option.kinds.items())


def docs_rows(option: Option) -> tuple[str, str]:
    """The option's rows of README.md's "Loss options" table and docs/spec.md's keys table."""
    default = option.default
    default = (
        "—" if default is None else f"`{default}`" if isinstance(default, str) else f"{default:g}"
    )
    families = " and ".join(SHORT_NAMES[f] for f in option.families)
    rules = "; ".join(part for part in (families, option.rule) if part)
    readme = f"| `{option.name}` | {option.doc} |"
    spec_md = f"| `{option.name}` | {docs_value(option)} | {default} | {rules} |"
    return readme, spec_md
