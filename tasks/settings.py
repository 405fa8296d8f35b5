"""The settings table: every host-data key of every capability, its default and its meaning.

Each capability module has one ``DEFAULTS`` dict (keys prefixed by the capability) and documents
each key once, in its module docstring (a ``| key | default | meaning |`` table row or a
``- ``key``: meaning`` bullet). This module gathers them into README.md's "Settings" table, so the
README and the code cannot drift: ``python -m tasks.settings --write`` rewrites the section, and a
unit test fails when it is stale or a key is undocumented.

The same list is what host data may say: :func:`unknown_keys` names each key that carries a
capability's prefix but is no setting (``weights_fanoutt``), or that misses a known key by a typo in
its prefix (``servee_max_model_len``), with the nearest known key. Keys of other prefixes (``ssh_*``,
an inventory's own) are not ours to judge.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Iterable

#: (module, capability title, key prefix) in the order of a deploy.
CAPABILITIES = (
    ("tasks.preflight", "Preflight", "preflight_"),
    ("tasks.docker", "Docker", "docker_"),
    ("tasks.nvidia_toolkit", "NVIDIA Container Toolkit", "nvidia_toolkit_"),
    ("tasks.ascend", "Ascend CANN", "ascend_"),
    ("tasks.secrets", "Secrets", "secrets_"),
    ("tasks.weights.deploy", "Weights", "weights_"),
    ("tasks.image", "Image", "image_"),
    ("tasks.image_build", "Image build", "image_"),
    ("tasks.bundle", "Bundles (air-gapped)", "bundle_"),
    ("tasks.model", "Model deploy", "model_"),
    ("tasks.service", "Service", "service_"),
    ("tasks.verify", "Verification", "verify_"),
    ("tasks.bench", "Bench", "bench_"),
    ("tasks.smoke", "Smoke", "smoke_"),
    ("tasks.rollout", "Rolling upgrades", "rollout_"),
    ("tasks.gateway", "Gateway", "gateway_"),
    ("tasks.status", "Status", "status_"),
    ("tasks.monitoring.deploy", "Monitoring", "monitoring_"),
)
README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- settings:begin (python -m tasks.settings --write) -->", "<!-- settings:end -->"


def _description(doc: str, key: str) -> str | None:
    row = re.search(rf"^\|\s*`*{re.escape(key)}`*\s*\|[^|\n]*\|(.*)\|\s*$", doc, re.M)
    if row:
        return row.group(1).strip()
    bullet = re.search(rf"^\s*[-*]\s*``{re.escape(key)}``\s*[:(-]\s*(.*(?:\n(?!\s*[-*]\s)(?!\s*$).*)*)", doc, re.M)
    if bullet:
        return " ".join(line.strip() for line in bullet.group(1).splitlines())
    return None


def _default(value) -> str:
    return "`" + json.dumps(value) + "`" if not isinstance(value, str) else f'`"{value}"`'


def _modules():
    """The capability modules that import here (a recipe's missing task is named by tasks.model)."""
    for module_name, _, _ in CAPABILITIES:
        try:
            yield importlib.import_module(module_name)
        except ImportError:
            continue


def collect() -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """(capability, key, default, meaning) rows, and the keys with no description or a foreign prefix."""
    rows, missing = [], []
    titles = {m: (t, p) for m, t, p in CAPABILITIES}
    for module in _modules():
        module_name = module.__name__
        title, prefix = titles[module_name]
        doc = module.__doc__ or ""
        for key, value in getattr(module, "DEFAULTS", {}).items():
            if not key.startswith(prefix):
                missing.append(f"{module_name}: {key} lacks the prefix {prefix}")
            text = _description(doc, key)
            if not text:
                missing.append(f"{module_name}: {key}")
                text = ""
            rows.append((title, key, _default(value), re.sub(r"(?<!\\)\|", r"\\|", text)))
    return rows, missing


def known_keys() -> set[str]:
    """Every host-data key llmfleet reads: the capabilities' settings and ``serve_<field>``."""
    from tasks.spec import OVERRIDE_PREFIX, ServingSpec

    keys = {OVERRIDE_PREFIX + name for name in ServingSpec.model_fields}
    for module in _modules():
        keys |= set(getattr(module, "DEFAULTS", {}))
    return keys


def unknown_keys(keys: Iterable[str]) -> list[tuple[str, str]]:
    """``(key, message)`` for each key of ``keys`` that looks like a setting but is none.

    ``serve_*`` keys are left to ``tasks.spec`` (nested ``serve_a__b`` paths are its to check).

    + keys: host data keys
    """
    from tasks.spec import OVERRIDE_PREFIX

    known = known_keys()
    prefixes = tuple(p for _, _, p in CAPABILITIES)
    problems = []
    for key in sorted(keys):
        if key in known or key.startswith(OVERRIDE_PREFIX):
            continue
        if key.startswith(prefixes):
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean {near[0]}?" if near else "see the settings table in README.md"
            problems.append((key, f"unknown setting; {hint}"))
            continue
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.85)
        if near:
            problems.append((key, f"unknown setting; did you mean {near[0]}?"))
    return problems


def agreed(key: str, values: dict[str, object], scope: str) -> object:
    """The one value of a fleet-wide setting; SpecError naming two hosts that differ.

    + key: the setting
    + values: host name -> its value (defaults already applied)
    + scope: what must agree, for the message ("every replica of a rollout")
    """
    from tasks.spec import SpecError

    items = list(values.items())
    first_host, first = items[0]
    for name, value in items[1:]:
        if value != first:
            raise SpecError(key, f"must be equal on {scope}: {first_host} has {first!r}, {name} has {value!r}")
    return first


def render() -> str:
    rows, _ = collect()
    lines = [BEGIN, "", "| capability | key | default | meaning |", "|---|---|---|---|"]
    lines += [f"| {cap} | `{key}` | {default} | {text} |" for cap, key, default, text in rows]
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
