"""Model weights on every host: the official hub clients in a venv llmfleet owns, a verified
revision under ``<weights_root>/<owner>--<name>/current``, optionally spread host to host.

Controller side (pyinfra). The on-host scripts are the siblings ``fetch.py``, ``peer_server.py``,
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

Time for N hosts, model size S, link rate R (each host's link the bottleneck, fan-out width w):
without fan-out all N copies leave the hub's uplink: ``N*S/R_hub``, growing linearly with N. With
fan-out: one hub copy (``S/R_hub``) plus ``ceil(log_(w+1)(N))`` waves of ``S/R`` each: 8 hosts, w=1
-> 1 hub copy + 3 waves; 64 hosts -> 1 + 6; hub bytes stay ``S`` (per group) whatever N is.
``bench/weights_fanout.py`` measures this on the lab with ``tc`` rate limits.

Settings (host data, prefix ``weights_``): ``tasks.settings.weights.WeightsSettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pyinfra import host, state
from pyinfra.api import FactBase, deploy, operation

from tasks.converge import deb_packages, files_synced
from tasks.facts.planned import declaring, read
from tasks.once import once_per_run, read_fleet
from tasks.secrets import local_secret, secret_file
from tasks.weights import fetch as fetch_script
from tasks.weights.fanout import plan_waves
from tasks.settings.weights import WeightsSettings

DEFAULTS: dict[str, Any] = WeightsSettings.defaults()

SCRIPTS = ("fetch.py", "peer_server.py", "manifest.py", "hub_protocol.py")
PEER_TOKEN_DIR = "/run/llmfleet"
HERE = Path(__file__).resolve().parent
_UNIT_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


# ---------------------------------------------------------------------------------------------
# facts
# ---------------------------------------------------------------------------------------------
class PythonPackages(FactBase):
    """
    ``{normalised name: version}`` of the distributions in a venv; ``{}`` when the venv is absent.

    Read from the ``<name>-<version>.dist-info`` directory names pip writes (the wheel spec
    escapes ``-`` in both parts), with a shell glob: starting the venv's Python to ask
    ``importlib.metadata`` costs ~100 ms of CPU per host per run for the same answer.
    """

    default = dict

    def command(self, venv: str) -> str:
        py, v = shlex.quote(f"{venv}/bin/python"), shlex.quote(venv.rstrip("/"))
        return (f"if [ -x {py} ]; then for d in {v}/lib/python3*/site-packages/*.dist-info; do "
                'if [ -d "$d" ]; then d=${d##*/}; echo "${d%.dist-info}"; fi; done; fi; true')

    def process(self, output: list[str]) -> dict[str, str]:
        out = {}
        for line in output:
            name, sep, version = line.strip().partition("-")
            if sep and name and version and "-" not in version:
                out[normalise(name)] = version
        return out


#: The manifest fields WeightsState reports (both ways of reading it).
MANIFEST_KEYS = ("repo", "hub", "revision", "commit", "allow", "ignore", "total_bytes")

_STATE_CODE = r"""
import hashlib, json, os, sys
MANIFEST_KEYS = @MANIFEST_KEYS@
d, deep = sys.argv[1], sys.argv[2] == "1"
out = {"current": None, "manifest": None, "bad": [], "error": None}
try:
    out["current"] = os.readlink(os.path.join(d, "current"))
except OSError:
    pass
if out["current"]:
    base = os.path.join(d, "current")
    try:
        with open(os.path.join(base, "manifest.json")) as fh:
            m = json.load(fh)
        out["manifest"] = {k: m.get(k) for k in MANIFEST_KEYS}
        out["manifest"]["files"] = len(m["files"])
        for e in m["files"]:
            p = os.path.join(base, e["path"])
            try:
                ok = os.stat(p).st_size == e["size"]
            except OSError:
                ok = False
            if ok and deep:
                h = hashlib.sha256()
                with open(p, "rb") as fh:
                    for block in iter(lambda: fh.read(8 << 20), b""):
                        h.update(block)
                ok = h.hexdigest() == e["sha256"]
            if not ok:
                out["bad"].append(e["path"])
    except Exception as exc:
        out["error"] = "%s: %s" % (type(exc).__name__, exc)
