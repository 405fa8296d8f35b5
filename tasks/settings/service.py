"""Service settings (host data, prefix ``service_``): read by tasks.service."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field

from tasks.settings.base import AbsPath, Positive, Settings, Text, checked


#: docker run --ulimit names.
ULIMIT_NAMES = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
                "nproc", "rss", "rtprio", "rttime", "sigpending", "stack")
UlimitValue = checked(lambda v: bool(re.match(r"^-?[0-9]+(:-?[0-9]+)?$", v)),
                      "an integer or soft:hard (-1: unlimited)", "integers or soft:hard (-1: unlimited)", Text)
ShmSize = checked(lambda v: bool(re.match(r"^[0-9]+[bkmg]?$", v)), "a size like 16g (docker --shm-size)")


class ServiceSettings(Settings):
    """Service: every ``service_*`` key of the host data."""

    prefix: ClassVar[str] = "service_"
    title: ClassVar[str] = "Service"

    service_cache_root: AbsPath = Field(
        "/var/cache/llmfleet", description="host directory of per-service caches")
    service_etc_dir: AbsPath = Field(
        "/etc/llmfleet", description="host directory of env files (0600), templates and verification configs; 0750 "
                                     "root")
    service_ulimits: dict[Literal[ULIMIT_NAMES], UlimitValue] = Field(
        {"memlock": "-1", "stack": "67108864"}, description="``--ulimit NAME=VALUE`` per entry (a host without "
                                                            "CAP_SYS_RESOURCE cannot raise memlock past its hard "
                                                            "limit: set it to that)")
    service_shm_size: ShmSize = Field(
        "16g", description="``--shm-size`` when the spec sets neither ``shm_size`` nor ``ipc_host``")
    service_restart_sec: Positive = Field(
        15, description="seconds between restarts after a failure")
    service_start_limit_burst: Positive = Field(
        5, description="starts allowed per interval before the unit stays failed")
    service_start_limit_interval_s: Positive = Field(
        1800, description="the interval of that limit")
    service_stop_grace_s: Positive = Field(
        60, description="``docker stop -t``: seconds vLLM gets to drain before SIGKILL")
