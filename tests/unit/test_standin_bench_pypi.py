"""Lab stand-ins added for image builds and benchmarks: the PyPI index, GLM-5's transformers check,
and ``vllm bench serve`` measured against a running stand-in server (loopback only, bounded)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from tasks.lab import pypi
from tests.unit.test_vllm_standin import (  # noqa: F401 (model_dir: fixture)
    SERVER, Running, env_for, free_port, model_dir, run_once, write_safetensors,
)


def _site_with(tmp_path: Path, version: str) -> Path:
    """A directory laid out like site-packages with the stand-in transformers wheel unpacked."""
    site = tmp_path / f"site-{version}"
    with zipfile.ZipFile(pypi.build_wheel("transformers", version, tmp_path)) as zf:
        zf.extractall(site)
    return site


def _glm5_model(tmp_path: Path) -> Path:
    d = tmp_path / "glm5"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "glm_moe_dsa", "max_position_embeddings": 8192}))
    write_safetensors(d / "model.safetensors", {"w": ("BF16", [4])})
    return d


def test_index_serves_installable_wheels_to_real_pip(tmp_path):
    root = pypi.build(tmp_path / "index")
    page = (root / "simple/transformers/index.html").read_text()
    assert "transformers-5.4.0-py3-none-any.whl#sha256=" in page and "4.57.1" in page
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        target = tmp_path / "target"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "--no-cache-dir", "--index-url", f"http://127.0.0.1:{port}/simple/",
                        "--trusted-host", "127.0.0.1", "--target", str(target), "transformers==5.4.0"],
                       check=True, timeout=60, capture_output=True)
    finally:
        server.terminate()
        server.wait(timeout=5)
    out = subprocess.run([sys.executable, "-c", "import importlib.metadata as m, transformers;"
                          "print(m.version('transformers'), transformers.LLMFLEET_STANDIN)"],
                         env={"PYTHONPATH": str(target)}, capture_output=True, text=True, timeout=20)
    assert out.stdout.split() == ["5.4.0", "True"]


def test_glm5_refused_without_new_transformers(tmp_path):
    model = _glm5_model(tmp_path)
    old = run_once("0.18.0", ["--model", str(model)], PYTHONPATH=str(_site_with(tmp_path, "4.57.1")))
    assert old.returncode == 1
    assert "model type `glm_moe_dsa` but Transformers does not recognize this architecture" in old.stderr
    assert "transformers 4.57.1" in old.stderr
    srv = Running("0.18.0", ["--model", str(model)], PYTHONPATH=str(_site_with(tmp_path, "5.4.0")))
    try:
        assert srv.request("GET", "/health")[0] == 200
    finally:
        srv.stop()


def test_bench_serve_measures_a_running_server(tmp_path, model_dir):
    srv = Running("0.18.0", ["--model", str(model_dir), "--served-model-name", "m"], VLLM_API_KEY="k3y")
    result = tmp_path / "res.json"
    try:
        run = subprocess.run(
            [sys.executable, str(SERVER), "vllm", "bench", "serve", "--base-url", srv.base,
             "--model", str(model_dir), "--served-model-name", "m", "--num-prompts", "12",
             "--random-input-len", "32", "--random-output-len", "8", "--max-concurrency", "4",
             "--save-result", "--result-filename", str(result), "--metadata", "served_model_name=m"],
            env=env_for("0.18.0", OPENAI_API_KEY="k3y"), capture_output=True, text=True, timeout=60)
        denied = subprocess.run(
            [sys.executable, str(SERVER), "vllm", "bench", "serve", "--port", str(srv.port),
             "--model", str(model_dir), "--served-model-name", "m", "--num-prompts", "2"],
            env=env_for("0.18.0", OPENAI_API_KEY="wrong"), capture_output=True, text=True, timeout=60)
    finally:
        log = srv.stop()
    assert run.returncode == 0, run.stderr
    r = json.loads(result.read_text())
    assert (r["completed"], r["failed"], r["num_prompts"], r["served_model_name"]) == (12, 0, 12, "m")
    assert r["total_output_tokens"] == 12 * 8 and r["total_input_tokens"] == 12 * 32
    for key in ("mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
                "p99_tpot_ms", "mean_itl_ms", "request_throughput", "output_throughput", "duration"):
        assert isinstance(r[key], float) and r[key] >= 0, key
    assert r["p99_ttft_ms"] >= r["median_ttft_ms"] > 0
    assert abs(r["request_throughput"] * r["duration"] - 12) < 1e-6
    assert log.count('"POST /v1/completions HTTP/1.1" 200') == 12
    assert denied.returncode == 1 and "Failed requests:                         2" in denied.stdout
