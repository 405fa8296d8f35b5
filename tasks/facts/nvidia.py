"""Facts about NVIDIA GPUs: ``nvidia-smi`` inventory, its version line, NVSwitch and fabric manager.

Each fact is one round trip and its shell command always exits 0, so that a host without a GPU, without
the tool, or with a broken driver gives a *value* (a status) instead of a failed fact. Real outputs these
parsers are written against (tests/unit/fixtures, tests/fixtures/real):

- ``nvidia-smi`` absent: the guard prints ``LLMFLEET_NO_NVIDIA_SMI``.
- ``No devices were found`` (exit 6): driver loaded, no GPU visible.
- ``Failed to initialize NVML: Driver/library version mismatch`` then ``NVML library version: 580.159``
  (exit 18): user-space libraries updated, kernel module still the old one (reboot or reload).
- ``NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. ...`` (exit 9):
  kernel module not loaded.
- ``[N/A]``, ``[Not Supported]``, ``[Unknown Error]`` in CSV cells: not available -> None.
"""

from __future__ import annotations

import re
from typing import Any

from pyinfra.api import FactBase

#: Fields of the inventory query, in the order of the real fixture query-gpu-noheader-nounits.csv.
QUERY_FIELDS: tuple[str, ...] = (
    "index",
    "name",
    "driver_version",
    "memory.total",
    "memory.used",
    "memory.free",
    "pci.bus_id",
    "pcie.link.gen.current",
    "pcie.link.gen.max",
    "pcie.link.width.current",
    "pcie.link.width.max",
    "compute_cap",
    "persistence_mode",
    "mig.mode.current",
)

#: Output key and type of each query field (int fields become None when not available).
_FIELD_KEYS: dict[str, tuple[str, type]] = {
    "index": ("index", int),
    "name": ("name", str),
    "driver_version": ("driver_version", str),
    "memory.total": ("memory_total_mib", int),
    "memory.used": ("memory_used_mib", int),
    "memory.free": ("memory_free_mib", int),
    "pci.bus_id": ("pci_bus_id", str),
    "pcie.link.gen.current": ("pcie_gen_current", int),
    "pcie.link.gen.max": ("pcie_gen_max", int),
    "pcie.link.width.current": ("pcie_width_current", int),
    "pcie.link.width.max": ("pcie_width_max", int),
    "compute_cap": ("compute_cap", str),
    "persistence_mode": ("persistence_mode", str),
    "mig.mode.current": ("mig_mode", str),
}

NO_SMI_MARKER = "LLMFLEET_NO_NVIDIA_SMI"
RC_MARKER = "LLMFLEET_RC="

#: Cell values nvidia-smi prints for a value it cannot give.
NOT_AVAILABLE = frozenset({"[N/A]", "N/A", "[Not Supported]", "[Unknown Error]", "[Insufficient Permissions]", ""})

_NVML_ERRORS = (
    "Failed to initialize NVML",
    "couldn't communicate with the NVIDIA driver",
    "NVML Shared Library Not Found",
    "Unable to determine the device handle",
)


def _guarded(command: str, marker: str = NO_SMI_MARKER) -> str:
    """Run ``command`` only when nvidia-smi exists; print its exit status on a last line; exit 0 always."""
    return (
        f"if ! command -v nvidia-smi >/dev/null 2>&1; then echo {marker}; "
        f'else {command} 2>&1; echo "{RC_MARKER}$?"; fi'
    )


def _split_rc(lines: list[str]) -> tuple[list[str], int | None]:
    """Split off the trailing ``LLMFLEET_RC=N`` line."""
    body = list(lines)
    rc: int | None = None
    while body and not body[-1].strip():
        body.pop()
    if body and body[-1].startswith(RC_MARKER):
        try:
            rc = int(body.pop()[len(RC_MARKER):])
        except ValueError:
            rc = None
    return body, rc


def _cell(raw: str, kind: type) -> Any:
    value = raw.strip()
    if value in NOT_AVAILABLE:
        return None
    if kind is int:
        try:
            return int(value.split()[0])
        except (ValueError, IndexError):
            return None
    return value


def classify_error(text: str) -> tuple[str, dict[str, Any]]:
    """Map nvidia-smi's error text to a status and extra keys ("nvml_library_version")."""
    extra: dict[str, Any] = {}
    if "No devices were found" in text:
        return "no_gpu", extra
    if any(marker in text for marker in _NVML_ERRORS):
        match = re.search(r"NVML library version:\s*(\S+)", text)
        if match:
            extra["nvml_library_version"] = match.group(1)
        return "nvml_error", extra
    return "error", extra


