"""Facts about Huawei Ascend NPUs: ``npu-smi info``, the driver's version.info, the installed CANN toolkit.

Sources (real formats, see tests/unit/fixtures/npu-smi):

- ``npu-smi info``: a box table, two lines per device. First line ``| NPU  Name | Health | Power(W) Temp(C)
  Hugepages-Usage(page) |``, second line ``| Chip [Phy-ID] | Bus-Id | AICore(%) Memory-Usage(MB)
  HBM-Usage(MB) |``. A process table follows (``| NPU  Chip | Process id | ...``); it is not parsed.
- ``/usr/local/Ascend/driver/version.info``: ``key=value`` lines, e.g. ``Version=24.1.rc2``.
- CANN toolkit: ``ascend_toolkit_install.info`` (``package_name=Ascend-cann-toolkit``, ``version=8.0.RC3``,
  ``path=...``). Up to CANN 8.3 it lives under ``/usr/local/Ascend/ascend-toolkit/latest/<arch>-linux/``;
  from 8.5 the default is ``/usr/local/Ascend/cann/<arch>-linux/`` (also ``cann-<ver>/``). The first
  one found, in that order, is reported.
"""

from __future__ import annotations

import re
from typing import Any

from pyinfra.api import FactBase

NO_NPU_SMI_MARKER = "LLMFLEET_NO_NPU_SMI"
SECTION = "LLMFLEET_SECTION="
RC_MARKER = "LLMFLEET_RC="

DRIVER_VERSION_INFO = "/usr/local/Ascend/driver/version.info"
CANN_INFO_GLOBS = (
    "/usr/local/Ascend/ascend-toolkit/latest/*-linux/ascend_toolkit_install.info",
    "/usr/local/Ascend/cann/*-linux/ascend_toolkit_install.info",
    "/usr/local/Ascend/cann-*/*-linux/ascend_toolkit_install.info",
)

