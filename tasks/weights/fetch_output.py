"""fetch.py's output: ``LLMFLEET_WEIGHTS`` marker lines, and the token redacted from every line the
process writes (its own, and the hub clients' logs and progress bars)."""

from __future__ import annotations

import io
import logging
import sys
from typing import Any

MARK = "LLMFLEET_WEIGHTS"


class _RedactingStream(io.TextIOBase):
    """Text stream wrapper that replaces secrets before writing (covers client logs and tqdm)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.secrets: list[str] = []

    def write(self, s: str) -> int:
        for secret in self.secrets:
            s = s.replace(secret, "***")
        return self._inner.write(s)

    def flush(self) -> None:
        self._inner.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._inner.fileno()


def say(*fields: str) -> None:
    """Print one machine-readable marker line."""
    print(MARK, *fields, flush=True)


def install_redaction(*secrets: str) -> None:
    """Route stdout/stderr through the redactor (every given secret becomes ``***``)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, _RedactingStream):
            stream = _RedactingStream(stream)
            setattr(sys, name, stream)
        stream.secrets += [s for s in secrets if s and s not in stream.secrets]


def quiet_client_loggers() -> None:
    """Warnings and errors only from the clients; handlers re-pointed at the redacting stderr."""
    for name in ("huggingface_hub", "modelscope", "modelscope_hub", "httpx", "httpx2", "urllib3"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.__stderr__, sys.__stdout__):
                handler.setStream(sys.stderr)

