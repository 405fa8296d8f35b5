"""Verification settings (host data, prefix ``verify_``): read by tasks.verify."""

from __future__ import annotations

from typing import Annotated, ClassVar

from annotated_types import Ge

from pydantic import Field

from tasks.settings.base import Settings


class VerifySettings(Settings):
    """Verification: every ``verify_*`` key of the host data."""

    prefix: ClassVar[str] = "verify_"
    title: ClassVar[str] = "Verification"

    verify_wait_s: Annotated[int, Ge(0)] = Field(
        30, description="on-demand verification: seconds to wait for /health per service")
    verify_report_dir: str = Field(
        "reports/verify", description="control-machine directory of ``<host>.json`` results")
