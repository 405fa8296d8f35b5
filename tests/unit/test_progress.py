"""Progress of long work: the fetch's state file, the host-side reader, the lines a run prints and
status lists, and the pyinfra contract of the watch (a real pyinfra CLI run on @local)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks import progress
from tasks.status import in_progress
from tasks.weights.fetch_progress import Progress, ProgressState

from .conftest import REPO_ROOT

ENTRY = {"kind": "progress", "work": "weights Qwen/Qwen3-0.6B@main", "phase": "download", "done": 3 << 20,
         "total": 12 << 20, "rate_bps": 1 << 20, "eta_s": 9, "pid": 1, "at": 0}


def test_an_entry_in_one_line():
    assert progress.describe(ENTRY) == ("weights Qwen/Qwen3-0.6B@main: download 3.0 MiB / 12.0 MiB (25%), "
                                        "1.0 MiB/s, ETA 9s")
    verify = {**ENTRY, "phase": "verify", "done": 0, "rate_bps": None, "eta_s": None, "total": 470 << 30}
    assert progress.describe(verify) == "weights Qwen/Qwen3-0.6B@main: verify 470.0 GiB"
    assert progress.duration(255) == "4m15s" and progress.duration(7500) == "2h05m"
    assert progress.progress_lines(["noise", json.dumps(ENTRY), "{not json", json.dumps({"kind": "other"})]) == [
        f"progress: {progress.describe(ENTRY)}"]
    assert in_progress({"h1": [{"kind": "service", "name": "a"}, ENTRY], "host-22": [ENTRY]}).splitlines() == [
        f"h1       {progress.describe(ENTRY)}", f"host-22  {progress.describe(ENTRY)}"]
    assert in_progress({"h1": [{"kind": "service"}]}) == ""


def test_the_host_reader_lists_live_state_files_only(tmp_path):
    (tmp_path / "weights-live.json").write_text(json.dumps({**ENTRY, "pid": os.getpid(), "at": time.time() - 3}))
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "weights-dead.json").write_text(json.dumps({**ENTRY, "pid": dead.pid}))
    (tmp_path / "weights-torn.json").write_text('{"kind": "progress", "pid"')
    (tmp_path / "other.json").write_text(json.dumps({**ENTRY, "kind": "other", "pid": os.getpid()}))
    out = subprocess.run(["sh", "-c", progress.read_command(str(tmp_path))], capture_output=True, text=True,
                         timeout=30)
    found = progress.entries(out.stdout.splitlines())
    assert [e["pid"] for e in found] == [os.getpid()], out.stdout
    assert 2.5 <= found[0]["age_s"] < 30
    missing = subprocess.run(["sh", "-c", progress.read_command(str(tmp_path / "none"))], capture_output=True,
                             text=True, timeout=30)
    assert (missing.returncode, missing.stdout) == (0, "")


def test_the_fetch_keeps_its_state_file_while_it_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMFLEET_PROGRESS_DIR", str(tmp_path / "progress"))
    staging = tmp_path / "m" / ".staging-main"
    staging.mkdir(parents=True)
    state = ProgressState(tmp_path / "m", "weights a/b@main")
    thread = Progress(staging, 4000, interval=30, state=state)
    thread.start()
    try:
        (staging / "a.bin").write_bytes(b"x" * 1000)
        time.sleep(1.6)
        (staging / "b.bin").write_bytes(b"x" * 1000)
        seen = json.loads(state.path.read_text())
        assert seen["done"] in (1000, 2000) and seen["total"] == 4000 and seen["phase"] == "download"
        assert seen["pid"] == os.getpid() and seen["work"] == "weights a/b@main"
        assert oct(state.path.stat().st_mode & 0o777) == "0o644"
        assert state.path.name == "weights-m.json"
    finally:
        thread.stop()
        thread.join(5)
    state.clear()
    assert not list((tmp_path / "progress").iterdir())  # no temporary file left either


def test_a_state_file_that_cannot_be_written_never_fails_the_fetch(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("LLMFLEET_PROGRESS_DIR", str(tmp_path / "file" / "progress"))
    state = ProgressState(tmp_path / "m", "weights a/b@main")
    state.write("download", 1, 2, 1.0)
    assert state.broken
    state.clear()


DEPLOY = """
import tasks  # noqa: F401 - installs the progress watch, as every deploy does
from pyinfra.operations import server

