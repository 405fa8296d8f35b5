"""Stand-in model repository generator: a small, valid Qwen3-shaped checkpoint for hub tests.

``config.json`` carries the real Qwen3-0.6B architecture values (huggingface.co/Qwen/Qwen3-0.6B
config.json, transformers 4.51.0); the safetensors shards hold real Qwen3 tensor *names* with
shrunken shapes and deterministic pseudo-random bf16 bytes, so the files are valid safetensors
(8-byte little-endian header length, JSON header, raw data) of a few hundred KB to a few MB --
they are stand-in weights, not a loadable model.

Repositories for the hub stand-in are published into a tree (see ``tasks/lab/standins/hub.py``)::

    <root>/<owner>/<name>/refs.json            {"main": "<sha>", "master": "<sha>", "v1": "<sha>"}
    <root>/<owner>/<name>/commits/<sha>/...     the files of that commit

DEFAULTS (prefix ``standin_repo_``):

- ``standin_repo_shards``: number of safetensors shards.
- ``standin_repo_shard_bytes``: approximate size of each shard.
- ``standin_repo_seed``: seed of the deterministic tensor bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "standin_repo_shards": 3,
    "standin_repo_shard_bytes": 1024 * 1024,
    "standin_repo_seed": 0,
}

QWEN3_0_6B_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

GENERATION_CONFIG: dict[str, Any] = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.95,
    "transformers_version": "4.51.0",
}

_LAYER_TENSORS = (
    "input_layernorm.weight",
    "mlp.down_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "post_attention_layernorm.weight",
    "self_attn.k_norm.weight",
    "self_attn.k_proj.weight",
    "self_attn.o_proj.weight",
    "self_attn.q_norm.weight",
    "self_attn.q_proj.weight",
    "self_attn.v_proj.weight",
)


def _stream(seed: int, label: str, n: int) -> bytes:
    """Deterministic pseudo-random bytes (sha256 in counter mode)."""
    out = bytearray()
    counter = 0
    base = f"{seed}:{label}:".encode()
    while len(out) < n:
        out += hashlib.sha256(base + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:n])


def write_safetensors(path: Path, tensors: dict[str, tuple[list[int], bytes]], metadata: dict[str, str],
                      dtype: str = "BF16") -> None:
    """Write a safetensors file by hand: u64 LE header length, JSON header (space-padded to 8), data
    (every tensor of ``dtype``: "BF16", "F32")."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name in sorted(tensors):
        shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for name in sorted(tensors):
            fh.write(tensors[name][1])


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors header (used by tests to check the files are well-formed)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(n))


def _tokenizer_files() -> dict[str, Any]:
    """A tiny byte-level BPE tokenizer in the Qwen2 tokenizer format (vocab and merges are toy-sized)."""
    byte_vocab = {chr(c) if 33 <= c <= 126 else f"<0x{c:02X}>": c for c in range(256)}
    merges = ["Ġ t", "Ġ a", "h e", "i n", "r e"]
    vocab = dict(byte_vocab)
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    added = [
        {"id": 151643 + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, t in enumerate(specials)
    ]
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab, "merges": merges,
        },
    }
    tokenizer_config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 131072,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
        "chat_template": (
            "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content"
            " + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
            "{%- endif %}"
        ),
    }
    return {
        "tokenizer.json": tokenizer_json,
        "tokenizer_config.json": tokenizer_config,
        "vocab.json": vocab,
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
    }


def write_model_repo(
    dest: Path,
    *,
    seed: int = DEFAULTS["standin_repo_seed"],
    shards: int = DEFAULTS["standin_repo_shards"],
    shard_bytes: int = DEFAULTS["standin_repo_shard_bytes"],
) -> dict[str, int]:
    """Write the model files into ``dest``; return {relative path: size}.

    + dest: directory to create/fill
    + seed: changes every tensor byte (a "new commit" of the same model)
    + shards: number of ``model-0000i-of-0000n.safetensors`` files
    + shard_bytes: approximate bytes per shard (>= 16 KiB)

    Example::

        write_model_repo(Path("/tmp/repo"), seed=1, shards=3, shard_bytes=1 << 20)
    """
    if shards < 1 or shard_bytes < 16 * 1024:
        raise ValueError("shards must be >= 1 and shard_bytes >= 16384")
    dest.mkdir(parents=True, exist_ok=True)
    cfg = QWEN3_0_6B_CONFIG
    names = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{t}" for i in range(cfg["num_hidden_layers"]) for t in _LAYER_TENSORS
    ]
    per_shard = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for s in range(shards):
        chunk = names[s * per_shard : (s + 1) * per_shard]
        if not chunk:
            break
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        elems = max(8, (shard_bytes // len(chunk)) // 2)  # bf16 = 2 bytes per element
        cols = 64
        rows = max(1, elems // cols)
        tensors = {n: ([rows, cols], _stream(seed, n, rows * cols * 2)) for n in chunk}
        write_safetensors(dest / fname, tensors, {"format": "pt"})
        for n in chunk:
            weight_map[n] = fname
        total += rows * cols * 2 * len(chunk)
    files: dict[str, Any] = {
        "config.json": cfg,
        "generation_config.json": GENERATION_CONFIG,
        "model.safetensors.index.json": {"metadata": {"total_size": total}, "weight_map": weight_map},
        **_tokenizer_files(),
    }
    for name, body in files.items():
        text = body if isinstance(body, str) else json.dumps(body, indent=2, ensure_ascii=False) + "\n"
        (dest / name).write_text(text, encoding="utf-8")
    (dest / "README.md").write_text(f"# stand-in Qwen3 checkpoint (seed {seed})\n", encoding="utf-8")
    return {p.relative_to(dest).as_posix(): p.stat().st_size for p in sorted(dest.rglob("*")) if p.is_file()}


def commit_sha(files_dir: Path) -> str:
    """A 40-hex commit id derived from the file names and contents (stable for equal content)."""
    digest = hashlib.sha1()
    for p in sorted(files_dir.rglob("*")):
        if p.is_file():
            digest.update(p.relative_to(files_dir).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(p.read_bytes()).digest())
    return digest.hexdigest()


def publish(root: Path, repo_id: str, files_dir: Path, refs: list[str]) -> str:
    """Copy ``files_dir`` into the stand-in hub tree as a commit and point ``refs`` at it; return the sha."""
    owner, name = repo_id.split("/")
    repo_dir = root / owner / name
    sha = commit_sha(files_dir)
    target = repo_dir / "commits" / sha
    if not target.exists():
        shutil.copytree(files_dir, target)
    refs_file = repo_dir / "refs.json"
    current = json.loads(refs_file.read_text()) if refs_file.exists() else {}
    current.update({r: sha for r in refs})
    refs_file.write_text(json.dumps(current, indent=1, sort_keys=True))
    return sha
