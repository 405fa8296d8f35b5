"""Read one installed vLLM release's own parsers and registries; print them as JSON on stdout.

Run by ``python -m tasks.vllm.harvest`` with the python of a throwaway venv that holds the
release (never imported by llmfleet itself: it imports vLLM). It asks vLLM, not llmfleet:

* the ``vllm serve`` parser, taken from the real CLI (``vllm.entrypoints.cli.main.main`` with
  ``parse_args`` intercepted, so the subcommand's parser is the one vLLM builds), and the
  OpenAI server module's ``make_arg_parser`` (the entrypoint of images up to 0.11.x);
* the reasoning and tool parser registries (their managers' names, lazy ones included);
* which fields of the chat message models carry reasoning text;
* the choices that follow the platform: the parser is built again with the platform's device
  type set to each of :data:`DEVICE_TYPES` (0.32.0's ``--mm-processor-device`` offers the
  platform's own device beside ``auto`` and ``cpu``), and options whose choices differ record
  them per device: the venv runs vLLM's CPU platform, the fleet's GPUs and NPUs do not.

Standard library and vLLM only. Output: one JSON object (see tasks/vllm/harvest.py).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

REASONING_FIELDS = ("reasoning", "reasoning_content")
#: The device types of the platforms llmfleet serves on besides the CPU (vLLM's CudaPlatform and
#: vllm-ascend's NPUPlatform name theirs so).
DEVICE_TYPES = ("cuda", "npu")
#: Sample values the real ``type`` callables are tried on to classify an option's value.
_SAMPLES = (("int", "7"), ("float", "0.5"), ("json", '{"a": 1}'))


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser captured")
        self.parser = parser


def _first(*modules: str):
    errors = []
    for name in modules:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise ImportError("; ".join(errors))


def serve_parser() -> argparse.ArgumentParser:
    """The parser ``vllm serve`` parses with, built by vLLM's own CLI."""
    utils = _first("vllm.utils.argparse_utils", "vllm.utils")
    flexible = utils.FlexibleArgumentParser
    cli_main = importlib.import_module("vllm.entrypoints.cli.main")

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    original = flexible.parse_args
    flexible.parse_args = capture
    argv = sys.argv
    sys.argv = ["vllm", "serve"]
    try:
        cli_main.main()
    except _Captured as got:
        top = got.parser
    else:
        raise RuntimeError("vllm's CLI returned without parsing arguments")
    finally:
        flexible.parse_args = original
        sys.argv = argv
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction) and "serve" in action.choices:
            return action.choices["serve"]
    raise RuntimeError("vllm's CLI has no serve subcommand")


def _kind(action: argparse.Action) -> str:
    fn = action.type
    if fn is None:
        return "str"
    if fn in (int, float):
        return fn.__name__
    got = {}
    for kind, sample in _SAMPLES:
        try:
            got[kind] = fn(sample)
        except Exception:  # noqa: BLE001 - a type callable refusing the sample is the answer
            got[kind] = None
    # JSON first: json.loads also takes "7" and "0.5".
    if isinstance(got["json"], dict):
        return "json"
    if isinstance(got["int"], int) and not isinstance(got["int"], bool) and not isinstance(got["float"], float):
        return "int"
    if isinstance(got["float"], float):
        return "float"
    return "str"


def options(parser: argparse.ArgumentParser) -> dict[str, dict]:
    """Long option -> {value kind, nargs, choices, negative form, aliases}, as argparse holds them."""
    out: dict[str, dict] = {}
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        negatives = [o for o in action.option_strings if o.startswith("--no-")
                     and isinstance(action, argparse.BooleanOptionalAction)]
        longs = [o for o in action.option_strings if o.startswith("--") and o not in negatives]
        name = longs[0] if longs else action.option_strings[0]
        entry: dict = {}
        if action.nargs == 0:
            entry["value"] = None
        else:
            entry["value"] = _kind(action)
            if action.nargs is not None:
                entry["nargs"] = action.nargs
        if action.choices is not None:
            entry["choices"] = [str(c) for c in action.choices]
        if negatives:
            entry["negative"] = negatives[0]
        aliases = [o for o in action.option_strings if o != name and o not in negatives]
        if aliases:
            entry["aliases"] = aliases
        out[name] = entry
    return dict(sorted(out.items()))


