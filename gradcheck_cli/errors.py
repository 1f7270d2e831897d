"""The exceptions xentcheck turns into messages and exit codes (in ``cli.py``, and only there)."""

from __future__ import annotations


class XentcheckError(Exception):
    """Base of every error whose message is meant for the user as it stands."""


class CannotCheck(XentcheckError):
    """A valid spec that this run cannot check (a finite logit overflows the requested dtype;
    a layer spec in fast mode): it is *skipped* with this reason, not invalid."""


class UsageError(XentcheckError):
    """The command line asks for something impossible (exit code 2)."""


class SpecError(XentcheckError):
    """A spec file is invalid. The message names the file, line and column, and the field.

    Rendered as ``file:line:column: field: message``; line and column are 1-based.
    """

    def __init__(
        self,
        file: str,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.field = field
        self.message = message
        self.others: tuple[SpecError, ...] = ()
        """Further errors found in the same case (independent fields), in file order."""
        super().__init__(str(self))

    def all_messages(self) -> list[str]:
        """This error's message and those of :attr:`others`, in file order (line, column)."""
        errors = sorted((self, *self.others), key=lambda e: (e.line or 0, e.column or 0))
        return [str(e) for e in errors]

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"