print(json.dumps(out))
""".replace("@MANIFEST_KEYS@", repr(MANIFEST_KEYS))


class WeightsState(FactBase):
    """
    What ``<dest>/current`` holds: ``{"current": link text, "manifest": {repo, hub, revision, commit,
    allow, ignore, total_bytes, files}, "bad": [paths with a wrong size (or hash, deep)], "error": ...}``.

    + dest: the model directory (``<dest>/current`` links to the served revision)
    + deep: also hash every file against the manifest (python3 on the host; ``{}`` without it)

    Without ``deep`` (every run, every host) the shell reads the link, the manifest and the files'
    sizes (``find``) and the comparison happens here: no Python start on the host (~20 ms of CPU).

    Example:

    .. code:: python

        host.get_fact(WeightsState, dest="/srv/models/Qwen--Qwen3-30B-A3B")["bad"]  # []
    """

    default = dict

    def requires_command(self, dest: str, deep: bool = False) -> str | None:
        return "python3" if deep else None

    def command(self, dest: str, deep: bool = False) -> str:
        if deep:
            return f"python3 -c {shlex.quote(_STATE_CODE)} {shlex.quote(dest)} 1"
        cur = shlex.quote(f"{dest.rstrip('/')}/current")
        return (f'c=$(readlink {cur} 2>/dev/null); echo "@current=$c"; '
                f'if [ -n "$c" ]; then if [ -f {cur}/manifest.json ]; then echo @manifest; cat {cur}/manifest.json; '
                f"echo; echo @sizes; find -L {cur}/ -type f -printf '%s\\t%P\\n' 2>/dev/null; "
                "else echo @no-manifest; fi; fi; true")

    def process(self, output: list[str]) -> dict[str, Any]:
        import json

        if output and output[0].startswith("@current="):
            return _state_from_listing(output)
        try:
            return json.loads("\n".join(output))
        except ValueError:
            return {"error": "unreadable state: " + " ".join(output)[:200]}


def _state_from_listing(output: list[str]) -> dict[str, Any]:
    """WeightsState (not deep) from the link, the manifest and ``find``'s sizes, as _STATE_CODE gives it."""
    import json

    out: dict[str, Any] = {"current": output[0][len("@current="):].strip() or None, "manifest": None, "bad": [],
                           "error": None}
    if not out["current"]:
        return out
    if "@no-manifest" in output:
        out["error"] = "FileNotFoundError: no manifest.json in current"
        return out
    try:
        start, sizes_at = output.index("@manifest"), output.index("@sizes")
        m = json.loads("\n".join(output[start + 1:sizes_at]))
        out["manifest"] = {k: m.get(k) for k in MANIFEST_KEYS}
        out["manifest"]["files"] = len(m["files"])
        sizes = {}
        for line in output[sizes_at + 1:]:
            size, sep, path = line.partition("\t")
            if sep and size.isdigit():
                sizes[path] = int(size)
        out["bad"] = [e["path"] for e in m["files"] if sizes.get(e["path"]) != e["size"]]
    except (ValueError, KeyError, TypeError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


# ---------------------------------------------------------------------------------------------
# the request and its command lines
# ---------------------------------------------------------------------------------------------
def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def model_dirname(repo_id: str) -> str:
    """``Qwen/Qwen3-0.6B`` -> ``Qwen--Qwen3-0.6B`` (a directory and unit-name safe form)."""
    return _UNIT_SAFE.sub("_", repo_id.replace("/", "--"))


def model_dest(spec: Any, data: Any = None) -> str:
    """The model directory for ``spec`` on a host (``<weights_root>/<owner>--<name>``); a service
    mounts ``<dest>`` and reads ``<dest>/current`` (or the resolved ``revisions/<rev>``)."""
    root = (data.get("weights_root") if data is not None else None) or DEFAULTS["weights_root"]
    return f"{str(root).rstrip('/')}/{model_dirname(spec.model.repo_id)}"


@dataclass(frozen=True)
class FetchRequest:
    """Everything one host's fetch needs (computed at plan time from the spec and host data)."""

    hub: str
    repo: str
    revision: str
    dest: str
    allow: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    endpoint: str | None = None
    token_file: str | None = None
    deep_verify: bool = False
    prune_keep: int | None = 2
    max_workers: int = 8
    venv: str = DEFAULTS["weights_venv"]
    scripts_dir: str = DEFAULTS["weights_scripts_dir"]

    @property
    def unit(self) -> str:
        return f"llmfleet-weights-{Path(self.dest).name}"

    @property
    def peer_unit(self) -> str:
        return f"llmfleet-weights-peer-{Path(self.dest).name}"

    @property
    def peer_token_file(self) -> str:
        """This run's fan-out token (root-only; /run: gone at reboot, removed after the fan-out)."""
        return f"{PEER_TOKEN_DIR}/{self.peer_unit}.token"

    def argv(self, peer: str | None = None) -> list[str]:
        """fetch.py's arguments: from the hub, or from ``peer`` (no endpoint; the fan-out token)."""
        args = [f"{self.venv}/bin/python", "-u", f"{self.scripts_dir}/fetch.py"]
        args += ["--peer", peer] if peer else []
        args += ["--hub", self.hub, "--repo", self.repo, "--revision", self.revision, "--dest", self.dest]
        for p in self.allow:
            args += ["--allow", p]
        for p in self.ignore:
            args += ["--ignore", p]
        if not peer and self.endpoint:
            args += ["--endpoint", self.endpoint]
        if not peer and self.token_file:
            args += ["--token-file", self.token_file]
        if peer:
            args += ["--token-file", self.peer_token_file]
        if self.deep_verify:
            args.append("--deep-verify")
        args += ["--max-workers", str(self.max_workers)]
        if self.prune_keep:
            args += ["--prune-keep", str(self.prune_keep)]
        return args

    def matches(self, st: dict[str, Any]) -> bool:
        """True when the host's WeightsState shows this request served, complete and (deep) intact."""
        man = st.get("manifest") or {}
        return bool(
            st.get("current") == f"revisions/{self.revision.replace('/', '--')}"
            and man.get("repo") == self.repo
            and self.revision in (man.get("revision"), man.get("commit"))
            and man.get("hub") == self.hub
            and list(man.get("allow") or []) == list(self.allow)
            and list(man.get("ignore") or []) == list(self.ignore)
            and not st.get("bad")
            and not st.get("error")
        )


def error_messages(req: FetchRequest, source: str) -> dict[int, str]:
    """fetch.py exit code -> the one line a failed host reports."""
    where = source or "the hub"
    return {
        fetch_script.EXIT_ERROR: f"unexpected error (journalctl -u {req.unit})",
        fetch_script.EXIT_USAGE: "bad arguments or unreadable token file (weights_* data, weights_token_secret)",
        fetch_script.EXIT_REPO_NOT_FOUND: f"repository {req.repo} not found at {where}",
        fetch_script.EXIT_REVISION_NOT_FOUND: f"revision {req.revision} of {req.repo} not found at {where}",
        fetch_script.EXIT_AUTH: f"{where} refused the token (401/403): check weights_token_secret",
        fetch_script.EXIT_UNREACHABLE: f"{where} unreachable or failing (connection, timeout, 5xx)",
        fetch_script.EXIT_NO_SPACE: f"not enough free disk space under {req.dest}",
        fetch_script.EXIT_VERIFY: "verification failed (bad files removed; a rerun fetches them again)",
        fetch_script.EXIT_PEER_MISMATCH: f"peer {where} serves another repository/revision/selection",
        fetch_script.EXIT_LOCKED: f"another fetch holds {req.dest}/.lock",
    }


_SUMMARY = r"^(LLMFLEET_WEIGHTS (plan|verify|current|pruned|unchanged|changed|error)|fetch\.py: )"


def run_fetch_sh(req: FetchRequest, peer: str | None, source: str) -> str:
    """Shell that runs fetch.py as a transient unit, echoes its summary, and names a failure."""
    argv = " ".join(shlex.quote(a) for a in req.argv(peer))
    unit = shlex.quote(req.unit)
    cases = " ".join(
        f"{code}) msg={shlex.quote(text)};;" for code, text in error_messages(req, source).items()
    )
    return (
        "run=$(cat /proc/sys/kernel/random/uuid | tr -d -); "
        f"systemctl reset-failed {unit} 2>/dev/null; "
        f"systemd-run --unit={unit} --description={shlex.quote(f'llmfleet weights {req.repo}@{req.revision}')} "
        f"--wait --collect --quiet --service-type=exec -p LogExtraFields=LLMFLEET_RUN=$run -- {argv}; rc=$?; "
        f"journalctl --sync 2>/dev/null; journalctl -q -o cat --no-pager LLMFLEET_RUN=$run "
        f"| grep -E {shlex.quote(_SUMMARY)}; "
        f'case $rc in {cases} *) msg="fetch failed";; esac'
    )


def fetch_command(req: FetchRequest, peer: str | None, fallback_hub: bool) -> str:
    """The whole shell command of one host's fetch (hub, or peer with an optional hub fallback)."""
    hub_src = req.endpoint or req.hub
    fail = (
        'if [ $rc -ne 0 ]; then echo "llmfleet weights: $(hostname): $msg (fetch.py exit $rc; '
        f'journalctl -u {req.unit})" >&2; exit $rc; fi'
    )
    if not peer:
        return f"{run_fetch_sh(req, None, hub_src)}; {fail}"
    cmd = f"{run_fetch_sh(req, peer, peer)}"
    if fallback_hub:
        cmd += (
            f"; if [ $rc -eq {fetch_script.EXIT_UNREACHABLE} ] || [ $rc -eq {fetch_script.EXIT_PEER_MISMATCH} ]; then "
            f'echo "llmfleet weights: peer {peer}: $msg; falling back to {hub_src}"; '
            f"{run_fetch_sh(req, None, hub_src)}; fi"
        )
    return f"{cmd}; {fail}"


# ---------------------------------------------------------------------------------------------
# operations
# ---------------------------------------------------------------------------------------------
@declaring(lambda venv, **_: [(PythonPackages, {"venv": venv})])
@operation()
def client_venv(venv: str, versions: dict[str, str], index_url: str | None = None,
                find_links: str | None = None):
    """
    A venv with the pinned hub clients; pip runs only when an installed version differs.

    + venv: venv directory (created with ``python3 -m venv``)
    + versions: distribution name -> exact version
    + index_url: package index (internal mirror); None = pip's default
    + find_links: wheel directory or URL; without ``index_url`` pip runs with ``--no-index``
      (plain ``http://`` sources are passed as ``--trusted-host``: pip ignores them otherwise)

    Example:

    .. code:: python

        client_venv(name="Hub clients", venv="/opt/llmfleet/venv",
                    versions={"huggingface_hub": "2.4.0", "modelscope": "1.40.2"})
    """
    have = read(PythonPackages, venv=venv)
    wrong = {n: v for n, v in versions.items() if have.get(normalise(n)) != v}
    if not wrong:
        host.noop(f"{venv}: " + ", ".join(f"{n}=={v}" for n, v in sorted(versions.items())))
        return
    py = shlex.quote(f"{venv}/bin/python")
    yield f"[ -x {py} ] || python3 -m venv {shlex.quote(venv)}"
    src = []
    if index_url:
        src += ["--index-url", shlex.quote(index_url)]
    elif find_links:
        src.append("--no-index")
    if find_links:
        src += ["--find-links", shlex.quote(find_links)]
    # pip ignores plain-http sources unless trusted; an http URL in data is the operator's choice.
    for url in (index_url, find_links):
        if url and url.startswith("http://"):
            src += ["--trusted-host", shlex.quote(urlsplit(url).hostname or "")]
    pins = " ".join(shlex.quote(f"{n}=={v}") for n, v in sorted(versions.items()))
    yield f"{py} -m pip install --quiet --disable-pip-version-check {' '.join(src)} {pins}"


@dataclass
class Role:
    """What one host does in the run: ``skip`` (note says why), ``hub``, or ``peer`` in a wave."""

    kind: str
    note: str = ""
    wave: int = 0
    sender: str | None = None  # peer URL
    serve_from: int | None = None  # first wave in which this host sends


@operation()
def model_fetched(req: FetchRequest, role: Role, fallback_hub: bool = True):
    """
    Fetch the model revision on this host (from the hub or a peer), unless the plan says otherwise.

    + req: the host's FetchRequest
    + role: from the plan (WeightsState facts of all hosts): skip / hub / peer
    + fallback_hub: a peer that is unreachable or serves something else -> fetch from the hub

    Example: see :func:`fetch_weights`.
    """
    if role.kind == "skip":
        host.noop(role.note)
        return
    yield fetch_command(req, role.sender if role.kind == "peer" else None, fallback_hub)


@operation()
def peer_server_up(req: FetchRequest, start: bool, bind: str, port: int, max_s: int, note: str = ""):
    """
    Start ``peer_server.py`` over ``<dest>/current`` as a transient unit and wait until it listens.

    + req: the host's FetchRequest (dest, venv, scripts dir, unit names, the token file)
    + start: False -> no-op with ``note``
    + bind: the address receivers reach this host at (an IP address)
    + port: listen port
    + max_s: RuntimeMaxSec of the unit

    Example: see :func:`fetch_weights`.
    """
    if not start:
        host.noop(note or "not a sender in this wave")
        return
    unit = shlex.quote(req.peer_unit)
    ready = shlex.quote(f"/run/{req.peer_unit}.url")
    argv = " ".join(shlex.quote(a) for a in [
        f"{req.venv}/bin/python", "-u", f"{req.scripts_dir}/peer_server.py", "--model-dir", f"{req.dest}/current",
        "--bind", bind, "--port", str(port), "--token-file", req.peer_token_file,
        "--ready-file", f"/run/{req.peer_unit}.url",
    ])
    yield (f"systemctl stop {unit} 2>/dev/null; systemctl reset-failed {unit} 2>/dev/null; rm -f {ready}; "
           f"systemd-run --unit={unit} --collect --quiet -p RuntimeMaxSec={int(max_s)} -- {argv} && "
           f"i=0; while [ ! -s {ready} ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i+1)); done; "
           f"[ -s {ready} ] || {{ echo \"llmfleet weights: peer server did not start (journalctl -u {req.peer_unit})\" >&2;"
           " exit 1; }")


@operation()
def peer_server_down(req: FetchRequest, in_fanout: bool):
    """
    Stop this host's peer server unit and remove the run's token, on every host of the fan-out.

    + req: the host's FetchRequest
    + in_fanout: whether this host sent or received in the run's fan-out

    Example: see :func:`fetch_weights`.
    """
    if not in_fanout:
        host.noop("not part of this run's fan-out")
        return
    yield (f"systemctl stop {shlex.quote(req.peer_unit)} 2>/dev/null; "
           f"rm -f {shlex.quote(f'/run/{req.peer_unit}.url')} {shlex.quote(req.peer_token_file)}; true")


# ---------------------------------------------------------------------------------------------
# the plan over all hosts (plan time, once per run)
# ---------------------------------------------------------------------------------------------
@dataclass
class FleetPlan:
    """Roles of every host and the number of peer waves (the same for all hosts); with waves, the
    run's random fan-out token (left out of the repr)."""

    roles: dict[str, Role] = field(default_factory=dict)
    waves: int = 0
    hub_seeds: list[str] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)  # host -> its peer server's URL
    token: str = field(default="", repr=False)


