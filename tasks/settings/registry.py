"""Every capability's settings model, in the order of a deploy, and what host data may say.

:func:`unknown_keys` names each key that carries a capability's prefix but is no setting
(``weights_fanoutt``), or that misses a known key by a typo in its prefix (``servee_max_model_len``),
with the nearest known key. Keys of other prefixes (``ssh_*``, an inventory's own) are not ours to judge.
"""

from __future__ import annotations

import difflib
import functools
from typing import Iterable

from tasks.settings.ascend import AscendSettings
from tasks.settings.base import Settings
from tasks.settings.bench import BenchSettings
from tasks.settings.bundle import BundleSettings
from tasks.settings.docker import DockerSettings
from tasks.settings.gateway import GatewaySettings
from tasks.settings.image import ImageSettings
from tasks.settings.image_build import ImageBuildSettings
from tasks.settings.model import ModelSettings
from tasks.settings.monitoring import MonitoringSettings
from tasks.settings.nvidia_toolkit import NvidiaToolkitSettings
from tasks.settings.preflight import PreflightSettings
from tasks.settings.replica import ReplicaSettings
from tasks.settings.rollout import RolloutSettings
from tasks.settings.runtime import RuntimeSettings
from tasks.settings.secrets import SecretsSettings
from tasks.settings.service import ServiceSettings
from tasks.settings.smoke import SmokeSettings
from tasks.settings.status import StatusSettings
from tasks.settings.verify import VerifySettings
from tasks.settings.weights import WeightsSettings

#: In the order of a deploy (README.md's table follows it).
CAPABILITIES: tuple[type[Settings], ...] = (
    PreflightSettings, RuntimeSettings, DockerSettings, NvidiaToolkitSettings, AscendSettings, SecretsSettings,
    WeightsSettings,
    ImageSettings, ImageBuildSettings, BundleSettings, ModelSettings, ServiceSettings, VerifySettings,
    BenchSettings, SmokeSettings, ReplicaSettings, RolloutSettings, GatewaySettings, StatusSettings, MonitoringSettings,
)
#: Read only on hosts of that accelerator: another accelerator's settings are not checked there.
ACCELERATOR_ONLY: dict[type[Settings], str] = {NvidiaToolkitSettings: "nvidia", AscendSettings: "ascend"}


@functools.cache
def model_of(key: str) -> type[Settings]:
    """The capability model that declares setting ``key``; KeyError naming it when none does."""
    for model in CAPABILITIES:
        if key in model.model_fields:
            return model
    raise KeyError(f"{key!r} is no llmfleet setting")


def known_keys() -> frozenset[str]:
    """Every host-data key llmfleet reads: the capabilities' settings and ``serve_<field>``."""
    from tasks.spec import OVERRIDE_PREFIX, ServingSpec

    keys = {OVERRIDE_PREFIX + name for name in ServingSpec.model_fields}
    for model in CAPABILITIES:
        keys |= set(model.model_fields)
    return frozenset(keys)


def unknown_keys(keys: Iterable[str]) -> list[tuple[str, str]]:
    """``(key, message)`` for each key of ``keys`` that looks like a setting but is none.

    ``serve_*`` keys are left to ``tasks.spec`` (nested ``serve_a__b`` paths are its to check).

    + keys: host data keys
    """
    from tasks.spec import OVERRIDE_PREFIX

    known = known_keys()
    prefixes = tuple(model.prefix for model in CAPABILITIES)
    problems = []
    for key in sorted(keys):
        if key in known or key.startswith(OVERRIDE_PREFIX):
            continue
        if key.startswith(prefixes):
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean {near[0]}?" if near else "see the settings table in README.md"
            problems.append((key, f"unknown setting; {hint}"))
            continue
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.85)
        if near:
            problems.append((key, f"unknown setting; did you mean {near[0]}?"))
    return problems


def agreed(key: str, values: dict[str, object], scope: str) -> object:
    """The one value of a fleet-wide setting; SpecError naming two hosts that differ.

    + key: the setting
    + values: host name -> its value (defaults already applied)
    + scope: what must agree, for the message ("every replica of a rollout")
    """
    from tasks.spec import SpecError

    items = list(values.items())
    first_host, first = items[0]
    for name, value in items[1:]:
        if value != first:
            raise SpecError(key, f"must be equal on {scope}: {first_host} has {first!r}, {name} has {value!r}")
    return first


__all__ = ["ACCELERATOR_ONLY", "CAPABILITIES", "agreed", "known_keys", "model_of", "unknown_keys"]
