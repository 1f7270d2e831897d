"""Every loss option against an independent 40-digit mpmath reference of the documented formulas.

The reference is written the way docs/losses.md states each loss (PyTorch's composition
``(1 - a) * nll + (a / K) * smooth``, its normalizers, Liger-Kernel's z-loss and softcap, softplus
for sigmoid cross-entropy), not through xentcheck's weighted-target rearrangement, and its
gradient comes from ``mpmath.diff`` (high-precision numerical differentiation), so neither side
shares code or algebra with the other.
"""

from __future__ import annotations

from dataclasses import replace

import mpmath
import numpy as np
import pytest

from gradcheck_cli.core import CrossEntropyProblem, SigmoidProblem, reduce_any
from gradcheck_cli.methods import DEFAULT_SETTINGS as DEFAULT
from gradcheck_cli.methods import METHODS, NotComputable

mp = mpmath.mp


@pytest.fixture(autouse=True)
def _forty_digits() -> object:
    with mp.workdps(40):
        yield


def softmax_reference(
    z: list[list[float]],
    labels: list[int] | None,
    targets: list[list[float]] | None,
    weight: list[float] | None,
    ignore: int | None,
    a: float,
    cap: float | None,
    s: float,
    reduction: str,
) -> object:
    """The documented loss as a function of all logits (mpmath numbers), reduced."""
    n, k = len(z), len(z[0])
    w = [mp.mpf(1)] * k if weight is None else [mp.mpf(v) for v in weight]

    def loss(*flat: mpmath.mpf) -> object:
        rows = [list(flat[i * k : (i + 1) * k]) for i in range(n)]
        if cap is not None:
            rows = [[cap * mp.tanh(v / cap) for v in row] for row in rows]
        ce, zl, norm, count = [], [], mp.mpf(0), 0
        for i, row in enumerate(rows):
            lse = mp.log(mp.fsum(mp.exp(v) for v in row))
            logp = [v - lse for v in row]
            if labels is not None:
                y = labels[i]
                if y == ignore:
                    ce.append(mp.mpf(0))
                    zl.append(mp.mpf(0))
                    continue
                nll = -w[y] * logp[y]
                smooth = -mp.fsum(w[c] * logp[c] for c in range(k))
                ce.append((1 - a) * nll + a / k * smooth)
                norm += w[y]
            else:
                t = [(1 - a) * mp.mpf(v) + a / k for v in targets[i]]  # type: ignore[index]
                ce.append(-mp.fsum(w[c] * t[c] * logp[c] for c in range(k)))
                norm += 1
            count += 1
            zl.append(s * lse**2)
        if reduction == "none":
            return [c + q for c, q in zip(ce, zl, strict=True)]
        if reduction == "sum":
            return mp.fsum(ce) + mp.fsum(zl)
        return mp.fsum(ce) / norm + mp.fsum(zl) / count

    return loss


def reference_values(loss: object, z: np.ndarray, reduction: str) -> tuple[np.ndarray, np.ndarray]:
    flat = [mp.mpf(float(v)) for v in z.reshape(-1)]
    n, k = z.shape
    value = loss(*flat)  # type: ignore[operator]
    grad = np.empty(n * k)
    for j in range(n * k):

        def along(x: mpmath.mpf, j: int = j) -> object:
            args = list(flat)
            args[j] = x
            out = loss(*args)  # type: ignore[operator]
            return mp.fsum(out) if reduction == "none" else out

        grad[j] = float(mp.diff(along, flat[j]))
    values = np.array([float(v) for v in value]) if reduction == "none" else np.array(float(value))
    return values, grad.reshape(n, k)


def random_case(rng: np.random.Generator) -> dict[str, object]:
    n, k = int(rng.integers(1, 4)), int(rng.integers(2, 5))
    case: dict[str, object] = {
        "z": rng.normal(size=(n, k)) * 2,
        "reduction": str(rng.choice(["mean", "sum", "none"])),
        "a": float(rng.choice([0.0, 0.15])),
        "weight": rng.uniform(0.3, 2.0, size=k) if rng.random() < 0.5 else None,
        "cap": float(rng.choice([3.0, 10.0])) if rng.random() < 0.4 else None,
        "s": float(rng.choice([0.0, 0.05])),
        "ignore": None,
        "labels": None,
        "targets": None,
    }
    if rng.random() < 0.35:
        case["targets"] = rng.dirichlet(np.ones(k), size=n)
    else:
        labels = rng.integers(0, k, n)
        if rng.random() < 0.5 and n > 1:
            labels[0] = -100
            case["ignore"] = -100
        case["labels"] = labels
    return case


