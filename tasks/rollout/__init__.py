"""Rolling upgrade of a served model across its replicas, with a verification gate per host,
automatic rollback, and drain/undrain on the fleet's gateways. ``deploy_model`` always takes this
path: a fleet whose service changes restarts in batches; a replica whose service is converged is in
no batch and gets no service operation.

Order of a run (pyinfra runs each operation on all hosts, then the next):

0. planning, once per run (``tasks.fleet.fleet_plan`` -> :func:`make_plan`): every replica's
   service is read in one parallel pass (``ServiceVersion``: running image, unit state, rollback
   point, and the digests of the files ``tasks.service.serve`` writes) and compared with what this
   run would write
   (``tasks.service.pending``). Only replicas with a difference are batched; a no-op run of a
   converged fleet has no batch, so no barrier and no host waiting on another.

1. staging, all replicas in parallel: preflight, runtime, *rollback point*, weights, image. The
   new image is pulled and the new weights downloaded while the old container serves, so a host
   is down only for its restart. (The weights task switches ``<model_dir>/current`` when its
   download is verified; the running container keeps the directory it mounted at start.)
2. per batch ``b`` of replicas (``rollout_batch_size`` hosts, at most ``rollout_max_unavailable``):
   gateways drain the batch's hosts whose service will restart -> the batch writes its unit and
   restarts (``tasks.service.serve``) -> *gate*: the endpoint probe (``tasks/probe``) ->
   on failure: *roll back* (previous unit, env file, chat templates, verification config,
   ``current`` link; restart), verify again, record and fail the host -> gateways put the batch
   back: hosts that passed their gate, and a rolled-back host whose old version verified again.
3. hosts whose batch never ran (the rollout stopped) get their ``current`` link put back to the
   rollback point, so a later crash-restart of their old unit still finds the old weights.

Batches become pyinfra's operation order through three *barrier* operations per batch that every
host of the run calls from the same lines (same operation hash on all hosts, so the DAG of
``State.get_op_order`` is one chain: begin -> drain -> drained -> restart/gate -> gated -> put back).
This relies on pyinfra's CLI ordering (operation hash from the call site): ``pyinfra INV
deploys/<recipe>.py``. In pyinfra's API mode (``add_deploy``) hashes come from each host's
operation count instead, so hosts with different staging would not meet at the barriers; API
users set ``pyinfra.is_cli = True`` (tests/unit/test_rollout.py does).
Batch ``b``'s operations carry ``_if=plan.opener(b)``: once a host of an earlier batch failed
after the rollout began, no later batch touches anything (the "rollout marker" is pyinfra's own
``state.failed_hosts``, minus hosts that had failed before the first batch, e.g. refused by
preflight or a failed download). The failed host's run fails with a message naming the host,
the batch, the probe's reason, what it was rolled back to, and the hosts left on the old version.

By concern: ``batches.py`` (batch sizes, pure), ``plan.py`` (the run's read-only plan and the
progress pyinfra's results give while it executes), ``service_version.py`` (the fact: the running
version and its rollback point), ``operations.py`` (rollback point, gate, roll back, outcome,
barrier), ``deploy.py`` (the operations of a host in batch order).

Replicas are the hosts outside the gateway group that run the recipe; they must agree on
``served_model_name`` (one gateway endpoint) but may differ in service name and port (several
replicas on one machine, as the 8-replica benchmark does); gateway files are named after the
first replica's service name.

Rollback point: ``<service_etc_dir>/<name>.previous/`` (0750 root) holds ``unit``, ``env``
(0600), ``templates/``, ``verify.json`` and ``state.json`` (image the container ran, ``current``
link target, no secret). It is the *last verified* version: written before staging when the
service is running and the point is missing or stale, and again after a passed gate. A converged
run writes nothing. Each rollout outcome is kept on the host in ``<name>.rollout.json`` and the
gate's probe result in ``<name>.last-verify.json`` (read by ``deploys/status.py``).

Settings (host data, prefix ``rollout_``; batch keys must be equal on every replica):
``tasks.settings.rollout.RolloutSettings``, each key described there once (README.md's settings table
is generated from it).
"""


from __future__ import annotations

from typing import Any

from tasks.settings.rollout import RolloutSettings

DEFAULTS: dict[str, Any] = RolloutSettings.defaults()
BATCH_KEYS = ("rollout_enabled", "rollout_batch_size", "rollout_max_unavailable")
UPGRADED, ROLLED_BACK, ROLLBACK_FAILED = "upgraded", "rolled_back", "rollback_failed"

# The parts, after the settings they read (``from tasks.rollout import DEFAULTS``).
from tasks.rollout.batches import count_of, fleet_setting, make_batches  # noqa: E402
from tasks.rollout.service_version import (Paths, ServiceVersion, fact_args, point_is_current,  # noqa: E402
                                           point_unneeded)
from tasks.rollout.operations import (barrier, finished, gate, outcome_of, probe_error,  # noqa: E402
                                      rollback_point, rolled_back, weights_held)
from tasks.rollout.plan import Plan, Progress, desired_service, make_plan, progress_of  # noqa: E402
from tasks.rollout.deploy import point_kept, rolling, upgrade_summary, what_changed  # noqa: E402

__all__ = ["BATCH_KEYS", "DEFAULTS", "Paths", "Plan", "Progress", "ROLLBACK_FAILED", "ROLLED_BACK", "ServiceVersion",
           "UPGRADED", "barrier", "count_of", "desired_service", "fact_args", "finished", "fleet_setting", "gate",
           "make_batches", "make_plan", "outcome_of", "point_is_current", "point_kept", "point_unneeded",
           "probe_error", "progress_of", "rollback_point", "rolled_back", "rolling", "upgrade_summary",
           "weights_held", "what_changed"]
