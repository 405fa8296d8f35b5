"""What a host holds of llmfleet's weights, read as facts: the hub clients installed in the venv
(:class:`PythonPackages`) and the served revision of a model directory (:class:`WeightsState`).

Both are read with the shell alone, on every host every run: starting Python on the host costs
~20-100 ms of CPU per read for the same answer. The deep read (``weights_deep_verify``) hashes with
``sha256sum``; the comparison with the manifest happens here, on the control machine, against what
the fetch side wrote (``tasks/weights/manifest.py``).
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from pyinfra.api import FactBase


def normalise(name: str) -> str:
    """A distribution name as pip compares it (``huggingface_hub`` -> ``huggingface-hub``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


class PythonPackages(FactBase):
    """
    ``{normalised name: version}`` of the distributions in a venv; ``{}`` when the venv is absent.

    Read from the ``<name>-<version>.dist-info`` directory names pip writes (the wheel spec
    escapes ``-`` in both parts), with a shell glob: starting the venv's Python to ask
    ``importlib.metadata`` costs ~100 ms of CPU per host per run for the same answer.
    """

    default = dict

    def command(self, venv: str) -> str:
        py, v = shlex.quote(f"{venv}/bin/python"), shlex.quote(venv.rstrip("/"))
        return (f"if [ -x {py} ]; then for d in {v}/lib/python3*/site-packages/*.dist-info; do "
                'if [ -d "$d" ]; then d=${d##*/}; echo "${d%.dist-info}"; fi; done; fi; true')

    def process(self, output: list[str]) -> dict[str, str]:
        out = {}
        for line in output:
            name, sep, version = line.strip().partition("-")
            if sep and name and version and "-" not in version:
                out[normalise(name)] = version
        return out


#: The manifest fields WeightsState reports (both ways of reading it).


#: The manifest fields WeightsState reports.
MANIFEST_KEYS = ("repo", "hub", "revision", "commit", "allow", "ignore", "total_bytes")


class WeightsState(FactBase):
    """
    What ``<dest>/current`` holds: ``{"current": link text, "manifest": {repo, hub, revision, commit,
    allow, ignore, total_bytes, files}, "bad": [paths with a wrong size (or hash, deep)], "error": ...}``.

    + dest: the model directory (``<dest>/current`` links to the served revision)
    + deep: also hash every file (``sha256sum``) and compare the digests with the manifest

    The shell reads the link, the manifest and the files' sizes (``find``; with ``deep`` their
    digests too) and the comparison happens here: no Python start on the host (~20 ms of CPU).

    Example:

    .. code:: python

        host.get_fact(WeightsState, dest="/srv/models/Qwen--Qwen3-30B-A3B")["bad"]  # []
    """

    default = dict

    def command(self, dest: str, deep: bool = False) -> str:
        cur = shlex.quote(f"{dest.rstrip('/')}/current")
        sums = (f"echo @sums; (cd {cur}/ && find -L . -type f -exec sha256sum {{}} + 2>/dev/null); " if deep else "")
        return (f'c=$(readlink {cur} 2>/dev/null); echo "@current=$c"; '
                f'if [ -n "$c" ]; then if [ -f {cur}/manifest.json ]; then echo @manifest; cat {cur}/manifest.json; '
                f"echo; echo @sizes; find -L {cur}/ -type f -printf '%s\\t%P\\n' 2>/dev/null; {sums}"
                "else echo @no-manifest; fi; fi; true")

    def process(self, output: list[str]) -> dict[str, Any]:
        if output and output[0].startswith("@current="):
            return _state_from_listing(output)
        return {"current": None, "manifest": None, "bad": [], "error": "unreadable state: " + " ".join(output)[:200]}


def _state_from_listing(output: list[str]) -> dict[str, Any]:
    """WeightsState from the link, the manifest, ``find``'s sizes and (deep) ``sha256sum``'s digests."""
    out: dict[str, Any] = {"current": output[0][len("@current="):].strip() or None, "manifest": None, "bad": [],
                           "error": None}
    if not out["current"]:
        return out
    if "@no-manifest" in output:
        out["error"] = "FileNotFoundError: no manifest.json in current"
        return out
    try:
        start, sizes_at = output.index("@manifest"), output.index("@sizes")
        m = json.loads("\n".join(output[start + 1:sizes_at]))
        out["manifest"] = {k: m.get(k) for k in MANIFEST_KEYS}
        out["manifest"]["files"] = len(m["files"])
        sums_at = output.index("@sums") if "@sums" in output else len(output)
        sizes = {}
        for line in output[sizes_at + 1:sums_at]:
            size, sep, path = line.partition("\t")
            if sep and size.isdigit():
                sizes[path] = int(size)
        bad = {e["path"] for e in m["files"] if sizes.get(e["path"]) != e["size"]}
        if sums_at < len(output):  # deep: sha256sum's "<digest>  ./<path>" lines
            sums = {}
            for line in output[sums_at + 1:]:
                digest, sep, path = line.partition("  ")
                if sep:
                    sums[path.removeprefix("./")] = digest
            bad |= {e["path"] for e in m["files"] if sums.get(e["path"]) != e.get("sha256")}
        out["bad"] = [e["path"] for e in m["files"] if e["path"] in bad]
    except (ValueError, KeyError, TypeError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out



__all__ = ["MANIFEST_KEYS", "PythonPackages", "WeightsState", "normalise"]
