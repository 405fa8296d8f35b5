"""The served model as a systemd unit: one ``llmfleet-<name>.service`` per recipe, running
``docker run --rm --name llmfleet-<name> ...`` with the spec's command line.

The unit carries everything that defines the running server (image, container options, vLLM
args, the weights' revision as a label), so a change to any of them changes the unit file, and
only that service restarts. The API key never appears in the unit, in argv, in pyinfra output
or in a world-readable file: it goes from a secret file on the control machine
(``<secrets dir>/<api_key_secret>``) into ``/etc/llmfleet/<name>.env`` (root, 0600) through
``tasks.secrets.secret_file``, an operation that shows neither content nor diff and takes no secret
as an argument (``--json`` prints operation arguments); docker reads it with ``--env-file``.

Container options, and why:

- GPUs: ``--gpus '"device=0,1"'`` from ``spec.devices`` (else ``--gpus all``): ``--gpus`` rather
  than ``--runtime nvidia``, which fails with error 803 on drivers 580+. Ascend: each
  ``/dev/davinciN`` of ``spec.devices`` (else 0..tp*pp*dp-1), ``/dev/davinci_manager``,
  ``/dev/devmm_svm``, ``/dev/hisi_hdc`` and the driver files mounted read-only; never
  ``--privileged`` or ``--pid=host``.
- Shared memory: ``--ipc=host`` (``spec.ipc_host``) or ``--shm-size`` (``spec.shm_size``, else
  ``service_shm_size``): tensor parallel workers exchange tensors through /dev/shm and docker's
  64 MB default breaks them.
- ``--ulimit memlock=-1 --ulimit stack=67108864`` (``service_ulimits``): pinned host memory for
  NCCL and CUDA, deep recursion in compilers.
- Weights: ``-v <model_dir>/current:/model:ro``. ``current`` is the weights task's symlink to
  ``revisions/<rev>``; the kernel resolves it when the container starts, so a running server
  never sees files change under it. A weights switch is a new ``model.revision`` in the spec,
  which is in the unit (label ``org.llmfleet.weights``), so it restarts the service after the
  weights task has moved ``current``. (Mounting the resolved ``revisions/<rev>`` path instead
  would copy the weights task's directory naming rule here.)
- Caches on the host, ``/var/cache/llmfleet/<name>`` mounted at ``/llmfleet-cache`` with
  ``HF_HOME``, ``VLLM_CACHE_ROOT`` (torch.compile cache), ``TRITON_CACHE_DIR`` and
  ``TORCHINDUCTOR_CACHE_DIR`` pointing into it: a restart reuses compiled kernels.
- Chat templates (``Rendered.files``): uploaded to ``/etc/llmfleet/templates/<name>/`` and
  mounted read-only where the command line expects them.
- ``-p <port>:<port>``; ``--pull=never``: the image task pulled the pinned image; a unit never
  fetches an image by itself.

- A member of a multi-node replica (``role``, ``tasks.vllm.multinode``): ``--network host`` instead of
  ``-p`` (vLLM's ranks connect on ports picked at run time), the network env from the member's route,
  the rendezvous flags; a headless worker also gets ``<unit>-headwatch.service``
  (``tasks/probe/head_watch.py``), which restarts it when its head goes away. A restart of a member
  first stops every member (one operation on all of them), then starts them: no new member meets an
  old head.

Restart policy: ``Restart=on-failure``, ``RestartSec``, and at most ``StartLimitBurst`` starts per
``StartLimitIntervalSec`` (systemd 252 has no RestartSteps). The start-up budget of a cold start
(``spec.startup_budget_s``) is waited for by the verification, not by systemd (``Type=exec``).

Settings (host data, prefix ``service_``): ``tasks.settings.service.ServiceSettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pyinfra import host
from pyinfra.api import StringCommand, deploy, operation
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from tasks.converge import UnitStates, files_synced, owned_by, unit_removed, units_running, units_stopped
from tasks.facts.planned import declaring, read
from tasks.secrets import env_file_content, local_secret, secret_file
from tasks.spec import ServingSpec, SpecError
from tasks.vllm import cmdline, multinode
from tasks.vllm.cmdline import Rendered
from tasks.settings.service import ServiceSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = REPO_ROOT / "templates"
PROBE_SRC = Path(__file__).resolve().parent / "probe" / "verify_endpoint.py"
PROBE_DIR = "/usr/local/lib/llmfleet"
PROBE_PATH = f"{PROBE_DIR}/verify_endpoint.py"
HEAD_WATCH_SRC = Path(__file__).resolve().parent / "probe" / "head_watch.py"
HEAD_WATCH_PATH = f"{PROBE_DIR}/head_watch.py"
CONTAINER_CACHE = "/llmfleet-cache"
#: The container label that names the image a service's docker run started it from.
IMAGE_LABEL = "org.llmfleet.image"
#: Where each cache lives inside the container's cache mount, by the variable that moves it.
CACHE_ENV = {"HF_HOME": "huggingface", "VLLM_CACHE_ROOT": "vllm", "TRITON_CACHE_DIR": "triton",
             "TORCHINDUCTOR_CACHE_DIR": "torchinductor"}
ASCEND_SHARED_DEVICES = ("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc")
ASCEND_DRIVER_MOUNTS = ("/usr/local/dcmi", "/usr/local/bin/npu-smi", "/usr/local/Ascend/driver/lib64",
                        "/usr/local/Ascend/driver/version.info", "/etc/ascend_install.info")

DEFAULTS: dict[str, Any] = ServiceSettings.defaults()

_SAFE_ARG = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")


def options(data: Any) -> ServiceSettings:
    """The ``service_*`` settings of a host (its Host, HostData or a mapping), validated."""
    return ServiceSettings.of(data)


def unit_name(spec: ServingSpec) -> str:
    """``llmfleet-<name>``: the unit and the container share it."""
    if not spec.name or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", spec.name):
        raise SpecError("name", f"{spec.name!r} cannot name a unit (letters, digits, '.', '_', '-')")
    return f"llmfleet-{spec.name}"


# --- secrets (control machine) ---------------------------------------------------------------


def secret_files(spec: ServingSpec, data: Any) -> dict[str, str]:
    """Environment name -> control-machine secret file for ``spec`` (checked: exists, one line).

    Raises SpecError naming the missing or unusable file; called at plan time, before any host
    is touched.
    """
    if not spec.api_key_secret:
        return {}
    try:
        path = local_secret(spec.api_key_secret, "api_key_secret", data)
    except ValueError as exc:
        raise SpecError("api_key_secret", str(exc).split(": ", 1)[1]) from None
    return {name: str(path) for name in ("VLLM_API_KEY",)}


@declaring(lambda unit, **_: [(UnitStates, {"units": [unit]})])
@operation()
def reset_failed(unit: str):
    """
    Clear a unit's failed state (and its start-limit counter) so it can be started again.

    A unit that hit ``StartLimitBurst`` refuses ``systemctl start`` until the interval passes;
    a deploy that fixes it must not wait that out.

    + unit: the unit name (``llmfleet-qwen30b.service``)

    Example:

    .. code:: python

        reset_failed(unit="llmfleet-qwen30b.service")
    """
    # The read units_running makes of the same unit: one value for both (tasks.facts.planned).
    if read(UnitStates, units=[unit]).get(unit, {}).get("ActiveState") != "failed":
        host.noop(f"{unit} is not failed")
        return
    yield StringCommand("systemctl", "reset-failed", unit)


# --- the unit ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Host paths of one service."""

    name: str
    unit: str
    cache_dir: str
    etc_dir: str
    env_file: str
    template_dir: str
    verify_config: str

    @classmethod
    def of(cls, spec: ServingSpec, opts: ServiceSettings) -> "Layout":
        unit = unit_name(spec)
        etc = opts.service_etc_dir.rstrip("/")
        return cls(name=str(spec.name), unit=unit,
                   cache_dir=f"{opts.service_cache_root.rstrip('/')}/{spec.name}",
                   etc_dir=etc, env_file=f"{etc}/{spec.name}.env",
                   template_dir=f"{etc}/templates/{spec.name}", verify_config=f"{etc}/{spec.name}.verify.json")


