"""One served model end to end: preflight, runtime, weights, image, service, verification.

``deploy_model(recipe)`` is what a deploy file calls (``deploys/<recipe>.py``). Before any host
is touched (no fact, no operation), the spec of EVERY active host is loaded with its host data
overrides and validated, secrets are checked on the control machine, and the tasks the specs
need must be importable; one bad host stops the whole run with a message naming the host and
the field. Then, per host, in order:

1. preflight (``tasks.preflight``, from :func:`requirement_from_spec`): no-go hosts drop out;
2. runtime (``tasks.runtime.install_runtime(spec.accelerator)``);
3. weights (``tasks.weights.deploy.fetch_weights(spec, model_dir)``) into
   ``<model_root>/<owner>--<name>`` with ``current -> revisions/<rev>``;
4. image: ``tasks.image.pulled`` of the pinned image, or for specs with ``build``
   ``tasks.image_build.ensure_image(spec) -> ref``;
5. service (``tasks.service.serve``) and verification, in batches with rollback and gateway
   drain (``tasks.rollout.rolling``; a rollback point is kept before step 3).

Hosts of the inventory group ``gateway`` (``tasks.gateway``) serve no model: they get nginx
balancing the replicas.

DEFAULTS (host data, prefix ``model_``):

| key | default | meaning |
|---|---|---|
| model_root | "/srv/models" | host directory holding one directory per model repository |
| model_weights_bytes | None | size of the weights for the disk check; None: estimated from the bundled config.json |
| model_ipc_host_shm_gib | 1.0 | host /dev/shm preflight requires for ``--ipc=host`` with more than one GPU |
| model_preflight | True | run preflight (False only for hosts checked out of band) |
| model_variant | None | variant of a multi-variant deploy (deploys/qwen235b.py: awq or gptq) |
"""

from __future__ import annotations

from typing import Any, Callable

from pyinfra import host, logger
from pyinfra.api import deploy

from tasks import image as image_task
from tasks.plan import GIB, bundled_config, count_params, linear_bytes_per_param, model_dtype_bytes, quant_config
from tasks.preflight import Requirement, preflight
from tasks.runtime import install_runtime
from tasks.service import secret_files, serve
from tasks.spec import ServingSpec, SpecError, load_spec
from tasks.gateway import is_gateway
from tasks.vllm.cmdline import render

DEFAULTS: dict[str, Any] = {
    "model_root": "/srv/models",
    "model_weights_bytes": None,
    "model_ipc_host_shm_gib": 1.0,
    "model_preflight": True,
    "model_variant": None,
}

#: Bundled config.json (tasks/data/configs/<name>.json) by a fragment of the repository name.
CONFIGS = (("qwen3-235b-a22b", "Qwen3-235B-A22B"), ("qwen3-30b-a3b", "Qwen3-30B-A3B"),
           ("qwen3-32b", "Qwen3-32B"), ("glm-5", "GLM-5"))
#: Quantized checkpoints carry a quantization_config the bundled (bf16) configs lack.
QUANT_BY_NAME = (("fp8", {"quant_method": "fp8"}),
                 ("gptq-int4", {"quant_method": "gptq", "bits": 4, "group_size": 128}),
                 ("awq", {"quant_method": "awq", "bits": 4, "group_size": 128}),
                 ("int4", {"quant_method": "gptq", "bits": 4, "group_size": 128}))

Recipe = str | Callable[[dict], str]


def _opt(data: Any, key: str) -> Any:
    return data.get(key, DEFAULTS[key])


def model_dir_for(spec: ServingSpec, data: Any) -> str:
    """``<model_root>/<owner>--<name>``: recipes of one repository share its weights."""
    root = str(_opt(data, "model_root")).rstrip("/")
    if not root.startswith("/"):
        raise SpecError("model_root", f"must be an absolute path, got {root!r}")
    return f"{root}/{spec.model.repo_id.replace('/', '--')}"


def model_config_for(spec: ServingSpec) -> dict:
    """The bundled config.json of the spec's model, with the checkpoint's quantization added."""
    name = spec.model.repo_id.split("/", 1)[1].lower()
    for fragment, config_name in CONFIGS:
        if fragment in name:
            config = bundled_config(config_name)
            break
    else:
        known = ", ".join(c for _, c in CONFIGS)
        raise SpecError("model.repo_id", f"no bundled config.json for {spec.model.repo_id!r} (have: {known}); "
                        "add it under tasks/data/configs/ for preflight's memory plan")
    if not config.get("quantization_config") and not spec.quantization:
        for fragment, qc in QUANT_BY_NAME:
            if fragment in name:
                config = {**config, "quantization_config": dict(qc)}
                break
    return config


