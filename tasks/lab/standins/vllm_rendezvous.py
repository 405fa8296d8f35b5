"""STAND-IN for vLLM's native multi-node rendezvous (llmfleet lab). This is NOT vLLM or torch.

What it reproduces, read off vLLM 0.32.0 (vllm/entrypoints/cli/serve.py ``run_headless``,
vllm/distributed/parallel_state.py ``init_distributed_environment``, vllm/engine/arg_utils.py,
vllm/config/parallel.py) and torch's c10d TCPStore (torch/distributed/rendezvous.py and the
messages in libtorch_cpu.so) as shipped in that release's wheels:

* ``--nnodes N --node-rank R --master-addr A --master-port P`` (default 29501): every node's
  workers join one torch.distributed world of tensor_parallel x pipeline_parallel ranks through
  ``tcp://A:P``; node R holds ranks [R*L, (R+1)*L) with L = world / N. The world's rank 0 (on
  the head, node rank 0) hosts the TCPStore server on port P of every local address; every rank,
  the head's included, connects to A:P as a client. ``--nnodes`` must divide the world size and
  the node rank must be in [0, N) (vLLM's own ValueErrors); ``nnodes > 1`` needs the mp backend.
* the head waits for all ranks to join (the store's ``wait_for_workers``) before the engine and
  the API server come up, so /health is not answered until every node joined; past the timeout
  it fails with the store's "Timed out after ... waiting for clients. j/w clients joined".
* a worker (``--headless``, node rank > 0) serves no HTTP: it logs vLLM's "headless multiproc
  executor" line, connects to A:P and retries while nothing listens there (torch logs
  "The client socket has failed to connect to ..."), then fails with DistNetworkError "The client
  socket has timed out after ...ms while trying to connect to (A, P)".
* when the head dies, a joined headless worker neither exits nor recovers (vLLM issue #32136):
  it logs torch's "recvValue failed ... Failed to recv, got 0 bytes" and stays up until signalled.
* timeout: ``--distributed-timeout-seconds`` where the release has it, else torch's default for
  the NCCL backend (10 min); the stand-in variable VLLM_STANDIN_DIST_TIMEOUT_S overrides both.

Where it differs, on purpose (the deploy observes the same outcome, sooner and clearly):

* each node sends one line of JSON (its release, model, tensor/pipeline parallel sizes, nnodes
  and node rank) over the connection; the head refuses a node whose values differ from its own,
  and that worker exits 1 with a line naming the value. Real vLLM has no such check: a world
  built from disagreeing nodes hangs in a collective until the NCCL timeout, or crashes.
* the head exits 1 when a joined worker's connection drops (real vLLM's engine dies at the next
  collective, and the API server then shuts down).
* the head's HTTP port opens after the rendezvous (vLLM binds it earlier but answers nothing).

Standard library only; imports nothing from llmfleet.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

#: torch's default timeout of an NCCL process group (the rendezvous of a GPU world).
DEFAULT_TIMEOUT_S = 600.0
#: vLLM's ParallelConfig.master_port default.
DEFAULT_MASTER_PORT = 29501
#: Seconds between a worker's connection attempts (torch backs off between 1 and a few seconds).
RETRY_S = 1.0
#: Seconds between repeats of the "head lost" line a stranded worker prints.
STRANDED_REPEAT_S = 30.0
HELLO_LIMIT = 65536
PROTOCOL = "llmfleet-vllm-standin-rendezvous/1"

Log = Callable[[str, str, str], None]


class RendezvousError(Exception):
    """A failure vLLM reports with an exception: ``kind`` is the exception's name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Topology:
    """One node's view of its multi-node world, from its own command line."""

    version: str
    model: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def local_world_size(self) -> int:
        return self.world_size // self.nnodes

    @property
    def first_rank(self) -> int:
        return self.node_rank * self.local_world_size

    @property
    def init_method(self) -> str:
        return f"tcp://{self.master_addr}:{self.master_port}"

    def hello(self) -> dict:
        return {"protocol": PROTOCOL, **asdict(self)}


#: The values every node of one world must share (hello key -> vLLM flag, for messages).
SHARED = {"version": "vLLM version", "model": "model", "tensor_parallel_size": "--tensor-parallel-size",
          "pipeline_parallel_size": "--pipeline-parallel-size", "nnodes": "--nnodes"}


