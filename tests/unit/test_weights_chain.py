"""Pipelined staging (fetch.py --chain, peer_server.py --chain-dest) on loopback: the real scripts in
fresh interpreters, the head reading the stand-in hub through the Hugging Face protocol."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tasks.weights import chain
from tasks.weights import fetch as fetch_mod
from tasks.weights import manifest as mf

from .conftest import FETCH, FETCH_HOME, PEER, PEER_TOKEN as TOKEN, REPO_ID, add_fault, marker_lines, run_fetch, stats

CHUNK = 256 * 1024
SHARD2 = "model-00002-of-00003.safetensors"


@pytest.fixture
def token_file(peer_token) -> Path:
    return peer_token


@pytest.fixture
def relay(peer_servers):
    """Start peer_server.py relaying ``dest``'s revision ``main``; returns its URL."""
    return lambda dest: peer_servers("--chain-dest", str(dest), "--chain-repo", REPO_ID, "--chain-revision", "main",
                                     "--chain-chunk-bytes", str(CHUNK), "--chain-stall-s", "20")


def chain_args(dest: Path, token_file: Path, *sources: str, hub_url: str | None = None) -> list[str]:
    args = ["--chain", "--hub", "huggingface", "--repo", REPO_ID, "--revision", "main", "--dest", str(dest),
            "--chain-chunk-bytes", str(CHUNK), "--chain-stall-s", "20"]
    for s in sources:
        args += ["--chain-from", s]
    if sources:
        args += ["--chain-token-file", str(token_file)]
    if hub_url:
        args += ["--chain-hub", "--endpoint", hub_url]
    return args


