"""From a serving spec to what preflight checks a host against (``tasks.preflight.Requirement``).

The model's architecture comes from a config.json bundled under tasks/data/configs/ (the base model
of the checkpoint: preflight runs before any weights are on the host); the checkpoint's own
quantization, which a base config does not carry, comes from the spec or from the repository's name
(``-AWQ``, ``-GPTQ-Int4``, ``-FP8``, AutoRound int4 exports in GPTQ format). The weights' size is an
estimate from the parameter count until a manifest on the host gives the real one.
"""

from __future__ import annotations

import re
from pathlib import Path

from .plan import bundled_config, count_params
from .preflight import Requirement
from .spec import ServingSpec

CONFIGS = Path(__file__).parent / "data" / "configs"
_QUANT_BY_NAME = (
    (re.compile(r"-AWQ\b", re.I), "awq"),
    (re.compile(r"-GPTQ", re.I), "gptq"),
    (re.compile(r"AutoRound|int4", re.I), "gptq"),
    (re.compile(r"-FP8\b", re.I), "fp8"),
)
_BYTES_PER_PARAM = {"awq": 0.56, "awq_marlin": 0.56, "gptq": 0.56, "gptq_marlin": 0.56, "fp8": 1.0}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$", re.I)


def config_name(repo_id: str) -> str:
    """The bundled config whose name is the longest prefix of the repository's model name."""
    base = repo_id.rsplit("/", 1)[-1].lower()
    names = sorted((p.stem for p in CONFIGS.glob("*.json")), key=len, reverse=True)
    for name in names:
        if base.startswith(name.lower()):
            return name
    raise ValueError(f"model.repo_id={repo_id!r}: no architecture config for it under {CONFIGS}; "
                     f"known: {', '.join(sorted(names))}")


def checkpoint_quantization(spec: ServingSpec) -> str | None:
    if spec.quantization:
        return spec.quantization
    for pattern, method in _QUANT_BY_NAME:
        if pattern.search(spec.model.repo_id):
            return method
    return None


def size_bytes(text: str) -> int:
    """Docker-style sizes: "16g", "512m", "1GiB" -> bytes."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"shm_size={text!r}: expected a size such as 16g or 512m")
    return int(float(m[1]) * 1024 ** "bkmgt".index((m[2] or "b").lower()))


def requirement_from_spec(spec: ServingSpec, model_dir: str, weights_present_bytes: int = 0) -> Requirement:
    """What a host must offer to serve ``spec`` with its weights under ``model_dir``."""
    config = bundled_config(config_name(spec.model.repo_id))
    quant = checkpoint_quantization(spec)
    dtype_bytes = 4 if spec.dtype in ("float", "float32") else 2
    weights = int(count_params(config)["total"] * _BYTES_PER_PARAM.get(quant or "", dtype_bytes))
    tp, pp = spec.tensor_parallel_size, spec.pipeline_parallel_size
    if spec.shm_size and not spec.ipc_host:
        shm = size_bytes(spec.shm_size)
    else:
        # --ipc=host: the container uses the host's /dev/shm; NCCL needs room there once tp > 1.
        shm = (1 << 30) if tp * pp > 1 else 0
    kwargs = dict(
        recipe=spec.name or spec.served_model_name,
        vllm_version=str(spec.version),
        model_config=config,
        weights_bytes=weights,
        model_dir=model_dir,
        tp=tp,
        pp=pp,
        dtype=spec.dtype,
        quantization=quant,
        kv_cache_dtype=spec.kv_cache_dtype,
        max_model_len=spec.max_model_len,
        gpu_memory_utilization=spec.gpu_memory_utilization,
        shm_bytes_needed=shm,
        weights_present_bytes=weights_present_bytes,
        accelerator=spec.accelerator,
    )
    for key in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
        value = getattr(spec, key)
        if value is not None:
            kwargs[key] = value
    req = Requirement(**kwargs)
    req.validate()
    return req