def estimate_weights_bytes(spec: ServingSpec, config: dict) -> int:
    """Checkpoint size from the parameter count: quantizable linear layers at the checkpoint's
    bytes per parameter, embeddings/norms/routers at 16 bits."""
    counts = count_params(config, 1, 1)
    dtype_bytes = model_dtype_bytes(config, spec.dtype)
    method, bits, group = quant_config(config, spec.quantization)
    linear = linear_bytes_per_param(method, bits, group, dtype_bytes)
    return int(counts["gpu_linear"] * linear + counts["gpu_other"] * dtype_bytes)


def requirement_from_spec(spec: ServingSpec, model_dir: str, data: Any | None = None) -> Requirement:
    """Preflight's ``Requirement`` for a spec.

    + spec: the validated spec
    + model_dir: where the weights go on the host (its filesystem is checked for space)
    + data: host data (``model_weights_bytes``, ``model_ipc_host_shm_gib``); None: defaults
    """
    data = data if data is not None else {}
    config = model_config_for(spec)
    weights = _opt(data, "model_weights_bytes")
    weights = int(weights) if weights is not None else estimate_weights_bytes(spec, config)
    gpus = spec.tensor_parallel_size * spec.pipeline_parallel_size * spec.data_parallel_size
    # With --ipc=host the container uses the host's /dev/shm; --shm-size gives it its own.
    shm = int(float(_opt(data, "model_ipc_host_shm_gib")) * GIB) if spec.ipc_host and gpus > 1 else 0
    return Requirement(
        recipe=str(spec.name), vllm_version=str(spec.version), model_config=config, weights_bytes=weights,
        model_dir=model_dir, tp=spec.tensor_parallel_size, pp=spec.pipeline_parallel_size,
        gpus_needed=gpus, dtype=spec.dtype, quantization=spec.quantization,
        kv_cache_dtype=spec.kv_cache_dtype, max_model_len=spec.max_model_len,
        gpu_memory_utilization=spec.gpu_memory_utilization, block_size=spec.block_size or 16,
        max_num_seqs=spec.max_num_seqs or 256, max_num_batched_tokens=spec.max_num_batched_tokens,
        shm_bytes_needed=shm, accelerator=spec.accelerator,
    )


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
    """Load and validate the spec of every active host; cached per run and recipe.

    Pure control-machine work (no fact, no operation): the first host's plan pass does it for
    all, so an invalid spec anywhere stops the run before any host is touched. Raises one
    SpecError listing every problem as ``host: field``.
    """
    from pyinfra.context import ctx_host

    state = ctx_host.get().state
    key = (id(state), recipe if isinstance(recipe, str) else f"{recipe.__module__}.{recipe.__qualname__}")
    cached = _FLEET.get(key)
    if cached is None:
        specs: dict[str, ServingSpec] = {}
        problems: list[tuple[str, str]] = []
        for h in state.inventory.get_active_hosts():
            if is_gateway(h):
                continue
            data = h.data.dict()
            try:
                spec = load_spec(recipe_of(recipe, data), data)
                secret_files(spec, data)
                model_dir_for(spec, data)
                model_config_for(spec)
                for module in _needs(spec):
                    _check_importable(module)
                specs[h.name] = spec
            except SpecError as exc:
                problems += [(f"{h.name}: {f}", m) for f, m in exc.problems]
        cached = SpecError(*problems[0], *problems[1:]) if problems else specs
        _FLEET[key] = cached
    if isinstance(cached, SpecError):
        raise cached
    return cached


_FLEET: dict[tuple[int, str], dict[str, ServingSpec] | SpecError] = {}


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

    specs = validate_fleet(recipe)
    spec = specs.get(host.name)  # None on a gateway host: it balances the replicas, serves nothing
    image_ref = model_dir = None
    if spec is not None:
        from tasks.weights.deploy import fetch_weights  # importable: checked by validate_fleet
        data = host.data
        for warning in render(spec).warnings:
            logger.warning(f"{host.print_prefix}{spec.name}: {warning}")
        model_dir = model_dir_for(spec, data)

        if _opt(data, "model_preflight"):
            preflight(requirement_from_spec(spec, model_dir, data))
        install_runtime(spec.accelerator)
        point_kept(spec, model_dir)
        fetch_weights(spec, model_dir)
        if spec.build:
            from tasks.image_build import ensure_image

            image_ref = ensure_image(spec)
        else:
            image_ref = spec.image.ref
            image_task.pulled(name=f"{spec.name}: image {image_ref}", image=image_ref)
    # Every host calls this from this one line: the rollout's batch barriers need one call site.
    rolling(recipe, specs, spec, image_ref, model_dir)


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


__all__ = ["DEFAULTS", "deploy_model", "model_dir_for", "model_config_for", "requirement_from_spec",
           "validate_fleet", "variant_recipe", "estimate_weights_bytes"]
