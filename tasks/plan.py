"""Memory planner: will a model fit on N GPUs, and how much KV cache (tokens, concurrency) is left?

It follows vLLM's own accounting (``determine_num_available_blocks`` / ``determine_available_memory``)::

    requested    = gpu_total x gpu_memory_utilization
    kv_available = requested - weights_per_gpu - non_torch - activation_peak - cudagraph
    blocks       = floor(kv_available / (kv_bytes_per_token_per_gpu x block_size))
    kv_tokens    = blocks x block_size
    concurrency  = kv_tokens / max_model_len

Terms (all per GPU, in GiB = 2**30 bytes, as vLLM logs them):

- ``gpu_total``: memory CUDA reports as total (``torch.cuda.mem_get_info``), a little less than nvidia-smi's
  ``memory.total`` (21.66 GiB on a 22528 MiB card; an H100's 81559 MiB shows 81079 MiB free at 0 used).
  Preflight passes nvidia-smi's total minus the reserved part (total - used - free).
- ``weights``: parameters counted from config.json, sharded as vLLM shards them: attention heads, MLP and
  expert matrices split by tp; KV-head projections replicated when tp > num_key_value_heads; embedding and
  lm_head vocab-parallel (vocab padded to 64); norms, MoE routers and MLA's q_a/kv_a projections and the DSA
  indexer replicated; layers split by pp (the heaviest stage counts). MoE counts every expert. MTP/next-n
  layers are not loaded for serving and are not counted. Plus the rotary cos/sin cache
  (max_position_embeddings x rotary_dim x dtype bytes), and what PyTorch's caching allocator counts beyond
  the tensors' bytes (up to 1 MiB per matrix just short of a 2 MiB multiple; ``tasks/plan_allocator.py``).
  Bytes per parameter: 2 for fp16/bf16, 4 for fp32; quantized checkpoints price their linear layers as
  ``tasks/vllm/quantization.py`` reads their ``quantization_config`` (awq, gptq, compressed-tensors, fp8,
  AutoRound, bitsandbytes, ...).
- ``non_torch``, ``activation_peak``: vLLM's own profile run, modelled from vLLM's source per engine and
  release in ``tasks/plan_profile.py`` (dummy forward over ``max_num_batched_tokens``, dummy sampler over
  ``max_num_seqs``, fused-MoE workspaces, non-torch memory); unset ``max_num_seqs`` /
  ``max_num_batched_tokens`` take vLLM's defaults for the release, engine and GPU. Override with
  ``non_torch_gib`` / ``activation_gib`` when a vLLM log line is at hand.
- ``cudagraph``: vLLM up to at least 0.19.0 captures CUDA graphs after sizing the KV cache, out of the
  (1 - utilization) headroom, so 0 is right for them; a release that subtracts a profiled estimate
  (``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS``, vLLM PR #30515) is modelled with ``cudagraph_gib``.
- KV bytes per token per GPU: ``2 x layers/pp x max(1, kv_heads // tp) x head_dim x kv_bytes``. MLA models
  (``kv_lora_rank``) cache one latent per token, the same on every rank: ``(kv_lora_rank + qk_rope_head_dim)
  x kv_bytes x layers/pp``; DSA models (``index_head_dim``) add the indexer's key (``index_head_dim`` fp8
  bytes + a 4-byte scale) per layer. ``kv_bytes`` is 1 for ``--kv-cache-dtype fp8*``, else the model dtype.

A plan that cannot hold one sequence of ``max_model_len`` tokens is an error result that says how many
GiB per GPU are missing. ``KV_ERROR_MARGIN_GIB`` is the planner's measured error on the KV cache (the
largest over the calibration set of public vLLM start-up logs, tests/unit/test_plan_calibration.py):
a plan short by less than it may still start, so preflight warns instead of refusing.

CLI: ``python -m tasks.plan --config PATH/config.json --gpu-mem-gib G --tp N [--pp N] [--dtype D]
[--quantization Q] [--kv-cache-dtype K] [--max-model-len L] [--gpu-memory-utilization U] [--block-size B]
[--max-num-seqs S] [--max-num-batched-tokens T] [--vllm-version V] [--engine auto|v0|v1] [--gpu-name N]
[--compute-capability C] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks import plan_allocator, plan_profile
from tasks.vllm.quantization import QUANTIZATIONS as QUANT_METHODS
from tasks.vllm.quantization import QuantizationError, WeightFormat, weight_format
from tasks.vllm.versions import DTYPE_CHOICES as DTYPES
from tasks.vllm.versions import KV_CACHE_DTYPES, Version

GIB = 1 << 30

DTYPE_BYTES = {"float16": 2, "half": 2, "bfloat16": 2, "float32": 4, "float": 4}
QUANTIZATIONS = (None, *QUANT_METHODS)

VOCAB_PAD = 64
#: The planner's measured error over the public start-up logs of tests/unit/fixtures/startup_logs/,
#: written by ``python -m tests.unit.test_plan_calibration --write``; a test fails when it is stale.
MEASURED_ERROR_PATH = Path(__file__).parent / "data" / "planner-error.json"


def measured_error() -> dict[str, Any]:
    """The calibration's measured error (``tasks/data/planner-error.json``): logs, KV and weights errors."""
    return json.loads(MEASURED_ERROR_PATH.read_text())


