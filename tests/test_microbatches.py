"""microbatches: k: gradient accumulation over k micro-batches must give the batch's gradient;
a plain mean does not (each micro-batch divides by its own count), num_items_in_batch does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gradcheck_cli.engine import RunOptions, build_problem, run_spec
from gradcheck_cli.microbatches import parts, rows_of_spec
from gradcheck_cli.model import Spec

DATA = Path(__file__).resolve().parent / "data" / "impl"
SPECS = Path(__file__).resolve().parents[1] / "specs"


def spec(reduction: str = "mean", microbatches: int = 2, **kw: object) -> Spec:
    rng = np.random.default_rng(5)
    return Spec(
        name="s",
        file="s.yaml",
        logits=rng.normal(size=(5, 4)) * 2,
        single=False,
        labels=np.array([1, 0, 3, 2, 1]),
        reduction=reduction,  # type: ignore[arg-type]
        microbatches=microbatches,
        **kw,  # type: ignore[arg-type]
    )


def check(result: object, name: str = "microbatches") -> object:
    (found,) = [c for c in result.checks if c.name == name]  # type: ignore[attr-defined]
    return found


def test_parts_are_contiguous_and_cover_the_batch() -> None:
    assert parts(5, 2) == [slice(0, 3), slice(3, 5)]
    assert parts(7, 7) == [slice(i, i + 1) for i in range(7)]
    assert sum(s.stop - s.start for s in parts(1000, 3)) == 1000


@pytest.mark.parametrize(
    ("reduction", "options", "passes"),
    [
        ("sum", {}, True),
        ("none", {}, True),
        ("mean", {"num_items_in_batch": 5.0}, True),
        ("mean", {"num_items_in_batch": 3.0, "weight": np.array([1.0, 2.0, 0.5, 1.0])}, True),
        ("mean", {}, False),
    ],
)
def test_reference_accumulates_exactly_only_with_a_shared_divisor(
    reduction: str, options: dict[str, object], passes: bool
) -> None:
    found = check(run_spec(spec(reduction, **options), RunOptions(methods=("analytic",))))
    assert found.passed is passes, found.detail  # type: ignore[attr-defined]
    if not passes:  # 3 + 2 rows of 5: each part's gradient is 5/3 and 5/2 times its share
        assert "1.66667, 2.5 times their share" in found.detail  # type: ignore[attr-defined]
        assert "num_items_in_batch" in found.detail  # type: ignore[attr-defined]


def test_per_row_inputs_are_split_and_per_class_ones_are_not() -> None:
    s = spec("mean", weight=np.array([1.0, 2.0, 0.5, 1.0]))
    part = rows_of_spec(s, slice(3, 5), s.logits)
    assert part.logits.shape == (2, 4) and list(part.labels) == [2, 1]  # type: ignore[arg-type]
    assert part.weight.shape == (4,)  # type: ignore[attr-defined]
    sigmoid = Spec(
        name="b",
        file="b.yaml",
        logits=s.logits,
        single=False,
        targets=np.full((5, 4), 0.5),
        loss="sigmoid_cross_entropy",
        weight=np.arange(20.0).reshape(5, 4),  # type: ignore[call-arg]
        microbatches=2,
    )
    part = rows_of_spec(sigmoid, slice(0, 3), sigmoid.logits)
    assert part.weight.shape == (3, 4) and part.targets.shape == (3, 4)  # type: ignore[attr-defined, union-attr]
    whole = build_problem(sigmoid)
    assert whole.shape == (5, 4)
    found = check(run_spec(sigmoid, RunOptions(methods=("analytic",))))
    assert not found.passed  # a sigmoid mean divides each part by its own N K


def test_the_bundled_spec_accumulates() -> None:
    from gradcheck_cli.api import load

    (s,) = load(SPECS / "num_items_in_batch.yaml")
    assert s.microbatches == 2
    assert check(run_spec(s)).passed  # type: ignore[attr-defined]


def test_fast_mode_says_it_is_not_checked() -> None:
    r = run_spec(spec("sum"), RunOptions(fast=True))
    assert "microbatches" in r.not_computable
    assert all(c.name != "microbatches" for c in r.checks)


@pytest.mark.parametrize(
    ("value", "message"),
    [("1", "from 2 to the batch size 3, found 1"), ("4", "found 4"), ("two", "an integer")],
)
def test_bad_values_are_located_errors(tmp_path: Path, value: str, message: str) -> None:
    from gradcheck_cli.api import load
    from gradcheck_cli.errors import SpecError

    path = tmp_path / "m.yaml"
    path.write_text(f"logits: [[1, 2], [0, 1], [2, 2]]\nlabel: [0, 1, 1]\nmicrobatches: {value}\n")
    with pytest.raises(SpecError, match=message) as info:
        load(path)
    assert "m.yaml:3" in str(info.value) and "microbatches" in str(info.value)


torch = pytest.importorskip("torch")


def test_an_implementation_must_accumulate_too() -> None:
    from gradcheck_cli.impl import load

    s = spec("mean", num_items_in_batch=5.0)  # M = the batch's count: the whole batch agrees
    good = run_spec(s, RunOptions(impl=load("torch"), methods=("analytic",)))
    assert good.status == "pass"
    assert check(good, "impl_microbatches").passed  # type: ignore[attr-defined]
    bug = run_spec(
        s, RunOptions(impl=load(f"torch:{DATA / 'torch_kernels.py'}:own_count"), methods=())
    )
    assert all(c.passed for c in bug.comparisons)  # loss and gradient of the whole batch agree
    found = check(bug, "impl_microbatches")
    assert not found.passed and "2 micro-batches" in found.detail  # type: ignore[attr-defined]
