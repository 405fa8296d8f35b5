"""Benchmark: a rolling image upgrade (vllm/vllm-openai v0.18.0 -> v0.19.0 stand-ins) of 3 and of 8
replicas behind the nginx gateway in lab "fl", with a bounded client loop through the gateway.

    sudo /work/main/.venv/bin/python -m bench.rolling_upgrade [--keep-lab] [--json PATH]

Reports per fleet size: requests served and failed during the upgrade, the deploy's wall time, and
seconds per host (the mean interval between consecutive hosts' upgrade records, i.e. one host's
drain -> restart -> gate -> put back cycle). The lab has 3 replica machines (at most 4 lab hosts on
a shared machine): the 8-replica fleet is 8 inventory hosts on those 3 machines, each replica its
own service (``serve_name`` q0..q7, ports 8100-8107) -- same rollout code path, 8 batches.
Needs root (the lab). Stand-in images: timings are llmfleet's own overhead plus the stand-in
server's start, not a real model's load time.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.client_loop import ClientLoop

REPO = Path(__file__).resolve().parents[1]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
OLD, NEW = "vllm/vllm-openai:v0.18.0", "vllm/vllm-openai:v0.19.0"
PROFILES = ["rtx4090x2", "rtx4090x2", "rtx4090x2", "cpu"]
COMMON = {"service_ulimits": json.dumps({"memlock": "8388608", "stack": "67108864"}),
          "preflight_weights_bytes": "1000000", "serve_api_key_secret": "bench_api_key", "rollout_gate_wait_s": "30"}


def inventory(lab_inventory: Path, path: Path, replicas: int) -> Path:
    """Lab inventory + gateway group; for more replicas than machines, virtual replicas."""
    text = lab_inventory.read_text() + "\ngateway = cpu\n"
    if replicas > 3:
        text += (
            "\n_MACHINES = rtx4090x2\n"
            f"rtx4090x2 = [(f\"{{_MACHINES[i % 3][0]}}-r{{i}}\", {{**_MACHINES[i % 3][1], 'serve_name': f'q{{i}}', "
            f"'serve_port': 8100 + i}}) for i in range({replicas})]\n"
            "cpu = [(cpu[0][0], {**cpu[0][1], 'gateway_port': 9000})]\ngateway = cpu\n"
        )
    path.write_text(text)
    return path


def deploy(inv: Path, image: str, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [PYINFRA, str(inv), "deploys/qwen30b_fp8.py", "-y"]
    for k, v in {**COMMON, "serve_image": image}.items():
        cmd += ["--data", f"{k}={v}"]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    return proc, round(time.monotonic() - started, 1)


def records(lab: dict, replicas: int) -> list[dict]:
    from tests.lab.helpers import ssh

    ips = [h["ip"] for h in lab["hosts"] if h["profile"] == "rtx4090x2"]
    out = []
    names = ["qwen30b_fp8"] if replicas <= 3 else [f"q{i}" for i in range(replicas)]
    for i in range(replicas):
        name = names[0] if replicas <= 3 else names[i]
        text = ssh(ips[i % 3], f"cat /etc/llmfleet/{name}.rollout.json", check=False).stdout
        out.append(json.loads(text) if text.strip() else {})
    return out


def run_size(lab: dict, work: Path, replicas: int, key: str, env: dict) -> dict:
    inv = inventory(Path(lab["inventory"]), work / f"inv{replicas}.py", replicas)
    gateway_ip = next(h["ip"] for h in lab["hosts"] if h["profile"] == "cpu")
    port = 8000 if replicas <= 3 else 9000
    proc, _ = deploy(inv, OLD, env)  # converge on the old version first (not measured)
    if proc.returncode != 0:
        raise SystemExit(f"converging {replicas} replicas failed:\n{proc.stderr[-3000:]}")
    with ClientLoop(f"http://{gateway_ip}:{port}", key, "qwen-30b", threads=4, max_requests=200000,
                    max_seconds=1200) as loop:
        proc, wall = deploy(inv, NEW, env)
    result = loop.result
    ats = sorted(r["at"] for r in records(lab, replicas) if r.get("outcome") == "upgraded")
    per_host = round((ats[-1] - ats[0]) / (len(ats) - 1), 1) if len(ats) > 1 else None
    return {"replicas": replicas, "rc": proc.returncode, "served": result.served, "failed": result.failed,
            "errors": dict(result.errors), "upgraded": len(ats), "deploy_s": wall, "s_per_host": per_host,
            "loop_s": result.seconds}


def table(rows: list[dict]) -> str:
    cols = ("replicas", "served", "failed", "upgraded", "deploy_s", "s_per_host")
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    lines += [" | ".join(str(r[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-lab", action="store_true", help="leave lab fl up afterwards")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    from tasks.lab import lab as lablib
    from tasks.lab.config import LabConfig

    cfg = LabConfig("fl")
    lablib.down(cfg, log=lambda *_: None)
    lab = lablib.up(cfg, len(PROFILES), PROFILES, log=lambda *_: None)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "secrets").mkdir()
            key = "sk-bench-" + secrets.token_hex(12)
            (work / "secrets" / "bench_api_key").write_text(key + "\n")
            os.chmod(work / "secrets" / "bench_api_key", 0o600)
            env = dict(os.environ, LLMFLEET_SECRETS_DIR=str(work / "secrets"), PYTHONUNBUFFERED="1")
            if not (REPO / "tasks/weights/deploy.py").exists():
                env["PYTHONPATH"] = str(REPO / "tests/lab/shims")
            for n in (3, 8):
                rows.append(run_size(lab, work, n, key, env))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if not args.keep_lab:
            lablib.down(cfg, log=lambda *_: None)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