def plan_fleet(
    hosts: list[str],
    states: dict[str, dict[str, Any]],
    requests: dict[str, FetchRequest],
    *,
    fanout: bool,
    width: int = 1,
    groups: dict[str, str | None] | None = None,
    cache_host: str | None = None,
    peer_urls: dict[str, str] | None = None,
) -> FleetPlan:
    """Decide who fetches from where. Pure: hosts, their WeightsState facts and requests in, roles out.

    + hosts: host names in inventory order
    + states: host -> WeightsState fact
    + requests: host -> FetchRequest
    + fanout: False -> every host not yet holding the revision fetches from the hub
    + width: receivers per sender per wave
    + groups: host -> fan-out group (one hub copy per group); None/missing = one group
    + cache_host: the only hub seed when set
    + peer_urls: host -> ``http://addr:port`` of its peer server

    Example::

        plan_fleet(["a", "b"], {"a": {}, "b": {}}, reqs, fanout=True, peer_urls=urls).roles["b"].kind == "peer"
    """
    plan = FleetPlan(urls=dict(peer_urls or {}))
    holders = [h for h in hosts if requests[h].matches(states.get(h) or {})]
    pending = [h for h in hosts if h not in holders]
    for h in holders:
        plan.roles[h] = Role("skip", f"{requests[h].dest}/current holds {requests[h].repo}@{requests[h].revision} "
                                     "(manifest and sizes match)")
    if not fanout:
        for h in pending:
            plan.roles[h] = Role("hub")
        plan.hub_seeds = pending
        return plan
    if cache_host is not None and cache_host not in hosts:
        raise ValueError(f"weights_cache_host: {cache_host!r} is not among this run's hosts ({', '.join(hosts)})")
    groups = groups or {}
    peer_urls = peer_urls or {}
    if cache_host is not None:
        buckets = {None: hosts}
    else:
        buckets: dict[str | None, list[str]] = {}
        for h in hosts:
            buckets.setdefault(groups.get(h), []).append(h)
    waves: list[dict[str, str]] = []
    for members in buckets.values():
        have = [h for h in members if h in holders]
        todo = [h for h in members if h in pending]
        if not todo:
            continue
        if not have:
            seed = cache_host if cache_host is not None and cache_host in todo else todo[0]
            plan.hub_seeds.append(seed)
            plan.roles[seed] = Role("hub")
            have = [seed]
            todo = [h for h in todo if h != seed]
        for i, wave in enumerate(plan_waves(todo, have, width)):
            if len(waves) <= i:
                waves.append({})
            waves[i].update(wave)
    first_send: dict[str, int] = {}
    plan.token = secrets.token_urlsafe(32) if waves else ""
    for k, wave in enumerate(waves, start=1):
        for receiver, sender in wave.items():
            plan.roles[receiver] = Role("peer", wave=k, sender=peer_urls.get(sender, f"http://{sender}:8765"),
                                        note=f"from {sender}")
            first_send.setdefault(sender, k)
    for h, k in first_send.items():
        plan.roles[h].serve_from = k
    plan.waves = len(waves)
    return plan


