"""User-facing errors, and how the command line reports any exception.

Anything the user can cause (a missing file, a bad config, data that does not fit the model)
raises QtoolError: the CLI prints it as one line and exits with code 2. Running out of memory
is reported the same way (the fix is the user's: smaller batches). Any other exception is a bug
in qtool: it keeps its traceback, followed by a line asking for a bug report, and exit code 1.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

BUG_REPORT = "the qtool issue tracker, with the command line and the traceback above"


class QtoolError(Exception):
    """An error the user can fix; `message` names the file/tensor/key, `hint` the fix."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def __reduce__(self):  # keep the hint when a worker process sends the error back
        return (type(self), (self.message, self.hint))


def report_exception(exc: BaseException, echo: Callable[[str], None]) -> int:
    """Print `exc` for a person and return the exit code: one line (`qtool: error: ...`, code 2)
    for a QtoolError or a MemoryError, else the traceback and a bug-report line (code 1)."""
    if isinstance(exc, MemoryError):
        exc = QtoolError("out of memory", "lower --batch-size or --samples; QTOOL_BATCH_BYTES caps the bytes "
                                          "of one batch (default 256 MiB)")
    if isinstance(exc, QtoolError):
        echo(f"qtool: error: {exc}")  # one line; a recipe's checker lists every problem, a line each
        return QtoolError.exit_code
    echo("".join(traceback.format_exception(exc)).rstrip())
    echo(f"qtool: internal error: please report at {BUG_REPORT}")
    return 1
