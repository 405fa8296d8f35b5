"""Rollout batches (pure): replicas in inventory order, cut by ``rollout_batch_size`` and
``rollout_max_unavailable`` (integers or percentages of the replicas), settings every replica must agree on."""

from __future__ import annotations

import math
from typing import Any

from tasks.rollout import DEFAULTS
from tasks.settings.rollout import RolloutSettings
from tasks.spec import SpecError


def count_of(value: Any, total: int, key: str) -> int:
    """An integer or a percentage of ``total`` ("25%": rounded up, at least 1) as a host count."""
    text = str(value).strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return max(1, math.ceil(total * pct / 100))
        number = int(text)
        if number < 1 or str(number) != text.lstrip("+"):
            raise ValueError
        return number
    except ValueError:
        raise SpecError(key, f"{value!r}: a whole number >= 1 or a percentage like '25%'") from None


def make_batches(hosts: list[str], batch_size: Any = 1, max_unavailable: Any = None,
                 enabled: bool = True, total: int | None = None) -> list[list[str]]:
    """Replicas (inventory order) in batches: each at most ``batch_size`` and ``max_unavailable``,
    percentages counted on ``total`` replicas (default: ``len(hosts)``)."""
    if not hosts:
        return []
    if not enabled:
        return [list(hosts)]
    total = len(hosts) if total is None else total
    size = count_of(batch_size, total, "rollout_batch_size")
    if max_unavailable is not None:
        size = min(size, count_of(max_unavailable, total, "rollout_max_unavailable"))
    return [list(hosts[i:i + size]) for i in range(0, len(hosts), size)]


def fleet_setting(datas: dict[str, Any], key: str) -> Any:
    """A setting that must be equal on every replica (each read through ``RolloutSettings``);
    SpecError naming two hosts that differ."""
    from tasks.settings import agreed

    if not datas:
        return DEFAULTS[key]
    return agreed(key, {name: RolloutSettings.value(data, key, name) for name, data in datas.items()},
                  "every replica of a rollout")


__all__ = ["count_of", "fleet_setting", "make_batches"]
