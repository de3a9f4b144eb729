"""The one error model of the toolkit and its one exit-code table.

Every failure an operator can act on is an `OpsError`: one line (`message`, no secret in it), a `hint` with the fix,
and the `exit_code` the command line exits with. Subclasses only set a default code (and sometimes extra fields);
the CLI maps any `OpsError` to its code in one place, never by class name.

Exit codes (borg-style: 0 success, 1 warning, 2 error, then the specific failures), the same for `timetodo backup`,
`timetodo migrate` and the other commands:

| code | name | meaning |
| ---- | ---- | ------- |
| 0 | EXIT_OK | success |
| 1 | EXIT_WARNING | finished with warnings, not healthy, or a backup/restore that did not complete or match |
| 2 | EXIT_ERROR | usage or configuration error, or an unexpected failure |
| 3 | EXIT_UNREACHABLE | a dependency (database, Redis, SSH host, API) cannot be reached |
| 4 | EXIT_REFUSED | refused: would overwrite data, wrong credentials, changed host key, not confirmed |
| 5 | EXIT_VERIFICATION | the copy does not match its source (migration verification or validation) |
| 6 | EXIT_BUDGET | the migration's downtime budget would be exceeded |
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_ERROR = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
EXIT_VERIFICATION = 5
EXIT_BUDGET = 6

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_WARNING: "finished with warnings / not healthy / backup failed",
    EXIT_ERROR: "usage or configuration error, unexpected failure",
    EXIT_UNREACHABLE: "a dependency cannot be reached",
    EXIT_REFUSED: "the operation was refused",
    EXIT_VERIFICATION: "verification failed",
    EXIT_BUDGET: "the downtime budget would be exceeded",
}


class OpsError(Exception):
    """A failure of the toolkit: a message safe to show, a hint with the fix, and the exit code."""

    exit_code: int = EXIT_ERROR

    def __init__(self, message: str, hint: str | None = "", exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint or ""
        if exit_code is not None:
            self.exit_code = exit_code


class Unreachable(OpsError):
    """A database, Redis, host or API could not be reached (or refused the login)."""

    exit_code = EXIT_UNREACHABLE


class Refused(OpsError):
    """The operation was refused before anything changed."""

    exit_code = EXIT_REFUSED


class StepError(OpsError):
    """A migration step cannot go on: one clear line, a hint with the fix, and the exit code (`code`)."""

    def __init__(self, message: str, hint: str = "", code: int = EXIT_ERROR) -> None:
        super().__init__(message, hint, code)

    @property
    def code(self) -> int:
        return self.exit_code


def exit_code_of(exc: BaseException) -> int:
    """The exit code for any exception: its own for an `OpsError`, EXIT_ERROR otherwise."""
    return exc.exit_code if isinstance(exc, OpsError) else EXIT_ERROR
