"""Rolling upgrade of a served model across its replicas, with a verification gate per host,
automatic rollback, and drain/undrain on the fleet's gateways. ``deploy_model`` always takes this
path: a fleet whose service changes restarts in batches; a replica whose service is converged is in
no batch and gets no service operation.

Order of a run (pyinfra runs each operation on all hosts, then the next):

0. planning, once per run (:func:`plan_for`): every replica's service is read in one parallel
   pass (``ServiceVersion``: running image, unit state, rollback point, and the digests of the
   files ``tasks.service.serve`` writes) and compared with what this run would write
   (``tasks.service.pending``). Only replicas with a difference are batched; a no-op run of a
   converged fleet has no batch, so no barrier and no host waiting on another.

1. staging, all replicas in parallel: preflight, runtime, *rollback point*, weights, image. The
   new image is pulled and the new weights downloaded while the old container serves, so a host
   is down only for its restart. (The weights task switches ``<model_dir>/current`` when its
   download is verified; the running container keeps the directory it mounted at start.)
2. per batch ``b`` of replicas (``rollout_batch_size`` hosts, at most ``rollout_max_unavailable``):
   gateways drain the batch's hosts whose service will restart -> the batch writes its unit and
   restarts (``tasks.service.serve``) -> *gate*: the endpoint probe (``tasks/probe``) ->
   on failure: *roll back* (previous unit, env file, chat templates, verification config,
   ``current`` link; restart), verify again, record and fail the host -> gateways put the batch
   back: hosts that passed their gate, and a rolled-back host whose old version verified again.
3. hosts whose batch never ran (the rollout stopped) get their ``current`` link put back to the
   rollback point, so a later crash-restart of their old unit still finds the old weights.

Batches become pyinfra's operation order through three *barrier* operations per batch that every
host of the run calls from the same lines (same operation hash on all hosts, so the DAG of
``State.get_op_order`` is one chain: begin -> drain -> drained -> restart/gate -> gated -> put back).
This relies on pyinfra's CLI ordering (operation hash from the call site): ``pyinfra INV
deploys/<recipe>.py``. In pyinfra's API mode (``add_deploy``) hashes come from each host's
operation count instead, so hosts with different staging would not meet at the barriers; API
users set ``pyinfra.is_cli = True`` (tests/unit/test_rollout.py does).
Batch ``b``'s operations carry ``_if=plan.opener(b)``: once a host of an earlier batch failed
after the rollout began, no later batch touches anything (the "rollout marker" is pyinfra's own
``state.failed_hosts``, minus hosts that had failed before the first batch, e.g. refused by
preflight or a failed download). The failed host's run fails with a message naming the host,
the batch, the probe's reason, what it was rolled back to, and the hosts left on the old version.

Replicas are the hosts outside the gateway group that run the recipe; they must agree on
``served_model_name`` (one gateway endpoint) but may differ in service name and port (several
replicas on one machine, as the 8-replica benchmark does); gateway files are named after the
first replica's service name.

Rollback point: ``<service_etc_dir>/<name>.previous/`` (0750 root) holds ``unit``, ``env``
(0600), ``templates/``, ``verify.json`` and ``state.json`` (image the container ran, ``current``
link target, no secret). It is the *last verified* version: written before staging when the
service is running and the point is missing or stale, and again after a passed gate. A converged
run writes nothing. Each rollout outcome is kept on the host in ``<name>.rollout.json`` and the
gate's probe result in ``<name>.last-verify.json`` (read by ``deploys/status.py``).

Settings (host data, prefix ``rollout_``): ``tasks.settings.rollout.RolloutSettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

import io
import json
import math
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from pyinfra import host, logger
from pyinfra.api import FactBase, FileUploadCommand, FunctionCommand, StringCommand, deploy, operation

from tasks import gateway as gw
from tasks import removal
from tasks.removal import ABSENT
from tasks.converge import FileDigests
from tasks.once import once_per_run, read_fleet
from tasks.service import (IMAGE_LABEL, PROBE_PATH, Desired, Layout, desired, needs_restart,
                           options as service_options, serve)
from tasks.service import pending as service_pending
from tasks.spec import ServingSpec, SpecError, load_spec
from tasks.settings.rollout import RolloutSettings

DEFAULTS: dict[str, Any] = RolloutSettings.defaults()
BATCH_KEYS = ("rollout_enabled", "rollout_batch_size", "rollout_max_unavailable")
UPGRADED, ROLLED_BACK, ROLLBACK_FAILED = "upgraded", "rolled_back", "rollback_failed"


# --- batches (pure) --------------------------------------------------------------------------------


def count_of(value: Any, total: int, key: str) -> int:
    """An integer or a percentage of ``total`` ("25%": rounded up, at least 1) as a host count."""
    text = str(value).strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return max(1, math.ceil(total * pct / 100))
        number = int(text)
        if number < 1 or str(number) != text.lstrip("+"):
            raise ValueError
        return number
    except ValueError:
        raise SpecError(key, f"{value!r}: a whole number >= 1 or a percentage like '25%'") from None


def make_batches(hosts: list[str], batch_size: Any = 1, max_unavailable: Any = None,
                 enabled: bool = True, total: int | None = None) -> list[list[str]]:
    """Replicas (inventory order) in batches: each at most ``batch_size`` and ``max_unavailable``,
    percentages counted on ``total`` replicas (default: ``len(hosts)``)."""
    if not hosts:
        return []
    if not enabled:
        return [list(hosts)]
    total = len(hosts) if total is None else total
    size = count_of(batch_size, total, "rollout_batch_size")
    if max_unavailable is not None:
        size = min(size, count_of(max_unavailable, total, "rollout_max_unavailable"))
    return [list(hosts[i:i + size]) for i in range(0, len(hosts), size)]


def fleet_setting(datas: dict[str, Any], key: str) -> Any:
    """A setting that must be equal on every replica; SpecError naming two hosts that differ."""
    from tasks.settings import agreed

    if not datas:
        return DEFAULTS[key]
    return agreed(key, {name: data.get(key, DEFAULTS[key]) for name, data in datas.items()},
                  "every replica of a rollout")


# --- the plan of one run ----------------------------------------------------------------------------


@dataclass
class Plan:
    """The rollout of one service in one pyinfra run (built once, shared by every host)."""

    name: str
    batches: list[list[str]]
    gateways: list[str]
    model: gw.GatewayModel
    state: Any = None
    #: replica -> its operations whose change restarts the service (unit, env file, templates)
    will_restart: dict[str, tuple] = field(default_factory=dict)
    #: replica -> outcome (UPGRADED, ROLLED_BACK, ROLLBACK_FAILED), set while the run executes
    outcomes: dict[str, str] = field(default_factory=dict)
    pre_failed: set[str] | None = None
    #: replica -> its service as read at plan time (``ServiceVersion``, once per run)
    observed: dict[str, dict] = field(default_factory=dict)
    #: replica -> why its service is not converged (``tasks.service.pending``); [] = nothing to do
    pending: dict[str, list[str]] = field(default_factory=dict)
    #: leaving replica (``serve_state: absent``) -> what of its service is still on it; only those
    #: with something left are drained and cleaned (``tasks.removal``)
    leaving: dict[str, list[str]] = field(default_factory=dict)
    #: the gateways' replicas while the leaving ones drain (``model.replicas`` and the leaving)
    draining_replicas: tuple = ()

    def images_present(self, name: str, image_ref: str) -> dict[str, str] | None:
        """``{image_ref: "running"}`` when the plan's read found replica ``name``'s service active on
        ``image_ref`` (its container was started from the local image: the unit runs ``--pull=never``),
        in the DockerImages fact's form for ``tasks.image.pulled``; None otherwise: the operation
        asks Docker itself."""
        observed = self.observed.get(name) or {}
        if observed.get("live_active") == "active" and observed.get("live_image") == image_ref:
            return {image_ref: "running"}
        return None

    def batch_of(self, name: str) -> int | None:
        for i, batch in enumerate(self.batches):
            if name in batch:
                return i
        return None

    def _failed(self) -> set[str]:
        return {h.name for h in (self.state.failed_hosts if self.state is not None else ())}

    def is_open(self, b: int) -> bool:
        """Whether batch ``b`` may run: no host of an earlier batch failed since the rollout began."""
        failed = self._failed()
        if self.pre_failed is None:
            self.pre_failed = set(failed)
        earlier = {h for batch in self.batches[:b] for h in batch}
        return not ((failed - self.pre_failed) & earlier)

    def opener(self, b: int) -> Callable[[], bool]:
        return lambda: self.is_open(b)

    def skipped(self, name: str) -> Callable[[], bool]:
        """True (when executing) for a replica whose batch did not run because the rollout stopped."""

        def check() -> bool:
            b = self.batch_of(name)
            return b is not None and not self.is_open(b)

        return check

    def to_drain(self, b: int) -> Callable[[], list[str]]:
        def select() -> list[str]:
            executing = self.state is not None and self.state.is_executing
            failed = self._failed() if executing else set()
            chosen = [h for h in self.batches[b] if h not in failed and self.restarts(h, executing)]
            logger.debug(f"rollout {self.name}: batch {b + 1} drains {chosen}")
            return chosen

        return select

    def restarts(self, name: str, executing: bool) -> bool:
        """Whether a replica's service will restart: its unit, env file or templates will change.

        While executing, the replica's own operations are asked (``will_change`` runs their
        bodies in the replica's context: ``pyinfra -y`` does not detect changes at plan time).
        """
        metas = self.will_restart.get(name)
        if metas is None:
            return True
        known = [m._maybe_is_change for m in metas]
        if not executing:
            return any(k is not False for k in known)
        from pyinfra.context import ctx_host

        replica = self.state.inventory.get_host(name)
        with ctx_host.use(replica):
            return any(m.will_change for m in metas)

    def to_restore(self, b: int) -> Callable[[], list[str]]:
        """Hosts of batch ``b`` to put back: passed their gate, rolled back and verified, or did not
        restart. A host that failed otherwise (or whose rollback failed) stays drained."""

        def select() -> list[str]:
            if self.state is None or not self.state.is_executing:
                return list(self.batches[b])
            failed = self._failed()
            return [h for h in self.batches[b]
                    if self.outcomes.get(h) in (UPGRADED, ROLLED_BACK)
                    or (h not in self.outcomes and h not in failed)]

        return select

    def later_hosts(self, b: int) -> list[str]:
        return [h for batch in self.batches[b + 1:] for h in batch]


_PLANS: dict[tuple[int, str], Plan] = {}


def _recipe_key(recipe: Any) -> str:
    return recipe if isinstance(recipe, str) else f"{recipe.__module__}.{recipe.__qualname__}"


def plan_for(recipe: Any, specs: dict[str, ServingSpec]) -> Plan:
    """The run's plan for ``recipe`` (once per pyinfra state): every active replica's service read
    in one parallel pass, batches of the replicas whose service is not converged, the active
    gateways, and the model's upstream from every replica in the inventory.

    A replica whose unit, env file, chat templates, verification config and probe match what
    this run would write, whose unit is active and enabled and whose container runs the unit's
    image is in no batch: it gets no operation (a no-op run of a converged fleet restarts nothing
    and waits on no barrier). Batch sizes are counted on all the replicas (``"25%"`` of the fleet).

    + recipe: what ``deploy_model`` got
    + specs: ``validate_fleet(recipe)``: active replica -> spec
    """
    from pyinfra.context import ctx_host

    state = ctx_host.get().state
    key = (id(state), _recipe_key(recipe))
    return once_per_run(_PLANS, key, lambda: _make_plan(state, recipe, specs))


def _make_plan(state: Any, recipe: Any, specs: dict[str, ServingSpec]) -> Plan:
    from tasks.model import recipe_of

    active = {h.name for h in state.inventory.get_active_hosts()}
    replicas, leaving_replicas, names, served = [], [], set(), None  # names: served model names (one endpoint)
    for h in state.inventory:
        if gw.is_gateway(h):
            continue
        spec = specs.get(h.name)
        if spec is None:
            data = h.data.dict()
            try:
                spec = load_spec(recipe_of(recipe, data), data)
            except SpecError as exc:
                logger.warning(f"rollout: {h.name} left out of the gateway upstream: {exc}")
                continue
        replica = gw.Replica(h.name, gw.replica_address(h.data, h.name), int(spec.port))
        if spec.state == ABSENT:
            leaving_replicas.append(replica)
            continue
        names.add(str(spec.served_model_name))
        served = served or spec
        replicas.append(replica)
    if len(names) > 1:
        raise SpecError("served_model_name", f"replicas of one rollout serve different models: "
                        f"{', '.join(sorted(names))}")
    everyone = [h for h in state.inventory if h.name in specs and h.name in active]
    hosts = [h for h in everyone if specs[h.name].state != ABSENT]
    ordered = [h.name for h in hosts]
    datas = {h.name: h.data for h in hosts}
    batch_opts = {k: fleet_setting(datas, k) for k in BATCH_KEYS}
    gateways = [h.name for h in state.inventory if gw.is_gateway(h) and h.name in active]
    if served is None:
        if gateways or not specs:
            raise SpecError("serve_state" if specs else "inventory",
                            "no replica serves this recipe" + (f" while gateways ({', '.join(gateways)}) route to it: "
                                                               "keep one replica, or leave the gateways out of this "
                                                               "run (--limit)" if gateways else ""))
        served = next(iter(specs.values()))

    # Every replica's service, read in parallel: what it runs, its rollback point, its files; for a
    # leaving replica, which of its service's paths are still there.
    wants = {h.name: desired_service(specs[h.name], h.data) for h in everyone}
    observed = read_fleet(everyone, ServiceVersion, lambda h: {
        "paths": (wants[h.name][0].paths() if specs[h.name].state != ABSENT
                  else removal.leaving_paths(*wants[h.name])), **fact_args(wants[h.name][1])})
    leaving = {h.name: left for h in everyone if specs[h.name].state == ABSENT
               for left in [removal.leftovers(observed[h.name], removal.leaving_paths(*wants[h.name]))] if left}
    pending = {name: service_pending(wants[name][0], observed[name]) for name in ordered}
    to_roll = [name for name in ordered if pending[name]]
    batches = make_batches(to_roll, batch_opts["rollout_batch_size"], batch_opts["rollout_max_unavailable"],
                           bool(batch_opts["rollout_enabled"]), total=len(ordered))
    port = None
    for h in state.inventory:
        if h.name in gateways:
            port = h.data.get("gateway_port") or port
    model = gw.GatewayModel(name=str(served.name), served_model_name=str(served.served_model_name),
                            listen_port=int(port or served.port), replicas=tuple(replicas),
                            api_key_secret=served.api_key_secret)
    plan = Plan(name=str(served.name), batches=batches, gateways=gateways, model=model, state=state,
                observed=observed, pending=pending, leaving=leaving,
                draining_replicas=(*replicas, *(r for r in leaving_replicas if r.host in leaving)))
    converged = [n for n in ordered if not pending[n]]
    text = "; ".join(f"{i + 1}: {', '.join(b)}" for i, b in enumerate(batches)) or "none"
    logger.info(f"rollout {plan.name}: {len(batches)} batch(es) [{text}]"
                + (f"; converged, left alone: {', '.join(converged)}" if converged else "")
                + (f"; removing: {', '.join(leaving)}" if leaving else "")
                + (f"; gateways {', '.join(gateways)}" if gateways else "; no gateway"))
    return plan


def desired_service(spec: ServingSpec, data: Any) -> tuple[Desired, Paths]:
    """A replica's desired service and its rollout paths, from its spec and host data alone."""
    from tasks.image_build import image_ref
    from tasks.weights.deploy import model_dest

    model_dir = model_dest(spec, data)
    want = desired(spec, image_ref(spec, data.get("image_pip_index_url")), model_dir, data)
    return want, Paths.of(want.layout, model_dir)