_PLANS: dict[tuple, Any] = {}  # key -> FleetPlan, or the gevent AsyncResult of a plan being made


def validate(data: Any) -> None:
    """ValueError ``"<key>: ..."`` for a weights setting that cannot work; ``tasks.bad_input`` runs it
    for every host before any is touched.

    + data: host data over DEFAULTS, read as attributes
    """
    keep = data.weights_prune_keep
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"weights_prune_keep: {keep!r}; allowed: an integer >= 1 (the current revision "
                         "counts) or None (never prune)")
    width = data.weights_fanout_width
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"weights_fanout_width: {width!r}; allowed: an integer >= 1")


def _request_for(spec: Any, data: Any) -> FetchRequest:
    m = spec.model
    endpoint = data.weights_hf_endpoint if m.hub == "huggingface" else data.weights_modelscope_endpoint
    token_file = None
    if data.weights_token_secret:
        local_secret(data.weights_token_secret, "weights_token_secret")  # fails early, names the field
        token_file = f"{str(data.weights_secrets_dir).rstrip('/')}/{data.weights_token_secret}"
    validate(data)
    keep = data.weights_prune_keep
    return FetchRequest(
        hub=m.hub, repo=m.repo_id, revision=m.revision, dest=model_dest(spec, data),
        allow=tuple(m.allow_patterns or ()), ignore=tuple(m.ignore_patterns or ()),
        endpoint=endpoint or None, token_file=token_file, deep_verify=bool(data.weights_deep_verify),
        prune_keep=keep, max_workers=int(data.weights_max_workers),
        venv=data.weights_venv, scripts_dir=data.weights_scripts_dir,
    )