@pytest.mark.parametrize("seed", range(30))
def test_softmax_options_match_mpmath(seed: int) -> None:
    case = random_case(np.random.default_rng(seed))
    z = np.asarray(case["z"])
    labels = case["labels"]
    targets = case["targets"]
    loss = softmax_reference(
        z.tolist(),
        None if labels is None else [int(v) for v in labels],  # type: ignore[union-attr]
        None if targets is None else np.asarray(targets).tolist(),
        None if case["weight"] is None else np.asarray(case["weight"]).tolist(),
        case["ignore"],  # type: ignore[arg-type]
        case["a"],  # type: ignore[arg-type]
        case["cap"],  # type: ignore[arg-type]
        case["s"],  # type: ignore[arg-type]
        str(case["reduction"]),
    )
    want_loss, want_grad = reference_values(loss, z, str(case["reduction"]))
    problem = CrossEntropyProblem(
        z,
        labels=None if labels is None else np.asarray(labels, dtype=np.int64),
        targets=None if targets is None else np.asarray(targets),
        reduction=case["reduction"],  # type: ignore[arg-type]
        weight=None if case["weight"] is None else np.asarray(case["weight"]),
        ignore_index=case["ignore"],  # type: ignore[arg-type]
        label_smoothing=case["a"],  # type: ignore[arg-type]
        softcap=case["cap"],  # type: ignore[arg-type]
        z_loss=case["s"],  # type: ignore[arg-type]
    )
    np.testing.assert_allclose(reduce_any(problem), want_loss, rtol=1e-13, atol=1e-300)
    for name in ("analytic", "jacobian"):
        np.testing.assert_allclose(METHODS[name](problem).grad, want_grad, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        METHODS["finite_difference"](problem).grad, want_grad, rtol=0, atol=1e-8
    )


