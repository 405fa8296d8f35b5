"""Model deploy settings (host data, prefix ``model_``): read by tasks.model."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tasks.settings.base import Settings


class ModelSettings(Settings):
    """Model deploy: every ``model_*`` key of the host data."""

    prefix: ClassVar[str] = "model_"
    title: ClassVar[str] = "Model deploy"

    model_preflight: bool = Field(
        True, description="run preflight (False only for hosts checked out of band)")
    model_variant: str | None = Field(
        None, description="variant of a multi-variant deploy (deploys/qwen235b.py: awq or gptq)")