class _DataWithDefaults:
    """Another host's data with this capability's defaults under it (``@deploy`` data_defaults apply
    to the host being planned only)."""

    def __init__(self, h: Any) -> None:
        self._h = h

    def __getattr__(self, key: str) -> Any:
        value = self._h.data.get(key)
        return DEFAULTS.get(key) if value is None else value

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key)
        return default if value is None else value


#: Settings that shape the whole fan-out: every host of a run must say the same.
FLEET_KEYS = ("weights_fanout", "weights_fanout_width", "weights_cache_host")


def fleet_hosts() -> list[Any]:
    """This run's weights hosts in inventory order: the active ones, gateways aside (they serve no model)."""
    from tasks.gateway import is_gateway

    return [h for h in state.inventory if h in state.active_hosts and not is_gateway(h)]


def fleet_settings(datas: dict[str, Any]) -> dict[str, Any]:
    """``FLEET_KEYS`` of every weights host (host name -> data with ``.get``), checked to agree.

    Raises SpecError naming two hosts and their values where they differ.
    """
    from tasks.settings import agreed

    return {key: agreed(key, {name: d.get(key, DEFAULTS[key]) for name, d in datas.items()},
                        "every host of a weights fan-out") for key in FLEET_KEYS}


def fleet_plan(spec: Any) -> FleetPlan:
    """Gather every weights host's WeightsState in parallel (once per run and model), then plan."""
    hosts = fleet_hosts()
    key = (id(state), spec.model.repo_id, spec.model.revision, tuple(h.name for h in hosts))
    return once_per_run(_PLANS, key, lambda: _fleet_plan(spec, hosts))