server.shell(name="Quick step", commands=["true"])
server.shell(name="Long step", commands=["sleep 8"])
"""


@pytest.mark.parametrize("dry", [False, True])
def test_a_run_prints_progress_while_a_long_operation_runs_and_a_dry_run_reads_none(tmp_path, dry):
    """pyinfra's contract (callbacks around each host's operation, reads beside it): a live state file
    in /run/llmfleet/progress of this machine, a deploy on @local with an 8 s operation (long enough for two
    reads at a 1 s interval on a loaded machine, where one read can take seconds)."""
    deploy = tmp_path / "deploy.py"
    deploy.write_text(DEPLOY)
    name = Path(progress.PROGRESS_DIR) / f"weights-unit-{secrets.token_hex(4)}.json"
    name.parent.mkdir(parents=True, exist_ok=True)
    name.write_text(json.dumps({**ENTRY, "pid": os.getpid(), "at": time.time()}))
    try:
        args = [str(Path(sys.executable).with_name("pyinfra")), "@local", str(deploy), "-y",
                "--data", "status_progress_interval_s=1"] + (["--dry"] if dry else [])
        run = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    finally:
        name.unlink()
    assert run.returncode == 0, run.stderr[-2000:]
    line = f"[@local] progress: {progress.describe(ENTRY)}"
    if dry:
        assert "progress:" not in run.stderr + run.stdout
        return
    long_step = run.stderr.split("--> Starting operation: Long step", 1)[1]
    assert 2 <= long_step.count(line) <= 9, long_step  # one read a second at most
    assert line not in run.stderr.split("--> Starting operation: Long step", 1)[0]  # the quick step: no read


def test_the_pull_wrapper_counts_layers_passes_the_exit_code_and_removes_its_file(tmp_path):
    """DOCKER_SCRIPT (pull) around a stand-in for ``docker pull`` printing what its CLI prints without a terminal."""
    from tasks.progress_docker import DOCKER_SCRIPT

    state = tmp_path / "progress" / "image-x.json"
    lines = ["v1: Pulling from vllm/vllm-openai", "aaaaaaaaaaaa: Pulling fs layer", "bbbbbbbbbbbb: Pulling fs layer",
             "cccccccccccc: Already exists", "aaaaaaaaaaaa: Verifying Checksum", "aaaaaaaaaaaa: Download complete"]
    fake_pull = "; ".join(f"echo '{line}'" for line in lines) + "; sleep 3; echo 'bbbbbbbbbbbb: Pull complete'; exit 3"
    proc = subprocess.Popen([sys.executable, "-c", DOCKER_SCRIPT, "pull", str(state), "image vllm/vllm-openai:v1", "--",
                             "sh", "-c", fake_pull], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = wait_for_json(state, lambda e: e["total"] == 3 and e["done"] == 2)  # after the 6 lines
    finally:
        out, err = proc.communicate(timeout=30)
    assert seen["done"] == 2 and seen["unit"] == "layers" and seen["phase"] == "download", seen
    assert progress.describe(seen) == "image vllm/vllm-openai:v1: download 2 / 3 layers (66%)"
    assert proc.returncode == 3 and out == ""  # docker's exit code; quiet as with -q
    assert not state.exists()


def wait_for_json(path: Path, ok, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            entry = json.loads(path.read_text())
            if ok(entry):
                return entry
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{path}: never as expected within {timeout}s")


def test_the_build_wrapper_counts_steps_of_either_builder_and_says_a_failure(tmp_path):
    """DOCKER_SCRIPT (build) around a stand-in for ``docker build`` printing the classic builder's steps,
    then BuildKit's plain lines, then failing: the state counts the step running, never goes back,
    and the failed build's last lines reach stderr."""
    from tasks.progress_docker import DOCKER_SCRIPT

    state = tmp_path / "progress" / "image-build.json"
    lines = ["Sending build context to Docker daemon  2.048kB", "Step 1/4 : FROM vllm/vllm-openai:v0.18.0",
             " ---> 0123456789ab", "Step 2/4 : ARG PIP_INDEX_URL", "#7 [3/4] RUN pip install vllm==0.18.0"]
    fake_build = ("; ".join(f"echo '{line}'" for line in lines) + "; sleep 3; echo '#5 [1/4] FROM x'; "
                  "echo 'ERROR: failed to solve: process did not complete successfully: exit code: 1'; exit 1")
    proc = subprocess.Popen([sys.executable, "-c", DOCKER_SCRIPT, "build", str(state), "image llmfleet/glm5:0123",
                             "--", "sh", "-c", fake_build], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = wait_for_json(state, lambda e: e["done"] == 3)
    finally:
        out, err = proc.communicate(timeout=30)
    assert (seen["total"], seen["unit"], seen["phase"]) == (4, "steps", "build"), seen
    assert progress.describe(seen) == "image llmfleet/glm5:0123: build 3 / 4 steps (75%)"
    assert proc.returncode == 1 and out == ""
    assert "failed to solve" in err and "Step 2/4" in err  # what Docker said, for the operator
    assert not state.exists()


def test_a_build_runs_through_the_wrapper_and_plainly_without_python3():
    from tasks.progress_docker import build_command

    cmd = build_command("--label a=b -t 'llmfleet/glm5:0123' /var/cache/b", "llmfleet/glm5:0123")
    assert "python3 -c" in cmd and " build /var/cache/llmfleet" not in cmd
    assert cmd.endswith("else docker build -q --label a=b -t 'llmfleet/glm5:0123' /var/cache/b; fi")
    assert "/run/llmfleet/progress/image-build-llmfleet_glm5_0123.json" in cmd
