"""Lab hosts: systemd-nspawn containers with systemd as PID 1, one network namespace each.

Each host is an overlay over the shared host rootfs (its own upper dir), booted with the
flags Docker needs inside (see LAB-NOTES: unified cgroup hierarchy, all capabilities, the
keyring/bpf syscalls, /var/lib/docker on a plain directory because overlay2 cannot sit on
the overlay root). Each host runs in its own cgroups so that ``down`` can find every
process it left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .config import LabConfig

CGROUP_ROOTS = ("systemd", "unified", "memory")
CGROUP_FS = Path("/sys/fs/cgroup")


@dataclass
class Host:
    index: int
    name: str
    ip: str
    profile: str
    dir: str
    pid: int = 0
    binds: list[str] = field(default_factory=list)

    @property
    def merged(self) -> Path:
        return Path(self.dir) / "merged"

    def to_json(self) -> dict:
        return asdict(self)


#: The most of the machine's memory one lab's hosts' disks may take when the lab lives in memory, so
#: that two labs side by side (two test workers) leave room for what runs in them.
MEMORY_DISK_SHARE = 0.4


def mount_memory_disk(path: Path) -> None:
    """Put the hosts' disks under ``path`` on a tmpfs of their own (bounded by :data:`MEMORY_DISK_SHARE`).

    Why: the lab's hosts write hundreds of MB each (Docker and its images, apt's lists, venvs), and on
    the CI machine's disk (ext4 mounted with ``discard``) deleting them cost ~30-100 s per host at
    teardown; a tmpfs is freed at once on unmount. Docker's overlay2 and the hosts' overlay roots work
    on tmpfs as on ext4 (tmpfs has d_type and trusted xattrs). Example::

        mount_memory_disk(cfg.hosts_dir)   # before the first host is prepared
    """
    path.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(path):
        size = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * MEMORY_DISK_SHARE)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "llmfleet-lab", str(path)],
                       check=True)


def cgroup_dirs(cfg: LabConfig, host: str | None = None) -> list[Path]:
    return [CGROUP_FS / root / cfg.cgroup / (host or "") for root in CGROUP_ROOTS]


def prepare(cfg: LabConfig, host: Host, lower: Path, files: dict[str, tuple[bytes, int]],
            authorized_key: str, units: list[str] = ()) -> None:
    """Mount the host's overlay and write its identity and per-host files before boot."""
    base = Path(host.dir)
    for sub in ("upper", "work", "merged", "docker"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(host.merged):
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lower},upperdir={base / 'upper'},workdir={base / 'work'}", str(host.merged)],
            check=True,
        )
    root = host.merged
    (root / "etc/hostname").write_text(host.name + "\n")
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n{host.ip} {host.name}\n")
    ssh = root / "root/.ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh / "authorized_keys").write_text(authorized_key)
    os.chmod(ssh / "authorized_keys", 0o600)
    for path, (content, mode) in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        os.chmod(target, mode)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in units:
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / unit
        if not link.is_symlink():
            link.symlink_to(f"/etc/systemd/system/{unit}")


def boot(cfg: LabConfig, host: Host) -> None:
    for d in cgroup_dirs(cfg, host.name):
        d.mkdir(parents=True, exist_ok=True)

    def into_cgroups() -> None:
        for d in cgroup_dirs(cfg, host.name):
            (d / "cgroup.procs").write_text(str(os.getpid()))

    env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1", SYSTEMD_NSPAWN_API_VFS_WRITABLE="network")
    # systemd-nspawn as PID 1 of a PID namespace of its own: if it dies (killed, crashed), the
    # kernel kills every process below it, so the host goes down with it as with a power loss,
    # instead of living on unseen. --kill-child: the same when the unshare around it dies.
    cmd = [
        "unshare", "--pid", "--fork", "--kill-child",
        "systemd-nspawn", "-q", "-D", str(host.merged), "-M", host.name, "-b",
        "--register=no", "--keep-unit", "--console=read-only",
        f"--network-namespace-path=/run/netns/{cfg.netns(host.index)}",
        "--resolv-conf=copy-host", "--timezone=off",
        "--capability=all", "--system-call-filter=add_key keyctl bpf",
        f"--bind={Path(host.dir) / 'docker'}:/var/lib/docker",
    ]
    # Stand-in device nodes (character devices, so Docker's --device accepts them).
    cmd += [f"--bind=/dev/null:{dev}" for dev in host.binds]
    log = open(Path(host.dir) / "console.log", "ab")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                            preexec_fn=into_cgroups, start_new_session=True)
    host.pid = proc.pid