def on_devices(cpu_opts: dict[str, dict]) -> tuple[dict[str, dict[str, list[str]]], dict[str, list[str]]]:
    """The serve parser built as on each of :data:`DEVICE_TYPES`, against this venv's CPU one:
    option -> {device type -> choices} where that device's choices differ, and device type ->
    options the CPU parser lacks or has in addition (both empty where nothing differs)."""
    from vllm.platforms import current_platform

    choices: dict[str, dict[str, list[str]]] = {}
    differs: dict[str, list[str]] = {}
    own = current_platform.device_type
    try:
        for device in DEVICE_TYPES:
            current_platform.device_type = device  # what the parser's builders read
            opts = options(serve_parser())
            differs[device] = sorted(set(opts) ^ set(cpu_opts))
            for name in set(opts) & set(cpu_opts):
                if opts[name].get("choices") != cpu_opts[name].get("choices"):
                    choices.setdefault(name, {})[device] = opts[name].get("choices")
    finally:
        current_platform.device_type = own
    return choices, differs


def _names(manager) -> list[str]:
    names: set[str] = set()
    if hasattr(manager, "list_registered"):
        names.update(manager.list_registered())
    for attr in ("reasoning_parsers", "tool_parsers", "lazy_parsers"):
        names.update(getattr(manager, attr, {}) or {})
    return sorted(names)


def registries() -> dict[str, list[str]]:
    reasoning = _first("vllm.reasoning").ReasoningParserManager
    tools = _first("vllm.tool_parsers", "vllm.entrypoints.openai.tool_parsers").ToolParserManager
    return {"reasoning_parsers": _names(reasoning), "tool_parsers": _names(tools)}


def reasoning_fields() -> list[str]:
    protocol = _first("vllm.entrypoints.openai.chat_completion.protocol",
                      "vllm.entrypoints.openai.protocol")
    fields = set(protocol.ChatMessage.model_fields) | set(protocol.DeltaMessage.model_fields)
    return [f for f in REASONING_FIELDS if f in fields]


def installed(*names: str) -> dict[str, str]:
    """Versions of the distributions the parser was read with (torch, transformers)."""
    from importlib import metadata

    return {name: metadata.version(name) for name in names}


def main() -> int:
    import vllm.version

    serve = serve_parser()
    cli_args = _first("vllm.entrypoints.openai.cli_args", "vllm.entrypoints.launchers.cli_args")
    utils = _first("vllm.utils.argparse_utils", "vllm.utils")
    module_parser = cli_args.make_arg_parser(utils.FlexibleArgumentParser(prog="api_server"))
    serve_opts, module_opts = options(serve), options(module_parser)
    by_device, device_differs = on_devices(serve_opts)
    for name, choices in by_device.items():
        serve_opts[name]["device_choices"] = choices
    result = {
        "version": vllm.version.__version__,
        "options": serve_opts,
        # Options the api_server module parser has and `vllm serve` lacks (or the reverse):
        # empty in every release read so far, recorded so a difference would show.
        "module_parser_differs": sorted(set(serve_opts) ^ set(module_opts)),
        # Per device type: options a parser built as on that platform has and the CPU one lacks
        # (or the reverse), recorded so a difference would show.
        "device_parser_differs": device_differs,
        "positionals": [a.dest for a in serve._actions if not a.option_strings],
        **registries(),
        "reasoning_fields": reasoning_fields(),
        "installed": installed("torch", "transformers"),
    }
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
