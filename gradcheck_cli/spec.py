"""Load YAML spec files into validated :class:`~gradcheck_cli.model.Spec` objects.

Every problem is reported as a :class:`~gradcheck_cli.errors.SpecError` naming the file, the line
and column (1-based), the field path (``logits[1][2]``, ``cases[0].label``) and what was expected.

How the YAML is read
--------------------
* Only the YAML *node graph* is built (``yaml.compose``); no Python object is ever constructed, so
  tags such as ``!!python/object`` cannot execute anything and are rejected with a message.
* Plain scalars are resolved by the YAML 1.2 core schema, not PyYAML's YAML 1.1 rules: ``1e-9``,
  ``1E5`` and ``-.inf`` are numbers (YAML 1.1 loaders read the first two as strings), and ``yes``,
  ``no``, ``on``, ``off`` stay strings (class names such as ``no`` are not booleans).
* Duplicate keys are errors (YAML loaders otherwise keep the last one silently); unknown keys are
  errors with a "did you mean" when a known key is close.

Adding a key
------------
Keys are declared once, in :data:`CASE_KEYS`; a later feature adds its key there and reads it in
:func:`_build_spec`. Nested mappings (``tolerance``, ``expect``) have their own key tables. Loss
options are not keys of their own here: they come from the option table
(:mod:`gradcheck_cli.core.options`), and each is read by the reader of its kind
(:data:`_OPTION_READERS`), so a new option needs nothing in this module.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gradcheck_cli import limits, regimes
from gradcheck_cli.arrays import ArrayFileError, load_array
from gradcheck_cli.core.layer import LAYOUTS, Layout
from gradcheck_cli.core.lowp import bfloat16, register
from gradcheck_cli.core.options import (
    LOSS_KINDS,
    OPTIONS,
    SIGMOID,
    SOFTMAX,
    Kind,
    LossKind,
    Option,
    options_of,
)
from gradcheck_cli.core.softmax_ce import REDUCTIONS, Reduction
from gradcheck_cli.errors import SpecError
from gradcheck_cli.fastmode import needs_fast
from gradcheck_cli.methods import METHODS, SCHEMES, Scheme
from gradcheck_cli.model import DTYPES, DType, Expect, Layer, Spec, ToleranceOverride
from gradcheck_cli.precision import dtype_overflow

#: Keys a case may have. Top-level keys of a ``cases:`` file are defaults for every case.
CASE_KEYS: dict[str, str] = {
    "name": "case name (string)",
    "description": "free text",
    "classes": "class names, a list of K strings",
    "num_classes": "number of classes K (integer)",
    "loss": "softmax_cross_entropy | sigmoid_cross_entropy",
    "logits": "K numbers, or N lists of K numbers",
    "layer": "a linear layer {inputs, weights, bias} that computes the logits",
    "linear": "hidden states, lm_head weight and bias {hidden, weight, bias, weight_layout}, "
    "or generated {seed, rows, hidden_size, vocab_size, ...}: logits = hidden @ weight^T + bias",
    "regime": "logits and labels built from a seed: {kind, rows, num_classes, seed, ...}",
    "label": "class index or name; a list of N for a batch",
    "target": "probability distribution(s), shaped like the logits",
    "reduction": "mean | sum | none",
    "defaults": "torch: PyTorch's defaults for what the spec leaves unset (ignore_index -100)",
    **{option.name: option.expected for option in OPTIONS},  # the loss options' table
    "methods": "list of gradient methods",
    "tolerance": "{rtol, atol} for every comparison, or per method",
    "finite_difference": "{scheme: forward | central | richardson, step: auto | number}",
    "dtype": "float64 | float32 | float16 | bfloat16: precision of the methods under test",
    "expect": "golden values: {loss, probs, grad, rtol, atol}",
    "microbatches": "k >= 2: check that k micro-batch gradients add up to the batch's",
    "grad_output": "the upstream gradient a framework-native --impl is back-propagated with: "
    "a number (reduction mean or sum), or one per sample (reduction none)",
}
FILE_KEYS = ("cases",)
LAYER_KEYS = ("inputs", "weights", "bias")
#: ``linear:`` keys: the arrays, or what generates them from a seed (:func:`_generated_linear`).
LINEAR_ARRAY_KEYS = ("hidden", "weight", "bias", "weight_layout")
LINEAR_GENERATED_KEYS = ("seed", "rows", "hidden_size", "vocab_size", "margin", "with_bias")
LINEAR_KEYS = LINEAR_ARRAY_KEYS + LINEAR_GENERATED_KEYS
EXPECT_KEYS = ("loss", "probs", "grad", "rtol", "atol")
TOLERANCE_KEYS = ("rtol", "atol")

#: The values of ``defaults``: whose defaults fill what a spec leaves unset.
DEFAULTS = ("torch",)
#: PyTorch's ``F.cross_entropy`` default ``ignore_index`` (``defaults: torch``).
TORCH_IGNORE_INDEX = -100

#: Target rows must sum to 1 within this absolute tolerance.
TARGET_SUM_TOLERANCE = 1e-6
# The size caps (gradcheck_cli.limits), as names of this module: tests lower them here.
MAX_ELEMENTS = limits.MAX_ELEMENTS
MAX_SPEC_BYTES = limits.MAX_SPEC_BYTES
MAX_ARRAY_BYTES = limits.MAX_ARRAY_BYTES

_PLAIN = "tag:xentcheck:plain"
_CORE = "tag:yaml.org,2002:"
#: Tags a node has when the YAML gives none (quoted scalars resolve to str).
_UNTAGGED = (_PLAIN, _CORE + "str", _CORE + "seq", _CORE + "map")

# YAML 1.2 core schema, https://yaml.org/spec/1.2.2/#1032-tag-resolution
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^[-+]?[0-9]+$")
_INT_OCT = re.compile(r"^0o[0-7]+$")
_INT_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")


#: Deepest nesting of lists and mappings a spec file may have (a spec needs 4 at most).
MAX_DEPTH = 32


class _Loader(yaml.SafeLoader):
    """Safe loader that marks every untagged plain scalar, so the core schema can resolve it,
    and stops nesting deeper than :data:`MAX_DEPTH` with a located error (PyYAML's composer
    recurses once per level, so deep input would otherwise end in a RecursionError)."""

    _depth = 0

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> Any:
        if kind is ScalarNode and implicit[0]:
            return _PLAIN
        return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"nesting deeper than {MAX_DEPTH} levels", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_CSafeLoader = getattr(yaml, "CSafeLoader", None)

if _CSafeLoader is not None:

    class _CLoader(_CSafeLoader):  # type: ignore[misc,valid-type]
        """libyaml's C parser and composer (about 10x faster on large inline arrays), with the
        same scalar marking; used only where :func:`_loader_class` finds the nesting shallow,
        since the C composer has no depth guard."""

        def resolve(self, kind: type[Node], value: Any, implicit: Any) -> Any:
            if kind is ScalarNode and implicit[0]:
                return _PLAIN
            return super().resolve(kind, value, implicit)


#: Texts shorter than this use the pure-Python loader (its start-up is cheaper).
C_LOADER_MIN_CHARS = 20_000


def _loader_class(text: str) -> type[Any]:
    """The C loader for large texts whose nesting is certainly shallow, else the Python one.

    Flow nesting is bounded by the bracket depth (an upper bound: brackets inside quotes count
    too) and block nesting by the indentation, both measured in one vectorized pass.
    """
    if _CSafeLoader is None or len(text) < C_LOADER_MIN_CHARS:
        return _Loader
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    steps = np.zeros(codes.shape, dtype=np.int32)
    steps[(codes == ord("[")) | (codes == ord("{"))] = 1
    steps[(codes == ord("]")) | (codes == ord("}"))] = -1
    depth = int(np.max(np.cumsum(steps))) if steps.size else 0
    indent = max((len(line) - len(line.lstrip(" ")) for line in text.splitlines()), default=0)
    if depth > MAX_DEPTH // 2 or indent > 2 * MAX_DEPTH:
        return _Loader
    return _CLoader


@dataclass(frozen=True)
class _Ctx:
    """Where we are: the file (as the user named it) for every message, and the folder that
    array-file paths are relative to."""

    file: str
    base: Path = Path(".")
    max_elements: int = limits.MAX_ELEMENTS
    max_array_bytes: int = limits.MAX_ARRAY_BYTES

    def error(self, node: Node | None, field: str | None, message: str) -> SpecError:
        if node is None:
            return SpecError(self.file, message, field=field)
        mark = node.start_mark
        return SpecError(
            self.file, message, line=mark.line + 1, column=mark.column + 1, field=field
        )


# --------------------------------------------------------------------------------------------
# Scalars


def _describe(node: Node) -> str:
    """What a node is, for 'found ...' in messages."""
    if node.tag not in _UNTAGGED:
        return f"a value tagged {_tag_name(node)}"
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    value = _scalar(node)
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {_clip(value)!r}"
    return f"number {_clip(node.value)}"


def _clip(text: str, limit: int = 40) -> str:
    """``text``, shortened with an ellipsis beyond ``limit`` characters (for messages)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tag_name(node: Node) -> str:
    return str(node.tag).replace(_CORE, "!!")


