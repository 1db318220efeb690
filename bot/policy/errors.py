"""Errors that stop a policy from loading; everything else fails closed instead of raising."""

from __future__ import annotations


class PolicyLoadError(Exception):
    """A policy file cannot be loaded: `dev` and `worker` refuse to start on it.

    str() reads "<file>:<line>:<column>: <message>" (as much of the location as is known), so
    the operator can jump straight to the fault.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, column: int | None = None):
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        super().__init__(self.location_text())

    def location_text(self) -> str:
        where = ":".join(str(part) for part in (self.file, self.line, self.column) if part is not None)
        return f"{where}: {self.message}" if where else self.message

    def to_wire(self) -> dict:
        return {"message": self.message, "file": self.file, "line": self.line, "column": self.column}

    @classmethod
    def from_wire(cls, error: dict) -> PolicyLoadError:
        return cls(
            str(error.get("message") or "policy failed to load"),
            file=error.get("file"),
            line=error.get("line"),
            column=error.get("column"),
        )
