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


def test_multi_node_rendezvous_over_tcp_between_two_hosts(lab, inventory, tmp_path):
    """v0.32.0's stand-in as a 2-node replica (--network host, as the units run it): the head answers
    /health only once the headless worker on another lab host joined its master port; the worker
    serves no HTTP and stays up when the head's container is removed (vLLM #32136)."""
    pyinfra(inventory, "deploys/smoke.py")  # Docker on the hosts (no-op when already converged)
    head, worker = lab["hosts"][0]["ip"], lab["hosts"][1]["ip"]
    write_model_repo(tmp_path / "model", shards=1, shard_bytes=64 * 1024)
    for ip in (head, worker):
        put_dir(ip, tmp_path / "model", "/srv/standin-model")
    common = ("--network host -e VLLM_STANDIN_DIST_TIMEOUT_S=120 -v /srv/standin-model:/model:ro "
              f"vllm/vllm-openai:v0.32.0 /model -tp 1 -pp 2 --nnodes 2 --master-addr {head} --master-port 29511 "
              "--port 18090")
    health = "curl -fsS -o /dev/null -w '%{http_code}' --max-time 2 http://127.0.0.1:18090/health"
    try:
        ssh(head, f"docker rm -f mn-head >/dev/null 2>&1; docker run -d --name mn-head {common} --node-rank 0")
        # Bounded: 20 tries, 0.25 s apart: the store listens on the master port, HTTP does not answer.
        ssh(head, "for i in $(seq 20); do ss -ltn | grep -q ':29511 ' && exit 0; sleep 0.25; done; exit 1")
        assert ssh(head, health, check=False).returncode != 0, "the head answered before its worker joined"
        ssh(worker, f"docker rm -f mn-worker >/dev/null 2>&1; "
                    f"docker run -d --name mn-worker {common} --node-rank 1 --headless")
        ssh(head, f"for i in $(seq 120); do [ \"$({health})\" = 200 ] && exit 0; sleep 0.5; done; "
                  "docker logs mn-head; exit 1")
        assert f"node rank 1 joined from {worker}:" in ssh(head, "docker logs mn-head 2>&1").stdout
        assert "headless multiproc executor" in ssh(worker, "docker logs mn-worker 2>&1").stdout
        assert ssh(worker, health, check=False).returncode != 0, "a headless worker serves no HTTP"

        ssh(head, "docker rm -f mn-head")
        ssh(worker, "for i in $(seq 40); do docker logs mn-worker 2>&1 | grep -q 'Failed to recv' && exit 0; "
                    "sleep 0.25; done; exit 1")
        assert ssh(worker, "docker inspect -f '{{.State.Running}}' mn-worker").stdout.strip() == "true"
    finally:
        ssh(head, "docker rm -f mn-head", check=False)
        ssh(worker, "docker rm -f mn-worker", check=False)