def accelerator_options(spec: ServingSpec) -> list[list[str]]:
    """Docker options giving the container its GPUs or NPUs (grouped per line of the unit); none on CPU."""
    if spec.accelerator == "cpu":
        return []
    if spec.accelerator == "nvidia":
        if spec.devices:
            # docker's --gpus parser reads CSV: the inner quotes keep "device=0,1" one field.
            return [["--gpus", '"device=' + ",".join(map(str, spec.devices)) + '"']]
        return [["--gpus", "all"]]
    devices = spec.devices if spec.devices else list(range(spec.gpus_per_node))
    out = [["--device", f"/dev/davinci{i}"] for i in devices]
    out += [["--device", d] for d in ASCEND_SHARED_DEVICES]
    out += [["-v", f"{m}:{m}:ro"] for m in ASCEND_DRIVER_MOUNTS]
    return out


def docker_run_argv(spec: ServingSpec, image_ref: str, model_dir: str, rendered: Rendered,
                    layout: Layout, opts: ServiceSettings, with_env_file: bool,
                    role: multinode.Role | None = None) -> list[list[str]]:
    """The unit's ``docker run`` command line, one group of words per line.

    + spec: the validated spec
    + image_ref: the image to run (pulled or built by the image task)
    + model_dir: the weights task's directory on the host (``<model_dir>/current`` is mounted)
    + rendered: ``tasks.vllm.cmdline.render(spec)``
    + layout: host paths of the service
    + opts: ``service_*`` settings
    + with_env_file: whether the service has secrets (adds ``--env-file``)
    + role: the host's place in a multi-node replica (``tasks.vllm.multinode``): the host's network
      instead of a published port, and on the Ray path Ray's launch around vLLM
    """
    lines: list[list[str]] = [["/usr/bin/docker", "run", "--rm", "--name", layout.unit, "--pull=never"],
                              ["--label", f"org.llmfleet.service={layout.name}"],
                              # What the running container was started from, for ServiceVersion to
                              # read off the docker run process (no docker CLI on every run).
                              ["--label", f"{IMAGE_LABEL}={image_ref}"],
                              ["--label", f"org.llmfleet.weights={spec.model.repo_id}@{spec.model.revision}"]]
    lines += accelerator_options(spec)
    if spec.ipc_host:
        lines.append(["--ipc=host"])
    else:
        lines.append(["--shm-size", spec.shm_size or opts.service_shm_size])
    lines.append([w for k, v in sorted(opts.service_ulimits.items()) for w in ("--ulimit", f"{k}={v}")])
    if role is None:
        lines.append(["-p", f"{spec.port}:{spec.port}"])
    else:
        lines += multinode.container_options(spec)
    lines.append(["-v", f"{model_dir.rstrip('/')}/current:{cmdline.MODEL_DIR}:ro"])
    for container_path in sorted(rendered.files):
        base = container_path.rsplit("/", 1)[-1]
        lines.append(["-v", f"{layout.template_dir}/{base}:{container_path}:ro"])
    lines.append(["-v", f"{layout.cache_dir}:{CONTAINER_CACHE}"])
    for var, sub in CACHE_ENV.items():
        lines.append(["-e", f"{var}={CONTAINER_CACHE}/{sub}"])
    for key, value in sorted(rendered.env.items()):
        lines.append(["-e", f"{key}={value}"])
    if with_env_file:
        lines.append(["--env-file", layout.env_file])
    if role is not None and not multinode.native(spec):
        entrypoint, args = multinode.ray_launch(spec, role, rendered.args)
        return lines + [["--entrypoint", entrypoint], [image_ref], args]
    lines.append([image_ref])
    lines += _group_args(rendered.args)
    return lines


