"""Writes the pyinfra inventory of a lab: every host, a group per profile, SSH settings and the
lab's service addresses as data (registry mirror, apt repository, hub and PyPI stand-ins)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from pprint import pformat

from . import profiles
from .config import REPO_ROOT, LabConfig


def served_cann_digests(cfg: LabConfig) -> dict[str, str]:
    """sha256 of each CANN installer the lab serves, read from the files it serves: the lab pins them as
    an operator would pin Huawei's (host data ``ascend_cann_sha256``)."""
    served = cfg.run_dir / "apt" / "ascend" / "cann"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(served.glob("*.run"))}


def lab_data(cfg: LabConfig, state: dict | None = None) -> dict:
    """Data every lab host gets: where the lab's stand-ins for the outside world live, and the size
    of the checkpoints its hub serves (preflight's disk check measures those, not the real model's
    hundreds of GB against the free disk of the machine the lab runs on)."""
    sizes = {"preflight_weights_bytes": state["checkpoint_bytes"]} if (state or {}).get("checkpoint_bytes") else {}
    return {
        **sizes,
        "lab_name": cfg.name,
        "docker_registry_mirrors": [f"http://{cfg.registry}"],
        "docker_insecure_registries": [cfg.registry],
        "image_mirrors": {"quay.io": cfg.registry, "nvcr.io": cfg.registry, "public.ecr.aws": cfg.registry},
        "nvidia_toolkit_repo_url": f"{cfg.apt_url}/libnvidia-container",
        "ascend_cann_source": f"{cfg.apt_url}/ascend/cann",
        "ascend_cann_sha256": served_cann_digests(cfg),
        "weights_hf_endpoint": cfg.hub_url,
        "weights_modelscope_endpoint": cfg.hub_url,
        "image_pip_index_url": cfg.pypi_url,
        "image_pip_extra_index_url": cfg.pypi_url,  # the CPU torch wheels too (PyTorch's index in the recipe)
        "weights_pip_find_links": f"{cfg.apt_url}/wheels/",
        "weights_pip_index_url": None,
        # The lab machine lacks CAP_SYS_RESOURCE: its hard memlock limit (8 MiB) caps the containers'.
        "service_ulimits": {"memlock": "8388608", "stack": "67108864"},
    }


def path_for(cfg: LabConfig) -> Path:
    name = "lab.py" if cfg.name == "lab" else f"lab_{cfg.name}.py"
    return REPO_ROOT / "inventories" / name


def write(cfg: LabConfig, state: dict, key: Path, path: Path | None = None,
          extra: dict[str, dict] | None = None) -> Path:
    """Write the inventory (to ``path``, default inventories/lab*.py); ``extra`` adds host data per profile."""
    ssh = {
        "ssh_user": "root",
        "ssh_key": str(key),
        "ssh_strict_host_key_checking": "no",
        "ssh_known_hosts_file": "/dev/null",
    }
    groups: dict[str, list] = {}
    for h in state["hosts"]:
        kind = profiles.profile(h["profile"])["kind"]
        data = {"ssh_hostname": h["ip"], "lab_profile": h["profile"],
                "runtime_accelerator": kind if kind in ("nvidia", "ascend") else "none", **ssh,
                **(extra or {}).get(h["profile"], {})}
        groups.setdefault(h["profile"], []).append((h["name"], data))
    lines = [
        f'"""pyinfra inventory of lab {cfg.name!r}, written by `python -m tasks.lab up`; do not edit."""',
        "",
        f"_LAB = {pformat(lab_data(cfg, state), width=100)}",
        "",
    ]
    for profile, members in groups.items():
        body = ",\n    ".join(f"({name!r}, {{**_LAB, **{pformat(data, width=200)}}})" for name, data in members)
        lines.append(f"{profile.replace('-', '_')} = [\n    {body},\n]\n")
    path = path or path_for(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path
