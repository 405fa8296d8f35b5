"""Model weights on every host: the official hub clients in a venv llmfleet owns, a verified
revision under ``<weights_root>/<owner>--<name>/current``, optionally spread host to host.

Controller side (pyinfra), by concern: this module (settings, the request of a host, the plan of
the run, the deploy), ``state.py`` (the facts), ``request.py`` (one fetch as data and its shell),
``plan.py`` (who fetches from where), ``operations.py``. The on-host scripts are the siblings ``fetch.py``, ``peer_server.py``,
``manifest.py`` and ``hub_protocol.py`` (their docstrings describe the on-disk layout, the output
markers and exit codes); they are uploaded to ``weights_scripts_dir`` and run with the venv's python.

Per host, in order: ``python3-venv`` (apt), the venv with the pinned clients (a fact reads the
installed versions; pip runs only when they differ), the scripts and the model root
(``tasks.converge.files_synced``: one digest round trip, no change when equal), the token
(``tasks.secrets.secret_file``: root-only, digest compared, never printed), then the fetch. A fact reads ``<dest>/current/manifest.json`` and stats every file it lists (with
``weights_deep_verify`` it also re-hashes them -- at plan time, on all hosts in parallel), so a
converged host yields no operation at all: no network, no change, and ``--dry`` tells the truth.

The fetch runs as a transient systemd unit ``llmfleet-weights-<owner>--<name>``
(``systemd-run --wait --collect``): progress lines go to the host's journal
(``journalctl -fu llmfleet-weights-<owner>--<name>``), the exit code comes back to pyinfra, which
also prints the run's summary lines (plan, verify, current, error) taken back from the journal.
A failing host gets one ``llmfleet weights: ...`` line naming the cause (repository or revision not
found, authentication, hub unreachable, no space, verification, lock); pyinfra stops that host
only, the others go on, and ``<dest>/current`` of the failed host is untouched (fetch.py switches
it last, by an atomic rename, after verification).

A running container must never read a directory being written: downloads go to
``<dest>/.staging-<rev>`` and become ``revisions/<rev>`` only when verified; ``current`` then
switches atomically. ``weights_prune_keep`` (default 2) keeps the previous revision after a switch,
so the service can still run it until the new one serves; older ones are pruned at the next switch.

Fan-out (``weights_fanout: True``): hub egress is one copy per group. Plan (all hosts' facts are
read at plan time, in parallel): hosts already holding the verified revision are seeds; a group with
no holder gets one hub seed (``weights_cache_host`` if set -- then it is the only hub seed of the
whole run -- else the group's first host in inventory order). Operations, identical on all hosts
so pyinfra runs them host-parallel one after another:

1. "Fetch from hub": the hub seeds (and every pending host without fan-out).
2. "Fan-out token (root-only)": a random token made for this run (``secrets.token_urlsafe``) goes
   into ``/run/llmfleet/<peer unit>.token`` (0600 in a 0700 directory, through
   ``tasks.secrets.secret_file``: never in an argument, a command line or the output) on every
   sender and receiver of the run.
3. For each wave k of :func:`tasks.weights.fanout.plan_waves`: "Peer servers (wave k)" starts
   ``peer_server.py`` as the transient unit ``llmfleet-weights-peer-<..>`` on senders new in that
   wave (every host that finished serves from then on), bound to the address the receivers use
   (``weights_peer_address``, else ``ssh_hostname``, resolved on the control machine), answering
   only requests that carry the token (else 401); then "Fetch from peers (wave k)" runs
   ``fetch.py --peer http://<sender>:<port> --token-file ...`` on that wave's receivers
   (huggingface_hub against the peer, resumable, verified against the seed's manifest). If the
   sender is unreachable (it failed earlier in the run) the receiver falls back to the hub
   (``weights_fanout_fallback_hub``).
4. "Stop peer servers" on every host of the fan-out: the servers stop, the token files go (units
   also carry ``RuntimeMaxSec``, a safety net if the run is interrupted).

Pipelined fan-out (``weights_fanout_mode: chain``, the default; ``tasks/weights/chain.py`` says why a
chain): the pending hosts of a group form a chain, fastest link first (``weights_link_mbit``), headed
by a holder of the revision or else by the hub seed. "Peer servers (chain)" starts ``peer_server.py
--chain-dest`` on every host that passes bytes on (it serves the chunks its host has verified so far,
and the kept revision after); then "Fetch through the chain" runs ``fetch.py --chain`` on every pending
host at once: the head reads the hub, every other host its upstream, each chunk verified before it is
written and passed on. A source that dies or sends a bad chunk is dropped and the receiver re-attaches
to the host before it (then the group's holders, then the hub with ``weights_fanout_fallback_hub``):
only the dead host fails. Time: ``S/R`` plus one chunk per hop, whatever N. A ModelScope head
downloads through its client first (the chain reads the Hugging Face protocol only), then relays.

Time for N hosts, model size S, link rate R (each host's link the bottleneck, fan-out width w):
without fan-out all N copies leave the hub's uplink: ``N*S/R_hub``, growing linearly with N. With
fan-out: one hub copy (``S/R_hub``) plus ``ceil(log_(w+1)(N))`` waves of ``S/R`` each: 8 hosts, w=1
-> 1 hub copy + 3 waves; 64 hosts -> 1 + 6; hub bytes stay ``S`` (per group) whatever N is.
``bench/weights_fanout.py`` measures this on the lab with ``tc`` rate limits.

Settings (host data, prefix ``weights_``): ``tasks.settings.weights.WeightsSettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pyinfra import host, state
from pyinfra.api import deploy

from tasks.converge import deb_packages, files_synced
from tasks.weights import fetch as fetch_script
from tasks.pyinfra_ext import once_per_run
from tasks.secrets import local_secret, secret_file
from tasks.weights.operations import client_venv, model_fetched, peer_server_down, peer_server_up
from tasks.weights.plan import FLEET_KEYS, Role, WeightsPlan, fleet_settings, peer_address, plan_fleet
from tasks.fleet.reads import read_fleet
from tasks.weights.request import FetchRequest, fetch_command, model_dest, model_dirname
from tasks.weights.state import PythonPackages, WeightsState, normalise
from tasks.settings.weights import WeightsSettings

DEFAULTS: dict[str, Any] = WeightsSettings.defaults()

SCRIPTS = fetch_script.HOST_FILES
HERE = Path(__file__).resolve().parent


def _request_for(spec: Any, data: WeightsSettings) -> FetchRequest:
    """One host's fetch from its validated settings (``validate_fleet`` checked every host's first)."""
    m = spec.model
    endpoint = data.weights_hf_endpoint if m.hub == "huggingface" else data.weights_modelscope_endpoint
    token_file = None
    if data.weights_token_secret:
        local_secret(data.weights_token_secret, "weights_token_secret")  # fails early, names the field
        token_file = f"{str(data.weights_secrets_dir).rstrip('/')}/{data.weights_token_secret}"
    return FetchRequest(
        hub=m.hub, repo=m.repo_id, revision=m.revision, dest=model_dest(spec, data),
        allow=tuple(m.allow_patterns or ()), ignore=tuple(m.ignore_patterns or ()),
        endpoint=endpoint or None, token_file=token_file, deep_verify=bool(data.weights_deep_verify),
        prune_keep=data.weights_prune_keep, max_workers=data.weights_max_workers,  # None: never prune
        venv=data.weights_venv, scripts_dir=data.weights_scripts_dir,
        chain_chunk_bytes=data.weights_chain_chunk_bytes, chain_stall_s=data.weights_chain_stall_s,
    )


def fleet_hosts() -> list[Any]:
    """This run's weights hosts in inventory order: the active ones, gateways aside (they serve no model)."""
    from tasks.gateway import is_gateway

    return [h for h in state.inventory if h in state.active_hosts and not is_gateway(h)]



