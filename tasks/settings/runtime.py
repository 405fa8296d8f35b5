"""Runtime settings (host data, prefix ``runtime_``): read by deploys/bringup.py, deploys/smoke.py and
tasks.monitoring.fleet (a host served by a recipe takes the recipe's accelerator)."""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

from pydantic import Field

from tasks.settings.base import Settings

Accelerator = Literal["nvidia", "ascend", "cpu", "none"]
ACCELERATORS: tuple[str, ...] = get_args(Accelerator)


class RuntimeSettings(Settings):
    """Runtime: every ``runtime_*`` key of the host data."""

    prefix: ClassVar[str] = "runtime_"
    title: ClassVar[str] = "Runtime"

    runtime_accelerator: Accelerator | None = Field(
        None, description="accelerator of a host brought up without a recipe; None: nvidia for "
                          "``deploys/bringup.py``, none for ``deploys/smoke.py`` and monitoring")
