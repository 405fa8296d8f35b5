"""Serving end to end in the lab (lab "sv": sv-h1 h100x8 serving two models side by side, each on its own
port, GPUs and served name; sv-h2 rtx4090x2).

Deploys converge and verify through the stand-in vLLM images, a second run changes nothing, an
image change restarts only its service, ``--dry --diff`` shows the unit diff and never the key, a
removed flag is translated (or a spec the image cannot express refused before any host is
touched), a failing endpoint names the host with the container's log, the API key is in no
pyinfra output, unit file, process argv or world-readable file on the host, and a model taken off
(``serve_state: absent``) leaves the other one running untouched.

Lab limitation: the lab machine has no CAP_SYS_RESOURCE and an 8 MiB hard memlock limit, so lab
hosts run with ``service_ulimits`` memlock at that limit instead of -1 (stack as in production).
Weights come from the lab's hub stand-in, which carries a small stand-in checkpoint for every recipe.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest


from .helpers import Run, pyinfra, ssh, own_lab, secrets_env

PROFILES = ["h100x8", "rtx4090x2"]
SECRET_NAME = "sv_api_key"
COMMON = {"preflight_weights_bytes": 1_000_000}
RUNS: list[Run] = []


@pytest.fixture(scope="module")
def sv(tmp_path_factory):
    key = "sk-sv-" + secrets.token_hex(16)
    secrets_dir = tmp_path_factory.mktemp("secrets")
    with own_lab("sv", PROFILES) as state, secrets_env(secrets_dir, **{SECRET_NAME: key}):
        yield {"inventory": state["inventory"], "ips": {h["name"]: h["ip"] for h in state["hosts"]}, "key": key,
               "secrets": secrets_dir, "reports": tmp_path_factory.mktemp("reports")}


# sv-h1's two models: what an operator gives each recipe that shares a host.
ON_SV_H1 = {"qwen30b": {"serve_devices": [0, 1, 2, 3]},
            "qwen32b_awq": {"serve_port": 8001, "serve_devices": [4, 5, 6, 7], "serve_served_model_name": "coder-32b"}}


def deploy(sv, recipe: str, host: str, *args: str, check: bool = True, counted: bool = False, **data) -> Run:
    shared = ON_SV_H1.get(recipe, {}) if host == "sv-h1" else {}
    run = pyinfra(sv["inventory"], f"deploys/{recipe}.py", "--limit", host, *args,
                  data={**COMMON, "serve_api_key_secret": SECRET_NAME, **shared, **data}, check=check, timeout=600,
                  counted=counted)
    RUNS.append(run)
    return run


def started_at(sv, host: str, container: str) -> str:
    return ssh(sv["ips"][host], f"docker inspect -f '{{{{.State.StartedAt}}}}' {container}").stdout.strip()


def test_qwen30b_converges_verifies_then_no_changes(sv):
    first = deploy(sv, "qwen30b", "sv-h1")
    changed = first.changed()
    assert changed["Model | Service | qwen30b: unit llmfleet-qwen30b.service"] == ["sv-h1"]
    assert changed["Model | qwen30b: verify endpoint"] == ["sv-h1"]
    unit = ssh(sv["ips"]["sv-h1"], "cat /etc/systemd/system/llmfleet-qwen30b.service").stdout
    assert "--env-file /etc/llmfleet/qwen30b.env" in unit and "--ipc=host" in unit
    assert ssh(sv["ips"]["sv-h1"], "stat -c '%a %U' /etc/llmfleet/qwen30b.env").stdout.split() == ["600", "root"]

    second = deploy(sv, "qwen30b", "sv-h1", counted=True)
    assert second.operations and second.changed() == {}
    # Converged: the rollout's plan-time read leaves the replica out of every batch (no service
    # operation at all), and the operations' reads arrive in one round trip (tasks.facts.planned):
    # far within the 30 commands per host.
    assert not [op["name"] for op in second.operations if "| Service |" in op["name"] or "batch" in op["name"]]
    assert second.counts()["sv-h1"]["commands"] <= 8, second.counts()
    assert deploy(sv, "qwen30b", "sv-h1", "--dry").planned_changes() == {}


def test_qwen32b_awq_non_thinking_beside_it_and_fleet_table(sv):
    before = started_at(sv, "sv-h1", "llmfleet-qwen30b")
    run = deploy(sv, "qwen32b_awq", "sv-h1")
    assert run.changed()["Model | qwen32b_awq: verify endpoint"] == ["sv-h1"]
    assert started_at(sv, "sv-h1", "llmfleet-qwen30b") == before  # the other service was left alone

    table = pyinfra(sv["inventory"], "deploys/verify.py", "--limit", "sv-h1",
                    data={"verify_report_dir": str(sv["reports"])})
    RUNS.append(table)
    assert table.changed() == {}
    results = {r["name"]: r for r in json.loads((sv["reports"] / "sv-h1.json").read_text())}
    assert results["qwen32b_awq"]["ok"] and results["qwen32b_awq"]["checks"]["chat"]["thinking"] is False
    assert results["qwen30b"]["ok"] and results["qwen30b"]["checks"]["models"] == ["coder"]
    assert "qwen32b_awq" in table.stderr + table.stdout and "no thinking" in table.stderr + table.stdout


def test_image_tag_change_restarts_only_that_service(sv):
    other = started_at(sv, "sv-h1", "llmfleet-qwen32b_awq")
    mine = started_at(sv, "sv-h1", "llmfleet-qwen30b")
    time.sleep(1)  # StartedAt has sub-second precision; make a restart unmistakable
    run = deploy(sv, "qwen30b", "sv-h1", serve_image="vllm/vllm-openai:v0.8.5.post1")
    changed = run.changed()
    assert changed["Model | qwen30b: image vllm/vllm-openai:v0.8.5.post1"] == ["sv-h1"]
    assert changed["Model | qwen30b: verify endpoint"] == ["sv-h1"]
    assert started_at(sv, "sv-h1", "llmfleet-qwen30b") != mine
    assert started_at(sv, "sv-h1", "llmfleet-qwen32b_awq") == other
    assert not any("qwen32b" in name for name in changed)
    again = deploy(sv, "qwen30b", "sv-h1", serve_image="vllm/vllm-openai:v0.8.5.post1")
    assert again.changed() == {}


def test_a_unit_written_but_never_restarted_is_restarted(sv):
    """A run that stopped between writing the unit and restarting it: files and systemd agree with
    the recipe, the container still runs the old image. The plan's read sees that off the running
    docker run process and restarts the service."""
    ip = sv["ips"]["sv-h1"]
    unit = "/etc/systemd/system/llmfleet-qwen30b.service"
    new, old = "vllm/vllm-openai:v0.8.5.post1", "vllm/vllm-openai:v0.8.5"
    # The container on the old image under the old unit, then the new unit written and loaded only.
    ssh(ip, f"sed -i 's|{new}|{old}|g' {unit} && systemctl daemon-reload && systemctl restart llmfleet-qwen30b "
            f"&& sed -i 's|{old}|{new}|g' {unit} && systemctl daemon-reload")
    image = "docker inspect -f '{{.Config.Image}}' llmfleet-qwen30b"
    assert ssh(ip, image).stdout.strip() == old
    run = deploy(sv, "qwen30b", "sv-h1", serve_image=new)  # the unit on disk is already this recipe's
    changed = run.changed()
    assert not [name for name in changed if "qwen30b: unit" in name], changed  # the file was right
    restarts = [hosts for name, hosts in changed.items() if name.endswith("restart (unit, env or template changed)")]
    assert restarts == [["sv-h1"]], changed
    assert ssh(ip, image).stdout.strip() == new
    assert deploy(sv, "qwen30b", "sv-h1", serve_image=new).changed() == {}


def test_dry_diff_shows_unit_diff_and_never_the_key(sv):
    path = sv["secrets"] / SECRET_NAME
    rotated = "sk-sv-rotated-" + secrets.token_hex(12)
    path.write_text(rotated + "\n")
    try:
        run = deploy(sv, "qwen30b", "sv-h1", "--dry", "--diff", serve_image="vllm/vllm-openai:v0.8.5",
                     serve_max_num_seqs=64)
    finally:
        path.write_text(sv["key"] + "\n")
    text = run.stdout + run.stderr
    assert "Will modify" in text and "/etc/systemd/system/llmfleet-qwen30b.service" in text
    assert "vllm/vllm-openai:v0.8.5.post1" in text and "--max-num-seqs 64" in text  # both sides of the diff
    planned = run.planned_changes()
    assert planned["Model | Service | qwen30b: secret env file"] == ["sv-h1"]  # rotation seen...
    assert rotated not in text and sv["key"] not in text  # ...but never shown
    assert "VLLM_API_KEY=" not in text


def test_removed_flag_translated_and_impossible_spec_refused(sv):
    run = deploy(sv, "qwen30b_fp8", "sv-h2", serve_image="vllm/vllm-openai:v0.12.0",
                 serve_extra_args=json.dumps(["--max-seq-len-to-capture", "8192"]))
    assert "--max-seq-len-to-capture dropped for vLLM 0.12.0" in run.stdout + run.stderr
    assert run.changed()["Model | qwen30b_fp8: verify endpoint"] == ["sv-h2"]
    unit = ssh(sv["ips"]["sv-h2"], "cat /etc/systemd/system/llmfleet-qwen30b_fp8.service").stdout
    assert "--max-seq-len-to-capture" not in unit and "--shm-size 16g" in unit and '"\\"device=' not in unit

    mtime = ssh(sv["ips"]["sv-h2"], "stat -c %Y /etc/systemd/system/llmfleet-qwen30b_fp8.service").stdout
    refused = deploy(sv, "qwen30b_fp8", "sv-h2", check=False, serve_image="vllm/vllm-openai:v0.12.0",
                     serve_tool_call_parser="glm47", serve_enable_auto_tool_choice="true")
    text = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "sv-h2: serve_tool_call_parser" in text and "needs vLLM >= 0.14.0" in text
    assert "Starting operation" not in text and "memory plan" not in text  # no fact, no operation
    assert ssh(sv["ips"]["sv-h2"], "stat -c %Y /etc/systemd/system/llmfleet-qwen30b_fp8.service").stdout == mtime


def test_failing_endpoint_names_host_and_shows_container_log(sv):
    run = deploy(sv, "qwen30b_fp8", "sv-h2", check=False, serve_image="vllm/vllm-openai:v0.19.0-standin-unhealthy",
                 serve_startup_budget_s=30)
    text = run.stdout + run.stderr
    assert run.returncode != 0 and "Starting operation: Model | qwen30b_fp8: verify endpoint" in text
    assert "llmfleet verify FAILED on host sv-h2: qwen30b_fp8" in text
    assert "last 30 lines of the log of llmfleet-qwen30b_fp8" in text and "Uvicorn running" in text


def test_api_key_appears_nowhere(sv):
    key = sv["key"]
    assert RUNS, "no pyinfra run recorded"
    for run in RUNS:
        assert key not in run.stdout and key not in run.stderr
    for host, ip in sv["ips"].items():
        assert key not in ssh(ip, "cat /etc/systemd/system/llmfleet-*.service").stdout
        assert key not in ssh(ip, "ps -eo args").stdout
        # grep for the key from a root-only file so the key is not in grep's own argv
        probe = ssh_stdin(ip, "umask 077; cat > /root/.sv-key-probe", key + "\n")
        assert probe.returncode == 0
        found = ssh(ip, "find /etc /var/cache/llmfleet /usr/local/lib/llmfleet /srv -xdev -type f -perm -o=r "
                        "-print0 | xargs -0 -r grep -lF -f /root/.sv-key-probe; rm -f /root/.sv-key-probe",
                    check=False)
        assert found.stdout.strip() == "", f"{host}: key in world-readable files: {found.stdout}"
        env_files = ssh(ip, "stat -c '%a %U %n' /etc/llmfleet/*.env").stdout.splitlines()
        assert env_files and all(line.startswith("600 root ") for line in env_files)


def ssh_stdin(ip: str, command: str, data: str):
    import subprocess

    from tasks.lab.config import CACHE_DIR

    return subprocess.run(
        ["ssh", "-i", str(CACHE_DIR / "id_ed25519"), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=error", "-o", "BatchMode=yes",
         f"root@{ip}", command], input=data, capture_output=True, text=True, timeout=60)


def test_removing_a_model_leaves_the_other_serving_untouched(sv):
    """qwen32b_awq taken off sv-h1 (``serve_state: absent``): its unit, env, verification files and rollback
    point go, its weights stay, qwen30b's container is the same one; a second run changes nothing."""
    ip = sv["ips"]["sv-h1"]
    container = "docker inspect -f '{{.Id}}' llmfleet-qwen30b"
    before = ssh(ip, container).stdout.strip()
    weights = ssh(ip, "readlink /srv/models/Qwen--Qwen3-32B-AWQ/current").stdout.strip()
    run = deploy(sv, "qwen32b_awq", "sv-h1", serve_state="absent")
    changed = run.changed()
    assert changed["Model | Remove model | qwen32b_awq: stop and disable"] == ["sv-h1"]
    assert changed["Model | Remove model | qwen32b_awq: systemd forgets the unit"] == ["sv-h1"]
    assert not any("qwen30b" in name for name in changed), changed
    left = ssh(ip, "ls -d /etc/systemd/system/llmfleet-qwen32b_awq.service /etc/llmfleet/qwen32b_awq* "
                   "/var/cache/llmfleet/qwen32b_awq 2>/dev/null; docker ps -a --format '{{.Names}}'",
               check=False).stdout.split()
    assert left == ["llmfleet-qwen30b"], left
    assert ssh(ip, "systemctl show -p LoadState llmfleet-qwen32b_awq").stdout.strip() == "LoadState=not-found"
    assert ssh(ip, "readlink /srv/models/Qwen--Qwen3-32B-AWQ/current").stdout.strip() == weights  # kept
    assert ssh(ip, container).stdout.strip() == before
    verified = json.loads(ssh(ip, "python3 /usr/local/lib/llmfleet/verify_endpoint.py "
                                  "--config /etc/llmfleet/qwen30b.verify.json", check=False).stdout)
    assert verified["ok"], verified

    again = deploy(sv, "qwen32b_awq", "sv-h1", serve_state="absent")
    assert again.changed() == {}
