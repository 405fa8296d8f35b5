"""The hub clients' real wheels for lab hosts, which have no Internet.

``pip download`` fetches ``huggingface_hub`` and ``modelscope`` at the versions llmfleet pins
(``tasks.weights.deploy.DEFAULTS["weights_client_versions"]``) with all their dependencies, as
wheels for the lab hosts' interpreter (Debian 12: CPython 3.11, manylinux x86_64, plus
``py3-none-any``), ONCE into ``CACHE_DIR/wheelhouse/<key>``; ``lab up`` hard-links them into
``<run_dir>/apt/wheels/`` which the lab's http server publishes as ``<apt_url>/wheels/``. Hosts
then install with ``pip install --no-index --find-links <apt_url>/wheels/`` (host data
``weights_pip_find_links``), exactly as an air-gapped site would with its own wheel mirror.

DEFAULTS (prefix ``lab_wheels_``):

- ``lab_wheels_python``: target interpreter version (``--python-version``).
- ``lab_wheels_platforms``: manylinux tags accepted for binary wheels (``--platform``).
- ``lab_wheels_extra``: further requirements the hosts' venv needs (pip itself is in the venv).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .config import CACHE_DIR

DEFAULTS = {
    "lab_wheels_python": "3.11",
    "lab_wheels_platforms": ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64",
                             "manylinux_2_34_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64"),
    "lab_wheels_extra": (),
}


def requirements() -> list[str]:
    """The pinned client requirements (the same pins the deploy installs)."""
    from tasks.weights.deploy import DEFAULTS as WEIGHTS

    return [f"{name}=={version}" for name, version in sorted(WEIGHTS["weights_client_versions"].items())] + list(
        DEFAULTS["lab_wheels_extra"]
    )


def cache_dir(reqs: list[str] | None = None) -> Path:
    """Where the wheels of this requirement set live (keyed so a new pin downloads anew)."""
    reqs = reqs or requirements()
    key = hashlib.sha256("\n".join([DEFAULTS["lab_wheels_python"], *reqs]).encode()).hexdigest()[:12]
    return CACHE_DIR / "wheelhouse" / key


def ensure(log=print) -> Path:
    """Download the wheels once (PyPI, through pip); return the cache directory."""
    reqs = requirements()
    target = cache_dir(reqs)
    if (target / ".complete").exists():
        return target
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(tmp), "--only-binary=:all:",
           "--python-version", DEFAULTS["lab_wheels_python"], "--implementation", "cp", "--abi", "cp311",
           "--abi", "abi3", "--abi", "none"]
    for platform in DEFAULTS["lab_wheels_platforms"]:
        cmd += ["--platform", platform]
    cmd += ["--platform", "any", *reqs]
    log(f"wheelhouse: pip download {' '.join(reqs)}")
    subprocess.run(cmd, check=True)
    (tmp / ".complete").write_text("\n".join(reqs) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def publish(dest: Path, log=print) -> Path:
    """Link (or copy) the cached wheels into ``dest`` (e.g. ``<run_dir>/apt/wheels``)."""
    src = ensure(log)
    dest.mkdir(parents=True, exist_ok=True)
    for wheel in src.glob("*.whl"):
        out = dest / wheel.name
        if out.exists():
            continue
        try:
            os.link(wheel, out)
        except OSError:
            shutil.copy2(wheel, out)
    return dest


if __name__ == "__main__":
    print(ensure())
