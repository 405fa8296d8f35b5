"""The fleet plan of one run: built once, before any host's operation, by the first host's plan pass
(the other hosts wait for it: ``tasks.pyinfra_ext.once_per_run``), then read by every host.

It holds what needs more than one host to decide: every host's spec (a host being removed
included), the gateways, the fleet-wide settings agreed across the hosts they concern, the
multi-node replicas (members by rank, the head first), the
rollout (batches of the replicas whose service is not converged, from one parallel read of every
replica's service) and, per model, the weights plan (seed, peers, cache host; gateways are no
weights host) from one parallel read of every weights host's state. Frozen dataclasses over
``MappingProxyType``: a host reads it and never writes it. What happens while the run executes
is pyinfra's own results (``OperationMeta``), read through ``tasks.rollout.plan.Progress``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from tasks.fleet.specs import Recipe, recipe_key, validate_fleet
from tasks.gateway import is_gateway
from tasks.pyinfra_ext import current_state, once_per_run
from tasks.removal import ABSENT
from tasks.spec import ServingSpec


def model_key(spec: ServingSpec) -> str:
    """The weights a spec serves, as the fleet plan names them: ``<repo_id>@<revision>``."""
    return f"{spec.model.repo_id}@{spec.model.revision}"


@dataclass(frozen=True)
class FleetPlan:
    """The run's plan for one recipe: read-only, the same object for every host."""

    recipe: str
    #: active host outside the gateway group -> its spec (``state: absent`` for one being removed)
    specs: Mapping[str, ServingSpec]
    #: active hosts of the gateway group, inventory order
    gateways: tuple[str, ...]
    #: fleet-wide settings, equal on every replica (``validate_fleet`` refused the run otherwise)
    settings: Mapping[str, Any]
    #: the rollout of the served model (``tasks.rollout.plan.Plan``)
    rollout: Any
    #: ``model_key(spec)`` -> the weights plan of the hosts serving that model (``tasks.weights.plan``)
    weights: Mapping[str, Any]
    #: ``model_key(spec)`` -> its weights hosts, inventory order
    weights_hosts: Mapping[str, tuple[str, ...]]
    #: multi-node replica name -> its members by rank (``tasks.fleet.replicas``); one-host replicas are in none
    replicas: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def replica_of(self, host: str) -> Any:
        """The multi-node replica ``host`` is a member of (``tasks.fleet.replicas.Replica``), or None."""
        return next((r for r in self.replicas.values() if host in r.hosts), None)

    def weights_for(self, spec: ServingSpec) -> Any:
        """The weights plan for ``spec``'s model."""
        return self.weights[model_key(spec)]


def fleet_plan(recipe: Recipe) -> FleetPlan:
    """The run's fleet plan for ``recipe``: validated first (bad input stops the run before any fact
    is read), then every replica's service and weights state read in parallel, once per run.

    + recipe: what ``deploy_model`` got (a name, or a chooser of the host data)

    Example:

    .. code:: python

        plan = fleet_plan("qwen30b")
        plan.rollout.batches, plan.weights_for(plan.specs[host.name]).roles[host.name]
    """
    specs = validate_fleet(recipe)
    state = current_state()
    return once_per_run(("fleet.plan", recipe_key(recipe)), lambda: _build(state, recipe, specs), state)


def _build(state: Any, recipe: Recipe, specs: Mapping[str, ServingSpec]) -> FleetPlan:
    from tasks.bad_input import BadInput
    from tasks.fleet.replicas import gather, roles
    from tasks.rollout import BATCH_KEYS, fleet_setting
    from tasks.rollout.plan import make_plan
    from tasks.weights.deploy import fleet_plan as weights_plan
    from tasks.weights.deploy import fleet_settings

    active = set(state.inventory.get_active_hosts())
    serving = [h for h in state.inventory if h.name in specs and specs[h.name].state != ABSENT]
    datas = {h.name: h.data for h in serving}
    replicas = gather(datas, {h.name: specs[h.name] for h in serving})[0]  # validate_fleet refused problems
    member_roles, problems = roles([h for h in serving if h in active], replicas)
    if problems:
        raise BadInput(problems)
    rollout = make_plan(state, recipe, specs, MappingProxyType(member_roles))
    settings = {k: fleet_setting(datas, k) for k in BATCH_KEYS}
    if datas:
        settings.update(fleet_settings(datas))
    by_model: dict[str, list[Any]] = {}
    for h in serving:
        by_model.setdefault(model_key(specs[h.name]), []).append(h)
    weights = {key: weights_plan(specs[hosts[0].name], hosts) for key, hosts in by_model.items()}
    return FleetPlan(recipe=recipe_key(recipe), specs=specs,
                     gateways=tuple(h.name for h in state.inventory if is_gateway(h) and h in active),
                     settings=MappingProxyType(settings), rollout=rollout, weights=MappingProxyType(weights),
                     weights_hosts=MappingProxyType({k: tuple(h.name for h in v) for k, v in by_model.items()}),
                     replicas=MappingProxyType(replicas))


__all__ = ["FleetPlan", "fleet_plan", "model_key"]
