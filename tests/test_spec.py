"""The spec loader: ``gradcheck_cli.spec.load_file`` and ``discover``.

Invalid specs live in ``tests/data/bad/``, one problem per file. Each file's first line is
``# expected:<line>:<column>: <field>: <message>``: the exact message the loader must give, after
the file name (``SpecError.__str__`` renders ``file:line:column: field: message``). A second line
``# xfail: <reason>`` marks a known loader bug; the ``expected`` line then holds the message the
loader *should* give. ``empty.yaml`` cannot carry a comment, so its message is kept here.
Inputs that cannot sit comfortably in a text file (NUL bytes, invalid UTF-8, control characters,
huge nesting) are generated in ``tmp_path``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from gradcheck_cli.errors import SpecError
from gradcheck_cli.model import Spec, ToleranceOverride
from gradcheck_cli.spec import discover, load_file

from badcorpus import BAD, bad_corpus, corpus_params

TESTS = Path(__file__).resolve().parent
SPECS = TESTS.parent / "specs"


def write(tmp_path: Path, text: str | bytes, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def load_one(path: Path, display: str | None = None) -> Spec | SpecError:
    items = load_file(path, display)
    assert len(items) == 1, items
    return items[0]


def spec_of(tmp_path: Path, text: str, name: str = "spec.yaml") -> Spec:
    item = load_one(write(tmp_path, text, name))
    assert isinstance(item, Spec), str(item)
    return item


def error_of(tmp_path: Path, text: str | bytes, name: str = "spec.yaml") -> str:
    """The message for a one-case file, with the file shown as its bare name."""
    item = load_one(write(tmp_path, text, name), name)
    assert isinstance(item, SpecError), item
    return str(item)


# --------------------------------------------------------------------------------------------
# The bad corpus


def test_corpus_is_present_and_covers_every_error_kind() -> None:
    names = {name for name, _, _ in bad_corpus()}
    for required in (
        "yaml_syntax.yaml",
        "empty.yaml",
        "several_documents.yaml",
        "top_level_list.yaml",
        "unknown_key.yaml",
        "duplicate_key.yaml",
        "missing_logits.yaml",
        "missing_label.yaml",
        "label_and_target.yaml",
        "logits_quoted_string.yaml",
        "logits_word.yaml",
        "logits_inf_word.yaml",
        "logits_nan_word.yaml",
        "logits_dot_nan.yaml",
        "logits_dot_inf.yaml",
        "logits_overflow.yaml",
        "ragged_batch.yaml",
        "empty_logits.yaml",
        "classes_count.yaml",
        "duplicate_class.yaml",
        "num_classes_mismatch.yaml",
        "label_out_of_range.yaml",
        "label_negative.yaml",
        "label_fractional.yaml",
        "label_unknown_class.yaml",
        "label_name_without_classes.yaml",
        "label_list_length.yaml",
        "label_list_single.yaml",
        "target_out_of_range.yaml",
        "target_sum.yaml",
        "target_shape.yaml",
        "unknown_reduction.yaml",
        "unknown_method.yaml",
        "duplicate_method.yaml",
        "negative_tolerance.yaml",
        "tolerance_unknown_key.yaml",
        "expect_shape.yaml",
        "expect_loss_none_length.yaml",
        "python_tag.yaml",
        "cases_one_bad.yaml",
        "cases_not_list.yaml",
        "cases_empty.yaml",
    ):
        assert required in names
    assert (BAD / "empty.yaml").read_bytes() == b""


@pytest.mark.parametrize(("name", "expected"), corpus_params())
def test_bad_file_gives_exact_located_message(name: str, expected: str) -> None:
    path = BAD / name
    errors = [item for item in load_file(path, name) if isinstance(item, SpecError)]
    assert [str(e) for e in errors] == [f"{name}:{expected}"]


@pytest.mark.parametrize(("name", "expected"), corpus_params())
def test_bad_file_default_display_is_the_path(name: str, expected: str) -> None:
    path = BAD / name
    errors = [item for item in load_file(path) if isinstance(item, SpecError)]
    assert [str(e) for e in errors] == [f"{path}:{expected}"]


def test_spec_error_attributes() -> None:
    (err,) = load_file(BAD / "label_unknown_class.yaml", "x.yaml")
    assert isinstance(err, SpecError)
    assert (err.file, err.line, err.column, err.field) == ("x.yaml", 4, 8, "label")
    assert err.message == "unknown class name 'dgo' (classes: cat, dog, bird); did you mean 'dog'?"
    assert str(err) == f"x.yaml:4:8: label: {err.message}"


def test_file_level_error_has_no_field() -> None:
    (err,) = load_file(BAD / "top_level_list.yaml", "t.yaml")
    assert isinstance(err, SpecError)
    assert err.field is None
    assert str(err) == (
        "t.yaml:2:1: expected a mapping of spec keys (logits, label, ...), found a list"
    )


# --------------------------------------------------------------------------------------------
# Cases files


def test_cases_bad_entry_does_not_stop_good_entry() -> None:
    items = load_file(BAD / "cases_one_bad.yaml", "c.yaml")
    assert len(items) == 2
    good, bad = items
    assert isinstance(good, Spec)
    assert good.name == "good-case"
    assert good.labels is not None and good.labels.tolist() == [1]
    assert isinstance(bad, SpecError)
    assert bad.field == "cases[1].label"
    assert (bad.line, bad.column) == (8, 12)
    assert str(bad) == "c.yaml:8:12: cases[1].label: class index 7 out of range: expected 0 to 2"


def test_cases_entry_not_a_mapping(tmp_path: Path) -> None:
    items = load_file(
        write(tmp_path, "logits: [1, 2]\nlabel: 0\ncases:\n  - 5\n  - name: ok\n"), "c.yaml"
    )
    assert [str(x) if isinstance(x, SpecError) else x.name for x in items] == [
        "c.yaml:4:5: cases[0]: expected a mapping of spec keys, found number 5",
        "ok",
    ]


def test_cases_entry_unknown_key(tmp_path: Path) -> None:
    items = load_file(
        write(tmp_path, "logits: [1, 2]\nlabel: 0\ncases:\n  - logit: [1]\n  - name: ok\n"),
        "c.yaml",
    )
    assert isinstance(items[1], Spec)
    assert str(items[0]) == "c.yaml:4:5: cases[0].logit: unknown key; did you mean 'logits'?"


def test_cases_own_key_error_has_case_prefix(tmp_path: Path) -> None:
    text = "logits: [1, 2]\ncases:\n  - label: 0\n  - label: 0\n    reduction: avg\n"
    items = load_file(write(tmp_path, text), "c.yaml")
    assert isinstance(items[0], Spec)
    assert str(items[1]) == (
        "c.yaml:5:16: cases[1].reduction: expected one of mean | sum | none, found 'avg'"
    )


def test_inherited_key_error_names_the_case(tmp_path: Path) -> None:
    text = "label: 2\ncases:\n  - logits: [1, 2, 3]\n  - logits: [1, 2]\n"
    items = load_file(write(tmp_path, text), "c.yaml")
    assert isinstance(items[0], Spec)
    err = items[1]
    assert isinstance(err, SpecError)
    assert (err.line, err.column) == (1, 8)  # the value is the top-level one
    assert "cases[1]" in str(err)


# --------------------------------------------------------------------------------------------
# Inputs that are not (valid) text, generated here


def test_binary_file_with_nul_bytes(tmp_path: Path) -> None:
    data = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x01"
    assert error_of(tmp_path, data, "image.yaml") == (
        "image.yaml: not a text file (contains NUL bytes); expected a YAML spec"
    )


def test_non_utf8_bytes_are_located(tmp_path: Path) -> None:
    data = b"logits: [1, 2]\nlabel: caf\xe9\n"
    assert error_of(tmp_path, data, "latin1.yaml") == (
        "latin1.yaml:2:11: not valid UTF-8 (byte 0xe9)"
    )


def test_non_utf8_column_counts_characters(tmp_path: Path) -> None:
    data = "name: é".encode() + b"\xff\nlogits: [1, 2]\nlabel: 0\n"
    assert error_of(tmp_path, data, "mixed.yaml") == "mixed.yaml:1:8: not valid UTF-8 (byte 0xff)"


def test_control_character_is_located(tmp_path: Path) -> None:
    text = "logits: [1, 2]\nlabel: 0\nname: a\x07b\n"
    assert error_of(tmp_path, text, "ctrl.yaml") == (
        "ctrl.yaml:3:8: invalid YAML: unacceptable character #x0007: "
        "special characters are not allowed"
    )


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, "\ufefflogits: [1, 2]\nlabel: 0\n")
    assert spec.logits.tolist() == [[1.0, 2.0]]


def test_tab_indentation(tmp_path: Path) -> None:
    assert error_of(tmp_path, "logits:\n\t- 1\n", "tab.yaml") == (
        "tab.yaml:2:1: invalid YAML: found character '\\t' that cannot start any token"
    )


def test_undefined_alias(tmp_path: Path) -> None:
    assert error_of(tmp_path, "logits: *x\nlabel: 0\n", "alias.yaml") == (
        "alias.yaml:1:9: invalid YAML: found undefined alias 'x'"
    )


def test_missing_file() -> None:
    item = load_one(Path("/nonexistent/dir/spec.yaml"), "spec.yaml")
    assert str(item) == "spec.yaml: cannot read file: No such file or directory"


def test_deep_nesting_is_an_error_not_a_crash(tmp_path: Path) -> None:
    text = "logits: " + "[" * 600 + "]" * 600 + "\nlabel: 0\n"
    item = load_one(write(tmp_path, text, "deep.yaml"), "deep.yaml")
    assert isinstance(item, SpecError)
    assert str(item).startswith("deep.yaml:1:")


@pytest.mark.parametrize(
    ("text", "field", "column", "ending"),
    [
        ("logits: [1, {digits}]\nlabel: 0\n", "logits[1]", 13, "overflows float64"),
        ("logits: [1, 2]\nlabel: {digits}\n", "label", 8, "out of range: expected 0 to 1"),
    ],
    ids=["logits", "label"],
)
def test_huge_integer_is_an_error_not_a_crash(
    tmp_path: Path, text: str, field: str, column: int, ending: str
) -> None:
    path = write(tmp_path, text.format(digits="9" * 5000))
    item = load_one(path, "big.yaml")
    assert isinstance(item, SpecError)
    assert item.field == field
    assert item.column == column
    assert item.message.endswith(ending)


# --------------------------------------------------------------------------------------------
# More located messages (small variations of the corpus)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "logits: 5\nlabel: 0\n",
            "1:9: logits: expected K numbers, or N lists of K numbers, found number 5",
        ),
        ("logits: [1, [2, 3]]\nlabel: 0\n", "1:13: logits[1]: expected a number, found a list"),
        (
            "logits: [[1, 2], 3]\nlabel: [0, 0]\n",
            "1:18: logits[1]: expected a list of numbers (every row is a list), found number 3",
        ),
        (
            "logits: [[]]\nlabel: [0]\n",
            "1:10: logits[0]: expected a list of numbers, found an empty list",
        ),
        ("logits: [[[1]]]\nlabel: [0]\n", "1:11: logits[0][0]: expected a number, found a list"),
        ("logits: [true, 1]\nlabel: 0\n", "1:10: logits[0]: expected a number, found boolean true"),
        ("logits: [~, 1]\nlabel: 0\n", "1:10: logits[0]: expected a number, found an empty value"),
        ("logits: [1, -1e999]\nlabel: 0\n", "1:13: logits[1]: number -1e999 overflows float64"),
        (
            "logits: [1, Infinity]\nlabel: 0\n",
            "1:13: logits[1]: expected a number, found string 'Infinity' (YAML spells it .inf)",
        ),
        (
            "logits: [1, NaN]\nlabel: 0\n",
            "1:13: logits[1]: expected a number, found string 'NaN' (YAML spells it .nan)",
        ),
        (
            "logits: [1, !!str 2]\nlabel: 0\n",
            "1:13: logits[1]: expected a number, found string '2'",
        ),
        (
            "logits: [1, !!float 2]\nlabel: 0\n",
            "1:13: logits[1]: explicit YAML tag !!float is not allowed",
        ),
        (
            "logits: [1, 2]\nlabel: 0\nname: !!python/name:os.system x\n",
            "3:7: name: explicit YAML tag !!python/name:os.system is not allowed "
            "(Python tags are never loaded: specs are plain data)",
        ),
        (
            "logits: [[1, 2]]\nlabel: !!python/object/apply:os.system [ls]\n",
            "2:8: label: explicit YAML tag !!python/object/apply:os.system is not allowed "
            "(Python tags are never loaded: specs are plain data)",
        ),
        (
            "logits: [1, 2]\nlabel: true\n",
            "2:8: label: expected a class index or class name, found boolean true",
        ),
        (
            "logits: [1, 2]\nlabel: 1.0\n",
            "2:8: label: expected an integer class index, found number 1.0",
        ),
        (
            "logits: [[1, 2], [3, 4]]\nlabel: 0\n",
            "2:8: label: expected a list of 2 labels, one per row of logits, found number 0",
        ),
        (
            "logits: [[1, 2], [3, 4]]\nlabel: [[0], 1]\n",
            "2:9: label[0]: expected a class index or class name, found a list",
        ),
        (
            "logits: [[1, 2], [3, 4]]\nlabel: [0, 2]\n",
            "2:12: label[1]: class index 2 out of range: expected 0 to 1",
        ),
        (
            "classes: [a, b]\nlogits: [[1, 2], [3, 4]]\nlabel: [a, zzz]\n",
            "3:12: label[1]: unknown class name 'zzz' (classes: a, b)",
        ),
        (
            "logits: [1, 2]\nlabel: 0\nclasses: [true, false]\n",
            "3:11: classes[0]: expected a string, found boolean true",
        ),
        ("logits: [1, 2]\nlabel: 0\nname: 123\n", "3:7: name: expected a string, found number 123"),
        (
            "logits: [1, 2]\nlabel: 0\nnum_classes: 2.0\n",
            "3:14: num_classes: expected an integer, found number 2.0",
        ),
        (
            "logits: [1, 2]\ntarget: [0.5, .nan]\n",
            "2:15: target[1]: expected a finite number, found nan",
        ),
        (
            "logits: [1, 2]\ntarget: [0.5, 0.4]\n",
            "2:9: target: probabilities must sum to 1 (within 1e-06), found sum 0.9",
        ),
        (
            "logits: [[1, 2]]\ntarget: [0.5, 0.5]\n",
            "2:9: target: expected shape (1, 2) like the logits, found shape (2,)",
        ),
        (
            "logits: [1, 2]\nlabel: 0\nmethods: []\n",
            "3:10: methods: expected at least one method "
            "(analytic, jacobian, finite_difference, complex_step, exact)",
        ),
        (
            "logits: [1, 2]\nlabel: 0\nmethods: analytic\n",
            "3:10: methods: expected a list of methods "
            "(analytic, jacobian, finite_difference, complex_step, exact), found string 'analytic'",
        ),
        (
            "logits: [1, 2]\nlabel: 0\nmethods: [numeric]\n",
            "3:11: methods[0]: unknown method 'numeric' (known: analytic, jacobian, "
            "finite_difference, complex_step, exact)",
        ),
        (
            "logits: [1, 2]\nlabel: 0\ntolerance: {rtol: .nan}\n",
            "3:19: tolerance.rtol: expected a finite number >= 0, found .nan",
        ),
        (
            "logits: [1, 2]\nlabel: 0\ntolerance: {atol: .inf}\n",
            "3:19: tolerance.atol: expected a finite number >= 0, found .inf",
        ),
        (
            "logits: [1, 2]\nlabel: 0\ntolerance: {jacobian: 1e-8}\n",
            "3:23: tolerance.jacobian: expected a mapping {rtol, atol}, found number 1e-8",
        ),
        (
            "logits: [1, 2]\nlabel: 0\ntolerance: {jacobian: {rtol: -1}}\n",
            "3:30: tolerance.jacobian.rtol: expected a finite number >= 0, found -1",
        ),
        (
            "logits: [1, 2]\nlabel: 0\ntolerance: {jacobian: {rtl: 1}}\n",
            "3:24: tolerance.jacobian.rtl: unknown key; did you mean 'rtol'?",
        ),
        (
            "logits: [1, 2]\nlabel: 0\ntolerance: 1e-6\n",
            "3:12: tolerance: expected a mapping {rtol, atol} or per-method mappings, "
            "found number 1e-6",
        ),
        (
            "logits: [1, 2]\nlabel: 0\nexpect: {loss: [1, 2]}\n",
            "3:16: expect.loss: expected a number, found a list",
        ),
        (
            "logits: [[1, 2], [3, 4]]\nlabel: [0, 1]\nreduction: none\nexpect: {loss: 0.5}\n",
            "4:16: expect.loss: expected losses of shape (2,) (reduction none), found number 0.5",
        ),
        (
            "logits: [1, 2]\nlabel: 0\nexpect: {grad: [[1, 2]]}\n",
            "3:16: expect.grad: expected shape (2,) like the logits, found shape (1, 2)",
        ),
        (
            "logits: [1, 2]\nlabel: 0\nexpect: {atol: -1}\n",
            "3:16: expect.atol: expected a finite number >= 0, found -1",
        ),
        (
            "logits: [1, 2]\nlabel: 0\nexpect: {los: 1}\n",
            "3:10: expect.los: unknown key; did you mean 'loss'?",
        ),
        (
            "logits: [1, 2]\nlabel: 0\nexpect: [1]\n",
            "3:9: expect: expected a mapping {loss, probs, grad, rtol, atol}, found a list",
        ),
        (
            "true: 2\nlogits: [1, 2]\nlabel: 0\n",
            "1:1: (top level): keys must be strings, found boolean true",
        ),
        (
            "? [a]\n: 2\nlogits: [1, 2]\nlabel: 0\n",
            "1:3: (top level): keys must be strings, found a list",
        ),
        (
            "logits: [1, 2]\n'logits': [1, 2]\nlabel: 0\n",
            "2:1: logits: duplicate key (first given on line 1)",
        ),
        (
            "<<: {logits: [1, 2]}\nlabel: 0\n",
            "1:1: <<: unknown key (known keys: name, description, classes, num_classes, loss, "
            "logits, layer, linear, regime, label, target, reduction, defaults, weight, "
            "ignore_index, label_smoothing, softcap, z_loss, pos_weight, num_items_in_batch, "
            "loss_mask, empty_mean, methods, tolerance, finite_difference, dtype, expect, "
            "microbatches, grad_output, cases)",
        ),
        (
            "hello\n",
            "1:1: expected a mapping of spec keys (logits, label, ...), found string 'hello'",
        ),
        (
            "logits: [1, 2]\nlabel: 0\ncases: 3\n",
            "3:8: cases: expected a list of cases, found number 3",
        ),
    ],
)
def test_more_messages(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text, "s.yaml") == f"s.yaml:{expected}"


def test_python_tag_on_single_sample_label(tmp_path: Path) -> None:
    text = "logits: [1, 2]\nlabel: !!python/object/apply:os.system [ls]\n"
    assert error_of(tmp_path, text, "s.yaml") == (
        "s.yaml:2:8: label: explicit YAML tag !!python/object/apply:os.system is not allowed "
        "(Python tags are never loaded: specs are plain data)"
    )


def test_tagged_key_in_nested_mapping(tmp_path: Path) -> None:
    text = "logits: [1, 2]\nlabel: 0\nexpect: {!!int 1: 2}\n"
    assert error_of(tmp_path, text, "s.yaml") == (
        "s.yaml:3:10: expect: explicit YAML tag !!int is not allowed"
    )


# --------------------------------------------------------------------------------------------
# What loads: numbers (YAML 1.2 core schema), labels, targets, cases, tolerances, expectations


def test_yaml_1_2_numbers(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, "logits: [1e-9, 1E5, -2.5e+3, .5, 3., +4, 0x10, 0o17, -0]\nlabel: 0\n")
    assert spec.logits.tolist() == [[1e-9, 1e5, -2500.0, 0.5, 3.0, 4.0, 16.0, 15.0, 0.0]]
    assert spec.logits.dtype == np.float64


@pytest.mark.parametrize("word", ["-.inf", ".inf", "+.inf", ".Inf", "-.INF"])
def test_dot_inf_is_a_number(tmp_path: Path, word: str) -> None:
    # Parsed as a number, not as a string: -inf is a valid softmax logit (probability 0),
    # +inf is rejected with the finiteness message.
    if word.startswith("-"):
        spec = spec_of(tmp_path, f"logits: [1, {word}]\nlabel: 0\n")
        assert spec.logits[0, 1] == -math.inf
        return
    assert error_of(tmp_path, f"logits: [1, {word}]\nlabel: 0\n", "s.yaml") == (
        "s.yaml:1:13: logits[1]: expected a finite number or -.inf, found inf"
    )


@pytest.mark.parametrize("word", [".nan", ".NaN", ".NAN"])
def test_dot_nan_is_a_number(tmp_path: Path, word: str) -> None:
    assert error_of(tmp_path, f"logits: [1, {word}]\nlabel: 0\n", "s.yaml") == (
        "s.yaml:1:13: logits[1]: expected a finite number or -.inf, found nan"
    )


@pytest.mark.parametrize("word", ["1_000", "1e", "0b101", ".", "1.2.3"])
def test_non_numbers_stay_strings(tmp_path: Path, word: str) -> None:
    assert error_of(tmp_path, f"logits: [1, {word}]\nlabel: 0\n", "s.yaml") == (
        f"s.yaml:1:13: logits[1]: expected a number, found string {word!r}"
    )


def test_yes_no_on_off_stay_strings(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path, "classes: [yes, no, on, off, y, n]\nlogits: [1, 2, 3, 4, 5, 6]\nlabel: no\n"
    )
    assert spec.classes == ("yes", "no", "on", "off", "y", "n")
    assert spec.labels is not None and spec.labels.tolist() == [1]


def test_tolerance_accepts_exponent_without_dot(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, "logits: [1, 2]\nlabel: 0\ntolerance: {rtol: 1e-9, atol: 1E-12}\n")
    assert spec.tolerance == ToleranceOverride(rtol=1e-9, atol=1e-12)
    assert spec.method_tolerances == {}


def test_single_sample_integer_label(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, "logits: [2, 3, 4]\nlabel: 1\n", "three.yaml")
    assert spec.single is True
    assert spec.logits.shape == (1, 3)
    assert spec.labels is not None
    assert spec.labels.dtype == np.int64
    assert spec.labels.tolist() == [1]
    assert spec.targets is None
    assert spec.name == "three"
    assert spec.file == str(tmp_path / "three.yaml")
    assert spec.reduction == "mean"
    assert spec.classes is None
    assert spec.methods is None
    assert spec.expect is None
    assert spec.tolerance == ToleranceOverride()
    assert spec.description is None


def test_display_name_is_used_as_file(tmp_path: Path) -> None:
    item = load_one(write(tmp_path, "logits: [1, 2]\nlabel: 0\n"), "shown.yaml")
    assert isinstance(item, Spec)
    assert item.file == "shown.yaml"


def test_class_name_label_and_num_classes(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        "name: cdb\ndescription: hi\nclasses: [cat, dog, bird]\nnum_classes: 3\n"
        "logits: [1.0, 2.0, 0.5]\nlabel: bird\n",
    )
    assert (spec.name, spec.description) == ("cdb", "hi")
    assert spec.classes == ("cat", "dog", "bird")
    assert spec.labels is not None and spec.labels.tolist() == [2]


def test_batch_labels_mix_names_and_indices(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        "classes: [a, b, c]\nlogits:\n  - [1, 2, 3]\n  - [4, 5, 6]\n  - [7, 8, 9]\n"
        "label: [c, 0, b]\nreduction: sum\n",
    )
    assert spec.single is False
    assert spec.logits.shape == (3, 3)
    assert spec.labels is not None and spec.labels.tolist() == [2, 0, 1]
    assert spec.reduction == "sum"


def test_targets_single_and_batch(tmp_path: Path) -> None:
    single = spec_of(tmp_path, "logits: [1, 2, 3]\ntarget: [0, 0.25, 0.75]\n", "a.yaml")
    assert single.labels is None
    assert single.targets is not None and single.targets.tolist() == [[0.0, 0.25, 0.75]]
    batch = spec_of(tmp_path, "logits: [[1, 2], [3, 4]]\ntarget: [[1, 0], [0.3, 0.7]]\n", "b.yaml")
    assert batch.targets is not None and batch.targets.tolist() == [[1.0, 0.0], [0.3, 0.7]]


def test_target_sum_within_tolerance(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, "logits: [1, 2, 3]\ntarget: [0.3333333, 0.3333333, 0.3333334]\n")
    assert spec.targets is not None
    assert math.isclose(float(spec.targets.sum()), 1.0)


def test_methods_parsed_in_order(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, "logits: [1, 2]\nlabel: 0\nmethods: [finite_difference, analytic]\n")
    assert spec.methods == ("finite_difference", "analytic")


def test_per_method_tolerance(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        "logits: [1, 2]\nlabel: 0\ntolerance:\n  rtol: 1e-6\n  jacobian: {rtol: 1e-8}\n"
        "  finite_difference:\n    atol: 1e-5\n    rtol: 0\n",
    )
    assert spec.tolerance == ToleranceOverride(rtol=1e-6, atol=None)
    assert spec.method_tolerances == {
        "jacobian": ToleranceOverride(rtol=1e-8, atol=None),
        "finite_difference": ToleranceOverride(rtol=0.0, atol=1e-5),
    }


def test_only_per_method_tolerance(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, "logits: [1, 2]\nlabel: 0\ntolerance: {jacobian: {rtol: 1e-8}}\n")
    assert spec.tolerance == ToleranceOverride()
    assert spec.method_tolerances == {"jacobian": ToleranceOverride(rtol=1e-8)}


def test_expect_single(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        "logits: [1, 2, 0.5]\nlabel: 1\nexpect:\n  loss: 0.462\n  probs: [0.23, 0.63, 0.14]\n"
        "  grad: [0.23, -0.37, 0.14]\n  atol: 0.005\n",
    )
    e = spec.expect
    assert e is not None
    assert e.loss == 0.462
    assert e.probs is not None and e.probs.tolist() == [0.23, 0.63, 0.14]
    assert e.grad is not None and e.grad.tolist() == [0.23, -0.37, 0.14]
    assert (e.rtol, e.atol) == (1e-6, 0.005)  # rtol keeps its default


def test_expect_batch_reduction_none(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        "logits: [[1, 2], [3, 4]]\nlabel: [0, 1]\nreduction: none\n"
        "expect:\n  loss: [1.3, 0.3]\n  grad: [[-0.7, 0.7], [0.3, -0.3]]\n  rtol: 0\n",
    )
    e = spec.expect
    assert e is not None
    assert isinstance(e.loss, np.ndarray) and e.loss.tolist() == [1.3, 0.3]
    assert e.grad is not None and e.grad.shape == (2, 2)
    assert e.probs is None
    assert (e.rtol, e.atol) == (0.0, 1e-9)


def test_anchors_and_aliases(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, "logits: &z [1, 2]\nlabel: 0\nexpect: {grad: *z}\n")
    assert spec.expect is not None and spec.expect.grad is not None
    assert spec.expect.grad.tolist() == [1.0, 2.0]


def test_cases_defaults_and_overrides(tmp_path: Path) -> None:
    text = (
        "classes: [a, b, c]\n"
        "logits: [1, 2, 3]\n"
        "label: a\n"
        "reduction: sum\n"
        "tolerance: {rtol: 1e-7}\n"
        "cases:\n"
        "  - {}\n"
        "  - name: named\n"
        "    label: c\n"
        "  - logits: [[0, 0, 0], [1, 1, 1]]\n"
        "    label: [b, 2]\n"
        "    reduction: none\n"
        "    tolerance: {atol: 1e-3}\n"
    )
    items = load_file(write(tmp_path, text, "multi.yaml"))
    assert all(isinstance(x, Spec) for x in items), [str(x) for x in items]
    s0, s1, s2 = (x for x in items if isinstance(x, Spec))
    assert [s.name for s in (s0, s1, s2)] == ["multi[0]", "named", "multi[2]"]
    assert s0.labels is not None and s0.labels.tolist() == [0]
    assert s1.labels is not None and s1.labels.tolist() == [2]
    assert s2.labels is not None and s2.labels.tolist() == [1, 2]
    assert (s0.single, s1.single, s2.single) == (True, True, False)
    assert [s.reduction for s in (s0, s1, s2)] == ["sum", "sum", "none"]
    assert s0.classes == s1.classes == s2.classes == ("a", "b", "c")
    assert s0.tolerance == s1.tolerance == ToleranceOverride(rtol=1e-7)
    assert s2.tolerance == ToleranceOverride(atol=1e-3)  # an override replaces, not merges
    assert {s.file for s in (s0, s1, s2)} == {str(tmp_path / "multi.yaml")}


def test_default_name_is_file_stem(tmp_path: Path) -> None:
    assert spec_of(tmp_path, "logits: [1, 2]\nlabel: 0\n", "my-spec.yml").name == "my-spec"


def test_bundled_reductions_cases_file() -> None:
    items = load_file(SPECS / "reductions.yaml")
    assert [x.name if isinstance(x, Spec) else str(x) for x in items] == [
        "reduction-mean",
        "reduction-sum",
        "reduction-none",
    ]
    assert [x.reduction for x in items if isinstance(x, Spec)] == ["mean", "sum", "none"]


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_specs_load(path: Path) -> None:
    items = load_file(path)
    assert items
    assert all(isinstance(x, Spec) for x in items), [str(x) for x in items]


def test_bundled_batch_mean_labels() -> None:
    (spec,) = load_file(SPECS / "batch_mean.yaml")
    assert isinstance(spec, Spec)
    assert spec.labels is not None and spec.labels.tolist() == [0, 2, 3, 0]
    assert spec.logits[3, 3] == 1e-3


# --------------------------------------------------------------------------------------------
# discover


def test_discover_missing_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    (err,) = list(discover([missing]))
    assert isinstance(err, SpecError)
    assert str(err) == f"{missing}: no such file or directory"


def test_discover_directory_without_specs(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (err,) = list(discover([str(tmp_path)]))
    assert isinstance(err, SpecError)
    assert str(err) == f"{tmp_path}: directory contains no *.yaml or *.yml files"


def test_discover_empty_directory(tmp_path: Path) -> None:
    (err,) = list(discover([str(tmp_path)]))
    assert str(err) == f"{tmp_path}: directory contains no *.yaml or *.yml files"


def test_discover_glob_without_match(tmp_path: Path) -> None:
    pattern = str(tmp_path / "*.yaml")
    (err,) = list(discover([pattern]))
    assert str(err) == f"{pattern}: pattern matches no spec files"


def test_discover_directory_recursive_sorted_deduplicated(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("")
    (tmp_path / "a.yml").write_text("")
    (tmp_path / "c.txt").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.yaml").write_text("")
    explicit = tmp_path / "c.txt"
    found = list(discover([str(tmp_path), str(tmp_path / "b.yaml"), str(explicit)]))
    assert found == [
        (tmp_path / "a.yml", str(tmp_path / "a.yml")),
        (tmp_path / "b.yaml", str(tmp_path / "b.yaml")),
        (tmp_path / "sub" / "d.yaml", str(tmp_path / "sub" / "d.yaml")),
        (explicit, str(explicit)),  # a file named explicitly is taken whatever its suffix
    ]


def test_discover_glob(tmp_path: Path) -> None:
    (tmp_path / "x1.yaml").write_text("")
    (tmp_path / "x2.yaml").write_text("")
    (tmp_path / "y.yaml").write_text("")
    found = list(discover([str(tmp_path / "x*.yaml")]))
    assert found == [(tmp_path / n, str(tmp_path / n)) for n in ("x1.yaml", "x2.yaml")]


def test_discover_does_not_follow_directory_symlink_loops(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("")
    os.symlink(tmp_path, tmp_path / "loop")
    found = list(discover([str(tmp_path)]))
    assert found == [(tmp_path / "a.yaml", str(tmp_path / "a.yaml"))]


def test_discover_keeps_going_after_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("")
    found = list(discover([str(tmp_path / "missing"), str(tmp_path / "a.yaml")]))
    assert isinstance(found[0], SpecError)
    assert found[1] == (tmp_path / "a.yaml", str(tmp_path / "a.yaml"))


@pytest.mark.parametrize(("name", "expected"), [(n, e) for n, e, r in bad_corpus() if not r])
def test_c_loader_gives_the_same_messages(
    name: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large files are read by libyaml's C composer; every message must stay the same."""
    import gradcheck_cli.spec as spec_module

    monkeypatch.setattr(spec_module, "C_LOADER_MIN_CHARS", 0)
    items = load_file(BAD / name, name)
    errors = [str(i) for i in items if isinstance(i, SpecError)]
    assert errors[0] == f"{name}:{expected}"


