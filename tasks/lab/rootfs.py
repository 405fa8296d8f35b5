"""Debian 12 root filesystems for lab hosts and for the stand-in images, built once and cached.

Two trees are built with debootstrap (minbase) the first time and kept as zstd tarballs
under the cache directory; later labs extract the tarball (seconds) or reuse the
extracted tree:

- host: systemd as PID 1, sshd, python3, apt with the .debs of docker.io already in
  apt's own archive cache (apt still installs them for real; it just need not download
  them on every lab host again);
- image: python3 + pip only, the base layer of the stand-in server images;
- vllm-cpu: the image tree plus a C++ compiler, Python headers and libnuma, the base layer of the real vLLM CPU
  images (tasks/lab/vllm_cpu.py): torch.compile's CPU backend compiles C++ (including Python.h) at server start.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .config import CACHE_DIR

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
HOST_PACKAGES = (
    "systemd,systemd-sysv,dbus,openssh-server,python3,sudo,ca-certificates,iproute2,curl,gnupg,procps"
)
IMAGE_PACKAGES = "python3,python3-pip,ca-certificates"
VLLM_CPU_PACKAGES = IMAGE_PACKAGES + ",g++,python3-dev,libnuma1"
# Pre-seeded into apt's archive cache of the host tree; the deploys install them.
HOST_PRESEED = ("docker.io",)

SOURCES = f"""deb {MIRROR} {SUITE} main
deb {MIRROR} {SUITE}-updates main
deb http://deb.debian.org/debian-security {SUITE}-security main
"""


def _run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, check=True, **kw)


def tree(kind: str) -> Path:
    return CACHE_DIR / "rootfs" / kind


def tarball(kind: str) -> Path:
    return CACHE_DIR / f"{kind}-rootfs.tar.zst"


def ensure(kind: str, log=print) -> Path:
    """Return the extracted tree of ``kind`` ("host", "image" or "vllm-cpu"), building it if needed."""
    target = tree(kind)
    if (target / ".llmfleet-complete").exists():
        return target
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    if tarball(kind).exists():
        log(f"lab: restoring {kind} rootfs from {tarball(kind)}")
        _run(["tar", "--zstd", "-xpf", str(tarball(kind)), "-C", str(target)])
    else:
        log(f"lab: building {kind} rootfs with debootstrap (once; cached afterwards)")
        _build(kind, target)
        tmp = tarball(kind).with_suffix(".tmp")
        _run(["tar", "--zstd", "-cpf", str(tmp), "-C", str(target), "."])
        tmp.rename(tarball(kind))
    (target / ".llmfleet-complete").touch()
    return target


def _build(kind: str, target: Path) -> None:
    include = {"host": HOST_PACKAGES, "image": IMAGE_PACKAGES, "vllm-cpu": VLLM_CPU_PACKAGES}[kind]
    _run(
        ["debootstrap", "--variant=minbase", f"--include={include}", SUITE, str(target), MIRROR],
        stdout=subprocess.DEVNULL,
    )
    (target / "etc/apt/sources.list").write_text(SOURCES)
    if kind == "host":
        _configure_host(target)
    else:
        _strip_image(target)


def _configure_host(root: Path) -> None:
    # Every host must make its own identity: debootstrap copied the builder's.
    (root / "etc/machine-id").write_text("")
    for path in [root / "var/lib/dbus/machine-id", *root.glob("etc/ssh/ssh_host_*")]:
        path.unlink(missing_ok=True)
    dropin = root / "etc/systemd/system/ssh.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "llmfleet-lab-hostkeys.conf").write_text(
        # sshd -t runs first in the stock unit and fails without keys: order them anew.
        "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n",
    )
    for unit in ("systemd-networkd-wait-online.service", "getty@tty1.service", "console-getty.service"):
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    sshd = root / "etc/ssh/sshd_config.d"
    sshd.mkdir(parents=True, exist_ok=True)
    (sshd / "llmfleet-lab.conf").write_text(
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\nMaxStartups 100:30:200\n",
    )
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    chroot = ["chroot", str(root)]
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    _run([*chroot, "apt-get", "update", "-qq"], env=env)
    _run([*chroot, "apt-get", "install", "-y", "-qq", "--download-only", *HOST_PRESEED], env=env,
         stdout=subprocess.DEVNULL)


def _strip_image(root: Path) -> None:
    for sub in ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info", "var/cache/apt",
                "var/lib/apt/lists"):
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir(parents=True, exist_ok=True)
