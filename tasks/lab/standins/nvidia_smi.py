#!/usr/bin/env python3
"""llmfleet lab stand-in for nvidia-smi: NOT the NVIDIA tool.

Installed in lab hosts (systemd-nspawn containers without GPUs) as /usr/bin/nvidia-smi. It reads the host's
accelerator profile, /etc/llmfleet-standin/accelerators.json (env LLMFLEET_STANDIN_PROFILE overrides the
path), and answers byte for byte like the real tool does for the forms llmfleet uses:

  nvidia-smi --query-gpu=FIELD[,FIELD...] --format=csv[,noheader][,nounits] [-i IDS]
  nvidia-smi --version | -L | (no arguments: the summary table)

Profile states: "ok"; "nvml_mismatch" (driver/library mismatch, exit 18); "no_gpu" (exit 6);
"no_driver" (kernel module not loaded, exit 9). Only the file's own comments and --help name it a
stand-in: answers stay identical to the real tool's, because llmfleet parses them.
Standard library only (Python 3.11); it must not import llmfleet.
"""

import json
import os
import sys
import time

PROFILE_PATH = "/etc/llmfleet-standin/accelerators.json"

MISMATCH_RC = 18
NO_GPU_RC = 6
NO_DRIVER_RC = 9
BAD_ARG_RC = 2

# field -> (gpu key, unit printed with values and in the header unless nounits)
FIELDS = {
    "index": ("index", None),
    "name": ("name", None),
    "gpu_name": ("name", None),
    "uuid": ("uuid", None),
    "gpu_uuid": ("uuid", None),
    "driver_version": ("driver_version", None),
    "memory.total": ("memory_total_mib", "MiB"),
    "memory.used": ("memory_used_mib", "MiB"),
    "memory.free": ("memory_free_mib", "MiB"),
    "memory.reserved": ("memory_reserved_mib", "MiB"),
    "pci.bus_id": ("pci_bus_id", None),
    "pcie.link.gen.current": ("pcie_gen_current", None),
    "pcie.link.gen.max": ("pcie_gen_max", None),
    "pcie.link.width.current": ("pcie_width_current", None),
    "pcie.link.width.max": ("pcie_width_max", None),
    "compute_cap": ("compute_cap", None),
    "persistence_mode": ("persistence_mode", None),
    "mig.mode.current": ("mig_mode", None),
    "temperature.gpu": ("temperature_c", None),
    "power.draw": ("power_draw_w", "W"),
    "utilization.gpu": ("utilization_pct", "%"),
}


def load_profile():
    path = os.environ.get("LLMFLEET_STANDIN_PROFILE", PROFILE_PATH)
    with open(path, encoding="utf-8") as handle:
        profile = json.load(handle)
    return profile


def gpu_values(profile, gpu):
    """A GPU's values with the derived ones (used/free/reserved, driver) filled in."""
    values = dict(gpu)
    total = gpu["memory_total_mib"]
    reserved = gpu.get("memory_reserved_mib", 0)
    used = gpu.get("memory_used_mib", 0)
    values.setdefault("memory_free_mib", total - reserved - used)
    values["memory_used_mib"] = used
    values["memory_reserved_mib"] = reserved
    values.setdefault("driver_version", profile["driver_version"])
    return values


def format_cell(value, unit, nounits):
    if value is None:
        return "[N/A]"
    text = str(value)
    if unit and not nounits and not text.startswith("["):
        return f"{text} %" if unit == "%" else f"{text} {unit}"
    return text


def selected_gpus(profile, ids):
    gpus = profile.get("gpus", [])
    if ids is None:
        return list(enumerate(gpus))
    chosen = []
    for part in ids.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) >= len(gpus):
            return None
        chosen.append((int(part), gpus[int(part)]))
    return chosen


def query(profile, fields_arg, format_arg, ids, out):
    options = [opt.strip() for opt in format_arg.split(",")]
    if "csv" not in options:
        out.write('"--format=" switch is missing a required "csv" option.\n\n')
        return BAD_ARG_RC
    fields = [field.strip() for field in fields_arg.split(",")]
    for field in fields:
        if field not in FIELDS:
            out.write(f'Field "{field}" is not a valid field to query.\n\n')
            return BAD_ARG_RC
    gpus = selected_gpus(profile, ids)
    if gpus is None:
        out.write("No devices were found\n")
        return NO_GPU_RC
    noheader, nounits = "noheader" in options, "nounits" in options
    if not noheader:
        header = []
        for field in fields:
            unit = FIELDS[field][1]
            header.append(f"{field} [{unit}]" if unit and not nounits else field)
        out.write(", ".join(header) + "\n")
    for index, gpu in gpus:
        values = gpu_values(profile, gpu)
        values["index"] = index
        cells = [format_cell(values.get(FIELDS[f][0]), FIELDS[f][1], nounits) for f in fields]
        out.write(", ".join(cells) + "\n")
    return 0