@pytest.mark.parametrize("seed", range(15))
def test_sigmoid_matches_mpmath(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n, k = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    x = rng.normal(size=(n, k)) * 3
    y = rng.uniform(size=(n, k)) * (rng.random((n, k)) < 0.8)
    w = rng.uniform(0.2, 2.0, size=(n, k))
    r = rng.uniform(0.5, 3.0, size=k)
    reduction = str(rng.choice(["mean", "sum", "none"]))

    def loss(*flat: mpmath.mpf) -> object:
        terms = []
        for j, v in enumerate(flat):
            i, c = divmod(j, k)
            softplus_neg = mp.log1p(mp.exp(-v))  # -log sigmoid(v)
            softplus_pos = mp.log1p(mp.exp(v))  # -log(1 - sigmoid(v))
            terms.append(w[i, c] * (r[c] * y[i, c] * softplus_neg + (1 - y[i, c]) * softplus_pos))
        if reduction == "none":
            return terms
        total = mp.fsum(terms)
        return total / (n * k) if reduction == "mean" else total

    want_loss, want_grad = reference_values(loss, x, reduction)
    problem = SigmoidProblem(x, y, reduction, weight=w, pos_weight=r)  # type: ignore[arg-type]
    np.testing.assert_allclose(
        np.asarray(reduce_any(problem)).reshape(-1), want_loss.reshape(-1), rtol=1e-13
    )
    for name in ("analytic", "jacobian"):
        np.testing.assert_allclose(METHODS[name](problem).grad, want_grad, rtol=1e-12, atol=1e-15)


def test_target_at_minus_inf_gives_infinite_loss_and_finite_closed_form() -> None:
    problem = CrossEntropyProblem(np.array([[1.0, -np.inf, 0.5]]), labels=np.array([1]))
    assert reduce_any(problem) == np.inf
    g = METHODS["analytic"](problem).grad[0]
    np.testing.assert_allclose(g, [0.6224593312018546, -1.0, 0.3775406687981454], rtol=1e-15)
    for name in ("jacobian", "finite_difference"):
        with pytest.raises(NotComputable):
            METHODS[name](problem)


def test_minus_inf_non_target_has_zero_gradient_by_every_method() -> None:
    problem = CrossEntropyProblem(
        np.array([[1.0, -np.inf, 0.5, 2.0]]), labels=np.array([3]), label_smoothing=0.0
    )
    for method in METHODS.values():
        g = method(problem).grad[0]
        assert g[1] == 0.0
        np.testing.assert_allclose(g[[0, 2, 3]], [0.2312239, 0.1402444, -0.3714683], atol=5e-8)


def test_exact_maps_minus_inf_through_the_softcap() -> None:
    # c tanh(-inf / c) = -c: the masked class keeps a probability under a softcap.
    for label in (0, 1):
        problem = CrossEntropyProblem(
            np.array([[1.0, -np.inf, 0.5]]), labels=np.array([label]), softcap=2.0
        )
        np.testing.assert_allclose(
            METHODS["exact"](problem, DEFAULT).grad,
            METHODS["analytic"](problem, DEFAULT).grad,
            rtol=1e-14,
            atol=1e-17,
        )


def test_zero_weight_mean_with_z_loss_is_consistent() -> None:
    # The mean is 0/0 = nan; the gradient is 0 everywhere, z-loss included.
    problem = CrossEntropyProblem(
        np.array([[1.0, 2.0, 0.5]]),
        labels=np.array([0]),
        weight=np.array([0.0, 1.0, 1.0]),
        z_loss=0.1,
    )
    assert np.isnan(reduce_any(problem))
    for name in ("analytic", "jacobian", "exact"):
        np.testing.assert_array_equal(METHODS[name](problem, DEFAULT).grad, 0.0)


def test_num_items_in_batch_makes_micro_batch_gradients_add_up() -> None:
    """With num_items_in_batch M = the tokens of the whole accumulated batch, the gradients of
    the micro-batches are exactly the rows of the full batch's gradient (transformers #34191):
    each micro-batch's own mean would weight its rows by 1/(its count) instead."""
    from gradcheck_cli.core import CrossEntropyProblem, reduce_any
    from gradcheck_cli.methods import DEFAULT_SETTINGS, METHODS

    rng = np.random.default_rng(11)
    z = rng.normal(size=(6, 5))
    y = np.array([0, -100, 3, 4, -100, 1])
    counted = float(np.count_nonzero(y != -100))
    full = CrossEntropyProblem(z, labels=y, ignore_index=-100, num_items_in_batch=counted)
    plain = CrossEntropyProblem(z, labels=y, ignore_index=-100)
    assert np.isclose(reduce_any(full), reduce_any(plain), rtol=1e-15)  # M = the count: the mean
    grads = []
    for rows in (slice(0, 2), slice(2, 6)):
        part = CrossEntropyProblem(
            z[rows], labels=y[rows], ignore_index=-100, num_items_in_batch=counted
        )
        grads.append(METHODS["analytic"](part, DEFAULT_SETTINGS).grad)
    whole = METHODS["analytic"](full, DEFAULT_SETTINGS).grad
    np.testing.assert_allclose(np.vstack(grads), whole, rtol=1e-15, atol=0)


# --------------------------------------------------------------------------------------------
# loss_mask and empty_mean


def masked_reference(
    z: np.ndarray,
    labels: np.ndarray | None,
    targets: np.ndarray | None,
    weight: np.ndarray | None,
    mask: np.ndarray,
    s: float,
    reduction: str,
    items: float | None = None,
) -> object:
    """docs/losses.md's masked loss, written from PyTorch's per-sample loss (index labels:
    ``w_y nll``; probability targets: ``-sum_c w_c t_c log p_c``): ``m_n l_n``, and ``mean`` =
    ``sum m_n ce_n / sum m_n w_{y_n} + sum m_n zl_n / sum m_n`` (M instead with ``items``). Index
    labels -100 are ignored."""
    n, k = z.shape
    w = [mp.mpf(1)] * k if weight is None else [mp.mpf(float(v)) for v in weight]
    m = [mp.mpf(float(v)) for v in mask]

    def loss(*flat: mpmath.mpf) -> object:
        ce, zl, norm, count = [], [], mp.mpf(0), mp.mpf(0)
        for i in range(n):
            row = list(flat[i * k : (i + 1) * k])
            lse = mp.log(mp.fsum(mp.exp(v) for v in row))
            if labels is not None:
                y = int(labels[i])
                if y == -100:
                    ce.append(mp.mpf(0))
                    zl.append(mp.mpf(0))
                    continue
                per = w[y] * (lse - row[y])
                norm += m[i] * w[y]
            else:
                assert targets is not None
                per = mp.fsum(
                    w[c] * mp.mpf(float(targets[i, c])) * (lse - row[c]) for c in range(k)
                )
                norm += m[i]
            count += m[i]
            ce.append(m[i] * per)
            zl.append(m[i] * s * lse**2)
        if reduction == "none":
            return [c + q for c, q in zip(ce, zl, strict=True)]
        if reduction == "sum":
            return mp.fsum(ce) + mp.fsum(zl)
        if items is not None:
            return (mp.fsum(ce) + mp.fsum(zl)) / items
        return mp.fsum(ce) / norm + (mp.fsum(zl) / count if s else 0)

    return loss


@pytest.mark.parametrize("seed", range(16))
def test_loss_mask_matches_mpmath_by_every_method(seed: int) -> None:
    rng = np.random.default_rng(500 + seed)
    n, k = int(rng.integers(2, 5)), int(rng.integers(2, 5))
    z = rng.normal(size=(n, k)) * 2
    reduction = str(rng.choice(["mean", "sum", "none"]))
    weight = rng.uniform(0.3, 2.0, size=k) if rng.random() < 0.5 else None
    s = float(rng.choice([0.0, 0.05]))
    mask = rng.choice([0.0, 0.25, 1.0, 1.5], size=n)
    mask[0] = 1.0  # never an empty mean here (own tests below)
    labels = targets = None
    if rng.random() < 0.3:
        targets = rng.dirichlet(np.ones(k), size=n)
    else:
        labels = rng.integers(0, k, n)
        if rng.random() < 0.5:
            labels[-1] = -100
    items = float(rng.choice([3.0, 7.5])) if reduction == "mean" and rng.random() < 0.3 else None
    ref = masked_reference(z, labels, targets, weight, mask, s, reduction, items)
    want_loss, want_grad = reference_values(ref, z, reduction)
    problem = CrossEntropyProblem(
        z,
        labels=labels,
        targets=targets,
        reduction=reduction,  # type: ignore[arg-type]
        weight=weight,
        ignore_index=None if labels is None else -100,
        z_loss=s,
        loss_mask=mask,
        num_items_in_batch=items,
    )
    np.testing.assert_allclose(reduce_any(problem), want_loss, rtol=1e-13, atol=1e-300)
    for name in ("analytic", "jacobian", "exact", "complex_step"):
        got = METHODS[name](problem, DEFAULT).grad
        np.testing.assert_allclose(got, want_grad, rtol=1e-12, atol=1e-15, err_msg=name)
    got = METHODS["finite_difference"](problem, DEFAULT).grad
    np.testing.assert_allclose(got, want_grad, rtol=0, atol=1e-8)


def _options_problem(**extra: object) -> CrossEntropyProblem:
    rng = np.random.default_rng(42)
    z = rng.normal(size=(5, 4)) * 2
    return CrossEntropyProblem(
        z,
        labels=np.array([0, 3, -100, 1, 2]),
        ignore_index=-100,
        weight=np.array([0.5, 2.0, 1.0, 1.5]),
        label_smoothing=0.1,
        z_loss=0.01,
        **extra,  # type: ignore[arg-type]
    )


ALL_METHODS = ("analytic", "jacobian", "exact", "complex_step", "finite_difference")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_mask_of_ones_is_no_mask(reduction: str) -> None:
    plain = _options_problem(reduction=reduction)
    ones = _options_problem(reduction=reduction, loss_mask=np.ones(5))
    np.testing.assert_allclose(reduce_any(ones), reduce_any(plain), rtol=1e-15, atol=0)
    for name in ALL_METHODS:
        np.testing.assert_allclose(
            METHODS[name](ones, DEFAULT).grad, METHODS[name](plain, DEFAULT).grad, rtol=1e-14,
            atol=1e-17, err_msg=name,
        )  # fmt: skip


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_mask_zero_on_a_row_is_ignore_index_on_that_row(reduction: str) -> None:
    """Row 1 masked (m = 0) == row 1 labelled ignore_index, even where its loss is +inf (its
    label's logit is -inf): the masked row contributes exactly 0, in loss and gradient."""
    z = np.random.default_rng(3).normal(size=(4, 3))
    z[1, 2] = -np.inf
    masked = CrossEntropyProblem(
        z, labels=np.array([0, 2, 1, 1]), ignore_index=-100, reduction=reduction,  # type: ignore[arg-type]
        loss_mask=np.array([1.0, 0.0, 1.0, 1.0]), z_loss=0.02,
    )  # fmt: skip
    ignored = CrossEntropyProblem(
        z, labels=np.array([0, -100, 1, 1]), ignore_index=-100, reduction=reduction,  # type: ignore[arg-type]
        z_loss=0.02,
    )  # fmt: skip
    np.testing.assert_allclose(reduce_any(masked), reduce_any(ignored), rtol=1e-15, atol=0)
    assert np.all(np.isfinite(reduce_any(masked)))
    for name in ("analytic", "exact", "complex_step", "finite_difference"):
        got, want = METHODS[name](masked, DEFAULT).grad, METHODS[name](ignored, DEFAULT).grad
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-17, err_msg=name)
        assert np.all(got[1] == 0.0)


