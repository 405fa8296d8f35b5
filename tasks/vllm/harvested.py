"""Flag knowledge read off vLLM's own parsers: tasks/data/vllm-flags/<release>.json.

``python -m tasks.vllm.harvest VERSION`` writes one record per release (see that module for
how). This module reads them: every option of the ``vllm serve`` parser with its value kind,
nargs, choices, ``--no-`` form and aliases; the reasoning and tool parser registries; the
chat message fields that carry reasoning. :meth:`Harvest.parse` rebuilds the release's parser
from the record, so a rendered command line is checked the way that vLLM would check it.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # versions imports this module
    from tasks.vllm.versions import Version

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "vllm-flags"
#: The device type vLLM's platform has on each of llmfleet's accelerators (CudaPlatform,
#: vllm-ascend's NPUPlatform, CpuPlatform): the key of an option's ``device_choices``.
DEVICE_TYPE = {"nvidia": "cuda", "ascend": "npu", "cpu": "cpu"}
_HUMAN_INT = re.compile(r"^-?\d+(?:\.\d+)?[kKmMgGtT]?$")


@dataclass(frozen=True)
class Option:
    """One option of a release's ``vllm serve`` parser.

    + name: the long form (``--enable-prefix-caching``)
    + value: None for an option without a value, else "str", "int", "float" or "json"
    + nargs: argparse's nargs when not exactly one value ("+", "?", "*", an int)
    + choices: the values allowed, as strings; None when any value of its kind is
    + negative: the ``--no-`` form of a boolean option, if it has one
    + aliases: further option strings (``-tp``)
    + device_choices: (device type, choices) where the parser built on that platform ("cuda",
      "npu") offers other choices than the CPU build the record was read from
    """

    name: str
    value: str | None
    nargs: str | int | None = None
    choices: tuple[str, ...] | None = None
    negative: str | None = None
    aliases: tuple[str, ...] = ()
    device_choices: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def choices_on(self, device: str | None) -> tuple[str, ...] | None:
        """The choices on platform ``device`` ("cuda", "npu"; None or "cpu": the record's own)."""
        return dict(self.device_choices).get(device, self.choices) if device else self.choices

    def check(self, values: list[str], device: str | None = None) -> str | None:
        """Why ``values`` are not valid for this option on platform ``device``, or None when they are."""
        if self.value is None:
            return f"{self.name} takes no value, got {' '.join(values)}" if values else None
        if self.nargs is None and len(values) != 1:
            return f"{self.name} takes one value, got {len(values)}"
        if self.nargs == "+" and not values:
            return f"{self.name} takes at least one value"
        choices = self.choices_on(device)
        for value in values:
            if choices is not None and value not in choices:
                return f"{self.name} {value!r}: invalid choice (choose from {', '.join(choices)})"
            try:
                _convert(self.value, value)
            except ValueError:
                return f"{self.name} {value!r}: not a valid {self.value}"
        return None


def _convert(kind: str, text: str) -> object:
    if kind == "int":
        if not _HUMAN_INT.match(text):  # vLLM takes "32k" for lengths; llmfleet writes digits
            raise ValueError(text)
        return text
    if kind == "float":
        return float(text)
    if kind == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(str(exc)) from None
    return text


@dataclass(frozen=True)
class Harvest:
    """What one release's own parsers say (a record of tasks/data/vllm-flags)."""

    release: "Version"
    options: dict[str, Option]
    reasoning_parsers: frozenset[str]
    tool_parsers: frozenset[str]
    reasoning_fields: tuple[str, ...]
    provenance: dict[str, str]

    def flags(self) -> frozenset[str]:
        """Every option string the parser accepts (long forms, ``--no-`` forms, aliases)."""
        out: set[str] = set()
        for opt in self.options.values():
            out.add(opt.name)
            out.update(opt.aliases)
            if opt.negative:
                out.add(opt.negative)
        return frozenset(out)

    def option(self, flag: str) -> Option | None:
        """The option ``flag`` names (long form, ``--no-`` form or alias), or None."""
        if flag in self.options:
            return self.options[flag]
        for opt in self.options.values():
            if flag == opt.negative or flag in opt.aliases:
                return opt
        return None

    def negative(self, flag: str) -> str | None:
        """The ``--no-`` form of boolean option ``flag``, or None."""
        opt = self.options.get(flag)
        return opt.negative if opt else None

    def parser(self, positional_model: bool, device: str | None = None) -> argparse.ArgumentParser:
        """An argparse parser with this release's options (values checked by kind and by the
        choices on platform ``device``)."""
        p = argparse.ArgumentParser(prog=f"vllm-{self.release}", add_help=False, allow_abbrev=False,
                                    exit_on_error=False)
        if positional_model:
            p.add_argument("model_tag", nargs="?")
        for opt in self.options.values():
            names = [opt.name, *opt.aliases]
            if opt.value is None:
                p.add_argument(*names, action="store_true", dest=opt.name)
                if opt.negative:
                    p.add_argument(opt.negative, action="store_false", dest=opt.name)
                continue
            kw: dict = {"dest": opt.name, "type": _typer(opt.value)}
            if opt.nargs is not None:
                kw["nargs"] = opt.nargs
            if opt.choices_on(device) is not None:
                kw["choices"] = list(opt.choices_on(device))
            p.add_argument(*names, **kw)
        return p

    def parse(self, args: list[str], positional_model: bool = False, device: str | None = None) -> argparse.Namespace:
        """Parse container args as this release would on platform ``device``; ValueError with
        argparse's reason if not."""
        p = self.parser(positional_model, device)
        try:
            ns, rest = p.parse_known_args(args)
        except argparse.ArgumentError as exc:
            raise ValueError(f"vLLM {self.release}: {exc}") from None
        if rest:
            raise ValueError(f"vLLM {self.release}: unrecognized arguments: {' '.join(rest)}")
        return ns


def _typer(kind: str):
    def convert(text: str) -> object:
        return _convert(kind, text)

    convert.__name__ = kind  # argparse names the type in "invalid int value"
    return convert


def parse_record(text: str) -> Harvest:
    """A Harvest from the JSON text of one record."""
    from tasks.vllm.versions import Version  # late: versions imports this module

    data = json.loads(text)
    options = {
        name: Option(name=name, value=e["value"], nargs=e.get("nargs"),
                     choices=tuple(e["choices"]) if e.get("choices") is not None else None,
                     negative=e.get("negative"), aliases=tuple(e.get("aliases", ())),
                     device_choices=tuple((d, tuple(c)) for d, c in sorted(e.get("device_choices", {}).items())))
        for name, e in data["options"].items()
    }
    provenance = {k: str(data[k]) for k in ("package", "torch", "torch_source", "harvested") if k in data}
    return Harvest(release=Version.parse(data["release"]), options=options,
                   reasoning_parsers=frozenset(data["reasoning_parsers"]),
                   tool_parsers=frozenset(data["tool_parsers"]),
                   reasoning_fields=tuple(data["reasoning_fields"]), provenance=provenance)


@lru_cache(maxsize=None)
def load_harvests(directory: str | None = None) -> dict["Version", Harvest]:
    """Every record under ``directory`` (default tasks/data/vllm-flags), by release."""
    root = Path(directory) if directory else DATA_DIR
    records = [parse_record(p.read_text(encoding="utf-8")) for p in sorted(root.glob("*.json"))]
    return {h.release: h for h in records}
