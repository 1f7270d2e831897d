"""Renderers of ``xentcheck explain``: Markdown (course notes), and the same rendered by Rich."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from gradcheck_cli.model import Walkthrough

if TYPE_CHECKING:
    from rich.console import RenderableType


def f(x: float, digits: int = 6) -> str:
    """A number for prose and tables: ``digits`` significant digits."""
    return f"{x:.{digits}g}"


def vec(values: object, digits: int = 4) -> str:
    return "(" + ", ".join(f(float(v), digits) for v in values) + ")"  # type: ignore[attr-defined]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def markdown(w: Walkthrough) -> str:
    """The whole walkthrough as Markdown (headings, tables, LaTeX-style formulas)."""
    sections = (
        _title,
        _forward_section,
        _loss_section,
        _jacobian_section,
        _dl_dp_section,
        _chain_section,
        _difference_section,
        _graph_section,
    )
    return "\n".join(line for section in sections for line in section(w))


def _title(w: Walkthrough) -> list[str]:
    """The heading."""
    lines: list[str] = []
    which = f" (sample {w.sample} of {w.n})" if w.n > 1 else ""
    lines += [f"# Why d(loss)/d(logits) = p − y: {w.name}{which}", ""]
    return lines


def _forward_section(w: Walkthrough) -> list[str]:
    """1. The forward pass: the max-shift, the exponentials, p."""
    names = list(w.classes)
    k = len(names)
    lines: list[str] = []
    lines += ["## 1. Forward pass: logits → softmax", ""]
    lines += [
        f"The largest logit is m = {f(w.shift)}. Subtracting it from every logit changes nothing "
        "(softmax(z + c) = softmax(z)) but makes every exponent ≤ 0, so exp cannot overflow.",
        "",
    ]
    lines += _table(
        ["class", "logit z", "z − m", "e^(z − m)", "p = e^(z − m) / Σ"],
        [
            [names[i], f(w.logits[i]), f(w.shifted[i]), f(w.exps[i]), f(w.probs[i])]
            for i in range(k)
        ],
    )
    lines += [
        "",
        f"Σ e^(z − m) = {f(w.total)}; the probabilities sum to {f(float(w.probs.sum()))}.",
        "",
    ]
    return lines


def _loss_section(w: Walkthrough) -> list[str]:
    """2. The loss, both ways (and the expectations' rounding)."""
    names = list(w.classes)
    k = len(names)
    y = w.label
    plain_label = w.plain_label
    lines: list[str] = []
    lines += ["## 2. The loss", ""]
    if plain_label and y is not None:
        lines += [
            f"With true class **{names[y]}** the loss is the negative log-probability of that "
            "class:",
            "",
            f"$$L = -\\log p_{{{names[y]}}} = -\\log {f(w.probs[y])} = {f(w.loss)}$$",
            "",
            "or, without forming p at all (how xentcheck computes it, exact even where p "
            "underflows):",
            "",
            f"$$L = -z_y + \\log \\sum_j e^{{z_j}} = -{f(w.logits[y])} + {f(w.shift)} + "
            f"\\log {f(w.total)} = {f(w.loss_via_lse)}$$",
            "",
        ]
        if w.rounded_figure is not None:
            py, lr = w.rounded_figure
            lines += [
                f"The expected values round p_{names[y]} to {py:g} and report −log {py:g} = "
                f"{lr:.3f}; the exact probability {f(w.probs[y])} gives {w.loss:.4f}. The "
                f"difference, {abs(lr - w.loss):.4f}, is the rounding of p, not a "
                "different loss.",
                "",
            ]
    else:
        lines += [
            "The loss is the cross-entropy against the weighted target q (xentcheck's form of "
            "PyTorch's options: class weights, label smoothing, probability targets):",
            "",
            "$$L = -\\sum_c q_c \\log p_c = " + f(w.loss) + "$$",
            "",
        ]
        lines += _table(
            ["class", "target", "q"],
            [[names[i], f(w.targets[i]), f(w.q[i])] for i in range(k)],
        )
        opts = ", ".join(f"{key} = {val}" for key, val in w.options.items()) or "none"
        lines += ["", f"Options: {opts}.", ""]
    return lines


def _jacobian_section(w: Walkthrough) -> list[str]:
    """3. The softmax Jacobian and its two cases."""
    names = list(w.classes)
    k = len(names)
    lines: list[str] = []
    lines += ["## 3. The softmax Jacobian", ""]
    lines += [
        "Each probability depends on every logit. By the quotient rule:",
        "",
        "$$\\frac{\\partial p_i}{\\partial z_i} = p_i (1 - p_i), \\qquad "
        "\\frac{\\partial p_i}{\\partial z_j} = -p_i p_j \\quad (i \\ne j)$$",
        "",
        "so J = diag(p) − p pᵀ: symmetric, and every row sums to 0.",
        "",
    ]
    if k <= 12:
        lines += _table(
            ["∂p_i / ∂z_j", *names],
            [[names[i], *(f(w.jacobian[i, j]) for j in range(k))] for i in range(k)],
        )
        lines.append("")
    else:
        lines += [f"(K = {k}: the {k} × {k} matrix is not printed.)", ""]
    return lines


def _dl_dp_section(w: Walkthrough) -> list[str]:
    """4. dL/dp."""
    names = list(w.classes)
    k = len(names)
    plain_label = w.plain_label
    lines: list[str] = []
    lines += ["## 4. The loss's gradient with respect to the probabilities", ""]
    lines += [
        "$$\\frac{\\partial L}{\\partial p_c} = -\\frac{q_c}{p_c}$$",
        "",
        "(one non-zero entry for a plain label: only the true class's probability appears in "
        "the loss)."
        if plain_label
        else "",
        "",
    ]
    lines += _table(
        ["class", "q", "dL/dp"], [[names[i], f(w.q[i]), f(w.dl_dp[i])] for i in range(k)]
    )
    lines.append("")
    return lines


def _chain_section(w: Walkthrough) -> list[str]:
    """5. The chain rule collapsing to p - y, component by component."""
    names = list(w.classes)
    k = len(names)
    y = w.label
    plain_label = w.plain_label
    lines: list[str] = []
    lines += ["## 5. The chain rule: dL/dz = Jᵀ · dL/dp", ""]
    if plain_label and y is not None:
        lines += [
            f"Only dL/dp_{names[y]} = −1/p_{names[y]} is non-zero, so each component is one "
            "product:",
            "",
            f"* i ≠ {names[y]}: (−p_{names[y]} p_i) · (−1/p_{names[y]}) = p_i",
            f"* i = {names[y]}: p_{names[y]}(1 − p_{names[y]}) · (−1/p_{names[y]}) = "
            f"p_{names[y]} − 1",
            "",
            "which is p − y (y the one-hot label):",
            "",
        ]
    else:
        lines += ["Summing the products over the classes collapses to p·Σq − q:", ""]
    lines += _table(
        ["class", "Jᵀ · dL/dp", "p − y", "meaning"],
        [
            [
                names[i],
                f(w.chain[i]),
                f(w.closed_form[i]),
                "negative: gradient descent raises this logit"
                if w.closed_form[i] < 0
                else (
                    "positive: gradient descent lowers this logit"
                    if w.closed_form[i] > 0
                    else "zero"
                ),
            ]
            for i in range(k)
        ],
    )
    scale = w.scale_text[:1].upper() + w.scale_text[1:]
    lines += ["", f"Gradient: {vec(w.closed_form)}. {scale}.", ""]
    return lines


def _difference_section(w: Walkthrough) -> list[str]:
    """6. A finite-difference confirmation of the largest component."""
    names = list(w.classes)
    lines: list[str] = []
    c = w.fd_class
    err = abs(w.fd_quotient - float(w.closed_form[c]))
    lines += ["## 6. A finite-difference check", ""]
    lines += [
        f"Nudge the logit of {names[c]} by h = {f(w.fd_step, 4)} (eps^(1/3)·max(1, |z|), the step "
        "that balances truncation against rounding):",
        "",
        f"* L(z + h·e) = {f(w.fd_plus, 15)}",
        f"* L(z − h·e) = {f(w.fd_minus, 15)}",
        f"* (L(z + h·e) − L(z − h·e)) / 2h = {f(w.fd_quotient, 12)}",
        f"* closed form p − y = {f(float(w.closed_form[c]), 12)}; difference {err:.2e}",
        "",
    ]
    return lines


def _graph_section(w: Walkthrough) -> list[str]:
    """The computation graph with forward values and backward gradients."""
    lines: list[str] = []
    forward = [
        f"L = {f(w.loss, 6)}",
        f"└── p = softmax(z) = {vec(w.probs)}",
        f"    └── z = {vec(w.logits)}",
    ]
    backward = ["dL/dL = 1", f"dL/dp = {vec(w.dl_dp)}", f"dL/dz = {vec(w.closed_form)}"]
    width = max(len(line) for line in forward) + 4
    lines += ["## Computation graph (forward values, backward gradients)", "", "```text"]
    lines += [a.ljust(width) + b for a, b in zip(forward, backward, strict=True)]
    lines += ["```", ""]
    return lines


def render_terminal(w: Walkthrough) -> RenderableType:
    """The walkthrough for a terminal: the Markdown rendered by Rich, its LaTeX formulas
    written as Unicode text (a terminal shows ``$$\\frac{...}$$`` raw)."""
    from rich.markdown import Markdown

    text = re.sub(r"\$\$(.+?)\$\$", lambda m: f"`{unicode_math(m.group(1))}`", markdown(w))
    return Markdown(text)


_SYMBOLS = {
    r"\partial": "∂",
    r"\qquad": "    ",
    r"\quad": "  ",
    r"\ne": "≠",
    r"\log": "log",
    r"\sum": "Σ",
    r"\cdot": "·",
    r"\times": "×",
}


def unicode_math(latex: str) -> str:
    """The few LaTeX constructs the walkthrough uses, as plain Unicode: ``\\frac{a}{b}`` ->
    ``a/b`` (parenthesised when a part has spaces), ``x_{ab}`` -> ``x_ab``, ``e^{z_j}`` ->
    ``e^(z_j)``, ``\\partial`` -> ∂, ``\\sum`` -> Σ, ``\\ne`` -> ≠, ``-`` -> −."""

    def part(x: str) -> str:
        return f"({x})" if " " in x.strip() else x.strip()

    out = latex
    for command, symbol in sorted(_SYMBOLS.items(), key=lambda kv: -len(kv[0])):
        out = re.sub(re.escape(command) + r"(?![A-Za-z])", symbol, out)
    out = out.replace("∂ ", "∂")
    while True:
        new = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", lambda m: f"{part(m[1])}/{part(m[2])}", out)
        new = re.sub(r"_\{([^{}]*)\}", r"_\1", new)
        new = re.sub(r"\^\{([^{}]*)\}", r"^(\1)", new)
        if new == out:
            break
        out = new
    return re.sub(r"(?<![\w.])-", "−", out).strip()
