"""From a serving spec to what preflight checks a host against (``tasks.preflight.Requirement``).

The model's architecture comes from a config.json bundled under tasks/data/configs/ (the base model of
the checkpoint: preflight runs before any weights are on the host), matched by the repository's name;
the checkpoint's own quantization, which a base config does not carry, comes from the spec or from the
repository's name (``-FP8``, ``-GPTQ-Int4``, ``-AWQ``, AutoRound int4 exports in GPTQ format). The
weights' size is estimated from the parameter count unless ``preflight_weights_bytes`` says it.

The context limit is vLLM's own (``_get_and_verify_max_len``): ``max_position_embeddings``, or with
rope scaling the factor times the length it scales (YaRN: ``original_max_position_embeddings``).
A ``max_model_len`` above it makes vLLM exit at start-up, so it is refused before any host is touched.
"""

from __future__ import annotations

from typing import Any

from tasks.plan import (GIB, PlanParams, bundled_config, count_params, linear_bytes, linear_format, model_dtype_bytes,
                        text_config)
from tasks.settings.preflight import PreflightSettings
from tasks.preflight import Requirement
from tasks.spec import ServingSpec, SpecError

#: Bundled config.json (tasks/data/configs/<name>.json) by a fragment of the repository name.
CONFIGS = (("qwen3-235b-a22b", "Qwen3-235B-A22B"), ("qwen3-30b-a3b", "Qwen3-30B-A3B"),
           ("qwen3-32b", "Qwen3-32B"), ("qwen3-0.6b", "Qwen3-0.6B"), ("glm-5", "GLM-5"))
#: Quantized checkpoints carry a quantization_config the bundled (bf16) configs lack.
QUANT_BY_NAME = (("fp8", {"quant_method": "fp8"}),
                 ("gptq-int4", {"quant_method": "gptq", "bits": 4, "group_size": 128}),
                 ("awq", {"quant_method": "awq", "bits": 4, "group_size": 128}),
                 ("int4", {"quant_method": "gptq", "bits": 4, "group_size": 128}))

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


def context_limit(spec: ServingSpec, config: dict) -> tuple[int, str] | None:
    """The longest ``max_model_len`` vLLM accepts for the spec's model, and how it is derived;
    None when config.json does not say."""
    max_pos = text_config(config).get("max_position_embeddings")
    if not max_pos:
        return None
    rope = spec.rope_scaling
    if rope is None:
        return int(max_pos), f"max_position_embeddings {max_pos}"
    base = rope.original_max_position_embeddings if rope.rope_type == "yarn" else int(max_pos)
    what = "original_max_position_embeddings" if rope.rope_type == "yarn" else "max_position_embeddings"
    return int(base * rope.factor), f"rope_scaling {rope.rope_type}: {what} {base} x factor {rope.factor:g}"


def check_context(spec: ServingSpec, config: dict) -> None:
    """SpecError naming ``max_model_len`` when it exceeds the model's context limit."""
    found = context_limit(spec, config)
    if found is None or not spec.max_model_len or spec.max_model_len <= found[0]:
        return
    limit, how = found
    extend = "" if spec.rope_scaling else "; or extend the context with rope_scaling (YaRN)"
    raise SpecError("max_model_len", f"{spec.max_model_len} is more than {spec.model.repo_id} can take ({how}): "
                    f"vLLM exits at start-up; allowed: at most {limit}{extend}")


def estimate_weights_bytes(spec: ServingSpec, config: dict) -> int:
    """Checkpoint size from the parameter count: quantizable linear layers at the checkpoint's
    bytes per parameter, embeddings/norms/routers at 16 bits."""
    counts = count_params(config, 1, 1)
    dtype_bytes = model_dtype_bytes(config, spec.dtype)
    linear = linear_bytes(linear_format(config, spec.quantization), dtype_bytes)
    return int(counts["gpu_linear"] * linear + counts["gpu_other"] * dtype_bytes)


def requirement_from_spec(spec: ServingSpec, model_dir: str, data: Any | None = None) -> Requirement:
    """Preflight's ``Requirement`` for a spec.

    + spec: the validated spec
    + model_dir: where the weights go on the host (its filesystem is checked for space)
    + data: host data (``preflight_weights_bytes``, ``preflight_ipc_host_shm_gib``); None: defaults
    """
    settings = PreflightSettings.of(data if data is not None else {})
    config = model_config_for(spec)
    check_context(spec, config)
    limit = context_limit(spec, config)
    weights = settings.preflight_weights_bytes
    weights = weights if weights is not None else estimate_weights_bytes(spec, config)
    # A member of a multi-node replica needs its share of the GPUs; the planner's per-GPU figures
    # already split the layers over the pipeline stages (tasks/plan.py: layers / pp per GPU).
    gpus = spec.gpus_per_node
    # With --ipc=host the container uses the host's /dev/shm; --shm-size gives it its own.
    shm = int(settings.preflight_ipc_host_shm_gib * GIB) if spec.ipc_host and gpus > 1 else 0
    serving = PlanParams(
        tp=spec.tensor_parallel_size, pp=spec.pipeline_parallel_size, dtype=spec.dtype,
        quantization=spec.quantization, kv_cache_dtype=spec.kv_cache_dtype, max_model_len=spec.max_model_len,
        gpu_memory_utilization=spec.gpu_memory_utilization, block_size=spec.block_size or 16,
        max_num_seqs=spec.max_num_seqs, max_num_batched_tokens=spec.max_num_batched_tokens,
    )
    return Requirement(
        recipe=str(spec.name), vllm_version=str(spec.version), model_config=config, weights_bytes=weights,
        model_dir=model_dir, serving=serving, gpus_needed=gpus, shm_bytes_needed=shm, accelerator=spec.accelerator,
        port=spec.port, devices=tuple(spec.devices or (range(gpus) if spec.accelerator == "ascend" else ())),
        served_model_name=str(spec.served_model_name or ""), context_limit=limit[0] if limit else 0,
        cpu_kvcache_bytes=int(spec.cpu.kvcache_space_gib * GIB) if spec.accelerator == "cpu" else 0,
        nodes=spec.nodes,
    )
