"""Faults injected into real deploys on lab "fa" (two rtx4090x2 replicas of qwen30b_fp8): each re-run
converges with no manual step, a host that was serving serves again, nothing is lost, and the run
after it changes nothing.

A power loss is ``tasks.lab.lab.power_off`` (the host's systemd-nspawn and everything under it
killed at once, disk kept) followed by ``power_on``. Each fault is timed on what the host is doing,
read from the machine's /proc (``tasks.lab.hosts.wait_for_process``); where a step is too quick to
hit (a 500 KiB stand-in checkpoint, a 50 MB image on a local bridge), the host's link is slowed
with ``tc`` from the moment the step starts. Cases that share a setup share a host: fa-h1's first
deploy loses power three times (apt install, weights fetch, image pull) before one completes;
fa-h2's first deploy meets the hub down mid-download, then the registry down mid-pull.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tasks.lab import hosts as labhosts
from tasks.lab import lab as lablib
from tasks.lab.config import LabConfig
from tasks.weights.deploy import model_dirname

from .helpers import Background, Run, lab_name, own_lab, pyinfra, secrets_env, ssh, throttled, wait_until

CFG = LabConfig(lab_name("fa"))
PROFILES = ["rtx4090x2", "rtx4090x2"]
H1, H2 = CFG.host_name(1), CFG.host_name(2)
SECRET = "fa_api_key"
OLD, NEW = "vllm/vllm-openai:v0.18.0", "vllm/vllm-openai:v0.19.0"
COMMON = {"serve_api_key_secret": SECRET, "rollout_gate_wait_s": 30}
MODEL_DIR = "/srv/models/" + model_dirname("Qwen/Qwen3-30B-A3B-Instruct-2507-FP8")
DEPLOY = "deploys/qwen30b_fp8.py"
REPAIRED = "dpkg was interrupted"
#: case -> outcome, printed at the end of the module (the table of the report)
OUTCOMES: dict[str, str] = {}


@pytest.fixture(scope="module")
def fa(tmp_path_factory):
    work = tmp_path_factory.mktemp("fa")
    key = "sk-fa-" + secrets.token_hex(16)
    started = time.monotonic()
    # No preflight_weights_bytes here: the lab's inventory carries the size of the checkpoints it serves.
    with own_lab("fa", PROFILES) as state, secrets_env(work / "secrets", **{SECRET: key}):
        yield {"inventory": state["inventory"], "ips": {h["name"]: h["ip"] for h in state["hosts"]},
               "key": key, "state": state}
    width = max(len(c) for c in OUTCOMES) if OUTCOMES else 10
    print(f"\nfault suite: {time.monotonic() - started:.0f} s")
    for case, outcome in OUTCOMES.items():
        print(f"  {case:{width}}  {outcome}")


def host(name: str) -> labhosts.Host:
    state = lablib.load_state(CFG)
    return labhosts.Host(**next(h for h in state["hosts"] if h["name"] == name))


def deploy(fa, *hosts: str, image: str = OLD, check: bool = False, **data) -> Run:
    limit = [a for h in hosts for a in ("--limit", h)]
    return pyinfra(fa["inventory"], DEPLOY, *limit, data={**COMMON, "serve_image": image, **data},
                   check=check, timeout=900)


def wait_for(name: str, what: str, match, run: Background | None = None, timeout: float = 600) -> str:
    """The command line of the first process of host ``name`` that ``match``es; fails when ``run``
    ends first (its output says why) or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cmdline = labhosts.wait_for_process(CFG, host(name), match, 2)
        if cmdline:
            return cmdline
        if run is not None and not run.thread.is_alive():
            done = run.join()
            raise AssertionError(f"{name}: the run ended (rc={done.returncode}) before {what}:\n"
                                 f"{(done.stdout + done.stderr)[-3000:]}")
    raise AssertionError(f"{name}: never saw {what} within {timeout}s")


def slow_link(name: str, rate: str):
    """Rate-limit what the host receives, for as long as the block runs."""
    return throttled(CFG, host(name).index, rate)


