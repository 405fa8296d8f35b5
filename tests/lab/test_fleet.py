"""Fleet operations end to end in the lab ("fl": fl-h1..fl-h3 replicas on rtx4090x2, fl-h4 the nginx
gateway): a conversation (``x-session-id``) stays on one replica; that replica's container killed
mid-run fails no request and the replica gets the conversation back once it is healthy again;
a rolling image upgrade under a bounded client loop through the gateway fails no request;
an upgrade to the stand-in image whose /health answers 500 rolls the first host back (old image
running and verified), stops the rollout (fl-h2, fl-h3 not restarted), fails the run with the
reason, and the fleet still answers; status shows both outcomes; ``--dry --diff`` shows each host's
change and touches nothing.

Lab limitations as in test_serving.py: memlock at the lab's hard limit; the weights stand-in shim
while ``tasks.weights.deploy`` is missing.
"""

from __future__ import annotations

import json
import re
import secrets
import time

import pytest

from bench.client_loop import ClientLoop

from .helpers import Run, own_lab, pyinfra, running_image, secrets_env, ssh, wait_for

PROFILES = ["rtx4090x2", "rtx4090x2", "rtx4090x2", "cpu"]
REPLICAS = ["fl-h1", "fl-h2", "fl-h3"]
SECRET = "fl_api_key"
OLD, NEW = "vllm/vllm-openai:v0.18.0", "vllm/vllm-openai:v0.19.0"
BAD = "vllm/vllm-openai:v0.19.0-standin-unhealthy"
COMMON = {"preflight_weights_bytes": 1_000_000, "serve_api_key_secret": SECRET, "rollout_gate_wait_s": 15}
CONTAINER = "llmfleet-qwen30b_fp8"
UNIT = f"/etc/systemd/system/{CONTAINER}.service"
UPSTREAM_LOG = "/var/log/nginx/llmfleet-qwen30b_fp8.upstreams.log"


@pytest.fixture(scope="module")
def fl(tmp_path_factory):
    work = tmp_path_factory.mktemp("fl")
    key = "sk-fl-" + secrets.token_hex(16)
    with own_lab("fl", PROFILES) as state, secrets_env(work / "secrets", **{SECRET: key}):
        inv = work / "inventory.py"
        # The lab's inventory plus the gateway group (what an operator's inventory says).
        inv.write_text(open(state["inventory"]).read() + "\ngateway = cpu\n")
        ips = {h["name"]: h["ip"] for h in state["hosts"]}
        first = pyinfra(inv, "deploys/qwen30b_fp8.py", data={**COMMON, "serve_image": OLD}, timeout=600)
        yield {"inventory": inv, "ips": ips, "key": key, "work": work, "first": first}


def deploy(fl, image: str, *args: str, check: bool = True) -> Run:
    return pyinfra(fl["inventory"], "deploys/qwen30b_fp8.py", *args, data={**COMMON, "serve_image": image},
                   check=check, timeout=600)


def gateway_url(fl) -> str:
    return f"http://{fl['ips']['fl-h4']}:8000"


def started_at(fl, host: str) -> str:
    return ssh(fl["ips"][host], f"docker inspect -f '{{{{.State.StartedAt}}}}' {CONTAINER}").stdout.strip()


def test_fleet_converged_behind_the_gateway_with_key_checking(fl):
    changed = fl["first"].changed()
    assert sorted(changed["Model | Gateway | qwen30b_fp8: gateway server block"]) == ["fl-h4"]
    for b, host in enumerate(REPLICAS, 1):
        assert changed[f"Model | Batch {b}/3 | qwen30b_fp8: verify endpoint"] == [host]
    loop = ClientLoop(gateway_url(fl), fl["key"], "qwen-30b", threads=2, max_requests=30, max_seconds=30)
    result = loop.run()
    assert result.served == 30 and result.failed == 0
    bad = ClientLoop(gateway_url(fl), "sk-wrong-key-000", "qwen-30b", threads=1, max_requests=3, max_seconds=10)
    assert dict(bad.run().errors) == {"HTTP 401": 3}
    # Keys live only in the root-only includes, never in the server block or pyinfra's output.
    gw = fl["ips"]["fl-h4"]
    assert fl["key"] not in ssh(gw, "cat /etc/nginx/conf.d/llmfleet-qwen30b_fp8.conf").stdout
    assert ssh(gw, "stat -c '%a %U' /etc/nginx/llmfleet/qwen30b_fp8.keys /etc/nginx/llmfleet/qwen30b_fp8.backend"
               ).stdout.split() == ["600", "root", "600", "root"]
    assert fl["key"] not in fl["first"].stdout + fl["first"].stderr
    assert deploy(fl, OLD).changed() == {}  # converged: nothing drains, nothing restarts