def _scalar(node: Node) -> Any:
    """The value of a scalar node: None, bool, int, float or str (YAML 1.2 core schema)."""
    assert isinstance(node, ScalarNode)
    text: str = node.value
    tag: str = node.tag
    if tag == _PLAIN:
        if _NULL.match(text):
            return None
        if _BOOL.match(text):
            return text.lower() == "true"
        if _INT.match(text):
            try:
                return int(text)
            except ValueError:  # beyond Python's int-from-string digit limit
                return float(text)
        if _INT_OCT.match(text):
            return int(text[2:], 8)
        if _INT_HEX.match(text):
            return int(text[2:], 16)
        if _FLOAT.match(text):
            return float(text)
        if _INF.match(text):
            return -math.inf if text.startswith("-") else math.inf
        if _NAN.match(text):
            return math.nan
        return text
    if tag == _CORE + "str":
        return text
    raise ValueError(tag)  # handled by callers through _check_tags


def _check_tags(ctx: _Ctx, node: Node, field: str) -> None:
    """Reject every explicit tag: a spec is plain data."""
    if node.tag in _UNTAGGED:
        return
    tag = _tag_name(node)
    hint = " (Python tags are never loaded: specs are plain data)" if "python" in tag else ""
    raise ctx.error(node, field, f"explicit YAML tag {tag} is not allowed{hint}")


def _number(ctx: _Ctx, node: Node, field: str) -> float:
    """A real number (int or float in YAML); rejects booleans, strings and overflow to inf."""
    _check_tags(ctx, node, field)
    if isinstance(node, ScalarNode):
        value = _scalar(node)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if math.isinf(number) and not _INF.match(node.value):
                raise ctx.error(node, field, f"number {_clip(node.value)} overflows float64")
            return number
        if isinstance(value, str) and value.lower().lstrip("+-") in ("inf", "infinity", "nan"):
            sign = "-" if value.startswith("-") else ""
            spelled = ".nan" if "nan" in value.lower() else f"{sign}.inf"
            raise ctx.error(
                node, field, f"expected a number, found string {value!r} (YAML spells it {spelled})"
            )
    raise ctx.error(node, field, f"expected a number, found {_describe(node)}")


def _integer(ctx: _Ctx, node: Node, field: str) -> int:
    _check_tags(ctx, node, field)
    if isinstance(node, ScalarNode):
        value = _scalar(node)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise ctx.error(node, field, f"expected an integer, found {_describe(node)}")


def _string(ctx: _Ctx, node: Node, field: str) -> str:
    _check_tags(ctx, node, field)
    if isinstance(node, ScalarNode):
        value = _scalar(node)
        if isinstance(value, str):
            return value
    raise ctx.error(node, field, f"expected a string, found {_describe(node)}")


def _sequence(ctx: _Ctx, node: Node, field: str, what: str) -> list[Node]:
    _check_tags(ctx, node, field)
    if not isinstance(node, SequenceNode):
        raise ctx.error(node, field, f"expected {what}, found {_describe(node)}")
    return cast(list[Node], node.value)


# --------------------------------------------------------------------------------------------
# Mappings


def _mapping(
    ctx: _Ctx, node: Node, field: str | None, allowed: Iterable[str], what: str
) -> dict[str, tuple[Node, Node]]:
    """A mapping's entries by key as (key node, value node); rejects duplicate and unknown keys."""
    _check_tags(ctx, node, field or "(top level)")
    if not isinstance(node, MappingNode):
        raise ctx.error(node, field, f"expected {what}, found {_describe(node)}")
    allowed = tuple(allowed)
    entries: dict[str, tuple[Node, Node]] = {}
    for key_node, value_node in node.value:
        key_field = field or "(top level)"
        _check_tags(ctx, key_node, key_field)
        if not isinstance(key_node, ScalarNode) or not isinstance(_scalar(key_node), str):
            raise ctx.error(
                key_node, key_field, f"keys must be strings, found {_describe(key_node)}"
            )
        key = key_node.value
        sub = _join(field, key)
        if key in entries:
            first = entries[key][0].start_mark.line + 1
            raise ctx.error(key_node, sub, f"duplicate key (first given on line {first})")
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            if close:
                raise ctx.error(key_node, sub, f"unknown key; did you mean {close[0]!r}?")
            known = ", ".join(allowed)
            raise ctx.error(key_node, sub, f"unknown key (known keys: {known})")
        entries[key] = (key_node, value_node)
    return entries


def _join(field: str | None, key: str) -> str:
    return key if not field else f"{field}.{key}"


# --------------------------------------------------------------------------------------------
# Arrays


def _array_file(ctx: _Ctx, node: MappingNode, field: str) -> np.ndarray:
    """``{file: path.npy}`` or ``{file: path.npz, key: name}``, relative to the spec file."""
    entries = _mapping(ctx, node, field, ("file", "key"), "a mapping {file, key}")
    if "file" not in entries:
        raise ctx.error(node, f"{field}.file", "missing required key: path to a .npy or .npz file")
    file_node = entries["file"][1]
    name = _string(ctx, file_node, f"{field}.file")
    key = _string(ctx, entries["key"][1], f"{field}.key") if "key" in entries else None
    try:
        return load_array(ctx.base / name, key, ctx.max_array_bytes)
    except ArrayFileError as exc:
        raise ctx.error(file_node, f"{field}.file", str(exc)) from None


def _file_numbers(
    ctx: _Ctx, node: MappingNode, field: str, what: str, keep_dtype: bool = False
) -> np.ndarray:
    """A numeric array from a file with the same shape rules as inline arrays: float64, or with
    ``keep_dtype`` a float32/float16 array left as it is (large logits are not widened)."""
    arr = _array_file(ctx, node, field)
    if arr.dtype == np.dtype("V2"):  # np.save writes ml_dtypes' bfloat16 as raw 2-byte records
        arr = arr.view(bfloat16())
    if arr.dtype.kind == "b":
        raise ctx.error(node, field, f"expected {what}, found an array of booleans")
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise ctx.error(
            node, field, f"expected {what}, found an array of shape {_shape(arr.shape)}"
        )
    if keep_dtype and (arr.dtype in (np.float32, np.float16) or arr.dtype.name == "bfloat16"):
        return np.ascontiguousarray(arr)
    return np.ascontiguousarray(arr, dtype=np.float64)


def _float_array(
    ctx: _Ctx, node: Node, field: str, what: str, keep_dtype: bool = False
) -> np.ndarray:
    """A list of numbers (K,) or a list of equal-length lists of numbers (N, K), as float64;
    or either from a file (``{file: ...}``)."""
    if isinstance(node, MappingNode):
        _check_tags(ctx, node, field)
        return _file_numbers(ctx, node, field, what, keep_dtype)
    items = _sequence(ctx, node, field, what)
    if not items:
        raise ctx.error(node, field, f"expected {what}, found an empty list")
    if isinstance(items[0], SequenceNode):
        rows: list[list[float]] = []
        width: int | None = None
        if len(items) > ctx.max_elements:
            raise ctx.error(node, field, f"more than {ctx.max_elements} elements")
        for i, row_node in enumerate(items):
            row_field = f"{field}[{i}]"
            row = _sequence(ctx, row_node, row_field, "a list of numbers (every row is a list)")
            if width is None:
                width = len(row)
                if width == 0:
                    raise ctx.error(
                        row_node, row_field, "expected a list of numbers, found an empty list"
                    )
                if width * len(items) > ctx.max_elements:
                    raise ctx.error(node, field, f"more than {ctx.max_elements} elements")
            elif len(row) != width:
                raise ctx.error(
                    row_node,
                    row_field,
                    f"ragged batch: this row has {len(row)} entries, row 0 has {width}",
                )
            rows.append([_number(ctx, x, f"{row_field}[{j}]") for j, x in enumerate(row)])
        return np.array(rows, dtype=np.float64)
    if len(items) > ctx.max_elements:
        raise ctx.error(node, field, f"more than {ctx.max_elements} elements")
    return np.array(
        [_number(ctx, x, f"{field}[{j}]") for j, x in enumerate(items)], dtype=np.float64
    )


def _shaped(
    ctx: _Ctx,
    node: Node,
    field: str,
    shape: tuple[int, ...],
    what: str,
    like: str = "like the logits",
) -> np.ndarray:
    """A float array that must have exactly ``shape`` (by default the logits' shape)."""
    arr = _float_array(ctx, node, field, what)
    if arr.shape != shape:
        raise ctx.error(
            node,
            field,
            f"expected shape {_shape(shape)} {like}, found shape {_shape(arr.shape)}",
        )
    return arr


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


def _finite(ctx: _Ctx, node: Node, field: str, arr: np.ndarray) -> None:
    """Reject nan and infinities, naming the first offending element."""
    bad = ~np.isfinite(arr)
    if np.any(bad):
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        elem = _element(node, idx)
        path = field + "".join(f"[{i}]" for i in idx)
        raise ctx.error(elem, path, f"expected a finite number, found {arr[idx]}")


