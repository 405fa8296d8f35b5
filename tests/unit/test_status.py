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
    # progress rows come from this machine's /run/llmfleet/progress (tests/unit/test_progress.py covers them)
    rows = [r for r in fact.process(lines) if r["kind"] != "progress"]
    assert rc == 0 and [r["kind"] for r in rows] == ["service", "gateway"]
    svc, gwr = rows
    assert svc["model"] == "qwen-30b" and svc["rollout"]["outcome"] == "upgraded" and svc["last_verify"]["ok"]
    assert svc["health"] is None  # nothing listens on port 1
    assert gwr["servers"] == {"h1": {"address": "10.0.0.1:1", "down": False},
                              "h2": {"address": "10.0.0.2:1", "down": True}}


def test_live_columns_from_metrics_against_the_last_read():
    from tasks.lab.standins.vllm_metrics import Metrics
    from tasks.monitoring import live

    m = Metrics("0.10.1.1", "qwen")
    first = live.sample(m.render(), "0.10.1.1")
    for _ in range(5):
        m.start()
    for ttft in (0.05, 0.05, 0.3, 0.3, 2.0):
        m.finish(10, 40, "stop", ttft, ttft + 1)
    for _ in range(6):  # in flight at the second read: 4 running, 2 waiting
        m.start()
    second = live.sample(m.render(), "0.10.1.1")
    rec = {"kind": "service", "name": "q", "vllm_version": "0.10.1.1", "live": second, "metrics_at": 110}
    r = status.row("h1", rec, now=110, before={"live": first, "metrics_at": 100})
    assert (r["running"], r["waiting"], r["kv"], r["gen/s"]) == ("4", "2", "90%", "20.0")
    # 5 requests: the 95th percentile falls in the (1.0, 2.5] bucket, interpolated as Prometheus does.
    assert r["ttft_p95"] == f"{1.0 + 1.5 * (4.75 - 4) / 1:.3f}s"
    assert status.row("h1", rec, now=110)["gen/s"] == "-"  # no previous read
    assert live.quantile(0.5, []) is None


def test_host_script_returns_the_metric_lines_of_known_names(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = ("# HELP x\nvllm:num_requests_running{engine=\"0\"} 3\nvllm:other_thing 1\n"
            "vllm:time_to_first_token_seconds_bucket{le=\"0.1\"} 2\n").encode()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body if self.path == "/metrics" else b'{"version": "0.18.0"}')

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        (tmp_path / "q.verify.json").write_text(json.dumps({"name": "q", "unit": "u", "container": "c",
                                                            "port": srv.server_address[1]}))
        fact = status.FleetStatus()
        lines, rc = run_sh(fact.command(str(tmp_path), str(tmp_path / "none"), 2, ["vllm:num_requests_running",
                                                                                 "vllm:time_to_first_token_seconds"]))
        # progress rows come from this machine's /run/llmfleet/progress (a parallel test may write one)
        (rec,) = [r for r in fact.process(lines) if r["kind"] != "progress"]
    finally:
        srv.shutdown()
    assert rec["metrics"] == ['vllm:num_requests_running{engine="0"} 3',
                              'vllm:time_to_first_token_seconds_bucket{le="0.1"} 2']
