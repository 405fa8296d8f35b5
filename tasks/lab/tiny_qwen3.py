"""A tiny Qwen3 checkpoint the real vLLM loads and runs, generated at lab build time.

The lab's hub stand-in serves it for the ``cpu`` recipe, so the real vLLM CPU server loads real
files: ``Qwen3ForCausalLM`` with hidden size 64, 2 layers, 4 attention heads, 2 KV heads, head_dim 32
(the CPU attention supports 32, 64, 80, ...; 16 kills the engine at the first request), float32;
a byte-level BPE tokenizer trained here (tasks/lab/tiny_qwen3_tokenizer.py, ~4000 tokens on the
repository's own text) with Qwen3's added tokens; a ChatML chat template with ``enable_thinking``
and Hermes-style tools (templates/lab/tiny_qwen3.jinja).

The weights are random except for a designed path: every layer's output projections
(``o_proj``, ``down_proj``) are zero, so the residual stream is the token's embedding, and the
embeddings and ``lm_head`` make greedy decoding walk a fixed chain from any prompt:
``<tool_call>`` -> ``{"name": "get_weather", "arguments": {"city": "Paris"}}`` (one added
token) -> ``</tool_call>`` -> ``<|im_end|>``. Random weights would answer with random tokens
and never call a tool; this model's answer is a real generation (the real forward pass, the
real sampler) whose text vLLM's real Hermes tool parser has to parse, and it never emits
``<think>``. It proves the plumbing, not a model's quality.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from .config import REPO_ROOT
from .standins.model_repo import write_safetensors

REPO_ID = "Qwen/Qwen3-0.6B"  # the cpu recipe's model: the hub stand-in serves this in its place
TEMPLATE = REPO_ROOT / "templates" / "lab" / "tiny_qwen3.jinja"
TOKENIZER_SCRIPT = Path(__file__).with_name("tiny_qwen3_tokenizer.py")
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE = 64, 2, 4, 2, 32, 128
VOCAB_TARGET = 4000
#: Qwen3's added tokens, in its order, with whether each is special (skipped in decoded text).
ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<think>", False),
         ("</think>", False), ("<tool_call>", False), ("</tool_call>", False)]
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
#: Greedy decoding's chain: token -> the next one. Any other token leads to "<tool_call>".
CHAIN = {None: "<tool_call>", "<tool_call>": CALL, CALL: "</tool_call>", "</tool_call>": "<|im_end|>",
         "<|im_end|>": "<|endoftext|>"}


def corpus() -> list[Path]:
    """The text the tokenizer learns from: the repository's own docs and sources."""
    return sorted([REPO_ROOT / "README.md", *REPO_ROOT.glob("tasks/**/*.py"), *REPO_ROOT.glob("tasks/recipes/*.yaml")])


