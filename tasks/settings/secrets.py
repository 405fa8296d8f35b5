"""Secrets settings (host data, prefix ``secrets_``): read by tasks.secrets."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tasks.settings.base import Settings


class SecretsSettings(Settings):
    """Secrets: every ``secrets_*`` key of the host data."""

    prefix: ClassVar[str] = "secrets_"
    title: ClassVar[str] = "Secrets"

    secrets_dir: str | None = Field(
        None, description="control-machine directory of secret files; None: ``$LLMFLEET_SECRETS_DIR``, else "
                          "``<repo>/secrets``")