def _group_args(args: list[str]) -> list[list[str]]:
    """Container args grouped as flag + values, one flag per unit line."""
    groups: list[list[str]] = []
    for arg in args:
        if arg.startswith("-") or not groups:
            groups.append([arg])
        else:
            groups[-1].append(arg)
    return groups


def systemd_quote(word: str) -> str:
    """One word of an ``ExecStart=`` line, quoted for systemd's own parser (not a shell).

    systemd splits on whitespace, honours double quotes with C escapes, expands ``$VAR`` and
    ``%`` specifiers: both are doubled so the word reaches docker unchanged.
    """
    if not word:
        return '""'
    escaped = word.replace("%", "%%").replace("$", "$$")
    if _SAFE_ARG.match(word):
        return escaped
    escaped = escaped.replace("\\", "\\\\").replace('"', '\\"')
    if any(ch in word for ch in "\n\r\t\0"):
        raise ValueError(f"{word!r}: control characters cannot go into a unit file")
    return f'"{escaped}"'


def exec_start(lines: list[list[str]]) -> str:
    """``ExecStart=`` value: one group per line, joined with systemd's line continuation."""
    return " \\\n    ".join(" ".join(systemd_quote(w) for w in group) for group in lines)


def verify_config(spec: ServingSpec, layout: Layout, with_env_file: bool,
                  role: multinode.Role | None = None) -> dict[str, Any]:
    """What the endpoint probe checks (``tasks/probe/verify_endpoint.py --config``); no secrets.
    A headless worker's probe asks the head (``head``): a worker is healthy when its unit runs and
    the head answers /health, which vLLM's head does only once every member joined."""
    member = {} if role is None else {"replica": role.replica, "rank": role.rank, "nnodes": role.nnodes}
    if role is not None and not role.is_head:
        member["head"] = role.master_addr
    return {**member,
        "name": layout.name, "unit": f"{layout.unit}.service", "container": layout.unit,
        "port": spec.port, "served_model_name": spec.served_model_name,
        "env_file": layout.env_file if with_env_file else None,
        "startup_budget_s": spec.startup_budget_s,
        "non_thinking": not spec.thinking.default,
        "tool_calls": bool(spec.enable_auto_tool_choice and spec.tool_call_parser),
    }


