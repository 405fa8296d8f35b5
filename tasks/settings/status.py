"""Status settings (host data, prefix ``status_``): read by tasks.status."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tasks.settings.base import Seconds, Settings


class StatusSettings(Settings):
    """Status: every ``status_*`` key of the host data."""

    prefix: ClassVar[str] = "status_"
    title: ClassVar[str] = "Status"

    status_report_dir: str = Field(
        "reports/status", description="control-machine directory of ``<timestamp>.json``")
    status_http_timeout_s: Seconds = Field(
        3, description="timeout of the /health and /version requests")
    status_progress_interval_s: float = Field(
        10.0, ge=0, description="seconds between the progress lines a run prints per host while a long operation "
        "(weights fetch, image pull or build, a replica starting) runs; 0: none")
