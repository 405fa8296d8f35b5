"""fetch.py's exit codes, their one-word reasons (the ``error`` marker) and the error carrying them."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REPO_NOT_FOUND = 3
EXIT_REVISION_NOT_FOUND = 4
EXIT_AUTH = 5
EXIT_UNREACHABLE = 6
EXIT_NO_SPACE = 7
EXIT_VERIFY = 8
EXIT_PEER_MISMATCH = 9
EXIT_LOCKED = 10
REASONS = {
    EXIT_ERROR: "error",
    EXIT_USAGE: "usage",
    EXIT_REPO_NOT_FOUND: "repo-not-found",
    EXIT_REVISION_NOT_FOUND: "revision-not-found",
    EXIT_AUTH: "auth",
    EXIT_UNREACHABLE: "unreachable",
    EXIT_NO_SPACE: "no-space",
    EXIT_VERIFY: "verify",
    EXIT_PEER_MISMATCH: "peer-mismatch",
    EXIT_LOCKED: "locked",
}


class FetchError(Exception):
    """A failure with a documented exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

