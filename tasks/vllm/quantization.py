"""Quantization methods: the one list the spec accepts and the planner models, and how each stores weights.

``QUANTIZATIONS`` is what ``serve.quantization`` (vLLM's ``--quantization``) may say; the spec refuses any
other value at load time, and ``tasks.plan`` prices every value here (a test walks the list). A checkpoint
usually describes its own method in ``config.json``'s ``quantization_config``; ``weight_format`` reads it:

- ``awq`` / ``awq_marlin``: ``bits`` (or ``w_bit``), ``group_size`` (or ``q_group_size``), ``zero_point``:
  packed int-N weights, one fp16 scale and one packed zero point per group (AutoAWQ's layout, which vLLM's
  ``AWQLinearMethod.create_weights`` allocates: qweight, qzeros, scales).
- ``gptq`` / ``gptq_marlin`` / ``marlin`` / ``moe_wna16``: ``bits``, ``group_size`` (-1: one group per
  output row), packed zero points always allocated (``GPTQLinearMethod`` / ``GPTQMarlinLinearMethod``
  create ``qzeros`` whether or not ``sym``).
- ``auto-round`` (Intel AutoRound, e.g. GLM-5's mixed int4 exports): ``bits``, ``group_size``, ``sym``
  (zero points only when asymmetric); per-layer overrides in ``extra_config`` are ignored (the default
  bits cover the bulk of the weights).
- ``compressed-tensors`` (llm-compressor): ``config_groups.<group>.weights`` carries ``num_bits``, ``type``
  (int | float), ``strategy`` (tensor | channel | group | block | tensor_group), ``group_size``,
  ``symmetric``: FP8-dynamic is 8-bit float per channel, w8a8 8-bit int, w4a16 4-bit int in groups of 128,
  NVFP4 4-bit float in groups of 16 with fp8 scales.
- ``fp8``: 8-bit float weights, per-tensor scales or 128x128 block scales (``weight_block_size``);
  online quantization (``--quantization fp8`` on a 16-bit checkpoint) gives the same layout.
- ``bitsandbytes``: ``load_in_4bit`` (NF4/FP4, one fp32 absmax per 64 weights, or an 8-bit absmax with
  ``bnb_4bit_use_double_quant``) or ``load_in_8bit`` (LLM.int8, a scale per row); in-flight quantization
  without a config is 4-bit (vLLM's default).
- ``gguf``: the bits live in the .gguf file, not in config.json; priced as Q8_0 (8.5 bits per weight),
  the widest common GGUF type, so a plan errs towards less KV cache.
- ``ascend``: vllm-ascend's W8A8 checkpoints (msModelSlim): 8-bit weights, a scale per output channel.

Embeddings, lm_head, norms and MoE routers stay 16-bit in every method (``tasks.plan.count_params``
keeps them apart).
"""

from __future__ import annotations

from dataclasses import dataclass

#: --quantization values llmfleet accepts (checkpoints usually self-describe, so leaving it unset is
#: often best). "ascend" is vllm-ascend's own method.
QUANTIZATIONS = ("awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "compressed-tensors",
                 "bitsandbytes", "gguf", "marlin", "moe_wna16", "auto-round", "ascend")

#: quant_method spellings in config.json that name a method of QUANTIZATIONS.
_ALIASES = {"auto_round": "auto-round", "autoround": "auto-round", "compressed_tensors": "compressed-tensors",
            "bnb": "bitsandbytes"}
_INT_FAMILY = ("awq", "awq_marlin", "gptq", "gptq_marlin", "marlin", "moe_wna16")


class QuantizationError(ValueError):
    """A quantization method or config the planner cannot price; the message names what is allowed."""