# --- facts ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    """Host paths a rollout reads and writes for one service."""

    unit_name: str
    unit_file: str
    env_file: str
    template_dir: str
    verify_config: str
    previous: str
    last_verify: str
    record: str
    model_dir: str

    @classmethod
    def of(cls, layout: Layout, model_dir: str) -> "Paths":
        base = f"{layout.etc_dir}/{layout.name}"
        return cls(unit_name=f"{layout.unit}.service", unit_file=f"/etc/systemd/system/{layout.unit}.service",
                   env_file=layout.env_file, template_dir=layout.template_dir,
                   verify_config=layout.verify_config, previous=f"{base}.previous",
                   last_verify=f"{base}.last-verify.json", record=f"{base}.rollout.json",
                   model_dir=model_dir.rstrip("/"))


class ServiceVersion(FactBase):
    """
    The running version of a service, its rollback point and (with ``paths``) its files, in one
    round trip: ``live_unit`` (sha256 of the unit file), ``live_active`` (ActiveState),
    ``live_weights`` (target of ``<model_dir>/current``), ``live_image`` (the image the running
    ``docker run`` was started with), ``live_label`` (the unit's weights label), ``saved_unit``
    (sha256 of the kept unit), ``saved`` (the kept ``state.json``, a dict), ``unit``
    (``systemctl show`` ActiveState, UnitFileState, NeedDaemonReload) and ``files``
    (``FileDigests`` of ``paths``).

    ``live_image`` comes from the service's main process, the ``docker run`` that systemd started
    (``Type=exec``, attached to its container): its ``org.llmfleet.image`` label argument, read
    from ``/proc/<MainPID>/cmdline``. That is what the running container was started from, read
    without starting the docker CLI (~35 ms of host CPU, the largest part of a no-op's check).
    """

    default = dict

    def command(self, unit_file: str, unit_name: str, model_dir: str, previous: str,
                paths: Sequence[str] = ()) -> str:
        u, d, m = shlex.quote(unit_file), shlex.quote(previous), shlex.quote(f"{model_dir.rstrip('/')}/current")
        digested = [unit_file, f"{previous}/unit", *[p for p in paths if p != unit_file]]
        # Few processes (the digests of every path take two): this runs on every host every run.
        return (
            f"echo {shlex.quote('@unit_file=' + unit_file)}; echo {shlex.quote('@saved_unit=' + previous + '/unit')}; "
            f"{FileDigests().command(digested)}; "
            f"s=$(systemctl show -p ActiveState -p UnitFileState -p NeedDaemonReload -p MainPID "
            f"{shlex.quote(unit_name)} 2>/dev/null); echo \"$s\"; pid=${{s##*MainPID=}}; pid=${{pid%%[!0-9]*}}; "
            f"if [ \"${{pid:-0}}\" != 0 ] && [ -r /proc/$pid/cmdline ]; then "
            f"tr '\\0' '\\n' < /proc/$pid/cmdline | grep -m 1 '^{_IMAGE_ARG}='; fi; "
            f"if [ -L {m} ]; then echo \"live_weights=$(readlink {m})\"; fi; "
            f"if [ -f {u} ]; then echo \"live_label=$(grep -o -m 1 'org.llmfleet.weights=[^ ]*' {u})\"; fi; "
            f"if [ -f {d}/state.json ]; then IFS= read -r saved < {d}/state.json; echo \"saved=$saved\"; fi; true"
        )

    def process(self, output):
        files = FileDigests().process(output)
        out: dict[str, Any] = {"unit": {}, "files": files}
        marks: dict[str, str] = {}
        for line in output:
            key, sep, value = line.partition("=")
            if not sep or "\t" in line:
                continue
            value = value.strip()
            if key in ("@unit_file", "@saved_unit"):
                marks[key] = value
            elif key in UNIT_PROPERTIES:
                out["unit"][key] = value
            elif key == "saved":
                try:
                    out[key] = json.loads(value)
                except ValueError:
                    out[key] = {}
            elif key == "live_label" and value:
                out[key] = value.partition("=")[2] or None
            elif key == "live_weights" and value:
                out[key] = value
            elif key == IMAGE_LABEL and value:
                out["live_image"] = value
        for mark, key in (("@unit_file", "live_unit"), ("@saved_unit", "saved_unit")):
            digest = (files.get(marks.get(mark, "")) or {}).get("sha256")
            if digest:
                out[key] = digest
        if out["unit"].get("ActiveState"):
            out["live_active"] = out["unit"]["ActiveState"]
        return out


