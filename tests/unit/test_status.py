"""Status rows and table from status records (the shape tasks/status.py's host script prints), and
the host script itself run against a fake /etc/llmfleet."""

from __future__ import annotations

import json

from tasks import status

from .conftest import run_sh


def test_rows_for_service_and_gateway():
    rec = {"kind": "service", "name": "q", "model": "qwen-30b", "image": "vllm/vllm-openai:v0.19.0",
           "vllm_version": "0.19.0", "unit_state": "active", "health": 200, "weights": "Q/M@master",
           "weights_current": "revisions/master", "last_verify": {"ok": True, "at": 1000},
           "rollout": {"outcome": "rolled_back", "batch": "1/3", "at": 990, "image": "bad:1",
                       "reason": "/health: not healthy"}}
    r = status.row("h1", rec, now=1030)
    assert r["verified"] == "ok 30s ago" and r["weights"] == "Q/M@master -> revisions/master"
    assert r["rollout"] == "rolled_back (batch 1/3, 40s ago): bad:1 failed: /health: not healthy"
    g = status.row("gw", {"kind": "gateway", "name": "q", "port": 8000, "unit_state": "active", "health": 200,
                          "servers": {"h1": {"down": False}, "h2": {"down": True}}}, now=0)
    assert g["rollout"] == "in: h1; drained: h2" and g["model"] == "gateway q :8000"
    down = status.row("h2", {"kind": "service", "name": "q", "unit_state": "failed", "health": None}, now=0)
    assert down["health"] == "down" and down["image"] == "(not running)"
    text = status.table([r, g])
    assert text.splitlines()[0].split() == list(status.COLUMNS) and "rolled_back" in text


def test_host_script_reads_services_and_upstreams(tmp_path):
    etc, nginx = tmp_path / "etc", tmp_path / "nginx"
    etc.mkdir()
    nginx.mkdir()
    (etc / "q.verify.json").write_text(json.dumps({"name": "q", "unit": "llmfleet-q.service",
                                                   "container": "llmfleet-q", "port": 1,
                                                   "served_model_name": "qwen-30b"}))
    (etc / "q.rollout.json").write_text('{"outcome": "upgraded", "batch": "2/3", "at": 5}')
    (etc / "q.last-verify.json").write_text('{"ok": true}')
    (nginx / "q.upstream.conf").write_text("upstream x {\n    server 10.0.0.1:1 max_fails=3;  # h1\n"
                                           "    server 10.0.0.2:1 max_fails=3 down;  # h2\n}\n")
    fact = status.FleetStatus()
    lines, rc = run_sh(fact.command(str(etc), str(nginx), 0.5))
    rows = fact.process(lines)
    assert rc == 0 and [r["kind"] for r in rows] == ["service", "gateway"]
    svc, gwr = rows
    assert svc["model"] == "qwen-30b" and svc["rollout"]["outcome"] == "upgraded" and svc["last_verify"]["ok"]
    assert svc["health"] is None  # nothing listens on port 1
    assert gwr["servers"] == {"h1": {"address": "10.0.0.1:1", "down": False},
                              "h2": {"address": "10.0.0.2:1", "down": True}}
