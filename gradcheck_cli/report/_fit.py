"""Tables that fit the terminal without cutting a number.

Rich shrinks a table that is wider than the console by truncating cells (``0.2312…``, ``6.36e-…``),
which hides exactly the digits a reader came for. A :class:`Fitted` table measures its cells at
render time instead: it drops optional columns, lowest ``drop`` rank first, until the rest fits,
and says which it dropped; if even the essential columns do not fit, every row is stacked as
``header value`` pairs on wrapping lines. Numbers are never split or shortened.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType
from rich.table import Table
from rich.text import Text

Cell = str | Text

#: Spaces between two columns (Rich's default padding of one on each side, no edge padding).
GAP = 2


@dataclass(frozen=True)
class Column:
    """One column: its header, alignment, and when it may be dropped (None: never; otherwise
    columns with a lower rank go first)."""

    header: str
    justify: str = "right"
    drop: int | None = None


def _width(cell: Cell) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


class Fitted:
    """A table of ``columns`` and ``rows`` that fits the console it is printed on."""

    def __init__(
        self, columns: Sequence[Column], rows: Sequence[Sequence[Cell]], title: str | None = None
    ) -> None:
        self.columns = list(columns)
        self.rows = [list(r) for r in rows]
        self.title = title
        self.widths = [
            max([cell_len(c.header), *(_width(r[i]) for r in self.rows)])
            for i, c in enumerate(self.columns)
        ]

    def needed(self, keep: Sequence[int]) -> int:
        """Width of the table with only the columns ``keep``."""
        return sum(self.widths[i] for i in keep) + GAP * max(0, len(keep) - 1)

    def choose(self, width: int) -> tuple[list[int], list[str]]:
        """The columns that fit in ``width`` and the headers of those dropped."""
        keep = list(range(len(self.columns)))
        dropped: list[str] = []
        while self.needed(keep) > width:
            optional = [i for i in keep if self.columns[i].drop is not None]
            if not optional:
                break
            # lowest rank first; among equals the rightmost
            victim = min(optional, key=lambda i: (self.columns[i].drop, -i))
            keep.remove(victim)
            dropped.append(self.columns[victim].header)
        return keep, dropped

    def __rich_console__(
        self, console: Console, options: ConsoleOptions
    ) -> Iterator[RenderableType]:
        keep, dropped = self.choose(options.max_width)
        if self.needed(keep) > options.max_width:
            yield from self._stacked()
            return
        table = Table(
            box=None,
            pad_edge=False,
            header_style="bold",
            title=self.title,
            title_justify="left",
            title_style="bold",
        )
        for i in keep:
            col = self.columns[i]
            table.add_column(col.header, justify=col.justify, no_wrap=True)  # type: ignore[arg-type]
        for row in self.rows:
            table.add_row(*(row[i] for i in keep))
        yield table
        if dropped:
            yield Text(
                f"(narrow terminal: not showing {', '.join(dropped)}; widen it to see them)",
                style="dim",
            )

    def _stacked(self) -> Iterator[RenderableType]:
        """Every row as ``first:  header=value  header=value ...`` on lines that wrap between
        pairs (a pair has no space, so a value never leaves its header)."""
        if self.title:
            yield Text(self.title, style="bold")
        for row in self.rows:
            line = Text()
            line.append(row[0] if isinstance(row[0], Text) else Text(row[0], style="bold"))
            line.append(":")
            for col, cell in zip(self.columns[1:], row[1:], strict=True):
                line.append(f"  {col.header.replace(' ', '_')}=")
                line.append(cell)
            yield line
        yield Text("(narrow terminal: rows stacked)", style="dim")