UNIT_PROPERTIES = ("ActiveState", "UnitFileState", "NeedDaemonReload")
_IMAGE_ARG = IMAGE_LABEL.replace(".", "\\.")  # a grep pattern


# --- operations -------------------------------------------------------------------------------------


def fact_args(p: Paths) -> dict[str, str]:
    """``ServiceVersion`` arguments for a service's paths."""
    return {"unit_file": p.unit_file, "unit_name": p.unit_name, "model_dir": p.model_dir, "previous": p.previous}


def _fact(p: Paths) -> dict:
    return host.get_fact(ServiceVersion, **fact_args(p))


def point_is_current(v: dict) -> bool:
    """Whether the rollback point is the running version (unit, weights link and image)."""
    saved = v.get("saved") or {}
    return (v.get("saved_unit") == v.get("live_unit") and saved.get("weights") == v.get("live_weights")
            and saved.get("image") == v.get("live_image"))


def _save_script(p: Paths, v: dict) -> str:
    q = shlex.quote
    state = json.dumps({"image": v.get("live_image"), "weights": v.get("live_weights"), "model_dir": p.model_dir,
                        "unit_sha256": v.get("live_unit"), "saved_at": int(time.time())}, sort_keys=True)
    d, t = q(p.previous), q(p.previous + ".new")
    return (
        f"set -e; rm -rf {t}; install -d -m 750 -o root -g root {t}; cp -p {q(p.unit_file)} {t}/unit; "
        f"if [ -f {q(p.env_file)} ]; then cp -p {q(p.env_file)} {t}/env; chmod 600 {t}/env; fi; "
        f"if [ -d {q(p.template_dir)} ]; then cp -a {q(p.template_dir)} {t}/templates; fi; "
        f"if [ -f {q(p.verify_config)} ]; then cp -p {q(p.verify_config)} {t}/verify.json; fi; "
        f"printf '%s\\n' {q(state)} > {t}/state.json; "
        f"rm -rf {d}.old; if [ -d {d} ]; then mv {d} {d}.old; fi; mv {t} {d}; rm -rf {d}.old"
    )


