"""Stand-in images pushed into the lab registry under the real names the deploys use.

Every image is the same small Debian base (python3 + pip) plus one layer holding the
stand-in vLLM server (standins/vllm_server.py), the records harvested from real vLLM parsers
(tasks/data/vllm-flags) and the string-presence flag table; the tag's version goes into
VLLM_STANDIN_VERSION, and where that release was harvested VLLM_STANDIN_HARVEST names its
record, so the stand-in parses the command line as that release's own parser does.
Labels and the layer path say "standin" so no one mistakes them for vLLM. The layer also puts
a ``vllm`` launcher on PATH (``vllm serve``, ``vllm bench serve`` via standins/vllm_bench.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from . import rootfs
from .config import LabConfig
from .registry import Layer, Pusher, layer_from_dir, layer_from_files

STANDINS = Path(__file__).parent / "standins"
FLAGS_TSV = Path(__file__).resolve().parents[1] / "data" / "vllm-flags-by-version.tsv"
HARVEST_DIR = Path(__file__).resolve().parents[1] / "data" / "vllm-flags"
IMAGE_HARVEST_DIR = "/opt/vllm-standin/harvest"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# (repository, tag, stand-in version, extra env). Repositories are named as on their real
# registry, without the registry host: quay.io images reach hosts through image mirrors.
VLLM_TAGS = ("v0.8.5", "v0.8.5.post1", "v0.9.2", "v0.10.1.1", "v0.11.0", "v0.12.0", "v0.16.0",
             "v0.18.0", "v0.19.0", "v0.32.0")
ASCEND_TAGS = ("v0.11.0",)
# dcgm-exporter as NVIDIA publishes it on nvcr.io (reached through image_mirrors): standins/dcgm_exporter.py.
DCGM = ("nvidia/k8s/dcgm-exporter", ("4.2.3-4.1.3-ubuntu22.04",))
# An image that starts but never turns healthy: for rollback tests.
UNHEALTHY = ("vllm/vllm-openai", "v0.19.0-standin-unhealthy", "0.19.0", {"LLMFLEET_STANDIN_FAIL_HEALTH": "1"})


def catalogue() -> list[tuple[str, str, str, dict[str, str]]]:
    images = [("vllm/vllm-openai", tag, tag.lstrip("v"), {}) for tag in VLLM_TAGS]
    images += [("ascend/vllm-ascend", tag, tag.lstrip("v"), {"LLMFLEET_STANDIN_ASCEND": "1"})
               for tag in ASCEND_TAGS]
    images.append(UNHEALTHY)
    return images


def base_layer() -> Layer:
    tree = rootfs.ensure("image")
    key = f"image-base-{int(rootfs.tarball('image').stat().st_mtime)}"
    return layer_from_dir(tree, key)


def harvest_record(version: str) -> Path | None:
    """The harvested record of ``version``'s release (a ``.postN`` is its release's build), or None."""
    release = re.match(r"^v?(\d+(?:\.\d+)*)", version)
    path = HARVEST_DIR / f"{release.group(1)}.json" if release else None
    return path if path is not None and path.is_file() else None


def standin_layer() -> Layer:
    server = STANDINS / "vllm_server.py"
    # `vllm` on PATH as in the real images (`docker exec C vllm bench serve ...`); the server
    # script dispatches on the argv it is given, so "vllm" goes first.
    launcher = b'#!/bin/sh\n# llmfleet lab stand-in launcher. Not vLLM.\nexec python3 /opt/vllm-standin/vllm_server.py vllm "$@"\n'
    files = {"/opt/vllm-standin/vllm_server.py": (server.read_bytes(), 0o755),
             "/opt/vllm-standin/vllm_bench.py": ((STANDINS / "vllm_bench.py").read_bytes(), 0o644),
             "/opt/vllm-standin/vllm_metrics.py": ((STANDINS / "vllm_metrics.py").read_bytes(), 0o644),
             "/opt/vllm-standin/vllm_rendezvous.py": ((STANDINS / "vllm_rendezvous.py").read_bytes(), 0o644),
             "/usr/local/bin/vllm": (launcher, 0o755),
             "/opt/vllm-standin/vllm-flags-by-version.tsv": (FLAGS_TSV.read_bytes(), 0o644),
             "/opt/vllm-standin/README": (b"llmfleet lab stand-in for the vLLM server. Not vLLM.\n", 0o644)}
    for record in sorted(HARVEST_DIR.glob("*.json")):
        files[f"{IMAGE_HARVEST_DIR}/{record.name}"] = (record.read_bytes(), 0o644)
    return layer_from_files(files)


def push_all(cfg: LabConfig, log=print) -> list[str]:
    pusher = Pusher(cfg.registry)
    pusher.wait()
    base = base_layer()
    pushed = []
    # A plain image for the smoke deploy: Debian + python3, serving HTTP.
    pusher.push("llmfleet-lab/smoke", "1", [base], {
        "architecture": "amd64", "os": "linux",
        "config": {"Env": [PATH_ENV], "Cmd": ["python3", "-m", "http.server", "8000"],
                   "Labels": {"org.llmfleet.standin": "smoke"}},
    })
    pushed.append("llmfleet-lab/smoke:1")
    if not (STANDINS / "vllm_server.py").exists():
        log("lab: no stand-in vLLM server yet; pushed the smoke image only")
        return pushed
    layers = [base, standin_layer()]
    for repo, tag, version, env in catalogue():
        envs = [PATH_ENV, f"VLLM_STANDIN_VERSION={version}",
                "VLLM_STANDIN_FLAGS=/opt/vllm-standin/vllm-flags-by-version.tsv"]
        record = harvest_record(version)
        if record is not None:
            envs.append(f"VLLM_STANDIN_HARVEST={IMAGE_HARVEST_DIR}/{record.name}")
        envs += [f"{k}={v}" for k, v in env.items()]
        pusher.push(repo, tag, layers, {
            "architecture": "amd64", "os": "linux",
            "config": {"Env": envs, "Entrypoint": ["python3", "/opt/vllm-standin/vllm_server.py"],
                       "Cmd": [], "ExposedPorts": {"8000/tcp": {}},
                       "Labels": {"org.llmfleet.standin": "vllm", "org.llmfleet.standin.version": version}},
        })
        pushed.append(f"{repo}:{tag}")
    return pushed + push_dcgm(pusher, base)


def push_dcgm(pusher: Pusher, base: Layer) -> list[str]:
    """The dcgm-exporter stand-in under its real repository and tags."""
    layer = layer_from_files({
        "/opt/dcgm-standin/dcgm_exporter.py": ((STANDINS / "dcgm_exporter.py").read_bytes(), 0o755),
        "/opt/dcgm-standin/README": (b"llmfleet lab stand-in for dcgm-exporter. Not DCGM.\n", 0o644)})
    repo, tags = DCGM
    for tag in tags:
        pusher.push(repo, tag, [base, layer], {
            "architecture": "amd64", "os": "linux",
            "config": {"Env": [PATH_ENV], "Entrypoint": ["python3", "/opt/dcgm-standin/dcgm_exporter.py"],
                       "Cmd": [], "ExposedPorts": {"9400/tcp": {}},
                       "Labels": {"org.llmfleet.standin": "dcgm-exporter"}},
        })
    return [f"{repo}:{t}" for t in tags]
