"""Progress of a long weights fetch and an image pull where the operator looks, on lab "pr" (one
host): the pyinfra run prints per-host progress lines while they run, ``deploys/status.py`` from
another terminal lists the fetch in progress, nothing is read or printed by a dry run, and the state
files are gone when the work ends.

The stand-in checkpoint is 12 MiB on a local bridge: the host's link is slowed with ``tc`` so that
the fetch takes several seconds (~12 s at 8 Mbit/s), and ``status_progress_interval_s`` is 1 s.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tasks.lab.config import LabConfig
from tasks.spec import load_spec
from tasks.weights.deploy import model_dirname

from .helpers import Background, lab_name, own_lab, pyinfra, secrets_env, ssh, throttled, wait_until

CFG = LabConfig(lab_name("pr"))
H1 = CFG.host_name(1)
TOKEN = "hf_progress_Secret_0123456789abcdef"


@pytest.fixture(scope="module")
def pr(tmp_path_factory):
    work = tmp_path_factory.mktemp("pr")
    # On disk: its slow-fetch test reads progress while a throttled fetch runs; in memory (faster writes)
    # the fetch twice ended before the status run looked (load ~30). Not understood yet: kept as on main.
    with own_lab("pr", ["cpu"], in_memory=False) as state, secrets_env(work / "secrets", pr_hub_token=TOKEN):
        yield {"inventory": state["inventory"], "ip": state["hosts"][0]["ip"], "state": state}


def test_a_slow_fetch_prints_progress_per_host_and_status_shows_it(pr, tmp_path):
    from tasks.lab.standins.model_repo import publish, write_model_repo

    repo = "llmfleet-lab/progress"
    sizes = write_model_repo(tmp_path / "repo", seed=51, shards=3, shard_bytes=4 << 20)
    publish(CFG.run_dir / "hub", repo, tmp_path / "repo", ["v1", "v2"])
    total = sum(sizes.values())
    data = {"serve_model__hub": "huggingface", "serve_model__repo_id": repo, "serve_model__revision": "v1",
            "weights_token_secret": "pr_hub_token", "status_progress_interval_s": 1}
    ip, state_file = pr["ip"], f"/run/llmfleet/progress/weights-{model_dirname(repo)}.json"
    # the venv and scripts first (unthrottled), so the throttled run below is the fetch
    pyinfra(pr["inventory"], "deploys/weights.py", data={**data, "serve_model__revision": "v2"})

    with throttled(CFG, 1, "8mbit"):
        run = Background(pyinfra, pr["inventory"], "deploys/weights.py", data=data, check=False, timeout=300)
        wait_until(lambda: ssh(ip, f"grep -q '\"done\": [1-9]' {state_file}", check=False).returncode == 0,
                   "the fetch's progress state file with bytes", 120, 0.3)
        status = pyinfra(pr["inventory"], "deploys/status.py")  # another terminal, while it runs
        result = run.join(300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.changed() == {"Weights | Fetch from hub": [H1]}

    pattern = re.compile(rf"\[{H1}\] progress: weights {re.escape(repo)}@v1: download ([\d.]+) (\w+) / 12\.1 MiB "
                         r"\((\d+)%\)(, [\d.]+ \w+/s, ETA \w+)?")
    lines = [m for m in map(pattern.search, result.stderr.splitlines()) if m]
    assert len(lines) >= 2, result.stderr[-3000:]
    percents = [int(m.group(3)) for m in lines]
    assert percents == sorted(percents) and percents[-1] > percents[0], percents  # the bytes moved on
    assert any(m.group(4) for m in lines), "no line with rate and ETA"
    fetch_op = result.stderr.split("--> Starting operation: Weights | Fetch from hub", 1)[1]
    assert len(pattern.findall(fetch_op)) == len(lines)  # printed during the fetch, not other operations

    table = status.stderr.split("in progress:", 1)
    assert len(table) == 2, status.stderr[-2000:]
    assert re.search(rf"^{H1}\s+weights {re.escape(repo)}@v1: download [\d.]+ \w+ / 12\.1 MiB \(\d+%\)",
                     table[1], re.M), table[1][:1000]

    for out in (result.stdout + result.stderr, status.stdout + status.stderr):
        assert TOKEN not in out
    # the fetch is over: its state file is gone and status lists nothing in progress
    assert ssh(ip, f"ls {state_file}", check=False).returncode != 0
    assert "in progress:" not in pyinfra(pr["inventory"], "deploys/status.py").stderr
    man = ssh(ip, f"cat /srv/models/{model_dirname(repo)}/current/manifest.json").stdout
    assert f'"total_bytes": {total}' in man

    # a dry run of a fetch reads and prints no progress (no operation runs), nor does a converged run
    dry = pyinfra(pr["inventory"], "deploys/weights.py", "--dry", data={**data, "serve_model__revision": "v2"})
    assert dry.planned_changes() == {"Weights | Fetch from hub": [H1]}
    again = pyinfra(pr["inventory"], "deploys/weights.py", data=data)
    assert again.operations and again.changed() == {}
    for out in (dry.stderr, again.stderr):
        assert "progress:" not in out


def test_a_state_file_of_a_dead_process_is_not_shown(pr):
    ip = pr["ip"]
    stale = {"kind": "progress", "work": "weights x/y@main", "phase": "download", "done": 1, "total": 2,
             "pid": 999999, "at": time.time()}
    ssh(ip, f"mkdir -p /run/llmfleet/progress && echo '{json.dumps(stale)}' > /run/llmfleet/progress/weights-x.json")
    try:
        out = pyinfra(pr["inventory"], "deploys/status.py").stderr
        assert "in progress:" not in out and "x/y@main" not in out
    finally:
        ssh(ip, "rm -f /run/llmfleet/progress/weights-x.json")


def test_an_image_pull_prints_progress_in_layers(pr):
    inv, ip = pr["inventory"], pr["ip"]
    pin = load_spec("qwen30b", {}).image  # the lab registry's stand-in under the real name
    image = f"{pin.repository}:{pin.tag}"
    data = {"image_recipe": "qwen30b", "status_progress_interval_s": 1}
    pyinfra(inv, "deploys/image.py", data=data)  # Docker installed (unthrottled), the image pulled once
    ssh(ip, f"docker rmi {image} >/dev/null")
    with throttled(CFG, 1, "16mbit"):
        result = pyinfra(inv, "deploys/image.py", data=data, timeout=300)
    pull = re.compile(rf"\[{H1}\] progress: image {re.escape(image)}: (download|extract) (\d+) / (\d+) layers")
    lines = [m for m in map(pull.search, result.stderr.splitlines()) if m]
    assert len(lines) >= 2, result.stderr[-3000:]
    assert int(lines[-1].group(3)) >= 1 and int(lines[-1].group(2)) >= int(lines[0].group(2))
    assert ssh(ip, "ls /run/llmfleet/progress/image-*.json", check=False).returncode != 0  # gone after the pull
    assert image in ssh(ip, "docker images --format '{{.Repository}}:{{.Tag}}'").stdout
    again = pyinfra(inv, "deploys/image.py", data=data)
    assert again.changed() == {} and "progress:" not in again.stderr