def fleet_plan(spec: Any, hosts: list[Any] | None = None) -> WeightsPlan:
    """The run's weights plan for ``spec.model``: every weights host's WeightsState read in parallel,
    then :func:`plan_fleet`. Built once per run and model (``tasks.pyinfra_ext.once_per_run``): the
    fleet plan (``tasks.fleet``) builds it before any host's operation, ``fetch_weights`` reads it.

    + spec: a ``tasks.spec.ServingSpec`` (only ``.model`` is read)
    + hosts: the hosts that serve this model (default: :func:`fleet_hosts`)
    """
    hosts = fleet_hosts() if hosts is None else hosts
    key = ("weights", spec.model.repo_id, spec.model.revision, tuple(h.name for h in hosts))
    return once_per_run(key, lambda: _fleet_plan(spec, hosts))


def _fleet_plan(spec: Any, hosts: list[Any]) -> WeightsPlan:
    data = {h.name: WeightsSettings.of(h) for h in hosts}
    requests = {h.name: _request_for(spec, data[h.name]) for h in hosts}
    states = read_fleet(hosts, WeightsState,
                        lambda h: {"dest": requests[h.name].dest, "deep": requests[h.name].deep_verify})
    fleet = fleet_settings({h.name: h.data for h in hosts})  # validate_fleet checked them before any host was touched
    fanout = bool(fleet["weights_fanout"])
    urls = {}
    if fanout:
        for h in hosts:
            addr = peer_address(h, data[h.name])
            addr = f"[{addr}]" if ":" in addr else addr
            urls[h.name] = f"http://{addr}:{data[h.name].weights_peer_port}"
    plan = plan_fleet(
        [h.name for h in hosts], states, requests, fanout=fanout,
        width=fleet["weights_fanout_width"], groups={h.name: data[h.name].weights_fanout_group for h in hosts},
        cache_host=fleet["weights_cache_host"], peer_urls=urls, mode=fleet["weights_fanout_mode"],
        link_mbit={h.name: data[h.name].weights_link_mbit for h in hosts},
    )
    return plan


