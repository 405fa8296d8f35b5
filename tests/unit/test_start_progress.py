"""A replica's start-up shown as progress: the verify probe reads the phase from vLLM's own log
lines (real start-up logs from the planner's calibration fixtures and seed 004), keeps it in a
progress state file while it waits for /health, and removes the file when the wait ends."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tasks import progress
from tasks.probe import verify_endpoint as probe

from .conftest import REPO_ROOT

LOGS = REPO_ROOT / "tests" / "unit" / "fixtures" / "startup_logs"


def excerpt(name: str) -> list[str]:
    return json.loads((LOGS / f"{name}.json").read_text())["excerpt"]


def test_the_phase_follows_a_real_v1_start_up_log():
    lines = excerpt("blog-4xl40s-0.19-qwen2.5-72b-tp4")
    loaded = next(i for i, line in enumerate(lines) if "Model loading took" in line)
    assert probe.phase_of(lines[:loaded]) is None  # engine set-up: no phase line yet
    assert probe.phase_of(lines[:loaded + 1]) == "weights loaded"
    assert probe.phase_of(lines) == "allocating the KV cache"


#: What a vLLM container prints once uvicorn serves, as quoted by seed guide 004 (shared/seeds/004_*.txt).
UVICORN_START = ["INFO:     Started server process [PID]", "INFO:     Waiting for application startup.",
                 "INFO:     Application startup complete.",
                 "INFO:     Uvicorn running on http://0.0.0.0:8000 (Press CTRL+C to quit)"]


def test_the_phase_of_a_0_10_log_and_of_uvicorn_s_start():
    assert probe.phase_of(excerpt("blog-24gb-0.10.2-qwen3-8b-fp8-tp1")) == "allocating the KV cache"
    assert probe.phase_of(UVICORN_START) == "API server up"


def test_a_progress_bar_gives_the_percentage_and_a_later_line_wins():
    bar = "Loading safetensors checkpoint shards:  38% Completed | 3/8 [00:20<00:27,  5.4s/it]"
    assert probe.phase_of(["INFO [gpu_model_runner.py:1] Starting to load model Qwen/Qwen3-8B...", bar]) == \
        "loading weights 38%"
    assert probe.phase_of([bar, "INFO [default_loader.py:262] Loading weights took 12.10 seconds"]) == \
        "weights loaded"
    assert probe.phase_of(["no phase here", ""]) is None


def test_the_state_file_reads_back_through_the_host_reader(tmp_path):
    start = probe.StartProgress("qwen30b", "llmfleet-qwen30b.service", 1200, str(tmp_path))
    start.write("weights loaded")
    out = subprocess.run(["sh", "-c", progress.read_command(str(tmp_path))], capture_output=True, text=True,
                         timeout=30)
    (entry,) = progress.entries(out.stdout.splitlines())
    assert progress.describe(entry) == "replica qwen30b: weights loaded, 0s of a 20m00s start-up budget"
    assert oct(Path(start.path).stat().st_mode & 0o777) == "0o644"
    start.close()
    assert not Path(start.path).exists()
    start.close()  # twice is fine


def test_the_probe_keeps_the_file_while_it_waits_and_removes_it_after(tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "HEALTH_POLL_S", 0.1)
    monkeypatch.setattr(probe, "PROGRESS_DIR", str(tmp_path))
    monkeypatch.setattr(probe.StartProgress.__init__, "__defaults__", (str(tmp_path),))
    seen: list[list[str]] = []

    class Handler(BaseHTTPRequestHandler):
        healthy_after = 3

        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append(sorted(p.name for p in tmp_path.iterdir()))
            ok = len(seen) > self.healthy_after or self.path != "/health"
            body = json.dumps({"data": [{"id": "coder"}]}).encode() if self.path == "/v1/models" else b""
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = probe.Client(server.server_address[1], None)
        start = probe.StartProgress("coder", "llmfleet-coder.service", 30)
        try:
            waited = probe.wait_health(client, "llmfleet-coder.service", probe.time.monotonic() + 30, start)
        finally:
            start.close()
    finally:
        server.shutdown()
    assert waited >= 0.3
    assert seen[0] == [] and "replica-llmfleet-coder.service.json" in seen[-1]  # written while not healthy
    assert list(tmp_path.iterdir()) == []  # and gone after


def test_the_wait_is_bounded_by_its_budget(monkeypatch, tmp_path):
    monkeypatch.setattr(probe, "HEALTH_POLL_S", 0.05)
    client = probe.Client(1, None)  # nothing listens on port 1
    start = probe.StartProgress("coder", "u.service", 0.3, str(tmp_path))
    with pytest.raises(probe.CheckFailed, match="not healthy within the wait"):
        probe.wait_health(client, "u.service", probe.time.monotonic() + 0.3, start)
