"""Shared fixtures for weights tests: stand-in hub repositories on loopback."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tasks.lab.standins.hub import StandinHub
from tasks.lab.standins.model_repo import publish, write_model_repo

REPO_ROOT = Path(__file__).resolve().parents[2]
FETCH = REPO_ROOT / "tasks" / "weights" / "fetch.py"
PEER = REPO_ROOT / "tasks" / "weights" / "peer_server.py"
REPO_ID = "Qwen/Qwen3-0.6B"
TOKEN = "hf_standin_Secret_0123456789abcdef"
DEFAULT_REV = {"huggingface": "main", "modelscope": "master"}


@pytest.fixture(scope="session")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A hub tree with one repo: main/master -> commit A (seed 0), v2 -> commit B (seed 1)."""
    base = tmp_path_factory.mktemp("hub")
    src_a, src_b = base / "src-a", base / "src-b"
    sizes = write_model_repo(src_a, seed=0, shards=3, shard_bytes=2 * 1024 * 1024)
    write_model_repo(src_b, seed=1, shards=3, shard_bytes=2 * 1024 * 1024)
    root = base / "root"
    commit_a = publish(root, REPO_ID, src_a, ["main", "master"])
    commit_b = publish(root, REPO_ID, src_b, ["v2"])
    return {"root": root, "src": src_a, "src_b": src_b, "sizes": sizes, "commit_a": commit_a, "commit_b": commit_b}


@pytest.fixture(scope="session")
def _hub_open(hub_root: dict[str, Any]):
    with StandinHub(hub_root["root"]) as hub:
        yield hub


@pytest.fixture(scope="session")
def _hub_tok(hub_root: dict[str, Any]):
    with StandinHub(hub_root["root"], token=TOKEN) as hub:
        yield hub


@pytest.fixture
def hub(_hub_open: StandinHub) -> StandinHub:
    _hub_open.state.reset()
    return _hub_open


@pytest.fixture
def hub_tok(_hub_tok: StandinHub) -> StandinHub:
    _hub_tok.state.reset()
    return _hub_tok


def stats(hub: StandinHub) -> dict[str, Any]:
    with urllib.request.urlopen(f"{hub.url}/_standin/stats", timeout=5) as r:
        return json.loads(r.read())


def add_fault(hub: StandinHub, fault: dict[str, Any]) -> None:
    req = urllib.request.Request(
        f"{hub.url}/_standin/faults", data=json.dumps(fault).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        assert json.loads(r.read())["ok"] is True


FETCH_HOME = Path(tempfile.mkdtemp(prefix="llmfleet-fetch-home-"))
atexit.register(shutil.rmtree, FETCH_HOME, True)


def run_fetch(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run fetch.py as the host would: a fresh interpreter on the uploaded file, a scratch HOME."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELSCOPE_"))}
    full_env.update({"HOME": str(FETCH_HOME), "NO_PROXY": "127.0.0.1,localhost", **(env or {})})
    return subprocess.run(
        [sys.executable, str(FETCH), *args], capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def marker_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("LLMFLEET_WEIGHTS ")]
