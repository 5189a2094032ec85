"""Error types raised on bad input.

Every message names the file (when there is one), the field, and what was expected, so a user
can fix the input without reading a traceback.
"""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input: a file, field or parameter that does not meet the contract."""

    def __init__(self, what: str, *, file: str | Path | None = None, field: str | None = None,
                 expected: str | None = None):
        parts = []
        if file is not None:
            parts.append(f"{file}")
        if field is not None:
            parts.append(f"field '{field}'")
        head = ": ".join(parts)
        msg = f"{head}: {what}" if head else what
        if expected is not None:
            msg += f" (expected {expected})"
        super().__init__(msg)
        self.file = None if file is None else str(file)
        self.field = field
        self.expected = expected


class MissingFileError(InputError, FileNotFoundError):
    """A required file is absent; the message says where it was looked for and how to get it."""
