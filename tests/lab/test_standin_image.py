"""The stand-in vLLM image, under its real name from the lab registry, parses the command line of the
version its tag names: --enable-reasoning was removed in 0.10.0; a harvested release's image parses
with the options read off that release's own parser."""

from __future__ import annotations

import json

from tasks.lab.standins.model_repo import write_model_repo

from .helpers import put_dir, pyinfra, ssh


def test_enable_reasoning_refused_on_0_10_accepted_on_0_8_5(lab, inventory, tmp_path):
    pyinfra(inventory, "deploys/smoke.py")  # Docker on the hosts (no-op when already converged)
    ip = lab["hosts"][0]["ip"]
    write_model_repo(tmp_path / "model", shards=2, shard_bytes=64 * 1024)
    put_dir(ip, tmp_path / "model", "/srv/standin-model")
    args = "--model /model --enable-reasoning --reasoning-parser deepseek_r1 --port 8000"
    mount = "-v /srv/standin-model:/model:ro"

    new = ssh(ip, f"docker run --rm {mount} vllm/vllm-openai:v0.10.1.1 {args}", check=False)
    assert new.returncode == 2
    assert "unrecognized arguments: --enable-reasoning" in new.stderr + new.stdout

    # The v0.32.0 image carries the record read off vLLM 0.32.0's own parser (VLLM_STANDIN_HARVEST).
    newest = ssh(ip, f"docker run --rm {mount} vllm/vllm-openai:v0.32.0 /model --kv-cache-dtype fp9", check=False)
    assert newest.returncode == 2
    assert "argument --kv-cache-dtype: invalid choice: 'fp9'" in newest.stderr + newest.stdout
    env = ssh(ip, "docker image inspect -f '{{json .Config.Env}}' vllm/vllm-openai:v0.32.0").stdout
    assert "VLLM_STANDIN_HARVEST=/opt/vllm-standin/harvest/0.32.0.json" in env

    ssh(ip, "docker rm -f standin-085 >/dev/null 2>&1; "
            f"docker run -d --name standin-085 -p 18085:8000 {mount} vllm/vllm-openai:v0.8.5 {args}")
    try:
        # Bounded: 60 tries, 0.5 s apart.
        ssh(ip, "for i in $(seq 60); do curl -fsS http://127.0.0.1:18085/health && exit 0; sleep 0.5; done; "
                "docker logs standin-085; exit 1")
        body = json.dumps({"model": "/model", "max_tokens": 4,
                           "messages": [{"role": "user", "content": "hi"}]})
        answer = json.loads(ssh(ip, "curl -fsS http://127.0.0.1:18085/v1/chat/completions "
                                    f"-H 'Content-Type: application/json' -d '{body}'").stdout)
        message = answer["choices"][0]["message"]
        assert message.get("reasoning_content"), message  # the deepseek_r1 parser split the thinking off
    finally:
        ssh(ip, "docker rm -f standin-085", check=False)