def upstream_log(fl, start: int) -> list[tuple[list[str], list[str]]]:
    """(replicas tried, their statuses) of the gateway's requests from log line ``start`` (1-based) on."""
    text = ssh(fl["ips"]["fl-h4"], f"tail -n +{start} {UPSTREAM_LOG}").stdout
    return [(m.group(1).split(", "), m.group(2).split(", "))
            for m in re.finditer(r'replicas="([^"]*)" statuses="([^"]*)"', text)]


def log_lines(fl) -> int:
    return int(ssh(fl["ips"]["fl-h4"], f"wc -l < {UPSTREAM_LOG}").stdout)


def test_killed_replica_fails_no_request_and_gets_its_conversation_back(fl):
    session = {"x-session-id": "conv-" + secrets.token_hex(4)}
    start = log_lines(fl) + 1
    assert ClientLoop(gateway_url(fl), fl["key"], "qwen-30b", threads=2, max_requests=12, max_seconds=30,
                      headers=session).run().served == 12
    tried = upstream_log(fl, start)
    homes = {replicas[-1] for replicas, _ in tried}
    assert len(tried) == 12 and len(homes) == 1, tried  # session affinity: one replica for the conversation
    home = homes.pop()
    victim = next(h for h, ip in fl["ips"].items() if home == f"{ip}:8000")
    with ClientLoop(gateway_url(fl), fl["key"], "qwen-30b", threads=2, max_requests=20000, max_seconds=240,
                    headers=session) as loop:
        wait_for(lambda: loop.result.served >= 10, 30, every=0.2)
        killed = time.monotonic()
        ssh(fl["ips"][victim], "docker kill llmfleet-qwen30b_fp8")
        moved_at = log_lines(fl) + 1
        moved = wait_for(lambda: [r for r, s in upstream_log(fl, moved_at) if r[-1] != home and s[-1] == "200"], 30,
                         every=0.2)
        assert moved, f"the conversation did not move off {victim} within 30 s"
        # systemd restarts the unit (Restart=on-failure); the gateway has no active check, so the
        # replica comes back by the passive one: once fail_timeout passed, the next request tries it.
        healthy = wait_for(lambda: ssh(fl["ips"][victim], "curl -fsS -o /dev/null http://127.0.0.1:8000/health",
                                       check=False).returncode == 0 and time.monotonic(), 120, every=0.5)
        assert healthy, f"{victim} not healthy again within 120 s of the kill"
        back_at = log_lines(fl) + 1
        back = wait_for(lambda: [s for r, s in upstream_log(fl, back_at) if r[-1] == home and s[-1] == "200"], 60,
                        every=0.5)
        returned = time.monotonic()
    assert back, f"{victim} healthy but got no request within 60 s"
    result = loop.result
    assert result.failed == 0, dict(result.errors)
    retried = [r for r, s in upstream_log(fl, moved_at) if len(r) > 1]
    assert retried and all(r[0] == home for r in retried)  # the refused attempts went on to another replica
    print(f"\nkilled {victim}: healthy again {healthy - killed:.0f} s after the kill, its conversation back "
          f"{returned - healthy:.1f} s after that; {result.served} requests served, 0 failed")


