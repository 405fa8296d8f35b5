"""Several facts in one round trip.

pyinfra 3.10 runs one remote command per ``host.get_fact``: a round trip, an SSH channel, a shell on the
host and the controller's fact bookkeeping, ~11 ms of CPU (host and controller together) measured on a lab
host before the fact's own work. Facts that are always read together are cheaper read as one:
``Together`` runs their commands in one shell, each in its own subshell after a marker line, and hands
each fact's ``process`` its own lines, so every fact keeps its command, parser and tests.
"""

from __future__ import annotations

from typing import Any

from pyinfra.api import FactBase

MARK = "@@llmfleet-together "


def joinable_command(cls: type[FactBase], kwargs: dict[str, Any]) -> str | None:
    """``cls``'s shell command for ``kwargs`` when it can run inside :class:`Together`, else None:
    pyinfra wraps the command of a fact with ``requires_command`` or its own shell, and a
    non-string command is pyinfra's to assemble."""
    fact = cls()
    needs = fact.requires_command(**kwargs) if callable(fact.requires_command) else fact.requires_command
    command = fact.command(**kwargs) if callable(fact.command) else fact.command
    return command if isinstance(command, str) and not needs and not fact.shell_executable else None


class Together(FactBase[list]):
    """
    The values of several facts, read in one round trip.

    + facts: ``((FactClass, {kwarg: value}), ...)``; each fact's ``command`` must be a plain shell string
      and the fact must not set ``requires_command`` or ``shell_executable`` (refused otherwise)

    Returns the facts' values in the order given; a fact whose subshell printed nothing gets its
    ``default()``, as pyinfra gives it. The command exits with the status of the last fact that failed
    (0 when none did), so a failing fact fails the read as it would alone.

    Example:

    .. code:: python

        resources, gpus = host.get_fact(Together, facts=((HostResources, {"path": "/srv/models"}),
                                                          (NvidiaGpus, {})))
    """

    def command(self, facts: tuple[tuple[type[FactBase], dict[str, Any]], ...]) -> str:
        self._facts: list[FactBase] = []
        parts = ["rc=0"]
        for index, (cls, kwargs) in enumerate(facts):
            command = joinable_command(cls, kwargs)
            if command is None:
                raise ValueError(f"Together: {cls.__name__} sets requires_command/shell_executable "
                                 "or has no plain shell command")
            self._facts.append(cls())
            # The newline ends a trailing comment; the subshell keeps `exit`, `set --` and cd to the fact.
            parts.append(f'echo "{MARK}{index}"; ( {command}\n) || rc=$?')
        parts.append("exit $rc")
        return "; ".join(parts)

    def process(self, output: list[str]) -> list:
        chunks: list[list[str]] = [[] for _ in self._facts]
        current = None
        for line in output:
            if line.startswith(MARK) and line[len(MARK):].isdigit():
                current = int(line[len(MARK):])
            elif current is not None and current < len(chunks):
                chunks[current].append(line)
        return [fact.process(lines) if lines else fact.default() for fact, lines in zip(self._facts, chunks)]
