"""One served model end to end: preflight, runtime, weights, image, service, verification.

``deploy_model(recipe)`` is what a deploy file calls (``deploys/<recipe>.py``). Before any host
is touched (no fact, no operation), the spec of EVERY active host is loaded with its host data
overrides and validated, secrets are checked on the control machine, and the tasks the specs
need must be importable; one bad host stops the whole run with a message naming the host and
the field. Then, per host, in order:

1. preflight (``tasks.preflight``, from :func:`requirement_from_spec`): no-go hosts drop out;
2. runtime (``tasks.runtime.install_runtime(spec.accelerator)``);
3. weights (``tasks.weights.deploy.fetch_weights(spec)``) into ``model_dest(spec)`` =
   ``<weights_root>/<owner>--<name>`` with ``current -> revisions/<rev>``;
4. image: ``tasks.image.pulled`` of the pinned image, or for specs with ``build``
   ``tasks.image_build.ensure_image(spec) -> ref``;
5. service (``tasks.service.serve``) and verification, in batches with rollback and gateway
   drain (``tasks.rollout.rolling``; a rollback point is kept before step 3). The batches come
   from one parallel read of every replica's service before step 1 (``tasks.rollout.plan_for``):
   a replica whose service already matches gets no service operation.

Hosts of the inventory group ``gateway`` (``tasks.gateway``) serve no model: they get nginx
balancing the replicas. A host whose data says ``serve_state: absent`` has the recipe taken off it
(``tasks.removal``): drained from the gateways, unit and files removed, weights kept.

Settings (host data, prefix ``model_``): ``tasks.settings.model.ModelSettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

from typing import Any, Callable

from pyinfra import host, logger
from pyinfra.api import deploy

from tasks import image as image_task
from tasks.bad_input import BadInput, Problem, log_traceback, settings_problems, spec_problems
from tasks.preflight import preflight
from tasks.requirement import check_context, model_config_for, requirement_from_spec
from tasks.secrets import local_secret
from tasks.runtime import ACCELERATORS, install_runtime
from tasks.service import secret_files
from tasks.spec import ServingSpec, SpecError, list_recipes, load_spec
from tasks.gateway import is_gateway
from tasks.removal import ABSENT
from tasks.vllm.cmdline import render
from tasks.settings.model import ModelSettings

DEFAULTS: dict[str, Any] = ModelSettings.defaults()

Recipe = str | Callable[[dict], str | None]


def _opt(data: Any, key: str) -> Any:
    return data.get(key, DEFAULTS[key])


# --- plan-time validation of the whole fleet ---------------------------------------------------------


def recipe_of(recipe: Recipe, data: dict) -> str:
    return recipe(data) if callable(recipe) else recipe


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


def validate_fleet(recipe: Recipe) -> dict[str, ServingSpec]:
    """Load and validate the spec and settings of every active host; cached per run and recipe.

    Pure control-machine work (no fact, no operation): the first host's plan pass does it for
    all, so bad input anywhere stops the run before any host is touched. Raises one
    ``BadInput`` (a PyinfraError: pyinfra prints it as one block) listing every problem as
    ``host: field (given ...): what is wrong and what is allowed``.
    """
    from pyinfra.context import ctx_host

    state = ctx_host.get().state
    key = (id(state), recipe if isinstance(recipe, str) else f"{recipe.__module__}.{recipe.__qualname__}")
    if key not in _FLEET:
        active = set(state.inventory.get_active_hosts())
        _FLEET[key] = _fleet_specs(recipe, [h for h in state.inventory if h in active and not is_gateway(h)])
    specs, problems = _FLEET[key]
    if problems:
        raise BadInput(problems)  # a new exception per host: a shared one would pile up tracebacks
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
        token = data.get("weights_token_secret")
        if token:
            try:
                local_secret(token, "weights_token_secret", data)
            except ValueError as exc:
                problems.append(Problem(h.name, "weights_token_secret", str(exc).split(": ", 1)[1], repr(token)))
        problems += settings_problems(h.name, data, spec.accelerator)
        specs[h.name] = spec
    serving = {name: spec for name, spec in specs.items() if spec.state != ABSENT}
    problems += _shared_machine_problems(hosts, serving)
    if not problems and serving:
        problems += [Problem("", field, message)
                     for field, message in _disagreements({h.name: h.data for h in hosts if h.name in serving})]
    return specs, problems


def _runtime_problems(host: str, data: dict) -> list[Problem]:
    """A host brought up without a recipe: its ``runtime_accelerator`` and that runtime's settings."""
    accelerator = data.get("runtime_accelerator", "nvidia")
    if accelerator not in ACCELERATORS:
        return [Problem(host, "runtime_accelerator", f"allowed: {', '.join(ACCELERATORS)}", repr(accelerator))]
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


