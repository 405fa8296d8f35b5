"""Bad input, said once: every problem found before a host is touched, in one block, no traceback.

How pyinfra 3.10's CLI prints an exception raised while it loads an inventory, a config or a deploy
file (``pyinfra_cli``): a ``PyinfraError`` is re-raised as it is and shown as one line,
``--> pyinfra error in FILE line N: <message>`` (``WrappedError``); any other exception is shown
with its traceback (``UnexpectedExternalError``). So llmfleet's input errors are PyinfraErrors:
:class:`BadInput` here and ``tasks.spec.SpecError``. Each lists its problems as
``host: field: given ...; allowed ...``. With ``--debug`` the traceback of each problem is logged
(pyinfra's logger at debug level).

Before pyinfra connects, ``tasks.pyinfra_ext`` (installed by ``config.py``) names a missing ssh key.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Iterable

from pyinfra.api.exceptions import PyinfraError


@dataclass(frozen=True)
class Problem:
    """One piece of bad input: where (host), which field, what was given, what is wrong/allowed."""

    host: str
    field: str
    message: str
    given: str | None = None

    def line(self) -> str:
        given = f" (given {self.given})" if self.given is not None and self.given not in self.message else ""
        where = f"{self.host}: " if self.host else ""
        return f"{where}{self.field}{given}: {self.message}"


class BadInput(PyinfraError):
    """Input that cannot work, found before any host was touched: one block of problems."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(self.text())

    def text(self) -> str:
        if len(self.problems) == 1:
            return f"bad input, no host was touched: {self.problems[0].line()}"
        lines = [f"bad input, no host was touched ({len(self.problems)} problems):"]
        return "\n".join(lines + [f"    - {p.line()}" for p in self.problems])


def log_traceback(exc: BaseException) -> None:
    """The traceback of ``exc`` at debug level (shown by ``pyinfra --debug``)."""
    from pyinfra import logger

    logger.debug("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def spec_problems(host: str, exc: Any, data: dict) -> list[Problem]:
    """A ``SpecError``'s problems as the user wrote them: a field the host data overrides is named by
    its key (``serve_max_model_len``) with the value given; others by their recipe field.

    + host: inventory name
    + exc: the ``tasks.spec.SpecError``
    + data: the host's data
    """
    found = []
    for field, message in exc.problems:
        key = "serve_" + field.replace(".", "__")
        top = "serve_" + field.split(".", 1)[0]
        if key in data:
            found.append(Problem(host, key, message, repr(data[key])))
        elif top in data:
            found.append(Problem(host, f"{top} ({field})", message, repr(data[top])))
        else:
            found.append(Problem(host, field, message))
    return found


# --- settings (host data) ----------------------------------------------------------------------------


def settings_problems(host: str, data: dict, accelerator: str) -> list[Problem]:
    """Problems in a host's capability settings: every model of ``tasks.settings`` (types, allowed values,
    unknown keys of its prefix); another accelerator's settings are not read.

    + host: its inventory name
    + data: its host data (a dict)
    + accelerator: "nvidia", "ascend" or "none"
    """
    from tasks.settings import ACCELERATOR_ONLY, CAPABILITIES

    found = []
    for model in CAPABILITIES:
        if ACCELERATOR_ONLY.get(model, accelerator) == accelerator:
            found += [p for p in model.problems(data, host) if p not in found]
    return found


__all__ = ["BadInput", "Problem", "log_traceback", "settings_problems", "spec_problems"]