@contextlib.contextmanager
def no_internet(name: str):
    """No default route on the host: a pull whose mirror is down cannot fall back to Docker Hub."""
    ns = CFG.netns(host(name).index)
    subprocess.run(["ip", "netns", "exec", ns, "ip", "route", "del", "default"], check=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "route", "replace", "default", "via", CFG.bridge_ip],
                       check=True)


def listen_addresses(index: int) -> list[str]:
    """Local addresses of the TCP sockets listening in host ``index``'s network namespace."""
    out = subprocess.run(["ip", "netns", "exec", CFG.netns(index), "ss", "-Hltn"], capture_output=True,
                         text=True, timeout=10).stdout
    return [line.split()[3] for line in out.splitlines() if len(line.split()) > 3]


def downloading(name: str, at_least: int = 64 << 10) -> bool:
    """The fetch has written ``at_least`` bytes into its staging directory (read through the host's disk)."""
    root = host(name).merged / MODEL_DIR.lstrip("/")
    staged = [p for d in root.glob(".staging-*") for p in d.rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(p.stat().st_size for p in staged if p.exists()) >= at_least


def fetching(cmdline: str) -> bool:
    """fetch.py itself (the venv's python), not a command line that merely names it."""
    return cmdline.startswith("/opt/llmfleet/venv/bin/python") and "weights/fetch.py" in cmdline


def dpkg_at_work(cmdline: str) -> bool:
    """dpkg changing packages (not apt's quick queries of it): unpacking, configuring, or a maintainer script."""
    words = cmdline.split()
    return bool(words) and (words[0] == "/usr/bin/dpkg" and ("--unpack" in words or "--configure" in words)
                            or "/var/lib/dpkg/info/" in cmdline)


def pulling(cmdline: str) -> bool:
    return cmdline.startswith("docker pull")


def serves(fa, name: str) -> str:
    """The image of the container answering /v1/models with the API key (fails if none answers)."""
    out = ssh(fa["ips"][name], f"curl -fsS --max-time 10 -H 'Authorization: Bearer {fa['key']}' "
                                "http://127.0.0.1:8000/v1/models", check=False)
    assert out.returncode == 0 and "qwen-30b" in out.stdout, f"{name} does not serve: {out.stdout}{out.stderr}"
    return ssh(fa["ips"][name], "docker inspect -f '{{.Config.Image}}' llmfleet-qwen30b_fp8").stdout.strip()


def serving(fa, name: str) -> str | None:
    """The image ``name`` serves, or None when nothing answers there."""
    try:
        return serves(fa, name)
    except AssertionError:
        return None


def power_cycle(name: str) -> None:
    lablib.power_off(CFG, name, log=lambda *_: None)
    assert lablib.status(CFG)[host(name).index - 1]["state"] == "stopped"
    lablib.power_on(CFG, name, log=lambda *_: None)


def converges(fa, *hosts: str, image: str = OLD) -> tuple[Run, Run]:
    """The re-run succeeds; the run after it changes nothing."""
    again = deploy(fa, *hosts, image=image, check=True)
    third = deploy(fa, *hosts, image=image, check=True)
    assert third.operations and third.changed() == {}, third.changed()
    return again, third


def test_lab_status_tells_a_killed_nspawn_from_a_running_host(fa):
    h = host(H2)
    assert lablib.status(CFG)[1]["state"] == "running"
    nspawn = labhosts.nspawn_pid(h)
    init = labhosts._init_pid(h)
    assert nspawn and init
    subprocess.run(["kill", "-KILL", str(nspawn)], check=True)
    # The host goes with its nspawn (its own PID namespace): stopped, and truly so.
    wait_until(lambda: lablib.status(CFG)[1]["state"] == "stopped", "stopped after nspawn was killed", 30)
    assert not Path(f"/proc/{init}").exists()
    with pytest.raises(AssertionError):
        ssh(fa["ips"][H2], "true", timeout=10)
    lablib.power_on(CFG, H2, log=lambda *_: None)
    assert lablib.status(CFG)[1]["state"] == "running"
    assert ssh(fa["ips"][H2], "cat /proc/1/comm").stdout.strip() == "systemd"
    OUTCOMES["lab: nspawn killed"] = "status stopped (init gone); boot: running, sshd answers"


def test_power_loss_during_apt_install_weights_fetch_and_image_pull(fa):
    # 1. power loss while dpkg unpacks/configures the Docker packages of the first deploy
    run = Background(deploy, fa, H1)
    wait_for(H1, "dpkg unpacking or configuring", dpkg_at_work, run)
    # once dpkg has started to change package states (its journal), not while it still reads its database
    journal = host(H1).merged / "var/lib/dpkg/updates"
    wait_until(lambda: any(p.name.isdigit() for p in journal.iterdir()), "dpkg writing its journal", 120, 0.02)
    power_cycle(H1)
    assert run.join().returncode != 0
    audit = ssh(fa["ips"][H1], "ls /var/lib/dpkg/updates; dpkg --audit").stdout
    assert audit.strip(), "the power loss left dpkg consistent: the case proves nothing"

    # 2. power loss mid-download of the weights (the re-run repairs dpkg first, and says so)
    run = Background(deploy, fa, H1)
    wait_for(H1, "the weights fetch", fetching, run)
    with slow_link(H1, "1mbit"):
        wait_until(lambda: downloading(H1), "a partial download", 120)
        power_cycle(H1)
    second = run.join()
    assert second.returncode != 0
    assert REPAIRED in second.stdout + second.stderr
    OUTCOMES["power loss during apt install"] = (f"dpkg left: {' '.join(audit.split())[:60]}...; re-run: "
                                                 "'dpkg was interrupted ... running dpkg --configure -a', installed")

    # 3. power loss during the image pull
    run = Background(deploy, fa, H1)
    wait_for(H1, "docker pull", pulling, run)
    with slow_link(H1, "20mbit"):
        time.sleep(3)
        assert any(pulling(c) for c in labhosts.processes(CFG, host(H1)).values()), "the pull ended too soon"
        power_cycle(H1)
    assert run.join().returncode != 0

    # the next run converges: weights verified (the partial download resumed or refetched), image
    # pulled, service verified; the run after changes nothing
    again, _ = converges(fa, H1)
    assert serves(fa, H1) == OLD
    man = ssh(fa["ips"][H1], f"cat {MODEL_DIR}/current/manifest.json").stdout
    assert '"revision": "master"' in man
    assert ssh(fa["ips"][H1], "dpkg --audit; ls /var/lib/dpkg/updates").stdout.strip() == ""
    OUTCOMES["power loss during weights fetch"] = "re-run: fetched and verified, current -> revisions/master"
    OUTCOMES["power loss during image pull"] = "re-run: pulled, verified; serving; third run: no changes"


def test_hub_down_mid_download_then_registry_down_mid_pull(fa):
    h1_before = serving(fa, H1)
    # hub killed while fa-h2 downloads the weights
    run = Background(deploy, fa, H2)
    wait_for(H2, "the weights fetch", fetching, run)
    with slow_link(H2, "1mbit"):
        wait_until(lambda: downloading(H2), "a partial download", 120)
        lablib.service_down(CFG, "hub")
    first = run.join()
    lablib.service_up(CFG, "hub")
    # fa-h2 fails (the only host of the run: pyinfra ends with "No hosts remaining", no JSON)
    assert first.returncode != 0
    assert f"llmfleet weights: {H2}: http://{CFG.bridge_ip}:8090 unreachable or failing" in first.stderr
    assert ssh(fa["ips"][H2], f"readlink {MODEL_DIR}/current", check=False).stdout.strip() == ""
    OUTCOMES["hub down mid-download"] = "run fails on that host: 'hub ... unreachable or failing'; re-run: fetched"

    # registry killed while fa-h2 pulls the image
    run = Background(deploy, fa, H2)
    wait_for(H2, "docker pull", pulling, run)
    with slow_link(H2, "4mbit"), no_internet(H2):  # slow enough that layers are still coming
        time.sleep(3)
        assert any(pulling(c) for c in labhosts.processes(CFG, host(H2)).values()), "the pull ended too soon"
        lablib.service_down(CFG, "registry")
        second = run.join()
    lablib.service_up(CFG, "registry")
    assert second.returncode != 0
    failed = second.stderr.rsplit("--> Starting operation: ", 1)[-1]
    assert f"qwen30b_fp8: image {OLD}" in failed.splitlines()[0] and f"[{H2}] Error" in failed, failed[-1500:]
    converges(fa, H2)
    assert serves(fa, H2) == OLD
    assert serving(fa, H1) == h1_before  # untouched throughout (serving since the case above, if it ran)
    OUTCOMES["registry down during a pull"] = "pull fails on that host; re-run: pulled, serving; third: no changes"


def test_disk_full_during_a_fetch_fails_that_fetch_only_and_converges_once_space_is_back(fa, tmp_path):
    from tasks.lab.standins.model_repo import publish, write_model_repo

    repo = "llmfleet-lab/fault-disk"
    files = tmp_path / "repo"
    sizes = write_model_repo(files, seed=41, shards=3, shard_bytes=4 << 20)
    publish(CFG.run_dir / "hub", repo, files, ["v1"])
    ip = fa["ips"][H2]
    dest = f"/srv/small/{model_dirname(repo)}"
    # A filesystem of its own for this model root: large enough for the pre-check (12 MiB + the fetch's
    # 256 MiB reserve, weights_fetch_space_margin_bytes), filled mid-download: the write fails, not the check.
    ssh(ip, "mkdir -p /srv/small && (mountpoint -q /srv/small || mount -t tmpfs -o size=300m tmpfs /srv/small)")
    data = {"serve_model__hub": "huggingface", "serve_model__repo_id": repo, "serve_model__revision": "v1",
            "weights_root": "/srv/small"}
    run = Background(pyinfra, fa["inventory"], "deploys/weights.py", "--limit", H2, data=data, check=False,
                     timeout=600)
    wait_for(H2, "the weights fetch", fetching, run)
    with slow_link(H2, "4mbit"):
        partial = "[ $(du -sb /srv/small | cut -f1) -gt 1048576 ]"  # a MiB of the 12 written
        wait_until(lambda: ssh(ip, partial, check=False).returncode == 0, "a partial download", 120, 0.3)
        ssh(ip, "dd if=/dev/zero of=/srv/small/ballast bs=1M 2>/dev/null; true")  # until the disk is full
        full = run.join()
    assert full.returncode != 0  # fa-h2 failed (the run's only host: no JSON, "No hosts remaining")
    # one line naming host, path, bytes still needed and free; then the host's failure line
    said = re.search(rf"fetch\.py: error: {H2}: {dest}: disk full while downloading: (\d+) bytes still to "
                     r"download \(\+\d+ reserve\), (\d+) bytes free", full.stderr)
    assert said, full.stderr[-3000:]
    assert 0 < int(said.group(1)) < sum(sizes.values()), said.group(0)  # mid-download: some bytes were written
    assert f"llmfleet weights: {H2}: not enough free disk space under {dest}" in full.stderr
    assert "Traceback" not in full.stderr
    assert ssh(ip, f"readlink {dest}/current", check=False).stdout.strip() == ""
    assert serves(fa, H2) == OLD  # the served model, on another filesystem, never noticed
    ssh(ip, "rm -f /srv/small/ballast")
    again = pyinfra(fa["inventory"], "deploys/weights.py", "--limit", H2, data=data)
    assert again.changed() == {"Weights | Fetch from hub": [H2]}
    man = ssh(ip, f"cat {dest}/current/manifest.json").stdout
    assert f'"total_bytes": {sum(sizes.values())}' in man
    third = pyinfra(fa["inventory"], "deploys/weights.py", "--limit", H2, data=data)
    assert third.operations and third.changed() == {}
    ssh(ip, "umount /srv/small")
    OUTCOMES["disk full during a fetch"] = ("ENOSPC mid-download: one line (host, path, bytes needed/free); serving "
                                            "untouched; space back: fetched and verified; third: no changes")


def test_fanout_peer_server_needs_the_run_token_binds_the_peer_address_and_is_gone_after(fa, tmp_path):
    from tasks.lab.standins.model_repo import publish, write_model_repo

    repo = "llmfleet-lab/fault-fanout"
    write_model_repo(tmp_path / "repo", seed=43, shards=3, shard_bytes=4 << 20)
    publish(CFG.run_dir / "hub", repo, tmp_path / "repo", ["v1"])
    data = {"serve_model__hub": "huggingface", "serve_model__repo_id": repo, "serve_model__revision": "v1",
            "weights_fanout": True, "weights_fanout_mode": "waves"}
    ips = fa["ips"]
    run = Background(pyinfra, fa["inventory"], "deploys/weights.py", data=data, check=False, timeout=600)
    cmdline = wait_for(H1, "the peer server", lambda c: c.startswith("/opt/llmfleet/venv/bin/python")
                       and "peer_server.py" in c, run)
    with slow_link(H2, "4mbit"):
        port = int(re.search(r"--port (\d+)", cmdline).group(1))
        bind = re.search(r"--bind (\S+)", cmdline).group(1)
        token_file = re.search(r"--token-file (\S+)", cmdline).group(1)
        assert bind == ips[H1]
        listening = wait_until(lambda: [a for a in listen_addresses(1) if a.endswith(f":{port}")],
                               "the peer server listening", 60)
        assert listening == [f"{ips[H1]}:{port}"]  # the address peers use, not 0.0.0.0
        token = ssh(ips[H1], f"cat {token_file}").stdout.strip()
        assert len(token) >= 32
        assert ssh(ips[H1], f"stat -c '%a %U' {token_file} $(dirname {token_file})").stdout.split() == \
            ["600", "root", "700", "root"]
        assert token not in ssh(ips[H1], "ps -eo args").stdout  # never in argv
        url = f"http://{ips[H1]}:{port}/api/llmfleet/manifest/{repo}"
        for header in ("", "-H 'Authorization: Bearer not-this-runs-token'"):
            code = ssh(ips[H2], f"curl -s -o /dev/null -w '%{{http_code}}' {header} {url}").stdout
            assert code == "401", code
        code = ssh(ips[H2], f"curl -s -o /dev/null -w '%{{http_code}}' -H 'Authorization: Bearer {token}' {url}")
        assert code.stdout == "200"
        result = run.join()
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.changed()["Weights | Fetch from peers (wave 1)"] == [H2]
    assert token not in result.stdout + result.stderr
    with pytest.raises(OSError):
        socket.create_connection((ips[H1], port), timeout=3).close()
    for name in (H1, H2):
        assert ssh(ips[name], f"ls {token_file}", check=False).returncode != 0  # the token is gone too
        assert "peer_server.py" not in ssh(ips[name], "ps -eo args").stdout
    OUTCOMES["fan-out peer server"] = (f"bound to {bind} only; 401 without/with a wrong token; 200 with it; "
                                       "port closed and token files gone after the run")


def test_power_loss_between_the_old_units_stop_and_the_new_ones_start(fa):
    deploy(fa, H1, H2, check=True)  # both serve the old version (a no-op after the cases above)
    for name in (H1, H2):
        assert serves(fa, name) == OLD
    run = Background(deploy, fa, H1, H2, image=NEW)
    # The rollout restarts fa-h1 first: its unit's ExecStop stops the old container.
    wait_for(H1, "the old container being stopped", lambda c: c.startswith("/usr/bin/docker stop"), run)
    power_cycle(H1)
    upgrade = run.join()
    assert upgrade.returncode != 0
    # fa-h2 kept serving through it (the old version if the rollout stopped at the failed batch)
    assert serves(fa, H2) in (OLD, NEW)
    converges(fa, H1, H2, image=NEW)
    assert serves(fa, H1) == NEW and serves(fa, H2) == NEW
    OUTCOMES["power loss between old stop and new start"] = ("run fails on fa-h1, rollout stops (fa-h2 serves old); "
                                                              "re-run: both serve new; third: no changes")
