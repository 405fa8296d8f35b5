"""Accelerator profiles of lab hosts: what the stand-in nvidia-smi / npu-smi report, and the files and device
nodes a lab host needs to look like a GPU/NPU server.

The lab (built by the lead) calls, per host:

- ``PROFILES[name]``: the JSON written to /etc/llmfleet-standin/accelerators.json.
- ``host_files(name)``: ``{absolute path in the host: (content bytes, mode)}`` to write into the host's root:
  the profile JSON, a README naming these files stand-ins, the stand-in tools, and per profile the
  fabric-manager stand-in (h100x8) or Ascend driver files (ascend910b).
- ``device_binds(name)``: device paths to bind from /dev/null into the host (/dev/nvidia0.., /dev/davinci0..),
  so that presence checks on device nodes see what a real server has.
- ``enabled_units(name)``: systemd units the lab should enable in the host (nvidia-fabricmanager on h100x8).

Values come from real hardware where known: H100 from the captured fixtures (81559 MiB, 480 MiB reserved,
driver 580.159.04); the 22 GB RTX 2080 Ti from seed 001 (CUDA sees 21.66 GiB: 348 MiB reserved). The RTX
4090's reserved 356 MiB is an assumption of the same order. These are stand-ins: nothing here is a GPU.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

STANDIN_DIR = Path(__file__).parent / "standins"
PROFILE_FILE = "/etc/llmfleet-standin/accelerators.json"

H100_BUS_IDS = ["00000000:18:00.0", "00000000:2A:00.0", "00000000:3A:00.0", "00000000:5D:00.0",
                "00000000:9A:00.0", "00000000:AB:00.0", "00000000:BA:00.0", "00000000:DB:00.0"]
PCIE_BUS_IDS = ["00000000:01:00.0", "00000000:21:00.0", "00000000:41:00.0", "00000000:61:00.0",
                "00000000:81:00.0", "00000000:A1:00.0", "00000000:C1:00.0", "00000000:E1:00.0"]
ASCEND_BUS_IDS = ["0000:C1:00.0", "0000:C2:00.0", "0000:81:00.0", "0000:82:00.0",
                  "0000:01:00.0", "0000:02:00.0", "0000:41:00.0", "0000:42:00.0"]


def _uuid(profile: str, index: int) -> str:
    tag = sum(map(ord, profile)) % 0xFFFF
    return f"GPU-{tag:08x}-0000-4000-8000-{index:012x}"


def _rtx4090(profile: str, count: int) -> list[dict]:
    return [{"name": "NVIDIA GeForce RTX 4090", "uuid": _uuid(profile, i), "memory_total_mib": 24564,
             "memory_reserved_mib": 356, "memory_used_mib": 0, "pci_bus_id": PCIE_BUS_IDS[i],
             "pcie_gen_current": 4, "pcie_gen_max": 4, "pcie_width_current": 16, "pcie_width_max": 16,
             "compute_cap": "8.9", "persistence_mode": "Disabled", "mig_mode": None, "fan": "30%",
             "temperature_c": 35, "perf": "P8", "power_draw_w": 18, "power_limit_w": 450, "ecc": "Off",
             "display_active": "Off", "utilization_pct": 0, "compute_mode": "Default"} for i in range(count)]


def _rtx2080ti22g(profile: str, count: int) -> list[dict]:
    return [{"name": "NVIDIA GeForce RTX 2080 Ti", "uuid": _uuid(profile, i), "memory_total_mib": 22528,
             "memory_reserved_mib": 348, "memory_used_mib": 0, "pci_bus_id": PCIE_BUS_IDS[i],
             "pcie_gen_current": 3, "pcie_gen_max": 3, "pcie_width_current": 16, "pcie_width_max": 16,
             "compute_cap": "7.5", "persistence_mode": "Disabled", "mig_mode": None, "fan": "27%",
             "temperature_c": 33, "perf": "P8", "power_draw_w": 21, "power_limit_w": 250, "ecc": "N/A",
             "display_active": "Off", "utilization_pct": 0, "compute_mode": "Default"} for i in range(count)]


def _h100(profile: str, count: int, bus_ids: list[str]) -> list[dict]:
    return [{"name": "NVIDIA H100 80GB HBM3", "uuid": _uuid(profile, i), "memory_total_mib": 81559,
             "memory_reserved_mib": 480, "memory_used_mib": 0, "pci_bus_id": bus_ids[i],
             "pcie_gen_current": 5, "pcie_gen_max": 5, "pcie_width_current": 16, "pcie_width_max": 16,
             "compute_cap": "9.0", "persistence_mode": "Enabled", "mig_mode": "Disabled", "fan": "N/A",
             "temperature_c": 34, "perf": "P0", "power_draw_w": 119, "power_limit_w": 700, "ecc": "0",
             "display_active": "Off", "utilization_pct": 0, "compute_mode": "Default"} for i in range(count)]


def _h200(profile: str, count: int, bus_ids: list[str]) -> list[dict]:
    # 143771 MiB and driver 580.159.03 as nvidia-smi reported on the H200 device machine (KINDS.md).
    gpus = _h100(profile, count, bus_ids)
    for gpu in gpus:
        gpu.update(name="NVIDIA H200", memory_total_mib=143771, memory_reserved_mib=555)
    return gpus


def _nvidia(name: str, description: str, driver: str, cuda: str, gpus: list[dict], **extra) -> dict:
    return {"name": name, "description": description, "kind": "nvidia", "state": "ok",
            "driver_version": driver, "nvml_version": ".".join(driver.split(".")[:2]), "cuda_version": cuda,
            "gpus": gpus, "nvswitches": 0, **extra}


def _build() -> dict[str, dict]:
    profiles: dict[str, dict] = {}
    profiles["rtx4090x8"] = _nvidia("rtx4090x8", "8x RTX 4090 24 GB, PCIe gen4 x16", "550.144.03", "12.4",
                                    _rtx4090("rtx4090x8", 8))
    profiles["gpu22gx4"] = _nvidia("gpu22gx4", "4x RTX 2080 Ti modded to 22 GB (seed 001)", "550.144.03",
                                   "12.4", _rtx2080ti22g("gpu22gx4", 4))
    two = _rtx4090("rtx4090x2", 2)
    two[1]["pcie_width_current"] = 4  # degraded link: gen 4 but x4 instead of x16
    profiles["rtx4090x2"] = _nvidia("rtx4090x2", "2x RTX 4090, GPU1 link degraded to x4", "570.153.02",
                                    "12.8", two)
    profiles["h100x8"] = _nvidia("h100x8", "HGX H100 8x 80 GB with 4 NVSwitches and fabric manager",
                                 "580.159.04", "13.0", _h100("h100x8", 8, H100_BUS_IDS), nvswitches=4,
                                 fabricmanager_version="580.159.04")
    profiles["h200x8"] = _nvidia("h200x8", "HGX H200 8x 141 GB with 4 NVSwitches and fabric manager",
                                 "580.159.03", "13.0", _h200("h200x8", 8, H100_BUS_IDS), nvswitches=4,
                                 fabricmanager_version="580.159.03")
    profiles["rtx4090-drv530"] = _nvidia("rtx4090-drv530", "8x RTX 4090 on the old 530 driver (CUDA 12.1)",
                                         "530.30.02", "12.1", _rtx4090("rtx4090-drv530", 8))
    h100x1 = _nvidia("h100x1", "1x H100 80GB, the captured fixture host", "580.159.04", "13.0",
                     _h100("h100x1", 1, ["00000000:00:06.0"]), timestamp="Mon Nov 23 11:33:16 2026")
    h100x1["gpus"][0]["uuid"] = "GPU-00000000-0000-0000-0000-000000000000"
    profiles["h100x1"] = h100x1
    profiles["ascend910b"] = {
        "name": "ascend910b", "description": "Atlas 800 A2: 8x Ascend 910B3 64 GB, driver 24.1.rc2, no CANN",
        "kind": "ascend", "npu_smi_version": "24.1.rc2", "driver_version": "24.1.rc2",
        "npus": [{"name": "910B3", "health": "OK", "power_w": 95.0 + i, "temp_c": 40 + i % 4, "chip": 0,
                  "bus_id": ASCEND_BUS_IDS[i], "aicore_pct": 0, "hbm_used_mb": 3314, "hbm_total_mb": 65536}
                 for i in range(8)],
    }
    profiles["cpu"] = {"name": "cpu", "description": "no accelerator: nvidia-smi absent", "kind": "none"}
    return profiles


PROFILES: dict[str, dict] = _build()

README = """llmfleet lab: the files of this directory and the tools they feed are STAND-INS.

