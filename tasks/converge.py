"""Fact-driven building blocks that converge in one round trip per capability.

pyinfra 3.10 does not cache facts, and its stock operations read one small fact per file or
package (``files.put``: the file, its directory, its sha1; ``apt.packages``: the apt stamp, the
date, ``dpkg -l``; ``systemd.service``: two ``systemctl show``). Over SSH each is a round trip,
so a converged host spends most of a no-op run waiting. The operations here read ONE fact for
many items and act only on what differs:

- :class:`DebPackages` + :func:`deb_packages`: ``dpkg-query -W`` for just the named packages;
  missing or mismatched pins are installed, ``apt-get update`` runs inside the same command
  only when the lists are older than ``cache_time`` (or ``force_update``).
- :class:`DpkgInterrupted` + :func:`dpkg_repaired`: what a dpkg run cut short (power loss, a
  killed ``apt-get``) left behind; ``dpkg --configure -a`` and ``apt-get -f install`` finish it.
  :func:`deb_packages` does the same before installing, so a re-run converges with no manual step.
- :class:`FileDigests` + :func:`files_synced`: sha256, mode and owner of many paths; only changed
  files are uploaded (from local paths or bytes), directories are created in the same command,
  and ``--diff`` shows a unified diff of text files like ``files.put`` does (the old content is
  read only for files that change, only under ``--diff``).
- :func:`apt_source`: a signed apt repository (key from a URL, dearmored keyring, list file),
  lists refreshed in the same command when anything changed.
- :class:`UnitStates` + :func:`units_running`: ``systemctl show`` for many units at once;
  enable/start only those that need it (``restarted`` restarts them, e.g. with ``_if``).

All of them read state before their first yield, have no side effects in their bodies and call
``host.noop`` when nothing is to do, so ``--dry`` tells the truth. Calling one declares the fact it
will read (:mod:`tasks.facts.planned`): on a host nothing has changed yet in the run, the reads of
all of them arrive in one round trip.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import shlex
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from pyinfra import host, logger, state
from pyinfra.api import FactBase, FileUploadCommand, OperationError, operation
from pyinfra.api.output import format_text
from pyinfra.facts.files import FileContents
from pyinfra.operations.util.files import generate_color_diff

from tasks.facts.planned import declaring, read

#: A file's content: bytes as they are, or a local path (``str``/``Path``) read on the control machine.
Source = Union[bytes, str, Path]

APT_STAMP = "/var/lib/apt/periodic/update-success-stamp"
_PKG = re.compile(r"^[a-z0-9][a-z0-9+.-]*(:[a-z0-9]+)?$")
_MODE = re.compile(r"^[0-7]{3,4}$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_UNIT = re.compile(r"^[A-Za-z0-9:_.@\\-]+$")
NO_DPKG = "LLMFLEET_NO_DPKG"


# ---------------------------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------------------------
def parse_pins(packages: Sequence[str]) -> dict[str, str | None]:
    """``["a", "b=1.2-1"]`` -> ``{"a": None, "b": "1.2-1"}``; ValueError naming a bad entry."""
    out: dict[str, str | None] = {}
    for entry in packages:
        name, _, version = str(entry).partition("=")
        if not _PKG.match(name) or (version and not re.match(r"^[A-Za-z0-9.+:~_-]+$", version)):
            raise ValueError(f"packages: {entry!r} is not a Debian package name (optionally =version)")
        out[name] = version or None
    return out


class DebPackages(FactBase):
    """
    ``{name: version}`` of those of the named packages that are installed (dpkg status ``ii``),
    from one ``dpkg-query -W``; ``None`` on a host without dpkg.

    .. code:: python

        host.get_fact(DebPackages, names=["docker.io", "python3-venv"])  # {"docker.io": "20.10.24+dfsg1-1+b3"}
    """

    def command(self, names: Sequence[str]) -> str:
        quoted = " ".join(shlex.quote(n) for n in names)
        fmt = shlex.quote(r"${db:Status-Abbrev} ${Package} ${Version}\n")
        # dpkg-query exits 1 when a name is unknown: that is an answer (not installed), not a failure.
        return (f"if command -v dpkg-query >/dev/null 2>&1; then dpkg-query -W -f={fmt} {quoted} 2>/dev/null; "
                f"true; else echo {NO_DPKG}; fi")

    def process(self, output: list[str]) -> dict[str, str] | None:
        if any(line.strip() == NO_DPKG for line in output):
            return None
        out = {}
        for line in output:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "ii":
                out[parts[1]] = parts[2]
        return out

    # An empty answer means "none of them installed", not "unknown".
    default = dict


def apt_update_sh(cache_time: int, force: bool) -> str:
    """Shell: refresh the package lists when older than ``cache_time`` seconds (or always, ``force``)."""
    update = f"apt-get update -q && mkdir -p {posixpath.dirname(APT_STAMP)} && touch {APT_STAMP}"
    if force or cache_time <= 0:
        return update
    minutes = max(1, int(cache_time) // 60)
    return f'if [ -z "$(find {APT_STAMP} -mmin -{minutes} 2>/dev/null)" ]; then {update}; fi'


DPKG_UPDATES = "/var/lib/dpkg/updates"
_DPKG_OPTS = "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
#: Finishes what an interrupted dpkg run left, in three steps, each needed (seen on lab hosts cut off
#: mid-install): configure what was unpacked; reinstall, at the version dpkg recorded, what was cut
#: mid-unpack (half-installed / reinst-required: apt would only try to configure those, and fail);
#: let apt complete what depended on them (``dpkg --configure -a`` alone exits 1 on those).
DPKG_REPAIR_SH = (
    "export DEBIAN_FRONTEND=noninteractive; dpkg --force-confdef --force-confold --configure -a; "
    "half=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}=${Version}\\n' 2>/dev/null "
    "| awk 'substr($1,2,1)==\"H\" || substr($1,3,1)==\"R\" {print $2}'); "
    f'if [ -n "$half" ]; then apt-get install --reinstall -y -q {_DPKG_OPTS} $half; fi; '
    f"apt-get -f install -y -q {_DPKG_OPTS}"
)


class DpkgInterrupted(FactBase):
    """
    What an interrupted dpkg run left on the host: ``[]`` when dpkg is consistent, else lines
    ``journal <file>`` (status updates dpkg had not merged: the state in which apt refuses with
    "dpkg was interrupted, you must manually run 'dpkg --configure -a'") and ``package <name>``
    (packages ``dpkg --audit`` finds unpacked, half-configured, half-installed or awaiting triggers).

    .. code:: python

        host.get_fact(DpkgInterrupted)  # ["journal /var/lib/dpkg/updates/0003", "package docker.io"]
    """

    default = list

    def command(self) -> str:
        # dpkg --audit lists each broken package as " <name>  <description>" under a heading.
        return (f"if command -v dpkg >/dev/null 2>&1; then for f in {DPKG_UPDATES}/*; do "
                '[ -e "$f" ] && echo "journal $f"; done; '
                r"dpkg --audit 2>/dev/null | sed -n 's/^ \([a-z0-9][a-z0-9+.:-]*\) .*/package \1/p'; fi; true")

    def process(self, output: list[str]) -> list[str]:
        # A package appears under every heading that applies to it: once is enough.
        return list(dict.fromkeys(line.strip() for line in output if line.startswith(("journal ", "package "))))


def _say_repair(found: Sequence[str]) -> None:
    """One line naming what dpkg left and what runs now (at plan time: will run; executing: runs)."""
    packages = [line.split(" ", 1)[1] for line in found if line.startswith("package ")]
    what = f"packages left unfinished: {', '.join(packages)}" if packages else "unmerged status journal"
    verb = "running" if state.is_executing else "will run"
    host.log(f"dpkg was interrupted ({what}); {verb} dpkg --configure -a and apt-get -f install", logger.warning)


@declaring(lambda **_: [(DpkgInterrupted, {})])
@operation()
def dpkg_repaired():
    """
    Finish an interrupted dpkg run (power loss or a killed ``apt-get`` during package work), so that
    apt works again without a person running ``dpkg --configure -a``; no change on a healthy host.

    Said in the output (a warning naming the packages) whenever it repairs. :func:`deb_packages`
    does this itself; call it before other package work (``apt.packages``).

    Example:

    .. code:: python

        dpkg_repaired(name="Repair an interrupted dpkg")
        apt.packages(name="nginx", packages=["nginx"])
    """
    found = read(DpkgInterrupted)
    if not found:
        host.noop("dpkg: no interrupted package work")
        return
    _say_repair(found)
    yield DPKG_REPAIR_SH


@declaring(lambda packages, **_: [(DpkgInterrupted, {}), (DebPackages, {"names": sorted(parse_pins(packages))})])
@operation()
def deb_packages(packages: Sequence[str], cache_time: int = 86400, force_update: bool = False):
    """
    Install the Debian packages that are missing or differ from their pin, in one command; an
    interrupted dpkg run found on the host is finished first (:func:`dpkg_repaired`).

    + packages: names, optionally pinned ``name=version`` (a pin installs exactly that version,
      downgrading if needed; an unpinned name is left at whatever version is installed)
    + cache_time: refresh the package lists first when they are older than this (seconds)
    + force_update: always refresh the lists before installing (e.g. a repository was just added)

    One ``dpkg-query`` round trip when nothing is to do, joined with the other declared reads.
    Measured against the stock ``apt.packages`` (bench/noop_converge.py, qwen30b no-op, N=1, lab
    2026-11-30, the weights task's ``python3-venv`` swapped alone): 5 -> 6 remote commands per host;
    every stock call adds its own reads, so this one stays.

    Example:

    .. code:: python

        deb_packages(name="Toolkit", packages=["nvidia-container-toolkit=1.17.8-1"])
    """
    pins = parse_pins(packages)
    interrupted = read(DpkgInterrupted)
    have = read(DebPackages, names=sorted(pins))
    if have is None:
        raise OperationError("deb_packages: no dpkg-query on this host (not a Debian/Ubuntu host)")
    if interrupted:
        yield from dpkg_repaired._inner()
    todo = [n for n, v in pins.items() if n not in have or (v is not None and have[n] != v)]
    if not todo:
        if interrupted:
            return
        host.noop("installed: " + ", ".join(f"{n}={have[n]}" for n in sorted(pins)))
        return
    args = " ".join(shlex.quote(n if pins[n] is None else f"{n}={pins[n]}") for n in todo)
    downgrades = " --allow-downgrades" if any(pins[n] for n in todo) else ""
    yield (f"export DEBIAN_FRONTEND=noninteractive; {apt_update_sh(cache_time, force_update)} && "
           "apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
           f"{downgrades} {args}")


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def _check_path(path: str, field: str) -> str:
    if not isinstance(path, str) or not posixpath.isabs(path) or "\n" in path or "\t" in path:
        raise ValueError(f"{field}: {path!r} must be an absolute path without newlines or tabs")
    return posixpath.normpath(path)


class FileDigests(FactBase):
    """
    ``{path: {"type": "file"|"dir"|"link"|"other", "sha256": hex (files only), "mode": "644",
    "user": "root", "group": "root"}}`` for those of the paths that exist, in one round trip.
    Links are not followed.

    .. code:: python

        host.get_fact(FileDigests, paths=["/etc/docker", "/etc/docker/daemon.json"])
    """

    default = dict

    def command(self, paths: Sequence[str]) -> str:
        quoted = " ".join(shlex.quote(p) for p in paths)
        # Two processes for any number of paths: a sha256sum, a stat and a cut per path cost
        # ~5 ms of CPU each on the host. LC_ALL=C: stat's %F is translated under other locales.
        return (
            f'set --; for p in {quoted}; do if [ -f "$p" ] && [ ! -L "$p" ]; then set -- "$@" "$p"; fi; done; '
            f"LC_ALL=C stat --printf '%F\\t%a %U %G\\t%n\\n' -- {quoted} 2>/dev/null; "
            'if [ $# -gt 0 ]; then sha256sum -- "$@"; fi; true'
        )

    def process(self, output: list[str]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        digests: dict[str, str] = {}
        for line in output:
            parts = line.split("\t")
            if len(parts) == 3 and len(parts[1].split()) == 3:
                kind, owner, path = parts
                mode, user, group = owner.split()
                out[path] = {"type": _STAT_TYPES.get(kind, "other"), "mode": mode, "user": user, "group": group}
                continue
            match = _SHA_LINE.match(line)
            if match:
                digests[match.group(2)] = match.group(1)
        for path, digest in digests.items():
            if out.get(path, {}).get("type") == "file":
                out[path]["sha256"] = digest
        return out


_STAT_TYPES = {"regular file": "file", "regular empty file": "file", "directory": "dir", "symbolic link": "link"}
_SHA_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def _content(src: Source, field: str) -> bytes:
    if isinstance(src, bytes):
        return src
    if isinstance(src, (str, Path)):
        try:
            return Path(src).read_bytes()
        except OSError as exc:
            raise ValueError(f"{field}: cannot read local file {src}: {exc.__class__.__name__}") from None
    raise ValueError(f"{field}: expected bytes or a local path, got {type(src).__name__}")


def _norm_mode(mode: str | int) -> str:
    text = format(mode, "o") if isinstance(mode, int) else str(mode)
    if not _MODE.match(text):
        raise ValueError(f"mode: {mode!r} must be an octal mode like '644'")
    return text.lstrip("0").rjust(3, "0")


def owned_by(entry: Mapping[str, str], mode: str, user: str, group: str) -> bool:
    """Whether a ``FileDigests`` entry has this mode and owner."""
    return entry.get("mode") == mode and entry.get("user") == user and entry.get("group") == group


def _log_diff(dest: str, content: bytes, exists: bool) -> None:
    """``--diff`` output in ``files.put``'s form; the old text is read only for changing files."""
    try:
        desired = content.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        host.log(f"Will {'modify' if exists else 'create'} {format_text(dest, bold=True)} (binary)", logger.info)
        return
    current: list[str] = []
    if exists:
        current = [line + "\n" for line in (host.get_fact(FileContents, path=dest) or [])]
    host.log(f"Will {'modify' if exists else 'create'} {format_text(dest, bold=True)}", logger.info)
    for line in generate_color_diff(current, desired):
        logger.info("  %s", line)
    logger.info("")


def _synced_paths(files: Mapping[str, Source], dirs: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """files_synced's directories, missing-parent candidates and files, checked."""
    wanted = [_check_path(dest, "files") for dest in files]
    dir_list = [_check_path(d, "dirs") for d in dirs]
    return dir_list, sorted({posixpath.dirname(p) for p in wanted} - set(dir_list)), wanted


@declaring(lambda files, dirs=(), **_: [(FileDigests, {"paths": [p for ps in _synced_paths(files, dirs) for p in ps]})])
@operation()
def files_synced(files: Mapping[str, Source], mode: str | int = "644", user: str = "root", group: str = "root",
                 dirs: Sequence[str] = (), dir_mode: str | int = "755"):
    """
    Make many files on the host equal to local content; one fact round trip when nothing differs.

    + files: remote path -> content (``bytes``) or a local file path (``str``/``Path``)
    + mode/user/group: of every file in ``files`` (corrected also when only these differ)
    + dirs: directories ensured with ``dir_mode``/``user``/``group``; parents of ``files`` that are
      missing are created too (``mkdir -p``, ``dir_mode``)
    + dir_mode: mode of ``dirs`` and of created parents

    Changed files are uploaded beside their destination and renamed into place, so a reader never
    sees half a file. Under ``--diff`` text files show a unified diff (like ``files.put``). Not for
    secrets: use ``tasks.secrets.secret_file`` (no diff, no content in output).

    Measured against the stock ``files.directory`` + ``files.put`` (bench/noop_converge.py, qwen30b
    no-op, N=1, lab 2026-11-30, the weights task's 2 directories and 4 scripts swapped alone): 5 ->
    19 remote commands per host, no-op 2.5x the SSH floor instead of 1.7x; so this one stays.

    Example:

    .. code:: python

        files_synced(name="Weights scripts", dirs=["/opt/llmfleet/weights"],
                     files={"/opt/llmfleet/weights/fetch.py": "tasks/weights/fetch.py",
                            "/etc/docker/daemon.json": b'{"log-driver": "json-file"}\\n'})
    """
    mode, dir_mode = _norm_mode(mode), _norm_mode(dir_mode)
    for name, value in (("user", user), ("group", group)):
        if not _NAME.match(str(value)):
            raise ValueError(f"{name}: {value!r} is not a user/group name")
    dir_list, parents, paths = _synced_paths(files, dirs)
    wanted = {path: _content(src, f"files[{dest}]") for path, (dest, src) in zip(paths, files.items())}
    have = read(FileDigests, paths=[*dir_list, *parents, *wanted])

    for path in [*dir_list, *parents, *wanted]:
        kind = have.get(path, {}).get("type")
        expect = "file" if path in wanted else "dir"
        if kind is not None and kind != expect:
            raise OperationError(f"{path} exists as a {kind}, expected a {expect}")
    new_dirs = [d for d in dir_list if d not in have]
    fix_dirs = [d for d in dir_list if d in have and not owned_by(have[d], dir_mode, user, group)]
    new_parents = [d for d in parents if d not in have]
    upload = {p: c for p, c in wanted.items() if have.get(p, {}).get("sha256") != hashlib.sha256(c).hexdigest()}
    fix_files = [p for p in wanted if p not in upload and not owned_by(have[p], mode, user, group)]
    if not (new_dirs or fix_dirs or new_parents or upload or fix_files):
        host.noop(f"{len(wanted)} files, {len(dir_list)} directories up to date")
        return

    owner = shlex.quote(f"{user}:{group}")
    make = [*new_dirs, *new_parents]
    mine = [*new_dirs, *fix_dirs]
    if make or mine:
        steps = []
        if make:
            steps.append(f"mkdir -p -m {dir_mode} {_q(make)}")
        if mine:
            steps.append(f"chown {owner} {_q(mine)} && chmod {dir_mode} {_q(mine)}")
        yield " && ".join(steps)
    if state.config.DIFF:
        for path, content in upload.items():
            _log_diff(path, content, path in have)
    args = host.current_op_global_arguments or {}
    escalated = any(args.get(k) for k in ("_sudo", "_su_user", "_doas"))
    moves = []
    for path, content in upload.items():
        directory, base = posixpath.split(path)
        tmp = f"{directory}/.{base}.llmfleet-new"
        remote_temp = host.get_temp_filename(path, temp_directory=args.get("_temp_dir")) if escalated else None
        yield FileUploadCommand(io.BytesIO(content), tmp, remote_temp_filename=remote_temp)
        moves.append((tmp, path))
    targets = [tmp for tmp, _ in moves] + fix_files
    if not targets:  # only directories differed (e.g. weights_root on a fresh mount, mode 1777)
        return
    steps = [f"chown {owner} {_q(targets)} && chmod {mode} {_q(targets)}"]
    steps += [f"mv -f {shlex.quote(tmp)} {shlex.quote(path)}" for tmp, path in moves]
    yield " && ".join(steps)


def _q(paths: Sequence[str]) -> str:
    return " ".join(shlex.quote(p) for p in paths)


def _apt_paths(list_name: str, keyring: str) -> tuple[str, str, str]:
    """apt_source's armored key, keyring and list file, checked."""
    if not re.match(r"^[A-Za-z0-9_.-]+$", list_name):
        raise ValueError(f"list_name: {list_name!r} must be a plain file name")
    keyring = _check_path(keyring, "keyring")
    return keyring.rsplit(".", 1)[0] + ".asc", keyring, f"/etc/apt/sources.list.d/{list_name}.list"


@declaring(lambda list_name, keyring, **_: [(FileDigests, {"paths": list(_apt_paths(list_name, keyring))})])
@operation()
def apt_source(list_name: str, key_url: str, keyring: str, source: str):
    """
    A signed apt repository: its key (downloaded once, dearmored into ``keyring``) and its list
    file ``/etc/apt/sources.list.d/<list_name>.list`` holding ``source``; the package lists are
    refreshed in the same command when anything changed. One round trip when nothing is to do.

    + list_name: list file name (without ``.list``)
    + key_url: the repository key (ASCII-armored or binary); kept beside the keyring as ``.asc``
    + keyring: binary keyring path the ``source`` line names in ``signed-by=``
    + source: the ``deb [signed-by=...] URL SUITE [COMPONENTS]`` line

    Example:

    .. code:: python

        apt_source(name="Toolkit repository", list_name="nvidia-container-toolkit",
                   key_url="https://nvidia.github.io/libnvidia-container/gpgkey",
                   keyring="/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg",
                   source="deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] "
                          "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /")
    """
    if not key_url.startswith(("http://", "https://")):
        raise ValueError(f"key_url: {key_url!r} must be an http(s) URL")
    armored, keyring, list_path = _apt_paths(list_name, keyring)
    line = (source.strip() + "\n").encode()
    have = read(FileDigests, paths=[armored, keyring, list_path])
    steps = []
    if armored not in have:
        steps.append(f"mkdir -p {shlex.quote(posixpath.dirname(armored))} && "
                     f"(curl -fsSL {shlex.quote(key_url)} -o {shlex.quote(armored)} || "
                     f"wget -q -O {shlex.quote(armored)} {shlex.quote(key_url)}) && chmod 644 {shlex.quote(armored)}")
    if armored not in have or keyring not in have:
        steps.append(f"gpg --batch --yes --dearmor -o {shlex.quote(keyring)} {shlex.quote(armored)} && "
                     f"chmod 644 {shlex.quote(keyring)}")
    list_ok = have.get(list_path, {}).get("sha256") == hashlib.sha256(line).hexdigest()
    if list_ok and not steps:
        host.noop(f"{list_path} and its key are in place")
        return
    if state.config.DIFF and not list_ok:
        _log_diff(list_path, line, list_path in have)
    if not list_ok:
        yield FileUploadCommand(io.BytesIO(line), f"{list_path}.llmfleet-new")
        steps.append(f"chmod 644 {shlex.quote(list_path)}.llmfleet-new && "
                     f"mv -f {shlex.quote(list_path)}.llmfleet-new {shlex.quote(list_path)}")
    steps.append(f"export DEBIAN_FRONTEND=noninteractive; {apt_update_sh(0, True)}")
    yield " && ".join(steps)


# ---------------------------------------------------------------------------------------------
# systemd units
# ---------------------------------------------------------------------------------------------
class UnitStates(FactBase):
    """
    ``{unit: {"LoadState": ..., "ActiveState": ..., "SubState": ..., "UnitFileState": ...}}`` of
    many units in one round trip, keyed by the names asked for; ``{}`` without systemctl. A unit
    systemd does not know has ``LoadState=not-found``.

    .. code:: python

        host.get_fact(UnitStates, units=["docker.service"])["docker.service"]["ActiveState"]  # "active"
    """

    default = dict

    def command(self, units: Sequence[str]) -> str:
        # One systemctl per unit, each under a marker: keys stay the names asked for (aliases
        # such as dbus.service report another Id). The guard, not requires_command, answers {}
        # without systemctl, so that the fact can join a batch (tasks.facts.planned).
        return ("if command -v systemctl >/dev/null 2>&1; then "
                f"for u in {_q(units)}; do echo \"@unit=$u\"; "
                'systemctl show -p LoadState -p ActiveState -p SubState -p UnitFileState "$u"; done; fi')

    def process(self, output: list[str]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        current: dict[str, str] | None = None
        for line in output:
            if line.startswith("@unit="):
                current = out.setdefault(line[len("@unit="):].strip(), {})
            elif current is not None and "=" in line:
                key, _, value = line.partition("=")
                current[key.strip()] = value.strip()
        return out


def _unit_name(unit: str) -> str:
    if not _UNIT.match(unit):
        raise ValueError(f"units: {unit!r} is not a systemd unit name")
    return unit if "." in unit else f"{unit}.service"


@declaring(lambda units, **_: [(UnitStates, {"units": [_unit_name(u) for u in units]})])
@operation()
def units_running(units: Sequence[str], enabled: bool = True, restarted: bool = False,
                  restart_after: Sequence[Any] = ()):
    """
    Units active (started when not), enabled at boot (when ``enabled``); one round trip when so.

    + units: unit names (``docker`` means ``docker.service``)
    + enabled: also ``systemctl enable`` those not enabled
    + restarted: restart them (always a change: gate it with ``_if``)
    + restart_after: with ``restarted``, the operations (``OperationMeta``) whose change the restart
      follows (gate it with ``_if=any_changed(*restart_after)`` too): at plan time the restart is a
      change only where one of them will change, so the change table says so only there

    Measured against the stock ``systemd.service`` (bench/noop_converge.py, qwen30b no-op, N=1, lab
    2026-11-30, the runtime's "dockerd running" swapped alone): 5 -> 7 remote commands per host
    (its two ``systemctl show`` reads are not joined with the others); so this one stays.

    Example:

    .. code:: python

        units_running(name="dockerd running", units=["docker.service"])
        units_running(name="Restart dockerd", units=["docker"], restarted=True, restart_after=[daemon],
                      _if=daemon.did_change)
    """
    names = [_unit_name(u) for u in units]
    if restarted and restart_after and not state.is_executing and not any(op.will_change for op in restart_after):
        host.noop(f"{', '.join(names)}: no restart, nothing it follows changes")
        return
    have = read(UnitStates, units=names)
    # A unit not known yet (its package installs earlier in this run, --dry) is started and
    # enabled: systemctl names it if it is still missing when the command runs.
    enable = [u for u in names if enabled and have.get(u, {}).get("UnitFileState") not in (
        "enabled", "static", "enabled-runtime", "alias")]
    if restarted:
        start, verb = names, "restart"
    else:
        start, verb = [u for u in names if have.get(u, {}).get("ActiveState") != "active"], "start"
    if not (enable or start):
        host.noop(", ".join(names) + " active" + (" and enabled" if enabled else ""))
        return
    steps = []
    if enable:
        steps.append(f"systemctl enable {_q(enable)}")
    if start:
        steps.append(f"systemctl {verb} {_q(start)}")
    yield " && ".join(steps)


@declaring(lambda units, **_: [(UnitStates, {"units": [_unit_name(u) for u in units]})])
@operation()
def units_stopped(units: Sequence[str]):
    """
    Units stopped (those not active are left alone); one round trip when none runs.

    + units: unit names

    Example:

    .. code:: python

        units_stopped(name="Stop before any member starts", units=["llmfleet-x.service"], _if=changed)
    """
    names = [_unit_name(u) for u in units]
    have = read(UnitStates, units=names)
    stop = [u for u in names if have.get(u, {}).get("ActiveState") in ("active", "activating", "reloading")]
    if not stop:
        host.noop(", ".join(names) + " not running")
        return
    yield f"systemctl stop {_q(stop)}"


@declaring(lambda unit, unit_file, **_: [(FileDigests, {"paths": [unit_file]})])
@operation()
def unit_removed(unit: str, unit_file: str):
    """
    A unit stopped, disabled and its file deleted (systemd reloaded); nothing when the file is absent.

    + unit: the unit name
    + unit_file: its file under /etc/systemd/system

    Example:

    .. code:: python

        unit_removed(name="No head watch", unit="llmfleet-x-headwatch.service",
                     unit_file="/etc/systemd/system/llmfleet-x-headwatch.service")
    """
    if unit_file not in read(FileDigests, paths=[unit_file]):
        host.noop(f"{unit}: not installed")
        return
    name = _q([_unit_name(unit)])
    yield (f"systemctl disable --now {name} && rm -f {shlex.quote(unit_file)} && systemctl daemon-reload"
           f" && {{ systemctl reset-failed {name} 2>/dev/null || true; }}")


__all__ = ["DebPackages", "FileDigests", "UnitStates", "apt_source", "deb_packages", "files_synced", "owned_by",
           "parse_pins", "unit_removed", "units_running", "units_stopped"]
