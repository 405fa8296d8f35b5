"""Hub stand-in and model repo generator, checked through the real clients' listing calls."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tasks.lab.standins.model_repo import QWEN3_0_6B_CONFIG, read_safetensors_header
from tasks.weights import hub_protocol as hp
from tasks.weights import manifest as mf

from .conftest import REPO_ID, TOKEN


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_model_repo_is_valid_safetensors_with_qwen3_config(hub_root):
    src = hub_root["src"]
    cfg = json.loads((src / "config.json").read_text())
    assert cfg == QWEN3_0_6B_CONFIG
    assert (cfg["architectures"], cfg["hidden_size"], cfg["num_hidden_layers"]) == (["Qwen3ForCausalLM"], 1024, 28)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    seen: dict[str, str] = {}
    data_total = 0
    for shard in sorted(src.glob("model-*.safetensors")):
        raw = shard.read_bytes()
        (hlen,) = struct.unpack("<Q", raw[:8])
        assert hlen % 8 == 0
        header = read_safetensors_header(shard)
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        end = max(v["data_offsets"][1] for v in tensors.values())
        assert 8 + hlen + end == len(raw)  # header + data exactly fill the file
        for name, meta in tensors.items():
            a, b = meta["data_offsets"]
            assert meta["dtype"] == "BF16" and (b - a) == 2 * meta["shape"][0] * meta["shape"][1]
            seen[name] = shard.name
            data_total += b - a
    assert seen == index["weight_map"]
    assert index["metadata"]["total_size"] == data_total
    assert "model.layers.27.self_attn.q_norm.weight" in seen
    tok = json.loads((src / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "BPE" and tok["added_tokens"][2]["content"] == "<|im_end|>"
    assert hub_root["commit_a"] != hub_root["commit_b"]


def test_hf_listing_through_real_client_has_sha256_and_sizes(hub, hub_root):
    from huggingface_hub import HfApi

    info = HfApi(endpoint=hub.url, token=False).model_info(REPO_ID, revision="main", files_metadata=True)
    assert info.sha == hub_root["commit_a"]
    sib = {s.rfilename: s for s in info.siblings}
    assert {n: s.size for n, s in sib.items()} == hub_root["sizes"]
    shard = "model-00001-of-00003.safetensors"
    assert sib[shard].lfs.sha256 == hashlib.sha256((hub_root["src"] / shard).read_bytes()).hexdigest()
    assert sib["config.json"].lfs is None
    assert sib["config.json"].blob_id == mf.git_blob_sha1(hub_root["src"] / "config.json")


def test_modelscope_listing_through_real_client_has_sha256(hub, hub_root):
    from modelscope_hub import HubApi

    files = HubApi(endpoint=hub.url, token="").list_repo_files(REPO_ID, "model", revision="master")
    got = {f.path: (f.size, f.sha256) for f in files}
    assert got == {
        n: (size, hashlib.sha256((hub_root["src"] / n).read_bytes()).hexdigest())
        for n, size in hub_root["sizes"].items()
    }


def test_resolve_headers_and_ranges(hub, hub_root):
    shard = "model-00001-of-00003.safetensors"
    data = (hub_root["src"] / shard).read_bytes()
    url = f"{hub.url}/{REPO_ID}/resolve/main/{shard}"
    status, headers, body = get(url, {"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert headers["X-Repo-Commit"] == hub_root["commit_a"]
    assert headers["X-Linked-Etag"].strip('"') == hashlib.sha256(data).hexdigest()
    assert headers["X-Linked-Size"] == str(len(data))
    status, _, body = get(url, {"Range": "bytes=-10"})
    assert status == 206 and body == data[-10:]
    status, headers, _ = get(url, {"Range": f"bytes={len(data)}-"})
    assert status == 416
    assert stats_bytes(hub) == 100 + 10


def stats_bytes(hub) -> int:
    return json.loads(get(f"{hub.url}/_standin/stats")[2])["file_bytes"]


def test_errors_use_hub_error_headers(hub, hub_tok):
    status, headers, _ = get(f"{hub.url}/api/models/{REPO_ID}/revision/nope")
    assert status == 404 and headers["X-Error-Code"] == "RevisionNotFound"
    status, headers, _ = get(f"{hub.url}/api/models/Qwen/none/revision/main")
    assert status == 404 and headers["X-Error-Code"] == "RepoNotFound"
    status, headers, _ = get(f"{hub_tok.url}/api/models/{REPO_ID}", {"Authorization": "Bearer wrong"})
    assert status == 401 and headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    status, _, _ = get(f"{hub_tok.url}/api/models/{REPO_ID}", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    status, _, body = get(f"{hub_tok.url}/api/v1/models/{REPO_ID}/repo/files?Revision=master")
    assert status == 401 and json.loads(body)["Success"] is False


def test_faults_status_and_unknown_repo(hub):
    post = lambda body: urllib.request.urlopen(  # noqa: E731
        urllib.request.Request(f"{hub.url}/_standin/faults", data=json.dumps(body).encode(), method="POST"), timeout=5
    )
    post({"status": 503, "path": "config.json", "times": 1})
    assert get(f"{hub.url}/{REPO_ID}/resolve/main/config.json")[0] == 503
    assert get(f"{hub.url}/{REPO_ID}/resolve/main/config.json")[0] == 200
    post({"unknown_repo": REPO_ID})
    assert get(f"{hub.url}/api/models/{REPO_ID}/revision/main")[0] == 404
    with pytest.raises(urllib.error.HTTPError) as err:
        post({"nonsense": 1})
    assert err.value.code == 400


def test_parse_range():
    assert hp.parse_range(None, 10) is None
    assert hp.parse_range("bytes=2-", 10) == (2, 9)
    assert hp.parse_range("bytes=2-100", 10) == (2, 9)
    assert hp.parse_range("bytes=-3", 10) == (7, 9)
    assert hp.parse_range("bytes=0-1,4-5", 10) is None  # multi-range: whole file
    with pytest.raises(hp.HubError):
        hp.parse_range("bytes=10-", 10)


def test_cli_starts_and_serves(hub_root):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasks.lab.standins.hub", "--bind", "127.0.0.1", "--port", "0",
         "--root", str(hub_root["root"])],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("stand-in hub listening http://127.0.0.1:")
        status, _, body = get(f"{line.split()[-1]}/api/models/{REPO_ID}/revision/main")
        assert status == 200 and json.loads(body)["sha"] == hub_root["commit_a"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
