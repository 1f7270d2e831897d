"""A list of renderables built like console output: ``out.print(x)``, ``out.print()``."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text


class Lines:
    """Collects what a renderer would print, to return it as one renderable."""

    def __init__(self) -> None:
        self.parts: list[RenderableType] = []

    def print(self, renderable: RenderableType | None = None) -> None:
        """Add a renderable, or an empty line."""
        self.parts.append(Text("") if renderable is None else renderable)

    def group(self) -> Group:
        return Group(*self.parts)