def popen_fetch(*args: str) -> subprocess.Popen:
    env = {"HOME": str(FETCH_HOME), "NO_PROXY": "127.0.0.1,localhost", "PATH": "/usr/bin:/bin"}
    return subprocess.Popen([sys.executable, str(FETCH), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def tree(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and p.name != mf.MANIFEST_NAME}


def test_three_hosts_in_a_chain_read_the_hub_once(hub, hub_root, tmp_path, relay, token_file):
    a, b, c = (tmp_path / n for n in "abc")
    url_a, url_b = relay(a), relay(b)  # up before anything arrives, as the deploy starts them
    procs = [popen_fetch(*chain_args(a, token_file, hub_url=hub.url)),
             popen_fetch(*chain_args(b, token_file, url_a)),
             popen_fetch(*chain_args(c, token_file, url_b, url_a))]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err
        assert TOKEN not in out + err
    total = sum(hub_root["sizes"].values())
    assert stats(hub)["file_bytes"] == total  # one copy, whatever the chain's length
    want = {n: hashlib.sha256((hub_root["src"] / n).read_bytes()).hexdigest() for n in hub_root["sizes"]}
    for d in (a, b, c):
        assert tree(d / "current") == want
        assert not list(d.glob(".chain-*")) and not list(d.glob(".staging-*"))
    man_a, man_c = mf.read(a / "current"), mf.read(c / "current")
    assert man_c["source"] == f"chain:{url_b}" and man_c["files"] == man_a["files"]
    assert (man_c["hub"], man_c["commit"]) == ("huggingface", hub_root["commit_a"])
    hub.state.reset()
    again = run_fetch(*chain_args(c, token_file, url_b, url_a))
    assert marker_lines(again.stdout)[-1] == "LLMFLEET_WEIGHTS unchanged" and stats(hub)["file_bytes"] == 0


def _half_received(holder: Path, dest: Path, chunks_of: dict[str, int], corrupt: str | None = None) -> None:
    """``dest`` as a host whose fetch died: verified chunks of ``holder``'s files, a dead writer."""
    man = mf.read(holder / "current")
    state = chain.ChainState(dest, "main")
    listing = chain.listing_of_manifest(man, CHUNK)
    state.start(listing)
    (state.dir / "writer").write_text("999999999")  # above pid_max: no such process
    for e in man["files"]:
        n = chunks_of.get(e["path"], chain.n_chunks(e["size"], CHUNK))
        data = (holder / "current" / e["path"]).read_bytes()[: n * CHUNK]
        for k in range(n):
            state.add(e["path"], hashlib.sha256(data[k * CHUNK:(k + 1) * CHUNK]).hexdigest())
        if corrupt == e["path"]:
            data = bytes([data[0] ^ 0xFF]) + data[1:]  # after the index: this disk changed the bytes since
        (state.staging / e["path"]).parent.mkdir(parents=True, exist_ok=True)
        (state.staging / e["path"]).write_bytes(data)


def test_a_corrupt_chunk_is_refused_and_the_receiver_reattaches(hub, hub_root, tmp_path, relay, token_file):
    a, b, c = (tmp_path / n for n in "abc")
    assert run_fetch(*chain_args(a, token_file, hub_url=hub.url)).returncode == 0
    url_a, url_b = relay(a), relay(b)  # started before b's (dead) fetch wrote its state, as in a run
    _half_received(a, b, {}, corrupt=SHARD2)
    hub.state.reset()
    res = run_fetch(*chain_args(c, token_file, url_b, url_a))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"chunk 0 of {SHARD2} does not match its hash (refused)" in res.stderr
    assert f"LLMFLEET_WEIGHTS reattach from={url_b} to={url_a}" in res.stdout
    assert tree(c / "current") == tree(a / "current") and stats(hub)["file_bytes"] == 0


def test_a_dead_upstream_ends_its_stream_and_the_next_source_takes_over(hub, hub_root, tmp_path, relay,
                                                                        token_file):
    a, b, c = (tmp_path / n for n in "abc")
    assert run_fetch(*chain_args(a, token_file, hub_url=hub.url)).returncode == 0
    url_a, url_b = relay(a), relay(b)
    _half_received(a, b, {SHARD2: 3, "model-00003-of-00003.safetensors": 0})
    res = run_fetch(*chain_args(c, token_file, url_b, url_a))
    assert res.returncode == 0, res.stdout + res.stderr
    total = chain.n_chunks(hub_root["sizes"][SHARD2], CHUNK)
    assert f"stream of {SHARD2} ended at chunk 3 of {total}" in res.stderr
    assert tree(c / "current") == tree(a / "current")
    # no source left and no hub allowed: the host fails with its own cause, the chain is not stalled
    shutil.rmtree(b / ".chain-main")  # b's fetch died before it had a listing
    (b / ".chain-main").mkdir()
    (b / ".chain-main" / "writer").write_text("999999999")
    alone = run_fetch(*chain_args(tmp_path / "d", token_file, url_b))
    assert alone.returncode == fetch_mod.EXIT_UNREACHABLE, alone.stdout + alone.stderr
    assert "every source failed" in alone.stderr


def test_a_cut_hub_stream_resumes_at_the_first_chunk_not_held(hub, hub_root, tmp_path, token_file):
    size = hub_root["sizes"][SHARD2]
    cut = size // 2 + 1000
    held = cut // CHUNK * CHUNK  # whole chunks written before the cut
    add_fault(hub, {"cut_after_bytes": cut, "path": SHARD2, "times": 1})
    res = run_fetch(*chain_args(tmp_path / "a", token_file, hub_url=hub.url))
    assert res.returncode == 0, res.stdout + res.stderr
    assert stats(hub)["by_file"][f"{REPO_ID}/{SHARD2}"] == cut + size - held  # within the run

    hub.state.reset()
    add_fault(hub, {"cut_after_bytes": cut, "path": SHARD2, "times": 1})
    add_fault(hub, {"cut_after_bytes": 1000, "path": SHARD2, "times": 2})  # the run's two more tries, no progress
    c = tmp_path / "c"
    failed = run_fetch(*chain_args(c, token_file, hub_url=hub.url))
    assert failed.returncode == fetch_mod.EXIT_UNREACHABLE, failed.stdout + failed.stderr
    assert not (c / "current").exists()
    hub.state.reset()
    again = run_fetch(*chain_args(c, token_file, hub_url=hub.url))  # the next run
    assert again.returncode == 0, again.stdout + again.stderr
    served = stats(hub)["by_file"]
    assert served[f"{REPO_ID}/{SHARD2}"] == size - held
    assert not [p for p in served if p.split("/")[-1] < SHARD2]  # files finished before are not fetched again
    assert tree(c / "current") == tree(tmp_path / "a" / "current")


def test_chain_routes_need_the_runs_token(hub, tmp_path, relay, token_file):
    a = tmp_path / "a"
    assert run_fetch(*chain_args(a, token_file, hub_url=hub.url)).returncode == 0
    url = relay(a)
    for headers in ({}, {"Authorization": "Bearer another-runs-token"}):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(f"{url}/api/llmfleet/chain/{REPO_ID}/listing",
                                                          headers=headers), timeout=5)
        assert err.value.code == 401
    ok = urllib.request.Request(f"{url}/api/llmfleet/chain/{REPO_ID}/listing",
                                headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(ok, timeout=5) as resp:
        got = json.loads(resp.read())
    assert got["chunk_bytes"] == CHUNK and got["commit"] == mf.read(a / "current")["commit"]


def test_chain_arguments_name_the_field(tmp_path):
    res = run_fetch("--chain", "--hub", "huggingface", "--repo", REPO_ID, "--revision", "main", "--dest", str(tmp_path))
    assert res.returncode == 2 and "--chain: give --chain-from URL(s), --chain-hub, or both" in res.stderr
    res = run_fetch("--chain", "--chain-hub", "--hub", "modelscope", "--repo", REPO_ID, "--revision", "main",
                    "--dest", str(tmp_path))
    assert res.returncode == 2 and "--chain-hub: the chain reads only the huggingface hub" in res.stderr


def test_frames_round_trip_and_refuse_a_torn_chunk():
    import io

    data = b"x" * 1000
    digest = hashlib.sha256(data).hexdigest()
    assert chain.read_frame(io.BytesIO(chain.frame(data, digest) + data), 4096) == (data, digest)
    with pytest.raises(ValueError, match="ended inside a chunk"):
        chain.read_frame(io.BytesIO(chain.frame(data, digest) + data[:10]), 4096)
    with pytest.raises(ValueError, match="bad frame header"):
        chain.read_frame(io.BytesIO(chain.frame(data, digest) + data), 512)  # longer than a chunk
    assert chain.read_frame(io.BytesIO(b""), 4096) is None