@operation()
def rollback_point(paths: Paths):
    """
    Keep the running, verified version of a service as its rollback point
    (``<etc>/<name>.previous/``): unit, env file, chat templates, verification config, image and
    weights link. Nothing to do when no service runs, or when the point is already this version.

    + paths: ``Paths.of(layout, model_dir)``

    Example:

    .. code:: python

        rollback_point(paths=Paths.of(Layout.of(spec, service.options(host.data)), model_dir))
    """
    v = _fact(paths)
    why_not = point_unneeded(paths, v)
    if why_not:
        host.noop(why_not)
        return
    yield _save_script(paths, v)


def point_unneeded(paths: Paths, v: dict) -> str | None:
    """Why no rollback point is to be written for ``ServiceVersion`` ``v`` (None: write one)."""
    if not v.get("live_unit"):
        return f"{paths.unit_name}: not installed yet, no rollback point"
    if v.get("live_active") != "active" or not v.get("live_image"):
        return f"{paths.unit_name} is {v.get('live_active') or 'unknown'}: rollback point left as it is"
    if point_is_current(v):
        return f"{paths.unit_name}: rollback point is the running version ({v.get('live_image')})"
    return None


def _restore_script(p: Paths, saved: dict) -> str:
    q = shlex.quote
    d = q(p.previous)
    link = ""
    if saved.get("weights"):
        cur = q(f"{p.model_dir}/current")
        link = f"ln -sfn {q(saved['weights'])} {cur}.rollback && mv -Tf {cur}.rollback {cur}; "
    return (
        f"set -e; cp -p {d}/unit {q(p.unit_file)}; "
        f"if [ -f {d}/env ]; then cp -p {d}/env {q(p.env_file)}; else rm -f {q(p.env_file)}; fi; "
        f"rm -rf {q(p.template_dir)}; if [ -d {d}/templates ]; then cp -a {d}/templates {q(p.template_dir)}; fi; "
        f"if [ -f {d}/verify.json ]; then cp -p {d}/verify.json {q(p.verify_config)}; fi; {link}"
        f"systemctl daemon-reload; systemctl reset-failed {q(p.unit_name)} 2>/dev/null || true; "
        f"systemctl restart {q(p.unit_name)}"
    )