class NvidiaGpus(FactBase[dict]):
    """
    GPU inventory from ``nvidia-smi --query-gpu``, one round trip.

    Returns ``{"status", "message", "gpus": [...]}``. ``status`` is one of:
    ``ok`` (gpus listed), ``missing`` (no nvidia-smi), ``no_gpu`` ("No devices were found"),
    ``nvml_error`` (driver/library mismatch, driver not loaded; ``nvml_library_version`` when printed),
    ``error`` (anything else nvidia-smi said; ``message`` carries its text).

    Each GPU: ``index`` (int), ``name``, ``driver_version``, ``memory_total_mib``, ``memory_used_mib``,
    ``memory_free_mib`` (int|None), ``pci_bus_id``, ``pcie_gen_current``, ``pcie_gen_max``,
    ``pcie_width_current``, ``pcie_width_max`` (int|None), ``compute_cap`` ("9.0"|None),
    ``persistence_mode`` ("Enabled"/"Disabled"|None), ``mig_mode`` ("Enabled"/"Disabled"|None).
    """

    @staticmethod
    def default() -> dict:
        return {"status": "error", "message": "no output from the nvidia-smi query", "gpus": []}

    def command(self) -> str:
        fields = ",".join(QUERY_FIELDS)
        return _guarded(f"nvidia-smi --query-gpu={fields} --format=csv,noheader,nounits")

    def process(self, output: list[str]) -> dict:
        if output and output[0].strip() == NO_SMI_MARKER:
            return {"status": "missing", "message": "nvidia-smi not found on PATH", "gpus": []}
        body, rc = _split_rc(output)
        text = "\n".join(line.rstrip() for line in body).strip()
        rows = [line for line in body if line.strip()]
        gpus: list[dict] = []
        parse_ok = bool(rows)
        for line in rows:
            cells = [cell.strip() for cell in line.split(",")]
            if len(cells) != len(QUERY_FIELDS) or not cells[0].isdigit():
                parse_ok = False
                break
            gpu = {}
            for field, raw in zip(QUERY_FIELDS, cells):
                key, kind = _FIELD_KEYS[field]
                gpu[key] = _cell(raw, kind)
            gpus.append(gpu)
        if parse_ok and (rc in (0, None)):
            return {"status": "ok", "message": f"{len(gpus)} GPU(s)", "gpus": gpus}
        status, extra = classify_error(text)
        message = text or f"nvidia-smi exited {rc} without output"
        return {"status": status, "message": message, "gpus": [], "rc": rc, **extra}


_VERSION_KEYS = {
    "NVIDIA-SMI version": "smi_version",
    "NVML version": "nvml_version",
    "DRIVER version": "driver_version",
    "CUDA Version": "cuda_version",
}


class NvidiaSmiVersion(FactBase[dict | None]):
    """
    ``nvidia-smi --version``: ``{"driver_version", "nvml_version", "cuda_version", "smi_version"}``
    (a key is None when its line is absent), or None when nvidia-smi is absent or printed none of them.
    ``cuda_version`` is the newest CUDA the driver supports (nvidia-smi has no query field for it).
    """

    def command(self) -> str:
        return _guarded("nvidia-smi --version")

    def process(self, output: list[str]) -> dict | None:
        if output and output[0].strip() == NO_SMI_MARKER:
            return None
        body, _rc = _split_rc(output)
        found: dict[str, str | None] = {key: None for key in _VERSION_KEYS.values()}
        for line in body:
            label, sep, value = line.partition(":")
            if sep and label.strip() in _VERSION_KEYS:
                found[_VERSION_KEYS[label.strip()]] = value.strip() or None
        if not any(found.values()):
            return None
        return found


class NvidiaFabric(FactBase[dict]):
    """
    NVSwitch presence and NVIDIA Fabric Manager state, one round trip.

    NVSwitch detection: count ``/dev/nvidia-nvswitch<N>`` device nodes (the driver's nvswitch module
    creates them; no tool needed), and also count NVIDIA (vendor 10de) PCI functions of class 0680
    ("Bridge: other", which is how NVSwitch chips enumerate) via ``lspci`` when lspci exists, because the
    nodes may be absent before nvidia-modprobe has run. ``nvidia-smi nvlink`` is not used: it needs a working
    NVML and says nothing about the switches themselves.

    Returns ``{"nvswitch_count": int, "fabricmanager_active": str|None (systemctl is-active answer),
    "fabricmanager_version": str|None}``; the Fabric Manager is looked at only when a switch was found.
    """

    @staticmethod
    def default() -> dict:
        return {"nvswitch_count": 0, "fabricmanager_active": None, "fabricmanager_version": None}

    def command(self) -> str:
        return (
            'n=0; for d in /dev/nvidia-nvswitch[0-9]*; do [ -e "$d" ] && n=$((n+1)); done; '
            'echo "nvswitch_dev=$n"; p=0; '
            "if command -v lspci >/dev/null 2>&1; then "
            'p=$(lspci -n -d 10de: 2>/dev/null | grep -c " 0680: "); echo "nvswitch_pci=$p"; fi; '
            # Fabric Manager matters only beside NVSwitches: no systemctl or nv-fabricmanager start
            # on the (many) hosts without one, every run.
            'if [ "$n" -gt 0 ] || [ "${p:-0}" -gt 0 ]; then '
            "if command -v systemctl >/dev/null 2>&1; then "
            'echo "fm_active=$(systemctl is-active nvidia-fabricmanager 2>/dev/null)"; fi; '
            "if command -v nv-fabricmanager >/dev/null 2>&1; then "
            'echo "fm_version=$(nv-fabricmanager --version 2>&1 | tr "\\n" " ")"; fi; fi; true'
        )

    def process(self, output: list[str]) -> dict:
        values: dict[str, str] = {}
        for line in output:
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
        counts = []
        for key in ("nvswitch_dev", "nvswitch_pci"):
            try:
                counts.append(int(values.get(key, "0")))
            except ValueError:
                counts.append(0)
        version = None
        match = re.search(r"Fabric Manager version is\s*:\s*(\S+)", values.get("fm_version", ""))
        if match:
            version = match.group(1)
        return {
            "nvswitch_count": max(counts),
            "fabricmanager_active": values.get("fm_active") or None,
            "fabricmanager_version": version,
        }
