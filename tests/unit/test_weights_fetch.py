"""fetch.py end to end with the real huggingface_hub / modelscope clients against the stand-in hub."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tasks.lab.standins.hub import StandinHub
from tasks.weights import fetch as fetch_mod
from tasks.weights import manifest as mf

from .conftest import (DEFAULT_REV, FETCH_HOME, PEER, PEER_TOKEN, REPO_ID, TOKEN, add_fault, marker_lines,
                       run_fetch, stats)

HUBS = ["huggingface", "modelscope"]
SHARD2 = "model-00002-of-00003.safetensors"
SHARD3 = "model-00003-of-00003.safetensors"


def hub_args(hub_name: str, hub: StandinHub, dest: Path, revision: str | None = None) -> list[str]:
    return ["--hub", hub_name, "--repo", REPO_ID, "--revision", revision or DEFAULT_REV[hub_name],
            "--dest", str(dest), "--endpoint", hub.url]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_tree(got: Path, want: Path) -> None:
    names = sorted(p.relative_to(want).as_posix() for p in want.rglob("*") if p.is_file())
    got_names = sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file())
    assert got_names == sorted(names + [mf.MANIFEST_NAME])
    for n in names:
        assert (got / n).read_bytes() == (want / n).read_bytes(), n


@pytest.mark.parametrize("hub_name", HUBS)
def test_fresh_download_then_unchanged_without_network(hub_name, hub, hub_root, tmp_path):
    dest = tmp_path / "model"
    first = run_fetch(*hub_args(hub_name, hub, dest))
    assert first.returncode == 0, first.stderr
    assert marker_lines(first.stdout)[-1] == "LLMFLEET_WEIGHTS changed"
    total = sum(hub_root["sizes"].values())
    assert f"LLMFLEET_WEIGHTS plan files=11 bytes={total} missing_bytes={total}" in first.stdout
    assert f"LLMFLEET_WEIGHTS progress bytes={total} total={total}" in marker_lines(first.stdout)
    rev = DEFAULT_REV[hub_name]
    assert os.readlink(dest / "current") == f"revisions/{rev}"
    assert_same_tree(dest / "current", hub_root["src"])
    man = mf.read(dest / "current")
    assert (man["repo"], man["hub"], man["revision"]) == (REPO_ID, hub_name, rev)
    assert man["commit"] == hub_root["commit_a"]
    assert {e["path"]: e["sha256"] for e in man["files"]} == {
        n: sha(hub_root["src"] / n) for n in hub_root["sizes"]
    }
    assert not list(dest.glob(".staging-*")), "staging must be renamed into revisions/"
    assert stats(hub)["file_bytes"] == sum(hub_root["sizes"].values())

    hub.state.reset()
    second = run_fetch(*hub_args(hub_name, hub, dest))
    assert second.returncode == 0, second.stderr
    assert marker_lines(second.stdout)[-1] == "LLMFLEET_WEIGHTS unchanged"
    s = stats(hub)
    assert s["file_bytes"] == 0 and s["requests"] == 0, s


@pytest.mark.parametrize("hub_name", HUBS)
def test_cut_transfer_resumes_instead_of_restarting(hub_name, hub, hub_root, tmp_path):
    size = hub_root["sizes"][SHARD2]
    # 3/4 in: huggingface_hub resumes from its last whole read chunk (1 MiB, set by fetch.py).
    add_fault(hub, {"cut_after_bytes": size * 3 // 4, "path": SHARD2, "times": 1})
    res = run_fetch(*hub_args(hub_name, hub, tmp_path / "m"))
    assert res.returncode == 0, res.stderr
    served = stats(hub)["by_file"][f"{REPO_ID}/{SHARD2}"]
    assert size <= served < 1.5 * size, (served, size)
    assert (tmp_path / "m" / "current" / SHARD2).read_bytes() == (hub_root["src"] / SHARD2).read_bytes()


def test_modelscope_rerun_continues_partial_file(hub, hub_root, tmp_path):
    """A run that dies mid-file leaves <file>.incomplete in staging; the rerun only fetches the rest."""
    size = hub_root["sizes"][SHARD2]
    dest = tmp_path / "m"
    add_fault(hub, {"cut_after_bytes": size // 3, "path": SHARD2, "times": 1})
    failed = run_fetch(*hub_args("modelscope", hub, dest), env={"MODELSCOPE_DOWNLOAD_MAX_RETRIES": "0"})
    assert failed.returncode == fetch_mod.EXIT_UNREACHABLE, failed.stdout + failed.stderr
    assert not (dest / "current").exists()
    partial = dest / ".staging-master" / (SHARD2 + ".incomplete")
    assert partial.stat().st_size == size // 3
    ok = run_fetch(*hub_args("modelscope", hub, dest))
    assert ok.returncode == 0, ok.stderr
    served = stats(hub)["by_file"][f"{REPO_ID}/{SHARD2}"]
    assert served == size, (served, size)  # first third + the remaining two thirds, nothing twice
    assert sha(dest / "current" / SHARD2) == sha(hub_root["src"] / SHARD2)


@pytest.mark.parametrize("hub_name", HUBS)
def test_deep_verify_detects_and_refetches_corrupted_shard(hub_name, hub, hub_root, tmp_path):
    dest = tmp_path / "m"
    assert run_fetch(*hub_args(hub_name, hub, dest)).returncode == 0
    shard = dest / "current" / SHARD3
    other_inode = (dest / "current" / SHARD2).stat().st_ino
    data = bytearray(shard.read_bytes())
    data[1000:1016] = bytes(b ^ 0xFF for b in data[1000:1016])  # same size, different content
    shard.write_bytes(bytes(data))
    hub.state.reset()

    quick = run_fetch(*hub_args(hub_name, hub, dest))
    assert marker_lines(quick.stdout)[-1] == "LLMFLEET_WEIGHTS unchanged"  # sizes only, by design

    deep = run_fetch(*hub_args(hub_name, hub, dest), "--deep-verify")
    assert deep.returncode == 0, deep.stderr
    lines = marker_lines(deep.stdout)
    assert f"LLMFLEET_WEIGHTS verify bad=1 files={SHARD3}" in lines
    assert lines[-1] == "LLMFLEET_WEIGHTS changed"
    assert sha(shard) == sha(hub_root["src"] / SHARD3)
    by_file = stats(hub)["by_file"]
    assert by_file == {f"{REPO_ID}/{SHARD3}": hub_root["sizes"][SHARD3]}, by_file
    assert (dest / "current" / SHARD2).stat().st_ino == other_inode  # untouched files stay in place

    again = run_fetch(*hub_args(hub_name, hub, dest), "--deep-verify")
    assert marker_lines(again.stdout)[-1] == "LLMFLEET_WEIGHTS unchanged"


@pytest.mark.parametrize("hub_name", HUBS)
def test_wrong_token_fails_clearly_and_keeps_current(hub_name, hub_tok, tmp_path):
    dest = tmp_path / "m"
    good, bad = tmp_path / "good-token", tmp_path / "bad-token"
    good.write_text(TOKEN + "\n")
    bad.write_text("hf_wrong_Secret_token_value\n")
    good.chmod(0o600)
    bad.chmod(0o600)
    debug = {"HF_HUB_VERBOSITY": "debug", "MODELSCOPE_LOG_LEVEL": "10"}
    ok = run_fetch(*hub_args(hub_name, hub_tok, dest), "--token-file", str(good), env=debug)
    assert ok.returncode == 0, ok.stderr
    link_before = os.readlink(dest / "current")
    manifest_before = (dest / "current" / mf.MANIFEST_NAME).read_bytes()

    res = run_fetch(*hub_args(hub_name, hub_tok, dest, revision="v2"), "--token-file", str(bad))
    assert res.returncode == fetch_mod.EXIT_AUTH, res.stdout + res.stderr
    assert "LLMFLEET_WEIGHTS error exit=5 reason=auth" in res.stdout
    assert "authentication failed" in res.stderr
    assert os.readlink(dest / "current") == link_before
    assert (dest / "current" / mf.MANIFEST_NAME).read_bytes() == manifest_before
    for out in (ok.stdout, ok.stderr, res.stdout, res.stderr):
        assert TOKEN not in out and "hf_wrong_Secret_token_value" not in out
    for where in (FETCH_HOME, dest):  # nothing (client caches, manifests) persisted the token
        for f in where.rglob("*"):
            if f.is_file() and f.stat().st_size < 10**6:
                assert TOKEN.encode() not in f.read_bytes(), f

    missing = run_fetch(*hub_args(hub_name, hub_tok, tmp_path / "other"))
    assert missing.returncode == fetch_mod.EXIT_AUTH, missing.stdout + missing.stderr


@pytest.mark.parametrize("hub_name", HUBS)
def test_unknown_revision_and_repo_fail_clearly(hub_name, hub, tmp_path):
    dest = tmp_path / "m"
    assert run_fetch(*hub_args(hub_name, hub, dest)).returncode == 0
    link = os.readlink(dest / "current")
    hub.state.reset()
    res = run_fetch(*hub_args(hub_name, hub, dest, revision="no-such-branch"))
    assert res.returncode == fetch_mod.EXIT_REVISION_NOT_FOUND, res.stdout + res.stderr
    assert "revision not found" in res.stderr
    assert os.readlink(dest / "current") == link
    args = hub_args(hub_name, hub, dest)
    args[args.index(REPO_ID)] = "Qwen/No-Such-Model"
    res = run_fetch(*args)
    assert res.returncode == fetch_mod.EXIT_REPO_NOT_FOUND, res.stdout + res.stderr
    assert "repository not found" in res.stderr
    assert stats(hub)["file_bytes"] == 0


def test_hub_unreachable_exit_code(tmp_path):
    res = run_fetch("--hub", "huggingface", "--repo", REPO_ID, "--revision", "main",
                    "--dest", str(tmp_path / "m"), "--endpoint", "http://127.0.0.1:9")
    assert res.returncode == fetch_mod.EXIT_UNREACHABLE, res.stdout + res.stderr
    assert not (tmp_path / "m" / "current").exists()


def test_no_space_is_detected_before_downloading(hub, tmp_path, monkeypatch, capsys):
    class Usage:
        total, used, free = 10**9, 10**9 - 4096, 4096

    monkeypatch.setattr(shutil, "disk_usage", lambda _p: Usage)
    code = fetch_mod.main(hub_args("huggingface", hub, tmp_path / "m"))
    out = capsys.readouterr()
    assert code == fetch_mod.EXIT_NO_SPACE, out.out + out.err
    assert "LLMFLEET_WEIGHTS error exit=7 reason=no-space" in out.out
    assert stats(hub)["file_bytes"] == 0
    assert not (tmp_path / "m" / "current").exists()


@pytest.mark.parametrize("hub_name", HUBS)
def test_a_write_failing_for_space_mid_download_is_said_in_one_line(hub_name, hub, tmp_path, monkeypatch, capsys):
    """ENOSPC from the client's write (after the pre-check passed), in the shape each client raises it:
    huggingface_hub re-raises the worker's OSError, modelscope collects it in FileDownloadError."""
    import errno
    import socket

    full = OSError(errno.ENOSPC, "No space left on device")

    def hf_snapshot(*_a, local_dir, **_kw):
        (Path(local_dir) / "part.bin").write_bytes(b"x" * 1000)  # some bytes landed before the disk filled
        raise full

    def ms_snapshot(*_a, local_dir, **_kw):
        from modelscope_hub import errors as ms

        (Path(local_dir) / "part.bin").write_bytes(b"x" * 1000)
        raise ms.FileDownloadError("1 of 11 files failed", failed_files={SHARD2: full}, total=11)

    if hub_name == "huggingface":
        import huggingface_hub

        monkeypatch.setattr(huggingface_hub, "snapshot_download", hf_snapshot)
    else:
        import modelscope.hub.snapshot_download  # noqa: F401 - the package re-exports a function by that name

        monkeypatch.setattr(sys.modules["modelscope.hub.snapshot_download"], "snapshot_download", ms_snapshot)
    dest = tmp_path / "m"
    code = fetch_mod.main(hub_args(hub_name, hub, dest))
    out = capsys.readouterr()
    assert code == fetch_mod.EXIT_NO_SPACE, out.out + out.err
    errors = [line for line in out.err.splitlines() if line.startswith("fetch.py: error:")]
    assert len(errors) == 1, out.err
    assert errors[0].startswith(f"fetch.py: error: {socket.gethostname()}: {dest.absolute()}: disk full while "
                                "downloading: "), errors[0]
    assert "bytes still to download" in errors[0] and errors[0].endswith(" bytes free"), errors[0]
    assert "LLMFLEET_WEIGHTS error exit=7 reason=no-space" in out.out
    assert not (dest / "current").exists()