def topology(args, version: str) -> Topology | None:
    """The node's topology from parsed arguments, or None when it is not multi-node.

    Raises RendezvousError with vLLM's own messages for values vLLM refuses."""
    nnodes = getattr(args, "nnodes", None) or 1
    if nnodes <= 1:
        return None
    backend = getattr(args, "distributed_executor_backend", None)
    if backend not in (None, "mp", "uni", "external_launcher"):
        raise RendezvousError("ValueError", "nnodes > 1 can only be set when distributed executor "
                              "backend is mp, uni or external_launcher.")
    tp = getattr(args, "tensor_parallel_size", None) or 1
    pp = getattr(args, "pipeline_parallel_size", None) or 1
    node_rank = getattr(args, "node_rank", None) or 0
    world = tp * pp
    if world % nnodes != 0:
        raise RendezvousError("ValueError", f"Invalid data-parallel launch options: `--nnodes {nnodes}` "
                              f"must evenly divide the total world size ({world}). Adjust `--nnodes`, "
                              "`--data-parallel-size`, `--pipeline-parallel-size`, "
                              "`--tensor-parallel-size`, or `--prefill-context-parallel-size`.")
    if not 0 <= node_rank < nnodes:
        raise RendezvousError("ValueError", "Invalid data-parallel launch options: `--node-rank` must be "
                              f"between 0 and {nnodes - 1}; got `--node-rank {node_rank}`. Set it to this "
                              "node's zero-based index.")
    return Topology(version=version, model=str(args.model), tensor_parallel_size=tp,
                    pipeline_parallel_size=pp, nnodes=nnodes, node_rank=node_rank,
                    master_addr=getattr(args, "master_addr", None) or "127.0.0.1",
                    master_port=getattr(args, "master_port", None) or DEFAULT_MASTER_PORT)


def timeout_s(args) -> float:
    """The rendezvous timeout: the stand-in override, the release's flag, or torch's NCCL default."""
    override = os.environ.get("VLLM_STANDIN_DIST_TIMEOUT_S")
    if override:
        return float(override)
    flag = getattr(args, "distributed_timeout_seconds", None)
    return float(flag) if flag else DEFAULT_TIMEOUT_S


def disagreement(mine: dict, theirs: dict) -> str | None:
    """Why a node's hello cannot join the head's world, or None when it can."""
    if theirs.get("protocol") != PROTOCOL:
        return f"not a stand-in rendezvous hello: {str(theirs)[:200]}"
    for key, label in SHARED.items():
        if theirs.get(key) != mine[key]:
            return f"{label} {theirs.get(key)!r} on node rank {theirs.get('node_rank')} differs from the head's {mine[key]!r}"
    rank = theirs.get("node_rank")
    if not isinstance(rank, int) or not 0 <= rank < mine["nnodes"]:
        return f"node rank {rank!r} is outside 0..{mine['nnodes'] - 1}"
    return None


def _read_line(sock: socket.socket, deadline: float) -> dict | None:
    """One JSON line from ``sock`` before ``deadline``; None on EOF or timeout."""
    buf = b""
    while b"\n" not in buf and len(buf) < HELLO_LIMIT:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            chunk = sock.recv(4096)
        except (socket.timeout, OSError):
            return None
        if not chunk:
            return None
        buf += chunk
    try:
        value = json.loads(buf.split(b"\n", 1)[0])
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _send_line(sock: socket.socket, obj: dict) -> None:
    sock.sendall(json.dumps(obj).encode() + b"\n")