def peer_address(h: Any, data: Any) -> str:
    """The IP address other hosts reach ``h``'s peer server at, which it binds (never every interface):
    ``weights_peer_address``, else ``ssh_hostname``, else the host name, resolved here on the control
    machine (the host itself may map its own name to 127.0.1.1)."""
    name = str(data.weights_peer_address or h.data.get("ssh_hostname") or h.name)
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        return socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)[0][4][0]
    except (OSError, IndexError):
        raise ValueError(f"{h.name}: weights_peer_address: {name!r} does not resolve on the control machine; "
                         "set it to the address other hosts reach this host at (weights_fanout)") from None


def _fleet_plan(spec: Any, hosts: list[Any]) -> FleetPlan:
    data = {h.name: _DataWithDefaults(h) for h in hosts}
    requests = {h.name: _request_for(spec, data[h.name]) for h in hosts}
    states = read_fleet(hosts, WeightsState,
                        lambda h: {"dest": requests[h.name].dest, "deep": requests[h.name].deep_verify})
    fleet = fleet_settings(data)  # validate_fleet checked them before any host was touched
    fanout = bool(fleet["weights_fanout"])
    urls = {}
    if fanout:
        for h in hosts:
            addr = peer_address(h, data[h.name])
            addr = f"[{addr}]" if ":" in addr else addr
            urls[h.name] = f"http://{addr}:{int(data[h.name].weights_peer_port)}"
    plan = plan_fleet(
        [h.name for h in hosts], states, requests, fanout=fanout,
        width=int(fleet["weights_fanout_width"]), groups={h.name: data[h.name].weights_fanout_group for h in hosts},
        cache_host=fleet["weights_cache_host"], peer_urls=urls,
    )
    return plan


