"""Renderers of ``xentcheck jacobian``: a Rich table view and a JSON document."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from gradcheck_cli.model import JacobianView
from gradcheck_cli.report._lines import Lines
from gradcheck_cli.report.table import err, num, verdict


def _names(v: JacobianView) -> list[str]:
    k = v.logits.shape[0]
    return list(v.classes) if v.classes else [str(i) for i in range(k)]


def render_table(v: JacobianView) -> RenderableType:
    """The probabilities, the Jacobian with its checks and, with a label, the chain rule."""
    console = Lines()
    names = _names(v)
    k = len(names)
    console.print(Text("softmax p = exp(z - max z) / sum exp(z - max z)", style="bold"))
    probs = Table(box=None, pad_edge=False, header_style="bold")
    probs.add_column("class")
    probs.add_column("logit z", justify="right")
    probs.add_column("p = softmax(z)", justify="right")
    for i in range(k):
        probs.add_row(names[i], num(float(v.logits[i])), num(float(v.probs[i])))
    console.print(probs)
    console.print()

    console.print(
        Text(
            "softmax Jacobian J[i, j] = dp_i/dz_j (diagonal p_i(1 - p_i), off-diagonal -p_i p_j)",
            style="bold",
        )
    )
    jac = Table(box=None, pad_edge=False, header_style="bold")
    jac.add_column("dp_i \\ dz_j")
    for name in names:
        jac.add_column(name, justify="right")
    for i in range(k):
        jac.add_row(names[i], *(num(float(v.jacobian[i, j])) for j in range(k)))
    console.print(jac)
    line = Text("symmetric: ")
    line.append(verdict(v.symmetric))
    line.append(f" (max |J - Jᵀ| = {err(v.max_asymmetry)})   rows sum to 0: ")
    line.append(verdict(v.rows_sum_to_zero))
    line.append(f" (max |row sum| = {err(v.max_row_sum)})")
    console.print(line)

    if v.label is None or v.dl_dp is None or v.closed_form is None:
        return console.group()
    console.print()
    console.print(
        Text(
            f"chain rule for label {names[v.label]}: loss -log p_y = {num(v.loss or 0.0)}, "
            "dL/dz = Jᵀ · dL/dp = p - y",
            style="bold",
        )
    )
    chain = Table(box=None, pad_edge=False, header_style="bold")
    chain.add_column("class")
    chain.add_column("dL/dp = -y/p", justify="right")
    chain.add_column("Jᵀ · dL/dp", justify="right")
    chain.add_column("p - y", justify="right")
    chain.add_column("|Δ|", justify="right")
    for i in range(k):
        chained = "n/a" if v.chain is None else num(float(v.chain[i]))
        delta = "" if v.chain is None else err(abs(float(v.chain[i]) - float(v.closed_form[i])))
        chain.add_row(
            names[i], num(float(v.dl_dp[i])), chained, num(float(v.closed_form[i])), delta
        )
    console.print(chain)
    if v.chain_note:
        console.print(Text(f"Jᵀ · dL/dp not computable: {v.chain_note}", style="yellow"))
    return console.group()


def to_dict(v: JacobianView) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "logits": v.logits,
        "classes": list(v.classes) if v.classes else None,
        "probs": v.probs,
        "jacobian": v.jacobian,
        "symmetric": v.symmetric,
        "max_asymmetry": v.max_asymmetry,
        "max_row_sum": v.max_row_sum,
        "rows_sum_to_zero": v.rows_sum_to_zero,
    }
    if v.label is not None:
        doc.update(
            {
                "label": v.label,
                "loss": v.loss,
                "dl_dp": v.dl_dp,
                "chain": v.chain,
                "chain_note": v.chain_note,
                "closed_form": v.closed_form,
            }
        )
    return doc


def render_json(v: JacobianView) -> str:
    """``xentcheck jacobian --format json``."""
    from gradcheck_cli.report.json import dumps

    return dumps(to_dict(v))