class StoreServer:
    """The head's TCPStore server stand-in: accepts nodes on the master port of every local
    address, checks each hello against the head's, and records who joined."""

    def __init__(self, topo: Topology, log: Log) -> None:
        self.topo, self.log = topo, log
        self.mine = topo.hello()
        self.joined: dict[int, tuple[socket.socket, str]] = {}
        #: The head's own client connection (rank 0 joins its store like every rank).
        self.own: socket.socket | None = None
        self.all_joined = threading.Event()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind(("0.0.0.0", topo.master_port))
            self.sock.listen(64)
        except OSError as exc:
            self.sock.close()
            name = errno.errorcode.get(exc.errno or 0, "UNKNOWN")
            raise RendezvousError("torch.distributed.DistNetworkError", "The server socket has failed to listen "
                                  f"on any local network address. port: {topo.master_port}, useIpv6: false, "
                                  f"code: {-(exc.errno or 0)}, name: {name}, message: {exc.strerror}") from None
        self.thread = threading.Thread(target=self._accept_loop, name="standin-store", daemon=True)
        self.thread.start()

    def ranks_joined(self) -> int:
        with self.lock:
            return len(self.joined) * self.topo.local_world_size

    def _accept_loop(self) -> None:
        self.sock.settimeout(0.5)
        while not self.stopping.is_set():
            try:
                conn, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._admit, args=(conn, f"{peer[0]}:{peer[1]}"), daemon=True).start()

    def _admit(self, conn: socket.socket, peer: str) -> None:
        hello = _read_line(conn, time.monotonic() + 10.0)
        if hello is None:
            conn.close()
            return
        why = disagreement(self.mine, hello)
        rank = hello.get("node_rank")
        with self.lock:
            if why is None and rank in self.joined:
                why = f"node rank {rank} already joined from {self.joined[rank][1]}"
            if why is None:
                self.joined[rank] = (conn, peer)
                done = len(self.joined) == self.topo.nnodes
        try:
            _send_line(conn, {"ok": why is None, "error": why, "world_size": self.topo.world_size})
        except OSError:
            pass
        if why is not None:
            self.log("ERROR", "standin-rendezvous", f"refused a node from {peer}: {why}")
            conn.close()
            return
        self.log("INFO", "standin-rendezvous", f"node rank {rank} joined from {peer} "
                 f"({self.ranks_joined()}/{self.topo.world_size} ranks)")
        if done:
            self.all_joined.set()

    def wait_all(self, started: float, timeout: float) -> None:
        """Block until every node joined; the store's error ``timeout`` seconds after ``started``."""
        if not self.all_joined.wait(max(0.0, started + timeout - time.monotonic())):
            raise RendezvousError("torch.distributed.DistStoreError", f"Timed out after {round(time.monotonic() - started)} "
                                  f"seconds waiting for clients. {self.ranks_joined()}/{self.topo.world_size} "
                                  "clients joined.")

    def watch_workers(self, on_lost: Callable[[int, str], None]) -> None:
        """Call ``on_lost(node_rank, peer)`` (once) when a joined worker's connection drops."""
        def loop() -> None:
            with self.lock:
                peers = {s: (r, p) for r, (s, p) in self.joined.items() if r != 0}
            while peers and not self.stopping.is_set():
                ready, _, _ = select.select(list(peers), [], [], 0.5)
                for s in ready:
                    try:
                        data = s.recv(1)
                    except OSError:
                        data = b""
                    if not data:
                        on_lost(*peers[s])
                        return
        threading.Thread(target=loop, name="standin-store-watch", daemon=True).start()

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()
        if self.own is not None:
            self.own.close()
        with self.lock:
            for s, _ in self.joined.values():
                s.close()


def connect(topo: Topology, timeout: float, log: Log, stop: threading.Event | None = None) -> socket.socket:
    """Join the world as a TCPStore client would: retry while nothing answers at the master
    address and port, send this node's hello, return the open connection.

    Raises RendezvousError: torch's DistNetworkError past ``timeout``; a RuntimeError naming the
    disagreement when the head refuses this node."""
    started = time.monotonic()
    deadline = started + timeout
    target = (topo.master_addr, topo.master_port)
    last_said = 0.0
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or (stop is not None and stop.is_set()):
            raise RendezvousError("torch.distributed.DistNetworkError", "The client socket has timed out after "
                                  f"{int(timeout * 1000)}ms while trying to connect to ({target[0]}, {target[1]}).")
        try:
            sock = socket.create_connection(target, timeout=min(left, 5.0))
            break
        except OSError as exc:
            # torch repeats this warning on every attempt; once every few seconds is enough here.
            if time.monotonic() - last_said >= 5.0:
                code = exc.errno if exc.errno is not None else errno.ETIMEDOUT
                reason = exc.strerror or "timed out"
                log("WARNING", "socket.cpp:1019", f"[c10d] The client socket has failed to connect to "
                    f"[{target[0]}]:{target[1]} (errno: {code} - {reason}).")
                last_said = time.monotonic()
            time.sleep(min(RETRY_S, max(0.0, deadline - time.monotonic())))
    _send_line(sock, topo.hello())
    reply = _read_line(sock, deadline)
    if reply is None:
        sock.close()
        raise RendezvousError("torch.distributed.DistNetworkError", f"Failed to recv, got 0 bytes. Connection was "
                              f"likely closed. Did the remote server shutdown or crash? ({target[0]}:{target[1]})")
    if not reply.get("ok"):
        sock.close()
        raise RendezvousError("RuntimeError", f"llmfleet stand-in: the head at {target[0]}:{target[1]} refused node "
                              f"rank {topo.node_rank}: {reply.get('error')}")
    sock.settimeout(None)
    return sock