# ---------------------------------------------------------------------------------------------
# the deploy
# ---------------------------------------------------------------------------------------------
@deploy("Weights", data_defaults=DEFAULTS)
def fetch_weights(spec: Any, plan: WeightsPlan | None = None) -> Any:
    """
    Put ``spec.model`` (hub, repo_id, revision, allow/ignore patterns) on the host, verified, under
    ``<weights_root>/<owner>--<name>/current``; with ``weights_fanout`` copies spread host to host.

    + spec: a ``tasks.spec.ServingSpec`` (only ``.model`` is read)
    + plan: this model's weights plan from the run's fleet plan (``tasks.fleet``); default: the plan over
      every active host outside the gateway group (``deploys/weights.py``), once per run

    Returns a :class:`WeightsResult`: ``dest``/``current`` paths and ``did_change`` (True when any
    fetch operation changed the host), e.g. ``_if=result.did_change`` on the service restart.

    Example:

    .. code:: python

        from tasks.spec import load_spec
        from tasks.weights.deploy import fetch_weights

        spec = load_spec("qwen30b", host.data.dict())
        fetch_weights(spec)
    """
    data = WeightsSettings.of(host)
    req = _request_for(spec, data)
    plan = fleet_plan(spec) if plan is None else plan
    role = plan.roles[host.name]

    deb_packages(name="python3-venv", packages=["python3-venv"], cache_time=86400)
    client_venv(name="Hub clients in the llmfleet venv", venv=data.weights_venv,
                versions=dict(data.weights_client_versions), index_url=data.weights_pip_index_url,
                find_links=data.weights_pip_find_links)
    scripts_dir = str(data.weights_scripts_dir).rstrip("/")
    # One digest round trip for the scripts, their directory and the model root (was 14).
    files_synced(name="Weights scripts and model root", dirs=[scripts_dir, str(data.weights_root)],
                 files={f"{scripts_dir}/{script}": HERE / script for script in SCRIPTS}, mode="644", dir_mode="755")
    if data.weights_token_secret:
        secret_file(name="Hub token (root-only)",
                    src_path=str(local_secret(data.weights_token_secret, "weights_token_secret")),
                    dest=req.token_file)

    fallback = bool(data.weights_fanout_fallback_hub)
    port, max_s = data.weights_peer_port, data.weights_peer_max_s
    hub_role = role if role.kind in ("hub", "skip") else Role(
        "skip", f"in a chain, {role.note}" if role.kind == "chain" else f"copies from a peer in wave {role.wave}")
    ops = [model_fetched(name="Fetch from hub", req=req, role=hub_role, fallback_hub=False)]
    in_fanout = role.serve_from is not None or role.kind in ("peer", "chain")
    if plan.relays and in_fanout:
        token = plan.token
        secret_file(name="Fan-out token (root-only)", dest=req.peer_token_file, content_of=lambda: token.encode(),
                    dir_mode="700")
    bind = urlsplit(plan.urls.get(host.name, "")).hostname or ""  # what receivers connect to
    for k in range(1, plan.waves + 1):
        peer_server_up(name=f"Peer servers (wave {k})", req=req, start=role.serve_from == k, bind=bind, port=port,
                       max_s=max_s, note=f"not a new sender in wave {k}")
        wave_role = role if role.kind == "peer" and role.wave == k else Role("skip", f"not a receiver in wave {k}")
        ops.append(model_fetched(name=f"Fetch from peers (wave {k})", req=req, role=wave_role,
                                 fallback_hub=fallback))
    if plan.chains:
        peer_server_up(name="Peer servers (chain)", req=req, start=role.serve_from is not None, bind=bind, port=port,
                       max_s=max_s, note="passes nothing on", relay=True)
        chain_role = role if role.kind == "chain" else Role("skip", "not receiving in a chain")
        ops.append(model_fetched(name="Fetch through the chain", req=req, role=chain_role, fallback_hub=fallback))
    if plan.relays:
        peer_server_down(name="Stop peer servers", req=req, in_fanout=in_fanout)
    return WeightsResult(dest=req.dest, ops=ops)


@dataclass
class WeightsResult:
    """What :func:`fetch_weights` did on this host: ``_if=result.did_change`` restarts a service."""

    dest: str
    ops: list[Any]

    @property
    def current(self) -> str:
        return f"{self.dest}/current"

    def did_change(self) -> bool:
        return any(op.did_change() for op in self.ops)


__all__ = ["DEFAULTS", "FLEET_KEYS", "FetchRequest", "PythonPackages", "Role", "WeightsPlan", "WeightsResult",
           "WeightsState", "client_venv", "fetch_command", "fetch_weights", "fleet_hosts", "fleet_plan",
           "fleet_settings", "model_dest", "model_dirname", "model_fetched", "normalise", "peer_address",
           "peer_server_down", "peer_server_up", "plan_fleet"]
