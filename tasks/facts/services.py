"""The llmfleet model services already on a host: which recipe holds which port, devices and served name.

Several models may share a host, each in its own ``llmfleet-<name>.service`` (``tasks.service``). Two of
them on one port, or on overlapping GPUs, cannot both run: the second container loops on "port is already
allocated" (or runs out of memory), while the first one keeps answering the verification. Preflight reads
what the host already runs with this fact and refuses such a recipe before anything is installed.

The fact reads the unit files themselves, not ``docker inspect``: a unit that is installed but stopped
still claims its port and devices (it starts again at boot).
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from pyinfra.api import FactBase

UNIT_DIR = "/etc/systemd/system"
MARK = "@@llmfleet-unit "

_PORT = re.compile(r"^(?:[0-9.:\[\]]*:)?([0-9]+):[0-9]+$")


def _claims(name: str, text: str) -> dict[str, Any]:
    """Port, devices and served name of one unit file's ``ExecStart`` (continuation lines joined)."""
    joined = re.sub(r"\\\n", " ", text)
    line = next((ln for ln in joined.splitlines() if ln.startswith("ExecStart=")), "")
    try:
        args = shlex.split(line[len("ExecStart="):])
    except ValueError:
        args = line.split()
    claim: dict[str, Any] = {"recipe": name, "ports": [], "devices": None, "served_model_name": None}
    for flag, value in zip(args, args[1:]):
        if flag == "-p":
            match = _PORT.match(value)
            if match:
                claim["ports"].append(int(match.group(1)))
        elif flag == "--gpus":
            spec = value.strip('"')
            claim["devices"] = ("all" if spec == "all" else
                                [int(d) for d in spec.removeprefix("device=").split(",") if d.isdigit()])
        elif flag == "--device" and re.fullmatch(r"/dev/davinci[0-9]+", value):
            claim["devices"] = (claim["devices"] or []) + [int(value.removeprefix("/dev/davinci"))]
        elif flag == "--served-model-name":
            claim["served_model_name"] = value
    return claim


class LlmfleetServices(FactBase[dict]):
    """
    The llmfleet model units installed on the host, by recipe name.

    Returns ``{recipe: {"recipe", "ports": [host ports], "devices": [indices] | "all" | None,
    "served_model_name": str | None}}``; ``{}`` when there are none.

    Example:

    .. code:: python

        from tasks.facts.services import LlmfleetServices
        host.get_fact(LlmfleetServices)  # {"qwen30b": {"ports": [8000], "devices": [0, 1, 2, 3], ...}}
    """

    @staticmethod
    def default() -> dict:
        return {}

    def command(self) -> str:
        return (f"for f in {UNIT_DIR}/llmfleet-*.service; do [ -f \"$f\" ] || continue; "
                f"echo \"{MARK}$(basename \"$f\" .service)\"; cat \"$f\"; done")

    def process(self, output: list[str]) -> dict:
        units: dict[str, list[str]] = {}
        current = None
        for line in output:
            if line.startswith(MARK):
                current = line[len(MARK):].strip().removeprefix("llmfleet-")
                units[current] = []
            elif current is not None:
                units[current].append(line)
        return {name: _claims(name, "\n".join(lines)) for name, lines in units.items()}


__all__ = ["LlmfleetServices"]