def test_fractional_mask_scales_a_row_like_repeating_it() -> None:
    """sum with m = 2 on a row == the row written twice; mean with m = 0.5 is a weighted mean."""
    z = np.array([[1.0, 2.0, 0.5], [0.3, -0.2, 2.2]])
    y = np.array([1, 2])
    twice = CrossEntropyProblem(z, labels=y, reduction="sum", loss_mask=np.array([2.0, 1.0]))
    repeated = CrossEntropyProblem(z[[0, 0, 1]], labels=y[[0, 0, 1]], reduction="sum")
    np.testing.assert_allclose(reduce_any(twice), reduce_any(repeated), rtol=1e-15)
    half = CrossEntropyProblem(z, labels=y, loss_mask=np.array([0.5, 1.0]))
    per = CrossEntropyProblem(z, labels=y, reduction="none")
    l0, l1 = np.asarray(reduce_any(per))
    np.testing.assert_allclose(reduce_any(half), (0.5 * l0 + l1) / 1.5, rtol=1e-15)


EMPTY = {
    "all ignored": {"labels": np.array([-100, -100, -100])},
    "all masked": {"labels": np.array([0, 1, 2]), "loss_mask": np.zeros(3)},
    "masked or ignored": {"labels": np.array([0, -100, 2]), "loss_mask": np.array([0.0, 1, 0])},
    "zero weight sum": {"labels": np.array([0, 0, 0]), "weight": np.array([0.0, 1.0, 1.0])},
}


