"""Taking a model off a host: host data ``serve_state: absent`` on a recipe's deploy.

``pyinfra INV deploys/qwen30b.py --limit gpu-01 --data serve_state=absent`` (or the key in the
inventory) removes that recipe's service from the host and from the fleet's gateways, in this order:

1. the gateways mark the leaving replica ``down`` and wait for the requests it is serving
   (``gateway_drain_timeout_s``), as a rolling upgrade drains a batch;
2. on the host: the unit is stopped and disabled; the unit file, env file (secrets), verification
   config, chat templates, rollback point, rollout record, last verification and the service's
   compile cache are removed (and a former multi-node worker's head-watch unit, stopped and disabled
   first); systemd reloads its units;
3. the gateways' upstream is written without it.

The weights stay (``<weights_root>/<owner>--<name>``): other recipes may serve them, and fetching
hundreds of GB again costs hours; delete them by hand when no unit mounts them. Other models on
the host are not touched: they keep their units, containers and GPUs. A host that has nothing
left of the service gets no operation, so a second run reports no change.

Which paths are left is read at plan time, in the rollout plan's one parallel read of every
replica (``tasks.rollout.ServiceVersion`` with :func:`leaving_paths`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyinfra.api import deploy
from pyinfra.operations import files, systemd

from tasks.converge import unit_removed

if TYPE_CHECKING:  # both import this module's callers' modules; only their types are used here
    from tasks.rollout import Paths
    from tasks.service import Desired

ABSENT = "absent"


def leaving_paths(want: "Desired", paths: "Paths") -> list[str]:
    """Every host path of a service that removal deletes (the weights are not among them)."""
    lay = want.layout
    return [paths.unit_file, want.watch_file, paths.env_file, paths.verify_config, paths.template_dir,
            paths.previous, paths.record, paths.last_verify, lay.cache_dir]


def leftovers(observed: dict[str, Any], candidates: list[str]) -> list[str]:
    """What of a leaving service is still on its host: existing paths, and the unit while systemd
    still has it loaded or running (``ServiceVersion`` of ``candidates``)."""
    present = [p for p in candidates if p in (observed.get("files") or {})]
    unit = observed.get("unit") or {}
    if unit.get("ActiveState") not in (None, "", "inactive") or unit.get("UnitFileState") not in (None, ""):
        present.append("unit")
    return present


@deploy("Remove model")
def remove_service(name: str, unit: str, unit_file: str, watch_file: str, left: list[str]) -> None:
    """
    Stop, disable and delete one model's service on the current host (what ``left`` names).

    + name: the recipe name (operation names)
    + unit: ``llmfleet-<name>.service``
    + unit_file: its file under /etc/systemd/system
    + watch_file: the head-watch unit's file a multi-node worker has (``Desired.watch_file``): a unit of
      its own, stopped and disabled before it is deleted
    + left: :func:`leftovers` of the plan's read (paths, and ``"unit"`` while systemd has it)

    Example:

    .. code:: python

        remove_service("qwen30b", "llmfleet-qwen30b.service", "/etc/systemd/system/llmfleet-qwen30b.service",
                       "/etc/systemd/system/llmfleet-qwen30b-headwatch.service",
                       ["unit", "/etc/systemd/system/llmfleet-qwen30b.service"])
    """
    if "unit" in left or unit_file in left:
        systemd.service(name=f"{name}: stop and disable", service=unit, running=False, enabled=False)
    removed = {}
    for path in left:
        if path == "unit":
            continue
        if path == watch_file:  # a former multi-node worker's head watch
            unit_removed(name=f"{name}: remove head watch {Path(path).name}", unit=Path(path).name, unit_file=path)
            continue
        # Files by their names (unit, env, json); the rest are directories (templates, rollback point, cache).
        op = files.file if path == unit_file or path.endswith((".env", ".json")) else files.directory
        removed[path] = op(name=f"{name}: remove {path}", path=path, present=False)
    if unit_file in removed:
        systemd.daemon_reload(name=f"{name}: systemd forgets the unit", _if=removed[unit_file].did_change)


__all__ = ["ABSENT", "leaving_paths", "leftovers", "remove_service"]
