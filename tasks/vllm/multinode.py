"""One member of a multi-node replica: its vLLM flags, its network environment and, on releases
without native multi-node, its Ray launch.

Native (the image's vLLM has ``--nnodes``: 0.18.0 and 0.32.0 in the harvested parsers,
tasks/data/vllm-flags; absent from 0.10.1.1 and 0.11.0): every member runs ``vllm serve`` with
``--nnodes N --node-rank R --master-addr HEAD --master-port P``; the workers add ``--headless``
(no API server). How the rendezvous works (vLLM 0.32.0, ``distributed/parallel_state.py`` and
``v1/executor/multiproc_executor.py``): with ``nnodes > 1`` the world process group is initialised
with ``tcp://<master-addr>:<master-port>``; global rank 0, on the head, hosts torch's TCPStore
there and every other rank connects to it as a client, retrying until the process-group timeout
(``distributed_timeout_seconds``, else torch's default: 600 s for NCCL, 1800 s for Gloo). The head
then publishes its scheduler message queue on ``VLLM_HOST_IP`` and the workers' ranks connect to
it. Hence the order a (re)start must follow: every member's old process gone (NCCL communicators
and the world group are made once per process: a survivor cannot join a new head, vLLM issue
#32136), the head started, the workers started within the timeout. A worker started first waits
for the head's store, so the order matters only as "all of them, within 600 s".

Ray (older releases; ``vllm/vllm-openai`` has no Ray from v0.18.0): the head's container runs
``ray start --head --port 6379`` then ``vllm serve ... --distributed-executor-backend ray``; a
worker's container runs ``ray start --block --address HEAD:6379`` (vLLM's
examples/online_serving/run_cluster.sh).

Network (rendered from the member's ``RouteTo`` fact, ``tasks.facts.network``): ``VLLM_HOST_IP``,
``NCCL_SOCKET_IFNAME``, ``GLOO_SOCKET_IFNAME``; with the recipe's ``ib_hcas``: ``NCCL_IB_HCA``, and
the container gets ``/dev/infiniband`` and ``IPC_LOCK`` (NCCL registers memory for RDMA). Ascend
(vllm-ascend): ``HCCL_IF_IP``, ``HCCL_SOCKET_IFNAME``, ``GLOO_SOCKET_IFNAME``, ``TP_SOCKET_IFNAME``
and ``HCCL_BUFFSIZE``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from tasks.spec import ServingSpec, SpecError
from tasks.vllm import versions as vv

RAY_PORT = 6379
#: HCCL's buffer per communicator in MB: vllm-ascend's multi-node guides set 1024 (HCCL's default is 200,
#: too small for the pipeline's activations of a 235B MoE); a recipe's extra_env HCCL_BUFFSIZE wins.
HCCL_BUFFSIZE_MB = "1024"
#: vLLM's server module: the entrypoint of every vllm/vllm-openai image of the Ray path's releases.
API_SERVER = ("python3", "-m", "vllm.entrypoints.openai.api_server")


@dataclass(frozen=True)
class Role:
    """What one member of a multi-node replica is: rank, rendezvous and its own network."""

    replica: str
    nnodes: int
    rank: int
    master_addr: str
    master_port: int
    #: this member's address and interface for the replica's traffic (``RouteTo``)
    host_ip: str
    interface: str

    @property
    def is_head(self) -> bool:
        return self.rank == 0


def native(spec: ServingSpec) -> bool:
    """Whether the image's vLLM runs multi-node by itself (``--nnodes``), else through Ray."""
    return vv.load_flag_table().has(spec.version, "--nnodes")


def role_flags(role: Role, native_path: bool) -> list[tuple[str, list[str]]]:
    """The (flag, values) a member's ``vllm serve`` gets; on the Ray path only the head serves."""
    if not native_path:
        return [("--distributed-executor-backend", ["ray"])]
    flags = [("--nnodes", [str(role.nnodes)]), ("--node-rank", [str(role.rank)]),
             ("--master-addr", [role.master_addr]), ("--master-port", [str(role.master_port)])]
    return flags + ([] if role.is_head else [("--headless", [])])


def network_env(spec: ServingSpec, role: Role) -> dict[str, str]:
    """The member's network environment for its accelerator's collectives."""
    ifname = role.interface
    env = {"VLLM_HOST_IP": role.host_ip, "GLOO_SOCKET_IFNAME": ifname}
    if spec.accelerator == "ascend":
        env.update({"HCCL_IF_IP": role.host_ip, "HCCL_SOCKET_IFNAME": ifname, "TP_SOCKET_IFNAME": ifname,
                    "HCCL_BUFFSIZE": HCCL_BUFFSIZE_MB})
    else:
        env["NCCL_SOCKET_IFNAME"] = ifname
        if spec.ib_hcas:
            env["NCCL_IB_HCA"] = ",".join(spec.ib_hcas)
    return env


def container_options(spec: ServingSpec) -> list[list[str]]:
    """Docker options of every member: the host's network (vLLM's ranks connect to each other on
    ports they pick at run time, which ``-p`` cannot publish), InfiniBand when the recipe asks."""
    out = [["--network", "host"]]
    if spec.ib_hcas:
        out += [["--cap-add", "IPC_LOCK"], ["--device", "/dev/infiniband"]]
    return out


def ray_launch(spec: ServingSpec, role: Role, serve_args: list[str]) -> tuple[str, list[str]]:
    """(entrypoint, container args) of a member on the Ray path.

    + spec: the validated spec
    + role: the member
    + serve_args: the head's rendered ``vllm serve`` args (``tasks.vllm.cmdline.render``)
    """
    node_ip = f"--node-ip-address={role.host_ip}"
    if not role.is_head:
        return "ray", ["start", "--block", f"--address={role.master_addr}:{RAY_PORT}", node_ip]
    launcher = [] if serve_args[:2] == list(vv.SERVE_LAUNCHER) else list(API_SERVER)
    # One shell: Ray's head daemonises, then vLLM replaces the shell (docker stop reaches it).
    script = (f"ray start --head --port={RAY_PORT} {node_ip} && exec "
              + " ".join(shlex.quote(a) for a in launcher + serve_args))
    return "/bin/bash", ["-c", script]


def check_role(spec: ServingSpec, role: Role | None) -> None:
    """SpecError when a multi-node spec has no role or a one-host spec has one (a bug upstream); a
    member being removed (``state: absent``) needs none: only its unit's name and paths are read."""
    if spec.state == "absent" and role is None:
        return
    if (role is None) != (spec.nodes == 1):
        raise SpecError("nodes", f"{spec.name} spans {spec.nodes} host(s) but this host is "
                        f"{'no member' if role is None else 'a member'} of a multi-node replica")


__all__ = ["API_SERVER", "HCCL_BUFFSIZE_MB", "RAY_PORT", "Role", "check_role", "container_options",
           "native", "network_env", "ray_launch", "role_flags"]