This host is a systemd-nspawn container of the llmfleet lab; it has no GPU or NPU. These are stand-ins:
  /etc/llmfleet-standin/accelerators.json   the accelerator profile ({profile})
  /usr/bin/nvidia-smi                       stand-in for NVIDIA's nvidia-smi (NVIDIA profiles)
  /usr/bin/nv-fabricmanager                 stand-in for NVIDIA Fabric Manager (NVSwitch profiles)
  /usr/local/bin/npu-smi                    stand-in for Huawei's npu-smi (Ascend profiles)
  /usr/local/Ascend/driver/version.info     stand-in Ascend driver version file (Ascend profiles)
  /dev/nvidia*, /dev/davinci*               /dev/null bound under device names
Profiles: {names}
"""

FABRICMANAGER_UNIT = """[Unit]
Description=NVIDIA fabric manager service (llmfleet lab stand-in: sleeps)

[Service]
Type=simple
ExecStart=/usr/bin/nv-fabricmanager --lab-standin-daemon
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""


def _fabricmanager_script(version: str) -> bytes:
    return (
        "#!/bin/sh\n"
        "# llmfleet lab stand-in for NVIDIA Fabric Manager (nv-fabricmanager): NOT the NVIDIA daemon.\n"
        'if [ "$1" = "--version" ] || [ "$1" = "-v" ]; then\n'
        f'  echo "Fabric Manager version is : {version}"\n'
        "  exit 0\n"
        "fi\n"
        "exec sleep infinity\n"
    ).encode()


