"""The gateway's per-replica counts: the mtail program (templates/monitoring/gateway.mtail.j2) run by
Debian's mtail (bin/setup unpacks it into .venv/bin) over upstream-log lines in the format the nginx
server block declares (templates/nginx.conf.j2), with retries, failures and a refused key."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

from tasks import gateway as gw
from tasks.monitoring.deploy import MTAIL_TEMPLATE

MTAIL = shutil.which("mtail") or str(Path(sys.executable).with_name("mtail"))


def log_line(fmt: str, replicas: str, statuses: str, status: int) -> str:
    """One line as nginx writes it with ``fmt`` (its variables replaced by these values)."""
    return (fmt.replace("$upstream_addr", replicas).replace("$upstream_status", statuses)
            .replace("$status", str(status)))


def test_mtail_counts_requests_errors_and_retries_per_replica(tmp_path):
    if not Path(MTAIL).exists():
        pytest.fail(f"{MTAIL} is missing: run bin/setup (it unpacks Debian's mtail into .venv/bin)")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    server = env.from_string(gw.TEMPLATE.read_text()).render(
        name_="qwen30b", served_model_name="coder", var="qwen30b", listen_port=8000, upstream_file="u",
        keys_file="k", backend_file="b", open_=False, backend=True, client_max_body_size="64m",
        next_upstream_tries=3, connect_timeout_s=5, read_timeout_s=900, keepalive=False, upstream_log="l",
        session_var="")
    fmt = re.search(r"log_format llmfleet_qwen30b_upstreams escape=none '(.*)';", server).group(1)
    a, b, c = "10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"
    (tmp_path / "progs").mkdir()
    (tmp_path / "progs" / "gw.mtail").write_text(env.from_string(MTAIL_TEMPLATE.read_text()).render(tries=3))
    (tmp_path / "u.log").write_text("\n".join([
        log_line(fmt, a, "200", 200),
        log_line(fmt, f"{a}, {b}", "502, 200", 200),            # a refused, retried on b
        log_line(fmt, f"{a}, {b}, {c}", "502, 504, 500", 500),  # three replicas tried, all failed
        log_line(fmt, "-", "-", 401),                           # key refused: no replica
        log_line(fmt, b, "400", 400),                           # the client's error, not the replica's
    ]) + "\n")
    run = subprocess.run([MTAIL, "--one_shot", "--one_shot_format=prometheus", "--progs", "progs",
                          "--logs", "u.log", "--port", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    got = {}
    for line in run.stdout.splitlines():
        m = re.match(r'^llmfleet_gateway_upstream_(\w+)_total\{(.*)\} (\d+)$', line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            assert labels.pop("model") == "qwen30b" and labels.pop("prog") == "gw.mtail"
            got[(m.group(1), *sorted(labels.values()))] = int(m.group(3))
    assert got == {
        ("requests", a, "200"): 1, ("requests", a, "502"): 2, ("requests", b, "200"): 1,
        ("requests", b, "504"): 1, ("requests", c, "500"): 1, ("requests", b, "400"): 1,
        ("errors", a): 2, ("errors", b): 1, ("errors", c): 1,
        ("retries", a): 2, ("retries", b): 1,
    }
