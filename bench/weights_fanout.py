"""Benchmark (not a test): staging time and hub bytes for N hosts: every host from the hub (``off``),
fan-out in waves (``waves``: a host sends once it holds the whole copy) and pipelined (``chain``: a
host passes on each verified chunk while it still receives).

Brings a lab up (``--name``, default ``wt``) with the largest N, rate-limits every link with
``tc tbf`` so the link -- not the CPU -- is the bottleneck (each host's veth both ways, and the
bridge device itself, which carries only what the machine sends: the hub stand-in's uplink), then
for each N and mode publishes a fresh copy of the model (``--shards`` x ``--shard-mb``, generated
locally) into the hub stand-in and runs ``deploys/weights.py`` on the first N hosts. Prints a
table; tears the lab down at the end.

Columns: ``staging s`` = first fetch unit start to last fetch unit end over the N hosts' journals
(includes the pyinfra gaps between waves); ``x N=1`` = staging over the same mode's N=1 staging;
``run s`` = the whole pyinfra run; ``hub x`` = file bytes the hub stand-in served over the model
size; ``MB/host`` = model size.

    .venv/bin/python bench/weights_fanout.py [--name wt] [--sizes 1 4 8] [--rate 100mbit]
        [--modes off waves chain] [--shards 4 --shard-mb 6]

Results on the 2-core development machine (shared with other work; every link 100mbit, width 1,
chain chunks 1 MiB) are in README.md ("Weights to many hosts"). What they show: without fan-out time
grows linearly (N copies share the hub uplink); waves keep the hub at one copy but time grows with
the number of waves (log2 N copies, plus ~1-2 s of pyinfra per wave); the chain stays near one
download time for any N (each hop adds one chunk's transfer time) with the hub at one copy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.lab import lab as lablib  # noqa: E402
from tasks.lab.config import CACHE_DIR, HUB_PORT, LabConfig  # noqa: E402
from tasks.lab.standins.model_repo import publish, write_model_repo  # noqa: E402
from tasks.weights.deploy import model_dirname  # noqa: E402

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def shape(cfg: LabConfig, n: int, rate: str) -> None:
    """tbf on every link: host downlinks (root-side veth), uplinks (eth0 in the netns), hub uplink."""
    spec = ["root", "tbf", "rate", rate, "burst", "256kb", "latency", "100ms"]
    sh("tc", "qdisc", "replace", "dev", cfg.bridge, *spec)
    for i in range(1, n + 1):
        sh("tc", "qdisc", "replace", "dev", cfg.veth(i), *spec)
        sh("ip", "netns", "exec", cfg.netns(i), "tc", "qdisc", "replace", "dev", "eth0", *spec)


def hub(cfg: LabConfig, route: str) -> dict:
    req = urllib.request.Request(f"http://{cfg.bridge_ip}:{HUB_PORT}/_standin/{route}",
                                 method="GET" if route == "stats" else "POST", data=None if route == "stats" else b"{}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def ssh(ip: str, cmd: str) -> str:
    return subprocess.run(
        ["ssh", "-i", str(CACHE_DIR / "id_ed25519"), "-o", "StrictHostKeyChecking=no", "-o",
         "UserKnownHostsFile=/dev/null", "-o", "LogLevel=error", f"root@{ip}", cmd],
        capture_output=True, text=True, timeout=60, check=True).stdout


def unit_span(ip: str, unit: str) -> tuple[float, float]:
    """First and last journal timestamp of a unit on a host (seconds)."""
    out = ssh(ip, f"journalctl -u {unit} -o json --output-fields=__REALTIME_TIMESTAMP --no-pager")
    stamps = [int(json.loads(line)["__REALTIME_TIMESTAMP"]) / 1e6 for line in out.splitlines() if line.strip()]
    return min(stamps), max(stamps)


def run_deploy(inv: str, hosts: list[str], data: dict) -> float:
    cmd = [PYINFRA, inv, "deploys/weights.py", "-y"]
    for h in hosts:
        cmd += ["--limit", h]
    for k, v in data.items():
        cmd += ["--data", f"{k}={v}"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"pyinfra failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.monotonic() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default="wt")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--rate", default="100mbit")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--shard-mb", type=int, default=6)
    p.add_argument("--modes", nargs="+", default=["off", "waves", "chain"], choices=["off", "waves", "chain"])
    p.add_argument("--keep", action="store_true", help="leave the lab up")
    args = p.parse_args()
    cfg = LabConfig(args.name)
    n_max = max(args.sizes)
    lablib.down(cfg, log=lambda *_: None)
    state = lablib.up(cfg, n_max, ["cpu"], log=lambda *_: None)
    try:
        inv = state["inventory"]
        ips = {h["name"]: h["ip"] for h in state["hosts"]}
        names = [h["name"] for h in state["hosts"]]
        tmp = Path(tempfile.mkdtemp(prefix="wbench-"))
        files = tmp / "model"
        sizes = write_model_repo(files, seed=7, shards=args.shards, shard_bytes=args.shard_mb << 20)
        total = sum(sizes.values())
        # warm-up (not timed): venv and scripts on every host, with a tiny model
        warm = tmp / "warm"
        write_model_repo(warm, seed=1, shards=1, shard_bytes=1 << 16)
        publish(cfg.run_dir / "hub", "bench/warm", warm, ["v1"])
        run_deploy(inv, names, {"serve_model__hub": "huggingface", "serve_model__repo_id": "bench/warm",
                                "serve_model__revision": "v1"})
        shape(cfg, n_max, args.rate)
        rows = []
        for n in args.sizes:
            for mode in args.modes:
                repo = f"bench/m-n{n}-{mode}"
                publish(cfg.run_dir / "hub", repo, files, ["v1"])
                hub(cfg, "reset")
                hosts = names[:n]
                wall = run_deploy(inv, hosts, {"serve_model__hub": "huggingface", "serve_model__repo_id": repo,
                                               "serve_model__revision": "v1", "weights_fanout": mode != "off",
                                               "weights_fanout_mode": "waves" if mode == "off" else mode})
                served = hub(cfg, "stats")["file_bytes"]
                spans = [unit_span(ips[h], f"llmfleet-weights-{model_dirname(repo)}") for h in hosts]
                staging = max(e for _, e in spans) - min(s for s, _ in spans)
                rows.append((n, mode, staging, wall, served / total, total / 1e6))
                print(f"  N={n} {mode}: staging {staging:.1f}s run {wall:.1f}s hub {served / total:.2f}x",
                      file=sys.stderr, flush=True)
                for h in hosts:  # the next case starts from empty disks (the lab's are small)
                    ssh(ips[h], f"rm -rf /srv/models/{model_dirname(repo)}")
        one = {mode: staging for n, mode, staging, *_ in rows if n == 1}
        print(f"\nweights staging, model {total / 1e6:.1f} MB, every link {args.rate} (tc tbf), "
              f"fan-out width 1, chain chunk 1 MiB, lab hosts on one machine\n")
        print("| N | mode | staging s | x N=1 | run s | hub x | MB/host |")
        print("|---|---|---|---|---|---|---|")
        for n, mode, staging, wall, hub_x, per_host in rows:
            ratio = f"{staging / one[mode]:.2f}" if mode in one else "-"
            print(f"| {n} | {mode} | {staging:.1f} | {ratio} | {wall:.1f} | {hub_x:.2f} | {per_host:.1f} |")
    finally:
        if not args.keep:
            lablib.down(cfg, log=lambda *_: None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