def test_rolling_image_upgrade_fails_no_request(fl):
    with ClientLoop(gateway_url(fl), fl["key"], "qwen-30b", threads=4, max_requests=20000,
                    max_seconds=240) as loop:
        run = deploy(fl, NEW)
    result = loop.result
    assert result.failed == 0, dict(result.errors)
    assert result.served > 100 and set(result.versions) == {"vllm-standin/0.18.0", "vllm-standin/0.19.0"}
    changed = run.changed()
    for b, host in enumerate(REPLICAS, 1):
        assert changed[f"Model | qwen30b_fp8: drain batch {b}/3"] == ["fl-h4"]
        assert changed[f"Model | qwen30b_fp8: put back batch {b}/3"] == ["fl-h4"]
        assert running_image(fl["ips"][host], CONTAINER) == NEW
        record = json.loads(ssh(fl["ips"][host], "cat /etc/llmfleet/qwen30b_fp8.rollout.json").stdout)
        assert record["outcome"] == "upgraded" and record["batch"] == f"{b}/3"
    # The batches really ran one after another: each host restarted after the previous one.
    starts = [started_at(fl, h) for h in REPLICAS]
    assert starts == sorted(starts)


def test_unhealthy_image_rolls_back_first_host_and_stops(fl):
    before = {h: started_at(fl, h) for h in REPLICAS[1:]}
    units = {h: ssh(fl["ips"][h], f"sha256sum {UNIT}").stdout for h in REPLICAS[1:]}
    with ClientLoop(gateway_url(fl), fl["key"], "qwen-30b", threads=2, max_requests=5000, max_seconds=120) as loop:
        run = deploy(fl, BAD, check=False)
    assert run.returncode != 0
    text = run.stdout + run.stderr
    assert "rollout of qwen30b_fp8 stopped at fl-h1 (batch 1/3)" in text
    assert "/health: not healthy within the wait (HTTP 500)" in text
    assert f"rolled back to {NEW} and verified again" in text and "not upgraded (still on the old version): fl-h2, fl-h3" in text
    assert f"its change (image {NEW} -> {BAD}; weights Qwen/Qwen3-30B-A3B-Instruct-2507-FP8@master unchanged" in text
    assert running_image(fl["ips"]["fl-h1"], CONTAINER) == NEW
    verified = json.loads(ssh(fl["ips"]["fl-h1"], "cat /etc/llmfleet/qwen30b_fp8.last-verify.json").stdout)
    assert verified["ok"] is True  # the rolled-back version passed the probe again
    for h in REPLICAS[1:]:  # untouched: same container, same unit file
        assert started_at(fl, h) == before[h] and ssh(fl["ips"][h], f"sha256sum {UNIT}").stdout == units[h]
    assert loop.result.failed == 0, dict(loop.result.errors)
    upstream = ssh(fl["ips"]["fl-h4"], "cat /etc/nginx/llmfleet/qwen30b_fp8.upstream.conf").stdout
    assert " down;" not in upstream  # fl-h1 is back in the gateway after its rollback verified
    after = ClientLoop(gateway_url(fl), fl["key"], "qwen-30b", threads=2, max_requests=20, max_seconds=30)
    assert after.run().served == 20


def test_status_shows_upgrade_and_rollback(fl):
    reports = fl["work"] / "status"
    run = pyinfra(fl["inventory"], "deploys/status.py", data={"status_report_dir": str(reports)})
    assert run.changed() == {}
    report = json.loads(next(reports.glob("*.json")).read_text())
    rows = {r["host"]: r for r in report["rows"]}
    assert rows["fl-h1"]["rollout"].startswith("rolled_back (batch 1/3") and BAD in rows["fl-h1"]["rollout"]
    for h in REPLICAS[1:]:
        assert rows[h]["rollout"].startswith("upgraded (batch")
    for h in REPLICAS:
        assert rows[h]["image"] == NEW and rows[h]["vllm"] == "0.19.0" and rows[h]["health"] == "200"
        assert rows[h]["unit"] == "active" and rows[h]["verified"].startswith("ok")
        assert rows[h]["weights"].startswith("Qwen/Qwen3-30B-A3B-Instruct-2507-FP8@master -> revisions/")
    assert rows["fl-h4"]["rollout"] == "in: fl-h1, fl-h2, fl-h3"
    assert "rolled_back" in run.stdout + run.stderr  # the table is printed


