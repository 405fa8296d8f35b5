"""What PyTorch's CUDA caching allocator counts for the weights vLLM loads, beyond their bytes.

vLLM logs the weights as the growth of ``torch.cuda.memory_allocated`` while the model loads
(``DeviceMemoryProfiler`` in ``vllm/utils``; V0 ``model_runner.py`` "Loading model weights took", V1
``gpu_model_runner.py`` "Model loading took"), and subtracts that figure from the KV-cache budget. The
allocator (``c10/cuda/CUDACachingAllocator.cpp``) counts a block's size, not the bytes asked for:

- ``round_size``: requests are rounded up to 512 B;
- ``get_allocation_size``: a request above 10 MiB gets a new segment rounded up to 2 MiB (1-10 MiB: a
  20 MiB segment; up to 1 MiB: the small pool);
- ``should_split``: a large block is split only when more than 1 MiB (``kSmallSize``) would remain, so a
  request 1 MiB or less short of its segment's size is handed, and counted as, the whole segment.

Weights whose byte size sits just under a multiple of 2 MiB cost up to 1 MiB more each: nothing for
Llama-3.1-8B (every matrix a multiple of 2 MiB), 57 MiB for Qwen2.5-7B (hidden 3584: 31.5 MiB qkv,
24.5 MiB o_proj, 259 MiB gate_up, 129.5 MiB down in each of 28 layers), 168 MiB per GPU for a Qwen2 14B
at tp 2. Small tensors (norms, biases) are left out: at most 511 B each.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

MIB = 1 << 20
MIN_BLOCK = 512  # kMinBlockSize
SMALL_SIZE = MIB  # kSmallSize: the small pool's limit and the split threshold
MIN_LARGE_ALLOC = 10 * MIB  # kMinLargeAlloc
ROUND_LARGE = 2 * MIB  # kRoundLarge


def counted_bytes(nbytes: int) -> int:
    """The bytes ``memory_allocated`` grows by when a fresh tensor of ``nbytes`` is allocated.

    + nbytes: the tensor's size in bytes

    >>> counted_bytes(31 * MIB + MIB // 2), counted_bytes(30 * MIB + MIB // 2), counted_bytes(1000)
    (33554432, 31981568, 1024)
    """
    size = max(MIN_BLOCK, math.ceil(nbytes / MIN_BLOCK) * MIN_BLOCK)
    if size < MIN_LARGE_ALLOC:  # small pool, or a 20 MiB segment split for it
        return size
    segment = math.ceil(size / ROUND_LARGE) * ROUND_LARGE
    return segment if segment - size <= SMALL_SIZE else size


def loading_overhead(tensor_bytes: Iterable[int]) -> int:
    """Bytes counted beyond ``sum(tensor_bytes)`` when tensors of these sizes are allocated one by one."""
    return sum(counted_bytes(size) - size for size in tensor_bytes)


def layer_tensor_elements(config: dict, tp: int, sparse: bool) -> list[int]:
    """Elements of one decoder layer's large weight tensors on one GPU, as vLLM allocates them.

    Fused as vLLM fuses them: ``QKVParallelLinear`` (q, k, v; KV heads replicated below one per GPU),
    ``RowParallelLinear`` o_proj, ``MergedColumnParallelLinear`` gate_up and down_proj, or a ``FusedMoE``
    layer's two stacked expert tensors (``w13_weight`` [E, 2I/tp, h], ``w2_weight`` [E, h, I/tp]) and its
    shared experts. MLA attention (``kv_lora_rank``) is left out (not modelled).

    + config: the (text) config.json
    + tp: tensor parallel size
    + sparse: whether this layer is a MoE layer
    """
    hidden = int(config["hidden_size"])
    tensors: list[int] = []
    if not config.get("kv_lora_rank"):
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        q = heads * head_dim // tp
        tensors += [(q + 2 * max(1, kv_heads // tp) * head_dim) * hidden, q * hidden]
    if sparse:
        experts = int(config.get("num_experts") or config.get("num_local_experts") or config["n_routed_experts"])
        inter = int(config.get("moe_intermediate_size") or config["intermediate_size"]) // tp
        tensors += [experts * 2 * inter * hidden, experts * inter * hidden]
        shared = (int(config.get("n_shared_experts") or 0) * int(config.get("moe_intermediate_size") or 0)
                  + int(config.get("shared_expert_intermediate_size") or 0)) // tp
    else:
        shared = int(config.get("intermediate_size") or 0) // tp
    if shared:
        tensors += [2 * shared * hidden, shared * hidden]
    return tensors