# --- what a converged service looks like (control machine) ---------------------------------------


@dataclass(frozen=True)
class Desired:
    """Everything :func:`serve` puts on a host for one service, computed without touching it."""

    layout: Layout
    image_ref: str
    unit_file: str
    unit_text: bytes
    verify_text: bytes
    #: host path -> content of each chat template
    templates: dict[str, bytes]
    #: env name -> control-machine secret file ({}: the service has no env file)
    secrets: dict[str, str]
    #: a headless worker's head watch unit (``tasks/probe/head_watch.py``); b"": none
    watch_text: bytes = b""

    @property
    def unit(self) -> str:
        return f"{self.layout.unit}.service"

    @property
    def watch_unit(self) -> str:
        return f"{self.layout.unit}-headwatch.service"

    @property
    def watch_file(self) -> str:
        return f"/etc/systemd/system/{self.watch_unit}"

    def paths(self) -> list[str]:
        """Host paths whose digests :func:`pending` compares (one ``FileDigests`` read)."""
        lay = self.layout
        out = [lay.etc_dir, lay.cache_dir, lay.verify_config, PROBE_DIR, PROBE_PATH,
               lay.env_file, self.unit_file]
        # the head watch's unit always: a host that is no longer a headless worker must lose it
        out += [HEAD_WATCH_PATH, self.watch_file] if self.watch_text else [self.watch_file]
        if self.templates:
            out += [lay.template_dir, *sorted(self.templates)]
        return out


def desired(spec: ServingSpec, image_ref: str, model_dir: str, data: Any,
            role: multinode.Role | None = None) -> Desired:
    """The files and unit of ``spec``'s service on a host with host data ``data``.

    + spec: the validated spec
    + image_ref: the image the unit runs
    + model_dir: the weights directory on the host
    + data: the host's data (``.get``): ``service_*`` settings, the secrets directory
    + role: the host's place in a multi-node replica (``FleetPlan.roles``); None: a one-host replica
    """
    from jinja2 import Environment, StrictUndefined

    opts = options(data)
    layout = Layout.of(spec, opts)
    multinode.check_role(spec, role)
    rendered = cmdline.render(spec, role=role)
    secrets = secret_files(spec, data)
    verify = json.dumps(verify_config(spec, layout, bool(secrets), role), indent=2, sort_keys=True) + "\n"
    templates = {}
    for container_path, local in sorted(rendered.files.items()):
        src = Path(local) if Path(local).is_absolute() else REPO_ROOT / local
        templates[f"{layout.template_dir}/{container_path.rsplit('/', 1)[-1]}"] = src.read_bytes()
    lines = docker_run_argv(spec, image_ref, model_dir, rendered, layout, opts, bool(secrets), role)
    grace = opts.service_stop_grace_s
    # Rendered as pyinfra's files.template renders (StrictUndefined, trailing newline kept).
    env = Environment(undefined=StrictUndefined, keep_trailing_newline=True)
    unit = env.from_string((TEMPLATES / "vllm.service.j2").read_text()).render(
        name_=layout.name, served_model_name=spec.served_model_name, port=spec.port,
        weights=f"{spec.model.repo_id}@{spec.model.revision}",
        env_file=layout.env_file if secrets else "", container=layout.unit,
        exec_start=exec_start(lines), stop_grace_s=grace,
        restart_sec=opts.service_restart_sec,
        start_limit_burst=opts.service_start_limit_burst,
        start_limit_interval_s=opts.service_start_limit_interval_s,
        startup_budget_s=spec.startup_budget_s, timeout_start_s=300, timeout_stop_s=grace + 30,
    )
    watch = b""
    if role is not None and not role.is_head:
        watch = env.from_string((TEMPLATES / "vllm-headwatch.service.j2").read_text()).render(
            replica=role.replica, rank=role.rank, unit=f"{layout.unit}.service", head=role.master_addr,
            port=spec.port, script=HEAD_WATCH_PATH).encode()
    return Desired(layout=layout, image_ref=image_ref, unit_file=f"/etc/systemd/system/{layout.unit}.service",
                   unit_text=unit.encode(), verify_text=verify.encode(), templates=templates, secrets=secrets,
                   watch_text=watch)


