"""Exit codes of `timetodo migrate` and the error every step raises (kept light: the CLI imports it)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_WARNINGS = 1
EXIT_ERROR = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
EXIT_VERIFICATION = 5
EXIT_BUDGET = 6


class StepError(Exception):
    """A step cannot go on: one clear line, a hint with the fix, and the exit code."""

    def __init__(self, message: str, hint: str = "", code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.hint, self.code = hint, code
