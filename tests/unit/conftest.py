"""Shared helpers for unit tests: paths of the real fixtures and a runner for fact commands under sh."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent / "fixtures"
REAL_H100 = Path("/work/shared/fixtures/nvidia-smi/h100-80gb-driver580")
STANDINS = REPO / "tasks" / "lab" / "standins"


def real_fixture(name: str) -> str:
    """A real captured output; tests that need it skip when the shared fixtures are not mounted."""
    path = REAL_H100 / name
    if not path.exists():
        pytest.skip(f"real fixture {path} not available")
    return path.read_text()


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
