"""User-facing errors.

Anything the user can cause (a missing file, a bad config, data that does not fit the model)
raises QtoolError: the CLI prints it as one line and exits with code 2. Any other exception is
a bug in qtool and keeps its traceback.
"""

from __future__ import annotations


class QtoolError(Exception):
    """An error the user can fix; `message` names the file/tensor/key, `hint` the fix."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
