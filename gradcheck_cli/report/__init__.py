"""Renderers: each turns finished results into output, and never computes anything itself.

One signature for all: ``render(document) -> str | RenderableType``. A ``str`` is written as it
stands (JSON, JUnit XML, Markdown, HTML); a Rich renderable is printed on a console (the table
formats). One registry, :data:`RENDERERS`, says which command renders which :class:`Format`;
a format a command does not have is a usage error naming the ones it has. Renderers are
imported on first use, so the registry costs nothing at start-up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from enum import Enum
from typing import Any

from gradcheck_cli.errors import UsageError


class Format(str, Enum):
    """Every output format of the command line."""

    table = "table"
    json = "json"
    junit = "junit"
    markdown = "markdown"
    github = "github"
    html = "html"


#: Command -> format -> "module:function" of its renderer.
RENDERERS: dict[str, dict[Format, str]] = {
    "run": {
        Format.table: "gradcheck_cli.report.table:render",
        Format.json: "gradcheck_cli.report.json:render",
        Format.junit: "gradcheck_cli.report.junit:render",
        Format.github: "gradcheck_cli.report.github:render",
        Format.html: "gradcheck_cli.report.html:render",
    },
    "jacobian": {
        Format.table: "gradcheck_cli.report.jacobian:render_table",
        Format.json: "gradcheck_cli.report.jacobian:render_json",
    },
    "sweep": {
        Format.table: "gradcheck_cli.report.sweep:render_table",
        Format.json: "gradcheck_cli.report.sweep:render_json",
        Format.html: "gradcheck_cli.report.html:render_sweep",
    },
    "mutate": {
        Format.table: "gradcheck_cli.report.mutate:render",
        Format.json: "gradcheck_cli.report.mutate:render_json",
    },
    "explain": {
        Format.table: "gradcheck_cli.report.explain:render_terminal",
        Format.markdown: "gradcheck_cli.report.explain:markdown",
    },
}

Renderer = Callable[[Any], Any]


def renderer(command: str, fmt: Format) -> Renderer:
    """The renderer of ``command`` for ``fmt``; :class:`UsageError` if it has none."""
    known = RENDERERS[command]
    if fmt not in known:
        have = ", ".join(f.value for f in known)
        raise UsageError(f"xentcheck {command} has no --format {fmt.value} (it has: {have})")
    module, _, name = known[fmt].partition(":")
    function: Renderer = getattr(importlib.import_module(module), name)
    return function
