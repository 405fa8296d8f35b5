"""Bundles (air-gapped) settings (host data, prefix ``bundle_``): read by tasks.bundle."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tasks.settings.base import AbsPath, Settings


class BundleSettings(Settings):
    """Bundles (air-gapped): every ``bundle_*`` key of the host data."""

    prefix: ClassVar[str] = "bundle_"
    title: ClassVar[str] = "Bundles (air-gapped)"

    bundle_image: str | None = Field(
        None, description="image to bundle (e.g. ``vllm/vllm-openai:v0.18.0``); or bundle_recipe")
    bundle_recipe: str | None = Field(
        None, description="recipe whose image (pulled or built, see ensure_image) to bundle")
    bundle_name: str | None = Field(
        None, description="bundle file name without .tar (default: from the image)")
    bundle_remote_dir: AbsPath = Field(
        "/var/cache/llmfleet/bundles", description="where tars are written/uploaded on hosts")
    bundle_local_dir: str = Field(
        "bundles", description="where bundles land on the control machine (relative: to the repository root)")