def test_disk_full_looks_through_the_wrappers_and_stops_on_cycles():
    import errno

    assert not fetch_mod.disk_full(OSError(errno.EACCES, "denied"))
    try:
        try:
            raise OSError(errno.EDQUOT, "quota")
        except OSError:
            raise fetch_mod.FetchError(1, "mapped") from None  # how the adapters map client errors
    except fetch_mod.FetchError as mapped:
        assert fetch_mod.disk_full(mapped)
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert not fetch_mod.disk_full(a)


def test_the_uploaded_files_alone_fetch(hub, tmp_path):
    """fetch.py runs from the directory the deploy uploads (HOST_FILES, nothing else of the checkout)."""
    uploaded = tmp_path / "scripts"
    uploaded.mkdir()
    for name in fetch_mod.HOST_FILES:
        shutil.copy(Path(fetch_mod.__file__).with_name(name), uploaded / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELSCOPE_", "PYTHONPATH"))}
    args = hub_args("huggingface", hub, tmp_path / "m")
    res = subprocess.run([sys.executable, "-E", str(uploaded / "fetch.py"), *args],
                         capture_output=True, text=True, timeout=90, cwd=tmp_path,
                         env={**env, "HOME": str(FETCH_HOME), "NO_PROXY": "127.0.0.1,localhost"})
    assert res.returncode == 0, res.stderr
    assert marker_lines(res.stdout)[-1] == "LLMFLEET_WEIGHTS changed"


def test_allow_patterns_select_files_and_count_in_unchanged_check(hub, hub_root, tmp_path):
    dest = tmp_path / "m"
    res = run_fetch(*hub_args("huggingface", hub, dest), "--allow", "*.json", "--ignore", "vocab.json")
    assert res.returncode == 0, res.stderr
    got = sorted(p.name for p in (dest / "current").iterdir())
    want = sorted(n for n in hub_root["sizes"] if n.endswith(".json") and n != "vocab.json")
    assert got == sorted(want + [mf.MANIFEST_NAME])
    same = run_fetch(*hub_args("huggingface", hub, dest), "--allow", "*.json", "--ignore", "vocab.json")
    assert marker_lines(same.stdout)[-1] == "LLMFLEET_WEIGHTS unchanged"
    full = run_fetch(*hub_args("huggingface", hub, dest))
    assert marker_lines(full.stdout)[-1] == "LLMFLEET_WEIGHTS changed"
    assert_same_tree(dest / "current", hub_root["src"])


def test_switch_between_revisions_and_prune(hub, hub_root, tmp_path):
    dest = tmp_path / "m"
    assert run_fetch(*hub_args("huggingface", hub, dest)).returncode == 0
    v2 = run_fetch(*hub_args("huggingface", hub, dest, revision="v2"))
    assert v2.returncode == 0, v2.stderr
    assert os.readlink(dest / "current") == "revisions/v2"
    assert mf.read(dest / "current")["commit"] == hub_root["commit_b"]
    assert sorted(p.name for p in (dest / "revisions").iterdir()) == ["main", "v2"]

    hub.state.reset()
    back = run_fetch(*hub_args("huggingface", hub, dest), "--prune-keep", "1")
    assert back.returncode == 0, back.stderr
    assert marker_lines(back.stdout)[-2:] == ["LLMFLEET_WEIGHTS pruned revision=v2", "LLMFLEET_WEIGHTS changed"]
    assert os.readlink(dest / "current") == "revisions/main"
    assert stats(hub)["requests"] == 0  # the retained revision was switched to without network
    assert sorted(p.name for p in (dest / "revisions").iterdir()) == ["main"]


@pytest.fixture
def peer_for(peer_servers):
    return lambda model_dir: peer_servers("--model-dir", str(model_dir))


@pytest.mark.parametrize("hub_name", HUBS)
def test_peer_mode_downloads_from_peer_only(hub_name, hub, hub_root, tmp_path, peer_for, peer_token):
    seed = tmp_path / "seed"
    assert run_fetch(*hub_args(hub_name, hub, seed)).returncode == 0
    url = peer_for(seed / "current")
    hub.state.reset()
    rev = DEFAULT_REV[hub_name]
    dest = tmp_path / "receiver"
    res = run_fetch("--peer", url, "--repo", REPO_ID, "--revision", rev, "--dest", str(dest),
                    "--token-file", str(peer_token))
    assert res.returncode == 0, res.stdout + res.stderr
    assert PEER_TOKEN not in res.stdout + res.stderr
    assert marker_lines(res.stdout)[-1] == "LLMFLEET_WEIGHTS changed"
    assert stats(hub)["file_bytes"] == 0 and stats(hub)["requests"] == 0
    assert_same_tree(dest / "current", hub_root["src"])
    seed_man, man = mf.read(seed / "current"), mf.read(dest / "current")
    assert man["source"] == f"peer:{url}"
    assert (man["hub"], man["commit"], man["files"]) == (hub_name, seed_man["commit"], seed_man["files"])

    again = run_fetch("--hub", hub_name, "--repo", REPO_ID, "--revision", rev, "--dest", str(dest))
    assert marker_lines(again.stdout)[-1] == "LLMFLEET_WEIGHTS unchanged"  # a peer copy counts as the hub's

    wrong = run_fetch("--peer", url, "--repo", REPO_ID, "--revision", "v2", "--dest", str(tmp_path / "x"),
                      "--token-file", str(peer_token))
    assert wrong.returncode == fetch_mod.EXIT_PEER_MISMATCH, wrong.stdout + wrong.stderr


def test_peer_answers_401_without_this_runs_token(hub, tmp_path, peer_for, peer_token):
    seed = tmp_path / "seed"
    assert run_fetch(*hub_args("huggingface", hub, seed)).returncode == 0
    url = peer_for(seed / "current")
    for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": PEER_TOKEN}):
        for path in (f"/api/llmfleet/manifest/{REPO_ID}", f"/api/models/{REPO_ID}/revision/main",
                     f"/{REPO_ID}/resolve/main/config.json"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(urllib.request.Request(url + path, headers=headers), timeout=5)
            assert err.value.code == 401, (headers, path)
    ok = urllib.request.Request(f"{url}/api/llmfleet/manifest/{REPO_ID}",
                                headers={"Authorization": f"Bearer {PEER_TOKEN}"})
    with urllib.request.urlopen(ok, timeout=5) as resp:
        assert json.loads(resp.read())["repo"] == REPO_ID
    # a receiver without the token (or with another run's) is refused: exit 5, nothing written
    other = tmp_path / "other.token"
    other.write_text("an-older-runs-token\n")
    other.chmod(0o600)
    for args in ((), ("--token-file", str(other))):
        res = run_fetch("--peer", url, "--repo", REPO_ID, "--revision", "main", "--dest", str(tmp_path / "r"), *args)
        assert res.returncode == fetch_mod.EXIT_AUTH, res.stdout + res.stderr
        assert "refused the fan-out token (HTTP 401)" in res.stderr
        assert not (tmp_path / "r" / "current").exists()


def test_peer_server_refuses_a_token_file_others_can_read(hub, tmp_path, peer_token):
    seed = tmp_path / "seed"
    assert run_fetch(*hub_args("huggingface", hub, seed)).returncode == 0
    peer_token.chmod(0o644)
    res = subprocess.run([sys.executable, str(PEER), "--model-dir", str(seed / "current"), "--bind", "127.0.0.1",
                          "--port", "0", "--token-file", str(peer_token)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "readable by group/others (chmod 600 it)" in res.stderr
    res = subprocess.run([sys.executable, str(PEER), "--model-dir", str(seed / "current"), "--port", "0",
                          "--token-file", str(peer_token)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "--bind" in res.stderr  # no default: never every interface


def test_peer_corrupt_copy_is_rejected(hub, tmp_path, peer_for, peer_token):
    """A peer whose file no longer matches its manifest cannot poison a receiver."""
    seed = tmp_path / "seed"
    assert run_fetch(*hub_args("huggingface", hub, seed)).returncode == 0
    shard = seed / "current" / SHARD2
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    url = peer_for(seed / "current")
    dest = tmp_path / "receiver"
    res = run_fetch("--peer", url, "--repo", REPO_ID, "--revision", "main", "--dest", str(dest),
                    "--token-file", str(peer_token))
    assert res.returncode == fetch_mod.EXIT_VERIFY, res.stdout + res.stderr
    assert f"files={SHARD2}" in res.stdout
    assert not (dest / "current").exists()
    assert not (dest / ".staging-main" / SHARD2).exists()  # bad bytes removed so a rerun refetches


def test_bad_arguments_name_the_field(tmp_path):
    res = run_fetch("--repo", REPO_ID, "--revision", "main", "--dest", str(tmp_path))
    assert res.returncode == 2 and "--hub" in res.stderr
    res = run_fetch("--hub", "huggingface", "--repo", "noslash", "--revision", "main", "--dest", str(tmp_path))
    assert res.returncode == 2 and "--repo" in res.stderr
    res = run_fetch("--hub", "huggingface", "--repo", REPO_ID, "--revision", "../x", "--dest", str(tmp_path))
    assert res.returncode == 2 and "--revision" in res.stderr


def test_second_fetch_on_same_dest_is_refused_while_locked(hub, tmp_path):
    import fcntl

    dest = tmp_path / "m"
    dest.mkdir()
    with open(dest / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        res = run_fetch(*hub_args("huggingface", hub, dest))
    assert res.returncode == fetch_mod.EXIT_LOCKED, res.stdout + res.stderr
    assert "LLMFLEET_WEIGHTS error exit=10 reason=locked" in res.stdout
    assert stats(hub)["requests"] == 0


def test_redacting_stream_covers_log_handlers_created_after_it(capsys):
    import logging

    saved = sys.stdout, sys.stderr
    try:
        fetch_mod.install_redaction("tok-XYZ-123")
        logger = logging.getLogger("huggingface_hub.redaction-test")
        handler = logging.StreamHandler()  # binds the (redacting) sys.stderr, as client handlers do
        logger.addHandler(handler)
        logger.error("GET with Authorization: Bearer tok-XYZ-123")
        print("token=tok-XYZ-123")
        logger.removeHandler(handler)
    finally:
        sys.stdout, sys.stderr = saved
    out = capsys.readouterr()
    assert "tok-XYZ-123" not in out.out + out.err
    assert "Bearer ***" in out.err and "token=***" in out.out


def test_uploaded_directory_runs_without_the_tasks_package(hub, hub_root, tmp_path):
    """What gets uploaded to a host is tasks/weights/ alone: the scripts must run from a copy."""
    upload = tmp_path / "opt-llmfleet-weights"
    shutil.copytree(Path(fetch_mod.__file__).parent, upload, ignore=shutil.ignore_patterns("__pycache__"))
    dest = tmp_path / "m"
    res = subprocess.run(
        [sys.executable, str(upload / "fetch.py"), *hub_args("huggingface", hub, dest)],
        capture_output=True, text=True, timeout=90, cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
    )
    assert res.returncode == 0, res.stderr
    assert marker_lines(res.stdout)[-1] == "LLMFLEET_WEIGHTS changed"
    assert_same_tree(dest / "current", hub_root["src"])
