"""vLLM's start-up memory profile, per engine and release, modelled from vLLM's source.

Before it sizes the KV cache, vLLM runs the model once on dummy data and measures what that run costs
(V0: ``vllm/worker/worker.py`` ``Worker.determine_num_available_blocks``; V1:
``vllm/v1/worker/gpu_worker.py`` ``Worker.determine_available_memory``; both through
``memory_profiling`` in ``vllm/utils``)::

    kv_cache = total x gpu_memory_utilization - weights - non_torch_increase - torch_peak_increase

``torch_peak_increase`` ("PyTorch activation peak memory" in V0's log) is what this module computes, term
by term, from the code vLLM runs in that profile:

- the dummy forward: ``max_num_batched_tokens`` tokens (V0 ``model_runner.py``
  ``GPUModelRunnerBase.profile_run`` spreads them over ``max_num_seqs`` dummy sequences; V1
  ``gpu_model_runner.py`` ``GPUModelRunner.profile_run`` calls ``_dummy_run(max_num_tokens)``).
  Its peak is inside the MLP (``LlamaMLP.forward`` and its siblings): when ``down_proj`` allocates its
  output, the residual, the MLP input, ``gate_up`` (``[N, 2I/tp]``, still referenced), the activation
  ``[N, I/tp]`` and the output ``[N, h]`` are alive: ``N x (3h + 3I/tp) x dtype``. MoE layers
  (``fused_moe.py`` ``fused_experts_impl``) allocate ``intermediate_cache13`` ``[M, top_k, max(2I/tp, h)]``
  and ``intermediate_cache2`` ``[M, top_k, I/tp]`` (M = tokens, at most ``VLLM_FUSED_MOE_CHUNK_SIZE``
  32768) beside the three ``[N, h]`` tensors, plus a shared expert's MLP.
- the dummy sampler, on the driver rank only (V0: ``Worker.execute_model`` samples on the driver; the
  executor takes the minimum over ranks, so the driver decides). V0 samples every dummy sequence
  (``max_num_seqs`` rows) with ``top_k = vocab - 1, top_p = 0.99`` (``_dummy_run``), through
  ``Sampler.forward`` and ``_apply_top_k_top_p`` (``vllm/model_executor/layers/sampler.py``); at the
  re-scatter these are alive per logit: the caller's 16-bit logits 2 B, their fp32 copy 4 B, the sorted
  values 4 B and indices 8 B, the int64 index input ATen's CUDA sort materializes beside its outputs
  8 B (our reading of ATen's sort, not of vLLM), the top-k and top-p masks 1 + 1 B, ``probs_sort`` 4 B,
  its cumsum 4 B, the scattered result 4 B: 40 B.
  V1 (``_dummy_sampler_run``: ``min(max_num_seqs, max_num_batched_tokens)`` rows, temperature 0.5,
  top-k/top-p) holds the model-dtype logits, their fp32 copy (``Sampler.forward``), the softmax
  probabilities and the exponential noise of ``random_sample``
  (``vllm/v1/sample/ops/topk_topp_sampler.py``): dtype + 4 + 4 + 4 B per logit, top-k/top-p masking
  adding no full-size buffer (the Triton kernel of ``topk_topp_triton.py`` masks in place; vLLM 0.19.0's
  logs measure ~15 B per logit for a 16-bit model and ~17 B for the same model at ``--dtype float32``,
  so the 4-byte fp32 working copy is there for an fp32 model too: dtype + 12 B in both cases). V1
  releases whose native path still sorts would cost ~16 B more per logit: not modelled, no log of one
  at hand. The dummy forward's ``hidden_states`` ``[N, h]`` stay
  alive meanwhile (``profile_run`` holds them).
- persistent buffers: V1's fused-MoE kernels (``fused_moe/modular_kernel.py``) take their workspaces
  (cache13 + cache2 above) from the worker's ``WorkspaceManager`` (``vllm/v1/worker/workspace.py``),
  which keeps them, so they add to the sampler's peak.

``torch_peak_increase = max(forward, sampler) + persistent``.

``non_torch_increase`` (cuBLAS workspaces, NCCL communicators and all-reduce buffers) is not in
vLLM's Python source; the values below were read from reference logs that are NOT in the calibration
set (tests/unit/fixtures/startup_logs/README.md lists both):

- V0: 0.16 GiB on one GPU (vLLM PR #12126's log, H100), 0.20 GiB with tp > 1 (seed 001's log, 4x RTX
  2080 Ti 22 GB).
- V1: 0.25 GiB on one GPU, 2.1 GiB with tp > 1 between NVLink-connected GPUs (vLLM 0.19.0 on H100 80GB,
  Qwen2.5-7B at tp 1, 2 and 4: 0.24 / 2.06 / 2.13 GiB; NCCL communicators and all-reduce buffers), 0.34 GiB
  with tp > 1 between PCIe-only GPUs (vLLM 0.19.0 on 4x L40S, Qwen2.5-72B at tp 4: 0.9 x 44.42 - 33.98 weights
  - 0.54 modelled activation - 5.11 KV logged). There vLLM runs without its own all-reduce buffers
  (``custom_all_reduce.py``: "not supported on more than two PCIe-only GPUs"; ``symm_mem.py``: the
  symmetric-memory communicator needs compute capability 9.0 or 10.0, both logged) and NCCL moves data
  over PCIe with fewer channels. Which GPUs count as PCIe-only: ``pcie_only``.

CUDA graphs: up to at least 0.19.0 vLLM captures them after sizing the KV cache (0.19.0 logs its
estimate but does not subtract it), so they take the (1 - gpu_memory_utilization) headroom; a release
that subtracts them (``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS``) is modelled with ``cudagraph_gib``.

Defaults for what a recipe leaves unset, for the OpenAI API server (``vllm serve``); a release not listed
keeps the row before it. ``gpu_memory_utilization`` 0.9 and ``block_size`` 16 (CUDA) in every supported
release (``EngineArgs``); ``max_model_len`` from config.json (``max_position_embeddings``).

- V0 (``vllm/engine/arg_utils.py``: 0.7.x ``EngineArgs.create_engine_config``, 0.8.x-0.10.x
  ``EngineArgs._set_default_args_v0``; ``vllm/config.py`` ``SchedulerConfig.__post_init__``):
  ``max_num_seqs`` 256. Chunked prefill is turned on when ``max_model_len`` > 32768 (``use_long_context``),
  except for MLA models (``model_config.use_mla``) and models with an active sliding window
  (``get_sliding_window()``); then ``max_num_batched_tokens`` is 2048 (``_DEFAULT_MAX_NUM_BATCHED_TOKENS``,
  vLLM PR #10544), else ``max(max_model_len, 2048)``.
- V1 (chunked prefill always on for generative models), ``EngineArgs._set_default_args_v1`` (0.8.x-0.10.x),
  ``EngineArgs.get_batch_defaults`` / ``_set_default_max_num_seqs_and_batched_tokens_args`` (later
  releases, same rule), per first release (PR merge dates against release dates):

  - 0.8.0: 8192 tokens on GPUs named H100 / H200, else 2048 (PR #12369); ``max_num_seqs`` 1024 on every GPU;
  - 0.8.4: ``max_num_seqs`` back to 256 except on H100 / H200 (PR #16158);
  - 0.8.5: the large defaults (8192 tokens, 1024 sequences) go by memory, GPUs of >= 70 GiB (PR #17073);
  - 0.9.0: ... except the A100 (PR #17885): ``device_memory >= 70 * GiB_bytes and "a100" not in name``.

  ``max_num_seqs`` is then capped at ``max_num_batched_tokens`` (no effect at these values).
The engine: V1 is the default from 0.8.0 (``VLLM_USE_V1``); 0.8.x-0.9.x fall back to V0 on GPUs of
compute capability < 8.0 (``EngineArgs._is_v1_supported_oracle``); V0 is gone from 0.11.0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tasks.vllm.versions import Version

GIB = 1 << 30
ENGINES = ("auto", "v0", "v1")

V1_DEFAULT_FROM = Version.parse("0.8.0")
V0_FALLBACK_UNTIL = Version.parse("0.10.0")  # cc < 8.0 runs V0 below this release
V0_REMOVED_IN = Version.parse("0.11.0")
LONG_CONTEXT = 32768
MOE_CHUNK = 32768

#: Sampler bytes per logit (see the module docstring for the tensors counted).
V0_SAMPLER_BYTES_PER_LOGIT = 2 + 4 + 4 + 8 + 8 + 1 + 1 + 4 + 4 + 4
#: Non-torch memory per GPU, GiB, by engine and whether tp > 1 (read from reference logs, see docstring).
NON_TORCH_GIB = {("v0", False): 0.16, ("v0", True): 0.20, ("v1", False): 0.25, ("v1", True): 2.1}
#: V1 with tp > 1 between PCIe-only GPUs (read from the 4x L40S reference log, see docstring).
V1_PCIE_MULTI_GPU_NON_TORCH_GIB = 0.34
#: GPU names that carry no NVLink: GeForce / RTX cards, L4 / L40 / L40S, A10 / A10G / A40, T4, any PCIe part.
#: An NVLink bridge on such cards (2x RTX 3090, A100 PCIe pairs) is not seen in the name: the planner then
#: plans more KV cache than vLLM finds, by at most 2.1 - 0.34 GiB per GPU.
_PCIE_ONLY = re.compile(r"geforce|\brtx\b|\bl4\b|\bl40s?\b|\ba10g?\b|\ba40\b|\bt4\b|pcie", re.IGNORECASE)


def engine_for(version: str | None, engine: str = "auto", compute_capability: float = 0.0) -> str:
    """The engine ("v0" | "v1") a release runs; ``engine`` other than "auto" wins (VLLM_USE_V1).

    + version: vLLM version ("0.8.5"); None: a current release (V1)
    + engine: "auto", "v0" or "v1"
    + compute_capability: the GPU's (e.g. 7.5); 0 when unknown (taken as >= 8.0)

    >>> engine_for("0.8.5", compute_capability=7.5), engine_for("0.8.5"), engine_for("0.7.3")
    ('v0', 'v1', 'v0')
    """
    v = Version.parse(version) if version is not None else None
    if engine == "v0" and v is not None and v >= V0_REMOVED_IN:
        raise ValueError(f"vLLM {v} has no V0 engine (removed in {V0_REMOVED_IN}); use engine auto or v1")
    if engine != "auto":
        return engine
    if v is None:
        return "v1"
    if v < V1_DEFAULT_FROM:
        return "v0"
    if v < V0_FALLBACK_UNTIL and compute_capability and compute_capability < 8.0:
        return "v0"
    return "v1"


#: V1's OpenAI-server defaults by first release: (release, large GPU rule, (seqs, tokens) on a large GPU,
#: (seqs, tokens) on any other); see the module docstring for each row's source.
V1_SERVER_DEFAULTS = (
    (Version.parse("0.8.0"), "h100-h200", (1024, 8192), (1024, 2048)),
    (Version.parse("0.8.4"), "h100-h200", (1024, 8192), (256, 2048)),
    (Version.parse("0.8.5"), "70gib", (1024, 8192), (256, 2048)),
    (Version.parse("0.9.0"), "70gib-not-a100", (1024, 8192), (256, 2048)),
)


def _large_gpu(rule: str, gpu_total_gib: float, gpu_name: str) -> bool:
    name = gpu_name.lower()
    if rule == "h100-h200":
        return "h100" in name or "h200" in name
    return gpu_total_gib >= 70 and (rule == "70gib" or "a100" not in name)


def scheduler_defaults(engine: str, version: str | None, max_model_len: int, gpu_total_gib: float,
                       gpu_name: str = "", chunked_prefill_allowed: bool = True) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) vLLM's OpenAI server picks when the recipe sets neither.

    + engine: "v0" or "v1"
    + version: vLLM version (None: current)
    + max_model_len: the served context
    + gpu_total_gib: the GPU's total memory as CUDA reports it
    + gpu_name: nvidia-smi's name ("NVIDIA A100-SXM4-80GB"); "" when unknown
    + chunked_prefill_allowed: False for what V0 never chunks by default (MLA, an active sliding window)

    >>> scheduler_defaults("v1", "0.19.0", 32768, 79.1, "NVIDIA H100 80GB HBM3")
    (1024, 8192)
    >>> scheduler_defaults("v1", "0.19.0", 32768, 79.1, "NVIDIA A100-SXM4-80GB")
    (256, 2048)
    >>> scheduler_defaults("v0", "0.7.2", 131072, 23.5), scheduler_defaults("v0", "0.8.5", 32768, 21.7)
    ((256, 2048), (256, 32768))
    """
    if engine == "v0":
        chunked = max_model_len > LONG_CONTEXT and chunked_prefill_allowed
        return 256, 2048 if chunked else max(max_model_len, 2048)
    v = Version.parse(version) if version is not None else V1_SERVER_DEFAULTS[-1][0]
    rows = [row for row in V1_SERVER_DEFAULTS if row[0] <= v] or [V1_SERVER_DEFAULTS[0]]
    _, rule, large, other = rows[-1]
    seqs, tokens = large if _large_gpu(rule, gpu_total_gib, gpu_name) else other
    return min(seqs, tokens), tokens


