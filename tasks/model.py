"""One served model end to end: preflight, runtime, weights, image, service, verification.

``deploy_model(recipe)`` is what a deploy file calls (``deploys/<recipe>.py``). Before any host
is touched (no fact, no operation), the spec of EVERY active host is loaded with its host data
overrides and validated, secrets are checked on the control machine, and the tasks the specs
need must be importable; one bad host stops the whole run with a message naming the host and
the field. Then, per host, in order:

1. preflight (``tasks.preflight``, from :func:`requirement_from_spec`): no-go hosts drop out; members
   of a multi-node replica also pass ``tasks.preflight_replica`` together (a refusal drops them all);
2. runtime (``tasks.runtime.install_runtime(spec.accelerator)``);
3. weights (``tasks.weights.deploy.fetch_weights(spec)``) into ``model_dest(spec)`` =
   ``<weights_root>/<owner>--<name>`` with ``current -> revisions/<rev>``;
4. image: ``tasks.image.pulled`` of the pinned image, or for specs with ``build``
   ``tasks.image_build.ensure_image(spec) -> ref``;
5. service (``tasks.service.serve``) and verification, in batches with rollback and gateway
   drain (``tasks.rollout.rolling``; a rollback point is kept before step 3). The batches come
   from one parallel read of every replica's service before step 1 (``tasks.fleet.fleet_plan``):
   a replica whose service already matches gets no service operation.

The whole fleet is planned once per run before any host's operation (``tasks.fleet``): specs,
replicas, weights roles, gateways, rollout batches and fleet-wide settings; every host reads that plan.

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
from tasks.fleet import Recipe, fleet_plan, recipe_of, validate_fleet
from tasks.preflight import preflight
from tasks.preflight_replica import preflight_replica
from tasks.removal import ABSENT
from tasks.requirement import requirement_from_spec
from tasks.runtime import install_runtime
from tasks.spec import SpecError, list_recipes
from tasks.vllm.cmdline import render
from tasks.settings.model import ModelSettings

DEFAULTS: dict[str, Any] = ModelSettings.defaults()


def _setting(data: Any, key: str) -> Any:
    """Host data ``key`` read through the capability model that declares it; a bad value is a SpecError
    naming the key (recipe choosers run inside ``validate_fleet``, which lists every host's problems)."""
    from tasks.bad_input import BadInput
    from tasks.settings.registry import model_of

    try:
        return model_of(key).value(data, key)
    except BadInput as exc:
        raise SpecError(key, "; ".join(p.message for p in exc.problems)) from None



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
    from tasks.rollout import point_kept, rolling

    fleet = fleet_plan(recipe)  # once per run, before any operation: every host reads this one plan
    plan = fleet.rollout
    spec = fleet.specs.get(host.name)  # None on a gateway host: it balances the replicas, serves nothing
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
        checked = ModelSettings.value(host, "model_preflight")
        go = not checked or preflight(requirement_from_spec(spec, model_dir, data))
        # Across a multi-node replica (reach of the head's port, drivers, InfiniBand): a refusal fails every member.
        go = go and (not checked or preflight_replica(fleet, host.name))
        if go:
            install_runtime(spec.accelerator)
            point_kept(plan, spec, model_dir)
            fetch_weights(spec, plan=fleet.weights_for(spec))
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
        name = _setting(data, key)
        if not name and required:
            raise SpecError(key, f"not set; allowed: a recipe name ({', '.join(list_recipes())}) or the path of a "
                            f".yaml recipe file, e.g. --data {key}=qwen30b")
        return str(name) if name else None

    choose.__qualname__ = f"recipe_in.{key}.{'required' if required else 'optional'}"
    return choose


def variant_recipe(prefix: str, variants: tuple[str, ...], default: str) -> Callable[[dict], str]:
    """A recipe chooser for multi-variant deploys: ``<prefix>_<model_variant>``."""

    def choose(data: dict) -> str:
        variant = _setting(data, "model_variant") or default
        if variant not in variants:
            raise SpecError("model_variant", f"{variant!r} is not a variant of {prefix}; allowed: "
                            f"{', '.join(variants)}")
        return f"{prefix}_{variant}"

    choose.__qualname__ = f"variant_recipe.{prefix}"
    return choose


__all__ = ["DEFAULTS", "deploy_model", "recipe_in", "recipe_of", "validate_fleet", "variant_recipe"]
