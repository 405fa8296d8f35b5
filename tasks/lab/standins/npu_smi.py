#!/usr/bin/env python3
"""llmfleet lab stand-in for Huawei's npu-smi: NOT the Ascend tool.

Installed in lab hosts as /usr/local/bin/npu-smi. Reads /etc/llmfleet-standin/accelerators.json (env
LLMFLEET_STANDIN_PROFILE overrides the path) and answers ``npu-smi info`` with the box table of the real
tool (24.1 layout: two lines per device, then the process table), so that llmfleet's parser sees what it
sees on an Atlas 800 A2 (8 x 910B). Only this comment and -h name it a stand-in.
Standard library only (Python 3.11); it must not import llmfleet.
"""

import json
import os
import sys

PROFILE_PATH = "/etc/llmfleet-standin/accelerators.json"

WIDE = "+" + "-" * 96 + "+"
COLS = "+---------------------------+---------------+----------------------------------------------------+"
EQ = "+===========================+===============+====================================================+"


def info(profile, out):
    version = profile["npu_smi_version"]
    lines = [WIDE, f"| npu-smi {version:<25}Version: {version:<53}|", COLS,
             "| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|",
             "| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |",
             EQ]
    npus = profile.get("npus", [])
    for index, npu in enumerate(npus):
        lines.append(f"| {index:<6}{npu['name']:<20}| {npu.get('health', 'OK'):<14}| "
                     f"{npu.get('power_w', 95.0):<12}{npu.get('temp_c', 40):<18}"
                     f"{npu.get('hugepages_used', 0):<5}/ {npu.get('hugepages_total', 0):<14}|")
        lines.append(f"| {npu.get('chip', 0):<26}| {npu['bus_id']:<14}| {npu.get('aicore_pct', 0):<12}"
                     f"{npu.get('memory_used_mb', 0):<5}/ {npu.get('memory_total_mb', 0):<11}"
                     f"{npu['hbm_used_mb']:<5}/ {npu['hbm_total_mb']:<14}|")
        lines.append(EQ)
    lines.append(COLS)
    lines.append("| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |")
    lines.append(EQ)
    for index in range(len(npus)):
        lines.append(f"| {'No running processes found in NPU ' + str(index):<95}|")
        lines.append(EQ)
    out.write("\n".join(lines) + "\n")
    return 0


def main(argv):
    out = sys.stdout
    if argv and argv[0] in ("-h", "--help"):
        out.write("llmfleet lab stand-in for npu-smi (not the Ascend tool). Forms: info\n")
        return 0
    try:
        with open(os.environ.get("LLMFLEET_STANDIN_PROFILE", PROFILE_PATH), encoding="utf-8") as handle:
            profile = json.load(handle)
    except (OSError, ValueError):
        out.write("dcmi module initialize failed. ret is -8005\n")
        return 1
    if argv == ["info"]:
        return info(profile, out)
    out.write("Error: command is invalid. Please run 'npu-smi -h' for help.\n")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
