"""tasks.converge: the facts' commands under a real shell, the operations on @fake hosts (one fact
round trip when converged, only what differs otherwise), and the round trips of the runtime
deploys on a converged host."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.connectors.fake import FakeConnector

from tasks.converge import (DPKG_REPAIR_SH, DebPackages, DpkgInterrupted, FileDigests, UnitStates, apt_source,
                            deb_packages, dpkg_repaired, files_synced, parse_pins, units_running,
                            unit_removed, units_stopped)
from tests.unit.conftest import digest_lines, run_sh

SCRIPT = b"print('hello')\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def uploads(monkeypatch):
    seen = []

    def put_file(self, filename_or_io, remote_filename, remote_temp_filename=None, **kwargs):
        seen.append((remote_filename, filename_or_io.read()))
        return True

    monkeypatch.setattr(FakeConnector, "put_file", put_file)
    return seen


def _state(responses: dict, diff: bool = False, plan_check: bool = False) -> State:
    data = {"fake_delay": 0, "fake_delay_jitter": 0, "fake_responses": responses}
    # check_for_changes=False is the CLI's -y: bodies run once, while executing.
    state = State(Inventory(([("@fake/h", data)], {})), Config(DIFF=diff), check_for_changes=plan_check)
    connect_all(state)
    return state


def run_op(op, responses: dict, diff: bool = False, **kwargs):
    state = _state(responses, diff)
    add_op(state, op, **kwargs)
    run_ops(state)
    host = state.inventory.get_host("@fake/h")
    (op_data,) = state.ops[host].values()
    return host.connector.executed_commands, op_data.operation_meta.did_change()


# --- FileDigests ----------------------------------------------------------------------------------

def test_file_digests_command_under_sh(tmp_path):
    (tmp_path / "a.py").write_bytes(SCRIPT)
    os.chmod(tmp_path / "a.py", 0o640)
    (tmp_path / "d").mkdir()
    (tmp_path / "l").symlink_to(tmp_path / "a.py")
    (tmp_path / "empty").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo")
    paths = [str(tmp_path / n) for n in ("a.py", "d", "l", "missing", "empty", "fifo")]
    lines, rc = run_sh(FileDigests().command(paths))
    assert rc == 0
    got = FileDigests().process(lines)
    assert set(got) == {paths[0], paths[1], paths[2], paths[4], paths[5]}
    assert got[paths[4]] == {"type": "file", "sha256": sha(b""), "mode": got[paths[4]]["mode"],
                             "user": got[paths[4]]["user"], "group": got[paths[4]]["group"]}
    assert got[paths[5]]["type"] == "other" and "sha256" not in got[paths[2]]
    assert got[paths[0]]["sha256"] == sha(SCRIPT) and got[paths[0]]["mode"] == "640"
    assert got[paths[1]]["type"] == "dir" and "sha256" not in got[paths[1]]
    assert got[paths[2]]["type"] == "link"


# --- files_synced ---------------------------------------------------------------------------------

def test_files_synced_no_op_is_one_round_trip(uploads, tmp_path):
    src = tmp_path / "fetch.py"
    src.write_bytes(SCRIPT)
    responses = {"sha256sum": digest_lines({
        "/opt/s": ("dir", "-", "755 root root"),
        "/opt/s/fetch.py": ("file", sha(SCRIPT), "644 root root"),
        "/opt/s/conf.json": ("file", sha(b"{}\n"), "644 root root"),
    })}
    commands, changed = run_op(files_synced, responses, files={"/opt/s/fetch.py": src, "/opt/s/conf.json": b"{}\n"},
                               dirs=["/opt/s"])
    assert len(commands) == 1 and "sha256sum" in commands[0]
    assert uploads == [] and not changed


def test_files_synced_uploads_only_changed_files_and_creates_missing_dirs(uploads):
    responses = {"sha256sum": digest_lines({
        "/opt/s/a.py": ("file", sha(SCRIPT), "644 root root"),
        "/opt/s/b.py": ("file", sha(b"old\n"), "644 root root"),
        "/opt/s/c.py": ("file", sha(SCRIPT), "600 root root"),
        "/opt/s": ("dir", "-", "755 root root"),
    })}
    commands, changed = run_op(files_synced, responses, dirs=["/srv/models"], files={
        "/opt/s/a.py": SCRIPT, "/opt/s/b.py": SCRIPT, "/opt/s/c.py": SCRIPT, "/etc/new/d.json": b"{}\n"})
    assert changed
    assert sorted(uploads) == [("/etc/new/.d.json.llmfleet-new", b"{}\n"), ("/opt/s/.b.py.llmfleet-new", SCRIPT)]
    assert commands[1] == "mkdir -p -m 755 /srv/models /etc/new && chown root:root /srv/models && chmod 755 /srv/models"
    last = commands[-1]
    assert "chmod 644 /opt/s/.b.py.llmfleet-new /etc/new/.d.json.llmfleet-new /opt/s/c.py" in last
    assert "mv -f /opt/s/.b.py.llmfleet-new /opt/s/b.py" in last and "/opt/s/a.py" not in last
    assert len(commands) == 3  # fact, directories, one command for owners/modes/renames


def test_files_synced_fixes_only_a_directory_whose_mode_differs(uploads):
    # Found by the fault suite: weights_root on a fresh tmpfs (mode 1777) ended in "chown: missing operand".
    responses = {"sha256sum": digest_lines({
        "/srv/small": ("dir", "-", "1777 root root"),
        "/opt/s": ("dir", "-", "755 root root"),
        "/opt/s/a.py": ("file", sha(SCRIPT), "644 root root"),
    })}
    commands, changed = run_op(files_synced, responses, files={"/opt/s/a.py": SCRIPT}, dirs=["/opt/s", "/srv/small"])
    assert changed and uploads == []
    assert commands[1:] == ["chown root:root /srv/small && chmod 755 /srv/small"]


def test_files_synced_diff_reads_old_content_only_for_changed_text(uploads, caplog):
    caplog.set_level(logging.INFO)
    responses = {
        "sha256sum": digest_lines({"/etc/docker": ("dir", "-", "755 root root"),
                                   "/etc/docker/daemon.json": ("file", sha(b'{"a": 1}\n'), "644 root root")}),
        "daemon.json": ['{"a": 1}'],
    }
    commands, _ = run_op(files_synced, responses, diff=True,
                         files={"/etc/docker/daemon.json": b'{"a": 2}\n'}, dirs=["/etc/docker"])
    assert "Will modify" in caplog.text and '- {"a": 1}' in caplog.text and '+ {"a": 2}' in caplog.text
    assert sum("sha256sum" in c for c in commands) == 1 and sum("cat " in c for c in commands) == 1


def test_files_synced_refuses_a_directory_where_a_file_goes():
    responses = {"sha256sum": digest_lines({"/etc/x": ("dir", "-", "755 root root")})}
    with pytest.raises(PyinfraError, match="exists as a dir"):
        run_op(files_synced, responses, files={"/etc/x": b"1\n"})


def test_files_synced_bad_mode_names_the_field():
    with pytest.raises(ValueError, match="mode"):
        run_op(files_synced, {}, files={"/etc/x": b"1\n"}, mode="rw-r--r--")


# --- Debian packages ------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="no dpkg on this machine")
def test_deb_packages_fact_under_sh_ignores_unknown_names():
    lines, rc = run_sh(DebPackages().command(["bash", "llmfleet-no-such-package"]))
    assert rc == 0
    got = DebPackages().process(lines)
    assert set(got) == {"bash"} and got["bash"][0].isdigit()


def test_deb_packages_fact_without_dpkg_is_none():
    assert DebPackages().process(["LLMFLEET_NO_DPKG"]) is None
    assert DebPackages().process(["ii  docker.io 20.10.24+dfsg1-1+b3", "rc  old 1.0"]) == {"docker.io": "20.10.24+dfsg1-1+b3"}


def test_deb_packages_no_op_when_pins_match():
    responses = {"dpkg-query": ["ii  a 1.0-1", "ii  b 2.0"]}
    commands, changed = run_op(deb_packages, responses, packages=["a=1.0-1", "b"])
    assert len(commands) == 1 and not changed


def test_deb_packages_installs_missing_and_mismatched_with_stale_list_refresh():
    responses = {"dpkg-query": ["ii  a 0.9-1", "ii  b 2.0"]}
    commands, changed = run_op(deb_packages, responses, packages=["a=1.0-1", "b", "c"], cache_time=3600)
    assert changed
    install = commands[-1]
    assert "find /var/lib/apt/periodic/update-success-stamp -mmin -60" in install
    assert install.endswith("--allow-downgrades a=1.0-1 c")
    assert " b" not in install.split("install", 1)[1]


def test_deb_packages_refuses_non_debian_host_and_bad_names():
    with pytest.raises(PyinfraError, match="no dpkg-query"):
        run_op(deb_packages, {"dpkg-query": ["LLMFLEET_NO_DPKG"]}, packages=["a"])
    with pytest.raises(ValueError, match="packages"):
        parse_pins(["Docker IO"])


# --- an interrupted dpkg ---------------------------------------------------------------------------

# `dpkg --audit` on lab host ffa-h1 after a power loss while `apt-get install docker.io` unpacked
# (captured as the next run's apt-get was already at work: hence the lock warning).
AUDIT = (Path(__file__).parent / "fixtures" / "dpkg" / "audit-after-power-loss.txt").read_text()


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="no dpkg on this machine")
def test_dpkg_interrupted_fact_parses_dpkg_audit_under_sh(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "dpkg").write_text("#!/bin/sh\ncat <<'EOF'\n" + AUDIT + "EOF\n")
    os.chmod(fake / "dpkg", 0o755)
    command = DpkgInterrupted().command().replace("for f in /var/lib/dpkg/updates/*", f"for f in {tmp_path}/u/*")
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "0003").write_text("Package: docker.io\n")
    lines, rc = run_sh(f"PATH={fake}:$PATH; {command}")
    assert rc == 0
    got = DpkgInterrupted().process(lines)
    assert got[0] == f"journal {tmp_path}/u/0003"
    # each package once (docker.io is under three headings); headings and descriptions are not packages
    assert got[1:] == ["package docker.io", "package containerd", "package iptables", "package libgdbm-compat4:amd64",
                       "package libgdbm6:amd64", "package libip6tc2:amd64", "package libnetfilter-conntrack3:amd64",
                       "package libnfnetlink0:amd64", "package libnftnl11:amd64", "package libperl5.36:amd64",
                       "package netbase", "package perl", "package perl-modules-5.36", "package runc", "package tini",
                       "package libc-bin"]


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="no dpkg on this machine")
def test_dpkg_interrupted_fact_is_empty_on_this_healthy_machine():
    lines, rc = run_sh(DpkgInterrupted().command())
    assert rc == 0 and DpkgInterrupted().process(lines) == []


def test_dpkg_repaired_no_op_on_a_healthy_host():
    commands, changed = run_op(dpkg_repaired, {"dpkg --audit": []})
    assert len(commands) == 1 and "dpkg --audit" in commands[0] and not changed


def test_dpkg_repaired_finishes_the_interrupted_run_and_says_so(caplog):
    caplog.set_level(logging.WARNING)
    commands, changed = run_op(dpkg_repaired, {"dpkg --audit": ["package docker.io", "package runc"]})
    assert changed and commands[-1] == DPKG_REPAIR_SH
    assert "dpkg was interrupted (packages left unfinished: docker.io, runc); running dpkg --configure -a" \
        in caplog.text
    # configure what was unpacked, reinstall (at dpkg's recorded version) what was cut mid-unpack, then apt -f
    assert DPKG_REPAIR_SH.index("dpkg --force-confdef --force-confold --configure -a") < \
        DPKG_REPAIR_SH.index("apt-get install --reinstall") < DPKG_REPAIR_SH.index("apt-get -f install -y")


def test_dpkg_repair_reinstalls_half_installed_packages_at_their_version_under_sh(tmp_path):
    """The repair's shell against stand-in dpkg/dpkg-query/apt-get that log their arguments."""
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "calls"
    for tool in ("dpkg", "apt-get"):
        (fake / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
    # dpkg-query -W's answer on a host cut off mid-unpack (perl-base) and mid-configure (runc)
    (fake / "dpkg-query").write_text("#!/bin/sh\nprintf 'ii  bash=5.2.15-2+b7\\niHR perl-base=5.36.0-7+deb12u3\\n"
                                     "iF  runc=1.1.5+ds1-1+deb12u1\\niU  tini=0.19.0-1\\n'\n")
    for tool in fake.iterdir():
        tool.chmod(0o755)
    lines, rc = run_sh(f"PATH={fake}:$PATH; {DPKG_REPAIR_SH}")
    assert rc == 0, lines
    calls = log.read_text().splitlines()
    assert calls[0] == "dpkg --force-confdef --force-confold --configure -a"
    assert calls[1].startswith("apt-get install --reinstall -y -q") and calls[1].endswith(" perl-base=5.36.0-7+deb12u3")
    assert calls[2].startswith("apt-get -f install -y -q") and len(calls) == 3


def test_deb_packages_repairs_an_interrupted_dpkg_before_installing(caplog):
    caplog.set_level(logging.WARNING)
    responses = {"dpkg --audit": ["journal /var/lib/dpkg/updates/0003"], "dpkg-query": ["iU  docker.io 20.10.24"]}
    commands, changed = run_op(deb_packages, responses, packages=["docker.io"])
    assert changed and commands[-2] == DPKG_REPAIR_SH and commands[-1].endswith("install -y -q -o "
                                                                                 "Dpkg::Options::=--force-confdef "
                                                                                 "-o Dpkg::Options::=--force-confold"
                                                                                 " docker.io")
    assert "unmerged status journal" in caplog.text


def test_deb_packages_repairs_even_when_its_own_packages_are_installed():
    # Power loss while another package's postinst ran: apt-get would refuse the next install anywhere.
    responses = {"dpkg --audit": ["package nginx-common"], "dpkg-query": ["ii  docker.io 20.10.24"]}
    commands, changed = run_op(deb_packages, responses, packages=["docker.io"])
    assert changed and commands[-1] == DPKG_REPAIR_SH


# --- apt_source -----------------------------------------------------------------------------------

LINE = "deb [signed-by=/usr/share/keyrings/k.gpg] http://mirror/repo/stable/deb/$(ARCH) /"


def test_apt_source_no_op_when_key_keyring_and_list_match(uploads):
    responses = {"sha256sum": digest_lines({
        "/usr/share/keyrings/k.asc": ("file", sha(b"key"), "644 root root"),
        "/usr/share/keyrings/k.gpg": ("file", sha(b"gpg"), "644 root root"),
        "/etc/apt/sources.list.d/k.list": ("file", sha((LINE + "\n").encode()), "644 root root"),
    })}
    commands, changed = run_op(apt_source, responses, list_name="k", key_url="http://mirror/repo/gpgkey",
                               keyring="/usr/share/keyrings/k.gpg", source=LINE)
    assert len(commands) == 1 and not changed and uploads == []


def test_apt_source_fetches_key_writes_list_and_refreshes_lists(uploads):
    commands, changed = run_op(apt_source, {}, list_name="k", key_url="http://mirror/repo/gpgkey",
                               keyring="/usr/share/keyrings/k.gpg", source=LINE)
    assert changed
    assert uploads == [("/etc/apt/sources.list.d/k.list.llmfleet-new", (LINE + "\n").encode())]
    last = commands[-1]
    assert "curl -fsSL http://mirror/repo/gpgkey -o /usr/share/keyrings/k.asc" in last
    assert "gpg --batch --yes --dearmor -o /usr/share/keyrings/k.gpg /usr/share/keyrings/k.asc" in last
    assert last.index("mv -f") < last.index("apt-get update")  # lists refreshed after the list is in place


# --- systemd units --------------------------------------------------------------------------------

def unit_lines(**units: tuple[str, str]) -> list[str]:
    out = []
    for name, (active, enabled) in units.items():
        out += [f"@unit={name}.service", "LoadState=loaded", f"ActiveState={active}", "SubState=running",
                f"UnitFileState={enabled}"]
    return out


def test_unit_states_keyed_by_requested_names():
    got = UnitStates().process(unit_lines(docker=("active", "enabled"), ssh=("inactive", "disabled")))
    assert got["docker.service"]["ActiveState"] == "active"
    assert got["ssh.service"]["UnitFileState"] == "disabled"


def test_units_running_no_op_start_enable_restart():
    ok = {"systemctl": unit_lines(docker=("active", "enabled"))}
    commands, changed = run_op(units_running, ok, units=["docker"])
    assert len(commands) == 1 and not changed
    down = {"systemctl": unit_lines(docker=("inactive", "disabled"))}
    commands, changed = run_op(units_running, down, units=["docker"])
    assert changed and commands[-1] == "systemctl enable docker.service && systemctl start docker.service"
    commands, changed = run_op(units_running, ok, units=["docker"], restarted=True)
    assert changed and commands[-1] == "systemctl restart docker.service"


def test_units_stopped_stops_only_what_runs():
    both = {"systemctl": unit_lines(**{"a-headwatch": ("active", "enabled"), "a": ("inactive", "enabled")})}
    commands, changed = run_op(units_stopped, both, units=["a-headwatch.service", "a.service"])
    assert changed and commands[-1] == "systemctl stop a-headwatch.service"
    idle = {"systemctl": unit_lines(**{"a": ("inactive", "enabled")})}
    commands, changed = run_op(units_stopped, idle, units=["a.service"])
    assert len(commands) == 1 and not changed


def test_unit_removed_only_when_its_file_is_there():
    watch = "/etc/systemd/system/a-headwatch.service"
    there = {"sha256sum": digest_lines({watch: ("file", sha(b"[Unit]\n"), "644 root root")})}
    commands, changed = run_op(unit_removed, there, unit="a-headwatch.service", unit_file=watch)
    assert changed and commands[-1] == (f"systemctl disable --now a-headwatch.service && rm -f {watch} && "
                                        "systemctl daemon-reload && { systemctl reset-failed a-headwatch.service "
                                        "2>/dev/null || true; }")
    commands, changed = run_op(unit_removed, {"sha256sum": []}, unit="a-headwatch.service", unit_file=watch)
    assert len(commands) == 1 and "sha256sum" in commands[0] and not changed


# --- round trips of the runtime on a converged host ------------------------------------------------

def test_converged_docker_host_costs_one_round_trip(uploads):
    from tasks.docker import install_docker, render_daemon_json
    from tasks.settings.docker import DockerSettings

    daemon = render_daemon_json(DockerSettings()).encode()
    responses = {
        "dpkg-query": ["ii  docker.io 20.10.24+dfsg1-1+b3"],
        "sha256sum": digest_lines({"/etc/docker": ("dir", "-", "755 root root"),
                                   "/etc/docker/daemon.json": ("file", sha(daemon), "644 root root")}),
        "systemctl": unit_lines(docker=("active", "enabled")),
    }
    state = _state(responses)
    add_deploy(state, install_docker)
    run_ops(state)
    host = state.inventory.get_host("@fake/h")
    # The three operations' reads (packages, daemon.json, docker.service) in one command.
    (command,) = host.connector.executed_commands
    assert all(part in command for part in ("dpkg-query", "sha256sum", "systemctl show"))
    assert uploads == []
    assert not any(m.operation_meta.did_change() for m in state.ops[host].values())