@pytest.mark.parametrize("case", list(EMPTY))
@pytest.mark.parametrize("z_loss", [0.0, 0.1])
def test_empty_mean_zero_gives_zero_loss_and_zero_gradient(case: str, z_loss: float) -> None:
    z = np.array([[1.0, 2.0, 0.5], [0.0, 1.0, 3.0], [-1.0, 0.5, 0.0]])
    options = {"ignore_index": -100, "z_loss": z_loss, "label_smoothing": 0.1, **EMPTY[case]}
    zero = CrossEntropyProblem(z, empty_mean="zero", **options)  # type: ignore[arg-type]
    nan = CrossEntropyProblem(z, **options)  # type: ignore[arg-type]
    assert reduce_any(zero) == 0.0
    assert np.isnan(reduce_any(nan))  # the default stays PyTorch's 0/0
    for name in ALL_METHODS:
        np.testing.assert_array_equal(METHODS[name](zero, DEFAULT).grad, 0.0, err_msg=name)
        np.testing.assert_array_equal(METHODS[name](nan, DEFAULT).grad, 0.0, err_msg=name)


def test_empty_mean_only_changes_an_empty_mean() -> None:
    z = np.array([[1.0, 2.0, 0.5], [0.0, 1.0, 3.0]])
    for reduction in ("mean", "sum", "none"):
        for labels in (np.array([1, -100]), np.array([-100, -100])):
            if reduction == "mean" and np.all(labels == -100):
                continue
            a = CrossEntropyProblem(z, labels=labels, ignore_index=-100, reduction=reduction)  # type: ignore[arg-type]
            b = replace(a, empty_mean="zero")
            np.testing.assert_array_equal(reduce_any(a), reduce_any(b))
            np.testing.assert_array_equal(METHODS["exact"](a).grad, METHODS["exact"](b).grad)
