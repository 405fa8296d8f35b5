"""Ascend runtime: the CANN toolkit (+ kernels/ops, nnal) from .run packages, idempotent by version.

The NPU driver and firmware must already be installed: installing them needs a reboot, which
llmfleet never does unasked, so a host without them is refused with instructions.

The installers run as root, so each is pinned by its sha256 in data (``ascend_cann_sha256``: file
name -> digest, as Huawei's download page lists them beside each .run). An installer without a pin
is refused before anything is fetched; a local file that does not match is refused before it is
uploaded; a download that does not match fails before it runs (and the install command checks the
digest again right before running it).

Settings (host data, prefix ``ascend_``): ``tasks.settings.ascend.AscendSettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.operations import files, server

from .refuse import refuse_host
from tasks.settings.ascend import AscendSettings

DEFAULTS = AscendSettings.defaults()
CACHE = "/var/cache/llmfleet/cann"
DRIVER_INFO = "/usr/local/Ascend/driver/version.info"


def run_file(package: str, version: str, arch: str, chip: str) -> str:
    name = {"toolkit": "toolkit", "kernels": f"kernels-{chip}", "nnal": "nnal"}[package]
    return f"Ascend-cann-{name}_{version}_linux-{arch}.run"


def installed_markers(install_path: str, version: str) -> dict[str, str]:
    """A file each package leaves behind at ``version`` (what the CannInstalled fact looks for)."""
    return {
        "toolkit": f"{install_path}/ascend-toolkit/{version}",
        "kernels": f"{install_path}/ascend-toolkit/{version}/opp/built-in",
        "nnal": f"{install_path}/nnal/atb/{version}",
    }


class CannInstalled(FactBase[dict]):
    """
    Which CANN packages are installed at a version, the machine's arch, and whether the NPU driver is there,
    in one round trip: ``{"arch": "aarch64", "driver": True, "toolkit": False, "kernels": False, "nnal": False}``.
    """

    default = dict

    def command(self, install_path: str, version: str) -> str:
        checks = " ".join(f"{pkg}={shlex.quote(path)}" for pkg, path in installed_markers(install_path, version).items())
        return (f"echo arch=$(uname -m); if [ -f {DRIVER_INFO} ]; then echo driver=1; else echo driver=0; fi; "
                f"for kv in {checks}; do k=${{kv%%=*}}; p=${{kv#*=}}; "
                f'if [ -d "$p" ]; then echo "$k=1"; else echo "$k=0"; fi; done')

    def process(self, output):
        result: dict = {}
        for line in output:
            key, _, value = line.partition("=")
            result[key] = value if key == "arch" else value == "1"
        return result


def _local_digest(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


@deploy("Ascend CANN", data_defaults=DEFAULTS)
def install_cann() -> None:
    """
    Install the configured CANN packages unless that version is already installed.

    Example:

    .. code:: python

        from tasks.ascend import install_cann
        install_cann()
    """
    settings = AscendSettings.of(host)
    version, path = settings.ascend_cann_version, settings.ascend_install_path
    state = host.get_fact(CannInstalled, install_path=path, version=version)
    if not state.get("driver"):
        refuse_host(
            f"no Ascend NPU driver ({DRIVER_INFO} missing). Install the NPU driver and firmware "
            "packages for this server (Ascend-hdk-*-npu-driver_*.run --full, then *-npu-firmware_*.run --full) "
            "and reboot it yourself; llmfleet never reboots a host. Then run this deploy again.",
        )
        return
    missing = [pkg for pkg in settings.ascend_cann_packages if not state.get(pkg)]
    if not missing:
        host.noop(f"CANN {version} installed ({', '.join(settings.ascend_cann_packages)})")
        return
    source = settings.ascend_cann_source
    if not source:
        refuse_host(f"CANN {version} is not installed ({', '.join(missing)}) and ascend_cann_source is not set: "
                    "point it at the directory or URL holding the Ascend-cann-*.run packages")
        return
    remote = str(source).startswith(("http://", "https://"))
    names = {pkg: run_file(pkg, version, state["arch"], settings.ascend_cann_chip) for pkg in missing}
    pins = settings.ascend_cann_sha256
    unpinned = [name for name in names.values() if name not in pins]
    if unpinned:
        refuse_host(f"no sha256 pinned for {', '.join(unpinned)}: installers run as root and are checked "
                    "first; add each file's sha256 (from Huawei's download page) to ascend_cann_sha256")
        return
    if not remote:
        wrong = [name for name in names.values() if _local_digest(Path(source) / name) != pins[name]]
        if wrong:
            refuse_host(f"{', '.join(wrong)} in {source}: missing, or its sha256 is not the one pinned in "
                        "ascend_cann_sha256 (a different or damaged file): nothing was uploaded or run")
            return
    files.directory(name="CANN package cache", path=CACHE, mode="700")
    for pkg, name in names.items():
        dest = f"{CACHE}/{name}"
        if remote:
            files.download(name=f"Fetch {name}", src=f"{str(source).rstrip('/')}/{name}", dest=dest, mode="700",
                           sha256sum=pins[name])
        else:
            files.put(name=f"Upload {name}", src=str(Path(source) / name), dest=dest, mode="700")
        mode = "--full" if pkg == "toolkit" else "--install"
        check = f"echo {shlex.quote(pins[name] + '  ' + dest)} | sha256sum -c --quiet -"
        server.shell(name=f"Install CANN {pkg} {version}",
                     commands=[f"{check} && bash {shlex.quote(dest)} {mode} --quiet --install-path={shlex.quote(path)}"])