def hold_as_stranded_worker(sock: socket.socket, topo: Topology, log: Log, stop: threading.Event) -> None:
    """A joined headless worker: block while the head lives; when it goes, say so (again every
    STRANDED_REPEAT_S) and stay up, as vLLM's headless workers do (#32136), until ``stop``."""
    while not stop.is_set():
        ready, _, _ = select.select([sock], [], [], 0.5)
        if ready:
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                break
    else:
        sock.close()
        return
    local = "%s:%s" % sock.getsockname()[:2]
    sock.close()
    while not stop.is_set():
        log("WARNING", "TCPStore.cpp:125", f"[rank{topo.first_rank}]: [c10d] recvValue failed on SocketImpl("
            f"addr={local}, remote={topo.master_addr}:{topo.master_port}): Failed to recv, got 0 bytes. "
            "Connection was likely closed. Did the remote server shutdown or crash?")
        stop.wait(STRANDED_REPEAT_S)


def log_world(topo: Topology, log: Log) -> None:
    """vLLM's line as a rank joins the torch.distributed world (one line per node here)."""
    log("INFO", "parallel_state.py:1904", f"world_size={topo.world_size} rank={topo.first_rank} local_rank=0 "
        f"distributed_init_method={topo.init_method} backend=nccl")


def join_as_head(topo: Topology, timeout: float, log: Log) -> StoreServer:
    """Node rank 0: host the store on the master port, join it like every rank (so a master
    address that is not the head's fails here too), and wait until every node joined.

    Raises RendezvousError as torch does: port taken, own address unreachable, timeout."""
    log("INFO", "multiproc_executor.py:154", f"DP group leader: node_rank=0, node_rank_within_dp=0, "
        f"master_addr={topo.master_addr}, world_size={topo.world_size}, local_world_size={topo.local_world_size}")
    log_world(topo, log)
    started = time.monotonic()
    store = StoreServer(topo, log)
    try:
        store.own = connect(topo, timeout, log)
        store.wait_all(started, timeout)
    except RendezvousError:
        store.close()
        raise
    log("INFO", "standin-rendezvous", f"all {topo.nnodes} nodes joined ({topo.world_size} ranks) in "
        f"{time.monotonic() - started:.1f}s")
    return store


def run_worker(topo: Topology, timeout: float, log: Log, load: Callable[[], object],
               stop: threading.Event) -> None:
    """A headless node: join the head's world, then ``load`` the weights (vLLM loads them after the
    process group is up), then hold until ``stop``, stranded but alive once the head is gone.

    Raises RendezvousError when the head cannot be reached in time or refuses this node."""
    log("INFO", "serve.py:216", f"Launching vLLM (v{topo.version}) headless multiproc executor, with head node "
        f"address {topo.master_addr}:{topo.master_port} for torch.distributed process group.")
    log_world(topo, log)
    try:
        sock = connect(topo, timeout, log, stop)
    except RendezvousError:
        if stop.is_set():
            return
        raise
    log("INFO", "standin-rendezvous", f"joined the world at {topo.master_addr}:{topo.master_port} as ranks "
        f"{topo.first_rank}..{topo.first_rank + topo.local_world_size - 1} of {topo.world_size}")
    load()
    hold_as_stranded_worker(sock, topo, log, stop)
