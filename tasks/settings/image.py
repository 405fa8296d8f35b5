"""Image settings (host data, prefix ``image_``): read by tasks.image."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tasks.settings.base import Settings


class ImageSettings(Settings):
    """Image: every ``image_*`` key of the host data."""

    prefix: ClassVar[str] = "image_"
    title: ClassVar[str] = "Image"

    image_mirrors: dict[str, str] = Field(
        {}, description="registry host -> mirror host[:port] for non-Docker-Hub images "
                        '(e.g. {"quay.io": "mirror.local:5000"})')