def test_dry_diff_shows_per_host_changes_and_touches_nothing(fl):
    before = {h: (started_at(fl, h), ssh(fl["ips"][h], f"sha256sum {UNIT}").stdout) for h in REPLICAS}
    upstream = ssh(fl["ips"]["fl-h4"], "sha256sum /etc/nginx/llmfleet/qwen30b_fp8.upstream.conf").stdout
    run = deploy(fl, OLD, "--dry", "--diff")
    text = run.stdout + run.stderr
    for b, host in enumerate(REPLICAS, 1):
        assert (f"[{host}] rollout qwen30b_fp8 batch {b}/3: image {NEW} -> {OLD}; weights "
                "Qwen/Qwen3-30B-A3B-Instruct-2507-FP8@master unchanged; unit changes: restart") in text
        assert f"[{host}] Will modify {UNIT}" in text
    assert f"-     {NEW} \\" in text and f"+     {OLD} \\" in text
    assert fl["key"] not in text
    for h in REPLICAS:
        assert (started_at(fl, h), ssh(fl["ips"][h], f"sha256sum {UNIT}").stdout) == before[h]
    assert ssh(fl["ips"]["fl-h4"], "sha256sum /etc/nginx/llmfleet/qwen30b_fp8.upstream.conf").stdout == upstream


def test_failed_unit_change_is_named_as_such(fl):
    """A change of the unit alone (an env var that makes the stand-in's /health fail) that fails its gate
    is named as a unit change on an unchanged image, and rolled back."""
    run = pyinfra(fl["inventory"], "deploys/qwen30b_fp8.py", check=False, timeout=600,
                  data={**COMMON, "serve_image": NEW, "serve_extra_env": json.dumps({"LLMFLEET_STANDIN_FAIL_HEALTH": "1"})})
    text = run.stdout + run.stderr
    assert run.returncode != 0
    assert (f"stopped at fl-h1 (batch 1/3): its change (image {NEW} unchanged; weights "
            "Qwen/Qwen3-30B-A3B-Instruct-2507-FP8@master unchanged; unit changed) failed its verification") in text
    assert "new version" not in text
    assert running_image(fl["ips"]["fl-h1"], CONTAINER) == NEW
    assert deploy(fl, NEW).changed() == {}  # the rolled-back unit is the converged one


def test_removing_a_replica_drains_it_first_and_fails_no_request(fl):
    """fl-h3 taken off (``serve_state: absent`` in its inventory data) while clients call the gateway:
    the gateway drains it before its unit stops, then routes to fl-h1 and fl-h2 only; they are not
    restarted; no request fails; a second run changes nothing."""
    inv = fl["work"] / "inventory-remove.py"
    inv.write_text(fl["inventory"].read_text() + "\nrtx4090x2 = [(n, {**d, 'serve_state': 'absent'} if n == 'fl-h3' "
                   "else d) for n, d in rtx4090x2]\n")
    before = {h: started_at(fl, h) for h in REPLICAS[:2]}
    with ClientLoop(gateway_url(fl), fl["key"], "qwen-30b", threads=4, max_requests=5000, max_seconds=120) as loop:
        run = pyinfra(inv, "deploys/qwen30b_fp8.py", data={**COMMON, "serve_image": NEW}, timeout=600)
    assert loop.result.failed == 0, dict(loop.result.errors)
    changed = run.changed()
    assert changed["Model | qwen30b_fp8: drain removed replicas"] == ["fl-h4"]
    assert changed["Model | Remove model | qwen30b_fp8: stop and disable"] == ["fl-h3"]
    names = list(changed)
    assert names.index("Model | qwen30b_fp8: drain removed replicas") < names.index(
        "Model | Remove model | qwen30b_fp8: stop and disable")  # drained first (pyinfra's operation order)
    upstream = ssh(fl["ips"]["fl-h4"], "cat /etc/nginx/llmfleet/qwen30b_fp8.upstream.conf").stdout
    assert fl["ips"]["fl-h1"] in upstream and fl["ips"]["fl-h2"] in upstream and fl["ips"]["fl-h3"] not in upstream
    assert ssh(fl["ips"]["fl-h3"], f"ls {UNIT}", check=False).returncode != 0
    assert ssh(fl["ips"]["fl-h3"], "docker ps -q").stdout.strip() == ""
    assert {h: started_at(fl, h) for h in REPLICAS[:2]} == before
    after = ClientLoop(gateway_url(fl), fl["key"], "qwen-30b", threads=2, max_requests=20, max_seconds=30)
    assert after.run().served == 20
    assert pyinfra(inv, "deploys/qwen30b_fp8.py", data={**COMMON, "serve_image": NEW}, timeout=600).changed() == {}
