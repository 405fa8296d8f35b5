"""Weights end to end on lab 'wt' (4 hosts), for each hub the stand-in speaks.

The lab's hub stand-in (bridge address, HUB_PORT) serves repositories published into
``<run_dir>/hub``; its control routes count the file bytes it served and inject faults.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tasks.lab.config import HUB_PORT, LabConfig
from tasks.lab.standins.model_repo import publish, write_model_repo
from tasks.weights.deploy import model_dirname

from .helpers import REPO, Background, lab_name, own_lab, pyinfra, ssh, throttled, wait_until

CFG = LabConfig(lab_name("wt"))
HUB = f"http://{CFG.bridge_ip}:{HUB_PORT}"
SHARD_BYTES = 4 << 20
SHARD2 = "model-00002-of-00003.safetensors"
HUBS = ["huggingface", "modelscope"]


@pytest.fixture(scope="module")
def wlab():
    with own_lab("wt", ["cpu"] * 4) as state:
        yield state


@pytest.fixture(scope="module")
def inv(wlab):
    return wlab["inventory"]


@pytest.fixture(scope="module")
def ips(wlab):
    return {h["name"]: h["ip"] for h in wlab["hosts"]}


def control(route: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(f"{HUB}/_standin/{route}", method="POST" if route != "stats" else "GET",
                                 data=json.dumps(body or {}).encode() if route != "stats" else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def make_repo(tmp: Path, repo_id: str, seed: int, refs: list[str]) -> dict[str, int]:
    files = tmp / f"{repo_id.replace('/', '_')}-{seed}"
    sizes = write_model_repo(files, seed=seed, shards=3, shard_bytes=SHARD_BYTES)
    publish(CFG.run_dir / "hub", repo_id, files, refs)
    return sizes


def model_data(hub: str, repo: str, rev: str = "v1", **extra) -> dict:
    return {"serve_model__hub": hub, "serve_model__repo_id": repo, "serve_model__revision": rev, **extra}


def limit(*names: str) -> list[str]:
    return [a for n in names for a in ("--limit", n)]


def dest(repo: str) -> str:
    return f"/srv/models/{model_dirname(repo)}"


def manifest(ip: str, repo: str) -> dict:
    return json.loads(ssh(ip, f"cat {dest(repo)}/current/manifest.json").stdout)


FETCH = "Weights | Fetch from hub"


@pytest.mark.parametrize("hub", HUBS)
def test_fresh_noop_cut_resume_corruption(hub, inv, ips, tmp_path):
    repo = f"llmfleet-lab/tiny-{hub[:2]}"
    sizes = make_repo(tmp_path, repo, seed=11, refs=["v1"])
    total = sum(sizes.values())
    three = ["wt-h1", "wt-h2", "wt-h3"]

    # fresh download on 3 hosts
    control("reset")
    first = pyinfra(inv, "deploys/weights.py", *limit(*three), data=model_data(hub, repo))
    assert first.changed()[FETCH] == three
    st = control("stats")
    assert st["file_bytes"] == 3 * total
    for h in three:
        man = manifest(ips[h], repo)
        assert (man["repo"], man["hub"], man["revision"], man["total_bytes"]) == (repo, hub, "v1", total)
        assert ssh(ips[h], f"readlink {dest(repo)}/current").stdout.strip() == "revisions/v1"
        assert "LLMFLEET_WEIGHTS current revision=v1" in ssh(
            ips[h], f"journalctl -o cat -u llmfleet-weights-{model_dirname(repo)}").stdout

    # second run: nothing changes, not one byte (nor request) reaches the hub
    control("reset")
    second = pyinfra(inv, "deploys/weights.py", *limit(*three), data=model_data(hub, repo))
    assert second.operations and second.changed() == {}
    assert control("stats") == {"file_bytes": 0, "by_client": {}, "by_file": {}, "requests": 0}

    # a transfer cut half-way resumes (the clients retry within the run with a Range request
    # from their last written chunk; ModelScope's cross-run resume is covered by unit tests)
    ssh(ips["wt-h1"], f"rm -rf {dest(repo)}")
    control("reset")
    size = sizes[SHARD2]
    control("faults", {"cut_after_bytes": size // 2, "path": SHARD2, "times": 1})
    cut = pyinfra(inv, "deploys/weights.py", *limit("wt-h1"), data=model_data(hub, repo))
    assert cut.changed()[FETCH] == ["wt-h1"]
    served = control("stats")["by_file"][f"{repo}/{SHARD2}"]
    # cut + the rest, never cut + everything (ModelScope continues at the exact byte: served == size)
    assert size <= served < size + size // 2, (served, size)
    assert manifest(ips["wt-h1"], repo)["total_bytes"] == total

    # a corrupted shard (same size) is found by deep verify only, and only it is fetched again
    ssh(ips["wt-h2"], f"printf 'XXXXXXXX' | dd of={dest(repo)}/current/{SHARD2} bs=1 seek=4096 conv=notrunc "
                      "status=none")
    quick = pyinfra(inv, "deploys/weights.py", "--dry", *limit(*three), data=model_data(hub, repo))
    assert quick.planned_changes() == {}
    dry = pyinfra(inv, "deploys/weights.py", "--dry", *limit(*three),
                  data=model_data(hub, repo, weights_deep_verify=True))
    assert dry.planned_changes() == {FETCH: ["wt-h2"]}
    control("reset")
    deep = pyinfra(inv, "deploys/weights.py", *limit(*three), data=model_data(hub, repo, weights_deep_verify=True))
    assert deep.changed() == {FETCH: ["wt-h2"]}
    assert control("stats")["by_file"] == {f"{repo}/{SHARD2}": size}
    sums = {h: ssh(ips[h], f"sha256sum {dest(repo)}/current/{SHARD2}").stdout.split()[0] for h in three}
    assert len(set(sums.values())) == 1
    after = pyinfra(inv, "deploys/weights.py", *limit(*three), data=model_data(hub, repo, weights_deep_verify=True))
    assert after.changed() == {}


@pytest.mark.parametrize("hub", HUBS)
def test_fanout_hub_serves_one_copy(hub, inv, ips, tmp_path):
    repo = f"llmfleet-lab/fan-{hub[:2]}"
    sizes = make_repo(tmp_path, repo, seed=21, refs=["v1"])
    hosts = sorted(ips)
    control("reset")
    run = pyinfra(inv, "deploys/weights.py", data=model_data(hub, repo, weights_fanout=True,
                                                             weights_fanout_mode="waves"))
    st = control("stats")
    assert st["by_file"] == {f"{repo}/{p}": n for p, n in sizes.items()}  # exactly one copy of each file
    assert len(st["by_client"]) == 1
    changed = run.changed()
    assert changed[FETCH] == ["wt-h1"]
    receivers = sorted(h for op, hs in changed.items() if op.startswith("Weights | Fetch from peers") for h in hs)
    assert receivers == ["wt-h2", "wt-h3", "wt-h4"]
    want = manifest(ips["wt-h1"], repo)["files"]
    for h in hosts:
        man = manifest(ips[h], repo)
        assert man["files"] == want and man["hub"] == hub
        unit = f"llmfleet-weights-peer-{model_dirname(repo)}"
        assert ssh(ips[h], f"systemctl is-active {unit}", check=False).stdout.strip() != "active"
    assert any(manifest(ips[h], repo)["source"].startswith("peer:") for h in hosts)
    control("reset")
    again = pyinfra(inv, "deploys/weights.py", data=model_data(hub, repo, weights_fanout=True,
                                                               weights_fanout_mode="waves"))
    assert again.changed() == {} and control("stats")["file_bytes"] == 0


CHAIN = "Weights | Fetch through the chain"


def chunks_held(ip: str, repo: str) -> int:
    out = ssh(ip, f"cat {dest(repo)}/.chain-v1/idx/*.idx 2>/dev/null | wc -l", check=False).stdout
    return int(out.strip() or 0)


def test_chain_a_host_killed_mid_transfer_fails_alone_and_converges_on_rerun(inv, ips, tmp_path):
    """Pipelined staging h1 (hub) -> h2 -> h3 -> h4, one hub copy; h2's fetch and peer server are
    killed while h3 streams from it: h3 re-attaches to h1, h3 and h4 finish, only h2 fails; the rerun
    brings h2 from the holders (no hub byte) and a third run changes nothing."""
    repo = "llmfleet-lab/chain"
    sizes = make_repo(tmp_path, repo, seed=41, refs=["v1"])
    hosts = sorted(ips)
    data = model_data("huggingface", repo, weights_fanout=True, weights_fanout_mode="chain")
    unit = model_dirname(repo)
    # the hub clients' venv first (a fresh lab installs it through the same link, which is slowed below)
    warm = "llmfleet-lab/chain-warm"
    write_model_repo(tmp_path / "warm", seed=42, shards=1, shard_bytes=1 << 16)
    publish(CFG.run_dir / "hub", warm, tmp_path / "warm", ["v1"])
    pyinfra(inv, "deploys/weights.py", data=model_data("huggingface", warm))
    control("reset")
    with throttled(CFG, 1, "4mbit"):  # the head's download (~25 s): slow enough to act while the chain runs
        run = Background(pyinfra, inv, "deploys/weights.py", data=data, check=False, timeout=600)
        wait_until(lambda: chunks_held(ips["wt-h3"], repo) >= 1 or not run.thread.is_alive(),
                   "wt-h3 receiving from wt-h2", timeout=300)
        assert run.thread.is_alive(), "the chain finished before wt-h2 could be killed"
        ssh(ips["wt-h2"], f"systemctl kill -s KILL llmfleet-weights-{unit} llmfleet-weights-peer-{unit}")
        result = run.join()
    errors = result.errors()  # pyinfra lists a failed host under the operations after its failure too
    assert errors[CHAIN] == ["wt-h2"] and {h for hs in errors.values() for h in hs} == {"wt-h2"}, errors
    assert result.changed()[CHAIN] == ["wt-h1", "wt-h3", "wt-h4"]
    assert control("stats")["file_bytes"] == sum(sizes.values())  # one hub copy despite the death
    journal = ssh(ips["wt-h3"], f"journalctl -o cat -u llmfleet-weights-{unit}").stdout
    assert f"LLMFLEET_WEIGHTS reattach from=http://{ips['wt-h2']}:8765 to=http://{ips['wt-h1']}:8765" in journal
    want = manifest(ips["wt-h1"], repo)["files"]
    for h in ("wt-h3", "wt-h4"):
        assert manifest(ips[h], repo)["files"] == want
    assert ssh(ips["wt-h2"], f"readlink {dest(repo)}/current", check=False).stdout.strip() == ""

    control("reset")
    again = pyinfra(inv, "deploys/weights.py", data=data)
    assert again.changed()[CHAIN] == ["wt-h2"] and control("stats")["file_bytes"] == 0
    assert manifest(ips["wt-h2"], repo)["files"] == want
    for h in hosts:
        peer = f"llmfleet-weights-peer-{unit}"
        assert ssh(ips[h], f"systemctl is-active {peer}", check=False).stdout.strip() != "active"
    third = pyinfra(inv, "deploys/weights.py", data=data)
    assert third.changed() == {}


@pytest.fixture
def token_hub(wlab, tmp_path):
    """A second hub stand-in on the bridge that requires a token (same repository tree)."""
    tok = tmp_path / "hub-token"
    tok.write_text("good-token-0123456789\n")
    port = HUB_PORT + 7
    proc = subprocess.Popen([sys.executable, "-m", "tasks.lab.standins.hub", "--bind", CFG.bridge_ip,
                             "--port", str(port), "--root", str(CFG.run_dir / "hub"), "--token-file", str(tok)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert "stand-in hub listening" in line, line
        yield f"http://{CFG.bridge_ip}:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_wrong_token_fails_that_host_only(inv, ips, tmp_path, token_hub, monkeypatch):
    repo = "llmfleet-lab/tok"
    make_repo(tmp_path, repo, seed=31, refs=["v1"])
    make_repo(tmp_path, repo, seed=32, refs=["v2"])
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "good").write_text("good-token-0123456789\n")
    (secrets / "bad").write_text("wrong-token-9876543210\n")
    for name in ("good", "bad"):
        (secrets / name).chmod(0o600)  # llmfleet refuses secrets others may read
    monkeypatch.setenv("LLMFLEET_SECRETS_DIR", str(secrets))
    three = ["wt-h1", "wt-h2", "wt-h3"]
    base = model_data("huggingface", repo, "v1", weights_hf_endpoint=token_hub, weights_token_secret="good")
    pyinfra(inv, "deploys/weights.py", *limit(*three), data=base)
    # per-host data: wt-h1 gets the wrong token
    per_host = tmp_path / "inv_token.py"
    per_host.write_text(
        "import runpy\n"
        f"_inv = runpy.run_path({str(inv)!r})\n"
        "cpu = [(n, {**d, 'weights_token_secret': 'bad' if n == 'wt-h1' else 'good'}) for n, d in _inv['cpu']]\n"
    )
    data = {k: v for k, v in base.items() if k != "weights_token_secret"}
    data["serve_model__revision"] = "v2"
    run = pyinfra(per_host, "deploys/weights.py", *limit(*three), data=data, check=False)
    assert run.errors() == {FETCH: ["wt-h1"]}
    assert run.changed()[FETCH] == ["wt-h2", "wt-h3"]
    assert "refused the token (401/403): check weights_token_secret" in run.stdout + run.stderr
    for secret in ("good-token-0123456789", "wrong-token-9876543210"):
        assert secret not in run.stdout + run.stderr
    assert ssh(ips["wt-h1"], f"readlink {dest(repo)}/current").stdout.strip() == "revisions/v1"
    for h in ("wt-h2", "wt-h3"):
        assert ssh(ips[h], f"readlink {dest(repo)}/current").stdout.strip() == "revisions/v2"
        assert ssh(ips[h], f"ls {dest(repo)}/revisions").stdout.split() == ["v1", "v2"]  # previous kept
    mode = ssh(ips["wt-h1"], "stat -c '%a %U' /etc/llmfleet/secrets/bad /etc/llmfleet/secrets").stdout.split()
    assert mode == ["600", "root", "700", "root"]
    assert "wrong-token" not in ssh(ips["wt-h1"], f"journalctl -o cat -u llmfleet-weights-{model_dirname(repo)}"
                                                  " ; ps -eo args").stdout
