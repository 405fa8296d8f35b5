"""Smoke settings (host data, prefix ``smoke_``): read by tasks.smoke."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tasks.settings.base import PinnedImage, Port, Settings


class SmokeSettings(Settings):
    """Smoke: every ``smoke_*`` key of the host data."""

    prefix: ClassVar[str] = "smoke_"
    title: ClassVar[str] = "Smoke"

    smoke_image: PinnedImage = Field(
        "llmfleet-lab/smoke:1", description="pinned image the unit runs (the lab registry serves it)")
    smoke_port: Port = Field(
        18000, description="host port the container answers on")