_BUS_ID = re.compile(r"^[0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f]$")
_PAIR = re.compile(r"(\d+)\s*/\s*(\d+)")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _num(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_npu_smi_info(lines: list[str]) -> tuple[str | None, list[dict[str, Any]]]:
    """Parse ``npu-smi info`` into (npu-smi version, devices). Devices keep table order."""
    version = None
    devices: list[dict[str, Any]] = []
    pending: dict[str, Any] | None = None
    for line in lines:
        if not line.startswith("|"):
            continue
        if version is None:
            match = re.search(r"npu-smi\s+(\S+)", line)
            if match:
                version = match.group(1)
                continue
        cells = _cells(line)
        if len(cells) < 3:
            continue
        if cells[0].startswith("NPU") and "Process" in line:
            break  # process table: nothing more about devices
        head = cells[0].split()
        if pending is None:
            if len(head) >= 2 and head[0].isdigit() and not _BUS_ID.match(cells[1]):
                metrics = cells[2].split()
                pending = {
                    "index": int(head[0]),
                    "name": " ".join(head[1:]),
                    "health": cells[1],
                    "power_w": _num(metrics[0]) if metrics else None,
                    "temp_c": _num(metrics[1]) if len(metrics) > 1 else None,
                }
            continue
        if head and head[0].isdigit() and _BUS_ID.match(cells[1]):
            pairs = _PAIR.findall(cells[2])
            metrics = cells[2].split()
            hbm_used, hbm_total = (int(pairs[-1][0]), int(pairs[-1][1])) if pairs else (None, None)
            pending.update(
                {
                    "chip": int(head[0]),
                    "phy_id": int(head[1]) if len(head) > 1 and head[1].isdigit() else None,
                    "bus_id": cells[1],
                    "aicore_pct": _num(metrics[0]) if metrics else None,
                    "hbm_used_mb": hbm_used,
                    "hbm_total_mb": hbm_total,
                }
            )
            devices.append(pending)
        pending = None
    return version, devices


def parse_key_values(lines: list[str]) -> dict[str, str]:
    """``key=value`` lines (version.info, ascend_toolkit_install.info) to a dict; other lines ignored."""
    values: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip():
            values[key.strip()] = value.strip()
    return values


class AscendNpus(FactBase[dict]):
    """
    Ascend NPU inventory, driver and CANN versions, one round trip.

    Returns ``{"status", "message", "npu_smi_version", "npus": [...], "driver_version",
    "driver_info": {...}, "cann_version", "cann_info_path", "davinci_devices": int}``.
    ``status``: ``ok`` (npus listed), ``missing`` (no npu-smi and no driver version.info),
    ``no_npu`` (npu-smi ran, no device rows), ``error`` (npu-smi failed; ``message`` has its text, e.g.
    ``dcmi module initialize failed`` when the driver is installed but not loaded).
    Each NPU: ``index``, ``name`` ("910B3"), ``health`` ("OK"), ``power_w``, ``temp_c``, ``chip``,
    ``phy_id`` (None on tables without that column), ``bus_id``, ``aicore_pct``, ``hbm_used_mb``,
    ``hbm_total_mb``.
    """

    @staticmethod
    def default() -> dict:
        return {"status": "error", "message": "no output", "npus": []}

    def command(self) -> str:
        cann = " ".join(CANN_INFO_GLOBS)
        return (
            f'echo "{SECTION}npu_smi"; '
            "if command -v npu-smi >/dev/null 2>&1; then npu-smi info 2>&1; "
            f'echo "{RC_MARKER}$?"; else echo {NO_NPU_SMI_MARKER}; fi; '
            f'echo "{SECTION}driver"; cat {DRIVER_VERSION_INFO} 2>/dev/null; '
            f'echo "{SECTION}cann"; for f in {cann}; do '
            'if [ -f "$f" ]; then echo "llmfleet_path=$f"; cat "$f"; break; fi; done; '
            f'echo "{SECTION}devices"; ls -1 /dev 2>/dev/null | grep -c "^davinci[0-9]"; true'
        )

    def process(self, output: list[str]) -> dict:
        sections: dict[str, list[str]] = {}
        current = "preamble"
        for line in output:
            if line.startswith(SECTION):
                current = line[len(SECTION):].strip()
                sections[current] = []
            else:
                sections.setdefault(current, []).append(line)

        smi_lines = sections.get("npu_smi", [])
        rc = None
        if smi_lines and smi_lines[-1].startswith(RC_MARKER):
            try:
                rc = int(smi_lines[-1][len(RC_MARKER):])
            except ValueError:
                rc = None
            smi_lines = smi_lines[:-1]
        smi_missing = any(line.strip() == NO_NPU_SMI_MARKER for line in smi_lines)

        driver_info = parse_key_values(sections.get("driver", []))
        cann_lines = sections.get("cann", [])
        cann_info = parse_key_values(cann_lines)
        cann_path = cann_info.pop("llmfleet_path", None)
        try:
            davinci = int((sections.get("devices") or ["0"])[0])
        except ValueError:
            davinci = 0

        result: dict[str, Any] = {
            "npu_smi_version": None,
            "npus": [],
            "driver_version": driver_info.get("Version"),
            "driver_info": driver_info,
            "cann_version": cann_info.get("version"),
            "cann_info_path": cann_path,
            "davinci_devices": davinci,
        }
        if smi_missing:
            status = "missing"
            message = "npu-smi not found on PATH"
            if driver_info:
                status = "error"
                message = "driver version.info present but npu-smi not found on PATH"
            return {"status": status, "message": message, **result}

        version, npus = parse_npu_smi_info(smi_lines)
        result["npu_smi_version"] = version
        result["npus"] = npus
        text = "\n".join(line.rstrip() for line in smi_lines).strip()
        if npus and rc in (0, None):
            return {"status": "ok", "message": f"{len(npus)} NPU(s)", **result}
        if rc in (0, None) and version:
            return {"status": "no_npu", "message": "npu-smi lists no device", **result}
        return {"status": "error", "message": text or f"npu-smi exited {rc}", "rc": rc, **result}
