"""Rolling upgrades settings (host data, prefix ``rollout_``): read by tasks.rollout."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field

from tasks.settings.base import Allowed, Positive, Settings


def _count(value: int | str) -> int | str:
    """A host count as ``tasks.rollout.count_of`` reads it (the one parser of counts)."""
    from tasks.rollout.batches import count_of  # late: tasks.rollout imports this module
    from tasks.spec import SpecError

    try:
        count_of(value, 1, "count")
    except SpecError as exc:
        raise ValueError(f"{value!r}: allowed: {exc.problems[0][1].split(': ', 1)[1]}") from None
    return value


#: An integer >= 1 or a percentage of the replicas ("25%").
Count = Annotated[int | str, AfterValidator(_count), Allowed("a whole number >= 1 or a percentage like '25%'")]


class RolloutSettings(Settings):
    """Rolling upgrades: every ``rollout_*`` key of the host data. The batch keys (``rollout_enabled``,
    ``rollout_batch_size``, ``rollout_max_unavailable``) must be equal on every replica of a rollout
    (``tasks.rollout.fleet_setting``)."""

    prefix: ClassVar[str] = "rollout_"
    title: ClassVar[str] = "Rolling upgrades"

    rollout_enabled: bool = Field(
        True, description="False: one batch with every replica (all restart at once)")
    rollout_batch_size: Count = Field(
        1, description='replicas per batch: an integer, or a percentage of the replicas ("25%", at least 1)')
    rollout_max_unavailable: Count | None = Field(
        None, description="cap on replicas restarting at once (integer or percentage); None: no cap")
    rollout_gate_wait_s: Positive | None = Field(
        None, description="seconds the gate waits for /health; None: the recipe's start-up budget")