_FLEET: dict[tuple[int, str], tuple[dict[str, ServingSpec], list[Problem]]] = {}


def _disagreements(datas: dict[str, Any]) -> list[tuple[str, str]]:
    """Fleet-wide settings that differ between the replicas (``(key, message)``, none when they agree)."""
    from tasks.weights.deploy import fleet_settings  # importable: checked per spec above

    try:
        fleet_settings(datas)
    except SpecError as exc:
        return exc.problems
    return []


@deploy("Model", data_defaults=DEFAULTS)
def deploy_model(recipe: Recipe) -> None:
    """
    Serve one recipe on the current host: preflight, runtime, weights, image, service, verify.

    + recipe: recipe name (``tasks/recipes/<name>.yaml``), or a function of the host data
      returning one (multi-variant deploys)

    Example:

    .. code:: python

        from tasks.model import deploy_model
        deploy_model("qwen30b")
    """
    from tasks.rollout import plan_for, point_kept, rolling

    specs = validate_fleet(recipe)
    plan = plan_for(recipe, specs)  # every replica's service read once, in parallel: the batches
    spec = specs.get(host.name)  # None on a gateway host: it balances the replicas, serves nothing
    image_ref = model_dir = None
    if spec is not None and spec.state == ABSENT:
        pass  # taken off this host by the rollout (drained first); nothing to check, fetch or pull
    elif spec is not None:
        from tasks.weights.deploy import fetch_weights, model_dest  # importable: checked by validate_fleet
        data = host.data
        for warning in render(spec).warnings:
            logger.warning(f"{host.print_prefix}{spec.name}: {warning}")
        model_dir = model_dest(spec, data)

        # A refused host is failed for the run: no install step; below it serves nothing.
        go = not _opt(data, "model_preflight") or preflight(requirement_from_spec(spec, model_dir, data))
        if go:
            install_runtime(spec.accelerator)
            point_kept(plan, spec, model_dir)
            fetch_weights(spec)
            if spec.build:
                from tasks.image_build import ensure_image

                image_ref = ensure_image(spec)
            else:
                image_ref = spec.image.ref
                image_task.pulled(name=f"{spec.name}: image {image_ref}", image=image_ref,
                                  present=plan.images_present(host.name, image_ref))
        else:
            spec = None
    # Every host calls this from this one line: the rollout's batch barriers need one call site.
    rolling(plan, spec, image_ref, model_dir)


def recipe_in(key: str, required: bool = True) -> Callable[[dict], str | None]:
    """A recipe chooser reading host data ``key`` (deploys/preflight.py: ``preflight_recipe``).

    + key: the host data key naming the recipe
    + required: a host without it is bad input (else it serves nothing: ``None``)
    """

    def choose(data: dict) -> str | None:
        name = data.get(key)
        if not name and required:
            raise SpecError(key, f"not set; allowed: a recipe name ({', '.join(list_recipes())}) or the path of a "
                            f".yaml recipe file, e.g. --data {key}=qwen30b")
        return str(name) if name else None

    choose.__qualname__ = f"recipe_in.{key}.{'required' if required else 'optional'}"
    return choose


def variant_recipe(prefix: str, variants: tuple[str, ...], default: str) -> Callable[[dict], str]:
    """A recipe chooser for multi-variant deploys: ``<prefix>_<model_variant>``."""

    def choose(data: dict) -> str:
        variant = data.get("model_variant") or default
        if variant not in variants:
            raise SpecError("model_variant", f"{variant!r} is not a variant of {prefix}; allowed: "
                            f"{', '.join(variants)}")
        return f"{prefix}_{variant}"

    choose.__qualname__ = f"variant_recipe.{prefix}"
    return choose


__all__ = ["DEFAULTS", "deploy_model", "recipe_in", "validate_fleet", "variant_recipe"]
