"""Errors raised on invalid input files."""

from __future__ import annotations

from pathlib import Path


class DataFormatError(ValueError):
    """An invalid input file. The message names the file, line and field, and states what to do."""

    def __init__(self, path: str | Path, message: str, line: int | None = None, field: str | None = None):
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line
        self.field = field