def _child(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def nspawn_pid(host: Host) -> int | None:
    """The host's systemd-nspawn (the child of the ``unshare`` that :func:`boot` started)."""
    return _child(host.pid) if host.pid else None


def _init_pid(host: Host) -> int | None:
    """The host's PID 1 (the child of its systemd-nspawn)."""
    nspawn = nspawn_pid(host)
    return _child(nspawn) if nspawn else None


def wait_ready(cfg: LabConfig, host: Host, timeout: float = 120) -> None:
    """Wait until the host's systemd reports running (or degraded) and sshd answers."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        init = _init_pid(host)
        if init is None and not Path(f"/proc/{host.pid}").exists():
            raise RuntimeError(f"{host.name}: systemd-nspawn exited; see {host.dir}/console.log")
        if init:
            res = subprocess.run(
                ["nsenter", "-t", str(init), "-m", "-u", "-i", "-n", "-p",
                 "systemctl", "is-system-running", "--wait"],
                capture_output=True, text=True, timeout=max(1, deadline - time.monotonic()),
            )
            state = res.stdout.strip()
            if state in ("running", "degraded"):
                break
        time.sleep(0.3)
    else:
        raise RuntimeError(f"{host.name}: not ready after {timeout}s (state {state!r})")
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host.ip, 22), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{host.name}: sshd did not answer on {host.ip}:22")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def kill(cfg: LabConfig, host: Host) -> None:
    """Hard power-off: SIGKILL the host's systemd-nspawn (PID 1 of the namespace it was started in,
    see :func:`boot`: the kernel kills everything below it, the host's init first) and whatever is
    left in its cgroups, then unmount its overlay. Its directories are kept: :func:`boot` again."""
    for pid in (nspawn_pid(host), host.pid):
        if pid and alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    kill_cgroup(cfg, host.name)
    deadline = time.monotonic() + 10
    while host.pid and alive(host.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    subprocess.run(["umount", "-R", str(host.merged)], capture_output=True)


def processes(cfg: LabConfig, host: Host) -> dict[int, str]:
    """pid -> command line (spaces between arguments) of every process of the host, read from the
    machine's /proc (no round trip into the host: fast enough to catch a step of a deploy)."""
    out = {}
    for d in cgroup_dirs(cfg, host.name)[:1]:
        for pid in (_procs(d) if d.exists() else []):
            try:
                out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass
    return out


def wait_for_process(cfg: LabConfig, host: Host, match: Callable[[str], bool], timeout: float,
                     interval: float = 0.05) -> str | None:
    """Poll the host's processes until one's command line satisfies ``match`` (returned), or None
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for cmdline in processes(cfg, host).values():
            if match(cmdline):
                return cmdline
        time.sleep(interval)
    return None


def _ns_init(pids: list[int]) -> int | None:
    """Among ``pids``, the host's init: PID 1 of the innermost PID namespace (the deepest ``NSpid``
    ending in 1; systemd-nspawn is PID 1 one level up)."""
    best, depth = None, 0
    for pid in pids:
        try:
            line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        ids = line.split()[1:]
        if len(ids) > 1 and ids[-1] == "1" and len(ids) > depth:
            best, depth = pid, len(ids)
    return best


def host_state(cfg: LabConfig, host: Host) -> dict:
    """What a host really is, from its processes: ``{"state", "systemd", "processes"}``.

    ``state`` is ``running`` (its init is alive; ``systemd`` is what ``systemctl is-system-running``
    says inside), ``stopped`` (no process left in its cgroups), or ``dying`` (processes, no init).
    The systemd-nspawn that booted a host leads a PID namespace of its own (:func:`boot`): killed,
    it takes the host with it, as a power loss would (without that, a host outlived its nspawn)."""
    pids = sorted({p for d in cgroup_dirs(cfg, host.name) if d.exists() for p in _procs(d) if alive(p)})
    init = _ns_init(pids)
    row = {"state": "stopped", "systemd": "stopped", "processes": len(pids)}
    if init is not None:
        res = subprocess.run(["nsenter", "-t", str(init), "-m", "-u", "-i", "-n", "-p", "systemctl",
                              "is-system-running"], capture_output=True, text=True, timeout=10)
        row.update(state="running", systemd=res.stdout.strip() or "unknown")
    elif pids:
        row.update(state="dying", systemd="unknown")
    return row


def _procs(d: Path) -> list[int]:
    pids = []
    for f in d.rglob("cgroup.procs"):
        try:
            pids += [int(p) for p in f.read_text().split()]
        except OSError:
            pass
    return pids


def kill_cgroup(cfg: LabConfig, host: str) -> None:
    """SIGKILL every process still in the host's cgroups (bounded)."""
    for _ in range(50):
        pids = {p for d in cgroup_dirs(cfg, host) if d.exists() for p in _procs(d)}
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def remove_cgroups(cfg: LabConfig, host: str | None = None) -> None:
    for d in cgroup_dirs(cfg, host):
        if not d.exists():
            continue
        # Depth first: systemd inside the host made its own sub-cgroups.
        for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                sub.rmdir()
            except OSError:
                pass
        try:
            d.rmdir()
        except OSError:
            pass


def remove_dir(host: Host) -> None:
    shutil.rmtree(host.dir, ignore_errors=True)