def _element(node: Node, idx: tuple[int, ...]) -> Node:
    """The node of an array element, for locating a message (the array's own node when the
    array came from a file)."""
    for i in idx:
        if not isinstance(node, SequenceNode):
            break
        node = node.value[i]
    return node


# --------------------------------------------------------------------------------------------
# Files and cases


def load_file(
    path: Path,
    display: str | None = None,
    *,
    max_elements: int | None = None,
    max_array_bytes: int | None = None,
) -> list[Spec | SpecError]:
    """Every case of one spec file, each a :class:`Spec` or the :class:`SpecError` that stops it.

    A problem with the file as a whole (unreadable, not YAML, not a mapping) is one error; a
    problem in one entry of ``cases`` stops only that entry. ``max_elements`` caps inline arrays
    (default :data:`MAX_ELEMENTS`), ``max_array_bytes`` arrays read from files (default
    :data:`MAX_ARRAY_BYTES`).
    """
    ctx = _context(display or str(path), path.parent, max_elements, max_array_bytes)
    try:
        root = _compose(ctx, path)
    except SpecError as exc:
        return [exc]
    return _load_root(ctx, root, path.stem)


def load_text(
    text: str,
    display: str = "<text>",
    base: Path | None = None,
    *,
    max_elements: int | None = None,
    max_array_bytes: int | None = None,
) -> list[Spec | SpecError]:
    """Like :func:`load_file` for a spec given as YAML text; ``display`` names it in messages
    and ``base`` is the folder that ``{file: ...}`` arrays are relative to (default: the working
    directory)."""
    ctx = _context(display, base or Path.cwd(), max_elements, max_array_bytes)
    try:
        root = _compose_text(ctx, text)
    except SpecError as exc:
        return [exc]
    return _load_root(ctx, root, Path(display).stem or "spec")


def _context(
    display: str, base: Path, max_elements: int | None, max_array_bytes: int | None
) -> _Ctx:
    """The loader's context, with this module's size caps where none are given (read at call
    time: tests lower them)."""
    return _Ctx(
        display,
        base,
        MAX_ELEMENTS if max_elements is None else max_elements,
        MAX_ARRAY_BYTES if max_array_bytes is None else max_array_bytes,
    )


def _load_root(ctx: _Ctx, root: Node, stem: str) -> list[Spec | SpecError]:
    """The cases of one composed document (see :func:`load_file`)."""
    try:
        entries = _mapping(
            ctx, root, None, (*CASE_KEYS, *FILE_KEYS), "a mapping of spec keys (logits, label, ...)"
        )
    except SpecError as exc:
        return [exc]
    if "cases" not in entries:
        return [_case(ctx, entries, None, stem, root)]
    _, cases_node = entries.pop("cases")
    try:
        case_nodes = _sequence(ctx, cases_node, "cases", "a list of cases")
        if not case_nodes:
            raise ctx.error(cases_node, "cases", "expected a list of cases, found an empty list")
    except SpecError as exc:
        return [exc]
    out: list[Spec | SpecError] = []
    for i, case_node in enumerate(case_nodes):
        field = f"cases[{i}]"
        try:
            own = _mapping(ctx, case_node, field, CASE_KEYS, "a mapping of spec keys")
        except SpecError as exc:
            out.append(exc)
            continue
        merged = {**entries, **own}
        out.append(_case(ctx, merged, field, f"{stem}[{i}]", case_node))
    return out


def to_plain(path: Path) -> Any:
    """A spec file as plain Python values (dicts, lists, str, int, float, bool, None), read by
    the same YAML 1.2 core-schema rules as the loader (for validating against the JSON Schema).
    Raises SpecError for a file that does not read."""
    root = _compose(_Ctx(str(path), path.parent), path)

    def plain(node: Node) -> Any:
        if isinstance(node, MappingNode):
            return {str(k.value): plain(v) for k, v in node.value}
        if isinstance(node, SequenceNode):
            return [plain(v) for v in node.value]
        return _scalar(node)

    return plain(root)


