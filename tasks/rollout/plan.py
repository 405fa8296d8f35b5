"""The rollout of one service in one run: the read-only :class:`Plan`, built once before any
host's operation from one parallel read of every replica's service, and the :class:`Progress`
pyinfra's own results give while the run executes (failed hosts, the gates' outcomes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from pyinfra import logger

from tasks import gateway as gw
from tasks import removal
from tasks.fleet.reads import read_fleet
from tasks.pyinfra_ext import change_known, once_per_run, will_change_on
from tasks.removal import ABSENT
from tasks.rollout import BATCH_KEYS, ROLLED_BACK, UPGRADED
from tasks.rollout.batches import fleet_setting, make_batches
from tasks.rollout.service_version import Paths, ServiceVersion, fact_args
from tasks.service import TOGETHER, Desired, desired
from tasks.service import pending as service_pending
from tasks.settings.gateway import GatewaySettings
from tasks.settings.image_build import ImageBuildSettings
from tasks.spec import ServingSpec, SpecError, load_spec


@dataclass(frozen=True)
class Plan:
    """The rollout of one service in one pyinfra run: built once before any host's operation, read by
    every host, never written (what happens while the run executes is :class:`Progress`'s)."""

    name: str
    batches: tuple[tuple[str, ...], ...]
    gateways: tuple[str, ...]
    model: gw.GatewayModel
    #: replica -> its service as read at plan time (``ServiceVersion``, once per run)
    observed: Mapping[str, dict] = field(default_factory=dict)
    #: replica -> why its service is not converged (``tasks.service.pending``); () = nothing to do
    pending: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: leaving replica (``serve_state: absent``) -> what of its service is still on it; only those
    #: with something left are drained and cleaned (``tasks.removal``)
    leaving: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: the gateways' replicas while the leaving ones drain (``model.replicas`` and the leaving)
    draining_replicas: tuple = ()
    #: member of a multi-node replica -> its ``tasks.vllm.multinode.Role`` (``tasks.fleet.replicas.roles``)
    roles: Mapping[str, Any] = field(default_factory=dict)

    def images_present(self, name: str, image_ref: str) -> dict[str, str] | None:
        """``{image_ref: "running"}`` when the plan's read found replica ``name``'s service active on
        ``image_ref`` (its container was started from the local image: the unit runs ``--pull=never``),
        in the DockerImages fact's form for ``tasks.image.pulled``; None otherwise: the operation
        asks Docker itself."""
        observed = self.observed.get(name) or {}
        if observed.get("live_active") == "active" and observed.get("live_image") == image_ref:
            return {image_ref: "running"}
        return None

    def batch_of(self, name: str) -> int | None:
        for i, batch in enumerate(self.batches):
            if name in batch:
                return i
        return None

    def later_hosts(self, b: int) -> list[str]:
        return [h for batch in self.batches[b + 1:] for h in batch]


@dataclass(frozen=True)
class Handles:
    """A replica's operations whose results decide its rollout: those whose change restarts the
    service (unit, env file, templates), the gate and the re-verification after a roll back."""

    restart: tuple
    checked: Any
    again: Any


class ReplicaGate:
    """The gate of one member of a multi-node replica as the rollout reads it: failed when its own
    gate or another member's failed, so that every member rolls back together (one replica, one
    outcome). Reads like the gate's ``OperationMeta`` (what ``outcome_of``, ``probe_error`` and the
    operations' ``_if`` use).

    + own: this member's gate (``OperationMeta``)
    + progress: the run's :class:`Progress` (the other members' gates are registered there)
    + others: the other members' host names
    """

    def __init__(self, own: Any, progress: "Progress", others: tuple[str, ...]) -> None:
        self.own, self.progress, self.others = own, progress, others

    def _failed_others(self) -> list[str]:
        found = []
        for name in self.others:
            handles = self.progress.handles.get(name)
            meta = getattr(handles.checked, "own", handles.checked) if handles else None
            if meta is not None and meta.is_complete() and meta.executed and meta.did_error():
                found.append(name)
        return found

    def is_complete(self) -> bool:
        return self.own.is_complete()

    @property
    def executed(self) -> bool:
        return self.own.executed

    def did_error(self) -> bool:
        return self.own.did_error() or bool(self._failed_others())

    def did_succeed(self) -> bool:
        return self.own.did_succeed() and not self._failed_others()

    def _lines(self, which: str) -> list[str]:
        lines = list(getattr(self.own, which))
        failed = self._failed_others()
        if which == "stdout_lines" and failed and self.own.did_succeed():
            error = f"member {', '.join(failed)} of this multi-node replica failed its verification"
            lines.append(json.dumps({"error": error}))
        return lines

    @property
    def stdout_lines(self) -> list[str]:
        return self._lines("stdout_lines")

    @property
    def stderr_lines(self) -> list[str]:
        return self._lines("stderr_lines")


class Progress:
    """A rollout as pyinfra's own results show it while the run executes: which hosts failed
    (``State.failed_hosts``), each replica's outcome (its gate's and re-verification's
    ``OperationMeta``). One per run and service (:func:`progress_of`); the plan stays as built.

    + plan: the run's :class:`Plan`
    + state: the pyinfra ``State`` of the run
    """

    def __init__(self, plan: Plan, state: Any) -> None:
        self.plan, self.state = plan, state
        self.handles: dict[str, Handles] = {}
        self._pre_failed: set[str] | None = None  # failed before the rollout's first batch opened

    def register(self, name: str, handles: Handles) -> None:
        """Replica ``name``'s operations (``tasks.rollout.deploy`` adds them, once per replica)."""
        self.handles[name] = handles

    def _failed(self) -> set[str]:
        return {h.name for h in self.state.failed_hosts}

    def outcome(self, name: str) -> str | None:
        """UPGRADED / ROLLED_BACK / ROLLBACK_FAILED from the replica's gate results; None when its
        gate did not run (nothing restarted, or not executed yet)."""
        from tasks.rollout.operations import outcome_of

        handles = self.handles.get(name)
        if handles is None or not handles.checked.is_complete() or not handles.checked.executed:
            return None
        return outcome_of(handles.checked, handles.again)

    def is_open(self, b: int) -> bool:
        """Whether batch ``b`` may run: no host of an earlier batch failed since the rollout began."""
        failed = self._failed()
        if self._pre_failed is None:
            self._pre_failed = set(failed)
        earlier = {h for batch in self.plan.batches[:b] for h in batch}
        return not ((failed - self._pre_failed) & earlier)

    def opener(self, b: int) -> Callable[[], bool]:
        return lambda: self.is_open(b)

    def skipped(self, name: str) -> Callable[[], bool]:
        """True (when executing) for a replica whose batch did not run because the rollout stopped."""

        def check() -> bool:
            b = self.plan.batch_of(name)
            return b is not None and not self.is_open(b)

        return check

    def to_drain(self, b: int) -> Callable[[], list[str]]:
        def select() -> list[str]:
            executing = self.state.is_executing
            failed = self._failed() if executing else set()
            chosen = [h for h in self.plan.batches[b] if h not in failed and self.restarts(h, executing)]
            logger.debug(f"rollout {self.plan.name}: batch {b + 1} drains {chosen}")
            return chosen

        return select

    def restarts(self, name: str, executing: bool) -> bool:
        """Whether a replica's service will restart: its unit, env file or templates will change.

        While executing, the replica's own operations are asked (``will_change`` runs their
        bodies in the replica's context: ``pyinfra -y`` does not detect changes at plan time).
        """
        handles = self.handles.get(name)
        if handles is None:
            return True
        if not executing:
            return any(change_known(m) is not False for m in handles.restart)
        return will_change_on(self.state, name, handles.restart)

    def to_restore(self, b: int) -> Callable[[], list[str]]:
        """Hosts of batch ``b`` to put back: passed their gate, rolled back and verified, or did not
        restart. A host that failed otherwise (or whose rollback failed) stays drained."""

        def select() -> list[str]:
            if not self.state.is_executing:
                return list(self.plan.batches[b])
            failed = self._failed()
            outcomes = {h: self.outcome(h) for h in self.plan.batches[b]}
            return [h for h, outcome in outcomes.items()
                    if outcome in (UPGRADED, ROLLED_BACK) or (outcome is None and h not in failed)]

        return select


def progress_of(plan: Plan) -> Progress:
    """The run's :class:`Progress` of ``plan`` (one per run and service, in the run's store)."""
    from tasks.pyinfra_ext import current_state

    state = current_state()
    return once_per_run(("rollout.progress", plan.name), lambda: Progress(plan, state), state)


def make_plan(state: Any, recipe: Any, specs: Mapping[str, ServingSpec],
              roles: Mapping[str, Any] = MappingProxyType({})) -> Plan:
    """The run's rollout plan for ``recipe``: every active replica's service read in one parallel
    pass, batches of the replicas whose service is not converged, the active gateways, and the
    model's upstream from every replica in the inventory. ``tasks.fleet`` builds it, once per run.

    A replica whose unit, env file, chat templates, verification config and probe match what
    this run would write, whose unit is active and enabled and whose container runs the unit's
    image is in no batch: it gets no operation (a no-op run of a converged fleet restarts nothing
    and waits on no barrier). Batch sizes are counted on all the replicas (``"25%"`` of the fleet).

    + state: the pyinfra ``State`` of the run
    + recipe: what ``deploy_model`` got
    + specs: ``validate_fleet(recipe)``: active replica -> spec
    + roles: member of a multi-node replica -> its role (``tasks.fleet.replicas.roles``)
    """
    from tasks.fleet.specs import recipe_of

    active = {h.name for h in state.inventory.get_active_hosts()}
    replicas, leaving_replicas, names, served = [], [], set(), None  # names: served model names (one endpoint)
    for h in state.inventory:
        if gw.is_gateway(h):
            continue
        spec = specs.get(h.name)
        if spec is None:
            data = h.data.dict()
            try:
                spec = load_spec(recipe_of(recipe, data), data)
            except SpecError as exc:
                logger.warning(f"rollout: {h.name} left out of the gateway upstream: {exc}")
                continue
        if h.name in roles and not roles[h.name].is_head:
            continue  # a headless worker serves no HTTP: the gateway routes to its replica's head
        replica = gw.Replica(h.name, gw.replica_address(h.data, h.name), int(spec.port))
        if spec.state == ABSENT:
            leaving_replicas.append(replica)
            continue
        names.add(str(spec.served_model_name))
        served = served or spec
        replicas.append(replica)
    if len(names) > 1:
        raise SpecError("served_model_name", f"replicas of one rollout serve different models: "
                        f"{', '.join(sorted(names))}")
    everyone = [h for h in state.inventory if h.name in specs and h.name in active]
    hosts = [h for h in everyone if specs[h.name].state != ABSENT]
    ordered = [h.name for h in hosts]
    datas = {h.name: h.data for h in hosts}
    batch_opts = {k: fleet_setting(datas, k) for k in BATCH_KEYS}
    gateways = [h.name for h in state.inventory if gw.is_gateway(h) and h.name in active]
    if served is None:
        if gateways or not specs:
            raise SpecError("serve_state" if specs else "inventory",
                            "no replica serves this recipe" + (f" while gateways ({', '.join(gateways)}) route to it: "
                                                               "keep one replica, or leave the gateways out of this "
                                                               "run (--limit)" if gateways else ""))
        served = next(iter(specs.values()))

    # Every replica's service, read in parallel: what it runs, its rollback point, its files; for a
    # leaving replica, which of its service's paths are still there.
    wants = {h.name: desired_service(specs[h.name], h.data, roles.get(h.name)) for h in everyone}
    observed = read_fleet(everyone, ServiceVersion, lambda h: {
        "paths": (wants[h.name][0].paths() if specs[h.name].state != ABSENT
                  else removal.leaving_paths(*wants[h.name])), **fact_args(wants[h.name][1])})
    leaving = {h.name: left for h in everyone if specs[h.name].state == ABSENT
               for left in [removal.leftovers(observed[h.name], removal.leaving_paths(*wants[h.name]))] if left}
    pending = together({name: service_pending(wants[name][0], observed[name]) for name in ordered}, roles)
    # A multi-node replica is one unit of the rollout: its members share a batch, counted as one.
    unit_of = {name: roles[name].replica if name in roles else name for name in ordered}
    to_roll = list(dict.fromkeys(unit_of[name] for name in ordered if pending[name]))
    unit_batches = make_batches(to_roll, batch_opts["rollout_batch_size"], batch_opts["rollout_max_unavailable"],
                                bool(batch_opts["rollout_enabled"]), total=len(set(unit_of.values())))
    batches = [[name for u in batch for name in ordered if unit_of[name] == u] for batch in unit_batches]
    port = None
    for h in state.inventory:
        if h.name in gateways:
            port = GatewaySettings.value(h, "gateway_port") or port
    model = gw.GatewayModel(name=str(served.name), served_model_name=str(served.served_model_name),
                            listen_port=int(port or served.port), replicas=tuple(replicas),
                            api_key_secret=served.api_key_secret)
    plan = Plan(name=str(served.name), batches=tuple(tuple(b) for b in batches), gateways=tuple(gateways),
                model=model, observed=MappingProxyType(observed),
                pending=MappingProxyType({n: tuple(r) for n, r in pending.items()}),
                leaving=MappingProxyType({n: tuple(r) for n, r in leaving.items()}),
                draining_replicas=(*replicas, *(r for r in leaving_replicas if r.host in leaving)),
                roles=roles)
    converged = [n for n in ordered if not pending[n]]
    text = "; ".join(f"{i + 1}: {', '.join(b)}" for i, b in enumerate(batches)) or "none"
    logger.info(f"rollout {plan.name}: {len(batches)} batch(es) [{text}]"
                + (f"; converged, left alone: {', '.join(converged)}" if converged else "")
                + (f"; removing: {', '.join(leaving)}" if leaving else "")
                + (f"; gateways {', '.join(gateways)}" if gateways else "; no gateway"))
    return plan


def together(pending: Mapping[str, list[str]], roles: Mapping[str, Any]) -> dict[str, list[str]]:
    """``pending`` where a member of a multi-node replica whose own service matches gets a reason to
    restart when another member's does not: vLLM's members restart together (a survivor cannot join a
    new head, tasks/vllm/multinode.py).

    + pending: host -> why its service is not converged (``tasks.service.pending``)
    + roles: member -> its role
    """
    out = {name: list(reasons) for name, reasons in pending.items()}
    for name, role in roles.items():
        if name in out and not out[name]:
            moving = [m for m, r in roles.items() if r.replica == role.replica and pending.get(m)]
            if moving:
                out[name] = [f"{TOGETHER} {role.replica}: {', '.join(moving)} restart(s)"]
    return out


def desired_service(spec: ServingSpec, data: Any, role: Any = None) -> tuple[Desired, Paths]:
    """A replica's desired service and its rollout paths, from its spec, host data and (a member of a
    multi-node replica) its role."""
    from tasks.image_build import image_ref
    from tasks.weights.deploy import model_dest

    model_dir = model_dest(spec, data)
    want = desired(spec, image_ref(spec, ImageBuildSettings.value(data, "image_pip_index_url")), model_dir, data,
                   role)
    return want, Paths.of(want.layout, model_dir)