ENABLED_STATES = ("enabled", "static", "enabled-runtime", "alias")  # what units_running leaves alone
STALE = ("the container runs", "systemd has not loaded the unit file")  # reasons only a restart mends
#: A member of a multi-node replica whose own files match restarts with the others (tasks.rollout.plan).
TOGETHER = "restarts with replica"


def pending(want: Desired, observed: dict[str, Any]) -> list[str]:
    """Why :func:`serve` would act on a host: one reason per difference; ``[]`` = converged.

    + want: :func:`desired`
    + observed: ``files`` (``FileDigests`` of ``want.paths()``), ``unit`` (``systemctl show``
      ActiveState, UnitFileState, NeedDaemonReload) and ``live_image`` (the image the running
      container was started from), as ``tasks.rollout.ServiceVersion`` reads them
    """
    files = observed.get("files") or {}
    lay = want.layout
    reasons = []

    def owned(path: str, kind: str, mode: str) -> bool:
        entry = files.get(path) or {}
        return entry.get("type") == kind and owned_by(entry, mode, "root", "root")

    def same(path: str, content: bytes, mode: str) -> None:
        if not owned(path, "file", mode) or files[path].get("sha256") != hashlib.sha256(content).hexdigest():
            reasons.append(f"{path} differs" if path in files else f"{path} missing")

    for d in (lay.etc_dir, lay.cache_dir):
        if not owned(d, "dir", "750"):
            reasons.append(f"{d}/ missing or not 0750 root")
    same(lay.verify_config, want.verify_text, "644")
    if (files.get(PROBE_DIR) or {}).get("type") != "dir":
        reasons.append(f"{PROBE_DIR}/ missing")
    same(PROBE_PATH, PROBE_SRC.read_bytes(), "755")
    if want.templates:
        if not owned(lay.template_dir, "dir", "755"):
            reasons.append(f"{lay.template_dir}/ missing or not 0755 root")
        for path, content in sorted(want.templates.items()):
            same(path, content, "644")
    if want.secrets:
        same(lay.env_file, env_file_content(want.secrets), "600")
    elif lay.env_file in files:
        reasons.append(f"{lay.env_file} should not exist (no API key)")
    same(want.unit_file, want.unit_text, "644")
    if want.watch_text:
        same(HEAD_WATCH_PATH, HEAD_WATCH_SRC.read_bytes(), "755")
        same(want.watch_file, want.watch_text, "644")
    elif want.watch_file in files:
        reasons.append(f"{want.watch_file} left from a replica this host is no longer a worker of")
    unit = observed.get("unit") or {}
    if unit.get("ActiveState") != "active":
        reasons.append(f"{want.unit} is {unit.get('ActiveState') or 'unknown'}")
    elif observed.get("live_image") != want.image_ref:
        reasons.append(f"{STALE[0]} {observed.get('live_image') or 'no image'}, the unit {want.image_ref}")
    if unit.get("UnitFileState") not in ENABLED_STATES:
        reasons.append(f"{want.unit} is not enabled")
    if unit.get("NeedDaemonReload") == "yes":
        reasons.append(f"{STALE[1]} on disk")
    return reasons


def needs_restart(reasons: list[str]) -> bool:
    """Whether :func:`pending`'s reasons call for a restart that no file change would trigger:
    systemd still runs an older load of the unit, or the container runs another image (a run
    that stopped between writing the unit and restarting it)."""
    return any(r.startswith((*STALE, TOGETHER)) for r in reasons)


# --- the deploy ----------------------------------------------------------------------------------


