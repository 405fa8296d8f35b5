#!/usr/bin/env python3
"""STAND-IN for NVIDIA's dcgm-exporter (llmfleet lab). This is NOT dcgm-exporter.

Baked into the lab image under the real name (``nvcr.io/nvidia/k8s/dcgm-exporter:TAG``). It serves
``/metrics`` on ``:9400`` (``-a``/``--address`` as the real one) in dcgm-exporter's format: one
series per GPU and field, labels ``gpu``, ``UUID``, ``pci_bus_id``, ``device``, ``modelName``,
``Hostname``, ``DCGM_FI_DRIVER_VERSION``. The GPUs are those of the lab host's accelerator
profile (/etc/llmfleet-standin/accelerators.json, put into ``--gpus`` containers by the stand-in
nvidia-container-runtime-hook); with no profile it exits 1 as the real exporter does without NVML.

Fields (dcgm-exporter's default-counters.csv): ``DCGM_FI_DEV_GPU_UTIL``, ``DCGM_FI_DEV_FB_USED``,
``DCGM_FI_DEV_FB_FREE`` (MiB), ``DCGM_FI_DEV_GPU_TEMP`` (C), ``DCGM_FI_DEV_POWER_USAGE`` (W),
``DCGM_FI_DEV_XID_ERRORS`` (last XID, 0 none), ``DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS``,
``DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS``, ``DCGM_FI_DEV_ROW_REMAP_FAILURE``. Values come from the
profile; ``LLMFLEET_STANDIN_DCGM_OVERRIDES`` (JSON ``{"FIELD": value}`` or ``{"FIELD": {"GPU": value}}``)
sets others, for alert tests. Standard library only; imports nothing from llmfleet.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROFILE = os.environ.get("LLMFLEET_STANDIN_PROFILE", "/etc/llmfleet-standin/accelerators.json")
# field -> (type, help, profile key or None, default)
FIELDS = {
    "DCGM_FI_DEV_GPU_UTIL": ("gauge", "GPU utilization (in %).", "utilization_pct", 0),
    "DCGM_FI_DEV_FB_USED": ("gauge", "Framebuffer memory used (in MiB).", "memory_used_mib", 0),
    "DCGM_FI_DEV_FB_FREE": ("gauge", "Framebuffer memory free (in MiB).", None, 0),
    "DCGM_FI_DEV_GPU_TEMP": ("gauge", "GPU temperature (in C).", "temperature_c", 35),
    "DCGM_FI_DEV_POWER_USAGE": ("gauge", "Power draw (in W).", "power_draw_w", 0),
    "DCGM_FI_DEV_XID_ERRORS": ("gauge", "Value of the last XID error encountered.", None, 0),
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": ("counter", "Number of remapped rows for correctable errors", None, 0),
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": ("counter", "Number of remapped rows for uncorrectable errors",
                                                None, 0),
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": ("gauge", "Whether remapping of rows has failed", None, 0),
}


def load_profile() -> dict:
    with open(PROFILE) as fh:
        return json.load(fh)


def render(profile: dict, overrides: dict, hostname: str) -> str:
    lines = []
    gpus = profile.get("gpus") or []
    for field, (kind, help_, key, default) in FIELDS.items():
        lines += [f"# HELP {field} {help_}", f"# TYPE {field} {kind}"]
        for i, gpu in enumerate(gpus):
            value = gpu.get(key, default) if key else default
            if field == "DCGM_FI_DEV_FB_FREE":
                value = gpu.get("memory_total_mib", 0) - gpu.get("memory_reserved_mib", 0) - gpu.get("memory_used_mib", 0)
            o = overrides.get(field)
            if isinstance(o, dict):
                value = o.get(str(i), value)
            elif o is not None:
                value = o
            labels = (f'gpu="{i}",UUID="{gpu.get("uuid", "")}",pci_bus_id="{gpu.get("pci_bus_id", "")}",'
                      f'device="nvidia{i}",modelName="{gpu.get("name", "")}",Hostname="{hostname}",'
                      f'DCGM_FI_DRIVER_VERSION="{profile.get("driver_version", "")}"')
            lines.append(f"{field}{{{labels}}} {value}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    address = ":9400"
    for i, a in enumerate(argv):
        if a in ("-a", "--address") and i + 1 < len(argv):
            address = argv[i + 1]
        elif a.startswith("--address="):
            address = a.split("=", 1)[1]
    try:
        profile = load_profile()
    except (OSError, ValueError):
        print("level=fatal msg=\"Error starting nv-hostengine: DCGM initialization error\" "
              "(llmfleet stand-in: no GPU profile; run with --gpus all)", file=sys.stderr)
        return 1
    overrides = json.loads(os.environ.get("LLMFLEET_STANDIN_DCGM_OVERRIDES") or "{}")
    hostname = os.environ.get("NODE_NAME") or socket.gethostname()
    host, _, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_response(404)
                self.end_headers()
                return
            body = render(profile, overrides, hostname).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    print(f"level=info msg=\"Starting webserver\" address={address} (llmfleet stand-in, not dcgm-exporter)",
          flush=True)
    ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
