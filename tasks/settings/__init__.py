"""Settings: every capability's host-data keys as one typed model each (``tasks/settings/<capability>.py``).

A capability's model (a :class:`~tasks.settings.base.Settings`) holds each key once: its default, its
type (what is allowed) and its description. From it come pyinfra's ``data_defaults``
(``Model.defaults()``), the validated values a deploy reads (``Model.of(host)``), the bad-input
problems listed before any host is touched (``Model.problems(data, host)``), the typo check of host
data keys (:func:`unknown_keys`) and README.md's settings table (``python -m tasks.settings --write``).

Models import nothing of the capabilities they describe, so a capability module imports its model
without a cycle.
"""

from tasks.settings.base import Settings
from tasks.settings.registry import ACCELERATOR_ONLY, CAPABILITIES, agreed, known_keys, unknown_keys
from tasks.settings.table import README, collect, current_section, render

__all__ = ["ACCELERATOR_ONLY", "CAPABILITIES", "README", "Settings", "agreed", "collect", "current_section",
           "known_keys", "render", "unknown_keys"]