@operation(is_idempotent=False)
def rolled_back(paths: Paths):
    """
    Put a service back to its rollback point (unit, env file, templates, verification config,
    ``current`` link) and restart it. Without a rollback point (a first install failed its gate)
    the service is stopped: there is no older version to serve.

    + paths: ``Paths.of(layout, model_dir)``

    Example:

    .. code:: python

        rolled_back(paths=paths, _if=gate.did_error)
    """
    v = _fact(paths)
    if not v.get("saved_unit"):
        yield (f"systemctl stop {shlex.quote(paths.unit_name)}; echo 'llmfleet rollout: no rollback point for "
               f"{paths.unit_name}: stopped it' >&2")
        return
    yield _restore_script(paths, v.get("saved") or {})


@operation(is_idempotent=False)
def gate(paths: Paths, wait_s: int | None = None):
    """
    The verification gate: the endpoint probe for the service, its JSON result kept in
    ``<etc>/<name>.last-verify.json``; fails unless every check passed.

    + paths: ``Paths.of(layout, model_dir)``
    + wait_s: seconds to wait for /health (default: the recipe's start-up budget)

    Example:

    .. code:: python

        gate(paths=paths, _if=served.started, _ignore_errors=True)
    """
    q = shlex.quote
    wait = f" --wait {int(wait_s)}" if wait_s is not None else ""
    r = q(paths.last_verify)
    yield (f"python3 {q(PROBE_PATH)} --config {q(paths.verify_config)}{wait} > {r}.tmp; rc=$?; "
           f"chmod 644 {r}.tmp; mv -f {r}.tmp {r}; cat {r}; exit $rc")


