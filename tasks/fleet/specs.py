"""The fleet's specs, validated before any host is touched: the recipe of every active host outside
the gateway group loaded with its host data, secrets checked on the control machine, the tasks the
specs need importable, replicas of one machine on their own ports and devices, multi-node replicas
whole and consistent (``tasks.fleet.replicas``), and the fleet-wide settings (rollout batches, weights fan-out) equal on every host they concern.

Pure control-machine work (no fact, no operation). One bad host stops the whole run with one
``BadInput`` (pyinfra prints it as one block) listing every problem as ``host: field (given ...):
what is wrong and what is allowed``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Mapping

from tasks.bad_input import BadInput, Problem, log_traceback, settings_problems, spec_problems
from tasks.gateway import is_gateway
from tasks.pyinfra_ext import current_state, once_per_run
from tasks.removal import ABSENT
from tasks.requirement import check_context, model_config_for
from tasks.secrets import local_secret
from tasks.service import secret_files
from tasks.settings.runtime import RuntimeSettings
from tasks.settings.weights import WeightsSettings
from tasks.spec import ServingSpec, SpecError, load_spec

Recipe = str | Callable[[dict], str | None]


def recipe_of(recipe: Recipe, data: dict) -> str | None:
    """The recipe name a host serves in this deploy (None: none, a bring-up without a recipe)."""
    return recipe(data) if callable(recipe) else recipe


def recipe_key(recipe: Recipe) -> str:
    """A run-wide name of what ``deploy_model`` got: the recipe, or its chooser's qualified name."""
    return recipe if isinstance(recipe, str) else f"{recipe.__module__}.{recipe.__qualname__}"


def _needs(spec: ServingSpec) -> list[str]:
    """Modules the spec's tasks need, importable on the control machine."""
    modules = ["tasks.weights.deploy"]
    if spec.build:
        modules.append("tasks.image_build")
    return modules


def _check_importable(module: str) -> None:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        owner = {"tasks.weights.deploy": "the weights task (fetch_weights)",
                 "tasks.image_build": "the image build task (ensure_image)"}[module]
        raise SpecError("tasks", f"{module} cannot be imported ({exc}): {owner} is required by this "
                        "recipe") from None



def validate_fleet(recipe: Recipe) -> Mapping[str, ServingSpec]:
    """Load and validate the spec and settings of every active host; once per run and recipe.

    The first host's plan pass does it for all, so bad input anywhere stops the run before any host
    is touched. Returns active host -> spec, read-only (hosts being removed included: their spec
    says ``state: absent``); raises ``BadInput`` (a PyinfraError) naming every problem.

    + recipe: what ``deploy_model`` got (a name, or a chooser of the host data)
    """
    state = current_state()

    def build() -> tuple[Mapping[str, ServingSpec], tuple[Problem, ...]]:
        active = set(state.inventory.get_active_hosts())
        specs, problems = _fleet_specs(recipe, [h for h in state.inventory if h in active and not is_gateway(h)])
        return MappingProxyType(specs), tuple(problems)

    specs, problems = once_per_run(("fleet.specs", recipe_key(recipe)), build, state)
    if problems:
        raise BadInput(list(problems))  # a new exception per host: a shared one would pile up tracebacks
    return specs


def _fleet_specs(recipe: Recipe, hosts: list[Any]) -> tuple[dict[str, ServingSpec], list[Problem]]:
    specs: dict[str, ServingSpec] = {}
    problems: list[Problem] = []
    for h in hosts:
        data = h.data.dict()
        try:
            name = recipe_of(recipe, data)
            if name is None:  # serves nothing in this deploy (a bring-up without a recipe): settings only
                problems += _runtime_problems(h.name, data)
                continue
            spec = load_spec(name, data)
            if spec.state == ABSENT:  # being removed: neither its secrets nor its config are needed
                specs[h.name] = spec
                continue
            secret_files(spec, data)
            check_context(spec, model_config_for(spec))
            for module in _needs(spec):
                _check_importable(module)
        except SpecError as exc:
            log_traceback(exc)
            problems += spec_problems(h.name, exc, data)
            continue
        try:
            token = WeightsSettings.value(data, "weights_token_secret", h.name)
        except BadInput:
            token = None  # settings_problems below names it
        if token:
            try:
                local_secret(token, "weights_token_secret", data)
            except ValueError as exc:
                problems.append(Problem(h.name, "weights_token_secret", str(exc).split(": ", 1)[1], repr(token)))
        problems += settings_problems(h.name, data, spec.accelerator)
        specs[h.name] = spec
    serving = {name: spec for name, spec in specs.items() if spec.state != ABSENT}
    problems += _shared_machine_problems(hosts, serving)
    if not problems:
        from tasks.fleet.replicas import gather

        problems += gather({h.name: h.data for h in hosts if h.name in serving}, serving)[1]
    if not problems and serving:
        problems += [Problem("", field, message)
                     for field, message in _disagreements({h.name: h.data for h in hosts if h.name in serving})]
    return specs, problems


def _runtime_problems(host: str, data: dict) -> list[Problem]:
    """A host brought up without a recipe: its ``runtime_accelerator`` and that runtime's settings."""
    try:
        accelerator = RuntimeSettings.value(data, "runtime_accelerator", host) or "nvidia"
    except BadInput as exc:  # another accelerator's settings would be read: its problems alone
        return exc.problems
    return settings_problems(host, data, accelerator)


def _shared_machine_problems(hosts: list[Any], specs: dict[str, ServingSpec]) -> list[Problem]:
    """Replicas that are one machine (same ``ssh_hostname``) must not share a port or a device."""
    found = []
    taken: dict[tuple[str, str, int], str] = {}
    for h in hosts:
        spec = specs.get(h.name)
        if spec is None:
            continue
        machine = str(h.data.get("ssh_hostname") or h.name)
        wants = [("serve_port", spec.port)] + [("serve_devices", d) for d in spec.devices or ()]
        for field, value in wants:
            other = taken.setdefault((machine, field, value), h.name)
            if other != h.name:
                what = "port" if field == "serve_port" else "device"
                found.append(Problem(h.name, field, f"{what} {value} is also {other}'s, on the same machine "
                                     f"{machine}: give each replica of a machine its own", repr(value)))
    return found


def _disagreements(datas: dict[str, Any]) -> list[tuple[str, str]]:
    """Fleet-wide settings (weights fan-out, rollout batches) that differ between the replicas
    (``(key, message)``, none when they agree)."""
    from tasks.rollout import BATCH_KEYS, fleet_setting
    from tasks.weights.deploy import fleet_settings  # importable: checked per spec above

    found: list[tuple[str, str]] = []
    for check in [lambda: fleet_settings(datas)] + [lambda k=k: fleet_setting(datas, k) for k in BATCH_KEYS]:
        try:
            check()
        except SpecError as exc:
            found += exc.problems
    return found



__all__ = ["Recipe", "recipe_key", "recipe_of", "validate_fleet"]
