"""README.md's settings table, generated from the capabilities' settings models.

Each key is documented once, as its field's description in ``tasks/settings/<capability>.py``; its
default and what it allows come from the same declaration. ``python -m tasks.settings --write``
rewrites README.md's section, and a unit test fails when it is stale.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from tasks.settings.registry import CAPABILITIES

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- settings:begin (python -m tasks.settings --write) -->", "<!-- settings:end -->"


def _default(value) -> str:
    return "`" + json.dumps(value) + "`" if not isinstance(value, str) else f'`"{value}"`'


def _cell(text: str) -> str:
    return re.sub(r"(?<!\\)\|", r"\\|", " ".join(str(text).split()))


def collect() -> list[tuple[str, str, str, str, str]]:
    """(capability, key, default, allowed, meaning) rows, in the order of a deploy."""
    return [(model.title, name, _default(field.default), _cell(model.allowed(name)), _cell(field.description or ""))
            for model in CAPABILITIES for name, field in model.model_fields.items()]


def render() -> str:
    lines = [BEGIN, "", "| capability | key | default | allowed | meaning |", "|---|---|---|---|---|"]
    lines += [f"| {cap} | `{key}` | {default} | {allowed} | {text} |"
              for cap, key, default, allowed, text in collect()]
    return "\n".join(lines + ["", END])


def current_section(text: str) -> str | None:
    if BEGIN not in text or END not in text:
        return None
    return text[text.index(BEGIN): text.index(END) + len(END)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.settings", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite README.md's settings section")
    args = parser.parse_args(argv)
    section = render()
    if not args.write:
        print(section)
        return 0
    text = README.read_text()
    old = current_section(text)
    if old is None:
        raise SystemExit(f"README.md has no settings section ({BEGIN} ... {END})")
    README.write_text(text.replace(old, section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
