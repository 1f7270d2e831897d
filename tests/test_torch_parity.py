"""Parity with PyTorch on seeded random combinations of every loss option (skipped without torch).

Losses and gradients must agree to 1e-9 relative (plus a tiny absolute floor for elements that are
zero in one and a rounding residue in the other) in float64:

* softmax cross-entropy against ``torch.nn.functional.cross_entropy`` and autograd: shapes,
  class weights, ``ignore_index`` (a valid class or -100), label smoothing, probability targets,
  every reduction, and a linear layer in front;
* z-loss and softcap (no PyTorch equivalent) against the documented composition written in
  torch: ``cross_entropy(c * tanh(z / c)) + s * lse^2`` normalized as documented;
* sigmoid cross-entropy against ``binary_cross_entropy_with_logits`` with ``weight`` and
  ``pos_weight``.

The test extras install torch==2.13.0 (CPU), so CI runs it; it skips itself where torch is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck_cli.core import CrossEntropyProblem, SigmoidProblem, reduce_any
from gradcheck_cli.methods import METHODS
from gradcheck_cli.methods import layer as layer_methods
from gradcheck_cli.model import Layer

torch = pytest.importorskip("torch")
F = torch.nn.functional

CASES = 400
RTOL, ATOL = 1e-9, 1e-15


def close(ours: object, theirs: object) -> None:
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=RTOL, atol=ATOL)


def random_softmax_case(rng: np.random.Generator) -> dict[str, object]:
    n, k = int(rng.integers(1, 6)), int(rng.integers(2, 9))
    case: dict[str, object] = {
        "z": rng.normal(size=(n, k)) * rng.uniform(0.5, 6.0),
        "reduction": str(rng.choice(["mean", "sum", "none"])),
        "smoothing": float(rng.choice([0.0, 0.0, 0.1, 0.35])),
        "weight": rng.uniform(0.2, 3.0, size=k) if rng.random() < 0.5 else None,
    }
    if rng.random() < 0.3:
        t = rng.dirichlet(np.full(k, 0.7), size=n)
        case.update(targets=t, labels=None, ignore=None)
    else:
        labels = rng.integers(0, k, n)
        ignore = None
        if rng.random() < 0.5:
            ignore = int(rng.choice([-100, int(rng.integers(0, k))]))
            if ignore == -100:
                labels[rng.random(n) < 0.3] = -100
        if ignore is not None and np.all(labels == ignore) and case["reduction"] == "mean":
            labels[0] = (ignore + 1) % k if ignore >= 0 else 0  # all-ignored mean: own test
        case.update(targets=None, labels=labels, ignore=ignore)
    return case


def torch_cross_entropy(case: dict[str, object]) -> tuple[np.ndarray, np.ndarray]:
    z = torch.tensor(case["z"], dtype=torch.float64, requires_grad=True)
    kwargs: dict[str, object] = {
        "reduction": case["reduction"],
        "label_smoothing": case["smoothing"],
    }
    if case["weight"] is not None:
        kwargs["weight"] = torch.tensor(case["weight"], dtype=torch.float64)
    if case["labels"] is not None:
        target = torch.tensor(case["labels"], dtype=torch.int64)
        if case["ignore"] is not None:
            kwargs["ignore_index"] = case["ignore"]
    else:
        target = torch.tensor(case["targets"], dtype=torch.float64)
    loss = F.cross_entropy(z, target, **kwargs)
    loss.sum().backward()
    return loss.detach().numpy(), z.grad.numpy()


def ours(case: dict[str, object], **extra: object) -> CrossEntropyProblem:
    return CrossEntropyProblem(
        np.asarray(case["z"]),
        labels=None if case["labels"] is None else np.asarray(case["labels"], dtype=np.int64),
        targets=None if case["targets"] is None else np.asarray(case["targets"]),
        reduction=case["reduction"],  # type: ignore[arg-type]
        weight=None if case["weight"] is None else np.asarray(case["weight"]),
        ignore_index=case["ignore"],  # type: ignore[arg-type]
        label_smoothing=float(case["smoothing"]),  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )


def test_softmax_cross_entropy_matches_torch() -> None:
    rng = np.random.default_rng(20261122)
    for _ in range(CASES):
        case = random_softmax_case(rng)
        loss, grad = torch_cross_entropy(case)
        problem = ours(case)
        close(reduce_any(problem), loss)
        for name in ("analytic", "jacobian"):
            close(METHODS[name](problem).grad, grad)


def test_all_ignored_mean_is_nan_with_zero_gradient() -> None:
    case = {
        "z": np.array([[1.0, 2.0, 0.5], [0.0, 1.0, 3.0]]),
        "reduction": "mean",
        "smoothing": 0.1,
        "weight": None,
        "targets": None,
        "labels": np.array([1, 1]),
        "ignore": 1,
    }
    loss, grad = torch_cross_entropy(case)
    assert np.isnan(loss)
    problem = ours(case)
    assert np.isnan(reduce_any(problem))
    np.testing.assert_array_equal(METHODS["analytic"](problem).grad, grad)


def test_zloss_and_softcap_match_the_documented_composition() -> None:
    rng = np.random.default_rng(7)
    for _ in range(CASES // 2):
        case = random_softmax_case(rng)
        cap = float(rng.choice([1.5, 5.0, 30.0]))
        s = float(rng.choice([0.0, 1e-4, 0.1]))
        z = torch.tensor(case["z"], dtype=torch.float64, requires_grad=True)
        zc = cap * torch.tanh(z / cap)
        reduction = case["reduction"]
        kwargs: dict[str, object] = {"label_smoothing": case["smoothing"], "reduction": "none"}
        if case["weight"] is not None:
            kwargs["weight"] = torch.tensor(case["weight"], dtype=torch.float64)
        if case["labels"] is not None:
            labels = torch.tensor(case["labels"], dtype=torch.int64)
            valid = torch.ones_like(labels, dtype=torch.bool)
            if case["ignore"] is not None:
                kwargs["ignore_index"] = case["ignore"]
                valid = labels != case["ignore"]
            ce = F.cross_entropy(zc, labels, **kwargs)
            w = kwargs.get("weight", torch.ones(z.shape[1], dtype=torch.float64))
            norm = (w[labels.clamp(min=0)] * valid).sum()  # type: ignore[index]
        else:
            valid = torch.ones(z.shape[0], dtype=torch.bool)
            ce = F.cross_entropy(zc, torch.tensor(case["targets"]), **kwargs)
            norm = torch.tensor(float(z.shape[0]), dtype=torch.float64)
        zl = s * torch.logsumexp(zc, dim=1) ** 2 * valid
        if reduction == "none":
            total = ce + zl
        elif reduction == "sum":
            total = ce.sum() + zl.sum()
        else:
            total = ce.sum() / norm + zl.sum() / valid.sum()
        total.sum().backward()
        problem = ours(case, softcap=cap, z_loss=s)
        close(reduce_any(problem), total.detach().numpy())
        for name in ("analytic", "jacobian"):
            close(METHODS[name](problem).grad, z.grad.numpy())


def test_sigmoid_cross_entropy_matches_torch() -> None:
    rng = np.random.default_rng(3)
    for _ in range(CASES):
        n, k = int(rng.integers(1, 6)), int(rng.integers(1, 7))
        x = rng.normal(size=(n, k)) * rng.uniform(0.5, 8.0)
        y = rng.uniform(size=(n, k)) * (rng.random((n, k)) < 0.7)
        reduction = str(rng.choice(["mean", "sum", "none"]))
        weight_shape = [None, (k,), (n, 1), (n, k)][int(rng.integers(0, 4))]
        weight = None if weight_shape is None else rng.uniform(0.1, 2.0, size=weight_shape)
        pos = rng.uniform(0.2, 4.0, size=k) if rng.random() < 0.5 else None
        xt = torch.tensor(x, requires_grad=True)
        loss = F.binary_cross_entropy_with_logits(
            xt,
            torch.tensor(y),
            weight=None if weight is None else torch.tensor(weight),
            pos_weight=None if pos is None else torch.tensor(pos),
            reduction=reduction,
        )
        loss.sum().backward()
        problem = SigmoidProblem(
            x,
            y,
            reduction,  # type: ignore[arg-type]
            weight=None if weight is None else np.broadcast_to(weight, (n, k)).copy(),
            pos_weight=pos,
        )
        close(reduce_any(problem), loss.detach().numpy())
        for name in ("analytic", "jacobian"):
            close(METHODS[name](problem).grad, xt.grad.numpy())


def test_layer_parameter_gradients_match_torch() -> None:
    rng = np.random.default_rng(11)
    for _ in range(CASES // 4):
        case = random_softmax_case(rng)
        n, k = np.asarray(case["z"]).shape
        d = int(rng.integers(1, 5))
        x, w, b = rng.normal(size=(n, d)), rng.normal(size=(d, k)), rng.normal(size=k)
        layer = Layer(x, w, b)
        case["z"] = layer.logits()
        xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        kwargs: dict[str, object] = {
            "reduction": case["reduction"],
            "label_smoothing": case["smoothing"],
        }
        if case["weight"] is not None:
            kwargs["weight"] = torch.tensor(case["weight"])
        if case["labels"] is not None:
            target = torch.tensor(case["labels"])
            if case["ignore"] is not None:
                kwargs["ignore_index"] = case["ignore"]
        else:
            target = torch.tensor(case["targets"])
        loss = F.cross_entropy(xt @ wt + bt, target, **kwargs)
        loss.sum().backward()
        problem = ours(case)
        close(reduce_any(problem), loss.detach().numpy())
        want = {"weights": wt.grad.numpy(), "bias": bt.grad.numpy(), "inputs": xt.grad.numpy()}
        for grads in (
            layer_methods.closed_form(layer, METHODS["analytic"](problem).grad),
            layer_methods.explicit_chain(layer, METHODS["jacobian"](problem).grad),
        ):
            for name, value in want.items():
                close(grads[name], value)
        # Finite differences on every parameter: within their truncation error.
        for name, value in layer_methods.finite_differences(layer, problem).items():
            np.testing.assert_allclose(value, want[name], rtol=0, atol=1e-7)


def masked_torch(case: dict[str, object], mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The masked loss written by hand in torch (docs/losses.md): PyTorch's ``reduction='none'``
    losses times the mask; ``mean`` over ``sum m_n w_{y_n}`` (``sum m_n`` for targets)."""
    z = torch.tensor(case["z"], dtype=torch.float64, requires_grad=True)
    m = torch.tensor(mask, dtype=torch.float64)
    kwargs: dict[str, object] = {"label_smoothing": case["smoothing"], "reduction": "none"}
    w = torch.ones(z.shape[1], dtype=torch.float64)
    if case["weight"] is not None:
        w = torch.tensor(case["weight"], dtype=torch.float64)
        kwargs["weight"] = w
    if case["labels"] is not None:
        labels = torch.tensor(case["labels"], dtype=torch.int64)
        valid = torch.ones_like(labels, dtype=torch.bool)
        if case["ignore"] is not None:
            kwargs["ignore_index"] = case["ignore"]
            valid = labels != case["ignore"]
        per = F.cross_entropy(z, labels, **kwargs)
        norm = (m * w[labels.clamp(min=0)] * valid).sum()  # type: ignore[index]
    else:
        per = F.cross_entropy(z, torch.tensor(case["targets"]), **kwargs)
        norm = m.sum()
    total = {"none": m * per, "sum": (m * per).sum(), "mean": (m * per).sum() / norm}
    out = total[str(case["reduction"])]
    out.sum().backward()
    return out.detach().numpy(), z.grad.numpy()