def _compose(ctx: _Ctx, path: Path) -> Node:
    """Read and compose one YAML document, with located errors for every way that fails."""
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise ctx.error(
                None,
                None,
                f"the file is {size / 2**20:,.1f} MiB, more than the {MAX_SPEC_BYTES // 2**20} MiB "
                "a spec may have; put large arrays in .npy files ({file: logits.npy})",
            )
        data = path.read_bytes()
    except OSError as exc:
        raise ctx.error(None, None, f"cannot read file: {exc.strerror or exc}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ctx.error(None, None, "not UTF-8 (the file starts with a UTF-16 byte-order mark)")
    if b"\x00" in data:
        raise ctx.error(None, None, "not a text file (contains NUL bytes); expected a YAML spec")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        col = len(data[line_start : exc.start].decode("utf-8", errors="replace")) + 1
        raise SpecError(
            ctx.file, f"not valid UTF-8 (byte 0x{data[exc.start]:02x})", line=line, column=col
        ) from None
    return _compose_text(ctx, text)


def _compose_text(ctx: _Ctx, text: str) -> Node:
    """Compose the one YAML document of ``text``, with located errors."""
    try:
        docs = _compose_all(text)
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(ctx, exc) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise SpecError(
            ctx.file,
            f"invalid YAML: unacceptable character #x{exc.character:04x}: "
            "special characters are not allowed",
            line=line,
            column=col,
        ) from None
    except yaml.YAMLError as exc:
        raise ctx.error(None, None, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ctx.error(
            None, None, "invalid spec: the YAML is nested too deeply (specs need at most 4 levels)"
        ) from None
    if not docs:
        what = "has only comments" if text.strip() else "is empty"
        raise SpecError(
            ctx.file,
            f"the file {what}; expected a mapping with at least 'logits'",
            line=1,
            column=1,
        )
    if len(docs) > 1:
        raise ctx.error(
            docs[1], None, "several YAML documents in one file; put several cases under 'cases:'"
        )
    return docs[0]


def _yaml_error(ctx: _Ctx, exc: yaml.MarkedYAMLError) -> SpecError:
    """A located message from PyYAML's error, keeping its context ('while parsing a list...')."""
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem and exc.context_mark is not None:
        where = f"line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
        problem = f"{problem} ({exc.context} started at {where})"
    if mark is None:
        return ctx.error(None, None, f"invalid YAML: {problem}")
    return SpecError(
        ctx.file, f"invalid YAML: {problem}", line=mark.line + 1, column=mark.column + 1
    )


def _compose_all(text: str) -> list[Node]:
    loader_class = _loader_class(text)
    if loader_class is not _Loader:
        try:
            return _compose_with(loader_class, text)
        except yaml.YAMLError:
            pass  # re-read with the Python loader, whose messages the docs and tests fix
    return _compose_with(_Loader, text)


def _compose_with(loader_class: type[Any], text: str) -> list[Node]:
    loader = loader_class(text)
    try:
        docs = []
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                docs.append(node)
        return docs
    finally:
        loader.dispose()


def _case(
    ctx: _Ctx,
    entries: dict[str, tuple[Node, Node]],
    prefix: str | None,
    default_name: str,
    case_node: Node,
) -> Spec | SpecError:
    """Build one case; return the error instead of raising it, so other cases still run.

    After an error in a field nothing else depends on (an option, a tolerance, an expectation),
    the case is validated again without that field, so one run reports up to
    :data:`MAX_ERRORS_PER_CASE` of its errors (as the first error's ``others``), not one."""
    found: list[SpecError] = []
    remaining = dict(entries)
    while len(found) < MAX_ERRORS_PER_CASE:
        try:
            spec = _build_spec(ctx, remaining, prefix, default_name, case_node)
        except SpecError as exc:
            found.append(exc)
            key = _top_key(exc.field, prefix)
            if key is None or key in _FOUNDATIONS or key not in remaining:
                break
            del remaining[key]
            continue
        if not found:
            return spec
        break
    first = found[0]
    first.others = tuple(found[1:])
    return first


#: Most errors reported for one case.
MAX_ERRORS_PER_CASE = 20
#: Keys other fields are validated against: after an error in one of them, stop.
_FOUNDATIONS = frozenset(
    {
        "logits",
        "label",
        "target",
        "layer",
        "linear",
        "regime",
        "loss",
        "classes",
        "num_classes",
        "reduction",
        "defaults",
    }
)


def _top_key(field: str | None, prefix: str | None) -> str | None:
    """The spec key a located field belongs to (``cases[1].expect.loss`` -> ``expect``)."""
    if not field:
        return None
    if prefix and field.startswith(prefix + "."):
        field = field[len(prefix) + 1 :]
    return field.split(".", 1)[0].split("[", 1)[0]


@dataclass(frozen=True)
class _Case:
    """One case's entries, and how to name and read them.

    In a ``cases`` file every field is named with its case (``cases[1].label``), including keys
    inherited from the top level; the location is where the key is written. ``node`` (the case's
    mapping) locates missing keys.
    """

    ctx: _Ctx
    entries: dict[str, tuple[Node, Node]]
    prefix: str | None
    node: Node

    def field(self, key: str) -> str:
        return key if self.prefix is None else f"{self.prefix}.{key}"

    def value(self, key: str) -> Node | None:
        """The key's value node; None when absent; an error when given but empty."""
        if key not in self.entries:
            return None
        node = self.entries[key][1]
        if isinstance(node, ScalarNode) and node.tag == _PLAIN and _NULL.match(node.value):
            raise self.ctx.error(
                node, self.field(key), f"expected {CASE_KEYS[key]}, found an empty value"
            )
        return node

    def string(self, key: str) -> str | None:
        node = self.value(key)
        return None if node is None else _string(self.ctx, node, self.field(key))

    def choice(self, key: str, choices: tuple[str, ...]) -> str | None:
        """A string that must be one of ``choices``."""
        text = self.string(key)
        if text is not None and text not in choices:
            raise self.ctx.error(
                self.entries[key][1],
                self.field(key),
                f"expected one of {' | '.join(choices)}, found {text!r}",
            )
        return text


#: Options the labels are validated against: read before them (the others after the targets).
_LABEL_OPTIONS = ("ignore_index",)


def _build_spec(
    ctx: _Ctx,
    entries: dict[str, tuple[Node, Node]],
    prefix: str | None,
    default_name: str,
    case_node: Node,
) -> Spec:
    """Validate one case's keys, in the order their errors are reported."""
    case = _Case(ctx, entries, prefix, case_node)
    name = case.string("name")
    description = case.string("description")
    loss = cast(LossKind, case.choice("loss", LOSS_KINDS) or SOFTMAX)
    _reject_foreign_options(case, loss)
    regime = _regime(case, loss)  # (logits, labels, node) built from a seed, or None
    linear = None if regime else _linear(case, loss)  # (layer, logits, node, drawn labels)
    if regime:
        layer, logits, logits_node = None, regime[0], regime[2]
    elif linear:
        layer, logits, logits_node = linear[0], linear[1], linear[2]
        if linear[3] is not None and "label" not in case.entries:
            regime = (logits, linear[3], logits_node)  # the seed drew the labels too
    else:
        layer, logits, logits_node = _logits(case, loss)
    single = logits.ndim == 1
    batch = logits[None, :] if single else logits
    classes = _classes_and_count(case, batch.shape[1])
    options = _loss_options(case, loss, logits.shape, lambda key: key in _LABEL_OPTIONS)
    options |= _defaults(case, loss, options)
    labels, targets = (
        (regime[1], None)
        if regime
        else _labels_or_targets(case, loss, logits, classes, options.get("ignore_index"))
    )
    options |= _loss_options(case, loss, logits.shape, lambda key: key not in _LABEL_OPTIONS)
    reduction = cast(Reduction, case.choice("reduction", REDUCTIONS) or "mean")
    methods = None
    if (node := case.value("methods")) is not None:
        methods = _methods(ctx, node, case.field("methods"))
    fd_scheme: Scheme = "central"
    fd_step = None
    if (node := case.value("finite_difference")) is not None:
        fd_scheme, fd_step = _fd_settings(ctx, node, case.field("finite_difference"))
    if linear:
        assert layer is not None
        dtype = _linear_dtype(case, layer)
    else:
        dtype, batch = _dtype(case, batch, logits_node)
    tolerance = ToleranceOverride()
    per_method: dict[str, ToleranceOverride] = {}
    if (node := case.value("tolerance")) is not None:
        tolerance, per_method = _tolerance(ctx, node, case.field("tolerance"))
    expect = None
    if (node := case.value("expect")) is not None:
        loss_shape = logits.shape if loss == SIGMOID else (batch.shape[0],)
        expect = _expect(ctx, node, case.field("expect"), logits.shape, loss_shape, reduction)
    microbatches = _microbatches(case, batch.shape[0])
    grad_output = _grad_output(case, loss, logits.shape, reduction)
    return Spec(
        locations=_locations(case),
        name=default_name if name is None else name,
        file=ctx.file,
        logits=batch if _placeholder(batch) else np.ascontiguousarray(batch),
        single=single,
        labels=labels,
        targets=targets,
        reduction=reduction,
        loss=loss,
        layer=layer,
        classes=classes,
        description=description,
        methods=methods,
        fd_scheme=fd_scheme,
        fd_step=fd_step,
        dtype=dtype,
        tolerance=tolerance,
        method_tolerances=per_method,
        expect=expect,
        microbatches=microbatches,
        grad_output=grad_output,
        **options,
    )


def _locations(case: _Case) -> dict[str, tuple[int, int]]:
    """Where each of the case's keys is written, as (line, column), 1-based: the case itself
    (``case``), every key (``logits``; an inherited key where the file's top level gives it),
    each key of ``expect`` (``expect.loss``) and each row of an inline batch (``logits[3]``)."""

    def at(node: Node) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    found = {"case": at(case.node)}
    for key, (key_node, value_node) in case.entries.items():
        found[key] = at(key_node)
        if key == "expect" and isinstance(value_node, MappingNode):
            for sub_key, _ in value_node.value:
                found[f"expect.{sub_key.value}"] = at(sub_key)
        if key == "logits" and isinstance(value_node, SequenceNode):
            rows = value_node.value
            if rows and all(isinstance(row, SequenceNode) for row in rows):
                found.update((f"logits[{i}]", at(row)) for i, row in enumerate(rows))
    return found


def _microbatches(case: _Case, n: int) -> int | None:
    """``microbatches: k`` with 2 <= k <= N (the batch's rows split into k contiguous parts)."""
    node = case.value("microbatches")
    if node is None:
        return None
    k = _integer(case.ctx, node, case.field("microbatches"))
    if not 2 <= k <= n:
        raise case.ctx.error(
            node,
            case.field("microbatches"),
            f"expected an integer from 2 to the batch size {n}, found {k}",
        )
    return k


def _grad_output(
    case: _Case, loss: LossKind, shape: tuple[int, ...], reduction: Reduction
) -> np.ndarray | None:
    """``grad_output``, shaped like the loss (``model.Spec.grad_output``): one number for a
    reduced loss; with ``none`` one per row of logits (softmax; one number for a single sample)
    or one per element (sigmoid, shaped like the logits ``shape`` as given); finite."""
    node = case.value("grad_output")
    if node is None:
        return None
    ctx, field = case.ctx, case.field("grad_output")
    single = len(shape) == 1
    n = 1 if single else shape[0]
    if reduction != "none" or (single and loss == SOFTMAX and isinstance(node, ScalarNode)):
        _check_tags(ctx, node, field)
        if not isinstance(node, ScalarNode):
            raise ctx.error(
                node,
                field,
                f"expected one number (the upstream gradient of the loss reduced by "
                f"{reduction}; one per sample is for reduction none), found {_describe(node)}",
            )
        value = _number(ctx, node, field)
        if not math.isfinite(value):
            raise ctx.error(node, field, f"expected a finite number, found {node.value}")
        return np.array(value if reduction != "none" else [value])
    if loss == SIGMOID:
        what = f"numbers shaped like the logits {_shape(shape)} (reduction none: one per element)"
        expected = shape
    else:
        what = (
            "one number (a single sample, reduction none)"
            if single
            else f"{n} numbers (reduction none: one per row of logits)"
        )
        expected = (n,)
    arr = _float_array(ctx, node, field, what)
    if arr.shape != expected:
        count = f"{arr.size} number" + ("" if arr.size == 1 else "s")
        found = count if arr.ndim == 1 else f"shape {_shape(arr.shape)}"
        raise ctx.error(node, field, f"expected {what}, found {found}")
    _finite(ctx, node, field, arr)
    return arr.reshape(n, -1) if loss == SIGMOID else arr


def _defaults(case: _Case, loss: LossKind, options: dict[str, Any]) -> dict[str, Any]:
    """What ``defaults: torch`` sets that the case leaves unset: ``ignore_index`` -100 (PyTorch's
    ``F.cross_entropy`` default) for softmax index labels. Probability targets and sigmoid
    cross-entropy have no ``ignore_index`` in PyTorch's sense (it never applies to them), so
    nothing is set there; an explicit ``ignore_index`` wins."""
    node = case.value("defaults")
    if node is None:
        return {}
    _one_of(case.ctx, node, case.field("defaults"), DEFAULTS)
    if loss != SOFTMAX or "ignore_index" in options or case.value("target") is not None:
        return {}
    return {"ignore_index": TORCH_IGNORE_INDEX}


def _reject_foreign_options(case: _Case, loss: LossKind) -> None:
    """An option another loss family owns is an error (with a hint when ``loss`` is the
    default, so the user may have meant the other family)."""
    for option in OPTIONS:
        if loss in option.kinds or (node := case.value(option.name)) is None:
            continue
        hint = "" if "loss" in case.entries else f"; set loss: {option.families[0]} to use it"
        raise case.ctx.error(
            node, case.field(option.name), f"{option.name} does not apply to loss {loss}{hint}"
        )


def _logits(case: _Case, loss: LossKind) -> tuple[Layer | None, np.ndarray, Node]:
    """The layer (if any), the logits as given ((K,) or (N, K)) and the node they came from."""
    logits_node, layer_node = case.value("logits"), case.value("layer")
    if logits_node is not None and layer_node is not None:
        raise case.ctx.error(
            layer_node, case.field("layer"), "give either 'logits' or 'layer', not both"
        )
    if layer_node is not None:
        layer, logits = _layer(case.ctx, layer_node, case.field("layer"))
        return layer, logits, layer_node
    if logits_node is None:
        raise case.ctx.error(
            case.node,
            case.field("logits"),
            "missing required key: K numbers, or N lists of K numbers "
            "(or a 'layer', or a 'regime')",
        )
    field = case.field("logits")
    what = "K numbers, or N lists of K numbers"
    logits = _float_array(case.ctx, logits_node, field, what, keep_dtype=True)
    _check_logits(case.ctx, logits_node, field, logits, allow_minus_inf=loss == SOFTMAX)
    return None, logits, logits_node


def _regime(case: _Case, loss: LossKind) -> tuple[np.ndarray, np.ndarray, Node] | None:
    """``regime:``: the logits (N, K), in the spec's dtype, and the labels (N,) that
    :mod:`gradcheck_cli.regimes` builds from a seed, with the regime's node; None without one."""
    node = case.value("regime")
    if node is None:
        return None
    ctx, field = case.ctx, case.field("regime")
    for other in ("logits", "layer", "linear", "label", "target"):
        if other in case.entries:
            raise ctx.error(
                case.entries[other][0],
                case.field(other),
                f"give either 'regime' or '{other}', not both (the regime builds the logits "
                "and the labels)",
            )
    if loss != SOFTMAX:
        raise ctx.error(node, field, f"regime applies to loss {SOFTMAX} (it draws class labels)")
    entries = _mapping(ctx, node, field, regimes.DESCRIPTIONS, "a mapping {kind, rows, ...}")
    read = {"kind": _string, "p": _number, "scale": _number, "ignored": _number}
    values: dict[str, Any] = {}
    for key, (_, sub) in entries.items():
        values[key] = read.get(key, _integer)(ctx, sub, f"{field}.{key}")
    for key in ("kind", "rows", "num_classes"):
        if key not in values:
            what = regimes.DESCRIPTIONS[key]
            raise ctx.error(node, f"{field}.{key}", f"missing required key: {what}")
    dtype = case.choice("dtype", DTYPES) or "float64"
    register(dtype)
    shape = (values["rows"], values["num_classes"])
    ignore = _loss_options(case, loss, shape, lambda key: key == "ignore_index")
    regime = regimes.Regime(**values)
    try:
        regimes.validate(regime, ignore.get("ignore_index"))
        size = regimes.nbytes(regime, dtype)
        if size > ctx.max_array_bytes:
            raise regimes.RegimeError(
                "rows",
                f"the logits would take {size / 2**20:,.1f} MiB in {dtype}, more than the "
                f"limit of {ctx.max_array_bytes / 2**20:,.0f} MiB (--max-array-mb)",
            )
        logits, labels = regimes.generate(regime, dtype, ignore.get("ignore_index"))
    except regimes.RegimeError as exc:
        at = entries[exc.field][1] if exc.field in entries else node
        raise ctx.error(at, f"{field}.{exc.field}", exc.message) from None
    return logits, labels, node


def _classes_and_count(case: _Case, k: int) -> tuple[str, ...] | None:
    """``classes`` (K unique names) and the check of ``num_classes`` against K."""
    classes = None
    if (node := case.value("classes")) is not None:
        classes = _classes(case.ctx, node, case.field("classes"), k)
    if (node := case.value("num_classes")) is not None:
        declared = _integer(case.ctx, node, case.field("num_classes"))
        if declared != k:
            raise case.ctx.error(
                node,
                case.field("num_classes"),
                f"num_classes is {declared} but the logits have {k} classes",
            )
    return classes


def _loss_options(
    case: _Case, loss: LossKind, shape: tuple[int, ...], wanted: Callable[[str], bool]
) -> dict[str, Any]:
    """The ``wanted`` options of family ``loss`` the case sets, validated by their kind in the
    option table; ``shape`` is the logits' shape as given."""
    out: dict[str, Any] = {}
    for option in options_of(loss):
        if wanted(option.name) and (node := case.value(option.name)) is not None:
            read = _OPTION_READERS[option.kinds[loss]]
            out[option.name] = read(case.ctx, node, case.field(option.name), option, shape)
    return out


def _unit_option(ctx: _Ctx, node: Node, field: str, option: Option, shape: Any) -> float:
    x = _number(ctx, node, field)
    if not 0.0 <= x <= 1.0:
        raise ctx.error(node, field, f"expected a number in [0, 1], found {node.value}")
    return x


def _positive_option(ctx: _Ctx, node: Node, field: str, option: Option, shape: Any) -> float:
    x = _number(ctx, node, field)
    if not (math.isfinite(x) and x > 0):
        raise ctx.error(node, field, f"expected a finite number > 0, found {node.value}")
    return x


def _nonnegative_option(ctx: _Ctx, node: Node, field: str, option: Option, shape: Any) -> float:
    return _nonnegative(ctx, node, field)


def _int64_option(ctx: _Ctx, node: Node, field: str, option: Option, shape: Any) -> int:
    value = _integer(ctx, node, field)
    if not -(2**63) <= value < 2**63:
        raise ctx.error(
            node, field, f"expected an integer that fits in 64 bits, found {_clip(node.value)}"
        )
    return value


def _class_array_option(
    ctx: _Ctx, node: Node, field: str, option: Option, shape: tuple[int, ...]
) -> np.ndarray:
    k = shape[-1]
    return _nonnegative_array(ctx, node, field, (k,), f"{k} {option.what}")


def _row_array_option(
    ctx: _Ctx, node: Node, field: str, option: Option, shape: tuple[int, ...]
) -> np.ndarray:
    """N finite numbers >= 0, one per row of logits (a number, or a list of one, for a single
    sample), as float64 (N,)."""
    single = len(shape) == 1
    n = 1 if single else shape[0]
    what = (
        "one number (a single sample)" if single else f"{n} {option.what} (one per row of logits)"
    )
    if single and isinstance(node, ScalarNode):
        return np.array([_nonnegative(ctx, node, field)])
    arr = _float_array(ctx, node, field, what)
    if arr.shape != (n,):
        raise ctx.error(node, field, f"expected {what}, found shape {_shape(arr.shape)}")
    _require_nonnegative(ctx, node, field, arr)
    return arr


def _choice_option(ctx: _Ctx, node: Node, field: str, option: Option, shape: Any) -> str:
    return _one_of(ctx, node, field, option.choices)


def _one_of(ctx: _Ctx, node: Node, field: str, choices: tuple[str, ...]) -> str:
    """A string that is one of ``choices``; anything else is an error listing them."""
    _check_tags(ctx, node, field)
    allowed = " | ".join(choices)
    value = _scalar(node) if isinstance(node, ScalarNode) else None
    if not isinstance(value, str):
        raise ctx.error(node, field, f"expected one of {allowed}, found {_describe(node)}")
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ctx.error(node, field, f"expected one of {allowed}, found {value!r}{hint}")
    return value


def _broadcast_option(
    ctx: _Ctx, node: Node, field: str, option: Option, shape: tuple[int, ...]
) -> np.ndarray:
    weight = _broadcast_weight(ctx, node, field, shape)
    return weight[None, :] if len(shape) == 1 else weight


#: How each kind of the option table is read and checked.
_OPTION_READERS: dict[Kind, Callable[[_Ctx, Node, str, Option, tuple[int, ...]], Any]] = {
    "unit": _unit_option,
    "positive": _positive_option,
    "nonnegative": _nonnegative_option,
    "int64": _int64_option,
    "class_array": _class_array_option,
    "broadcast_array": _broadcast_option,
    "row_array": _row_array_option,
    "choice": _choice_option,
}


def _labels_or_targets(
    case: _Case,
    loss: LossKind,
    logits: np.ndarray,
    classes: tuple[str, ...] | None,
    ignore_index: int | None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Exactly one of ``label`` (softmax only) and ``target``: (labels (N,), None) or
    (None, targets (N, K))."""
    label_node, target_node = case.value("label"), case.value("target")
    if label_node is not None and target_node is not None:
        raise case.ctx.error(
            target_node, case.field("target"), "give either 'label' or 'target', not both"
        )
    if label_node is not None:
        if loss == SIGMOID:
            raise case.ctx.error(
                label_node,
                case.field("label"),
                "loss sigmoid_cross_entropy takes 'target' (values in [0, 1] shaped like the "
                "logits), not 'label'",
            )
        single = logits.ndim == 1
        n, k = (1, logits.shape[0]) if single else logits.shape
        field = case.field("label")
        return _labels(case.ctx, label_node, field, single, n, k, classes, ignore_index), None
    if target_node is not None:
        return None, _targets(case, loss, target_node, logits, ignore_index)
    if loss == SIGMOID:
        raise case.ctx.error(
            case.node,
            case.field("target"),
            "missing required key: values in [0, 1] shaped like the logits",
        )
    raise case.ctx.error(
        case.node,
        case.field("label"),
        "missing required key: give 'label' (class index or name) or 'target'",
    )


def _targets(
    case: _Case, loss: LossKind, node: Node, logits: np.ndarray, ignore_index: int | None
) -> np.ndarray:
    """``target`` as (N, K): probabilities (softmax: each row a distribution)."""
    if ignore_index is not None:
        raise case.ctx.error(
            case.entries["ignore_index"][1],
            case.field("ignore_index"),
            "ignore_index applies to index labels ('label'), not to 'target'",
        )
    field = case.field("target")
    t = _shaped(case.ctx, node, field, logits.shape, "values shaped like the logits")
    _finite(case.ctx, node, field, t)
    _check_targets(case.ctx, node, field, t, distributions=loss == SOFTMAX)
    return t[None, :] if logits.ndim == 1 else t


def _dtype(case: _Case, batch: np.ndarray, logits_node: Node) -> tuple[DType, np.ndarray]:
    """The precision of the methods under test, and the logits (widened for float64).

    Logits read from a float32, float16 or bfloat16 file stay in that dtype, which is then the
    default (a bfloat16 .npy holds raw 2-byte records: they are read as bfloat16).
    """
    names: dict[str, DType] = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}
    dtype: DType = names.get(batch.dtype.name, "float64")
    text = case.choice("dtype", DTYPES)
    if text is None:
        return dtype, batch
    dtype = cast(DType, text)
    register(dtype)
    _check_dtype_range(case.ctx, logits_node, case.field("logits"), batch, dtype)
    return dtype, batch.astype(np.float64) if dtype == "float64" else batch


def _labels(
    ctx: _Ctx,
    node: Node,
    field: str,
    single: bool,
    n: int,
    k: int,
    classes: tuple[str, ...] | None,
    ignore_index: int | None = None,
) -> np.ndarray:
    _check_tags(ctx, node, field)
    if isinstance(node, MappingNode):
        return _file_labels(ctx, node, field, single, n, k, ignore_index)
    if single:
        if isinstance(node, SequenceNode):
            raise ctx.error(
                node, field, "one sample takes one label (a class index or name), found a list"
            )
        return np.array([_label(ctx, node, field, k, classes, ignore_index)], dtype=np.int64)
    items = _sequence(ctx, node, field, f"a list of {n} labels, one per row of logits")
    if len(items) != n:
        raise ctx.error(
            node, field, f"expected {n} labels (one per row of logits), found {len(items)}"
        )
    return np.array(
        [_label(ctx, x, f"{field}[{i}]", k, classes, ignore_index) for i, x in enumerate(items)],
        dtype=np.int64,
    )


def _file_labels(
    ctx: _Ctx,
    node: MappingNode,
    field: str,
    single: bool,
    n: int,
    k: int,
    ignore_index: int | None,
) -> np.ndarray:
    """Integer class indices from a file: shape (N,) (or one value for a single sample)."""
    arr = _array_file(ctx, node, field)
    if arr.dtype.kind not in "iu":
        raise ctx.error(node, field, f"expected integer class indices, found dtype {arr.dtype}")
    want = (1,) if single else (n,)
    if arr.reshape(-1).shape != want or arr.ndim > 1:
        raise ctx.error(
            node,
            field,
            f"expected {want[0]} labels (one per row of logits), found shape {_shape(arr.shape)}",
        )
    labels = arr.reshape(-1).astype(np.int64)
    live = labels != ignore_index if ignore_index is not None else np.ones(len(labels), bool)
    bad = live & ((labels < 0) | (labels >= k))
    if np.any(bad):
        i = int(np.argmax(bad))
        also = "" if ignore_index is None else f" or ignore_index {ignore_index}"
        raise ctx.error(
            node,
            f"{field}[{i}]",
            f"class index {int(labels[i])} out of range: expected 0 to {k - 1}{also}",
        )
    return labels


def _label(
    ctx: _Ctx,
    node: Node,
    field: str,
    k: int,
    classes: tuple[str, ...] | None,
    ignore_index: int | None = None,
) -> int:
    _check_tags(ctx, node, field)
    value = _scalar(node) if isinstance(node, ScalarNode) else None
    if isinstance(value, int) and not isinstance(value, bool):
        if value == ignore_index:
            return value
        if not 0 <= value < k:
            also = "" if ignore_index is None else f" or ignore_index {ignore_index}"
            raise ctx.error(
                node, field, f"class index {value} out of range: expected 0 to {k - 1}{also}"
            )
        return value
    if isinstance(value, str):
        if classes is None:
            raise ctx.error(
                node, field, f"class name {value!r} given but the spec has no 'classes' list"
            )
        if value not in classes:
            close = difflib.get_close_matches(value, classes, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ctx.error(
                node, field, f"unknown class name {value!r} (classes: {', '.join(classes)}){hint}"
            )
        return classes.index(value)
    if isinstance(value, float):
        if _INT.match(node.value):  # an integer too long to convert: certainly out of range
            raise ctx.error(
                node, field, f"class index {_clip(node.value)} out of range: expected 0 to {k - 1}"
            )
        raise ctx.error(node, field, f"expected an integer class index, found number {node.value}")
    raise ctx.error(node, field, f"expected a class index or class name, found {_describe(node)}")


def _check_targets(
    ctx: _Ctx, node: Node, field: str, t: np.ndarray, *, distributions: bool = True
) -> None:
    """Targets are probabilities: entries in [0, 1]; for softmax, each distribution sums to 1
    within 1e-6 (sigmoid targets are independent probabilities).

    ``t`` has the shape the spec gave, (K,) or (N, K), so indices map straight onto the nodes.
    """
    outside = (t < 0) | (t > 1)
    if np.any(outside):
        idx = tuple(int(i) for i in np.argwhere(outside)[0])
        path = field + "".join(f"[{i}]" for i in idx)
        raise ctx.error(
            _element(node, idx), path, f"expected a probability in [0, 1], found {t[idx]:g}"
        )
    if not distributions:
        return
    sums = np.sum(t, axis=-1, keepdims=True).reshape(-1)
    off = np.abs(sums - 1.0) > TARGET_SUM_TOLERANCE
    if np.any(off):
        row = int(np.argmax(off))
        at, path = (node.value[row], f"{field}[{row}]") if t.ndim == 2 else (node, field)
        raise ctx.error(
            at,
            path,
            f"probabilities must sum to 1 (within {TARGET_SUM_TOLERANCE:g}), "
            f"found sum {sums[row]:.10g}",
        )


def _check_logits(
    ctx: _Ctx, node: Node, field: str, logits: np.ndarray, *, allow_minus_inf: bool
) -> None:
    """No nan or +inf; -inf only where allowed (softmax: probability 0), and every softmax row
    needs a finite logit."""
    if np.isfinite(logits).all():  # the common case, in one pass
        return
    bad = np.isnan(logits) | (logits == np.inf)
    if not allow_minus_inf:
        bad |= logits == -np.inf
    if np.any(bad):
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        path = field + "".join(f"[{i}]" for i in idx)
        allowed = "a finite number or -.inf" if allow_minus_inf else "a finite number"
        raise ctx.error(_element(node, idx), path, f"expected {allowed}, found {logits[idx]}")
    rows = logits.reshape(-1, logits.shape[-1])
    dead = ~np.any(np.isfinite(rows), axis=-1)
    if np.any(dead):
        row = int(np.argmax(dead))
        at, path = (
            (_element(node, (row,)), f"{field}[{row}]") if logits.ndim == 2 else (node, field)
        )
        raise ctx.error(at, path, "every logit is -inf: the softmax is undefined (0/0)")


def _classes(ctx: _Ctx, node: Node, field: str, k: int) -> tuple[str, ...]:
    names: list[str] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(_sequence(ctx, node, field, "a list of class names")):
        name = _string(ctx, item, f"{field}[{i}]")
        if name in seen:
            raise ctx.error(
                item, f"{field}[{i}]", f"duplicate class name {name!r} (also at index {seen[name]})"
            )
        seen[name] = i
        names.append(name)
    if len(names) != k:
        raise ctx.error(
            node, field, f"expected {k} class names (one per logit), found {len(names)}"
        )
    return tuple(names)


def _nonnegative_array(
    ctx: _Ctx, node: Node, field: str, shape: tuple[int, ...], what: str
) -> np.ndarray:
    """A list of finite numbers >= 0 of exactly ``shape``."""
    arr = _float_array(ctx, node, field, what)
    if arr.shape != shape:
        raise ctx.error(node, field, f"expected {what}, found shape {_shape(arr.shape)}")
    _require_nonnegative(ctx, node, field, arr)
    return arr


def _require_nonnegative(ctx: _Ctx, node: Node, field: str, arr: np.ndarray) -> None:
    bad = ~(np.isfinite(arr) & (arr >= 0))
    if np.any(bad):
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        path = field + "".join(f"[{i}]" for i in idx)
        raise ctx.error(
            _element(node, idx), path, f"expected a finite number >= 0, found {arr[idx]}"
        )


def _broadcast_weight(ctx: _Ctx, node: Node, field: str, shape: tuple[int, ...]) -> np.ndarray:
    """Sigmoid element weights: a number or an array that broadcasts to the logits' shape
    (PyTorch's rule), returned broadcast to ``shape``."""
    if isinstance(node, ScalarNode):
        value = _nonnegative(ctx, node, field)
        return np.full(shape, value)
    arr = _float_array(ctx, node, field, "a number or an array that broadcasts to the logits")
    _require_nonnegative(ctx, node, field, arr)
    try:
        return np.broadcast_to(arr, shape).copy()
    except ValueError:
        raise ctx.error(
            node,
            field,
            f"shape {_shape(arr.shape)} does not broadcast to the logits' shape {_shape(shape)}",
        ) from None


def _layer(ctx: _Ctx, node: Node, field: str) -> tuple[Layer, np.ndarray]:
    """``layer: {inputs, weights, bias}`` and the logits it computes (shape (K,) or (N, K))."""
    entries = _mapping(ctx, node, field, LAYER_KEYS, "a mapping {inputs, weights, bias}")
    for key in ("inputs", "weights"):
        if key not in entries:
            raise ctx.error(node, f"{field}.{key}", "missing required key")
    in_node, w_node = entries["inputs"][1], entries["weights"][1]
    inputs = _float_array(ctx, in_node, f"{field}.inputs", "D numbers, or N lists of D numbers")
    _finite(ctx, in_node, f"{field}.inputs", inputs)
    weights = _float_array(ctx, w_node, f"{field}.weights", "D lists of K numbers")
    _finite(ctx, w_node, f"{field}.weights", weights)
    d = inputs.shape[-1]
    if weights.ndim != 2 or weights.shape[0] != d:
        raise ctx.error(
            w_node,
            f"{field}.weights",
            f"expected shape (D, K) with D = {d} (one row per input), found shape "
            f"{_shape(weights.shape)}",
        )
    k = weights.shape[1]
    bias = _bias(ctx, entries, field, k)
    batch = inputs[None, :] if inputs.ndim == 1 else inputs
    if batch.shape[0] * k > ctx.max_elements:
        raise ctx.error(
            node,
            field,
            f"the logits would hold {batch.shape[0] * k:,} values, more than {ctx.max_elements:,} "
            "elements",
        )
    layer = Layer(np.ascontiguousarray(batch), weights, bias)
    logits = layer.logits()
    if not np.all(np.isfinite(logits)):
        raise ctx.error(node, field, "the logits (inputs @ weights + bias) overflow float64")
    return layer, logits[0] if inputs.ndim == 1 else logits


def _linear(
    case: _Case, loss: LossKind
) -> tuple[Layer, np.ndarray, Node, np.ndarray | None] | None:
    """``linear:``: the fused layer (weights stored (D, V)), the logits it computes ((V,) or
    (N, V); a zero-strided placeholder when the element-wise check would not fit, see
    :func:`_placeholder`), its node, and the labels a generated block drew (else None)."""
    node = case.value("linear")
    if node is None:
        return None
    ctx, field = case.ctx, case.field("linear")
    for other in ("logits", "layer"):
        if other in case.entries:
            raise ctx.error(
                case.entries[other][0],
                case.field(other),
                f"give either 'linear' or '{other}', not both",
            )
    if loss != SOFTMAX:
        raise ctx.error(node, field, f"linear applies to loss {SOFTMAX} (an lm_head's softmax)")
    entries = _mapping(ctx, node, field, LINEAR_KEYS, "a mapping {hidden, weight, bias}")
    drawn = None
    if "seed" in entries:
        given = [k for k in ("hidden", "weight", "bias", "weight_layout") if k in entries]
        if given:
            raise ctx.error(
                entries[given[0]][0],
                f"{field}.{given[0]}",
                "a generated linear block (seed) builds the arrays: give either 'seed' or "
                "'hidden'/'weight'/'bias'",
            )
        hidden, weight, bias, drawn = _generated_linear(ctx, entries, node, field)
        layout: Layout = "vd"
    else:
        extra = [k for k in LINEAR_GENERATED_KEYS if k in entries]
        if extra:
            raise ctx.error(
                entries[extra[0]][0], f"{field}.{extra[0]}", "applies only with 'seed' (generated)"
            )
        hidden, weight, bias, layout = _given_linear(ctx, entries, node, field)
    single = hidden.ndim == 1
    batch = hidden[None, :] if single else hidden
    n, v = batch.shape[0], weight.shape[0]
    layer = Layer(np.ascontiguousarray(batch), weight.T, bias, fused=True, layout=layout)
    if needs_fast(n, v):
        logits: np.ndarray = np.broadcast_to(np.zeros((), dtype=np.float64), (n, v))
    else:
        logits = layer.logits()
        if not np.all(np.isfinite(logits)):
            raise ctx.error(node, field, "the logits (hidden @ weight^T + bias) overflow float64")
    return layer, logits[0] if single else logits, node, drawn


def _given_linear(
    ctx: _Ctx, entries: dict[str, tuple[Node, Node]], node: Node, field: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, Layout]:
    """The arrays of ``linear: {hidden, weight, bias, weight_layout}``; the weight as (V, D)."""
    for key in ("hidden", "weight"):
        if key not in entries:
            raise ctx.error(node, f"{field}.{key}", "missing required key")
    layout: Layout = "vd"
    if "weight_layout" in entries:
        layout = cast(
            Layout, _one_of(ctx, entries["weight_layout"][1], f"{field}.weight_layout", LAYOUTS)
        )
    h_node, w_node = entries["hidden"][1], entries["weight"][1]
    hidden = _float_array(ctx, h_node, f"{field}.hidden", "D numbers, or N lists of D numbers")
    _finite(ctx, h_node, f"{field}.hidden", hidden)
    shape_text = "(V, D)" if layout == "vd" else "(D, V)"
    weight = _float_array(ctx, w_node, f"{field}.weight", f"a {shape_text} matrix")
    _finite(ctx, w_node, f"{field}.weight", weight)
    d = hidden.shape[-1]
    axis = 1 if layout == "vd" else 0
    if weight.ndim != 2 or weight.shape[axis] != d:
        one = "one row per class" if layout == "vd" else "one row per hidden feature"
        raise ctx.error(
            w_node,
            f"{field}.weight",
            f"expected shape {shape_text} with D = {d} ({one}; weight_layout: {layout}), found "
            f"shape {_shape(weight.shape)}",
        )
    weight = weight if layout == "vd" else weight.T
    return hidden, weight, _bias(ctx, entries, field, weight.shape[0]), layout


def _bias(
    ctx: _Ctx, entries: dict[str, tuple[Node, Node]], field: str, k: int
) -> np.ndarray | None:
    """A layer's optional ``bias``: K finite numbers (one per class), or None."""
    if "bias" not in entries:
        return None
    b_node = entries["bias"][1]
    bias = _shaped(
        ctx, b_node, f"{field}.bias", (k,), f"{k} numbers", like="(one number per class)"
    )
    _finite(ctx, b_node, f"{field}.bias", bias)
    return bias


def _generated_linear(
    ctx: _Ctx, entries: dict[str, tuple[Node, Node]], node: Node, field: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """``linear: {seed, rows, hidden_size, vocab_size, margin, with_bias}``: an LLM-shaped
    case from a seed (NumPy's PCG64). The weight's rows are N(0, 1/D) (unit norm on average),
    the hidden states N(0, 1) plus ``margin`` times the label's weight row over its squared
    norm, so the label's logit is raised by exactly ``margin`` (confident rows: p_y near 1 for
    margins well above log V); labels uniform in [0, V); the bias (``with_bias``, default
    true) N(0, 0.1^2)."""
    values: dict[str, Any] = {}
    for key in ("seed", "rows", "hidden_size", "vocab_size"):
        if key not in entries:
            raise ctx.error(node, f"{field}.{key}", "missing required key (a positive integer)")
        sub = entries[key][1]
        values[key] = _integer(ctx, sub, f"{field}.{key}")
        if values[key] < (0 if key == "seed" else 1):
            raise ctx.error(
                sub, f"{field}.{key}", f"expected a positive integer, found {values[key]}"
            )
    margin = 0.0
    if "margin" in entries:
        margin = _number(ctx, entries["margin"][1], f"{field}.margin")
    with_bias = True
    if "with_bias" in entries:
        sub = entries["with_bias"][1]
        flag = _scalar(sub) if isinstance(sub, ScalarNode) else None
        if not isinstance(flag, bool):
            raise ctx.error(
                sub, f"{field}.with_bias", f"expected true or false, found {_describe(sub)}"
            )
        with_bias = flag
    n, d, v = values["rows"], values["hidden_size"], values["vocab_size"]
    size = (n * d + v * d + v) * 8
    if size > ctx.max_array_bytes:
        raise ctx.error(
            node,
            field,
            f"the arrays would take {size / 2**20:.0f} MiB, more than the "
            f"{ctx.max_array_bytes / 2**20:.0f} MiB an array may",
        )
    rng = np.random.default_rng(values["seed"])
    weight = rng.standard_normal((v, d)) / np.sqrt(d)
    labels = rng.integers(0, v, size=n)
    hidden = rng.standard_normal((n, d))
    if margin:
        rows = weight[labels]
        hidden += margin * rows / np.sum(rows * rows, axis=1, keepdims=True)
    bias = 0.1 * rng.standard_normal(v) if with_bias else None
    return hidden, weight, bias, labels.astype(np.int64)


def _linear_dtype(case: _Case, layer: Layer) -> DType:
    """The dtype of a ``linear:`` spec (default float64); its arrays must stay finite when
    rounded to it (the logits are computed from them, never rounded themselves)."""
    text = case.choice("dtype", DTYPES)
    dtype = cast(DType, text or "float64")
    register(dtype)
    field = case.field("linear")
    for name, arr in (("hidden", layer.inputs), ("weight", layer.weights), ("bias", layer.bias)):
        if arr is not None:
            _check_dtype_range(case.ctx, case.value("linear"), f"{field}.{name}", arr, dtype)
    return dtype


def _placeholder(batch: np.ndarray) -> bool:
    """True for the zero-strided logits of a ``linear:`` spec too large to hold them."""
    return batch.ndim == 2 and batch.size > 0 and batch.strides == (0, 0)


def _methods(ctx: _Ctx, node: Node, field: str) -> tuple[str, ...]:
    known = tuple(METHODS)
    names: list[str] = []
    items = _sequence(ctx, node, field, f"a list of methods ({', '.join(known)})")
    if not items:
        raise ctx.error(node, field, f"expected at least one method ({', '.join(known)})")
    for i, item in enumerate(items):
        name = _string(ctx, item, f"{field}[{i}]")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ctx.error(
                item, f"{field}[{i}]", f"unknown method {name!r} (known: {', '.join(known)}){hint}"
            )
        if name in names:
            raise ctx.error(item, f"{field}[{i}]", f"method {name!r} listed twice")
        names.append(name)
    return tuple(names)


def _fd_settings(ctx: _Ctx, node: Node, field: str) -> tuple[Scheme, float | None]:
    """``finite_difference: {scheme, step}``: the stencil, and ``auto`` or a relative step."""
    entries = _mapping(ctx, node, field, ("scheme", "step"), "a mapping {scheme, step}")
    scheme: Scheme = "central"
    if "scheme" in entries:
        s_node = entries["scheme"][1]
        text = _string(ctx, s_node, f"{field}.scheme")
        if text not in SCHEMES:
            raise ctx.error(
                s_node, f"{field}.scheme", f"expected one of {' | '.join(SCHEMES)}, found {text!r}"
            )
        scheme = text
    step = None
    if "step" in entries:
        h_node = entries["step"][1]
        if not (isinstance(h_node, ScalarNode) and _scalar(h_node) == "auto"):
            step = _number(ctx, h_node, f"{field}.step")
            if not (math.isfinite(step) and 0 < step < 1):
                raise ctx.error(
                    h_node,
                    f"{field}.step",
                    f"expected auto or a relative step in (0, 1), found {h_node.value}",
                )
    return scheme, step


def _check_dtype_range(
    ctx: _Ctx, node: Node | None, field: str, logits: np.ndarray, dtype: str
) -> None:
    """Finite logits must stay finite when rounded to ``dtype``."""
    problem = dtype_overflow(logits, dtype)
    if problem is not None:
        raise ctx.error(node, field, problem)


def _tolerance(
    ctx: _Ctx, node: Node, field: str
) -> tuple[ToleranceOverride, dict[str, ToleranceOverride]]:
    entries = _mapping(
        ctx,
        node,
        field,
        (*TOLERANCE_KEYS, *METHODS),
        "a mapping {rtol, atol} or per-method mappings",
    )
    overall = _tolerance_pair(ctx, {k: v for k, v in entries.items() if k in TOLERANCE_KEYS}, field)
    per_method: dict[str, ToleranceOverride] = {}
    for key, (_, sub) in entries.items():
        if key in METHODS:
            sub_field = f"{field}.{key}"
            per_method[key] = _tolerance_pair(
                ctx,
                _mapping(ctx, sub, sub_field, TOLERANCE_KEYS, "a mapping {rtol, atol}"),
                sub_field,
            )
    return overall, per_method


def _tolerance_pair(
    ctx: _Ctx, entries: dict[str, tuple[Node, Node]], field: str
) -> ToleranceOverride:
    values: dict[str, float] = {}
    for key, (_, node) in entries.items():
        values[key] = _nonnegative(ctx, node, f"{field}.{key}")
    return ToleranceOverride(rtol=values.get("rtol"), atol=values.get("atol"))


def _nonnegative(ctx: _Ctx, node: Node, field: str) -> float:
    x = _number(ctx, node, field)
    if not (math.isfinite(x) and x >= 0):
        raise ctx.error(node, field, f"expected a finite number >= 0, found {node.value}")
    return x


def _expect(
    ctx: _Ctx,
    node: Node,
    field: str,
    shape: tuple[int, ...],
    loss_shape: tuple[int, ...],
    reduction: Reduction,
) -> Expect:
    entries = _mapping(ctx, node, field, EXPECT_KEYS, "a mapping {loss, probs, grad, rtol, atol}")
    loss: float | np.ndarray | None = None
    if "loss" in entries:
        loss_node = entries["loss"][1]
        if reduction == "none":
            what = f"losses of shape {_shape(loss_shape)} (reduction none)"
            arr = _float_array(ctx, loss_node, f"{field}.loss", what)
            if arr.shape != loss_shape:
                raise ctx.error(
                    loss_node, f"{field}.loss", f"expected {what}, found shape {_shape(arr.shape)}"
                )
            loss = arr
        else:
            loss = _number(ctx, loss_node, f"{field}.loss")
    probs = grad = None
    if "probs" in entries:
        probs = _shaped(
            ctx,
            entries["probs"][1],
            f"{field}.probs",
            shape,
            "probabilities shaped like the logits",
        )
    if "grad" in entries:
        grad = _shaped(
            ctx, entries["grad"][1], f"{field}.grad", shape, "a gradient shaped like the logits"
        )
    defaults = Expect()
    rtol = (
        _nonnegative(ctx, entries["rtol"][1], f"{field}.rtol")
        if "rtol" in entries
        else defaults.rtol
    )
    atol = (
        _nonnegative(ctx, entries["atol"][1], f"{field}.atol")
        if "atol" in entries
        else defaults.atol
    )
    return Expect(loss=loss, probs=probs, grad=grad, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------
# Finding spec files

SPEC_SUFFIXES = (".yaml", ".yml")


#: Directories a directory search never enters (besides hidden ones and virtual environments).
SKIPPED_DIRS = frozenset({"site-packages", "node_modules", "__pycache__"})


def discover(
    paths: Iterable[str], exclude: Iterable[str] = ()
) -> Iterator[tuple[Path, str] | SpecError]:
    """Spec files named by ``paths`` (files, directories searched recursively, globs), in order.

    A directory search skips hidden directories (``.venv``, ``.git``), virtual environments
    (a ``pyvenv.cfg`` inside), ``site-packages``, ``node_modules`` and ``__pycache__``, and any
    file matching an ``exclude`` glob (against its path as shown, its name, or the name of a
    directory on the way). Yields ``(path, display name)`` for each file, de-duplicated, or a
    :class:`SpecError` for a path that matches nothing.
    """
    patterns = tuple(exclude)
    seen: set[Path] = set()
    for raw in paths:
        candidates: list[Path]
        p = Path(raw)
        if p.is_dir():
            candidates = sorted(
                f
                for f in _walk(p)
                if f.suffix in SPEC_SUFFIXES and f.is_file() and not _excluded(f, p, patterns)
            )
            if not candidates:
                yield SpecError(raw, "directory contains no *.yaml or *.yml files")
                continue
        elif p.exists():
            candidates = [p]
        elif any(ch in raw for ch in "*?["):
            candidates = sorted(
                f
                for f in _glob(raw)
                if f.is_file() and (f.suffix in SPEC_SUFFIXES or f == Path(raw))
            )
            if not candidates:
                yield SpecError(raw, "pattern matches no spec files")
                continue
        else:
            yield SpecError(raw, "no such file or directory")
            continue
        for f in candidates:
            key = f.resolve()
            if key in seen:
                continue
            seen.add(key)
            yield f, str(f)


def _walk(root: Path) -> Iterator[Path]:
    """Every file under ``root``, not following symbolic links to directories (no loops), nor
    entering the directories :func:`discover` skips."""
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            children = list(d.iterdir())
        except OSError:
            continue
        for child in children:
            if child.is_dir() and not child.is_symlink():
                if not _skipped_dir(child):
                    stack.append(child)
            else:
                yield child


def _skipped_dir(d: Path) -> bool:
    return d.name.startswith(".") or d.name in SKIPPED_DIRS or (d / "pyvenv.cfg").is_file()


def _excluded(f: Path, root: Path, patterns: tuple[str, ...]) -> bool:
    import fnmatch

    if not patterns:
        return False
    names = [part for part in f.relative_to(root).parts[:-1]]
    candidates = [f.as_posix(), f.name, *names]
    return any(fnmatch.fnmatch(c, pat) for c in candidates for pat in patterns)


def _glob(pattern: str) -> list[Path]:
    import glob

    return [Path(m) for m in glob.glob(pattern, recursive=True)]