# ---------------------------------------------------------------------------------------------
# the deploy
# ---------------------------------------------------------------------------------------------
@deploy("Weights", data_defaults=DEFAULTS)
def fetch_weights(spec: Any) -> Any:
    """
    Put ``spec.model`` (hub, repo_id, revision, allow/ignore patterns) on the host, verified, under
    ``<weights_root>/<owner>--<name>/current``; with ``weights_fanout`` copies spread host to host.

    + spec: a ``tasks.spec.ServingSpec`` (only ``.model`` is read)

    Returns a :class:`WeightsResult`: ``dest``/``current`` paths and ``did_change`` (True when any
    fetch operation changed the host), e.g. ``_if=result.did_change`` on the service restart.

    Example:

    .. code:: python

        from tasks.spec import load_spec
        from tasks.weights.deploy import fetch_weights

        spec = load_spec("qwen30b", host.data.dict())
        fetch_weights(spec)
    """
    data = host.data
    req = _request_for(spec, data)
    plan = fleet_plan(spec)
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
    port, max_s = int(data.weights_peer_port), int(data.weights_peer_max_s)
    hub_role = role if role.kind in ("hub", "skip") else Role("skip", f"copies from a peer in wave {role.wave}")
    ops = [model_fetched(name="Fetch from hub", req=req, role=hub_role, fallback_hub=False)]
    in_fanout = role.serve_from is not None or role.kind == "peer"
    if plan.waves and in_fanout:
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
    if plan.waves:
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