def profile(name: str) -> dict:
    """A copy of profile ``name``; ValueError naming the known profiles otherwise."""
    try:
        return copy.deepcopy(PROFILES[name])
    except KeyError:
        raise ValueError(f"unknown lab profile {name!r}; known: {', '.join(PROFILES)}") from None


def host_files(profile_name: str) -> dict[str, tuple[bytes, int]]:
    """Files to write into a lab host of profile ``profile_name``: path -> (content, mode)."""
    prof = profile(profile_name)
    files: dict[str, tuple[bytes, int]] = {
        PROFILE_FILE: ((json.dumps(prof, indent=2) + "\n").encode(), 0o644),
        "/etc/llmfleet-standin/README": (
            README.format(profile=profile_name, names=", ".join(PROFILES)).encode(), 0o644),
    }
    if prof["kind"] == "nvidia":
        files["/usr/bin/nvidia-smi"] = ((STANDIN_DIR / "nvidia_smi.py").read_bytes(), 0o755)
        if prof.get("nvswitches"):
            version = prof.get("fabricmanager_version") or prof["driver_version"]
            files["/usr/bin/nv-fabricmanager"] = (_fabricmanager_script(version), 0o755)
            files["/etc/systemd/system/nvidia-fabricmanager.service"] = (FABRICMANAGER_UNIT.encode(), 0o644)
    elif prof["kind"] == "ascend":
        files["/usr/local/bin/npu-smi"] = ((STANDIN_DIR / "npu_smi.py").read_bytes(), 0o755)
        files["/usr/local/Ascend/driver/version.info"] = (
            f"Version={prof['driver_version']}\nascendhal_version=7.35.23\naicpu_version=1.0\n"
            "tdt_version=1.0\nlog_version=1.0\nprof_version=2.0\ndvppkernels_version=1.1\n"
            "tsfw_version=1.0\n".encode(), 0o644)
        files["/etc/ascend_install.info"] = (
            b"UserName=HwHiAiUser\nUserGroup=HwHiAiUser\nFirmware_Install_Type=full\n"
            b"Firmware_Install_Path_Param=/usr/local/Ascend\nDriver_Install_Type=full\n"
            b"Driver_Install_Path_Param=/usr/local/Ascend\nDriver_Install_For_All=no\n", 0o644)
    return files


def device_binds(profile_name: str) -> list[str]:
    """Device paths the lab binds from /dev/null into a host of profile ``profile_name``."""
    prof = profile(profile_name)
    if prof["kind"] == "nvidia" and prof.get("state", "ok") != "no_driver":
        paths = [f"/dev/nvidia{i}" for i in range(len(prof.get("gpus", [])))]
        paths += ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
        if prof.get("nvswitches"):
            paths += ["/dev/nvidia-nvswitchctl"] + [f"/dev/nvidia-nvswitch{i}" for i in range(prof["nvswitches"])]
        return paths
    if prof["kind"] == "ascend":
        return ([f"/dev/davinci{i}" for i in range(len(prof["npus"]))]
                + ["/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"])
    return []


def enabled_units(profile_name: str) -> list[str]:
    """systemd units the lab enables (and starts) in a host of profile ``profile_name``."""
    prof = profile(profile_name)
    return ["nvidia-fabricmanager.service"] if prof.get("nvswitches") else []