@dataclass(frozen=True)
class ModelShape:
    """The config.json numbers the profile depends on (per GPU where vLLM shards them)."""

    hidden: int
    vocab: int
    mlp_per_gpu: int  # dense MLP intermediate / tp (largest dense layer)
    experts_topk: int = 0
    moe_per_gpu: int = 0  # one expert's intermediate / tp
    shared_per_gpu: int = 0  # shared experts' intermediate / tp

    @property
    def is_moe(self) -> bool:
        return self.experts_topk > 0


def model_shape(config: dict, tp: int) -> ModelShape:
    """The ModelShape of a (text) config.json served at tensor parallel ``tp``."""
    hidden = int(config["hidden_size"])
    experts = config.get("num_experts") or config.get("num_local_experts") or config.get("n_routed_experts")
    dense = int(config.get("intermediate_size") or 0)
    if not experts:
        return ModelShape(hidden, int(config["vocab_size"]), dense // tp)
    moe = int(config.get("moe_intermediate_size") or dense)
    shared = int(config.get("n_shared_experts") or 0) * moe + int(config.get("shared_expert_intermediate_size") or 0)
    dense_layers = int(config.get("first_k_dense_replace") or 0) or len(config.get("mlp_only_layers") or [])
    return ModelShape(hidden, int(config["vocab_size"]), (dense if dense_layers else 0) // tp,
                      int(config.get("num_experts_per_tok") or 1), moe // tp, shared // tp)


@dataclass(frozen=True)
class ProfileRun:
    """What vLLM's profile run costs on the driver GPU, in bytes (see the module docstring)."""

    engine: str
    max_num_seqs: int
    max_num_batched_tokens: int
    forward_bytes: int
    sampler_bytes: int
    persistent_bytes: int

    @property
    def activation_bytes(self) -> int:
        """torch_peak_increase: the larger phase plus what stays allocated across both."""
        return max(self.forward_bytes, self.sampler_bytes) + self.persistent_bytes


def _moe_workspace(shape: ModelShape, tokens: int, dtype_bytes: int) -> int:
    m = min(tokens, MOE_CHUNK) * shape.experts_topk
    return m * (max(2 * shape.moe_per_gpu, shape.hidden) + shape.moe_per_gpu) * dtype_bytes


def profile_run(shape: ModelShape, engine: str, max_num_seqs: int, max_num_batched_tokens: int,
                dtype_bytes: int) -> ProfileRun:
    """Model vLLM's profile run of ``shape`` (see the module docstring for each term's origin).

    + shape: from ``model_shape``
    + engine: "v0" or "v1"
    + max_num_seqs, max_num_batched_tokens: the scheduler limits in effect
    + dtype_bytes: bytes of the activation dtype (2 for fp16/bf16, 4 for fp32)
    """
    n = max_num_batched_tokens
    residual = 3 * shape.hidden * n * dtype_bytes
    dense = 3 * shape.mlp_per_gpu * n * dtype_bytes
    moe = shared = 0
    if shape.is_moe:
        moe = _moe_workspace(shape, n, dtype_bytes)
        shared = 3 * shape.shared_per_gpu * n * dtype_bytes
    held_hidden = shape.hidden * n * dtype_bytes
    if engine == "v0":
        rows = max_num_seqs
        per_logit = V0_SAMPLER_BYTES_PER_LOGIT
        forward = residual + max(dense, moe + shared)
        persistent = 0
    else:
        rows = min(max_num_seqs, n)
        per_logit = dtype_bytes + 4 + 4 + 4
        forward = residual + max(dense, shared)
        persistent = moe
    sampler = rows * shape.vocab * per_logit + held_hidden
    return ProfileRun(engine, max_num_seqs, n, int(forward), int(sampler), int(persistent))


#: Releases the calibration logs cover, per engine (tests/unit/fixtures/startup_logs/): V0 0.7.x-0.8.5,
#: V1 0.19.x. V1 0.8.x measured its peak from the GPU's free memory and added non-torch memory twice
#: (gpu_worker.py ``determine_available_memory`` of that series). Of 0.9-0.18 two 0.10.2 logs are at hand (8x L40S
#: tp 8 with expert parallelism, and one 24 GB GPU): KV +6.0% / +7.6%, both from a profile activation ~0.9 GiB above
#: this model's (0.10.2's sampler, whose native top-k/top-p path sorts the logits: ~37 B per logit, not modelled).
CALIBRATED = {"v0": (Version.parse("0.7.0"), Version.parse("0.9.0")),
              "v1": (Version.parse("0.19.0"), Version.parse("0.20.0"))}


def calibrated(engine: str, version: str | None) -> bool:
    """Whether public start-up logs of this engine and release back the model (see CALIBRATED)."""
    if version is None:
        return False
    low, high = CALIBRATED[engine]
    return low <= Version.parse(version) < high


def pcie_only(gpu_name: str) -> bool:
    """Whether nvidia-smi's GPU name is a part without NVLink (see ``_PCIE_ONLY``).

    >>> pcie_only("NVIDIA L40S"), pcie_only("NVIDIA A100-SXM4-80GB"), pcie_only("NVIDIA A100-PCIE-40GB")
    (True, False, True)
    """
    return bool(_PCIE_ONLY.search(gpu_name))


def non_torch_gib(engine: str, tp: int, gpu_name: str = "") -> float:
    """Non-torch memory per GPU (GiB) vLLM's profile measures, by engine, tensor parallelism and interconnect.

    + engine: "v0" or "v1"
    + tp: tensor parallel size
    + gpu_name: nvidia-smi's name; "" (unknown) plans as NVLink-connected, the larger figure
    """
    if engine == "v1" and tp > 1 and pcie_only(gpu_name):
        return V1_PCIE_MULTI_GPU_NON_TORCH_GIB
    return NON_TORCH_GIB[(engine, tp > 1)]
