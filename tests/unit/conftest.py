"""Shared helpers for unit tests: paths of the real fixtures and a runner for fact commands under sh."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent / "fixtures"
# Real output captured on an H100 with driver 580 (copied from the shared fixtures).
REAL_H100 = REPO / "tests" / "fixtures" / "real" / "h100-80gb-driver580"
STANDINS = REPO / "tasks" / "lab" / "standins"


def real_fixture(name: str) -> str:
    """A real captured output; tests that need it skip when the shared fixtures are not mounted."""
    path = REAL_H100 / name
    if not path.exists():
        pytest.skip(f"real fixture {path} not available")
    return path.read_text()


@pytest.fixture(autouse=True)
def fake_hosts_run_batches(monkeypatch):
    """@fake hosts answer a batch of facts (tasks.facts.together) as a shell would: each fact's subshell
    gets the host's ``fake_responses`` answer for that fact's command, under its marker line."""
    import re

    from pyinfra.connectors.fake import FakeConnector
    from pyinfra.connectors.util import CommandOutput, OutputLine

    from tasks.facts.together import MARK

    part = re.compile(re.escape(f'echo "{MARK}') + r'(\d+)"; \( (.*?)\n\) \|\| rc=\$\?', re.S)
    lookup = FakeConnector._lookup_response

    def batched(self, command_str):
        parts = part.findall(command_str)
        if not parts:
            return lookup(self, command_str)
        ok, lines = True, []
        for index, command in parts:
            success, output = lookup(self, command)
            ok = ok and success
            lines += [OutputLine("stdout", f"{MARK}{index}"), *output.combined_lines]
        return ok, CommandOutput(lines)

    monkeypatch.setattr(FakeConnector, "_lookup_response", batched)


_STAT_NAMES = {"file": "regular file", "dir": "directory", "link": "symbolic link", "other": "fifo"}


def digest_lines(entries: dict[str, tuple]) -> list[str]:
    """FileDigests' output lines (stat's, then sha256sum's) for path -> (type, sha or '-', 'mode user group')."""
    stats = [f"{_STAT_NAMES[t]}\t{o}\t{p}" for p, (t, s, o) in entries.items()]
    return stats + [f"{s}  {p}" for p, (t, s, o) in entries.items() if s != "-"]


def run_sh(command: str, env: dict | None = None) -> tuple[list[str], int]:
    """Run a fact's command as pyinfra would (sh -c), return (stdout lines, exit status)."""
    result = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, env=env, timeout=30)
    return result.stdout.splitlines(), result.returncode


@pytest.fixture
def standin_bin(tmp_path):
    """A bin dir holding the stand-ins under their real names, and a function writing a profile."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").symlink_to(STANDINS / "nvidia_smi.py")
    (bin_dir / "npu-smi").symlink_to(STANDINS / "npu_smi.py")
    profile_path = tmp_path / "accelerators.json"

    def env_for(profile: dict, with_tools: tuple[str, ...] = ("nvidia-smi",)) -> dict:
        profile_path.write_text(json.dumps(profile))
        only = tmp_path / ("only-" + "-".join(with_tools))
        only.mkdir(exist_ok=True)
        for tool in with_tools:
            link = only / tool
            if not link.exists():
                link.symlink_to(bin_dir / tool)
        return {**os.environ, "PATH": f"{only}:/usr/bin:/bin", "LLMFLEET_STANDIN_PROFILE": str(profile_path)}

    return env_for


# --- weights: stand-in hub repositories on loopback ---


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


PEER_TOKEN = "peer-run-token-Zm9vYmFyYmF6cXV4"


@pytest.fixture
def peer_token(tmp_path) -> Path:
    """A fan-out run's token in a root-only file (peer_server.py refuses one others may read)."""
    path = tmp_path / "peer.token"
    path.write_text(PEER_TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def peer_servers(peer_token):
    """Start ``peer_server.py`` on loopback with the given arguments (and this run's token); returns its
    URL. Every server started is stopped after the test."""
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> str:
        proc = subprocess.Popen([sys.executable, str(PEER), *args, "--bind", "127.0.0.1", "--port", "0",
                                 "--token-file", str(peer_token)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        procs.append(proc)
        line = proc.stdout.readline()
        assert line.startswith("LLMFLEET_PEER listening http://127.0.0.1:"), line + proc.stderr.read()
        return line.split()[-1]

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)