@dataclass(frozen=True)
class WeightFormat:
    """How one quantized linear weight is stored: ``bits`` per weight plus, per group of ``group_size``
    input weights (0: per row or per tensor, negligible), a scale of ``scale_bytes`` and, with
    ``zero_point``, a zero point packed at ``bits``."""

    method: str | None
    bits: float = 16.0
    group_size: int = 0
    scale_bytes: float = 0.0
    zero_point: bool = False

    @property
    def bytes_per_param(self) -> float:
        """Bytes per weight, scales and zero points included."""
        per_group = 0.0
        if self.group_size:
            per_group = (self.scale_bytes + (self.bits / 8 if self.zero_point else 0.0)) / self.group_size
        return self.bits / 8 + per_group


def canonical_method(name: str | None) -> str | None:
    """The QUANTIZATIONS spelling of a method name from a flag or a config.json."""
    if not name:
        return None
    low = str(name).strip().lower()
    return _ALIASES.get(low, low)


def _group(value: object, default: int) -> int:
    group = int(value if value is not None else default)
    return max(group, 0)  # gptq's -1 ("one group per row") stores a scale per row: negligible


def _compressed_tensors(qc: dict) -> WeightFormat:
    groups = qc.get("config_groups") or {}
    weights = None
    for group in groups.values():
        targets = group.get("targets") or []
        if group.get("weights") and (weights is None or "Linear" in targets):
            weights = group["weights"]
    if weights is None:
        raise QuantizationError("compressed-tensors quantization_config has no config_groups.*.weights; "
                                "expected e.g. {'num_bits': 8, 'type': 'float', 'strategy': 'channel'}")
    bits = int(weights.get("num_bits", 8))
    is_float = str(weights.get("type", "int")).lower() == "float"
    strategy = str(weights.get("strategy", "tensor")).lower()
    group = _group(weights.get("group_size"), 128) if strategy in ("group", "tensor_group") else 0
    scale = 1.0 if (is_float and bits == 4) else 2.0  # NVFP4 keeps fp8 group scales
    return WeightFormat("compressed-tensors", bits, group, scale, not weights.get("symmetric", True))


def _bitsandbytes(qc: dict) -> WeightFormat:
    if qc.get("load_in_8bit"):
        return WeightFormat("bitsandbytes", 8)
    absmax = 1.0 if qc.get("bnb_4bit_use_double_quant") else 4.0
    return WeightFormat("bitsandbytes", 4, 64, absmax)


def weight_format(quantization_config: dict | None, method: str | None = None) -> WeightFormat:
    """How linear weights are stored, from ``--quantization`` (``method``) and config.json's
    ``quantization_config``; ``method`` None and no config: unquantized (bits 16, the caller applies
    the model dtype). Raises QuantizationError for a method outside QUANTIZATIONS.

    >>> weight_format({"quant_method": "awq", "bits": 4, "group_size": 128}).bytes_per_param
    0.51953125
    """
    qc = quantization_config or {}
    name = canonical_method(method) or canonical_method(qc.get("quant_method"))
    if name is None:
        return WeightFormat(None)
    if name not in QUANTIZATIONS:
        raise QuantizationError(f"quantization {name!r} is not one llmfleet knows; allowed: "
                                f"{', '.join(QUANTIZATIONS)}")
    checkpoint = canonical_method(qc.get("quant_method"))
    if checkpoint == "compressed-tensors" or (name == "compressed-tensors" and qc):
        return _compressed_tensors(qc)
    if name in _INT_FAMILY or name == "auto-round":
        bits = int(qc.get("bits", qc.get("w_bit", 4)))
        group = _group(qc.get("group_size", qc.get("q_group_size")), 128)
        if name == "auto-round":
            zero = not qc.get("sym", True)
        elif name.startswith("awq"):
            zero = bool(qc.get("zero_point", True))
        else:
            zero = True
        return WeightFormat(name, bits, group, 2.0, zero)
    if name == "fp8":
        return WeightFormat("fp8", 8)
    if name == "bitsandbytes":
        return _bitsandbytes(qc)
    if name == "gguf":
        return WeightFormat("gguf", 8, 32, 2.0)  # Q8_0: 32 int8 weights + one fp16 scale
    return WeightFormat("ascend", 8)