def _margin() -> tuple[float, str]:
    measured = measured_error()
    return (float(measured["kv_error_max_gib"]),
            f"the largest KV-cache error measured on {measured['logs']} public vLLM start-up logs, "
            "tasks/data/planner-error.json")


#: Preflight's margin, GiB of KV cache per GPU: the largest |KV error| measured over every log (reference
#: ones included), so that a host short by less may still start, as vLLM would; and where it comes from,
#: as preflight and the plan summary say it.
KV_ERROR_MARGIN_GIB, MARGIN_SOURCE = _margin()


class PlanInputError(ValueError):
    """Bad planner input: the message names the field and what is allowed."""


@dataclass(frozen=True)
class PlanParams:
    """Serving parameters that decide memory, as vLLM's flags of the same names, and the memory of
    one GPU (``gpu_mem_gib``: a host's; 0 until a host is known, e.g. in a preflight Requirement)."""

    gpu_mem_gib: float = 0.0
    tp: int = 1
    pp: int = 1
    dtype: str = "auto"
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    non_torch_gib: float | None = None
    activation_gib: float | None = None
    cudagraph_gib: float = 0.0
    vllm_release: str | None = None
    engine: str = "auto"
    gpu_name: str = ""
    compute_capability: float = 0.0

    def validate(self) -> None:
        """Raise PlanInputError naming the first bad field."""
        if not (isinstance(self.gpu_mem_gib, (int, float)) and self.gpu_mem_gib > 0):
            raise PlanInputError(f"gpu_mem_gib must be a number > 0, got {self.gpu_mem_gib!r}")
        for name in ("tp", "pp", "block_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise PlanInputError(f"{name} must be an integer >= 1, got {value!r}")
        if self.dtype not in DTYPES:
            raise PlanInputError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.quantization not in QUANTIZATIONS:
            allowed = ", ".join(str(q) for q in QUANTIZATIONS)
            raise PlanInputError(f"quantization must be one of {allowed}, got {self.quantization!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise PlanInputError(
                f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}"
            )
        if not (isinstance(self.gpu_memory_utilization, (int, float)) and 0 < self.gpu_memory_utilization <= 1):
            raise PlanInputError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}"
            )
        for name in ("max_model_len", "max_num_batched_tokens", "max_num_seqs"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise PlanInputError(f"{name} must be an integer >= 1 or unset, got {value!r}")
        for name in ("non_torch_gib", "activation_gib", "cudagraph_gib", "compute_capability"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                raise PlanInputError(f"{name} must be a number >= 0, got {value!r}")
        if self.engine not in plan_profile.ENGINES:
            raise PlanInputError(f"engine must be one of {', '.join(plan_profile.ENGINES)}, got {self.engine!r}")
        if self.vllm_release is not None:
            try:
                Version.parse(self.vllm_release)
            except ValueError as exc:
                raise PlanInputError(f"vllm_release: {exc}") from None


@dataclass
class Plan:
    """Result of ``plan()``. ``ok`` False means the model does not fit; ``error`` says why and by how much."""

    ok: bool
    error: str | None
    weights_gib_per_gpu: float
    kv_cache_gib_per_gpu: float
    kv_cache_tokens: int
    max_concurrency: float
    requested_gib_per_gpu: float
    non_torch_gib: float
    activation_gib: float
    cudagraph_gib: float
    kv_bytes_per_token_per_gpu: int
    kv_blocks: int
    max_model_len: int
    params_total: int
    params_per_gpu: int
    bytes_per_param: float
    gpus: int
    short_gib_per_gpu: float = 0.0
    engine: str = "v1"
    max_num_seqs: int = 0
    max_num_batched_tokens: int = 0
    margin_gib: float = KV_ERROR_MARGIN_GIB
    notes: list[str] = field(default_factory=list)

    @property
    def short_within_margin(self) -> bool:
        """Short of one sequence by less than the planner's measured error: vLLM may still start."""
        return not self.ok and self.short_gib_per_gpu <= self.margin_gib

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """Human lines, like vLLM's own log lines."""
        lines = [
            f"GPUs: {self.gpus}; requested per GPU: {self.requested_gib_per_gpu:.2f} GiB",
            f"weights per GPU: {self.weights_gib_per_gpu:.2f} GiB "
            f"({self.params_per_gpu / 1e9:.2f} B of {self.params_total / 1e9:.2f} B params, "
            f"{self.bytes_per_param:g} B/param)",
            f"non-torch: {self.non_torch_gib:.2f} GiB; activation peak: {self.activation_gib:.2f} GiB "
            f"({self.engine} profile run: {self.max_num_batched_tokens:,} tokens, {self.max_num_seqs} sequences); "
            f"CUDA graphs: {self.cudagraph_gib:.2f} GiB",
            f"KV cache per GPU: {self.kv_cache_gib_per_gpu:.2f} GiB = {self.kv_cache_tokens:,} tokens "
            f"({self.kv_bytes_per_token_per_gpu:,} B/token/GPU)",
            f"max concurrency at {self.max_model_len:,} tokens: {self.max_concurrency:.2f}x",
            f"planner error margin: +/-{self.margin_gib:.2f} GiB of KV cache per GPU ({MARGIN_SOURCE})",
        ]
        if self.error:
            lines.append(f"ERROR: {self.error}")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


# --- config reading ---------------------------------------------------------------------------------


def text_config(config: dict) -> dict:
    """The language-model part of a config (multimodal configs nest it under ``text_config``)."""
    inner = config.get("text_config")
    if isinstance(inner, dict) and "hidden_size" in inner:
        merged = dict(config)
        merged.update(inner)
        return merged
    return config


def _req(config: dict, key: str) -> Any:
    value = config.get(key)
    if value is None:
        raise PlanInputError(f"config.json lacks {key!r}, which the planner needs")
    return value


def model_dtype_bytes(config: dict, dtype: str) -> int:
    """Bytes of the activation/weight dtype vLLM uses for ``--dtype dtype`` with this config."""
    if dtype != "auto":
        return DTYPE_BYTES[dtype]
    name = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16").replace("torch.", "")
    # vLLM's "auto" serves fp32 checkpoints in 16-bit
    return min(DTYPE_BYTES.get(name, 2), 2)


def linear_format(config: dict, quantization: str | None) -> WeightFormat:
    """How linear layers are stored: ``--quantization`` (``quantization``) and config.json's
    ``quantization_config`` read by ``tasks.vllm.quantization.weight_format``."""
    try:
        return weight_format(config.get("quantization_config"), quantization)
    except QuantizationError as exc:
        raise PlanInputError(str(exc)) from None


def quant_config(config: dict, quantization: str | None) -> tuple[str | None, int, int]:
    """(method, bits, group_size) of the linear layers (see ``linear_format``)."""
    fmt = linear_format(config, quantization)
    return fmt.method, int(fmt.bits), fmt.group_size


def linear_bytes(fmt: WeightFormat, dtype_bytes: int) -> float:
    """Bytes per parameter of quantizable linear layers: the model dtype when unquantized."""
    return float(dtype_bytes) if fmt.method is None else fmt.bytes_per_param


@dataclass
class _Counts:
    """Parameter counts split by how vLLM shards them, per layer and globally."""

    sharded_layer: int = 0  # split by tp (quantizable linear)
    kv_layer_per_gpu_fn: Any = None
    kv_layer_total: int = 0  # k/v projections (GQA), sharded by tp with replication
    replicated_linear_layer: int = 0  # replicated, quantizable (MLA q_a/kv_a, DSA indexer)
    replicated_other_layer: int = 0  # norms, routers: 16-bit, replicated
    embed: int = 0
    lm_head: int = 0
    final_norm: int = 0


def _layer_is_sparse(config: dict, layer: int) -> bool:
    if config.get("num_experts") or config.get("num_local_experts"):
        if layer in (config.get("mlp_only_layers") or []):
            return False
        step = int(config.get("decoder_sparse_step", 1) or 1)
        return (layer + 1) % step == 0
    if config.get("n_routed_experts"):
        if layer < int(config.get("first_k_dense_replace", 0) or 0):
            return False
        freq = int(config.get("moe_layer_freq", 1) or 1)
        return layer % freq == 0
    return False


def _layer_counts(config: dict, layer: int, tp: int) -> tuple[int, int, int, int, int]:
    """(tp-sharded linear, kv total, kv per gpu, replicated linear, replicated other) for one layer."""
    hidden = int(_req(config, "hidden_size"))
    heads = int(_req(config, "num_attention_heads"))
    sharded = replicated_linear = replicated_other = 0
    kv_total = kv_gpu = 0
    replicated_other += 2 * hidden  # input and post-attention norms

    if config.get("kv_lora_rank"):
        q_lora = config.get("q_lora_rank")
        nope = int(_req(config, "qk_nope_head_dim"))
        rope = int(_req(config, "qk_rope_head_dim"))
        v_head = int(_req(config, "v_head_dim"))
        kv_lora = int(config["kv_lora_rank"])
        if q_lora:
            replicated_linear += hidden * int(q_lora)
            replicated_other += int(q_lora)
            sharded += int(q_lora) * heads * (nope + rope)
        else:
            sharded += hidden * heads * (nope + rope)
        replicated_linear += hidden * (kv_lora + rope)
        replicated_other += kv_lora
        sharded += kv_lora * heads * (nope + v_head)
        sharded += heads * v_head * hidden
        if config.get("index_head_dim") and config.get("index_n_heads"):
            idx_dim, idx_heads = int(config["index_head_dim"]), int(config["index_n_heads"])
            replicated_linear += int(q_lora or hidden) * idx_heads * idx_dim + hidden * idx_dim
            replicated_other += hidden * idx_heads + 2 * idx_dim
    else:
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        sharded += hidden * heads * head_dim + heads * head_dim * hidden
        kv_total = 2 * hidden * kv_heads * head_dim
        kv_gpu = 2 * hidden * max(1, kv_heads // tp) * head_dim
        if config.get("attention_bias") or config.get("model_type") in ("qwen2", "qwen2_moe"):
            sharded += heads * head_dim
            kv_total += 2 * kv_heads * head_dim
            kv_gpu += 2 * max(1, kv_heads // tp) * head_dim
        if config.get("model_type", "").startswith("qwen3") or config.get("use_qk_norm"):
            replicated_other += 2 * head_dim

    if _layer_is_sparse(config, layer):
        experts = int(config.get("num_experts") or config.get("num_local_experts") or config["n_routed_experts"])
        moe_inter = int(config.get("moe_intermediate_size") or _req(config, "intermediate_size"))
        replicated_other += hidden * experts  # router
        if config.get("n_routed_experts"):
            replicated_other += experts  # e_score_correction_bias
        sharded += experts * 3 * hidden * moe_inter
        shared = int(config.get("n_shared_experts") or 0) * 3 * hidden * moe_inter
        shared += 3 * hidden * int(config.get("shared_expert_intermediate_size") or 0)
        sharded += shared
    else:
        sharded += 3 * hidden * int(_req(config, "intermediate_size"))
    return sharded, kv_total, kv_gpu, replicated_linear, replicated_other


def count_params(config: dict, tp: int = 1, pp: int = 1) -> dict[str, int]:
    """Parameter counts: total, and the heaviest GPU's share split into linear vs 16-bit-only parts.

    Returns ``{"total", "gpu_linear", "gpu_other", "gpu_total"}`` ("other" = embeddings, lm_head, norms,
    routers: never quantized).
    """
    config = text_config(config)
    layers = int(_req(config, "num_hidden_layers"))
    hidden = int(_req(config, "hidden_size"))
    vocab = int(_req(config, "vocab_size"))
    padded_vocab = math.ceil(vocab / VOCAB_PAD) * VOCAB_PAD
    tie = bool(config.get("tie_word_embeddings", False))

    total = vocab * hidden * (1 if tie else 2) + hidden
    per_layer_gpu_linear: list[float] = []
    per_layer_gpu_other: list[int] = []
    for layer in range(layers):
        sharded, kv_total, kv_gpu, rep_linear, rep_other = _layer_counts(config, layer, tp)
        total += sharded + kv_total + rep_linear + rep_other
        per_layer_gpu_linear.append(sharded / tp + kv_gpu + rep_linear)
        per_layer_gpu_other.append(rep_other)

    stage = math.ceil(layers / pp)
    # heaviest stage: the first `stage` layers are representative (dense layers come first in GLM/DeepSeek,
    # so take the max over the stages actually formed)
    best_linear, best_other = 0.0, 0
    for start in range(0, layers, stage):
        lin = sum(per_layer_gpu_linear[start:start + stage])
        oth = sum(per_layer_gpu_other[start:start + stage])
        if lin + oth > best_linear + best_other:
            best_linear, best_other = lin, oth
    embed_gpu = padded_vocab * hidden // tp
    head_gpu = 0 if tie else embed_gpu
    edge = embed_gpu + head_gpu if pp == 1 else max(embed_gpu, head_gpu or embed_gpu)
    gpu_other = best_other + edge + hidden
    gpu_linear = int(best_linear)
    return {"total": int(total), "gpu_linear": gpu_linear, "gpu_other": int(gpu_other),
            "gpu_total": gpu_linear + int(gpu_other)}


def allocator_overhead(config: dict, tp: int, pp: int, linear_bpp: float, dtype_bytes: int) -> int:
    """Bytes PyTorch's allocator counts beyond the weights' own on the heaviest GPU (``tasks/plan_allocator.py``).

    Linear layers stored at a whole number of bytes per parameter only (16-bit, fp8, int8): packed int4
    checkpoints allocate other shapes (qweight, scales), not modelled.
    """
    if linear_bpp != int(linear_bpp):
        return 0
    layers = int(_req(config, "num_hidden_layers"))
    stage = math.ceil(layers / pp)
    per_layer = [plan_allocator.loading_overhead(
        int(elements * linear_bpp) for elements in plan_allocator.layer_tensor_elements(
            config, tp, _layer_is_sparse(config, layer))) for layer in range(layers)]
    embed = math.ceil(int(_req(config, "vocab_size")) / VOCAB_PAD) * VOCAB_PAD // tp * int(config["hidden_size"])
    edges = 1 if pp > 1 or config.get("tie_word_embeddings") else 2
    return (max(sum(per_layer[start:start + stage]) for start in range(0, layers, stage))
            + edges * plan_allocator.loading_overhead([embed * dtype_bytes]))


def kv_bytes_per_token_per_gpu(config: dict, tp: int, pp: int, kv_bytes: int) -> int:
    """KV cache bytes one token costs on one GPU (see module docstring)."""
    config = text_config(config)
    layers = math.ceil(int(_req(config, "num_hidden_layers")) / pp)
    if config.get("kv_lora_rank"):
        per_layer = (int(config["kv_lora_rank"]) + int(_req(config, "qk_rope_head_dim"))) * kv_bytes
        if config.get("index_head_dim"):
            per_layer += int(config["index_head_dim"]) + 4
        return per_layer * layers
    heads = int(_req(config, "num_attention_heads"))
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or int(_req(config, "hidden_size")) // heads)
    return 2 * layers * max(1, kv_heads // tp) * head_dim * kv_bytes


def plan(config: dict, params: PlanParams) -> Plan:
    """Plan memory per GPU for ``config`` (a parsed config.json) served with ``params``."""
    params.validate()
    config = text_config(config)
    notes: list[str] = []
    tp, pp = params.tp, params.pp
    dtype_bytes = model_dtype_bytes(config, params.dtype)
    lin_bpp = linear_bytes(linear_format(config, params.quantization), dtype_bytes)

    heads = int(_req(config, "num_attention_heads"))
    if heads % tp:
        raise PlanInputError(f"tp={tp} must divide num_attention_heads={heads}")
    kv_heads = int(config.get("num_key_value_heads") or heads)
    if not config.get("kv_lora_rank") and tp > kv_heads and tp % kv_heads:
        raise PlanInputError(f"tp={tp} must be a multiple of num_key_value_heads={kv_heads} when larger")
    if not config.get("kv_lora_rank") and tp > kv_heads:
        notes.append(f"tp {tp} > {kv_heads} KV heads: KV heads are replicated, each GPU holds one")

    counts = count_params(config, tp, pp)
    rotary_dim = int(config.get("qk_rope_head_dim") or config.get("head_dim")
                     or int(_req(config, "hidden_size")) // heads)
    rotary_dim = int(rotary_dim * float(config.get("partial_rotary_factor", 1.0) or 1.0))
    max_pos = int(config.get("max_position_embeddings") or 0)
    rotary_bytes = max_pos * rotary_dim * dtype_bytes
    weights_bytes = (counts["gpu_linear"] * lin_bpp + counts["gpu_other"] * dtype_bytes + rotary_bytes
                     + allocator_overhead(config, tp, pp, lin_bpp, dtype_bytes))

    kv_bytes = 1 if params.kv_cache_dtype.startswith("fp8") else (
        DTYPE_BYTES[params.kv_cache_dtype] if params.kv_cache_dtype != "auto" else dtype_bytes)
    per_token = kv_bytes_per_token_per_gpu(config, tp, pp, kv_bytes)

    max_model_len = params.max_model_len or max_pos
    if not max_model_len:
        raise PlanInputError("max_model_len is unset and config.json has no max_position_embeddings")
    if max_pos and max_model_len > max_pos and not config.get("rope_scaling"):
        notes.append(f"max_model_len {max_model_len} exceeds max_position_embeddings {max_pos} "
                     "(vLLM refuses without rope scaling)")
    try:
        engine = plan_profile.engine_for(params.vllm_release, params.engine, params.compute_capability)
    except ValueError as exc:
        raise PlanInputError(f"engine: {exc}") from None
    # V0 never turns chunked prefill on by itself for MLA or an active sliding window (get_sliding_window)
    sliding = config.get("sliding_window") and config.get("use_sliding_window", True) is not False
    default_seqs, default_tokens = plan_profile.scheduler_defaults(
        engine, params.vllm_release, max_model_len, params.gpu_mem_gib, params.gpu_name,
        chunked_prefill_allowed=not (config.get("kv_lora_rank") or sliding))
    seqs = params.max_num_seqs or default_seqs
    batched = params.max_num_batched_tokens or default_tokens
    run = plan_profile.profile_run(plan_profile.model_shape(config, tp), engine, seqs, batched, dtype_bytes)
    if not plan_profile.calibrated(engine, params.vllm_release):
        notes.append(f"vLLM {params.vllm_release or '(release unknown)'} ({engine}) is not among the releases the "
                     "planner was checked against (tasks/plan_profile.py CALIBRATED): its error may exceed the margin")

    gpus = tp * pp
    non_torch = params.non_torch_gib if params.non_torch_gib is not None else plan_profile.non_torch_gib(
        engine, tp, params.gpu_name)
    activation = params.activation_gib if params.activation_gib is not None else run.activation_bytes / GIB
    requested = params.gpu_mem_gib * params.gpu_memory_utilization
    weights_gib = weights_bytes / GIB
    kv_gib = requested - weights_gib - non_torch - activation - params.cudagraph_gib

    block_bytes = per_token * params.block_size
    blocks = max(0, int(kv_gib * GIB // block_bytes)) if kv_gib > 0 else 0
    tokens = blocks * params.block_size
    concurrency = tokens / max_model_len
    needed_gib = math.ceil(max_model_len / params.block_size) * block_bytes / GIB

    ok, error, short = True, None, 0.0
    if kv_gib < needed_gib:
        ok = False
        short = needed_gib - kv_gib
        fixed = weights_gib + non_torch + activation + params.cudagraph_gib
        error = (
            f"one sequence of {max_model_len:,} tokens needs {needed_gib:.2f} GiB of KV cache per GPU; "
            f"weights ({weights_gib:.2f} GiB) and overheads ({fixed - weights_gib:.2f} GiB) leave "
            f"{kv_gib:.2f} GiB of the {requested:.2f} GiB requested: {short:.2f} GiB per GPU short"
        )
    return Plan(
        ok=ok,
        error=error,
        weights_gib_per_gpu=round(weights_gib, 4),
        kv_cache_gib_per_gpu=round(max(kv_gib, 0.0), 4),
        kv_cache_tokens=tokens,
        max_concurrency=round(concurrency, 4),
        requested_gib_per_gpu=round(requested, 4),
        non_torch_gib=round(non_torch, 4),
        activation_gib=round(activation, 4),
        cudagraph_gib=params.cudagraph_gib,
        kv_bytes_per_token_per_gpu=per_token,
        kv_blocks=blocks,
        max_model_len=max_model_len,
        params_total=counts["total"],
        params_per_gpu=counts["gpu_total"],
        bytes_per_param=round(lin_bpp, 4),
        gpus=gpus,
        short_gib_per_gpu=round(short, 4),
        engine=engine,
        max_num_seqs=seqs,
        max_num_batched_tokens=batched,
        notes=notes,
    )


def load_config(path: str | Path) -> dict:
    """Read a config.json; a directory means its config.json."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanInputError(f"config: {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise PlanInputError(f"config: {path} is not JSON ({exc})") from None


def bundled_config(name: str) -> dict:
    """A config.json shipped under tasks/data/configs/<name>.json (e.g. "Qwen3-30B-A3B")."""
    return load_config(Path(__file__).parent / "data" / "configs" / f"{name}.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.plan", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="config.json of the model (or its directory)")
    parser.add_argument("--gpu-mem-gib", type=float, required=True, help="CUDA-visible memory per GPU, GiB")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--dtype", default="auto", choices=DTYPES)
    parser.add_argument("--quantization", default=None)
    parser.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-num-seqs", type=int, default=None)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--non-torch-gib", type=float, default=None)
    parser.add_argument("--activation-gib", type=float, default=None)
    parser.add_argument("--cudagraph-gib", type=float, default=0.0)
    parser.add_argument("--vllm-version", default=None, help="vLLM release (its engine and defaults)")
    parser.add_argument("--engine", default="auto", choices=plan_profile.ENGINES)
    parser.add_argument("--gpu-name", default="", help='nvidia-smi name, e.g. "NVIDIA A100-SXM4-80GB"')
    parser.add_argument("--compute-capability", type=float, default=0.0)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_args(argv)
    try:
        params = PlanParams(
            gpu_mem_gib=args.gpu_mem_gib, tp=args.tp, pp=args.pp, dtype=args.dtype,
            quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype,
            max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
            block_size=args.block_size, max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens, non_torch_gib=args.non_torch_gib,
            activation_gib=args.activation_gib, cudagraph_gib=args.cudagraph_gib,
            vllm_release=args.vllm_version, engine=args.engine, gpu_name=args.gpu_name,
            compute_capability=args.compute_capability,
        )
        result = plan(load_config(args.config), params)
    except PlanInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