@dataclass
class Served:
    """What ``serve`` did: ``started`` is true (at execution) when the service (re)started."""

    unit: Any
    restart: Any
    running: Any
    layout: Layout
    #: the operations whose change restarts the service (unit, env file, chat templates)
    changes: tuple = ()

    @property
    def started(self) -> Callable[[], bool]:
        return any_changed(self.restart, self.running)


def within_deploy(condition: Callable[[], bool]) -> Callable[[], bool]:
    """``condition`` and the enclosing deploys' ``_if``: an operation's own ``_if`` replaces its
    deploy's (pyinfra 3.10), so an operation that must stay inside a rollout batch ANDs them."""
    outer = (host.current_deploy_kwargs or {}).get("_if")
    outer = [] if outer is None else list(outer) if isinstance(outer, list) else [outer]
    return lambda: all(c() for c in outer) and condition()


@deploy("Service", data_defaults=DEFAULTS)
def serve(spec: ServingSpec, image_ref: str, model_dir: str, restart: bool = False,
          role: multinode.Role | None = None) -> Served:
    """
    Install and run ``llmfleet-<spec.name>.service`` for a validated spec.

    Restarts the service only when its unit, env file or chat templates changed (or ``restart``);
    a run with nothing to change reports no changes. Every file goes through a digest-comparing
    operation (one round trip each when nothing differs; ``--diff`` shows the unit's diff).

    + spec: validated serving spec (``tasks.spec.load_spec``)
    + image_ref: the pinned image to run (already present on the host)
    + model_dir: the weights directory (``<model_dir>/current`` -> ``revisions/<rev>``)
    + restart: restart even when no file changes (see :func:`needs_restart`)
    + role: the host's place in a multi-node replica (``FleetPlan.roles``); None: a one-host replica

    Example:

    .. code:: python

        served = serve(spec, "vllm/vllm-openai:v0.8.5", "/srv/models/Qwen--Qwen3-30B-A3B")
    """
    want = desired(spec, image_ref, model_dir, host.data, role)
    layout, tag = want.layout, want.layout.name

    files_synced(name=f"{tag}: config and cache directories, verification config",
                 files={layout.verify_config: want.verify_text}, dirs=[layout.etc_dir, layout.cache_dir],
                 dir_mode="750")
    files_synced(name="endpoint probe", files={PROBE_PATH: PROBE_SRC}, mode="755")
    templates = []
    if want.templates:
        templates.append(files_synced(name=f"{tag}: chat templates", files=want.templates,
                                      dirs=[layout.template_dir], dir_mode="755"))
    if want.secrets:
        env = secret_file(name=f"{tag}: secret env file", dest=layout.env_file, env=want.secrets, dir_mode="750")
    else:
        env = files.file(name=f"{tag}: no secret env file", path=layout.env_file, present=False)
    unit = files_synced(name=f"{tag}: unit {want.unit}", files={want.unit_file: want.unit_text})
    units, watch = [want.unit], []
    if want.watch_text:
        files_synced(name=f"{tag}: head watch script", files={HEAD_WATCH_PATH: HEAD_WATCH_SRC}, mode="755")
        watch.append(files_synced(name=f"{tag}: unit {want.watch_unit}", files={want.watch_file: want.watch_text}))
        units.append(want.watch_unit)
    else:
        # No longer a headless worker (its replica changed): the old head watch would restart this unit
        # whenever that head went away.
        unit_removed(name=f"{tag}: no head watch (not a worker)", unit=want.watch_unit, unit_file=want.watch_file)

    changed = any_changed(unit, env, *templates, *watch)
    unit_files_changed = any_changed(unit, *watch)
    if role is not None:
        # A member of a multi-node replica: every member stops (this operation runs on all of them
        # before the next starts any), so no new member meets an old head (tasks/vllm/multinode.py).
        units_stopped(name=f"{tag}: stop every member of replica {role.replica} before any starts",
                      units=units[::-1], _if=within_deploy(lambda: restart or changed()))
    systemd.daemon_reload(name=f"{tag}: reload units",
                          _if=within_deploy(lambda: restart or unit_files_changed()))
    reset_failed(name=f"{tag}: clear failed state", unit=want.unit)
    restarted = units_running(name=f"{tag}: restart (unit, env or template changed)", units=[want.unit],
                              restarted=True, _if=within_deploy(lambda: restart or changed()))
    running = units_running(name=f"{tag}: running", units=units)
    return Served(unit=unit, restart=restarted, running=running, layout=layout, changes=(unit, env, *templates))