def probe_error(meta: Any) -> str:
    """The probe's reason from a gate's output (its JSON line), else its last line."""
    try:
        lines = list(meta.stdout_lines) + list(meta.stderr_lines)
    except RuntimeError:
        return "not run"
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{"):
            try:
                return str(json.loads(line).get("error") or "failed")
            except ValueError:
                continue
    return lines[-1].strip() if lines else "failed"


def _register(state, host, key, name, outcome):  # noqa: ARG001 - pyinfra passes state and host
    plan = next((p for k, p in _PLANS.items() if k[0] == key[0] and p.name == key[1]), None)
    if plan is not None:
        plan.outcomes[name] = outcome
    return True


@operation(is_idempotent=False)
def finished(paths: Paths, plan_key: tuple, batch: str, later: list[str], image: str,
             checked: Any, again: Any, changed: str = ""):
    """
    Record a replica's rollout outcome (on the host: ``<etc>/<name>.rollout.json``; in the run:
    for the gateway's put-back) and, when the gate failed, fail the host with the reason.

    Passed: the running version becomes the rollback point. Failed: ``rolled_back`` when the old
    version verified again, else ``rollback_failed``.

    + paths: ``Paths.of(layout, model_dir)``
    + plan_key: ``(id(state), service name)``
    + batch: "2/3"
    + later: replicas of later batches (left on the old version when this host fails)
    + image: the image this rollout brought
    + checked: the gate's ``OperationMeta``
    + again: the re-verification's ``OperationMeta``
    + changed: what this run changed on the replica (:func:`what_changed`), named when it fails

    Example:

    .. code:: python

        finished(paths=paths, plan_key=key, batch="1/3", later=["h2", "h3"], image=ref,
                 checked=first, again=second, _if=served.started)
    """
    from pyinfra.context import ctx_state

    if not ctx_state.get().is_executing:
        # Planning: the outcome is only known once the gate ran.
        yield StringCommand("true")
        return
    v = _fact(paths)
    if checked.did_succeed():
        outcome, reason = UPGRADED, ""
    else:
        reason = probe_error(checked)
        outcome = ROLLED_BACK if again.did_succeed() and again.executed else ROLLBACK_FAILED
    record = {"outcome": outcome, "batch": batch, "image": image, "reason": reason, "at": int(time.time()),
              "running_image": v.get("live_image"), "weights": v.get("live_weights")}
    yield FunctionCommand(_register, (plan_key, host.name, outcome), {})
    if outcome == UPGRADED and not point_is_current(v) and v.get("live_active") == "active":
        yield _save_script(paths, v)
    yield FileUploadCommand(io.BytesIO((json.dumps(record, sort_keys=True) + "\n").encode()), paths.record)
    if outcome != UPGRADED:
        left = f"; not upgraded (still on the old version): {', '.join(later)}" if later else ""
        back = (f"rolled back to {v.get('live_image')} and verified again" if outcome == ROLLED_BACK
                else "rollback did not verify: the host stays drained")
        message = (f"llmfleet rollout of {plan_key[1]} stopped at {host.name} (batch {batch}): its change "
                   f"({changed or 'image ' + image}) failed its verification: {reason}; {back}{left}")
        yield f"echo {shlex.quote(message)} >&2; exit 1"


@operation()
def weights_held(paths: Paths):
    """
    Put ``<model_dir>/current`` back to the rollback point's target (a replica the rollout did not
    reach keeps serving, and restarting, the old weights).

    + paths: ``Paths.of(layout, model_dir)``

    Example:

    .. code:: python

        weights_held(paths=paths, _if=plan.skipped(host.name))
    """
    v = _fact(paths)
    target = (v.get("saved") or {}).get("weights")
    if not target or target == v.get("live_weights"):
        host.noop(f"{paths.model_dir}/current is the running version's")
        return
    cur = shlex.quote(f"{paths.model_dir}/current")
    yield f"ln -sfn {shlex.quote(target)} {cur}.rollback && mv -Tf {cur}.rollback {cur}"


@operation()
def barrier(label: str):
    """
    A point every host of the run passes at the same time: orders the batches (no command).

    + label: what the point separates

    Example:

    .. code:: python

        barrier(label="qwen30b batch 1/3 (h1): begin")
    """
    host.noop(label)
    yield from ()


# --- the deploy ---------------------------------------------------------------------------------------


def _replica_ops(plan: Plan, b: int, spec: ServingSpec, image_ref: str, model_dir: str) -> None:
    n = len(plan.batches)
    layout = Layout.of(spec, service_options(host.data))
    paths = Paths.of(layout, model_dir)
    live = plan.observed.get(host.name) or {}  # read at plan time by plan_for
    reasons = plan.pending.get(host.name) or []
    logger.info(f"{host.print_prefix}rollout {spec.name}: {'; '.join(reasons)}")
    served = serve(spec, image_ref, model_dir, restart=needs_restart(reasons))
    logger.info(f"{host.print_prefix}{upgrade_summary(spec, image_ref, live, served.unit, f'{b + 1}/{n}')}")
    inputs = tuple(getattr(served, "changes", ()) or (served.unit,))
    plan.will_restart[host.name] = inputs
    wait = host.data.get("rollout_gate_wait_s", DEFAULTS["rollout_gate_wait_s"])
    name = spec.name
    checked = gate(name=f"{name}: verify endpoint", paths=paths, wait_s=wait, _if=served.started,
                   _ignore_errors=True)
    rolled_back(name=f"{name}: roll back to the previous version", paths=paths, _if=checked.did_error)
    again = gate(name=f"{name}: verify the previous version", paths=paths, wait_s=wait, _if=checked.did_error,
                 _ignore_errors=True)
    finished(name=f"{name}: rollout result", paths=paths, plan_key=(id(plan.state), plan.name),
             batch=f"{b + 1}/{n}", later=plan.later_hosts(b), image=image_ref, checked=checked, again=again,
             changed=what_changed(spec, image_ref, live, reasons, paths), _if=served.started)


def what_changed(spec: ServingSpec, image_ref: str, live: dict, reasons: list[str], paths: Paths) -> str:
    """What a replica's restart brings, from the plan's read of it: the image, the weights, the unit
    and the service's other files; a part that stays is said to stay (a failed gate names these)."""
    wanted = f"{spec.model.repo_id}@{spec.model.revision}"
    if not live.get("live_unit"):
        return f"new service: image {image_ref}, weights {wanted}"
    old_image, old_weights = live.get("live_image"), live.get("live_label")
    parts = [f"image {old_image or '(not running)'} -> {image_ref}" if old_image != image_ref
             else f"image {image_ref} unchanged",
             f"weights {old_weights} -> {wanted}" if old_weights != wanted else f"weights {wanted} unchanged"]
    files = {paths.unit_file: "unit", paths.env_file: "API key env file", paths.verify_config: "verification config"}
    edited = [what for path, what in files.items() if any(r.startswith(path + " ") for r in reasons)]
    if any(r.startswith(paths.template_dir) for r in reasons):
        edited.append("chat templates")
    parts.append(f"{', '.join(edited)} changed" if edited else "unit unchanged")
    return "; ".join(parts)


def upgrade_summary(spec: ServingSpec, image_ref: str, live: dict, unit_op: Any, batch: str) -> str:
    """One line per replica: what its batch would change (image, weights, unit)."""
    wanted = f"{spec.model.repo_id}@{spec.model.revision}"
    parts = []
    if not live.get("live_unit"):
        parts.append(f"new service: image {image_ref}, weights {wanted}")
    else:
        old = live.get("live_image") or "(not running)"
        parts.append(f"image {old} -> {image_ref}" if old != image_ref else f"image {image_ref} unchanged")
        have = live.get("live_label")
        parts.append(f"weights {have} -> {wanted} (fetched before the restart)" if have != wanted
                     else f"weights {wanted} unchanged")
    change = getattr(unit_op, "_maybe_is_change", None)
    parts.append("unit changes: restart" if change else "unit unchanged" if change is False else "unit: decided at run")
    return f"rollout {spec.name} batch {batch}: " + "; ".join(parts)


def rolling(plan: Plan, spec: ServingSpec | None, image_ref: str | None, model_dir: str | None) -> None:
    """
    The rollout part of ``deploy_model``, called by every host of the run from one line (replicas
    with their spec, gateways with None): gateway set-up, then per batch drain -> restart -> gate
    (-> rollback) -> put back, then the weights link of replicas the rollout did not reach. A
    replica in no batch (its service is converged) gets no operation.

    + plan: ``plan_for(recipe, validate_fleet(recipe))``
    + spec, image_ref, model_dir: this replica's (None on a gateway host)

    Example:

    .. code:: python

        rolling(plan, spec, image_ref, model_dir)   # in tasks.model.deploy_model
    """
    me = host.name
    if spec is not None and plan.batch_of(me) is None and me in plan.pending:
        logger.info(f"{host.print_prefix}rollout {spec.name}: service converged (image {image_ref}, "
                    f"weights {spec.model.repo_id}@{spec.model.revision}, unit active): nothing to roll out")
    is_gateway = me in plan.gateways
    gopts = gw.options(host.data)
    gpaths = gw.paths(plan.name, gopts)
    if plan.leaving:  # replicas taken off (serve_state: absent): drained before anything stops
        if is_gateway:
            gw.upstream(name=f"{plan.name}: drain removed replicas", path=gpaths["upstream"], service=plan.name,
                        replicas=list(plan.draining_replicas), opts=gopts, drain=lambda: list(plan.leaving))
        if plan.gateways:
            barrier(name=f"{plan.name}: removed replicas drained", label=f"{plan.name}: removed replicas drained")
    if spec is not None and spec.state == ABSENT:
        if me in plan.leaving:
            paths = desired_service(spec, host.data)[1]
            removal.remove_service(spec.name, paths.unit_name, paths.unit_file, plan.leaving[me])
        else:
            logger.info(f"{host.print_prefix}{spec.name}: absent, nothing of it left on this host")
        return
    if is_gateway:
        gw.gateway(plan.model)
    n = len(plan.batches)
    synced = n > 1 or bool(plan.gateways)
    for b in host.loop(range(n)):
        members = plan.batches[b]
        label = f"{plan.name} batch {b + 1}/{n} ({', '.join(members)})"
        if synced:
            barrier(name=f"{label}: begin", label=f"{label}: begin")
        if is_gateway:
            gw.upstream(name=f"{plan.name}: drain batch {b + 1}/{n}", path=gpaths["upstream"],
                        service=plan.name, replicas=list(plan.model.replicas), opts=gopts, drain=plan.to_drain(b),
                        _if=[plan.opener(b)])
        if synced:
            barrier(name=f"{label}: drained", label=f"{label}: drained")
        if me in members and spec is not None:
            if n > 1:
                def body(plan=plan, b=b):
                    _replica_ops(plan, b, spec, image_ref, model_dir)

                deploy(f"Batch {b + 1}/{n}")(body)(_if=[plan.opener(b)])
            else:
                _replica_ops(plan, b, spec, image_ref, model_dir)
        if synced:
            barrier(name=f"{label}: gated", label=f"{label}: gated")
        if is_gateway:
            gw.upstream(name=f"{plan.name}: put back batch {b + 1}/{n}", path=gpaths["upstream"],
                        service=plan.name, replicas=list(plan.model.replicas), opts=gopts, restore=plan.to_restore(b))
    if spec is not None and n > 1 and plan.batch_of(me) is not None:
        layout = Layout.of(spec, service_options(host.data))
        weights_held(name=f"{spec.name}: weights of a replica the rollout did not reach",
                     paths=Paths.of(layout, model_dir), _if=plan.skipped(me))


def point_kept(plan: Plan, spec: ServingSpec, model_dir: str) -> None:
    """Before staging: keep the running version as the rollback point (``deploy_model`` hook).

    Decided on the plan's read of the service: when the point is already the running version (or
    nothing runs) no operation is added; otherwise ``rollback_point`` reads the host again when it
    runs, as every operation does.
    """
    paths = Paths.of(Layout.of(spec, service_options(host.data)), model_dir)
    why_not = point_unneeded(paths, plan.observed.get(host.name) or {})
    if why_not:
        logger.debug(f"{host.print_prefix}{why_not}")
        return
    rollback_point(name=f"{spec.name}: rollback point (running version)", paths=paths)


__all__ = ["DEFAULTS", "Paths", "Plan", "ServiceVersion", "barrier", "count_of", "finished", "fleet_setting",
           "gate", "make_batches", "plan_for", "point_is_current", "point_kept", "point_unneeded", "probe_error",
           "rollback_point", "rolled_back", "rolling", "weights_held"]