def test_every_independent_error_of_a_case_is_reported(tmp_path: Path) -> None:
    """Up to 20 errors per case, in file order; the first stays the one reported alone before."""
    path = tmp_path / "multi.yaml"
    path.write_text(
        "logits: [1.0, 2.0, 0.5]\nlabel: 1\nweight: [1.0, -2.0, 1.0]\n"
        "tolerance: {rtol: -1}\nlabel_smoothing: 2.0\nexpect: {loss: [1, 2]}\n"
    )
    (item,) = load_file(path, "m.yaml")
    assert isinstance(item, SpecError)
    assert str(item) == "m.yaml:3:15: weight[1]: expected a finite number >= 0, found -2.0"
    assert item.all_messages() == [
        "m.yaml:3:15: weight[1]: expected a finite number >= 0, found -2.0",
        "m.yaml:4:19: tolerance.rtol: expected a finite number >= 0, found -1",
        "m.yaml:5:18: label_smoothing: expected a number in [0, 1], found 2.0",
        "m.yaml:6:16: expect.loss: expected a number, found a list",
    ]
    # an error in what other fields depend on stops the search (no cascade of follow-ups)
    path.write_text("logits: [1.0, 2.0]\nlabel: 7\nweight: [1.0, -1.0]\n")
    (item,) = load_file(path, "m.yaml")
    assert isinstance(item, SpecError) and item.others == ()
