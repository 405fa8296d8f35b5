"""The stand-in vLLM server's multi-node rendezvous: stand-in processes on 127.0.0.1, a head
(node rank 0) and a headless worker, joined over real TCP on the master port. Every wait is
bounded; the rendezvous timeout is cut to seconds through VLLM_STANDIN_DIST_TIMEOUT_S."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.unit.test_vllm_standin import SERVER, env_for, free_port, model_dir  # noqa: F401 - fixture

VERSION = "0.32.0"  # harvested: its own parser has --nnodes, --node-rank, --master-addr, --master-port
WAIT_S = 20.0


class Node:
    """One stand-in process of a replica, its output in a file; stopped by the ``nodes`` fixture."""

    def __init__(self, log: Path, model: Path, master_port: int, rank: int, *, tp: int = 1, pp: int = 2,
                 nnodes: int = 2, headless: bool | None = None, timeout_s: float = 15.0,
                 version: str = VERSION) -> None:
        self.http, self.log = free_port(), log
        args = ["vllm", "serve", str(model), "--tensor-parallel-size", str(tp), "--pipeline-parallel-size", str(pp),
                "--nnodes", str(nnodes), "--node-rank", str(rank), "--master-addr", "127.0.0.1",
                "--master-port", str(master_port), "--host", "127.0.0.1", "--port", str(self.http)]
        if (rank > 0) if headless is None else headless:
            args.append("--headless")
        with log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, str(SERVER), *args],
                                         env=env_for(version, VLLM_STANDIN_DIST_TIMEOUT_S=str(timeout_s)),
                                         stdout=out, stderr=subprocess.STDOUT, text=True)

    def output(self) -> str:
        return self.log.read_text()

    def health(self) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/health", timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            return None

    def listens_http(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.http), timeout=0.5):
                return True
        except OSError:
            return False

    def wait_healthy(self, within: float = WAIT_S) -> float:
        started = time.monotonic()
        while time.monotonic() - started < within:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.output()}"
            if self.health() == 200:
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(f"not healthy within {within}s: {self.output()}")

    def wait_output(self, needle: str, within: float = WAIT_S) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if needle in self.output():
                return
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} not seen within {within}s: {self.output()}")

    def wait_exit(self, within: float = WAIT_S) -> int:
        try:
            return self.proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {within}s: {self.output()}") from None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


@pytest.fixture()
def nodes(tmp_path, model_dir):  # noqa: F811 - the fixture imported above
    """start(rank, **kw) -> Node on one master port per test; every node stopped at the end."""
    started: list[Node] = []
    port = free_port()

    def start(rank: int, model: Path | None = None, **kw) -> Node:
        node = Node(tmp_path / f"node{len(started)}.log", model or model_dir, kw.pop("master_port", port), rank, **kw)
        started.append(node)
        return node

    start.master_port = port
    yield start
    for node in started:
        node.stop()


def test_head_serves_only_once_the_worker_joined(nodes):
    head = nodes(0)
    head.wait_output("world_size=2 rank=0 local_rank=0 distributed_init_method=tcp://127.0.0.1:")
    time.sleep(1.0)
    assert head.proc.poll() is None and not head.listens_http(), "the head answered before its worker joined"
    worker = nodes(1)
    head.wait_healthy()
    assert "node rank 1 joined from 127.0.0.1:" in head.output()
    out = worker.output()
    assert f"Launching vLLM (v{VERSION}) headless multiproc executor, with head node address " \
           f"127.0.0.1:{nodes.master_port} for torch.distributed process group." in out
    assert "world_size=2 rank=1 local_rank=0" in out
    assert worker.proc.poll() is None and not worker.listens_http(), "a headless worker serves no HTTP"


def test_worker_started_first_retries_until_the_head_listens(nodes):
    worker = nodes(1)
    worker.wait_output("[c10d] The client socket has failed to connect to [127.0.0.1]:")
    head = nodes(0)
    head.wait_healthy()
    assert worker.proc.poll() is None
    assert "Connection refused" in worker.output()


@pytest.mark.parametrize("kw, needle", [
    ({"tp": 2}, "--tensor-parallel-size 2 on node rank 1 differs from the head's 1"),
    ({"pp": 4}, "--pipeline-parallel-size 4 on node rank 1 differs from the head's 2"),
    ({"nnodes": 4, "pp": 4, "same_world": True}, "--nnodes 4 on node rank 1 differs from the head's 2"),
    ({"other_model": True}, "model '"),
])
def test_worker_disagreeing_with_the_head_fails(nodes, tmp_path, model_dir, kw, needle):  # noqa: F811
    head_kw = {"pp": 4} if kw.pop("same_world", False) else {}
    head = nodes(0, **head_kw)
    model = None
    if kw.pop("other_model", False):
        model = tmp_path / "other"
        model.symlink_to(model_dir)
    worker = nodes(1, model, **kw)
    assert worker.wait_exit() == 1
    out = worker.output()
    assert "RuntimeError: llmfleet stand-in: the head at 127.0.0.1:" in out and needle in out, out
    assert "refused a node from 127.0.0.1:" in head.output() and needle in head.output()
    # The head keeps waiting for a node that agrees: still up, still not serving.
    assert head.proc.poll() is None and not head.listens_http()
    good = nodes(1, **head_kw)
    head.wait_healthy()
    assert good.proc.poll() is None


def test_worker_that_cannot_reach_the_head_retries_then_fails(nodes):
    unused = free_port()
    started = time.monotonic()
    worker = nodes(1, master_port=unused, timeout_s=2)
    assert worker.wait_exit() == 1
    elapsed = time.monotonic() - started
    out = worker.output()
    assert "[c10d] The client socket has failed to connect to" in out and "Connection refused" in out
    assert "torch.distributed.DistNetworkError: The client socket has timed out after 2000ms while trying to " \
           f"connect to (127.0.0.1, {unused})." in out
    assert 2.0 <= elapsed < 12.0


def test_head_alone_times_out_waiting_for_clients(nodes):
    head = nodes(0, timeout_s=2)
    assert head.wait_exit() == 1
    assert "torch.distributed.DistStoreError: Timed out after 2 seconds waiting for clients. 1/2 clients joined." \
        in head.output()


def test_worker_stays_up_when_the_head_dies(nodes):
    head = nodes(0)
    worker = nodes(1)
    head.wait_healthy()
    head.proc.kill()
    head.wait_exit()
    worker.wait_output("Failed to recv, got 0 bytes. Connection was likely closed. Did the remote server "
                       "shutdown or crash?")
    time.sleep(1.0)
    assert worker.proc.poll() is None, "a headless worker stays up when its head dies (vLLM #32136)"
    # Nor does it recover: a new head waits for a worker that never rejoins.
    again = nodes(0, timeout_s=2)
    assert again.wait_exit() == 1 and "1/2 clients joined" in again.output()
    assert worker.stop() == 0, "SIGTERM ends a stranded worker cleanly"


def test_head_exits_when_a_joined_worker_dies(nodes):
    head = nodes(0)
    worker = nodes(1)
    head.wait_healthy()
    worker.proc.kill()
    assert head.wait_exit() == 1
    assert "EngineCore encountered a fatal error: node rank 1" in head.output()


def test_master_port_in_use_fails_the_head(nodes):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        head = nodes(0, master_port=taken.getsockname()[1])
        assert head.wait_exit() == 1
    assert "torch.distributed.DistNetworkError: The server socket has failed to listen on any local network " \
           "address." in head.output() and "EADDRINUSE" in head.output()


@pytest.mark.parametrize("kw, code, needle", [
    ({"tp": 3, "pp": 1}, 1, "`--nnodes 2` must evenly divide the total world size (3)"),
    ({"rank": 2}, 1, "`--node-rank` must be between 0 and 1; got `--node-rank 2`"),
    ({"rank": 1, "headless": False}, 1, "node rank 1 of 2 without --headless"),
    ({"version": "0.11.0"}, 2, "unrecognized arguments: --nnodes"),
])
def test_multi_node_arguments_checked_as_the_release_does(nodes, kw, code, needle):
    node = nodes(kw.pop("rank", 0), **kw)
    assert node.wait_exit() == code
    assert needle in node.output(), node.output()


def test_rendezvous_is_a_stdlib_only_stand_in():
    text = (SERVER.parent / "vllm_rendezvous.py").read_text()
    assert "STAND-IN" in text.split('"""')[1]
    imports = {line.split()[1] for line in text.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "errno", "json", "os", "select", "socket", "threading", "time",
                       "dataclasses", "typing"}