def version(profile, out):
    driver = profile["driver_version"]
    nvml = profile.get("nvml_version") or ".".join(driver.split(".")[:2])
    out.write(f"NVIDIA-SMI version  : {driver}\n")
    out.write(f"NVML version        : {nvml}\n")
    out.write(f"DRIVER version      : {driver}\n")
    out.write(f"CUDA Version        : {profile['cuda_version']}\n")
    return 0


def list_gpus(profile, out):
    for index, gpu in enumerate(profile.get("gpus", [])):
        uuid = gpu.get("uuid", f"GPU-{index:08d}-0000-0000-0000-000000000000")
        out.write(f"GPU {index}: {gpu['name']} (UUID: {uuid})\n")
    return 0


def table(profile, out):
    driver = profile["driver_version"]
    new_style = int(driver.split(".")[0]) >= 580
    stamp = profile.get("timestamp") or time.asctime()
    wide = "+" + "-" * 89 + "+"
    cols = "+-----------------------------------------+------------------------+----------------------+"
    lines = [stamp + " " * 7, wide,
             f"| NVIDIA-SMI {driver:<23}Driver Version: {driver:<15}CUDA Version: {profile['cuda_version']:<9}|",
             cols if new_style else "|" + cols[1:-1] + "|",
             "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |",
             "| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |",
             "|                                         |                        |               MIG M. |",
             "|=========================================+========================+======================|"]
    for index, gpu in enumerate(profile.get("gpus", [])):
        v = gpu_values(profile, gpu)
        pers = "On" if v.get("persistence_mode") == "Enabled" else "Off"
        fan = v.get("fan") or "N/A"
        mig = v.get("mig_mode") or "N/A"
        lines.append(f"|{index:>4}  {v['name']:<31}{pers:<3} |   {v['pci_bus_id']} {v.get('display_active', 'Off'):>3} |"
                     f"{v.get('ecc', 'N/A'):>21} |")
        lines.append(f"| {fan:>3}  {v.get('temperature_c', 30):>3}C    {v.get('perf', 'P8'):<2}"
                     f"{v.get('power_draw_w', 10):>15}W / {v.get('power_limit_w', 450):>4}W |"
                     f"{v['memory_used_mib']:>8}MiB / {v['memory_total_mib']:>6}MiB |"
                     f"{v.get('utilization_pct', 0):>7}%{v.get('compute_mode', 'Default'):>13} |")
        lines.append(f"|{'':41}|{'':24}|{mig:>21} |")
        lines.append(cols)
    lines.append("" if new_style else " " * 89)
    lines.append(wide)
    lines.append("| Processes:" + " " * 78 + "|")
    if new_style:
        lines.append("|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |")
    else:
        lines.append("|  GPU   GI   CI        PID   Type   Process name                              GPU Memory |")
    lines.append("|        ID   ID                                                               Usage      |")
    lines.append("|" + "=" * 89 + "|")
    lines.append("|  No running processes found" + " " * 61 + "|")
    lines.append(wide)
    out.write("\n".join(lines) + "\n")
    return 0


def main(argv):
    out = sys.stdout
    if argv and argv[0] in ("-h", "--help"):
        out.write("llmfleet lab stand-in for nvidia-smi (not the NVIDIA tool).\n"
                  "Forms: --query-gpu=... --format=csv[,noheader][,nounits] [-i IDS] | --version | -L\n")
        return 0
    try:
        profile = load_profile()
    except (OSError, ValueError):
        # what the real tool says when it cannot reach a driver
        out.write("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                  "Make sure that the latest NVIDIA driver is installed and running.\n\n")
        return NO_DRIVER_RC
    state = profile.get("state", "ok")
    if argv and argv[0] == "--version" and state != "no_driver":
        return version(profile, out)
    if state == "nvml_mismatch":
        lib = profile.get("nvml_library_version") or ".".join(profile["driver_version"].split(".")[:2])
        out.write("Failed to initialize NVML: Driver/library version mismatch\n")
        out.write(f"NVML library version: {lib}\n")
        return MISMATCH_RC
    if state == "no_driver":
        out.write("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                  "Make sure that the latest NVIDIA driver is installed and running.\n\n")
        return NO_DRIVER_RC
    if state == "no_gpu" or not profile.get("gpus"):
        out.write("No devices were found\n")
        return NO_GPU_RC

    fields = fmt = ids = None
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--query-gpu="):
            fields = arg.split("=", 1)[1]
        elif arg == "--query-gpu" and i + 1 < len(args):
            i += 1
            fields = args[i]
        elif arg.startswith("--format="):
            fmt = arg.split("=", 1)[1]
        elif arg == "--format" and i + 1 < len(args):
            i += 1
            fmt = args[i]
        elif arg.startswith("--id="):
            ids = arg.split("=", 1)[1]
        elif arg in ("-i", "--id") and i + 1 < len(args):
            i += 1
            ids = args[i]
        elif arg in ("-L", "--list-gpus"):
            return list_gpus(profile, out)
        else:
            out.write("\nInvalid combination of input arguments. Please run 'nvidia-smi -h' for help.\n\n")
            return BAD_ARG_RC
        i += 1
    if fields is not None:
        return query(profile, fields, fmt or "", ids, out)
    return table(profile, out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