def train_tokenizer(out: Path, site: Path) -> dict[str, int]:
    """Write ``out/tokenizer.json`` with the ``tokenizers`` importable from ``site``; return token -> id."""
    added = [[t, special] for t, special in ADDED] + [[CALL, False]]
    base = VOCAB_TARGET - len(added)
    subprocess.run([sys.executable, str(TOKENIZER_SCRIPT), str(out), str(base), *map(str, corpus()), "--",
                    json.dumps(added)], check=True, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    doc = json.loads((out / "tokenizer.json").read_text())
    vocab = dict(doc["model"]["vocab"])
    vocab.update({t["content"]: t["id"] for t in doc["added_tokens"]})
    return vocab


def _f32(values) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def weights(vocab: dict[str, int], vocab_size: int, seed: int = 0) -> dict[str, tuple[list[int], bytes]]:
    """The tensors (name -> (shape, float32 bytes)): random, with the designed chain (module doc)."""
    rng = random.Random(seed)

    def noise(n: int) -> list[float]:
        return [rng.gauss(0.0, 0.02) for _ in range(n)]

    states = list(CHAIN)  # class k uses hidden dimension k
    klass = {vocab[t]: k for k, t in enumerate(states) if t is not None}
    embed, head = [], [0.0] * (vocab_size * HIDDEN)
    for tok in range(vocab_size):
        row = [0.0] * len(states) + noise(HIDDEN - len(states))
        row[klass.get(tok, 0)] = 1.0
        embed += row
    for k, state in enumerate(states):
        head[vocab[CHAIN[state]] * HIDDEN + k] = 4.0
    ones = [1.0] * HIDDEN
    out = {"model.embed_tokens.weight": ([vocab_size, HIDDEN], _f32(embed)),
           "lm_head.weight": ([vocab_size, HIDDEN], _f32(head)),
           "model.norm.weight": ([HIDDEN], _f32(ones))}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj.weight": [HEADS * HEAD_DIM, HIDDEN],
                  "self_attn.k_proj.weight": [KV_HEADS * HEAD_DIM, HIDDEN],
                  "self_attn.v_proj.weight": [KV_HEADS * HEAD_DIM, HIDDEN],
                  "mlp.gate_proj.weight": [INTERMEDIATE, HIDDEN], "mlp.up_proj.weight": [INTERMEDIATE, HIDDEN]}
        for name, shape in shapes.items():
            out[p + name] = (shape, _f32(noise(math.prod(shape))))
        # Zero output projections: the layers run, and leave the residual stream as it was.
        out[p + "self_attn.o_proj.weight"] = ([HIDDEN, HEADS * HEAD_DIM], bytes(4 * HIDDEN * HEADS * HEAD_DIM))
        out[p + "mlp.down_proj.weight"] = ([HIDDEN, INTERMEDIATE], bytes(4 * HIDDEN * INTERMEDIATE))
        for norm, size in (("input_layernorm", HIDDEN), ("post_attention_layernorm", HIDDEN),
                           ("self_attn.q_norm", HEAD_DIM), ("self_attn.k_norm", HEAD_DIM)):
            out[f"{p}{norm}.weight"] = ([size], _f32([1.0] * size))
    return out


def config(vocab: dict[str, int], vocab_size: int) -> dict:
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "vocab_size": vocab_size,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": False,
            "torch_dtype": "float32", "use_cache": True, "use_sliding_window": False, "sliding_window": None,
            "max_window_layers": LAYERS, "initializer_range": 0.02,
            "bos_token_id": vocab["<|endoftext|>"], "eos_token_id": vocab["<|im_end|>"]}


def write(dest: Path, site: Path) -> Path:
    """Write the checkpoint into ``dest`` (tokenizer trained with the ``tokenizers`` in ``site``); return ``dest``.

    Example::

        write(Path("/tmp/tiny"), vllm_cpu.tokenizers_site("0.32.0"))
    """
    dest.mkdir(parents=True, exist_ok=True)
    vocab = train_tokenizer(dest, site)
    vocab_size = -(-(max(vocab.values()) + 1) // 64) * 64  # padded, as Qwen's checkpoints are
    write_safetensors(dest / "model.safetensors", weights(vocab, vocab_size), {"format": "pt"}, dtype="F32")
    texts = {
        "config.json": config(vocab, vocab_size),
        "generation_config.json": {"bos_token_id": vocab["<|endoftext|>"],
                                   "eos_token_id": [vocab["<|im_end|>"], vocab["<|endoftext|>"]],
                                   "do_sample": False},
        "tokenizer_config.json": {
            "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 4096, "clean_up_tokenization_spaces": False,
            "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
            "errors": "replace", "split_special_tokens": False, "add_prefix_space": False,
            "chat_template": TEMPLATE.read_text()},
    }
    for name, body in texts.items():
        (dest / name).write_text(json.dumps(body, indent=2) + "\n")
    (dest / "README.md").write_text("# tiny Qwen3 for the llmfleet lab\n\nGenerated by tasks/lab/tiny_qwen3.py: "
                                    "random weights with a designed greedy path (see there). Not a language model.\n")
    return dest


def publish_to(hub_root: Path, site: Path) -> int:
    """Generate the checkpoint and publish it to the hub stand-in as ``REPO_ID`` (main); return its bytes."""
    from .standins.model_repo import publish

    with tempfile.TemporaryDirectory() as tmp:
        files = write(Path(tmp) / "repo", site)
        size = sum(f.stat().st_size for f in files.rglob("*") if f.is_file())
        publish(hub_root, REPO_ID, files, ["main"])
    return size


if __name__ == "__main__":
    target = Path(sys.argv[1])
    shutil.rmtree(target, ignore_errors=True)
    print(write(target, Path(sys.argv[2])))
