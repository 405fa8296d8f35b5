"""Every seed deploy converges on its lab profile and verifies through the stand-in; a second run of
each changes nothing. (qwen30b, qwen32b_awq and qwen30b_fp8 are also exercised in test_serving.py.)

Lab "rc": rc-h1 rtx4090x8 (qwen235b AWQ), rc-h2 gpu22gx4 (qwen30b_yarn, then qwen30b refused beside it),
rc-h3 ascend910b (qwen3_ascend), rc-h4 h200x8 (glm5), rc-h5 rtx4090x8 (qwen235b GPTQ: both variants use all
eight GPUs, so they cannot share a host).
"""

from __future__ import annotations

import secrets

import pytest


from .helpers import pyinfra, ssh, own_lab, secrets_env

PROFILES = ["rtx4090x8", "gpu22gx4", "ascend910b", "h200x8", "rtx4090x8"]
# deploy, host, host data, unit name, port
CASES = [
    ("qwen235b", "rc-h1", {}, "qwen235b_awq", 30000),
    ("qwen235b", "rc-h5", {"model_variant": "gptq", "serve_port": 30001}, "qwen235b_gptq", 30001),
    # GLM-5 (744B) at tp 4 needs ~92 GiB of weights per GPU: H200-class memory; preflight refuses 4090s.
    ("glm5", "rc-h4", {}, "glm5", 8000),
    ("qwen30b_yarn", "rc-h2", {}, "qwen30b_yarn", 8000),
    ("qwen3_ascend", "rc-h3", {}, "qwen3_ascend", 8000),
]


@pytest.fixture(scope="module")
def rc(tmp_path_factory):
    keys = {name: "sk-rc-" + secrets.token_hex(16) for name in ("qwen235b_api_key", "rc_key")}
    with own_lab("rc", PROFILES) as state, secrets_env(tmp_path_factory.mktemp("secrets"), **keys):
        yield {"inventory": state["inventory"], "ips": {h["name"]: h["ip"] for h in state["hosts"]}}


@pytest.mark.parametrize("deploy,host,data,name,port", CASES, ids=[c[3] for c in CASES])
def test_deploy_converges_verifies_then_no_changes(rc, deploy, host, data, name, port):
    data = {"serve_api_key_secret": "rc_key", "preflight_weights_bytes": 1_000_000, **data}
    if deploy == "qwen235b":
        data.pop("serve_api_key_secret")  # the recipe names its own secret
    first = pyinfra(rc["inventory"], f"deploys/{deploy}.py", "--limit", host, data=data, timeout=600)
    assert first.changed()[f"Model | {name}: verify endpoint"] == [host]
    ip = rc["ips"][host]
    assert ssh(ip, f"systemctl is-active llmfleet-{name}").stdout.strip() == "active"
    unit = ssh(ip, f"cat /etc/systemd/system/llmfleet-{name}.service").stdout
    assert "--privileged" not in unit and "--pid=host" not in unit
    if deploy == "qwen3_ascend":
        assert "--device /dev/davinci0" in unit and "/usr/local/Ascend/driver/lib64" in unit
    if deploy == "glm5":
        assert "llmfleet/glm5:" in unit  # the built image, tagged by its inputs' hash

    second = pyinfra(rc["inventory"], f"deploys/{deploy}.py", "--limit", host, data=data, timeout=600)
    assert second.operations and second.changed() == {}


def test_second_model_on_a_taken_port_and_gpus_is_refused_before_install(rc):
    """qwen30b (port 8000, every GPU) beside the converged qwen30b_yarn on rc-h2: refused at preflight,
    naming both recipes, the port and the devices; nothing of it lands and qwen30b_yarn keeps running."""
    host, ip = "rc-h2", rc["ips"]["rc-h2"]
    before = ssh(ip, "docker inspect -f '{{.Id}}' llmfleet-qwen30b_yarn").stdout.strip()
    run = pyinfra(rc["inventory"], "deploys/qwen30b.py", "--limit", host, check=False, timeout=600,
                  data={"serve_api_key_secret": "rc_key", "preflight_weights_bytes": 1_000_000})
    assert run.returncode != 0
    text = run.stdout + run.stderr
    assert "preflight refused qwen30b" in text and "qwen30b cannot share this host" in text
    assert "port 8000 is held by recipe qwen30b_yarn (llmfleet-qwen30b_yarn.service)" in text
    assert "qwen30b wants every device, recipe qwen30b_yarn" in text
    assert ssh(ip, "ls /etc/systemd/system/llmfleet-qwen30b.service", check=False).returncode != 0
    assert ssh(ip, "docker inspect -f '{{.Id}}' llmfleet-qwen30b_yarn").stdout.strip() == before