def test_loss_mask_matches_torch_by_hand_and_the_torch_adapter() -> None:
    from gradcheck_cli.torch_adapter import torch_cross_entropy as adapter

    rng = np.random.default_rng(15)
    for _ in range(CASES // 2):
        case = random_softmax_case(rng)
        n = np.asarray(case["z"]).shape[0]
        mask = rng.choice([0.0, 0.3, 1.0, 2.0], size=n)
        mask[0] = 1.0
        if case["labels"] is not None and case["ignore"] is not None:
            mask[np.asarray(case["labels"]) == case["ignore"]] = 0.5  # on ignored rows: no effect
            if case["reduction"] == "mean" and not np.any(mask[case["labels"] != case["ignore"]]):
                continue  # an empty mean: own test
        loss, grad = masked_torch(case, mask)
        problem = ours(case, loss_mask=mask)
        close(reduce_any(problem), loss)
        for name in ("analytic", "jacobian", "exact"):
            close(METHODS[name](problem).grad, grad)
        options: dict[str, object] = {"reduction": case["reduction"], "loss_mask": mask}
        options["label_smoothing"] = case["smoothing"]
        for key, name in (("weight", "weight"), ("labels", "labels"), ("targets", "targets")):
            if case[key] is not None:
                options[name] = np.asarray(case[key])
        if case["ignore"] is not None:
            options["ignore_index"] = case["ignore"]
        got_loss, got_grad = adapter(np.asarray(case["z"]), **options)
        close(got_loss, loss)
        close(got_grad, grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_adapter_composes_mask_num_items_and_z_loss(reduction: str) -> None:
    from gradcheck_cli.torch_adapter import torch_cross_entropy as adapter

    rng = np.random.default_rng(4)
    z = rng.normal(size=(6, 5)) * 3
    y = np.array([0, -100, 3, 4, 1, 2])
    mask = np.array([1.0, 1.0, 0.0, 0.5, 2.0, 1.0])
    for extra in ({}, {"num_items_in_batch": 9.0}, {"softcap": 4.0}):
        options = {"labels": y, "ignore_index": -100, "loss_mask": mask, "z_loss": 0.03, **extra}
        problem = CrossEntropyProblem(z, reduction=reduction, **options)  # type: ignore[arg-type]
        got_loss, got_grad = adapter(z, reduction=reduction, **options)
        close(got_loss, reduce_any(problem))
        close(got_grad, METHODS["exact"](problem).grad)


@pytest.mark.parametrize("mask_all_zero", [False, True])
@pytest.mark.parametrize("empty_mean", ["nan", "zero"])
def test_torch_adapter_empty_mean(mask_all_zero: bool, empty_mean: str) -> None:
    """An empty mean: PyTorch's own nan with a zero gradient by default; with empty_mean zero
    the adapter gives 0 and a zero gradient (autograd, no nan leaking through the 0/0)."""
    from gradcheck_cli.torch_adapter import torch_cross_entropy as adapter

    z = np.array([[1.0, 2.0, -np.inf], [0.0, 1.0, 3.0]])
    options: dict[str, object] = {"ignore_index": -100, "z_loss": 0.1, "label_smoothing": 0.1}
    if mask_all_zero:
        options |= {"labels": np.array([2, 1]), "loss_mask": np.zeros(2)}  # +inf loss on row 0
    else:
        options |= {"labels": np.array([-100, -100])}
    loss, grad = adapter(z, reduction="mean", empty_mean=empty_mean, **options)
    assert np.isnan(loss) if empty_mean == "nan" else loss == 0.0, loss
    np.testing.assert_array_equal(grad, 0.0)
    problem = CrossEntropyProblem(z, empty_mean=empty_mean, **options)  # type: ignore[arg-type]
    np.testing.assert_array_equal(reduce_any(problem), loss)


def test_torch_adapter_empty_mean_zero_with_zero_class_weights() -> None:
    """Non-ignored labels whose weights sum to 0 with smoothing: PyTorch's mean is nan (and so
    is its gradient); empty_mean zero gives 0 and a zero gradient, as the reference does."""
    from gradcheck_cli.torch_adapter import torch_cross_entropy as adapter

    z = np.array([[1.0, 2.0, 0.5], [0.0, 1.0, 3.0]])
    options = {"labels": np.array([0, 0]), "weight": np.array([0.0, 1.0, 1.0])}
    loss, grad = adapter(z, reduction="mean", label_smoothing=0.1, empty_mean="zero", **options)
    assert loss == 0.0
    np.testing.assert_array_equal(grad, 0.0)


def test_defaults_torch_is_pytorchs_default_ignore_index() -> None:
    """defaults: torch with labels -100 == PyTorch's F.cross_entropy with no ignore_index given
    == an explicit ignore_index -100."""
    import gradcheck_cli as xc
    from gradcheck_cli.spec import load_text

    text = "logits: [[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-0.5, 1.5, 1.0]]\nlabel: [0, -100, 2]\n"
    (by_default,) = load_text("defaults: torch\n" + text)
    (explicit,) = load_text("ignore_index: -100\n" + text)
    assert by_default.ignore_index == explicit.ignore_index == -100  # type: ignore[union-attr]
    z = torch.tensor(by_default.logits, requires_grad=True)  # type: ignore[union-attr]
    loss = F.cross_entropy(z, torch.tensor([0, -100, 2]))  # PyTorch's own default
    loss.backward()
    report = xc.check([by_default, explicit], impl="torch")  # type: ignore[list-item]
    assert report.passed, report.summary_text()
    problem = CrossEntropyProblem(
        by_default.logits,  # type: ignore[union-attr]
        labels=by_default.labels,  # type: ignore[union-attr]
        ignore_index=by_default.ignore_index,  # type: ignore[union-attr]
    )
    close(reduce_any(problem), loss.detach().numpy())
    close(METHODS["exact"](problem).grad, z.grad.numpy())


def test_bundled_convention_specs_pass_with_the_torch_adapter() -> None:
    from pathlib import Path

    import gradcheck_cli as xc

    specs = Path(__file__).resolve().parents[1] / "specs"
    names = ("loss_mask.yaml", "empty_mean.yaml", "defaults_torch.yaml", "all_ignored.yaml")
    for dtype in ("float64", "float32"):
        report = xc.check([s for n in names for s in xc.load(specs / n)], impl="torch",
                          dtype=dtype)  # type: ignore[arg-type]  # fmt: skip
        assert report.passed and len(report.results) == 7, report.summary_text()
