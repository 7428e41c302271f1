"""What the corpus checks report: `DataError` when nothing can be used, a `Problem` for each file
that has something wrong with it (docs/data.md lists the checks)."""

from __future__ import annotations

import dataclasses


class DataError(ValueError):
    """The corpus cannot be used; the message says what is missing and where to read more."""


@dataclasses.dataclass(frozen=True)
class Problem:
    path: str
    message: str
    severity: str = "error"  # or "warning"

    def __str__(self) -> str:
        return f"{self.severity.upper()}: {self.path}: {self.message}"
